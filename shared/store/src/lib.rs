//! The Store port: durable saga state for workflow instances.
//!
//! One instance is one unit of consistency (one Azure Table partition): its
//! record, its append-only history, its outbox of messages to publish and its
//! timers. [`Store::commit`] writes all of them atomically, guarded by the
//! record's [`Version`] (an ETag in Azure Table), so any number of
//! orchestrator replicas can work without locks: the loser of a race gets
//! [`StoreError::Conflict`], reloads and decides again.
//!
//! Every adapter passes the same [`conformance`] suite.

mod agent;
mod azure;
pub mod conformance;
mod dead_letter;
mod entity;
mod journal;
mod json_text;
mod registry;
mod report;
mod schedule;
mod sqlite;
mod stored;
mod token;

use async_trait::async_trait;
use legato_contracts::journal::JournalKey;
use legato_contracts::{
    AgentName, EntityType, InstanceId, ProgressEvent, RuntimeStatus, ScheduleName, TenantId, Topic,
    WorkflowName,
};
use serde_json::Value;
use time::OffsetDateTime;

pub use agent::{AgentRecord, EntityTypeRecord, MAX_AGENTS_LISTED, StoredAgent, StoredEntityType};
pub use azure::{
    ABSENCE_CONFIRMATION, AzureTableConnection, AzureTableStore, DEFAULT_REQUEST_TIMEOUT,
    INDEX_GRACE, table_requests,
};
pub use dead_letter::{DeadLetter, DeadLetterPage, DeadLetterQuery};
pub use entity::{
    ENTITY_OPERATIONS_KEPT, EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityPage,
    EntityQuery, EntityRecord, EntitySummary, StoredEntity,
};
pub use journal::{JournalEntry, Journaled};
pub use json_text::JsonText;
pub use report::{MAX_REPORTS_LISTED, ReplicaReport};
pub use schedule::{MAX_SCHEDULES_LISTED, ScheduleRecord, StoredSchedule};
pub use sqlite::{Durability, SqliteStore};

/// Instance commits this process has made so far, in any store (what
/// `legato bench` models its raw store run on).
pub fn instance_commits() -> u64 {
    INSTANCE_COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}

static INSTANCE_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts a commit that landed.
fn committed(version: Version) -> Version {
    INSTANCE_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    version
}

/// Opaque optimistic-concurrency token of an instance record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record changed since it was loaded (or already exists): reload
    /// and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A value is beyond what the store can hold; never truncated.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The backing service failed; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("invalid continuation token")]
    InvalidToken,
    /// The commit claims a message id an earlier commit of the instance
    /// claimed (see [`Commit::claims`]): the message was applied before.
    #[error("message {0} was already applied")]
    Claimed(String),
}

/// The indexed facts about an instance, enough to list and filter it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSummary {
    pub id: InstanceId,
    pub workflow: WorkflowName,
    pub workflow_version: u32,
    pub status: RuntimeStatus,
    pub tenant: Option<String>,
    /// Timestamps are kept to the millisecond.
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The instance row: its summary plus the engine's state snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub summary: InstanceSummary,
    pub state: JsonText,
    /// Named pieces of the state kept beside the row, so a commit writes
    /// the pieces that changed instead of the whole state (an instance of
    /// 10,000 items changes one at a time). Loaded: every piece. In a
    /// commit: the pieces written (`Some`) or removed (`None`); pieces it
    /// does not name stay as they are.
    pub parts: StateParts,
}

/// See [`InstanceRecord::parts`].
pub type StateParts = std::collections::BTreeMap<String, Option<Value>>;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredInstance {
    pub record: InstanceRecord,
    pub version: Version,
}

/// The range of ids `parent`'s descendants have: from `<parent>::` up to
/// `<parent>:;` (the next string after every one that starts with `::`).
pub fn descendant_range(parent: &InstanceId) -> (String, String) {
    let from = format!("{parent}{}", legato_contracts::CHILD_SEPARATOR);
    let to = format!("{parent}:;");
    (from, to)
}

/// One accepted event. `seq` starts at 1 and has no gaps. `progress` is
/// what watchers were told because of it, and `position` the instance's
/// last progress position once it was applied (the last of `progress`, or
/// the row before's when it told nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub seq: u64,
    pub at: OffsetDateTime,
    pub event: JsonText,
    pub position: u64,
    pub progress: Vec<ProgressEvent>,
}

/// Where a history read starts: rows after sequence number `seq` (paging)
/// that told watchers something after progress position `position` (a
/// watcher resuming); 0 leaves either out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryFrom {
    pub seq: u64,
    pub position: u64,
}

impl HistoryFrom {
    pub fn seq(seq: u64) -> Self {
        Self { seq, position: 0 }
    }

    pub fn position(position: u64) -> Self {
        Self { seq: 0, position }
    }

    /// Whether a row belongs to the read.
    pub fn admits(&self, seq: u64, position: u64) -> bool {
        seq > self.seq && (self.position == 0 || position > self.position)
    }
}

