use legato_contracts::{ProgressEvent, TaskCancelled, TaskDispatched};
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
