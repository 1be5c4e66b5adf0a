//! Registered agents and entity types as the store keeps them: one
//! document per name (see `registry`). What the document says (an agent's
//! kind, lease and endpoint; a type's schema and custom operations) is the
//! registrar's business; the store keeps it whole.

use legato_contracts::{AgentName, EntityType, TenantId};
use serde_json::Value;
use time::OffsetDateTime;

use crate::Version;

/// Most agents one listing returns.
pub const MAX_AGENTS_LISTED: usize = crate::registry::MAX_REGISTERED_LISTED;

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

/// An entity type, within its tenant (`None`: shared by every tenant; a
/// tenant's own type of the same name shadows it).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityTypeRecord {
    pub name: EntityType,
    pub tenant: Option<TenantId>,
    /// The type's document (state schema, custom operations).
    pub body: Value,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntityType {
    pub record: EntityTypeRecord,
    pub version: Version,
}
