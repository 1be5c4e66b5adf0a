//! Group commit: commits (and the outbox deletes that follow them) that
//! arrive while one transaction is being written wait and are then written
//! together in the next, each inside a savepoint of its own. A member that fails (a version conflict) rolls
//! back alone and the others land; each caller is answered only once the
//! transaction holding its commit is durable, and if that transaction
//! fails every member is told so and retries on its own. One transaction
//! (one WAL append, one fsync in `fsync` durability) then serves many
//! commits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::{SqliteStore, is_constraint, json_text, millis, through_gate, to_i64, unavailable};
use crate::{Commit, Expected, StoreError, Version};

/// The most commits one transaction takes; more wait for the next, so a
/// read is never kept from the connection for long.
const MAX_GROUP: usize = 128;

/// A write the group writer takes: an instance's commit, or the outbox
/// rows a relay published (an event would otherwise cost a transaction for
/// its commit and another for its delete).
// Moved once into the queue and out again: boxing the commit would only
// add an allocation per commit.
#[allow(clippy::large_enum_variant)]
enum Write {
    Commit(Rendered),
    DeleteOutbox { instance: String, ids: Vec<String> },
}

/// A commit with its JSON already turned into text by the caller, so the
/// one writer thread, which every commit waits for, only runs statements.
struct Rendered {
    commit: Commit,
    /// Text of each part, in `commit.record.parts` order (`None`: delete).
    parts: Vec<Option<String>>,
    /// Progress text of each history row, in order.
    history: Vec<Option<String>>,
    /// Payload text of each added timer, in order.
    timers: Vec<String>,
}

impl Rendered {
    fn of(commit: Commit) -> Result<Self, StoreError> {
        let parts = commit
            .record
            .parts
            .values()
            .map(|part| part.as_ref().map(json_text).transpose())
            .collect::<Result<_, _>>()?;
        let history = commit
            .history
            .iter()
            .map(|h| {
                (!h.progress.is_empty())
                    .then(|| json_text(&h.progress))
                    .transpose()
            })
            .collect::<Result<_, StoreError>>()?;
        let timers = commit
            .add_timers
            .iter()
            .map(|t| json_text(&t.payload))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            commit,
            parts,
            history,
            timers,
        })
    }
}

/// A commit's new version; `None` for a delete.
type Answer = oneshot::Sender<Result<Option<Version>, StoreError>>;

/// Writes waiting for a transaction, and whether one is being written.
#[derive(Default)]
pub(super) struct CommitQueue {
    waiting: Vec<(Write, Answer)>,
    writing: bool,
}

impl CommitQueue {
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

pub(super) async fn group_commit(
    store: &SqliteStore,
    commit: Commit,
) -> Result<Version, StoreError> {
    enqueue(store, Write::Commit(Rendered::of(commit)?))
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt("the commit writer answered a commit without a version".into())
        })
}

pub(super) async fn grouped_outbox_delete(
    store: &SqliteStore,
    instance: String,
    ids: Vec<String>,
) -> Result<(), StoreError> {
    enqueue(store, Write::DeleteOutbox { instance, ids })
        .await
        .map(|_| ())
}

async fn enqueue(store: &SqliteStore, write: Write) -> Result<Option<Version>, StoreError> {
    let (answer, answered) = oneshot::channel();
    let lead = {
        let mut queue = store.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.waiting.push((write, answer));
        !std::mem::replace(&mut queue.writing, true)
    };
    if lead {
        // Detached: the writer goes on (and answers everyone) even if the
        // caller that started it stops waiting.
        let (conn, queue, gate, transactions) = (
            store.conn.clone(),
            store.queue.clone(),
            store.writes_refused_until.clone(),
            store.transactions.clone(),
        );
        tokio::task::spawn_blocking(move || write_groups(&conn, &queue, &gate, &transactions));
    }
    answered
        .await
        .map_err(|_| StoreError::Unavailable("the commit writer stopped".into()))?
}

