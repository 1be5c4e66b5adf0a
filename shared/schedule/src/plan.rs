//! What a schedule does at a tick: which runs to start, which to
//! terminate, and its state afterwards. The orchestrator carries the
//! actions out and then writes the state back (guarded by its version);
//! every start is idempotent because a run's instance id is its schedule's
//! name and nominal time, so replicas that plan the same tick start the
//! same instances.

use std::collections::{BTreeMap, VecDeque};

use legato_contracts::{InstanceId, RuntimeStatus, ScheduleName};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::spec::{Overlap, ScheduleSpec};
use crate::timetable::{Timetable, from_millis, millis_of};

/// Recent runs kept for `describe`.
pub const RECENT_RUNS: usize = 20;
/// Nominal times one tick walks through at most; a schedule further behind
/// catches up over the next ticks.
pub const TIMES_PER_TICK: usize = 100;
/// Waiting trigger and backfill runs a schedule holds at most.
pub const MAX_REQUESTED: usize = 1_000;

/// What a schedule keeps between ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleState {
    /// Every nominal time up to this one has been dealt with.
    #[serde(with = "time::serde::rfc3339")]
    pub cursor: OffsetDateTime,
    /// Runs started that were running when last looked at, oldest first.
    #[serde(default)]
    pub running: Vec<InstanceId>,
    /// A run held back until the running ones end (`buffer_one`,
    /// `cancel_other`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub buffered: Option<OffsetDateTime>,
    /// Runs asked for by trigger or backfill, not yet started.
    #[serde(default)]
    pub requested: VecDeque<Requested>,
    /// The most recent runs and skips, newest first.
    #[serde(default)]
    pub recent: VecDeque<RunRecord>,
    /// Nominal times that passed outside the catch-up window.
    #[serde(default)]
    pub missed: u64,
}

impl ScheduleState {
    /// A new schedule's state: times from `now` on are its to run.
    pub fn new(now: OffsetDateTime) -> Self {
        Self {
            cursor: now,
            running: Vec::new(),
            buffered: None,
            requested: VecDeque::new(),
            recent: VecDeque::new(),
            missed: 0,
        }
    }
}

/// A run asked for outside the timetable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    #[serde(with = "time::serde::rfc3339")]
    pub nominal: OffsetDateTime,
    pub overlap: Overlap,
    pub kind: Outcome,
}

/// What became of one nominal time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Started,
    Triggered,
    Backfilled,
    /// Not started: a run was still going (`skip`, or `buffer_one` with one
    /// already waiting).
    Skipped,
    /// Waiting for the running ones to end.
    Buffered,
    /// Later than the catch-up window.
    Missed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub nominal: OffsetDateTime,
    pub outcome: Outcome,
    /// The run's instance, when one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Something the orchestrator does for a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start an instance with this id (a second start of it is a no-op).
    Start {
        id: InstanceId,
        nominal: OffsetDateTime,
    },
    /// Terminate a running run (`cancel_other`, `terminate_other`).
    Terminate { id: InstanceId, reason: String },
}

/// The result of one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub actions: Vec<Action>,
    pub state: ScheduleState,
    /// When the schedule next needs a tick; `None` while it has nothing to
    /// do (paused with nothing waiting).
    pub next_due: Option<OffsetDateTime>,
}

/// The instance id of the run for `nominal`: `<name>:<UTC time>`, in the
/// schedule's tenant.
pub fn run_id(name: &ScheduleName, nominal: OffsetDateTime) -> Option<InstanceId> {
    let utc = nominal.to_offset(time::UtcOffset::UTC);
    let mut stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    if utc.millisecond() != 0 {
        stamp.push_str(&format!(".{:03}", utc.millisecond()));
    }
    InstanceId::scoped(name.tenant().as_ref(), format!("{}:{stamp}Z", name.local())).ok()
}

/// How long after its nominal time a run starts: a stable offset below the
/// jitter, the same for the same schedule and time on every replica.
pub fn jitter(name: &ScheduleName, jitter_seconds: u64, nominal: OffsetDateTime) -> Duration {
    if jitter_seconds == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let stamp = millis_of(nominal).to_le_bytes();
    for byte in name.as_str().bytes().chain(stamp) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let millis = hash % (jitter_seconds.saturating_mul(1_000));
    Duration::milliseconds(i64::try_from(millis).unwrap_or(0))
}

/// What the schedule knows of the runs it started: their status, or `None`
/// for one that no longer exists.
pub type Statuses = BTreeMap<InstanceId, Option<RuntimeStatus>>;

/// One tick of a schedule at `now`, given the status of every run in
/// `state.running`.
pub fn plan(
    name: &ScheduleName,
    spec: &ScheduleSpec,
    timetable: &Timetable,
    state: &ScheduleState,
    now: OffsetDateTime,
    statuses: &Statuses,
) -> Tick {
    let mut planner = Planner {
        name,
        now,
        state: state.clone(),
        actions: Vec::new(),
    };
    planner.state.running.retain(|id| {
        statuses
            .get(id)
            .copied()
            .flatten()
            .is_some_and(|status| !status.is_terminal())
    });
    if planner.state.running.is_empty()
        && let Some(nominal) = planner.state.buffered.take()
    {
        planner.start(nominal, Outcome::Started);
    }
    while let Some(request) = planner.state.requested.pop_front() {
        planner.admit(request.nominal, request.overlap, request.kind);
    }
    if spec.paused {
        // Times that pass while paused are not caught up on resume.
        planner.state.cursor = planner.state.cursor.max(now);
    } else {
        planner.walk(spec, timetable);
    }
    let next_due = next_due(name, spec, timetable, &planner.state, now);
    Tick {
        actions: planner.actions,
        state: planner.state,
        next_due,
    }
}

