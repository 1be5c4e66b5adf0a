//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! kept in `contracts/openapi.json` (a test fails when the two differ;
//! `LEGATO_BLESS=1 cargo test -p legato-gateway` rewrites the file).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::api::*;
use crate::dto::*;
use legato_service::problem::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "legato gateway", version = "1", description = "Start, follow and steer durable multi-agent workflows. Errors are application/problem+json."),
    paths(register, list_workflows, get_workflow, list_versions, start, get_instance, list_instances, purge, raise_event, terminate, suspend, resume, restart, redrive, negotiate, subscribe, list_dead_letters, replay_dead_letter, discard_dead_letter, put_schedule, list_schedules, get_schedule, delete_schedule, pause_schedule, resume_schedule, trigger_schedule, backfill_schedule, put_agent, list_agents, get_agent, delete_agent, poll, heartbeat, complete, complete_many, fail, callback_complete, callback_fail, callback_heartbeat, record_step, callback_record_step, ask_question, callback_ask, relay_output, callback_output, list_entities, get_entity, operate_entity, delete_entity, put_entity_type, list_entity_types, get_entity_type, delete_entity_type, read_entity, call_entity, callback_read_entity, callback_call_entity),
    components(schemas(Problem, FieldError, StartRequest, StartResponse, InstanceView, StepView, ItemCounts, HistoryEntry, InstancePage, InstanceListItem, DefinitionView, DefinitionList, VersionList, ReasonBody, ResumeBody, BudgetView, UsageView, RestartBody, RedriveBody, Accepted, NegotiateResponse, SubscriptionRequest, DeadLetterPage, DeadLetterView, ScheduleView, RecentRun, ScheduleList, NoteBody, TriggerBody, BackfillBody, RunsRequested, legato_schedule::ScheduleSpec, legato_schedule::Overlap, AgentView, WorkerView, AgentList, crate::registry::AgentSpec, crate::registry::AgentKind, crate::registry::RegisteredKind, crate::registry::PushAuth, PollRequest, PollResponse, PulledTask, HeartbeatRequest, HeartbeatResponse, CompleteRequest, CompleteManyRequest, CompletionItem, CompleteManyResponse, CompletionResult, FailRequest, TaskAccepted, JournalRequest, JournalAnswer, AskRequest, AskAnswer, OutputRequest, QuestionView, EntityList, EntitySummaryView, EntityView, BusyView, EntityOperationView, OperationAccepted, EntityTypeView, EntityTypeList, EntityCallRequest, EntityCallAnswer, EntityValue)),
    tags(
        (name = "workflows", description = "Definitions"),
        (name = "instances", description = "Start, read, list, purge"),
        (name = "control", description = "Events and lifecycle signals"),
        (name = "realtime", description = "SignalR negotiate and subscriptions (progress streams)"),
        (name = "dead-letters", description = "Messages consumers gave up on: list, replay, discard (operators)"),
        (name = "schedules", description = "Runs on a timetable: cron or interval, overlap policy, catch-up, pause, trigger, backfill"),
        (name = "agents", description = "The agent registry: built-in and pull agents"),
        (name = "tasks", description = "Pull workers: long-poll for tasks, heartbeat, record journal entries, ask, relay output, read and operate entities, complete, fail"),
        (name = "entities", description = "Durable entities: state keyed by type and id that outlives runs; list, read, operate, delete"),
    )
)]
pub struct ApiDoc;

/// How the running gateway authenticates callers, as its document says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `gateway.auth.mode = none`: no credentials asked, no 401.
    None,
    /// `api_key`: `Authorization: Bearer <key>`.
    ApiKey,
    /// `jwt`: `Authorization: Bearer <OpenID Connect access token>`.
    Jwt,
}

impl Security {
    pub fn of(auth: &legato_service::auth::Authenticator) -> Self {
        use legato_service::auth::Authenticator;
        match auth {
            Authenticator::Anyone => Self::None,
            Authenticator::ApiKeys(_) => Self::ApiKey,
            Authenticator::Jwt(_) => Self::Jwt,
        }
    }
}

