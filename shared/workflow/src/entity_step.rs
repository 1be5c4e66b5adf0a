//! The `entity` action: one operation on a durable entity, a call (the
//! step's output is the answer) or a signal (the step completes once the
//! operation is sent). Its `id` and the operation's fields are templates.

use std::collections::BTreeSet;

use legato_contracts::{EntityType, OPERATION_FIELDS};
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
    let op = match fields.get("op") {
        Some(Value::String(op)) => OPERATION_FIELDS.iter().find(|(name, _, _)| name == op),
        _ => None,
    };
    let Some((name, allowed, needed)) = op else {
        let names: Vec<&str> = OPERATION_FIELDS.iter().map(|(name, _, _)| *name).collect();
        fail(
            format!("{at}.op"),
            format!("is required: one of {}", names.join(", ")),
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
