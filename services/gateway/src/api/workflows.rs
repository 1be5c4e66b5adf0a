//! Registering and reading workflow definitions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use legato_contracts::WorkflowName;
use legato_service::auth::{Caller, Principal};
use legato_service::problem::{FieldError, Problem};
use legato_store::DefinitionRecord;
use legato_workflow::Workflow;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{own_workflow_name, visible_workflow_names};
use crate::GatewayState;
use crate::body::RawBody;
use crate::dto::{DefinitionList, DefinitionView, VersionList};

/// Register a definition version (YAML or JSON body). Registering the same
/// content again is harmless; different content under an existing version
/// is refused: bump `version`. A caller with a tenant registers for its
/// tenant only (shadowing a shared definition of the same name); one
/// without registers shared definitions every tenant can start.
#[utoipa::path(
    put,
    path = "/api/v1/workflows/{name}",
    tag = "workflows",
    params(("name" = String, Path, description = "Must equal the definition's `name`")),
    request_body(content = String, description = "The definition, YAML or JSON (schema: contracts/workflow.schema.json)", content_type = "application/yaml"),
    responses(
        (status = 201, description = "Registered", body = DefinitionView),
        (status = 200, description = "This exact version was already registered", body = DefinitionView),
        (status = 400, description = "Invalid definition; `errors` lists every problem with its path", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This version exists with different content", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn register(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<DefinitionView>), Problem> {
    let name = own_workflow_name(&caller, name)?;
    let text = std::str::from_utf8(&body).map_err(|_| Problem::field("body", "is not UTF-8"))?;
    let workflow = legato_workflow::parse(text)
        .map_err(|errors| super::invalid("Invalid workflow definition", &errors))?;
    if workflow.name.as_str() != name.local() {
        return Err(Problem::field(
            "name",
            format!(
                "the path says {} but the definition is named {}",
                name.local(),
                workflow.name
            ),
        ));
    }
    let mut missing =
        crate::registry::unregistered_agents(&*state.store, &workflow, caller.tenant.as_ref())
            .await?;
    missing.extend(unregistered_children(&state, &caller, &workflow).await?);
    if !missing.is_empty() {
        let detail = crate::registry::describe(&missing);
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid workflow definition",
            format!(
                "{detail} (register it first: PUT /api/v1/agents/{{name}} or PUT /api/v1/workflows/{{name}})"
            ),
        )
        .with_errors(missing));
    }
    let existing = state
        .store
        .get_definition(&name, Some(workflow.version))
        .await?;
    let record = DefinitionRecord {
        name,
        version: workflow.version,
        hash: workflow.content_hash(),
        body: serde_json::to_value(&workflow).map_err(|e| Problem::field("body", e.to_string()))?,
        registered_at: OffsetDateTime::now_utc(),
    };
    if let Some(existing) = existing {
        if existing.hash == record.hash {
            return Ok((StatusCode::OK, Json(DefinitionView::new(&existing, false))));
        }
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Version already registered",
            format!(
                "{} version {} exists with different content; register it as a new version",
                record.name.local(),
                record.version
            ),
        ));
    }
    state.store.put_definition(&record).await?;
    Ok((
        StatusCode::CREATED,
        Json(DefinitionView::new(&record, false)),
    ))
}

