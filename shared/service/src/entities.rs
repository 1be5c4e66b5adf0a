//! Applying operations to a durable entity: a batch on the entity as
//! stored, committed in one write guarded by its version, each operation
//! id applied once (one applied before is answered as the store recorded
//! it). Whoever holds operations applies them here: the orchestrator (the
//! entity's mailbox, in arrival order), and the gateway and the Rust agent
//! runtime (an agent's own calls, one at a time). Racing writers lose the
//! version check, reload and apply on top, so an entity changes one batch
//! at a time whoever writes it.

use std::time::Duration;

use legato_contracts::journal::JournalKey;
use legato_contracts::{Caller, EntityOperation, EntityRef, InstanceId, Operation, TaskKey};
use legato_engine::entities::{self, LockState, Reply};
use legato_store::{
    EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityRecord, Expected, Store,
    StoreError,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Most operations one commit takes. With each operation's claim and row
/// and the row falling out of the kept window, well inside Table
/// Storage's 100 operations per transaction.
pub const MAX_BATCH: usize = 16;
/// Most bytes of operations and answers one commit writes (each answer is
/// kept twice), well inside Table Storage's 4 MiB per transaction.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Commits lost to other writers before the batch is given up (and its
/// messages tried again later).
const MAX_ROUNDS: usize = 20;

/// An operation to apply, whoever sent it.
#[derive(Debug, Clone)]
pub struct EntityOp {
    pub operation: EntityOperation,
    /// The instance it came from: a message's subject, the task whose
    /// agent called, or a holder released on its behalf.
    pub sender: InstanceId,
    pub at: OffsetDateTime,
}

/// How an operation came out, as its caller and the waiters it let in
/// are told.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reply: Reply,
    pub granted: Vec<Caller>,
}

impl Outcome {
    /// The answer now, if there is one (a waiting acquisition has none).
    pub fn answer(&self) -> Option<&EntityAnswer> {
        match &self.reply {
            Reply::Now(answer) => Some(answer),
            Reply::Later => None,
        }
    }
}

/// What a batch came to.
pub struct Batch {
    /// One per operation, in order.
    pub outcomes: Vec<Outcome>,
    /// Whether the lock's holders are to be checked against their
    /// instances: someone waits, or a locking operation came again (its
    /// first answer may not have reached its caller).
    pub reconcile: bool,
}

