//! `/api/v1/entity-types`: entity types, registered like workflows. A
//! type says what its entities' state must look like and which custom
//! operations they have, each applied by a workflow (docs/entities.md).
//! A tenant's own type shadows a shared one of the same name.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use legato_contracts::{EntityType, TenantId};
use legato_service::auth::{Caller, Principal};
use legato_service::entities::visible_type;
use legato_service::problem::{FieldError, Problem};
use legato_store::{EntityTypeRecord, Expected, StoredEntityType};
use legato_workflow::EntityTypeDef;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::GatewayState;
use crate::body::RawBody;
use crate::dto::rfc3339;

/// A registered entity type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EntityTypeView {
    pub name: String,
    /// Registered for every tenant (a tenant's own type shadows it).
    pub shared: bool,
    pub updated_at: String,
    /// The type's document: `description`, `state_schema`, `operations`.
    #[schema(value_type = Object)]
    pub definition: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EntityTypeList {
    pub items: Vec<EntityTypeView>,
}

impl From<StoredEntityType> for EntityTypeView {
    fn from(stored: StoredEntityType) -> Self {
        Self {
            name: stored.record.name.to_string(),
            shared: stored.record.tenant.is_none(),
            updated_at: rfc3339(stored.record.updated_at),
            definition: stored.record.body,
        }
    }
}

fn type_name(raw: String) -> Result<EntityType, Problem> {
    EntityType::parse(raw).map_err(|e| Problem::field("type", e.to_string()))
}

/// Register (or replace) an entity type: its state's schema and its custom
/// operations, each applied by a workflow already registered.
#[utoipa::path(
    put,
    path = "/api/v1/entity-types/{type}",
    tag = "entities",
    params(("type" = String, Path, description = "1-64 characters of a-z 0-9 - _, starting with a letter")),
    request_body(content = Object, description = "The type, a YAML or JSON object: `description`, `state_schema`, `operations` (docs/entities.md)", content_type = "application/yaml"),
    responses(
        (status = 201, description = "Registered", body = EntityTypeView),
        (status = 200, description = "Replaced", body = EntityTypeView),
        (status = 400, description = "Invalid type; `errors` lists every problem with its path", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed by someone else meanwhile: retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_entity_type(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<EntityTypeView>), Problem> {
    let name = type_name(raw)?;
    let text = std::str::from_utf8(&body).map_err(|_| Problem::field("body", "is not UTF-8"))?;
    let def = EntityTypeDef::parse_text(&name, text)
        .map_err(|errors| super::invalid("Invalid entity type", &errors))?;
    let missing = unregistered_workflows(&state, &caller, &def).await?;
    if !missing.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid entity type",
            format!(
                "{} (register it first: PUT /api/v1/workflows/{{name}})",
                crate::registry::describe(&missing)
            ),
        )
        .with_errors(missing));
    }
    let tenant = caller.tenant.clone();
    let existing = state.store.get_entity_type(tenant.as_ref(), &name).await?;
    let record = EntityTypeRecord {
        name,
        tenant,
        body: def.to_document(),
        updated_at: OffsetDateTime::now_utc(),
    };
    let (status, expected) = match existing {
        Some(existing) => (StatusCode::OK, Expected::Version(existing.version)),
        None => (StatusCode::CREATED, Expected::New),
    };
    let version = state.store.put_entity_type(&record, &expected).await?;
    state.entity_types.forget();
    Ok((status, Json(StoredEntityType { record, version }.into())))
}

/// The operations whose workflow neither the tenant nor everyone registered.
async fn unregistered_workflows(
    state: &GatewayState,
    caller: &Principal,
    def: &EntityTypeDef,
) -> Result<Vec<FieldError>, Problem> {
    let mut missing = Vec::new();
    for (path, workflow) in def.workflows() {
        let names = super::visible_workflow_names(caller, workflow.to_owned())?;
        if super::workflows::resolve_workflow(state, names)
            .await?
            .1
            .is_none()
        {
            missing.push(FieldError {
                field: path,
                message: format!("no workflow {workflow} is registered"),
            });
        }
    }
    Ok(missing)
}

/// The entity types the caller's tenant sees: its own and the shared ones
/// it does not shadow, by name.
#[utoipa::path(
    get,
    path = "/api/v1/entity-types",
    tag = "entities",
    responses((status = 200, description = "Entity types by name", body = EntityTypeList))
)]
pub(crate) async fn list_entity_types(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
) -> Result<Json<EntityTypeList>, Problem> {
    let all = state.store.list_entity_types().await?;
    let own = |t: &StoredEntityType| t.record.tenant.is_some() && t.record.tenant == caller.tenant;
    let shadowed: Vec<EntityType> = all
        .iter()
        .filter(|t| own(t))
        .map(|t| t.record.name.clone())
        .collect();
    let mut items: Vec<EntityTypeView> = all
        .into_iter()
        .filter(|t| own(t) || (t.record.tenant.is_none() && !shadowed.contains(&t.record.name)))
        .map(Into::into)
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(EntityTypeList { items }))
}

/// One entity type, as the caller's tenant sees it.
#[utoipa::path(
    get,
    path = "/api/v1/entity-types/{type}",
    tag = "entities",
    params(("type" = String, Path)),
    responses(
        (status = 200, description = "The type", body = EntityTypeView),
        (status = 400, description = "Not a type name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_entity_type(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<Json<EntityTypeView>, Problem> {
    let name = type_name(raw)?;
    visible_type(&*state.store, caller.tenant.as_ref(), &name)
        .await?
        .map(|stored| Json(stored.into()))
        .ok_or_else(|| not_registered(&name))
}

/// Remove the caller's own entity type. Its entities keep their state;
/// their custom operations fail until a type declares them again.
#[utoipa::path(
    delete,
    path = "/api/v1/entity-types/{type}",
    tag = "entities",
    params(("type" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a type name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such type of the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_entity_type(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, Problem> {
    let name = type_name(raw)?;
    if !state
        .store
        .delete_entity_type(caller.tenant.as_ref(), &name)
        .await?
    {
        return Err(not_registered(&name));
    }
    state.entity_types.forget();
    Ok(StatusCode::NO_CONTENT)
}

fn not_registered(name: &EntityType) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "No such entity type",
        format!("entity type {name} is not registered"),
    )
}

/// Why a custom operation sent through the API (or an agent's call, its
/// fields under `at`) cannot be applied: the entity's type does not
/// declare it, or its input does not fit.
pub(crate) async fn check_custom(
    state: &GatewayState,
    tenant: Option<&TenantId>,
    name: &EntityType,
    operation: &str,
    input: &Value,
    at: &str,
) -> Result<(), Problem> {
    // Read now, not as kept: a type registered a moment ago counts.
    let def = state
        .entity_types
        .read(&*state.store, tenant, name)
        .await?
        .ok_or_else(|| {
            Problem::field(
                format!("{at}/op"),
                format!(
                    "{operation} is not an operation every entity has, and entity type {name} \
                     is not registered to declare it"
                ),
            )
        })?;
    def.check_operation(operation, input)
        .map(drop)
        .map_err(|errors| Problem::fields("Invalid operation", super::fields_at(at, errors)))
}
