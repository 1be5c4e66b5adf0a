//! Signals to a running instance: external events (approvals), terminate,
//! suspend, resume and restart. Each becomes a command for the
//! orchestrator; 202 means the command is on the bus, and the instance's
//! status shows when it took effect.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use legato_contracts::{
    Envelope, EventName, InstanceId, Payload, RaiseEvent, RedriveInstance, RestartInstance,
    ResumeInstance, SuspendInstance, TerminateInstance,
};
use legato_engine::InstanceState;
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use legato_store::StoredInstance;
use serde_json::Value;
use time::OffsetDateTime;

use super::{SOURCE, instance_id, load};
use crate::GatewayState;
use crate::body::{JsonBody, RawBody, parse_json};
use crate::dto::{Accepted, ReasonBody, RedriveBody, RestartBody, ResumeBody};

/// Which instances a signal is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    /// Live ones: a finished one answers 410.
    Live,
    /// Live ones, to resume: one whose spending is past the budget it
    /// would have answers 409.
    Resume,
    /// Any: a restart, which starts over, so the tasks' journals of the
    /// run before are cleared first.
    Restart,
    /// Failed or Terminated ones that did not roll back, and whose state
    /// fits the definition version named to move onto, if any: else 409.
    /// The journals of tasks that run again are kept (their recorded steps
    /// are not done again) unless `reset_journal`.
    Redrive {
        onto: Option<u32>,
        reset_journal: bool,
    },
}

/// Sends a command about an existing instance, once the instance is one
/// `target` allows.
async fn send(
    state: &GatewayState,
    caller: &Principal,
    raw_id: String,
    target: For,
    payload: impl Into<Payload>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    send_checked(state, caller, raw_id, target, payload, |_| Ok(())).await
}

/// As [`send`], once `check` allows the instance as loaded.
async fn send_checked(
    state: &GatewayState,
    caller: &Principal,
    raw_id: String,
    target: For,
    payload: impl Into<Payload>,
    check: impl FnOnce(&InstanceState) -> Result<(), Problem>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let id: InstanceId = instance_id(caller, raw_id)?;
    let (stored, instance) = load(state, &id).await?;
    check(&instance)?;
    let status = stored.record.summary.status;
    if matches!(target, For::Live | For::Resume) && status.is_terminal() {
        return Err(Problem::new(
            StatusCode::GONE,
            "Instance finished",
            format!("instance {} is {}", id.local(), status.as_str()),
        ));
    }
    if let For::Redrive { onto, .. } = target {
        if let Some(reason) = legato_engine::redrive_refused(&instance) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "Cannot be redriven",
                format!("instance {}: {reason}", id.local()),
            ));
        }
        if let Some(version) = onto {
            check_redrive_onto(state, &id, &stored, &instance, version).await?;
        }
    }
    if matches!(
        target,
        For::Restart
            | For::Redrive {
                reset_journal: true,
                ..
            }
    ) {
        state.store.clear_journal(&id).await?;
    }
    let envelope = Envelope::new(SOURCE, id.clone(), OffsetDateTime::now_utc(), payload)
        .with_traceparent(legato_service::telemetry::current_traceparent());
    super::send_command(state, &envelope).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: id.local().to_owned(),
            command_id: envelope.id,
        }),
    ))
}

/// The reason, unless it is longer than `gateway.limits.max_reason_bytes`.
fn bounded_reason(state: &GatewayState, reason: Option<String>) -> Result<Option<String>, Problem> {
    let max = state.settings.limits.max_reason_bytes;
    match reason {
        Some(text) if text.len() > max => Err(Problem::field(
            "/reason",
            format!("is {} bytes; at most {max}", text.len()),
        )),
        other => Ok(other),
    }
}

/// Raise an external event (the body is the event's data; empty = null).
/// An event named as a question a task asks answers it, and must fit the
/// question's schema.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{id}/events/{name}",
    tag = "control",
    params(("id" = String, Path), ("name" = String, Path, description = "The event name a `wait_for_event` step waits for, or the name of a question a task asks")),
    request_body(content = Object, description = "Event data, any JSON"),
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 400, description = "Bad name, malformed JSON, or an answer that does not fit its question's schema (`errors[].field` is a JSON pointer into the data)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn raise_event(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path((id, name)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let name = EventName::parse(name).map_err(|e| Problem::field("name", e.to_string()))?;
    let data: Value = if body.is_empty() {
        Value::Null
    } else {
        parse_json(&body)?
    };
    let check = {
        let (name, data) = (name.clone(), data.clone());
        move |instance: &InstanceState| fits_question(instance, &name, &data)
    };
    send_checked(
        &state,
        &caller,
        id,
        For::Live,
        RaiseEvent { name, data },
        check,
    )
    .await
}

/// A 400 naming each problem when `data` answers a question a task asks
/// and does not fit its schema.
fn fits_question(instance: &InstanceState, name: &EventName, data: &Value) -> Result<(), Problem> {
    let schema = instance
        .questions()
        .into_iter()
        .find(|q| &q.name == name)
        .and_then(|q| q.schema.clone());
    let Some(schema) = schema else {
        return Ok(());
    };
    legato_workflow::check_against(&schema, data).map_err(|errors| {
        let fields = errors
            .into_iter()
            .map(|e| legato_service::problem::FieldError {
                field: if e.pointer.is_empty() {
                    "/".into()
                } else {
                    e.pointer
                },
                message: e.message,
            })
            .collect();
        Problem::fields("The answer does not fit the question's schema", fields)
    })
}

