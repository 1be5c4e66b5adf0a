//! What an operation does to an entity's state: pure, like the rest of
//! the engine, so every replica applying the same operations in the same
//! order comes to the same state and the same answers.

mod custom;

use legato_contracts::{Caller, Holder, Operation};

pub use custom::{
    Admission, Busy, Deferred, MAX_QUEUED, MAX_QUEUED_BYTES, admit, custom_outcome, defer,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};

/// The largest state an entity may grow to, as JSON: an operation that
/// would pass it fails and changes nothing.
pub const MAX_ENTITY_STATE_BYTES: usize = 256 * 1024;

/// What is kept beside an entity's state: who holds it as a lock and who
/// waits, first come, first served (locking never touches the state), and
/// the custom operation it is busy with, with the operations that queued
/// behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockState {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Holder>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<Deferred>,
}

impl LockState {
    pub fn is_free(&self) -> bool {
        self.holders.is_empty()
            && self.waiting.is_empty()
            && self.busy.is_none()
            && self.queued.is_empty()
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
        Operation::Complete { .. } | Operation::Custom(_) => Err(format!(
            "{} is applied by the entity's type, not on its own",
            operation.name()
        )),
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
mod tests;
