//! Registrations (agents, entity types), as rows of the definitions table
//! in their kind's partition (row key the registration's key), written
//! with the row's ETag so two registrations never overwrite each other
//! unseen. A registration is one entity: its document is kept inline and
//! never claim-checked.

use super::keys::odata;
use super::payload::{self, Entity, text};
use super::{AzureTableStore, entity, failure, if_match, status, to_json};
use crate::registry::{MAX_REGISTERED_LISTED, Registered, Registry, StoredRegistered};
use crate::stored::{from_millis, millis};
use crate::{Expected, StoreError, Version};

impl AzureTableStore {
    pub(super) async fn put_registered(
        &self,
        registry: Registry,
        record: &Registered,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let what = registry.what;
        let encoded = payload::encode("B", &to_json(&record.body)?);
        if encoded.blob.is_some() {
            return Err(StoreError::TooLarge(format!(
                "{what} {}: its registration is beyond one entity",
                record.key
            )));
        }
        let (mut row, _) = entity(registry.partition, &record.key, encoded);
        row.insert(
            "Tenant".into(),
            record.tenant.clone().unwrap_or_default().into(),
        );
        row.insert(
            "UpdatedMs".into(),
            millis(record.updated_at).to_string().into(),
        );
        self.put_document(
            registry.partition,
            &record.key,
            row,
            expected,
            "is registered already",
            |why| StoreError::Conflict(format!("{what} {} {why}", record.key)),
        )
        .await
    }

    fn registered_of(
        registry: Registry,
        row: &Entity,
        etag: String,
    ) -> Result<StoredRegistered, StoreError> {
        let what = registry.what;
        let key = text(row, "RowKey")?.to_owned();
        let body = match payload::held(row, "B")? {
            payload::Held::Inline(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{what} {key}: {e}")))?,
            payload::Held::Blob { .. } => {
                return Err(StoreError::Corrupt(format!(
                    "{what} {key}: claim-checked registration"
                )));
            }
        };
        let updated = text(row, "UpdatedMs")?;
        let updated_at =
            from_millis(updated.parse().map_err(|_| {
                StoreError::Corrupt(format!("{what} {key}: update time {updated:?}"))
            })?)?;
        let tenant = text(row, "Tenant")?;
        Ok(StoredRegistered {
            registered: Registered {
                tenant: (!tenant.is_empty()).then(|| tenant.to_owned()),
                key,
                body,
                updated_at,
            },
            version: Version(etag),
        })
    }

    pub(super) async fn registered(
        &self,
        registry: Registry,
        key: &str,
    ) -> Result<Option<StoredRegistered>, StoreError> {
        match self.get(&self.definitions, registry.partition, key).await? {
            Some((row, etag)) => Ok(Some(Self::registered_of(registry, &row, etag)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn all_registered(
        &self,
        registry: Registry,
    ) -> Result<Vec<StoredRegistered>, StoreError> {
        let filter = format!("PartitionKey eq {}", odata(registry.partition));
        let rows = self
            .query(&self.definitions, filter, MAX_REGISTERED_LISTED)
            .await?;
        rows.iter()
            .map(|row| {
                let etag = super::etag_of(row).ok_or_else(|| {
                    StoreError::Corrupt(format!("a {} row without an ETag", registry.what))
                })?;
                Self::registered_of(registry, row, etag)
            })
            .collect()
    }

    pub(super) async fn delete_registered(
        &self,
        registry: Registry,
        key: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .definitions
            .partition_key_client(registry.partition)
            .entity_client(key)
            .delete()
            .if_match(if_match(None))
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(failure(e)),
        }
    }
}
