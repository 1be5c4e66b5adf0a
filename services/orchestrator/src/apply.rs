//! Load, decide, commit, publish: one message's effect on one instance.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use legato_contracts::{InstanceId, RuntimeStatus, StartInstance, TraceParent, WorkflowName};
use legato_engine::{Event, InstanceState, Outcome, decide};
use legato_service::OutboxRelay;
use legato_service::definitions::Definitions;
use legato_service::records::{self, state_of};
use legato_store::{Commit, Expected, InstanceRecord, Store, StoreError, StoredInstance, Version};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::effects;
use crate::settings::OrchestratorSettings;

/// Instance locks per process; several replicas still race safely through
/// the store's version check, this only spares one process its own races.
const LOCK_SHARDS: usize = 256;
/// Instances whose last commit this process remembers, so the next event
/// needs no load. A record another replica changed meanwhile fails its
/// version check, is forgotten and loaded again.
const REMEMBERED: usize = 4_096;

/// What a message asks of an instance.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Event(Event),
    /// The definition is looked up only here, so the gateway's message stays
    /// small and the pinned version is read once per (name, version).
    Start {
        at: OffsetDateTime,
        start: StartInstance,
    },
    /// A redrive onto another version of the instance's definition, looked
    /// up here for the same reason.
    RedriveOnto {
        at: OffsetDateTime,
        id: String,
        version: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    Accepted,
    Ignored(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// Worth retrying later (conflicts kept losing, store unavailable).
    #[error("transient: {0}")]
    Transient(StoreError),
    /// The message can never be applied; dead-letter it with this reason.
    #[error("{0}")]
    Rejected(String),
}

impl ApplyError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Transient(StoreError::Conflict(_)))
    }

    /// The store did not answer (as against losing races).
    pub(crate) fn store_unavailable(&self) -> bool {
        matches!(self, Self::Transient(StoreError::Unavailable(_)))
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) | StoreError::Unavailable(_) => Self::Transient(e),
            other => Self::Rejected(other.to_string()),
        }
    }
}

pub(crate) struct Applier {
    pub(crate) store: Arc<dyn Store>,
    relay: Arc<OutboxRelay>,
    definitions: Definitions,
    locks: Vec<Mutex<()>>,
    retry: ExponentialBuilder,
    remembered: std::sync::Mutex<HashMap<InstanceId, Known>>,
}

/// An instance as the store holds it, read or last committed here.
#[derive(Clone)]
struct Known {
    state: InstanceState,
    /// The definition the record names.
    pinned: (WorkflowName, u32),
    version: Version,
    /// Whether the store keeps the state in parts, so a commit writes only
    /// those the decision changed (see `legato_service::records::parts`).
    in_parts: bool,
}

impl Known {
    fn read(stored: &StoredInstance) -> Result<Self, StoreError> {
        Ok(Self {
            state: state_of(&stored.record)?,
            pinned: (
                stored.record.summary.workflow.clone(),
                stored.record.summary.workflow_version,
            ),
            version: stored.version.clone(),
            in_parts: !stored.record.parts.is_empty(),
        })
    }

    /// The state whose parts the store holds, to write only what changed.
    fn stored_parts(&self) -> Option<&InstanceState> {
        self.in_parts.then_some(&self.state)
    }
}

/// Whether the store keeps the state in parts once `record` is committed
/// over `before` (see [`Known::stored_parts`]): a state once in parts stays
/// there.
fn in_parts_after(before: Option<&InstanceState>, record: &InstanceRecord) -> bool {
    before.is_some() || !record.parts.is_empty()
}

