//! `/api/v1/tasks`: the pull-worker protocol. A worker anywhere long-polls
//! for tasks of the agents its credential names, then heartbeats (which
//! keeps its lease and may carry progress), completes or fails each one by
//! its task token. Every gateway replica answers for every token: the
//! token names the attempt, and what the attempt is now is read from the
//! store, so a replica that dies between a poll and a completion loses
//! nothing.
//!
//! What is promised, and where it comes from:
//! - a task taken is leased to its worker from the moment it is handed out
//!   (a claim heartbeat with the agent's `leaseMs`); an attempt whose worker
//!   goes silent for a lease is failed as retryable and retried under the
//!   step's policy (the engine's lease check);
//! - a completion sent twice is recorded once (the engine takes one result
//!   per attempt), and both answers are 200;
//! - a completion, failure or heartbeat for an attempt that is no longer
//!   wanted (timed out, lease lost, instance terminated, failed, rolled
//!   back) answers 409 and is not recorded; on a heartbeat that is how a
//!   worker learns it was cancelled;
//! - a worker of one tenant serves only its tenant's agents, whose tasks
//!   only its tenant's instances send.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use legato_contracts::{
    AgentName, Envelope, HeartbeatKind, InstanceId, Payload, RuntimeStatus, TaskCompleted,
    TaskDispatched, TaskError, TaskFailed, TaskHeartbeat, TaskKey, TraceParent,
};
use legato_engine::SlotStatus;
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::GatewayState;
use crate::body::JsonBody;
use crate::dto::rfc3339;
use crate::registry::{self, Agent, AgentKind};

/// Most tasks one poll takes.
pub const MAX_TASKS_PER_POLL: usize = 64;
/// Longest a poll waits: under the gateway's request time limit.
pub const MAX_WAIT_MS: u64 = 25_000;
const DEFAULT_WAIT_MS: u64 = 20_000;
const MAX_AGENTS_PER_POLL: usize = 16;
const MAX_WORKER_ID_CHARS: usize = 128;
const MAX_MESSAGE_CHARS: usize = 4_096;

/// `POST /api/v1/tasks/poll`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PollRequest {
    /// The agents to take tasks of (pull agents the credential may serve).
    #[schema(min_items = 1, max_items = 16)]
    pub agents: Vec<String>,
    /// At most this many tasks (default 1).
    #[schema(minimum = 1, maximum = 64)]
    pub max_tasks: Option<usize>,
    /// How long to wait for a first task, in ms (default 20,000). The
    /// answer comes as soon as one task is there.
    #[schema(maximum = 25000)]
    pub wait_ms: Option<u64>,
    /// The worker's name, for logs (at most 128 characters).
    #[schema(max_length = 128)]
    pub worker_id: Option<String>,
}

/// One task, as a worker gets it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PulledTask {
    /// Names this attempt in heartbeat, complete and fail; opaque.
    pub token: String,
    pub agent: String,
    /// The instance, as its tenant knows it.
    pub instance_id: String,
    /// The instance's tenant; absent for instances without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub workflow: String,
    /// The task within the instance (`<run>/e<execution>/<step>[<item>]`).
    pub key: String,
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub attempt: u32,
    /// Stable across deliveries of this attempt: key side effects by it.
    pub idempotency_key: String,
    pub input: Value,
    /// When the orchestrator stops waiting for this attempt (the step's
    /// `timeout_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Heartbeat well within this (a third of it is a good pace), or the
    /// attempt is presumed lost.
    pub lease_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PollResponse {
    pub tasks: Vec<PulledTask>,
}

/// `POST /api/v1/tasks/{token}/heartbeat`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    /// Progress text for the instance's watchers (at most 4,096 characters).
    #[schema(max_length = 4096)]
    pub message: Option<String>,
    /// Progress data for the watchers.
    pub data: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeartbeatResponse {
    /// The lease now runs this long from this heartbeat.
    pub lease_ms: u64,
}

/// `POST /api/v1/tasks/{token}/complete`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    /// The task's result (any JSON; `null` when absent).
    #[serde(default)]
    pub output: Value,
    /// Replaces the instance's custom status.
    pub custom_status: Option<Value>,
}

/// `POST /api/v1/tasks/{token}/fail`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FailRequest {
    /// What went wrong (at most 4,096 characters).
    #[schema(max_length = 4096)]
    pub message: String,
    /// Retry under the step's policy (default); `false` fails the step at
    /// once.
    pub retryable: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskAccepted {
    /// `recorded`: sent to the instance; `recorded_before`: a repeat of a
    /// result already recorded.
    pub status: String,
}

