//! One commit of a batch, planned on the entity as stored: each operation
//! applied (a row and its claim), queued behind a custom operation, or
//! begun as one; and the answers it gives, to the batch's operations and
//! to those that queued earlier and are applied now.

use legato_contracts::{Caller, CustomOutcome, EntityOperation, Operation};
use legato_engine::entities::{
    self, Admission, Busy, Deferred, LockState, Reply, admit, custom_outcome, defer,
};
use legato_store::{
    EntityAnswer, EntityCommit, EntityKey, EntityOperationRow, EntityRecord, Expected, Store,
    StoreError,
};
use legato_workflow::EntityTypeDef;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{EntityOp, MAX_BATCH, MAX_BATCH_BYTES, Outcome, again, custom_instance, lock_state};

pub(super) struct Planned {
    pub commit: EntityCommit,
    pub outcomes: Vec<(usize, Outcome)>,
    /// The lock (and busy operation, and queue) once the batch is applied.
    pub lock: LockState,
    /// Callers of operations applied that are not the batch's own (they
    /// queued earlier), with their answers.
    pub told: Vec<(Caller, EntityAnswer)>,
    /// Whether the run of the custom operation the entity is busy with is
    /// to be started (begun now, or sent again: the start is idempotent).
    pub start: bool,
    /// Operations still wait in the queue though the entity is no longer
    /// busy: another commit applies them.
    pub more: bool,
    /// Whether the commit writes anything.
    pub changed: bool,
    /// The state once the batch is applied.
    pub state: Value,
}

struct Planner<'a> {
    key: &'a EntityKey,
    def: Option<&'a EntityTypeDef>,
    state: Value,
    lock: LockState,
    seq: u64,
    rows: Vec<EntityOperationRow>,
    told: Vec<(Caller, EntityAnswer)>,
    start: bool,
    bytes: usize,
}

/// The commit of the open operations (as many as fit) on the entity as
/// stored, with the outcome each will have once it lands. An id sent twice
/// in the batch is applied once and answered twice.
pub(super) async fn plan(
    store: &dyn Store,
    key: &EntityKey,
    def: Option<&EntityTypeDef>,
    ops: &[&EntityOp],
    open: &[usize],
) -> Result<Planned, StoreError> {
    let stored = store.load_entity(key).await?;
    let (state, lock, seq, expected) = match stored {
        Some(s) => (
            s.record.state,
            lock_state(&s.record.lock)?,
            s.record.operations,
            Expected::Version(s.version),
        ),
        None => (Value::Null, LockState::default(), 0, Expected::New),
    };
    let before = lock.clone();
    let mut p = Planner {
        key,
        def,
        state,
        lock,
        seq,
        rows: Vec::new(),
        told: Vec::new(),
        start: false,
        bytes: 0,
    };
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    // Queued operations left over from a commit that could take no more.
    p.drain();
    for &i in open {
        if p.rows.len() >= MAX_BATCH || (p.bytes > MAX_BATCH_BYTES && !p.rows.is_empty()) {
            break;
        }
        let op = ops[i];
        let id = &op.operation.id;
        if p.rows.iter().any(|r| &r.id == id) {
            let twin = outcomes
                .iter()
                .find(|(j, _)| &ops[*j].operation.id == id)
                .map(|(_, outcome)| Outcome {
                    reply: outcome.reply.clone(),
                    granted: Vec::new(),
                });
            if let Some(twin) = twin {
                outcomes.push((i, twin));
            }
            continue;
        }
        let operation = &op.operation.operation;
        let outcome = match admit(&p.lock, id, operation) {
            Admission::Complete(ours) => {
                if let (true, Operation::Complete { outcome, .. }) = (ours, operation) {
                    p.resolve(outcome)?;
                    p.drain();
                }
                now(Ok(Value::Null))
            }
            Admission::Again => {
                defer(&mut p.lock, deferred(op));
                p.start = true;
                later()
            }
            Admission::Queue => {
                // Kept for later: unless applied already (its claim is the
                // only trace), it would be applied twice.
                if let Some((_, answer)) = store.entity_answer(key, id).await? {
                    again(operation, &answer, &p.lock)
                } else {
                    defer(&mut p.lock, deferred(op));
                    p.start = true;
                    later()
                }
            }
            Admission::Apply if operation.is_custom() => {
                if let Some((_, answer)) = store.entity_answer(key, id).await? {
                    again(operation, &answer, &p.lock)
                } else {
                    p.begin(deferred(op))?.map_or_else(later, now)
                }
            }
            Admission::Full(why) => {
                let answer = Err(why);
                p.record(&deferred(op), &answer)?;
                now(answer)
            }
            Admission::Apply => p.apply(op)?,
        };
        outcomes.push((i, outcome));
    }
    let more = p.lock.busy.is_none() && !p.lock.queued.is_empty();
    let changed = !p.rows.is_empty() || p.lock != before;
    let updated_at = p.rows.last().map_or_else(OffsetDateTime::now_utc, |r| r.at);
    let lock_value = if p.lock.is_free() {
        Value::Null
    } else {
        serde_json::to_value(&p.lock).map_err(|e| StoreError::Corrupt(e.to_string()))?
    };
    Ok(Planned {
        state: p.state.clone(),
        commit: EntityCommit {
            record: EntityRecord {
                key: key.clone(),
                state: p.state,
                lock: lock_value,
                operations: p.seq,
                updated_at,
            },
            expected,
            operations: p.rows,
        },
        outcomes,
        lock: p.lock,
        told: p.told,
        start: p.start,
        more,
        changed,
    })
}

