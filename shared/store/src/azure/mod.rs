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
//!   entries that have pointed at nothing for longer than [`INDEX_GRACE`].
//! - definitions: one partition per workflow name, one row per version.

mod connection;
mod keys;
mod lease;
mod payload;

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
use legato_contracts::{InstanceId, RuntimeStatus, WorkflowName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub use self::connection::AzureTableConnection;
use self::connection::location;
use self::keys::odata;
use self::payload::{Encoded, Entity, Held, text};
use crate::stored::{corrupt, from_millis, millis, topic_from};
use crate::token::{self, ListPosition};
use crate::{
    Commit, DefinitionRecord, Expected, HistoryRow, InstancePage, InstanceQuery, InstanceRecord,
    InstanceSummary, OutboxEntry, OutboxRow, Store, StoreError, StoredInstance, TenantFilter,
    TimerRow, Version,
};

/// How long an index entry may point at nothing before a reader removes
/// it. It must exceed the longest time between writing an entry and its
/// commit landing, which [`REQUEST_TIMEOUT`] bounds.
pub const INDEX_GRACE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Requests this process has sent to Table Storage so far.
pub fn table_requests() -> u64 {
    TABLE_REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

static TABLE_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct AzureTableStore {
    instances: TableClient,
    index: TableClient,
    definitions: TableClient,
    /// Outbox markers this process wrote, and when.
    markers: Mutex<HashMap<String, Instant>>,
    /// Outbox groups this process committed and has not yet deleted, so
    /// that the relay's delete right after a commit needs no lookup.
    recent_groups: Mutex<HashMap<String, RecentGroup>>,
    index_grace: Duration,
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
        if !table_prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            || !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || table_prefix.len() > 40
        {
            return Err(StoreError::Unavailable(format!(
                "table prefix {table_prefix:?} must be 1-40 letters and digits, starting with a letter"
            )));
        }
        let (location, credentials) = location(connection)?;
        let transport = legato_azure::Transport::new(Some(REQUEST_TIMEOUT), Some(&TABLE_REQUESTS))
            .map_err(|e| StoreError::Unavailable(format!("HTTP client: {e}")))?;
        // Commits are retried by the caller, who reloads first: a blind
        // retry of a batch that did land would report a false conflict.
        let service: TableServiceClient =
            TableServiceClientBuilder::with_location(location, credentials)
                .transport(TransportOptions::new(Arc::new(transport)))
                .retry(RetryOptions::none())
                .build();
        let store = Self {
            instances: service.table_client(format!("{table_prefix}instances")),
            index: service.table_client(format!("{table_prefix}index")),
            definitions: service.table_client(format!("{table_prefix}definitions")),
            markers: Mutex::new(HashMap::new()),
            recent_groups: Mutex::new(HashMap::new()),
            index_grace: INDEX_GRACE,
        };
        for table in [&store.instances, &store.index, &store.definitions] {
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

    async fn get(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
    ) -> Result<Option<(Entity, String)>, StoreError> {
        let response = table
            .partition_key_client(partition)
            .entity_client(row)
            .get::<Entity>()
            .await;
        match response {
            Ok(r) => Ok(Some((r.entity, r.etag.to_string()))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(failure(e)),
        }
    }

    /// Every entity matching `filter`, in key order, at most `limit`.
    async fn query(
        &self,
        table: &TableClient,
        filter: String,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError> {
        // The service returns at most 1,000 entities a page.
        let page = u32::try_from(limit.min(1_000)).unwrap_or(1_000);
        let mut pages = table
            .query()
            .filter(filter)
            .top(page)
            .into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            out.extend(page.entities);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    async fn upsert(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
        entity: Entity,
    ) -> Result<(), StoreError> {
        table
            .partition_key_client(partition)
            .entity_client(row)
            .insert_or_replace(entity)
            .map_err(failure)?
            .await
            .map_err(failure)?;
        Ok(())
    }

    /// Deletes one entity; `etag` makes it conditional. Already gone is fine.
    async fn delete(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        let condition = if_match(etag);
        let result = table
            .partition_key_client(partition)
            .entity_client(row)
            .delete()
            .if_match(condition)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(failure(e)),
        }
    }

    /// Removes index entries that are allowed to fail: a leftover is found
    /// and removed by the next reader after [`INDEX_GRACE`].
    async fn delete_quietly(&self, table: &TableClient, entries: Vec<(String, String)>) {
        let deletes: Vec<_> = entries
            .iter()
            .map(|(partition, row)| self.delete(table, partition, row, None))
            .collect();
        let results: Vec<_> = stream::iter(deletes)
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("index entry left for the repair pass: {e}");
        }
    }

    async fn write_blob(
        &self,
        table: &TableClient,
        partition: &str,
        blob: &payload::Blob,
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = blob
            .rows
            .iter()
            .map(|(row, entity)| self.upsert(table, partition, row, entity.clone()))
            .collect();
        stream::iter(writes)
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn delete_blob(&self, table: &TableClient, partition: &str, reference: &str) {
        if let Ok(Held::Blob { id, parts }) = payload::parse_reference(reference) {
            let rows = (0..parts)
                .map(|part| (partition.to_owned(), keys::blob_row(&id, part)))
                .collect();
            self.delete_quietly(table, rows).await;
        }
    }

    /// The bytes of a stored value, fetching its blob rows if claim-checked.
    async fn resolve(
        &self,
        table: &TableClient,
        partition: &str,
        held: Held,
    ) -> Result<Vec<u8>, StoreError> {
        match held {
            Held::Inline(bytes) => Ok(bytes),
            Held::Blob { id, parts } => {
                let (from, to) = keys::blob_range(&id);
                let rows = self
                    .query(
                        table,
                        format!(
                            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
                            odata(partition),
                            odata(&from),
                            odata(&to)
                        ),
                        parts + 1,
                    )
                    .await?;
                payload::join_blob(&rows, parts)
            }
        }
    }

    async fn value<T: serde::de::DeserializeOwned>(
        &self,
        table: &TableClient,
        partition: &str,
        entity: &Entity,
        name: &str,
    ) -> Result<T, StoreError> {
        let bytes = self
            .resolve(table, partition, payload::held(entity, name)?)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(name, e))
    }

    async fn timers_of(&self, instance: &str) -> Result<BTreeMap<String, TimerDoc>, StoreError> {
        match self
            .get(&self.instances, instance, keys::TIMERS_ROW)
            .await?
        {
            Some((entity, _)) => self.value(&self.instances, instance, &entity, "T").await,
            None => Ok(BTreeMap::new()),
        }
    }

    fn marker_is_fresh(&self, instance: &str) -> bool {
        self.markers
            .lock()
            .ok()
            .and_then(|m| m.get(instance).copied())
            .is_some_and(|at| at.elapsed() < MARKER_REFRESH)
    }

    fn remember_marker(&self, instance: &str) {
        if let Ok(mut markers) = self.markers.lock() {
            if markers.len() >= MARKER_CACHE_LIMIT {
                markers.retain(|_, at| at.elapsed() < MARKER_REFRESH);
            }
            markers.insert(instance.to_owned(), Instant::now());
        }
    }

    fn remember_group(&self, instance: &str, group: RecentGroup) {
        if let Ok(mut groups) = self.recent_groups.lock() {
            // Groups the relay never deleted here (it crashed, or another
            // replica swept them) must not pile up.
            if groups.len() >= MARKER_CACHE_LIMIT {
                groups.clear();
            }
            groups.insert(instance.to_owned(), group);
        }
    }

    /// The group this process committed for `instance`, if `ids` are
    /// exactly its messages.
    fn recent_group(&self, instance: &str, ids: &[String]) -> Option<RecentGroup> {
        let mut groups = self.recent_groups.lock().ok()?;
        let matches = groups
            .get(instance)
            .is_some_and(|g| g.ids.len() == ids.len() && ids.iter().all(|id| g.ids.contains(id)));
        matches.then(|| groups.remove(instance)).flatten()
    }

    /// The index entries a commit needs before it lands.
    async fn write_index_before(&self, commit: &Commit, now_ms: i64) -> Result<(), StoreError> {
        let summary = &commit.record.summary;
        let id = summary.id.as_str();
        let mut writes: Vec<(&str, String, Entity)> = Vec::new();
        if commit.expected == Expected::New {
            let mut entry = Entity::new();
            entry.insert("Instance".into(), id.into());
            entry.insert("Workflow".into(), summary.workflow.as_str().into());
            if let Some(tenant) = &summary.tenant {
                entry.insert("Tenant".into(), tenant.as_str().into());
            }
            entry.insert(
                "CreatedMs".into(),
                millis(summary.created_at).to_string().into(),
            );
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((
                keys::LIST_PARTITION,
                keys::list_entry(millis(summary.created_at), id),
                entry,
            ));
        }
        for timer in &commit.add_timers {
            let mut entry = Entity::new();
            entry.insert("Instance".into(), id.into());
            entry.insert("Timer".into(), timer.id.as_str().into());
            entry.insert("DueMs".into(), millis(timer.due_at).to_string().into());
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((
                keys::TIMER_PARTITION,
                keys::timer_entry(millis(timer.due_at), id, &timer.id),
                entry,
            ));
        }
        let marker = !commit.outbox.is_empty() && !self.marker_is_fresh(id);
        if marker {
            let mut entry = Entity::new();
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((keys::OUTBOX_PARTITION, id.to_owned(), entry));
        }
        let upserts: Vec<_> = writes
            .iter()
            .map(|(partition, row, entity)| {
                self.upsert(&self.index, partition, row, entity.clone())
            })
            .collect();
        stream::iter(upserts)
            .buffer_unordered(PARALLEL_READS)
            .try_collect::<Vec<()>>()
            .await?;
        if marker {
            self.remember_marker(id);
        }
        Ok(())
    }

    /// The record's summary, if the instance exists.
    async fn summary_of(&self, instance: &str) -> Result<Option<InstanceSummary>, StoreError> {
        let row = self
            .get(&self.instances, instance, keys::INSTANCE_ROW)
            .await?;
        row.map(|(entity, _)| summary_from(&entity)).transpose()
    }

    async fn outbox_groups(&self, instance: &str) -> Result<Vec<Entity>, StoreError> {
        self.query(
            &self.instances,
            format!(
                "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
                odata(instance),
                odata(keys::OUTBOX_START),
                odata(keys::OUTBOX_END)
            ),
            usize::MAX,
        )
        .await
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
    event: Value,
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

/// The ETag and the state's blob reference, both carried in the version so
/// that the next commit can remove a superseded claim-checked state.
fn version(etag: &str, state_ref: Option<&str>) -> Version {
    Version(format!("{etag}|{}", state_ref.unwrap_or_default()))
}

fn split_version(version: &Version) -> (String, Option<String>) {
    match version.0.rsplit_once('|') {
        Some((etag, reference)) => (
            etag.to_owned(),
            Some(reference.to_owned()).filter(|r| !r.is_empty()),
        ),
        None => (version.0.clone(), None),
    }
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
        let id = commit.record.summary.id.as_str().to_owned();
        let now = now_ms();
        let (expected_etag, old_state_ref) = match &commit.expected {
            Expected::New => (None, None),
            Expected::Version(v) => {
                let (etag, reference) = split_version(v);
                (Some(etag), reference)
            }
        };
        let mut blobs = Vec::new();
        let mut ops: Vec<Entity> = Vec::new();

        let (mut record_row, state_blob) = entity(
            &id,
            keys::INSTANCE_ROW,
            payload::encode("S", &to_json(&commit.record.state)?),
        );
        let state_ref = state_blob.as_ref().map(payload::Blob::reference);
        blobs.extend(state_blob);
        let summary = serde_json::to_string(&summary_doc(&commit.record.summary))
            .map_err(|e| corrupt("summary", e))?;
        record_row.insert("Summary".into(), summary.into());
        ops.push(record_row);

        let mut removed_timers = Vec::new();
        if !commit.add_timers.is_empty() || !commit.remove_timers.is_empty() {
            let mut timers = match commit.expected {
                Expected::New => BTreeMap::new(),
                Expected::Version(_) => self.timers_of(&id).await?,
            };
            for timer in &commit.remove_timers {
                if let Some(doc) = timers.remove(timer) {
                    removed_timers.push((timer.clone(), doc.due_ms));
                }
            }
            for timer in &commit.add_timers {
                timers.insert(
                    timer.id.clone(),
                    TimerDoc {
                        due_ms: millis(timer.due_at),
                        payload: timer.payload.clone(),
                    },
                );
            }
            removed_timers
                .retain(|(timer, due)| timers.get(timer).is_none_or(|kept| kept.due_ms != *due));
            let (row, blob) = entity(
                &id,
                keys::TIMERS_ROW,
                payload::encode("T", &to_json(&timers)?),
            );
            blobs.extend(blob);
            ops.push(row);
        }

        if let (Some(first), Some(last)) = (commit.history.first(), commit.history.last()) {
            let events: Vec<EventDoc> = commit
                .history
                .iter()
                .map(|h| EventDoc {
                    seq: h.seq,
                    at_ms: millis(h.at),
                    event: h.event.clone(),
                })
                .collect();
            let (mut row, blob) = entity(
                &id,
                &keys::history_page(last.seq),
                payload::encode("H", &to_json(&events)?),
            );
            row.insert("First".into(), first.seq.to_string().into());
            blobs.extend(blob);
            ops.push(row);
        }

        let mut outbox_group = None;
        if !commit.outbox.is_empty() {
            let messages: Vec<MessageDoc> =
                commit.outbox.iter().map(MessageDoc::from_row).collect();
            let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
            let key = keys::outbox_group(now, nonce);
            let (row, blob) = entity(&id, &key, payload::encode("O", &to_json(&messages)?));
            outbox_group = Some((
                ops.len(),
                RecentGroup {
                    row: key,
                    etag: String::new(),
                    ids: commit.outbox.iter().map(|m| m.id.clone()).collect(),
                    blob: blob.as_ref().map(payload::Blob::reference),
                },
            ));
            blobs.extend(blob);
            ops.push(row);
        }

        // Everything the batch points at, and every index entry that makes
        // it findable, exists before the batch can land.
        let (blob_writes, index_writes) = tokio::join!(
            futures::future::try_join_all(blobs.iter().map(|blob| self.write_blob(
                &self.instances,
                &id,
                blob
            ))),
            self.write_index_before(&commit, now)
        );
        blob_writes?;
        index_writes?;

        let mut batch = self
            .instances
            .partition_key_client(id.as_str())
            .transaction();
        for (n, row) in ops.into_iter().enumerate() {
            let key = text(&row, "RowKey")?.to_owned();
            batch = match (n, &expected_etag) {
                (0, Some(etag)) => batch.update(key, row, Some(if_match(Some(etag)))),
                (0, None) => batch.insert(row),
                (_, _) if key.starts_with('t') => batch.insert_or_replace(key, row),
                _ => batch.insert(row),
            }
            .map_err(failure)?;
        }
        // Whether the batch surely did not land: an answer says so. A
        // timeout or a dropped connection leaves it open.
        let (outcome, refused) = match batch.await {
            Err(e) => {
                let refused = e.as_http_error().is_some();
                (Err(failure(e)), refused)
            }
            Ok(response) => match response
                .operation_responses
                .iter()
                .find(|r| !r.status_code.is_success())
            {
                None => (Ok(response), false),
                Some(failed) => (
                    Err(match failed.status_code as u16 {
                        409 | 412 => StoreError::Conflict(format!(
                            "instance {id} changed since it was loaded ({})",
                            failed.status_code
                        )),
                        404 => StoreError::NotFound(format!("instance {id}")),
                        413 => StoreError::TooLarge(format!("commit of instance {id}")),
                        other => StoreError::Unavailable(format!(
                            "commit of instance {id}: status {other}"
                        )),
                    }),
                    true,
                ),
            },
        };
        let response = match outcome {
            Ok(response) => response,
            Err(e) => {
                if refused {
                    // The claim-checked values of a commit that did not land.
                    for blob in &blobs {
                        self.delete_blob(&self.instances, &id, &blob.reference())
                            .await;
                    }
                }
                return Err(e);
            }
        };
        let etag = match response
            .operation_responses
            .first()
            .and_then(|r| r.etag.as_ref())
        {
            Some(etag) => etag.to_string(),
            None => self
                .get(&self.instances, &id, keys::INSTANCE_ROW)
                .await?
                .map(|(_, etag)| etag)
                .ok_or_else(|| StoreError::Unavailable(format!("instance {id} vanished")))?,
        };

        if let Some((op, mut group)) = outbox_group
            && let Some(etag) = response
                .operation_responses
                .get(op)
                .and_then(|r| r.etag.as_ref())
        {
            group.etag = etag.to_string();
            self.remember_group(&id, group);
        }
        if let Some(old) = old_state_ref.filter(|old| Some(old) != state_ref.as_ref()) {
            self.delete_blob(&self.instances, &id, &old).await;
        }
        let stale: Vec<_> = removed_timers
            .iter()
            .map(|(timer, due)| {
                (
                    keys::TIMER_PARTITION.to_owned(),
                    keys::timer_entry(*due, &id, timer),
                )
            })
            .collect();
        self.delete_quietly(&self.index, stale).await;
        Ok(version(&etag, state_ref.as_deref()))
    }

    async fn history(
        &self,
        id: &InstanceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            odata(id.as_str()),
            odata(&keys::history_from(after.saturating_add(1))),
            odata(keys::HISTORY_END)
        );
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
                for e in events.into_iter().filter(|e| e.seq > after) {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    out.push(HistoryRow {
                        seq: e.seq,
                        at: from_millis(e.at_ms)?,
                        event: e.event,
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
        let top = if query.top == 0 { 100 } else { query.top };
        let position = query
            .continuation
            .as_deref()
            .map(token::decode)
            .transpose()?;
        let mut filter = format!("PartitionKey eq {}", odata(keys::LIST_PARTITION));
        let mut key_bound = |op: &str, key: String| {
            filter.push_str(&format!(" and RowKey {op} {}", odata(&key)));
        };
        if let Some(p) = &position {
            key_bound("gt", keys::list_entry(p.c, &p.i));
        }
        if let Some(to) = query.created_to {
            key_bound("ge", keys::list_created_before(millis(to)));
        }
        if let Some(from) = query.created_from {
            key_bound("lt", keys::list_created_before(millis(from)));
        }
        if let Some(workflow) = &query.workflow {
            filter.push_str(&format!(" and Workflow eq {}", odata(workflow.as_str())));
        }
        if let TenantFilter::Only(Some(tenant)) = &query.tenant {
            filter.push_str(&format!(" and Tenant eq {}", odata(tenant)));
        }
        // Entries without a tenant have no Tenant property, which OData
        // cannot ask for: those are filtered after reading, like status.
        let filtered_after = query.status.is_some() || query.tenant == TenantFilter::Only(None);
        // Without such a filter almost every entry is a match (only
        // entries of lost races are not): read little more than a page.
        let scan_limit = if filtered_after {
            LIST_SCAN_LIMIT
        } else {
            (top + 16).min(LIST_SCAN_LIMIT)
        };
        let candidates = self.query(&self.index, filter, scan_limit + 1).await?;
        let more_candidates = candidates.len() > scan_limit;
        let mut items = Vec::new();
        let mut examined = 0;
        let mut last_examined = None;
        let mut dangling = Vec::new();
        for chunk in candidates[..candidates.len().min(scan_limit)].chunks(top + 1) {
            let reads: Vec<_> = chunk.iter().map(|entry| self.listed(entry)).collect();
            let found: Vec<_> = stream::iter(reads)
                .buffered(PARALLEL_READS)
                .try_collect()
                .await?;
            for (entry, summary) in found {
                examined += 1;
                last_examined = Some(entry);
                let created: i64 = text(entry, "CreatedMs")?.parse().unwrap_or(-1);
                match summary {
                    Some(s)
                        if millis(s.created_at) == created
                            && query.status.is_none_or(|status| s.status == status)
                            && query.tenant.admits(s.tenant.as_deref()) =>
                    {
                        items.push(s)
                    }
                    Some(s) if millis(s.created_at) == created => {}
                    _ if self.past_grace(entry) => dangling.push((
                        keys::LIST_PARTITION.to_owned(),
                        text(entry, "RowKey")?.to_owned(),
                    )),
                    _ => {}
                }
                if items.len() > top {
                    break;
                }
            }
            if items.len() > top {
                break;
            }
        }
        self.delete_quietly(&self.index, dangling).await;
        let continuation = if items.len() > top {
            items.truncate(top);
            items.last().map(|last| ListPosition {
                c: millis(last.created_at),
                i: last.id.to_string(),
            })
        } else if more_candidates && examined == scan_limit {
            // A sparse match: hand back a partial page and where to go on.
            last_examined
                .map(|entry| -> Result<ListPosition, StoreError> {
                    Ok(ListPosition {
                        c: text(entry, "CreatedMs")?.parse().unwrap_or(0),
                        i: text(entry, "Instance")?.to_owned(),
                    })
                })
                .transpose()?
        } else {
            None
        };
        Ok(InstancePage {
            items,
            continuation: continuation.as_ref().map(token::encode),
        })
    }

    async fn purge(&self, id: &InstanceId) -> Result<bool, StoreError> {
        // A transaction fails whole when one of its rows is already gone
        // (the outbox relay deleting what it published, a moment before):
        // then nothing of it was deleted, so read the rows again and go on.
        let mut found = false;
        let mut index_entries = vec![(keys::OUTBOX_PARTITION.to_owned(), id.to_string())];
        for _ in 0..PURGE_ROUNDS {
            let rows = self
                .query(
                    &self.instances,
                    format!("PartitionKey eq {}", odata(id.as_str())),
                    usize::MAX,
                )
                .await?;
            if rows.is_empty() {
                self.delete_quietly(&self.index, index_entries).await;
                return Ok(found);
            }
            found = true;
            index_entries.extend(self.index_entries_of(id, &rows).await?);
            for chunk in rows.chunks(MAX_BATCH) {
                let mut batch = self
                    .instances
                    .partition_key_client(id.as_str())
                    .transaction();
                for row in chunk {
                    batch = batch.delete(text(row, "RowKey")?, None).map_err(failure)?;
                }
                let response = batch.await.map_err(failure)?;
                if let Some(failed) = response
                    .operation_responses
                    .iter()
                    .find(|r| !r.status_code.is_success() && r.status_code as u16 != 404)
                {
                    return Err(StoreError::Unavailable(format!(
                        "purge of instance {id}: status {}",
                        failed.status_code
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "purge of instance {id}: its rows kept changing"
        )))
    }

    async fn due_timers(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey lt {}",
            odata(keys::TIMER_PARTITION),
            odata(&keys::timers_due_before(millis(now)))
        );
        let entries = self
            .query(&self.index, filter, limit.saturating_mul(2).max(64))
            .await?;
        let instances: HashSet<&str> = entries
            .iter()
            .filter_map(|e| e.get("Instance").and_then(Value::as_str))
            .collect();
        let reads: Vec<_> = instances
            .into_iter()
            .map(|instance| self.timers_by_instance(instance))
            .collect();
        let timers: HashMap<&str, BTreeMap<String, TimerDoc>> = stream::iter(reads)
            .buffer_unordered(PARALLEL_READS)
            .try_collect()
            .await?;
        let mut due = Vec::new();
        let mut dangling = Vec::new();
        for entry in &entries {
            let instance = text(entry, "Instance")?;
            let timer = text(entry, "Timer")?;
            let due_ms: i64 = text(entry, "DueMs")?.parse().unwrap_or(-1);
            match timers.get(instance).and_then(|t| t.get(timer)) {
                Some(doc) if doc.due_ms == due_ms && due.len() < limit => {
                    due.push(TimerRow {
                        instance: InstanceId::parse(instance)
                            .map_err(|e| corrupt("instance id", e))?,
                        id: timer.to_owned(),
                        due_at: from_millis(due_ms)?,
                        payload: doc.payload.clone(),
                    });
                }
                Some(doc) if doc.due_ms == due_ms => {}
                _ if self.past_grace(entry) => dangling.push((
                    keys::TIMER_PARTITION.to_owned(),
                    text(entry, "RowKey")?.to_owned(),
                )),
                _ => {}
            }
        }
        self.delete_quietly(&self.index, dangling).await;
        Ok(due)
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut markers = self
            .query(
                &self.index,
                format!("PartitionKey eq {}", odata(keys::OUTBOX_PARTITION)),
                MARKER_SCAN_LIMIT,
            )
            .await?;
        markers.sort_by_key(|m| {
            m.get("WrittenMs")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        });
        let mut out = Vec::new();
        for chunk in markers.chunks(PARALLEL_READS) {
            let reads: Vec<_> = chunk.iter().map(|marker| self.marked(marker)).collect();
            let groups: Vec<_> = stream::iter(reads)
                .buffered(PARALLEL_READS)
                .try_collect()
                .await?;
            for (marker, instance, groups) in groups {
                if groups.is_empty() {
                    if self.past_grace(marker) {
                        // Conditional: a commit that re-marked it keeps it.
                        let _ = self
                            .delete(
                                &self.index,
                                keys::OUTBOX_PARTITION,
                                instance,
                                etag_of(marker).as_deref(),
                            )
                            .await;
                    }
                    continue;
                }
                let id = InstanceId::parse(instance).map_err(|e| corrupt("instance id", e))?;
                for group in &groups {
                    for message in self.group_messages(instance, group).await? {
                        out.push(OutboxEntry {
                            instance: id.clone(),
                            row: message.into_row()?,
                        });
                    }
                }
            }
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    async fn delete_outbox(&self, instance: &InstanceId, ids: &[String]) -> Result<(), StoreError> {
        let partition = instance.as_str();
        if let Some(group) = self.recent_group(partition, ids) {
            // The relay deletes what one commit wrote: no lookup needed.
            match self
                .delete(&self.instances, partition, &group.row, Some(&group.etag))
                .await
            {
                Ok(()) => {
                    if let Some(blob) = &group.blob {
                        self.delete_blob(&self.instances, partition, blob).await;
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        // A group changes only here, so a conflict means another relay is
        // deleting the same rows: read again and finish what is left.
        for _ in 0..5 {
            let mut conflicted = false;
            for group in self.outbox_groups(partition).await? {
                let messages = self.group_messages(partition, &group).await?;
                if !messages.iter().any(|m| ids.contains(m.id.as_str())) {
                    continue;
                }
                let row = text(&group, "RowKey")?;
                let etag = etag_of(&group);
                let old_blob = payload::held(&group, "O")?.reference();
                let remaining: Vec<MessageDoc> = messages
                    .into_iter()
                    .filter(|m| !ids.contains(m.id.as_str()))
                    .collect();
                let result = if remaining.is_empty() {
                    self.delete(&self.instances, partition, row, etag.as_deref())
                        .await
                } else {
                    let (entity, blob) =
                        entity(partition, row, payload::encode("O", &to_json(&remaining)?));
                    if let Some(blob) = &blob {
                        self.write_blob(&self.instances, partition, blob).await?;
                    }
                    let condition = if_match(etag.as_deref());
                    self.instances
                        .partition_key_client(partition)
                        .entity_client(row)
                        .update(entity, condition)
                        .map_err(failure)?
                        .await
                        .map(|_| ())
                        .map_err(failure)
                };
                match result {
                    Ok(()) => {
                        if let Some(old) = old_blob {
                            self.delete_blob(&self.instances, partition, &old).await;
                        }
                    }
                    Err(StoreError::Conflict(_)) => conflicted = true,
                    Err(e) => return Err(e),
                }
            }
            if !conflicted {
                return Ok(());
            }
        }
        Err(StoreError::Conflict(format!(
            "outbox of instance {instance} keeps changing"
        )))
    }

    async fn put_definition(&self, definition: &DefinitionRecord) -> Result<(), StoreError> {
        let name = definition.name.as_str();
        let (mut row, blob) = entity(
            name,
            &keys::definition_version(definition.version),
            payload::encode("B", &to_json(&definition.body)?),
        );
        row.insert("Hash".into(), definition.hash.as_str().into());
        row.insert(
            "RegisteredMs".into(),
            millis(definition.registered_at).to_string().into(),
        );
        if let Some(blob) = &blob {
            self.write_blob(&self.definitions, name, blob).await?;
        }
        let inserted = self
            .definitions
            .insert::<_, Entity>(row)
            .map_err(failure)?
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => {
                let existing = self
                    .get_definition(&definition.name, Some(definition.version))
                    .await?;
                match existing {
                    Some(d) if d.hash == definition.hash => Ok(()),
                    _ => Err(StoreError::Conflict(format!(
                        "{name} version {} is already registered with different content",
                        definition.version
                    ))),
                }
            }
            Err(e) => Err(failure(e)),
        }
    }

    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        let row = match version {
            Some(v) => self
                .get(
                    &self.definitions,
                    name.as_str(),
                    &keys::definition_version(v),
                )
                .await?
                .map(|(row, _)| row),
            None => self
                .query(
                    &self.definitions,
                    format!(
                        "PartitionKey eq {} and RowKey ge 'v' and RowKey lt 'w'",
                        odata(name.as_str())
                    ),
                    usize::MAX,
                )
                .await?
                .pop(),
        };
        match row {
            Some(row) => Ok(Some(self.definition(&row).await?)),
            None => Ok(None),
        }
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.lease(name, holder, ttl).await
    }

    async fn definition_versions(&self, name: &WorkflowName) -> Result<Vec<u32>, StoreError> {
        let rows = self
            .query(
                &self.definitions,
                format!(
                    "PartitionKey eq {} and RowKey ge 'v' and RowKey lt 'w'",
                    odata(name.as_str())
                ),
                usize::MAX,
            )
            .await?;
        let mut versions = rows
            .iter()
            .map(|row| {
                let key = text(row, "RowKey")?;
                keys::version_of_definition(key)
                    .ok_or_else(|| StoreError::Corrupt(format!("definition row key {key:?}")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        versions.reverse();
        Ok(versions)
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        let rows = self
            .query(
                &self.definitions,
                "RowKey ge 'v' and RowKey lt 'w'".to_owned(),
                usize::MAX,
            )
            .await?;
        // Rows come by name, then by version: the last of each name wins.
        let mut latest: BTreeMap<String, Entity> = BTreeMap::new();
        for row in rows {
            latest.insert(text(&row, "PartitionKey")?.to_owned(), row);
        }
        let reads: Vec<_> = latest.values().map(|row| self.definition(row)).collect();
        stream::iter(reads)
            .buffered(PARALLEL_READS)
            .try_collect()
            .await
    }
}

impl AzureTableStore {
    /// The service's own cost, for `legato bench`: `instances` partitions,
    /// each taking `per_instance` entity-group transactions shaped like a
    /// commit (the record replaced under its ETag, a history row and an
    /// outbox row inserted), each followed by the outbox row's delete, with
    /// none of this adapter's index, chunking or claim-check work.
    pub async fn raw_entity_group_commits(
        &self,
        instances: usize,
        per_instance: usize,
        concurrency: usize,
        state_bytes: usize,
    ) -> Result<Duration, StoreError> {
        let state = "x".repeat(state_bytes);
        let run = |i: usize| {
            let state = state.clone();
            async move {
                let partition = format!("raw-{}-{i}", uuid::Uuid::new_v4().simple());
                let mut etag: Option<String> = None;
                for seq in 1..=per_instance {
                    let row = |key: &str, props: &[(&str, &str)]| {
                        let mut e = Entity::new();
                        e.insert("PartitionKey".into(), partition.as_str().into());
                        e.insert("RowKey".into(), key.into());
                        for (k, v) in props {
                            e.insert((*k).into(), (*v).into());
                        }
                        e
                    };
                    let record = row(keys::INSTANCE_ROW, &[("State", &state)]);
                    let history_key = keys::history_page(seq as u64);
                    let outbox_key = format!("o{seq:06}");
                    let batch = self
                        .instances
                        .partition_key_client(partition.as_str())
                        .transaction();
                    let batch = match &etag {
                        None => batch.insert(record),
                        Some(e) => {
                            batch.update(keys::INSTANCE_ROW, record, Some(if_match(Some(e))))
                        }
                    }
                    .and_then(|b| {
                        b.insert(row(
                            &history_key,
                            &[("Event", "{\"type\":\"task_completed\"}")],
                        ))
                    })
                    .and_then(|b| b.insert(row(&outbox_key, &[("Body", &"x".repeat(600))])))
                    .map_err(failure)?;
                    let response = batch.await.map_err(failure)?;
                    if let Some(failed) = response
                        .operation_responses
                        .iter()
                        .find(|r| !r.status_code.is_success())
                    {
                        return Err(StoreError::Unavailable(format!(
                            "raw commit: {}",
                            failed.status_code
                        )));
                    }
                    etag = response
                        .operation_responses
                        .first()
                        .and_then(|r| r.etag.as_ref())
                        .map(|e| e.to_string());
                    self.delete(&self.instances, &partition, &outbox_key, None)
                        .await?;
                }
                Ok::<(), StoreError>(())
            }
        };
        let started = Instant::now();
        stream::iter((0..instances).map(run))
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(started.elapsed())
    }

    /// Deletes this store's tables: for throwaway runs such as `legato bench`.
    pub async fn delete_tables(&self) -> Result<(), StoreError> {
        for table in [&self.instances, &self.index, &self.definitions] {
            match table.delete().await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(failure(e)),
            }
        }
        Ok(())
    }
}

impl AzureTableStore {
    /// The index entries that point at an instance's rows.
    async fn index_entries_of(
        &self,
        id: &InstanceId,
        rows: &[Entity],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut entries = Vec::new();
        for row in rows {
            match row.get("RowKey").and_then(Value::as_str) {
                Some(keys::INSTANCE_ROW) => {
                    let s = summary_from(row)?;
                    entries.push((
                        keys::LIST_PARTITION.to_owned(),
                        keys::list_entry(millis(s.created_at), id.as_str()),
                    ));
                }
                Some(keys::TIMERS_ROW) => {
                    let timers: BTreeMap<String, TimerDoc> =
                        self.value(&self.instances, id.as_str(), row, "T").await?;
                    entries.extend(timers.iter().map(|(timer, doc)| {
                        (
                            keys::TIMER_PARTITION.to_owned(),
                            keys::timer_entry(doc.due_ms, id.as_str(), timer),
                        )
                    }));
                }
                _ => {}
            }
        }
        Ok(entries)
    }

    async fn load_once(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let Some((row, etag)) = self
            .get(&self.instances, id.as_str(), keys::INSTANCE_ROW)
            .await?
        else {
            return Ok(None);
        };
        let held = payload::held(&row, "S")?;
        let reference = held.reference();
        let state_bytes = self.resolve(&self.instances, id.as_str(), held).await?;
        let state = serde_json::from_slice(&state_bytes).map_err(|e| corrupt("state", e))?;
        Ok(Some(StoredInstance {
            record: InstanceRecord {
                summary: summary_from(&row)?,
                state,
            },
            version: version(&etag, reference.as_deref()),
        }))
    }

    /// The messages of an outbox group; none if the group was deleted (with
    /// its claim-checked parts) while it was being read.
    async fn group_messages(
        &self,
        instance: &str,
        group: &Entity,
    ) -> Result<Vec<MessageDoc>, StoreError> {
        match self.value(&self.instances, instance, group, "O").await {
            Err(StoreError::NotFound(missing)) => {
                let row = text(group, "RowKey")?;
                match self.get(&self.instances, instance, row).await? {
                    None => Ok(Vec::new()),
                    Some(_) => Err(StoreError::Corrupt(missing)),
                }
            }
            other => other,
        }
    }

    /// A listing entry with the summary of the instance it names, if any.
    async fn listed<'e>(
        &self,
        entry: &'e Entity,
    ) -> Result<(&'e Entity, Option<InstanceSummary>), StoreError> {
        let instance = text(entry, "Instance")?;
        Ok((entry, self.summary_of(instance).await?))
    }

    async fn timers_by_instance<'i>(
        &self,
        instance: &'i str,
    ) -> Result<(&'i str, BTreeMap<String, TimerDoc>), StoreError> {
        Ok((instance, self.timers_of(instance).await?))
    }

    /// An outbox marker with the groups its instance holds.
    async fn marked<'m>(
        &self,
        marker: &'m Entity,
    ) -> Result<(&'m Entity, &'m str, Vec<Entity>), StoreError> {
        let instance = text(marker, "RowKey")?;
        Ok((marker, instance, self.outbox_groups(instance).await?))
    }

    async fn definition(&self, row: &Entity) -> Result<DefinitionRecord, StoreError> {
        let name = text(row, "PartitionKey")?;
        let version = text(row, "RowKey")?
            .trim_start_matches('v')
            .parse()
            .map_err(|e| corrupt("definition version", e))?;
        Ok(DefinitionRecord {
            name: WorkflowName::parse(name).map_err(|e| corrupt("workflow", e))?,
            version,
            hash: text(row, "Hash")?.to_owned(),
            body: self.value(&self.definitions, name, row, "B").await?,
            registered_at: from_millis(
                text(row, "RegisteredMs")?
                    .parse()
                    .map_err(|e| corrupt("registered_at", e))?,
            )?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::conformance;
    use legato_contracts::Topic;
    use serde_json::json;

    async fn azurite() -> AzureTableStore {
        AzureTableStore::connect(
            &AzureTableConnection::ConnectionString(conformance::test_tables()),
            "legatotest",
        )
        .await
        .expect("Azurite must be running on 127.0.0.1:10002 (scripts/test starts it)")
    }

    mod against_azurite {
        crate::store_conformance_tests!(super::azurite().await);
    }

    /// The Container Apps identity endpoint stand-in, for the whole test
    /// process on a runtime of its own (each test has its own runtime).
    fn identity_endpoint() -> &'static str {
        static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        URL.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let issuer = std::sync::Arc::new(legato_servicebus_standin::TestIssuer::new());
                    let identity = legato_servicebus_standin::Identity {
                        secret: "platform-secret".into(),
                        client_id: Some("legato-identity".into()),
                        object_id: "legato-app".into(),
                    };
                    let endpoint =
                        legato_servicebus_standin::IdentityEndpoint::start(issuer, identity)
                            .await
                            .unwrap();
                    tx.send(endpoint.url()).unwrap();
                    std::future::pending::<()>().await;
                });
            });
            rx.recv().unwrap()
        })
    }

    /// Azurite's Table service in OAuth mode over HTTPS, which `scripts/test`
    /// starts on 127.0.0.1:10012 with a certificate it makes (trusted
    /// through `LEGATO_TLS_CA_FILE`); `LEGATO_TEST_TABLES_OAUTH` names
    /// another endpoint.
    fn oauth_endpoint() -> String {
        std::env::var("LEGATO_TEST_TABLES_OAUTH")
            .unwrap_or_else(|_| "https://127.0.0.1:10012/devstoreaccount1".to_owned())
    }

    async fn azurite_with_entra(client_id: &str) -> Result<AzureTableStore, StoreError> {
        let credential = legato_azure::ManagedIdentityCredential::new(
            identity_endpoint().to_owned(),
            "platform-secret".into(),
            Some(client_id.to_owned()),
        )
        .unwrap();
        let connection = AzureTableConnection::Entra {
            account: "devstoreaccount1".into(),
            endpoint: Some(oauth_endpoint()),
            credential: Arc::new(credential),
        };
        AzureTableStore::connect(&connection, "legatoentra").await
    }

    mod against_azurite_with_entra_tokens {
        crate::store_conformance_tests!(super::azurite_with_entra("legato-identity").await.expect(
            "Azurite in OAuth mode must be running on 127.0.0.1:10012 with its \
                 certificate in LEGATO_TLS_CA_FILE (scripts/test starts it)"
        ));
    }

    /// The OAuth Azurite checks tokens (issuer, audience, lifetime): an
    /// identity the endpoint does not know gets no token and no table.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_token_from_the_identity_nothing_is_reached() {
        let refused = azurite_with_entra("not-assigned-to-this-app").await;
        let Err(e) = refused else {
            panic!("connected without a token")
        };
        assert!(e.to_string().contains("client_id"), "{e}");
    }

    /// A token for another service (Service Bus's audience) is refused by
    /// the emulator itself: the OAuth mode really checks what it is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_for_another_audience_is_refused_by_the_account() {
        #[derive(Debug)]
        struct Fixed(String);
        #[async_trait::async_trait]
        impl azure_core::auth::TokenCredential for Fixed {
            async fn get_token(
                &self,
                _scopes: &[&str],
            ) -> azure_core::Result<azure_core::auth::AccessToken> {
                Ok(azure_core::auth::AccessToken::new(
                    self.0.clone(),
                    time::OffsetDateTime::now_utc() + time::Duration::hours(1),
                ))
            }
            async fn clear_cache(&self) -> azure_core::Result<()> {
                Ok(())
            }
        }
        let issuer = legato_servicebus_standin::TestIssuer::new();
        let wrong = issuer.token(
            "https://servicebus.azure.net",
            "legato-app",
            Duration::from_secs(600),
        );
        let connection = AzureTableConnection::Entra {
            account: "devstoreaccount1".into(),
            endpoint: Some(oauth_endpoint()),
            credential: Arc::new(Fixed(wrong)),
        };
        let refused = AzureTableStore::connect(&connection, "legatoentra").await;
        let Err(e) = refused else {
            panic!("a Service Bus token opened the tables")
        };
        assert!(e.to_string().contains("403"), "{e}");
    }

    async fn rows(store: &AzureTableStore, table: &TableClient, filter: String) -> Vec<String> {
        store
            .query(table, filter, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| text(e, "RowKey").unwrap().to_owned())
            .collect()
    }

    async fn index_rows(store: &AzureTableStore, id: &InstanceId) -> Vec<String> {
        rows(
            store,
            &store.index,
            format!(
                "Instance eq {} or RowKey eq {}",
                odata(id.as_str()),
                odata(id.as_str())
            ),
        )
        .await
    }

    fn big(len: usize, seed: u8) -> String {
        (0..len)
            .map(|i| char::from(b'a' + ((i + usize::from(seed)) % 26) as u8))
            .collect()
    }

    #[tokio::test]
    async fn a_commit_that_lost_its_race_leaves_index_entries_that_readers_remove() {
        let store = azurite().await.with_index_grace(Duration::from_millis(300));
        let record = conformance::record("lost", RuntimeStatus::Running);
        let id = record.summary.id.clone();
        let v1 = store
            .commit(Commit::new(record.clone(), Expected::New))
            .await
            .unwrap();
        store
            .commit(Commit::new(record.clone(), Expected::Version(v1.clone())))
            .await
            .unwrap();
        let mut stale = Commit::new(record, Expected::Version(v1));
        stale.outbox = vec![OutboxRow {
            id: "m".into(),
            topic: Topic::AgentTasks,
            routing_key: "echo".into(),
            body: b"x".to_vec(),
        }];
        stale.add_timers = vec![TimerRow {
            instance: id.clone(),
            id: "t/#?".into(),
            due_at: OffsetDateTime::UNIX_EPOCH,
            payload: json!({}),
        }];
        assert!(matches!(
            store.commit(stale).await,
            Err(StoreError::Conflict(_))
        ));
        // Listing, marker and timer entries were written before the batch.
        assert_eq!(index_rows(&store, &id).await.len(), 3);
        assert!(
            store
                .due_timers(OffsetDateTime::UNIX_EPOCH, 10_000)
                .await
                .unwrap()
                .iter()
                .all(|t| t.instance != id)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        store
            .due_timers(OffsetDateTime::UNIX_EPOCH, 10_000)
            .await
            .unwrap();
        store.pending_outbox(10_000).await.unwrap();
        assert_eq!(
            index_rows(&store, &id).await.len(),
            1,
            "only the listing entry is left"
        );
        assert_eq!(
            store
                .list(&InstanceQuery {
                    workflow: Some(
                        conformance::record("x", RuntimeStatus::Running)
                            .summary
                            .workflow
                    ),
                    ..Default::default()
                })
                .await
                .unwrap()
                .items
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn the_relays_delete_after_a_commit_needs_no_lookup() {
        let store = azurite().await;
        let record = conformance::record("relay", RuntimeStatus::Running);
        let id = record.summary.id.clone();
        let mut c = Commit::new(record, Expected::New);
        let message = |id: &str| OutboxRow {
            id: id.into(),
            topic: Topic::AgentTasks,
            routing_key: "echo".into(),
            body: b"x".to_vec(),
        };
        c.outbox = vec![message("a"), message("b")];
        store.commit(c).await.unwrap();
        let remembered = |store: &AzureTableStore| {
            store
                .recent_groups
                .lock()
                .unwrap()
                .contains_key(id.as_str())
        };
        assert!(
            remembered(&store),
            "the group's ETag came back with the batch"
        );
        // Not the whole group: the general path, and the group stays known.
        assert!(store.recent_group(id.as_str(), &["a".into()]).is_none());
        assert!(remembered(&store));
        store
            .delete_outbox(&id, &["b".into(), "a".into()])
            .await
            .unwrap();
        assert!(!remembered(&store));
        let left = store.pending_outbox(100_000).await.unwrap();
        assert!(left.iter().all(|o| o.instance != id));
    }

    #[tokio::test]
    async fn a_reader_racing_commits_of_large_states_always_reads_a_whole_one() {
        let store = azurite().await;
        let mut record = conformance::record("racing", RuntimeStatus::Running);
        let id = record.summary.id.clone();
        record.state = json!(big(700_000, 0));
        let mut version = store
            .commit(Commit::new(record.clone(), Expected::New))
            .await
            .unwrap();
        let writer = async {
            for n in 1..=8u8 {
                record.state = json!(big(700_000, n));
                version = store
                    .commit(Commit::new(
                        record.clone(),
                        Expected::Version(version.clone()),
                    ))
                    .await
                    .unwrap();
            }
        };
        let reader = async {
            let mut reads = 0;
            for _ in 0..200 {
                let loaded = store.load(&id).await.unwrap().unwrap();
                assert_eq!(loaded.record.state.as_str().map(str::len), Some(700_000));
                reads += 1;
            }
            reads
        };
        let ((), reads) = tokio::join!(writer, reader);
        assert_eq!(reads, 200);
    }

    #[tokio::test]
    async fn account_and_key_work_and_a_wrong_key_is_refused() {
        let account_key = |key: &str| AzureTableConnection::AccountKey {
            account: azure_storage::EMULATOR_ACCOUNT.into(),
            key: key.into(),
            endpoint: Some("http://127.0.0.1:10002/devstoreaccount1/".into()),
        };
        let store = AzureTableStore::connect(
            &account_key(azure_storage::EMULATOR_ACCOUNT_KEY),
            "legatotest",
        )
        .await
        .unwrap();
        let record = conformance::record("keyed", RuntimeStatus::Running);
        store
            .commit(Commit::new(record.clone(), Expected::New))
            .await
            .unwrap();
        assert_eq!(
            store
                .load(&record.summary.id)
                .await
                .unwrap()
                .unwrap()
                .record,
            record
        );
        let wrong = AzureTableStore::connect(&account_key("d3Jvbmcga2V5"), "legatotest").await;
        let Err(error) = wrong else {
            panic!("a wrong key must be refused");
        };
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        assert!(
            !error.to_string().contains("d3Jvbmcga2V5"),
            "the key is not echoed: {error}"
        );
        assert!(!format!("{:?}", account_key("d3Jvbmcga2V5")).contains("d3Jvbmcga2V5"));
    }

    #[tokio::test]
    async fn one_commit_may_carry_more_rows_than_a_batch_holds() {
        let store = azurite().await;
        let record = conformance::record("wide", RuntimeStatus::Running);
        let id = record.summary.id.clone();
        let mut c = Commit::new(record, Expected::New);
        c.history = (1..=150)
            .map(|seq| HistoryRow {
                seq,
                at: OffsetDateTime::UNIX_EPOCH,
                event: json!({"seq": seq}),
            })
            .collect();
        c.outbox = (0..150)
            .map(|n| OutboxRow {
                id: format!("m{n:03}"),
                topic: Topic::AgentTasks,
                routing_key: "echo".into(),
                body: vec![1; 100],
            })
            .collect();
        c.add_timers = (0..120)
            .map(|n| TimerRow {
                instance: id.clone(),
                id: format!("t{n}"),
                due_at: OffsetDateTime::UNIX_EPOCH,
                payload: json!(n),
            })
            .collect();
        store.commit(c).await.unwrap();
        assert_eq!(store.history(&id, 0, 1_000).await.unwrap().len(), 150);
        assert_eq!(
            store
                .history(&id, 140, 5)
                .await
                .unwrap()
                .iter()
                .map(|h| h.seq)
                .collect::<Vec<_>>(),
            vec![141, 142, 143, 144, 145]
        );
        let mine = store
            .pending_outbox(100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.instance == id)
            .count();
        assert_eq!(mine, 150);
        let due = store
            .due_timers(OffsetDateTime::UNIX_EPOCH, 100_000)
            .await
            .unwrap();
        assert_eq!(due.iter().filter(|t| t.instance == id).count(), 120);
        assert!(store.purge(&id).await.unwrap());
        assert!(
            index_rows(&store, &id).await.is_empty(),
            "purge removes the index entries"
        );
    }

    #[tokio::test]
    async fn values_near_every_limit_fit_one_batch_and_superseded_blobs_go() {
        let store = azurite().await;
        let mut record = conformance::record("limits", RuntimeStatus::Running);
        let id = record.summary.id.clone();
        // The largest inline value, four times over: the batch's worst case.
        let inline = big(511_900, 1);
        record.state = json!(inline);
        let mut c = Commit::new(record.clone(), Expected::New);
        c.history = vec![HistoryRow {
            seq: 1,
            at: OffsetDateTime::UNIX_EPOCH,
            event: json!(inline),
        }];
        c.outbox = vec![OutboxRow {
            id: "m".into(),
            topic: Topic::AgentTasks,
            routing_key: "echo".into(),
            body: big(380_000, 5).into_bytes(), // base64 in the group: 506,667 characters
        }];
        c.add_timers = vec![TimerRow {
            instance: id.clone(),
            id: "t".into(),
            due_at: OffsetDateTime::UNIX_EPOCH,
            payload: json!(big(380_000, 2)),
        }];
        let v = store.commit(c).await.unwrap();
        assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);

        let blobs = || {
            rows(
                &store,
                &store.instances,
                format!(
                    "PartitionKey eq {} and RowKey ge 'b' and RowKey lt 'c'",
                    odata(id.as_str())
                ),
            )
        };
        assert!(blobs().await.is_empty());
        record.state = json!(big(3_000_000, 3));
        let v = store
            .commit(Commit::new(record.clone(), Expected::Version(v)))
            .await
            .unwrap();
        assert_eq!(
            blobs().await.len(),
            5,
            "3,000,002 bytes in parts of 640,000"
        );
        assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
        record.state = json!(big(1_000_000, 4));
        let v = store
            .commit(Commit::new(record.clone(), Expected::Version(v)))
            .await
            .unwrap();
        assert_eq!(
            blobs().await.len(),
            2,
            "the superseded state's parts are removed"
        );
        record.state = json!("small");
        store
            .commit(Commit::new(record.clone(), Expected::Version(v.clone())))
            .await
            .unwrap();
        assert!(blobs().await.is_empty());
        assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
        // A stale writer's large state is refused and leaves nothing behind.
        let mut stale = record.clone();
        stale.state = json!(big(700_000, 6));
        let refused = store.commit(Commit::new(stale, Expected::Version(v))).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict(_))),
            "{refused:?}"
        );
        assert!(blobs().await.is_empty());
    }

    #[test]
    fn versions_carry_the_state_blob_reference() {
        let v = version("W/\"datetime'2026-11-26T10%3A00%3A00Z'\"", Some("abc:3"));
        assert_eq!(
            split_version(&v),
            (
                "W/\"datetime'2026-11-26T10%3A00%3A00Z'\"".to_owned(),
                Some("abc:3".to_owned())
            )
        );
        assert_eq!(split_version(&version("e", None)), ("e".to_owned(), None));
    }

    #[test]
    fn connection_strings_name_their_endpoint() {
        let (emulator, _) = location(&AzureTableConnection::ConnectionString(
            "UseDevelopmentStorage=true".into(),
        ))
        .unwrap();
        assert_eq!(emulator.account(), "devstoreaccount1");
        let (custom, _) = location(&AzureTableConnection::ConnectionString(
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:10002/acct/".into(),
        ))
        .unwrap();
        assert_eq!(
            custom
                .url(azure_storage::clients::ServiceType::Table)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:10002/acct"
        );
        assert!(location_err("AccountKey=a2V5").contains("AccountName"));
    }

    fn location_err(text: &str) -> String {
        match location(&AzureTableConnection::ConnectionString(text.into())) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }
}
