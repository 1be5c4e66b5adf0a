//! Durable entities: JSON state keyed by (type, id) that outlives any run,
//! changed only by [`Operation`]s applied one at a time, each exactly once
//! (see `docs/entities.md`). An entity belongs to the tenant of whoever
//! operates it: the message's subject names that tenant, never the payload.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{EntityId, EntityType, InstanceId, TaskKey};

/// The longest operation id: room for an instance id, a task key and a
/// little more.
pub const MAX_OPERATION_ID: usize = 512;
/// The largest operation, as JSON: an entity's operations are its
/// history, kept beside it.
pub const MAX_OPERATION_BYTES: usize = 64 * 1024;

/// One entity within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRef {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub id: EntityId,
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.id)
    }
}

/// What an operation does to an entity's state. Each works at `path`, a
/// JSON Pointer (RFC 6901) into the state, the whole state when empty;
/// objects on the way are created as needed. An operation that cannot
/// apply (an increment past its bounds, an append to a string) fails and
/// changes nothing; it still counts as applied, so sending it again
/// answers the same failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Replaces the value at `path`. Answers `null`.
    Set {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        value: Value,
    },
    /// Merges `value` into the value at `path` as a JSON Merge Patch
    /// (RFC 7386: `null` members remove). Answers `null`.
    Merge {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        value: Value,
    },
    /// Appends `value` to the array at `path` (absent: a new one), then
    /// keeps only the last `cap` items when a cap is given. Answers the
    /// array's length.
    Append {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cap: Option<u32>,
    },
    /// Adds `by` (default 1) to the number at `path` (absent: 0). Fails,
    /// changing nothing, when the sum would leave `[min, max]`. Answers
    /// the new number.
    Increment {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<serde_json::Number>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<serde_json::Number>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<serde_json::Number>,
    },
    /// Sets `value` at `path` only if the value there equals `expected`
    /// (`null` for absent). Answers `{"swapped": bool, "current": value}`.
    CompareAndSet {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        expected: Value,
        value: Value,
    },
    /// Removes the value at `path`; the whole state becomes `null` when
    /// `path` is empty. Answers `null`.
    Remove {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
    },
    /// Holds the entity for `holder` (a lock step's acquisition) while
    /// fewer than `capacity` hold it and nobody waits before; otherwise
    /// `holder` waits its turn (first come, first served). Answers
    /// `{"granted": true}` when held, now or later. Sent by the engine,
    /// never by the API.
    Acquire { holder: Holder, capacity: u32 },
    /// Lets go of the entity for `holder` (holding or waiting), and grants
    /// it to those waiting while there is room. Sent by the engine, and by
    /// the orchestrator for a holder whose lock step is gone.
    Release { holder: Holder },
    /// Answers the value at `path` (`null` when absent) as last committed,
    /// without waiting behind the operations queued for the entity and
    /// without being recorded: reads never wait behind writes.
    Read {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
    },
    /// How the run applying a custom operation ended (sent by the
    /// orchestrator when that run ends, never by the API): the entity
    /// takes its new state and answer, then the operations that queued
    /// behind it. Changes nothing unless the entity is busy with that
    /// operation and run, so sent again it is harmless.
    Complete {
        /// The custom operation's id.
        operation: String,
        /// The run that applied it.
        instance: InstanceId,
        outcome: CustomOutcome,
    },
    /// An operation the entity's registered type declares, applied by the
    /// workflow the type names for it (`{"op": "<name>", "input": ...}`).
    #[serde(untagged)]
    Custom(CustomOperation),
}

/// A custom operation: its name, as the entity's type declares it, and its
/// input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomOperation {
    #[serde(rename = "op")]
    pub name: String,
    #[serde(default)]
    pub input: Value,
}

/// How a custom operation's run ended: its output (`{state?, answer?}`),
/// or why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CustomOutcome {
    Completed(Value),
    Failed(String),
}

/// Whether `name` may name a custom operation: the rule of entity type
/// names, and none of the operations every entity has.
pub fn check_custom_name(name: &str) -> Result<(), String> {
    if EntityType::parse(name).is_err() {
        return Err(format!(
            "{name:?} must be 1-64 characters of a-z 0-9 - _, starting with a letter"
        ));
    }
    if OPERATION_FIELDS.iter().any(|(op, _, _)| *op == name)
        || ["acquire", "release", "complete"].contains(&name)
    {
        return Err(format!(
            "{name} is an operation every entity has; a custom one needs another name"
        ));
    }
    Ok(())
}

