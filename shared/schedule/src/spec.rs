//! What a schedule is: the workflow it starts, when, and what to do when a
//! run is due while the last one is still running.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::timetable::Timetable;

/// The longest catch-up window: a year, as Temporal's default.
pub const MAX_CATCHUP_SECONDS: u64 = 366 * 24 * 3_600;
/// The longest jitter: a day.
pub const MAX_JITTER_SECONDS: u64 = 24 * 3_600;
/// The catch-up window when none is given.
pub const DEFAULT_CATCHUP_SECONDS: u64 = 3_600;
/// The longest note a pause or resume keeps.
pub const MAX_NOTE_BYTES: usize = 1_024;

/// A schedule as its owner writes it (`PUT /api/v1/schedules/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The workflow each run starts.
    pub workflow: String,
    /// A pinned definition version; the latest at each run when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Each run's input (a JSON object; `{}` when absent).
    #[serde(default = "no_input")]
    #[schema(value_type = Object)]
    pub input: Value,
    /// A cron expression: five fields (minute hour day-of-month month
    /// day-of-week), or six with seconds first; `@daily` and the like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone the cron expression is read in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A fixed interval instead of a cron expression: runs at every
    /// multiple of it since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    #[serde(default)]
    pub overlap: Overlap,
    /// After downtime, runs this late or less still start; older ones are
    /// counted as missed.
    #[serde(default = "default_catchup")]
    pub catchup_window_seconds: u64,
    /// Each run starts up to this much after its nominal time (the same
    /// offset for the same time on every replica).
    #[serde(default)]
    pub jitter_seconds: u64,
    /// A paused schedule starts nothing on its timetable (trigger and
    /// backfill still work); times that pass while paused are not caught up.
    #[serde(default)]
    pub paused: bool,
    /// Why it was paused or resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            workflow: String::new(),
            version: None,
            input: no_input(),
            cron: None,
            time_zone: None,
            interval_seconds: None,
            overlap: Overlap::default(),
            catchup_window_seconds: DEFAULT_CATCHUP_SECONDS,
            jitter_seconds: 0,
            paused: false,
            note: None,
        }
    }
}

fn default_catchup() -> u64 {
    DEFAULT_CATCHUP_SECONDS
}

/// What to do when a run is due while an earlier one is still running.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start it.
    #[default]
    Skip,
    /// Start it once the running one ends; one at most is kept waiting.
    BufferOne,
    /// Start it anyway.
    AllowAll,
    /// Terminate the running one and start this one once it has stopped.
    CancelOther,
    /// Terminate the running one and start this one at once.
    TerminateOther,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::BufferOne => "buffer_one",
            Self::AllowAll => "allow_all",
            Self::CancelOther => "cancel_other",
            Self::TerminateOther => "terminate_other",
        }
    }
}

/// A field of a spec that is wrong, as a JSON pointer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn error(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl ScheduleSpec {
    /// The timetable, once every field is checked.
    pub fn timetable(&self) -> Result<Timetable, SpecError> {
        if self.catchup_window_seconds > MAX_CATCHUP_SECONDS {
            return Err(error(
                "/catchupWindowSeconds",
                format!("at most {MAX_CATCHUP_SECONDS} (a year)"),
            ));
        }
        if self.jitter_seconds > MAX_JITTER_SECONDS {
            return Err(error(
                "/jitterSeconds",
                format!("at most {MAX_JITTER_SECONDS} (a day)"),
            ));
        }
        if self.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
            return Err(error("/note", format!("at most {MAX_NOTE_BYTES} bytes")));
        }
        match (&self.cron, self.interval_seconds) {
            (Some(_), Some(_)) => Err(error(
                "/intervalSeconds",
                "give either cron or intervalSeconds, not both",
            )),
            (None, None) => Err(error("/cron", "give cron or intervalSeconds")),
            (None, Some(_)) if self.time_zone.is_some() => Err(error(
                "/timeZone",
                "applies to cron expressions; intervals count from the Unix epoch",
            )),
            (None, Some(seconds)) => {
                if seconds == 0 {
                    return Err(error("/intervalSeconds", "at least 1"));
                }
                if self.jitter_seconds >= seconds {
                    return Err(error("/jitterSeconds", "must be shorter than the interval"));
                }
                Timetable::every(seconds).map_err(|m| error("/intervalSeconds", m))
            }
            (Some(cron), None) => {
                Timetable::cron(cron, self.time_zone.as_deref()).map_err(|(field, m)| {
                    error(
                        if field == "zone" {
                            "/timeZone"
                        } else {
                            "/cron"
                        },
                        m,
                    )
                })
            }
        }
    }
}

/// A schedule as it is stored: the spec its owner wrote, the workflow it
/// resolved to, and the planner's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleDoc {
    pub spec: ScheduleSpec,
    /// The workflow the spec names, as resolved for the schedule's tenant
    /// (its own definition or a shared one).
    pub workflow: legato_contracts::WorkflowName,
    pub state: crate::ScheduleState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: time::OffsetDateTime,
}

fn no_input() -> Value {
    Value::Object(serde_json::Map::new())
}
