#![allow(clippy::unwrap_used, clippy::expect_used)]

use legato_contracts::{InstanceId, RuntimeStatus, ScheduleName};
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;

fn spec(extra: serde_json::Value) -> ScheduleSpec {
    let mut body = json!({"workflow": "nightly", "intervalSeconds": 60});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    if body.get("cron").is_some() {
        body.as_object_mut().unwrap().remove("intervalSeconds");
    }
    serde_json::from_value(body).unwrap()
}

fn name() -> ScheduleName {
    ScheduleName::parse("nightly").unwrap()
}

const T0: OffsetDateTime = datetime!(2026-11-30 12:00:00 UTC);

fn starts(tick: &Tick) -> Vec<InstanceId> {
    tick.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { id, .. } => Some(id.clone()),
            Action::Terminate { .. } => None,
        })
        .collect()
}

fn terminates(tick: &Tick) -> Vec<InstanceId> {
    tick.actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { id, .. } => Some(id.clone()),
            Action::Start { .. } => None,
        })
        .collect()
}

fn running(ids: &[InstanceId]) -> Statuses {
    ids.iter()
        .map(|id| (id.clone(), Some(RuntimeStatus::Running)))
        .collect()
}

fn id(text: &str) -> InstanceId {
    InstanceId::parse(text).unwrap()
}

#[test]
fn an_interval_fires_at_each_multiple_and_names_runs_by_nominal_time() {
    let spec = spec(json!({}));
    let timetable = spec.timetable().unwrap();
    let state = ScheduleState::new(T0 - Duration::seconds(1));
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + Duration::seconds(5),
        &Statuses::new(),
    );
    assert_eq!(starts(&tick), vec![id("nightly:20261130T120000Z")]);
    assert_eq!(tick.next_due, Some(T0 + Duration::seconds(60)));
    assert_eq!(tick.state.cursor, T0);
    // Planning the same tick again from the same state plans the same run.
    let again = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + Duration::seconds(5),
        &Statuses::new(),
    );
    assert_eq!(again, tick);
    // Nothing is due before the next time.
    let quiet = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        T0 + Duration::seconds(30),
        &Statuses::new(),
    );
    assert!(quiet.actions.is_empty());
}

#[test]
fn skip_leaves_out_a_time_while_a_run_is_going() {
    let spec = spec(json!({"overlap": "skip"}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0 - Duration::seconds(1));
    state.running = vec![id("nightly:20261130T115900Z")];
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0,
        &running(&state.running),
    );
    assert!(tick.actions.is_empty());
    assert_eq!(tick.state.recent[0].outcome, Outcome::Skipped);
    // Once it finished, the next time starts.
    let done = [(state.running[0].clone(), Some(RuntimeStatus::Completed))].into();
    let next = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        T0 + Duration::seconds(60),
        &done,
    );
    assert_eq!(starts(&next), vec![id("nightly:20261130T120100Z")]);
    assert!(next.state.running.len() == 1);
}

#[test]
fn buffer_one_keeps_one_waiting_and_starts_it_when_the_run_ends() {
    let spec = spec(json!({"overlap": "buffer_one"}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0 - Duration::seconds(1));
    state.running = vec![id("nightly:20261130T115900Z")];
    let busy = running(&state.running);
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + Duration::seconds(61),
        &busy,
    );
    assert!(tick.actions.is_empty());
    assert_eq!(tick.state.buffered, Some(T0));
    assert_eq!(
        tick.state.recent[0].outcome,
        Outcome::Skipped,
        "the second is dropped"
    );
    assert_eq!(
        tick.next_due,
        Some(T0 + Duration::seconds(61)),
        "looks every tick"
    );
    let done = [(state.running[0].clone(), Some(RuntimeStatus::Failed))].into();
    let next = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        T0 + Duration::seconds(70),
        &done,
    );
    assert_eq!(starts(&next), vec![id("nightly:20261130T120000Z")]);
    assert_eq!(next.state.buffered, None);
}

#[test]
fn allow_all_starts_every_time() {
    let spec = spec(json!({"overlap": "allow_all"}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0 - Duration::seconds(1));
    state.running = vec![id("nightly:20261130T115900Z")];
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + Duration::seconds(61),
        &running(&state.running),
    );
    assert_eq!(starts(&tick).len(), 2);
    assert_eq!(tick.state.running.len(), 3);
}