/// Each operation's name, the fields it takes besides `op`, and those it
/// needs.
pub const OPERATION_FIELDS: &[(&str, &[&str], &[&str])] = &[
    ("set", &["path", "value"], &["value"]),
    ("merge", &["path", "value"], &["value"]),
    ("append", &["path", "value", "cap"], &["value"]),
    ("increment", &["path", "by", "min", "max"], &[]),
    (
        "compare_and_set",
        &["path", "expected", "value"],
        &["expected", "value"],
    ),
    ("remove", &["path"], &[]),
    ("read", &["path"], &[]),
];

/// What a custom operation takes besides `op`.
const CUSTOM_FIELDS: (&str, &[&str], &[&str]) = ("a custom operation", &["input"], &[]);

/// Why a JSON value is not an operation: the JSON Pointer of the field at
/// fault (`/op`, `/by`; empty for the whole value) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationError {
    pub pointer: String,
    pub message: String,
}

impl OperationError {
    fn at(field: &str, message: impl Into<String>) -> Self {
        Self {
            pointer: if field.is_empty() {
                String::new()
            } else {
                format!("/{field}")
            },
            message: message.into(),
        }
    }
}

impl Operation {
    /// Reads an operation from JSON, naming the field at fault (serde's
    /// own errors cannot, inside a tagged enum).
    pub fn from_json(value: Value) -> Result<Self, OperationError> {
        let Value::Object(fields) = &value else {
            return Err(OperationError::at(
                "",
                "must be a JSON object: `op` and its fields",
            ));
        };
        let names: Vec<&str> = OPERATION_FIELDS.iter().map(|(name, _, _)| *name).collect();
        let op = fields.get("op").and_then(Value::as_str);
        let Some((name, allowed, needed)) = OPERATION_FIELDS
            .iter()
            .find(|(name, _, _)| Some(*name) == op)
            .or_else(|| {
                op.filter(|op| check_custom_name(op).is_ok())
                    .map(|_| &CUSTOM_FIELDS)
            })
        else {
            return Err(OperationError::at(
                "op",
                format!(
                    "must be one of {}, or a custom operation of the entity's type",
                    names.join(", ")
                ),
            ));
        };
        for field in fields.keys().filter(|f| *f != "op") {
            if !allowed.contains(&field.as_str()) {
                return Err(OperationError::at(
                    field,
                    format!("{name} takes only {}", allowed.join(", ")),
                ));
            }
        }
        if let Some(field) = needed.iter().find(|f| !fields.contains_key(**f)) {
            return Err(OperationError::at(field, format!("is required by {name}")));
        }
        for (field, value) in fields {
            let fits = match field.as_str() {
                "path" => value
                    .as_str()
                    .is_some_and(|p| p.is_empty() || p.starts_with('/')),
                "cap" => value.as_u64().is_some_and(|c| c <= u64::from(u32::MAX)),
                "by" | "min" | "max" => value.is_number(),
                _ => true,
            };
            if !fits {
                return Err(OperationError::at(
                    field,
                    match field.as_str() {
                        "path" => "must be a JSON Pointer: empty, or starting with /",
                        "cap" => "must be a whole number from 0 to 4294967295",
                        _ => "must be a number",
                    },
                ));
            }
        }
        serde_json::from_value(value).map_err(|e| OperationError::at("", e.to_string()))
    }

    /// Its name as the API and the workflow language spell it.
    pub fn name(&self) -> &str {
        match self {
            Self::Set { .. } => "set",
            Self::Merge { .. } => "merge",
            Self::Append { .. } => "append",
            Self::Increment { .. } => "increment",
            Self::CompareAndSet { .. } => "compare_and_set",
            Self::Remove { .. } => "remove",
            Self::Read { .. } => "read",
            Self::Acquire { .. } => "acquire",
            Self::Release { .. } => "release",
            Self::Complete { .. } => "complete",
            Self::Custom(custom) => &custom.name,
        }
    }

