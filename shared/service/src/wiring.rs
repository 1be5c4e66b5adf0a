//! Opens the adapters the settings name. Services depend on the `Bus` and
//! `Store` traits only; this is the one place that knows the adapters.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use legato_bus::{
    Bus, BusError, RabbitMqBus, RabbitMqOptions, ServiceBusBus, ServiceBusConnection,
    ServiceBusOptions,
};
use legato_store::{AzureTableConnection, AzureTableStore, SqliteStore, Store, StoreError};

use crate::settings::{BusSettings, SettingsError, StoreSettings};

/// How long a service starting waits for its broker and store to answer.
/// One started while its link is cut (a partition, a dependency still
/// starting) comes up once the link heals instead of exiting at once;
/// past this it exits, and its platform starts it again.
pub const STARTUP_WAIT: Duration = Duration::from_secs(120);

/// Whether an error opening a dependency may pass if tried again.
trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for BusError {
    fn transient(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

impl Transient for StoreError {
    fn transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Opens `what` with `open`, trying again while it is unavailable, backing
/// off from 250 ms to 5 s, for up to `wait`.
async fn patiently<T, E, F, Fut>(what: &str, wait: Duration, mut open: F) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(250);
    loop {
        match open().await {
            Err(e) if e.transient() && Instant::now() + pause < deadline => {
                tracing::warn!("{what} not reachable yet, trying again in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

pub async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    match settings {
        StoreSettings::Sqlite { path, durability } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("store.path: cannot create {}: {e}", dir.display())
                })?;
            }
            Ok(Arc::new(SqliteStore::open_with(path, *durability)?))
        }
        StoreSettings::AzureTable {
            table_prefix,
            request_timeout_ms,
            ..
        } => {
            let connection = azure_table_connection(settings)?;
            // A commit's index entries are repaired when they point at
            // nothing for a minute: a request must end well within that.
            if !(1..=30_000).contains(request_timeout_ms) {
                return Err(SettingsError::invalid(
                    "store.request_timeout_ms",
                    "must be from 1 to 30000 (index entries without their commit are repaired after 60 s)",
                )
                .into());
            }
            let timeout = std::time::Duration::from_millis(*request_timeout_ms);
            // The message names the endpoint, never the key.
            let store = patiently("store (Azure Table Storage)", STARTUP_WAIT, || {
                AzureTableStore::connect_with_timeout(&connection, table_prefix, timeout)
            })
            .await
            .map_err(|e| anyhow::anyhow!("store (Azure Table Storage): {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// How the Azure Table store reaches its account, checked without I/O.
pub fn azure_table_connection(settings: &StoreSettings) -> anyhow::Result<AzureTableConnection> {
    let StoreSettings::AzureTable {
        connection_string,
        account,
        access_key,
        endpoint,
        client_id,
        ..
    } = settings
    else {
        return Err(SettingsError::invalid("store.kind", "is not azure_table").into());
    };
    Ok(match (connection_string, account, access_key) {
        (Some(text), None, None) => AzureTableConnection::ConnectionString(text.clone()),
        (None, Some(account), Some(key)) => AzureTableConnection::AccountKey {
            account: account.clone(),
            key: key.clone(),
            endpoint: endpoint.clone(),
        },
        (None, Some(account), None) => {
            let credential =
                legato_azure::ManagedIdentityCredential::from_environment(client_id.clone())
                    .map_err(|e| SettingsError::invalid("store.account", e.to_string()))?;
            AzureTableConnection::Entra {
                account: account.clone(),
                endpoint: endpoint.clone(),
                credential: Arc::new(credential),
            }
        }
        _ => {
            return Err(SettingsError::invalid(
                "store.connection_string",
                "set store.connection_string, or store.account with store.access_key, \
                 or store.account alone to use the managed identity (e.g. \
                 LEGATO__STORE__CONNECTION_STRING=UseDevelopmentStorage=true)",
            )
            .into());
        }
    })
}

/// Checks the store settings as opening them would, without connecting;
/// says which store they name.
pub fn check_store(settings: &StoreSettings) -> anyhow::Result<&'static str> {
    match settings {
        StoreSettings::Sqlite { .. } => Ok("sqlite"),
        StoreSettings::AzureTable { .. } => azure_table_connection(settings).map(|_| "azure_table"),
    }
}

/// Checks the bus settings of a standalone service as opening them would,
/// without connecting; says which bus they name.
pub fn check_bus(settings: &BusSettings) -> anyhow::Result<&'static str> {
    match settings {
        BusSettings::InProcess => Err(in_process_outside_up().into()),
        BusSettings::Rabbitmq { .. } => Ok("rabbitmq"),
        BusSettings::Servicebus { .. } => servicebus_settings(settings).map(|_| "servicebus"),
    }
}

fn in_process_outside_up() -> SettingsError {
    SettingsError::invalid(
        "bus.kind",
        "is in_process, which only connects services inside one process: run them all \
         with `legato up`, or set LEGATO__BUS__KIND=rabbitmq or servicebus",
    )
}

/// The bus for a standalone service process, waiting up to
/// [`STARTUP_WAIT`] for it to answer.
pub async fn open_bus(settings: &BusSettings) -> anyhow::Result<Arc<dyn Bus>> {
    open_bus_within(settings, STARTUP_WAIT).await
}

/// [`open_bus`], waiting up to `wait` for the broker.
pub async fn open_bus_within(
    settings: &BusSettings,
    wait: Duration,
) -> anyhow::Result<Arc<dyn Bus>> {
    match settings {
        BusSettings::InProcess => Err(in_process_outside_up().into()),
        BusSettings::Rabbitmq {
            url,
            prefix,
            queue_expiry_ms,
            timeout_ms,
        } => {
            let options = RabbitMqOptions {
                prefix: prefix.clone(),
                queue_expiry: (*queue_expiry_ms > 0)
                    .then(|| std::time::Duration::from_millis(*queue_expiry_ms)),
                timeout: std::time::Duration::from_millis((*timeout_ms).max(1)),
            };
            let what = format!("bus (RabbitMQ at {})", crate::settings::redact_url(url));
            let bus = patiently(&what, wait, || RabbitMqBus::connect(url, options.clone()))
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            Ok(Arc::new(bus))
        }
        BusSettings::Servicebus { .. } => Ok(Arc::new(open_servicebus(settings, wait).await?)),
    }
}

/// The Service Bus adapter the settings describe (also for `legato
/// bench`), waiting up to `wait` for the namespace to answer.
async fn open_servicebus(settings: &BusSettings, wait: Duration) -> anyhow::Result<ServiceBusBus> {
    let (connection, options) = servicebus_settings(settings)?;
    // The message names the namespace, never the key.
    let what = format!("bus (Service Bus at {})", connection.host);
    patiently(&what, wait, || {
        ServiceBusBus::connect(connection.clone(), options.clone())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// The Service Bus connection and options, checked without I/O.
fn servicebus_settings(
    settings: &BusSettings,
) -> anyhow::Result<(ServiceBusConnection, ServiceBusOptions)> {
    let BusSettings::Servicebus {
        connection_string,
        namespace,
        client_id,
        endpoint,
        prefix,
        lock_duration_ms,
        auto_delete_on_idle_ms,
        manage_entities,
        request_timeout_ms,
    } = settings
    else {
        return Err(SettingsError::invalid("bus.kind", "is not servicebus").into());
    };
    let connection = match (connection_string, namespace) {
        (Some(text), None) => ServiceBusConnection::from_connection_string(text)
            .map_err(|e| SettingsError::invalid("bus.connection_string", e.to_string()))?,
        (None, Some(host)) => {
            let credential =
                legato_azure::ManagedIdentityCredential::from_environment(client_id.clone())
                    .map_err(|e| SettingsError::invalid("bus.namespace", e.to_string()))?;
            ServiceBusConnection::entra(host, Arc::new(credential))
        }
        _ => {
            return Err(SettingsError::invalid(
                "bus.connection_string",
                "set either bus.connection_string (a shared access policy's) or bus.namespace \
                 (<name>.servicebus.windows.net, with a managed identity), not both",
            )
            .into());
        }
    };
    if !(5_000..=300_000).contains(lock_duration_ms) {
        return Err(SettingsError::invalid(
            "bus.lock_duration_ms",
            "must lie between 5000 and 300000 (Service Bus's limits)",
        )
        .into());
    }
    if *auto_delete_on_idle_ms != 0 && *auto_delete_on_idle_ms < 300_000 {
        return Err(SettingsError::invalid(
            "bus.auto_delete_on_idle_ms",
            "must be 0 (keep) or at least 300000 (Service Bus's minimum)",
        )
        .into());
    }
    let options = ServiceBusOptions {
        prefix: prefix.clone(),
        endpoint: endpoint.clone(),
        lock_duration: std::time::Duration::from_millis(*lock_duration_ms),
        auto_delete_on_idle: (*auto_delete_on_idle_ms > 0)
            .then(|| std::time::Duration::from_millis(*auto_delete_on_idle_ms)),
        manage_entities: *manage_entities,
        request_timeout: std::time::Duration::from_millis((*request_timeout_ms).max(1)),
        ..ServiceBusOptions::default()
    };
    Ok((connection, options))
}
