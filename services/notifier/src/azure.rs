//! Azure mode: every progress event goes to the Azure SignalR group named
//! by its instance id, sent by the one replica holding the relay lease
//! ([`Leadership`]). Each instance has its own lane: its events go in
//! publication order, one at a time, while other instances' lanes send
//! concurrently (at most [`CONCURRENT_SENDS`] requests in flight), so one
//! instance's slow or failing sends delay nobody else. A send that keeps
//! failing is logged with the instance and skipped (watchers can read the
//! history for it); it never stops the relay. An event too large for the
//! service (1 MB a request) goes as a summary that points at the history
//! instead. Pieces of a model's output go down their instance's lane too
//! (target `output`), so they keep their place among its events; they are
//! not kept for a failover, as nothing keeps them for late watchers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use legato_contracts::InstanceId;
use legato_service::Shutdown;
use legato_signalr::azure::{AzureError, AzureSignalR, MAX_BODY_BYTES};
use legato_signalr::{OUTPUT_TARGET, PROGRESS_TARGET};
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Semaphore, mpsc};

use legato_service::leadership::{self, Leadership};

use crate::ProgressHub;
use crate::hub::{Relayed, Update};

/// The lease of the notifier replica that relays to Azure SignalR: every
/// replica keeps its own feed of all progress (its clients need it), but
/// only the holder sends to Azure, so each event is sent once whatever the
/// number of replicas.
pub const RELAY_LEASE: &str = "signalr-relay";

/// Requests to Azure in flight at once, over all instances.
pub const CONCURRENT_SENDS: usize = 32;
/// Events one instance may have waiting for their turn; beyond that an
/// event is logged and left to the history.
const LANE_CAPACITY: usize = 1_024;

/// Room left for the `{target, arguments}` around the event.
const ENVELOPE_BYTES: usize = 1024;
/// What a summary keeps of an oversize event.
const SUMMARY_FIELDS: [&str; 9] = [
    "instanceId",
    "position",
    "seq",
    "kind",
    "status",
    "step",
    "item",
    "attempt",
    "at",
];

