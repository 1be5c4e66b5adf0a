//! `/api/v1/agents`: the registry. Every agent a workflow may name is
//! listed here, the built-in ones too; registering one creates its task
//! queue, so its tasks wait for its workers from then on.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use legato_service::agent_figures::{AgentReport, Figures};
use legato_service::auth::{Caller, Principal, Role};
use legato_service::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;

use crate::GatewayState;
use crate::body::JsonBody;
use crate::dto::rfc3339;
use crate::registry::{self, Agent, AgentKind, AgentSpec, Registered};

/// An agent as callers see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentView {
    pub name: String,
    pub kind: AgentKind,
    /// Whether only the caller's tenant uses it (else every tenant shares it).
    pub owned: bool,
    /// How long a worker holds a task between heartbeats.
    pub lease_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A push agent's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tasks on the agent's queue waiting for a worker now (over Service
    /// Bus, locked ones too); absent when the bus cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u64>,
    /// Tasks a worker (or the endpoint, or a built-in agent) holds now.
    pub running: u64,
    /// Tasks completed in the last five minutes.
    pub completed: u64,
    /// Attempts failed in the last five minutes (retried ones too).
    pub failed: u64,
    /// The median time from a task's start to its end over the last five
    /// minutes, in milliseconds (within 5%); absent when none ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// A pull agent's workers that polled in the last five minutes, the
    /// latest first (at most 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<WorkerView>>,
    pub updated_at: String,
}

/// A pull worker as the registry saw it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkerView {
    /// Its `workerId`, or the credential it polled with.
    pub id: String,
    pub last_poll: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentList {
    pub items: Vec<AgentView>,
}

/// Every replica's figures, by agent; none when they cannot be read (the
/// registry answers without them rather than not at all).
async fn figures(state: &GatewayState) -> HashMap<String, Figures> {
    let reports = match state.store.reports().await {
        Ok(reports) => reports,
        Err(e) => {
            tracing::warn!("agent figures unknown: {e}");
            return HashMap::new();
        }
    };
    let mut by_agent: HashMap<String, Vec<AgentReport>> = HashMap::new();
    for report in reports {
        match serde_json::from_value(report.body) {
            Ok(body) => by_agent.entry(report.subject).or_default().push(body),
            Err(e) => {
                tracing::warn!(agent = %report.subject, replica = %report.replica, "a report left out: {e}")
            }
        }
    }
    by_agent
        .into_iter()
        .map(|(agent, reports)| (agent, Figures::sum(&reports)))
        .collect()
}

/// The agent as callers see it, with what waits on its queue now and the
/// figures every replica reported.
async fn live_view(state: &GatewayState, agent: Agent, figures: Option<&Figures>) -> AgentView {
    let group = legato_bus::topology::agent_tasks(agent.name.as_str()).group;
    let waiting = match state
        .bus
        .waiting(legato_contracts::Topic::AgentTasks, &group)
        .await
    {
        Ok(waiting) => waiting,
        Err(e) => {
            tracing::warn!(agent = %agent.name, "queue depth unknown: {e}");
            None
        }
    };
    let pull = agent.doc.kind == AgentKind::Pull;
    let mut view = AgentView {
        waiting,
        workers: pull.then(Vec::new),
        ..view(agent)
    };
    if let Some(figures) = figures {
        view.running = figures.running;
        view.completed = figures.completed;
        view.failed = figures.failed;
        view.p50_ms = figures.p50_ms();
        if pull {
            view.workers = Some(
                figures
                    .workers
                    .iter()
                    .map(|w| WorkerView {
                        id: w.id.clone(),
                        last_poll: rfc3339(w.last_poll),
                    })
                    .collect(),
            );
        }
    }
    view
}

