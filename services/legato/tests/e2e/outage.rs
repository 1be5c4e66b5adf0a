//! The store going away in the middle of a run: Azurite stopped for 30 s
//! under 50 running instances (process per service over RabbitMQ), and
//! `legato up`'s SQLite database locked against writes for a while. The
//! services keep running and say they are not ready, the gateway answers
//! 503 with `Retry-After` (never 500), and once the store is back every
//! instance completes with each step's result recorded once and nothing
//! dead-lettered.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use legato::chaos::Azurite;

use crate::chaos::dead_letters;
use crate::support::{Legato, Service, echo_step, events, services_env, temp_dir};

/// A workflow whose instances are mid-way when the store goes.
fn three_steps() -> Value {
    json!({"name": "outage", "version": 1, "steps": [
        echo_step("a", &[], json!({"value": 1, "sleep_ms": "${{ input.ms }}"})),
        echo_step("b", &["a"], json!({"value": 2, "sleep_ms": "${{ input.ms }}"})),
        echo_step("c", &["b"], json!({"value": 3, "sleep_ms": "${{ input.ms }}"})),
    ], "output": "${{ steps.c.output.value }}"})
}

/// Waits for `path` on `base` to answer `status` (a liveness bound).
async fn wait_for_answer(base: &str, path: &str, status: StatusCode, limit: Duration) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        let answer = match client.get(format!("{base}{path}")).send().await {
            Ok(response) if response.status() == status => return,
            Ok(response) => format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{base}{path} did not answer {status} within {limit:?}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the gateway answers while the store is away: 503 with
/// `Retry-After`, for a read and for a start.
async fn refused_politely(legato: &Legato, id: &str) {
    let read = legato
        .client
        .get(legato.url(&format!("/api/v1/instances/{id}")))
        .send()
        .await
        .unwrap();
    let start = legato
        .client
        .post(legato.url("/api/v1/workflows/outage/instances"))
        .json(&json!({"input": {"ms": 10}}))
        .send()
        .await
        .unwrap();
    for (what, response) in [("read", read), ("start", start)] {
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
        assert!(retry_after.is_some(), "{what} without Retry-After: {body}");
        assert!(body.contains("unavailable"), "{what}: {body}");
    }
}

/// Every instance completes, each of its three results recorded once.
async fn all_complete_once(legato: &Legato, ids: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    for id in ids {
        let status = loop {
            let status = legato.status(id).await;
            if status["runtimeStatus"] == "Completed" {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not Completed after the outage: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status["output"], json!(3), "{id}");
        let completed = events(&status, "task_completed");
        let mut keys: Vec<String> = completed
            .iter()
            .map(|e| e["event"]["key"].to_string())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(
            (completed.len(), keys.len()),
            (3, 3),
            "{id}: {completed:#?}"
        );
        for step in status["steps"].as_array().unwrap() {
            assert_eq!(step["attempts"], 1, "{id}: {step}");
        }
    }
}

#[tokio::test]
async fn a_locked_sqlite_database_pauses_the_work_and_loses_nothing() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    legato.register(three_steps()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            legato
                .start_instance("outage", json!({"input": {"ms": 300}}))
                .await,
        );
    }
    legato.wait_step(&ids[0], "a", "Completed").await;

    // Another process takes the database's write lock (a backup, a
    // sqlite3 shell left in a transaction): legato can read, not write.
    // File modes would not do: the tests run as root, and the services
    // hold the file open.
    let locker = rusqlite::Connection::open(dir.path().join("legato.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_for_answer(
        &legato.base,
        "/readyz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(30),
    )
    .await;
    let start = legato
        .client
        .post(legato.url("/api/v1/workflows/outage/instances"))
        .json(&json!({"input": {"ms": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    wait_for_answer(
        &legato.base,
        "/readyz",
        StatusCode::OK,
        Duration::from_secs(30),
    )
    .await;
    all_complete_once(&legato, &ids, Duration::from_secs(120)).await;
}

/// Azurite's Table service as `scripts/test` installs it.
fn azurite_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/node/node_modules/.bin/azurite-table");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs Azurite",
        path.display()
    );
    path
}

#[tokio::test]
async fn thirty_seconds_without_azurite_under_fifty_running_instances() {
    let dir = temp_dir();
    let mut azurite = Azurite::start(&azurite_binary(), &dir.path().join("azurite")).unwrap();
    let mut env = services_env(dir.path());
    for (key, value) in &mut env {
        if key == "LEGATO__STORE__CONNECTION_STRING" {
            *value = azurite.connection_string();
        }
    }
    let orchestrator = Service::start("orchestrator", dir.path(), &env);
    let gateway = Service::start("gateway", dir.path(), &env);
    let notifier = Service::start("notifier", dir.path(), &env);
    let _echo = Service::start("agent-echo", dir.path(), &env);
    let legato = Legato::attach(gateway.base.clone(), dir.path());
    legato.register(three_steps()).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let ms = 200 + (i % 5) * 150;
        ids.push(
            legato
                .start_instance("outage", json!({"input": {"ms": ms}}))
                .await,
        );
    }
    legato.wait_step(&ids[0], "a", "Completed").await;

    let stopped = Instant::now();
    azurite.stop();
    // Every service keeps running and says it should not get work.
    for service in [&gateway, &orchestrator, &notifier] {
        wait_for_answer(
            &service.base,
            "/readyz",
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        )
        .await;
        wait_for_answer(
            &service.base,
            "/healthz",
            StatusCode::OK,
            Duration::from_secs(5),
        )
        .await;
    }
    refused_politely(&legato, &ids[0]).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    azurite.resume().unwrap();

    for service in [&gateway, &orchestrator, &notifier] {
        wait_for_answer(
            &service.base,
            "/readyz",
            StatusCode::OK,
            Duration::from_secs(60),
        )
        .await;
    }
    all_complete_once(&legato, &ids, Duration::from_secs(180)).await;
    let dead = dead_letters(&env, Some(&legato)).await;
    assert!(dead.is_empty(), "dead-lettered: {dead:#?}");
}
