//! Schedules: workflow runs on a timetable, decided purely. A schedule is a
//! spec (what, when, overlap policy) and a small state (how far its
//! timetable has been dealt with, which runs may still be running);
//! [`plan`] turns both and the time into actions and the next state.

mod plan;
mod spec;
mod timetable;

pub use plan::{
    Action, MAX_REQUESTED, Outcome, RECENT_RUNS, Requested, RunRecord, ScheduleState, Statuses,
    TIMES_PER_TICK, Tick, backfill_times, jitter, next_due, plan, run_id,
};
pub use spec::{
    DEFAULT_CATCHUP_SECONDS, MAX_CATCHUP_SECONDS, MAX_JITTER_SECONDS, MAX_NOTE_BYTES, Overlap,
    ScheduleDoc, ScheduleSpec, SpecError,
};
pub use timetable::Timetable;

#[cfg(test)]
mod tests;
