//! Schedules, as rows of the definitions table (partition `~schedules`,
//! which no definition query reads; row key the scoped name), written with
//! the row's ETag so an edit and a tick never overwrite each other. A
//! schedule is one entity: its document is kept inline and never
//! claim-checked.
//!
//! Due times are indexed in the same partition, so a poll costs what the
//! due schedules cost, however many there are: an index row
//! `~due~<due time>~<name>~<write>` per schedule that needs a tick (names
//! never start with `~`, so these sort after every schedule). Each write
//! puts its own index row first (the unique `<write>` part means no other
//! writer ever touches it), then the schedule naming that row
//! (`DueIndex`), then removes the row of the version it replaced, which
//! the version carries. A row whose schedule names another is stale (a
//! write that lost its race, a crash between the steps) and is removed by
//! the poll that finds it.

use std::sync::atomic::Ordering;

use legato_contracts::ScheduleName;

use super::index_repair::Findings;
use super::keys::odata;
use super::payload::{self, Entity, text};
use super::{AzureTableStore, PARALLEL_READS, entity, failure, if_match, now_ms, status, to_json};
use crate::stored::{from_millis, millis};
use crate::{
    Expected, MAX_SCHEDULES_LISTED, ScheduleRecord, StoreError, StoredSchedule, TenantFilter,
    Version,
};
use futures::{StreamExt, TryStreamExt, stream};

const PARTITION: &str = "~schedules";
/// The due time of a schedule that needs no tick: after every real one.
const NEVER: &str = "~";
const DUE_PREFIX: &str = "~due~";
/// Marks a partition whose schedules all have index rows, including those
/// written before the index existed.
const INDEXED: &str = "~indexed";

fn due_key(ms: i64) -> String {
    format!("{:015}", ms.max(0))
}

fn index_key(due: &str, name: &str, write: &str) -> String {
    format!("{DUE_PREFIX}{due}~{name}~{write}")
}

/// The tenant as a property: queries cannot ask for a missing one.
fn tenant_property(tenant: Option<&str>) -> String {
    tenant.map_or_else(String::new, |t| format!("t:{t}"))
}

fn conflict(name: &ScheduleName, what: &str) -> StoreError {
    StoreError::Conflict(format!("schedule {name} {what}"))
}

/// A schedule's version: its ETag and the index row it names, which the
/// write replacing it removes.
fn version(etag: &str, index: &str) -> Version {
    Version(format!("{etag}|{index}"))
}

fn etag_and_index(version: &Version) -> (&str, &str) {
    version
        .0
        .split_once('|')
        .unwrap_or((version.0.as_str(), ""))
}

