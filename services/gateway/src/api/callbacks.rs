//! `/api/v1/callbacks/{capability}/…`: how a push endpoint that answered
//! `202` without a status URL reports later. The task it was sent carries
//! `callbackUrl` (`…/api/v1/callbacks/<token>.<signature>`): the signature,
//! keyed by `gateway.push.signing_secret`, is the only credential these
//! routes take, and it names one attempt. The bodies and answers are the
//! pull protocol's (`/complete`, `/fail`, `/heartbeat`, `/journal/{name}`).

use axum::Json;
use axum::extract::{Path, State};
use legato_service::problem::Problem;

use super::tasks::{
    CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse, TaskAccepted, check_message,
};
use crate::GatewayState;
use crate::attempts::{self, Token};

/// The attempt a capability names, if its signature holds.
pub(super) async fn capability(state: &GatewayState, raw: &str) -> Result<(Token, u64), Problem> {
    let refused = || Problem::field("capability", "is not a callback this service issued");
    let (token, signature) = raw.split_once('.').ok_or_else(refused)?;
    let signer =
        crate::push::Signer::new(&state.settings.push.signing_secret).map_err(|_| refused())?;
    if !signer.verify_callback(token, signature) {
        return Err(refused());
    }
    let token = Token::decode(token)?;
    let agent = state
        .agents
        .find(&*state.store, &token.agent)
        .await?
        .ok_or_else(|| Problem::not_found("no such task"))?;
    Ok((token, agent.doc.lease_ms))
}

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/complete", tag = "tasks",
    params(("capability" = String, Path, description = "From the pushed task's callbackUrl")),
    request_body = CompleteRequest,
    security(()),
    responses(
        (status = 200, description = "The result is recorded (a repeat answers the same)", body = TaskAccepted),
        (status = 400, description = "Not a callback this service issued, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted; not recorded", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_complete(
    State(state): State<GatewayState>,
    Path(raw): Path<String>,
    crate::body::JsonBody(request): crate::body::JsonBody<CompleteRequest, true>,
) -> Result<Json<TaskAccepted>, Problem> {
    let usage = super::tasks::reported_usage("/usage", request.usage)?;
    let (token, _) = capability(&state, &raw).await?;
    let reported =
        attempts::complete(&state, &token, request.output, request.custom_status, usage).await?;
    Ok(Json(reported.into()))
}

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/fail", tag = "tasks",
    params(("capability" = String, Path, description = "From the pushed task's callbackUrl")),
    request_body = FailRequest,
    security(()),
    responses(
        (status = 200, description = "The failure is recorded", body = TaskAccepted),
        (status = 400, description = "Not a callback this service issued, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted, or completed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_fail(
    State(state): State<GatewayState>,
    Path(raw): Path<String>,
    crate::body::JsonBody(request): crate::body::JsonBody<FailRequest>,
) -> Result<Json<TaskAccepted>, Problem> {
    check_message("/message", Some(&request.message))?;
    let usage = super::tasks::reported_usage("/usage", request.usage)?;
    let (token, _) = capability(&state, &raw).await?;
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

#[utoipa::path(
    post, path = "/api/v1/callbacks/{capability}/heartbeat", tag = "tasks",
    params(("capability" = String, Path, description = "From the pushed task's callbackUrl")),
    request_body = HeartbeatRequest,
    security(()),
    responses(
        (status = 200, description = "The lease is renewed", body = HeartbeatResponse),
        (status = 400, description = "Not a callback this service issued, or a bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer wanted: stop", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn callback_heartbeat(
    State(state): State<GatewayState>,
    Path(raw): Path<String>,
    crate::body::JsonBody(request): crate::body::JsonBody<HeartbeatRequest, true>,
) -> Result<Json<HeartbeatResponse>, Problem> {
    check_message("/message", request.message.as_deref())?;
    let (token, lease_ms) = capability(&state, &raw).await?;
    attempts::heartbeat(&state, &token, lease_ms, request.message, request.data).await?;
    Ok(Json(HeartbeatResponse { lease_ms }))
}
