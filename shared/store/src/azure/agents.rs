//! Registered agents, as rows of the definitions table (partition
//! `~agents`, which no definition query reads; row key the agent's name),
//! written with the row's ETag so two registrations never overwrite each
//! other unseen. A registration is one entity: its document is kept inline
//! and never claim-checked.

use legato_contracts::AgentName;

use super::keys::odata;
use super::payload::{self, Entity, text};
use super::{AzureTableStore, entity, failure, if_match, status, to_json};
use crate::stored::{from_millis, millis};
use crate::{AgentRecord, Expected, MAX_AGENTS_LISTED, StoreError, StoredAgent, Version};

const PARTITION: &str = "~agents";

fn conflict(name: &AgentName, what: &str) -> StoreError {
    StoreError::Conflict(format!("agent {name} {what}"))
}

impl AzureTableStore {
    pub(super) async fn put_agent_row(
        &self,
        record: &AgentRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let encoded = payload::encode("B", &to_json(&record.body)?);
        if encoded.blob.is_some() {
            return Err(StoreError::TooLarge(format!(
                "agent {}: its registration is beyond one entity",
                record.name
            )));
        }
        let (mut row, _) = entity(PARTITION, record.name.as_str(), encoded);
        row.insert(
            "Tenant".into(),
            record.tenant.clone().unwrap_or_default().into(),
        );
        row.insert(
            "UpdatedMs".into(),
            millis(record.updated_at).to_string().into(),
        );
        self.put_document(
            PARTITION,
            record.name.as_str(),
            row,
            expected,
            "is registered already",
            |what| conflict(&record.name, what),
        )
        .await
    }

    fn agent_of(row: &Entity, etag: String) -> Result<StoredAgent, StoreError> {
        let name = AgentName::parse(text(row, "RowKey")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let body = match payload::held(row, "B")? {
            payload::Held::Inline(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("agent {name}: {e}")))?,
            payload::Held::Blob { .. } => {
                return Err(StoreError::Corrupt(format!(
                    "agent {name}: claim-checked registration"
                )));
            }
        };
        let updated = text(row, "UpdatedMs")?;
        let updated_at =
            from_millis(updated.parse().map_err(|_| {
                StoreError::Corrupt(format!("agent {name}: update time {updated:?}"))
            })?)?;
        let tenant = text(row, "Tenant")?;
        Ok(StoredAgent {
            record: AgentRecord {
                tenant: (!tenant.is_empty()).then(|| tenant.to_owned()),
                name,
                body,
                updated_at,
            },
            version: Version(etag),
        })
    }

    pub(super) async fn agent_row(
        &self,
        name: &AgentName,
    ) -> Result<Option<StoredAgent>, StoreError> {
        match self
            .get(&self.definitions, PARTITION, name.as_str())
            .await?
        {
            Some((row, etag)) => Ok(Some(Self::agent_of(&row, etag)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn agent_rows(&self) -> Result<Vec<StoredAgent>, StoreError> {
        let filter = format!("PartitionKey eq {}", odata(PARTITION));
        let rows = self
            .query(&self.definitions, filter, MAX_AGENTS_LISTED)
            .await?;
        rows.iter()
            .map(|row| {
                let etag = super::etag_of(row)
                    .ok_or_else(|| StoreError::Corrupt("an agent row without an ETag".into()))?;
                Self::agent_of(row, etag)
            })
            .collect()
    }

    pub(super) async fn delete_agent_row(&self, name: &AgentName) -> Result<bool, StoreError> {
        let result = self
            .definitions
            .partition_key_client(PARTITION)
            .entity_client(name.as_str())
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
