//! Leases for work one replica at a time must do, as rows of the
//! definitions table (partition `~leases`, row `lease-<name>`, which no
//! definition query reads), taken with the row's ETag so two replicas
//! racing for a free or expired lease never both win.

use std::time::Duration;

use azure_core::StatusCode;
use serde_json::Value;

use super::payload::{Entity, text};
use super::{AzureTableStore, failure, if_match, now_ms, status};
use crate::StoreError;

const PARTITION: &str = "~leases";

impl AzureTableStore {
    pub(super) async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let row = format!("lease-{name}");
        let now = now_ms();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut entity = Entity::new();
        entity.insert("PartitionKey".into(), PARTITION.into());
        entity.insert("RowKey".into(), row.clone().into());
        entity.insert("Holder".into(), holder.into());
        entity.insert("ExpiresMs".into(), expires.to_string().into());
        let current = self.get(&self.definitions, PARTITION, &row).await?;
        let Some((existing, etag)) = current else {
            let inserted = self
                .definitions
                .insert::<_, Value>(entity)
                .map_err(failure)?
                .await;
            return match inserted {
                Ok(_) => Ok(true),
                Err(e) if status(&e) == Some(u16::from(StatusCode::Conflict)) => Ok(false),
                Err(e) => Err(failure(e)),
            };
        };
        let theirs = text(&existing, "Holder").ok() != Some(holder);
        let running = text(&existing, "ExpiresMs")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|at| at > now);
        if theirs && running {
            return Ok(false);
        }
        let replaced = self
            .definitions
            .partition_key_client(PARTITION)
            .entity_client(&row)
            .update(entity, if_match(Some(&etag)))
            .map_err(failure)?
            .await;
        match replaced {
            Ok(_) => Ok(true),
            // Someone else renewed or took it between the read and now.
            Err(e) if status(&e) == Some(u16::from(StatusCode::PreconditionFailed)) => Ok(false),
            Err(e) => Err(failure(e)),
        }
    }
}
