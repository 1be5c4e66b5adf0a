//! What an accepted decision writes: the new record, one history row (with
//! the progress it tells watchers), the
//! messages its commands send (outbox rows, published after the commit)
//! and the timers it schedules or cancels.

use legato_contracts::{
    Envelope, InstanceId, Payload, ProgressBatch, ProgressEvent, TraceParent, WorkflowName,
};
use legato_engine::{Command, Decision, Event, InstanceState};
use legato_store::{Commit, Expected, HistoryRow, OutboxRow, StoreError, TimerRow};
use time::OffsetDateTime;

pub(crate) const SOURCE: &str = "/legato/orchestrator";

/// A progress batch larger than this is split in two, so a decision whose
/// events carry large outputs stays well inside every broker's message
/// limit (Service Bus Standard: 256 KB); one event alone goes as it is.
const PROGRESS_BATCH_BYTES: usize = 64 * 1024;

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
    let progress: Vec<ProgressEvent> = decision
        .commands
        .iter()
        .filter_map(|command| match command {
            Command::PublishProgress(progress) => Some(progress.clone()),
            _ => None,
        })
        .collect();
    if let Event::TimerFired { timer, .. } = event {
        commit.remove_timers.push(timer.to_string());
    }
    for command in &decision.commands {
        let payload: Payload = match command {
            Command::DispatchTask(task) => task.clone().into(),
            Command::CancelTask(cancel) => cancel.clone().into(),
            // All of them go together below.
            Command::PublishProgress(_) => continue,
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
    progress_rows(&state.id, at, &progress, traceparent, &mut commit.outbox)?;
    commit.history.push(HistoryRow {
        seq: state.sequence,
        at,
        event: serde_json::to_value(event).map_err(corrupt)?,
        position: state.position,
        progress,
    });
    Ok(commit)
}

/// The messages telling watchers a decision's progress events: one, in
/// position order, unless it would pass [`PROGRESS_BATCH_BYTES`].
fn progress_rows(
    instance: &InstanceId,
    at: OffsetDateTime,
    events: &[ProgressEvent],
    traceparent: Option<&TraceParent>,
    out: &mut Vec<OutboxRow>,
) -> Result<(), StoreError> {
    let payload: Payload = match events {
        [] => return Ok(()),
        [one] => one.clone().into(),
        many => ProgressBatch {
            events: many.to_vec(),
        }
        .into(),
    };
    let row = outbox_row(instance, at, payload, traceparent)?;
    if events.len() > 1 && row.body.len() > PROGRESS_BATCH_BYTES {
        // Halving bounds the depth by log2 of the event count.
        let (first, second) = events.split_at(events.len() / 2);
        progress_rows(instance, at, first, traceparent, out)?;
        return progress_rows(instance, at, second, traceparent, out);
    }
    out.push(row);
    Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use legato_contracts::{ProgressKind, RuntimeStatus};
    use serde_json::json;

    use super::*;

    fn event(position: u64, data: serde_json::Value) -> ProgressEvent {
        ProgressEvent {
            position,
            seq: 1,
            kind: ProgressKind::StepCompleted,
            status: RuntimeStatus::Running,
            step: None,
            item: Some(position as u32),
            attempt: None,
            message: None,
            data: Some(data),
        }
    }

    /// The events the rows carry, in row order.
    fn carried(rows: &[OutboxRow]) -> Vec<ProgressEvent> {
        rows.iter()
            .flat_map(|row| match Envelope::decode(&row.body).unwrap().payload {
                Payload::Progress(one) => vec![one],
                Payload::ProgressBatch(batch) => batch.events,
                other => panic!("{} is not progress", other.type_name()),
            })
            .collect()
    }

    fn rows_for(events: &[ProgressEvent]) -> Vec<OutboxRow> {
        let instance = InstanceId::parse("i-1").unwrap();
        let mut rows = Vec::new();
        progress_rows(
            &instance,
            OffsetDateTime::UNIX_EPOCH,
            events,
            None,
            &mut rows,
        )
        .unwrap();
        rows
    }

    #[test]
    fn a_decisions_events_go_as_one_message_in_position_order() {
        let events: Vec<_> = (1..=5).map(|n| event(n, json!({"n": n}))).collect();
        let rows = rows_for(&events);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            Envelope::decode(&rows[0].body).unwrap().type_name(),
            "legato.progress.batch.v1"
        );
        assert_eq!(carried(&rows), events);
        assert!(rows_for(&[]).is_empty());
        let single = rows_for(&events[..1]);
        assert_eq!(
            Envelope::decode(&single[0].body).unwrap().type_name(),
            "legato.progress.v1"
        );
    }

    #[test]
    fn large_events_are_split_across_messages_keeping_their_order() {
        let big = "x".repeat(PROGRESS_BATCH_BYTES / 3);
        let events: Vec<_> = (1..=7).map(|n| event(n, json!({"output": big}))).collect();
        let rows = rows_for(&events);
        assert!(rows.len() >= 3, "{} rows", rows.len());
        for row in &rows {
            assert!(row.body.len() <= PROGRESS_BATCH_BYTES, "{}", row.body.len());
        }
        assert_eq!(carried(&rows), events);
        // One event over the limit still goes, alone.
        let huge = event(1, json!({"output": "y".repeat(PROGRESS_BATCH_BYTES * 2)}));
        assert_eq!(carried(&rows_for(std::slice::from_ref(&huge))), vec![huge]);
    }
}
