//! Typed payloads, one per CloudEvents `type`, grouped by the topic they
//! travel on. The mapping between a payload and its versioned type name lives
//! only here, so no consumer ever matches on a type string by hand.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{
    AgentName, Budget, EventName, InstanceId, RuntimeStatus, StepId, TaskKey, Usage, WorkflowName,
};

/// Attempts count from 1; a 0 on the wire is a producer bug, refused at the
/// edge like any other invalid field.
fn attempt_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(deserializer)?;
    if n == 0 {
        return Err(serde::de::Error::custom("attempt must be at least 1"));
    }
    Ok(n)
}

/// Routing-key prefix of task cancellations on `agent-tasks`.
pub const CANCEL_ROUTING_PREFIX: &str = "cancel.";

/// The four topics of the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    /// gateway -> orchestrator: start, raise event, terminate, suspend, resume, restart.
    Commands,
    /// orchestrator -> agents, routed by agent name.
    AgentTasks,
    /// agents -> orchestrator: completed, failed, heartbeat.
    AgentResults,
    /// orchestrator and agents -> notifier.
    Progress,
}

impl Topic {
    pub const ALL: [Topic; 4] = [
        Self::Commands,
        Self::AgentTasks,
        Self::AgentResults,
        Self::Progress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commands => "commands",
            Self::AgentTasks => "agent-tasks",
            Self::AgentResults => "agent-results",
            Self::Progress => "progress",
        }
    }
}

/// Asks the orchestrator to start an instance of a registered definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartInstance {
    pub workflow: WorkflowName,
    /// The exact definition version to pin; the gateway resolves "latest".
    pub version: u32,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Set when a parent instance starts this one as a child workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// What the instance may spend, in place of its definition's budget
    /// (the gateway holds it within the definition's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Set when the instance applies an entity's custom operation: its end
    /// is told to the entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_operation: Option<crate::EntityLink>,
}

/// The task attempt of a parent instance a child workflow run does: the
/// child's end is reported as that attempt's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentLink {
    pub instance: InstanceId,
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    /// How many parents are above the child: 1 for a child of an instance
    /// that is no one's child.
    pub depth: u32,
}

/// An external event (typically a human approval) for a waiting instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaiseEvent {
    pub name: EventName,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminateInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspendInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Replaces the instance's budget first (raising it past what it
    /// spent is how an instance suspended for its budget goes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// Starts the instance over with its pinned definition; `input` replaces the
/// original input when given.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// Resume a Failed or Terminated instance from what did not complete: its
/// completed steps (and a `for_each`'s completed items) keep their outputs.
/// `version` moves it onto that version of its definition first, which must
/// keep the step ids of what completed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One attempt of one task, sent to the agent named by the routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDispatched {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    pub agent: AgentName,
    pub workflow: WorkflowName,
    #[serde(default)]
    pub input: Value,
    /// When the orchestrator stops waiting for this attempt (step `timeout_ms`).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<OffsetDateTime>,
    /// The step's heartbeat lease: the agent runtime heartbeats well within
    /// it while the task runs, or the attempt is failed as hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Sent again by an orchestrator that restarted with a bus that forgot
    /// its messages: the attempt may have begun already, so its journal is
    /// read (see [`crate::journal::may_exist`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resent: bool,
    /// Answers to the questions the task asked a person (`ask`), by the
    /// question's name: the task runs again once one is answered.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub answers: std::collections::BTreeMap<String, Value>,
}

