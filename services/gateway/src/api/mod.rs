mod agents;
mod callbacks;
mod completions;
mod control;
mod dead_letters;
mod entities;
mod entity_types;
mod instances;
mod journal;
mod output;
mod questions;
mod realtime;
mod schedules;
mod task_entities;
mod tasks;
mod workflows;

use axum::Router;
use axum::http::{HeaderMap, Method, header};
use axum::routing::{get, post, put};
use legato_contracts::{InstanceId, TenantId, WorkflowName};
use legato_engine::InstanceState;
use legato_service::auth::{Principal, Role};
use legato_service::problem::Problem;
use legato_service::records::state_of;
use legato_store::StoredInstance;

use crate::GatewayState;

pub(crate) use agents::{
    __path_delete_agent, __path_get_agent, __path_list_agents, __path_put_agent, AgentList,
    AgentView, WorkerView,
};
pub(crate) use callbacks::{
    __path_callback_complete, __path_callback_fail, __path_callback_heartbeat,
};
pub(crate) use completions::{
    __path_complete_many, CompleteManyRequest, CompleteManyResponse, CompletionItem,
    CompletionResult,
};
pub(crate) use control::__path_raise_event;
pub(crate) use control::{
    __path_redrive, __path_restart, __path_resume, __path_suspend, __path_terminate,
};
pub(crate) use dead_letters::{
    __path_discard_dead_letter, __path_list_dead_letters, __path_replay_dead_letter,
    DeadLetterPage, DeadLetterView,
};
pub(crate) use entities::{
    __path_delete_entity, __path_get_entity, __path_list_entities, __path_operate_entity, BusyView,
    EntityList, EntityOperationView, EntitySummaryView, EntityView, OperationAccepted,
};
pub(crate) use entity_types::{
    __path_delete_entity_type, __path_get_entity_type, __path_list_entity_types,
    __path_put_entity_type, EntityTypeList, EntityTypeView,
};
pub(crate) use instances::{
    __path_get_instance, __path_list_instances, __path_purge, __path_start,
};
pub(crate) use journal::{
    __path_callback_record_step, __path_record_step, JournalAnswer, JournalRequest,
};
pub(crate) use output::{__path_callback_output, __path_relay_output, OutputRequest};
pub(crate) use questions::{__path_ask_question, __path_callback_ask, AskAnswer, AskRequest};
pub(crate) use realtime::{__path_negotiate, __path_subscribe};
pub(crate) use schedules::{
    __path_backfill_schedule, __path_delete_schedule, __path_get_schedule, __path_list_schedules,
    __path_pause_schedule, __path_put_schedule, __path_resume_schedule, __path_trigger_schedule,
    BackfillBody, NoteBody, RecentRun, RunsRequested, ScheduleList, ScheduleView, TriggerBody,
};
pub(crate) use task_entities::{
    __path_call_entity, __path_callback_call_entity, __path_callback_read_entity,
    __path_read_entity, EntityCallAnswer, EntityCallRequest, EntityValue,
};
pub(crate) use tasks::{
    __path_complete, __path_fail, __path_heartbeat, __path_poll, CompleteRequest, FailRequest,
    HeartbeatRequest, HeartbeatResponse, PollRequest, PollResponse, PulledTask, TaskAccepted,
    pulled,
};
pub(crate) use workflows::{
    __path_get_workflow, __path_list_versions, __path_list_workflows, __path_register,
};

/// The role a route needs.
pub(crate) fn required_role(method: &Method, path: &str) -> Role {
    match (method.as_str(), path) {
        ("PUT", "/api/v1/workflows/{name}")
        | ("PUT", "/api/v1/agents/{name}")
        | ("PUT", "/api/v1/entity-types/{type}")
        | ("DELETE", "/api/v1/entity-types/{type}")
        | ("DELETE", "/api/v1/agents/{name}")
        | ("PUT", "/api/v1/schedules/{name}")
        | ("DELETE", "/api/v1/schedules/{name}") => Role::Manage,
        ("POST", "/api/v1/workflows/{name}/instances") => Role::Start,
        ("POST", "/api/v1/tasks/poll")
        | ("POST", "/api/v1/tasks/{token}/heartbeat")
        | ("POST", "/api/v1/tasks/{token}/complete")
        | ("POST", "/api/v1/tasks/complete")
        | ("POST", "/api/v1/tasks/{token}/fail")
        | ("PUT", "/api/v1/tasks/{token}/journal/{name}")
        | ("POST", "/api/v1/tasks/{token}/ask")
        | ("POST", "/api/v1/tasks/{token}/output")
        | ("GET", "/api/v1/tasks/{token}/entities/{type}/{id}")
        | ("POST", "/api/v1/tasks/{token}/entities/{type}/{id}") => Role::Agent,
        ("POST", "/api/v1/instances/{id}/events/{name}")
        | ("POST", "/api/v1/entities/{type}/{id}/operations") => Role::Signal,
        ("DELETE", "/api/v1/instances/{id}")
        | ("DELETE", "/api/v1/entities/{type}/{id}")
        | ("POST", "/api/v1/instances/{id}/terminate")
        | ("POST", "/api/v1/instances/{id}/suspend")
        | ("POST", "/api/v1/instances/{id}/resume")
        | ("POST", "/api/v1/instances/{id}/restart")
        | ("POST", "/api/v1/instances/{id}/redrive")
        | ("GET", "/api/v1/dead-letters")
        | ("POST", "/api/v1/dead-letters/{id}/replay")
        | ("DELETE", "/api/v1/dead-letters/{id}")
        | ("POST", "/api/v1/schedules/{name}/pause")
        | ("POST", "/api/v1/schedules/{name}/resume")
        | ("POST", "/api/v1/schedules/{name}/trigger")
        | ("POST", "/api/v1/schedules/{name}/backfill") => Role::Operate,
        _ => Role::Read,
    }
}

