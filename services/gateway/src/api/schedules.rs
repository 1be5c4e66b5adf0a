//! `/api/v1/schedules`: workflow runs on a timetable. The gateway writes a
//! schedule's spec (and asks for triggered and backfilled runs) at the
//! version it read; the orchestrator's scheduler ticks it and starts the
//! runs (see `legato_schedule`). A caller sees its own tenant's schedules.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use legato_contracts::ScheduleName;
use legato_schedule::{
    MAX_NOTE_BYTES, MAX_REQUESTED, Outcome, Overlap, Requested, ScheduleDoc, ScheduleSpec,
    ScheduleState, Timetable, backfill_times, next_due, run_id,
};
use legato_service::auth::{Caller, Principal};
use legato_service::problem::Problem;
use legato_store::{Expected, ScheduleRecord, StoreError, StoredSchedule, TenantFilter};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::workflows::find_definition;
use crate::GatewayState;
use crate::body::JsonBody;
use crate::dto::rfc3339;

/// Next run times a description lists.
const UPCOMING: usize = 5;
/// Waiting runs a schedule's view names.
const WAITING_LISTED: usize = 100;
/// Read-modify-write rounds an edit makes while the scheduler ticks the
/// same schedule.
const EDIT_ATTEMPTS: usize = 8;

/// A schedule as callers see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScheduleView {
    pub name: String,
    pub spec: ScheduleSpec,
    /// The next nominal times (before jitter); none while paused.
    pub next_runs: Vec<String>,
    /// Runs started that were running when the scheduler last looked.
    pub running: Vec<String>,
    /// A run held until the running ones end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffered: Option<String>,
    /// Triggered and backfilled runs not yet started.
    pub waiting: usize,
    /// The instance ids of the buffered run and the waiting ones, in the
    /// order they start (at most 100): a watcher of one of them waits for
    /// it instead of finding nothing.
    pub waiting_runs: Vec<String>,
    /// Nominal times that passed outside the catch-up window.
    pub missed: u64,
    /// The most recent runs and skips, newest first.
    pub recent_runs: Vec<RecentRun>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecentRun {
    pub nominal_time: String,
    /// started, triggered, backfilled, skipped, buffered or missed.
    pub outcome: String,
    /// The run's instance id, when one was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScheduleList {
    pub items: Vec<ScheduleView>,
}

/// `pause` and `resume`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NoteBody {
    /// Why (kept on the schedule; at most 1,024 bytes).
    pub note: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TriggerBody {
    /// What to do if a run is going (default: the schedule's policy).
    pub overlap: Option<Overlap>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BackfillBody {
    /// The range's start (RFC 3339, inclusive).
    pub from: String,
    /// The range's end (RFC 3339, exclusive).
    pub to: String,
    /// What to do if a run is going (default `allow_all`: every time in the
    /// range runs).
    pub overlap: Option<Overlap>,
}

/// Runs asked for: the instance ids they get.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunsRequested {
    pub instance_ids: Vec<String>,
}

fn schedule_name(caller: &Principal, raw: String) -> Result<ScheduleName, Problem> {
    ScheduleName::scoped(caller.tenant.as_ref(), raw)
        .map_err(|e| Problem::field("name", e.to_string()))
}

fn doc_of(stored: &StoredSchedule) -> Result<ScheduleDoc, Problem> {
    serde_json::from_value(stored.record.body.clone()).map_err(|e| {
        Problem::from(StoreError::Corrupt(format!(
            "schedule {}: {e}",
            stored.record.name
        )))
    })
}

fn timetable(spec: &ScheduleSpec) -> Result<Timetable, Problem> {
    spec.timetable()
        .map_err(|e| Problem::field(&e.field, e.message))
}

