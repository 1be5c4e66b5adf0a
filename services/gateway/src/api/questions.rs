//! `POST …/ask`: a task asks a person a question and its attempt ends
//! here, holding no worker; the task is handed out again, with the answer
//! in `answers`, once an event of the question's name answers it (the
//! pull protocol by task token, push endpoints by their callback
//! capability).

use axum::Json;
use axum::extract::{Path, State};
use legato_contracts::{EventName, TaskAsked};
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::callbacks::capability;
use super::tasks::{check_message, reporter};
use crate::GatewayState;
use crate::attempts::{self, Token};
use crate::body::JsonBody;

/// `POST /api/v1/tasks/{token}/ask`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AskRequest {
    /// The event that answers it (`POST /instances/{id}/events/{name}`).
    pub name: String,
    /// What to ask (at most 4,096 characters).
    #[schema(max_length = 4096)]
    pub question: String,
    /// A JSON Schema the answer must fit; the dashboard renders it.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// No answer for this long fails the step (default: it waits).
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AskAnswer {
    /// `asked`: the attempt ended; the task comes again when answered.
    pub status: String,
}

/// The question as the bus carries it, or the field at fault.
fn question_of(token: &Token, request: AskRequest) -> Result<TaskAsked, Problem> {
    let name =
        EventName::parse(&request.name).map_err(|e| Problem::field("/name", e.to_string()))?;
    check_message("/question", Some(&request.question))?;
    if let Some(schema) = &request.schema {
        legato_workflow::usable_schema(schema)
            .map_err(|why| Problem::field("/schema", format!("not a usable JSON Schema: {why}")))?;
    }
    if request.timeout_ms == Some(0) {
        return Err(Problem::field("/timeoutMs", "must be at least 1"));
    }
    Ok(TaskAsked {
        key: token.key.clone(),
        attempt: token.attempt,
        name,
        question: request.question,
        schema: request.schema,
        timeout_ms: request.timeout_ms,
    })
}

/// Sends the question on, once the attempt is the running one.
async fn ask(
    state: &GatewayState,
    token: &Token,
    request: AskRequest,
) -> Result<AskAnswer, Problem> {
    let asked = question_of(token, request)?;
    attempts::running(state, token).await?;
    attempts::ask(state, token, asked).await?;
    Ok(AskAnswer {
        status: "asked".into(),
    })
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/ask", tag = "tasks",
    params(("token" = String, Path, description = "The task token from the poll")),
    request_body = AskRequest,
    responses(
        (status = 200, description = "Asked: the attempt ended; the task comes again with the answer", body = AskAnswer),
        (status = 400, description = "A bad token or field (`/name`, `/question`, `/schema`, `/timeoutMs`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ask_question(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<AskRequest>,
) -> Result<Json<AskAnswer>, Problem> {
    let token = Token::decode(&raw)?;
    reporter(&state, &caller, &token).await?;
    Ok(Json(ask(&state, &token, request).await?))
}

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/ask", tag = "tasks",
    params(("capability" = String, Path, description = "From the pushed task's callbackUrl")),
    request_body = AskRequest,
    security(()),
    responses(
        (status = 200, description = "Asked: the attempt ended; the task comes again with the answer", body = AskAnswer),
        (status = 400, description = "Not a callback this service issued, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_ask(
    State(state): State<GatewayState>,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<AskRequest>,
) -> Result<Json<AskAnswer>, Problem> {
    let (token, _) = capability(&state, &raw).await?;
    Ok(Json(ask(&state, &token, request).await?))
}