/// Tells an agent to stop work whose result is no longer wanted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCancelled {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCompleted {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    #[serde(default)]
    pub output: Value,
    /// Replaces the instance's custom status when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_status: Option<Value>,
    /// What the attempt spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskError {
    pub message: String,
    /// A retryable error is retried under the step's retry policy; any other
    /// fails the step at once.
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFailed {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    pub error: TaskError,
    /// What the attempt spent before it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The attempt asks a person a question and ends: the task waits (no
/// worker held) until an event named `name` answers it, then runs again
/// with the answer (`TaskDispatched::answers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAsked {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    /// The event that answers it.
    pub name: EventName,
    pub question: String,
    /// A JSON Schema the answer must satisfy (the dashboard renders it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// No answer for this long fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A piece of what a model is writing inside a task, relayed to the
/// instance's watchers as it comes and never recorded: a watcher who comes
/// later reads the whole reply where the task keeps it (its journal, its
/// result), not the pieces. Published straight to the progress topic by
/// the agent's side (the Rust runtime, the gateway for pull and push
/// agents), never through the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOutput {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    /// Which output of the attempt the piece belongs to: a model call's
    /// journal entry name (`chat 2`).
    pub call: String,
    /// The piece's place in its call's output, from 1. Pieces are sent in
    /// order; one seen again (a redelivery) has a place already seen.
    pub seq: u64,
    pub text: String,
}

impl AgentOutput {
    /// The most text one piece carries: far more than a model writes
    /// between two sends, far less than a broker's message limit.
    pub const MAX_TEXT_BYTES: usize = 64 * 1024;
}

/// An agent is still working; `progress` is relayed to watchers as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskHeartbeat {
    pub key: TaskKey,
    #[serde(deserialize_with = "attempt_number")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    /// How watchers should read `progress`; absent means agent progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<HeartbeatKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The task's step has a heartbeat lease this heartbeat renews; only
    /// then does the orchestrator record it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leased: bool,
    /// A worker took the attempt (a pull worker's claim, a push endpoint's
    /// acceptance) and holds it for this long from each heartbeat: the
    /// attempt gets a heartbeat lease of this length from now on, if its
    /// step has none, so a worker that vanishes costs the attempt, not the
    /// instance. A task waiting on its queue has no lease: it waits for a
    /// worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// The progress kinds an agent may report through a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatKind {
    AgentProgress,
    /// A person is asked to raise an event; `progress` says which and why.
    ApprovalRequested,
    /// The agent recorded an entry in the task's journal; `progress` holds
    /// its `name` and `bytes`, not its value.
    JournalRecorded,
}

impl From<HeartbeatKind> for ProgressKind {
    fn from(kind: HeartbeatKind) -> Self {
        match kind {
            HeartbeatKind::AgentProgress => Self::AgentProgress,
            HeartbeatKind::ApprovalRequested => Self::ApprovalRequested,
            HeartbeatKind::JournalRecorded => Self::JournalRecorded,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    InstanceStarted,
    InstanceRestarted,
    /// A Failed or Terminated instance resumed from what did not complete.
    InstanceRedriven,
    StepStarted,
    StepCompleted,
    StepSkipped,
    StepRetrying,
    StepFailed,
    WaitingForEvent,
    EventReceived,
    CustomStatus,
    Compensating,
    InstanceSuspended,
    InstanceResumed,
    InstanceCompleted,
    InstanceFailed,
    InstanceTerminated,
    /// Relayed from an agent's heartbeat.
    AgentProgress,
    /// An agent asks a person to raise an event (see the approval agent).
    ApprovalRequested,
    /// A loop step began an iteration (`iteration`; `data` holds
    /// `max_iterations`).
    IterationStarted,
    /// Relayed from an agent: it recorded a journal entry (`data` holds
    /// the entry's `name` and `bytes`).
    JournalRecorded,
    /// A task asks a person a question (`message`); `data` holds the
    /// event `name` that answers it and the answer's `schema`, if any.
    InputRequested,
}

/// What watchers of an instance see. `position` is the event's place among
/// the instance's progress events: unique, and one more than the one before
/// it, across restarts of the instance. A client that saw everything up to
/// `position` N resumes exactly after it, from the stream (`Last-Event-ID`),
/// the hub (`Subscribe` with `after`) or the history (`after=N`). `seq` is
/// the history row of the event that caused it; one row may cause several
/// progress events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressEvent {
    #[serde(default)]
    pub position: u64,
    pub seq: u64,
    pub kind: ProgressKind,
    pub status: RuntimeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// The loop iteration `step` belongs to (1 for the first), for a step
    /// inside a loop and for the loop step itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Several progress events of one commit (one decision, or several
/// committed together), in position order, in one message: a commit that
/// tells watchers several things costs one publish. A commit with one
/// event sends it as `legato.progress.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressBatch {
    pub events: Vec<ProgressEvent>,
}

macro_rules! payloads {
    ($($variant:ident($ty:ty) => $type_name:literal, $topic:ident;)*) => {
        /// Every message legato sends, one variant per CloudEvents type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload {
            $($variant($ty),)*
        }

        impl Payload {
            /// Every CloudEvents type this version understands.
            pub const TYPES: &'static [&'static str] = &[$($type_name,)*];

            /// Every CloudEvents type with the topic it travels on.
            pub const TYPES_BY_TOPIC: &'static [(&'static str, Topic)] =
                &[$(($type_name, Topic::$topic),)*];

            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $type_name,)*
                }
            }

            pub fn topic(&self) -> Topic {
                match self {
                    $(Self::$variant(_) => Topic::$topic,)*
                }
            }

            /// `None` when the type is unknown to this version.
            pub(crate) fn from_data(type_name: &str, data: &str) -> Option<Result<Self, serde_json::Error>> {
                match type_name {
                    $($type_name => Some(serde_json::from_str(data).map(Self::$variant)),)*
                    _ => None,
                }
            }
        }

        /// The CloudEvents `data` of a payload: the payload itself, written
        /// straight into the envelope's JSON.
        impl Serialize for Payload {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Self::$variant(p) => p.serialize(serializer),)*
                }
            }
        }

        $(impl From<$ty> for Payload {
            fn from(p: $ty) -> Self {
                Self::$variant(p)
            }
        })*
    };
}

