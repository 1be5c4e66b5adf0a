//! Pull agents over HTTP against a real `legato up`: a worker that is only
//! an HTTP client registers an agent, long-polls for its tasks, heartbeats,
//! completes and fails them, as an SDK in any language would. Each
//! guarantee of the protocol (docs/agents.md) is checked here: the lease
//! that retries a vanished worker's attempt, a completion recorded once
//! however often it is sent, a late completion refused, cancellation seen
//! on the next heartbeat, and tenants' workers kept apart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "pull_agents/entities.rs"]
mod entities;
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ApiKey, Legato, echo_step, events, step_of, temp_dir};

/// One poll for `agents`, as a worker sends it.
async fn poll(legato: &Legato, agents: &[&str], max: usize, wait_ms: u64) -> Vec<Value> {
    let (status, body) = legato
        .post(
            "/api/v1/tasks/poll",
            json!({"agents": agents, "maxTasks": max, "waitMs": wait_ms, "workerId": "test-worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["tasks"].as_array().unwrap().clone()
}

/// Polls until a task comes (each poll waits at most 5 s).
async fn take_one(legato: &Legato, agent: &str) -> Value {
    for _ in 0..6 {
        if let Some(task) = poll(legato, &[agent], 1, 5_000).await.pop() {
            return task;
        }
    }
    panic!("no task of {agent} within 30 s");
}

async fn task_call(legato: &Legato, task: &Value, what: &str, body: Value) -> (StatusCode, Value) {
    let token = task["token"].as_str().unwrap();
    legato
        .post(&format!("/api/v1/tasks/{token}/{what}"), body)
        .await
}

fn review_workflow(name: &str, lease_step: Option<u64>) -> Value {
    let mut review = json!({
        "id": "review", "needs": ["draft"], "agent": "reviewer",
        "input": {"draft": "${{ steps.draft.output }}"},
        "retry": {"max_attempts": 3, "initial_interval_ms": 50}
    });
    if let Some(ms) = lease_step {
        review["heartbeat_timeout_ms"] = json!(ms);
    }
    json!({
        "name": name, "version": 1,
        "steps": [
            echo_step("draft", &[], json!({"value": "${{ input.text }}"})),
            review,
            echo_step("publish", &["review"], json!({"value": "${{ steps.review.output }}"})),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_worker_takes_heartbeats_completes_and_fails_tasks_over_http() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());

    // The registry: the built-in agents are listed, a pull agent is added.
    let (status, body) = legato
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 1500, "description": "reviews drafts"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "pull");
    assert_eq!(body["leaseMs"], 1500);
    let (status, again) = legato
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 1500, "description": "reviews drafts"}),
        )
        .await;
    assert_eq!(
        (status, &again["name"]),
        (StatusCode::OK, &json!("reviewer"))
    );
    let (_, list) = legato.get_json("/api/v1/agents").await;
    let kinds: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for builtin in ["approval", "coder", "data", "echo", "planner"] {
        assert!(
            kinds.contains(&(builtin.to_owned(), "builtin".to_owned())),
            "{kinds:?}"
        );
    }
    assert!(kinds.contains(&("reviewer".to_owned(), "pull".to_owned())));
    let (status, problem) = legato
        .put("/api/v1/agents/echo", json!({"kind": "pull"}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a built-in name is taken: {problem}"
    );
    let (status, problem) = legato
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "/leaseMs");
    let (status, problem) = legato
        .post("/api/v1/tasks/poll", json!({"agents": ["echo"]}))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "built-in agents are not polled"
    );
    assert_eq!(problem["errors"][0]["field"], "/agents/0");

    // A workflow may name only registered agents: literally at
    // registration, by expression when its step runs.
    let (status, problem) = legato
        .put(
            "/api/v1/workflows/ghostly",
            json!({"name": "ghostly", "version": 1, "steps": [
                echo_step("a", &[], json!({})),
                {"id": "b", "needs": ["a"], "agent": "ghost", "input": {}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/steps/1/agent");
    assert_eq!(
        problem["errors"][0]["message"],
        "no agent ghost is registered"
    );
    legato
        .register(json!({"name": "chosen", "version": 1, "steps": [
            {"id": "pick", "agent": "${{ input.agent }}", "input": {}},
        ]}))
        .await;
    let id = legato
        .start_instance("chosen", json!({"input": {"agent": "phantom"}}))
        .await;
    let failed = legato.wait_status(&id, "Failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no agent phantom is registered"),
        "{failed:#}"
    );

    legato.register(review_workflow("reviewed", None)).await;

    // A task waits for its worker (no lease runs while it waits), then is
    // completed; sending the completion again records nothing more.
    let id = legato
        .start_instance("reviewed", json!({"input": {"text": "hello"}}))
        .await;
    legato.wait_step(&id, "review", "Running").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (_, agent) = legato.get_json("/api/v1/agents/reviewer").await;
    assert_eq!(agent["waiting"], 1, "the task waits on the queue: {agent}");
    let task = take_one(&legato, "reviewer").await;
    let (_, agent) = legato.get_json("/api/v1/agents/reviewer").await;
    assert_eq!(agent["waiting"], 0, "{agent}");
    assert_eq!(task["instanceId"], id.as_str());
    assert_eq!(task["agent"], "reviewer");
    assert_eq!(task["step"], "review");
    assert_eq!(task["attempt"], 1);
    assert_eq!(task["leaseMs"], 1500);
    assert_eq!(task["input"]["draft"]["value"], "hello");
    assert!(task["idempotencyKey"].as_str().unwrap().ends_with("#1"));
    let (status, beat) = task_call(
        &legato,
        &task,
        "heartbeat",
        json!({"message": "reading", "data": {"percent": 50}}),
    )
    .await;
    assert_eq!((status, &beat["leaseMs"]), (StatusCode::OK, &json!(1500)));
    let (status, done) = task_call(
        &legato,
        &task,
        "complete",
        json!({"output": {"approved": true}}),
    )
    .await;
    assert_eq!(
        (status, &done["status"]),
        (StatusCode::OK, &json!("recorded"))
    );
    let finished = legato.wait_status(&id, "Completed").await;
    let (status, repeat) = task_call(
        &legato,
        &task,
        "complete",
        json!({"output": {"approved": "twice"}}),
    )
    .await;
    assert_eq!(
        (status, &repeat["status"]),
        (StatusCode::OK, &json!("recorded_before"))
    );
    assert_eq!(
        step_of(&finished, "review")["output"],
        json!({"approved": true})
    );
    assert_eq!(
        finished["output"]["publish"]["value"],
        json!({"approved": true}),
        "{finished:#}"
    );
    let finished = legato.status(&id).await;
    assert_eq!(
        events(&finished, "task_completed").len(),
        3,
        "each result once"
    );
    let progress: Vec<&Value> = events(&finished, "task_heartbeat")
        .into_iter()
        .filter(|e| e["event"]["news"]["message"] == "reading")
        .collect();
    assert_eq!(
        progress.len(),
        1,
        "the worker's progress reached the history"
    );

    // A worker that vanishes mid-task: its lease runs out, the attempt is
    // retried, and its late completion is refused and not recorded.
    let id = legato
        .start_instance("reviewed", json!({"input": {"text": "again"}}))
        .await;
    let lost = take_one(&legato, "reviewer").await;
    assert_eq!(lost["attempt"], 1);
    let retry = take_one(&legato, "reviewer").await;
    assert_eq!(
        (retry["instanceId"].clone(), retry["attempt"].clone()),
        (json!(id), json!(2))
    );
    let (status, problem) = task_call(&legato, &lost, "complete", json!({"output": "late"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, problem) = task_call(&legato, &lost, "heartbeat", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    // A retryable failure is retried under the step's policy.
    let (status, _) = task_call(
        &legato,
        &retry,
        "fail",
        json!({"message": "model overloaded", "retryable": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let third = take_one(&legato, "reviewer").await;
    assert_eq!(third["attempt"], 3);
    task_call(&legato, &third, "complete", json!({"output": "ok"})).await;
    let finished = legato.wait_status(&id, "Completed").await;
    assert_eq!(step_of(&finished, "review")["output"], "ok");

    // Cancellation: the instance is terminated while the worker works; the
    // worker hears it on its next heartbeat.
    let id = legato
        .start_instance("reviewed", json!({"input": {"text": "stop"}}))
        .await;
    let doomed = take_one(&legato, "reviewer").await;
    let (status, _) = legato
        .post(
            &format!("/api/v1/instances/{id}/terminate"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    legato.wait_status(&id, "Terminated").await;
    let (status, problem) = task_call(&legato, &doomed, "heartbeat", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("Terminated"),
        "{problem}"
    );

    // A non-retryable failure fails the step for good.
    let id = legato
        .start_instance("reviewed", json!({"input": {"text": "bad"}}))
        .await;
    let task = take_one(&legato, "reviewer").await;
    task_call(
        &legato,
        &task,
        "fail",
        json!({"message": "draft is empty", "retryable": false}),
    )
    .await;
    let failed = legato.wait_status(&id, "Failed").await;
    assert!(failed.to_string().contains("draft is empty"), "{failed:#}");

    // A token that names nothing of the caller's.
    let (status, problem) = legato
        .post("/api/v1/tasks/not-a-token/complete", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "token");

    // The registry's live figures, as the replica reports them (every 5 s).
    let figures = legato
        .agent_when("reviewer", |a| {
            a["completed"] == 2 && a["failed"] == 2 && a["running"] == 0
        })
        .await;
    assert!(figures["p50Ms"].as_f64().is_some(), "{figures:#}");
    assert_eq!(figures["workers"][0]["id"], "test-worker", "{figures:#}");
    assert!(figures["workers"][0]["lastPoll"].is_string());
    let echo = legato
        .agent_when("echo", |a| a["completed"].as_u64() >= Some(3))
        .await;
    assert_eq!(echo["failed"], 0, "{echo:#}");
    assert!(echo["p50Ms"].as_f64().is_some(), "{echo:#}");
    assert!(
        echo.get("workers").is_none(),
        "only pull agents have workers"
    );

    // Removed from the registry: no longer listed or polled.
    assert_eq!(
        legato.delete("/api/v1/agents/reviewer").await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = legato.get_json("/api/v1/agents/reviewer").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        legato.delete("/api/v1/agents/echo").await,
        StatusCode::CONFLICT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_worker_takes_only_its_tenants_tasks() {
    let dir = temp_dir();
    let key = |id, key, tenant, roles| ApiKey {
        id,
        key,
        tenant,
        roles,
    };
    let legato = Legato::start_with_api_keys(
        dir.path(),
        &[
            key("acme", "acme-admin", Some("acme"), &["admin"]),
            key("acme-worker", "acme-worker", Some("acme"), &["agent"]),
            key("beta", "beta-admin", Some("beta"), &["admin"]),
            key("beta-worker", "beta-worker", Some("beta"), &["agent"]),
            key("acme-reader", "acme-reader", Some("acme"), &["read"]),
        ],
    );
    let as_ = |key: &str| legato.with_bearer(key);
    let acme = as_("acme-admin");
    let beta = as_("beta-admin");

    // acme's agent; beta cannot take its name, nor see it.
    let (status, _) = acme
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = beta
        .put("/api/v1/agents/reviewer", json!({"kind": "pull"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = beta.get_json("/api/v1/agents/reviewer").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // beta cannot name acme's agent in a definition; one that picks it
    // at run time has its step failed as if there were no such agent, and
    // the task never reaches acme's worker.
    acme.register(review_workflow("reviewed", None)).await;
    let (status, problem) = beta
        .put(
            "/api/v1/workflows/reviewed",
            review_workflow("reviewed", None),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    beta.register(json!({"name": "picked", "version": 1, "steps": [
        {"id": "review", "agent": "${{ input.agent }}", "input": {}},
    ]}))
    .await;
    let beta_id = beta
        .start_instance("picked", json!({"input": {"agent": "reviewer"}}))
        .await;
    let acme_id = acme
        .start_instance("reviewed", json!({"input": {"text": "a"}}))
        .await;
    let acme_worker = as_("acme-worker");
    let mut seen = Vec::new();
    for _ in 0..6 {
        for task in poll(&acme_worker, &["reviewer"], 8, 2_000).await {
            seen.push(task["instanceId"].as_str().unwrap().to_owned());
            task_call(&acme_worker, &task, "complete", json!({"output": "fine"})).await;
        }
        if !seen.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec![acme_id.clone()]);
    acme.wait_status(&acme_id, "Completed").await;
    let failed = beta.wait_status(&beta_id, "Failed").await;
    assert!(
        failed
            .to_string()
            .contains("no agent reviewer is registered"),
        "{failed:#}"
    );

    // beta's worker may not serve acme's agent; a reader may not poll.
    let (status, _) = as_("beta-worker")
        .post(
            "/api/v1/tasks/poll",
            json!({"agents": ["reviewer"], "waitMs": 0}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "another tenant's agent is missing"
    );
    let (status, _) = acme.post("/api/v1/agents/reviewer", json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Every call of a task's worker needs the agent role, whatever the token.
    let reader = as_("acme-reader");
    let body = json!({"call": "chat 1", "seq": 1, "text": "x"});
    for (status, what) in [
        (
            reader
                .post("/api/v1/tasks/poll", json!({"agents": ["reviewer"]}))
                .await
                .0,
            "poll",
        ),
        (
            reader
                .put("/api/v1/tasks/t/journal/turn", json!({"value": 1}))
                .await
                .0,
            "journal",
        ),
        (
            reader
                .post("/api/v1/tasks/t/ask", json!({"name": "q", "question": "?"}))
                .await
                .0,
            "ask",
        ),
        (
            reader.post("/api/v1/tasks/t/output", body).await.0,
            "output",
        ),
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "a reader's {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_completions_is_answered_one_by_one() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let (status, _) = legato
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 1500}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    legato.register(review_workflow("reviewed", None)).await;
    let one = legato
        .start_instance("reviewed", json!({"input": {"text": "one"}}))
        .await;
    let two = legato
        .start_instance("reviewed", json!({"input": {"text": "two"}}))
        .await;
    let mut tasks = Vec::new();
    while tasks.len() < 2 {
        tasks.extend(poll(&legato, &["reviewer"], 2, 5_000).await);
    }
    let batch = |outputs: &[&str]| {
        let mut completions: Vec<Value> = tasks
            .iter()
            .zip(outputs)
            .map(|(t, o)| json!({"token": t["token"], "output": o}))
            .collect();
        completions.push(json!({"token": "not-a-token", "output": 1}));
        json!({ "completions": completions })
    };
    let (status, body) = legato
        .post("/api/v1/tasks/complete", batch(&["first", "second"]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["recorded", "recorded", "refused"], "{body}");
    assert_eq!(body["results"][2]["problem"]["status"], 400, "{body}");
    for (task, output) in tasks.iter().zip(["first", "second"]) {
        let id = task["instanceId"].as_str().unwrap();
        assert!(id == one || id == two, "{task}");
        let done = legato.wait_status(id, "Completed").await;
        assert_eq!(step_of(&done, "review")["output"], output, "{done:#}");
    }
    // Progress ten times in a row: the first goes on at once, the latest
    // at its turn, the ones between are folded (each would cost a commit).
    let three = legato
        .start_instance("reviewed", json!({"input": {"text": "three"}}))
        .await;
    let chatty = take_one(&legato, "reviewer").await;
    for n in 0..10 {
        let (status, _) = task_call(
            &legato,
            &chatty,
            "heartbeat",
            json!({"message": format!("p{n}")}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    task_call(&legato, &chatty, "complete", json!({"output": "ok"})).await;
    let done = legato.wait_status(&three, "Completed").await;
    let told: Vec<&str> = events(&done, "task_heartbeat")
        .iter()
        .filter_map(|e| e["event"]["news"]["message"].as_str())
        .collect();
    assert_eq!(told, ["p0", "p9"], "{done:#}");

    // Sent again: each recorded once.
    let (_, again) = legato
        .post("/api/v1/tasks/complete", batch(&["third", "fourth"]))
        .await;
    assert_eq!(again["results"][0]["status"], "recorded_before", "{again}");
    assert_eq!(again["results"][1]["status"], "recorded_before", "{again}");

    let (status, problem) = legato
        .post("/api/v1/tasks/complete", json!({"completions": []}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "/completions");
}

/// A pull agent inside a loop gets each iteration's task as new work: the
/// iteration is on the task, and its key and idempotency key are its own.
#[tokio::test]
async fn a_pull_agent_in_a_loop_sees_each_iteration_as_new_work() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let (status, body) = legato
        .put("/api/v1/agents/critic", json!({"kind": "pull"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    legato
        .register(json!({"name": "critique", "version": 1, "steps": [{
            "id": "rounds",
            "loop": {
                "max_iterations": 3,
                "until": "${{ steps.judge.output.ok }}",
                "steps": [{"id": "judge", "agent": "critic", "input": {"round": "${{ iteration }}"}}]
            }
        }]}))
        .await;
    let id = legato.start_instance("critique", json!({})).await;
    let mut keys = Vec::new();
    for round in 1..=2 {
        let task = take_one(&legato, "critic").await;
        assert_eq!(task["iteration"], round, "{task}");
        assert_eq!(task["input"], json!({"round": round}));
        keys.push((
            task["key"].as_str().unwrap().to_owned(),
            task["idempotencyKey"].as_str().unwrap().to_owned(),
        ));
        let (status, body) = task_call(
            &legato,
            &task,
            "complete",
            json!({"output": {"ok": round == 2}}),
        )
        .await;
        assert!(status.is_success(), "{body}");
    }
    assert_ne!(keys[0].0, keys[1].0);
    assert_ne!(keys[0].1, keys[1].1);
    assert!(keys[1].0.ends_with("/judge@2"), "{keys:?}");
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(step_of(&done, "rounds")["iteration"], 2);
}

/// Records journal entry `name` of `task`'s attempt, as the SDKs' `step`
/// does once its work returned `value`.
async fn record(legato: &Legato, task: &Value, name: &str, value: Value) -> (StatusCode, Value) {
    let token = task["token"].as_str().unwrap();
    let name: String = name
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    legato
        .put(
            &format!("/api/v1/tasks/{token}/journal/{name}"),
            json!({"value": value}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_workers_journal_outlives_its_attempts_and_redrives() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let (status, body) = legato
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 1500}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    legato.register(review_workflow("journaled", None)).await;
    let id = legato
        .start_instance("journaled", json!({"input": {"text": "x"}}))
        .await;

    // Attempt 1 records a model turn; the same name again answers the
    // first value; bad names and oversized values are refused.
    let first = take_one(&legato, "reviewer").await;
    assert!(
        first.get("journal").is_none(),
        "a first try reads nothing: {first}"
    );
    let turn = json!({"text": "looks fine", "tokens": 41});
    let (status, answer) = record(&legato, &first, "model turn 1", turn.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"status": "recorded", "value": turn}));
    let (status, answer) = record(&legato, &first, "model turn 1", json!("other")).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            json!({"status": "recorded_before", "value": turn})
        )
    );
    let (status, problem) = record(&legato, &first, "a\u{7}b", json!(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "name");
    let huge = json!("x".repeat(300 * 1024));
    let (status, problem) = record(&legato, &first, "huge", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/value");

    // The worker vanishes: its lease runs out and attempt 2 arrives with
    // the journal; the lost attempt can no longer record.
    let second = take_one(&legato, "reviewer").await;
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["journal"], json!({"model turn 1": turn}));
    let (status, _) = record(&legato, &first, "model turn 2", json!(2)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = record(&legato, &second, "model turn 2", json!("second")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = task_call(
        &legato,
        &second,
        "fail",
        json!({"message": "the model refused", "retryable": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    legato.wait_status(&id, "Failed").await;

    // A redrive keeps the journal: the recorded turns are not done again.
    let (status, body) = legato
        .post(&format!("/api/v1/instances/{id}/redrive"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let third = take_one(&legato, "reviewer").await;
    assert_eq!(
        third["journal"],
        json!({"model turn 1": turn, "model turn 2": "second"})
    );
    task_call(
        &legato,
        &third,
        "fail",
        json!({"message": "again", "retryable": false}),
    )
    .await;
    legato.wait_status(&id, "Failed").await;

    // Asked to, a redrive starts the journal over.
    let (status, body) = legato
        .post(
            &format!("/api/v1/instances/{id}/redrive"),
            json!({"resetJournal": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let fourth = take_one(&legato, "reviewer").await;
    assert!(fourth.get("journal").is_none(), "{fourth}");
    task_call(&legato, &fourth, "complete", json!({"output": "ok"})).await;
    let done = legato.wait_status(&id, "Completed").await;

    // Each entry recorded is in the history once, with its size.
    let recorded: Vec<(String, u64)> = events(&done, "task_heartbeat")
        .iter()
        .filter(|e| e["event"]["news"]["kind"] == "journal_recorded")
        .map(|e| {
            let data = &e["event"]["news"]["data"];
            (
                data["name"].as_str().unwrap().to_owned(),
                data["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [
            ("model turn 1".to_owned(), 33),
            ("model turn 2".to_owned(), 8)
        ],
        "{done:#}"
    );
}

/// Pieces of what a worker's model writes reach a stream watching the
/// instance as they are sent, in order and before the step completes;
/// nothing of them is kept for a stream opened later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_workers_output_reaches_the_stream_live_and_is_not_kept() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let (status, body) = legato
        .put("/api/v1/agents/reviewer", json!({"kind": "pull"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    legato.register(review_workflow("streamed", None)).await;
    let id = legato
        .start_instance("streamed", json!({"input": {"text": "x"}}))
        .await;
    let task = take_one(&legato, "reviewer").await;
    let stream = legato.open_stream(&id).await;
    assert_eq!(stream.status(), StatusCode::OK);

    let pieces = ["Looks ", "fine, ", "ship it."];
    for (n, text) in pieces.iter().enumerate() {
        let body = json!({"call": "chat 1", "seq": n + 1, "text": text});
        let (status, answer) = task_call(&legato, &task, "output", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    for (body, field) in [
        (json!({"call": "chat 1", "seq": 0, "text": "x"}), "/seq"),
        (json!({"call": "", "seq": 4, "text": "x"}), "/call"),
        (
            json!({"call": "chat 1", "seq": 4, "text": "x".repeat(65_537)}),
            "/text",
        ),
    ] {
        let (status, problem) = task_call(&legato, &task, "output", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let (status, _) = task_call(&legato, &task, "complete", json!({"output": "ship it"})).await;
    assert_eq!(status, StatusCode::OK);

    let text = tokio::time::timeout(Duration::from_secs(30), stream.text())
        .await
        .expect("the stream ends with the instance")
        .unwrap();
    let frames: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|frame| {
            let event = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let output: Vec<&Value> = frames
        .iter()
        .filter(|(event, _)| event == "output")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(
        output
            .iter()
            .map(|o| o["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        pieces,
        "{text}"
    );
    assert_eq!(
        (
            &output[0]["instanceId"],
            &output[0]["step"],
            &output[0]["call"],
            &output[0]["seq"],
            &output[0]["attempt"]
        ),
        (
            &json!(id),
            &json!("review"),
            &json!("chat 1"),
            &json!(1),
            &json!(1)
        )
    );
    let last_piece = frames.iter().rposition(|(event, _)| event == "output");
    let review_done = frames.iter().position(|(event, data)| {
        event == "progress" && data["kind"] == "step_completed" && data["step"] == "review"
    });
    assert!(last_piece < review_done, "{text}");
    assert!(
        !text
            .split("\n\n")
            .any(|f| f.contains("event: output") && f.contains("id:")),
        "an output event has no id: {text}"
    );

    // A stream opened now replays the progress, not the pieces.
    legato.wait_status(&id, "Completed").await;
    let later = legato.open_stream(&id).await.text().await.unwrap();
    assert!(later.contains("step_completed"), "{later}");
    assert!(!later.contains("event: output"), "{later}");
}
