use std::fmt;
use std::sync::Arc;

use legato_contracts::{
    Budget, EventName, HeartbeatKind, InstanceId, ParentLink, StepId, TaskError, TaskKey, Usage,
};
use legato_workflow::Workflow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Everything that can happen to an instance. Each accepted event is one
/// history row; `at` is when the orchestrator received it, the engine's only
/// source of time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Started {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        instance: InstanceId,
        /// The pinned definition: later registrations never change it.
        workflow: Arc<Workflow>,
        #[serde(default)]
        input: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// This run of the instance id, chosen by whoever turns the start
        /// into this event; part of every task key.
        #[serde(default)]
        run: u64,
        /// When the instance was created (its start accepted), which the
        /// instance keeps; `at` when absent.
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        created_at: Option<OffsetDateTime>,
        /// Set when the instance runs as a child workflow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentLink>,
        /// What the start asked the instance may spend, in place of its
        /// definition's budget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<Budget>,
        /// Set when the instance applies an entity's custom operation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serves: Option<legato_contracts::EntityLink>,
    },
    TaskCompleted {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        key: TaskKey,
        attempt: u32,
        #[serde(default)]
        output: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        custom_status: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    TaskFailed {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        key: TaskKey,
        attempt: u32,
        error: TaskError,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    TimerFired {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        timer: TimerKey,
    },
    /// The attempt asked a person a question and ended; the task waits for
    /// an event named `name` (see `legato_contracts::TaskAsked`).
    TaskAsked {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        key: TaskKey,
        attempt: u32,
        name: EventName,
        question: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schema: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// An agent's heartbeat that renews the attempt's heartbeat lease (the
    /// attempt is alive at `at`), carries news for the watchers, or both.
    TaskHeartbeat {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        key: TaskKey,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        news: Option<AgentNews>,
        /// A worker holds the attempt for this long from each heartbeat
        /// (see `TaskHeartbeat::lease_ms`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// `id` (here and in the control events below) is the message id, so a
    /// redelivered message counts once, even much later (a redelivered
    /// suspend must not suspend the instance again after a resume), while
    /// two separate raises of the same name both count.
    EventRaised {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        name: EventName,
        #[serde(default)]
        data: Value,
    },
    TerminateRequested {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    SuspendRequested {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ResumeRequested {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Replaces the instance's budget before it resumes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<Budget>,
    },
    RestartRequested {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Value>,
    },
    /// Resume a Failed or Terminated instance from what did not complete,
    /// on `workflow` (a newer version of its definition) when given.
    RedriveRequested {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workflow: Option<Arc<Workflow>>,
    },
}

impl Event {
    pub fn at(&self) -> OffsetDateTime {
        match self {
            Self::Started { at, .. }
            | Self::TaskCompleted { at, .. }
            | Self::TaskFailed { at, .. }
            | Self::TimerFired { at, .. }
            | Self::TaskHeartbeat { at, .. }
            | Self::TaskAsked { at, .. }
            | Self::EventRaised { at, .. }
            | Self::TerminateRequested { at, .. }
            | Self::SuspendRequested { at, .. }
            | Self::ResumeRequested { at, .. }
            | Self::RestartRequested { at, .. }
            | Self::RedriveRequested { at, .. } => *at,
        }
    }

    /// Identifies redeliveries of the same fact while an instance is
    /// suspended and events wait in its backlog.
    pub(crate) fn dedup_key(&self) -> Option<String> {
        match self {
            Self::TaskCompleted { key, attempt, .. }
            | Self::TaskFailed { key, attempt, .. }
            | Self::TaskAsked { key, attempt, .. } => Some(format!("task:{key}#{attempt}")),
            Self::TimerFired { timer, .. } => Some(format!("timer:{timer}")),
            Self::EventRaised { id, .. } => Some(format!("event:{id}")),
            _ => None,
        }
    }
}

/// What an agent tells the instance's watchers through a heartbeat. It is
/// recorded like any event, so it takes its place (and progress position)
/// among the instance's other progress and is in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentNews {
    /// The heartbeat's message id: a redelivery is told once.
    pub id: String,
    pub kind: HeartbeatKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A durable timer. Its `Display` form is the timer's id in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimerKey {
    /// Backoff before the attempt after `attempt`.
    Retry { key: TaskKey, attempt: u32 },
    /// The step's `timeout_ms` for one attempt.
    AttemptTimeout { key: TaskKey, attempt: u32 },
    /// A `wait_for_event` step's deadline (`iteration` inside a loop).
    EventTimeout {
        execution: u32,
        step: StepId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iteration: Option<u32>,
    },
    /// A `timer` step (`iteration` inside a loop).
    Delay {
        execution: u32,
        step: StepId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iteration: Option<u32>,
    },
    /// The `check`-th look at whether an attempt heartbeated within its
    /// step's `heartbeat_timeout_ms`.
    HeartbeatLease {
        key: TaskKey,
        attempt: u32,
        check: u32,
    },
    /// How long the question `attempt` asked may go unanswered.
    AskTimeout { key: TaskKey, attempt: u32 },
}

impl TimerKey {
    /// The step the timer is for.
    pub fn step(&self) -> &StepId {
        match self {
            Self::Retry { key, .. }
            | Self::AttemptTimeout { key, .. }
            | Self::AskTimeout { key, .. }
            | Self::HeartbeatLease { key, .. } => &key.step,
            Self::EventTimeout { step, .. } | Self::Delay { step, .. } => step,
        }
    }
}

impl fmt::Display for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry { key, attempt } => write!(f, "retry:{key}#{attempt}"),
            Self::AttemptTimeout { key, attempt } => write!(f, "timeout:{key}#{attempt}"),
            Self::AskTimeout { key, attempt } => write!(f, "ask:{key}#{attempt}"),
            Self::EventTimeout {
                execution,
                step,
                iteration,
            } => write!(f, "wait:e{execution}/{step}{}", Iteration(*iteration)),
            Self::Delay {
                execution,
                step,
                iteration,
            } => write!(f, "delay:e{execution}/{step}{}", Iteration(*iteration)),
            Self::HeartbeatLease {
                key,
                attempt,
                check,
            } => write!(f, "lease:{key}#{attempt}.{check}"),
        }
    }
}

/// `@<iteration>` inside a loop, nothing elsewhere.
struct Iteration(Option<u32>);

impl fmt::Display for Iteration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(iteration) => write!(f, "@{iteration}"),
            None => Ok(()),
        }
    }
}
