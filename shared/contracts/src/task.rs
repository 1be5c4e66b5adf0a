use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StepId;

/// Whether a task does a step's work or undoes it during saga rollback.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskRole {
    #[default]
    Action,
    Compensation,
}

/// Names one unit of agent work inside an instance, independent of attempt.
///
/// Together with the instance id and the attempt number it is the idempotency
/// key agents and the orchestrator use: delivery is at-least-once, so the same
/// (instance, key, attempt) may arrive more than once and must count once.
/// `execution` changes on every restart so late results of an earlier run are
/// recognised as stale.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub execution: u32,
    pub step: StepId,
    /// Index into a `for_each` list; absent for a plain agent step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    #[serde(default, skip_serializing_if = "is_action")]
    pub role: TaskRole,
}

fn is_action(role: &TaskRole) -> bool {
    *role == TaskRole::Action
}

impl fmt::Display for TaskKey {
    /// A compact, stable form for logs and agent idempotency keys:
    /// `e0/fetch[3]` or `e1/charge~compensation`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}/{}", self.execution, self.step)?;
        if let Some(item) = self.item {
            write!(f, "[{item}]")?;
        }
        if self.role == TaskRole::Compensation {
            f.write_str("~compensation")?;
        }
        Ok(())
    }
}
