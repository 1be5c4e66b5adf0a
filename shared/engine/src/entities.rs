//! What an operation does to an entity's state: pure, like the rest of
//! the engine, so every replica applying the same operations in the same
//! order comes to the same state and the same answers.

use legato_contracts::{Caller, Holder, Operation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};

/// The largest state an entity may grow to, as JSON: an operation that
/// would pass it fails and changes nothing.
pub const MAX_ENTITY_STATE_BYTES: usize = 256 * 1024;

/// An entity held as a lock: who holds it and who waits, first come,
/// first served. Kept beside the entity's state, which locking never
/// touches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockState {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiter>,
}

impl LockState {
    pub fn is_free(&self) -> bool {
        self.holders.is_empty() && self.waiting.is_empty()
    }
}

/// A holder waiting its turn, and the attempt to tell when it comes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiter {
    pub holder: Holder,
    pub capacity: u32,
    pub caller: Caller,
}

/// When an operation's caller hears from it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Now, with this answer.
    Now(Result<Value, String>),
    /// Later: an acquisition that waits its turn.
    Later,
}

/// What one operation did: the new state and lock, the reply to its
/// caller, and the waiters it let in (each to be told it holds the lock).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub state: Value,
    pub lock: LockState,
    pub reply: Reply,
    pub granted: Vec<Caller>,
}

/// What a granted acquisition answers.
pub fn granted() -> Value {
    json!({ "granted": true })
}

/// Applies any operation, locking ones included, for `caller`.
pub fn apply_op(
    state: &Value,
    lock: &LockState,
    operation: &Operation,
    caller: Option<&Caller>,
) -> Applied {
    let unchanged = |reply| Applied {
        state: state.clone(),
        lock: lock.clone(),
        reply,
        granted: Vec::new(),
    };
    match operation {
        Operation::Acquire { holder, capacity } => {
            let mut next = lock.clone();
            if next.holders.contains(holder) {
                return unchanged(Reply::Now(Ok(granted())));
            }
            if let Some(waiter) = next.waiting.iter_mut().find(|w| &w.holder == holder) {
                // A later attempt of the same acquisition: it is the one to tell.
                if let Some(caller) = caller {
                    waiter.caller = caller.clone();
                }
                return Applied {
                    lock: next,
                    ..unchanged(Reply::Later)
                };
            }
            if next.waiting.is_empty() && next.holders.len() < *capacity as usize {
                next.holders.push(holder.clone());
                return Applied {
                    lock: next,
                    ..unchanged(Reply::Now(Ok(granted())))
                };
            }
            let Some(caller) = caller else {
                return unchanged(Reply::Now(Err(
                    "an acquisition needs a caller to tell when its turn comes".into(),
                )));
            };
            next.waiting.push(Waiter {
                holder: holder.clone(),
                capacity: *capacity,
                caller: caller.clone(),
            });
            Applied {
                lock: next,
                ..unchanged(Reply::Later)
            }
        }
        Operation::Release { holder } => {
            let mut next = lock.clone();
            next.holders.retain(|h| h != holder);
            next.waiting.retain(|w| &w.holder != holder);
            let mut granted = Vec::new();
            while let Some(first) = next.waiting.first() {
                if next.holders.len() >= first.capacity as usize {
                    break;
                }
                let first = next.waiting.remove(0);
                next.holders.push(first.holder);
                granted.push(first.caller);
            }
            Applied {
                state: state.clone(),
                lock: next,
                reply: Reply::Now(Ok(json!({ "granted": granted }))),
                granted,
            }
        }
        other => match apply(state, other) {
            Ok((next, answer)) => Applied {
                state: next,
                ..unchanged(Reply::Now(Ok(answer)))
            },
            Err(why) => unchanged(Reply::Now(Err(why))),
        },
    }
}

