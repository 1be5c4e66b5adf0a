//! Layered settings: built-in defaults, then `config/<service>.toml` (the
//! directory can be moved with `LEGATO_CONFIG_DIR`), then environment
//! variables `LEGATO__SECTION__KEY` (double underscores separate levels,
//! e.g. `LEGATO__HTTP__PORT=9000`). Unknown keys and values that do not fit
//! the typed struct fail start-up with the key named, before any work is
//! taken. There is deliberately no file shared by all services: each
//! service's settings are a different struct, and a shared file would hold
//! keys that are unknown to most of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the layered files are looked for; `LEGATO_CONFIG_DIR` overrides.
const DEFAULT_CONFIG_DIR: &str = "config";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The message already names the key; it is not repeated as a cause.
    #[error("settings: {0}")]
    Load(config::ConfigError),
    #[error("settings: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl From<config::ConfigError> for SettingsError {
    fn from(e: config::ConfigError) -> Self {
        Self::Load(e)
    }
}

impl SettingsError {
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Loads a service's settings. `T::default()` supplies every key, so a
/// file or variable only needs the values it changes.
pub fn load<T>(service: &str) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_with(service, T::default())
}

/// [`load`] over defaults of the caller's choosing (agents differ only in
/// their default port).
pub fn load_with<T>(service: &str, defaults: T) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned,
{
    let dir = std::env::var("LEGATO_CONFIG_DIR").unwrap_or_else(|_| DEFAULT_CONFIG_DIR.into());
    load_layers(Path::new(&dir), service, &defaults)
}

/// [`load`] with the file directory given.
pub fn load_from<T>(dir: &Path, service: &str) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_layers(dir, service, &T::default())
}