/// Applies `ops` to the entity, as many commits as they take.
pub async fn apply_batch(
    store: &dyn Store,
    key: &EntityKey,
    ops: &[&EntityOp],
) -> Result<Batch, StoreError> {
    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    let mut reconcile = false;
    for round in 0..MAX_ROUNDS {
        let open: Vec<usize> = (0..ops.len()).filter(|&i| outcomes[i].is_none()).collect();
        if open.is_empty() {
            break;
        }
        let planned = plan(store, key, ops, &open).await?;
        match store.commit_entity(planned.commit).await {
            Ok(_) => {
                for (i, outcome) in planned.outcomes {
                    outcomes[i] = Some(outcome);
                }
                reconcile |= !planned.lock.waiting.is_empty();
            }
            Err(StoreError::Claimed(id)) => {
                let Some((_, answer)) = store.entity_answer(key, &id).await? else {
                    return Err(StoreError::Unavailable(format!(
                        "operation {id} on entity {key} was applied, and its answer is gone"
                    )));
                };
                let lock = lock_of(store, key).await?;
                for &i in &open {
                    let operation = &ops[i].operation;
                    if operation.id == id {
                        reconcile |= operation.operation.is_locking();
                        outcomes[i] = Some(again(&operation.operation, &answer, &lock));
                    }
                }
            }
            Err(StoreError::Conflict(_)) => {
                // Another writer's batch landed first: read it and apply on
                // top, after a moment that grows.
                let pause = 1 + spread_below(2u64.pow(round.min(6) as u32));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| {
                StoreError::Conflict(format!(
                    "entity {key} kept changing under {MAX_ROUNDS} tries"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Batch {
        outcomes,
        reconcile,
    })
}

/// Applies one operation on its own: an agent's call.
pub async fn apply_one(
    store: &dyn Store,
    key: &EntityKey,
    op: &EntityOp,
) -> Result<Outcome, StoreError> {
    let batch = apply_batch(store, key, &[op]).await?;
    batch
        .outcomes
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Unavailable(format!("entity {key}: no outcome")))
}

/// Answers a read from the state as committed, without queuing.
pub async fn read(
    store: &dyn Store,
    key: &EntityKey,
    operation: &Operation,
) -> Result<EntityAnswer, StoreError> {
    let state = store
        .load_entity(key)
        .await?
        .map(|stored| stored.record.state)
        .unwrap_or_default();
    Ok(entities::apply(&state, operation).map(|(_, answer)| answer))
}

/// The entity's lock as stored.
pub async fn lock_of(store: &dyn Store, key: &EntityKey) -> Result<LockState, StoreError> {
    let stored = store.load_entity(key).await?;
    Ok(stored
        .map(|s| lock_state(&s.record.lock))
        .transpose()?
        .unwrap_or_default())
}

pub fn lock_state(value: &Value) -> Result<LockState, StoreError> {
    if value.is_null() {
        return Ok(LockState::default());
    }
    serde_json::from_value(value.clone())
        .map_err(|e| StoreError::Corrupt(format!("entity lock: {e}")))
}

struct Planned {
    commit: EntityCommit,
    outcomes: Vec<(usize, Outcome)>,
    /// The lock once the batch is applied.
    lock: LockState,
}

/// The commit of the open operations (as many as fit) on the entity as
/// stored, and the outcome each will have once it lands. An id sent twice
/// in the batch is applied once and answered twice.
async fn plan(
    store: &dyn Store,
    key: &EntityKey,
    ops: &[&EntityOp],
    open: &[usize],
) -> Result<Planned, StoreError> {
    let stored = store.load_entity(key).await?;
    let (mut state, mut lock, mut seq, expected) = match stored {
        Some(s) => (
            s.record.state,
            lock_state(&s.record.lock)?,
            s.record.operations,
            Expected::Version(s.version),
        ),
        None => (Value::Null, LockState::default(), 0, Expected::New),
    };
    let mut rows: Vec<EntityOperationRow> = Vec::new();
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    let mut bytes = 0;
    for &i in open {
        let op = ops[i];
        if rows.iter().any(|r| r.id == op.operation.id) {
            let twin = outcomes
                .iter()
                .find(|(j, _)| ops[*j].operation.id == op.operation.id)
                .map(|(_, outcome)| Outcome {
                    reply: outcome.reply.clone(),
                    granted: Vec::new(),
                });
            if let Some(twin) = twin {
                outcomes.push((i, twin));
            }
            continue;
        }
        let applied = entities::apply_op(
            &state,
            &lock,
            &op.operation.operation,
            op.operation.caller.as_ref(),
        );
        let answer = recorded(&applied.reply, &applied.granted);
        let operation = serde_json::to_value(&op.operation.operation)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        bytes += operation.to_string().len() + 2 * answer_bytes(&answer);
        if bytes > MAX_BATCH_BYTES && !rows.is_empty() {
            break;
        }
        (state, lock) = (applied.state, applied.lock);
        seq += 1;
        outcomes.push((
            i,
            Outcome {
                reply: applied.reply,
                granted: applied.granted,
            },
        ));
        rows.push(EntityOperationRow {
            seq,
            id: op.operation.id.clone(),
            at: op.at,
            operation,
            answer,
            sender: Some(sender_of(op).to_string()),
        });
    }
    let updated_at = rows.last().map_or_else(OffsetDateTime::now_utc, |r| r.at);
    let lock_value = if lock.is_free() {
        Value::Null
    } else {
        serde_json::to_value(&lock).map_err(|e| StoreError::Corrupt(e.to_string()))?
    };
    Ok(Planned {
        commit: EntityCommit {
            record: EntityRecord {
                key: key.clone(),
                state,
                lock: lock_value,
                operations: seq,
                updated_at,
            },
            expected,
            operations: rows,
        },
        outcomes,
        lock,
    })
}

/// What the store keeps as an operation's answer: a waiting acquisition's
/// is `{"waiting": true}`, a release's names the waiters it let in (so
/// that, sent again, it tells them again).
fn recorded(reply: &Reply, granted: &[Caller]) -> EntityAnswer {
    match reply {
        Reply::Now(answer) if !granted.is_empty() => {
            answer.clone().map(|_| json!({ "granted": granted }))
        }
        Reply::Now(answer) => answer.clone(),
        Reply::Later => Ok(json!({ "waiting": true })),
    }
}

/// The outcome of an operation applied before, sent again: as recorded,
/// but for an acquisition, whose caller learns where it stands now.
fn again(operation: &Operation, answer: &EntityAnswer, lock: &LockState) -> Outcome {
    match operation {
        Operation::Acquire { holder, .. } => Outcome {
            reply: if lock.holders.contains(holder) {
                Reply::Now(Ok(entities::granted()))
            } else {
                Reply::Later
            },
            granted: Vec::new(),
        },
        Operation::Release { .. } => Outcome {
            reply: Reply::Now(answer.clone()),
            granted: answer
                .as_ref()
                .ok()
                .and_then(|a| a.get("granted"))
                .and_then(|g| serde_json::from_value(g.clone()).ok())
                .unwrap_or_default(),
        },
        _ => Outcome {
            reply: Reply::Now(answer.clone()),
            granted: Vec::new(),
        },
    }
}

/// The instance an operation came from: its caller's, else the sender.
fn sender_of(op: &EntityOp) -> &InstanceId {
    op.operation
        .caller
        .as_ref()
        .map_or(&op.sender, |c: &Caller| &c.instance)
}

fn answer_bytes(answer: &EntityAnswer) -> usize {
    match answer {
        Ok(value) => value.to_string().len(),
        Err(why) => why.len(),
    }
}

/// A number below `n` (at least 1), spread enough to part writers that
/// collided.
fn spread_below(n: u64) -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 % n.max(1)
}

/// The id of an agent's operation `name` within its task: the same for
/// every attempt, redelivery and redrive of the task (`JournalKey`), new
/// for each execution, so a restart (which clears the task's journal)
/// applies it again while a redrive finds its answer in the journal.
pub fn agent_operation_id(instance: &InstanceId, key: &TaskKey, name: &str) -> String {
    format!(
        "{instance}/{}/e{}/entity/{name}",
        JournalKey::of(key),
        key.execution
    )
}

/// The journal entry an agent's operation is recorded under.
pub fn agent_journal_name(name: &str) -> String {
    format!("entity {name}")
}

/// Why `name` cannot name an agent's operation.
pub fn check_agent_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    legato_contracts::journal::check_name(&agent_journal_name(name))
}

/// Applies an agent's operation `name` on `entity` of its task's tenant,
/// once per task (see [`agent_operation_id`]); answers what it answered.
pub async fn agent_call(
    store: &dyn Store,
    instance: &InstanceId,
    key: &TaskKey,
    name: &str,
    entity: EntityRef,
    operation: Operation,
) -> Result<EntityAnswer, StoreError> {
    let entity_key = EntityKey {
        tenant: instance.tenant(),
        entity: entity.clone(),
    };
    if operation.is_read() {
        return read(store, &entity_key, &operation).await;
    }
    let op = EntityOp {
        operation: EntityOperation {
            entity,
            id: agent_operation_id(instance, key, name),
            operation,
            caller: None,
        },
        sender: instance.clone(),
        at: OffsetDateTime::now_utc(),
    };
    let outcome = apply_one(store, &entity_key, &op).await?;
    outcome.answer().cloned().ok_or_else(|| {
        StoreError::Corrupt(format!("operation {} was left waiting", op.operation.id))
    })
}