    /// Whether it locks or unlocks (sent by the engine, never the API).
    pub fn is_locking(&self) -> bool {
        matches!(self, Self::Acquire { .. } | Self::Release { .. })
    }

    /// Whether the entity's type declares it, and a workflow applies it.
    pub fn is_custom(&self) -> bool {
        matches!(self, Self::Custom(_))
    }

    /// Whether only legato sends it, never the API, a workflow or an agent.
    pub fn is_internal(&self) -> bool {
        self.is_locking() || matches!(self, Self::Complete { .. })
    }

    /// Whether it changes nothing (a read).
    pub fn is_read(&self) -> bool {
        matches!(self, Self::Read { .. })
    }
}

/// Who holds (or waits for) an entity as a lock: a lock step's
/// acquisition task, one per entity it locks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    pub instance: InstanceId,
    pub key: TaskKey,
}

/// The task attempt waiting for an operation's answer: it comes back as
/// that attempt's result (`legato.task.completed.v1` with the answer as
/// output, or `legato.task.failed.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    pub instance: InstanceId,
    pub key: TaskKey,
    pub attempt: u32,
    /// The caller sent a signal: it waits only to know the operation was
    /// applied (so a crash anywhere loses no signal), and is answered
    /// `null` however the operation came out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signal: bool,
}

/// The custom operation a run applies, named in its start: its end is
/// told to the entity as a [`Operation::Complete`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityLink {
    pub entity: EntityRef,
    /// The custom operation's id.
    pub operation: String,
}

/// `legato.entity.operation.v1`: apply `operation` to `entity`, once per
/// `id`, and tell the `caller` (a workflow step's attempt) if there is
/// one; the API's signals have none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityOperation {
    pub entity: EntityRef,
    /// Applied once per entity whatever the number of deliveries or
    /// sends: a retried call reuses its first attempt's id and is answered
    /// with the first result.
    pub id: String,
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
}

impl EntityOperation {
    /// Why the message cannot be applied whatever the entity holds.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_OPERATION_ID {
            return Err(format!(
                "operation id must be 1-{MAX_OPERATION_ID} characters"
            ));
        }
        if self.id.chars().any(char::is_control) {
            return Err("operation id must not contain control characters".into());
        }
        if let Operation::Custom(custom) = &self.operation {
            check_custom_name(&custom.name)?;
        }
        let bytes = serde_json::to_vec(&self.operation).map_or(usize::MAX, |b| b.len());
        if bytes > MAX_OPERATION_BYTES {
            return Err(format!(
                "the operation is {bytes} bytes as JSON, more than {MAX_OPERATION_BYTES}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_custom_operation_is_its_name_and_input_on_the_wire() {
        let wire = json!({"op": "summarize", "input": {"words": 40}});
        let operation = Operation::from_json(wire.clone()).unwrap();
        assert_eq!(
            operation,
            Operation::Custom(CustomOperation {
                name: "summarize".into(),
                input: json!({"words": 40}),
            })
        );
        assert_eq!(operation.name(), "summarize");
        assert_eq!(serde_json::to_value(&operation).unwrap(), wire);
        let read: Operation = serde_json::from_value(wire).unwrap();
        assert_eq!(read, operation);
        // The built-in ones keep their fields' checks.
        let err = Operation::from_json(json!({"op": "increment", "input": 1})).unwrap_err();
        assert_eq!(err.pointer, "/input");
        let err = Operation::from_json(json!({"op": "summarize", "by": 1})).unwrap_err();
        assert_eq!(err.pointer, "/by");
        let err = Operation::from_json(json!({"op": "Not A Name"})).unwrap_err();
        assert_eq!(err.pointer, "/op");
        assert!(check_custom_name("acquire").is_err());
        assert!(check_custom_name("set").is_err());
    }

    #[test]
    fn a_completion_reads_back() {
        let operation = Operation::Complete {
            operation: "i-1/e0/remember".into(),
            instance: InstanceId::parse("entity.customer.00ff").unwrap(),
            outcome: CustomOutcome::Completed(json!({"state": {"n": 1}, "answer": 1})),
        };
        let wire = serde_json::to_value(&operation).unwrap();
        assert_eq!(wire["op"], "complete");
        assert_eq!(
            serde_json::from_value::<Operation>(wire).unwrap(),
            operation
        );
        assert!(operation.is_internal());
    }
}