/// The document of the authenticated modes (`contracts/openapi.json`).
pub fn document() -> Value {
    document_for(None)
}

/// The document as a gateway in `security` mode serves it: what that mode
/// enforces, so generated clients and conformance runs expect only that.
/// `None` leaves the scheme open between the two authenticated modes.
pub fn document_for(security: Option<Security>) -> Value {
    let mut doc = base_document();
    let description = match security {
        Some(Security::None) => {
            if let Some(paths) = doc["paths"].as_object_mut() {
                for operation in paths.values_mut().filter_map(Value::as_object_mut) {
                    for operation in operation.values_mut() {
                        if let Some(responses) = operation["responses"].as_object_mut() {
                            responses.remove("401");
                        }
                    }
                }
            }
            return doc;
        }
        Some(Security::ApiKey) => {
            "An API key issued by the operator (`gateway.auth.api_keys`), as `Authorization: Bearer <key>`."
        }
        Some(Security::Jwt) => {
            "An OpenID Connect access token from the configured issuer (`gateway.auth.jwt`), as `Authorization: Bearer <token>`."
        }
        None => {
            "An API key (`gateway.auth.mode = api_key`) or an OpenID Connect access token (`jwt`); not needed when `gateway.auth.mode = none`, whose served document asks for none."
        }
    };
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": description}
    });
    doc["security"] = json!([{"bearer": []}]);
    doc
}

fn base_document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // The progress stream is served by the notifier (same port in `legato up`).
    doc["paths"]["/api/v1/instances/{id}/stream"] = json!({
            "get": {
                "operationId": "stream",
                "tags": ["instances"],
                "summary": "Server-sent events of the instance's progress until it finishes",
                "description": "Opens with a `status` event, then `progress` events whose `id:` is the event's position (unique and consecutive within the instance). `Last-Event-ID: N` or `?after=N` resumes exactly after position N. Between them come `output` events without an `id:`: a piece of what a model writes inside one of the instance's tasks (`{instanceId, step, item?, iteration?, compensation?, attempt, call, seq, text}`), sent to whoever watches then and not kept for later watchers.",
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "required": false, "description": "Resume after this progress position (as Last-Event-ID).", "schema": {"type": "integer", "format": "int64", "minimum": 0}},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "description": "The last progress position the client saw.", "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}
                ],
                "responses": {
                    "200": {"description": "text/event-stream", "content": {"text/event-stream": {"schema": {
                        "description": "One server-sent event; `data` is JSON",
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "event": {"enum": ["status", "progress", "output"]},
                            "id": {"type": "string"},
                            "data": {"type": "string", "contentMediaType": "application/json"}
                        }
                    }}}},
                    "404": {"description": "Unknown instance", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                }
            }
    });
    with_common_answers(doc)
}

