//! Entity operations as the orchestrator applies them. An entity's
//! operations wait in its mailbox and are applied one batch at a time, in
//! the order they came, each batch one commit guarded by the entity's
//! version (so replicas never apply two batches on one state). An
//! operation id the entity applied before is answered from the store, not
//! applied again. Calls are answered after the commit, as their task
//! attempt's result; the message is acked only once that answer is sent.
//! Reads skip the mailbox: they answer from the state as committed.

use std::sync::Arc;
use std::time::Duration;

use legato_bus::Bus;
use legato_contracts::{
    Caller, EntityOperation, Envelope, InstanceId, Payload, TaskCompleted, TaskError, TaskFailed,
};
use legato_engine::entities;
use legato_store::{
    EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityRecord, Expected, Store,
    StoreError,
};
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

struct Waiting {
    operation: EntityOperation,
    /// Who sent it: the message's subject.
    sender: InstanceId,
    at: OffsetDateTime,
    answer: oneshot::Sender<Result<Applied, ApplyError>>,
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
        let key = EntityKey {
            tenant: sender.tenant(),
            entity: operation.entity.clone(),
        };
        if operation.operation.is_read() {
            return self.read(&key, &operation).await;
        }
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            operation,
            sender: sender.clone(),
            at,
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
        self.reply(&[(operation, &answer)]).await?;
        Ok(Applied::Accepted)
    }

    async fn run(self: Arc<Self>, key: EntityKey) {
        let mut runner = self.mailboxes.runner(&key);
        while let Some(batch) = runner.next_batch(MAX_BATCH) {
            let answers = self.apply_batch(&key, &batch).await;
            let replied = match &answers {
                Ok(answers) => {
                    let calls: Vec<_> = batch.iter().map(|w| &w.operation).zip(answers).collect();
                    self.reply(&calls).await.map_err(ApplyError::from)
                }
                Err(e) => Err(e.again()),
            };
            for waiting in batch {
                let outcome = match &replied {
                    Ok(()) => Ok(Applied::Accepted),
                    Err(e) => Err(e.again()),
                };
                let _gone_is_fine = waiting.answer.send(outcome);
            }
        }
    }

    /// Each operation's answer: applied now, or (its id applied before)
    /// as the store recorded it.
    async fn apply_batch(
        &self,
        key: &EntityKey,
        batch: &[Waiting],
    ) -> Result<Vec<EntityAnswer>, ApplyError> {
        let mut answers: Vec<Option<EntityAnswer>> = batch.iter().map(|_| None).collect();
        for round in 0..MAX_ROUNDS {
            let open: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let planned = self.plan(key, batch, &open).await?;
            match self.store.commit_entity(planned.commit).await {
                Ok(_) => {
                    for (i, answer) in planned.answered {
                        answers[i] = Some(answer);
                    }
                }
                Err(StoreError::Claimed(id)) => {
                    let Some((_, answer)) = self.store.entity_answer(key, &id).await? else {
                        return Err(ApplyError::Transient(StoreError::Unavailable(format!(
                            "operation {id} on entity {key} was applied, and its answer is gone"
                        ))));
                    };
                    for &i in &open {
                        if batch[i].operation.id == id {
                            answers[i] = Some(answer.clone());
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
        answers
            .into_iter()
            .map(|answer| {
                answer.ok_or_else(|| {
                    ApplyError::Transient(StoreError::Conflict(format!(
                        "entity {key} kept changing under {MAX_ROUNDS} tries"
                    )))
                })
            })
            .collect()
    }

    /// The commit of the open operations (as many as fit) on the entity
    /// as stored, and the answer each will have once it lands. An id sent
    /// twice in the batch is applied once and answered twice.
    async fn plan(
        &self,
        key: &EntityKey,
        batch: &[Waiting],
        open: &[usize],
    ) -> Result<Planned, ApplyError> {
        let stored = self.store.load_entity(key).await?;
        let (mut state, mut seq, expected) = match stored {
            Some(s) => (
                s.record.state,
                s.record.operations,
                Expected::Version(s.version),
            ),
            None => (serde_json::Value::Null, 0, Expected::New),
        };
        let mut rows: Vec<EntityOperationRow> = Vec::new();
        let mut answered: Vec<(usize, EntityAnswer)> = Vec::new();
        let mut bytes = 0;
        for &i in open {
            let waiting = &batch[i];
            if let Some(row) = rows.iter().find(|r| r.id == waiting.operation.id) {
                answered.push((i, row.answer.clone()));
                continue;
            }
            let answer = match entities::apply(&state, &waiting.operation.operation) {
                Ok((next, answer)) => {
                    state = next;
                    Ok(answer)
                }
                Err(why) => Err(why),
            };
            let operation = serde_json::to_value(&waiting.operation.operation)
                .map_err(|e| ApplyError::Rejected(e.to_string()))?;
            bytes += operation.to_string().len() + 2 * answer_bytes(&answer);
            if bytes > MAX_BATCH_BYTES && !rows.is_empty() {
                break;
            }
            seq += 1;
            answered.push((i, answer.clone()));
            rows.push(EntityOperationRow {
                seq,
                id: waiting.operation.id.clone(),
                at: waiting.at,
                operation,
                answer,
                sender: Some(sender_of(waiting).to_string()),
            });
        }
        let updated_at = rows.last().map_or_else(OffsetDateTime::now_utc, |r| r.at);
        Ok(Planned {
            commit: EntityCommit {
                record: EntityRecord {
                    key: key.clone(),
                    state,
                    operations: seq,
                    updated_at,
                },
                expected,
                operations: rows,
            },
            answered,
        })
    }

    /// Sends each call's answer to the task attempt waiting for it, in one
    /// publish; signals need none.
    async fn reply(&self, answers: &[(&EntityOperation, &EntityAnswer)]) -> Result<(), StoreError> {
        for (operation, answer) in answers {
            let Some(caller) = &operation.caller else {
                continue;
            };
            let envelope = Envelope::new(
                crate::effects::SOURCE,
                caller.instance.clone(),
                OffsetDateTime::now_utc(),
                result_of(caller, answer),
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
    answered: Vec<(usize, EntityAnswer)>,
}

/// The instance an operation came from: its caller's, else the message's
/// subject.
fn sender_of(waiting: &Waiting) -> &InstanceId {
    waiting
        .operation
        .caller
        .as_ref()
        .map_or(&waiting.sender, |c: &Caller| &c.instance)
}

fn answer_bytes(answer: &EntityAnswer) -> usize {
    match answer {
        Ok(value) => value.to_string().len(),
        Err(why) => why.len(),
    }
}

/// The attempt's result: the answer as its output, or a failure no retry
/// mends (the same operation would fail the same way).
fn result_of(caller: &Caller, answer: &EntityAnswer) -> Payload {
    if caller.signal {
        return TaskCompleted {
            key: caller.key.clone(),
            attempt: caller.attempt,
            output: serde_json::Value::Null,
            custom_status: None,
            usage: None,
        }
        .into();
    }
    match answer {
        Ok(output) => TaskCompleted {
            key: caller.key.clone(),
            attempt: caller.attempt,
            output: output.clone(),
            custom_status: None,
            usage: None,
        }
        .into(),
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

/// A number below `n` (at least 1), spread enough to part replicas that
/// collided.
fn fastrand_below(n: u64) -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 % n.max(1)
}
