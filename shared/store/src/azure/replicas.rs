//! What replicas of a service coordinate through, as rows of the
//! definitions table in partitions no definition query reads: leases for
//! work one replica at a time must do (partition `~leases`, row
//! `lease-<name>`), taken with the row's ETag so two replicas racing for a
//! free or expired lease never both win; and the figures each replica
//! reports (partition `~reports`, one row per subject and replica, written
//! whole).

use std::time::Duration;

use azure_core::StatusCode;
use serde_json::Value;

use super::keys::{odata, report_row};
use super::payload::{Entity, text};
use super::{AzureTableStore, failure, if_match, now_ms, status};
use crate::stored::{expiry, from_millis};
use crate::{MAX_REPORTS_LISTED, ReplicaReport, StoreError};

const PARTITION: &str = "~leases";
const REPORTS: &str = "~reports";
/// A report's body is one string property: at most 32K UTF-16 units.
const MAX_REPORT_CHARS: usize = 30_000;

impl AzureTableStore {
    pub(super) async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let row = format!("lease-{name}");
        let (now, expires) = expiry(ttl);
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

    pub(super) async fn put_report_row(
        &self,
        subject: &str,
        replica: &str,
        body: &Value,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(body)
            .map_err(|e| StoreError::Corrupt(format!("report on {subject}: {e}")))?;
        if text.len() > MAX_REPORT_CHARS {
            return Err(StoreError::TooLarge(format!(
                "report on {subject}: {} bytes, at most {MAX_REPORT_CHARS}",
                text.len()
            )));
        }
        let (now, expires) = expiry(ttl);
        let row = report_row(subject, replica);
        let mut entity = Entity::new();
        entity.insert("PartitionKey".into(), REPORTS.into());
        entity.insert("RowKey".into(), row.clone().into());
        entity.insert("Subject".into(), subject.into());
        entity.insert("Replica".into(), replica.into());
        entity.insert("Body".into(), text.into());
        entity.insert("UpdatedMs".into(), now.to_string().into());
        entity.insert("ExpiresMs".into(), expires.to_string().into());
        self.upsert(&self.definitions, REPORTS, &row, entity).await
    }

    /// Reports still running; the ones whose time ran out are removed on
    /// the way (quietly: the next read tries again).
    pub(super) async fn report_rows(&self) -> Result<Vec<ReplicaReport>, StoreError> {
        let filter = format!("PartitionKey eq {}", odata(REPORTS));
        let rows = self
            .query(&self.definitions, filter, MAX_REPORTS_LISTED)
            .await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(rows.len());
        let mut expired = Vec::new();
        for row in &rows {
            let number = |name: &str| -> Result<i64, StoreError> {
                let raw = text(row, name)?;
                raw.parse()
                    .map_err(|_| StoreError::Corrupt(format!("report {name} {raw:?}")))
            };
            if number("ExpiresMs")? <= now {
                expired.push((REPORTS.to_owned(), text(row, "RowKey")?.to_owned()));
                continue;
            }
            let body = serde_json::from_str(text(row, "Body")?)
                .map_err(|e| StoreError::Corrupt(format!("report body: {e}")))?;
            out.push(ReplicaReport {
                subject: text(row, "Subject")?.to_owned(),
                replica: text(row, "Replica")?.to_owned(),
                body,
                updated_at: from_millis(number("UpdatedMs")?)?,
            });
        }
        if !expired.is_empty() {
            self.delete_quietly(&self.definitions, expired).await;
        }
        out.sort_by(|a, b| (&a.subject, &a.replica).cmp(&(&b.subject, &b.replica)));
        Ok(out)
    }
}
