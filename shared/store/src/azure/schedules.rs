//! Schedules, as rows of the definitions table (partition `~schedules`,
//! which no definition query reads; row key the scoped name), written with
//! the row's ETag so an edit and a tick never overwrite each other. Due
//! times are a fixed-width property, so a string comparison finds the due
//! ones. A schedule is one entity: its document is kept inline and never
//! claim-checked.

use legato_contracts::ScheduleName;

use super::keys::odata;
use super::payload::{self, Entity, text};
use super::{AzureTableStore, entity, failure, if_match, status, to_json};
use crate::stored::{from_millis, millis};
use crate::{
    Expected, MAX_SCHEDULES_LISTED, ScheduleRecord, StoreError, StoredSchedule, TenantFilter,
    Version,
};

const PARTITION: &str = "~schedules";
/// The due time of a schedule that needs no tick: after every real one.
const NEVER: &str = "~";

fn due_key(ms: i64) -> String {
    format!("{:015}", ms.max(0))
}

/// The tenant as a property: queries cannot ask for a missing one.
fn tenant_property(tenant: Option<&str>) -> String {
    tenant.map_or_else(String::new, |t| format!("t:{t}"))
}

fn conflict(name: &ScheduleName, what: &str) -> StoreError {
    StoreError::Conflict(format!("schedule {name} {what}"))
}

impl AzureTableStore {
    pub(super) async fn put_schedule_row(
        &self,
        record: &ScheduleRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let encoded = payload::encode("B", &to_json(&record.body)?);
        if encoded.blob.is_some() {
            return Err(StoreError::TooLarge(format!(
                "schedule {}: its document is beyond one entity",
                record.name
            )));
        }
        let (mut row, _) = entity(PARTITION, record.name.as_str(), encoded);
        row.insert(
            "Tenant".into(),
            tenant_property(record.tenant.as_deref()).into(),
        );
        row.insert(
            "NextDue".into(),
            record
                .next_due
                .map_or_else(|| NEVER.to_owned(), |at| due_key(millis(at)))
                .into(),
        );
        self.put_document(
            PARTITION,
            record.name.as_str(),
            row,
            expected,
            "exists",
            |what| conflict(&record.name, what),
        )
        .await
    }

    fn schedule_of(&self, row: &Entity, etag: String) -> Result<StoredSchedule, StoreError> {
        let name = ScheduleName::parse(text(row, "RowKey")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let next_due = match text(row, "NextDue")? {
            NEVER => None,
            key => Some(from_millis(key.parse().map_err(|_| {
                StoreError::Corrupt(format!("schedule {name}: due time {key:?}"))
            })?)?),
        };
        let body = match payload::held(row, "B")? {
            payload::Held::Inline(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("schedule {name}: {e}")))?,
            payload::Held::Blob { .. } => {
                return Err(StoreError::Corrupt(format!(
                    "schedule {name}: claim-checked document"
                )));
            }
        };
        Ok(StoredSchedule {
            record: ScheduleRecord {
                tenant: text(row, "Tenant")?.strip_prefix("t:").map(str::to_owned),
                name,
                next_due,
                body,
            },
            version: Version(etag),
        })
    }

    fn schedules_of(&self, rows: Vec<Entity>) -> Result<Vec<StoredSchedule>, StoreError> {
        rows.iter()
            .map(|row| {
                let etag = super::etag_of(row)
                    .ok_or_else(|| StoreError::Corrupt("a schedule row without an ETag".into()))?;
                self.schedule_of(row, etag)
            })
            .collect()
    }

    pub(super) async fn schedule_row(
        &self,
        name: &ScheduleName,
    ) -> Result<Option<StoredSchedule>, StoreError> {
        match self
            .get(&self.definitions, PARTITION, name.as_str())
            .await?
        {
            Some((row, etag)) => Ok(Some(self.schedule_of(&row, etag)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn schedule_rows(
        &self,
        tenant: &TenantFilter,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        let mut filter = format!("PartitionKey eq {}", odata(PARTITION));
        if let TenantFilter::Only(tenant) = tenant {
            filter.push_str(&format!(
                " and Tenant eq {}",
                odata(&tenant_property(tenant.as_deref()))
            ));
        }
        let rows = self
            .query(&self.definitions, filter, MAX_SCHEDULES_LISTED)
            .await?;
        self.schedules_of(rows)
    }

    pub(super) async fn due_schedule_rows(
        &self,
        now: time::OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        // A partition scan (schedules are few); the filter leaves out the
        // ones not yet due and the ones that need no tick.
        let filter = format!(
            "PartitionKey eq {} and NextDue le {}",
            odata(PARTITION),
            odata(&due_key(millis(now)))
        );
        let mut due =
            self.schedules_of(self.query(&self.definitions, filter, usize::MAX).await?)?;
        due.sort_by_key(|s| s.record.next_due);
        due.truncate(limit);
        Ok(due)
    }

    pub(super) async fn delete_schedule_row(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        let result = self
            .definitions
            .partition_key_client(PARTITION)
            .entity_client(name.as_str())
            .delete()
            .if_match(if_match(expected.map(|v| v.0.as_str())))
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) if status(&e) == Some(412) => Err(conflict(name, "changed since it was read")),
            Err(e) => Err(failure(e)),
        }
    }
}
