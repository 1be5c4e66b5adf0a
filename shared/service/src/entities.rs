//! Applying operations to a durable entity: a batch on the entity as
//! stored, committed in one write guarded by its version, each operation
//! id applied once (one applied before is answered as the store recorded
//! it). Whoever holds operations applies them here: the orchestrator (the
//! entity's mailbox, in arrival order), and the gateway and the Rust agent
//! runtime (an agent's own calls, one at a time). Racing writers lose the
//! version check, reload and apply on top, so an entity changes one batch
//! at a time whoever writes it.

mod custom;
mod plan;
mod types;

use std::sync::Arc;
use std::time::Duration;

use legato_contracts::journal::JournalKey;
use legato_contracts::{
    Caller, EntityOperation, EntityRef, InstanceId, Operation, Payload, TaskKey,
};
use legato_engine::entities::{self, LockState, MAX_QUEUED, Reply};
use legato_store::{EntityAnswer, EntityKey, Store, StoreError};
use legato_workflow::EntityTypeDef;
use serde_json::Value;
use time::OffsetDateTime;

use crate::definitions::Definitions;

pub use custom::{CustomStart, custom_instance, start_of, wait_for_answer};
pub use types::{EntityTypes, visible_type};

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
    /// Callers of operations that had queued behind a custom one and are
    /// applied now, with their answers.
    pub told: Vec<(Caller, EntityAnswer)>,
    /// The run to start for the custom operation the entity is busy with.
    pub start: Option<CustomStart>,
}

/// Applies `ops` to the entity, as many commits as they take.
pub async fn apply_batch(
    store: &dyn Store,
    types: &EntityTypes,
    key: &EntityKey,
    ops: &[&EntityOp],
) -> Result<Batch, StoreError> {
    let (tenant, entity_type) = (key.tenant.as_ref(), &key.entity.entity_type);
    let mut def = types.get(store, tenant, entity_type).await?;
    let undeclared =
        |def: &Option<Arc<EntityTypeDef>>, op: &&EntityOp| match &op.operation.operation {
            Operation::Custom(custom) => def
                .as_ref()
                .is_none_or(|d| !d.operations.contains_key(&custom.name)),
            _ => false,
        };
    if ops.iter().any(|op| undeclared(&def, op)) {
        def = types.read(store, tenant, entity_type).await?;
    }
    let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    let mut reconcile = false;
    let mut told = Vec::new();
    let mut start = None;
    let mut more = false;
    let mut conflicts = 0;
    // Each commit takes at least one operation (or one of the queue) or
    // loses to another writer; this bounds a batch that does neither.
    let most = ops.len() + MAX_QUEUED + MAX_ROUNDS;
    for commits in 0.. {
        let open: Vec<usize> = (0..ops.len()).filter(|&i| outcomes[i].is_none()).collect();
        if open.is_empty() && !more {
            break;
        }
        if commits > most {
            return Err(StoreError::Unavailable(format!(
                "entity {key}: the batch made no headway in {most} commits"
            )));
        }
        let planned = plan::plan(store, key, def.as_deref(), ops, &open).await?;
        let committed = if planned.changed {
            store.commit_entity(planned.commit).await.map(drop)
        } else {
            Ok(())
        };
        match committed {
            Ok(()) => {
                for (i, outcome) in planned.outcomes {
                    outcomes[i] = Some(outcome);
                }
                reconcile |= !planned.lock.waiting.is_empty();
                told.extend(planned.told);
                more = planned.more;
                start = match (planned.start, planned.lock.busy, &def) {
                    (true, Some(busy), Some(def)) => Some(CustomStart {
                        busy,
                        state: planned.state,
                        def: def.clone(),
                    }),
                    (_, Some(_), _) => start,
                    _ => None,
                };
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
            Err(StoreError::Conflict(_)) if conflicts < MAX_ROUNDS => {
                // Another writer's batch landed first: read it and apply on
                // top, after a moment that grows.
                let pause = 1 + spread_below(2u64.pow(conflicts.min(6) as u32));
                conflicts += 1;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(StoreError::Conflict(_)) => {
                return Err(StoreError::Conflict(format!(
                    "entity {key} kept changing under {MAX_ROUNDS} tries"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| StoreError::Unavailable(format!("entity {key}: no outcome")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Batch {
        outcomes,
        reconcile,
        told,
        start,
    })
}

/// Applies one operation on its own: an agent's call.
pub async fn apply_one(
    store: &dyn Store,
    types: &EntityTypes,
    key: &EntityKey,
    op: &EntityOp,
) -> Result<(Outcome, Option<CustomStart>), StoreError> {
    let batch = apply_batch(store, types, key, &[op]).await?;
    let outcome = batch
        .outcomes
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Unavailable(format!("entity {key}: no outcome")))?;
    Ok((outcome, batch.start))
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

/// What applying an agent's operation takes.
pub struct Applying<'a> {
    pub store: &'a dyn Store,
    pub types: &'a EntityTypes,
    pub definitions: &'a Definitions,
    /// How long to wait for an operation that waits behind a custom one
    /// (or is one) before answering that it still waits.
    pub within: Duration,
}

/// Applies an agent's operation `name` on `entity` of its task's tenant,
/// once per task (see [`agent_operation_id`]); answers what it answered,
/// or `None` when it still waits (behind a custom operation, or as one)
/// after `within`: asked again, it goes on waiting, applied once. A custom
/// operation's run is started with `send`.
pub async fn agent_call(
    applying: &Applying<'_>,
    instance: &InstanceId,
    key: &TaskKey,
    name: &str,
    entity: EntityRef,
    operation: Operation,
    send: impl AsyncFnOnce(InstanceId, Payload) -> Result<(), StoreError>,
) -> Result<Option<EntityAnswer>, StoreError> {
    let store = applying.store;
    let entity_key = EntityKey {
        tenant: instance.tenant(),
        entity: entity.clone(),
    };
    if operation.is_read() {
        return read(store, &entity_key, &operation).await.map(Some);
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
    let (outcome, start) = apply_one(store, applying.types, &entity_key, &op).await?;
    if let Some(answer) = outcome.answer() {
        return Ok(Some(answer.clone()));
    }
    if let Some(start) = start {
        let (subject, payload) = start_of(store, applying.definitions, &entity_key, &start).await?;
        send(subject, payload).await?;
    }
    wait_for_answer(store, &entity_key, &op.operation.id, applying.within).await
}
