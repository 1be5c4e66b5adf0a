//! Schedules end to end: runs fire on time (a one-second cron and a poll of
//! 100 ms stand in for a fast clock), pause, resume, trigger and backfill;
//! each overlap policy; catch-up after the orchestrators were down; and,
//! across two orchestrator replicas killed with -9 and restarted, exactly
//! one instance per nominal time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::chaos::free_port;
use crate::support::{Legato, Service, echo_step, events, services_env, temp_dir};

const FAST_POLL: (&str, &str) = ("LEGATO__ORCHESTRATOR__SCHEDULE_POLL_MS", "100");

fn at(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap()
}

async fn nap(workflow: &Legato, name: &str, sleep_ms: u64) {
    workflow
        .register(json!({"name": name, "version": 1, "steps": [
            echo_step("nap", &[], json!({"value": 1, "sleep_ms": sleep_ms})),
        ], "output": "${{ steps.nap.output.value }}"}))
        .await;
}

async fn schedule(legato: &Legato, name: &str) -> Value {
    let (status, body) = legato.get_json(&format!("/api/v1/schedules/{name}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits until the schedule has started `n` runs; their instance ids,
/// oldest first.
async fn started_runs(legato: &Legato, name: &str, n: usize, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let view = schedule(legato, name).await;
        let mut ids: Vec<String> = view["recentRuns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["instanceId"].as_str().map(str::to_owned))
            .collect();
        if ids.len() >= n {
            ids.reverse();
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: fewer than {n} runs: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outcomes(view: &Value) -> Vec<String> {
    view["recentRuns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect()
}

async fn pause(legato: &Legato, name: &str) -> Value {
    let (status, body) = legato
        .post(
            &format!("/api/v1/schedules/{name}/pause"),
            json!({"note": "test over"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_schedule_fires_on_time_pauses_resumes_triggers_and_backfills() {
    let dir = temp_dir();
    let legato = Legato::start_with_env(dir.path(), &[FAST_POLL]);
    nap(&legato, "tick", 10).await;

    // Bad specs are refused with the field named, and nothing is created.
    for (body, field) in [
        (json!({"workflow": "tick", "cron": "61 * * * *"}), "/cron"),
        (
            json!({"workflow": "tick", "cron": "* * * * *", "timeZone": "Mars/Olympus"}),
            "/timeZone",
        ),
        (json!({"workflow": "tick"}), "/cron"),
        (
            json!({"workflow": "tick", "intervalSeconds": 5, "overlap": "sometimes"}),
            "/overlap",
        ),
    ] {
        let (status, problem) = legato.put("/api/v1/schedules/bad", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert!(problem.to_string().contains(field), "{body}: {problem}");
    }
    let (status, _) = legato
        .put(
            "/api/v1/schedules/bad",
            json!({"workflow": "nope", "intervalSeconds": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        legato.get_json("/api/v1/schedules/bad").await.0,
        StatusCode::NOT_FOUND
    );

    let (status, created) = legato
        .put(
            "/api/v1/schedules/every-second",
            json!({"workflow": "tick", "cron": "* * * * * *", "input": {"from": "schedule"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["nextRuns"].as_array().unwrap().len(), 5);
    let ids = started_runs(&legato, "every-second", 3, Duration::from_secs(15)).await;
    for id in &ids {
        assert!(id.starts_with("every-second:"), "{id}");
        let status = legato.wait_status(id, "Completed").await;
        assert_eq!(status["input"], json!({"from": "schedule"}));
        // On time: created within a second of its nominal time.
        let stamp = id.trim_start_matches("every-second:");
        let nominal = time::PrimitiveDateTime::parse(
            stamp,
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .unwrap()
        .assume_utc();
        let late = at(status["createdAt"].as_str().unwrap()) - nominal;
        assert!(
            late >= time::Duration::ZERO && late < time::Duration::seconds(1),
            "{id} started {late} after its time"
        );
    }

    // Paused: nothing starts; the note is kept.
    let paused = pause(&legato, "every-second").await;
    assert_eq!(paused["spec"]["paused"], true);
    assert_eq!(paused["spec"]["note"], "test over");
    let before = schedule(&legato, "every-second").await["recentRuns"].clone();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        schedule(&legato, "every-second").await["recentRuns"],
        before,
        "a paused schedule starts nothing"
    );

    // Trigger works while paused.
    let (status, triggered) = legato
        .post("/api/v1/schedules/every-second/trigger", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{triggered}");
    let triggered = triggered["instanceIds"][0].as_str().unwrap().to_owned();
    legato.wait_status(&triggered, "Completed").await;

    // Resumed: from now on, without catching up the paused seconds.
    let resumed_at = OffsetDateTime::now_utc();
    let (status, resumed) = legato
        .post("/api/v1/schedules/every-second/resume", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let view = pause(&legato, "every-second").await;
    let after_resume: Vec<&Value> = view["recentRuns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| at(r["at"].as_str().unwrap()) >= resumed_at)
        .collect();
    assert!(!after_resume.is_empty(), "{view:#}");
    for run in after_resume {
        assert!(
            at(run["nominalTime"].as_str().unwrap()) >= resumed_at - time::Duration::seconds(1),
            "a paused second was caught up: {run}"
        );
    }

    // Backfill a past range: one run per nominal time, named as the
    // timetable would have named it; backfilling it again starts nothing
    // new.
    let to = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let to = to.replace_millisecond(0).unwrap();
    let from = to - time::Duration::seconds(3);
    let range = json!({"from": from.format(&Rfc3339).unwrap(), "to": to.format(&Rfc3339).unwrap()});
    let (status, backfilled) = legato
        .post("/api/v1/schedules/every-second/backfill", range.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{backfilled}");
    let backfilled: Vec<String> = backfilled["instanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(backfilled.len(), 3);
    for id in &backfilled {
        legato.wait_status(id, "Completed").await;
    }
    let (status, again) = legato
        .post("/api/v1/schedules/every-second/backfill", range)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["instanceIds"].as_array().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for id in &backfilled {
        let status = legato.wait_status(id, "Completed").await;
        assert_eq!(events(&status, "started").len(), 1, "{id} ran once");
    }
    let (status, problem) = legato
        .post(
            "/api/v1/schedules/every-second/backfill",
            json!({"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "too many times: {problem}");

    // A new timetable counts from when it was set, not from the old one's
    // last time.
    let (status, _) = legato
        .put(
            "/api/v1/schedules/retimed",
            json!({"workflow": "tick", "intervalSeconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let retimed_at = OffsetDateTime::now_utc();
    let (status, _) = legato
        .put(
            "/api/v1/schedules/retimed",
            json!({"workflow": "tick", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    started_runs(&legato, "retimed", 1, Duration::from_secs(15)).await;
    let view = pause(&legato, "retimed").await;
    for run in view["recentRuns"].as_array().unwrap() {
        assert!(
            at(run["nominalTime"].as_str().unwrap()) >= retimed_at - time::Duration::seconds(1),
            "a time from before the new timetable ran: {run}"
        );
    }
    assert_eq!(
        legato.delete("/api/v1/schedules/retimed").await,
        StatusCode::NO_CONTENT
    );

    let (status, list) = legato.get_json("/api/v1/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["name"], "every-second");
    assert_eq!(
        legato.delete("/api/v1/schedules/every-second").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        legato.get_json("/api/v1/schedules/every-second").await.0,
        StatusCode::NOT_FOUND
    );
    // Its runs stay.
    legato.wait_status(&ids[0], "Completed").await;
}

/// Runs of one schedule whose instances were live at the same moment.
fn overlapping(runs: &[Value]) -> bool {
    let spans: Vec<(OffsetDateTime, OffsetDateTime)> = runs
        .iter()
        .map(|s| {
            (
                at(s["createdAt"].as_str().unwrap()),
                at(s["updatedAt"].as_str().unwrap()),
            )
        })
        .collect();
    spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans.iter().skip(i + 1).any(|b| a.0 < b.1 && b.0 < a.1))
}

#[tokio::test]
async fn overlap_policies_decide_what_a_due_run_does_while_one_is_going() {
    let dir = temp_dir();
    let legato = Legato::start_with_env(dir.path(), &[FAST_POLL]);
    // Each run takes 2.5 s; the schedules fire every second.
    nap(&legato, "slow", 2_500).await;
    let policies = [
        "skip",
        "buffer_one",
        "allow_all",
        "cancel_other",
        "terminate_other",
    ];
    for policy in policies {
        let name = policy.replace('_', "-");
        let (status, body) = legato
            .put(
                &format!("/api/v1/schedules/{name}"),
                json!({"workflow": "slow", "intervalSeconds": 1, "overlap": policy}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let mut views = std::collections::BTreeMap::new();
    for policy in policies {
        let name = policy.replace('_', "-");
        views.insert(policy, pause(&legato, &name).await);
    }
    let mut runs = std::collections::BTreeMap::new();
    for (policy, view) in &views {
        let mut finished = Vec::new();
        for run in view["recentRuns"].as_array().unwrap() {
            if let Some(id) = run["instanceId"].as_str() {
                finished.push(
                    legato
                        .wait_for(id, "finished", Duration::from_secs(30), |s| {
                            ["Completed", "Terminated"]
                                .contains(&s["runtimeStatus"].as_str().unwrap_or(""))
                        })
                        .await,
                );
            }
        }
        runs.insert(*policy, finished);
    }
    let statuses = |policy: &str| -> Vec<String> {
        runs[policy]
            .iter()
            .map(|s| s["runtimeStatus"].as_str().unwrap().to_owned())
            .collect()
    };

    // skip: never two at once; the seconds in between were skipped.
    assert!(!overlapping(&runs["skip"]), "skip overlapped");
    assert!(outcomes(&views["skip"]).contains(&"skipped".to_owned()));
    assert!(statuses("skip").iter().all(|s| s == "Completed"));

    // buffer_one: never two at once; a time waited and then ran.
    assert!(!overlapping(&runs["buffer_one"]), "buffer_one overlapped");
    assert!(outcomes(&views["buffer_one"]).contains(&"buffered".to_owned()));
    assert!(runs["buffer_one"].len() >= 2, "the buffered time ran");

    // allow_all: every second started, several at once.
    assert!(runs["allow_all"].len() >= 5, "{:#}", views["allow_all"]);
    assert!(overlapping(&runs["allow_all"]));
    assert!(statuses("allow_all").iter().all(|s| s == "Completed"));

    // terminate_other: each new run terminated the one before at once.
    let terminated = statuses("terminate_other");
    assert!(terminated.len() >= 4, "{terminated:?}");
    assert!(
        terminated.iter().filter(|s| *s == "Terminated").count() >= 3,
        "{terminated:?}"
    );

    // cancel_other: the one before was terminated, and the next started
    // only once it had stopped.
    let cancelled = statuses("cancel_other");
    assert!(
        cancelled.iter().filter(|s| *s == "Terminated").count() >= 2,
        "{cancelled:?}"
    );
    assert!(
        !overlapping(&runs["cancel_other"]),
        "cancel_other overlapped"
    );
}

#[tokio::test]
async fn exactly_one_instance_per_nominal_time_across_two_orchestrators_kill_9s_and_downtime() {
    let dir = temp_dir();
    let mut env = services_env(dir.path());
    env.push((FAST_POLL.0.to_owned(), FAST_POLL.1.to_owned()));
    // One replica ticks at a time; a killed holder's lease must run out
    // well within the catch-up window for no second to be missed.
    env.push((
        "LEGATO__ORCHESTRATOR__SCHEDULE_LEASE_MS".to_owned(),
        "1200".to_owned(),
    ));
    let gateway_port = free_port();
    let mut gateway_env = env.clone();
    gateway_env.push(("LEGATO__HTTP__PORT".into(), gateway_port.to_string()));
    let _gateway = Service::start("gateway", dir.path(), &gateway_env);
    let _echo = Service::start("agent-echo", dir.path(), &env);
    let mut a = Service::start("orchestrator", dir.path(), &env);
    let mut b = Service::start("orchestrator", dir.path(), &env);
    let legato = Legato::attach(format!("http://127.0.0.1:{gateway_port}"), dir.path());
    nap(&legato, "beat", 50).await;
    let (status, body) = legato
        .put(
            "/api/v1/schedules/beat",
            json!({"workflow": "beat", "intervalSeconds": 1, "overlap": "allow_all",
                   "catchupWindowSeconds": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let started_at = OffsetDateTime::now_utc();

    // Kill -9 one replica or the other every 700 ms and start it again.
    let mut rng = 0x9e37_79b9_u64;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
        if rng >> 63 == 0 {
            a.kill();
            a = Service::start("orchestrator", dir.path(), &env);
        } else {
            b.kill();
            b = Service::start("orchestrator", dir.path(), &env);
        }
    }
    // Both down for six seconds: the last three seconds before they come
    // back are caught up, the earlier ones missed.
    a.kill();
    b.kill();
    let down_at = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let back_at = OffsetDateTime::now_utc();
    let _a = Service::start("orchestrator", dir.path(), &env);
    let _b = Service::start("orchestrator", dir.path(), &env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = pause(&legato, "beat").await;
    assert!(view["missed"].as_u64().unwrap() >= 2, "{view:#}");

    // Every instance of the schedule, from the store's listing.
    let (status, page) = legato
        .get_json("/api/v1/instances?workflow=beat&top=1000")
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let nominal = |id: &str| {
        time::PrimitiveDateTime::parse(
            id.trim_start_matches("beat:"),
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .unwrap()
        .assume_utc()
    };
    let times: BTreeSet<OffsetDateTime> = ids.iter().map(|id| nominal(id)).collect();
    println!(
        "{} runs, {} missed while both orchestrators were down",
        ids.len(),
        view["missed"]
    );
    assert_eq!(times.len(), ids.len());
    // Every second from the first run to the outage, and the catch-up
    // window before the restart, has its run: none lost to a kill.
    let first = *times.iter().next().unwrap();
    assert!(first - started_at < time::Duration::seconds(2));
    let mut second = first;
    while second + time::Duration::seconds(1) < down_at {
        assert!(times.contains(&second), "no run for {second}: {times:?}");
        second += time::Duration::seconds(1);
    }
    let outage: Vec<&OffsetDateTime> = times
        .iter()
        .filter(|t| **t > down_at && **t < back_at - time::Duration::seconds(4))
        .collect();
    assert!(outage.is_empty(), "missed times ran: {outage:?}");
    let caught_up = times
        .iter()
        .filter(|t| **t > back_at - time::Duration::seconds(3) && **t <= back_at)
        .count();
    assert!(caught_up >= 2, "the catch-up window ran: {times:?}");
    // And each run was started once, its task completed once.
    for id in &ids {
        let status = legato
            .wait_for(id, "Completed", Duration::from_secs(60), |s| {
                s["runtimeStatus"] == "Completed"
            })
            .await;
        assert_eq!(events(&status, "started").len(), 1, "{id}: started once");
        assert_eq!(
            events(&status, "task_completed").len(),
            1,
            "{id}: one result"
        );
    }
}
