//! End-to-end: `legato up` as a process on a random port, driven over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chaos;
mod compose;
mod dead_letters;
mod entities;
mod golden;
mod outage;
mod scenarios;
mod schedules;
mod services;
mod signalr;
#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{Legato, echo_step, events, step_of, temp_dir};

/// The topology `scenarios` runs on here.
pub fn launch(data_dir: &Path) -> Legato {
    Legato::start(data_dir)
}

#[tokio::test]
async fn twenty_kills_during_fifty_instances_over_rabbitmq_lose_and_duplicate_nothing() {
    chaos::twenty_kills_during_fifty_instances(support::services_env).await;
}

#[tokio::test]
async fn entity_increments_over_rabbitmq_survive_orchestrator_kills_exactly() {
    chaos::increments_survive_orchestrator_kills(support::services_env, 100, 100).await;
}

/// A task's question outlives the whole stack: `legato up` killed while
/// the question waits, started again, the answer goes through and the task
/// replays its journal to it.
#[tokio::test]
async fn a_question_asked_before_the_stack_was_killed_is_answered_after_its_restart() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "asking", "version": 1, "steps": [
            {"id": "write", "agent": "echo", "input": {"value": 1, "journal": ["plan"],
                "ask": {"name": "scope", "question": "Which accounts?"}}}
        ], "output": "${{ steps.write.output }}"}))
        .await;
    let id = legato.start_instance("asking", json!({})).await;
    legato.wait_step(&id, "write", "Waiting").await;
    legato.kill();

    let legato = Legato::start(dir.path());
    let waiting = legato.wait_step(&id, "write", "Waiting").await;
    assert_eq!(step_of(&waiting, "write")["question"]["name"], "scope");
    let (status, _) = legato
        .post(
            &format!("/api/v1/instances/{id}/events/scope"),
            json!({"accounts": "billing"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        done["output"],
        json!({"value": 1, "attempt": 2, "journal": {"plan": {"attempt": 1}},
               "answer": {"accounts": "billing"}})
    );
}

#[tokio::test]
async fn a_killed_legato_up_finishes_the_run_after_restart_without_dispatching_twice() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "long", "version": 1, "steps": [
            echo_step("first", &[], json!({"value": 1, "sleep_ms": 1500})),
            echo_step("second", &["first"], json!({"value": 2, "sleep_ms": 100})),
        ], "output": "${{ steps.second.output.value }}"}))
        .await;
    let id = legato.start_instance("long", json!({})).await;
    legato.wait_step(&id, "first", "Running").await;
    legato.kill();
    let legato = Legato::start(dir.path());
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!(2));
    for step in ["first", "second"] {
        assert_eq!(
            step_of(&status, step)["attempts"],
            1,
            "{step} was dispatched as one attempt"
        );
    }
    assert_eq!(
        events(&status, "task_completed").len(),
        2,
        "each result recorded once"
    );
}

