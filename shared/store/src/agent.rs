//! Registered agents as the store keeps them: one document per agent name,
//! written at the version read so two registrations never overwrite each
//! other unseen. What the document says (kind, lease, endpoint) is the
//! gateway's business; the store keeps it whole.

use legato_contracts::AgentName;
use serde_json::Value;
use time::OffsetDateTime;

use crate::Version;

/// Most agents one listing returns.
pub const MAX_AGENTS_LISTED: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub name: AgentName,
    /// The tenant whose instances may use it and whose workers may serve
    /// it; `None` for an agent every tenant shares.
    pub tenant: Option<String>,
    /// The registration (kind, lease, endpoint, …).
    pub body: Value,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredAgent {
    pub record: AgentRecord,
    pub version: Version,
}
