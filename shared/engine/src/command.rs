use legato_contracts::{
    InstanceId, ParentLink, ProgressEvent, TaskCancelled, TaskDispatched, TaskError,
};
use legato_workflow::ChildWorkflow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::TimerKey;

/// What the engine asks the outside world to do after an accepted event.
/// The orchestrator commits them with the new state (outbox and timer rows)
/// before carrying them out, so a crash in between loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    DispatchTask(TaskDispatched),
    /// Tell the agent to stop work whose result is no longer wanted.
    CancelTask(TaskCancelled),
    /// Send an operation to a durable entity (an entity step's attempt).
    OperateEntity(legato_contracts::EntityOperation),
    /// Start a child workflow run for a task attempt; its end comes back
    /// as that attempt's result.
    StartChild(ChildStart),
    /// Stop a child run whose result is no longer wanted.
    TerminateChild {
        child: InstanceId,
        reason: String,
    },
    /// This instance is a child run and ended: its parent's task attempt
    /// has its result.
    ReportToParent {
        parent: ParentLink,
        result: ChildResult,
    },
    /// This instance applied an entity's custom operation and ended: the
    /// entity takes its outcome.
    AnswerEntity {
        instance: InstanceId,
        link: legato_contracts::EntityLink,
        result: ChildResult,
    },
    ScheduleTimer {
        timer: TimerKey,
        #[serde(with = "time::serde::rfc3339")]
        fire_at: OffsetDateTime,
    },
    CancelTimer {
        timer: TimerKey,
    },
    PublishProgress(ProgressEvent),
    CompleteInstance {
        output: Value,
    },
    FailInstance {
        error: String,
    },
}

/// A child workflow run to start (see [`Command::StartChild`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStart {
    pub child: InstanceId,
    /// As the parent's definition names it: resolved in the parent's
    /// tenant (its own definition, else the shared one), the latest
    /// version unless pinned.
    pub workflow: ChildWorkflow,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub parent: ParentLink,
}

/// How a child run ended, as its parent's task attempt sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ChildResult {
    Completed {
        #[serde(default)]
        output: Value,
        /// What the child run spent: its parent counts it as its step's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<legato_contracts::Usage>,
    },
    Failed {
        error: TaskError,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<legato_contracts::Usage>,
    },
}