fn view(name: &ScheduleName, doc: ScheduleDoc, now: OffsetDateTime) -> ScheduleView {
    let next_runs = match (&doc.spec.paused, doc.spec.timetable()) {
        (false, Ok(timetable)) => timetable
            .upcoming(doc.state.cursor.max(now), UPCOMING)
            .into_iter()
            .map(rfc3339)
            .collect(),
        _ => Vec::new(),
    };
    let local = |id: &legato_contracts::InstanceId| id.local().to_owned();
    ScheduleView {
        name: name.local().to_owned(),
        next_runs,
        running: doc.state.running.iter().map(local).collect(),
        buffered: doc.state.buffered.map(rfc3339),
        waiting: doc.state.requested.len(),
        waiting_runs: doc
            .state
            .buffered
            .iter()
            .chain(doc.state.requested.iter().map(|r| &r.nominal))
            .filter_map(|&nominal| run_id(name, nominal))
            .take(WAITING_LISTED)
            .map(|id| local(&id))
            .collect(),
        missed: doc.state.missed,
        recent_runs: doc
            .state
            .recent
            .iter()
            .map(|run| RecentRun {
                nominal_time: rfc3339(run.nominal),
                outcome: serde_json::to_value(run.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                instance_id: run.instance.as_ref().map(local),
                at: rfc3339(run.at),
            })
            .collect(),
        created_at: rfc3339(doc.created_at),
        updated_at: rfc3339(doc.updated_at),
        spec: doc.spec,
    }
}

fn record(
    name: &ScheduleName,
    caller: &Principal,
    doc: &ScheduleDoc,
    now: OffsetDateTime,
) -> Result<ScheduleRecord, Problem> {
    let timetable = timetable(&doc.spec)?;
    Ok(ScheduleRecord {
        name: name.clone(),
        tenant: caller.tenant.clone().map(String::from),
        next_due: next_due(name, &doc.spec, &timetable, &doc.state, now),
        body: serde_json::to_value(doc)
            .map_err(|e| Problem::from(StoreError::Corrupt(e.to_string())))?,
    })
}

async fn find(state: &GatewayState, name: &ScheduleName) -> Result<StoredSchedule, Problem> {
    state
        .store
        .get_schedule(name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no schedule {}", name.local())))
}

/// Reads the schedule (`None` if there is none), lets `change` make the
/// document to write, and writes it at the version read (creating it when
/// there was none), again while the scheduler ticks it in between.
async fn write<T>(
    state: &GatewayState,
    caller: &Principal,
    name: &ScheduleName,
    mut change: impl FnMut(Option<ScheduleDoc>, OffsetDateTime) -> Result<(ScheduleDoc, T), Problem>,
) -> Result<(ScheduleDoc, T), Problem> {
    for _ in 0..EDIT_ATTEMPTS {
        let stored = state.store.get_schedule(name).await?;
        let now = OffsetDateTime::now_utc();
        let (expected, existing) = match &stored {
            Some(stored) => (
                Expected::Version(stored.version.clone()),
                Some(doc_of(stored)?),
            ),
            None => (Expected::New, None),
        };
        let (mut doc, out) = change(existing, now)?;
        doc.updated_at = now;
        let record = record(name, caller, &doc, now)?;
        match state.store.put_schedule(&record, &expected).await {
            Ok(_) => return Ok((doc, out)),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "Schedule busy",
        format!("schedule {} kept changing; retry", name.local()),
    ))
}

/// [`write`] for a schedule that must exist.
async fn edit<T>(
    state: &GatewayState,
    caller: &Principal,
    name: &ScheduleName,
    mut change: impl FnMut(&mut ScheduleDoc, OffsetDateTime) -> Result<T, Problem>,
) -> Result<(ScheduleDoc, T), Problem> {
    write(state, caller, name, |existing, now| {
        let mut doc =
            existing.ok_or_else(|| Problem::not_found(format!("no schedule {}", name.local())))?;
        let out = change(&mut doc, now)?;
        Ok((doc, out))
    })
    .await
}

/// Create or replace a schedule. Replacing keeps its state: runs already
/// started or skipped stay so; a changed timetable counts from now.
#[utoipa::path(
    put, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "1-64 characters of a-z 0-9 - _, starting with a letter")),
    request_body = ScheduleSpec,
    responses(
        (status = 201, description = "Created", body = ScheduleView),
        (status = 200, description = "Replaced", body = ScheduleView),
        (status = 400, description = "A bad field (`errors[].field` names it: `/cron`, `/timeZone`, `/input/...`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown workflow or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed by others throughout; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> Result<Response, Problem> {
    let name = schedule_name(&caller, raw)?;
    if !spec.input.is_object() {
        return Err(Problem::field("/input", "must be a JSON object"));
    }
    timetable(&spec)?;
    let definition = find_definition(&state, &caller, spec.workflow.clone(), spec.version).await?;
    let workflow = state.definitions.parse(definition.clone())?;
    if let Err(errors) = workflow.check_input(&spec.input) {
        let detail = errors
            .iter()
            .map(|e| format!("/input{}: {}", e.pointer, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let field = errors
            .first()
            .map_or_else(|| "/input".to_owned(), |e| format!("/input{}", e.pointer));
        return Err(Problem::field(&field, detail));
    }
    let (doc, status) = write(&state, &caller, &name, |existing, now| {
        Ok(match existing {
            Some(old) => {
                let mut kept = old.state;
                let retimed = (
                    &old.spec.cron,
                    &old.spec.time_zone,
                    old.spec.interval_seconds,
                ) != (&spec.cron, &spec.time_zone, spec.interval_seconds);
                // Times that passed while paused are not caught up, and a
                // new timetable starts from now, not from the old one's
                // last time.
                if (old.spec.paused && !spec.paused) || retimed {
                    kept.cursor = kept.cursor.max(now);
                }
                let doc = ScheduleDoc {
                    spec: spec.clone(),
                    workflow: definition.name.clone(),
                    state: kept,
                    created_at: old.created_at,
                    updated_at: now,
                };
                (doc, StatusCode::OK)
            }
            None => {
                let doc = ScheduleDoc {
                    spec: spec.clone(),
                    workflow: definition.name.clone(),
                    state: ScheduleState::new(now),
                    created_at: now,
                    updated_at: now,
                };
                (doc, StatusCode::CREATED)
            }
        })
    })
    .await?;
    let now = OffsetDateTime::now_utc();
    Ok((status, Json(view(&name, doc, now))).into_response())
}

/// The caller's schedules, by name.
#[utoipa::path(
    get, path = "/api/v1/schedules", tag = "schedules",
    responses((status = 200, description = "Every schedule (at most 1,000)", body = ScheduleList))
)]
pub(crate) async fn list_schedules(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
) -> Result<Json<ScheduleList>, Problem> {
    let tenant = TenantFilter::Only(caller.tenant.clone().map(String::from));
    let now = OffsetDateTime::now_utc();
    let mut items = Vec::new();
    for stored in state.store.list_schedules(&tenant).await? {
        let doc = doc_of(&stored)?;
        items.push(view(&stored.record.name, doc, now));
    }
    Ok(Json(ScheduleList { items }))
}

/// A schedule: its spec, next run times, and recent runs with their
/// instance ids.
#[utoipa::path(
    get, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<Json<ScheduleView>, Problem> {
    let name = schedule_name(&caller, raw)?;
    let stored = find(&state, &name).await?;
    let doc = doc_of(&stored)?;
    Ok(Json(view(&name, doc, OffsetDateTime::now_utc())))
}

/// Delete a schedule. Runs it started are left as they are.
#[utoipa::path(
    delete, path = "/api/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
) -> Result<StatusCode, Problem> {
    let name = schedule_name(&caller, raw)?;
    if state.store.delete_schedule(&name, None).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no schedule {}", name.local())))
    }
}