struct Planner<'a> {
    name: &'a ScheduleName,
    now: OffsetDateTime,
    state: ScheduleState,
    actions: Vec<Action>,
}

impl Planner<'_> {
    /// Deals with every nominal time due by now.
    fn walk(&mut self, spec: &ScheduleSpec, timetable: &Timetable) {
        let window = Duration::seconds(i64::try_from(spec.catchup_window_seconds).unwrap_or(0));
        for _ in 0..TIMES_PER_TICK {
            let Some(nominal) = timetable.next_after(self.state.cursor) else {
                return;
            };
            if nominal + jitter(self.name, spec.jitter_seconds, nominal) > self.now {
                return;
            }
            self.state.cursor = nominal;
            if nominal < self.now - window {
                self.state.missed += 1;
                self.record(nominal, Outcome::Missed, None);
            } else {
                self.admit(nominal, spec.overlap, Outcome::Started);
            }
        }
        // Still far behind (a long outage of a frequent schedule): what
        // lies before the window is missed; count it without walking it.
        if let Some(next) = timetable.next_after(self.state.cursor)
            && next < self.now - window
        {
            let skipped_to = self.now - window - Duration::milliseconds(1);
            self.state.missed += count_between(timetable, self.state.cursor, skipped_to);
            self.state.cursor = skipped_to;
        }
    }

    fn admit(&mut self, nominal: OffsetDateTime, overlap: Overlap, kind: Outcome) {
        if self.state.running.is_empty() {
            self.start(nominal, kind);
            return;
        }
        match overlap {
            Overlap::AllowAll => self.start(nominal, kind),
            Overlap::Skip => self.record(nominal, Outcome::Skipped, None),
            Overlap::BufferOne => {
                if self.state.buffered.is_none() {
                    self.state.buffered = Some(nominal);
                    self.record(nominal, Outcome::Buffered, None);
                } else {
                    self.record(nominal, Outcome::Skipped, None);
                }
            }
            Overlap::CancelOther => {
                self.terminate_running(nominal);
                // The newest waits for them to stop; an older waiting one
                // gives way.
                if let Some(older) = self.state.buffered.replace(nominal) {
                    self.record(older, Outcome::Skipped, None);
                }
                self.record(nominal, Outcome::Buffered, None);
            }
            Overlap::TerminateOther => {
                self.terminate_running(nominal);
                self.state.running.clear();
                self.start(nominal, kind);
            }
        }
    }

    fn terminate_running(&mut self, nominal: OffsetDateTime) {
        let reason = format!(
            "schedule {}: the run for {} replaces it",
            self.name.local(),
            nominal.format(&Rfc3339).unwrap_or_default()
        );
        for id in &self.state.running {
            let already = self
                .actions
                .iter()
                .any(|a| matches!(a, Action::Terminate { id: t, .. } if t == id));
            if !already {
                self.actions.push(Action::Terminate {
                    id: id.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }

    fn start(&mut self, nominal: OffsetDateTime, kind: Outcome) {
        let Some(id) = run_id(self.name, nominal) else {
            return;
        };
        self.actions.push(Action::Start {
            id: id.clone(),
            nominal,
        });
        if !self.state.running.contains(&id) {
            self.state.running.push(id.clone());
        }
        self.record(nominal, kind, Some(id));
    }

    fn record(&mut self, nominal: OffsetDateTime, outcome: Outcome, instance: Option<InstanceId>) {
        self.state.recent.push_front(RunRecord {
            nominal,
            outcome,
            instance,
            at: self.now,
        });
        self.state.recent.truncate(RECENT_RUNS);
    }
}

/// When a schedule in `state` next needs a tick: now while runs wait to be
/// started (asked for, or held until the running ones end), else its next
/// time plus jitter; `None` while paused with nothing waiting.
pub fn next_due(
    name: &ScheduleName,
    spec: &ScheduleSpec,
    timetable: &Timetable,
    state: &ScheduleState,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    if !state.requested.is_empty() || (state.buffered.is_some() && !spec.paused) {
        return Some(now);
    }
    if spec.paused {
        return None;
    }
    let next = timetable.next_after(state.cursor)?;
    Some(next + jitter(name, spec.jitter_seconds, next))
}

/// How many nominal times lie in (`from`, `to`], counted exactly for an
/// interval and up to a bound for cron.
fn count_between(timetable: &Timetable, from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    match timetable {
        Timetable::Every { millis } => {
            let first = millis_of(from).div_euclid(*millis);
            let last = millis_of(to).div_euclid(*millis);
            u64::try_from(last - first).unwrap_or(0)
        }
        Timetable::Cron { .. } => {
            let mut count = 0;
            let mut cursor = from;
            while count < 100_000 {
                match timetable.next_after(cursor) {
                    Some(next) if next <= to => {
                        count += 1;
                        cursor = next;
                    }
                    _ => break,
                }
            }
            count
        }
    }
}

/// The nominal times of a backfill over [`from`, `to`), at most `limit`
/// (more is an error: the caller asks for a shorter range).
pub fn backfill_times(
    timetable: &Timetable,
    from: OffsetDateTime,
    to: OffsetDateTime,
    limit: usize,
) -> Result<Vec<OffsetDateTime>, usize> {
    let mut times = Vec::new();
    let Some(start) = from_millis(millis_of(from) - 1) else {
        return Ok(times);
    };
    let mut cursor = start;
    while let Some(next) = timetable.next_after(cursor) {
        if next >= to {
            break;
        }
        if times.len() == limit {
            return Err(limit);
        }
        times.push(next);
        cursor = next;
    }
    Ok(times)
}