/// The state after `operation`, and its answer; on failure the state is
/// unchanged and the error says why. Locking operations change only the
/// lock ([`apply_op`]): here they answer nothing and change nothing.
pub fn apply(state: &Value, operation: &Operation) -> Result<(Value, Value), String> {
    if let Operation::Read { path } = operation {
        return Ok((
            state.clone(),
            read(state, path)?.cloned().unwrap_or(Value::Null),
        ));
    }
    let mut next = state.clone();
    let answer = apply_in(&mut next, operation)?;
    if matches!(operation, Operation::CompareAndSet { .. }) && answer["swapped"] == false {
        // A compare-and-set that did not swap leaves no trace, not even
        // the members it walked through.
        return Ok((state.clone(), answer));
    }
    let bytes = serde_json::to_vec(&next).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_ENTITY_STATE_BYTES {
        return Err(format!(
            "{} would make the state {bytes} bytes, more than {MAX_ENTITY_STATE_BYTES}",
            operation.name()
        ));
    }
    Ok((next, answer))
}

fn apply_in(state: &mut Value, operation: &Operation) -> Result<Value, String> {
    match operation {
        Operation::Set { path, value } => {
            *slot(state, path)? = value.clone();
            Ok(Value::Null)
        }
        Operation::Merge { path, value } => {
            merge_patch(slot(state, path)?, value);
            Ok(Value::Null)
        }
        Operation::Append { path, value, cap } => {
            let target = slot(state, path)?;
            if target.is_null() {
                *target = Value::Array(Vec::new());
            }
            let Value::Array(items) = target else {
                return Err(format!(
                    "append: {} holds {}, not an array",
                    shown(path),
                    kind(target)
                ));
            };
            items.push(value.clone());
            if let Some(cap) = cap {
                let cap = *cap as usize;
                if items.len() > cap {
                    items.drain(..items.len() - cap);
                }
            }
            Ok(json!(items.len()))
        }
        Operation::Increment { path, by, min, max } => {
            let target = slot(state, path)?;
            let current = match target {
                Value::Null => Number::from(0),
                Value::Number(n) => n.clone(),
                other => {
                    return Err(format!(
                        "increment: {} holds {}, not a number",
                        shown(path),
                        kind(other)
                    ));
                }
            };
            let by = by.clone().unwrap_or_else(|| Number::from(1));
            let sum = add(&current, &by)
                .ok_or_else(|| format!("increment: {current} + {by} is out of range"))?;
            if let Some(min) = min
                && less(&sum, min)
            {
                return Err(format!(
                    "increment: {current} + {by} would go below the minimum {min}"
                ));
            }
            if let Some(max) = max
                && less(max, &sum)
            {
                return Err(format!(
                    "increment: {current} + {by} would pass the maximum {max}"
                ));
            }
            *target = Value::Number(sum.clone());
            Ok(Value::Number(sum))
        }
        Operation::CompareAndSet {
            path,
            expected,
            value,
        } => {
            let target = slot(state, path)?;
            let swapped = target == expected;
            if swapped {
                *target = value.clone();
            }
            Ok(json!({ "swapped": swapped, "current": target }))
        }
        Operation::Remove { path } => {
            remove(state, path)?;
            Ok(Value::Null)
        }
        Operation::Read { path } => Ok(read(state, path)?.cloned().unwrap_or(Value::Null)),
        Operation::Acquire { .. } | Operation::Release { .. } => Ok(Value::Null),
    }
}

/// The value at `path`, if there is one.
pub fn read<'a>(state: &'a Value, path: &str) -> Result<Option<&'a Value>, String> {
    tokens(path)?;
    Ok(state.pointer(path))
}

