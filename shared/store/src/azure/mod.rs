//! The Azure Table Storage adapter (Azurite locally).
//!
//! Layout, in three tables named `<prefix>instances`, `<prefix>index` and
//! `<prefix>definitions`:
//! - one partition per instance holds its record (`i`), its timers (`t`),
//!   its history in pages (`h<last seq>`), its outbox in groups
//!   (`o<time><nonce>`) and claim-checked values (`b<id>-<part>`). One
//!   commit is one entity-group transaction, guarded by the record's ETag.
//! - the index table lets global questions be answered without scanning
//!   every partition: `list` entries order instances newest first, `timer`
//!   entries order timers by due time, and `outbox` markers name instances
//!   that may hold unpublished messages. An entry is written *before* the
//!   commit it describes, so a crash never hides committed work; readers
//!   check each entry against its partition, which is the truth, and remove
//!   entries that have pointed at nothing for longer than [`INDEX_GRACE`]
//!   (confirmed by a second read when the truth read as missing, see
//!   [`index_repair`]).
//! - definitions: one partition per workflow name, one row per version.

mod bench;
mod commit;
mod connection;
mod dead_letters;
mod definitions;
mod entities;
mod index_reads;
mod index_repair;
mod journal;
mod keys;
mod outbox;
mod parts;
mod payload;
mod published;
mod purge;
mod record_version;
mod registry;
mod replicas;
mod rows;
mod schedules;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::{Etag, RetryOptions, TransportOptions};
use azure_data_tables::IfMatchCondition;
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::{TableClient, TableServiceClient};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::{StreamExt, TryStreamExt, stream};
use legato_contracts::{InstanceId, ProgressEvent, RuntimeStatus, ScheduleName, WorkflowName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub use self::connection::AzureTableConnection;
use self::connection::location;
use self::keys::odata;
use self::payload::{Encoded, Entity, Held, text};
use crate::registry::{AGENTS, ENTITY_TYPES, entity_type_key};
use crate::stored::{corrupt, from_millis, millis, topic_from};
use crate::token::{self, ListPosition};
use crate::{
    Commit, DeadLetter, DeadLetterPage, DeadLetterQuery, DefinitionRecord, Expected, HistoryFrom,
    HistoryRow, InstancePage, InstanceQuery, InstanceRecord, InstanceSummary, OutboxEntry,
    OutboxRow, ScheduleRecord, StateParts, Store, StoreError, StoredInstance, StoredSchedule,
    TenantFilter, TimerRow, Version,
};
use record_version::RecordVersion;

/// How long an index entry may point at nothing before a reader removes
/// it. It must exceed the longest time between writing an entry and its
/// commit landing, which the request timeout bounds (10 s by default).
pub const INDEX_GRACE: Duration = Duration::from_secs(60);
/// How long an index entry's truth must keep reading as missing before
/// the entry is removed: longer than a store takes to start or fail over,
/// during which it may answer "not found" for rows it has.
pub const ABSENCE_CONFIRMATION: Duration = Duration::from_secs(15 * 60);
/// The longest one request may take unless `store.request_timeout_ms`
/// says otherwise (see [`AzureTableStore::connect_with_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A process skips re-writing an outbox marker it wrote this recently: the
/// marker stays young, so no reader can remove it before the commit lands.
const MARKER_REFRESH: Duration = Duration::from_secs(15);
const MARKER_CACHE_LIMIT: usize = 100_000;
/// Index entries one listing call examines before it returns a partial page
/// with a continuation token.
const LIST_SCAN_LIMIT: usize = 1_000;
const MARKER_SCAN_LIMIT: usize = 5_000;
const PARALLEL_READS: usize = 16;
/// Tries of a purge whose rows keep changing under it.
const PURGE_ROUNDS: usize = 5;
const MAX_BATCH: usize = 100;
/// The instance row's property saying whether the record keeps parts.
const PARTS_FLAG: &str = "Parts";

/// Requests this process has sent to Table Storage so far.
pub fn table_requests() -> u64 {
    TABLE_REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

static TABLE_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct AzureTableStore {
    instances: TableClient,
    index: TableClient,
    definitions: TableClient,
    entities: TableClient,
    /// Outbox markers this process wrote, and when.
    markers: Mutex<HashMap<String, Instant>>,
    /// Outbox groups this process committed and has not yet deleted, so
    /// that the relay's delete right after a commit needs no lookup.
    recent_groups: Mutex<HashMap<String, RecentGroup>>,
    /// Groups published and waiting to be deleted by their instance's next
    /// commit (see [`published`]).
    published: published::Published,
    /// The claim-checked parts this process last read or wrote, per
    /// instance: (part name, blob reference), so the blob of a part
    /// replaced or removed is deleted after the commit lands.
    part_blobs: Mutex<HashMap<String, HashMap<String, String>>>,
    index_grace: Duration,
    absence_confirmation: Duration,
    /// Whether every schedule is known to have its due-time index row.
    schedules_indexed: std::sync::atomic::AtomicBool,
}

/// An outbox group as its commit wrote it.
struct RecentGroup {
    row: String,
    etag: String,
    ids: HashSet<String>,
    blob: Option<String>,
}

impl AzureTableStore {
    /// Connects and creates the tables if they do not exist. `table_prefix`
    /// must be alphanumeric, starting with a letter.
    pub async fn connect(
        connection: &AzureTableConnection,
        table_prefix: &str,
    ) -> Result<Self, StoreError> {
        Self::connect_with_timeout(connection, table_prefix, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// As [`AzureTableStore::connect`], each request failing after
    /// `request_timeout` (a connection that hangs is then dropped, and the
    /// next request opens another).
    pub async fn connect_with_timeout(
        connection: &AzureTableConnection,
        table_prefix: &str,
        request_timeout: Duration,
    ) -> Result<Self, StoreError> {
        if !table_prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            || !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || table_prefix.len() > 40
        {
            return Err(StoreError::Unavailable(format!(
                "table prefix {table_prefix:?} must be 1-40 letters and digits, starting with a letter"
            )));
        }
        let (location, credentials) = location(connection)?;
        let transport = legato_azure::Transport::new(Some(request_timeout), Some(&TABLE_REQUESTS))
            .map_err(|e| StoreError::Unavailable(format!("HTTP client: {e}")))?;
        // Commits are retried by the caller, who reloads first: a blind
        // retry of a batch that did land would report a false conflict.
        let service: TableServiceClient =
            TableServiceClientBuilder::with_location(location, credentials)
                .transport(TransportOptions::new(Arc::new(transport)))
                .retry(RetryOptions::none())
                .build();
        let instances = service.table_client(format!("{table_prefix}instances"));
        let store = Self {
            published: published::Published::start(instances.clone()),
            instances,
            index: service.table_client(format!("{table_prefix}index")),
            definitions: service.table_client(format!("{table_prefix}definitions")),
            entities: service.table_client(format!("{table_prefix}entities")),
            markers: Mutex::new(HashMap::new()),
            recent_groups: Mutex::new(HashMap::new()),
            part_blobs: Mutex::new(HashMap::new()),
            index_grace: INDEX_GRACE,
            absence_confirmation: ABSENCE_CONFIRMATION,
            schedules_indexed: std::sync::atomic::AtomicBool::new(false),
        };
        for table in [
            &store.instances,
            &store.index,
            &store.definitions,
            &store.entities,
        ] {
            match table.create().await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(409) => {}
                Err(e) => return Err(failure(e)),
            }
        }
        Ok(store)
    }

    /// Shortens [`INDEX_GRACE`], for tests of the repair path. It must stay
    /// longer than a request can take.
    pub fn with_index_grace(mut self, grace: Duration) -> Self {
        self.index_grace = grace;
        self.absence_confirmation = grace;
        self
    }

    /// Replaces [`ABSENCE_CONFIRMATION`], for tests of the repair path.
    pub fn with_absence_confirmation(mut self, confirmation: Duration) -> Self {
        self.absence_confirmation = confirmation;
        self
    }

    /// Whether an index entry written at its `WrittenMs` has had time to be
    /// matched by its commit.
    fn past_grace(&self, entry: &Entity) -> bool {
        let written: i64 = entry
            .get("WrittenMs")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        now_ms().saturating_sub(written)
            > i64::try_from(self.index_grace.as_millis()).unwrap_or(i64::MAX)
    }

    /// The record's summary, if the instance exists.
    async fn summary_of(&self, instance: &str) -> Result<Option<InstanceSummary>, StoreError> {
        let row = self
            .get(&self.instances, instance, keys::INSTANCE_ROW)
            .await?;
        row.map(|(entity, _)| summary_from(&entity)).transpose()
    }
}

/// The record's indexed facts, as the instance row keeps them.
#[derive(Serialize, Deserialize)]
struct SummaryDoc {
    id: String,
    workflow: String,
    workflow_version: u32,
    status: String,
    tenant: Option<String>,
    created_ms: i64,
    updated_ms: i64,
}

#[derive(Serialize, Deserialize, Clone)]
struct TimerDoc {
    due_ms: i64,
    payload: Value,
}

#[derive(Serialize, Deserialize)]
struct EventDoc {
    seq: u64,
    at_ms: i64,
    event: crate::JsonText,
    #[serde(default)]
    position: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    progress: Vec<ProgressEvent>,
}

#[derive(Serialize, Deserialize, Clone)]
struct MessageDoc {
    id: String,
    topic: String,
    routing_key: String,
    body: String,
}

impl MessageDoc {
    fn from_row(row: &OutboxRow) -> Self {
        Self {
            id: row.id.clone(),
            topic: row.topic.as_str().to_owned(),
            routing_key: row.routing_key.clone(),
            body: STANDARD.encode(&row.body),
        }
    }

    fn into_row(self) -> Result<OutboxRow, StoreError> {
        Ok(OutboxRow {
            topic: topic_from(&self.topic)?,
            body: STANDARD
                .decode(&self.body)
                .map_err(|e| corrupt("outbox body", e))?,
            id: self.id,
            routing_key: self.routing_key,
        })
    }
}

fn summary_from(entity: &Entity) -> Result<InstanceSummary, StoreError> {
    let doc: SummaryDoc =
        serde_json::from_str(text(entity, "Summary")?).map_err(|e| corrupt("summary", e))?;
    Ok(InstanceSummary {
        id: InstanceId::parse(doc.id).map_err(|e| corrupt("instance id", e))?,
        workflow: WorkflowName::parse(doc.workflow).map_err(|e| corrupt("workflow", e))?,
        workflow_version: doc.workflow_version,
        status: RuntimeStatus::parse(&doc.status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {}", doc.status)))?,
        tenant: doc.tenant,
        created_at: from_millis(doc.created_ms)?,
        updated_at: from_millis(doc.updated_ms)?,
    })
}

fn summary_doc(summary: &InstanceSummary) -> SummaryDoc {
    SummaryDoc {
        id: summary.id.to_string(),
        workflow: summary.workflow.to_string(),
        workflow_version: summary.workflow_version,
        status: summary.status.as_str().to_owned(),
        tenant: summary.tenant.clone(),
        created_ms: millis(summary.created_at),
        updated_ms: millis(summary.updated_at),
    }
}

/// An entity with its keys and a value's properties.
fn entity(partition: &str, row: &str, encoded: Encoded) -> (Entity, Option<payload::Blob>) {
    let mut entity = encoded.props;
    entity.insert("PartitionKey".into(), partition.into());
    entity.insert("RowKey".into(), row.into());
    (entity, encoded.blob)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| corrupt("value", e))
}

fn now_ms() -> i64 {
    millis(OffsetDateTime::now_utc())
}

/// Only while the entity is at `etag`; any version when `None`.
fn if_match(etag: Option<&str>) -> IfMatchCondition {
    etag.map_or(IfMatchCondition::Any, |e| {
        IfMatchCondition::Etag(Etag::from(e.to_owned()))
    })
}

fn etag_of(entity: &Entity) -> Option<String> {
    entity
        .get("odata.etag")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn status(e: &azure_core::Error) -> Option<u16> {
    e.as_http_error().map(|h| h.status() as u16)
}

fn failure(e: azure_core::Error) -> StoreError {
    let code = e
        .as_http_error()
        .and_then(|h| h.error_code())
        .unwrap_or_default()
        .to_owned();
    match status(&e) {
        Some(409 | 412) => StoreError::Conflict(e.to_string()),
        Some(413) => StoreError::TooLarge(e.to_string()),
        Some(400) if code.contains("TooLarge") => StoreError::TooLarge(e.to_string()),
        Some(404) => StoreError::NotFound(e.to_string()),
        _ => StoreError::Unavailable(with_causes(&e)),
    }
}

/// The error and what caused it ("failed to get bearer token" alone does
/// not say that the identity endpoint refused the client id).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = inner.source();
    }
    text
}

#[async_trait]
impl Store for AzureTableStore {
    async fn load(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        // A claim-checked state is removed right after the commit that
        // supersedes it, so a reader holding the older record may find its
        // parts gone: the record it should read is the newer one.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.load_once(id).await {
                Err(StoreError::NotFound(_)) if attempts < 5 => continue,
                other => return other,
            }
        }
    }

    async fn commit(&self, commit: Commit) -> Result<Version, StoreError> {
        self.commit_batch(commit).await.map(crate::committed)
    }

    async fn history(
        &self,
        id: &InstanceId,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let mut filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            odata(id.as_str()),
            odata(&keys::history_from(from.seq.saturating_add(1))),
            odata(keys::HISTORY_END)
        );
        if from.position > 0 {
            filter.push_str(&format!(
                " and Position gt {}",
                odata(&keys::position(from.position))
            ));
        }
        let mut pages = self
            .instances
            .query()
            .filter(filter)
            .into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            for row in page.entities {
                let events: Vec<EventDoc> =
                    self.value(&self.instances, id.as_str(), &row, "H").await?;
                for e in events
                    .into_iter()
                    .filter(|e| from.admits(e.seq, e.position))
                {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    out.push(HistoryRow {
                        seq: e.seq,
                        at: from_millis(e.at_ms)?,
                        event: e.event,
                        position: e.position,
                        progress: e.progress,
                    });
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.list_page(query).await
    }

    async fn purge(&self, id: &InstanceId) -> Result<bool, StoreError> {
        self.purge_rows(id).await
    }

    async fn descendants(
        &self,
        parent: &InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        self.descendant_ids(parent, limit).await
    }

    async fn due_timers(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError> {
        self.due_timer_rows(now, limit).await
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.pending_outbox_rows(limit).await
    }

    async fn delete_outbox(&self, instance: &InstanceId, ids: &[String]) -> Result<(), StoreError> {
        self.delete_outbox_rows(instance, ids).await
    }

    async fn put_definition(&self, definition: &DefinitionRecord) -> Result<(), StoreError> {
        self.put_definition_row(definition).await
    }

    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        self.get_definition_row(name, version).await
    }

    async fn park_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.park_letter(letter).await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        self.letters(query).await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        self.letter_by_id(id).await
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_letter(id).await
    }

    async fn load_entity(
        &self,
        key: &crate::EntityKey,
    ) -> Result<Option<crate::StoredEntity>, StoreError> {
        self.entity_row(key).await
    }

    async fn commit_entity(&self, commit: crate::EntityCommit) -> Result<Version, StoreError> {
        self.commit_entity_rows(commit).await
    }

    async fn entity_answer(
        &self,
        key: &crate::EntityKey,
        id: &str,
    ) -> Result<Option<(u64, crate::EntityAnswer)>, StoreError> {
        self.entity_answer_row(key, id).await
    }

    async fn entity_operations(
        &self,
        key: &crate::EntityKey,
        limit: usize,
    ) -> Result<Vec<crate::EntityOperationRow>, StoreError> {
        self.entity_operation_rows(key, limit).await
    }

    async fn list_entities(
        &self,
        query: &crate::EntityQuery,
    ) -> Result<crate::EntityPage, StoreError> {
        self.entity_rows(query).await
    }

    async fn delete_entity(&self, key: &crate::EntityKey) -> Result<bool, StoreError> {
        self.delete_entity_rows(key).await
    }

    async fn put_agent(
        &self,
        record: &crate::AgentRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.put_registered(AGENTS, &record.into(), expected).await
    }

    async fn get_agent(
        &self,
        name: &legato_contracts::AgentName,
    ) -> Result<Option<crate::StoredAgent>, StoreError> {
        self.registered(AGENTS, name.as_str())
            .await?
            .map(TryInto::try_into)
            .transpose()
    }

    async fn list_agents(&self) -> Result<Vec<crate::StoredAgent>, StoreError> {
        self.all_registered(AGENTS)
            .await?
            .into_iter()
            .map(TryInto::try_into)
            .collect()
    }

    async fn delete_agent(&self, name: &legato_contracts::AgentName) -> Result<bool, StoreError> {
        self.delete_registered(AGENTS, name.as_str()).await
    }

    async fn put_entity_type(
        &self,
        record: &crate::EntityTypeRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.put_registered(ENTITY_TYPES, &record.into(), expected)
            .await
    }

    async fn get_entity_type(
        &self,
        tenant: Option<&legato_contracts::TenantId>,
        name: &legato_contracts::EntityType,
    ) -> Result<Option<crate::StoredEntityType>, StoreError> {
        self.registered(ENTITY_TYPES, &entity_type_key(tenant, name))
            .await?
            .map(TryInto::try_into)
            .transpose()
    }

    async fn list_entity_types(&self) -> Result<Vec<crate::StoredEntityType>, StoreError> {
        self.all_registered(ENTITY_TYPES)
            .await?
            .into_iter()
            .map(TryInto::try_into)
            .collect()
    }

    async fn delete_entity_type(
        &self,
        tenant: Option<&legato_contracts::TenantId>,
        name: &legato_contracts::EntityType,
    ) -> Result<bool, StoreError> {
        self.delete_registered(ENTITY_TYPES, &entity_type_key(tenant, name))
            .await
    }

    async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.put_schedule_row(record, expected).await
    }

    async fn get_schedule(
        &self,
        name: &ScheduleName,
    ) -> Result<Option<StoredSchedule>, StoreError> {
        self.schedule_row(name).await
    }

    async fn list_schedules(
        &self,
        tenant: &TenantFilter,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        self.schedule_rows(tenant).await
    }

    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        self.due_schedule_rows(now, limit).await
    }

    async fn delete_schedule(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        self.delete_schedule_row(name, expected).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.lease(name, holder, ttl).await
    }

    async fn put_report(
        &self,
        subject: &str,
        replica: &str,
        body: &Value,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_report_row(subject, replica, body, ttl).await
    }

    async fn reports(&self) -> Result<Vec<crate::ReplicaReport>, StoreError> {
        self.report_rows().await
    }

    async fn record_journal(
        &self,
        instance: &InstanceId,
        task: &legato_contracts::journal::JournalKey,
        entry: &crate::JournalEntry,
    ) -> Result<crate::Journaled, StoreError> {
        self.record_journal_row(instance, task, entry).await
    }

    async fn journal(
        &self,
        instance: &InstanceId,
        task: &legato_contracts::journal::JournalKey,
    ) -> Result<Vec<crate::JournalEntry>, StoreError> {
        self.journal_rows(instance, task).await
    }

    async fn clear_journal(&self, instance: &InstanceId) -> Result<u64, StoreError> {
        self.clear_journal_rows(instance).await
    }

    async fn definition_versions(&self, name: &WorkflowName) -> Result<Vec<u32>, StoreError> {
        self.definition_version_list(name).await
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.latest_definitions().await
    }
}