/// The event as sent to Azure: whole, or, when over the service's limit, a
/// summary with `truncated: true` and where the whole event is
/// (`historyUri`, relative to the gateway: the history row whose `progress`
/// holds it, read as the tenant names the instance).
pub(crate) fn for_azure(update: &Update) -> Value {
    let full = update.to_client_json();
    let size = serde_json::to_vec(&full).map_or(usize::MAX, |b| b.len());
    if size + ENVELOPE_BYTES <= MAX_BODY_BYTES {
        return full;
    }
    let mut summary: Map<String, Value> = SUMMARY_FIELDS
        .iter()
        .filter_map(|k| full.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    summary.insert("truncated".into(), Value::Bool(true));
    summary.insert(
        "historyUri".into(),
        Value::String(format!(
            "/api/v1/instances/{}?history=true&after={}&limit=1",
            update.instance.local(),
            update.event.position.saturating_sub(1)
        )),
    );
    tracing::warn!(instance = %update.instance, position = update.event.position, size, "progress event over Azure SignalR's 1 MB limit: sent as a summary");
    Value::Object(summary)
}

/// Relays the hub's events to Azure while this replica holds the lease.
/// A replica that does not keeps the last lease period's events, and sends
/// them when it takes over: around a failover an event may reach Azure
/// twice, never not at all.
pub async fn relay_to_azure(
    hub: ProgressHub,
    azure: AzureSignalR,
    mut leadership: Leadership,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut updates = hub.subscribe();
    let mut lanes = Lanes::new(azure);
    let mut recent: VecDeque<(Instant, Arc<Update>)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = leadership.changed() => {
                if leadership.holds() {
                    tracing::info!(events = recent.len(), "took over the Azure SignalR relay; sending the last lease period's events again");
                    for (_, update) in recent.drain(..) {
                        lanes.send(Relayed::Progress(update));
                    }
                }
            }
            update = updates.recv() => match update {
                Ok(relayed) if leadership.holds() => lanes.send(relayed),
                Ok(Relayed::Output(_)) => {}
                Ok(Relayed::Progress(update)) => {
                    let now = Instant::now();
                    while recent.front().is_some_and(|(at, _)| now - *at > leadership::TTL) {
                        recent.pop_front();
                    }
                    recent.push_back((now, update));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "the Azure SignalR relay fell behind; watchers can read the history"
                    );
                }
                Err(RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// One lane per instance, sharing [`CONCURRENT_SENDS`] permits.
struct Lanes {
    azure: AzureSignalR,
    permits: Arc<Semaphore>,
    lanes: HashMap<InstanceId, mpsc::Sender<Relayed>>,
}

impl Lanes {
    fn new(azure: AzureSignalR) -> Self {
        Self {
            azure,
            permits: Arc::new(Semaphore::new(CONCURRENT_SENDS)),
            lanes: HashMap::new(),
        }
    }

    fn send(&mut self, relayed: Relayed) {
        // A lane ends after its instance's final event.
        self.lanes.retain(|_, lane| !lane.is_closed());
        let (azure, permits) = (&self.azure, &self.permits);
        let lane = self
            .lanes
            .entry(relayed.instance().clone())
            .or_insert_with(|| lane(azure.clone(), permits.clone()));
        match lane.try_send(relayed) {
            Ok(()) => {}
            Err(e) => match e.into_inner() {
                Relayed::Progress(update) => {
                    tracing::error!(instance = %update.instance, position = update.event.position, "progress not relayed to Azure SignalR: {LANE_CAPACITY} events of this instance are already waiting; watchers can read the history");
                }
                Relayed::Output(output) => {
                    tracing::warn!(instance = %output.instance, call = %output.piece.call, seq = output.piece.seq, "a piece of output not relayed to Azure SignalR: {LANE_CAPACITY} events of this instance are already waiting");
                }
            },
        }
    }
}

/// One instance's sends, in order.
fn lane(azure: AzureSignalR, permits: Arc<Semaphore>) -> mpsc::Sender<Relayed> {
    let (sender, mut events) = mpsc::channel::<Relayed>(LANE_CAPACITY);
    tokio::spawn(async move {
        while let Some(relayed) = events.recv().await {
            let (target, event) = match &relayed {
                Relayed::Progress(update) => (PROGRESS_TARGET, for_azure(update)),
                Relayed::Output(output) => (OUTPUT_TARGET, output.to_client_json()),
            };
            send(&azure, &permits, relayed.instance(), target, event).await;
            if relayed.progress().is_some_and(|update| update.is_final()) {
                return;
            }
        }
    });
    sender
}

/// Sends one event, retrying what may pass later. A permit is held per
/// request, not across the waits between tries, so instances waiting out
/// a `Retry-After` leave the others room.
async fn send(
    azure: &AzureSignalR,
    permits: &Semaphore,
    instance: &InstanceId,
    target: &str,
    event: Value,
) {
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
        .with_jitter();
    let group = instance.to_string();
    let attempt = || async {
        let _permit = permits.acquire().await;
        azure
            .send_to_group(&group, target, vec![event.clone()])
            .await
    };
    let sent = attempt
        .retry(retry)
        .when(AzureError::is_transient)
        // The service's Retry-After, when longer, wins.
        .adjust(|e, backoff| match (e.retry_after(), backoff) {
            (Some(asked), Some(planned)) => Some(asked.max(planned)),
            (_, planned) => planned,
        })
        .await;
    if let Err(e) = sent {
        let position = event.get("position").and_then(Value::as_u64);
        tracing::error!(instance = %group, target, position, "not relayed to Azure SignalR: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use legato_contracts::{InstanceId, ProgressEvent, ProgressKind, RuntimeStatus};

    fn update(data: Value) -> Update {
        Update {
            instance: InstanceId::parse("acme~big-1").unwrap(),
            event: ProgressEvent {
                position: 14,
                seq: 9,
                kind: ProgressKind::StepCompleted,
                status: RuntimeStatus::Running,
                step: None,
                item: None,
                iteration: None,
                attempt: Some(1),
                message: None,
                data: Some(data),
            },
            message_id: "m".into(),
            n: 1,
        }
    }

    #[test]
    fn an_event_within_the_limit_goes_whole() {
        let small = update(serde_json::json!({"rows": 3}));
        assert_eq!(for_azure(&small), small.to_client_json());
    }

    #[test]
    fn an_event_over_the_limit_goes_as_a_summary_pointing_at_the_history() {
        let big = update(Value::String("x".repeat(MAX_BODY_BYTES)));
        let sent = for_azure(&big);
        assert!(serde_json::to_vec(&sent).unwrap().len() < 1024);
        assert_eq!(sent["truncated"], true);
        assert_eq!((&sent["position"], &sent["seq"]), (&14.into(), &9.into()));
        assert_eq!(sent["instanceId"], "big-1");
        assert_eq!(
            sent["historyUri"],
            "/api/v1/instances/big-1?history=true&after=13&limit=1"
        );
        assert!(sent.get("data").is_none());
    }
}
