//! The gateway scenarios, run by each topology that includes this file:
//! `legato up` (`e2e/main.rs`) and one process per service over RabbitMQ
//! and Azurite (`services.rs`). `crate::launch` starts the topology.

use std::time::Duration;

use legato_contracts::InstanceId;
use legato_engine::{Event, InstanceState, SlotStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::launch;
use crate::support::{echo_step, events, step_of, temp_dir};

fn at(row: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(row["at"].as_str().unwrap(), &Rfc3339).unwrap()
}

#[tokio::test]
async fn a_sequence_runs_each_step_after_the_previous() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "seq", "version": 1,
            "steps": [
                echo_step("a", &[], json!({"value": "${{ input.x }}"})),
                echo_step("b", &["a"], json!({"value": "${{ steps.a.output.value + 1 }}"})),
                echo_step("c", &["b"], json!({"value": "${{ steps.b.output.value * 10 }}"})),
            ],
            "output": "${{ steps.c.output.value }}"
        }))
        .await;
    let id = legato
        .start_instance("seq", json!({"input": {"x": 4}}))
        .await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!(50));
    let order: Vec<&str> = events(&status, "task_completed")
        .iter()
        .map(|e| e["event"]["key"]["step"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["a", "b", "c"]);
}

#[tokio::test]
async fn fan_out_of_four_then_a_fan_in() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let id = legato
        .start_instance("fan-out-fan-in", json!({"input": {"value": 7}}))
        .await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!([7, 7, 7, 7]));
    let completed = events(&status, "task_completed");
    assert_eq!(completed.len(), 5);
    // The join completes last, after all four branches.
    assert_eq!(completed[4]["event"]["key"]["step"], "join");
    let join_started = events(&status, "task_completed")[3]["seq"]
        .as_u64()
        .unwrap();
    assert!(completed[4]["seq"].as_u64().unwrap() > join_started);
}

#[tokio::test]
async fn for_each_over_20_items_never_has_more_than_3_in_flight() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "each", "version": 1,
            "steps": [{
                "id": "each", "for_each": "${{ input.items }}", "agent": "echo",
                "input": {"value": "${{ item }}", "sleep_ms": 30}, "max_parallel": 3
            }],
            "output": "${{ steps.each.output }}"
        }))
        .await;
    let items: Vec<u32> = (0..20).collect();
    let id = legato
        .start_instance("each", json!({"input": {"items": items}}))
        .await;
    let status = legato.wait_status(&id, "Completed").await;
    let values: Vec<Value> = status["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].clone())
        .collect();
    assert_eq!(values, items.iter().map(|i| json!(i)).collect::<Vec<_>>());
    // Replay the recorded history through the engine and count the
    // attempts in flight after every event.
    let mut state = InstanceState::new(InstanceId::parse(&id).unwrap());
    let mut most = 0;
    for row in status["history"].as_array().unwrap() {
        let event: Event = serde_json::from_value(row["event"].clone()).unwrap();
        state = legato_engine::decide(&state, &event).state;
        let running = state
            .steps
            .values()
            .flat_map(|s| &s.tasks)
            .filter(|t| t.status == SlotStatus::Running)
            .count();
        most = most.max(running);
    }
    assert_eq!(most, 3, "the cap is reached and never exceeded");
    assert_eq!(events(&status, "task_completed").len(), 20);
}

#[tokio::test]
async fn a_retry_succeeds_on_attempt_3_after_the_backoff() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "flaky", "version": 1,
            "steps": [{
                "id": "flaky", "agent": "echo", "input": {"value": 1, "fail_attempts": 2},
                "retry": {"max_attempts": 3, "initial_interval_ms": 200, "backoff": 2.0}
            }],
            "output": "${{ steps.flaky.output }}"
        }))
        .await;
    let id = legato.start_instance("flaky", json!({})).await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!({"value": 1, "attempt": 3}));
    assert_eq!(step_of(&status, "flaky")["attempts"], 3);
    let failed = events(&status, "task_failed");
    let fired = events(&status, "timer_fired");
    assert_eq!(failed.len(), 2);
    assert_eq!(fired.len(), 2);
    // Each retry waits its backoff: 200 ms after the first failure, 400 ms
    // after the second.
    assert!(at(fired[0]) - at(failed[0]) >= time::Duration::milliseconds(200));
    assert!(at(fired[1]) - at(failed[1]) >= time::Duration::milliseconds(400));
    assert!(at(failed[1]) > at(fired[0]));
}

#[tokio::test]
async fn a_fatal_failure_is_not_retried() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "fatal", "version": 1,
            "steps": [{"id": "boom", "agent": "echo", "input": {"fatal": true}, "retry": {"max_attempts": 5, "initial_interval_ms": 10}}]
        }))
        .await;
    let id = legato.start_instance("fatal", json!({})).await;
    let status = legato.wait_status(&id, "Failed").await;
    assert_eq!(step_of(&status, "boom")["attempts"], 1);
    assert!(
        status["error"].as_str().unwrap().contains("fatal"),
        "{status:#}"
    );
}

pub(crate) fn approval_workflow(timeout_ms: u64) -> Value {
    json!({
        "name": "approve", "version": 1,
        "steps": [
            echo_step("prepare", &[], json!({"value": "draft"})),
            {"id": "approve", "needs": ["prepare"], "wait_for_event": {"name": "approval", "timeout_ms": timeout_ms,
                "on_timeout": {"output": {"approved": false, "reason": "timed out"}}}},
            echo_step("after", &["approve"], json!({"value": "${{ steps.approve.output }}"})),
        ],
        "output": "${{ steps.after.output.value }}"
    })
}

