//! `GET /api/v1/instances/{id}/stream`: server-sent events of one
//! instance's progress, for curl and browsers.
//!
//! The stream opens with a `status` event (the instance as stored now), then
//! sends every `progress` event (`id:` is the event's history sequence
//! number) and ends after the instance reaches a final status. If the
//! instance had already finished, the `status` event is the whole stream. A
//! watcher that fell behind gets a `lagged` event with the number missed and
//! can read `GET /api/v1/instances/{id}?history=true&after=<last id>`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use legato_contracts::{InstanceId, ProgressKind};
use legato_service::problem::Problem;
use legato_service::records::state_of;
use serde_json::json;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::Update;

use crate::NotifierState;

pub fn router(state: NotifierState) -> Router {
    Router::new()
        .route("/api/v1/instances/{id}/stream", get(stream))
        .with_state(state)
}

async fn stream(State(state): State<NotifierState>, Path(id): Path<String>) -> Response {
    let id = match InstanceId::parse(id) {
        Ok(id) => id,
        Err(e) => return Problem::field("id", e.to_string()).into_response(),
    };
    // Subscribe before reading the snapshot, so nothing falls in between.
    let updates = state.hub.subscribe();
    let stored = match state.store.load(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Problem::not_found(format!("no instance {id}")).into_response(),
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
            "id": state.id,
            "runtimeStatus": state.status.as_str(),
            "seq": state.sequence,
            "customStatus": state.custom_status,
            "waitingFor": waiting_for,
        }))
        .unwrap_or_default();
    let watch = Watch {
        updates,
        id,
        first: Some(snapshot),
        done: state.status.is_terminal(),
    };
    Sse::new(events(watch))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Watch {
    updates: broadcast::Receiver<Arc<Update>>,
    id: InstanceId,
    first: Option<Event>,
    done: bool,
}

fn events(watch: Watch) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(watch, |mut w| async move {
        if let Some(first) = w.first.take() {
            return Some((Ok(first), w));
        }
        if w.done {
            return None;
        }
        loop {
            match w.updates.recv().await {
                Ok(update) if update.instance == w.id => {
                    w.done = matches!(
                        update.event.kind,
                        ProgressKind::InstanceCompleted
                            | ProgressKind::InstanceFailed
                            | ProgressKind::InstanceTerminated
                    );
                    let event = Event::default()
                        .event("progress")
                        .id(update.event.seq.to_string())
                        .json_data(&update.event)
                        .unwrap_or_default();
                    return Some((Ok(event), w));
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