/// The index row a schedule row names; rows written before the index name
/// none and get the one of an empty write.
fn current_index(row: &Entity) -> Result<String, StoreError> {
    if let Some(index) = row.get("DueIndex").and_then(serde_json::Value::as_str) {
        return Ok(index.to_owned());
    }
    Ok(match text(row, "NextDue")? {
        NEVER => String::new(),
        due => index_key(due, text(row, "RowKey")?, ""),
    })
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
        let name = record.name.as_str();
        let index = match record.next_due {
            Some(at) => {
                let write = uuid::Uuid::new_v4().simple().to_string();
                let key = index_key(&due_key(millis(at)), name, &write[..12]);
                self.put_index_row(&key, name).await?;
                key
            }
            None => String::new(),
        };
        let (mut row, _) = entity(PARTITION, name, encoded);
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
        row.insert("DueIndex".into(), index.clone().into());
        let (expected, replaced) = match expected {
            Expected::New => (Expected::New, None),
            Expected::Version(v) => {
                let (etag, replaced) = etag_and_index(v);
                (Expected::Version(Version(etag.to_owned())), Some(replaced))
            }
        };
        let written = self
            .put_document(PARTITION, name, row, &expected, "exists", |what| {
                conflict(&record.name, what)
            })
            .await;
        // Whichever row lost (this write's, or the one it replaced) goes;
        // if this fails, the poll that finds it removes it. A write whose
        // answer was lost may have landed: its row stays.
        let lost = match &written {
            Ok(_) => replaced.filter(|r| !r.is_empty() && *r != index),
            Err(StoreError::Conflict(_)) => Some(index.as_str()).filter(|r| !r.is_empty()),
            Err(_) => None,
        };
        if let Some(lost) = lost {
            self.delete_quietly(
                &self.definitions,
                vec![(PARTITION.to_owned(), lost.to_owned())],
            )
            .await;
        }
        Ok(version(&written?.0, &index))
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
            version: version(&etag, &current_index(row)?),
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
        // Index rows and the marker sort after every name.
        let mut filter = format!(
            "PartitionKey eq {} and RowKey lt {}",
            odata(PARTITION),
            odata(NEVER)
        );
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
        self.index_unindexed_schedules().await?;
        let filter = format!(
            "PartitionKey eq {} and RowKey gt {} and RowKey lt {}",
            odata(PARTITION),
            odata(DUE_PREFIX),
            odata(&format!("{DUE_PREFIX}{}", due_key(millis(now) + 1)))
        );
        // Stale rows are few (one per write that lost, or crashed between
        // its steps): read a little more than asked.
        let entries = self
            .query(&self.definitions, filter, limit.saturating_add(16))
            .await?;
        let reads: Vec<_> = entries
            .iter()
            .map(|entry| self.due_candidate(entry))
            .collect();
        let found: Vec<_> = stream::iter(reads)
            .buffered(PARALLEL_READS)
            .try_collect()
            .await?;
        let mut due = Vec::new();
        let mut findings = Findings::default();
        for (entry, found) in found {
            match found {
                Some((current, schedule)) if current == text(entry, "RowKey")? => {
                    findings.matched(entry);
                    due.push(schedule)
                }
                Some(_) => findings.stale(entry),
                None => findings.absent(entry),
            }
        }
        self.repair_index(&self.definitions, findings).await;
        due.sort_by_key(|s| s.record.next_due);
        due.truncate(limit);
        Ok(due)
    }

    /// Writes the index rows of schedules written before the index (once
    /// per partition, remembered by a marker row, and once per process
    /// after it is seen).
    async fn index_unindexed_schedules(&self) -> Result<(), StoreError> {
        if self.schedules_indexed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self
            .get(&self.definitions, PARTITION, INDEXED)
            .await?
            .is_none()
        {
            let filter = format!(
                "PartitionKey eq {} and RowKey lt {} and NextDue ne {}",
                odata(PARTITION),
                odata(NEVER),
                odata(NEVER)
            );
            let rows = self.query(&self.definitions, filter, usize::MAX).await?;
            // A row that names its index row was written with it.
            let writes: Vec<_> = rows
                .iter()
                .filter(|row| !row.contains_key("DueIndex"))
                .map(|row| self.index_schedule(row))
                .collect();
            stream::iter(writes)
                .buffer_unordered(PARALLEL_READS)
                .try_collect::<Vec<()>>()
                .await?;
            let mut marker = Entity::new();
            marker.insert("PartitionKey".into(), PARTITION.into());
            marker.insert("RowKey".into(), INDEXED.into());
            self.upsert(&self.definitions, PARTITION, INDEXED, marker)
                .await?;
        }
        self.schedules_indexed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// An index row with the schedule it names and the index row that
    /// schedule names, if it exists.
    async fn due_candidate<'e>(
        &self,
        entry: &'e Entity,
    ) -> Result<(&'e Entity, Option<(String, StoredSchedule)>), StoreError> {
        let name = text(entry, "Schedule")?;
        let found = match self.get(&self.definitions, PARTITION, name).await? {
            Some((row, etag)) => Some((current_index(&row)?, self.schedule_of(&row, etag)?)),
            None => None,
        };
        Ok((entry, found))
    }

    /// Writes the index row the schedule `row` names.
    async fn index_schedule(&self, row: &Entity) -> Result<(), StoreError> {
        self.put_index_row(&current_index(row)?, text(row, "RowKey")?)
            .await
    }

    /// Writes the due-time index row `key` naming the schedule `name`.
    async fn put_index_row(&self, key: &str, name: &str) -> Result<(), StoreError> {
        let mut row = Entity::new();
        row.insert("PartitionKey".into(), PARTITION.into());
        row.insert("RowKey".into(), key.into());
        row.insert("Schedule".into(), name.into());
        row.insert("WrittenMs".into(), now_ms().to_string().into());
        self.upsert(&self.definitions, PARTITION, key, row).await
    }

    /// How due schedules were found before they were indexed, for `legato
    /// bench --schedules` to compare: a scan of the schedules' partition
    /// filtered by due time. Answers how many it found.
    pub async fn scan_due_schedules(&self, now: time::OffsetDateTime) -> Result<usize, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey lt {} and NextDue le {}",
            odata(PARTITION),
            odata(NEVER),
            odata(&due_key(millis(now)))
        );
        Ok(self
            .query(&self.definitions, filter, usize::MAX)
            .await?
            .len())
    }

    pub(super) async fn delete_schedule_row(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        let (etag, index) = match expected {
            Some(v) => {
                let (etag, index) = etag_and_index(v);
                (Some(etag.to_owned()), index.to_owned())
            }
            None => match self
                .get(&self.definitions, PARTITION, name.as_str())
                .await?
            {
                Some((row, _)) => (None, current_index(&row)?),
                None => return Ok(false),
            },
        };
        let result = self
            .definitions
            .partition_key_client(PARTITION)
            .entity_client(name.as_str())
            .delete()
            .if_match(if_match(etag.as_deref()))
            .await;
        let deleted = match result {
            Ok(_) => true,
            Err(e) if status(&e) == Some(404) => false,
            Err(e) if status(&e) == Some(412) => {
                return Err(conflict(name, "changed since it was read"));
            }
            Err(e) => return Err(failure(e)),
        };
        if !index.is_empty() {
            self.delete_quietly(&self.definitions, vec![(PARTITION.to_owned(), index)])
                .await;
        }
        Ok(deleted)
    }
}