/// What a token names: one attempt of one task of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Token {
    #[serde(rename = "i")]
    instance: InstanceId,
    #[serde(rename = "k")]
    key: TaskKey,
    #[serde(rename = "a")]
    attempt: u32,
    #[serde(rename = "g")]
    agent: AgentName,
}

impl Token {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(raw: &str) -> Result<Self, Problem> {
        let bad = || Problem::field("token", "is not a task token this service issued");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

fn tenant(caller: &Principal) -> Option<&str> {
    caller.tenant.as_ref().map(|t| t.as_str())
}

/// A registered pull agent the caller may take tasks of, or why not. Any
/// agent the caller's tenant cannot see answers as missing.
async fn servable(
    state: &GatewayState,
    caller: &Principal,
    name: &AgentName,
    field: &str,
) -> Result<Agent, Problem> {
    let agent = registry::find(&*state.store, name)
        .await?
        .filter(|a| a.serves(tenant(caller)))
        .ok_or_else(|| Problem::field(field, format!("no agent {name} is registered")))?;
    if agent.doc.kind != AgentKind::Pull {
        return Err(Problem::field(
            field,
            format!("agent {name} is not a pull agent; its tasks are not polled"),
        ));
    }
    if !agent.taken_by(tenant(caller)) || !caller.may_serve(name.as_str()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("this credential may not serve agent {name}"),
        ));
    }
    Ok(agent)
}

#[utoipa::path(
    post, path = "/api/v1/tasks/poll", tag = "tasks",
    request_body = PollRequest,
    responses(
        (status = 200, description = "Tasks taken (none when the wait ended first); each is leased to the caller", body = PollResponse),
        (status = 400, description = "A bad field (`/agents/0`, `/maxTasks`, `/waitMs`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The credential may not serve an agent asked for", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The bus is away; poll again after Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn poll(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    JsonBody(request): JsonBody<PollRequest>,
) -> Result<Json<PollResponse>, Problem> {
    if request.agents.is_empty() || request.agents.len() > MAX_AGENTS_PER_POLL {
        return Err(Problem::field(
            "/agents",
            format!("must name 1 to {MAX_AGENTS_PER_POLL} agents"),
        ));
    }
    let want = request.max_tasks.unwrap_or(1);
    if !(1..=MAX_TASKS_PER_POLL).contains(&want) {
        return Err(Problem::field(
            "/maxTasks",
            format!("must be from 1 to {MAX_TASKS_PER_POLL}"),
        ));
    }
    let wait_ms = request.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(Problem::field(
            "/waitMs",
            format!("must be at most {MAX_WAIT_MS}"),
        ));
    }
    if request
        .worker_id
        .as_ref()
        .is_some_and(|w| w.chars().count() > MAX_WORKER_ID_CHARS)
    {
        return Err(Problem::field(
            "/workerId",
            format!("must be at most {MAX_WORKER_ID_CHARS} characters"),
        ));
    }
    let mut agents = Vec::with_capacity(request.agents.len());
    for (i, raw) in request.agents.iter().enumerate() {
        let field = format!("/agents/{i}");
        let name =
            AgentName::parse(raw.as_str()).map_err(|e| Problem::field(&field, e.to_string()))?;
        agents.push(servable(&state, &caller, &name, &field).await?);
    }
    let names: Vec<AgentName> = agents.iter().map(|a| a.name.clone()).collect();
    let deliveries = state
        .pull
        .poll(&names, want, Duration::from_millis(wait_ms))
        .await;
    let mut tasks = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        if let Some(task) = hand_out(&state, &agents, delivery).await? {
            tasks.push(task);
        }
    }
    if let Some(worker) = &request.worker_id
        && !tasks.is_empty()
    {
        tracing::debug!(worker = %worker, tasks = tasks.len(), "tasks handed out");
    }
    Ok(Json(PollResponse { tasks }))
}

