//! The orchestrator as its own process.

use legato_service::{Readiness, Shutdown, wiring};

use crate::{Orchestrator, OrchestratorConfig};

pub async fn run(config: OrchestratorConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = wiring::open_bus(&config.bus).await?;
    let store = wiring::open_store(&config.store).await?;
    let readiness = Readiness::new(Some(store.clone()));
    // Subscribed before the port says "listening" (see the agents).
    let orchestrator = Orchestrator::start(
        bus,
        store,
        config.orchestrator,
        shutdown.clone(),
        readiness.clone(),
    )
    .await?;
    let listener = legato_service::listen("orchestrator", &config.http).await?;
    let server = tokio::spawn(legato_service::serve(
        listener,
        axum::Router::new(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let result = orchestrator.wait().await;
    readiness.set_ready(false);
    shutdown.trigger();
    server.await??;
    result
}
