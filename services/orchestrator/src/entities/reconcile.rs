//! A lock's holders checked against their instances, whenever someone
//! waits for it or a locking operation comes again. A holder whose lock
//! step is over (its release lost with a bus that forgets, overtaken by
//! its own acquisition on another replica, or never sent by an instance
//! purged meanwhile) is released on its behalf, so a crash anywhere never
//! leaves an entity held by a run that is gone; one still waiting for a
//! grant it holds (the grant lost in a crash) is told again.

use legato_contracts::{Caller, EntityOperation, Holder, Operation};
use legato_engine::LockHold;
use legato_service::records::state_of;
use legato_store::EntityKey;
use time::OffsetDateTime;

use legato_service::entities::{EntityOp, apply_batch, lock_state};

use super::Entities;
use crate::apply::ApplyError;

/// Rounds of releasing holders that are gone: each may let in waiters
/// that are gone too.
const MAX_ROUNDS: usize = 8;

impl Entities {
    /// Checks the entity's holders, but for those just told they hold it.
    pub(super) async fn reconcile(
        &self,
        key: &EntityKey,
        just_granted: &[Caller],
    ) -> Result<(), ApplyError> {
        // Those just told they hold it are not told again, though each is
        // checked: one may be gone already.
        let mut told: Vec<Holder> = just_granted.iter().map(holder_of).collect();
        for _ in 0..MAX_ROUNDS {
            let Some(stored) = self.store.load_entity(key).await? else {
                return Ok(());
            };
            let lock = lock_state(&stored.record.lock)?;
            let mut gone = Vec::new();
            let mut remind = Vec::new();
            for holder in &lock.holders {
                match self.hold_of(holder).await? {
                    LockHold::Holding => {}
                    LockHold::Waiting { .. } if told.contains(holder) => {}
                    LockHold::Waiting { attempt } => remind.push(Caller {
                        instance: holder.instance.clone(),
                        key: holder.key.clone(),
                        attempt,
                        signal: false,
                    }),
                    LockHold::Gone => gone.push(holder.clone()),
                }
            }
            self.remind(&remind).await?;
            if gone.is_empty() {
                return Ok(());
            }
            tracing::info!(entity = %key, holders = gone.len(), "releasing holders whose lock steps are over");
            let ops: Vec<EntityOp> = gone
                .into_iter()
                .map(|holder| EntityOp {
                    operation: EntityOperation {
                        entity: key.entity.clone(),
                        // The id of the holder's own release: whichever
                        // of the two comes second is the same operation
                        // again, and is applied once.
                        id: format!("{}/{}/release", holder.instance, holder.key),
                        operation: Operation::Release {
                            holder: holder.clone(),
                        },
                        caller: None,
                    },
                    sender: holder.instance,
                    at: OffsetDateTime::now_utc(),
                })
                .collect();
            let refs: Vec<&EntityOp> = ops.iter().collect();
            let batch = apply_batch(&*self.store, &self.types, key, &refs).await?;
            let outcomes: Vec<_> = ops
                .iter()
                .map(|op| &op.operation)
                .zip(batch.outcomes)
                .collect();
            told = outcomes
                .iter()
                .flat_map(|(_, o)| o.granted.iter().map(holder_of))
                .collect();
            self.tell(&outcomes).await?;
        }
        Ok(())
    }

    /// Where the holder's lock step is, as its instance's committed state
    /// says.
    async fn hold_of(&self, holder: &Holder) -> Result<LockHold, ApplyError> {
        let Some(stored) = self.store.load(&holder.instance).await? else {
            return Ok(LockHold::Gone);
        };
        let state = state_of(&stored.record).map_err(ApplyError::Transient)?;
        Ok(state.lock_hold(holder))
    }

    /// Tells holders again that they hold the entity.
    async fn remind(&self, callers: &[Caller]) -> Result<(), ApplyError> {
        let grants = callers
            .iter()
            .map(|c| (c.clone(), super::granted_to(c)))
            .collect();
        Ok(self.send(grants).await?)
    }
}

fn holder_of(caller: &Caller) -> Holder {
    Holder {
        instance: caller.instance.clone(),
        key: caller.key.clone(),
    }
}
