//! What each replica of a service reports about the work it does (an
//! agent's tasks running and ended, the workers it saw), kept for a short
//! while so any replica can add every replica's figures up. A report is
//! replaced whole by the next one from the same replica and vanishes when
//! that replica stops writing: a stopped replica's figures age out instead
//! of staying forever.

use serde_json::Value;
use time::OffsetDateTime;

/// Most reports one read returns.
pub const MAX_REPORTS_LISTED: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaReport {
    /// What the report is about (an agent's name).
    pub subject: String,
    /// Who wrote it: one replica of one service.
    pub replica: String,
    pub body: Value,
    pub updated_at: OffsetDateTime,
}
