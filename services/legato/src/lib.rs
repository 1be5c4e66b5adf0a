//! `legato up`: every legato service in one process, on the in-process bus
//! and the embedded SQLite store. The services are the same code as the
//! standalone binaries; only the wiring differs. The in-process bus keeps
//! nothing across a restart, so the orchestrator re-sends in-flight work on
//! start (`redispatch_on_start`) and the outbox sweep publishes what a crash
//! left unsent: a killed `legato up` picks up where it stopped.

pub mod bench;
pub mod chaos;
pub mod check;
pub mod cli;
pub mod sse;
pub mod topology;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use legato_agent::llm::LlmSettings;
use legato_agent::{Worker, WorkerSettings};
use legato_agents::data::DataSettings;
use legato_agents::{AgentConfig, AgentKind};
use legato_bus::{Bus, InProcessBus};
use legato_gateway::{GatewaySettings, GatewayState};
use legato_notifier::{NotifierState, ProgressHub};
use legato_orchestrator::{Orchestrator, OrchestratorSettings};
use legato_service::agent_figures::{Tally, reporter};
use legato_service::auth::Authenticator;
use legato_service::{
    BusSettings, HttpSettings, Readiness, Shutdown, StoreSettings, TelemetrySettings, wiring,
};
use legato_signalr::SignalRSettings;
use legato_store::Store;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// Everything `legato up` reads (`config/legato.toml`, `LEGATO__...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegatoConfig {
    /// Gateway, progress stream and health, on one port.
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    /// `in_process` (default) or a broker (`kind = "rabbitmq"`).
    pub bus: BusSettings,
    /// Instance state (`legato.db`) and the demo database (`demo.db`).
    pub data_dir: PathBuf,
    /// When the default SQLite store's commits are on disk: `normal`
    /// (survives a process crash) or `fsync` (survives power loss too).
    pub durability: legato_store::Durability,
    /// Where instance state lives; unset: SQLite at `<data_dir>/legato.db`.
    /// `kind = "azure_table"` keeps it in Azure Table Storage (Azurite).
    pub store: Option<StoreSettings>,
    /// Definitions registered at start (`*.yaml`, `*.yml`, `*.json`).
    pub workflows_dir: PathBuf,
    /// Agents registered at start (one `*.yaml` or `*.json` each), shared
    /// by every tenant.
    pub agents_dir: PathBuf,
    pub gateway: GatewaySettings,
    pub orchestrator: OrchestratorSettings,
    pub worker: WorkerSettings,
    pub llm: LlmSettings,
    /// Azure SignalR Service; empty: the local hub at `/hubs/progress`.
    pub signalr: SignalRSettings,
    /// The data agent's database; the default is the demo database in
    /// `data_dir`.
    pub data: DataSettings,
}

impl Default for LegatoConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8080),
            telemetry: TelemetrySettings::default(),
            bus: BusSettings::default(),
            data_dir: PathBuf::from(".legato"),
            durability: legato_store::Durability::Normal,
            store: None,
            workflows_dir: PathBuf::from("workflows"),
            agents_dir: PathBuf::from("agents"),
            gateway: GatewaySettings::default(),
            orchestrator: OrchestratorSettings::default(),
            worker: WorkerSettings::default(),
            llm: LlmSettings::default(),
            signalr: SignalRSettings::default(),
            data: DataSettings::default(),
        }
    }
}

/// A running stack.
pub struct Stack {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: Shutdown,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Stack {
    pub async fn start(config: LegatoConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        // The in-process bus by default; a broker when configured (then
        // messages survive a restart and nothing needs re-sending).
        let (bus, forgetful): (Arc<dyn Bus>, bool) = match &config.bus {
            BusSettings::InProcess => (Arc::new(InProcessBus::default()), true),
            broker => (wiring::open_bus(broker).await?, false),
        };
        Self::start_on(config, bus, forgetful, shutdown).await
    }

