//! The notifier as its own process.

use legato_service::{Readiness, Shutdown, wiring};

use crate::{NotifierConfig, NotifierState, ProgressHub};

pub async fn run(config: NotifierConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = wiring::open_bus(&config.bus).await?;
    let store = wiring::open_store(&config.store).await?;
    let hub = ProgressHub::default();
    let readiness = Readiness::new(Some(store.clone()));
    let feed = crate::relay(bus, hub.clone(), shutdown.clone()).await?;
    legato_service::cors::check(&config.signalr.allowed_origins)?;
    let auth = legato_service::auth::Authenticator::new(&config.auth, &config.http.host, "auth")
        .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
    let store_for_lease = store.clone();
    let app = crate::router(
        NotifierState::new(hub.clone(), store, shutdown.clone())
            .with_allowed_origins(config.signalr.allowed_origins.clone())
            .with_auth(std::sync::Arc::new(auth))
            .with_max_connections_per_tenant(config.max_connections_per_tenant),
    );
    let listener = legato_service::listen("notifier", &config.http).await?;
    let server = tokio::spawn(legato_service::serve(
        listener,
        app,
        readiness.clone(),
        shutdown.clone(),
    ));
    if let Some(azure) = config.signalr.azure()? {
        let leadership = legato_service::leadership::Leadership::follow(
            crate::RELAY_LEASE,
            store_for_lease,
            shutdown.clone(),
        );
        tokio::spawn(crate::relay_to_azure(
            hub,
            azure,
            leadership,
            shutdown.clone(),
        ));
    }
    readiness.set_ready(true);
    let result = feed.await;
    shutdown.trigger();
    server.await??;
    result
}