fn view(agent: Agent) -> AgentView {
    AgentView {
        waiting: None,
        running: 0,
        completed: 0,
        failed: 0,
        p50_ms: None,
        workers: None,
        name: agent.name.to_string(),
        kind: agent.doc.kind,
        owned: agent.tenant.is_some(),
        lease_ms: agent.doc.lease_ms,
        url: agent.doc.push.map(|p| p.url),
        description: agent.doc.description,
        updated_at: rfc3339(agent.updated_at),
    }
}

/// The agent `raw` names, if the caller may see it (its tenant's own or a
/// shared one); another tenant's answers as a missing one.
async fn visible(state: &GatewayState, caller: &Principal, raw: String) -> Result<Agent, Problem> {
    let name = registry::agent_name(raw)?;
    registry::find(&*state.store, &name)
        .await?
        .filter(|a| a.serves(caller.tenant.as_ref()))
        .ok_or_else(|| Problem::not_found(format!("no agent {name}")))
}

#[utoipa::path(
    put, path = "/api/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "1-63 characters of a-z 0-9 -, starting with a letter")),
    request_body = AgentSpec,
    responses(
        (status = 201, description = "Registered; its task queue exists", body = AgentView),
        (status = 200, description = "Replaced, or registered already as asked", body = AgentView),
        (status = 400, description = "A bad field (`errors[].field` names it: `/kind`, `/leaseMs`, …)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken (another tenant's, or a built-in agent's)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The bus could not create the task queue; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_agent(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(spec): JsonBody<AgentSpec>,
) -> Result<Response, Problem> {
    let name = registry::agent_name(raw)?;
    if spec.kind == registry::RegisteredKind::Push && !caller.may(Role::Admin) {
        // A push URL makes legato send requests (and tokens) where the
        // registrant says.
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "registering a push agent needs the admin role",
        ));
    }
    let doc = spec.doc(&state.settings.push)?;
    let outcome = registry::register(
        &*state.store,
        &*state.bus,
        &name,
        caller.tenant.as_ref(),
        doc,
    )
    .await?;
    state.agents.forget(&name);
    let agent = visible(&state, &caller, name.to_string()).await?;
    let status = match outcome {
        Registered::Created => StatusCode::CREATED,
        Registered::Replaced | Registered::Unchanged => StatusCode::OK,
    };
    let figures = figures(&state).await;
    let figures = figures.get(agent.name.as_str());
    Ok((status, Json(live_view(&state, agent, figures).await)).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, description = "The caller's tenant's agents and the shared ones, by name", body = AgentList))
)]
pub(crate) async fn list_agents(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
) -> Result<Json<AgentList>, Problem> {
    let figures = figures(&state).await;
    let mut items = Vec::new();
    for agent in registry::all(&*state.store).await? {
        if agent.serves(caller.tenant.as_ref()) {
            let figures = figures.get(agent.name.as_str());
            items.push(live_view(&state, agent, figures).await);
        }
    }
    Ok(Json(AgentList { items }))
}

#[utoipa::path(
    get, path = "/api/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 400, description = "Not an agent name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_agent(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<Json<AgentView>, Problem> {
    let agent = visible(&state, &caller, raw).await?;
    let figures = figures(&state).await;
    let figures = figures.get(agent.name.as_str());
    Ok(Json(live_view(&state, agent, figures).await))
}

#[utoipa::path(
    delete, path = "/api/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 204, description = "Removed from the registry; its task queue, and any tasks on it, stay"),
        (status = 400, description = "Not an agent name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A built-in agent, or a shared one the caller does not own", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_agent(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, Problem> {
    let agent = visible(&state, &caller, raw).await?;
    if agent.doc.kind == AgentKind::Builtin || !agent.taken_by(caller.tenant.as_ref()) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Not yours to remove",
            format!(
                "agent {} is {}",
                agent.name,
                if agent.doc.kind == AgentKind::Builtin {
                    "built in"
                } else {
                    "shared by every tenant"
                }
            ),
        ));
    }
    state.store.delete_agent(&agent.name).await?;
    state.agents.forget(&agent.name);
    Ok(StatusCode::NO_CONTENT)
}
