//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! kept in `contracts/openapi.json` (a test fails when the two differ;
//! `LEGATO_BLESS=1 cargo test -p legato-gateway` rewrites the file).

use axum::Json;
use utoipa::OpenApi;

use crate::api::*;
use crate::dto::*;
use legato_service::problem::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "legato gateway", version = "1", description = "Start, follow and steer durable multi-agent workflows. Errors are application/problem+json."),
    paths(register, list_workflows, get_workflow, start, get_instance, list_instances, purge, raise_event, terminate, suspend, resume, restart, negotiate, subscribe),
    components(schemas(Problem, FieldError, StartRequest, StartResponse, InstanceView, StepView, HistoryEntry, InstancePage, InstanceListItem, DefinitionView, DefinitionList, ReasonBody, RestartBody, Accepted, NegotiateResponse, SubscriptionRequest)),
    tags(
        (name = "workflows", description = "Definitions"),
        (name = "instances", description = "Start, read, list, purge"),
        (name = "control", description = "Events and lifecycle signals"),
        (name = "realtime", description = "SignalR negotiate and subscriptions (progress streams)"),
    )
)]
pub struct ApiDoc;

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The progress stream is served by the notifier (same port in `legato up`).
    if let Ok(extra) = serde_json::from_value::<utoipa::openapi::path::PathItem>(
        serde_json::json!({
            "get": {
                "tags": ["instances"],
                "summary": "Server-sent events of the instance's progress until it finishes",
                "description": "Opens with a `status` event, then `progress` events (`id:` = history sequence number); `lagged` says how many were missed.",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "404": {"description": "Unknown instance", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                }
            }
        }),
    ) {
        doc.paths
            .paths
            .insert("/api/v1/instances/{id}/stream".into(), extra);
    }
    doc
}

pub(crate) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