/// Killed with `-9` in the middle of a loop's second iteration, `legato
/// up` goes on in that iteration after the restart: every iteration's work
/// recorded once, none started twice.
#[tokio::test]
async fn a_loop_killed_mid_iteration_goes_on_in_it_after_restart() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "rounds", "version": 1, "steps": [{
            "id": "rounds",
            "loop": {
                "max_iterations": 4,
                "until": "${{ steps.check.output.value >= 3 }}",
                "output": "${{ steps.check.output.value }}",
                "steps": [
                    echo_step("work", &[], json!({"value": "${{ iteration }}", "sleep_ms": 800})),
                    echo_step("check", &["work"], json!({"value": "${{ steps.work.output.value }}"})),
                ]
            }
        }], "output": "${{ steps.rounds.output }}"}))
        .await;
    let id = legato.start_instance("rounds", json!({})).await;
    legato
        .wait_for(
            &id,
            "work of iteration 2 running",
            Duration::from_secs(30),
            |s| {
                let work = step_of(s, "work");
                work["iteration"] == 2 && work["status"] == "Running"
            },
        )
        .await;
    legato.kill();
    let legato = Legato::start(dir.path());
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!(3));
    let mut recorded: Vec<(String, u64, u64)> = events(&status, "task_completed")
        .iter()
        .map(|e| {
            let key = &e["event"]["key"];
            (
                key["step"].as_str().unwrap().to_owned(),
                key["iteration"].as_u64().unwrap(),
                e["event"]["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    recorded.sort();
    let expected: Vec<(String, u64, u64)> = ["check", "work"]
        .iter()
        .flat_map(|step| (1..=3).map(move |i| ((*step).to_owned(), i, 1)))
        .collect();
    assert_eq!(
        recorded, expected,
        "each iteration's results once, first attempts"
    );
}

/// Killed with `-9` while a child workflow runs, `legato up` (whose bus
/// forgets) asks for the child again after the restart: it is taken up
/// once, its work is done once, and the parent completes with its output.
#[tokio::test]
async fn a_child_workflow_killed_mid_run_finishes_once_after_restart() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "slow-child", "version": 1, "steps": [
            echo_step("inner", &[], json!({"value": "${{ input.value }}", "sleep_ms": 1500})),
        ], "output": "${{ steps.inner.output.value }}"}))
        .await;
    legato
        .register(json!({"name": "parent", "version": 1, "steps": [
            {"id": "kid", "workflow": "slow-child", "input": {"value": 7}},
            {"id": "quick", "workflow": "slow-child", "input": {"value": 1}, "needs": ["kid"]},
        ], "output": "${{ steps.kid.output + steps.quick.output }}"}))
        .await;
    let id = legato
        .start_instance("parent", json!({"instanceId": "p-1"}))
        .await;
    legato.wait_step("p-1::kid.a1", "inner", "Running").await;
    legato.kill();
    let legato = Legato::start(dir.path());
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(done["output"], json!(8), "{done:#}");
    assert_eq!(step_of(&done, "kid")["attempts"], 1, "{done:#}");
    assert_eq!(events(&done, "task_completed").len(), 2);
    for child in ["p-1::kid.a1", "p-1::quick.a1"] {
        let status = legato.status(child).await;
        assert_eq!(status["runtimeStatus"], "Completed", "{status:#}");
        assert_eq!(step_of(&status, "inner")["attempts"], 1, "{status:#}");
        assert_eq!(events(&status, "task_completed").len(), 1, "{status:#}");
    }
}

/// A state too large for its row is kept in parts (the definition, step
/// groups, runs of slots), each commit writing only those it changed: killed
/// while 700 items run, `legato up` reads it back from its parts and every
/// item completes with its result recorded once.
#[tokio::test]
async fn a_large_for_each_kept_in_parts_survives_a_kill_without_losing_or_repeating_items() {
    const ITEMS: u64 = 700;
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "wide", "version": 1, "steps": [
            echo_step("first", &[], json!({"value": 1})),
            {"id": "each", "needs": ["first"], "for_each": "${{ input.items }}", "agent": "echo",
             "max_parallel": 20, "input": {"value": "${{ item }}", "sleep_ms": 10}},
        ], "output": "${{ steps.each.output }}"}))
        .await;
    let items: Vec<u64> = (0..ITEMS).collect();
    let id = legato
        .start_instance("wide", json!({ "input": { "items": items } }))
        .await;
    legato
        .wait_for(
            &id,
            "a third of the items done",
            Duration::from_secs(60),
            |s| events(s, "task_completed").len() as u64 > ITEMS / 3,
        )
        .await;
    legato.kill();
    let legato = Legato::start(dir.path());
    let done = legato
        .wait_for(&id, "Completed", Duration::from_secs(120), |s| {
            s["runtimeStatus"] == "Completed"
        })
        .await;
    let values: Vec<u64> = done["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, items);
    let mut recorded: Vec<u64> = events(&done, "task_completed")
        .iter()
        .filter_map(|e| e["event"]["key"]["item"].as_u64())
        .collect();
    recorded.sort_unstable();
    assert_eq!(recorded, items, "each item's result recorded once");
}