impl Planner<'_> {
    /// Applies a built-in operation (locking ones included) now.
    fn apply(&mut self, op: &EntityOp) -> Result<Outcome, StoreError> {
        let operation = &op.operation.operation;
        let mut applied = entities::apply_op(
            &self.state,
            &self.lock,
            operation,
            op.operation.caller.as_ref(),
        );
        if applied.state != self.state
            && let Err(why) = self.check_state(&applied.state)
        {
            applied.state = self.state.clone();
            applied.lock = self.lock.clone();
            applied.reply = Reply::Now(Err(why));
            applied.granted.clear();
        }
        let answer = recorded(&applied.reply, &applied.granted);
        self.record(&deferred(op), &answer)?;
        (self.state, self.lock) = (applied.state, applied.lock);
        Ok(Outcome {
            reply: applied.reply,
            granted: applied.granted,
        })
    }

    /// Begins a custom operation: the entity is busy with it until its
    /// run's outcome comes (`None`), unless it cannot begin: then it fails
    /// now, recorded, with the answer returned.
    fn begin(&mut self, deferred: Deferred) -> Result<Option<EntityAnswer>, StoreError> {
        let Operation::Custom(custom) = &deferred.operation else {
            return Err(StoreError::Corrupt(format!(
                "operation {} is not a custom one",
                deferred.id
            )));
        };
        let entity_type = &self.key.entity.entity_type;
        let refused = match self.def {
            None => Some(format!(
                "entity type {entity_type} is not registered: custom operation {} needs a \
                 registered type that declares it",
                custom.name
            )),
            Some(def) => def
                .check_operation(&custom.name, &custom.input)
                .err()
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.pointer, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
        };
        if let Some(why) = refused {
            let answer = Err(why);
            self.record(&deferred, &answer)?;
            return Ok(Some(answer));
        }
        let instance = custom_instance(self.key, &deferred.id)?;
        self.lock.busy = Some(Busy {
            operation: deferred,
            instance,
        });
        self.start = true;
        Ok(None)
    }

    /// Takes the outcome of the busy operation's run: its new state and
    /// answer, recorded as the operation's.
    fn resolve(&mut self, outcome: &CustomOutcome) -> Result<(), StoreError> {
        let Some(busy) = self.lock.busy.take() else {
            return Ok(());
        };
        let name = busy.operation.operation.name().to_owned();
        let def = self.def;
        let (state, answer) = custom_outcome(&self.state, &name, outcome, |next| match def {
            Some(def) => def.check_state(next),
            None => Ok(()),
        });
        self.state = state;
        self.record(&busy.operation, &answer)?;
        if let Some(caller) = busy.operation.caller {
            self.told.push((caller, answer));
        }
        Ok(())
    }

    /// Applies what queued behind a custom operation that is over, in
    /// order, until another custom one makes the entity busy again or the
    /// commit is full.
    fn drain(&mut self) {
        while self.lock.busy.is_none()
            && !self.lock.queued.is_empty()
            && self.rows.len() < MAX_BATCH
        {
            let queued = self.lock.queued.remove(0);
            let answer = if queued.operation.is_custom() {
                match self.begin(queued.clone()) {
                    Ok(None) => continue,
                    Ok(Some(answer)) => answer,
                    Err(e) => Err(e.to_string()),
                }
            } else {
                let op = EntityOp {
                    operation: EntityOperation {
                        entity: self.key.entity.clone(),
                        id: queued.id.clone(),
                        operation: queued.operation.clone(),
                        caller: queued.caller.clone(),
                    },
                    sender: queued.sender.clone(),
                    at: queued.at,
                };
                match self.apply(&op) {
                    Ok(outcome) => outcome.answer().cloned().unwrap_or(Ok(Value::Null)),
                    Err(e) => Err(e.to_string()),
                }
            };
            if let Some(caller) = queued.caller {
                self.told.push((caller, answer));
            }
        }
    }

    fn check_state(&self, state: &Value) -> Result<(), String> {
        self.def.map_or(Ok(()), |def| def.check_state(state))
    }

    /// Writes an operation's row (and with it, its claim) with its answer.
    fn record(&mut self, op: &Deferred, answer: &EntityAnswer) -> Result<(), StoreError> {
        let operation =
            serde_json::to_value(&op.operation).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.bytes += operation.to_string().len() + 2 * answer_bytes(answer);
        self.seq += 1;
        self.rows.push(EntityOperationRow {
            seq: self.seq,
            id: op.id.clone(),
            at: op.at,
            operation,
            answer: answer.clone(),
            sender: Some(op.sender.to_string()),
        });
        Ok(())
    }
}

/// The operation as it is kept to be applied later (or recorded).
fn deferred(op: &EntityOp) -> Deferred {
    Deferred {
        id: op.operation.id.clone(),
        operation: op.operation.operation.clone(),
        caller: op.operation.caller.clone(),
        // The instance it came from: its caller's, else the sender.
        sender: op
            .operation
            .caller
            .as_ref()
            .map_or(&op.sender, |c| &c.instance)
            .clone(),
        at: op.at,
    }
}

fn now(answer: EntityAnswer) -> Outcome {
    Outcome {
        reply: Reply::Now(answer),
        granted: Vec::new(),
    }
}

fn later() -> Outcome {
    Outcome {
        reply: Reply::Later,
        granted: Vec::new(),
    }
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

fn answer_bytes(answer: &EntityAnswer) -> usize {
    match answer {
        Ok(value) => value.to_string().len(),
        Err(why) => why.len(),
    }
}
