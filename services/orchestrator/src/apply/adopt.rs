//! Child runs (and runs of entities' custom operations) as the applier
//! meets them: the first start creates the run, and a start of a run that
//! already ended reports its end again.

use legato_contracts::{EntityLink, InstanceId, ParentLink, StartInstance};
use legato_engine::InstanceState;
use legato_service::entities::lock_state;
use legato_service::records::state_of;
use legato_store::EntityKey;
use time::OffsetDateTime;

use super::{Applied, Applier, ApplyError, Input, Known, missing};
use crate::{children, effects};

impl Applier {
    /// A child run's start finds no record of it: the first start of the
    /// child, which it creates, if its parent still waits for that attempt.
    /// Otherwise the answers for the batch: a start its parent no longer
    /// waits for (the attempt ended, the parent was purged) is let go.
    pub(super) async fn adopt(
        &self,
        id: &InstanceId,
        inputs: &[&Input],
    ) -> Result<Result<Known, Vec<Result<Applied, ApplyError>>>, ApplyError> {
        let adoptable = inputs.iter().find_map(|input| match input {
            Input::Start { at, start }
                if start.parent.is_some() || start.entity_operation.is_some() =>
            {
                Some((*at, start))
            }
            _ => None,
        });
        let Some((at, start)) = adoptable else {
            return Ok(Err(inputs.iter().map(|input| missing(id, input)).collect()));
        };
        let waits = match (&start.parent, &start.entity_operation) {
            (Some(parent), _) => {
                self.remembers_attempt(parent)
                    || match self.store.load(&parent.instance).await? {
                        Some(stored) => {
                            state_of(&stored.record)?.runs_attempt(&parent.key, parent.attempt)
                        }
                        None => false,
                    }
            }
            (None, Some(link)) => self.entity_waits(id, link).await?,
            (None, None) => false,
        };
        if !waits {
            let reason = match (&start.parent, &start.entity_operation) {
                (Some(parent), _) => format!(
                    "parent {} no longer waits for task {} attempt {}",
                    parent.instance, parent.key, parent.attempt
                ),
                (None, Some(link)) => format!(
                    "entity {} no longer waits for operation {}",
                    link.entity, link.operation
                ),
                (None, None) => "nobody waits for it".to_owned(),
            };
            return Ok(Err(inputs
                .iter()
                .map(|_| Ok(Applied::Ignored(reason.clone())))
                .collect()));
        }
        let mut state = InstanceState::new(id.clone());
        state.input = start.input.clone();
        state.tenant = start.tenant.clone();
        state.created_at = Some(at);
        state.updated_at = Some(at);
        Ok(Ok(Known {
            state,
            pinned: (start.workflow.clone(), start.version),
            version: None,
            in_parts: false,
        }))
    }

    /// Whether the entity `link` names is busy with its operation, run by
    /// `id`: a start it no longer waits for (the operation's outcome is in)
    /// must not run the operation again.
    async fn entity_waits(&self, id: &InstanceId, link: &EntityLink) -> Result<bool, ApplyError> {
        let key = EntityKey {
            tenant: id.tenant(),
            entity: link.entity.clone(),
        };
        let Some(stored) = self.store.load_entity(&key).await? else {
            return Ok(false);
        };
        let lock = lock_state(&stored.record.lock)?;
        Ok(lock
            .busy
            .is_some_and(|busy| busy.instance == *id && busy.operation.id == link.operation))
    }

    /// Whether the parent as this process last committed it runs the
    /// attempt: then it still does or did lately, and a child started for
    /// it is at worst one whose result is ignored. Only a yes is trusted
    /// (another replica may have moved the parent on since): a no is read
    /// again from the store. Spares a load of the whole parent (a fan-out
    /// of a thousand children) for each child.
    fn remembers_attempt(&self, parent: &ParentLink) -> bool {
        self.remembered.lock().is_ok_and(|remembered| {
            remembered
                .get(&parent.instance)
                .is_some_and(|known| known.state.runs_attempt(&parent.key, parent.attempt))
        })
    }

    /// A start of an instance that started before: ignored, but a child
    /// run that ended tells its parent again how it ended (after a restart
    /// of `legato up`, whose bus forgets, the parent asks again).
    pub(super) async fn started_again(
        &self,
        state: &InstanceState,
        start: &StartInstance,
    ) -> Applied {
        let Some(result) = legato_engine::result_of(state) else {
            return Applied::Ignored("already started".into());
        };
        let (subject, payload) = match (&state.parent, &state.serves) {
            (Some(parent), _) if start.parent.as_ref() == Some(parent) => {
                children::report(parent, &result)
            }
            (_, Some(link)) if start.entity_operation.as_ref() == Some(link) => {
                children::answer(&state.id, link, &result)
            }
            _ => return Applied::Ignored("already started".into()),
        };
        match effects::outbox_row(&subject, OffsetDateTime::now_utc(), payload, None) {
            Ok(row) => {
                if let Err(e) = self.relay.send(&[row]).await {
                    tracing::warn!(instance = %state.id, "could not tell again how the run ended: {e}");
                }
                Applied::Ignored("already started; how it ended told again".into())
            }
            Err(e) => {
                tracing::warn!(instance = %state.id, "no report of how the run ended: {e}");
                Applied::Ignored("already started".into())
            }
        }
    }
}
