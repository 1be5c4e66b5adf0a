//! The standalone orchestrator process.

use legato_orchestrator::{Orchestrator, OrchestratorConfig};
use legato_service::{Readiness, Shutdown, health_router, wiring};

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
    let health = health_router(readiness.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, health)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });
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