#[test]
fn terminate_other_terminates_and_starts_at_once() {
    let spec = spec(json!({"overlap": "terminate_other"}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0 - Duration::seconds(1));
    state.running = vec![id("nightly:20261130T115900Z")];
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0,
        &running(&state.running),
    );
    assert_eq!(terminates(&tick), state.running);
    assert_eq!(starts(&tick), vec![id("nightly:20261130T120000Z")]);
    assert_eq!(tick.state.running, vec![id("nightly:20261130T120000Z")]);
}

#[test]
fn cancel_other_terminates_and_starts_once_the_run_stopped() {
    let spec = spec(json!({"overlap": "cancel_other"}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0 - Duration::seconds(1));
    state.running = vec![id("nightly:20261130T115900Z")];
    let tick = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0,
        &running(&state.running),
    );
    assert_eq!(terminates(&tick), state.running);
    assert!(starts(&tick).is_empty());
    let stopped = [(state.running[0].clone(), Some(RuntimeStatus::Terminated))].into();
    let next = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        T0 + Duration::seconds(1),
        &stopped,
    );
    assert_eq!(starts(&next), vec![id("nightly:20261130T120000Z")]);
}

#[test]
fn after_downtime_runs_inside_the_catch_up_window_start_and_older_ones_are_missed() {
    let spec = spec(json!({"overlap": "allow_all", "catchupWindowSeconds": 150}));
    let timetable = spec.timetable().unwrap();
    let state = ScheduleState::new(T0 - Duration::seconds(1));
    // Down for ten minutes: 12:00 … 12:10 passed.
    let now = T0 + Duration::seconds(600);
    let tick = plan(&name(), &spec, &timetable, &state, now, &Statuses::new());
    assert_eq!(
        starts(&tick),
        vec![
            id("nightly:20261130T120800Z"),
            id("nightly:20261130T120900Z"),
            id("nightly:20261130T121000Z")
        ]
    );
    assert_eq!(tick.state.missed, 8);
}

#[test]
fn a_frequent_schedule_far_behind_counts_what_it_missed_without_walking_it() {
    let spec = spec(json!({"intervalSeconds": 1, "catchupWindowSeconds": 10}));
    let timetable = spec.timetable().unwrap();
    let state = ScheduleState::new(T0);
    let now = T0 + Duration::days(7);
    let tick = plan(&name(), &spec, &timetable, &state, now, &Statuses::new());
    let next = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        now,
        &Statuses::new(),
    );
    assert_eq!(
        starts(&next).len(),
        1,
        "then the first inside the window starts"
    );
    assert_eq!(next.state.cursor, now);
    let skipped = next
        .state
        .recent
        .iter()
        .filter(|r| r.outcome == Outcome::Skipped)
        .count();
    assert_eq!(
        skipped, 10,
        "and the rest of the window's 11 are skipped (overlap skip)"
    );
    assert_eq!(
        next.state.missed,
        7 * 24 * 3_600 - 11,
        "every time before the window"
    );
}

#[test]
fn jitter_delays_a_run_by_the_same_offset_on_every_replica() {
    let spec = spec(json!({"jitterSeconds": 30}));
    let timetable = spec.timetable().unwrap();
    let offset = jitter(&name(), 30, T0);
    assert!(offset < Duration::seconds(30));
    assert_eq!(offset, jitter(&name(), 30, T0));
    let state = ScheduleState::new(T0 - Duration::seconds(1));
    let early = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + offset - Duration::milliseconds(1),
        &Statuses::new(),
    );
    assert!(early.actions.is_empty() || offset == Duration::ZERO);
    assert_eq!(early.next_due, Some(T0 + offset));
    let due = plan(
        &name(),
        &spec,
        &timetable,
        &state,
        T0 + offset,
        &Statuses::new(),
    );
    assert_eq!(starts(&due), vec![id("nightly:20261130T120000Z")]);
}

