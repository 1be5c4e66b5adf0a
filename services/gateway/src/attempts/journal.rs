//! Task journals of agents outside the binary: read into a task handed
//! out when entries may be there (a later attempt, a redelivery, a
//! redrive), and recorded as the worker or endpoint reports each step, in
//! the store before the answer, so the agent's `step` returns only once
//! its work is safe.

use axum::http::StatusCode;
use legato_contracts::journal::{self, JournalKey};
use legato_contracts::{HeartbeatKind, InstanceId, TaskDispatched, TaskHeartbeat, TaskKey};
use legato_service::problem::Problem;
use legato_store::{JournalEntry, Journaled};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::{Token, lease_end, publish};
use crate::GatewayState;

/// The journal a task handed out carries, by entry name: empty without a
/// read when the task was never tried before.
pub(crate) async fn of_task(
    state: &GatewayState,
    instance: &InstanceId,
    task: &TaskDispatched,
    delivery_count: u32,
) -> Result<Map<String, Value>, Problem> {
    if !journal::may_exist(task, delivery_count) {
        return Ok(Map::new());
    }
    read(state, instance, &task.key).await
}

/// What the journal of task `key` holds now, by entry name.
pub(crate) async fn read(
    state: &GatewayState,
    instance: &InstanceId,
    key: &TaskKey,
) -> Result<Map<String, Value>, Problem> {
    let entries = state.store.journal(instance, &JournalKey::of(key)).await?;
    Ok(entries.into_iter().map(|e| (e.name, e.value)).collect())
}

/// What recording an entry came to: the value that stands, and whether
/// this call recorded it.
pub(crate) struct Recorded {
    pub value: Value,
    pub first: bool,
}

fn too_large(why: String) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Journal entry refused",
        format!("/value: {why}"),
    )
    .with_errors(vec![legato_service::problem::FieldError {
        field: "/value".into(),
        message: why,
    }])
}

/// Records entry `name` of the attempt `token` names, unless that name is
/// recorded already (its value is answered). Renews the lease, and tells
/// the instance (its history and watchers) of each new entry.
pub(crate) async fn record(
    state: &GatewayState,
    token: &Token,
    lease_ms: u64,
    name: &str,
    value: Value,
) -> Result<Recorded, Problem> {
    journal::check_name(name).map_err(|why| Problem::field("name", why))?;
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| Problem::field("/value", e.to_string()))?
        .len();
    journal::check_value_size(bytes).map_err(too_large)?;
    super::running(state, token).await?;
    let entry = JournalEntry {
        name: name.to_owned(),
        value,
        attempt: token.attempt,
        recorded_at: OffsetDateTime::now_utc(),
    };
    let recorded = state
        .store
        .record_journal(&token.instance, &JournalKey::of(&token.key), &entry)
        .await?;
    let answer = match recorded {
        Journaled::Recorded => Recorded {
            value: entry.value,
            first: true,
        },
        Journaled::RecordedBefore(value) => Recorded {
            value,
            first: false,
        },
        Journaled::Full(why) => return Err(too_large(why)),
    };
    let notice = TaskHeartbeat {
        key: token.key.clone(),
        attempt: token.attempt,
        progress: answer
            .first
            .then(|| json!({ "name": name, "bytes": bytes })),
        kind: answer.first.then_some(HeartbeatKind::JournalRecorded),
        message: answer.first.then(|| format!("recorded {name}")),
        leased: false,
        lease_ms: Some(lease_ms),
    };
    publish(state, &token.instance, None, notice.into()).await?;
    let attempt = token.idempotency_key();
    state
        .figures
        .renewed(token.agent.as_str(), &attempt, lease_end(lease_ms));
    Ok(answer)
}
