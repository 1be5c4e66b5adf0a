//! The standalone notifier process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: legato_notifier::NotifierConfig = legato_service::load("notifier")?;
    let _telemetry = legato_service::telemetry::init("notifier", &config.telemetry)?;
    let shutdown = legato_service::Shutdown::new();
    shutdown.on_signals();
    legato_notifier::run(config, shutdown).await
}
