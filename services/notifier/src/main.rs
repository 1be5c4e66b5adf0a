//! The standalone notifier process.

use legato_notifier::{NotifierConfig, NotifierState, ProgressHub};
use legato_service::{Readiness, Shutdown, wiring};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: NotifierConfig = legato_service::load("notifier")?;
    let _telemetry = legato_service::telemetry::init("notifier", &config.telemetry)?;
    let bus = wiring::open_bus(&config.bus)?;
    let store = wiring::open_store(&config.store)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals();
    let hub = ProgressHub::default();
    let readiness = Readiness::new(Some(store.clone()));
    let app = legato_notifier::router(NotifierState::new(hub.clone(), store, shutdown.clone()));
    let listener = tokio::net::TcpListener::bind(config.http.addr()?).await?;
    let server = tokio::spawn(legato_service::serve(
        listener,
        app,
        readiness.clone(),
        shutdown.clone(),
    ));
    if let Some(azure) = config.signalr.azure()? {
        tokio::spawn(legato_notifier::relay_to_azure(
            hub.clone(),
            azure,
            shutdown.clone(),
        ));
    }
    readiness.set_ready(true);
    let result = legato_notifier::relay(bus, hub, shutdown.clone())
        .await?
        .await;
    shutdown.trigger();
    server.await??;
    result
}
