//! Where real-time clients connect. The stock SignalR client is pointed at
//! `/api/v1`: its negotiate lands here and is redirected, to the notifier's
//! local hub (`/hubs/progress`) or, with Azure SignalR configured, to the
//! service with a signed token. In Azure (serverless) mode clients cannot
//! invoke hub methods, so watching an instance is a gateway call that adds
//! the connection (or user) to the instance's group after the checks.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use legato_signalr::HUB;
use legato_signalr::azure::AzureError;

use super::{instance_id, load, stream_base_url};
use crate::GatewayState;
use crate::body::JsonBody;
use crate::dto::{NegotiateResponse, SubscriptionRequest};

/// Header naming the user a client connects as when the gateway does not
/// authenticate callers (it is the client's own claim then); otherwise
/// the caller's `tenant/subject` is the user.
const USER_HEADER: &str = "x-legato-user";

/// Negotiate for the stock SignalR client (`withUrl("<gateway>/api/v1")`).
#[utoipa::path(
    post,
    path = "/api/v1/negotiate",
    tag = "realtime",
    params(("x-legato-user" = Option<String>, Header, description = "Without authentication: the user id to connect as (Azure mode); a random one when absent. With authentication the user is the caller (`tenant/subject`).")),
    responses((status = 200, description = "Where to connect, and with which token (Azure mode)", body = NegotiateResponse))
)]
pub(crate) async fn negotiate(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    headers: HeaderMap,
) -> Result<Json<NegotiateResponse>, Problem> {
    let Some(azure) = &state.signalr else {
        return Ok(Json(NegotiateResponse {
            url: format!("{}/hubs/{HUB}", stream_base_url(&state, &headers)),
            access_token: None,
        }));
    };
    let user = if !state.auth.asks_for_credentials() {
        headers
            .get(USER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|u| !u.is_empty() && u.len() <= 128)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    } else {
        caller.user_id()
    };
    let redirect = azure.negotiate(&user).await.map_err(|e| {
        let status = match e {
            AzureError::Transient { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, "Cannot get a SignalR client token", e.to_string())
    })?;
    Ok(Json(NegotiateResponse {
        url: redirect.url,
        access_token: Some(redirect.access_token),
    }))
}

/// Watch an instance through Azure SignalR: adds a connection or user to
/// the instance's group. Groups are per instance of a tenant, and only the
/// gateway adds to them, after this tenant check: a client can never join
/// another tenant's groups. With authentication a caller adds only itself
/// as a user.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/subscriptions",
    tag = "realtime",
    params(("id" = String, Path)),
    request_body = SubscriptionRequest,
    responses(
        (status = 204, description = "Added to the instance's group"),
        (status = 400, description = "Neither or both of connectionId and userId", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Local mode: invoke Subscribe(instanceId) on /hubs/progress instead", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Azure SignalR unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn subscribe(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<SubscriptionRequest>,
) -> Result<StatusCode, Problem> {
    let id = instance_id(&caller, id)?;
    let Some(azure) = &state.signalr else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Local hub",
            "no Azure SignalR is configured: invoke Subscribe(instanceId) on /hubs/progress",
        ));
    };
    // 404 for an unknown instance, which another tenant's is.
    load(&state, &id).await?;
    if let Some(user) = &request.user_id
        && state.auth.asks_for_credentials()
        && *user != caller.user_id()
    {
        return Err(Problem::field(
            "userId",
            "a caller can subscribe only itself (the user its negotiate token names)",
        ));
    }
    let added = match (&request.connection_id, &request.user_id) {
        (Some(connection), None) => azure.add_connection_to_group(id.as_str(), connection).await,
        (None, Some(user)) => {
            let added = azure.add_user_to_group(id.as_str(), user).await;
            if added.is_ok() {
                state.memberships.track(&id, user);
            }
            added
        }
        _ => {
            return Err(Problem::field(
                "body",
                "give exactly one of connectionId and userId",
            ));
        }
    };
    added.map_err(subscribe_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What Azure's answer means for the caller: their mistake (an unknown
/// connection, a bad id), legato's (credentials Azure refused), or a
/// moment's unavailability (with when to try again).
fn subscribe_problem(e: AzureError) -> Problem {
    match &e {
        AzureError::Refused { status: 404, .. } => Problem::new(
            StatusCode::NOT_FOUND,
            "No such SignalR connection",
            format!("Azure SignalR knows no such connection: {e}"),
        ),
        AzureError::Refused { status: 400, .. } => {
            Problem::field("body", format!("Azure SignalR refused it: {e}"))
        }
        AzureError::Transient { retry_after, .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Azure SignalR unavailable",
            e.to_string(),
        )
        .retry_after(retry_after.unwrap_or(std::time::Duration::from_secs(1))),
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Azure SignalR refused legato",
            e.to_string(),
        ),
    }
}
