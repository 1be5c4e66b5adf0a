//! `legato up` runs the whole stack in one process; `legato bench` measures
//! it; `legato start`, `watch`, `approve`, … drive a gateway.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use legato::{LegatoConfig, Stack, bench, chaos, check, cli, topology};
use legato_service::Shutdown;

#[derive(Parser)]
#[command(
    name = "legato",
    version,
    about = "Durable, message-driven orchestration for teams of AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway, orchestrator, agents and notifier in one process
    /// (in-process bus, SQLite store). Settings: config/legato.toml and
    /// LEGATO__... variables; these flags win.
    Up {
        /// Port of the API, progress stream and health (0 picks a free one).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        host: Option<String>,
        /// Where state is kept (default ./.legato).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The workflow catalogue registered at start (default ./workflows).
        #[arg(long)]
        workflows: Option<PathBuf>,
    },
    /// Run one service as its own process (what the standalone binaries
    /// do): gateway, orchestrator, notifier, or agent-<echo|planner|coder|data|approval>.
    /// Reads config/<service>.toml and LEGATO__... like they do.
    Run { service: String },
    /// Load a service's settings as `run` would and check them (bus, store,
    /// SignalR) without connecting; exit 1 with the reason if refused.
    Check { service: String },
    /// Exit 0 when the URL answers 2xx (container health checks).
    Probe { url: String },
    /// Check workflow definition files offline, with the messages
    /// registration gives; exit 1 if one is refused.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Start N instances of a fan-out-4-then-1 echo workflow with bounded
    /// concurrency; print throughput, latency and the raw store cost.
    Bench(bench::BenchOptions),
    /// Soak the process-per-service stack (RabbitMQ, an Azurite of its
    /// own) with kill -9s, broker and store restarts and hung agents while
    /// instances run; check each completed with every result recorded once
    /// and nothing dead-lettered; print the tally (exit 1 if a check fails).
    Chaos(chaos::ChaosOptions),
    /// Print every broker entity (topics, subscriptions, rules) the
    /// services use, as text or JSON.
    Topology(topology::TopologyOptions),
    // Listed for `legato --help`; parsed by `cli::ClientCli`, whose
    // `--url`, `--token` and `--output` apply to these alone.
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// glibc's allocator gives each thread an arena of its own and returns
/// little of them: a 10,000-item `for_each` peaked at 245 MB with it and
/// 140 MB with one arena (docs/performance.md); mimalloc keeps
/// per-thread caches without that growth.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let first = std::env::args().nth(1).unwrap_or_default();
    if <cli::ClientCommand as clap::Subcommand>::has_subcommand(&first) {
        let client = cli::ClientCli::parse();
        // A refusal is one line for the person or script, not a trace.
        return Ok(cli::run(client.command, client.target)
            .await
            .unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }));
    }
    match Cli::parse().command {
        Command::Chaos(options) => chaos::run(options).await,
        Command::Validate { files } => Ok(legato::validate::run(&files)),
        command => serve(command).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn serve(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            port,
            host,
            data_dir,
            workflows,
        } => {
            let mut config: LegatoConfig = legato_service::load("legato")?;
            if let Some(port) = port {
                config.http.port = port;
            }
            if let Some(host) = host {
                config.http.host = host;
            }
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            if let Some(dir) = workflows {
                config.workflows_dir = dir;
            }
            let _telemetry = legato_service::telemetry::init("legato", &config.telemetry)?;
            let shutdown = Shutdown::new();
            shutdown.on_signals();
            let data_dir = config.data_dir.clone();
            let stack = Stack::start(config, shutdown).await?;
            // Tests and scripts read this line to find the port.
            println!(
                "legato up: listening on http://{} (state in {})",
                stack.addr,
                data_dir.display()
            );
            std::io::stdout().flush()?;
            stack.wait().await
        }
        Command::Run { service } => run_service(&service).await,
        Command::Check { service } => {
            println!("{}", check::check(&service)?);
            Ok(())
        }
        Command::Probe { url } => {
            let response = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()?
                .get(&url)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            Ok(())
        }
        Command::Bench(options) => bench::run(options).await,
        Command::Chaos(_) => anyhow::bail!("chaos is run by main"),
        Command::Topology(options) => topology::run(options),
        Command::Client(_) => anyhow::bail!("client commands are run by cli::run"),
        Command::Validate { .. } => anyhow::bail!("validate is run by main"),
    }
}

async fn run_service(service: &str) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    macro_rules! standalone {
        ($config:ty, $run:path) => {{
            let config: $config = legato_service::load(service)?;
            let _telemetry = legato_service::telemetry::init(service, &config.telemetry)?;
            $run(config, shutdown).await
        }};
    }
    match service {
        "gateway" => standalone!(legato_gateway::GatewayConfig, legato_gateway::run),
        "orchestrator" => standalone!(
            legato_orchestrator::OrchestratorConfig,
            legato_orchestrator::run
        ),
        "notifier" => standalone!(legato_notifier::NotifierConfig, legato_notifier::run),
        other => match legato_agents::AgentKind::from_service(other) {
            Some(kind) => {
                let config = kind.load_config()?;
                let _telemetry = legato_service::telemetry::init(other, &config.telemetry)?;
                legato_agents::run(kind, config, shutdown).await
            }
            None => anyhow::bail!(
                "unknown service {other:?}: gateway, orchestrator, notifier, agent-echo, agent-planner, agent-coder, agent-data or agent-approval"
            ),
        },
    }
}