payloads! {
    Start(StartInstance) => "legato.instance.start.v1", Commands;
    RaiseEvent(RaiseEvent) => "legato.instance.raise-event.v1", Commands;
    Terminate(TerminateInstance) => "legato.instance.terminate.v1", Commands;
    Suspend(SuspendInstance) => "legato.instance.suspend.v1", Commands;
    Resume(ResumeInstance) => "legato.instance.resume.v1", Commands;
    Restart(RestartInstance) => "legato.instance.restart.v1", Commands;
    Redrive(RedriveInstance) => "legato.instance.redrive.v1", Commands;
    EntityOperation(crate::EntityOperation) => "legato.entity.operation.v1", Commands;
    TaskDispatched(TaskDispatched) => "legato.task.dispatched.v1", AgentTasks;
    TaskCancelled(TaskCancelled) => "legato.task.cancelled.v1", AgentTasks;
    TaskCompleted(TaskCompleted) => "legato.task.completed.v1", AgentResults;
    TaskFailed(TaskFailed) => "legato.task.failed.v1", AgentResults;
    TaskHeartbeat(TaskHeartbeat) => "legato.task.heartbeat.v1", AgentResults;
    TaskAsked(TaskAsked) => "legato.task.asked.v1", AgentResults;
    Progress(ProgressEvent) => "legato.progress.v1", Progress;
    ProgressBatch(ProgressBatch) => "legato.progress.batch.v1", Progress;
    AgentOutput(AgentOutput) => "legato.agent.output.v1", Progress;
}

impl Payload {
    /// The routing key this payload is published with: agent tasks go to the
    /// agent's queue by name; everything else is keyed by instance id so a
    /// broker that partitions (Service Bus sessions) keeps one instance's
    /// messages in order.
    ///
    /// Cancellations are keyed `cancel.<instance>`: every agent replica binds
    /// `cancel.#` on its own queue, because only the replica running the task
    /// can stop it and the orchestrator does not know which one that is.
    pub fn routing_key<'a>(&'a self, instance: &'a str) -> Cow<'a, str> {
        match self {
            Self::TaskDispatched(task) => Cow::Borrowed(task.agent.as_str()),
            Self::TaskCancelled(_) => Cow::Owned(format!("{CANCEL_ROUTING_PREFIX}{instance}")),
            _ => Cow::Borrowed(instance),
        }
    }
}
