//! Durable entities in the `<prefix>entities` table, one partition per
//! entity (`<tenant>~<type>~<id>`, the tenant empty when there is none:
//! none of the three can hold a `~`, so one tenant's entities of one type
//! are one range of partitions). Its rows:
//! - `e`: the record (state, operation count), whose ETag guards every
//!   commit;
//! - `o<seq>`: the latest [`ENTITY_OPERATIONS_KEPT`] operations, with
//!   their answers;
//! - `c<operation id>` (see [`keys::claim_row`]): every operation applied,
//!   with its `seq` and answer, so one sent again is answered the same.
//!
//! One batch of operations is one entity-group transaction: the record,
//! a claim and a row per operation, and the deletes of the rows that fall
//! out of the kept window (rows that exist: `seq` has no gaps and only
//! this window's edge is ever deleted).

use super::*;
use crate::entity::{answer_json, answer_of};
use crate::{
    ENTITY_OPERATIONS_KEPT, EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityPage,
    EntityQuery, EntityRecord, EntitySummary, StoredEntity,
};
use legato_contracts::{EntityId, EntityType, TenantId};

const RECORD_ROW: &str = "e";

fn partition_of(key: &EntityKey) -> String {
    format!(
        "{}~{}~{}",
        key.tenant
            .as_ref()
            .map(TenantId::as_str)
            .unwrap_or_default(),
        key.entity.entity_type,
        key.entity.id
    )
}

fn key_of(partition: &str) -> Result<EntityKey, StoreError> {
    let mut parts = partition.splitn(3, '~');
    let (Some(tenant), Some(entity_type), Some(id)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(StoreError::Corrupt(format!("entity partition {partition}")));
    };
    let bad = |e: legato_contracts::IdError| StoreError::Corrupt(e.to_string());
    Ok(EntityKey::new(
        (!tenant.is_empty())
            .then(|| TenantId::parse(tenant))
            .transpose()
            .map_err(bad)?,
        EntityType::parse(entity_type).map_err(bad)?,
        EntityId::parse(id).map_err(bad)?,
    ))
}

/// `o` and the zero-padded `seq`, so rows sort by it.
fn operation_row(seq: u64) -> String {
    format!("o{seq:020}")
}

fn number(row: &Entity, name: &str) -> Result<u64, StoreError> {
    text(row, name)?
        .parse()
        .map_err(|e| corrupt(&format!("entity row's {name}"), e))
}

fn json_of(row: &Entity, name: &str) -> Result<Value, StoreError> {
    match payload::held(row, name)? {
        Held::Inline(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(name, e)),
        Held::Blob { .. } => Err(StoreError::Corrupt(format!(
            "a claim-checked entity {name}"
        ))),
    }
}

/// Adds `value` to `row` inline, as property `name`: entity values are
/// bounded well below one row.
fn put_value(row: &mut Entity, name: &str, value: &Value) -> Result<(), StoreError> {
    let encoded = payload::encode(name, &to_json(value)?);
    if encoded.blob.is_some() {
        return Err(StoreError::TooLarge(format!(
            "an entity's {name} is beyond one row"
        )));
    }
    row.extend(encoded.props);
    Ok(())
}

fn row_with(
    partition: &str,
    row_key: &str,
    name: &str,
    value: &Value,
) -> Result<Entity, StoreError> {
    let mut row = Entity::new();
    row.insert("PartitionKey".into(), partition.into());
    row.insert("RowKey".into(), row_key.into());
    put_value(&mut row, name, value)?;
    Ok(row)
}

impl AzureTableStore {
    pub(super) async fn entity_row(
        &self,
        key: &EntityKey,
    ) -> Result<Option<StoredEntity>, StoreError> {
        let partition = partition_of(key);
        let Some((row, etag)) = self.get(&self.entities, &partition, RECORD_ROW).await? else {
            return Ok(None);
        };
        Ok(Some(StoredEntity {
            record: EntityRecord {
                key: key.clone(),
                state: json_of(&row, "S")?,
                lock: json_of(&row, "L")?,
                operations: number(&row, "Operations")?,
                updated_at: from_millis(
                    i64::try_from(number(&row, "UpdatedMs")?).unwrap_or(i64::MAX),
                )?,
            },
            version: Version(etag),
        }))
    }

