use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use legato_bus::Bus;
use legato_contracts::{
    AgentName, Envelope, HeartbeatKind, InstanceId, TaskError, TaskHeartbeat, TaskKey, TenantId,
    TraceParent, Usage, WorkflowName,
};
use legato_service::progress_pace::{ProgressPace, Turn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::journal::{Found, Journal};

/// One capability. `run` may be called more than once for the same
/// (instance, key, attempt) after a crash, so anything it changes outside
/// should be keyed by [`Task::idempotency_key`].
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    fn name(&self) -> &AgentName;

    /// Does the work. A retryable error is retried under the step's policy;
    /// any other fails the step.
    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError>;
}

/// One attempt of one task, as dispatched by the orchestrator.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub instance: InstanceId,
    /// The tenant the instance belongs to, for agents that keep tenants'
    /// data apart.
    pub tenant: Option<TenantId>,
    pub key: TaskKey,
    pub attempt: u32,
    pub workflow: WorkflowName,
    pub input: Value,
    pub deadline: Option<OffsetDateTime>,
}

impl Task {
    /// Stable across redeliveries of the same attempt.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}#{}", self.instance, self.key, self.attempt)
    }
}

/// What an agent can do while it runs: record steps of its own loop once,
/// report progress, ask for approval, set the instance's custom status,
/// and notice cancellation.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) source: String,
    pub(crate) instance: InstanceId,
    pub(crate) key: TaskKey,
    pub(crate) attempt: u32,
    /// [`Task::idempotency_key`] of the attempt: what its progress is
    /// paced by.
    pub(crate) attempt_key: String,
    pub(crate) traceparent: Option<TraceParent>,
    pub(crate) wedged: Arc<std::sync::atomic::AtomicBool>,
    /// The step has a heartbeat lease: heartbeats say they renew it.
    pub(crate) leased: bool,
    pub(crate) cancel: CancellationToken,
    pub(crate) custom_status: Arc<Mutex<Option<Value>>>,
    /// What the attempt spent so far, sent with its result.
    pub(crate) usage: Arc<Mutex<Usage>>,
    /// The worker's progress pacing, shared by its attempts.
    pub(crate) pace: Arc<ProgressPace>,
    /// The step's heartbeat lease, which shortens a progress turn.
    pub(crate) lease_ms: Option<u64>,
    pub(crate) journal: Arc<Journal>,
    /// Answers to the questions the task asked, by name.
    pub(crate) answers: Arc<std::collections::BTreeMap<String, Value>>,
    /// Set when the attempt ended by asking: no result is sent.
    pub(crate) asked: Arc<std::sync::atomic::AtomicBool>,
    /// Model calls made so far in this attempt: each is a journaled step
    /// named by its place (`chat 1`, `chat 2`, …).
    pub(crate) chats: Arc<std::sync::atomic::AtomicU32>,
}

impl TaskContext {
    /// Runs `work` once per task, however often the task is tried: the
    /// first time, its result is recorded in the task's journal before
    /// `step` returns; a later attempt, a redelivery or a redrive of the
    /// same task returns the recorded value without running `work`. A
    /// `work` that fails is not recorded (it runs again next time). Each
    /// step of a task needs its own `name`; a value must be JSON of at most
    /// `legato_contracts::journal::MAX_ENTRY_BYTES`. Model calls and tool
    /// calls are what this is for: a crash at turn seven does not pay for
    /// turns one to six again.
    pub async fn step<T, F, Fut>(&self, name: &str, work: F) -> Result<T, TaskError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, TaskError>>,
    {
        let decode = |value: Value| {
            serde_json::from_value(value).map_err(|e| TaskError {
                message: format!("step {name:?}: the recorded value does not fit: {e}"),
                retryable: false,
            })
        };
        if let Found::Recorded(value) = self.journal.find(name).await? {
            return decode(value);
        }
        let value = serde_json::to_value(work().await?).map_err(|e| TaskError {
            message: format!("step {name:?}: its value is not JSON: {e}"),
            retryable: false,
        })?;
        let (value, recorded) = self.journal.record(name, value).await?;
        if let Some(bytes) = recorded {
            let notice = self.beat(
                Some(HeartbeatKind::JournalRecorded),
                Some(format!("recorded {name}")),
                Some(json!({ "name": name, "bytes": bytes })),
            );
            self.send(notice).await;
        }
        decode(value)
    }

