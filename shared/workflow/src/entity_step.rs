//! The `entity` action: one operation on a durable entity, a call (the
//! step's output is the answer) or a signal (the step completes once the
//! operation is sent). Its `id` and the operation's fields are templates.

use std::collections::BTreeSet;

use legato_contracts::{EntityType, OPERATION_FIELDS, check_custom_name};
use serde::Serialize;
use serde_json::Value;

use crate::expr::{Template, Variables};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityStep {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    /// Renders to the entity's id.
    pub id: Template,
    /// Renders to the operation: `op` and its fields.
    #[serde(flatten)]
    pub operation: Template,
    /// Fire and forget: the step does not wait for the answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub signal: bool,
}

impl EntityStep {
    pub(crate) fn templates(&self) -> [&Template; 2] {
        [&self.id, &self.operation]
    }

    pub(crate) fn step_references(&self) -> BTreeSet<String> {
        let mut found = self.id.step_references();
        found.extend(self.operation.step_references());
        found
    }
}

/// Parses the `entity` object of a step, adding each problem found with
/// the path it is at.
pub(crate) fn parse(
    raw: Value,
    vars: Variables,
    at: &str,
    problem: &mut dyn FnMut(String, String),
) -> Option<EntityStep> {
    let Value::Object(mut fields) = raw else {
        problem(
            at.to_owned(),
            "must be an object with type, id and op".into(),
        );
        return None;
    };
    let mut ok = true;
    let mut fail = |path: String, message: String| {
        ok = false;
        problem(path, message);
    };
    let entity_type = match fields.remove("type") {
        Some(Value::String(name)) => EntityType::parse(name)
            .map_err(|e| fail(format!("{at}.type"), e.to_string()))
            .ok(),
        _ => {
            fail(
                format!("{at}.type"),
                "is required: the entity type's name".into(),
            );
            None
        }
    };
    let id = match fields.remove("id") {
        Some(id @ Value::String(_)) => Some(id),
        _ => {
            fail(
                format!("{at}.id"),
                "is required: the entity's id, a string (it may hold ${{ }} expressions)".into(),
            );
            None
        }
    };
    let signal = match fields.remove("signal") {
        None => false,
        Some(Value::Bool(signal)) => signal,
        Some(_) => {
            fail(format!("{at}.signal"), "must be true or false".into());
            false
        }
    };
    let custom: (&str, &[&str], &[&str]) = ("a custom operation", &["input"], &[]);
    let op = match fields.get("op") {
        Some(Value::String(op)) => OPERATION_FIELDS
            .iter()
            .find(|(name, _, _)| name == op)
            .or_else(|| check_custom_name(op).is_ok().then_some(&custom)),
        _ => None,
    };
    let Some((name, allowed, needed)) = op else {
        let names: Vec<&str> = OPERATION_FIELDS.iter().map(|(name, _, _)| *name).collect();
        fail(
            format!("{at}.op"),
            format!(
                "is required: one of {}, or a custom operation of the entity's type",
                names.join(", ")
            ),
        );
        return None;
    };
    for field in fields.keys().filter(|f| *f != "op") {
        if !allowed.contains(&field.as_str()) {
            fail(
                format!("{at}.{field}"),
                format!("{name} takes only {}", allowed.join(", ")),
            );
        }
    }
    for field in *needed {
        if !fields.contains_key(*field) {
            fail(format!("{at}.{field}"), format!("is required by {name}"));
        }
    }
    if let Some(Value::String(path)) = fields.get("path")
        && !path.is_empty()
        && !path.starts_with('/')
        && !path.starts_with("${{")
    {
        fail(
            format!("{at}.path"),
            "must be a JSON Pointer: empty, or starting with /".into(),
        );
    }
    if *name == "read" && signal {
        fail(
            format!("{at}.signal"),
            "a read is for its answer: it cannot be a signal".into(),
        );
    }
    let id = template_at(id?, vars, &format!("{at}.id"), &mut fail);
    let operation = template_at(Value::Object(fields), vars, at, &mut fail);
    if !ok {
        return None;
    }
    Some(EntityStep {
        entity_type: entity_type?,
        id: id?,
        operation: operation?,
        signal,
    })
}

fn template_at(
    value: Value,
    vars: Variables,
    at: &str,
    fail: &mut dyn FnMut(String, String),
) -> Option<Template> {
    Template::parse(value, vars)
        .map_err(|errors| {
            for e in errors {
                fail(at.to_owned(), e.0);
            }
        })
        .ok()
}

/// A critical section: its steps run while the instance holds every
/// entity named (exclusively, or as one of at most `capacity` holders),
/// acquired one after the other in (type, id) order, so two lock steps
/// never wait on each other in a cycle; released when the block ends,
/// fails or is stopped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockSpec {
    pub entities: Vec<LockTarget>,
    /// At most this many holders at once (a semaphore); 1 is a lock.
    #[serde(skip_serializing_if = "is_one")]
    pub capacity: u32,
    pub steps: Vec<crate::Step>,
    /// The lock step's output; defaults to every body step's output by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Template>,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// One entity a lock step holds; `id` is a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockTarget {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub id: Template,
}

impl LockSpec {
    pub(crate) fn step_references(&self) -> BTreeSet<String> {
        self.entities
            .iter()
            .flat_map(|t| t.id.step_references())
            .collect()
    }

    /// The steps `output` reads (see `Step::steps_read`).
    pub fn steps_read(&self) -> Option<BTreeSet<String>> {
        crate::definition::steps_read_by(&[], &self.output.iter().collect::<Vec<_>>())
    }
}

/// The most entities one lock step holds.
pub const MAX_LOCKED: usize = 16;

/// Parses a lock's `entities`, `capacity` and `output` (its steps are
/// parsed by the caller, as a block).
pub(crate) fn parse_lock_targets(
    raw: Vec<Value>,
    vars: Variables,
    at: &str,
    problem: &mut dyn FnMut(String, String),
) -> Option<Vec<LockTarget>> {
    if raw.is_empty() || raw.len() > MAX_LOCKED {
        problem(
            format!("{at}.entities"),
            format!("must list 1-{MAX_LOCKED} entities, each {{type, id}}"),
        );
        return None;
    }
    let mut ok = true;
    let mut targets = Vec::new();
    for (i, target) in raw.into_iter().enumerate() {
        let here = format!("{at}.entities[{i}]");
        let Value::Object(mut fields) = target else {
            ok = false;
            problem(here, "must be {type, id}".into());
            continue;
        };
        let entity_type = match fields.remove("type") {
            Some(Value::String(name)) => EntityType::parse(name)
                .map_err(|e| problem(format!("{here}.type"), e.to_string()))
                .ok(),
            _ => {
                problem(
                    format!("{here}.type"),
                    "is required: the entity type's name".into(),
                );
                None
            }
        };
        let id = match fields.remove("id") {
            Some(id @ Value::String(_)) => Template::parse(id, vars)
                .map_err(|errors| {
                    for e in errors {
                        problem(format!("{here}.id"), e.0);
                    }
                })
                .ok(),
            _ => {
                problem(
                    format!("{here}.id"),
                    "is required: the entity's id, a string".into(),
                );
                None
            }
        };
        for field in fields.keys() {
            problem(
                format!("{here}.{field}"),
                "a lock's entity takes only type and id".into(),
            );
        }
        match (entity_type, id, fields.is_empty()) {
            (Some(entity_type), Some(id), true) => targets.push(LockTarget { entity_type, id }),
            _ => ok = false,
        }
    }
    ok.then_some(targets)
}