    /// [`Stack::start`] on a bus the caller made; `forgetful` says it keeps
    /// nothing across a restart (so in-flight work is re-sent on start).
    pub async fn start_on(
        mut config: LegatoConfig,
        bus: Arc<dyn Bus>,
        forgetful: bool,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", config.data_dir.display()))?;
        let store_settings = config.store.clone().unwrap_or(StoreSettings::Sqlite {
            path: config.data_dir.join("legato.db"),
            durability: config.durability,
        });
        let store = wiring::open_store(&store_settings).await?;
        if config.data.url == DataSettings::default().url {
            let demo = config.data_dir.join("demo.db");
            legato_agents::data::demo::ensure(&demo)?;
            config.data.url = format!("sqlite://{}", demo.display());
        }
        // Agents first: a workflow may name only registered agents.
        legato_gateway::registry::register_builtin(&*store, &config.gateway.agents).await?;
        legato_gateway::registry::register_catalogue(
            &*store,
            &*bus,
            &config.agents_dir,
            &config.gateway.push,
        )
        .await?;
        legato_gateway::register_catalogue(&*store, &config.workflows_dir).await?;

        let readiness = Readiness::new(Some(store.clone()));
        let mut tasks = JoinSet::new();

        let agent_config = AgentConfig {
            worker: config.worker.clone(),
            llm: config.llm.clone(),
            data: config.data.clone(),
            ..AgentConfig::default()
        };
        // One process, one replica: the built-in agents and the gateway
        // count into one tally.
        let figures = Arc::new(Tally::default());
        for kind in AgentKind::ALL {
            let agent = legato_agents::build(kind, &agent_config)?;
            let worker = Worker::new(agent, bus.clone(), config.worker.clone(), shutdown.clone())
                .with_figures(figures.clone())
                .with_store(store.clone());
            tasks.spawn(worker.start().await?);
        }

        let hub = ProgressHub::default();
        tasks.spawn(legato_notifier::relay(bus.clone(), hub.clone(), shutdown.clone()).await?);

        // Last, once every consumer is subscribed: the orchestrator re-sends
        // in-flight work on start, and the in-process bus delivers only to
        // queues that exist.
        let orchestrator_settings = OrchestratorSettings {
            redispatch_on_start: forgetful,
            ..config.orchestrator.clone()
        };
        let orchestrator = Orchestrator::start(
            bus.clone(),
            store.clone(),
            orchestrator_settings,
            shutdown.clone(),
            readiness.clone(),
        )
        .await?;
        tasks.spawn(orchestrator.wait());

        let azure = config.signalr.azure()?;
        if let Some(azure) = azure.clone() {
            let leadership = legato_service::leadership::Leadership::follow(
                legato_notifier::RELAY_LEASE,
                store.clone(),
                shutdown.clone(),
            );
            tasks.spawn(legato_notifier::relay_to_azure(
                hub.clone(),
                azure,
                leadership,
                shutdown.clone(),
            ));
        }
        let origins = config.signalr.allowed_origins.clone();
        legato_service::cors::check(&origins)?;
        let auth = Authenticator::new(&config.gateway.auth, &config.http.host, "gateway.auth")
            .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
        let kept = legato_gateway::dead_letters::kept_groups(&config.gateway.agents);
        tasks.spawn({
            let keeper = legato_gateway::dead_letters::keep(
                bus.clone(),
                store.clone(),
                kept.clone(),
                shutdown.clone(),
            );
            let registered = legato_gateway::dead_letters::keep_registered(
                bus.clone(),
                store.clone(),
                kept,
                shutdown.clone(),
            );
            async move {
                futures::join!(keeper, registered);
                Ok(())
            }
        });
        let gateway = GatewayState::new(store.clone(), bus, config.gateway.clone())
            .with_shutdown(shutdown.clone())
            .with_auth(auth)
            .with_signalr(azure.clone())
            .with_allowed_origins(origins.clone())
            .with_figures(figures);
        gateway.report_figures(reporter::replica_name("legato"), shutdown.clone());
        if let Some(azure) = azure {
            tasks.spawn({
                let sweep = gateway.memberships.clone().sweep(
                    store.clone(),
                    azure,
                    std::time::Duration::from_millis(config.signalr.membership_sweep_ms.max(100)),
                    shutdown.clone(),
                );
                async move {
                    sweep.await;
                    Ok(())
                }
            });
        }
        // One authenticator for the API, the stream and the hub.
        let notifier = NotifierState::new(hub, store.clone(), shutdown.clone())
            .with_allowed_origins(origins)
            .with_auth(gateway.auth.clone());
        let listener = tokio::net::TcpListener::bind(config.http.addr()?).await?;
        let addr = listener.local_addr()?;
        tasks.spawn({
            let pushes = legato_gateway::push::run(gateway.clone(), addr, shutdown.clone());
            async move {
                pushes.await;
                Ok(())
            }
        });
        let app = legato_gateway::router(gateway).merge(legato_notifier::router(notifier));
        tasks.spawn(legato_service::serve(
            listener,
            app,
            readiness,
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            store,
            shutdown,
            tasks,
        })
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Runs until shutdown; a service that fails stops the rest.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        legato_service::shutdown::join_all(&mut self.tasks, "service", Some(&self.shutdown)).await
    }
}