    pub(super) async fn commit_entity_rows(
        &self,
        commit: EntityCommit,
    ) -> Result<Version, StoreError> {
        let partition = partition_of(&commit.record.key);
        let record = &commit.record;
        let mut row = row_with(&partition, RECORD_ROW, "S", &record.state)?;
        put_value(&mut row, "L", &record.lock)?;
        row.insert("Operations".into(), record.operations.to_string().into());
        row.insert(
            "UpdatedMs".into(),
            millis(record.updated_at).to_string().into(),
        );
        row.insert("Type".into(), record.key.entity.entity_type.as_str().into());
        let mut batch = self.entities.partition_key_client(&partition).transaction();
        let added = match &commit.expected {
            Expected::New => batch.insert(row),
            Expected::Version(v) => batch.update(RECORD_ROW, row, Some(if_match(Some(&v.0)))),
        };
        batch = added.map_err(failure)?;
        for op in &commit.operations {
            let answer = answer_json(&op.answer);
            let mut claim = row_with(&partition, &keys::claim_row(&op.id), "A", &answer)?;
            claim.insert("Seq".into(), op.seq.to_string().into());
            batch = batch.insert(claim).map_err(failure)?;
            let mut kept = row_with(&partition, &operation_row(op.seq), "P", &op.operation)?;
            put_value(&mut kept, "A", &answer)?;
            kept.insert("Id".into(), op.id.as_str().into());
            kept.insert("AtMs".into(), millis(op.at).to_string().into());
            if let Some(sender) = &op.sender {
                kept.insert("Sender".into(), sender.as_str().into());
            }
            batch = batch.insert(kept).map_err(failure)?;
        }
        let before = record
            .operations
            .saturating_sub(commit.operations.len() as u64);
        let falls_out = |n: u64| n.saturating_sub(ENTITY_OPERATIONS_KEPT);
        for seq in falls_out(before) + 1..=falls_out(record.operations) {
            batch = batch.delete(operation_row(seq), None).map_err(failure)?;
        }
        let response = batch.await.map_err(failure)?;
        if let Some(failed) = response
            .operation_responses
            .iter()
            .find(|r| !r.status_code.is_success())
        {
            if matches!(failed.status_code as u16, 409 | 412) {
                for op in &commit.operations {
                    if self
                        .get(&self.entities, &partition, &keys::claim_row(&op.id))
                        .await?
                        .is_some()
                    {
                        return Err(StoreError::Claimed(op.id.clone()));
                    }
                }
                return Err(StoreError::Conflict(format!(
                    "entity {} changed since it was read",
                    record.key
                )));
            }
            return Err(StoreError::Unavailable(format!(
                "commit of entity {}: status {}",
                record.key, failed.status_code
            )));
        }
        match response
            .operation_responses
            .first()
            .and_then(|r| r.etag.as_ref())
        {
            Some(etag) => Ok(Version(etag.to_string())),
            None => self
                .get(&self.entities, &partition, RECORD_ROW)
                .await?
                .map(|(_, etag)| Version(etag))
                .ok_or_else(|| StoreError::Unavailable(format!("entity {} vanished", record.key))),
        }
    }

