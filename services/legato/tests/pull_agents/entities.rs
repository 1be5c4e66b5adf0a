//! Durable entities from a pull worker: read the state as committed, and
//! apply an operation once per task and name, its answer kept in the
//! task's journal, in the task's tenant.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::support::{Legato, temp_dir};
use super::{take_one, task_call};

async fn call(legato: &Legato, task: &Value, name: &str, operation: Value) -> (StatusCode, Value) {
    task_call(
        legato,
        task,
        "entities/customer/jane@example.com",
        json!({"name": name, "operation": operation}),
    )
    .await
}

#[tokio::test]
async fn a_pull_workers_entity_calls_apply_once_per_task_and_name() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let (status, _) = legato
        .put("/api/v1/agents/concierge", json!({"kind": "pull"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    legato
        .register(json!({"name": "visit", "version": 1, "steps": [
            {"id": "greet", "agent": "concierge", "input": {},
             "retry": {"max_attempts": 2, "initial_interval_ms": 50}}
        ]}))
        .await;
    let id = legato.start_instance("visit", json!({})).await;
    let task = take_one(&legato, "concierge").await;
    let token = task["token"].as_str().unwrap().to_owned();
    let at = |path: &str| format!("/api/v1/tasks/{token}/entities/customer/jane@example.com{path}");
    assert_eq!(
        legato.get_json(&at("?path=/visits")).await,
        (StatusCode::OK, json!({"value": null}))
    );

    let bump = json!({"op": "increment", "path": "/visits"});
    assert_eq!(
        call(&legato, &task, "visit", bump.clone()).await,
        (StatusCode::OK, json!({"answer": 1}))
    );
    assert_eq!(
        call(&legato, &task, "visit", bump.clone()).await,
        (StatusCode::OK, json!({"answer": 1})),
        "the same name again: applied once, the first answer"
    );
    let overdraw = json!({"op": "increment", "path": "/credit", "by": -1, "min": 0});
    let (status, failed) = call(&legato, &task, "overdraw", overdraw).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("below the minimum 0"),
        "{failed}"
    );
    assert_eq!(
        legato.get_json(&at("")).await.1,
        json!({"value": {"visits": 1}})
    );

    // Bad input is named.
    for (body, field) in [
        (json!({"name": "", "operation": bump}), "/name"),
        (
            json!({"name": "x", "operation": {"op": "teleport"}}),
            "/operation/op",
        ),
        (
            json!({"name": "x", "operation": {"op": "read"}}),
            "/operation/op",
        ),
        (
            json!({"name": "x", "operation": {"op": "increment", "by": "one"}}),
            "/operation/by",
        ),
    ] {
        let (status, problem) = task_call(
            &legato,
            &task,
            "entities/customer/jane@example.com",
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert!(problem.to_string().contains(field), "{body}: {problem:#}");
    }

    // The attempt fails; the next one's call under the same name gets the
    // first answer (from the journal) and applies nothing.
    let (status, _) = task_call(
        &legato,
        &task,
        "fail",
        json!({"message": "lost", "retryable": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let retry = take_one(&legato, "concierge").await;
    assert_eq!(retry["attempt"], 2);
    assert_eq!(
        call(&legato, &retry, "visit", bump).await,
        (StatusCode::OK, json!({"answer": 1}))
    );
    let (status, _) = task_call(&legato, &retry, "complete", json!({"output": {}})).await;
    assert_eq!(status, StatusCode::OK);
    legato.wait_status(&id, "Completed").await;
    let (_, entity) = legato
        .get_json("/api/v1/entities/customer/jane@example.com")
        .await;
    assert_eq!(entity["state"], json!({"visits": 1}));
    assert_eq!(
        entity["operations"], 2,
        "the visit and the failed overdraw: {entity:#}"
    );

    // The attempt is over: its token may no longer operate.
    let (status, _) = call(&legato, &retry, "late", json!({"op": "remove"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
}
