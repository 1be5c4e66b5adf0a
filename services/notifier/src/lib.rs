//! The notifier: consumes the `progress` topic and relays each event to the
//! clients watching its instance: server-sent events
//! (`/api/v1/instances/{id}/stream`), the local SignalR hub
//! (`/hubs/progress`), and, with a connection string, Azure SignalR Service. Every notifier replica needs every event
//! (its clients may watch any instance), so each consumes through a group
//! of its own.

mod azure;
mod cursor;
mod hub;
mod limits;
mod signalr_hub;
mod sse;
mod standalone;

use std::collections::HashMap;

use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use tower_http::cors::CorsLayer;

use legato_bus::Bus;
use legato_contracts::{Envelope, Payload, ProgressEvent};
use legato_service::auth::{AuthSettings, Authenticator, Guard, Role};
use legato_service::problem::Problem;
use legato_service::{BusSettings, HttpSettings, Shutdown, StoreSettings, TelemetrySettings};
use legato_signalr::SignalRSettings;
use legato_store::Store;
use serde::{Deserialize, Serialize};

pub use azure::{RELAY_LEASE, relay_to_azure};
pub use hub::{InstanceUpdates, Output, ProgressHub, Relayed, Update};
pub use standalone::run;

/// Everything the standalone `notifier` binary reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub signalr: SignalRSettings,
    /// Who may open streams and hub connections: the same settings as the
    /// gateway's `gateway.auth`, so one token works on both.
    pub auth: AuthSettings,
    /// Streams and hub connections one tenant may hold open at once.
    pub max_connections_per_tenant: usize,
}

/// Enough for every dashboard and watcher of a busy tenant; small enough
/// that one tenant cannot take a replica's sockets.
pub const DEFAULT_MAX_CONNECTIONS_PER_TENANT: usize = 1000;

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8083),
            telemetry: TelemetrySettings::default(),
            store: StoreSettings::default(),
            bus: BusSettings::default(),
            signalr: SignalRSettings::default(),
            auth: AuthSettings::default(),
            max_connections_per_tenant: DEFAULT_MAX_CONNECTIONS_PER_TENANT,
        }
    }
}

/// What the notifier's HTTP routes need.
#[derive(Clone)]
pub struct NotifierState {
    pub(crate) hub: ProgressHub,
    pub(crate) store: Arc<dyn Store>,
    /// Ends hub sessions and streams, so a draining server can close.
    pub(crate) shutdown: Shutdown,
    /// Connection tokens handed out by negotiate, not yet connected.
    pub(crate) tokens: Arc<Mutex<HashMap<String, Instant>>>,
    /// Browser origins allowed on the stream and the hub (empty: any).
    pub(crate) allowed_origins: Arc<Vec<String>>,
    /// Who may watch; everyone until [`NotifierState::with_auth`].
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) connections: limits::ConnectionCap,
}

impl NotifierState {
    pub fn new(hub: ProgressHub, store: Arc<dyn Store>, shutdown: Shutdown) -> Self {
        Self {
            hub,
            store,
            shutdown,
            tokens: Arc::default(),
            allowed_origins: Arc::default(),
            auth: Arc::new(Authenticator::Anyone),
            connections: limits::ConnectionCap::new(DEFAULT_MAX_CONNECTIONS_PER_TENANT),
        }
    }

    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_max_connections_per_tenant(mut self, limit: usize) -> Self {
        self.connections = limits::ConnectionCap::new(limit);
        self
    }

    /// A place for one more of the tenant's open connections, or 429.
    pub(crate) fn connection_slot(
        &self,
        tenant: Option<&legato_contracts::TenantId>,
    ) -> Result<limits::Slot, Problem> {
        self.connections.take(tenant).ok_or_else(|| {
            Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "Too many open connections",
                format!(
                    "this tenant already holds {} streams and hub connections open; close one",
                    self.connections.limit()
                ),
            )
            .retry_after(std::time::Duration::from_secs(5))
        })
    }

    pub fn with_allowed_origins(mut self, origins: Vec<String>) -> Self {
        self.allowed_origins = Arc::new(origins);
        self
    }
}