#[tokio::test]
async fn a_redrive_interrupted_by_a_crash_finishes_after_restart_rerunning_only_what_failed() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    // Items 1 and 3 fail in the first execution; in the redrive they take
    // long enough for the crash to land while they run.
    legato
        .register(json!({"name": "crashy", "version": 1, "steps": [
            {"id": "each", "for_each": "${{ [0, 1, 2, 3] }}", "agent": "echo",
             "input": {"value": "${{ item }}",
                       "fail_executions": "${{ item % 2 == 1 ? 1 : 0 }}",
                       "sleep_ms": "${{ item % 2 == 1 ? 1500 : 0 }}"}},
        ], "output": "${{ steps.each.output }}"}))
        .await;
    let id = legato.start_instance("crashy", json!({})).await;
    legato.wait_status(&id, "Failed").await;
    let (code, body) = legato
        .post(&format!("/api/v1/instances/{id}/redrive"), json!({}))
        .await;
    assert_eq!(code, reqwest::StatusCode::ACCEPTED, "{body}");
    legato
        .wait_for(&id, "redriven", Duration::from_secs(30), |s| {
            s["runtimeStatus"] == "Running" && !events(s, "redrive_requested").is_empty()
        })
        .await;
    legato.kill();
    let legato = Legato::start(dir.path());
    let done = legato
        .wait_for(&id, "Completed", Duration::from_secs(60), |s| {
            s["runtimeStatus"] == "Completed"
        })
        .await;
    let values: Vec<&serde_json::Value> = done["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["value"])
        .collect();
    assert_eq!(values, [&json!(0), &json!(1), &json!(2), &json!(3)]);
    let completed: Vec<(u64, u64)> = events(&done, "task_completed")
        .iter()
        .map(|e| {
            let key = &e["event"]["key"];
            (
                key["item"].as_u64().unwrap(),
                key["execution"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        completed.len(),
        4,
        "each item's result recorded once: {completed:?}"
    );
    for (item, execution) in completed {
        assert_eq!(
            execution,
            item % 2,
            "item {item} ran in execution {execution}"
        );
    }
    assert_eq!(events(&done, "redrive_requested").len(), 1);
}

#[tokio::test]
async fn after_a_restart_the_stream_and_hub_resume_from_the_history() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "fan", "version": 1, "steps": [
            echo_step("a", &[], json!({"value": 1})),
            echo_step("b", &["a"], json!({"value": 2})),
            echo_step("c", &["a"], json!({"value": 3})),
            echo_step("d", &["b", "c"], json!({"value": 4})),
        ]}))
        .await;
    let id = legato.start_instance("fan", json!({})).await;
    let seen: Vec<serde_json::Value> = scenarios::follow(&legato, &id, None, |_| async {})
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let n = seen.len();
    assert!(n >= 10, "{seen:?}");
    legato.terminate(Duration::from_secs(30));

    // A new notifier holds nothing: what a watcher asks for comes from the
    // history, the same events at the same positions.
    let legato = Legato::start(dir.path());
    let fresh = scenarios::follow(&legato, &id, None, |_| async {}).await;
    assert_eq!(fresh.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), seen);
    let after = 3;
    let resumed = scenarios::follow(&legato, &id, Some(after), |_| async {}).await;
    assert_eq!(
        resumed.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        &seen[after as usize..]
    );
    let mut socket = support::hub::connect(&legato, "").await;
    support::hub::invoke(&mut socket, "1", "Subscribe", json!([id, after])).await;
    for expected in &seen[after as usize..] {
        let record = support::hub::next(&mut socket).await;
        let mut event = record["arguments"][0].clone();
        event.as_object_mut().unwrap().remove("instanceId");
        assert_eq!(&event, expected);
    }
    assert_eq!(
        scenarios::history_progress(&legato, &id, after).await,
        &seen[after as usize..]
    );
}

