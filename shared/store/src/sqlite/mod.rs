//! The embedded SQLite adapter for `legato up` and single-node use: a file
//! (WAL mode) or in-memory database behind one connection. Calls run on the
//! blocking pool so they never stall the async runtime.

mod commit;
mod entities;
mod journal;
mod registry;
mod replicas;
mod schedules;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use legato_contracts::{InstanceId, RuntimeStatus, ScheduleName, WorkflowName};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use time::OffsetDateTime;

use crate::registry::{AGENTS, ENTITY_TYPES, entity_type_key};
use crate::stored::{corrupt, from_millis, millis, topic_from};
use crate::token::{self, ListPosition};
use crate::{
    Commit, DeadLetter, DeadLetterPage, DeadLetterQuery, DefinitionRecord, EntityAnswer,
    EntityCommit, EntityKey, EntityOperationRow, EntityPage, EntityQuery, Expected, HistoryFrom,
    HistoryRow, InstancePage, InstanceQuery, InstanceRecord, InstanceSummary, JsonText,
    OutboxEntry, OutboxRow, ScheduleRecord, StateParts, Store, StoreError, StoredEntity,
    StoredInstance, StoredSchedule, TenantFilter, TimerRow, Version,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    tenant TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_created ON instances (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS instance_parts (
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (instance_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    PRIMARY KEY (instance_id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (instance_id, id)
);
CREATE TABLE IF NOT EXISTS timers (
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (instance_id, id)
);
CREATE INDEX IF NOT EXISTS timers_by_due ON timers (due_at);
CREATE TABLE IF NOT EXISTS claims (
    instance_id TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (instance_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    subject TEXT NOT NULL,
    replica TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (subject, replica)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    sort_key TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    message_id TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    instance_id TEXT,
    type TEXT,
    tenant TEXT,
    body BLOB NOT NULL,
    parked_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (sort_key);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    next_due INTEGER,
    body TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_by_due ON schedules (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entity_types (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    instance_id TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, task, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS definitions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
"#;

/// When a commit is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// WAL with `synchronous = NORMAL`: a commit survives the process
    /// crashing; the last commits before a power loss or OS crash may be
    /// lost (the database stays consistent).
    #[default]
    Normal,
    /// WAL with `synchronous = FULL`: every commit is fsynced before it is
    /// acknowledged, so it survives power loss too, at the cost of a disk
    /// flush per commit.
    Fsync,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Fsync => "fsync",
        }
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    /// The connection that writes (and, for an in-memory database, reads).
    conn: Arc<Mutex<Connection>>,
    /// Connections that only read a database file: WAL lets them read
    /// while a group transaction is being written, so a load never waits
    /// behind a commit. Empty for an in-memory database.
    readers: Arc<Vec<Mutex<Connection>>>,
    /// Which reader the next read tries first.
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when a write found the database locked or unwritable: until
    /// then writes are refused at once instead of each waiting out the
    /// busy timeout while holding the writer (through which an in-memory
    /// database also reads).
    writes_refused_until: Arc<Mutex<Option<Instant>>>,
    /// Commits waiting for the next group transaction (see [`commit`]).
    queue: Arc<Mutex<commit::CommitQueue>>,
    /// Write transactions of commits so far (a group is one).
    transactions: Arc<std::sync::atomic::AtomicU64>,
}

/// How long another process may hold the write lock before a write gives
/// up (a checkpoint or a backup step takes far less).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writes are refused after one failed; then one tries again.
const WRITE_PAUSE: Duration = Duration::from_secs(1);
/// Read connections of a database file (the machine's cores are what
/// bounds reads running at once).
const READERS: usize = 2;

impl SqliteStore {
    /// Opens (creating if needed) a database file, `Durability::Normal`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Normal)
    }

    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path.as_ref()).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Fsync => "FULL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(unavailable)?;
        let mut store = Self::init(conn)?;
        // Opened once the schema exists (the writer made it).
        let readers = (0..READERS)
            .map(|_| {
                let reader = Connection::open(path.as_ref()).map_err(unavailable)?;
                reader.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
                reader.set_prepared_statement_cache_capacity(64);
                reader
                    .pragma_update(None, "query_only", true)
                    .map_err(unavailable)?;
                Ok(Mutex::new(reader))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        store.readers = Arc::new(readers);
        Ok(store)
    }

    /// The `synchronous` level the connection runs with (1 NORMAL, 2 FULL).
    pub async fn synchronous(&self) -> Result<i64, StoreError> {
        self.on_writer(|conn| {
            conn.query_row("PRAGMA synchronous", [], |row| row.get(0))
                .map_err(unavailable)
        })
        .await
    }

    /// Transactions that wrote commits so far: fewer than the commits when
    /// commits arrive together (group commit).
    pub fn commit_transactions(&self) -> u64 {
        self.transactions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A private database that lives as long as this value.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(unavailable)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        // Room for every statement the store runs, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        conn.execute_batch(entities::SCHEMA).map_err(unavailable)?;
        add_progress_columns(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::default(),
            next_reader: Arc::default(),
            writes_refused_until: Arc::default(),
            queue: Arc::default(),
            transactions: Arc::default(),
        })
    }

    /// A call that writes, through the write gate (see [`through_gate`]).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let gate = self.writes_refused_until.clone();
        self.on_writer(move |conn| {
            through_gate(
                &gate,
                || f(conn),
                |result| matches!(result, Err(StoreError::Unavailable(_))),
            )?
        })
        .await
    }

    async fn on_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Unavailable("connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// A call that only reads: on a free reader if the database is a file,
    /// else on the one connection.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.readers.is_empty() {
            return self.on_writer(f).await;
        }
        let readers = self.readers.clone();
        let first = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let n = readers.len();
            let free = (0..n).find_map(|i| readers[(first + i) % n].try_lock().ok());
            let mut guard = match free {
                Some(guard) => guard,
                None => readers[first % n]
                    .lock()
                    .map_err(|_| StoreError::Unavailable("connection lock poisoned".into()))?,
            };
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// Databases written before history rows carried progress get the columns
/// (their old rows read as having told nothing).
fn add_progress_columns(conn: &Connection) -> Result<(), StoreError> {
    let has_position = conn
        .prepare("SELECT 1 FROM pragma_table_info('history') WHERE name = 'position'")
        .and_then(|mut stmt| stmt.exists([]))
        .map_err(unavailable)?;
    if !has_position {
        conn.execute_batch(
            "ALTER TABLE history ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE history ADD COLUMN progress TEXT;",
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(err, _) if err.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Runs a write unless writes are paused after a failed one (then the
/// pause's error), and pauses them when `failed` says the write failed for
/// want of the database. Checked once the connection is the caller's, so
/// calls queued behind a failing one do not each wait out the busy timeout
/// too.
fn through_gate<T>(
    gate: &Mutex<Option<Instant>>,
    write: impl FnOnce() -> T,
    failed: impl FnOnce(&T) -> bool,
) -> Result<T, StoreError> {
    let mut refused_until = gate.lock().unwrap_or_else(|p| p.into_inner());
    if refused_until.is_some_and(|until| Instant::now() < until) {
        return Err(StoreError::Unavailable(
            "the database refused the last write (locked by another process, or not \
             writable); writes resume when it takes one"
                .into(),
        ));
    }
    let outcome = write();
    *refused_until = failed(&outcome).then(|| Instant::now() + WRITE_PAUSE);
    Ok(outcome)
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::TooLarge(what.into()))
}

fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored JSON: {e}")))
}

const SUMMARY_COLUMNS: &str =
    "id, workflow, workflow_version, status, tenant, created_at, updated_at";

fn summary(row: &Row<'_>) -> Result<InstanceSummary, StoreError> {
    let get = |i: usize| -> Result<String, StoreError> { row.get(i).map_err(unavailable) };
    Ok(InstanceSummary {
        id: InstanceId::parse(get(0)?).map_err(|e| corrupt("instance id", e))?,
        workflow: WorkflowName::parse(get(1)?).map_err(|e| corrupt("workflow", e))?,
        workflow_version: row.get(2).map_err(unavailable)?,
        status: RuntimeStatus::parse(&get(3)?)
            .ok_or_else(|| StoreError::Corrupt("status".into()))?,
        tenant: row.get(4).map_err(unavailable)?,
        created_at: from_millis(row.get(5).map_err(unavailable)?)?,
        updated_at: from_millis(row.get(6).map_err(unavailable)?)?,
    })
}

const DEAD_LETTER_COLUMNS: &str = "id, topic, grp, message_id, routing_key, reason, delivery_count, \
     instance_id, type, tenant, body, parked_at";

fn dead_letter(row: &Row<'_>) -> Result<DeadLetter, StoreError> {
    let topic: String = row.get(1).map_err(unavailable)?;
    Ok(DeadLetter {
        id: row.get(0).map_err(unavailable)?,
        topic: topic_from(&topic)?,
        group: row.get(2).map_err(unavailable)?,
        message_id: row.get(3).map_err(unavailable)?,
        routing_key: row.get(4).map_err(unavailable)?,
        reason: row.get(5).map_err(unavailable)?,
        delivery_count: row.get(6).map_err(unavailable)?,
        instance: row.get(7).map_err(unavailable)?,
        type_name: row.get(8).map_err(unavailable)?,
        tenant: row.get(9).map_err(unavailable)?,
        body: row.get(10).map_err(unavailable)?,
        parked_at: from_millis(row.get(11).map_err(unavailable)?)?,
    })
}

fn definition(row: &Row<'_>) -> Result<DefinitionRecord, StoreError> {
    let name: String = row.get(0).map_err(unavailable)?;
    let body: String = row.get(3).map_err(unavailable)?;
    Ok(DefinitionRecord {
        name: WorkflowName::parse(name).map_err(|e| corrupt("definition name", e))?,
        version: row.get(1).map_err(unavailable)?,
        hash: row.get(2).map_err(unavailable)?,
        body: parse_json(&body)?,
        registered_at: from_millis(row.get(4).map_err(unavailable)?)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let sql =
                format!("SELECT {SUMMARY_COLUMNS}, version, state FROM instances WHERE id = ?1");
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let mut rows = stmt.query(params![id]).map_err(unavailable)?;
            let Some(row) = rows.next().map_err(unavailable)? else {
                return Ok(None);
            };
            let version: i64 = row.get(7).map_err(unavailable)?;
            let state: String = row.get(8).map_err(unavailable)?;
            let summary = summary(row)?;
            drop(rows);
            let mut parts = StateParts::new();
            let mut stmt = conn
                .prepare_cached("SELECT name, body FROM instance_parts WHERE instance_id = ?1")
                .map_err(unavailable)?;
            let mut rows = stmt.query(params![id]).map_err(unavailable)?;
            while let Some(row) = rows.next().map_err(unavailable)? {
                let body: String = row.get(1).map_err(unavailable)?;
                parts.insert(row.get(0).map_err(unavailable)?, Some(parse_json(&body)?));
            }
            Ok(Some(StoredInstance {
                record: InstanceRecord {
                    summary,
                    state: JsonText::parse(state)?,
                    parts,
                },
                version: Version(version.to_string()),
            }))
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<Version, StoreError> {
        commit::group_commit(self, commit)
            .await
            .map(crate::committed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            // Takes the write lock and lets it go: fails while another
            // process holds it, or the database cannot be written.
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                .map_err(unavailable)
        })
        .await
    }

    async fn history(
        &self,
        id: &InstanceId,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let id = id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after_seq = i64::try_from(from.seq).unwrap_or(i64::MAX);
        let after_position = i64::try_from(from.position).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, event, position, progress FROM history \
                     WHERE instance_id = ?1 AND seq > ?2 AND (?3 = 0 OR position > ?3) \
                     ORDER BY seq LIMIT ?4",
                )
                .map_err(unavailable)?;
            let mut rows = stmt
                .query(params![id, after_seq, after_position, limit])
                .map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let count = |i: usize, what: &str| -> Result<u64, StoreError> {
                    let n: i64 = row.get(i).map_err(unavailable)?;
                    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} {n}")))
                };
                let event: String = row.get(2).map_err(unavailable)?;
                let progress: Option<String> = row.get(4).map_err(unavailable)?;
                out.push(HistoryRow {
                    seq: count(0, "history sequence")?,
                    at: from_millis(row.get(1).map_err(unavailable)?)?,
                    event: JsonText::parse(event)?,
                    position: count(3, "progress position")?,
                    progress: match progress {
                        Some(text) => serde_json::from_str(&text)
                            .map_err(|e| StoreError::Corrupt(format!("stored progress: {e}")))?,
                        None => Vec::new(),
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let query = query.clone();
        let position = query
            .continuation
            .as_deref()
            .map(token::decode)
            .transpose()?;
        self.with(move |conn| {
            let top = if query.top == 0 { 100 } else { query.top };
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM instances
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow = ?2) AND (?3 = 0 OR tenant IS ?4)
                   AND (?5 IS NULL OR created_at >= ?5) AND (?6 IS NULL OR created_at < ?6)
                   AND (?7 IS NULL OR created_at < ?7 OR (created_at = ?7 AND id < ?8))
                 ORDER BY created_at DESC, id DESC LIMIT ?9"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let mut rows = stmt
                .query(params![
                    query.status.map(RuntimeStatus::as_str),
                    query.workflow.as_ref().map(WorkflowName::as_str),
                    matches!(query.tenant, TenantFilter::Only(_)),
                    match &query.tenant {
                        TenantFilter::Only(tenant) => tenant.clone(),
                        TenantFilter::All => None,
                    },
                    query.created_from.map(millis),
                    query.created_to.map(millis),
                    position.as_ref().map(|p| p.c),
                    position.as_ref().map(|p| p.i.clone()),
                    i64::try_from(top + 1).unwrap_or(i64::MAX),
                ])
                .map_err(unavailable)?;
            let mut items = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                items.push(summary(row)?);
            }
            let continuation = if items.len() > top {
                items.truncate(top);
                items.last().map(|last| token::encode(&ListPosition { c: millis(last.created_at), i: last.id.to_string() }))
            } else {
                None
            };
            Ok(InstancePage { items, continuation })
        })
        .await
    }

    async fn purge(&self, id: &InstanceId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let removed = tx
                .execute("DELETE FROM instances WHERE id = ?1", params![id])
                .map_err(unavailable)?;
            for table in [
                "instance_parts",
                "history",
                "outbox",
                "timers",
                "claims",
                "journal",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE instance_id = ?1"),
                    params![id],
                )
                .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn descendants(
        &self,
        parent: &InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        let (from, to) = crate::descendant_range(parent);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM instances WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(unavailable)?;
            let ids = stmt
                .query_map(params![from, to, limit], |row| row.get::<_, String>(0))
                .map_err(unavailable)?;
            ids.map(|id| {
                let id = id.map_err(unavailable)?;
                InstanceId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
        })
        .await
    }

    async fn due_timers(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT instance_id, id, due_at, payload FROM timers WHERE due_at <= ?1 ORDER BY due_at, instance_id, id LIMIT ?2")
                .map_err(unavailable)?;
            let mut rows = stmt.query(params![millis(now), limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let instance: String = row.get(0).map_err(unavailable)?;
                let payload: String = row.get(3).map_err(unavailable)?;
                out.push(TimerRow {
                    instance: InstanceId::parse(instance).map_err(|e| corrupt("timer instance", e))?,
                    id: row.get(1).map_err(unavailable)?,
                    due_at: from_millis(row.get(2).map_err(unavailable)?)?,
                    payload: parse_json(&payload)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT instance_id, id, topic, routing_key, body FROM outbox ORDER BY position LIMIT ?1")
                .map_err(unavailable)?;
            let mut rows = stmt.query(params![limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let instance: String = row.get(0).map_err(unavailable)?;
                let topic: String = row.get(2).map_err(unavailable)?;
                out.push(OutboxEntry {
                    instance: InstanceId::parse(instance).map_err(|e| corrupt("outbox instance", e))?,
                    row: OutboxRow {
                        id: row.get(1).map_err(unavailable)?,
                        topic: topic_from(&topic)?,
                        routing_key: row.get(3).map_err(unavailable)?,
                        body: row.get(4).map_err(unavailable)?,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delete_outbox(&self, instance: &InstanceId, ids: &[String]) -> Result<(), StoreError> {
        commit::grouped_outbox_delete(self, instance.to_string(), ids.to_vec()).await
    }

    async fn park_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let letter = letter.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO dead_letters (id, sort_key, topic, grp, message_id, routing_key, \
                 reason, delivery_count, instance_id, type, tenant, body, parked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    letter.id,
                    letter.sort_key(),
                    letter.topic.as_str(),
                    letter.group,
                    letter.message_id,
                    letter.routing_key,
                    letter.reason,
                    letter.delivery_count,
                    letter.instance,
                    letter.type_name,
                    letter.tenant,
                    letter.body,
                    millis(letter.parked_at),
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        let after = query.after()?.unwrap_or("").to_owned();
        let size = query.page_size();
        let query = query.clone();
        self.with(move |conn| {
            let (tenant_any, tenant) = match &query.tenant {
                TenantFilter::All => (true, None),
                TenantFilter::Only(tenant) => (false, tenant.clone()),
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE sort_key > ?1 \
                     AND (?2 IS NULL OR topic = ?2) AND (?3 IS NULL OR grp = ?3) \
                     AND (?4 OR tenant IS ?5) ORDER BY sort_key LIMIT ?6"
                ))
                .map_err(unavailable)?;
            let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
            let mut rows = stmt
                .query(params![
                    after,
                    query.topic.map(|t| t.as_str()),
                    query.group,
                    tenant_any,
                    tenant,
                    limit
                ])
                .map_err(unavailable)?;
            let mut letters = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                letters.push(dead_letter(row)?);
            }
            Ok(DeadLetterPage::of(letters, size))
        })
        .await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?1"),
                params![id],
                |row| Ok(dead_letter(row)),
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM dead_letters WHERE id = ?1", params![id])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }

    async fn load_entity(&self, key: &EntityKey) -> Result<Option<StoredEntity>, StoreError> {
        self.entity_row(key).await
    }

    async fn commit_entity(&self, commit: EntityCommit) -> Result<Version, StoreError> {
        self.commit_entity_rows(commit).await
    }

    async fn entity_answer(
        &self,
        key: &EntityKey,
        id: &str,
    ) -> Result<Option<(u64, EntityAnswer)>, StoreError> {
        self.entity_answer_row(key, id).await
    }

    async fn entity_operations(
        &self,
        key: &EntityKey,
        limit: usize,
    ) -> Result<Vec<EntityOperationRow>, StoreError> {
        self.entity_operation_rows(key, limit).await
    }

    async fn list_entities(&self, query: &EntityQuery) -> Result<EntityPage, StoreError> {
        self.entity_rows(query).await
    }

    async fn delete_entity(&self, key: &EntityKey) -> Result<bool, StoreError> {
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
        ttl: std::time::Duration,
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

    async fn put_definition(&self, d: &DefinitionRecord) -> Result<(), StoreError> {
        let d = d.clone();
        self.write(move |conn| {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT hash FROM definitions WHERE name = ?1 AND version = ?2",
                    params![d.name.as_str(), d.version],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            match existing {
                Some(hash) if hash == d.hash => Ok(()),
                Some(_) => Err(StoreError::Conflict(format!(
                    "{} version {} is registered with different content; register a new version",
                    d.name, d.version
                ))),
                None => conn
                    .execute(
                        "INSERT INTO definitions (name, version, hash, body, registered_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![d.name.as_str(), d.version, d.hash, json_text(&d.body)?, millis(d.registered_at)],
                    )
                    .map(|_| ())
                    .map_err(|e| if is_constraint(&e) { StoreError::Conflict("registered concurrently".into()) } else { unavailable(e) }),
            }
        })
        .await
    }

    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        let name = name.to_string();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, version, hash, body, registered_at FROM definitions
                     WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
                )
                .map_err(unavailable)?;
            let mut rows = stmt.query(params![name, version]).map_err(unavailable)?;
            match rows.next().map_err(unavailable)? {
                Some(row) => Ok(Some(definition(row)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn definition_versions(&self, name: &WorkflowName) -> Result<Vec<u32>, StoreError> {
        let name = name.to_string();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version FROM definitions WHERE name = ?1 ORDER BY version DESC",
                )
                .map_err(unavailable)?;
            let versions = stmt
                .query_map(params![name], |row| row.get::<_, u32>(0))
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(versions)
        })
        .await
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT d.name, d.version, d.hash, d.body, d.registered_at FROM definitions d
                     WHERE d.version = (SELECT MAX(version) FROM definitions WHERE name = d.name) ORDER BY d.name",
                )
                .map_err(unavailable)?;
            let mut rows = stmt.query([]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                out.push(definition(row)?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod conformance_tests {
    mod in_memory {
        crate::store_conformance_tests!(crate::SqliteStore::in_memory().unwrap());
    }

    mod file {
        crate::store_conformance_tests!({
            let dir = std::env::temp_dir()
                .join(format!("legato-store-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            crate::SqliteStore::open(dir.join("legato.db")).unwrap()
        });
    }

    /// Commits that arrive while the connection is busy are written in one
    /// transaction, and a member that conflicts fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The connection is held on purpose while the commits queue up.
    #[allow(clippy::await_holding_lock)]
    async fn commits_arriving_together_share_a_transaction_and_fail_alone() {
        use crate::{Commit, Expected, OutboxRow, Store, StoreError};
        use legato_contracts::{RuntimeStatus, Topic};
        let store = std::sync::Arc::new(crate::SqliteStore::in_memory().unwrap());
        let taken = crate::conformance::record("taken", RuntimeStatus::Running);
        let mut first = Commit::new(taken.clone(), Expected::New);
        first.outbox.push(OutboxRow {
            id: "published".into(),
            topic: Topic::AgentTasks,
            routing_key: "echo".into(),
            body: b"{}".to_vec(),
        });
        store.commit(first).await.unwrap();
        let taken_id = taken.summary.id.clone();
        let before = store.commit_transactions();
        let records: Vec<_> = (0..20)
            .map(|_| crate::conformance::record("together", RuntimeStatus::Running))
            .collect();
        let busy = store.conn.lock().unwrap();
        let mut commits = Vec::new();
        for record in records.iter().cloned().chain([taken]) {
            let store = store.clone();
            commits.push(tokio::spawn(async move {
                store
                    .commit(Commit::new(record, Expected::New))
                    .await
                    .map(|_| ())
            }));
        }
        // A relay's delete of published rows joins the same transaction.
        let taken_id = taken_id.clone();
        commits.push(tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .delete_outbox(&taken_id, &["published".to_owned()])
                    .await
            }
        }));
        for _ in 0..500 {
            if store.queue.lock().unwrap().waiting() == 22 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.queue.lock().unwrap().waiting(), 22);
        drop(busy);
        let mut conflicts = 0;
        for commit in commits {
            match commit.await.unwrap() {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(conflicts, 1);
        assert_eq!(store.commit_transactions() - before, 1);
        assert!(store.pending_outbox(10).await.unwrap().is_empty());
        for record in &records {
            let loaded = store.load(&record.summary.id).await.unwrap().unwrap();
            assert_eq!(&loaded.record, record);
        }
    }

    #[tokio::test]
    async fn durability_sets_how_commits_reach_the_disk() {
        use crate::Durability;
        let dir = std::env::temp_dir().join(format!(
            "legato-durability-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let normal = crate::SqliteStore::open_with(dir.join("n.db"), Durability::Normal).unwrap();
        assert_eq!(normal.synchronous().await.unwrap(), 1, "NORMAL");
        let fsync = crate::SqliteStore::open_with(dir.join("f.db"), Durability::Fsync).unwrap();
        assert_eq!(fsync.synchronous().await.unwrap(), 2, "FULL");
        drop((normal, fsync));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn state_survives_reopening_the_file() {
        use crate::Store;
        let dir =
            std::env::temp_dir().join(format!("legato-reopen-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("legato.db");
        let record = crate::conformance::record("reopen", legato_contracts::RuntimeStatus::Running);
        let id = record.summary.id.clone();
        {
            let store = crate::SqliteStore::open(&path).unwrap();
            store
                .commit(crate::Commit::new(record.clone(), crate::Expected::New))
                .await
                .unwrap();
        }
        let store = crate::SqliteStore::open(&path).unwrap();
        assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
