//! The standalone gateway process.

use legato_gateway::{GatewayConfig, GatewayState};
use legato_service::{Readiness, Shutdown, wiring};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: GatewayConfig = legato_service::load("gateway")?;
    let _telemetry = legato_service::telemetry::init("gateway", &config.telemetry)?;
    let bus = wiring::open_bus(&config.bus)?;
    let store = wiring::open_store(&config.store)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let readiness = Readiness::new(Some(store.clone()));
    let signalr = config.signalr.azure()?;
    let app =
        legato_gateway::router(GatewayState::new(store, bus, config.gateway).with_signalr(signalr));
    let listener = tokio::net::TcpListener::bind(config.http.addr()?).await?;
    readiness.set_ready(true);
    legato_service::serve(listener, app, readiness, shutdown).await
}
