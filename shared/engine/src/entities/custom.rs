//! Custom operations: those an entity's registered type declares, each
//! applied by a run of the workflow the type names for it. While that run
//! goes on the entity is **busy**: every operation that would change its
//! state waits in a queue kept beside the state, in arrival order, and is
//! applied once the run's outcome is (so each operation still sees the
//! state the ones before it left, and none is lost to a crash). Reads and
//! locking pass: they never touch the state.

use legato_contracts::{Caller, CustomOperation, CustomOutcome, InstanceId, Operation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::{LockState, MAX_ENTITY_STATE_BYTES};

/// Most operations that wait behind a custom one; more fail (recorded, so
/// sent again they fail the same) until the queue drains.
pub const MAX_QUEUED: usize = 100;
/// Most bytes of operations (as JSON) that wait behind a custom one: with
/// the state, within what one stored row holds.
pub const MAX_QUEUED_BYTES: usize = 192 * 1024;

/// An operation kept to be applied later, with what its row and its
/// caller will need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deferred {
    pub id: String,
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    pub sender: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The custom operation an entity is busy with, and the run applying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Busy {
    pub operation: Deferred,
    pub instance: InstanceId,
}

impl Busy {
    /// The custom operation itself.
    pub fn custom(&self) -> Option<&CustomOperation> {
        match &self.operation.operation {
            Operation::Custom(custom) => Some(custom),
            _ => None,
        }
    }
}

/// What becomes of an operation arriving at an entity, by what is kept
/// beside its state.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Applied now, as any operation is.
    Apply,
    /// The custom operation the entity is busy with, or one queued: sent
    /// again, it waits on (its latest caller is the one told).
    Again,
    /// Waits its turn behind the custom operation.
    Queue,
    /// Would wait, but the queue is full: it fails, saying why.
    Full(String),
    /// The outcome of a run: `true` when it is the busy operation's.
    Complete(bool),
}

/// Where `operation` (id `id`) stands against `lock`.
pub fn admit(lock: &LockState, id: &str, operation: &Operation) -> Admission {
    if let Operation::Complete {
        operation,
        instance,
        ..
    } = operation
    {
        let ours = lock
            .busy
            .as_ref()
            .is_some_and(|b| b.operation.id == *operation && b.instance == *instance);
        return Admission::Complete(ours);
    }
    let Some(busy) = &lock.busy else {
        return Admission::Apply;
    };
    if busy.operation.id == id || lock.queued.iter().any(|q| q.id == id) {
        return Admission::Again;
    }
    if operation.is_read() || operation.is_locking() {
        return Admission::Apply;
    }
    let bytes: usize = lock
        .queued
        .iter()
        .map(|q| serde_json::to_vec(&q.operation).map_or(0, |b| b.len()))
        .sum::<usize>()
        + serde_json::to_vec(operation).map_or(usize::MAX / 2, |b| b.len());
    if lock.queued.len() >= MAX_QUEUED || bytes > MAX_QUEUED_BYTES {
        return Admission::Full(format!(
            "the entity is busy with custom operation {} and {} operations ({bytes} bytes) \
             already wait behind it; at most {MAX_QUEUED} or {MAX_QUEUED_BYTES} bytes may",
            busy.operation.operation.name(),
            lock.queued.len()
        ));
    }
    Admission::Queue
}

/// Keeps `deferred` to apply later: at the end of the queue, or, sent
/// again, in its place with its latest caller (a later attempt of the same
/// step is the one waiting).
pub fn defer(lock: &mut LockState, deferred: Deferred) {
    if let Some(busy) = lock.busy.as_mut()
        && busy.operation.id == deferred.id
    {
        if deferred.caller.is_some() {
            busy.operation.caller = deferred.caller;
        }
        return;
    }
    if let Some(queued) = lock.queued.iter_mut().find(|q| q.id == deferred.id) {
        if deferred.caller.is_some() {
            queued.caller = deferred.caller;
        }
        return;
    }
    lock.queued.push(deferred);
}

