//! The standalone orchestrator process.

use legato_orchestrator::{Orchestrator, OrchestratorConfig};
use legato_service::{Readiness, Shutdown, wiring};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: OrchestratorConfig = legato_service::load("orchestrator")?;
    let _telemetry = legato_service::telemetry::init("orchestrator", &config.telemetry)?;
    let bus = wiring::open_bus(&config.bus)?;
    let store = wiring::open_store(&config.store)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let readiness = Readiness::new(Some(store.clone()));
    let listener = tokio::net::TcpListener::bind(config.http.addr()?).await?;
    let server = tokio::spawn(legato_service::serve(
        listener,
        axum::Router::new(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let orchestrator = Orchestrator::start(
        bus,
        store,
        config.orchestrator,
        shutdown.clone(),
        readiness.clone(),
    )
    .await?;
    shutdown.wait().await;
    readiness.set_ready(false);
    orchestrator.wait().await?;
    server.await??;
    Ok(())
}
