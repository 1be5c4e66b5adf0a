//! The gateway as its own process.

use legato_service::{Readiness, Shutdown, wiring};

use crate::{GatewayConfig, GatewayState};

pub async fn run(config: GatewayConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = wiring::open_bus(&config.bus).await?;
    let store = wiring::open_store(&config.store).await?;
    crate::registry::register_builtin(&*store, &config.gateway.agents).await?;
    if !config.gateway.agents_dir.is_empty() {
        crate::registry::register_catalogue(
            &*store,
            &*bus,
            std::path::Path::new(&config.gateway.agents_dir),
            &config.gateway.push,
        )
        .await?;
    }
    // Agents first: a workflow may name only registered agents.
    if !config.gateway.workflows_dir.is_empty() {
        crate::register_catalogue(&*store, std::path::Path::new(&config.gateway.workflows_dir))
            .await?;
    }
    let readiness = Readiness::new(Some(store.clone()));
    let signalr = config.signalr.azure()?;
    legato_service::cors::check(&config.signalr.allowed_origins)?;
    let auth = legato_service::auth::Authenticator::new(
        &config.gateway.auth,
        &config.http.host,
        "gateway.auth",
    )
    .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
    let kept = crate::dead_letters::kept_groups(&config.gateway.agents);
    tokio::spawn(crate::dead_letters::keep(
        bus.clone(),
        store.clone(),
        kept.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::dead_letters::keep_registered(
        bus.clone(),
        store.clone(),
        kept,
        shutdown.clone(),
    ));
    let state = GatewayState::new(store.clone(), bus, config.gateway)
        .with_shutdown(shutdown.clone())
        .with_auth(auth)
        .with_signalr(signalr.clone())
        .with_allowed_origins(config.signalr.allowed_origins);
    state.report_figures(
        legato_service::agent_figures::reporter::replica_name("gateway"),
        shutdown.clone(),
    );
    if let Some(azure) = signalr {
        tokio::spawn(state.memberships.clone().sweep(
            store,
            azure,
            std::time::Duration::from_millis(config.signalr.membership_sweep_ms.max(100)),
            shutdown.clone(),
        ));
    }
    let listener = legato_service::listen("gateway", &config.http).await?;
    tokio::spawn(crate::push::run(
        state.clone(),
        listener.local_addr()?,
        shutdown.clone(),
    ));
    let app = crate::router(state);
    readiness.set_ready(true);
    legato_service::serve(listener, app, readiness, shutdown).await
}