/// Every message the gateway sends says it came from here.
pub(crate) const SOURCE: &str = "/legato/gateway";

/// A `400` listing every problem of a document with its path.
pub(crate) fn invalid(title: &str, errors: &legato_workflow::ValidationErrors) -> Problem {
    let fields = errors
        .0
        .iter()
        .map(|e| legato_service::problem::FieldError {
            field: e.path.clone(),
            message: e.message.clone(),
        })
        .collect();
    Problem::new(
        axum::http::StatusCode::BAD_REQUEST,
        title,
        errors.to_string(),
    )
    .with_errors(fields)
}

/// Schema errors of a value found at `prefix` in the request, each field
/// the full pointer (`/input/amount`).
pub(crate) fn fields_at(
    prefix: &str,
    errors: Vec<legato_workflow::InputError>,
) -> Vec<legato_service::problem::FieldError> {
    errors
        .into_iter()
        .map(|e| legato_service::problem::FieldError {
            field: format!("{prefix}{}", e.pointer),
            message: e.message,
        })
        .collect()
}

/// Publishes a command for the orchestrator: `503` (retry the request)
/// while the bus is away.
pub(crate) async fn send_command(
    state: &GatewayState,
    envelope: &legato_contracts::Envelope,
) -> Result<(), Problem> {
    state.bus.publish_envelope(envelope).await.map_err(|e| {
        Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Bus unavailable",
            format!("{e}; retry the request"),
        )
    })
}

/// A listing's page size: 1-1000, 100 unless asked.
pub(crate) fn page_size(top: Option<usize>) -> Result<usize, Problem> {
    let top = top.unwrap_or(100);
    if !(1..=1000).contains(&top) {
        return Err(Problem::field("top", "must be between 1 and 1000"));
    }
    Ok(top)
}

pub(crate) fn routes() -> Router<GatewayState> {
    Router::new()
        .route("/api/v1/workflows", get(workflows::list_workflows))
        .route(
            "/api/v1/workflows/{name}",
            put(workflows::register).get(workflows::get_workflow),
        )
        .route(
            "/api/v1/workflows/{name}/versions",
            get(workflows::list_versions),
        )
        .route("/api/v1/workflows/{name}/instances", post(instances::start))
        .route("/api/v1/instances", get(instances::list_instances))
        .route("/api/v1/dead-letters", get(dead_letters::list_dead_letters))
        .route(
            "/api/v1/dead-letters/{id}",
            axum::routing::delete(dead_letters::discard_dead_letter),
        )
        .route(
            "/api/v1/dead-letters/{id}/replay",
            post(dead_letters::replay_dead_letter),
        )
        .route(
            "/api/v1/instances/{id}",
            get(instances::get_instance).delete(instances::purge),
        )
        .route(
            "/api/v1/instances/{id}/events/{name}",
            post(control::raise_event),
        )
        .route("/api/v1/instances/{id}/terminate", post(control::terminate))
        .route("/api/v1/instances/{id}/suspend", post(control::suspend))
        .route("/api/v1/instances/{id}/resume", post(control::resume))
        .route("/api/v1/instances/{id}/restart", post(control::restart))
        .route("/api/v1/instances/{id}/redrive", post(control::redrive))
        .route("/api/v1/entities", get(entities::list_entities))
        .route(
            "/api/v1/entities/{type}/{id}",
            get(entities::get_entity).delete(entities::delete_entity),
        )
        .route(
            "/api/v1/entities/{type}/{id}/operations",
            post(entities::operate_entity),
        )
        .route("/api/v1/entity-types", get(entity_types::list_entity_types))
        .route(
            "/api/v1/entity-types/{type}",
            put(entity_types::put_entity_type)
                .get(entity_types::get_entity_type)
                .delete(entity_types::delete_entity_type),
        )
        .route("/api/v1/agents", get(agents::list_agents))
        .route(
            "/api/v1/agents/{name}",
            put(agents::put_agent)
                .get(agents::get_agent)
                .delete(agents::delete_agent),
        )
        .route("/api/v1/tasks/poll", post(tasks::poll))
        .route("/api/v1/tasks/{token}/heartbeat", post(tasks::heartbeat))
        .route("/api/v1/tasks/{token}/complete", post(tasks::complete))
        .route("/api/v1/tasks/complete", post(completions::complete_many))
        .route("/api/v1/tasks/{token}/fail", post(tasks::fail))
        .route(
            "/api/v1/tasks/{token}/journal/{name}",
            put(journal::record_step),
        )
        .route("/api/v1/tasks/{token}/ask", post(questions::ask_question))
        .route("/api/v1/tasks/{token}/output", post(output::relay_output))
        .route(
            "/api/v1/tasks/{token}/entities/{type}/{id}",
            get(task_entities::read_entity).post(task_entities::call_entity),
        )
        .route("/api/v1/schedules", get(schedules::list_schedules))
        .route(
            "/api/v1/schedules/{name}",
            put(schedules::put_schedule)
                .get(schedules::get_schedule)
                .delete(schedules::delete_schedule),
        )
        .route(
            "/api/v1/schedules/{name}/pause",
            post(schedules::pause_schedule),
        )
        .route(
            "/api/v1/schedules/{name}/resume",
            post(schedules::resume_schedule),
        )
        .route(
            "/api/v1/schedules/{name}/trigger",
            post(schedules::trigger_schedule),
        )
        .route(
            "/api/v1/schedules/{name}/backfill",
            post(schedules::backfill_schedule),
        )
}

