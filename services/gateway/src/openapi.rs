//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! kept in `contracts/openapi.json` (a test fails when the two differ;
//! `LEGATO_BLESS=1 cargo test -p legato-gateway` rewrites the file).

use axum::Json;
use serde_json::{Value, json};
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
pub fn document() -> Value {
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
    with_common_answers(doc)
}

/// Adds what every operation may answer whatever it does (a bad
/// parameter, no credentials, no permission, over a rate, unavailable)
/// and the bearer scheme they need, so clients and the conformance run
/// see every status the gateway can send.
fn with_common_answers(doc: utoipa::openapi::OpenApi) -> Value {
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    let problem = |description: &str| {
        json!({"description": description, "content": {"application/problem+json":
            {"schema": {"$ref": "#/components/schemas/Problem"}}}})
    };
    if let Some(paths) = value["paths"].as_object_mut() {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
        {
            let has_body = operation.get("requestBody").is_some();
            let Some(responses) = operation["responses"].as_object_mut() else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status)
                    .or_insert_with(|| problem(description));
            };
            add("400", "A malformed parameter or body, named in the problem");
            add(
                "401",
                "No credentials, or credentials refused (`WWW-Authenticate: Bearer`)",
            );
            add("403", "The caller's roles do not allow this");
            add(
                "429",
                "Over the tenant's rate of starts or signals, or its cap of open streams; see `Retry-After`",
            );
            add(
                "503",
                "Timed out, or the store, the bus or the token issuer is unavailable; see `Retry-After`",
            );
            if has_body {
                add("413", "Body too large");
            }
        }
    }
    value["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
            "description": "An API key (`gateway.auth.mode = api_key`) or an OpenID Connect access token (`jwt`); not needed when `gateway.auth.mode = none`."}
    });
    value["security"] = json!([{"bearer": []}]);
    value
}

pub(crate) async fn serve() -> Json<Value> {
    Json(document())
}
