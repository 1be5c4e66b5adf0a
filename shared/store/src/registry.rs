//! Registrations the store keeps whole, one document per name: agents and
//! entity types. Each is written at the version read, so two registrations
//! never overwrite each other unseen; what a document says is its
//! registrar's business.

use serde_json::Value;
use time::OffsetDateTime;

use crate::Version;

/// Most registrations of one kind a listing returns.
pub const MAX_REGISTERED_LISTED: usize = 1_000;

/// One kind of registration, and where each adapter keeps it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registry {
    /// SQLite: its table (`name, tenant, body, updated_at, version`).
    pub table: &'static str,
    /// Table Storage: its partition of the definitions table, which no
    /// definition query reads.
    pub partition: &'static str,
    /// How errors name one.
    pub what: &'static str,
}

pub(crate) const AGENTS: Registry = Registry {
    table: "agents",
    partition: "~agents",
    what: "agent",
};

pub(crate) const ENTITY_TYPES: Registry = Registry {
    table: "entity_types",
    partition: "~entity-types",
    what: "entity type",
};

/// A registration as kept: `key` is unique within its kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Registered {
    pub key: String,
    pub tenant: Option<String>,
    pub body: Value,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRegistered {
    pub registered: Registered,
    pub version: Version,
}

impl From<&crate::AgentRecord> for Registered {
    fn from(record: &crate::AgentRecord) -> Self {
        Self {
            key: record.name.to_string(),
            tenant: record.tenant.clone(),
            body: record.body.clone(),
            updated_at: record.updated_at,
        }
    }
}

impl TryFrom<StoredRegistered> for crate::StoredAgent {
    type Error = crate::StoreError;

    fn try_from(stored: StoredRegistered) -> Result<Self, Self::Error> {
        let r = stored.registered;
        Ok(Self {
            record: crate::AgentRecord {
                name: legato_contracts::AgentName::parse(r.key)
                    .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?,
                tenant: r.tenant,
                body: r.body,
                updated_at: r.updated_at,
            },
            version: stored.version,
        })
    }
}

/// An entity type's key: `<tenant>~<type>`, the type alone when shared.
pub(crate) fn entity_type_key(
    tenant: Option<&legato_contracts::TenantId>,
    name: &legato_contracts::EntityType,
) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}~{name}"),
        None => name.to_string(),
    }
}

impl From<&crate::EntityTypeRecord> for Registered {
    fn from(record: &crate::EntityTypeRecord) -> Self {
        Self {
            key: entity_type_key(record.tenant.as_ref(), &record.name),
            tenant: record.tenant.as_ref().map(ToString::to_string),
            body: record.body.clone(),
            updated_at: record.updated_at,
        }
    }
}

impl TryFrom<StoredRegistered> for crate::StoredEntityType {
    type Error = crate::StoreError;

    fn try_from(stored: StoredRegistered) -> Result<Self, Self::Error> {
        let r = stored.registered;
        let corrupt = |e: legato_contracts::IdError| crate::StoreError::Corrupt(e.to_string());
        let local = r
            .key
            .rsplit_once('~')
            .map_or(r.key.as_str(), |(_, local)| local);
        Ok(Self {
            record: crate::EntityTypeRecord {
                name: legato_contracts::EntityType::parse(local).map_err(corrupt)?,
                tenant: r
                    .tenant
                    .map(legato_contracts::TenantId::parse)
                    .transpose()
                    .map_err(corrupt)?,
                body: r.body,
                updated_at: r.updated_at,
            },
            version: stored.version,
        })
    }
}
