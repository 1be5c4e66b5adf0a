//! What a decision sends, checked before it is committed: agents that
//! must be registered for the instance, child workflows whose definition
//! is pinned here.

use legato_contracts::InstanceId;
use legato_engine::{Event, decide};

use super::{Applier, ApplyError, MAX_UNROUTABLE};
use crate::agents::Unavailable;
use crate::children;

impl Applier {
    /// Fails the tasks the last decision dispatched to agents that are not
    /// registered (or not for this instance's tenant), and the child runs
    /// it started of workflows that are not (or whose input does not fit
    /// them), as further steps of the batch: a task no worker can take
    /// fails its step with the reason, and is never sent; a child run's
    /// definition is pinned here. Returns how many steps it added.
    pub(super) async fn unroutable(
        &self,
        id: &InstanceId,
        steps: &mut Vec<(Event, legato_engine::Decision)>,
    ) -> Result<usize, ApplyError> {
        let mut added = 0;
        let mut next = steps.len().saturating_sub(1);
        // A failure may dispatch more (a compensation, the next item), so
        // each added step is looked at in turn; a definition's steps bound
        // how many there can be.
        while next < steps.len() && added < MAX_UNROUTABLE {
            let mut missing = Vec::new();
            for command in &mut steps[next].1.commands {
                match command {
                    legato_engine::Command::DispatchTask(task) => {
                        if let Err(Unavailable(message)) =
                            self.agents.check(&*self.store, id, &task.agent).await?
                        {
                            missing.push((task.key.clone(), task.attempt, message));
                        }
                    }
                    legato_engine::Command::StartChild(start) => {
                        if let Err(message) =
                            children::resolve(&*self.store, &self.definitions, start).await?
                        {
                            missing.push((start.parent.key.clone(), start.parent.attempt, message));
                        }
                    }
                    _ => {}
                }
            }
            steps[next].1.commands.retain(|c| {
                let sent = match c {
                    legato_engine::Command::DispatchTask(t) => Some((&t.key, t.attempt)),
                    legato_engine::Command::StartChild(s) => {
                        Some((&s.parent.key, s.parent.attempt))
                    }
                    _ => None,
                };
                !sent.is_some_and(|(key, attempt)| {
                    missing.iter().any(|(k, a, _)| k == key && *a == attempt)
                })
            });
            let at = steps[next].0.at();
            next += 1;
            for (key, attempt, message) in missing {
                let failed = Event::TaskFailed {
                    at,
                    key,
                    attempt,
                    error: legato_contracts::TaskError {
                        message,
                        retryable: false,
                    },
                    usage: None,
                };
                let state = match steps.last() {
                    Some((_, d)) => &d.state,
                    None => break,
                };
                let decision = decide(state, &failed);
                if decision.applied() {
                    steps.push((failed, decision));
                    added += 1;
                }
            }
        }
        Ok(added)
    }
}
