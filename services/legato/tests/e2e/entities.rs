//! Durable entities end to end, run by each topology that includes this
//! file (see `scenarios.rs`): operations from many instances at once
//! applied once each, in order per sender, answers read by expressions.

use std::time::Duration;

use serde_json::{Value, json};

use crate::launch;
use crate::support::{Legato, step_of, temp_dir};

/// `times` increments of `counter/<input.counter>`, one call after the
/// other; the output is the last answer.
pub fn tally() -> Value {
    json!({"name": "tally", "version": 1, "steps": [{
        "id": "count",
        "loop": {
            "max_iterations": 1000,
            "until": "${{ iteration >= input.times }}",
            "output": "${{ steps.add.output }}",
            "steps": [{"id": "add", "entity": {
                "type": "counter", "id": "${{ input.counter }}", "op": "increment"
            }}]
        }
    }], "output": "${{ steps.count.output }}"})
}

/// Reads `counter/<input.counter>`.
pub fn read_counter() -> Value {
    json!({"name": "read-counter", "version": 1, "steps": [
        {"id": "read", "entity": {"type": "counter", "id": "${{ input.counter }}", "op": "read"}}
    ], "output": "${{ steps.read.output }}"})
}

/// Starts `instances` tallies of `times` each on one counter.
pub async fn start_tallies(
    legato: &Legato,
    counter: &str,
    instances: usize,
    times: u32,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..instances {
        ids.push(
            legato
                .start_instance(
                    "tally",
                    json!({"input": {"counter": counter, "times": times}}),
                )
                .await,
        );
    }
    ids
}

pub async fn read_counter_value(legato: &Legato, counter: &str) -> Value {
    let id = legato
        .start_instance("read-counter", json!({"input": {"counter": counter}}))
        .await;
    legato.wait_status(&id, "Completed").await["output"].clone()
}

#[tokio::test]
async fn increments_from_concurrent_instances_sum_exactly() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(tally()).await;
    legato.register(read_counter()).await;
    let ids = start_tallies(&legato, "shared", 10, 10).await;
    let mut answers = Vec::new();
    for id in &ids {
        let done = legato.wait_status(id, "Completed").await;
        answers.push(done["output"].as_u64().unwrap());
    }
    assert_eq!(read_counter_value(&legato, "shared").await, json!(100));
    // Every answer is a distinct count: no two increments saw one state.
    answers.sort_unstable();
    answers.dedup();
    assert_eq!(answers.len(), ids.len(), "{answers:?}");
    assert_eq!(
        read_counter_value(&legato, "never-touched").await,
        Value::Null
    );
}

#[tokio::test]
async fn an_entity_remembers_across_runs_and_answers_calls_signals_and_failures() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "remember", "version": 1, "steps": [
            {"id": "note", "entity": {"type": "customer-memory", "id": "${{ input.customer }}",
                "op": "append", "path": "/requests", "value": "${{ input.request }}", "cap": 2,
                "signal": true}},
            {"id": "recall", "needs": ["note"], "entity": {"type": "customer-memory",
                "id": "${{ input.customer }}", "op": "read", "path": "/requests"}},
            {"id": "budget", "needs": ["recall"], "entity": {"type": "customer-memory",
                "id": "${{ input.customer }}", "op": "increment", "path": "/spent",
                "by": "${{ input.cost }}", "max": 10}},
        ], "output": {"seen": "${{ steps.recall.output }}", "spent": "${{ steps.budget.output }}"}}))
        .await;
    let run = |request: &str, cost: u64| json!({"input": {"customer": "jane@example.com", "request": request, "cost": cost}});
    let first = legato
        .start_instance("remember", run("csv export", 4))
        .await;
    let first = legato.wait_status(&first, "Completed").await;
    assert_eq!(first["output"], json!({"seen": ["csv export"], "spent": 4}));
    assert_eq!(
        step_of(&first, "note")["output"],
        Value::Null,
        "a signal has no answer"
    );

    let second = legato.start_instance("remember", run("totals", 5)).await;
    let second = legato.wait_status(&second, "Completed").await;
    assert_eq!(
        second["output"],
        json!({"seen": ["csv export", "totals"], "spent": 9})
    );

    // The cap keeps the last two; the bound fails the step for good.
    let third = legato.start_instance("remember", run("refund", 5)).await;
    let third = legato.wait_status(&third, "Failed").await;
    assert_eq!(
        step_of(&third, "recall")["output"],
        json!(["totals", "refund"])
    );
    let error = step_of(&third, "budget")["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("would pass the maximum 10"), "{error}");
    assert_eq!(
        step_of(&third, "budget")["attempts"],
        1,
        "not retried: {third:#}"
    );
}