/// Turns one delivery into a task for the worker: the orchestrator is told
/// a worker holds it (the lease starts), then the delivery is settled.
/// `None` for a delivery that is not a task for this worker (settled
/// here: a malformed one dead-lettered, a stale one dropped, another
/// tenant's failed).
async fn hand_out(
    state: &GatewayState,
    agents: &[Agent],
    delivery: legato_bus::Delivery,
) -> Result<Option<PulledTask>, Problem> {
    let envelope = match delivery.decode() {
        Ok(envelope) => envelope,
        Err(e) => {
            dead_letter(delivery, &e.to_string()).await;
            return Ok(None);
        }
    };
    let Payload::TaskDispatched(task) = &envelope.payload else {
        let reason = format!("{} does not belong on an agent queue", envelope.type_name());
        dead_letter(delivery, &reason).await;
        return Ok(None);
    };
    let Some(agent) = agents.iter().find(|a| a.name == task.agent) else {
        let reason = format!(
            "a task for agent {} reached another agent's queue",
            task.agent
        );
        dead_letter(delivery, &reason).await;
        return Ok(None);
    };
    let instance_tenant = envelope.tenant();
    let tenant_name = instance_tenant.as_ref().map(|t| t.as_str().to_owned());
    if !agent.serves(tenant_name.as_deref()) {
        // Another tenant's workflow named this tenant's agent: its step
        // fails as if the agent did not exist, and no worker sees it.
        let failure = TaskFailed {
            key: task.key.clone(),
            attempt: task.attempt,
            error: TaskError {
                message: format!("no agent {} is registered", task.agent),
                retryable: false,
            },
        };
        publish(
            state,
            &envelope.subject,
            envelope.traceparent.clone(),
            failure.into(),
        )
        .await?;
        settle(delivery.ack().await);
        return Ok(None);
    }
    if task
        .deadline
        .is_some_and(|d| d <= OffsetDateTime::now_utc())
    {
        // The orchestrator gave up on this attempt already.
        settle(delivery.ack().await);
        return Ok(None);
    }
    let lease_ms = task.heartbeat_timeout_ms.unwrap_or(agent.doc.lease_ms);
    let claim = TaskHeartbeat {
        key: task.key.clone(),
        attempt: task.attempt,
        progress: None,
        kind: None,
        message: None,
        leased: false,
        lease_ms: Some(lease_ms),
    };
    if let Err(problem) = publish(
        state,
        &envelope.subject,
        envelope.traceparent.clone(),
        claim.into(),
    )
    .await
    {
        // Not leased: back to the queue for the next poll.
        settle(delivery.nack().await);
        return Err(problem);
    }
    settle(delivery.ack().await);
    Ok(Some(pulled(&envelope.subject, task, lease_ms)))
}

fn pulled(instance: &InstanceId, task: &TaskDispatched, lease_ms: u64) -> PulledTask {
    let token = Token {
        instance: instance.clone(),
        key: task.key.clone(),
        attempt: task.attempt,
        agent: task.agent.clone(),
    };
    PulledTask {
        token: token.encode(),
        agent: task.agent.to_string(),
        instance_id: instance.local().to_owned(),
        tenant: instance.tenant().map(String::from),
        workflow: task.workflow.to_string(),
        key: task.key.to_string(),
        step: task.key.step.to_string(),
        item: task.key.item,
        attempt: task.attempt,
        idempotency_key: format!("{instance}/{}#{}", task.key, task.attempt),
        input: task.input.clone(),
        deadline: task.deadline.map(rfc3339),
        lease_ms,
    }
}

async fn dead_letter(delivery: legato_bus::Delivery, reason: &str) {
    tracing::warn!(reason, "dead-lettering a message from an agent queue");
    settle(delivery.dead_letter(reason).await);
}

fn settle(result: Result<(), legato_bus::BusError>) {
    if let Err(e) = result {
        // The broker delivers an unsettled message again; nothing is lost.
        tracing::warn!("could not settle a delivery: {e}");
    }
}

async fn publish(
    state: &GatewayState,
    instance: &InstanceId,
    traceparent: Option<TraceParent>,
    payload: Payload,
) -> Result<(), Problem> {
    let envelope = Envelope::new(
        super::SOURCE,
        instance.clone(),
        OffsetDateTime::now_utc(),
        payload,
    )
    .with_traceparent(traceparent);
    state.bus.publish_envelope(&envelope).await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Bus unavailable",
            format!("could not reach the orchestrator: {e}"),
        )
        .retry_after(Duration::from_secs(1))
    })
}

/// Where the attempt a token names stands now.
enum Standing {
    /// The attempt is the running one: its worker's word counts.
    Running,
    /// Its result is recorded: a repeat of it is answered, not sent.
    Completed,
}

