//! `/api/v1/dead-letters`: what consumer groups gave up on (parked by the
//! keeper, see `crate::dead_letters`), for operators: list, replay,
//! discard. A caller sees its own tenant's letters, like instances.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use legato_contracts::{Envelope, InstanceId, Topic};
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use legato_store::{DeadLetter, DeadLetterQuery, TenantFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::GatewayState;
use crate::dto::rfc3339;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeadLetterListQuery {
    /// commands, agent-tasks, agent-results or progress.
    #[param(pattern = "^(commands|agent-tasks|agent-results|progress)$")]
    topic: Option<String>,
    /// The consumer group (`orchestrator`, `agent-<name>`).
    group: Option<String>,
    /// Page size, 1..=1000 (default 100).
    top: Option<usize>,
    continuation_token: Option<String>,
}

/// A parked dead letter as operators see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadLetterView {
    pub id: String,
    pub topic: String,
    pub group: String,
    pub message_id: String,
    pub reason: String,
    /// Deliveries it had when it was dead-lettered (0 when the broker did
    /// not say).
    pub delivery_count: u32,
    /// The instance it is about, as the caller names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Its CloudEvents type, when it is a legato message.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    pub parked_at: String,
    /// The message as JSON when it is JSON, else absent (see `bodyBase64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub message: Option<Value>,
    /// The message's bytes, when they are not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        let message = serde_json::from_slice::<Value>(&letter.body).ok();
        Self {
            body_base64: message.is_none().then(|| STANDARD.encode(&letter.body)),
            message,
            instance_id: letter
                .instance
                .as_deref()
                .and_then(|i| InstanceId::parse(i).ok())
                .map(|i| i.local().to_owned()),
            id: letter.id,
            topic: letter.topic.as_str().to_owned(),
            group: letter.group,
            message_id: letter.message_id,
            reason: letter.reason,
            delivery_count: letter.delivery_count,
            type_name: letter.type_name,
            parked_at: rfc3339(letter.parked_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadLetterPage {
    pub items: Vec<DeadLetterView>,
    /// Pass as `continuationToken` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
}

fn tenant_of(caller: &Principal) -> Option<String> {
    caller.tenant.clone().map(String::from)
}

fn topic(raw: &str) -> Result<Topic, Problem> {
    Topic::ALL
        .into_iter()
        .find(|t| t.as_str() == raw)
        .ok_or_else(|| {
            Problem::field(
                "topic",
                format!("{raw:?} is not commands, agent-tasks, agent-results or progress"),
            )
        })
}

/// Pages through parked dead letters, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    tag = "dead-letters",
    params(DeadLetterListQuery),
    responses(
        (status = 200, description = "One page", body = DeadLetterPage),
    )
)]
pub(crate) async fn list_dead_letters(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    query: Result<Query<DeadLetterListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterPage>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let top = super::page_size(q.top)?;
    let page = state
        .store
        .dead_letters(&DeadLetterQuery {
            topic: q.topic.as_deref().map(topic).transpose()?,
            group: q.group,
            tenant: TenantFilter::Only(tenant_of(&caller)),
            top,
            continuation: q.continuation_token,
        })
        .await?;
    Ok(Json(DeadLetterPage {
        items: page.items.into_iter().map(Into::into).collect(),
        continuation_token: page.continuation,
    }))
}

/// The caller's tenant's letter, or 404 (another tenant's is not found).
async fn visible(
    state: &GatewayState,
    caller: &Principal,
    id: &str,
) -> Result<DeadLetter, Problem> {
    let letter = state.store.dead_letter(id).await?;
    letter
        .filter(|l| l.tenant == tenant_of(caller))
        .ok_or_else(|| Problem::not_found(format!("no dead letter {id}")))
}

/// Sends a dead letter back to its consumers and removes it. Consumers
/// take a message once by its id, so a replay that is repeated (its first
/// answer lost) changes nothing more.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{id}/replay",
    tag = "dead-letters",
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Sent back to its queue", body = DeadLetterView),
        (status = 404, description = "No such dead letter (already replayed or discarded)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not a legato message: it cannot be replayed, only discarded", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn replay_dead_letter(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeadLetterView>), Problem> {
    let letter = visible(&state, &caller, &id).await?;
    // Where the message goes is worked out again from the message (its
    // payload's topic and routing key): a dead-letter queue's copy no
    // longer carries its original routing.
    let envelope = Envelope::decode(&letter.body).map_err(|e| {
        Problem::new(
            StatusCode::CONFLICT,
            "Cannot be replayed",
            format!("dead letter {id} is not a legato message ({e}); discard it instead"),
        )
    })?;
    // Sent as any message is, so it carries its id, its CloudEvents
    // headers and its trace again.
    state.bus.publish_envelope(&envelope).await.map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Bus unavailable",
            format!("dead letter {id} was not sent back: {e}"),
        )
        .retry_after(std::time::Duration::from_secs(5))
    })?;
    state.store.remove_dead_letter(&id).await?;
    tracing::info!(%id, topic = letter.topic.as_str(), group = %letter.group, "dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(letter.into())))
}

/// Discards a dead letter.
#[utoipa::path(
    delete,
    path = "/api/v1/dead-letters/{id}",
    tag = "dead-letters",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Discarded"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn discard_dead_letter(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    visible(&state, &caller, &id).await?;
    state.store.remove_dead_letter(&id).await?;
    tracing::info!(%id, "dead letter discarded");
    Ok(StatusCode::NO_CONTENT)
}