#[tokio::test]
async fn the_api_lists_reads_operates_once_per_key_and_deletes_entities() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(tally()).await;
    for id in start_tallies(&legato, "api-tally", 3, 10).await {
        legato.wait_status(&id, "Completed").await;
    }
    let (status, view) = legato
        .get_json("/api/v1/entities/counter/api-tally?operations=5")
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{view:#}");
    assert_eq!(
        (view["state"].clone(), view["operations"].clone()),
        (json!(30), json!(30))
    );
    let recent = view["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 5);
    assert_eq!(recent[0]["seq"], 30, "newest first");
    assert_eq!(recent[0]["answer"], 30);
    assert_eq!(recent[0]["operation"], json!({"op": "increment"}));
    assert!(
        recent[0]["sender"].as_str().is_some(),
        "the tally that sent it: {recent:#?}"
    );

    // One key, sent three times: applied once.
    let path = "/api/v1/entities/counter/api-tally/operations";
    for _ in 0..3 {
        let (status, body) = legato
            .post_once(path, "bump-1", json!({"op": "increment", "by": 100}))
            .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["operationId"], "api/bump-1");
    }
    let (status, _) = legato
        .post(path, json!({"op": "increment", "by": 1000}))
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let view = legato
        .wait_for_json(
            "/api/v1/entities/counter/api-tally",
            Duration::from_secs(30),
            |v| v["operations"] == 32,
        )
        .await;
    assert_eq!(view["state"], json!(1130));
    assert_eq!(view["recent"][1]["id"], "api/bump-1");
    assert_eq!(view["recent"][1]["sender"], "api");

    let (status, list) = legato.get_json("/api/v1/entities?type=counter").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"api-tally"), "{list:#}");

    // Bad input is named; nothing is sent.
    for (body, field) in [
        (json!({"op": "teleport"}), "/op"),
        (json!({"op": "increment", "by": "x"}), "/by"),
        (json!({"op": "read"}), "/op"),
        (json!([1]), "body"),
    ] {
        let (status, problem) = legato.post(path, body.clone()).await;
        assert_eq!(
            status,
            reqwest::StatusCode::BAD_REQUEST,
            "{body}: {problem}"
        );
        assert!(problem.to_string().contains(field), "{body}: {problem:#}");
    }
    let (status, problem) = legato
        .post(
            "/api/v1/entities/Counter/x/operations",
            json!({"op": "remove"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{problem}");
    let (status, problem) = legato.get_json("/api/v1/entities/counter/a%2Fb").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{problem}");

    assert_eq!(
        legato.delete("/api/v1/entities/counter/api-tally").await,
        reqwest::StatusCode::NO_CONTENT
    );
    let (status, _) = legato.get_json("/api/v1/entities/counter/api-tally").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(
        legato.delete("/api/v1/entities/counter/api-tally").await,
        reqwest::StatusCode::NOT_FOUND
    );
}

/// A critical section over `repo/<input.repo>` (`capacity` holders at
/// once): it counts itself in and out of `/inside` of the same entity's
/// neighbour `occupancy/<input.repo>`, so its output is how many were in
/// when it entered.
pub fn guarded(capacity: u32) -> Value {
    json!({"name": format!("guarded-{capacity}"), "version": 1, "steps": [{
        "id": "edit",
        "lock": {
            "entities": [{"type": "repo", "id": "${{ input.repo }}"}],
            "capacity": capacity,
            "steps": [
                {"id": "enter", "entity": {"type": "occupancy", "id": "${{ input.repo }}", "op": "increment"}},
                {"id": "work", "needs": ["enter"], "agent": "echo",
                 "input": {"value": "${{ steps.enter.output }}", "sleep_ms": 150}},
                {"id": "leave", "needs": ["work"], "entity": {"type": "occupancy", "id": "${{ input.repo }}",
                 "op": "increment", "by": -1}}
            ],
            "output": "${{ steps.enter.output }}"
        }
    }], "output": "${{ steps.edit.output }}"})
}

#[tokio::test]
async fn a_lock_lets_one_instance_in_at_a_time_and_a_semaphore_up_to_its_capacity() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    for capacity in [1, 3] {
        legato.register(guarded(capacity)).await;
        let mut ids = Vec::new();
        for _ in 0..6 {
            let input = json!({"input": {"repo": format!("acme.billing-{capacity}")}});
            ids.push(
                legato
                    .start_instance(&format!("guarded-{capacity}"), input)
                    .await,
            );
        }
        let mut most = 0;
        for id in &ids {
            let done = legato.wait_status(id, "Completed").await;
            let inside = done["output"].as_u64().unwrap();
            assert!(
                inside >= 1 && inside <= u64::from(capacity),
                "{inside} inside at once: {done:#}"
            );
            most = most.max(inside);
        }
        if capacity == 1 {
            // Nobody's time inside overlaps anybody else's.
            let mut spans = Vec::new();
            for id in &ids {
                let status = legato.status(id).await;
                let started = step_of(&status, "enter")["startedAt"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let ended = step_of(&status, "leave")["completedAt"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                spans.push((started, ended));
            }
            spans.sort();
            for pair in spans.windows(2) {
                assert!(
                    pair[0].1 <= pair[1].0,
                    "overlapping critical sections: {spans:#?}"
                );
            }
        } else {
            assert!(
                most > 1,
                "six at once on a semaphore of three: someone shared it"
            );
        }
        let (_, lock) = legato
            .get_json(&format!("/api/v1/entities/repo/acme.billing-{capacity}"))
            .await;
        assert_eq!(
            lock["state"],
            Value::Null,
            "locking leaves the state alone: {lock:#}"
        );
    }
}

/// Holds `repo/<input.repo>` until the event `done` comes.
pub fn holding() -> Value {
    json!({"name": "holding", "version": 1, "steps": [{
        "id": "edit",
        "lock": {
            "entities": [{"type": "repo", "id": "${{ input.repo }}"}],
            "steps": [{"id": "wait", "wait_for_event": {"name": "done"}}]
        }
    }]})
}

#[tokio::test]
async fn a_lock_held_by_a_terminated_run_goes_to_the_next_in_line() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(holding()).await;
    let input = json!({"input": {"repo": "acme.web"}});
    let first = legato.start_instance("holding", input.clone()).await;
    legato.wait_step(&first, "wait", "Waiting").await;
    let second = legato.start_instance("holding", input).await;
    legato.wait_step(&second, "edit", "Running").await;
    let (status, _) = legato
        .post(
            &format!("/api/v1/instances/{first}/terminate"),
            json!({"reason": "killed"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    legato.wait_status(&first, "Terminated").await;
    // The second was waiting in line; it holds the lock now.
    legato.wait_step(&second, "wait", "Waiting").await;
    let (status, _) = legato
        .post(
            &format!("/api/v1/instances/{second}/events/done"),
            json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    legato.wait_status(&second, "Completed").await;
    // Its release goes out with its end, and is applied soon after.
    let lock = legato
        .wait_for_json(
            "/api/v1/entities/repo/acme.web",
            Duration::from_secs(30),
            |e| e["operations"] == 4,
        )
        .await;
    let ops: Vec<&str> = lock["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["operation"]["op"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["release", "release", "acquire", "acquire"],
        "{lock:#}"
    );
}

/// Workflow `name`, applying custom operation `visit`: its echo agent
/// hands back the new count, its output the new state and the answer;
/// `held`, it first waits for event `go`.
pub fn visit_op(name: &str, held: bool) -> Value {
    let mut steps = vec![json!({"id": "count", "agent": "echo",
        "input": {"value": "${{ input.state.visits + input.input.by }}"}})];
    if held {
        steps[0]["needs"] = json!(["go"]);
        steps.insert(0, json!({"id": "go", "wait_for_event": {"name": "go"}}));
    }
    json!({"name": name, "version": 1, "steps": steps, "output": {
        "state": {"visits": "${{ steps.count.output.value }}", "notes": "${{ input.state.notes }}"},
        "answer": "${{ steps.count.output.value }}"
    }})
}

/// Entity type `visitor`: a state of two counts, and custom operation
/// `visit` applied by workflow `visit-op` (its echo agent hands back the
/// new count, the output the state and answer).
async fn register_visitor(legato: &Legato) {
    legato.register(visit_op("visit-op", false)).await;
    let (status, body) = legato
        .put(
            "/api/v1/entity-types/visitor",
            json!({
                "state_schema": {"type": "object", "required": ["visits", "notes"],
                    "properties": {"visits": {"type": "integer", "maximum": 1000},
                                   "notes": {"type": "integer", "minimum": 0}}},
                "operations": {"visit": {"workflow": "visit-op",
                    "input_schema": {"type": "object", "required": ["by"],
                                     "properties": {"by": {"type": "integer"}}}}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    legato
        .register(json!({"name": "visits", "version": 1, "steps": [
            {"id": "visit", "entity": {"type": "visitor", "id": "${{ input.visitor }}",
                "op": "visit", "input": {"by": 1}}},
            {"id": "note", "entity": {"type": "visitor", "id": "${{ input.visitor }}",
                "op": "increment", "path": "/notes"}},
        ], "output": {"visit": "${{ steps.visit.output }}", "note": "${{ steps.note.output }}"}}))
        .await;
}

#[tokio::test]
async fn custom_operations_are_applied_by_their_workflow_one_at_a_time_with_writes_queued_behind() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    register_visitor(&legato).await;
    let (status, _) = legato
        .post(
            "/api/v1/entities/visitor/ann/operations",
            json!({"op": "set", "value": {"visits": 0, "notes": 0}}),
        )
        .await;
    assert_eq!(status, 202);

    // Twelve runs at once, each a custom visit then an increment: every
    // visit saw the count the one before left, and no increment that
    // queued behind a visit was lost.
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            legato
                .start_instance("visits", json!({"input": {"visitor": "ann"}}))
                .await,
        );
    }
    let mut visits = Vec::new();
    for id in &ids {
        let done = legato.wait_status(id, "Completed").await;
        visits.push(done["output"]["visit"].as_u64().unwrap());
    }
    visits.sort_unstable();
    assert_eq!(visits, (1..=12).collect::<Vec<u64>>());
    let (_, entity) = legato.get_json("/api/v1/entities/visitor/ann").await;
    assert_eq!(
        entity["state"],
        json!({"visits": 12, "notes": 12}),
        "{entity:#}"
    );

    // The API checks a custom operation against the type, naming the field.
    let (status, problem) = legato
        .post(
            "/api/v1/entities/visitor/ann/operations",
            json!({"op": "visit", "input": {"by": "one"}}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/input/by", "{problem}");
    let (status, problem) = legato
        .post(
            "/api/v1/entities/visitor/ann/operations",
            json!({"op": "leave"}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem.to_string().contains("no operation leave"),
        "{problem}"
    );

    // A state the schema refuses fails the operation, changing nothing.
    let (status, _) = legato
        .post_once(
            "/api/v1/entities/visitor/ann/operations",
            "too-many",
            json!({"op": "visit", "input": {"by": 5000}}),
        )
        .await;
    assert_eq!(status, 202);
    let entity = legato
        .wait_for_json(
            "/api/v1/entities/visitor/ann",
            Duration::from_secs(30),
            |e| {
                e["recent"]
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o["id"] == "api/too-many"))
            },
        )
        .await;
    assert_eq!(entity["state"], json!({"visits": 12, "notes": 12}));
    let refused = entity["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == "api/too-many")
        .unwrap()
        .clone();
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("state_schema") && e.contains("/visits")),
        "{refused:#}"
    );
    let (status, _) = legato
        .post(
            "/api/v1/entities/visitor/ann/operations",
            json!({"op": "decrement"}),
        )
        .await;
    assert_eq!(
        status, 400,
        "an undeclared operation is refused at the door"
    );
}