#[tokio::test]
async fn a_thousand_concurrent_starts_all_complete() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato
        .register(json!({"name": "many", "version": 1, "steps": [echo_step("only", &[], json!({"value": "${{ input.n }}"}))]}))
        .await;
    let starts = (0..1000).map(|n| {
        legato.start_instance(
            "many",
            json!({"input": {"n": n}, "instanceId": format!("many-{n}")}),
        )
    });
    let ids = futures::future::join_all(starts).await;
    assert_eq!(ids.len(), 1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut completed = 0;
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let path = match &token {
                Some(t) => format!(
                    "/api/v1/instances?workflow=many&status=Completed&top=500&continuationToken={t}"
                ),
                None => "/api/v1/instances?workflow=many&status=Completed&top=500".to_owned(),
            };
            let (_, page) = legato.get_json(&path).await;
            completed += page["items"].as_array().unwrap().len();
            token = page["continuationToken"].as_str().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        if completed == 1000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {completed} of 1000 completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = legato.status("many-999").await;
    assert_eq!(status["steps"][0]["output"]["value"], 999);
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly_and_state_survives() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let id = legato
        .start_instance("fan-out-fan-in", json!({"input": {"value": 1}}))
        .await;
    legato.wait_status(&id, "Completed").await;
    let status = legato.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let legato = Legato::start(dir.path());
    assert_eq!(legato.status(&id).await["runtimeStatus"], "Completed");
}

/// `legato bench --sequence N` / `--fan-out N` run one large instance and
/// print its per-event cost early and late and the peak memory.
#[test]
fn bench_scale_modes_report_growth_and_memory() {
    // Beyond 64 steps and 256 items: both kept in parts.
    for mode in [
        ["--sequence", "100"],
        ["--fan-out", "300"],
        ["--iterations", "50"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_legato"))
            .arg("bench")
            .args(mode)
            .env("LEGATO__TELEMETRY__LOG", "warn")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{mode:?}: {out}");
        assert!(out.contains(": Completed in "), "{out}");
        assert!(out.contains("mean gap between events"), "{out}");
        assert!(out.contains("peak resident"), "{out}");
    }
}

/// 10,000 increments of one entity from 100 instances at once, `legato up`
/// killed with `-9` twice on the way: the entity ends at exactly 10,000,
/// with as many operations applied (none twice, none lost).
#[tokio::test]
async fn ten_thousand_increments_from_a_hundred_instances_survive_two_kills_exactly() {
    let dir = temp_dir();
    let mut legato = Legato::start(dir.path());
    legato.register(entities::tally()).await;
    let ids = entities::start_tallies(&legato, "kills", 100, 100).await;
    for at_least in [2_000, 6_000] {
        legato
            .wait_for_json(
                "/api/v1/entities/counter/kills",
                Duration::from_secs(300),
                |e| e["operations"].as_u64().unwrap_or(0) >= at_least,
            )
            .await;
        legato.kill();
        legato = Legato::start(dir.path());
    }
    for id in &ids {
        legato
            .wait_for(id, "completed", Duration::from_secs(600), |s| {
                s["runtimeStatus"] == "Completed"
            })
            .await;
    }
    let (_, entity) = legato.get_json("/api/v1/entities/counter/kills").await;
    assert_eq!(entity["state"], json!(10_000), "{entity:#}");
    assert_eq!(
        entity["operations"],
        json!(10_000),
        "each increment applied once"
    );
}

/// `legato up` killed with `-9` while one run holds a lock and another
/// waits for it: after the restart the holder still holds it, and once it
/// finishes the waiter gets it (nothing lost, nobody in twice).
#[tokio::test]
async fn a_lock_and_its_waiter_survive_a_kill_of_legato_up() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato.register(entities::holding()).await;
    let input = json!({"input": {"repo": "acme.api"}});
    let first = legato.start_instance("holding", input.clone()).await;
    legato.wait_step(&first, "wait", "Waiting").await;
    let second = legato.start_instance("holding", input).await;
    legato.wait_step(&second, "edit", "Running").await;
    legato.kill();

    let legato = Legato::start(dir.path());
    legato.wait_step(&first, "wait", "Waiting").await;
    let (_, lock) = legato.get_json("/api/v1/entities/repo/acme.api").await;
    assert_eq!(
        lock["recent"].as_array().unwrap().len(),
        2,
        "two acquisitions: {lock:#}"
    );
    let second_status = legato.status(&second).await;
    assert_eq!(
        step_of(&second_status, "wait")["status"],
        "Pending",
        "still in line"
    );
    let done = |id: &str| format!("/api/v1/instances/{id}/events/done");
    legato.post(&done(&first), json!({})).await;
    legato.wait_status(&first, "Completed").await;
    legato.wait_step(&second, "wait", "Waiting").await;
    legato.post(&done(&second), json!({})).await;
    legato.wait_status(&second, "Completed").await;
}

