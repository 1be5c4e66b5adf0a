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
use legato_contracts::{AgentName, InstanceId, Usage};
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::GatewayState;
use crate::attempts::{self, Token};
use crate::body::JsonBody;
use crate::dto::{UsageView, rfc3339};
use crate::registry::{Agent, AgentKind};

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
    /// The worker's name, for logs and the agent's figures (at most 128
    /// characters); without one, the worker is known by its credential.
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
    /// The loop iteration (1 for the first) of a step inside a loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
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
    /// The task's journal: the value of each step an earlier attempt or
    /// delivery recorded, by name (absent when there is none). A step
    /// found here is not run again.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Option<Object>)]
    pub journal: serde_json::Map<String, Value>,
    /// Answers to the questions the task asked (`ask`), by name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Option<Object>)]
    pub answers: std::collections::BTreeMap<String, Value>,
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
    /// What the attempt spent (model tokens, cost): summed per step and
    /// instance against the instance's budget.
    pub usage: Option<UsageView>,
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
    /// What the attempt spent before it failed.
    pub usage: Option<UsageView>,
}

/// Usage as reported, checked: a 400 naming `field` for a negative or
/// non-finite cost.
pub(crate) fn reported_usage(
    field: &str,
    usage: Option<UsageView>,
) -> Result<Option<Usage>, Problem> {
    let Some(usage) = usage.map(Usage::from) else {
        return Ok(None);
    };
    usage.check().map_err(|why| Problem::field(field, why))?;
    Ok(Some(usage))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskAccepted {
    /// `recorded`: sent to the instance; `recorded_before`: a repeat of a
    /// result already recorded.
    pub status: String,
}

impl From<attempts::Reported> for TaskAccepted {
    fn from(reported: attempts::Reported) -> Self {
        Self {
            status: reported.as_str().into(),
        }
    }
}

/// A registered pull agent the caller may take tasks of, or why not. Any
/// agent the caller's tenant cannot see answers as missing.
async fn servable(
    state: &GatewayState,
    caller: &Principal,
    name: &AgentName,
    field: &str,
) -> Result<Agent, Problem> {
    let agent = state
        .agents
        .find(&*state.store, name)
        .await?
        .filter(|a| a.serves(caller.tenant.as_ref()))
        .ok_or_else(|| Problem::field(field, format!("no agent {name} is registered")))?;
    if agent.doc.kind != AgentKind::Pull {
        return Err(Problem::field(
            field,
            format!("agent {name} is not a pull agent; its tasks are not polled"),
        ));
    }
    if !agent.taken_by(caller.tenant.as_ref()) || !caller.may_serve(name.as_str()) {
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
    // A worker without a name is known by whom it authenticated as.
    let worker = request.worker_id.as_deref().unwrap_or(&caller.subject);
    let now = time::OffsetDateTime::now_utc();
    for name in &names {
        state.figures.polled(name.as_str(), worker, now);
    }
    let deliveries = state
        .pull
        .poll(&names, want, Duration::from_millis(wait_ms))
        .await;
    let tasks = attempts::take(&state, &agents, deliveries)
        .await?
        .iter()
        .map(pulled)
        .collect::<Vec<_>>();
    if !tasks.is_empty() {
        tracing::debug!(worker = %worker, tasks = tasks.len(), "tasks handed out");
    }
    Ok(Json(PollResponse { tasks }))
}

/// The agent a token names, if the caller may report on its tasks:
/// anything else answers as a missing task.
pub(crate) async fn reporter(
    state: &GatewayState,
    caller: &Principal,
    token: &Token,
) -> Result<Agent, Problem> {
    let missing = || Problem::not_found("no such task");
    let agent = state
        .agents
        .find(&*state.store, &token.agent)
        .await?
        .filter(|a| a.taken_by(caller.tenant.as_ref()) && caller.may_serve(a.name.as_str()))
        .ok_or_else(missing)?;
    if !agent.serves(token.instance.tenant().as_ref()) {
        return Err(missing());
    }
    Ok(agent)
}

/// A task as the worker gets it.
pub(crate) fn pulled(taken: &attempts::Taken) -> PulledTask {
    let (token, task) = (&taken.token, &taken.task);
    let instance: &InstanceId = &token.instance;
    PulledTask {
        token: token.encode(),
        agent: task.agent.to_string(),
        instance_id: instance.local().to_owned(),
        tenant: instance.tenant().map(String::from),
        workflow: task.workflow.to_string(),
        key: task.key.to_string(),
        step: task.key.step.to_string(),
        item: task.key.item,
        iteration: task.key.iteration,
        attempt: task.attempt,
        idempotency_key: token.idempotency_key(),
        input: task.input.clone(),
        deadline: task.deadline.map(rfc3339),
        lease_ms: taken.lease_ms,
        journal: taken.journal.clone(),
        answers: task.answers.clone(),
    }
}

pub(crate) fn check_message(field: &str, message: Option<&str>) -> Result<(), Problem> {
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
    let agent = reporter(&state, &caller, &token).await?;
    attempts::heartbeat(
        &state,
        &token,
        agent.doc.lease_ms,
        request.message,
        request.data,
    )
    .await?;
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
    reporter(&state, &caller, &token).await?;
    let usage = reported_usage("/usage", request.usage)?;
    let reported =
        attempts::complete(&state, &token, request.output, request.custom_status, usage).await?;
    Ok(Json(reported.into()))
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
    let usage = reported_usage("/usage", request.usage)?;
    reporter(&state, &caller, &token).await?;
    let reported = attempts::fail(
        &state,
        &token,
        request.message,
        request.retryable.unwrap_or(true),
        usage,
    )
    .await?;
    Ok(Json(reported.into()))
}
