//! Entity operations as the orchestrator applies them. An entity's
//! operations wait in its mailbox and are applied one batch at a time, in
//! the order they came, each batch one commit guarded by the entity's
//! version (so replicas never apply two batches on one state). An
//! operation id the entity applied before is answered from the store, not
//! applied again. Calls are answered after the commit, as their task
//! attempt's result; the message is acked only once that answer is sent.
//! Reads skip the mailbox: they answer from the state as committed.
//! Locking operations are answered when the holder's turn comes (see
//! `reconcile` for holders that are gone). A custom operation makes the
//! entity busy: its run is started once that is committed, and the
//! operations queued behind it are answered when its outcome comes.

mod reconcile;

use std::sync::Arc;

use legato_contracts::{
    Caller, EntityOperation, InstanceId, Operation, Payload, TaskCompleted, TaskError, TaskFailed,
};
use legato_engine::entities::{self, Reply};
use legato_service::OutboxRelay;
use legato_service::definitions::Definitions;
use legato_service::entities::{
    self as shared, CustomStart, EntityOp, EntityTypes, MAX_BATCH, Outcome,
};
use legato_store::{EntityAnswer, EntityKey, Store, StoreError};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::apply::{Applied, ApplyError, Pending};
use crate::mailboxes::Mailboxes;

pub(crate) struct Entities {
    store: Arc<dyn Store>,
    types: EntityTypes,
    definitions: Definitions,
    /// Sends the answers: messages derived again from the store's claims
    /// should a send be lost (the operation comes again), so never kept.
    relay: Arc<OutboxRelay>,
    mailboxes: Mailboxes<EntityKey, Waiting>,
}

struct Waiting {
    op: EntityOp,
    answer: oneshot::Sender<Result<Applied, ApplyError>>,
}

impl Entities {
    pub(crate) fn new(store: Arc<dyn Store>, relay: Arc<OutboxRelay>) -> Self {
        Self {
            store,
            types: EntityTypes::default(),
            definitions: Definitions::default(),
            relay,
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
        let key = self.key_of(sender, &operation)?;
        if operation.operation.is_read() {
            return self.read(&key, &operation).await;
        }
        self.post(key, sender, operation, at).answer().await
    }

    /// Posts `operation` to its entity's mailbox now (so operations posted
    /// one after the other are applied in that order); `None` for a read
    /// or an operation refused outright, which [`Entities::apply`] answers.
    pub(crate) fn submit(
        self: &Arc<Self>,
        sender: &InstanceId,
        operation: EntityOperation,
        at: OffsetDateTime,
    ) -> Option<Pending> {
        let key = self.key_of(sender, &operation).ok()?;
        if operation.operation.is_read() {
            return None;
        }
        Some(self.post(key, sender, operation, at))
    }

    /// The entity `operation` is for, in `sender`'s tenant, unless it may
    /// not be applied at all.
    fn key_of(
        &self,
        sender: &InstanceId,
        operation: &EntityOperation,
    ) -> Result<EntityKey, ApplyError> {
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
        Ok(EntityKey {
            tenant: sender.tenant(),
            entity: operation.entity.clone(),
        })
    }

    fn post(
        self: &Arc<Self>,
        key: EntityKey,
        sender: &InstanceId,
        operation: EntityOperation,
        at: OffsetDateTime,
    ) -> Pending {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            op: EntityOp {
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
        Pending(answered)
    }

    async fn read(
        &self,
        key: &EntityKey,
        operation: &EntityOperation,
    ) -> Result<Applied, ApplyError> {
        let answer = shared::read(&*self.store, key, &operation.operation).await?;
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
            let ops: Vec<&EntityOp> = batch.iter().map(|w| &w.op).collect();
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
    async fn apply_and_tell(&self, key: &EntityKey, ops: &[&EntityOp]) -> Result<(), ApplyError> {
        let batch = shared::apply_batch(&*self.store, &self.types, key, ops).await?;
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
        let answered = batch
            .told
            .iter()
            .map(|(caller, answer)| (caller.clone(), result_of(caller, answer)))
            .collect();
        self.send(answered).await?;
        if let Some(start) = &batch.start {
            self.start(key, start).await?;
        }
        if batch.reconcile {
            self.reconcile(key, &just_granted).await?;
        }
        Ok(())
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
                messages.push((caller.clone(), granted_to(caller)));
            }
        }
        self.send(messages).await
    }

    /// Starts the run of the custom operation the entity is busy with (or
    /// tells the entity it cannot run): a start of a run that exists
    /// already is let go, or, if it ended, tells its outcome again.
    async fn start(&self, key: &EntityKey, start: &CustomStart) -> Result<(), StoreError> {
        let (subject, payload) =
            shared::start_of(&*self.store, &self.definitions, key, start).await?;
        let row = crate::effects::outbox_row(&subject, OffsetDateTime::now_utc(), payload, None)?;
        self.relay
            .send(&[row])
            .await
            .map_err(|e| StoreError::Unavailable(format!("starting a custom operation: {e}")))
    }

    /// Publishes each result to the instance of the attempt it is for,
    /// all in flight together.
    async fn send(&self, messages: Vec<(Caller, Payload)>) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let rows = messages
            .into_iter()
            .map(|(caller, payload)| {
                crate::effects::outbox_row(&caller.instance, now, payload, None)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.relay
            .send(&rows)
            .await
            .map_err(|e| StoreError::Unavailable(format!("answering entity operations: {e}")))
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

/// What tells a holder's attempt that it holds the entity.
fn granted_to(caller: &Caller) -> Payload {
    result_of(caller, &Ok(entities::granted()))
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
