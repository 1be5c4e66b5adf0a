//! What an accepted decision writes: the new record, one history row (with
//! the progress it tells watchers), the
//! messages its commands send (outbox rows, published after the commit)
//! and the timers it schedules or cancels.

use legato_contracts::{Envelope, InstanceId, Payload, TraceParent, WorkflowName};
use legato_engine::{Command, Decision, Event, InstanceState};
use legato_store::{Commit, Expected, HistoryRow, OutboxRow, StoreError, TimerRow};
use time::OffsetDateTime;

pub(crate) const SOURCE: &str = "/legato/orchestrator";

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The commit for an applied decision; `before` is the state whose parts
/// the store holds (`None`: none), so only the parts that changed are
/// written.
pub(crate) fn commit(
    decision: &Decision,
    before: Option<&InstanceState>,
    event: &Event,
    expected: Expected,
    pinned: (WorkflowName, u32),
    traceparent: Option<&TraceParent>,
) -> Result<Commit, StoreError> {
    let state = &decision.state;
    let at = event.at();
    // A redrive may have moved the instance onto another version.
    let (workflow, version) = state
        .workflow
        .as_ref()
        .map_or(pinned, |w| (w.name.clone(), w.version));
    let record = legato_service::records::record_since(before, state, workflow, version, at)?;
    let mut commit = Commit::new(record, expected);
    commit.history.push(HistoryRow {
        seq: state.sequence,
        at,
        event: serde_json::to_value(event).map_err(corrupt)?,
        position: state.position,
        progress: decision
            .commands
            .iter()
            .filter_map(|command| match command {
                Command::PublishProgress(progress) => Some(progress.clone()),
                _ => None,
            })
            .collect(),
    });
    if let Event::TimerFired { timer, .. } = event {
        commit.remove_timers.push(timer.to_string());
    }
    for command in &decision.commands {
        let payload: Payload = match command {
            Command::DispatchTask(task) => task.clone().into(),
            Command::CancelTask(cancel) => cancel.clone().into(),
            Command::PublishProgress(progress) => progress.clone().into(),
            Command::ScheduleTimer { timer, fire_at } => {
                commit.add_timers.push(TimerRow {
                    instance: state.id.clone(),
                    id: timer.to_string(),
                    due_at: *fire_at,
                    payload: serde_json::to_value(timer).map_err(corrupt)?,
                });
                continue;
            }
            Command::CancelTimer { timer } => {
                commit.remove_timers.push(timer.to_string());
                continue;
            }
            // The record carries the output or error; watchers learn of it
            // from the progress event the engine emits alongside.
            Command::CompleteInstance { .. } | Command::FailInstance { .. } => continue,
        };
        commit
            .outbox
            .push(outbox_row(&state.id, at, payload, traceparent)?);
    }
    Ok(commit)
}

pub(crate) fn outbox_row(
    instance: &InstanceId,
    at: OffsetDateTime,
    payload: Payload,
    traceparent: Option<&TraceParent>,
) -> Result<OutboxRow, StoreError> {
    let envelope =
        Envelope::new(SOURCE, instance.clone(), at, payload).with_traceparent(traceparent.cloned());
    legato_service::outbox::row_of(&envelope).map_err(corrupt)
}