    pub(super) async fn entity_answer_row(
        &self,
        key: &EntityKey,
        operation: &str,
    ) -> Result<Option<(u64, EntityAnswer)>, StoreError> {
        let partition = partition_of(key);
        let Some((row, _)) = self
            .get(&self.entities, &partition, &keys::claim_row(operation))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((
            number(&row, "Seq")?,
            answer_of(json_of(&row, "A")?)?,
        )))
    }

    pub(super) async fn entity_operation_rows(
        &self,
        key: &EntityKey,
        limit: usize,
    ) -> Result<Vec<EntityOperationRow>, StoreError> {
        let partition = partition_of(key);
        let filter = format!(
            "PartitionKey eq {} and RowKey ge 'o' and RowKey lt 'p'",
            odata(&partition)
        );
        // At most the kept window: read it whole, answer the newest.
        let rows = self
            .query(&self.entities, filter, ENTITY_OPERATIONS_KEPT as usize)
            .await?;
        rows.iter()
            .rev()
            .take(limit)
            .map(|row| {
                let seq = text(row, "RowKey")?
                    .trim_start_matches('o')
                    .parse()
                    .map_err(|e| corrupt("operation row key", e))?;
                Ok(EntityOperationRow {
                    seq,
                    id: text(row, "Id")?.to_owned(),
                    at: from_millis(i64::try_from(number(row, "AtMs")?).unwrap_or(i64::MAX))?,
                    operation: json_of(row, "P")?,
                    answer: answer_of(json_of(row, "A")?)?,
                    sender: row.get("Sender").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .collect()
    }

    pub(super) async fn entity_rows(&self, query: &EntityQuery) -> Result<EntityPage, StoreError> {
        let top = if query.top == 0 { 100 } else { query.top };
        let mut filter = format!("RowKey eq {}", odata(RECORD_ROW));
        match (&query.tenant, &query.entity_type) {
            (TenantFilter::Only(tenant), entity_type) => {
                let prefix = format!(
                    "{}~{}",
                    tenant.as_deref().unwrap_or_default(),
                    entity_type
                        .as_ref()
                        .map(|t| format!("{t}~"))
                        .unwrap_or_default()
                );
                filter.push_str(&format!(
                    " and PartitionKey ge {} and PartitionKey lt {}",
                    odata(&prefix),
                    odata(&format!("{prefix}~"))
                ));
            }
            (TenantFilter::All, Some(entity_type)) => {
                filter.push_str(&format!(" and Type eq {}", odata(entity_type.as_str())));
            }
            (TenantFilter::All, None) => {}
        }
        if let Some(token) = &query.continuation {
            let after: String = crate::token::decode_value(token)?;
            filter.push_str(&format!(" and PartitionKey gt {}", odata(&after)));
        }
        let mut rows = self.query(&self.entities, filter, top + 1).await?;
        let continuation = if rows.len() > top {
            rows.truncate(top);
            rows.last()
                .map(|row| text(row, "PartitionKey").map(crate::token::encode_value))
                .transpose()?
        } else {
            None
        };
        let items = rows
            .iter()
            .map(|row| {
                Ok(EntitySummary {
                    key: key_of(text(row, "PartitionKey")?)?,
                    operations: number(row, "Operations")?,
                    updated_at: from_millis(
                        i64::try_from(number(row, "UpdatedMs")?).unwrap_or(i64::MAX),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(EntityPage {
            items,
            continuation,
        })
    }

    pub(super) async fn delete_entity_rows(&self, key: &EntityKey) -> Result<bool, StoreError> {
        let partition = partition_of(key);
        // Every other row first, then the record at the version read: a
        // batch that lands in between changes the record, and the next
        // round deletes what it wrote. So an entity made again later
        // starts from nothing, its operation rows and ids included.
        let mut existed = false;
        for _ in 0..PURGE_ROUNDS {
            let Some((_, etag)) = self.get(&self.entities, &partition, RECORD_ROW).await? else {
                return Ok(existed);
            };
            existed = true;
            let rows = self
                .query(
                    &self.entities,
                    format!(
                        "PartitionKey eq {} and RowKey ne {}",
                        odata(&partition),
                        odata(RECORD_ROW)
                    ),
                    usize::MAX,
                )
                .await?;
            for chunk in rows.chunks(MAX_BATCH) {
                let mut batch = self.entities.partition_key_client(&partition).transaction();
                for row in chunk {
                    batch = batch.delete(text(row, "RowKey")?, None).map_err(failure)?;
                }
                batch.await.map_err(failure)?;
            }
            match self
                .delete(&self.entities, &partition, RECORD_ROW, Some(&etag))
                .await
            {
                Ok(()) => return Ok(true),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "delete of entity {key}: it kept changing"
        )))
    }
}
