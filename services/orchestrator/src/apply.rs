//! Load, decide, commit, publish: messages' effect on one instance.
//!
//! Messages for one instance are applied by one runner at a time, in the
//! order they were posted (the consumer posts each as it takes it). Those
//! that arrive while it works (the results of a fan-out, finishing
//! together) wait in the instance's mailbox and are then decided one after
//! the other and committed together: one load, one commit, one progress
//! message for all of them, each still a history row of its own. Each
//! message is answered (and so acked) only once that commit is durable.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use legato_contracts::{InstanceId, RuntimeStatus, StartInstance, TraceParent, WorkflowName};
use legato_engine::{Event, InstanceState, Outcome, decide};
use legato_service::OutboxRelay;
use legato_service::definitions::Definitions;
use legato_service::records::state_of;
use legato_store::{Expected, InstanceRecord, Store, StoreError, StoredInstance, Version};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::agents::AgentDirectory;
use crate::effects;
use crate::mailboxes::Mailboxes;
use crate::settings::OrchestratorSettings;
pub(crate) use answers::{Applied, ApplyError, Pending};

/// Most messages one commit takes for an instance; more wait for the next.
/// Keeps a commit well inside Table Storage's 100 operations per batch.
const MAX_BATCH: usize = 16;
/// Instances whose last commit this process remembers, so the next event
/// needs no load. A record another replica changed meanwhile fails its
/// version check, is forgotten and loaded again.
const REMEMBERED: usize = 4_096;
/// Most tasks of one message failed for a missing agent.
const MAX_UNROUTABLE: usize = 10_000;

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

pub(crate) struct Applier {
    pub(crate) store: Arc<dyn Store>,
    relay: Arc<OutboxRelay>,
    definitions: Definitions,
    agents: AgentDirectory,
    /// Messages waiting for their instance's runner.
    mailboxes: Mailboxes<InstanceId, Waiting>,
    retry: ExponentialBuilder,
    remembered: std::sync::Mutex<HashMap<InstanceId, Known>>,
}

/// A message waiting to be applied, and who to tell how it went.
struct Waiting {
    input: Input,
    traceparent: Option<TraceParent>,
    answer: oneshot::Sender<Result<Applied, ApplyError>>,
}