impl Applier {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        relay: Arc<OutboxRelay>,
        settings: OrchestratorSettings,
    ) -> Self {
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(500))
            .with_max_times(settings.store_attempts)
            .with_jitter();
        Self {
            store,
            relay,
            definitions: Definitions::default(),
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            retry,
            remembered: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn recall(&self, id: &InstanceId) -> Option<Known> {
        self.remembered.lock().ok()?.get(id).cloned()
    }

    fn remembers(&self, id: &InstanceId) -> bool {
        self.remembered
            .lock()
            .is_ok_and(|remembered| remembered.contains_key(id))
    }

    fn forget(&self, id: &InstanceId) {
        if let Ok(mut remembered) = self.remembered.lock() {
            remembered.remove(id);
        }
    }

    fn remember(&self, known: Known) {
        if let Ok(mut remembered) = self.remembered.lock() {
            if known.state.status.is_terminal() {
                remembered.remove(&known.state.id);
                return;
            }
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(known.state.id.clone(), known);
        }
    }

    pub(crate) fn lock_for(&self, id: &InstanceId) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        &self.locks[(h.finish() as usize) % LOCK_SHARDS]
    }

    /// Applies `input` to the instance, retrying conflicts with backoff.
    /// An unavailable store is an error at once.
    pub(crate) async fn apply(
        &self,
        id: &InstanceId,
        input: &Input,
        traceparent: Option<&TraceParent>,
    ) -> Result<Applied, ApplyError> {
        let _guard = self.lock_for(id).lock().await;
        (|| async {
            let mut applied = self.apply_once(id, input, traceparent, true).await;
            // A remembered record may be stale (another replica moved the
            // instance on), and a stale state may wrongly ignore an event
            // without any commit to catch it: only a loaded state may.
            if matches!(applied, Ok(Applied::Ignored(_))) && self.remembers(id) {
                self.forget(id);
                applied = self.apply_once(id, input, traceparent, false).await;
            }
            if applied.is_err() {
                self.forget(id);
            }
            applied
        })
        .retry(self.retry)
        // An unavailable store is waited out by the caller, which holds
        // the message meanwhile (see `inbound`); conflicts pass at once.
        .when(ApplyError::is_conflict)
        .await
    }

    async fn apply_once(
        &self,
        id: &InstanceId,
        input: &Input,
        traceparent: Option<&TraceParent>,
        remembered: bool,
    ) -> Result<Applied, ApplyError> {
        let known = match remembered.then(|| self.recall(id)).flatten() {
            Some(known) => Some(known),
            None => match self.store.load(id).await? {
                Some(stored) => Some(Known::read(&stored)?),
                None => None,
            },
        };
        let (state, expected, pinned) = match (&known, input) {
            (Some(k), _) => (
                &k.state,
                Expected::Version(k.version.clone()),
                k.pinned.clone(),
            ),
            // Every start is preceded by its Pending record (the gateway
            // writes it; recovery sends starts from it). No record means the
            // instance was purged since: a late or redelivered start must
            // not bring it back (it would also occupy a reused id).
            (None, Input::Start { .. }) => {
                return Err(ApplyError::Rejected(format!(
                    "instance {id} does not exist (purged, or its start was never accepted)"
                )));
            }
            (None, Input::Event(_) | Input::RedriveOnto { .. }) => {
                return Err(ApplyError::Rejected(format!(
                    "instance {id} does not exist"
                )));
            }
        };
        let event = match input {
            Input::Event(event) => event.clone(),
            Input::RedriveOnto { at, id, version } => {
                let workflow = self
                    .definitions
                    .get(&*self.store, &pinned.0, *version)
                    .await?;
                Event::RedriveRequested {
                    at: *at,
                    id: id.clone(),
                    workflow: Some(workflow),
                }
            }
            Input::Start { at, start } => {
                if state.status != RuntimeStatus::Pending {
                    return Ok(Applied::Ignored("already started".into()));
                }
                // An instance runs its own tenant's definitions or shared
                // ones, and belongs to the tenant its id names.
                let tenant = id.tenant().map(String::from);
                let workflow_tenant = start.workflow.tenant().map(String::from);
                if start.tenant != tenant || workflow_tenant.is_some_and(|t| Some(t) != tenant) {
                    return Err(ApplyError::Rejected(format!(
                        "start of {id} names tenant {:?} and workflow {}, which do not belong to \
                         the instance's tenant {tenant:?}",
                        start.tenant, start.workflow
                    )));
                }
                let workflow = self
                    .definitions
                    .get(&*self.store, &start.workflow, start.version)
                    .await?;
                Event::Started {
                    at: *at,
                    instance: id.clone(),
                    workflow,
                    input: start.input.clone(),
                    tenant: start.tenant.clone(),
                    run: new_run(),
                    created_at: state.created_at,
                }
            }
        };
        let decision = decide(state, &event);
        if let Outcome::Ignored(reason) = decision.outcome {
            if let (Event::TimerFired { timer, .. }, Some(known)) = (&event, &known) {
                self.forget_timer(known, timer.to_string()).await?;
            }
            return Ok(Applied::Ignored(reason));
        }
        let before = known.as_ref().and_then(Known::stored_parts);
        // The commit is a span of the request's trace, and what it sends
        // (dispatches, progress) continues from it.
        let span = tracing::info_span!("commit", instance = %id, messages = tracing::field::Empty);
        let traceparent = span
            .in_scope(legato_service::telemetry::current_traceparent)
            .or_else(|| traceparent.cloned());
        let commit = effects::commit(
            &decision,
            before,
            &event,
            expected,
            pinned,
            traceparent.as_ref(),
        )?;
        let outbox = commit.outbox.clone();
        span.record("messages", outbox.len());
        let summary = commit.record.summary.clone();
        let in_parts = in_parts_after(before, &commit.record);
        let version = self.store.commit(commit).instrument(span.clone()).await?;
        crate::metrics::record(&summary.workflow, state, &decision);
        self.remember(Known {
            state: decision.state,
            pinned: (summary.workflow, summary.workflow_version),
            version,
            in_parts,
        });
        // Published while the instance lock is held, so one instance's
        // messages leave in decision order.
        if let Err(e) = self.relay.publish(id, &outbox).instrument(span).await {
            tracing::warn!(instance = %id, "outbox publish failed, the sweeper will retry: {e}");
        }
        Ok(Applied::Accepted)
    }

    /// Deletes a timer row the engine no longer knows (fired twice, or
    /// cancelled by a decision whose commit raced the poll).
    async fn forget_timer(&self, known: &Known, timer: String) -> Result<(), StoreError> {
        let (workflow, version) = known.pinned.clone();
        let now = known
            .state
            .updated_at
            .unwrap_or_else(OffsetDateTime::now_utc);
        let record =
            records::record_since(known.stored_parts(), &known.state, workflow, version, now)?;
        let in_parts = in_parts_after(known.stored_parts(), &record);
        let mut commit = Commit::new(record, Expected::Version(known.version.clone()));
        commit.remove_timers.push(timer);
        let version = self.store.commit(commit).await?;
        self.remember(Known {
            version,
            in_parts,
            ..known.clone()
        });
        Ok(())
    }
}

