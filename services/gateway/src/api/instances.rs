//! Starting, reading, listing and purging instances.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use legato_contracts::{CHILD_SEPARATOR, InstanceId, RuntimeStatus, StartInstance};
use legato_service::auth::Caller;
use legato_service::problem::Problem;
use legato_service::records;
use legato_store::{HistoryFrom, InstanceQuery, Store, StoreError, TenantFilter};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::workflows::{find_workflow, resolve_workflow};
use super::{SOURCE, base_url, instance_id, load, stream_base_url, visible_workflow_names};
use crate::GatewayState;
use crate::body::JsonBody;
use crate::dto::{HistoryEntry, InstancePage, InstanceView, StartRequest, StartResponse};

/// Start an instance. The answer comes once the start is durable; the
/// orchestrator takes it up right after.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{name}/instances",
    tag = "instances",
    params(("name" = String, Path, description = "A registered workflow")),
    request_body = StartRequest,
    responses(
        (status = 202, description = "Accepted; follow `Location`", body = StartResponse,
            headers(("Location" = String, description = "The status URI"))),
        (status = 400, description = "Malformed body, bad instanceId, or input that fails the input_schema (`errors[].field` is a JSON pointer such as `/input/request`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown workflow or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`instanceId` names a live instance", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn start(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<StartRequest>,
) -> Result<Response, Problem> {
    let tenant = caller.tenant.clone();
    let local_id = request
        .instance_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if local_id.contains(CHILD_SEPARATOR) {
        return Err(Problem::field(
            "/instanceId",
            format!("{CHILD_SEPARATOR} is kept for the ids of child workflow runs"),
        ));
    }
    let id = InstanceId::scoped(tenant.as_ref(), local_id)
        .map_err(|e| Problem::field("/instanceId", e.to_string()))?;
    let (name, version, workflow) = find_workflow(&state, &caller, name, request.version).await?;
    if let Err(errors) = workflow.check_input(&request.input) {
        return Err(Problem::fields(
            "Input does not match the workflow's input_schema",
            super::fields_at("/input", errors),
        ));
    }
    let budget = crate::dto::checked_budget("/budget", request.budget, workflow.budget.as_ref())?;
    let now = OffsetDateTime::now_utc();
    let start = StartInstance {
        workflow: name,
        version,
        input: request.input,
        tenant: tenant.map(String::from),
        parent: None,
        budget,
        entity_operation: None,
    };
    let commit = records::accept_start(SOURCE, id.clone(), start, now)?;
    // Durable once committed; a start not published now is sent by the
    // orchestrator's outbox sweep. Most ids are new, so the start is tried
    // first; only a taken id costs a read (a finished instance is purged
    // and the start tried once more, a live one is a conflict).
    match state.relay.commit(commit.clone()).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => {
            replace_if_finished(&state, &id).await?;
            state.relay.commit(commit).await.map_err(|e| match e {
                StoreError::Conflict(_) => live_conflict(&id),
                other => other.into(),
            })?;
        }
        Err(other) => return Err(other.into()),
    }
    let body = StartResponse::new(
        &base_url(&state, &headers),
        &stream_base_url(&state, &headers),
        id.local(),
    );
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, body.status_query_uri.clone())],
        Json(body),
    )
        .into_response())
}

fn live_conflict(id: &InstanceId) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "Instance exists",
        format!(
            "instance {} exists and has not finished; choose another instanceId or wait",
            id.local()
        ),
    )
}

/// A finished instance's id may be reused (as in Durable Functions): the
/// old instance is purged first. A live one is a conflict.
async fn replace_if_finished(state: &GatewayState, id: &InstanceId) -> Result<(), Problem> {
    if let Some(existing) = state.store.load(id).await? {
        if !existing.record.summary.status.is_terminal() {
            return Err(live_conflict(id));
        }
        purge_with_descendants(&*state.store, id).await?;
    }
    Ok(())
}

/// Child runs purged at a time.
const PURGE_PAGE: usize = 500;
/// Pages of child runs one purge takes, so it always ends; what is left
/// (more than 500,000 runs) goes with the next purge.
const PURGE_PAGES: usize = 1_000;

/// Purges an instance and its child workflow runs (and theirs): the
/// children first, so a purge cut short leaves the parent to purge again.
async fn purge_with_descendants(store: &dyn Store, id: &InstanceId) -> Result<bool, StoreError> {
    for _ in 0..PURGE_PAGES {
        let children = store.descendants(id, PURGE_PAGE).await?;
        if children.is_empty() {
            break;
        }
        // Deepest first: a grandchild's id sorts after its parent's.
        for child in children.iter().rev() {
            store.purge(child).await?;
        }
    }
    store.purge(id).await
}