/// An instance as the store holds it, read or last committed here.
#[derive(Clone)]
struct Known {
    state: InstanceState,
    /// The definition the record names.
    pinned: (WorkflowName, u32),
    /// `None` for a child run about to be created by its start.
    version: Option<Version>,
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
            version: Some(stored.version.clone()),
            in_parts: !stored.record.parts.is_empty(),
        })
    }

    /// What a commit of this instance expects of the store.
    fn expected(&self) -> Expected {
        self.version
            .clone()
            .map_or(Expected::New, Expected::Version)
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

/// How one pass over a batch went.
struct Pass {
    /// One answer per message, in order.
    answers: Vec<Result<Applied, ApplyError>>,
    /// Whether it wrote anything.
    committed: bool,
}

impl Pass {
    fn ignored_any(&self) -> bool {
        self.answers
            .iter()
            .any(|a| matches!(a, Ok(Applied::Ignored(_))))
    }
}

/// How passing over a batch ended.
enum Passed {
    /// Every message is answered.
    Done(Pass),
    /// The batch's changes are more than the store takes in one commit.
    TooLarge,
    /// The message at `input` was applied before (the store holds its
    /// claim): nothing was written, and the others go again without it.
    ClaimedBefore { input: usize, message: String },
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
            agents: AgentDirectory::new(),
            mailboxes: Mailboxes::default(),
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

    /// Applies `input` to the instance, with whatever else arrives for it
    /// meanwhile, retrying conflicts with backoff. An unavailable store is
    /// an error at once.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        id: &InstanceId,
        input: &Input,
        traceparent: Option<&TraceParent>,
    ) -> Result<Applied, ApplyError> {
        self.submit(id, input, traceparent).answer().await
    }

    /// Posts `input` to the instance's mailbox now (so messages posted one
    /// after the other are applied in that order), starting its runner if
    /// none works through it; the answer comes with the commit.
    pub(crate) fn submit(
        self: &Arc<Self>,
        id: &InstanceId,
        input: &Input,
        traceparent: Option<&TraceParent>,
    ) -> Pending {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            input: input.clone(),
            traceparent: traceparent.cloned(),
            answer,
        };
        if self.mailboxes.post(id, waiting) {
            // Detached: the runner goes on (and answers everyone) even if
            // the caller that started it stops waiting.
            let applier = self.clone();
            let id = id.clone();
            tokio::spawn(async move { applier.run(id).await });
        }
        Pending(answered)
    }

    /// Works through the instance's mailbox until it is empty.
    async fn run(self: Arc<Self>, id: InstanceId) {
        let mut runner = self.mailboxes.runner(&id);
        while let Some(batch) = runner.next_batch(MAX_BATCH) {
            let inputs: Vec<&Input> = batch.iter().map(|w| &w.input).collect();
            let traceparent = batch.iter().find_map(|w| w.traceparent.as_ref());
            let answers = self.apply_batch(&id, &inputs, traceparent).await;
            for (waiting, answer) in batch.into_iter().zip(answers) {
                let _gone_is_fine = waiting.answer.send(answer);
            }
        }
    }

    /// One answer per input. A message applied before is answered as
    /// ignored and the others go on without it; inputs whose changes
    /// together are more than the store takes in one commit are applied
    /// one by one instead.
    async fn apply_batch(
        &self,
        id: &InstanceId,
        inputs: &[&Input],
        traceparent: Option<&TraceParent>,
    ) -> Vec<Result<Applied, ApplyError>> {
        let mut answers: Vec<Option<Result<Applied, ApplyError>>> =
            inputs.iter().map(|_| None).collect();
        let mut open: Vec<usize> = (0..inputs.len()).collect();
        let mut alone = false;
        // Each round answers at least one input, but for the one that
        // turns to applying them alone.
        while !open.is_empty() {
            let take = if alone { 1 } else { open.len() };
            let batch: Vec<&Input> = open[..take].iter().map(|&i| inputs[i]).collect();
            match self.attempt(id, &batch, traceparent).await {
                Ok(Passed::Done(pass)) => {
                    for (i, answer) in open.drain(..take).zip(pass.answers) {
                        answers[i] = Some(answer);
                    }
                }
                Ok(Passed::ClaimedBefore { input, message }) => {
                    let i = open.remove(input);
                    answers[i] = Some(Ok(Applied::Ignored(format!(
                        "message {message} was already applied"
                    ))));
                }
                Ok(Passed::TooLarge) if take > 1 => alone = true,
                Ok(Passed::TooLarge) => {
                    let i = open.remove(0);
                    answers[i] = Some(Err(ApplyError::Rejected(format!(
                        "the decision for instance {id} is more than the store takes in one commit"
                    ))));
                }
                Err(e) => {
                    for i in open.drain(..take) {
                        answers[i] = Some(Err(e.again()));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(ApplyError::Rejected("no answer for the message".into()))
                })
            })
            .collect()
    }

    /// Passes over the batch, retrying conflicts.
    async fn attempt(
        &self,
        id: &InstanceId,
        inputs: &[&Input],
        traceparent: Option<&TraceParent>,
    ) -> Result<Passed, ApplyError> {
        (|| async {
            let mut pass = self.pass(id, inputs, traceparent, true).await;
            // A remembered record may be stale (another replica moved the
            // instance on), and a stale state may wrongly ignore an event
            // without any commit to catch it: only a loaded state may.
            if matches!(&pass, Ok(Passed::Done(p)) if !p.committed && p.ignored_any())
                && self.remembers(id)
            {
                self.forget(id);
                pass = self.pass(id, inputs, traceparent, false).await;
            }
            if pass.is_err() {
                self.forget(id);
            }
            pass
        })
        .retry(self.retry)
        // An unavailable store is waited out by the callers, which hold
        // their messages meanwhile (see `inbound`); conflicts pass at once.
        .when(ApplyError::is_conflict)
        .await
    }

    /// Decides every input in turn and commits what they changed at once.
    async fn pass(
        &self,
        id: &InstanceId,
        inputs: &[&Input],
        traceparent: Option<&TraceParent>,
        remembered: bool,
    ) -> Result<Passed, ApplyError> {
        let known = match remembered.then(|| self.recall(id)).flatten() {
            Some(known) => known,
            None => match self.store.load(id).await? {
                Some(stored) => Known::read(&stored)?,
                None => match self.adopt(id, inputs).await? {
                    Ok(known) => known,
                    Err(answers) => {
                        return Ok(Passed::Done(Pass {
                            answers,
                            committed: false,
                        }));
                    }
                },
            },
        };
        let mut answers = Vec::with_capacity(inputs.len());
        let mut steps: Vec<(Event, legato_engine::Decision)> = Vec::new();
        // Which input each step decided, and the ids the steps claim.
        let mut decided = Vec::new();
        let mut claims = BTreeSet::new();
        let mut forgotten = Vec::new();
        for (n, input) in inputs.iter().enumerate() {
            let state = steps.last().map_or(&known.state, |(_, d)| &d.state);
            let event = match self.event_for(id, input, state, &known.pinned).await {
                Ok(Ok(event)) => event,
                Ok(Err(applied)) => {
                    answers.push(Ok(applied));
                    continue;
                }
                Err(ApplyError::Rejected(reason)) => {
                    answers.push(Err(ApplyError::Rejected(reason)));
                    continue;
                }
                Err(transient) => return Err(transient),
            };
            let decision = decide(state, &event);
            if let Outcome::Ignored(reason) = decision.outcome {
                if let Event::TimerFired { timer, .. } = &event {
                    forgotten.push(timer.to_string());
                }
                answers.push(Ok(Applied::Ignored(reason)));
                continue;
            }
            // A copy of a message within the batch.
            if let Some(message) = decision.claimed_before(&claims) {
                answers.push(Ok(Applied::Ignored(format!(
                    "message {message} was already applied"
                ))));
                continue;
            }
            claims.extend(decision.claims.iter().cloned());
            answers.push(Ok(Applied::Accepted));
            decided.push(n);
            steps.push((event, decision));
            // Tasks whose agent is missing fail now, in the same commit.
            for _ in 0..self.unroutable(id, &mut steps).await? {
                decided.push(n);
            }
        }
        if steps.is_empty() && forgotten.is_empty() {
            return Ok(Passed::Done(Pass {
                answers,
                committed: false,
            }));
        }
        let state = steps.last().map_or(&known.state, |(_, d)| &d.state);
        let before = known.stored_parts();
        // The commit is a span of the trace of the batch's first message,
        // and what it sends (dispatches, progress) continues from it.
        let span = tracing::info_span!(
            "commit",
            instance = %id,
            events = steps.len(),
            messages = tracing::field::Empty
        );
        legato_service::telemetry::continue_trace(&span, traceparent);
        let traceparent = span
            .in_scope(legato_service::telemetry::current_traceparent)
            .or_else(|| traceparent.cloned());
        let commit = effects::commit(
            state,
            &steps,
            &forgotten,
            before,
            known.expected(),
            known.pinned.clone(),
            traceparent.as_ref(),
        )?;
        let outbox = commit.outbox.clone();
        span.record("messages", outbox.len());
        let summary = commit.record.summary.clone();
        let in_parts = in_parts_after(before, &commit.record);
        let version = match self.store.commit(commit).instrument(span.clone()).await {
            Ok(version) => version,
            Err(StoreError::TooLarge(_)) => return Ok(Passed::TooLarge),
            Err(StoreError::Claimed(message)) => {
                let step = steps.iter().position(|(_, d)| d.claims.contains(&message));
                return match step.and_then(|step| decided.get(step)) {
                    Some(&input) => Ok(Passed::ClaimedBefore { input, message }),
                    None => Err(ApplyError::Rejected(format!(
                        "the store refused message {message} as applied before, which no message \
                         of the batch claims"
                    ))),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let mut decided_from = &known.state;
        for (_, decision) in &steps {
            crate::metrics::record(&summary.workflow, decided_from, decision);
            decided_from = &decision.state;
        }
        self.remember(Known {
            state: state.clone(),
            pinned: (summary.workflow, summary.workflow_version),
            version: Some(version),
            in_parts,
        });
        // Published before the next batch of this instance is decided, so
        // one instance's messages leave in decision order.
        if let Err(e) = self.relay.publish(id, &outbox).instrument(span).await {
            tracing::warn!(instance = %id, "outbox publish failed, the sweeper will retry: {e}");
        }
        Ok(Passed::Done(Pass {
            answers,
            committed: true,
        }))
    }

    /// The engine event `input` stands for on `state`, or what becomes of
    /// it without one.
    async fn event_for(
        &self,
        id: &InstanceId,
        input: &Input,
        state: &InstanceState,
        pinned: &(WorkflowName, u32),
    ) -> Result<Result<Event, Applied>, ApplyError> {
        Ok(Ok(match input {
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
                    return Ok(Err(self.started_again(state, start).await));
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
                    parent: start.parent.clone(),
                    budget: start.budget.clone(),
                    serves: start.entity_operation.clone(),
                }
            }
        }))
    }
}