/// Push endpoints' callbacks: their capability URL is their credential,
/// so no caller authentication applies.
pub(crate) fn callback_routes() -> Router<GatewayState> {
    Router::new()
        .route(
            "/api/v1/callbacks/{capability}/complete",
            post(callbacks::callback_complete),
        )
        .route(
            "/api/v1/callbacks/{capability}/fail",
            post(callbacks::callback_fail),
        )
        .route(
            "/api/v1/callbacks/{capability}/heartbeat",
            post(callbacks::callback_heartbeat),
        )
        .route(
            "/api/v1/callbacks/{capability}/journal/{name}",
            put(journal::callback_record_step),
        )
        .route(
            "/api/v1/callbacks/{capability}/ask",
            post(questions::callback_ask),
        )
        .route(
            "/api/v1/callbacks/{capability}/output",
            post(output::callback_output),
        )
        .route(
            "/api/v1/callbacks/{capability}/entities/{type}/{id}",
            get(task_entities::callback_read_entity).post(task_entities::callback_call_entity),
        )
}

/// What a browser app on another origin calls (under CORS).
pub(crate) fn browser_routes() -> Router<GatewayState> {
    Router::new()
        .route("/api/v1/negotiate", post(realtime::negotiate))
        .route(
            "/api/v1/instances/{id}/subscriptions",
            post(realtime::subscribe),
        )
}

/// The instance `raw` names among the caller's tenant's: another
/// tenant's instance can never be named, so it answers as a missing one.
pub(crate) fn instance_id(caller: &Principal, raw: String) -> Result<InstanceId, Problem> {
    InstanceId::scoped(caller.tenant.as_ref(), raw).map_err(|e| Problem::field("id", e.to_string()))
}

/// The caller's own definition name `raw` (where it registers).
pub(crate) fn own_workflow_name(caller: &Principal, raw: String) -> Result<WorkflowName, Problem> {
    scoped_workflow_name(caller.tenant.as_ref(), raw)
}

fn scoped_workflow_name(tenant: Option<&TenantId>, raw: String) -> Result<WorkflowName, Problem> {
    WorkflowName::scoped(tenant, raw).map_err(|e| Problem::field("name", e.to_string()))
}

/// The names `raw` may mean for the caller, in the order they are looked
/// up: its tenant's own definition, then the shared one.
pub(crate) fn visible_workflow_names(
    caller: &Principal,
    raw: String,
) -> Result<Vec<WorkflowName>, Problem> {
    let shared = scoped_workflow_name(None, raw)?;
    Ok(match &caller.tenant {
        Some(tenant) => vec![
            scoped_workflow_name(Some(tenant), shared.to_string())?,
            shared,
        ],
        None => vec![shared],
    })
}

/// The instance and its engine state, or 404.
pub(crate) async fn load(
    state: &GatewayState,
    id: &InstanceId,
) -> Result<(StoredInstance, InstanceState), Problem> {
    let stored = state
        .store
        .load(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no instance {}", id.local())))?;
    let engine_state = state_of(&stored.record)?;
    Ok((stored, engine_state))
}

/// Base of absolute URIs: the configured public URL, else the request's host.
/// The base of the progress stream and the local hub: the notifier's
/// `stream_url` when set, else the gateway's own.
pub(crate) fn stream_base_url(state: &GatewayState, headers: &HeaderMap) -> String {
    if !state.settings.stream_url.is_empty() {
        return state.settings.stream_url.trim_end_matches('/').to_owned();
    }
    base_url(state, headers)
}

pub(crate) fn base_url(state: &GatewayState, headers: &HeaderMap) -> String {
    if !state.settings.public_url.is_empty() {
        return state.settings.public_url.trim_end_matches('/').to_owned();
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"))
        .unwrap_or_default()
}