/// Most history rows one status request may ask for (the service's
/// `max_history` bounds what it gets).
const MAX_LIMIT: usize = 1_000_000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StatusQuery {
    /// Include the instance's history.
    #[serde(default)]
    history: bool,
    /// Only history that told watchers something after this progress
    /// position (the last one a reconnecting watcher saw), each row with
    /// only the progress events after it.
    #[serde(default)]
    after: u64,
    /// Only history rows after this sequence number (the next page: the
    /// last row's `seq`).
    #[serde(default)]
    after_seq: u64,
    /// Most history rows returned (bounded by the service's maximum).
    #[serde(default)]
    limit: Option<usize>,
}

/// An instance's status, steps and (on request) history.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{id}",
    tag = "instances",
    params(("id" = String, Path), StatusQuery),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_instance(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InstanceView>, Problem> {
    let id = instance_id(&caller, id)?;
    let Query(query) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    // As the API's document bounds them: positions and sequence numbers
    // are int64, a page is at most a million rows (and max_history).
    for (field, value) in [("afterSeq", query.after_seq), ("after", query.after)] {
        if value > i64::MAX as u64 {
            return Err(Problem::field(field, "must be at most 9223372036854775807"));
        }
    }
    if query.limit.is_some_and(|limit| limit > MAX_LIMIT) {
        return Err(Problem::field(
            "limit",
            format!("must be at most {MAX_LIMIT}"),
        ));
    }
    let (stored, engine_state) = load(&state, &id).await?;
    let mut view = InstanceView::new(&stored.record.summary, &engine_state);
    if query.history {
        let limit = query
            .limit
            .unwrap_or(state.settings.max_history)
            .min(state.settings.max_history);
        let from = HistoryFrom {
            seq: query.after_seq,
            position: query.after,
        };
        let rows = state.store.history(&id, from, limit).await?;
        view.history = Some(
            rows.into_iter()
                .map(|row| HistoryEntry::after(row, query.after))
                .collect(),
        );
    }
    Ok(Json(view))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Pending, Running, Suspended, Completed, Failed or Terminated.
    status: Option<String>,
    workflow: Option<String>,
    /// RFC 3339; inclusive.
    created_from: Option<String>,
    /// RFC 3339; exclusive.
    created_to: Option<String>,
    /// Page size, 1..=1000 (default 100).
    top: Option<usize>,
    continuation_token: Option<String>,
}

fn timestamp(field: &str, value: Option<String>) -> Result<Option<OffsetDateTime>, Problem> {
    value
        .map(|v| {
            OffsetDateTime::parse(&v, &Rfc3339)
                .map_err(|e| Problem::field(field, format!("not an RFC 3339 time: {e}")))
        })
        .transpose()
}

/// Pages through the caller's tenant's instances, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/instances",
    tag = "instances",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = InstancePage),
        (status = 400, description = "A bad filter, named", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_instances(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InstancePage>, Problem> {
    let Query(q) = query.map_err(|e| Problem::field("query", e.body_text()))?;
    let status = q
        .status
        .map(|s| {
            RuntimeStatus::parse(&s)
                .ok_or_else(|| Problem::field("status", format!("{s:?} is not a runtime status")))
        })
        .transpose()?;
    // The filter names what the caller would start under that name.
    let workflow = match q.workflow {
        Some(raw) => {
            let names = visible_workflow_names(&caller, raw)
                .map_err(|p| Problem::field("workflow", p.detail))?;
            Some(resolve_workflow(&state, names).await?.0)
        }
        None => None,
    };
    let top = super::page_size(q.top)?;
    let page = state
        .store
        .list(&InstanceQuery {
            status,
            workflow,
            tenant: TenantFilter::Only(caller.tenant.clone().map(String::from)),
            created_from: timestamp("createdFrom", q.created_from)?,
            created_to: timestamp("createdTo", q.created_to)?,
            top,
            continuation: q.continuation_token,
        })
        .await?;
    Ok(Json(InstancePage {
        items: page.items.iter().map(Into::into).collect(),
        continuation_token: page.continuation,
    }))
}

/// Purge a finished instance with its history.
#[utoipa::path(
    delete,
    path = "/api/v1/instances/{id}",
    tag = "instances",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Purged"),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running: terminate it first", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn purge(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = instance_id(&caller, id)?;
    let (stored, _) = load(&state, &id).await?;
    let status = stored.record.summary.status;
    if !status.is_terminal() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Instance not finished",
            format!(
                "instance {} is {}; terminate it before purging",
                id.local(),
                status.as_str()
            ),
        ));
    }
    purge_with_descendants(&*state.store, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