#[tokio::test]
async fn an_approval_raised_through_the_gateway_moves_the_instance_on() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(approval_workflow(60_000)).await;
    let id = legato.start_instance("approve", json!({})).await;
    legato.wait_step(&id, "approve", "Waiting").await;
    let (code, _) = legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({"approved": true, "by": "ana"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!({"approved": true, "by": "ana"}));
    // A finished instance takes no more events.
    let (code, body) = legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({}),
        )
        .await;
    assert_eq!(code, StatusCode::GONE, "{body}");
}

#[tokio::test]
async fn an_unanswered_approval_times_out_with_its_default() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(approval_workflow(300)).await;
    let id = legato.start_instance("approve", json!({})).await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        status["output"],
        json!({"approved": false, "reason": "timed out"})
    );
    assert_eq!(events(&status, "timer_fired").len(), 1);
}

#[tokio::test]
async fn feature_request_runs_planner_specialists_approval_and_finalize() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let request = "add CSV export to billing and check last month's totals";
    let id = legato
        .start_instance("feature-request", json!({"input": {"request": request}}))
        .await;
    legato.wait_step(&id, "approve", "Waiting").await;
    let (code, _) = legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({"approved": true}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let status = legato.wait_status(&id, "Completed").await;
    let plan = status["output"]["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0]["agent"], "coder");
    assert_eq!(plan[1]["agent"], "data");
    assert_eq!(status["output"]["finalized"].as_array().unwrap().len(), 1);
    // The data agent's loop (offline: the deterministic stand-in for a
    // model) listed the tables, read last month's totals from the demo
    // database and said what it found, each turn and tool call journaled.
    let data = &status["output"]["results"][1];
    assert!(
        data["rows"]
            .as_array()
            .is_some_and(|r| r.len() == 4 && r.iter().all(|row| row["total_cents"].is_i64())),
        "{data}"
    );
    assert!(
        data["answer"]
            .as_str()
            .is_some_and(|a| a.starts_with("Across 4 customers")),
        "{data}"
    );
    assert_eq!(
        (&data["turns"], &data["model"]),
        (&json!(3), &json!("offline"))
    );
    let recorded: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["progress"].as_array().into_iter().flatten())
        .filter(|p| p["kind"] == "journal_recorded" && p["step"] == "work")
        .filter_map(|p| p["data"]["name"].as_str())
        .collect();
    for entry in ["chat 1", "tool call_1", "chat 2", "tool call_2", "chat 3"] {
        assert!(recorded.contains(&entry), "{entry} not in {recorded:?}");
    }
}