/// The rules the gateway checks parameters by, as schemas, so that
/// generated clients and the conformance run know them.
fn constrain_parameters(path: &str, operation: &mut Value) {
    let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for parameter in parameters {
        let schema = match (parameter["in"].as_str(), parameter["name"].as_str()) {
            (Some("path"), Some("id")) if path.contains("/entities/") => {
                json!({"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$"})
            }
            (Some("path"), Some("id")) => {
                json!({"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"})
            }
            (Some("path" | "query"), Some("type")) => {
                json!({"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"})
            }
            (Some("query"), Some("operations")) => {
                json!({"type": "integer", "minimum": 0, "maximum": 100})
            }
            (Some("query"), Some("path")) => json!({"type": "string", "pattern": "^(/.*)?$"}),
            (Some("path"), Some("name")) if path.starts_with("/api/v1/agents/") => {
                json!({"type": "string", "pattern": "^[a-z][a-z0-9-]{0,62}$"})
            }
            (Some("path"), Some("token")) => {
                json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,4096}$"})
            }
            (Some("path"), Some("capability")) => {
                json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,4096}\\.[A-Za-z0-9_-]{1,128}$"})
            }
            (Some("path"), Some("name")) if path.contains("/events/") => {
                json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"})
            }
            (Some("path"), Some("name")) => {
                json!({"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"})
            }
            (Some("query"), Some("status")) => json!({"type": "string",
                "enum": ["Pending", "Running", "Suspended", "Completed", "Failed", "Terminated"]}),
            (Some("query"), Some("workflow")) => {
                json!({"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,63}$"})
            }
            (Some("query"), Some("createdFrom" | "createdTo")) => {
                json!({"type": "string", "format": "date-time"})
            }
            (Some("query"), Some("top")) => {
                json!({"type": "integer", "minimum": 1, "maximum": 1000})
            }
            // Bounded by the service's maximum anyway (`max_history`).
            (Some("query"), Some("limit")) => {
                json!({"type": "integer", "minimum": 0, "maximum": 1000000})
            }
            (Some("query"), Some("after" | "afterSeq")) => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX})
            }
            _ => continue,
        };
        parameter["schema"] = schema;
    }
}

/// The answers any operation may give, whatever it does.
fn add_common_responses(operation: &mut Value) {
    let has_body = operation.get("requestBody").is_some();
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| {
            json!({"description": description, "content": {"application/problem+json":
                {"schema": {"$ref": "#/components/schemas/Problem"}}}})
        });
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

/// What a client can do next with what an answer names: a started
/// instance's id leads to everything about it, a registered definition's
/// name to starting it (and the conformance run follows these).
fn add_links(value: &mut Value) {
    let by_id = |operation: &str| json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}});
    let instance_links = json!({
        "GetInstance": by_id("get_instance"),
        "Stream": by_id("stream"),
        "RaiseApproval": {"operationId": "raise_event",
            "parameters": {"id": "$response.body#/id", "name": "approval"}},
        "Terminate": by_id("terminate"),
        "Suspend": by_id("suspend"),
        "Resume": by_id("resume"),
        "Restart": by_id("restart"),
        "Redrive": by_id("redrive"),
        "Purge": by_id("purge"),
        "Subscribe": by_id("subscribe"),
    });
    let paths = &mut value["paths"];
    if let Some(accepted) =
        paths.pointer_mut("/~1api~1v1~1workflows~1{name}~1instances/post/responses/202")
    {
        accepted["links"] = instance_links;
    }
    let by_name = |operation: &str| json!({"operationId": operation, "parameters": {"name": "$response.body#/name"}});
    for status in ["200", "201"] {
        let pointer = format!("/~1api~1v1~1workflows~1{{name}}/put/responses/{status}");
        if let Some(registered) = paths.pointer_mut(&pointer) {
            registered["links"] =
                json!({"Start": by_name("start"), "GetWorkflow": by_name("get_workflow")});
        }
    }
}

/// Adds what every operation may answer whatever it does (a bad
/// parameter, no credentials, no permission, over a rate, unavailable)
/// and the bearer scheme they need, so clients and the conformance run
/// see every status the gateway can send.
fn with_common_answers(mut value: Value) -> Value {
    if let Some(paths) = value["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                constrain_parameters(path, operation);
                add_common_responses(operation);
            }
        }
    }
    add_links(&mut value);
    // Event data is any JSON, or nothing (null); utoipa has no way to say so.
    if let Some(event) =
        value.pointer_mut("/paths/~1api~1v1~1instances~1{id}~1events~1{name}/post/requestBody")
    {
        *event = json!({"description": "Event data: any JSON; an empty body is null",
            "required": false, "content": {"application/json": {"schema": {}}}});
    }
    value
}

pub(crate) async fn serve(State(state): State<crate::GatewayState>) -> Json<Value> {
    Json(document_for(Some(Security::of(&state.auth))))
}
