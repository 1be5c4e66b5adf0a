//! Durable entities: a row each in `entities`, versioned by a counter; the
//! latest operations in `entity_operations`; every operation's id and
//! answer in `entity_claims`. A tenantless entity's tenant is `''`, so the
//! keys stay unique.

use super::*;
use crate::entity::{answer_json, answer_of};
use crate::{
    ENTITY_OPERATIONS_KEPT, EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityPage,
    EntityQuery, EntityRecord, EntitySummary, StoredEntity,
};
use legato_contracts::{EntityId, EntityType, TenantId};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS entities (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    lock TEXT,
    operations INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, type, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entity_operations (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    operation_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    operation TEXT NOT NULL,
    answer TEXT NOT NULL,
    sender TEXT,
    PRIMARY KEY (tenant, type, id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entity_claims (
    tenant TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (tenant, type, id, operation_id)
) WITHOUT ROWID;
"#;

/// The three key columns of an entity.
fn key_columns(key: &EntityKey) -> (String, String, String) {
    (
        key.tenant
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        key.entity.entity_type.to_string(),
        key.entity.id.to_string(),
    )
}

fn key_of(tenant: String, entity_type: String, id: String) -> Result<EntityKey, StoreError> {
    let tenant = (!tenant.is_empty())
        .then(|| TenantId::parse(tenant))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let entity_type =
        EntityType::parse(entity_type).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let id = EntityId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(EntityKey::new(tenant, entity_type, id))
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn seq_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStore {
    pub(super) async fn entity_row(
        &self,
        key: &EntityKey,
    ) -> Result<Option<StoredEntity>, StoreError> {
        let key = key.clone();
        self.with(move |conn| {
            let (tenant, entity_type, id) = key_columns(&key);
            let row = conn
                .query_row(
                    "SELECT state, operations, updated_at, version, lock FROM entities \
                     WHERE tenant = ?1 AND type = ?2 AND id = ?3",
                    params![tenant, entity_type, id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(unavailable)?;
            let Some((state, operations, updated_at, version, lock)) = row else {
                return Ok(None);
            };
            Ok(Some(StoredEntity {
                record: EntityRecord {
                    key,
                    state: parse_json(&state)?,
                    lock: lock
                        .as_deref()
                        .map(parse_json)
                        .transpose()?
                        .unwrap_or_default(),
                    operations: u64::try_from(operations).unwrap_or_default(),
                    updated_at: from_millis(updated_at)?,
                },
                version: Version(version.to_string()),
            }))
        })
        .await
    }

    pub(super) async fn commit_entity_rows(
        &self,
        commit: EntityCommit,
    ) -> Result<Version, StoreError> {
        let expected = match &commit.expected {
            Expected::New => None,
            Expected::Version(v) => Some(schedules::version_number(v)?),
        };
        let state = json_text(&commit.record.state)?;
        let lock = (!commit.record.lock.is_null())
            .then(|| json_text(&commit.record.lock))
            .transpose()?;
        let EntityCommit {
            record, operations, ..
        } = commit;
        let rows = operations
            .into_iter()
            .map(|op| {
                let operation = json_text(&op.operation)?;
                let answer = json_text(&answer_json(&op.answer))?;
                Ok((op, operation, answer))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.write(move |conn| {
            let (tenant, entity_type, id) = key_columns(&record.key);
            let tx = conn.transaction().map_err(unavailable)?;
            let operations = seq_of(record.operations);
            let updated_at = millis(record.updated_at);
            let written = match expected {
                None => tx.execute(
                    "INSERT OR IGNORE INTO entities \
                     (tenant, type, id, state, operations, updated_at, version, lock) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
                    params![tenant, entity_type, id, state, operations, updated_at, lock],
                ),
                Some(at) => tx.execute(
                    "UPDATE entities SET state = ?4, operations = ?5, updated_at = ?6, \
                     version = version + 1, lock = ?8 \
                     WHERE tenant = ?1 AND type = ?2 AND id = ?3 AND version = ?7",
                    params![
                        tenant,
                        entity_type,
                        id,
                        state,
                        operations,
                        updated_at,
                        at,
                        lock
                    ],
                ),
            }
            .map_err(unavailable)?;
            if written == 0 {
                return Err(StoreError::Conflict(format!(
                    "entity {} changed since it was read",
                    record.key
                )));
            }
            for (op, operation, answer) in &rows {
                let claimed = tx.execute(
                    "INSERT INTO entity_claims (tenant, type, id, operation_id, seq, answer) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![tenant, entity_type, id, op.id, seq_of(op.seq), answer],
                );
                match claimed {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e) => return Err(StoreError::Claimed(op.id.clone())),
                    Err(e) => return Err(unavailable(e)),
                }
                tx.execute(
                    "INSERT INTO entity_operations \
                     (tenant, type, id, seq, operation_id, at, operation, answer, sender) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        tenant,
                        entity_type,
                        id,
                        seq_of(op.seq),
                        op.id,
                        millis(op.at),
                        operation,
                        answer,
                        op.sender
                    ],
                )
                .map_err(unavailable)?;
            }
            let kept_from = operations.saturating_sub(seq_of(ENTITY_OPERATIONS_KEPT));
            tx.execute(
                "DELETE FROM entity_operations \
                 WHERE tenant = ?1 AND type = ?2 AND id = ?3 AND seq <= ?4",
                params![tenant, entity_type, id, kept_from],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Version(expected.map_or(1, |v| v + 1).to_string()))
        })
        .await
    }

    pub(super) async fn entity_answer_row(
        &self,
        key: &EntityKey,
        operation: &str,
    ) -> Result<Option<(u64, EntityAnswer)>, StoreError> {
        let key = key.clone();
        let operation = operation.to_owned();
        self.with(move |conn| {
            let (tenant, entity_type, id) = key_columns(&key);
            let row = conn
                .query_row(
                    "SELECT seq, answer FROM entity_claims \
                     WHERE tenant = ?1 AND type = ?2 AND id = ?3 AND operation_id = ?4",
                    params![tenant, entity_type, id, operation],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            row.map(|(seq, answer)| {
                Ok((
                    u64::try_from(seq).unwrap_or_default(),
                    answer_of(parse_json(&answer)?)?,
                ))
            })
            .transpose()
        })
        .await
    }

    pub(super) async fn entity_operation_rows(
        &self,
        key: &EntityKey,
        limit: usize,
    ) -> Result<Vec<EntityOperationRow>, StoreError> {
        let key = key.clone();
        self.with(move |conn| {
            let (tenant, entity_type, id) = key_columns(&key);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, operation_id, at, operation, answer, sender \
                     FROM entity_operations WHERE tenant = ?1 AND type = ?2 AND id = ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                )
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![tenant, entity_type, id, limit_of(limit)])
                .map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
                out.push(EntityOperationRow {
                    seq: u64::try_from(row.get::<_, i64>(0).map_err(unavailable)?)
                        .unwrap_or_default(),
                    id: text(1)?,
                    at: from_millis(row.get(2).map_err(unavailable)?)?,
                    operation: parse_json(&text(3)?)?,
                    answer: answer_of(parse_json(&text(4)?)?)?,
                    sender: row.get(5).map_err(unavailable)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn entity_rows(&self, query: &EntityQuery) -> Result<EntityPage, StoreError> {
        let query = query.clone();
        let after = match &query.continuation {
            Some(token) => Some(entity_position(token)?),
            None => None,
        };
        self.with(move |conn| {
            let top = if query.top == 0 { 100 } else { query.top };
            let (all_tenants, tenant) = match &query.tenant {
                TenantFilter::All => (true, String::new()),
                TenantFilter::Only(tenant) => (false, tenant.clone().unwrap_or_default()),
            };
            let entity_type = query.entity_type.as_ref().map(|t| t.to_string());
            let (after_tenant, after_type, after_id) = after.unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT tenant, type, id, operations, updated_at FROM entities \
                     WHERE (?1 OR tenant = ?2) AND (?3 IS NULL OR type = ?3) \
                     AND (tenant, type, id) > (?4, ?5, ?6) \
                     ORDER BY tenant, type, id LIMIT ?7",
                )
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![
                    all_tenants,
                    tenant,
                    entity_type,
                    after_tenant,
                    after_type,
                    after_id,
                    limit_of(top + 1)
                ])
                .map_err(unavailable)?;
            let mut items = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
                items.push(EntitySummary {
                    key: key_of(text(0)?, text(1)?, text(2)?)?,
                    operations: u64::try_from(row.get::<_, i64>(3).map_err(unavailable)?)
                        .unwrap_or_default(),
                    updated_at: from_millis(row.get(4).map_err(unavailable)?)?,
                });
            }
            let continuation = if items.len() > top {
                items.truncate(top);
                items.last().map(|last| {
                    let (tenant, entity_type, id) = key_columns(&last.key);
                    crate::token::encode_value(&(tenant, entity_type, id))
                })
            } else {
                None
            };
            Ok(EntityPage {
                items,
                continuation,
            })
        })
        .await
    }

    pub(super) async fn delete_entity_rows(&self, key: &EntityKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            let (tenant, entity_type, id) = key_columns(&key);
            let tx = conn.transaction().map_err(unavailable)?;
            let removed = tx
                .execute(
                    "DELETE FROM entities WHERE tenant = ?1 AND type = ?2 AND id = ?3",
                    params![tenant, entity_type, id],
                )
                .map_err(unavailable)?;
            for table in ["entity_operations", "entity_claims"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE tenant = ?1 AND type = ?2 AND id = ?3"),
                    params![tenant, entity_type, id],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(removed > 0)
        })
        .await
    }
}

fn entity_position(token: &str) -> Result<(String, String, String), StoreError> {
    crate::token::decode_value(token)
}