/// The latest version of every definition the caller can start: its
/// tenant's own and the shared ones it does not shadow.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    tag = "workflows",
    responses((status = 200, description = "Definitions by name", body = DefinitionList))
)]
pub(crate) async fn list_workflows(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
) -> Result<Json<DefinitionList>, Problem> {
    let all = state.store.list_definitions().await?;
    let own = |d: &&DefinitionRecord| d.name.tenant().is_some() && d.name.tenant() == caller.tenant;
    let shadowed: Vec<&str> = all.iter().filter(own).map(|d| d.name.local()).collect();
    let items = all
        .iter()
        .filter(|d| own(d) || (d.name.tenant().is_none() && !shadowed.contains(&d.name.local())))
        .map(|d| DefinitionView::new(d, false))
        .collect();
    Ok(Json(DefinitionList { items }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionQuery {
    /// A specific version; the latest when absent.
    version: Option<u32>,
}

/// One definition with its body.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{name}",
    tag = "workflows",
    params(("name" = String, Path), VersionQuery),
    responses(
        (status = 200, description = "The definition", body = DefinitionView),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_workflow(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DefinitionView>, Problem> {
    let Query(query) = query.map_err(|e| Problem::field("version", e.body_text()))?;
    let record = find_definition(&state, &caller, name, query.version).await?;
    Ok(Json(DefinitionView::new(&record, true)))
}

/// The versions of the definition `name` means for the caller.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{name}/versions",
    tag = "workflows",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Its registered versions, newest first", body = VersionList),
        (status = 404, description = "Not registered", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_versions(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, Problem> {
    let latest = find_definition(&state, &caller, name, None).await?;
    let versions = state.store.definition_versions(&latest.name).await?;
    Ok(Json(VersionList {
        name: latest.name.local().to_owned(),
        versions,
    }))
}

/// The definition `name` means for the caller (its own, else the shared
/// one), or 404.
pub(crate) async fn find_definition(
    state: &GatewayState,
    caller: &Principal,
    name: String,
    version: Option<u32>,
) -> Result<DefinitionRecord, Problem> {
    let names = visible_workflow_names(caller, name)?;
    let (name, latest) = resolve_workflow(state, names).await?;
    let found = match (latest, version) {
        (Some(latest), Some(v)) if latest.version != v => {
            state.store.get_definition(&name, Some(v)).await?
        }
        (latest, _) => latest,
    };
    found.ok_or_else(|| {
        let local = name.local();
        Problem::not_found(match version {
            Some(v) => format!("no workflow {local} version {v}"),
            None => format!("no workflow {local}"),
        })
    })
}

/// The parsed definition `name` (and `version`, else the latest) means
/// for the caller, as [`find_definition`] finds it, with the name it is
/// registered under. Only which versions exist is read: a version's body is
/// read and validated once per process (see `Definitions`), not per start.
pub(crate) async fn find_workflow(
    state: &GatewayState,
    caller: &Principal,
    name: String,
    version: Option<u32>,
) -> Result<(WorkflowName, u32, Arc<Workflow>), Problem> {
    let names = visible_workflow_names(caller, name)?;
    let mut wanted = None;
    for name in names {
        let versions = state.store.definition_versions(&name).await?;
        if let Some(&latest) = versions.first() {
            let version = version.unwrap_or(latest);
            if versions.contains(&version) {
                let workflow = state.definitions.get(&*state.store, &name, version).await?;
                return Ok((name, version, workflow));
            }
            wanted = Some(name);
            break;
        }
        wanted.get_or_insert(name);
    }
    let local = wanted.as_ref().map_or("", |name| name.local());
    Err(Problem::not_found(match version {
        Some(v) => format!("no workflow {local} version {v}"),
        None => format!("no workflow {local}"),
    }))
}

/// The child workflows `workflow` starts that are not registered for the
/// caller (at the version it pins, if it pins one), each with its place in
/// the definition. A workflow may start runs of itself.
async fn unregistered_children(
    state: &GatewayState,
    caller: &Principal,
    workflow: &legato_workflow::Workflow,
) -> Result<Vec<FieldError>, Problem> {
    let mut missing = Vec::new();
    for (field, child) in workflow.named_workflows() {
        if child.name == workflow.name && child.version.is_none_or(|v| v == workflow.version) {
            continue;
        }
        let names = visible_workflow_names(caller, child.name.to_string())?;
        let (_, latest) = resolve_workflow(state, names.clone()).await?;
        let found = match (latest, child.version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(latest), Some(version)) => state
                .store
                .get_definition(&latest.name, Some(version))
                .await?
                .is_some(),
        };
        if !found {
            let message = match child.version {
                Some(v) => format!("no workflow {} version {v} is registered", child.name),
                None => format!("no workflow {} is registered", child.name),
            };
            missing.push(FieldError { field, message });
        }
    }
    Ok(missing)
}

/// Which of the caller's visible `names` (from [`visible_workflow_names`])
/// it means, and its latest version: a tenant's own definition shadows the
/// shared one by name, whatever versions either has. With neither
/// registered, the caller's own name and no record.
pub(crate) async fn resolve_workflow(
    state: &GatewayState,
    names: Vec<WorkflowName>,
) -> Result<(WorkflowName, Option<DefinitionRecord>), Problem> {
    for name in &names {
        if let Some(latest) = state.store.get_definition(name, None).await? {
            return Ok((name.clone(), Some(latest)));
        }
    }
    let own = names
        .into_iter()
        .next()
        .ok_or_else(|| Problem::field("name", "no workflow name"))?;
    Ok((own, None))
}
