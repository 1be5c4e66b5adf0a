//! `PUT …/journal/{name}`: a step of an agent's own loop, recorded in its
//! task's journal (the pull protocol by task token, push endpoints by
//! their callback capability). The answer comes once the entry is in the
//! store; a name recorded before answers its first value, so the agent
//! carries on with what happened the first time.

use axum::Json;
use axum::extract::{Path, State};
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::callbacks::capability;
use super::tasks::reporter;
use crate::GatewayState;
use crate::attempts::{Token, journal};
use crate::body::JsonBody;

/// `PUT /api/v1/tasks/{token}/journal/{name}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct JournalRequest {
    /// What the step's work returned (any JSON of at most 262,144 bytes;
    /// `null` when absent).
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JournalAnswer {
    /// `recorded`; or `recorded_before`: the name was recorded already
    /// (another copy of the attempt, an earlier one) and `value` is that
    /// first value, which stands.
    pub status: String,
    pub value: Value,
}

impl From<journal::Recorded> for JournalAnswer {
    fn from(recorded: journal::Recorded) -> Self {
        let status = if recorded.first {
            "recorded"
        } else {
            "recorded_before"
        };
        Self {
            status: status.into(),
            value: recorded.value,
        }
    }
}

#[utoipa::path(
    put, path = "/api/v1/tasks/{token}/journal/{name}", tag = "tasks",
    params(
        ("token" = String, Path, description = "The task token from the poll"),
        ("name" = String, Path, description = "The step's name, unique within the task (1-200 characters)"),
    ),
    request_body = JournalRequest,
    responses(
        (status = 200, description = "The entry is in the store (or was: its first value is answered)", body = JournalAnswer),
        (status = 400, description = "A bad token, name or field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop working on it", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The value is over 262,144 bytes, or the task's journal is full (1,000 entries, 4 MiB)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn record_step(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw, name)): Path<(String, String)>,
    JsonBody(request): JsonBody<JournalRequest, true>,
) -> Result<Json<JournalAnswer>, Problem> {
    let token = Token::decode(&raw)?;
    let agent = reporter(&state, &caller, &token).await?;
    let recorded =
        journal::record(&state, &token, agent.doc.lease_ms, &name, request.value).await?;
    Ok(Json(recorded.into()))
}

#[utoipa::path(
    put, path = "/api/v1/callbacks/{capability}/journal/{name}", tag = "tasks",
    params(
        ("capability" = String, Path, description = "From the pushed task's callbackUrl"),
        ("name" = String, Path, description = "The step's name, unique within the task (1-200 characters)"),
    ),
    request_body = JournalRequest,
    security(()),
    responses(
        (status = 200, description = "The entry is in the store (or was: its first value is answered)", body = JournalAnswer),
        (status = 400, description = "Not a callback this service issued, or a bad name or field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The value is over 262,144 bytes, or the task's journal is full", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_record_step(
    State(state): State<GatewayState>,
    Path((raw, name)): Path<(String, String)>,
    JsonBody(request): JsonBody<JournalRequest, true>,
) -> Result<Json<JournalAnswer>, Problem> {
    let (token, lease_ms) = capability(&state, &raw).await?;
    let recorded = journal::record(&state, &token, lease_ms, &name, request.value).await?;
    Ok(Json(recorded.into()))
}
