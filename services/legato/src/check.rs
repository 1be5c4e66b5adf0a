//! `legato check <service>`: loads a service's settings exactly as
//! `legato run <service>` does and checks what opening its bus, store and
//! SignalR client would check, without connecting to anything. For
//! deployment templates (a test feeds it the environment the Bicep gives
//! the container apps) and for people editing settings.

use legato_service::wiring::{check_bus, check_store};
use legato_signalr::SignalRSettings;

/// One line naming what the settings select, or why they are refused.
pub fn check(service: &str) -> anyhow::Result<String> {
    let (bus, store, signalr) = match service {
        "gateway" => {
            let config: legato_gateway::GatewayConfig = legato_service::load(service)?;
            legato_service::auth::Authenticator::new(
                &config.gateway.auth,
                &config.http.host,
                "gateway.auth",
            )
            .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
            (config.bus, Some(config.store), Some(config.signalr))
        }
        "orchestrator" => {
            let config: legato_orchestrator::OrchestratorConfig = legato_service::load(service)?;
            (config.bus, Some(config.store), None)
        }
        "notifier" => {
            let config: legato_notifier::NotifierConfig = legato_service::load(service)?;
            legato_service::auth::Authenticator::new(&config.auth, &config.http.host, "auth")
                .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
            (config.bus, Some(config.store), Some(config.signalr))
        }
        other => match legato_agents::AgentKind::from_service(other) {
            Some(kind) => (kind.load_config()?.bus, None, None),
            None => anyhow::bail!(
                "unknown service {other:?}: gateway, orchestrator, notifier, agent-echo, \
                 agent-planner, agent-coder, agent-data or agent-approval"
            ),
        },
    };
    let mut parts = vec![format!("bus {}", check_bus(&bus)?)];
    if let Some(store) = store {
        parts.push(format!("store {}", check_store(&store)?));
    }
    if let Some(signalr) = signalr {
        parts.push(format!("signalr {}", signalr_mode(&signalr)?));
    }
    Ok(format!(
        "{service}: settings accepted: {}",
        parts.join(", ")
    ))
}

fn signalr_mode(settings: &SignalRSettings) -> anyhow::Result<&'static str> {
    legato_service::cors::check(&settings.allowed_origins)?;
    Ok(match settings.azure()? {
        Some(_) => "azure",
        None => "local hub",
    })
}