fn bounded_note(note: Option<String>) -> Result<Option<String>, Problem> {
    match note {
        Some(text) if text.len() > MAX_NOTE_BYTES => Err(Problem::field(
            "/note",
            format!("is {} bytes; at most {MAX_NOTE_BYTES}", text.len()),
        )),
        other => Ok(other),
    }
}

async fn set_paused(
    state: &GatewayState,
    caller: &Principal,
    raw: String,
    paused: bool,
    note: Option<String>,
) -> Result<Json<ScheduleView>, Problem> {
    let name = schedule_name(caller, raw)?;
    let note = bounded_note(note)?;
    let (doc, ()) = edit(state, caller, &name, |doc, now| {
        if doc.spec.paused && !paused {
            // Times that passed while paused are not caught up.
            doc.state.cursor = doc.state.cursor.max(now);
        }
        doc.spec.paused = paused;
        doc.spec.note = note.clone();
        Ok(())
    })
    .await?;
    Ok(Json(view(&name, doc, OffsetDateTime::now_utc())))
}

/// Pause: nothing starts on the timetable until resumed (trigger and
/// backfill still do).
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path)), request_body = NoteBody,
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The schedule kept changing; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn pause_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<NoteBody, true>,
) -> Result<Json<ScheduleView>, Problem> {
    set_paused(&state, &caller, raw, true, body.note).await
}