/// A message committed with the state that caused it, published afterwards
/// by the outbox relay and then deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The message id (unique within the instance).
    pub id: String,
    pub topic: Topic,
    pub routing_key: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub instance: InstanceId,
    pub row: OutboxRow,
}

/// A durable timer; `payload` says what fires (the engine's timer key).
#[derive(Debug, Clone, PartialEq)]
pub struct TimerRow {
    pub instance: InstanceId,
    pub id: String,
    pub due_at: OffsetDateTime,
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Create the instance; conflict if it exists.
    New,
    /// Update only if the record is still at this version.
    Version(Version),
}

/// Everything one engine decision writes, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub record: InstanceRecord,
    pub expected: Expected,
    pub history: Vec<HistoryRow>,
    pub outbox: Vec<OutboxRow>,
    pub add_timers: Vec<TimerRow>,
    /// Ids of this instance's timers to delete (fired or cancelled).
    pub remove_timers: Vec<String>,
    /// Message ids the commit accepts for the first time. The store keeps
    /// them until the instance is purged and refuses, with
    /// [`StoreError::Claimed`], a commit claiming one claimed before, so a
    /// message counts once however late it is redelivered, and the record
    /// does not grow with every message.
    pub claims: Vec<String>,
}

impl Commit {
    pub fn new(record: InstanceRecord, expected: Expected) -> Self {
        Self {
            record,
            expected,
            history: Vec::new(),
            outbox: Vec::new(),
            add_timers: Vec::new(),
            remove_timers: Vec::new(),
            claims: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceQuery {
    pub status: Option<RuntimeStatus>,
    pub workflow: Option<WorkflowName>,
    pub tenant: TenantFilter,
    /// Inclusive.
    pub created_from: Option<OffsetDateTime>,
    /// Exclusive.
    pub created_to: Option<OffsetDateTime>,
    /// Page size; 0 means the default of 100.
    pub top: usize,
    pub continuation: Option<String>,
}

/// Whose instances a query sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantFilter {
    /// Every tenant's (services that sweep the whole store).
    #[default]
    All,
    /// One tenant's; `None` is the instances that have no tenant.
    Only(Option<String>),
}

impl TenantFilter {
    pub fn admits(&self, tenant: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Only(only) => only.as_deref() == tenant,
        }
    }
}

/// Newest first; `continuation` is set when more instances match.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePage {
    pub items: Vec<InstanceSummary>,
    pub continuation: Option<String>,
}