#[tokio::test]
async fn a_rejected_feature_request_rolls_back_through_compensation() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let id = legato
        .start_instance(
            "feature-request",
            json!({"input": {"request": "rename the invoices module"}}),
        )
        .await;
    legato.wait_step(&id, "approve", "Waiting").await;
    legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({"approved": false, "reason": "not now"}),
        )
        .await;
    let status = legato.wait_status(&id, "Failed").await;
    assert!(
        status["error"].as_str().unwrap().contains("not now"),
        "{status:#}"
    );
    assert_eq!(step_of(&status, "finalize")["status"], "Pending");
    let compensations: Vec<&Value> = events(&status, "task_completed")
        .into_iter()
        .filter(|e| e["event"]["key"]["role"] == "compensation")
        .collect();
    assert_eq!(compensations.len(), 1, "the work step was reverted once");
    assert_eq!(
        compensations[0]["event"]["output"]["reverted"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn terminate_while_a_task_runs_stops_the_instance() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "slow", "version": 1, "steps": [
            echo_step("slow", &[], json!({"value": 1, "sleep_ms": 60000})),
            echo_step("never", &["slow"], json!({"value": 2})),
        ]}))
        .await;
    let id = legato.start_instance("slow", json!({})).await;
    legato.wait_step(&id, "slow", "Running").await;
    let (code, _) = legato
        .post(
            &format!("/api/v1/instances/{id}/terminate"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let status = legato.wait_status(&id, "Terminated").await;
    assert_eq!(step_of(&status, "slow")["status"], "Cancelled");
    assert_eq!(step_of(&status, "never")["status"], "Pending");
    assert!(events(&status, "task_completed").is_empty());
    // Terminated instances can be purged, and then they are gone.
    let purge = legato
        .client
        .delete(legato.url(&format!("/api/v1/instances/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        legato.get_json(&format!("/api/v1/instances/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn suspend_holds_results_until_resume() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "pausable", "version": 1, "steps": [
            echo_step("first", &[], json!({"value": 1, "sleep_ms": 400})),
            echo_step("second", &["first"], json!({"value": 2})),
        ]}))
        .await;
    let id = legato.start_instance("pausable", json!({})).await;
    legato.wait_step(&id, "first", "Running").await;
    legato
        .post(
            &format!("/api/v1/instances/{id}/suspend"),
            json!({"reason": "lunch"}),
        )
        .await;
    legato.wait_status(&id, "Suspended").await;
    // Purging a live instance is refused.
    let purge = legato
        .client
        .delete(legato.url(&format!("/api/v1/instances/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), StatusCode::CONFLICT);
    // The first result arrives while suspended and is kept, not acted on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let held = legato.status(&id).await;
    assert_eq!(held["runtimeStatus"], "Suspended");
    assert_eq!(step_of(&held, "second")["status"], "Pending");
    legato
        .post(&format!("/api/v1/instances/{id}/resume"), json!({}))
        .await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(step_of(&status, "second")["attempts"], 1);
}

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_problem_details_and_persist_nothing() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let start_url = legato.url("/api/v1/workflows/feature-request/instances");
    let send = |body: String| {
        legato
            .client
            .post(&start_url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (code, body) = problem(send("{\"input\": {\"request\": ".into()).await.unwrap()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "body", "{body}");

    let (code, body) = problem(
        send(json!({"input": {"request": 5}, "instanceId": "bad-schema"}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "/input/request", "{body}");

    let (code, body) = problem(
        send(json!({"input": {}, "instanceId": "missing"}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    let (code, body) = problem(
        send(json!({"input": {"request": "x"}, "instanceid": "typo"}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("instanceid"),
        "{body}"
    );

    let (code, body) = problem(
        send(json!({"input": {"request": "x"}, "instanceId": "no spaces"}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "/instanceId", "{body}");

    let huge = json!({"input": {"request": "x".repeat(2 * 1024 * 1024)}, "instanceId": "huge"})
        .to_string();
    // On its own connection: the server answers 413 without reading the
    // rest of the body and closes the connection, which a pooled client
    // could otherwise pick for the next request.
    let own = reqwest::Client::new()
        .post(&start_url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (code, _) = problem(own).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);

    let unknown = legato
        .client
        .post(legato.url("/api/v1/workflows/no-such-flow/instances"))
        .json(&json!({"instanceId": "ghost"}))
        .send()
        .await
        .unwrap();
    let (code, _) = problem(unknown).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let bad_definition = legato
        .client
        .put(legato.url("/api/v1/workflows/broken"))
        .body("name: broken\nversion: 1\nsteps:\n  - id: a\n    needs: [zzz]\n    agent: echo\n")
        .send()
        .await
        .unwrap();
    let (code, body) = problem(bad_definition).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["errors"][0]["field"]
            .as_str()
            .unwrap()
            .contains("needs"),
        "{body}"
    );

    let (code, _) = problem(
        legato
            .client
            .get(legato.url("/api/v1/instances?top=0"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = problem(
        legato
            .client
            .get(legato.url("/api/v1/instances?status=Sleeping"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    // Nothing was persisted by any of them.
    for id in ["bad-schema", "missing", "typo", "huge", "ghost"] {
        assert_eq!(
            legato.get_json(&format!("/api/v1/instances/{id}")).await.0,
            StatusCode::NOT_FOUND,
            "{id}"
        );
    }
    let (_, page) = legato.get_json("/api/v1/instances").await;
    assert_eq!(page["items"], json!([]));
    let (code, _) = legato.get_json("/api/v1/workflows/broken").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_live_instance_id_conflicts_and_a_finished_one_is_reused() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(approval_workflow(60_000)).await;
    let id = legato
        .start_instance("approve", json!({"instanceId": "mine"}))
        .await;
    assert_eq!(id, "mine");
    let again = legato
        .client
        .post(legato.url("/api/v1/workflows/approve/instances"))
        .json(&json!({"instanceId": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(again).await.0, StatusCode::CONFLICT);
    legato
        .post("/api/v1/instances/mine/terminate", json!({}))
        .await;
    legato.wait_status("mine", "Terminated").await;
    legato
        .start_instance("approve", json!({"instanceId": "mine"}))
        .await;
    let fresh = legato.wait_step("mine", "approve", "Waiting").await;
    assert_eq!(
        events(&fresh, "terminate_requested").len(),
        0,
        "the old history went with the old instance"
    );

    // Same steps, same attempts, new input: each run of the id gets its
    // own results, whether the old one finished or was purged (agents
    // remember answers by task key; brokers deduplicate by message id).
    legato
        .register(json!({"name": "twice", "version": 1,
            "steps": [echo_step("only", &[], json!({"value": "${{ input.x }}"}))],
            "output": "${{ steps.only.output.value }}"}))
        .await;
    for x in 1..=3 {
        if x == 3 {
            let purged = legato
                .client
                .delete(legato.url("/api/v1/instances/again"))
                .send()
                .await
                .unwrap();
            assert!(purged.status().is_success(), "{}", purged.status());
        }
        legato
            .start_instance("twice", json!({"instanceId": "again", "input": {"x": x}}))
            .await;
        let status = legato.wait_status("again", "Completed").await;
        assert_eq!(status["output"], json!(x), "run {x} of the id");
    }
}

/// What a start answers and negotiate hands out lead to the progress
/// stream and the hub wherever they run (the notifier, in a deployment).
#[tokio::test]
async fn a_starts_stream_uri_and_negotiate_lead_to_the_stream_and_hub() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let started: Value = legato
        .client
        .post(legato.url("/api/v1/workflows/fan-out-fan-in/instances"))
        .json(&json!({"input": {"value": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stream = started["streamUri"].as_str().unwrap();
    let ended = legato::sse::wait_for_end(&legato.client, stream, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        ended,
        legato_contracts::RuntimeStatus::Completed,
        "{stream}"
    );
    let hub = legato.negotiate("ana").await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let negotiated = legato
        .client
        .post(format!("{hub}/negotiate?negotiateVersion=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(negotiated.status(), StatusCode::OK, "{hub}");
}

#[tokio::test]
async fn the_openapi_document_and_health_are_served() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let (code, doc) = legato.get_json("/api/v1/openapi.json").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/workflows/{name}/instances"]["post"].is_object());
    let health = legato
        .client
        .get(legato.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = legato
        .client
        .get(legato.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_stream_sends_progress_until_the_instance_finishes() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato.register(approval_workflow(60_000)).await;
    let id = legato.start_instance("approve", json!({})).await;
    legato.wait_step(&id, "approve", "Waiting").await;
    let stream = legato.open_stream(&id).await;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({"approved": true}),
        )
        .await;
    let text = tokio::time::timeout(Duration::from_secs(30), stream.text())
        .await
        .expect("the stream ends with the instance")
        .unwrap();
    assert!(text.starts_with("event: status"), "{text}");
    let snapshot: Value =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(snapshot["waitingFor"], json!(["approval"]), "{snapshot}");
    let kinds: Vec<String> = text
        .split("\n\n")
        .filter(|frame| frame.contains("event: progress"))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| {
            serde_json::from_str::<Value>(data).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // What happened before the stream opened is replayed, then the rest.
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("instance_started"),
        "{kinds:?}"
    );
    let waiting = kinds.iter().position(|k| k == "waiting_for_event").unwrap();
    let received = kinds.iter().position(|k| k == "event_received").unwrap();
    assert!(waiting < received, "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("instance_completed"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "instance_completed").count(),
        1
    );
}

fn leased(id: &str, lease_ms: u64, input: Value) -> Value {
    let mut step = echo_step(id, &[], input);
    step["heartbeat_timeout_ms"] = json!(lease_ms);
    step["retry"] = json!({"max_attempts": 3, "initial_interval_ms": 50});
    step
}

#[tokio::test]
async fn a_hung_agent_loses_its_lease_and_the_retry_completes() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "hang", "version": 1,
            "steps": [leased("wedged", 800, json!({"value": 7, "hang_attempts": 1}))],
            "output": "${{ steps.wedged.output }}"
        }))
        .await;
    let id = legato.start_instance("hang", json!({})).await;
    let status = legato.wait_status(&id, "Completed").await;
    // The first attempt went silent and was failed; the second answered.
    assert_eq!(status["output"], json!({"value": 7, "attempt": 2}));
    assert_eq!(step_of(&status, "wedged")["attempts"], 2);
    // What failed it: the lease check, not a result.
    assert!(events(&status, "task_failed").is_empty());
    let checks: Vec<&Value> = events(&status, "timer_fired")
        .into_iter()
        .filter(|e| e["event"]["timer"]["kind"] == "heartbeat_lease")
        .collect();
    assert!(!checks.is_empty(), "{status}");
}

#[tokio::test]
async fn a_live_agent_keeps_its_lease_past_it() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "slow", "version": 1,
            "steps": [leased("long", 600, json!({"value": 1, "sleep_ms": 2500}))],
            "output": "${{ steps.long.output }}"
        }))
        .await;
    let id = legato.start_instance("slow", json!({})).await;
    let status = legato.wait_status(&id, "Completed").await;
    // Four leases long, one attempt: the runtime's heartbeats kept it.
    assert_eq!(status["output"], json!({"value": 1, "attempt": 1}));
    assert!(events(&status, "task_failed").is_empty());
    assert!(
        events(&status, "task_heartbeat").len() >= 3,
        "the heartbeats renewed the lease"
    );
}

/// The progress events of a stream, as (`id:`, data), until the instance
/// ends; `on_progress` may act on each (and is awaited before reading on).
pub(crate) async fn follow<F, Fut>(
    legato: &crate::support::Legato,
    id: &str,
    after: Option<u64>,
    mut on_progress: F,
) -> Vec<(Option<u64>, Value)>
where
    F: FnMut(&Value) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut request = legato.client.get(legato.stream_url(id));
    if let Some(after) = after {
        request = request.header("Last-Event-ID", after.to_string());
    }
    let response = request.send().await.unwrap().error_for_status().unwrap();
    let mut events = legato::sse::Events::new(response);
    let mut progress = Vec::new();
    let read = async {
        while let Some(frame) = events.next().await {
            let frame = frame.unwrap();
            if frame.event != "progress" {
                continue;
            }
            on_progress(&frame.data).await;
            progress.push((frame.position(), frame.data.clone()));
            if frame.final_status().is_some() {
                return;
            }
        }
        panic!("the stream ended before the instance did");
    };
    tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("the instance ends within 90 s");
    progress
}

/// Every progress event the history holds after position `after`, in order.
pub(crate) async fn history_progress(
    legato: &crate::support::Legato,
    id: &str,
    after: u64,
) -> Vec<Value> {
    let (code, status) = legato
        .get_json(&format!(
            "/api/v1/instances/{id}?history=true&after={after}"
        ))
        .await;
    assert_eq!(code, StatusCode::OK, "{status}");
    status["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["progress"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn progress_positions_agree_across_the_stream_the_hub_and_the_history() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let request = "add CSV export to billing and check last month's totals";
    let id = legato
        .start_instance("feature-request", json!({"input": {"request": request}}))
        .await;
    // Follow it from the start, approving when it asks.
    let approve = |event: &Value| {
        let asks = event["kind"] == "waiting_for_event";
        let legato = &legato;
        let path = format!("/api/v1/instances/{id}/events/approval");
        async move {
            if asks {
                let (code, _) = legato.post(&path, json!({"approved": true})).await;
                assert_eq!(code, StatusCode::ACCEPTED);
            }
        }
    };
    let seen = follow(&legato, &id, None, approve).await;
    let positions: Vec<u64> = seen
        .iter()
        .map(|(_, e)| e["position"].as_u64().unwrap())
        .collect();
    let n = positions.len() as u64;
    assert_eq!(
        positions,
        (1..=n).collect::<Vec<_>>(),
        "one position each, no gap"
    );
    assert!(
        seen.iter().all(|(id, e)| *id == e["position"].as_u64()),
        "the stream's id: is the position"
    );
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(_, e)| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"approval_requested"),
        "agent news has its place: {kinds:?}"
    );
    assert_eq!(legato.status(&id).await["position"], n);

    // The history tells the same events; read after N it tells the rest.
    let events: Vec<Value> = seen.into_iter().map(|(_, e)| e).collect();
    assert_eq!(history_progress(&legato, &id, 0).await, events);
    let half = n / 2;
    let rest = &events[half as usize..];
    assert_eq!(history_progress(&legato, &id, half).await, rest);

    // A stream resumed after N sends exactly the rest.
    let resumed = follow(&legato, &id, Some(half), |_| async {}).await;
    assert_eq!(
        resumed.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        rest
    );

    // So does the hub, asked to subscribe after N.
    use crate::support::hub;
    let mut socket = hub::connect(&legato, "").await;
    let done = hub::invoke(&mut socket, "1", "Subscribe", json!([id, half])).await;
    assert_eq!(done["result"]["position"], n, "{done}");
    let mut told = Vec::new();
    for _ in half..n {
        let mut record = hub::next(&mut socket).await;
        assert_eq!(record["target"], "progress", "{record}");
        let mut event = record["arguments"][0].take();
        assert_eq!(event["instanceId"], id.as_str());
        event.as_object_mut().unwrap().remove("instanceId");
        told.push(event);
    }
    assert_eq!(told, rest);
}

#[tokio::test]
async fn a_redrive_reruns_only_what_failed_and_keeps_what_completed() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "redrive", "version": 1, "steps": [
            echo_step("first", &[], json!({"value": "kept"})),
            {"id": "each", "needs": ["first"], "for_each": "${{ [0, 1, 2] }}", "agent": "echo",
             "input": {"value": "${{ item }}", "fail_executions": "${{ item == 1 ? 1 : 0 }}"}},
            echo_step("last", &["each"], json!({"value": "${{ steps.each.output }}"})),
        ], "output": "${{ steps.last.output.value }}"}))
        .await;
    let id = legato.start_instance("redrive", json!({})).await;
    let failed = legato.wait_status(&id, "Failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("each"),
        "{failed:#}"
    );

    let (code, body) = legato
        .post(&format!("/api/v1/instances/{id}/redrive"), json!({}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let done = legato.wait_status(&id, "Completed").await;
    let values: Vec<&Value> = done["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["value"])
        .collect();
    assert_eq!(values, [&json!(0), &json!(1), &json!(2)], "{done:#}");
    // "first" and items 0 and 2 ran once; item 1 ran again, in the new
    // execution; the history records the redrive.
    let completed = events(&done, "task_completed");
    let keys: Vec<String> = completed
        .iter()
        .map(|e| {
            let key = &e["event"]["key"];
            format!("{}/{}", key["step"].as_str().unwrap(), key["item"])
        })
        .collect();
    for once in ["first/null", "each/0", "each/2", "each/1", "last/null"] {
        assert_eq!(
            keys.iter().filter(|k| *k == once).count(),
            1,
            "{once} in {keys:?}"
        );
    }
    assert_eq!(events(&done, "redrive_requested").len(), 1);
    let (code, problem) = legato
        .post(&format!("/api/v1/instances/{id}/redrive"), json!({}))
        .await;
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "a completed instance: {problem}"
    );
}

#[tokio::test]
async fn a_redrive_onto_a_later_version_keeps_what_completed_and_runs_the_new_steps() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let first = echo_step("first", &[], json!({"value": "kept"}));
    legato
        .register(json!({"name": "onto", "version": 1, "steps": [
            first.clone(),
            echo_step("second", &["first"], json!({"value": 2, "fail_executions": 9})),
        ], "output": "${{ steps.second.output.value }}"}))
        .await;
    let id = legato.start_instance("onto", json!({})).await;
    legato.wait_status(&id, "Failed").await;
    // Version 2 renames the step that completed; version 3 keeps it, fixes
    // the failing one and adds a step.
    legato
        .register(json!({"name": "onto", "version": 2, "steps": [
            echo_step("renamed", &[], json!({"value": "kept"})),
            echo_step("second", &["renamed"], json!({"value": 2})),
        ]}))
        .await;
    legato
        .register(json!({"name": "onto", "version": 3, "steps": [
            first,
            echo_step("second", &["first"], json!({"value": 2})),
            echo_step("third", &["second"], json!({"value": "${{ steps.first.output.value + '-' + string(steps.second.output.value) }}"})),
        ], "output": "${{ steps.third.output.value }}"}))
        .await;
    let path = format!("/api/v1/instances/{id}/redrive");
    let (code, problem) = legato.post(&path, json!({"version": 2})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("first"),
        "{problem}"
    );
    let (code, problem) = legato.post(&path, json!({"version": 9})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{problem}");
    let (code, body) = legato.post(&path, json!({"version": 3})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(done["output"], json!("kept-2"), "{done:#}");
    assert_eq!(done["version"], json!(3));
    let steps: Vec<String> = events(&done, "task_completed")
        .iter()
        .map(|e| e["event"]["key"]["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["first", "second", "third"],
        "first ran once, before the redrive"
    );
    let redrive = events(&done, "redrive_requested");
    assert_eq!(redrive.len(), 1);
    assert_eq!(redrive[0]["event"]["workflow"]["version"], json!(3));
}

/// The five patterns of "Building effective agents" as shipped in
/// `workflows/patterns/`, all at once, offline with the built-in agents.
#[tokio::test]
async fn the_five_agent_patterns_run_with_the_built_in_agents() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let runs = [
        (
            "pattern-prompt-chaining",
            json!({"request": "add CSV export to billing"}),
        ),
        (
            "pattern-routing",
            json!({"request": "add CSV export to billing"}),
        ),
        (
            "pattern-routing",
            json!({"request": "check last month's totals"}),
        ),
        (
            "pattern-parallelization",
            json!({"change": "add CSV export to billing"}),
        ),
        (
            "pattern-orchestrator-workers",
            json!({"request": "add CSV export to billing and check last month's totals"}),
        ),
        (
            "pattern-evaluator-optimizer",
            json!({"task": "add CSV export to billing", "require": ["tests", "docs"]}),
        ),
        (
            "feature-by-parts",
            json!({"request": "add CSV export to billing and check last month's totals"}),
        ),
    ];
    let mut ids = Vec::new();
    for (workflow, input) in runs {
        ids.push(
            legato
                .start_instance(workflow, json!({ "input": input }))
                .await,
        );
    }
    let mut done = Vec::new();
    for id in &ids {
        done.push(legato.wait_status(id, "Completed").await);
    }
    assert_eq!(done[0]["output"]["finalized"], json!(true), "{:#}", done[0]);
    assert_eq!(done[1]["output"]["route"], "coder", "{:#}", done[1]);
    assert_eq!(step_of(&done[1], "answer")["status"], "Skipped");
    assert_eq!(done[2]["output"]["route"], "data", "{:#}", done[2]);
    assert_eq!(step_of(&done[2], "code")["status"], "Skipped");
    assert_eq!(done[3]["output"]["votes"], json!(3), "{:#}", done[3]);
    assert_eq!(done[3]["output"]["approved"], json!(true));
    assert_eq!(done[4]["output"]["tasks"], json!(2), "{:#}", done[4]);

    // The loop: three rounds, each revising the last with its review.
    let looped = &done[5];
    assert_eq!(
        looped["output"],
        json!({
            "rounds": 3,
            "final": "add CSV export to billing; add tests; add docs",
            "history": ["add tests", "add docs", ""],
            "published": [looped["output"]["published"][0].clone()],
        }),
        "{looped:#}"
    );
    let draft = step_of(looped, "draft");
    assert_eq!(
        (&draft["kind"], &draft["iteration"], &draft["maxIterations"]),
        (&json!("loop"), &json!(3), &json!(5)),
        "{draft:#}"
    );
    let review = step_of(looped, "review");
    assert_eq!(
        (&review["parent"], &review["iteration"]),
        (&json!("draft"), &json!(3))
    );
    // Every round's work is in the history, once, under its iteration.
    let writes: Vec<u64> = events(looped, "task_completed")
        .iter()
        .filter(|e| e["event"]["key"]["step"] == "write")
        .map(|e| e["event"]["key"]["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(writes, [1, 2, 3]);
    let started: Vec<u64> = looped["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["progress"].as_array().unwrap())
        .filter(|p| p["kind"] == "iteration_started")
        .map(|p| p["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(started, [1, 2, 3]);

    // The coding part of the plan, run as an evaluator-optimizer child.
    let parts = &done[6];
    assert_eq!(
        parts["output"],
        json!({"parts": 1, "changes": ["add CSV export to billing; add tests"]}),
        "{parts:#}"
    );
    let child = step_of(parts, "parts")["children"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let child = legato.wait_status(&child, "Completed").await;
    assert_eq!(child["workflow"], "pattern-evaluator-optimizer");
    assert_eq!(child["parent"]["step"], "parts");
}

/// A race goes on with its first branch to complete and cancels the
/// others: a fast agent beats a slow one and a deadline; a deadline beats
/// agents that take too long.
#[tokio::test]
async fn a_race_goes_on_with_the_first_branch_to_complete() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "race", "version": 1, "steps": [
            {"id": "answer", "race": {"steps": [
                echo_step("quick", &[], json!({"value": "quick", "sleep_ms": "${{ input.quick_ms }}"})),
                echo_step("slow", &[], json!({"value": "slow", "sleep_ms": 20000})),
                {"id": "deadline", "timer": {"delay_ms": 1500}}
            ]}},
            echo_step("use", &["answer"], json!({"value": "${{ steps.answer.output.winner }}"})),
        ], "output": "${{ steps.use.output.value }}"}))
        .await;
    let quick = legato
        .start_instance("race", json!({"input": {"quick_ms": 0}}))
        .await;
    let late = legato
        .start_instance("race", json!({"input": {"quick_ms": 20000}}))
        .await;
    let won = legato.wait_status(&quick, "Completed").await;
    assert_eq!(won["output"], "quick", "{won:#}");
    assert_eq!(
        step_of(&won, "answer")["output"],
        json!({"winner": "quick", "output": {"value": "quick", "attempt": 1}})
    );
    for loser in ["slow", "deadline"] {
        assert_eq!(step_of(&won, loser)["status"], "Cancelled", "{loser}");
        assert_eq!(step_of(&won, loser)["parent"], "answer");
    }
    let timed_out = legato.wait_status(&late, "Completed").await;
    assert_eq!(timed_out["output"], "deadline", "{timed_out:#}");
    assert_eq!(step_of(&timed_out, "quick")["status"], "Cancelled");
    // Each branch that lost was told to stop: no result of it recorded.
    for done in [&won, &timed_out] {
        let recorded: Vec<&str> = events(done, "task_completed")
            .iter()
            .map(|e| e["event"]["key"]["step"].as_str().unwrap())
            .collect();
        assert!(!recorded.contains(&"slow"), "{recorded:?}");
    }
}

/// Child workflows: a step (and each item of a `for_each`) runs another
/// registered workflow and completes with its output; a failed child is
/// retried as a fresh run; the parent and its children link to each other;
/// terminating the parent terminates its running children, and purging it
/// purges them.
#[tokio::test]
async fn child_workflows_run_as_steps_and_go_with_their_parent() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({"name": "double", "version": 1,
            "input_schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "number"}}},
            "steps": [echo_step("work", &[], json!({"value": "${{ input.n * 2 }}"}))],
            "output": "${{ steps.work.output.value }}"}))
        .await;
    legato
        .register(json!({"name": "gate", "version": 1, "steps": [
            {"id": "open", "wait_for_event": {"name": "go", "timeout_ms": 1500}},
            echo_step("pass", &["open"], json!({"value": "${{ steps.open.output.word }}"})),
        ], "output": "${{ steps.pass.output.value }}"}))
        .await;
    // A definition naming a workflow nobody registered is refused.
    let (status, problem) = legato
        .put(
            "/api/v1/workflows/orphan",
            json!({"name": "orphan", "version": 1, "steps": [{"id": "x", "workflow": "nowhere"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem:#}");
    assert_eq!(
        problem["errors"][0]["field"], "/steps/0/workflow",
        "{problem:#}"
    );
    legato
        .register(json!({"name": "family", "version": 1, "steps": [
            {"id": "one", "workflow": "double", "input": {"n": "${{ input.n }}"}},
            {"id": "each", "needs": ["one"], "for_each": "${{ input.items }}",
             "workflow": {"name": "double", "version": 1}, "input": {"n": "${{ item }}"}, "max_parallel": 2},
            {"id": "gated", "needs": ["each"], "workflow": "gate",
             "retry": {"max_attempts": 2, "initial_interval_ms": 10}},
        ], "output": {"one": "${{ steps.one.output }}", "each": "${{ steps.each.output }}",
                      "gated": "${{ steps.gated.output }}"}}))
        .await;
    // `::` is kept for children's ids.
    let (status, problem) = legato
        .post(
            "/api/v1/workflows/family/instances",
            json!({"instanceId": "a::b", "input": {"n": 1, "items": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem:#}");
    assert_eq!(problem["errors"][0]["field"], "/instanceId");

    let id = legato
        .start_instance(
            "family",
            json!({"instanceId": "kin", "input": {"n": 5, "items": [1, 2, 3]}}),
        )
        .await;
    // The gate's first run times out and fails; the retry is a new run,
    // which the event opens.
    let first = legato.wait_status("kin::gated.a1", "Failed").await;
    assert_eq!(
        first["parent"],
        json!({"id": "kin", "step": "gated", "attempt": 1}),
        "{first:#}"
    );
    legato.wait_step("kin::gated.a2", "open", "Waiting").await;
    let (status, _) = legato
        .post(
            "/api/v1/instances/kin::gated.a2/events/go",
            json!({"word": "open sesame"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        done["output"],
        json!({"one": 10, "each": [2, 4, 6], "gated": "open sesame"}),
        "{done:#}"
    );
    let one = step_of(&done, "one");
    assert_eq!(
        (&one["kind"], &one["workflow"], &one["children"]),
        (
            &json!("workflow"),
            &json!("double"),
            &json!(["kin::one.a1"])
        ),
        "{one:#}"
    );
    let each = step_of(&done, "each");
    assert_eq!(
        (&each["kind"], &each["children"]),
        (
            &json!("for_each"),
            &json!(["kin::each.0.a1", "kin::each.1.a1", "kin::each.2.a1"])
        ),
        "{each:#}"
    );
    assert_eq!(
        step_of(&done, "gated")["children"],
        json!(["kin::gated.a2"])
    );
    let item = legato.wait_status("kin::each.1.a1", "Completed").await;
    assert_eq!(item["output"], json!(4));
    assert_eq!(item["workflow"], "double");
    assert_eq!(
        item["parent"],
        json!({"id": "kin", "step": "each", "item": 1, "attempt": 1})
    );

    // Terminating a parent terminates the child it waits for.
    legato
        .register(json!({"name": "hold", "version": 1, "steps": [
            {"id": "wait", "wait_for_event": {"name": "never"}}]}))
        .await;
    legato
        .register(json!({"name": "holder", "version": 1, "steps": [
            {"id": "held", "workflow": "hold"}]}))
        .await;
    let holder = legato
        .start_instance("holder", json!({"instanceId": "holder-1"}))
        .await;
    legato
        .wait_step("holder-1::held.a1", "wait", "Waiting")
        .await;
    let (status, _) = legato
        .post(
            &format!("/api/v1/instances/{holder}/terminate"),
            json!({"reason": "enough"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    legato.wait_status(&holder, "Terminated").await;
    let child = legato.wait_status("holder-1::held.a1", "Terminated").await;
    assert_eq!(child["output"], "enough", "{child:#}");

    // Purging a parent purges its children.
    assert_eq!(
        legato.delete(&format!("/api/v1/instances/{id}")).await,
        StatusCode::NO_CONTENT
    );
    for gone in ["kin", "kin::one.a1", "kin::each.2.a1", "kin::gated.a1"] {
        let (status, _) = legato.get_json(&format!("/api/v1/instances/{gone}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    }
}

#[tokio::test]
async fn an_agents_recorded_steps_are_not_run_again_when_its_task_is_retried() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "journaled", "version": 1,
            "steps": [{
                "id": "work", "agent": "echo",
                "input": {"value": 1, "journal": ["plan", "draft"], "fail_attempts": 1},
                "retry": {"max_attempts": 2, "initial_interval_ms": 100}
            }],
            "output": "${{ steps.work.output }}"
        }))
        .await;
    let id = legato.start_instance("journaled", json!({})).await;
    let status = legato.wait_status(&id, "Completed").await;
    // Attempt 1 recorded both steps and then failed; attempt 2 got their
    // values from the journal instead of doing them again.
    assert_eq!(
        status["output"],
        json!({
            "value": 1,
            "attempt": 2,
            "journal": {"plan": {"attempt": 1}, "draft": {"attempt": 1}},
        })
    );
    let recorded: Vec<&str> = events(&status, "task_heartbeat")
        .iter()
        .filter(|e| e["event"]["news"]["kind"] == "journal_recorded")
        .filter_map(|e| e["event"]["news"]["data"]["name"].as_str())
        .collect();
    assert_eq!(recorded, ["plan", "draft"], "{status:#}");
}

#[tokio::test]
async fn an_instance_past_its_budget_is_suspended_until_a_person_raises_it() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let spend = |id: &str, needs: &[&str]| {
        echo_step(
            id,
            needs,
            json!({"value": id, "usage": {"input_tokens": 40, "output_tokens": 20, "cost": 0.5, "model": "m"}}),
        )
    };
    legato
        .register(json!({
            "name": "spender", "version": 1, "budget": {"tokens": 1000},
            "steps": [spend("a", &[]), spend("b", &["a"]), spend("c", &["b"])],
        }))
        .await;
    // A start may ask for less than the definition's ceiling, not more.
    let (status, problem) = legato
        .post(
            "/api/v1/workflows/spender/instances",
            json!({"input": {}, "budget": {"tokens": 5000}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/budget/tokens");
    let id = legato
        .start_instance("spender", json!({"input": {}, "budget": {"tokens": 100}}))
        .await;

    // b takes the sum to 120 of 100: applied, then held before c.
    let held = legato.wait_status(&id, "Suspended").await;
    assert_eq!(step_of(&held, "b")["status"], "Completed");
    assert_eq!(step_of(&held, "c")["status"], "Pending");
    assert_eq!(
        held["usage"],
        json!({"inputTokens": 80, "outputTokens": 40, "cost": 1.0})
    );
    assert_eq!(
        step_of(&held, "a")["usage"],
        json!({"inputTokens": 40, "outputTokens": 20, "cost": 0.5})
    );
    assert_eq!(held["budget"], json!({"tokens": 100}));
    let told: Vec<&Value> = held["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["progress"].as_array().into_iter().flatten())
        .filter(|p| p["kind"] == "instance_suspended")
        .collect();
    assert_eq!(told.len(), 1, "{held:#}");
    assert_eq!(told[0]["data"]["reason"], "budget_exceeded");

    // Resuming needs a budget above what was spent.
    let resume = format!("/api/v1/instances/{id}/resume");
    let (status, problem) = legato.post(&resume, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/budget");
    let (status, _) = legato.post(&resume, json!({"budget": {"tokens": 0}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = legato
        .post(
            &resume,
            json!({"reason": "approved", "budget": {"tokens": 500}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(done["usage"]["inputTokens"], 120);
    assert_eq!(done["budget"], json!({"tokens": 500}));
}

#[tokio::test]
async fn a_task_asks_a_person_and_goes_on_with_the_answer() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    legato
        .register(json!({
            "name": "asking", "version": 1,
            "steps": [{
                "id": "write", "agent": "echo",
                "input": {"value": 1, "journal": ["plan"], "ask": {
                    "name": "scope", "question": "Which accounts?",
                    "schema": {"type": "object", "required": ["accounts"],
                               "properties": {"accounts": {"type": "string"}}}
                }}
            }],
            "output": "${{ steps.write.output }}"
        }))
        .await;
    let id = legato.start_instance("asking", json!({})).await;
    let waiting = legato.wait_step(&id, "write", "Waiting").await;
    let asked: Vec<&Value> = waiting["history"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row["progress"].as_array().into_iter().flatten())
        .filter(|p| p["kind"] == "input_requested")
        .collect();
    assert_eq!(asked.len(), 1, "{waiting:#}");
    assert_eq!(asked[0]["message"], "Which accounts?");
    assert_eq!(asked[0]["data"]["name"], "scope");
    assert_eq!(
        step_of(&waiting, "write")["question"]["name"],
        "scope",
        "{waiting:#}"
    );

    // An answer that does not fit the schema is refused, naming the field.
    let events = format!("/api/v1/instances/{id}/events/scope");
    let (status, problem) = legato.post(&events, json!({"accounts": 7})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "/accounts");
    let (status, _) = legato
        .post(&events, json!({"accounts": "billing only"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = legato.wait_status(&id, "Completed").await;
    // Attempt 2 replayed the journaled step and got the answer.
    assert_eq!(
        done["output"],
        json!({
            "value": 1, "attempt": 2,
            "journal": {"plan": {"attempt": 1}},
            "answer": {"accounts": "billing only"},
        })
    );
}

/// The catalogue's `ask-the-data`: the data agent's loop (offline, the
/// deterministic stand-in for a model) answers in words; a watcher of the
/// stream sees the words as they are written, before the step ends (the
/// same step behind an event, so the stream is open before it runs).
#[tokio::test]
async fn ask_the_data_answers_in_words_streamed_to_watchers() {
    let dir = temp_dir();
    let legato = launch(dir.path());
    let question = json!({"question": "What were last month's invoice totals?"});
    let id = legato
        .start_instance("ask-the-data", json!({"input": question}))
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    let answer = done["output"]["answer"].as_str().unwrap_or_default();
    assert!(answer.starts_with("Across 4 customers"), "{done:#}");
    assert!(
        done["output"]["sql"]
            .as_str()
            .is_some_and(|sql| sql.contains("FROM invoices")),
        "{done:#}"
    );

    legato
        .register(json!({"name": "ask-when-told", "version": 1, "steps": [
            {"id": "go", "wait_for_event": {"name": "go"}},
            {"id": "answer", "needs": ["go"], "agent": "data", "input": question},
        ]}))
        .await;
    let id = legato.start_instance("ask-when-told", json!({})).await;
    legato.wait_step(&id, "go", "Waiting").await;
    let stream = legato.open_stream(&id).await;
    let (status, _) = legato
        .post(&format!("/api/v1/instances/{id}/events/go"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let text = tokio::time::timeout(Duration::from_secs(30), stream.text())
        .await
        .unwrap()
        .unwrap();
    let written: String = text
        .split("\n\n")
        .filter(|frame| frame.contains("event: output"))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter(|piece| piece["call"] == "chat 3")
        .map(|piece| piece["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(written, answer, "{text}");
}