fn load_layers<T>(dir: &Path, service: &str, defaults: &T) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned,
{
    let mut defaults = serde_json::to_value(defaults)
        .map_err(|e| SettingsError::invalid("defaults", e.to_string()))?;
    let sections: Vec<String> = match &defaults {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    // A section tagged by `kind` (store, bus) whose kind a file or the
    // environment changes must not inherit the default kind's fields.
    let config = layered(dir, service, &defaults, &sections)?;
    let merged: serde_json::Value = config.clone().try_deserialize()?;
    let mut changed_kind = false;
    if let serde_json::Value::Object(map) = &mut defaults {
        map.retain(|section, value| {
            let kind = value.get("kind");
            let kept = kind.is_none() || merged.get(section).and_then(|m| m.get("kind")) == kind;
            changed_kind |= !kept;
            kept
        });
    }
    if !changed_kind {
        return Ok(config.try_deserialize()?);
    }
    Ok(layered(dir, service, &defaults, &sections)?.try_deserialize()?)
}

fn layered(
    dir: &Path,
    service: &str,
    defaults: &serde_json::Value,
    sections: &[String],
) -> Result<Config, SettingsError> {
    Ok(Config::builder()
        .add_source(Config::try_from(defaults)?)
        .add_source(File::from(dir.join(format!("{service}.toml"))).required(false))
        .add_source(
            Environment::with_prefix("LEGATO")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists in one variable, comma-separated.
                .list_separator(",")
                .with_list_parse_key("signalr.allowed_origins")
                .source(Some(environment_for(sections))),
        )
        .build()?)
}

/// Sections some legato service reads. One environment (a compose file's
/// shared block, a test's) may configure several services, so a variable
/// for a section this service does not have is left out rather than
/// refused; a variable naming no legato section at all still fails.
const LEGATO_SECTIONS: [&str; 13] = [
    "http",
    "telemetry",
    "store",
    "bus",
    "signalr",
    "gateway",
    "orchestrator",
    "worker",
    "llm",
    "data",
    "data_dir",
    "workflows_dir",
    "agents_dir",
];

fn environment_for(sections: &[String]) -> config::Map<String, String> {
    std::env::vars()
        .filter(|(key, _)| {
            let Some(rest) = key.strip_prefix("LEGATO__") else {
                return false;
            };
            let section = rest
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            sections.contains(&section) || !LEGATO_SECTIONS.contains(&section.as_str())
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
}

impl HttpSettings {
    pub fn with_port(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
        }
    }

    pub fn addr(&self) -> Result<SocketAddr, SettingsError> {
        format!("{}:{}", self.host, self.port)
            .parse()
            .map_err(|e| SettingsError::invalid("http.host", format!("is not an IP address: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// A `tracing` filter such as `info` or `legato_orchestrator=debug,info`;
    /// `RUST_LOG` wins when set.
    pub log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`); empty disables export.
    pub otlp_endpoint: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A URL without its password, for messages and `Debug` output.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Settings as `Debug` shows them: keys and connection strings replaced,
/// passwords taken out of URLs, so logging settings never logs a secret.
fn redacted(value: &impl Serialize, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    const SECRETS: [&str; 2] = ["connection_string", "access_key"];
    let mut json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut json {
        for (key, field) in map.iter_mut() {
            if SECRETS.contains(&key.as_str()) && !field.is_null() {
                *field = serde_json::Value::from("***");
            }
            if let Some(url) = field.as_str() {
                *field = serde_json::Value::from(redact_url(url));
            }
        }
    }
    write!(f, "{json}")
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(self, f)
    }
}

impl std::fmt::Debug for BusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        redacted(self, f)
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreSettings {
    /// The embedded store: one SQLite file (created with its directory).
    Sqlite {
        path: PathBuf,
        /// `normal` (survives a process crash) or `fsync` (survives power
        /// loss too); see `legato_store::Durability`.
        #[serde(default)]
        durability: legato_store::Durability,
    },
    /// Azure Table Storage (Azurite locally): `LEGATO__STORE__KIND=azure_table`
    /// with either `connection_string` (`UseDevelopmentStorage=true` works)
    /// or `account` + `access_key` (+ `endpoint` off the public cloud).
    AzureTable {
        #[serde(default)]
        connection_string: Option<String>,
        #[serde(default)]
        account: Option<String>,
        #[serde(default)]
        access_key: Option<String>,
        /// The table service URL, e.g. `http://127.0.0.1:10002/devstoreaccount1`.
        #[serde(default)]
        endpoint: Option<String>,
        /// With `account` and no key: the user-assigned managed identity
        /// whose Entra ID tokens reach the account (empty: the
        /// system-assigned one).
        #[serde(default)]
        client_id: Option<String>,
        /// Tables are `<prefix>instances`, `<prefix>index`, `<prefix>definitions`.
        #[serde(default = "default_table_prefix")]
        table_prefix: String,
        /// The longest one request to the table service may take: a
        /// connection that stops answering fails the request after it
        /// (and is replaced by the next), instead of holding it forever.
        #[serde(default = "default_store_request_timeout_ms")]
        request_timeout_ms: u64,
    },
}

fn default_broker_timeout_ms() -> u64 {
    legato_bus::DEFAULT_BROKER_TIMEOUT.as_millis() as u64
}

fn default_store_request_timeout_ms() -> u64 {
    legato_store::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64
}

fn default_table_prefix() -> String {
    "legato".to_owned()
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self::Sqlite {
            path: PathBuf::from(".legato/legato.db"),
            durability: legato_store::Durability::Normal,
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BusSettings {
    /// Only meaningful inside `legato up`, where every service shares it.
    #[default]
    InProcess,
    /// RabbitMQ: `LEGATO__BUS__KIND=rabbitmq`, `LEGATO__BUS__URL=amqp://...`.
    Rabbitmq {
        #[serde(default = "default_amqp_url")]
        url: String,
        /// Prepended to exchange and queue names.
        #[serde(default = "default_prefix")]
        prefix: String,
        /// Delete queues unused this long (RabbitMQ `x-expires`); 0 keeps
        /// them. For throwaway environments such as tests.
        #[serde(default)]
        queue_expiry_ms: u64,
        /// The deadline of a publish's confirm (four times it: of opening
        /// a connection). A connection gone silent is found by missed
        /// heartbeats (`url`'s `heartbeat`, else the broker's).
        #[serde(default = "default_broker_timeout_ms")]
        timeout_ms: u64,
    },
    /// Azure Service Bus: `LEGATO__BUS__KIND=servicebus` with either
    /// `connection_string` (a shared access policy's) or `namespace` (the
    /// host, `<name>.servicebus.windows.net`) for Microsoft Entra ID
    /// tokens from the managed identity (`client_id` picks a user-assigned
    /// one).
    Servicebus {
        #[serde(default)]
        connection_string: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        /// The user-assigned managed identity's client id.
        #[serde(default)]
        client_id: Option<String>,
        /// Send requests here instead of `https://<namespace>` (tests
        /// against a local stand-in).
        #[serde(default)]
        endpoint: Option<String>,
        /// Prepended to topic names.
        #[serde(default)]
        prefix: String,
        /// How long a received message stays locked without renewal, and
        /// so how soon a crashed consumer's message is delivered again.
        #[serde(default = "default_lock_duration_ms")]
        lock_duration_ms: u64,
        /// Delete durable subscriptions idle this long (at least 300000);
        /// 0 keeps them. For throwaway environments such as tests.
        #[serde(default)]
        auto_delete_on_idle_ms: u64,
        /// Create topics, subscriptions and rules at start (needs the
        /// Manage right); off when the infrastructure created them.
        #[serde(default = "default_true")]
        manage_entities: bool,
        /// The longest a request other than a receive's long poll may
        /// take: one that goes unanswered fails after it and its
        /// connection is dropped.
        #[serde(default = "default_servicebus_request_timeout_ms")]
        request_timeout_ms: u64,
    },
}

fn default_servicebus_request_timeout_ms() -> u64 {
    legato_bus::DEFAULT_SERVICEBUS_REQUEST_TIMEOUT.as_millis() as u64
}

fn default_lock_duration_ms() -> u64 {
    10_000
}

fn default_true() -> bool {
    true
}

fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_prefix() -> String {
    "legato.".into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Sample {
        http: Option<HttpSettings>,
        telemetry: TelemetrySettings,
        store: StoreSettings,
    }

    #[test]
    fn defaults_load_without_files_or_variables() {
        let s: Sample = load("sample-that-has-no-file").unwrap();
        assert_eq!(s.telemetry.log, "info");
        assert_eq!(s.store, StoreSettings::default());
    }

    #[test]
    fn another_store_kind_does_not_inherit_the_default_kinds_fields() {
        let dir = std::env::temp_dir().join(format!("legato-kind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tables.toml"),
            "[store]\nkind = \"azure_table\"\nconnection_string = \"UseDevelopmentStorage=true\"\n",
        )
        .unwrap();
        let s: Sample = load_from(&dir, "tables").unwrap();
        assert_eq!(
            s.store,
            StoreSettings::AzureTable {
                connection_string: Some("UseDevelopmentStorage=true".into()),
                account: None,
                access_key: None,
                endpoint: None,
                client_id: None,
                table_prefix: "legato".into(),
                request_timeout_ms: 10_000,
            }
        );
        std::fs::write(
            dir.join("stray.toml"),
            "[store]\nkind = \"azure_table\"\npath = \"x.db\"\n",
        )
        .unwrap();
        let err = load_from::<Sample>(&dir, "stray").unwrap_err().to_string();
        assert!(
            err.contains("path"),
            "a field of another kind is still refused: {err}"
        );
    }

    #[test]
    fn a_file_overrides_defaults_and_a_bad_value_names_its_key() {
        let dir = std::env::temp_dir().join(format!("legato-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good.toml"), "[telemetry]\nlog = \"debug\"\n").unwrap();
        let s: Sample = load_from(&dir, "good").unwrap();
        assert_eq!(s.telemetry.log, "debug");
        assert_eq!(s.telemetry.log_format, LogFormat::Text);
        std::fs::write(
            dir.join("bad.toml"),
            "[http]\nhost = \"127.0.0.1\"\nport = \"eighty\"\n",
        )
        .unwrap();
        let err = load_from::<Sample>(&dir, "bad").unwrap_err().to_string();
        assert!(err.contains("http.port"), "{err}");
        std::fs::write(dir.join("typo.toml"), "[telemetry]\nlevel = \"debug\"\n").unwrap();
        let err = load_from::<Sample>(&dir, "typo").unwrap_err().to_string();
        assert!(err.contains("level"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_address_names_the_key() {
        let err = HttpSettings {
            host: "not an ip".into(),
            port: 1,
        }
        .addr()
        .unwrap_err();
        assert!(err.to_string().contains("http.host"), "{err}");
    }
}
