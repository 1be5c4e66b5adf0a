//! `GET /api/v1/instances/{id}/stream`: server-sent events of one
//! instance's progress, for curl and browsers.
//!
//! The stream opens with a `status` event (the instance as stored now, with
//! its last progress `position`; the event has no `id:`), then the
//! instance's progress as `progress` events whose `id:` is the event's
//! position, and ends after the instance reaches a final status. A new
//! watcher first gets the current run's progress (its last 1,024 events at
//! most); one that sends `Last-Event-ID: N` (browsers do on reconnect) or
//! `?after=N` gets exactly the events after position N, from the history
//! where the notifier no longer holds them. Positions run without a gap: a
//! watcher that would skip some (it fell behind, or an event reached this
//! notifier late) is sent the missing ones from the history first.
//!
//! Between them come `output` events (no `id:`): the pieces of what a model
//! is writing inside one of the instance's tasks, as they arrive, for
//! whoever watches then; they are not resent to a watcher who comes later.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use legato_contracts::InstanceId;
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use legato_service::records::state_of;
use legato_store::Store;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::cursor::Cursor;
use crate::{InstanceUpdates, NotifierState, Relayed, Update};

/// Other parameters (`access_token`, which the authentication layer reads,
/// and whatever a client library adds) are left alone.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamQuery {
    /// The last position the client saw (as `Last-Event-ID`).
    after: Option<u64>,
}

/// Where a reconnecting client left off: `Last-Event-ID`, else `?after=`.
fn resume_point(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<u64>, Problem> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                Problem::field(
                    "Last-Event-ID",
                    "must be a progress position (a whole number) from this stream",
                )
            }),
        None => Ok(query.after),
    }
}

pub(crate) async fn stream(
    State(state): State<NotifierState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return Problem::field("query", e.body_text()).into_response(),
    };
    let resume = match resume_point(&headers, &query) {
        Ok(resume) => resume,
        Err(problem) => return problem.into_response(),
    };
    // The caller's tenant's instance: another tenant's answers as missing.
    let id = match InstanceId::scoped(caller.tenant.as_ref(), id) {
        Ok(id) => id,
        Err(e) => return Problem::field("id", e.to_string()).into_response(),
    };
    let slot = match state.connection_slot(caller.tenant.as_ref()) {
        Ok(slot) => slot,
        Err(problem) => return problem.into_response(),
    };
    // Watch before reading the snapshot, so nothing falls in between.
    let (replay, updates) = state.hub.watch(&id);
    let shutdown = state.shutdown.clone();
    let store = state.store.clone();
    let stored = match store.load(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            return Problem::not_found(format!("no instance {}", id.local())).into_response();
        }
        Err(e) => return Problem::from(e).into_response(),
    };
    let instance = match state_of(&stored.record) {
        Ok(state) => state,
        Err(e) => return Problem::from(e).into_response(),
    };
    let waiting_for: Vec<&str> = instance.awaited_events().map(|(_, e)| e.as_str()).collect();
    let snapshot = Event::default()
        .event("status")
        .json_data(json!({
            "id": id.local(),
            "runtimeStatus": instance.status.as_str(),
            "seq": instance.sequence,
            "position": instance.position,
            "customStatus": instance.custom_status,
            "waitingFor": waiting_for,
        }))
        .unwrap_or_default();
    let finished = instance.status.is_terminal();
    let mut cursor = match resume {
        Some(after) => Cursor::after(id.clone(), after),
        None => Cursor::new_watcher(id.clone(), instance.run_position, instance.position),
    };
    let mut pending = VecDeque::new();
    for update in replay {
        let admitted = cursor.admit(&*store, update).await;
        pending.extend(admitted.into_iter().map(Relayed::Progress));
    }
    // What the snapshot holds and this notifier does not (any more).
    let missed = cursor
        .catch_up(&*store, Some(instance.position.saturating_add(1)))
        .await;
    pending.extend(missed.into_iter().map(Relayed::Progress));
    let watch = Watch {
        _slot: slot,
        shutdown,
        store,
        updates,
        cursor,
        first: Some(snapshot),
        pending,
        done: finished,
    };
    Sse::new(events(watch))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Watch {
    /// The stream's place under the tenant's cap, freed when it ends.
    _slot: crate::limits::Slot,
    shutdown: legato_service::Shutdown,
    store: Arc<dyn Store>,
    updates: InstanceUpdates,
    cursor: Cursor,
    first: Option<Event>,
    /// Events to send before taking more from the hub.
    pending: VecDeque<Relayed>,
    /// The instance had finished when the stream opened: it ends with what
    /// is pending.
    done: bool,
}

fn progress_event(update: &Update) -> Event {
    let event = Event::default().event("progress");
    let event = match update.event.position {
        0 => event,
        position => event.id(position.to_string()),
    };
    event.json_data(&update.event).unwrap_or_default()
}

fn output_event(output: &crate::Output) -> Event {
    Event::default()
        .event("output")
        .json_data(output.to_client_json())
        .unwrap_or_default()
}

fn events(watch: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(watch, |mut w| async move {
        if let Some(first) = w.first.take() {
            return Some((Ok(first), w));
        }
        loop {
            match w.pending.pop_front() {
                Some(Relayed::Progress(update)) => {
                    if update.is_final() {
                        w.done = true;
                        w.pending.clear();
                    }
                    return Some((Ok(progress_event(&update)), w));
                }
                Some(Relayed::Output(output)) => return Some((Ok(output_event(&output)), w)),
                None => {}
            }
            if w.done {
                return None;
            }
            let received = tokio::select! {
                // A draining server ends open streams; clients reconnect.
                _ = w.shutdown.wait() => return None,
                received = w.updates.recv() => received,
            };
            match received {
                Ok(Relayed::Progress(update)) => {
                    let admitted = w.cursor.admit(&*w.store, update).await;
                    w.pending
                        .extend(admitted.into_iter().map(Relayed::Progress));
                }
                Ok(output @ Relayed::Output(_)) => w.pending.push_back(output),
                // What it missed is in the history by now (pieces of output
                // it missed are gone: the reply is in the task's journal).
                Err(RecvError::Lagged(_)) => {
                    let missed = w.cursor.catch_up(&*w.store, None).await;
                    w.pending.extend(missed.into_iter().map(Relayed::Progress));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