/// Writes groups until no commit is waiting. The group is taken once the
/// connection is the writer's, so the commits that arrived while it waited
/// for it go together.
fn write_groups(
    conn: &Mutex<Connection>,
    queue: &Mutex<CommitQueue>,
    gate: &Mutex<Option<Instant>>,
    transactions: &AtomicU64,
) {
    // Should this thread die, the next commit must start a writer again
    // rather than wait behind one that is gone.
    let mut stopped = StopWriting { queue, armed: true };
    loop {
        let mut connection = conn.lock();
        let group: Vec<(Write, Answer)> = {
            let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.waiting.is_empty() {
                // Under the same lock as the check, so a commit queued
                // after it finds no writer and starts one.
                queue.writing = false;
                stopped.armed = false;
                return;
            }
            let take = queue.waiting.len().min(MAX_GROUP);
            queue.waiting.drain(..take).collect()
        };
        let (writes, answers): (Vec<Write>, Vec<Answer>) = group.into_iter().unzip();
        let results = match connection.as_deref_mut() {
            Ok(connection) => {
                transactions.fetch_add(1, Ordering::Relaxed);
                write_group(connection, &writes, gate)
            }
            Err(_) => every_one_fails(
                writes.len(),
                &StoreError::Unavailable("connection lock poisoned".into()),
            ),
        };
        drop(connection);
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
    }
}

/// Marks the queue as having no writer if the writer stops while armed (a
/// panic).
struct StopWriting<'a> {
    queue: &'a Mutex<CommitQueue>,
    armed: bool,
}

impl Drop for StopWriting<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.lock().unwrap_or_else(|p| p.into_inner()).writing = false;
        }
    }
}

/// One transaction for the group, through the write gate (see
/// `through_gate`).
fn write_group(
    conn: &mut Connection,
    writes: &[Write],
    gate: &Mutex<Option<Instant>>,
) -> Vec<Result<Option<Version>, StoreError>> {
    let written = through_gate(
        gate,
        || transaction(conn, writes),
        |results| {
            results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Unavailable(_))))
        },
    );
    written.unwrap_or_else(|paused| every_one_fails(writes.len(), &paused))
}

/// The same failure for every member of a group.
fn every_one_fails(members: usize, error: &StoreError) -> Vec<Result<Option<Version>, StoreError>> {
    let text = match error {
        StoreError::Unavailable(text) => text.clone(),
        other => other.to_string(),
    };
    (0..members)
        .map(|_| Err(StoreError::Unavailable(text.clone())))
        .collect()
}

fn transaction(
    conn: &mut Connection,
    writes: &[Write],
) -> Vec<Result<Option<Version>, StoreError>> {
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => return every_one_fails(writes.len(), &unavailable(e)),
    };
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        let member = match tx.savepoint() {
            // Dropped without commit, a savepoint rolls back: a member
            // that failed leaves nothing behind.
            Ok(savepoint) => {
                let applied = match write {
                    Write::Commit(rendered) => apply(&savepoint, rendered).map(Some),
                    Write::DeleteOutbox { instance, ids } => {
                        delete_outbox(&savepoint, instance, ids).map(|()| None)
                    }
                };
                match applied {
                    Ok(done) => savepoint.commit().map(|()| done).map_err(unavailable),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(unavailable(e)),
        };
        results.push(member);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => every_one_fails(writes.len(), &unavailable(e)),
    }
}

