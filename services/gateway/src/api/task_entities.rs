//! `…/entities/{type}/{id}` under a task (the pull protocol by task token,
//! push endpoints by their callback capability): durable entities of the
//! task's tenant, from inside an agent. A read answers the state as
//! committed; an operation is applied once per task under its name, and
//! its answer is recorded in the task's journal (`entity <name>`) before
//! it is answered, so a retried or redriven task gets the first answer.

use axum::Json;
use axum::extract::{Path, Query, State};
use legato_contracts::{EntityRef, Operation};
use legato_service::auth::Caller;
use std::time::Duration;

use axum::http::StatusCode;
use legato_contracts::Envelope;
use legato_service::entities::{
    Applying, agent_call, agent_journal_name, check_agent_operation_name,
};
use legato_service::problem::Problem;
use legato_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::SOURCE;
use super::callbacks::capability;
use super::entities::entity_of;
use super::tasks::reporter;
use crate::GatewayState;
use crate::attempts::{Token, journal};
use crate::body::JsonBody;

/// `POST …/entities/{type}/{id}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EntityCallRequest {
    /// Names the operation within the task (1-190 characters): sent
    /// again under the same name, by any attempt, it is applied once.
    pub name: String,
    /// The operation: `op` and its fields, as in a workflow's entity step.
    #[schema(value_type = Object)]
    pub operation: Value,
}

/// How the operation came out: its `answer`, or why it failed (`error`:
/// it changed nothing, and would fail the same way again).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntityCallAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub answer: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReadQuery {
    /// A JSON Pointer into the state; the whole state when absent.
    path: Option<String>,
}

/// What a read answers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EntityValue {
    /// The value at `path` as last committed; `null` when absent.
    #[schema(value_type = Object)]
    pub value: Value,
}

/// How long a request waits for an operation behind a custom one (or
/// that is one) before answering `503`: asked again, it waits on, and is
/// applied once.
const WAIT_BEHIND_CUSTOM: Duration = Duration::from_secs(20);

/// Applies the agent's operation; a custom operation's run is started
/// through the bus.
async fn apply(
    state: &GatewayState,
    token: &Token,
    name: &str,
    entity: EntityRef,
    operation: Operation,
) -> Result<Result<Value, String>, Problem> {
    let applying = Applying {
        store: &*state.store,
        types: &state.entity_types,
        definitions: &state.definitions,
        within: WAIT_BEHIND_CUSTOM,
    };
    let shown = entity.to_string();
    let answer = agent_call(
        &applying,
        &token.instance,
        &token.key,
        name,
        entity,
        operation,
        async |subject, payload| {
            let envelope = Envelope::new(SOURCE, subject, OffsetDateTime::now_utc(), payload)
                .with_traceparent(legato_service::telemetry::current_traceparent());
            state
                .bus
                .publish_envelope(&envelope)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        },
    )
    .await?;
    answer.ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Entity busy",
            format!(
                "entity {shown} is busy with a custom operation and {name:?} waits behind it; \
                 send the same request again (it is applied once)"
            ),
        )
        .retry_after(Duration::from_secs(1))
    })
}

async fn read(
    state: &GatewayState,
    token: &Token,
    entity: EntityRef,
    path: Option<String>,
) -> Result<Json<EntityValue>, Problem> {
    let path = path.unwrap_or_default();
    if !path.is_empty() && !path.starts_with('/') {
        return Err(Problem::field(
            "path",
            "must be a JSON Pointer: empty, or starting with /",
        ));
    }
    crate::attempts::running(state, token).await?;
    let answer = apply(state, token, "read", entity, Operation::Read { path }).await?;
    let value = answer.map_err(|why| Problem::field("path", why))?;
    Ok(Json(EntityValue { value }))
}

