//! Workflow definitions as data.
//!
//! A definition is a YAML or JSON document (schema in
//! `contracts/workflow.schema.json`, guide in `docs/workflows.md`): a DAG of
//! steps joined by `needs`, each doing one action (an agent call, a dynamic
//! `for_each` fan-out, a wait for an external event, or a timer), with
//! optional conditions, retries, timeouts and saga compensation.
//! [`parse`] accepts a document only when all of it is valid and otherwise
//! lists every problem with the path where it was found.

mod definition;
mod entity_step;
mod entity_type;
mod expr;
mod parse;

use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use definition::{
    Action, AgentRef, ChildWorkflow, Compensation, LoopSpec, OnMaxIterations, OnTimeout, RaceSpec,
    RetryPolicy, Step, TimerSpec, WaitForEvent, Work, Workflow,
};
pub use entity_step::{EntityStep, LockSpec, LockTarget, MAX_LOCKED};
pub use entity_type::{CustomOperationDef, EntityTypeDef, MAX_CUSTOM_OPERATIONS};
pub use expr::{Expr, ExprError, Scope, Template, Variables};
pub use parse::{from_value, parse};

/// One problem in a definition, located by a readable path such as
/// `steps[2] (fetch).retry.backoff`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    fn one(path: &str, message: impl Into<String>) -> Self {
        Self(vec![ValidationError {
            path: path.to_owned(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Whether `schema` is a JSON Schema that can check values.
pub fn usable_schema(schema: &Value) -> Result<(), String> {
    jsonschema::validator_for(schema)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks `value` against the JSON Schema `schema`, listing every
/// violation by JSON pointer.
pub fn check_against(schema: &Value, value: &Value) -> Result<(), Vec<InputError>> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        vec![InputError {
            pointer: String::new(),
            message: format!("the schema is not usable: {e}"),
        }]
    })?;
    let errors: Vec<InputError> = validator
        .iter_errors(value)
        .map(|e| InputError {
            pointer: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A problem with a start input, located by JSON pointer (`/customer/id`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InputError {
    pub pointer: String,
    pub message: String,
}

impl Workflow {
    /// The SHA-256 of the definition's canonical JSON, which instances pin
    /// beside name and version so a re-registered version is detected.
    pub fn content_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks a start input against `input_schema`, listing every violation.
    pub fn check_input(&self, input: &Value) -> Result<(), Vec<InputError>> {
        match &self.input_schema {
            Some(schema) => check_against(schema, input),
            None => Ok(()),
        }
    }

    /// Renders the instance output from `steps` (as given to expressions).
    pub fn render_output(
        &self,
        input: &Value,
        steps: Map<String, Value>,
    ) -> Result<Value, ExprError> {
        match &self.output {
            Some(template) => template.render(&Scope::new(input, steps)?),
            // Every top-level step's output by id (a loop's body and a
            // race's branches are in the loop's or race's).
            None => {
                let top: Option<std::collections::BTreeSet<&str>> = self
                    .has_blocks()
                    .then(|| self.steps.iter().map(|s| s.id.as_str()).collect());
                Ok(Value::Object(
                    steps
                        .into_iter()
                        .filter(|(id, _)| top.as_ref().is_none_or(|top| top.contains(id.as_str())))
                        .map(|(id, s)| (id, s.get("output").cloned().unwrap_or(Value::Null)))
                        .collect(),
                ))
            }
        }
    }
}
