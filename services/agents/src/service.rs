//! Building an agent from settings and running it as its own process.

use std::sync::Arc;

use legato_agent::llm::{ChatClient, LlmSettings};
use legato_agent::{Agent, Worker, WorkerSettings};
use legato_contracts::AgentName;
use legato_service::agent_figures::{Tally, reporter};
use legato_service::{
    BusSettings, HttpSettings, Readiness, Shutdown, StoreSettings, TelemetrySettings, wiring,
};
use serde::{Deserialize, Serialize};

use crate::approval::Approval;
use crate::coder::Coder;
use crate::data::{DataAgent, DataSettings};
use crate::echo::Echo;
use crate::planner::Planner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    Echo,
    Planner,
    Coder,
    Data,
    Approval,
}

impl AgentKind {
    pub const ALL: [AgentKind; 5] = [
        Self::Echo,
        Self::Planner,
        Self::Coder,
        Self::Data,
        Self::Approval,
    ];

    /// The agent's name: its queue's routing key and what workflows call it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Planner => "planner",
            Self::Coder => "coder",
            Self::Data => "data",
            Self::Approval => "approval",
        }
    }
}

/// Everything an agent process reads (file `config/agent-<name>.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub bus: BusSettings,
    /// Where the agent reports its live figures (tasks running, ended,
    /// durations) for the registry; none: not reported.
    pub store: Option<StoreSettings>,
    pub worker: WorkerSettings,
    /// For planner, coder and data; empty endpoint = offline backend.
    pub llm: LlmSettings,
    /// For the data agent.
    pub data: DataSettings,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8090),
            telemetry: TelemetrySettings::default(),
            bus: BusSettings::default(),
            store: None,
            worker: WorkerSettings::default(),
            llm: LlmSettings::default(),
            data: DataSettings::default(),
        }
    }
}

pub fn build(kind: AgentKind, config: &AgentConfig) -> anyhow::Result<Arc<dyn Agent>> {
    let name = AgentName::parse(kind.name())?;
    let model = || ChatClient::from_settings(&config.llm).map_err(|e| anyhow::anyhow!("llm: {e}"));
    Ok(match kind {
        AgentKind::Echo => Arc::new(Echo::new(name)),
        AgentKind::Planner => Arc::new(Planner::new(name, model()?)),
        AgentKind::Coder => Arc::new(Coder::new(name, model()?)),
        AgentKind::Data => Arc::new(
            DataAgent::new(name, config.data.clone(), model()?)
                .map_err(|e| anyhow::anyhow!("settings: {e}"))?,
        ),
        AgentKind::Approval => Arc::new(Approval::new(name)),
    })
}

impl AgentKind {
    /// The service name: `agent-<name>` (also its settings file).
    pub fn service(self) -> String {
        format!("agent-{}", self.name())
    }

    pub fn from_service(service: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.service() == service)
    }

    /// Health ports 8090-8094, so agents can share a host.
    pub fn default_config(self) -> AgentConfig {
        let port = 8090 + Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u16;
        AgentConfig {
            http: HttpSettings::with_port(port),
            ..AgentConfig::default()
        }
    }

    pub fn load_config(self) -> Result<AgentConfig, legato_service::settings::SettingsError> {
        legato_service::load_with(&self.service(), self.default_config())
    }
}

/// One agent as its own process.
pub async fn run(kind: AgentKind, config: AgentConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    if kind == AgentKind::Data {
        config.data.ensure_demo_database()?;
    }
    let bus = wiring::open_bus(&config.bus).await?;
    let agent = build(kind, &config)?;
    let readiness = Readiness::new(None);
    // Subscribed before the port says "listening", so whoever waits for
    // that line knows the agent's queue exists.
    let mut worker = Worker::new(agent, bus, config.worker.clone(), shutdown.clone());
    if let Some(store) = &config.store {
        let store = wiring::open_store(store).await?;
        let figures = std::sync::Arc::new(Tally::default());
        let replica = reporter::replica_name(&kind.service());
        reporter::spawn(store.clone(), figures.clone(), replica, shutdown.clone());
        worker = worker.with_figures(figures).with_store(store);
    }
    let running = worker.start().await?;
    let listener = legato_service::listen(&kind.service(), &config.http).await?;
    let server = tokio::spawn(legato_service::serve(
        listener,
        axum::Router::new(),
        readiness.clone(),
        shutdown.clone(),
    ));
    readiness.set_ready(true);
    let result = running.await;
    shutdown.trigger();
    server.await??;
    result
}

/// `main` of every agent binary.
pub async fn run_standalone(kind: AgentKind) -> anyhow::Result<()> {
    let config = kind.load_config()?;
    let _telemetry = legato_service::telemetry::init(&kind.service(), &config.telemetry)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    run(kind, config, shutdown).await
}