async fn call(
    state: &GatewayState,
    token: &Token,
    lease_ms: u64,
    entity: EntityRef,
    request: EntityCallRequest,
) -> Result<Json<EntityCallAnswer>, Problem> {
    check_agent_operation_name(&request.name).map_err(|why| Problem::field("/name", why))?;
    let operation = Operation::from_json(request.operation)
        .map_err(|e| Problem::field(format!("/operation{}", e.pointer), e.message))?;
    if operation.is_read() {
        return Err(Problem::field(
            "/operation/op",
            "a read is a GET of the same path",
        ));
    }
    if let Operation::Custom(custom) = &operation {
        super::entity_types::check_custom(
            state,
            token.instance.tenant().as_ref(),
            &entity.entity_type,
            &custom.name,
            &custom.input,
            "/operation",
        )
        .await?;
    }
    crate::attempts::running(state, token).await?;
    let journal_name = agent_journal_name(&request.name);
    let kept = journal::read(state, &token.instance, &token.key).await?;
    let recorded = match kept.get(&journal_name) {
        Some(value) => value.clone(),
        None => {
            let answer = apply(state, token, &request.name, entity, operation).await?;
            let value = match answer {
                Ok(answer) => json!({ "ok": answer }),
                Err(why) => json!({ "error": why }),
            };
            journal::record(state, token, lease_ms, &journal_name, value)
                .await?
                .value
        }
    };
    Ok(Json(match recorded.get("error").and_then(Value::as_str) {
        Some(why) => EntityCallAnswer {
            answer: None,
            error: Some(why.to_owned()),
        },
        None => EntityCallAnswer {
            answer: Some(recorded.get("ok").cloned().unwrap_or_default()),
            error: None,
        },
    }))
}

#[utoipa::path(
    get, path = "/api/v1/tasks/{token}/entities/{type}/{id}", tag = "tasks",
    params(
        ("token" = String, Path, description = "The task token from the poll"),
        ("type" = String, Path), ("id" = String, Path), ReadQuery,
    ),
    responses(
        (status = 200, description = "The value as last committed", body = EntityValue),
        (status = 400, description = "A bad token, type, id or path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop working on it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn read_entity(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw, raw_type, raw_id)): Path<(String, String, String)>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EntityValue>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let token = Token::decode(&raw)?;
    reporter(&state, &caller, &token).await?;
    read(&state, &token, entity_of(raw_type, raw_id)?, q.path).await
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/entities/{type}/{id}", tag = "tasks",
    params(
        ("token" = String, Path, description = "The task token from the poll"),
        ("type" = String, Path), ("id" = String, Path),
    ),
    request_body = EntityCallRequest,
    responses(
        (status = 200, description = "Applied (once per task and name) and recorded in the task's journal: its answer, or why it failed", body = EntityCallAnswer),
        (status = 400, description = "A bad token, type, id, name or operation, named", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop working on it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn call_entity(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw, raw_type, raw_id)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<EntityCallRequest>,
) -> Result<Json<EntityCallAnswer>, Problem> {
    let token = Token::decode(&raw)?;
    let agent = reporter(&state, &caller, &token).await?;
    let entity = entity_of(raw_type, raw_id)?;
    call(&state, &token, agent.doc.lease_ms, entity, request).await
}

#[utoipa::path(
    get, path = "/api/v1/callbacks/{capability}/entities/{type}/{id}", tag = "tasks",
    params(
        ("capability" = String, Path, description = "From the pushed task's callbackUrl"),
        ("type" = String, Path), ("id" = String, Path), ReadQuery,
    ),
    security(()),
    responses(
        (status = 200, description = "The value as last committed", body = EntityValue),
        (status = 400, description = "Not a callback this service issued, or a bad type, id or path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_read_entity(
    State(state): State<GatewayState>,
    Path((raw, raw_type, raw_id)): Path<(String, String, String)>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EntityValue>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let (token, _) = capability(&state, &raw).await?;
    read(&state, &token, entity_of(raw_type, raw_id)?, q.path).await
}

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/entities/{type}/{id}", tag = "tasks",
    params(
        ("capability" = String, Path, description = "From the pushed task's callbackUrl"),
        ("type" = String, Path), ("id" = String, Path),
    ),
    request_body = EntityCallRequest,
    security(()),
    responses(
        (status = 200, description = "Applied (once per task and name) and recorded in the task's journal: its answer, or why it failed", body = EntityCallAnswer),
        (status = 400, description = "Not a callback this service issued, or a bad type, id, name or operation", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_call_entity(
    State(state): State<GatewayState>,
    Path((raw, raw_type, raw_id)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<EntityCallRequest>,
) -> Result<Json<EntityCallAnswer>, Problem> {
    let (token, lease_ms) = capability(&state, &raw).await?;
    call(
        &state,
        &token,
        lease_ms,
        entity_of(raw_type, raw_id)?,
        request,
    )
    .await
}
