//! The worker loop shared by every agent.
//!
//! Delivery is at-least-once, so the same attempt can arrive twice: while
//! the first copy still runs (a broker redelivery after a reconnect), or
//! after it finished (the result was published but the ack was lost). The
//! worker keeps the attempts it is running and a bounded memory of results
//! it sent; a repeat is answered from memory instead of running the agent
//! again. The task delivery is acked only after its result is published, so
//! a worker that dies mid-task leaves the task to be redelivered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use legato_bus::{Bus, Delivery, Subscription, SubscriptionSpec};
use legato_contracts::{Envelope, Payload, TaskCompleted, TaskDispatched, TaskFailed};
use legato_service::Shutdown;
use legato_service::agent_figures::{Outcome, Tally};
use legato_service::progress_pace::ProgressPace;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::journal::Journal;
use crate::{Agent, Task, TaskContext};
use legato_contracts::journal::JournalKey;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Tasks run at once by this worker (and its prefetch).
    pub concurrency: usize,
    /// A task running longer than this sends a heartbeat this often.
    pub heartbeat_interval_ms: u64,
    /// Results remembered to answer redeliveries without re-running.
    pub dedup_capacity: usize,
    /// How long a draining worker waits for running tasks before leaving
    /// them to be redelivered.
    pub drain_timeout_ms: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            heartbeat_interval_ms: 10_000,
            dedup_capacity: 10_000,
            drain_timeout_ms: 10_000,
        }
    }
}

type AttemptId = (String, String, u32);

fn attempt_id(subject: &str, task: &TaskDispatched) -> AttemptId {
    (subject.to_owned(), task.key.to_string(), task.attempt)
}

/// Attempts running now, and results recently sent.
#[derive(Default)]
struct Ledger {
    running: HashMap<AttemptId, CancellationToken>,
    sent: HashMap<AttemptId, Arc<Envelope>>,
    sent_order: VecDeque<AttemptId>,
}

enum Admission {
    Run(CancellationToken),
    AlreadyRunning,
    AlreadySent(Arc<Envelope>),
}

struct Shared {
    agent: Arc<dyn Agent>,
    bus: Arc<dyn Bus>,
    settings: WorkerSettings,
    source: String,
    ledger: Mutex<Ledger>,
    shutdown: Shutdown,
    figures: Arc<Tally>,
    pace: Arc<ProgressPace>,
    /// Where task journals are; without it `TaskContext::step` fails.
    store: Option<Arc<dyn legato_store::Store>>,
}

impl Shared {
    async fn dead_letter(
        &self,
        delivery: Delivery,
        reason: &str,
    ) -> Result<(), legato_bus::BusError> {
        legato_service::metrics::dead_letter(delivery, self.agent.name().as_str(), reason).await
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Every critical section is a few map operations that cannot leave
        // the ledger half-updated, so a poisoned lock is still usable.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self, id: &AttemptId) -> Admission {
        let mut ledger = self.ledger();
        if let Some(result) = ledger.sent.get(id) {
            return Admission::AlreadySent(result.clone());
        }
        if ledger.running.contains_key(id) {
            return Admission::AlreadyRunning;
        }
        let token = CancellationToken::new();
        ledger.running.insert(id.clone(), token.clone());
        Admission::Run(token)
    }

    fn finish(&self, id: &AttemptId, result: Option<Arc<Envelope>>) {
        let mut ledger = self.ledger();
        ledger.running.remove(id);
        if let Some(result) = result {
            if ledger.sent.insert(id.clone(), result).is_none() {
                ledger.sent_order.push_back(id.clone());
            }
            while ledger.sent_order.len() > self.settings.dedup_capacity {
                if let Some(old) = ledger.sent_order.pop_front() {
                    ledger.sent.remove(&old);
                }
            }
        }
    }

    fn cancel(&self, id: &AttemptId) -> bool {
        match self.ledger().running.get(id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    pub fn new(
        agent: Arc<dyn Agent>,
        bus: Arc<dyn Bus>,
        settings: WorkerSettings,
        shutdown: Shutdown,
    ) -> Self {
        let source = format!("/legato/agent/{}", agent.name());
        Self {
            shared: Arc::new(Shared {
                agent,
                bus,
                settings,
                source,
                ledger: Mutex::new(Ledger::default()),
                shutdown,
                figures: Arc::default(),
                pace: Arc::default(),
                store: None,
            }),
        }
    }

    /// Counts the tasks this worker runs into `figures` (which a reporter
    /// writes to the store for the agent registry's live figures).
    pub fn with_figures(mut self, figures: Arc<Tally>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.figures = figures;
        }
        self
    }

    /// Keeps the journals of `TaskContext::step` in `store`.
    pub fn with_store(mut self, store: Arc<dyn legato_store::Store>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.store = Some(store);
        }
        self
    }

