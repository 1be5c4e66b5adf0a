//! `/api/v1/entities`: durable entities of the caller's tenant. Reads come
//! from the store; an operation goes to the orchestrator, which applies it
//! in order with the others sent to the entity (202: it is on the bus).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use legato_contracts::{
    EntityId, EntityOperation, EntityRef, EntityType, Envelope, InstanceId, MAX_OPERATION_ID,
    Operation,
};
use legato_service::auth::{Caller, Principal};
use legato_service::entities::lock_state;
use legato_service::problem::Problem;
use legato_store::{
    ENTITY_OPERATIONS_KEPT, EntityKey, EntityOperationRow, EntityQuery, EntitySummary, TenantFilter,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::SOURCE;
use crate::GatewayState;
use crate::body::{RawBody, parse_json};
use crate::dto::rfc3339;

/// Operations an entity's view lists unless `operations` asks otherwise.
const RECENT: usize = 20;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntitySummaryView {
    #[serde(rename = "type")]
    pub entity_type: String,
    pub id: String,
    /// Operations applied so far.
    pub operations: u64,
    pub updated_at: String,
}

impl From<&EntitySummary> for EntitySummaryView {
    fn from(summary: &EntitySummary) -> Self {
        Self {
            entity_type: summary.key.entity.entity_type.to_string(),
            id: summary.key.entity.id.to_string(),
            operations: summary.operations,
            updated_at: rfc3339(summary.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntityList {
    pub items: Vec<EntitySummaryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntityView {
    #[serde(rename = "type")]
    pub entity_type: String,
    pub id: String,
    /// The state as last committed.
    pub state: Value,
    pub operations: u64,
    pub updated_at: String,
    /// The latest operations, newest first.
    pub recent: Vec<EntityOperationView>,
    /// The custom operation under way, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<BusyView>,
    /// Operations waiting behind it, to apply in order once it is over.
    #[serde(skip_serializing_if = "is_zero")]
    pub queued: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A custom operation under way.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BusyView {
    /// Its name, as the entity's type declares it.
    pub operation: String,
    pub operation_id: String,
    /// The run applying it (an instance of the workflow the type names).
    pub instance: String,
}

/// One applied operation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntityOperationView {
    pub seq: u64,
    /// The operation's id.
    pub id: String,
    pub at: String,
    /// As it was sent: `op` and its fields.
    pub operation: Value,
    /// Its answer, when it applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Value>,
    /// Why it failed (and changed nothing), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The instance that sent it (`api` for this API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

impl From<EntityOperationRow> for EntityOperationView {
    fn from(row: EntityOperationRow) -> Self {
        let (answer, error) = match row.answer {
            Ok(answer) => (Some(answer), None),
            Err(why) => (None, Some(why)),
        };
        Self {
            seq: row.seq,
            id: row.id,
            at: rfc3339(row.at),
            operation: row.operation,
            answer,
            error,
            // As its tenant knows it.
            sender: row.sender.map(|s| {
                s.split_once('~')
                    .map_or(s.clone(), |(_, local)| local.to_owned())
            }),
        }
    }
}

/// What an accepted operation returns.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OperationAccepted {
    /// Applied once per entity: sending the same `Idempotency-Key` again
    /// sends this id again.
    pub operation_id: String,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only entities of this type.
    #[serde(rename = "type")]
    entity_type: Option<String>,
    /// Page size, 1..=1000 (default 100).
    top: Option<usize>,
    continuation_token: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ViewQuery {
    /// How many of the latest operations to list, 0..=100 (default 20).
    operations: Option<usize>,
}

fn entity_type(raw: String) -> Result<EntityType, Problem> {
    EntityType::parse(raw).map_err(|e| Problem::field("type", e.to_string()))
}

/// The entity a path's `type` and `id` name.
pub(super) fn entity_of(raw_type: String, raw_id: String) -> Result<EntityRef, Problem> {
    Ok(EntityRef {
        entity_type: entity_type(raw_type)?,
        id: EntityId::parse(raw_id).map_err(|e| Problem::field("id", e.to_string()))?,
    })
}

/// The entity the path names, in the caller's tenant.
fn key_of(caller: &Principal, raw_type: String, raw_id: String) -> Result<EntityKey, Problem> {
    Ok(EntityKey {
        tenant: caller.tenant.clone(),
        entity: entity_of(raw_type, raw_id)?,
    })
}

/// Pages through the caller's tenant's entities, by type and id.
#[utoipa::path(
    get,
    path = "/api/v1/entities",
    tag = "entities",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = EntityList),
        (status = 400, description = "A bad filter, named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_entities(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EntityList>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let top = super::page_size(q.top)?;
    let page = state
        .store
        .list_entities(&EntityQuery {
            entity_type: q.entity_type.map(entity_type).transpose()?,
            tenant: TenantFilter::Only(caller.tenant.clone().map(String::from)),
            top,
            continuation: q.continuation_token,
        })
        .await?;
    Ok(Json(EntityList {
        items: page.items.iter().map(Into::into).collect(),
        continuation_token: page.continuation,
    }))
}

/// One entity: its state as last committed and its latest operations.
#[utoipa::path(
    get,
    path = "/api/v1/entities/{type}/{id}",
    tag = "entities",
    params(("type" = String, Path), ("id" = String, Path), ViewQuery),
    responses(
        (status = 200, description = "The entity", body = EntityView),
        (status = 400, description = "A bad type, id or query, named", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entity (none was ever operated, or it was deleted)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_entity(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw_type, raw_id)): Path<(String, String)>,
    query: Result<Query<ViewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EntityView>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let recent = q.operations.unwrap_or(RECENT);
    if recent > ENTITY_OPERATIONS_KEPT as usize {
        return Err(Problem::field(
            "operations",
            format!("must be at most {ENTITY_OPERATIONS_KEPT}"),
        ));
    }
    let key = key_of(&caller, raw_type, raw_id)?;
    let stored = state
        .store
        .load_entity(&key)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no entity {}", key.entity)))?;
    let operations = if recent == 0 {
        Vec::new()
    } else {
        state.store.entity_operations(&key, recent).await?
    };
    let control = lock_state(&stored.record.lock)?;
    Ok(Json(EntityView {
        entity_type: key.entity.entity_type.to_string(),
        id: key.entity.id.to_string(),
        state: stored.record.state,
        operations: stored.record.operations,
        updated_at: rfc3339(stored.record.updated_at),
        recent: operations.into_iter().map(Into::into).collect(),
        busy: control.busy.map(|busy| BusyView {
            operation: busy.operation.operation.name().to_owned(),
            operation_id: busy.operation.id,
            instance: busy.instance.local().to_owned(),
        }),
        queued: control.queued.len(),
    }))
}

/// Signal an entity: apply an operation (`set`, `merge`, `append`,
/// `increment`, `compare_and_set`, `remove`, or a custom operation its
/// registered type declares), in order with every other sent to it, once
/// per `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/entities/{type}/{id}/operations",
    tag = "entities",
    params(
        ("type" = String, Path), ("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Sending the same key again applies the operation once"),
    ),
    request_body(content = Object, description = "The operation: `op` and its fields, as in a workflow's entity step (docs/entities.md)"),
    responses(
        (status = 202, description = "On its way to the entity", body = OperationAccepted),
        (status = 400, description = "A bad type, id or operation, named", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The bus is unavailable: retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn operate_entity(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw_type, raw_id)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<OperationAccepted>), Problem> {
    let key = key_of(&caller, raw_type, raw_id)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::field(
            "body",
            "must be a JSON object: an operation",
        ));
    }
    let operation = Operation::from_json(parse_json(&body)?).map_err(|e| {
        let field = if e.pointer.is_empty() {
            "body".to_owned()
        } else {
            e.pointer
        };
        Problem::field(field, e.message)
    })?;
    if operation.is_read() {
        return Err(Problem::field(
            "/op",
            "read is not sent: GET /api/v1/entities/{type}/{id} answers the state",
        ));
    }
    if let Operation::Custom(custom) = &operation {
        super::entity_types::check_custom(
            &state,
            caller.tenant.as_ref(),
            &key.entity.entity_type,
            &custom.name,
            &custom.input,
            "",
        )
        .await?;
    }
    let id = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_OPERATION_ID - 4)
                .ok_or_else(|| {
                    Problem::field(
                        "Idempotency-Key",
                        format!(
                            "must be 1-{} visible ASCII characters",
                            MAX_OPERATION_ID - 4
                        ),
                    )
                })?;
            format!("api/{key}")
        }
        None => format!("api/{}", uuid::Uuid::new_v4()),
    };
    let message = EntityOperation {
        entity: key.entity.clone(),
        id: id.clone(),
        operation,
        caller: None,
    };
    message.check().map_err(|why| Problem::field("body", why))?;
    // The entity's tenant is the subject's: the caller's own.
    let sender = InstanceId::scoped(caller.tenant.as_ref(), "api")
        .map_err(|e| Problem::field("tenant", e.to_string()))?;
    let envelope = Envelope::new(SOURCE, sender, OffsetDateTime::now_utc(), message)
        .with_traceparent(legato_service::telemetry::current_traceparent());
    super::send_command(&state, &envelope).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(OperationAccepted { operation_id: id }),
    ))
}

/// Delete an entity with its operations: operations sent later start a
/// new one from `null`.
#[utoipa::path(
    delete,
    path = "/api/v1/entities/{type}/{id}",
    tag = "entities",
    params(("type" = String, Path), ("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad type or id, named", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entity", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_entity(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((raw_type, raw_id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let key = key_of(&caller, raw_type, raw_id)?;
    if state.store.delete_entity(&key).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no entity {}", key.entity)))
    }
}
