//! The gateway: legato's HTTP API (`/api/v1`). It validates everything at
//! the edge, answers errors as `application/problem+json`, reads instance
//! state straight from the store, and turns requests that change an
//! instance into commands for the orchestrator. A start is committed as a
//! Pending record together with its command (outbox), so an accepted start
//! is never lost, even if the gateway dies before publishing.

mod api;
mod attempts;
mod body;
mod catalogue;
mod dashboard;
pub mod dead_letters;
mod dto;
pub mod limits;
pub mod memberships;
pub mod openapi;
pub mod pull;
pub mod push;
pub mod registry;
mod settings;
mod standalone;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use legato_bus::Bus;
use legato_service::agent_figures::Tally;
use legato_service::auth::{Authenticator, Guard};
use legato_service::definitions::Definitions;
use legato_service::entities::EntityTypes;
use legato_service::{OutboxRelay, Shutdown};
use legato_signalr::azure::AzureSignalR;
use legato_store::Store;
use tower_http::trace::TraceLayer;

pub use catalogue::register_catalogue;
pub use settings::{GatewayConfig, GatewaySettings};
pub use standalone::run;

#[derive(Clone)]
pub struct GatewayState {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub relay: Arc<OutboxRelay>,
    pub settings: Arc<GatewaySettings>,
    pub definitions: Arc<Definitions>,
    /// Entity types read lately, for agents' entity operations.
    pub entity_types: Arc<EntityTypes>,
    /// Azure SignalR Service, when configured; otherwise clients use the
    /// notifier's local hub.
    pub signalr: Option<AzureSignalR>,
    /// Browser origins allowed on negotiate and subscribe (empty: any).
    pub allowed_origins: Arc<Vec<String>>,
    /// Users added to groups, to remove when their instance finishes.
    pub memberships: Arc<memberships::Memberships>,
    /// Who may call; everyone until [`GatewayState::with_auth`].
    pub auth: Arc<Authenticator>,
    /// Pull workers' long polls and the agent queues they wait on.
    pub pull: Arc<pull::PullHub>,
    /// Agent registrations read lately, for the task paths.
    pub agents: Arc<registry::AgentCache>,
    /// What this replica saw of pull and push agents' tasks, for the
    /// registry's live figures.
    pub figures: Arc<Tally>,
    /// Progress reports of outside agents' attempts waiting for their turn.
    pub(crate) pace: Arc<legato_service::progress_pace::ProgressPace>,
}

impl GatewayState {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, settings: GatewaySettings) -> Self {
        let relay = Arc::new(OutboxRelay::new(bus.clone(), store.clone()));
        Self {
            store,
            relay,
            settings: Arc::new(settings),
            definitions: Arc::default(),
            entity_types: Arc::default(),
            signalr: None,
            allowed_origins: Arc::default(),
            memberships: Arc::default(),
            auth: Arc::new(Authenticator::Anyone),
            pull: Arc::new(pull::PullHub::new(bus.clone(), Shutdown::new())),
            agents: Arc::default(),
            figures: Arc::default(),
            pace: Arc::default(),
            bus,
        }
    }

    /// Counts into `figures` (shared with the built-in agents' workers
    /// when they run in the same process).
    pub fn with_figures(mut self, figures: Arc<Tally>) -> Self {
        self.figures = figures;
        self
    }

    /// Writes this replica's figures to the store until `shutdown`, as
    /// `replica`.
    pub fn report_figures(&self, replica: String, shutdown: Shutdown) {
        legato_service::agent_figures::reporter::spawn(
            self.store.clone(),
            self.figures.clone(),
            replica,
            shutdown,
        );
    }

    /// Long polls end (empty) when `shutdown` fires, so the gateway drains
    /// without waiting out every worker's poll.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.pull = Arc::new(pull::PullHub::new(self.bus.clone(), shutdown));
        self
    }

    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> Self {
        self.allowed_origins = Arc::new(origins);
        self
    }

    pub fn with_signalr(mut self, signalr: Option<AzureSignalR>) -> Self {
        self.signalr = signalr;
        self
    }
}

/// The API as a router, testable without a socket. Origins that are not
/// an origin were refused when the settings were checked; here they only
/// leave the browser routes without CORS.
pub fn router(state: GatewayState) -> Router {
    let limit = state.settings.max_body_bytes;
    let cors = legato_service::cors::layer(&state.allowed_origins).unwrap_or_else(|e| {
        tracing::error!("browser routes without CORS: {e}");
        tower_http::cors::CorsLayer::new()
    });
    let guard = Guard {
        auth: state.auth.clone(),
        role_of: api::required_role,
        query_token: false,
    };
    let authorize = axum::middleware::from_fn_with_state(guard, legato_service::auth::authorize);
    let limits = &state.settings.limits;
    let rate_limit =
        axum::middleware::from_fn_with_state(limits::RateLimits::new(limits), limits::rate_limit);
    let time_limit = axum::middleware::from_fn_with_state(
        std::time::Duration::from_millis(limits.request_timeout_ms.max(1)),
        limits::time_limit,
    );
    // Outermost first: the time limit, who is calling, then their rate.
    api::routes()
        .merge(api::browser_routes().layer(cors))
        .route_layer(rate_limit)
        .route_layer(authorize)
        .route_layer(time_limit)
        .route("/api/v1/openapi.json", axum::routing::get(openapi::serve))
        .merge(api::callback_routes())
        .merge(dashboard::routes())
        .with_state(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
}

/// The request span without the query string, which may hold filters
/// users consider private (and would hold a token if one were sent there).
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
    )
}