#[test]
fn a_paused_schedule_starts_nothing_and_does_not_catch_up_on_resume() {
    let mut spec = spec(json!({"paused": true}));
    let timetable = spec.timetable().unwrap();
    let state = ScheduleState::new(T0 - Duration::seconds(1));
    let now = T0 + Duration::seconds(300);
    let tick = plan(&name(), &spec, &timetable, &state, now, &Statuses::new());
    assert!(tick.actions.is_empty());
    assert_eq!(tick.next_due, None);
    spec.paused = false;
    let resumed = plan(
        &name(),
        &spec,
        &timetable,
        &tick.state,
        now + Duration::seconds(1),
        &Statuses::new(),
    );
    assert!(resumed.actions.is_empty());
    assert_eq!(resumed.next_due, Some(T0 + Duration::seconds(360)));
}

#[test]
fn triggered_runs_start_even_while_paused() {
    let spec = spec(json!({"paused": true}));
    let timetable = spec.timetable().unwrap();
    let mut state = ScheduleState::new(T0);
    let at = T0 + Duration::milliseconds(1_234);
    state.requested.push_back(Requested {
        nominal: at,
        overlap: Overlap::AllowAll,
        kind: Outcome::Triggered,
    });
    let tick = plan(&name(), &spec, &timetable, &state, at, &Statuses::new());
    assert_eq!(starts(&tick), vec![id("nightly:20261130T120001.234Z")]);
    assert_eq!(tick.state.recent[0].outcome, Outcome::Triggered);
    assert!(tick.state.requested.is_empty());
}

#[test]
fn cron_reads_its_time_zone_and_daylight_saving_changes() {
    let spec = spec(json!({"cron": "30 2 * * *", "timeZone": "Europe/Paris"}));
    let timetable = spec.timetable().unwrap();
    // 2027-03-28: 02:30 does not exist in Paris (clocks go 02:00 -> 03:00).
    let before = datetime!(2027-03-27 00:00 UTC);
    let times = timetable.upcoming(before, 3);
    assert_eq!(times[0], datetime!(2027-03-27 01:30 UTC), "02:30 CET");
    assert_eq!(times[2], datetime!(2027-03-29 00:30 UTC), "02:30 CEST");
    assert!(times[1] > times[0] && times[1] < times[2]);
    // Six fields: seconds first.
    let fast = Timetable::cron("*/2 * * * * *", None).unwrap();
    assert_eq!(fast.next_after(T0), Some(T0 + Duration::seconds(2)));
}

#[test]
fn bad_specs_name_the_field() {
    let cases = [
        (json!({"cron": "61 * * * *"}), "/cron"),
        (json!({"cron": "0 0 30 2 *"}), "/cron"),
        (
            json!({"cron": "* * * * *", "timeZone": "Mars/Olympus"}),
            "/timeZone",
        ),
        (json!({"intervalSeconds": 0}), "/intervalSeconds"),
        (json!({"timeZone": "UTC"}), "/timeZone"),
        (json!({"jitterSeconds": 60}), "/jitterSeconds"),
        (
            json!({"catchupWindowSeconds": 100_000_000}),
            "/catchupWindowSeconds",
        ),
    ];
    for (extra, field) in cases {
        let err = spec(extra.clone()).timetable().unwrap_err();
        assert_eq!(err.field, field, "{extra}: {err}");
    }
    let neither: ScheduleSpec = serde_json::from_value(json!({"workflow": "w"})).unwrap();
    assert_eq!(neither.timetable().unwrap_err().field, "/cron");
}

#[test]
fn a_backfill_lists_the_range_and_refuses_too_many() {
    let spec = spec(json!({}));
    let timetable = spec.timetable().unwrap();
    let times = backfill_times(&timetable, T0, T0 + Duration::seconds(180), 10).unwrap();
    assert_eq!(
        times,
        vec![T0, T0 + Duration::seconds(60), T0 + Duration::seconds(120)]
    );
    assert_eq!(
        backfill_times(&timetable, T0, T0 + Duration::hours(1), 10),
        Err(10)
    );
}

#[test]
fn tenants_runs_are_scoped() {
    let scoped = ScheduleName::parse("acme~nightly").unwrap();
    assert_eq!(
        run_id(&scoped, T0).unwrap().as_str(),
        "acme~nightly:20261130T120000Z"
    );
}