/// Terminate: no more steps run, running tasks are cancelled, nothing is compensated.
#[utoipa::path(
    post, path = "/api/v1/instances/{id}/terminate", tag = "control",
    params(("id" = String, Path)), request_body = ReasonBody,
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn terminate(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody, true>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    send(
        &state,
        &caller,
        id,
        For::Live,
        TerminateInstance {
            reason: bounded_reason(&state, body.reason)?,
        },
    )
    .await
}

/// Suspend: results and events are kept and applied on resume.
#[utoipa::path(
    post, path = "/api/v1/instances/{id}/suspend", tag = "control",
    params(("id" = String, Path)), request_body = ReasonBody,
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn suspend(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody, true>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    send(
        &state,
        &caller,
        id,
        For::Live,
        SuspendInstance {
            reason: bounded_reason(&state, body.reason)?,
        },
    )
    .await
}

#[utoipa::path(
    post, path = "/api/v1/instances/{id}/resume", tag = "control",
    params(("id" = String, Path)), request_body = ResumeBody,
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 400, description = "A bad budget (`/budget/tokens`, `/budget/cost`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "What the instance spent is past the budget it would resume with: raise `budget`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The instance has finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resume(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResumeBody, true>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let budget = crate::dto::checked_budget("/budget", body.budget, None)?;
    let target = For::Resume;
    let check = budget.clone();
    send_checked(
        &state,
        &caller,
        id,
        target,
        ResumeInstance {
            reason: bounded_reason(&state, body.reason)?,
            budget,
        },
        move |instance| over_budget(instance, check.as_ref()),
    )
    .await
}

/// A 409 when the instance, with `budget` in place of its own, would still
/// be past it.
fn over_budget(
    instance: &InstanceState,
    budget: Option<&legato_contracts::Budget>,
) -> Result<(), Problem> {
    let budget = budget.or(instance.budget.as_ref());
    match budget.and_then(|b| b.exceeded_by(&instance.usage)) {
        Some(why) => Err(Problem::new(
            StatusCode::CONFLICT,
            "Budget exceeded",
            format!("{why}; resume with a higher `budget`"),
        )
        .with_errors(vec![legato_service::problem::FieldError {
            field: "/budget".into(),
            message: why,
        }])),
        None => Ok(()),
    }
}

/// Restart with the pinned definition (and optionally a new input), also
/// after the instance finished. Starting over, the tasks' journals
/// (their agents' recorded steps) are cleared.
#[utoipa::path(
    post, path = "/api/v1/instances/{id}/restart", tag = "control",
    params(("id" = String, Path)), request_body = RestartBody,
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 404, description = "Unknown instance", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn restart(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RestartBody, true>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    send(
        &state,
        &caller,
        id,
        For::Restart,
        RestartInstance { input: body.input },
    )
    .await
}

/// Resume a Failed or Terminated instance from what did not complete: its
/// completed steps (and a `for_each`'s completed items) keep their outputs
/// and are not run again; the rest runs as a new execution with a fresh
/// retry budget. Refused (409) for a live instance and for one whose saga
/// rolled back (restart that one). With `version`, the instance moves onto
/// that later version of its definition first; refused (409) unless every
/// step that completed is there under the same id and of the same kind.
/// The tasks that run again keep their journals (the steps their agents
/// recorded are not done again) unless `resetJournal` is true.
#[utoipa::path(
    post, path = "/api/v1/instances/{id}/redrive", tag = "control",
    params(("id" = String, Path)), request_body = RedriveBody,
    responses(
        (status = 202, description = "Sent", body = Accepted),
        (status = 404, description = "Unknown instance, or no such version of its workflow", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not Failed or Terminated, rolled back, or the version does not keep what completed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn redrive(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RedriveBody, true>,
) -> Result<(StatusCode, Json<Accepted>), Problem> {
    let target = For::Redrive {
        onto: body.version,
        reset_journal: body.reset_journal,
    };
    let command = RedriveInstance {
        version: body.version,
    };
    send(&state, &caller, id, target, command).await
}

/// 404 unless `version` of the instance's workflow is registered, 409
/// unless the instance's state fits it.
async fn check_redrive_onto(
    state: &GatewayState,
    id: &InstanceId,
    stored: &StoredInstance,
    instance: &InstanceState,
    version: u32,
) -> Result<(), Problem> {
    let workflow = &stored.record.summary.workflow;
    let definition = state
        .store
        .get_definition(workflow, Some(version))
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no version {version} of workflow {}",
                workflow.local()
            ))
        })?;
    let onto = state.definitions.parse(definition)?;
    match legato_engine::redrive_onto_refused(instance, &onto) {
        Some(reason) => Err(Problem::new(
            StatusCode::CONFLICT,
            "Cannot be redriven onto that version",
            format!("instance {}: {reason}", id.local()),
        )),
        None => Ok(()),
    }
}
