//! `TaskContext::step`: work an agent's own loop records once per task.
//! The journal is read the first time a step asks for it, and only when
//! one may exist (a later attempt, a redelivery, a redrive); each new entry
//! is in the store before `step` returns, so a crash right after it costs
//! nothing recorded.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use legato_contracts::journal::{self, JournalKey};
use legato_contracts::{InstanceId, TaskError};
use legato_store::{JournalEntry, Journaled, Store, StoreError};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

/// How long a step waits for a store that is away (restarting, failing
/// over) before the attempt fails as retryable.
const STORE_PATIENCE: Duration = Duration::from_secs(30);
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// Calls the store until it answers, while it is only unavailable and
/// [`STORE_PATIENCE`] lasts: a store restart costs the step a pause, not
/// the attempt.
async fn patiently<T, F, Fut>(call: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + STORE_PATIENCE;
    let mut wait = FIRST_WAIT;
    loop {
        match call().await {
            Err(StoreError::Unavailable(why)) if tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!("journal: store unavailable ({why}); trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            other => return other,
        }
    }
}

/// One attempt's view of its task's journal.
pub(crate) struct Journal {
    store: Option<Arc<dyn Store>>,
    instance: InstanceId,
    key: JournalKey,
    attempt: u32,
    /// Whether entries may be there already; if not, nothing is read.
    may_exist: bool,
    recorded: OnceCell<HashMap<String, Value>>,
    /// Names this attempt used: a name twice is a bug in the agent.
    used: Mutex<HashSet<String>>,
}

impl Journal {
    /// The store the journal is kept in, if the worker has one.
    pub(crate) fn kept_in(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }
}

/// What a step found.
pub(crate) enum Found {
    /// Recorded by an earlier run: its value stands.
    Recorded(Value),
    /// Not recorded: run the work, then [`Journal::record`].
    New,
}

fn fatal(message: String) -> TaskError {
    TaskError {
        message,
        retryable: false,
    }
}

impl Journal {
    pub(crate) fn new(
        store: Option<Arc<dyn Store>>,
        instance: InstanceId,
        key: JournalKey,
        attempt: u32,
        may_exist: bool,
    ) -> Self {
        Self {
            store,
            instance,
            key,
            attempt,
            may_exist,
            recorded: OnceCell::new(),
            used: Mutex::default(),
        }
    }

    fn store(&self, name: &str) -> Result<&Arc<dyn Store>, TaskError> {
        self.store.as_ref().ok_or_else(|| {
            fatal(format!(
                "step {name:?}: journaled steps need the store; give this agent process a `store` setting"
            ))
        })
    }

    /// Checks the name and looks it up.
    pub(crate) async fn find(&self, name: &str) -> Result<Found, TaskError> {
        journal::check_name(name).map_err(|why| fatal(format!("step name {name:?} {why}")))?;
        let fresh = self
            .used
            .lock()
            .map(|mut used| used.insert(name.to_owned()))
            .unwrap_or(false);
        if !fresh {
            return Err(fatal(format!(
                "step {name:?} ran twice in one attempt: give each step of a task its own name"
            )));
        }
        let store = self.store(name)?;
        let recorded = self
            .recorded
            .get_or_try_init(|| async {
                if !self.may_exist {
                    return Ok(HashMap::new());
                }
                let entries = patiently(|| store.journal(&self.instance, &self.key)).await?;
                Ok::<_, legato_store::StoreError>(
                    entries.into_iter().map(|e| (e.name, e.value)).collect(),
                )
            })
            .await
            .map_err(|e| TaskError {
                message: format!("the task's journal could not be read: {e}"),
                retryable: true,
            })?;
        Ok(match recorded.get(name) {
            Some(value) => Found::Recorded(value.clone()),
            None => Found::New,
        })
    }

    /// Records what a step's work returned: the value that stands (another
    /// copy of the attempt may have recorded the name first), and its size
    /// in bytes when this call recorded it.
    pub(crate) async fn record(
        &self,
        name: &str,
        value: Value,
    ) -> Result<(Value, Option<usize>), TaskError> {
        let bytes = serde_json::to_vec(&value)
            .map_err(|e| fatal(format!("step {name:?}: its value is not JSON: {e}")))?
            .len();
        journal::check_value_size(bytes)
            .map_err(|why| fatal(format!("step {name:?}: its value {why}")))?;
        let entry = JournalEntry {
            name: name.to_owned(),
            value,
            attempt: self.attempt,
            recorded_at: OffsetDateTime::now_utc(),
        };
        let store = self.store(name)?;
        let recorded = patiently(|| store.record_journal(&self.instance, &self.key, &entry))
            .await
            .map_err(|e| TaskError {
                message: format!("step {name:?} could not be recorded: {e}"),
                retryable: true,
            })?;
        match recorded {
            Journaled::Recorded => Ok((entry.value, Some(bytes))),
            Journaled::RecordedBefore(value) => Ok((value, None)),
            Journaled::Full(why) => Err(fatal(format!("step {name:?}: {why}"))),
        }
    }
}
