use legato_service::{BusSettings, HttpSettings, StoreSettings, TelemetrySettings};
use legato_signalr::SignalRSettings;
use serde::{Deserialize, Serialize};

/// The `gateway` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Largest request body accepted (definitions, inputs, event data).
    pub max_body_bytes: usize,
    /// Base of the URIs returned by a start (`https://legato.example.com`);
    /// empty: built from the request's `Host`.
    pub public_url: String,
    /// Where the notifier serves the progress stream and the SignalR hub
    /// (`https://notifier.example.com`), for the `streamUri` of a start and
    /// the local negotiate answer; empty: the gateway's own base (`legato
    /// up`, where one process serves both).
    pub stream_url: String,
    /// Most history rows one status request returns.
    pub max_history: usize,
    /// Who may call the API (see `auth::AuthSettings`).
    pub auth: legato_service::auth::AuthSettings,
    /// Rates, time and size limits (see `limits::LimitSettings`).
    pub limits: crate::limits::LimitSettings,
    /// Definitions (`*.yaml`, `*.yml`, `*.json`) registered at start; empty
    /// registers none. `legato up` uses its own `workflows_dir`.
    pub workflows_dir: String,
    /// The built-in agents this deployment runs: listed in the agent
    /// registry (shared by every tenant), and their task queues' dead
    /// letters parked for `/api/v1/dead-letters` (the orchestrator's
    /// always are).
    pub agents: Vec<String>,
    /// Agents declared as files (`*.yaml`, `*.json`, one agent a file)
    /// registered at start as shared agents; empty registers none.
    /// `legato up` uses its own `agents_dir`.
    pub agents_dir: String,
    /// Push agents: where they may be, how pushes are signed.
    pub push: crate::push::PushSettings,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            public_url: String::new(),
            stream_url: String::new(),
            max_history: 1_000,
            auth: legato_service::auth::AuthSettings::default(),
            limits: crate::limits::LimitSettings::default(),
            workflows_dir: String::new(),
            agents: ["echo", "planner", "coder", "data", "approval"]
                .map(String::from)
                .to_vec(),
            agents_dir: String::new(),
            push: crate::push::PushSettings::default(),
        }
    }
}

/// Everything the standalone `gateway` binary reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub gateway: GatewaySettings,
    pub signalr: SignalRSettings,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8080),
            telemetry: TelemetrySettings::default(),
            store: StoreSettings::default(),
            bus: BusSettings::default(),
            gateway: GatewaySettings::default(),
            signalr: SignalRSettings::default(),
        }
    }
}