/// A run id for a start: random, so a reused instance id never shares task
/// keys with its earlier runs (the Started event records it for replay),
/// and within 53 bits, so agents in any language read it exactly.
fn new_run() -> u64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 11).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use legato_bus::InProcessBus;
    use legato_contracts::WorkflowName;
    use legato_store::SqliteStore;

    fn applier_on_memory() -> (Arc<dyn Store>, Applier) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let relay = Arc::new(OutboxRelay::new(
            Arc::new(InProcessBus::default()),
            store.clone(),
        ));
        let applier = Applier::new(store.clone(), relay, OrchestratorSettings::default());
        (store, applier)
    }

    /// A start that arrives after its instance was purged (redelivered, or
    /// late from a replica that crashed holding it) is refused, not
    /// obeyed: it would bring the purged instance back and occupy its id.
    #[tokio::test]
    async fn a_start_without_its_record_does_not_create_the_instance() {
        let (store, applier) = applier_on_memory();
        let id = InstanceId::parse("purged-1").unwrap();
        let start = Input::Start {
            at: OffsetDateTime::now_utc(),
            start: StartInstance {
                workflow: WorkflowName::parse("anything").unwrap(),
                version: 1,
                input: serde_json::json!({}),
                tenant: None,
            },
        };
        let refused = applier.apply(&id, &start, None).await;
        assert!(
            matches!(&refused, Err(ApplyError::Rejected(why)) if why.contains("purged")),
            "{refused:?}"
        );
        assert!(store.load(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_start_naming_another_tenant_is_refused() {
        let (store, applier) = applier_on_memory();
        let id = InstanceId::parse("acme~order-1").unwrap();
        let now = OffsetDateTime::now_utc();
        let workflow = WorkflowName::parse("beta~private").unwrap();
        let pending = legato_service::records::pending(
            id.clone(),
            workflow.clone(),
            1,
            serde_json::json!({}),
            Some("acme".into()),
            now,
        )
        .unwrap();
        store
            .commit(Commit::new(pending, Expected::New))
            .await
            .unwrap();
        for (tenant, workflow) in [
            (Some("acme"), workflow),
            (None, WorkflowName::parse("shared").unwrap()),
        ] {
            let start = Input::Start {
                at: now,
                start: StartInstance {
                    workflow,
                    version: 1,
                    input: serde_json::json!({}),
                    tenant: tenant.map(str::to_owned),
                },
            };
            let refused = applier.apply(&id, &start, None).await;
            assert!(
                matches!(&refused, Err(ApplyError::Rejected(why)) if why.contains("tenant")),
                "{refused:?}"
            );
        }
    }
}