    /// Relays progress to the instance's watchers. Best effort: progress
    /// that cannot be sent is logged, never fails the task.
    /// One attempt's progress goes on at most once a turn (half a second,
    /// or a quarter of its lease): what comes sooner waits, the latest
    /// replacing the one before (see `legato_service::progress_pace`).
    pub async fn progress(&self, message: impl Into<String>, data: Option<Value>) {
        let beat = self.beat(
            Some(HeartbeatKind::AgentProgress),
            Some(message.into()),
            data,
        );
        let lease = self.lease_ms.unwrap_or(u64::MAX);
        let now = tokio::time::Instant::now();
        match self
            .pace
            .offer(&self.attempt_key, &self.instance, beat, lease, now)
        {
            Turn::Now(beat) => self.send(beat).await,
            Turn::Later { wait, first } => {
                if first {
                    let ctx = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let now = tokio::time::Instant::now();
                        if let Some((_, beat)) = ctx.pace.due(&ctx.attempt_key, now) {
                            ctx.send(beat).await;
                        }
                    });
                }
            }
        }
    }

    /// Asks a person to raise an event on the instance; watchers get an
    /// `approval_requested` progress event with `data`.
    pub async fn request_approval(&self, question: impl Into<String>, data: Value) {
        self.heartbeat(
            Some(HeartbeatKind::ApprovalRequested),
            Some(question.into()),
            Some(data),
        )
        .await;
    }

    pub(crate) async fn heartbeat(
        &self,
        kind: Option<HeartbeatKind>,
        message: Option<String>,
        progress: Option<Value>,
    ) {
        self.send(self.beat(kind, message, progress)).await;
    }

    fn beat(
        &self,
        kind: Option<HeartbeatKind>,
        message: Option<String>,
        progress: Option<Value>,
    ) -> TaskHeartbeat {
        TaskHeartbeat {
            key: self.key.clone(),
            attempt: self.attempt,
            progress,
            kind,
            message,
            leased: self.leased,
            lease_ms: None,
        }
    }

    async fn send(&self, heartbeat: TaskHeartbeat) {
        let envelope = Envelope::new(
            self.source.clone(),
            self.instance.clone(),
            OffsetDateTime::now_utc(),
            heartbeat,
        )
        .with_traceparent(self.traceparent.clone());
        if let Err(e) = self.bus.publish_envelope(&envelope).await {
            tracing::warn!(instance = %self.instance, key = %self.key, "heartbeat not sent: {e}");
        }
    }

    /// Replaces the instance's custom status when the task completes.
    pub fn set_custom_status(&self, status: Value) {
        if let Ok(mut slot) = self.custom_status.lock() {
            *slot = Some(status);
        }
    }

    /// Relays what the attempt writes as `call` (name it as the journal
    /// entry that records the whole text, so a watcher who comes later
    /// finds it there) to the instance's watchers as it comes: `output`
    /// events on the stream and the hubs, never recorded. [`TaskContext::chat`]
    /// does this for a model's reply; use it for text from elsewhere.
    pub fn output(&self, call: &str) -> crate::Output {
        crate::Output::start(self, call.to_owned())
    }

    /// A model call through `client` (streamed), journaled as the step
    /// `chat N` (the N-th call of the attempt, so the same code asks for
    /// the same entries on every attempt): a later attempt gets the
    /// recorded reply without calling the model. The tokens it spent are
    /// counted into the result once (see [`TaskContext::add_usage`]). The
    /// text reaches the instance's watchers as the model writes it
    /// (`output` events, before the call returns).
    pub async fn chat(
        &self,
        client: &crate::llm::ChatClient,
        messages: &[Value],
        tools: Option<&Value>,
    ) -> Result<crate::llm::ChatReply, TaskError> {
        let n = self
            .chats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let call = format!("chat {n}");
        self.step(&call, || async {
            let relay = self.output(&call);
            let streamed = client
                .stream(messages, tools, &mut |text| relay.push(text))
                .await;
            relay.finish().await;
            let reply = streamed.map_err(|e| TaskError {
                message: e.to_string(),
                retryable: e.is_retryable(),
            })?;
            self.add_usage(&Usage {
                input_tokens: reply.input_tokens,
                output_tokens: reply.output_tokens,
                cost: 0.0,
                model: reply.model.clone(),
            });
            Ok(reply)
        })
        .await
    }

    /// Runs the tool call `call` (from a [`TaskContext::chat`] reply) once
    /// per task, however often the task is tried: journaled as the step
    /// `tool <call id>`, so a resumed loop gets its result without running
    /// the tool again.
    pub async fn tool<T, F, Fut>(
        &self,
        call: &crate::llm::ToolCall,
        work: F,
    ) -> Result<T, TaskError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, TaskError>>,
    {
        self.step(&format!("tool {}", call.id), work).await
    }

    /// Asks a person `question`, answered by an event named `name` (its
    /// data must fit `schema`, when given, which the dashboard renders):
    /// the first time, the attempt ends here without holding a worker,
    /// returning an error for the agent to pass on with `?`, and the task
    /// runs again once the answer comes (or fails its step after
    /// `timeout`); then `ask` returns the answer. Code before the question
    /// runs again, its journaled steps ([`TaskContext::step`]) do not.
    pub async fn ask(
        &self,
        name: &str,
        question: &str,
        schema: Option<Value>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Value, TaskError> {
        if let Some(answer) = self.answers.get(name) {
            return Ok(answer.clone());
        }
        let event = legato_contracts::EventName::parse(name).map_err(|e| TaskError {
            message: format!("question name {name:?}: {e}"),
            retryable: false,
        })?;
        let asked = legato_contracts::TaskAsked {
            key: self.key.clone(),
            attempt: self.attempt,
            name: event,
            question: question.to_owned(),
            schema,
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        let envelope = Envelope::new(
            self.source.clone(),
            self.instance.clone(),
            OffsetDateTime::now_utc(),
            asked,
        )
        .with_traceparent(self.traceparent.clone());
        self.bus
            .publish_envelope(&envelope)
            .await
            .map_err(|e| TaskError {
                message: format!("question {name} could not be asked: {e}"),
                retryable: true,
            })?;
        self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
        Err(TaskError {
            message: format!("waiting for an answer to {name}"),
            retryable: true,
        })
    }

    pub(crate) fn has_asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts what the attempt spent (model tokens, cost) into its result:
    /// the engine sums it per step and per instance against the instance's
    /// budget. Spent inside a [`TaskContext::step`], it is counted once,
    /// however often the task runs.
    pub fn add_usage(&self, spent: &Usage) {
        if let Ok(mut total) = self.usage.lock() {
            total.merge(spent);
        }
    }

    /// What the attempt reported spending, if anything.
    pub(crate) fn spent(&self) -> Option<Usage> {
        let total = self.usage.lock().ok()?.clone();
        (!total.is_empty()).then_some(total)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops the runtime's automatic heartbeats for this attempt, as if the
    /// agent's process were wedged: the diagnostic echo agent's `hang`, for
    /// testing heartbeat leases. Agents have no other use for it.
    pub fn stop_heartbeats(&self) {
        self.wedged
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn heartbeats_stopped(&self) -> bool {
        self.wedged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Completes when the orchestrator no longer wants this attempt
    /// (instance terminated, attempt timed out) or the worker is stopping.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}
