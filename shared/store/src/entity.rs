//! Durable entities as the store keeps them: one record per entity (its
//! state and how many operations it has applied), the recent operations
//! beside it, and, for every operation ever applied, its id and answer, so
//! an operation sent again is answered the same and applied once.

use legato_contracts::{EntityId, EntityRef, EntityType, TenantId};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{TenantFilter, Version};

/// How many of an entity's latest operations are kept to be read back
/// (its ids and answers are kept for as long as the entity is).
pub const ENTITY_OPERATIONS_KEPT: u64 = 100;

/// One entity of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityKey {
    pub tenant: Option<TenantId>,
    pub entity: EntityRef,
}

impl EntityKey {
    pub fn new(tenant: Option<TenantId>, entity_type: EntityType, id: EntityId) -> Self {
        Self {
            tenant,
            entity: EntityRef { entity_type, id },
        }
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tenant {
            Some(tenant) => write!(f, "{tenant}~{}", self.entity),
            None => write!(f, "{}", self.entity),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    pub key: EntityKey,
    pub state: Value,
    /// Who holds the entity as a lock and who waits (the engine's
    /// `LockState`); `null` when nobody does.
    pub lock: Value,
    /// Operations applied so far: the last one's `seq`.
    pub operations: u64,
    /// Kept to the millisecond.
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntity {
    pub record: EntityRecord,
    pub version: Version,
}

/// How an applied operation came out: its answer, or why it failed.
pub type EntityAnswer = Result<Value, String>;

/// One applied operation. `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityOperationRow {
    pub seq: u64,
    /// The operation's id (see `legato_contracts::EntityOperation::id`).
    pub id: String,
    pub at: OffsetDateTime,
    /// The operation as it was sent.
    pub operation: Value,
    pub answer: EntityAnswer,
    /// The instance that sent it, when one did.
    pub sender: Option<String>,
}

/// Everything one batch of operations writes to an entity, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityCommit {
    pub record: EntityRecord,
    /// `New` for an entity's first operations.
    pub expected: crate::Expected,
    /// In `seq` order, continuing the record's count before the batch.
    pub operations: Vec<EntityOperationRow>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityQuery {
    pub entity_type: Option<EntityType>,
    pub tenant: TenantFilter,
    /// Page size; 0 means the default of 100.
    pub top: usize,
    pub continuation: Option<String>,
}

/// By type, then id; `continuation` is set when more entities match.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityPage {
    pub items: Vec<EntitySummary>,
    pub continuation: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntitySummary {
    pub key: EntityKey,
    pub operations: u64,
    pub updated_at: OffsetDateTime,
}

/// Encodes an answer as stored: `{"ok": value}` or `{"error": why}`.
pub(crate) fn answer_json(answer: &EntityAnswer) -> Value {
    match answer {
        Ok(value) => serde_json::json!({ "ok": value }),
        Err(why) => serde_json::json!({ "error": why }),
    }
}

pub(crate) fn answer_of(stored: Value) -> Result<EntityAnswer, crate::StoreError> {
    match stored {
        Value::Object(mut members) => {
            if let Some(ok) = members.remove("ok") {
                return Ok(Ok(ok));
            }
            if let Some(Value::String(why)) = members.remove("error") {
                return Ok(Err(why));
            }
            Err(crate::StoreError::Corrupt(
                "an entity answer without ok or error".into(),
            ))
        }
        _ => Err(crate::StoreError::Corrupt(
            "an entity answer that is not an object".into(),
        )),
    }
}
