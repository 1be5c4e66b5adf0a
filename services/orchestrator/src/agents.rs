//! Which agents exist, as far as dispatching is concerned: the registry in
//! the store, read again every few seconds and at once when a dispatch
//! names an agent this replica has not seen (so an agent registered a
//! moment ago on another replica is found). A task for an agent that is not
//! registered, or that belongs to another tenant, would wait on a queue no
//! worker reads: its step fails instead, with the agent named.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use legato_contracts::{AgentName, InstanceId};
use legato_store::{Store, StoreError};

/// How long a read of the registry is trusted for agents it lists.
const FRESH: Duration = Duration::from_secs(5);
/// A name the last read did not list is looked up again with a read made
/// after the question, at most one per this long (a workflow naming a
/// missing agent in a loop must not hammer the store).
const MISS_READ: Duration = Duration::from_millis(250);

/// Who may use an agent: `None` for a shared one, else its tenant.
type Owners = HashMap<AgentName, Option<String>>;

pub(crate) struct AgentDirectory {
    known: Mutex<Option<(Instant, Owners)>>,
}

/// Why a task cannot go to its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unavailable(pub String);

impl AgentDirectory {
    pub(crate) fn new() -> Self {
        Self {
            known: Mutex::new(None),
        }
    }

    /// The answer from the last read, if it listed `agent` lately; else
    /// how long to wait before reading again.
    fn recall(
        &self,
        instance: &InstanceId,
        agent: &AgentName,
    ) -> Result<Result<(), Unavailable>, Duration> {
        let Ok(known) = self.known.lock() else {
            return Err(Duration::ZERO);
        };
        match known.as_ref() {
            Some((at, owners)) if at.elapsed() < FRESH && owners.contains_key(agent) => {
                Ok(verdict(owners, instance, agent))
            }
            Some((at, _)) => Err(MISS_READ.saturating_sub(at.elapsed())),
            None => Err(Duration::ZERO),
        }
    }

    /// Whether `instance`'s tasks may go to `agent`. A store error is
    /// returned as is: the caller waits it out rather than fail a step on it.
    pub(crate) async fn check(
        &self,
        store: &dyn Store,
        instance: &InstanceId,
        agent: &AgentName,
    ) -> Result<Result<(), Unavailable>, StoreError> {
        match self.recall(instance, agent) {
            Ok(known) => return Ok(known),
            // Not listed by a read older than this question: an agent
            // registered a moment ago must be found, so read again.
            Err(wait) => tokio::time::sleep(wait).await,
        }
        let started = Instant::now();
        let owners: Owners = store
            .list_agents()
            .await?
            .into_iter()
            .map(|a| (a.record.name, a.record.tenant))
            .collect();
        let answer = verdict(&owners, instance, agent);
        if let Ok(mut known) = self.known.lock() {
            *known = Some((started, owners));
        }
        Ok(answer)
    }
}

fn verdict(owners: &Owners, instance: &InstanceId, agent: &AgentName) -> Result<(), Unavailable> {
    let tenant = instance.tenant();
    match owners.get(agent) {
        Some(None) => Ok(()),
        Some(Some(owner)) if tenant.as_ref().map(|t| t.as_str()) == Some(owner.as_str()) => Ok(()),
        _ => Err(Unavailable(format!("no agent {agent} is registered"))),
    }
}