/// Why an input for an instance with no record cannot be applied.
fn missing(id: &InstanceId, input: &Input) -> Result<Applied, ApplyError> {
    match input {
        // Every start but a child's is preceded by its Pending record (the
        // gateway writes it; recovery sends starts from it). No record
        // means the instance was purged since: a late or redelivered start
        // must not bring it back (it would also occupy a reused id).
        Input::Start { .. } => Err(ApplyError::Rejected(format!(
            "instance {id} does not exist (purged, or its start was never accepted)"
        ))),
        // A parent stopping a child whose start was not taken up yet (that
        // start is then let go, see `Applier::adopt`), or a late result of
        // work a child purged with its parent had under way: stale, not
        // poison.
        Input::Event(_) if id.is_child() => Ok(Applied::Ignored(format!(
            "child {id} does not exist (not taken up yet, or purged with its parent)"
        ))),
        Input::Event(_) | Input::RedriveOnto { .. } => Err(ApplyError::Rejected(format!(
            "instance {id} does not exist"
        ))),
    }
}

/// Frees the instance's mailbox if its runner stops while armed (a panic);
/// the messages in it are then answered with an error (their senders go).
/// A run id for a start: random, so a reused instance id never shares task
/// keys with its earlier runs (the Started event records it for replay),
/// and within 53 bits, so agents in any language read it exactly.
fn new_run() -> u64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 11).max(1)
}

mod adopt;
mod answers;
mod sends;
#[cfg(test)]
mod tests;
