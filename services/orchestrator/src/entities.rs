//! Entity operations as the orchestrator applies them. An entity's
//! operations wait in its mailbox and are applied one batch at a time, in
//! the order they came, each batch one commit guarded by the entity's
//! version (so replicas never apply two batches on one state). An
//! operation id the entity applied before is answered from the store, not
//! applied again. Calls are answered after the commit, as their task
//! attempt's result; the message is acked only once that answer is sent.
//! Reads skip the mailbox: they answer from the state as committed.
//! Locking operations are answered when the holder's turn comes (see
//! `reconcile` for holders that are gone).

mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use legato_bus::Bus;
use legato_contracts::{
    Caller, EntityOperation, Envelope, InstanceId, Operation, Payload, TaskCompleted, TaskError,
    TaskFailed,
};
use legato_engine::entities::{self, LockState, Reply};
use legato_store::{
    EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityRecord, Expected, Store,
    StoreError,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::apply::{Applied, ApplyError};
use crate::mailboxes::Mailboxes;

/// Most operations one commit takes; more wait for the next. With each
/// operation's claim and row and the row falling out of the kept window,
/// well inside Table Storage's 100 operations per transaction.
const MAX_BATCH: usize = 16;
/// Most bytes of operations and answers one commit writes (each answer is
/// kept twice), well inside Table Storage's 4 MiB per transaction.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Commits lost to another replica before the batch is handed back to the
/// broker to be tried again.
const MAX_ROUNDS: usize = 20;

pub(crate) struct Entities {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    mailboxes: Mailboxes<EntityKey, Waiting>,
}

/// An operation to apply, whoever sent it.
struct Op {
    operation: EntityOperation,
    /// Who sent it: the message's subject (or, for a release on behalf of
    /// a holder that is gone, that holder).
    sender: InstanceId,
    at: OffsetDateTime,
}

struct Waiting {
    op: Op,
    answer: oneshot::Sender<Result<Applied, ApplyError>>,
}

/// How an operation came out, as its caller and the waiters it let in
/// are told.
#[derive(Debug, Clone)]
struct Outcome {
    reply: Reply,
    granted: Vec<Caller>,
}

/// What a batch came to.
struct Batch {
    outcomes: Vec<Outcome>,
    /// Whether holders must be checked against their instances: someone
    /// waits, or a locking operation came again (its first answer may
    /// not have reached its caller).
    reconcile: bool,
}

impl Entities {
    pub(crate) fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Self {
            store,
            bus,
            mailboxes: Mailboxes::default(),
        }
    }

    /// Applies `operation`, sent by `sender` (whose tenant the entity is
    /// in), with whatever else arrives for the entity meanwhile.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        sender: &InstanceId,
        operation: EntityOperation,
        at: OffsetDateTime,
    ) -> Result<Applied, ApplyError> {
        operation.check().map_err(ApplyError::Rejected)?;
        if let Some(caller) = &operation.caller
            && caller.instance.tenant() != sender.tenant()
        {
            return Err(ApplyError::Rejected(format!(
                "the caller {} is not in the tenant of the sender {sender}",
                caller.instance
            )));
        }
        if let Operation::Acquire { holder, .. } | Operation::Release { holder } =
            &operation.operation
            && holder.instance.tenant() != sender.tenant()
        {
            return Err(ApplyError::Rejected(format!(
                "the holder {} is not in the tenant of the sender {sender}",
                holder.instance
            )));
        }
        let key = EntityKey {
            tenant: sender.tenant(),
            entity: operation.entity.clone(),
        };
        if operation.operation.is_read() {
            return self.read(&key, &operation).await;
        }
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            op: Op {
                operation,
                sender: sender.clone(),
                at,
            },
            answer,
        };
        if self.mailboxes.post(&key, waiting) {
            // Detached: the runner answers everyone even if the caller that
            // started it stops waiting.
            let entities = self.clone();
            tokio::spawn(async move { entities.run(key).await });
        }
        answered.await.map_err(|_| {
            ApplyError::Transient(StoreError::Unavailable(
                "the entity's runner stopped".into(),
            ))
        })?
    }

    async fn read(
        &self,
        key: &EntityKey,
        operation: &EntityOperation,
    ) -> Result<Applied, ApplyError> {
        let state = self
            .store
            .load_entity(key)
            .await?
            .map(|stored| stored.record.state)
            .unwrap_or_default();
        let answer = entities::apply(&state, &operation.operation).map(|(_, answer)| answer);
        let outcome = Outcome {
            reply: Reply::Now(answer),
            granted: Vec::new(),
        };
        self.tell(&[(operation, outcome)]).await?;
        Ok(Applied::Accepted)
    }

    async fn run(self: Arc<Self>, key: EntityKey) {
        let mut runner = self.mailboxes.runner(&key);
        while let Some(batch) = runner.next_batch(MAX_BATCH) {
            let ops: Vec<&Op> = batch.iter().map(|w| &w.op).collect();
            let done = self.apply_and_tell(&key, &ops).await;
            for waiting in batch {
                let outcome = match &done {
                    Ok(()) => Ok(Applied::Accepted),
                    Err(e) => Err(e.again()),
                };
                let _gone_is_fine = waiting.answer.send(outcome);
            }
        }
    }

    /// Applies `ops`, tells their callers and the waiters they let in, and
    /// checks the holders when the lock calls for it.
    async fn apply_and_tell(&self, key: &EntityKey, ops: &[&Op]) -> Result<(), ApplyError> {
        let batch = self.apply_batch(key, ops).await?;
        let told: Vec<_> = ops
            .iter()
            .map(|op| &op.operation)
            .zip(batch.outcomes)
            .collect();
        let just_granted: Vec<Caller> = told
            .iter()
            .flat_map(|(op, outcome)| {
                let own = match (&outcome.reply, &op.caller, &op.operation) {
                    (Reply::Now(Ok(_)), Some(caller), Operation::Acquire { .. }) => {
                        Some(caller.clone())
                    }
                    _ => None,
                };
                own.into_iter().chain(outcome.granted.iter().cloned())
            })
            .collect();
        self.tell(&told).await?;
        if batch.reconcile {
            self.reconcile(key, &just_granted).await?;
        }
        Ok(())
    }

    /// Each operation's outcome: applied now, or (its id applied before)
    /// as the store recorded it.
    async fn apply_batch(&self, key: &EntityKey, ops: &[&Op]) -> Result<Batch, ApplyError> {
        let mut outcomes: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
        let mut reconcile = false;
        for round in 0..MAX_ROUNDS {
            let open: Vec<usize> = (0..ops.len()).filter(|&i| outcomes[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let planned = self.plan(key, ops, &open).await?;
            match self.store.commit_entity(planned.commit).await {
                Ok(_) => {
                    for (i, outcome) in planned.outcomes {
                        outcomes[i] = Some(outcome);
                    }
                    reconcile |= !planned.lock.waiting.is_empty();
                }
                Err(StoreError::Claimed(id)) => {
                    let Some((_, answer)) = self.store.entity_answer(key, &id).await? else {
                        return Err(ApplyError::Transient(StoreError::Unavailable(format!(
                            "operation {id} on entity {key} was applied, and its answer is gone"
                        ))));
                    };
                    let lock = self.lock_of(key).await?;
                    for &i in &open {
                        let operation = &ops[i].operation;
                        if operation.id == id {
                            reconcile |= operation.operation.is_locking();
                            outcomes[i] = Some(again(&operation.operation, &answer, &lock));
                        }
                    }
                }
                Err(StoreError::Conflict(_)) => {
                    // Another replica's batch landed first: read it and
                    // apply on top, after a moment that grows.
                    let pause = 1 + fastrand_below(2u64.pow(round.min(6) as u32));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| {
                    ApplyError::Transient(StoreError::Conflict(format!(
                        "entity {key} kept changing under {MAX_ROUNDS} tries"
                    )))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Batch {
            outcomes,
            reconcile,
        })
    }

    async fn lock_of(&self, key: &EntityKey) -> Result<LockState, ApplyError> {
        let stored = self.store.load_entity(key).await?;
        Ok(stored
            .map(|s| lock_state(&s.record.lock))
            .transpose()?
            .unwrap_or_default())
    }

    /// The commit of the open operations (as many as fit) on the entity
    /// as stored, and the outcome each will have once it lands. An id sent
    /// twice in the batch is applied once and answered twice.
    async fn plan(
        &self,
        key: &EntityKey,
        ops: &[&Op],
        open: &[usize],
    ) -> Result<Planned, ApplyError> {
        let stored = self.store.load_entity(key).await?;
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
            if let Some(first) = rows.iter().position(|r| r.id == op.operation.id) {
                let twin = outcomes
                    .iter()
                    .find(|(j, _)| ops[*j].operation.id == rows[first].id)
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
                .map_err(|e| ApplyError::Rejected(e.to_string()))?;
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
            serde_json::to_value(&lock).map_err(|e| ApplyError::Rejected(e.to_string()))?
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

    /// Sends each caller its answer (signals: that it applied) and each
    /// waiter let in that it holds the lock.
    async fn tell(&self, told: &[(&EntityOperation, Outcome)]) -> Result<(), StoreError> {
        let mut messages = Vec::new();
        for (operation, outcome) in told {
            if let (Reply::Now(answer), Some(caller)) = (&outcome.reply, &operation.caller) {
                messages.push((caller.clone(), result_of(caller, answer)));
            }
            for caller in &outcome.granted {
                messages.push((caller.clone(), result_of(caller, &Ok(entities::granted()))));
            }
        }
        self.send(messages).await
    }

    /// Publishes each result to the instance of the attempt it is for.
    async fn send(&self, messages: Vec<(Caller, Payload)>) -> Result<(), StoreError> {
        for (caller, payload) in messages {
            let envelope = Envelope::new(
                crate::effects::SOURCE,
                caller.instance.clone(),
                OffsetDateTime::now_utc(),
                payload,
            );
            self.bus
                .publish_envelope(&envelope)
                .await
                .map_err(|e| StoreError::Unavailable(format!("answering {}: {e}", caller.key)))?;
        }
        Ok(())
    }
}

struct Planned {
    commit: EntityCommit,
    outcomes: Vec<(usize, Outcome)>,
    /// The lock once the batch is applied.
    lock: LockState,
}

fn lock_state(value: &Value) -> Result<LockState, ApplyError> {
    if value.is_null() {
        return Ok(LockState::default());
    }
    serde_json::from_value(value.clone())
        .map_err(|e| ApplyError::Transient(StoreError::Corrupt(format!("entity lock: {e}"))))
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
fn sender_of(op: &Op) -> &InstanceId {
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

/// The attempt's result: the answer as its output, or a failure no retry
/// mends (the same operation would fail the same way). A signal's is
/// `null` whatever the answer.
fn result_of(caller: &Caller, answer: &EntityAnswer) -> Payload {
    match answer {
        _ if caller.signal => completed(caller, Value::Null),
        Ok(output) => completed(caller, output.clone()),
        Err(message) => TaskFailed {
            key: caller.key.clone(),
            attempt: caller.attempt,
            error: TaskError {
                message: message.clone(),
                retryable: false,
            },
            usage: None,
        }
        .into(),
    }
}

fn completed(caller: &Caller, output: Value) -> Payload {
    TaskCompleted {
        key: caller.key.clone(),
        attempt: caller.attempt,
        output,
        custom_status: None,
        usage: None,
    }
    .into()
}

/// A number below `n` (at least 1), spread enough to part replicas that
/// collided.
fn fastrand_below(n: u64) -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 % n.max(1)
}
