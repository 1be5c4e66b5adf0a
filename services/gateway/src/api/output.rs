//! `POST …/output`: a piece of what a model writes inside a task, relayed
//! to the instance's watchers as it comes (SSE `output` events, the hub's
//! and Azure SignalR's `output` target) and never recorded (the pull
//! protocol by task token, push endpoints by their callback capability).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use serde::Deserialize;
use utoipa::ToSchema;

use super::callbacks::capability;
use super::tasks::reporter;
use crate::GatewayState;
use crate::attempts::{Token, output};
use crate::body::JsonBody;

/// `POST /api/v1/tasks/{token}/output`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct OutputRequest {
    /// Which output of the attempt the piece belongs to: the journal entry
    /// name the whole reply is recorded under (`chat 1`; 1-200
    /// characters).
    #[schema(min_length = 1, max_length = 200)]
    pub call: String,
    /// The piece's place in its call's output, from 1; send pieces of a
    /// call in order.
    #[schema(minimum = 1)]
    pub seq: u64,
    /// The text (at most 65,536 bytes).
    pub text: String,
}

#[utoipa::path(
    post, path = "/api/v1/tasks/{token}/output", tag = "tasks",
    params(("token" = String, Path, description = "The task token from the poll")),
    request_body = OutputRequest,
    responses(
        (status = 202, description = "Sent on to the instance's watchers (nothing is kept)"),
        (status = 400, description = "A bad token or field (`/call`, `/seq`, `/text`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn relay_output(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<OutputRequest>,
) -> Result<StatusCode, Problem> {
    let token = Token::decode(&raw)?;
    reporter(&state, &caller, &token).await?;
    output::relay(&state, &token, request.call, request.seq, request.text).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/output", tag = "tasks",
    params(("capability" = String, Path, description = "From the pushed task's callbackUrl")),
    request_body = OutputRequest,
    security(()),
    responses(
        (status = 202, description = "Sent on to the instance's watchers (nothing is kept)"),
        (status = 400, description = "Not a callback this service issued, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_output(
    State(state): State<GatewayState>,
    Path(raw): Path<String>,
    JsonBody(request): JsonBody<OutputRequest>,
) -> Result<StatusCode, Problem> {
    let (token, _) = capability(&state, &raw).await?;
    output::relay(&state, &token, request.call, request.seq, request.text).await?;
    Ok(StatusCode::ACCEPTED)
}