/// The value at `path`, made on the way: `null`s and absent members become
/// objects; an array is entered by index (or `-`, a new last item).
fn slot<'a>(state: &'a mut Value, path: &str) -> Result<&'a mut Value, String> {
    let mut here = state;
    let mut walked = String::new();
    for token in tokens(path)? {
        if here.is_null() {
            *here = Value::Object(Map::new());
        }
        let at = shown(&walked).to_owned();
        walked.push('/');
        walked.push_str(&token.replace('~', "~0").replace('/', "~1"));
        here = match here {
            Value::Object(members) => members.entry(token).or_insert(Value::Null),
            Value::Array(items) => {
                let index = if token == "-" {
                    items.push(Value::Null);
                    items.len() - 1
                } else {
                    array_index(&token, items.len(), &walked)?
                };
                &mut items[index]
            }
            other => {
                return Err(format!(
                    "path {}: {at} holds {}, which has no members",
                    shown(path),
                    kind(other)
                ));
            }
        };
    }
    Ok(here)
}

fn remove(state: &mut Value, path: &str) -> Result<(), String> {
    let mut tokens = tokens(path)?;
    let Some(last) = tokens.pop() else {
        *state = Value::Null;
        return Ok(());
    };
    let mut here = state;
    for token in tokens {
        here = match here {
            Value::Object(members) => match members.get_mut(&token) {
                Some(next) => next,
                None => return Ok(()),
            },
            Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get_mut(i))
            {
                Some(next) => next,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
    }
    match here {
        Value::Object(members) => {
            members.remove(&last);
        }
        Value::Array(items) => {
            if let Ok(index) = last.parse::<usize>()
                && index < items.len()
            {
                items.remove(index);
            }
        }
        _ => {}
    }
    Ok(())
}

/// A JSON Pointer's reference tokens, unescaped.
fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "path {path:?} is not a JSON Pointer: it must start with /"
        ));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, walked: &str) -> Result<usize, String> {
    match token.parse::<usize>() {
        Ok(index) if index < len && (token == "0" || !token.starts_with('0')) => Ok(index),
        _ => Err(format!(
            "path {walked}: the array has {len} items and {token:?} is not one of their indexes"
        )),
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(members) = target {
        for (name, value) in patch {
            if value.is_null() {
                members.remove(name);
            } else {
                merge_patch(members.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Integers stay integers while they fit; anything else is a float.
fn add(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a.checked_add(b).map(Number::from);
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

fn less(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(a), Some(b)) => a < b,
        _ => a.as_f64().unwrap_or(f64::NAN) < b.as_f64().unwrap_or(f64::NAN),
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "the state" } else { path }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn op(value: Value) -> Operation {
        serde_json::from_value(value).unwrap()
    }

    fn run(state: Value, operation: Value) -> Result<(Value, Value), String> {
        apply(&state, &op(operation))
    }

    #[test]
    fn set_and_merge_make_their_path() {
        let (state, answer) = run(
            Value::Null,
            json!({"op": "set", "path": "/a/b", "value": 1}),
        )
        .unwrap();
        assert_eq!(
            (state.clone(), answer),
            (json!({"a": {"b": 1}}), Value::Null)
        );
        let (state, _) = run(
            state,
            json!({"op": "merge", "value": {"a": {"c": 2, "b": null}, "d": [1]}}),
        )
        .unwrap();
        assert_eq!(state, json!({"a": {"c": 2}, "d": [1]}));
        let (state, _) = run(state, json!({"op": "set", "path": "/d/0", "value": "x"})).unwrap();
        assert_eq!(state["d"], json!(["x"]));
        let err = run(state, json!({"op": "set", "path": "/d/3", "value": 1})).unwrap_err();
        assert!(err.contains("/d/3"), "{err}");
        let err = run(
            json!({"a": 1}),
            json!({"op": "set", "path": "/a/b", "value": 1}),
        )
        .unwrap_err();
        assert_eq!(err, "path /a/b: /a holds a number, which has no members");
        let err = run(Value::Null, json!({"op": "set", "path": "a", "value": 1})).unwrap_err();
        assert!(err.contains("must start with /"), "{err}");
    }

    #[test]
    fn pointers_unescape_tilde_and_slash() {
        let (state, _) = run(
            Value::Null,
            json!({"op": "set", "path": "/a~1b/c~0d", "value": true}),
        )
        .unwrap();
        assert_eq!(state, json!({"a/b": {"c~d": true}}));
        let (state, _) = run(state, json!({"op": "remove", "path": "/a~1b/c~0d"})).unwrap();
        assert_eq!(state, json!({"a/b": {}}));
    }

    #[test]
    fn append_keeps_the_last_cap_items() {
        let mut state = Value::Null;
        for n in 1..=5 {
            let (next, answer) = run(
                state,
                json!({"op": "append", "path": "/requests", "value": n, "cap": 3}),
            )
            .unwrap();
            assert_eq!(answer, json!(n.min(3)));
            state = next;
        }
        assert_eq!(state, json!({"requests": [3, 4, 5]}));
        let err = run(json!("x"), json!({"op": "append", "value": 1})).unwrap_err();
        assert_eq!(err, "append: the state holds a string, not an array");
    }

    #[test]
    fn increment_stays_within_its_bounds_and_fails_without_change() {
        let (state, answer) = run(Value::Null, json!({"op": "increment"})).unwrap();
        assert_eq!((state.clone(), answer), (json!(1), json!(1)));
        let (state, answer) = run(state, json!({"op": "increment", "by": 4, "max": 5})).unwrap();
        assert_eq!((state.clone(), answer), (json!(5), json!(5)));
        let err = run(state.clone(), json!({"op": "increment", "max": 5})).unwrap_err();
        assert_eq!(err, "increment: 5 + 1 would pass the maximum 5");
        let err = run(
            state.clone(),
            json!({"op": "increment", "by": -6, "min": 0}),
        )
        .unwrap_err();
        assert_eq!(err, "increment: 5 + -6 would go below the minimum 0");
        let (state, answer) = run(state, json!({"op": "increment", "by": 0.25})).unwrap();
        assert_eq!((state, answer), (json!(5.25), json!(5.25)));
        let err = run(json!(i64::MAX), json!({"op": "increment"})).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let err = run(json!({"n": "1"}), json!({"op": "increment", "path": "/n"})).unwrap_err();
        assert_eq!(err, "increment: /n holds a string, not a number");
    }

    #[test]
    fn compare_and_set_swaps_only_on_a_match() {
        let cas = |expected: Value| json!({"op": "compare_and_set", "path": "/owner", "expected": expected, "value": "b"});
        let (state, answer) = run(json!({"owner": "a"}), cas(json!("x"))).unwrap();
        assert_eq!(answer, json!({"swapped": false, "current": "a"}));
        let (state, answer) = run(state, cas(json!("a"))).unwrap();
        assert_eq!(answer, json!({"swapped": true, "current": "b"}));
        assert_eq!(state, json!({"owner": "b"}));
        let (_, answer) = run(Value::Null, cas(Value::Null)).unwrap();
        assert_eq!(answer, json!({"swapped": true, "current": "b"}));
        let (state, _) = run(
            json!({}),
            json!({"op": "compare_and_set", "path": "/x/y", "expected": 1, "value": 2}),
        )
        .unwrap();
        assert_eq!(state, json!({}), "a miss walks through nothing");
    }

    #[test]
    fn remove_takes_a_member_an_item_or_everything() {
        let state = json!({"a": [1, 2, 3], "b": 1});
        let (state, _) = run(state, json!({"op": "remove", "path": "/a/1"})).unwrap();
        assert_eq!(state, json!({"a": [1, 3], "b": 1}));
        let (state, _) = run(state, json!({"op": "remove", "path": "/nothing/here"})).unwrap();
        assert_eq!(state, json!({"a": [1, 3], "b": 1}));
        let (state, _) = run(state, json!({"op": "remove"})).unwrap();
        assert_eq!(state, Value::Null);
    }

    #[test]
    fn read_answers_the_value_at_its_path_or_null() {
        let state = json!({"a": {"b": [1, 2]}});
        assert_eq!(
            run(state.clone(), json!({"op": "read", "path": "/a/b/1"}))
                .unwrap()
                .1,
            json!(2)
        );
        assert_eq!(
            run(state.clone(), json!({"op": "read", "path": "/x"}))
                .unwrap()
                .1,
            Value::Null
        );
        assert_eq!(
            run(state.clone(), json!({"op": "read"})).unwrap(),
            (state.clone(), state)
        );
    }

    fn holder(n: u32) -> Holder {
        Holder {
            instance: legato_contracts::InstanceId::parse(format!("i-{n}")).unwrap(),
            key: legato_contracts::TaskKey {
                run: 1,
                execution: 0,
                step: legato_contracts::StepId::parse("edit").unwrap(),
                item: Some(0),
                iteration: None,
                role: legato_contracts::TaskRole::Action,
            },
        }
    }

    fn caller(n: u32, attempt: u32) -> Caller {
        let h = holder(n);
        Caller {
            instance: h.instance,
            key: h.key,
            attempt,
            signal: false,
        }
    }

    fn acquire(lock: &LockState, n: u32, capacity: u32, attempt: u32) -> Applied {
        let op = Operation::Acquire {
            holder: holder(n),
            capacity,
        };
        apply_op(&json!({"kept": true}), lock, &op, Some(&caller(n, attempt)))
    }

    fn release(lock: &LockState, n: u32) -> Applied {
        apply_op(
            &json!({"kept": true}),
            lock,
            &Operation::Release { holder: holder(n) },
            None,
        )
    }

    #[test]
    fn a_lock_is_held_by_one_and_handed_on_in_turn() {
        let first = acquire(&LockState::default(), 1, 1, 1);
        assert_eq!(first.reply, Reply::Now(Ok(granted())));
        assert_eq!(
            first.state,
            json!({"kept": true}),
            "locking leaves the state alone"
        );
        let second = acquire(&first.lock, 2, 1, 1);
        assert_eq!(second.reply, Reply::Later);
        let third = acquire(&second.lock, 3, 1, 1);
        // A retried attempt of a waiter keeps its place, told on its new attempt.
        let again = acquire(&third.lock, 2, 1, 2);
        assert_eq!(again.reply, Reply::Later);
        assert_eq!(again.lock.waiting.len(), 2);
        // The holder asking again holds it still.
        assert_eq!(
            acquire(&again.lock, 1, 1, 3).reply,
            Reply::Now(Ok(granted()))
        );
        let handed = release(&again.lock, 1);
        assert_eq!(handed.granted, vec![caller(2, 2)]);
        assert_eq!(handed.lock.holders, vec![holder(2)]);
        // A waiter that gives up leaves the line; the last release frees it.
        let gave_up = release(&handed.lock, 3);
        assert!(gave_up.granted.is_empty());
        assert!(release(&gave_up.lock, 2).lock.is_free());
        assert!(
            release(&LockState::default(), 9).lock.is_free(),
            "releasing nothing is fine"
        );
    }

    #[test]
    fn a_semaphore_lets_in_up_to_its_capacity() {
        let mut lock = LockState::default();
        for n in 1..=3 {
            let applied = acquire(&lock, n, 3, 1);
            assert_eq!(applied.reply, Reply::Now(Ok(granted())), "{n}");
            lock = applied.lock;
        }
        let fourth = acquire(&lock, 4, 3, 1);
        assert_eq!(fourth.reply, Reply::Later);
        let fifth = acquire(&fourth.lock, 5, 3, 1);
        let freed = release(&fifth.lock, 2);
        assert_eq!(
            freed.granted,
            vec![caller(4, 1)],
            "first come, first served"
        );
        assert_eq!(freed.lock.holders.len(), 3);
    }

    #[test]
    fn a_state_past_its_limit_is_refused() {
        let big = "x".repeat(MAX_ENTITY_STATE_BYTES);
        let err = run(Value::Null, json!({"op": "set", "value": big})).unwrap_err();
        assert!(err.starts_with("set would make the state"), "{err}");
    }
}
