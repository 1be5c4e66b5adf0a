//! The standalone orchestrator process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: legato_orchestrator::OrchestratorConfig = legato_service::load("orchestrator")?;
    let _telemetry = legato_service::telemetry::init("orchestrator", &config.telemetry)?;
    let shutdown = legato_service::Shutdown::new();
    shutdown.on_signals();
    legato_orchestrator::run(config, shutdown).await
}