impl AzureTableStore {
    async fn load_once(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let Some((row, etag)) = self
            .get(&self.instances, id.as_str(), keys::INSTANCE_ROW)
            .await?
        else {
            return Ok(None);
        };
        // A row that says it keeps no parts is the whole record (one point
        // read); one with parts, or written before rows said so, is read
        // again with its parts in one query, so they match each other.
        let (row, etag, parts) = if row.get(PARTS_FLAG).and_then(Value::as_bool) == Some(false) {
            self.remember_part_blobs(id.as_str(), HashMap::clear);
            (row, etag, StateParts::new())
        } else {
            match self.instance_rows(id.as_str()).await? {
                Some(found) => found,
                None => return Ok(None),
            }
        };
        let held = payload::held(&row, "S")?;
        let state_ref = held.reference();
        let state_bytes = self.resolve(&self.instances, id.as_str(), held).await?;
        let state = crate::JsonText::parse_bytes(state_bytes)?;
        let version = RecordVersion {
            etag,
            state_ref,
            parts: !parts.is_empty(),
        };
        Ok(Some(StoredInstance {
            record: InstanceRecord {
                summary: summary_from(&row)?,
                state,
                parts,
            },
            version: version.encode(),
        }))
    }
}

#[cfg(test)]
mod blind_store_tests;
#[cfg(test)]
mod hung_store_tests;
#[cfg(test)]
mod tests;