/// Reads the attempt a token names, checking the caller may act on it.
/// Anything that is not the caller's to see answers 404; an attempt that is
/// no longer wanted answers 409 with why.
async fn standing(
    state: &GatewayState,
    caller: &Principal,
    token: &Token,
) -> Result<(Agent, Standing), Problem> {
    let missing = || Problem::not_found("no such task");
    let agent = registry::find(&*state.store, &token.agent)
        .await?
        .filter(|a| a.taken_by(tenant(caller)) && caller.may_serve(a.name.as_str()))
        .ok_or_else(missing)?;
    let instance_tenant = token.instance.tenant();
    if !agent.serves(instance_tenant.as_ref().map(|t| t.as_str())) {
        return Err(missing());
    }
    let (_, engine) = super::load(state, &token.instance)
        .await
        .map_err(|_| missing())?;
    let slot = engine
        .task_slot(&token.key)
        .filter(|s| s.agent == token.agent)
        .ok_or_else(missing)?;
    let gone = |why: String| {
        Problem::new(
            StatusCode::CONFLICT,
            "Task no longer wanted",
            format!(
                "attempt {} of task {} is no longer wanted: {why}",
                token.attempt, token.key
            ),
        )
    };
    if !engine.is_current(&token.key) {
        return Err(gone("the instance was restarted or started again".into()));
    }
    if slot.attempt != token.attempt {
        return Err(gone(format!("attempt {} replaced it", slot.attempt)));
    }
    match (slot.status, engine.status) {
        (SlotStatus::Completed, _) => Ok((agent, Standing::Completed)),
        (SlotStatus::Running, RuntimeStatus::Running | RuntimeStatus::Suspended) => {
            Ok((agent, Standing::Running))
        }
        (status, RuntimeStatus::Running | RuntimeStatus::Suspended) => {
            Err(gone(match &slot.error {
                Some(error) => format!("it ended {status:?}: {error}"),
                None => format!("it ended {status:?}"),
            }))
        }
        (_, status) => Err(gone(format!("the instance is {status}"))),
    }
}

async fn send(state: &GatewayState, token: &Token, payload: Payload) -> Result<(), Problem> {
    publish(state, &token.instance, None, payload).await
}

fn check_message(field: &str, message: Option<&str>) -> Result<(), Problem> {
    if message.is_some_and(|m| m.chars().count() > MAX_MESSAGE_CHARS) {
        return Err(Problem::field(
            field,
            format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/heartbeat", tag = "tasks",
    params(("token" = String, Path, description = "The task token from the poll")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "The lease is renewed; progress, if any, goes to the watchers", body = HeartbeatResponse),
        (status = 400, description = "A bad token or field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted (cancelled, timed out, lease lost): stop working on it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn heartbeat(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<HeartbeatRequest, true>,
) -> Result<Json<HeartbeatResponse>, Problem> {
    let token = Token::decode(&raw)?;
    check_message("/message", request.message.as_deref())?;
    let (agent, standing) = standing(&state, &caller, &token).await?;
    if matches!(standing, Standing::Completed) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Task no longer wanted",
            format!("task {} attempt {} is completed", token.key, token.attempt),
        ));
    }
    let news = request.message.is_some() || request.data.is_some();
    let beat = TaskHeartbeat {
        key: token.key.clone(),
        attempt: token.attempt,
        progress: request.data,
        kind: news.then_some(HeartbeatKind::AgentProgress),
        message: request.message,
        leased: false,
        lease_ms: Some(agent.doc.lease_ms),
    };
    send(&state, &token, beat.into()).await?;
    Ok(Json(HeartbeatResponse {
        lease_ms: agent.doc.lease_ms,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/complete", tag = "tasks",
    params(("token" = String, Path, description = "The task token from the poll")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "The result is recorded (a repeat answers the same and is recorded once)", body = TaskAccepted),
        (status = 400, description = "A bad token or field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted; the result is not recorded", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn complete(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<CompleteRequest, true>,
) -> Result<Json<TaskAccepted>, Problem> {
    let token = Token::decode(&raw)?;
    let (_, standing) = standing(&state, &caller, &token).await?;
    if matches!(standing, Standing::Completed) {
        return Ok(Json(TaskAccepted {
            status: "recorded_before".into(),
        }));
    }
    let completed = TaskCompleted {
        key: token.key.clone(),
        attempt: token.attempt,
        output: request.output,
        custom_status: request.custom_status,
    };
    send(&state, &token, completed.into()).await?;
    Ok(Json(TaskAccepted {
        status: "recorded".into(),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/fail", tag = "tasks",
    params(("token" = String, Path, description = "The task token from the poll")),
    request_body = FailRequest,
    responses(
        (status = 200, description = "The failure is recorded: retried under the step's policy when retryable", body = TaskAccepted),
        (status = 400, description = "A bad token or field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted, or already completed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn fail(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<FailRequest>,
) -> Result<Json<TaskAccepted>, Problem> {
    let token = Token::decode(&raw)?;
    check_message("/message", Some(&request.message))?;
    let (_, standing) = standing(&state, &caller, &token).await?;
    if matches!(standing, Standing::Completed) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Task completed",
            format!(
                "task {} attempt {} is completed; its result stands",
                token.key, token.attempt
            ),
        ));
    }
    let failed = TaskFailed {
        key: token.key.clone(),
        attempt: token.attempt,
        error: TaskError {
            message: request.message,
            retryable: request.retryable.unwrap_or(true),
        },
    };
    send(&state, &token, failed.into()).await?;
    Ok(Json(TaskAccepted {
        status: "recorded".into(),
    }))
}
