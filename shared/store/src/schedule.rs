//! Schedules as the store keeps them: a document the gateway writes (the
//! spec) and the orchestrator advances (its state), found by name or by
//! when it is next due. Both write with the version they read, so an edit
//! and a tick never overwrite each other.

use legato_contracts::ScheduleName;
use serde_json::Value;
use time::OffsetDateTime;

use crate::Version;

/// Most schedules one listing returns.
pub const MAX_SCHEDULES_LISTED: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// Scoped by the tenant (`acme~nightly`).
    pub name: ScheduleName,
    pub tenant: Option<String>,
    /// When the schedule next needs a tick; `None` while it needs none.
    pub next_due: Option<OffsetDateTime>,
    /// The spec and state, as the schedule's owner and planner keep them.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredSchedule {
    pub record: ScheduleRecord,
    pub version: Version,
}
