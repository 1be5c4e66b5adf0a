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
/// `run` tells apart instances that reused one id (a finished or purged
/// instance's id may be started again), and `execution` changes on every
/// restart, so late results of an earlier run or execution are recognised
/// as stale, and agents and brokers deduplicating by key never mistake a
/// new instance's task for an old one's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    /// The instance's run id (random per start; 0 in keys written before
    /// runs existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u64,
    pub execution: u32,
    pub step: StepId,
    /// Index into a `for_each` list; absent for a plain agent step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// The loop iteration (1 for the first) of a step inside a loop:
    /// each iteration's work is new work, with its own idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    #[serde(default, skip_serializing_if = "is_action")]
    pub role: TaskRole,
}

fn is_zero(run: &u64) -> bool {
    *run == 0
}

fn is_action(role: &TaskRole) -> bool {
    *role == TaskRole::Action
}

impl fmt::Display for TaskKey {
    /// A compact, stable form for logs and agent idempotency keys:
    /// `9f2c…41/e0/fetch[3]`, `9f2c…41/e0/review@2` (iteration 2 of its
    /// loop) or `9f2c…41/e1/charge~compensation` (the run in hex, left out
    /// when 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.run != 0 {
            write!(f, "{:016x}/", self.run)?;
        }
        write!(f, "e{}/{}", self.execution, self.step)?;
        if let Some(iteration) = self.iteration {
            write!(f, "@{iteration}")?;
        }
        if let Some(item) = self.item {
            write!(f, "[{item}]")?;
        }
        if self.role == TaskRole::Compensation {
            f.write_str("~compensation")?;
        }
        Ok(())
    }
}
