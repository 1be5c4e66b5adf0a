//! What accepted decisions write: the new record, a history row per
//! decision (with the progress it tells watchers), the messages their
//! commands send (outbox rows, published after the commit) and the timers
//! they schedule or cancel.

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

/// The commit for decisions applied one after the other to one instance
/// (`steps`, in order; `state` is the last one's), plus the timers whose
/// firing changed nothing (`forgotten`, deleted all the same). `before` is
/// the state whose parts the store holds (`None`: none), so only the parts
/// that changed are written. Each step is a history row of its own; the
/// progress of every step goes out in one message.
pub(crate) fn commit(
    state: &InstanceState,
    steps: &[(Event, Decision)],
    forgotten: &[String],
    before: Option<&InstanceState>,
    expected: Expected,
    pinned: (WorkflowName, u32),
    traceparent: Option<&TraceParent>,
) -> Result<Commit, StoreError> {
    let at = match steps.last() {
        Some((event, _)) => event.at(),
        None => state.updated_at.unwrap_or_else(OffsetDateTime::now_utc),
    };
    // A redrive may have moved the instance onto another version.
    let (workflow, version) = state
        .workflow
        .as_ref()
        .map_or(pinned, |w| (w.name.clone(), w.version));
    let record = legato_service::records::record_since(before, state, workflow, version, at)?;
    let mut commit = Commit::new(record, expected);
    let mut timers = Timers::default();
    for timer in forgotten {
        timers.remove(timer.clone());
    }
    let mut progress = Vec::new();
    for (event, decision) in steps {
        let at = event.at();
        if let Event::TimerFired { timer, .. } = event {
            timers.remove(timer.to_string());
        }
        let first_progress = progress.len();
        for command in &decision.commands {
            if let Some((subject, payload)) = crate::children::message(command)? {
                commit
                    .outbox
                    .push(outbox_row(&subject, at, payload, traceparent)?);
                continue;
            }
            let payload: Payload = match command {
                Command::DispatchTask(task) => task.clone().into(),
                Command::CancelTask(cancel) => cancel.clone().into(),
                Command::OperateEntity(operation) => operation.clone().into(),
                Command::PublishProgress(event) => {
                    progress.push(event.clone());
                    continue;
                }
                Command::ScheduleTimer { timer, fire_at } => {
                    timers.add(TimerRow {
                        instance: state.id.clone(),
                        id: timer.to_string(),
                        due_at: *fire_at,
                        payload: serde_json::to_value(timer).map_err(corrupt)?,
                    });
                    continue;
                }
                Command::CancelTimer { timer } => {
                    timers.remove(timer.to_string());
                    continue;
                }
                // The record carries the output or error; watchers learn of
                // it from the progress event the engine emits alongside.
                Command::CompleteInstance { .. } | Command::FailInstance { .. } => continue,
                // Sent above, as messages about other instances.
                Command::StartChild(_)
                | Command::TerminateChild { .. }
                | Command::ReportToParent { .. }
                | Command::AnswerEntity { .. } => continue,
            };
            commit
                .outbox
                .push(outbox_row(&state.id, at, payload, traceparent)?);
        }
        commit.history.push(HistoryRow {
            seq: decision.state.sequence,
            at,
            event: legato_store::JsonText::of(event)?,
            position: decision.state.position,
            progress: progress[first_progress..].to_vec(),
        });
        commit.claims.extend(decision.claims.iter().cloned());
    }
    progress_rows(&state.id, at, &progress, traceparent, &mut commit.outbox)?;
    (commit.add_timers, commit.remove_timers) = (timers.add, timers.remove);
    Ok(commit)
}

/// A commit's timer changes, netted over its steps: a timer scheduled and
/// then cancelled is only deleted, one cancelled and then scheduled again
/// is only written, so no timer is named twice in one commit.
#[derive(Default)]
struct Timers {
    add: Vec<TimerRow>,
    remove: Vec<String>,
}

impl Timers {
    fn add(&mut self, row: TimerRow) {
        self.remove.retain(|id| *id != row.id);
        self.add.retain(|t| t.id != row.id);
        self.add.push(row);
    }

    fn remove(&mut self, id: String) {
        self.add.retain(|t| t.id != id);
        if !self.remove.contains(&id) {
            self.remove.push(id);
        }
    }
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

/// The row of a message about `subject` (this instance, or a child or
/// parent of it).
pub(crate) fn outbox_row(
    subject: &InstanceId,
    at: OffsetDateTime,
    payload: Payload,
    traceparent: Option<&TraceParent>,
) -> Result<OutboxRow, StoreError> {
    let envelope =
        Envelope::new(SOURCE, subject.clone(), at, payload).with_traceparent(traceparent.cloned());
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
            iteration: None,
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

    fn timer_row(id: &str) -> TimerRow {
        TimerRow {
            instance: InstanceId::parse("i-1").unwrap(),
            id: id.into(),
            due_at: OffsetDateTime::UNIX_EPOCH,
            payload: json!(null),
        }
    }

    /// Over a batch of decisions, a timer scheduled then cancelled is
    /// only deleted, one cancelled then scheduled is only written: no
    /// timer is named twice in a commit (Table Storage refuses that).
    #[test]
    fn timer_changes_are_netted_over_a_batch() {
        let mut timers = Timers::default();
        timers.add(timer_row("t1"));
        timers.remove("t1".into());
        timers.remove("t2".into());
        timers.add(timer_row("t2"));
        timers.remove("t3".into());
        timers.remove("t3".into());
        let added: Vec<&str> = timers.add.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(added, ["t2"]);
        assert_eq!(timers.remove, ["t1", "t3"]);
    }

    /// Decisions committed together: a history row each, their progress
    /// in one message.
    #[test]
    fn decisions_committed_together_keep_a_row_each_and_share_one_progress_message() {
        use legato_engine::Outcome;

        let id = InstanceId::parse("i-1").unwrap();
        let mut state = InstanceState::new(id.clone());
        let mut steps = Vec::new();
        for n in 1..=3u64 {
            state.sequence = n;
            state.position = n;
            let decision = Decision {
                state: state.clone(),
                commands: vec![Command::PublishProgress(event(n, json!({"n": n})))],
                outcome: Outcome::Applied,
                claims: vec![format!("m{n}")],
            };
            let happened = Event::TerminateRequested {
                at: OffsetDateTime::UNIX_EPOCH,
                id: format!("m{n}"),
                reason: None,
            };
            steps.push((happened, decision));
        }
        let commit = commit(
            &state,
            &steps,
            &[],
            None,
            Expected::New,
            (WorkflowName::parse("w").unwrap(), 1),
            None,
        )
        .unwrap();
        let rows: Vec<(u64, usize)> = commit
            .history
            .iter()
            .map(|h| (h.seq, h.progress.len()))
            .collect();
        assert_eq!(rows, [(1, 1), (2, 1), (3, 1)]);
        assert_eq!(commit.outbox.len(), 1);
        let positions: Vec<u64> = carried(&commit.outbox).iter().map(|e| e.position).collect();
        assert_eq!(positions, [1, 2, 3]);
        assert_eq!(commit.claims, ["m1", "m2", "m3"]);
    }
}