    /// The queue every replica of this agent shares.
    pub fn task_subscription(&self) -> SubscriptionSpec {
        let name = self.shared.agent.name();
        legato_bus::topology::agent_tasks(name.as_str())
            .prefetch(self.shared.settings.concurrency.max(1))
    }

    /// Subscribes and runs until shutdown, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        self.start().await?.await
    }

    /// Subscribes now (so nothing sent from here on is missed) and returns
    /// the loop to run.
    pub async fn start(
        self,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static>
    {
        let shared = self.shared.clone();
        let tasks = shared.bus.subscribe(self.task_subscription()).await?;
        // Only the replica running a task can stop it, so every replica
        // hears every cancellation on a queue of its own.
        let name = shared.agent.name();
        let replica = uuid::Uuid::new_v4().simple().to_string();
        let cancels = shared
            .bus
            .subscribe(legato_bus::topology::agent_cancellations(
                name.as_str(),
                &replica,
            ))
            .await?;
        Ok(work(shared, tasks, cancels))
    }
}

async fn work(
    shared: Arc<Shared>,
    mut tasks: Box<dyn Subscription>,
    cancels: Box<dyn Subscription>,
) -> anyhow::Result<()> {
    let name = shared.agent.name().clone();
    // Cancellations are heard whatever the task slots are doing, and also
    // while draining.
    let listener = tokio::spawn(listen_for_cancels(shared.clone(), cancels));
    let slots = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
    let mut running = JoinSet::new();
    tracing::info!(agent = %name, concurrency = shared.settings.concurrency, "agent worker started");
    let mut result = Ok(());
    loop {
        // Take a slot before taking a message, so a full worker leaves
        // messages on the queue for other replicas.
        let permit = tokio::select! {
            _ = shared.shutdown.wait() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let delivery = tokio::select! {
            _ = shared.shutdown.wait() => break,
            delivery = tasks.next() => delivery,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        let task_shared = shared.clone();
        running.spawn(async move {
            handle_task(&task_shared, delivery).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    drain(&shared, running).await;
    listener.abort();
    tracing::info!(agent = %name, "agent worker stopped");
    result
}

async fn listen_for_cancels(shared: Arc<Shared>, mut cancels: Box<dyn Subscription>) {
    while let Ok(delivery) = cancels.next().await {
        handle_cancel(&shared, delivery).await;
    }
}

async fn drain(shared: &Shared, mut running: JoinSet<()>) {
    let deadline = Duration::from_millis(shared.settings.drain_timeout_ms);
    let wait_all = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, wait_all).await.is_err() {
        tracing::warn!(
            left = running.len(),
            "drain timed out; unfinished tasks go back to the queue"
        );
        // Aborting drops their deliveries unsettled: redelivered elsewhere.
        running.abort_all();
    }
}

async fn handle_cancel(shared: &Shared, delivery: Delivery) {
    match delivery.decode() {
        Ok(Envelope {
            subject,
            payload: Payload::TaskCancelled(c),
            ..
        }) => {
            let id = (subject.to_string(), c.key.to_string(), c.attempt);
            if shared.cancel(&id) {
                tracing::info!(instance = %subject, key = %c.key, attempt = c.attempt, reason = %c.reason, "task cancelled");
            }
            settle(delivery.ack().await);
        }
        Ok(other) => {
            let reason = format!("{} is not a cancellation", other.type_name());
            settle(shared.dead_letter(delivery, &reason).await);
        }
        Err(e) => settle(shared.dead_letter(delivery, &e.to_string()).await),
    }
}

fn settle(result: Result<(), legato_bus::BusError>) {
    if let Err(e) = result {
        // The broker redelivers an unsettled message; nothing is lost.
        tracing::warn!("could not settle a delivery: {e}");
    }
}

async fn handle_task(shared: &Shared, delivery: Delivery) {
    let envelope = match delivery.decode() {
        Ok(e) => e,
        Err(e) => return settle(shared.dead_letter(delivery, &e.to_string()).await),
    };
    legato_service::metrics::received(shared.agent.name().as_str(), envelope.time);
    let Payload::TaskDispatched(dispatched) = &envelope.payload else {
        let reason = format!("{} does not belong on an agent queue", envelope.type_name());
        return settle(shared.dead_letter(delivery, &reason).await);
    };
    if &dispatched.agent != shared.agent.name() {
        let reason = format!(
            "task for agent {} reached agent {}",
            dispatched.agent,
            shared.agent.name()
        );
        return settle(shared.dead_letter(delivery, &reason).await);
    }
    let id = attempt_id(envelope.subject.as_str(), dispatched);
    let cancel = match shared.admit(&id) {
        Admission::Run(token) => token,
        // The copy already running will answer.
        Admission::AlreadyRunning => return settle(delivery.ack().await),
        Admission::AlreadySent(result) => {
            return match shared.bus.publish_envelope(&result).await {
                Ok(()) => settle(delivery.ack().await),
                Err(e) => {
                    tracing::warn!("republishing a result failed: {e}");
                    settle(delivery.nack().await)
                }
            };
        }
    };
    let task = Task {
        instance: envelope.subject.clone(),
        tenant: envelope.tenant(),
        key: dispatched.key.clone(),
        attempt: dispatched.attempt,
        workflow: dispatched.workflow.clone(),
        input: dispatched.input.clone(),
        deadline: dispatched.deadline,
    };
    if task
        .deadline
        .is_some_and(|d| d <= OffsetDateTime::now_utc())
    {
        // The orchestrator has already given up on this attempt.
        shared.finish(&id, None);
        return settle(delivery.ack().await);
    }
    let span = tracing::info_span!("task", instance = %task.instance, key = %task.key, attempt = task.attempt);
    legato_service::telemetry::continue_trace(&span, envelope.traceparent.as_ref());
    // What the task sends (heartbeats, its result) is the task span's child.
    let traceparent = span
        .in_scope(legato_service::telemetry::current_traceparent)
        .or_else(|| envelope.traceparent.clone());
    let attempt = task.idempotency_key();
    let ctx = TaskContext {
        attempt_key: attempt.clone(),
        bus: shared.bus.clone(),
        source: shared.source.clone(),
        instance: task.instance.clone(),
        key: task.key.clone(),
        attempt: task.attempt,
        traceparent: traceparent.clone(),
        wedged: Arc::default(),
        leased: dispatched.heartbeat_timeout_ms.is_some(),
        cancel: cancel.clone(),
        custom_status: Arc::default(),
        usage: Arc::default(),
        pace: shared.pace.clone(),
        lease_ms: dispatched.heartbeat_timeout_ms,
        journal: Arc::new(Journal::new(
            shared.store.clone(),
            task.instance.clone(),
            JournalKey::of(&task.key),
            task.attempt,
            legato_contracts::journal::may_exist(dispatched, delivery.delivery_count),
        )),
        answers: Arc::new(dispatched.answers.clone()),
        asked: Arc::default(),
        chats: Arc::default(),
    };
    let lease = dispatched.heartbeat_timeout_ms;
    let agent = shared.agent.name().as_str();
    shared.figures.started(agent, &attempt, None);
    let began = std::time::Instant::now();
    let outcome = run_with_heartbeats(shared, &task, &ctx, lease)
        .instrument(span)
        .await;
    shared.pace.forget(&attempt);
    let Some(outcome) = outcome else {
        // Cancelled: nobody wants the result.
        shared.figures.dropped(agent, &attempt);
        shared.finish(&id, None);
        return settle(delivery.ack().await);
    };
    if ctx.has_asked() {
        // The question ended the attempt: the task runs again once it is
        // answered.
        shared.figures.dropped(agent, &attempt);
        shared.finish(&id, None);
        return settle(delivery.ack().await);
    }
    let ended = if outcome.is_ok() {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    let now = OffsetDateTime::now_utc();
    shared
        .figures
        .ended(agent, &attempt, ended, Some(began.elapsed()), now);
    let custom_status = ctx.custom_status.lock().ok().and_then(|mut s| s.take());
    let usage = ctx.spent();
    let payload: Payload = match outcome {
        Ok(output) => TaskCompleted {
            key: task.key.clone(),
            attempt: task.attempt,
            output,
            custom_status,
            usage,
        }
        .into(),
        Err(error) => TaskFailed {
            key: task.key.clone(),
            attempt: task.attempt,
            error,
            usage,
        }
        .into(),
    };
    let result = Envelope::new(
        shared.source.clone(),
        task.instance.clone(),
        OffsetDateTime::now_utc(),
        payload,
    )
    .with_traceparent(traceparent);
    match shared.bus.publish_envelope(&result).await {
        Ok(()) => {
            shared.finish(&id, Some(Arc::new(result)));
            settle(delivery.ack().await);
        }
        Err(e) => {
            tracing::warn!(key = %task.key, "publishing a result failed; the task will be redelivered: {e}");
            shared.finish(&id, None);
            settle(delivery.nack().await);
        }
    }
}

/// Runs the agent, sending a heartbeat every interval while it works.
/// `None` when the attempt was cancelled.
/// Runs the task, heartbeating every `heartbeat_interval_ms`, and three
/// times per heartbeat lease when the step has one (so one lost heartbeat
/// never costs the lease).
async fn run_with_heartbeats(
    shared: &Shared,
    task: &Task,
    ctx: &TaskContext,
    lease_ms: Option<u64>,
) -> Option<Result<serde_json::Value, legato_contracts::TaskError>> {
    let every = lease_ms.map_or(shared.settings.heartbeat_interval_ms, |lease| {
        shared.settings.heartbeat_interval_ms.min(lease / 3)
    });
    let interval = Duration::from_millis(every.max(1));
    let work = shared.agent.run(task, ctx);
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = ctx.cancel.cancelled() => return None,
            _ = ticker.tick() => {
                if !ctx.heartbeats_stopped() {
                    ctx.heartbeat(None, None, None).await;
                }
            }
        }
    }
}
