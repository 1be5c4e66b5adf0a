//! Child runs as the applier meets them: a child's first start creates
//! it, and a start of a child that already ended reports its end again.

use legato_contracts::{InstanceId, ParentLink, StartInstance};
use legato_engine::InstanceState;
use legato_service::records::state_of;
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
        let child_start = inputs.iter().find_map(|input| match input {
            Input::Start {
                at,
                start:
                    start @ StartInstance {
                        parent: Some(parent),
                        ..
                    },
            } => Some((*at, start, parent)),
            _ => None,
        });
        let Some((at, start, parent)) = child_start else {
            return Ok(Err(inputs.iter().map(|input| missing(id, input)).collect()));
        };
        let waits = self.remembers_attempt(parent)
            || match self.store.load(&parent.instance).await? {
                Some(stored) => state_of(&stored.record)?.runs_attempt(&parent.key, parent.attempt),
                None => false,
            };
        if !waits {
            let reason = format!(
                "parent {} no longer waits for task {} attempt {}",
                parent.instance, parent.key, parent.attempt
            );
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
        let ended = legato_engine::result_of(state)
            .filter(|_| start.parent.is_some() && start.parent == state.parent);
        if let (Some(result), Some(parent)) = (ended, &state.parent) {
            let (subject, payload) = children::report(parent, &result);
            match effects::outbox_row(&subject, OffsetDateTime::now_utc(), payload, None) {
                Ok(row) => {
                    if let Err(e) = self.relay.send(&[row]).await {
                        tracing::warn!(instance = %state.id, "could not tell the parent again how the child ended: {e}");
                    }
                    return Applied::Ignored(
                        "already started; its end told to its parent again".into(),
                    );
                }
                Err(e) => tracing::warn!(instance = %state.id, "no report for the parent: {e}"),
            }
        }
        Applied::Ignored("already started".into())
    }
}