/// A registered workflow definition version.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionRecord {
    pub name: WorkflowName,
    pub version: u32,
    pub hash: String,
    pub body: Value,
    pub registered_at: OffsetDateTime,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError>;

    /// Writes record, history, outbox and timer changes atomically if the
    /// expectation holds; returns the record's new version.
    async fn commit(&self, commit: Commit) -> Result<Version, StoreError>;

    /// History rows [`HistoryFrom::admits`], in order, at most `limit`.
    async fn history(
        &self,
        id: &InstanceId,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError>;

    async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError>;

    /// Whether the store would take a commit now: what readiness reports.
    /// By default a one-row read; a store that can be readable while it
    /// refuses writes (SQLite, locked by another process or on a full
    /// disk) checks that it can write.
    async fn ping(&self) -> Result<(), StoreError> {
        self.list(&InstanceQuery {
            top: 1,
            ..InstanceQuery::default()
        })
        .await
        .map(|_| ())
    }

    /// Removes an instance with its history, outbox and timers; `false` if
    /// there was nothing to remove.
    async fn purge(&self, id: &InstanceId) -> Result<bool, StoreError>;

    /// The ids of `parent`'s descendants (its child workflow runs, theirs,
    /// and so on: every instance whose id starts with `<parent>::`), in id
    /// order, at most `limit`.
    async fn descendants(
        &self,
        parent: &InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError>;

    /// Timers due at `now` or earlier, earliest first.
    async fn due_timers(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError>;

    /// Committed messages not yet published, oldest first.
    async fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    async fn delete_outbox(&self, instance: &InstanceId, ids: &[String]) -> Result<(), StoreError>;

    /// Registers a definition version. Registering the same content again is
    /// a no-op; different content under an existing version is a conflict.
    async fn put_definition(&self, definition: &DefinitionRecord) -> Result<(), StoreError>;

    /// A version, or the latest when `version` is `None`.
    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError>;

    /// The latest version of every registered definition, by name.
    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError>;

    /// The registered versions of one definition, newest first.
    async fn definition_versions(&self, name: &WorkflowName) -> Result<Vec<u32>, StoreError>;

    /// Parks a dead letter; parking one with the same id again keeps one.
    async fn park_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// A page of parked dead letters, newest first.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError>;

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError>;

    /// Discards a parked dead letter; `false` if there was none.
    async fn remove_dead_letter(&self, id: &str) -> Result<bool, StoreError>;

    /// Creates (`Expected::New`; conflict if it exists) or replaces (only at
    /// the version given; conflict otherwise) a schedule.
    async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError>;

    async fn get_schedule(&self, name: &ScheduleName)
    -> Result<Option<StoredSchedule>, StoreError>;

    /// A tenant's schedules by name, at most [`MAX_SCHEDULES_LISTED`].
    async fn list_schedules(
        &self,
        tenant: &TenantFilter,
    ) -> Result<Vec<StoredSchedule>, StoreError>;

    /// Schedules due at `now` or earlier, earliest first, at most `limit`.
    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<StoredSchedule>, StoreError>;

    /// Removes a schedule (only at `expected` when given); `false` if there
    /// was none.
    async fn delete_schedule(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError>;

    /// Creates (`Expected::New`; conflict if it exists) or replaces (only at
    /// the version given; conflict otherwise) an agent's registration.
    async fn put_agent(
        &self,
        record: &AgentRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError>;

    async fn get_agent(&self, name: &AgentName) -> Result<Option<StoredAgent>, StoreError>;

    /// Every registered agent by name, at most [`MAX_AGENTS_LISTED`].
    async fn list_agents(&self) -> Result<Vec<StoredAgent>, StoreError>;

    /// Removes an agent's registration; `false` if there was none.
    async fn delete_agent(&self, name: &AgentName) -> Result<bool, StoreError>;

    /// Creates (`Expected::New`; conflict if it exists) or replaces (only at
    /// the version given; conflict otherwise) an entity type's registration.
    async fn put_entity_type(
        &self,
        record: &EntityTypeRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError>;

    /// The type `name` as `tenant` registered it (`None`: the shared one).
    async fn get_entity_type(
        &self,
        tenant: Option<&TenantId>,
        name: &EntityType,
    ) -> Result<Option<StoredEntityType>, StoreError>;

    /// Every registered entity type of every tenant, by tenant and name,
    /// at most [`MAX_AGENTS_LISTED`].
    async fn list_entity_types(&self) -> Result<Vec<StoredEntityType>, StoreError>;

    /// Removes an entity type's registration; `false` if there was none.
    async fn delete_entity_type(
        &self,
        tenant: Option<&TenantId>,
        name: &EntityType,
    ) -> Result<bool, StoreError>;

    /// Takes or keeps the lease `name` for `holder` until `ttl` from now,
    /// for work one replica at a time must do. True when `holder` holds it
    /// afterwards (it was free, had expired, or was already `holder`'s);
    /// false while another holder's lease runs. Two holders racing for a
    /// free lease never both win. A holder keeps it by calling again well
    /// within `ttl`.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Replaces what `replica` reports about `subject`; it is read back
    /// until `ttl` from now unless written again.
    async fn put_report(
        &self,
        subject: &str,
        replica: &str,
        body: &Value,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// Every report whose time has not run out, by subject then replica,
    /// at most [`MAX_REPORTS_LISTED`].
    async fn reports(&self) -> Result<Vec<ReplicaReport>, StoreError>;

    /// Records `entry` in the journal of `task` unless an entry of its name
    /// is there (its value is answered) or the journal has no room for it
    /// (the bounds of `legato_contracts::journal`, counted over what is
    /// recorded).
    async fn record_journal(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
        entry: &JournalEntry,
    ) -> Result<Journaled, StoreError>;

    /// The journal of `task`, by name.
    async fn journal(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
    ) -> Result<Vec<JournalEntry>, StoreError>;

    /// Removes every journal entry of the instance; how many there were.
    async fn clear_journal(&self, instance: &InstanceId) -> Result<u64, StoreError>;

    async fn load_entity(&self, key: &EntityKey) -> Result<Option<StoredEntity>, StoreError>;

    /// Writes the record, its new operations and their ids and answers
    /// atomically if the expectation holds; returns the record's new
    /// version. An operation id the entity applied before refuses the
    /// whole commit with [`StoreError::Claimed`]. Operations older than
    /// the latest [`ENTITY_OPERATIONS_KEPT`] go; their ids and answers
    /// stay as long as the entity.
    async fn commit_entity(&self, commit: EntityCommit) -> Result<Version, StoreError>;

    /// The `seq` and answer of the operation `id` the entity applied.
    async fn entity_answer(
        &self,
        key: &EntityKey,
        id: &str,
    ) -> Result<Option<(u64, EntityAnswer)>, StoreError>;

    /// The entity's latest operations kept, newest first, at most `limit`.
    async fn entity_operations(
        &self,
        key: &EntityKey,
        limit: usize,
    ) -> Result<Vec<EntityOperationRow>, StoreError>;

    async fn list_entities(&self, query: &EntityQuery) -> Result<EntityPage, StoreError>;

    /// Removes an entity with its operations, ids and answers: operations
    /// sent afterwards start a new one. `false` if there was none.
    async fn delete_entity(&self, key: &EntityKey) -> Result<bool, StoreError>;
}