/// The notifier's routes: the progress stream (SSE) and the SignalR hub,
/// under the same CORS as the gateway's browser routes
/// (`signalr.allowed_origins`).
pub fn router(state: NotifierState) -> Router {
    let cors = legato_service::cors::layer(&state.allowed_origins).unwrap_or_else(|e| {
        tracing::error!("stream and hub without CORS: {e}");
        CorsLayer::new()
    });
    // Browsers cannot set headers on event streams and WebSockets: a token
    // may come as `?access_token=`, as the SignalR client sends it.
    let guard = Guard {
        auth: state.auth.clone(),
        role_of: |_, _| Role::Read,
        query_token: true,
    };
    Router::new()
        .route("/api/v1/instances/{id}/stream", get(sse::stream))
        .route("/hubs/progress/negotiate", post(signalr_hub::negotiate))
        .route("/hubs/progress", get(signalr_hub::connect))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            legato_service::auth::authorize,
        ))
        .layer(cors)
        .with_state(state)
}

/// Subscribes to progress now and returns the loop that feeds the hub
/// until shutdown.
pub async fn relay(
    bus: Arc<dyn Bus>,
    hub: ProgressHub,
    shutdown: Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let progress = bus
        .subscribe(legato_bus::topology::notifier_progress(&replica).prefetch(FEED_WINDOW))
        .await?;
    Ok(feed(progress, hub, shutdown))
}

/// A progress message's events, each with the id the hub drops copies by:
/// one event keeps the message's id; a batch's events get
/// `<message id>#<n>`, the same on a redelivery.
fn progress_events(id: String, payload: Payload) -> Vec<(ProgressEvent, String)> {
    match payload {
        Payload::Progress(event) => vec![(event, id)],
        Payload::ProgressBatch(batch) => batch
            .events
            .into_iter()
            .enumerate()
            .map(|(n, event)| (event, format!("{id}#{n}")))
            .collect(),
        // Not progress: `take` relays or dead-letters those.
        _ => Vec::new(),
    }
}

/// Progress deliveries this replica holds unsettled at once. An event is
/// in the hub as soon as it is read; what takes time is settling it (a
/// round trip to the broker), so settlements run side by side, and the
/// window bounds them: past it the broker keeps the messages, unlocked,
/// instead of this replica holding (and on Service Bus renewing) the
/// locks of a backlog.
const FEED_WINDOW: usize = 64;

async fn feed(
    mut progress: Box<dyn legato_bus::Subscription>,
    hub: ProgressHub,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut settling = futures::stream::FuturesUnordered::new();
    loop {
        let delivery = tokio::select! {
            _ = shutdown.wait() => {
                // What was read is in the hub: finish telling the broker.
                while settling.next().await.is_some() {}
                return Ok(());
            }
            Some(()) = settling.next(), if !settling.is_empty() => continue,
            d = progress.next(), if settling.len() < FEED_WINDOW => d?,
        };
        settling.push(take(delivery, &hub));
    }
}

/// Puts one delivery's events into the hub now (in the order read), and
/// answers how it is to be settled.
fn take(
    delivery: legato_bus::Delivery,
    hub: &ProgressHub,
) -> futures::future::BoxFuture<'static, ()> {
    let settle: futures::future::BoxFuture<'static, Result<(), legato_bus::BusError>> =
        match delivery.decode() {
            Ok(Envelope {
                id,
                subject,
                time,
                traceparent,
                payload: payload @ (Payload::Progress(_) | Payload::ProgressBatch(_)),
                ..
            }) => {
                legato_service::metrics::received("notifier", time);
                let events = progress_events(id, payload);
                let kinds: Vec<_> = events.iter().map(|(event, _)| event.kind).collect();
                let span = tracing::info_span!("relay", instance = %subject, kind = ?kinds);
                legato_service::telemetry::continue_trace(&span, traceparent.as_ref());
                span.in_scope(|| {
                    for (event, id) in events {
                        hub.publish(subject.clone(), event, id);
                    }
                });
                Box::pin(delivery.ack())
            }
            Ok(Envelope {
                subject,
                payload: Payload::AgentOutput(piece),
                ..
            }) => {
                hub.publish_output(subject, piece);
                Box::pin(delivery.ack())
            }
            Ok(other) => {
                let reason = format!(
                    "{} does not belong on the progress topic",
                    other.type_name()
                );
                Box::pin(async move {
                    legato_service::metrics::dead_letter(delivery, "notifier", &reason).await
                })
            }
            Err(e) => {
                let reason = e.to_string();
                Box::pin(async move {
                    legato_service::metrics::dead_letter(delivery, "notifier", &reason).await
                })
            }
        };
    Box::pin(async move {
        if let Err(e) = settle.await {
            tracing::warn!("could not settle a progress delivery: {e}");
        }
    })
}