/// `legato up` killed with `-9` while an entity is busy with a custom
/// operation (its run waits for an event) and writes wait behind it:
/// after the restart the run goes on, and once it ends its outcome and
/// every queued write are applied, each once.
#[tokio::test]
async fn a_custom_operation_and_the_writes_behind_it_survive_a_kill_of_legato_up() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    // The catalogue's types are registered with its workflows.
    let (status, customer) = legato.get_json("/api/v1/entity-types/customer").await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(customer["shared"], true);
    assert!(
        customer["definition"]["state_schema"].is_object(),
        "{customer}"
    );
    register_held_visitor(&legato).await;
    let (status, _) = legato
        .post(
            "/api/v1/entities/held-visitor/bo/operations",
            json!({"op": "set", "value": {"visits": 0, "notes": 0}}),
        )
        .await;
    assert_eq!(status, 202);
    let input = json!({"input": {"visitor": "bo"}});
    let visiting = legato.start_instance("held-visits", input.clone()).await;
    let noting = legato.start_instance("notes", input).await;
    let busy = legato
        .wait_for_json(
            "/api/v1/entities/held-visitor/bo",
            Duration::from_secs(30),
            |e| e["queued"] == 1,
        )
        .await;
    let run = busy["busy"]["instance"].as_str().unwrap().to_owned();
    legato.wait_step(&run, "go", "Waiting").await;
    legato.kill();

    let legato = Legato::start(dir.path());
    legato.wait_step(&run, "go", "Waiting").await;
    let (status, _) = legato
        .post(&format!("/api/v1/instances/{run}/events/go"), json!({}))
        .await;
    assert_eq!(status, 202);
    let visited = legato.wait_status(&visiting, "Completed").await;
    assert_eq!(visited["output"], json!({"visit": 1, "note": 2}));
    let noted = legato.wait_status(&noting, "Completed").await;
    assert_eq!(noted["output"], json!(1), "queued behind the visit");
    let (_, entity) = legato.get_json("/api/v1/entities/held-visitor/bo").await;
    assert_eq!(
        entity["state"],
        json!({"visits": 1, "notes": 2}),
        "{entity:#}"
    );
    assert_eq!(
        entity["operations"], 4,
        "set, visit, two increments: {entity:#}"
    );
    assert!(entity.get("busy").is_none(), "{entity:#}");
}

/// Entity type `held-visitor`: as `visitor`, but its `visit` waits for
/// event `go` before counting; workflow `held-visits` visits then notes,
/// `notes` only notes.
async fn register_held_visitor(legato: &Legato) {
    legato
        .register(entities::visit_op("held-visit-op", true))
        .await;
    let (status, body) = legato
        .put(
            "/api/v1/entity-types/held-visitor",
            json!({"operations": {"visit": {"workflow": "held-visit-op"}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    legato
        .register(json!({"name": "held-visits", "version": 1, "steps": [
            {"id": "visit", "entity": {"type": "held-visitor", "id": "${{ input.visitor }}",
                "op": "visit", "input": {"by": 1}}},
            {"id": "note", "needs": ["visit"], "entity": {"type": "held-visitor",
                "id": "${{ input.visitor }}", "op": "increment", "path": "/notes"}},
        ], "output": {"visit": "${{ steps.visit.output }}", "note": "${{ steps.note.output }}"}}))
        .await;
    legato
        .register(json!({"name": "notes", "version": 1, "steps": [
            {"id": "note", "entity": {"type": "held-visitor", "id": "${{ input.visitor }}",
                "op": "increment", "path": "/notes"}},
        ], "output": "${{ steps.note.output }}"}))
        .await;
}
