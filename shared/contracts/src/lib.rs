//! The vocabulary every legato service shares: validated identifiers, the
//! runtime status of an instance, and the typed payloads that travel on the
//! bus inside a CloudEvents 1.0 envelope.
//!
//! Everything here is parsed once at the edge ("parse, don't validate"):
//! inner code holds an [`InstanceId`] or a [`StepId`], never a raw string that
//! might be invalid.

mod entity;
mod envelope;
mod ids;
pub mod journal;
mod payload;
mod status;
mod task;
mod usage;

pub use entity::{
    Caller, CustomOperation, CustomOutcome, EntityLink, EntityOperation, EntityRef, Holder,
    MAX_OPERATION_BYTES, MAX_OPERATION_ID, OPERATION_FIELDS, Operation, OperationError,
    check_custom_name,
};
pub use envelope::{DecodeError, Envelope, SPEC_VERSION, TraceParent};
pub use ids::{
    AgentName, CHILD_SEPARATOR, EntityId, EntityType, EventName, IdError, InstanceId, ScheduleName,
    StepId, TENANT_SEPARATOR, TenantId, WorkflowName,
};
pub use payload::{
    AgentOutput, CANCEL_ROUTING_PREFIX, HeartbeatKind, ParentLink, Payload, ProgressBatch,
    ProgressEvent, ProgressKind, RaiseEvent, RedriveInstance, RestartInstance, ResumeInstance,
    StartInstance, SuspendInstance, TaskAsked, TaskCancelled, TaskCompleted, TaskDispatched,
    TaskError, TaskFailed, TaskHeartbeat, TerminateInstance, Topic,
};
pub use status::RuntimeStatus;
pub use task::{TaskKey, TaskRole};
pub use usage::{Budget, Usage};