/// The state and answer a custom operation's run leaves: its output is
/// `{state?, answer?}` (no `state`: the state stays as it is); a run that
/// failed, an output of another shape, or a state `check` refuses (the
/// type's schema) leave the state as it was and answer why.
pub fn custom_outcome(
    state: &Value,
    name: &str,
    outcome: &CustomOutcome,
    check: impl Fn(&Value) -> Result<(), String>,
) -> (Value, Result<Value, String>) {
    let output = match outcome {
        CustomOutcome::Failed(why) => return (state.clone(), Err(why.clone())),
        CustomOutcome::Completed(output) => output,
    };
    let shape = || {
        Err(format!(
            "{name}: its workflow's output must be an object of `state` (the new state, \
             left out to keep it) and `answer`, got {}",
            shorten(output)
        ))
    };
    let Value::Object(members) = output else {
        return (state.clone(), shape());
    };
    if members.keys().any(|k| k != "state" && k != "answer") {
        return (state.clone(), shape());
    }
    let answer = members.get("answer").cloned().unwrap_or(Value::Null);
    let Some(next) = members.get("state") else {
        return (state.clone(), Ok(answer));
    };
    let bytes = serde_json::to_vec(next).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_ENTITY_STATE_BYTES {
        return (
            state.clone(),
            Err(format!(
                "{name} would make the state {bytes} bytes, more than {MAX_ENTITY_STATE_BYTES}"
            )),
        );
    }
    match check(next) {
        Ok(()) => (next.clone(), Ok(answer)),
        Err(why) => (state.clone(), Err(format!("{name}: {why}"))),
    }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deferred(id: &str, operation: Value) -> Deferred {
        Deferred {
            id: id.into(),
            operation: Operation::from_json(operation).unwrap(),
            caller: None,
            sender: InstanceId::parse("i-1").unwrap(),
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn busy_with(id: &str) -> LockState {
        LockState {
            busy: Some(Busy {
                operation: deferred(id, json!({"op": "summarize"})),
                instance: InstanceId::parse("entity.c.1").unwrap(),
            }),
            ..LockState::default()
        }
    }

    #[test]
    fn writes_queue_behind_a_busy_entity_and_reads_and_locks_pass() {
        let increment = Operation::from_json(json!({"op": "increment"})).unwrap();
        let read = Operation::from_json(json!({"op": "read"})).unwrap();
        assert_eq!(
            admit(&LockState::default(), "a", &increment),
            Admission::Apply
        );
        let mut lock = busy_with("s");
        assert_eq!(admit(&lock, "a", &increment), Admission::Queue);
        assert_eq!(admit(&lock, "r", &read), Admission::Apply);
        assert_eq!(admit(&lock, "s", &increment), Admission::Again);
        defer(&mut lock, deferred("a", json!({"op": "increment"})));
        assert_eq!(admit(&lock, "a", &increment), Admission::Again);
        // Sent again by a later attempt: kept once, that attempt told.
        let mut again = deferred("a", json!({"op": "increment"}));
        again.caller = Some(Caller {
            instance: InstanceId::parse("i-2").unwrap(),
            key: serde_json::from_value(json!({"execution": 0, "step": "s"})).unwrap(),
            attempt: 2,
            signal: false,
        });
        defer(&mut lock, again);
        assert_eq!(lock.queued.len(), 1);
        assert_eq!(lock.queued[0].caller.as_ref().unwrap().attempt, 2);
    }

    #[test]
    fn a_full_queue_refuses_saying_why() {
        let mut lock = busy_with("s");
        for n in 0..MAX_QUEUED {
            defer(
                &mut lock,
                deferred(&format!("q{n}"), json!({"op": "increment"})),
            );
        }
        let increment = Operation::from_json(json!({"op": "increment"})).unwrap();
        let Admission::Full(why) = admit(&lock, "late", &increment) else {
            panic!("not full");
        };
        assert!(why.contains("summarize"), "{why}");
    }

    #[test]
    fn only_the_busy_runs_outcome_completes_it() {
        let lock = busy_with("s");
        let complete = |operation: &str, instance: &str| Operation::Complete {
            operation: operation.into(),
            instance: InstanceId::parse(instance).unwrap(),
            outcome: CustomOutcome::Failed("x".into()),
        };
        assert_eq!(
            admit(&lock, "c", &complete("s", "entity.c.1")),
            Admission::Complete(true)
        );
        assert_eq!(
            admit(&lock, "c", &complete("s", "entity.c.2")),
            Admission::Complete(false)
        );
        assert_eq!(
            admit(&LockState::default(), "c", &complete("s", "entity.c.1")),
            Admission::Complete(false)
        );
    }

    #[test]
    fn a_runs_output_gives_the_state_and_answer() {
        let ok = |_: &Value| Ok(());
        let state = json!({"n": 1});
        let done = |output| CustomOutcome::Completed(output);
        assert_eq!(
            custom_outcome(
                &state,
                "s",
                &done(json!({"state": {"n": 2}, "answer": "two"})),
                ok
            ),
            (json!({"n": 2}), Ok(json!("two")))
        );
        assert_eq!(
            custom_outcome(&state, "s", &done(json!({"answer": 5})), ok),
            (state.clone(), Ok(json!(5)))
        );
        let (kept, answer) = custom_outcome(&state, "s", &done(json!({"n": 3})), ok);
        assert_eq!(kept, state);
        assert!(answer.unwrap_err().contains("must be an object"));
        let (kept, answer) = custom_outcome(&state, "s", &done(json!({"state": 1})), |_| {
            Err("not an object".to_owned())
        });
        assert_eq!(kept, state);
        assert_eq!(answer.unwrap_err(), "s: not an object");
        assert_eq!(
            custom_outcome(&state, "s", &CustomOutcome::Failed("boom".into()), ok),
            (state.clone(), Err("boom".into()))
        );
    }
}