/// Resume from now on: times that passed while paused are not run.
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path)), request_body = NoteBody,
    responses(
        (status = 200, description = "Resumed", body = ScheduleView),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The schedule kept changing; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resume_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<NoteBody, true>,
) -> Result<Json<ScheduleView>, Problem> {
    set_paused(&state, &caller, raw, false, body.note).await
}

/// Adds runs for the scheduler to start at its next poll.
fn request_runs(
    name: &ScheduleName,
    doc: &mut ScheduleDoc,
    times: &[OffsetDateTime],
    overlap: Overlap,
    kind: Outcome,
) -> Result<Vec<String>, Problem> {
    if doc.state.requested.len() + times.len() > MAX_REQUESTED {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Too many runs waiting",
            format!(
                "schedule {} has {} runs waiting; at most {MAX_REQUESTED} may wait",
                name.local(),
                doc.state.requested.len()
            ),
        ));
    }
    let mut ids = Vec::with_capacity(times.len());
    for &nominal in times {
        doc.state.requested.push_back(Requested {
            nominal,
            overlap,
            kind,
        });
        if let Some(id) = run_id(name, nominal) {
            ids.push(id.local().to_owned());
        }
    }
    Ok(ids)
}

/// Start a run now (also while paused). Its instance id is the schedule's
/// name and the time of the trigger.
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/trigger", tag = "schedules",
    params(("name" = String, Path)), request_body = TriggerBody,
    responses(
        (status = 202, description = "The scheduler starts it at its next poll", body = RunsRequested),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "1,000 runs wait already, or the schedule kept changing", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn trigger_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<TriggerBody, true>,
) -> Result<(StatusCode, Json<RunsRequested>), Problem> {
    let name = schedule_name(&caller, raw)?;
    let (_, instance_ids) = edit(&state, &caller, &name, |doc, now| {
        let overlap = body.overlap.unwrap_or(doc.spec.overlap);
        request_runs(&name, doc, &[now], overlap, Outcome::Triggered)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(RunsRequested { instance_ids })))
}

fn instant(field: &str, text: &str) -> Result<OffsetDateTime, Problem> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| Problem::field(field, format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// Run every nominal time in a past range, with the same instance ids the
/// timetable would have given them (a time that already ran is not run
/// again).
#[utoipa::path(
    post, path = "/api/v1/schedules/{name}/backfill", tag = "schedules",
    params(("name" = String, Path)), request_body = BackfillBody,
    responses(
        (status = 202, description = "The scheduler starts them from its next poll", body = RunsRequested),
        (status = 400, description = "A bad range, or more than 1,000 times in it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many runs would wait, or the schedule kept changing", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn backfill_schedule(
    State(state): State<GatewayState>,
    Caller(caller): Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<BackfillBody>,
) -> Result<(StatusCode, Json<RunsRequested>), Problem> {
    let name = schedule_name(&caller, raw)?;
    let from = instant("/from", &body.from)?;
    let to = instant("/to", &body.to)?;
    if to <= from {
        return Err(Problem::field("/to", "must be after from"));
    }
    if to > OffsetDateTime::now_utc() {
        return Err(Problem::field(
            "/to",
            "must not be in the future: a backfill runs past times",
        ));
    }
    let overlap = body.overlap.unwrap_or(Overlap::AllowAll);
    let (_, instance_ids) = edit(&state, &caller, &name, |doc, _| {
        let timetable = timetable(&doc.spec)?;
        let times = backfill_times(&timetable, from, to, MAX_REQUESTED).map_err(|limit| {
            Problem::field("/to", format!("the range holds more than {limit} times"))
        })?;
        request_runs(&name, doc, &times, overlap, Outcome::Backfilled)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(RunsRequested { instance_ids })))
}
