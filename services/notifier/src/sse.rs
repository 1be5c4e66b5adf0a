//! `GET /api/v1/instances/{id}/stream`: server-sent events of one
//! instance's progress, for curl and browsers.
//!
//! The stream opens with a `status` event (the instance as stored now), then
//! replays the instance's recent progress the notifier still holds, then
//! sends every new `progress` event (`id:` is the event's history sequence
//! number) and ends after the instance reaches a final status. If the
//! instance had already finished, the stream is its status and whatever is
//! still buffered. A
//! watcher that fell behind gets a `lagged` event with the number missed and
//! can read `GET /api/v1/instances/{id}?history=true&after=<last id>`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use legato_contracts::InstanceId;
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use legato_service::records::state_of;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::Update;
use crate::hub::current_run;

use crate::NotifierState;

pub(crate) async fn stream(
    State(state): State<NotifierState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Response {
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
    let stored = match state.store.load(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            return Problem::not_found(format!("no instance {}", id.local())).into_response();
        }
        Err(e) => return Problem::from(e).into_response(),
    };
    let state = match state_of(&stored.record) {
        Ok(state) => state,
        Err(e) => return Problem::from(e).into_response(),
    };
    let waiting_for: Vec<&str> = state.awaited_events().map(|(_, e)| e.as_str()).collect();
    let snapshot = Event::default()
        .event("status")
        .id(state.sequence.to_string())
        .json_data(json!({
            "id": id.local(),
            "runtimeStatus": state.status.as_str(),
            "seq": state.sequence,
            "customStatus": state.custom_status,
            "waitingFor": waiting_for,
        }))
        .unwrap_or_default();
    let replay: VecDeque<Arc<Update>> = current_run(replay, !state.status.is_terminal()).into();
    let watch = Watch {
        _slot: slot,
        shutdown,
        updates,
        id,
        first: Some(snapshot),
        replay,
        after: 0,
        done: state.status.is_terminal(),
    };
    Sse::new(events(watch))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Watch {
    /// The stream's place under the tenant's cap, freed when it ends.
    _slot: crate::limits::Slot,
    shutdown: legato_service::Shutdown,
    updates: broadcast::Receiver<Arc<Update>>,
    id: InstanceId,
    first: Option<Event>,
    /// Buffered events from before the stream opened, sent first.
    replay: VecDeque<Arc<Update>>,
    /// The last update sent; live updates up to it were in the replay.
    after: u64,
    done: bool,
}

fn progress_event(update: &Update) -> Event {
    Event::default()
        .event("progress")
        .id(update.event.seq.to_string())
        .json_data(&update.event)
        .unwrap_or_default()
}

fn events(watch: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(watch, |mut w| async move {
        if let Some(first) = w.first.take() {
            return Some((Ok(first), w));
        }
        if let Some(update) = w.replay.pop_front() {
            w.after = update.n;
            // A finished instance's stream is its status and what is buffered.
            if update.is_final() {
                w.done = true;
                w.replay.clear();
            }
            return Some((Ok(progress_event(&update)), w));
        }
        if w.done {
            return None;
        }
        loop {
            let received = tokio::select! {
                // A draining server ends open streams; clients reconnect.
                _ = w.shutdown.wait() => return None,
                received = w.updates.recv() => received,
            };
            match received {
                Ok(update) if update.instance == w.id && update.n > w.after => {
                    w.after = update.n;
                    w.done = update.is_final();
                    return Some((Ok(progress_event(&update)), w));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    let event = Event::default()
                        .event("lagged")
                        .json_data(json!({ "missed": missed }))
                        .unwrap_or_default();
                    return Some((Ok(event), w));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
