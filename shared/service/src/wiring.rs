//! Opens the adapters the settings name. Services depend on the `Bus` and
//! `Store` traits only; this is the one place that knows the adapters.

use std::sync::Arc;

use legato_bus::{Bus, RabbitMqBus, RabbitMqOptions};
use legato_store::{AzureTableConnection, AzureTableStore, SqliteStore, Store};

use crate::settings::{BusSettings, SettingsError, StoreSettings};

pub async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    match settings {
        StoreSettings::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("store.path: cannot create {}: {e}", dir.display())
                })?;
            }
            Ok(Arc::new(SqliteStore::open(path)?))
        }
        StoreSettings::AzureTable {
            connection_string,
            account,
            access_key,
            endpoint,
            table_prefix,
        } => {
            let connection = match (connection_string, account, access_key) {
                (Some(text), None, None) => AzureTableConnection::ConnectionString(text.clone()),
                (None, Some(account), Some(key)) => AzureTableConnection::AccountKey {
                    account: account.clone(),
                    key: key.clone(),
                    endpoint: endpoint.clone(),
                },
                _ => {
                    return Err(SettingsError::invalid(
                        "store.connection_string",
                        "set either store.connection_string or both store.account and \
                         store.access_key (e.g. LEGATO__STORE__CONNECTION_STRING=UseDevelopmentStorage=true)",
                    )
                    .into());
                }
            };
            // The message names the endpoint, never the key.
            let store = AzureTableStore::connect(&connection, table_prefix)
                .await
                .map_err(|e| anyhow::anyhow!("store (Azure Table Storage): {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// The bus for a standalone service process.
pub async fn open_bus(settings: &BusSettings) -> anyhow::Result<Arc<dyn Bus>> {
    match settings {
        BusSettings::InProcess => Err(SettingsError::invalid(
            "bus.kind",
            "is in_process, which only connects services inside one process: run them all \
             with `legato up`, or set LEGATO__BUS__KIND=rabbitmq",
        )
        .into()),
        BusSettings::Rabbitmq {
            url,
            prefix,
            queue_expiry_ms,
        } => {
            let options = RabbitMqOptions {
                prefix: prefix.clone(),
                queue_expiry: (*queue_expiry_ms > 0)
                    .then(|| std::time::Duration::from_millis(*queue_expiry_ms)),
            };
            let bus = RabbitMqBus::connect(url, options)
                .await
                .map_err(|e| anyhow::anyhow!("bus (RabbitMQ at {}): {e}", redact(url)))?;
            Ok(Arc::new(bus))
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