fn delete_outbox(conn: &Connection, instance: &str, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        execute(
            conn,
            "DELETE FROM outbox WHERE instance_id = ?1 AND id = ?2",
            params![instance, id],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}

/// One commit's writes, inside the group's transaction.
fn apply(conn: &Connection, rendered: &Rendered) -> Result<Version, StoreError> {
    let commit = &rendered.commit;
    let s = &commit.record.summary;
    let state = commit.record.state.as_str();
    // Before the version check: a message applied before is refused as
    // such even by a commit that also lost a race.
    for claim in &commit.claims {
        match execute(
            conn,
            "INSERT INTO claims (instance_id, id) VALUES (?1, ?2)",
            params![s.id.as_str(), claim],
        ) {
            Ok(_) => {}
            Err(e) if is_constraint(&e) => return Err(StoreError::Claimed(claim.clone())),
            Err(e) => return Err(unavailable(e)),
        }
    }
    let new_version = match &commit.expected {
        Expected::New => {
            let inserted = execute(
                conn,
                "INSERT INTO instances (id, workflow, workflow_version, status, tenant, created_at, updated_at, version, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8)",
                params![s.id.as_str(), s.workflow.as_str(), s.workflow_version, s.status.as_str(), s.tenant,
                        millis(s.created_at), millis(s.updated_at), state],
            );
            match inserted {
                Ok(_) => 1,
                Err(e) if is_constraint(&e) => {
                    return Err(StoreError::Conflict(format!("instance {} exists", s.id)));
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Expected::Version(Version(v)) => {
            let expected: i64 = v
                .parse()
                .map_err(|_| StoreError::Conflict(format!("version {v:?} is not ours")))?;
            let updated = execute(
                    conn,
                    "UPDATE instances SET workflow = ?2, workflow_version = ?3, status = ?4, tenant = ?5, created_at = ?6,
                         updated_at = ?7, state = ?8, version = version + 1
                     WHERE id = ?1 AND version = ?9",
                    params![s.id.as_str(), s.workflow.as_str(), s.workflow_version, s.status.as_str(), s.tenant,
                            millis(s.created_at), millis(s.updated_at), state, expected],
                )
                .map_err(unavailable)?;
            if updated == 0 {
                return Err(StoreError::Conflict(format!(
                    "instance {} is not at version {v}",
                    s.id
                )));
            }
            expected + 1
        }
    };
    let id = s.id.as_str();
    for (name, part) in commit.record.parts.keys().zip(&rendered.parts) {
        match part {
            Some(body) => execute(
                conn,
                "INSERT OR REPLACE INTO instance_parts (instance_id, name, body) VALUES (?1, ?2, ?3)",
                params![id, name, body],
            ),
            None => execute(
                conn,
                "DELETE FROM instance_parts WHERE instance_id = ?1 AND name = ?2",
                params![id, name],
            ),
        }
        .map_err(unavailable)?;
    }
    for (h, progress) in commit.history.iter().zip(&rendered.history) {
        let inserted = execute(
            conn,
            "INSERT INTO history (instance_id, seq, at, event, position, progress) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                to_i64(h.seq, "history sequence")?,
                millis(h.at),
                h.event.as_str(),
                to_i64(h.position, "progress position")?,
                progress
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_constraint(&e) => {
                return Err(StoreError::Conflict(format!(
                    "history row {} exists",
                    h.seq
                )));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    for o in &commit.outbox {
        execute(
                conn,
            "INSERT INTO outbox (instance_id, id, topic, routing_key, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, o.id, o.topic.as_str(), o.routing_key, o.body],
        )
        .map_err(|e| if is_constraint(&e) { StoreError::Conflict(format!("outbox row {} exists", o.id)) } else { unavailable(e) })?;
    }
    for t in &commit.remove_timers {
        execute(
            conn,
            "DELETE FROM timers WHERE instance_id = ?1 AND id = ?2",
            params![id, t],
        )
        .map_err(unavailable)?;
    }
    for (t, payload) in commit.add_timers.iter().zip(&rendered.timers) {
        execute(
                conn,
            "INSERT OR REPLACE INTO timers (instance_id, id, due_at, payload) VALUES (?1, ?2, ?3, ?4)",
            params![id, t.id, millis(t.due_at), payload],
        )
        .map_err(unavailable)?;
    }
    Ok(Version(new_version.to_string()))
}

/// Runs a statement kept prepared on the connection: a commit's few
/// statements are parsed once, not on every commit.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}
