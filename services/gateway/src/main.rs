//! The standalone gateway process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: legato_gateway::GatewayConfig = legato_service::load("gateway")?;
    let _telemetry = legato_service::telemetry::init("gateway", &config.telemetry)?;
    let shutdown = legato_service::Shutdown::new();
    shutdown.on_signals();
    legato_gateway::run(config, shutdown).await
}
