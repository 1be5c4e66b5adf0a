//! RabbitMQ restarted (`rabbitmqctl stop_app` / `start_app`) in the middle
//! of 20 running instances, state in Azurite: every one completes, each
//! result recorded once.
//! Ignored in the workspace run: `scripts/test` runs it first, before other
//! suites leave hundreds of quorum queues for the broker to recover or
//! expire, and with no other test sharing the outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{Legato, azure_store_env, echo_step, events, temp_dir};

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(command)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {command}");
}

#[tokio::test]
#[ignore = "restarts the shared broker: scripts/test runs it first, with the broker to itself"]
async fn instances_finish_across_a_broker_restart() {
    let dir = temp_dir();
    let prefix = format!("restart-{}.", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("LEGATO__BUS__KIND".to_owned(), "rabbitmq".to_owned()),
        ("LEGATO__BUS__PREFIX".to_owned(), prefix),
        (
            "LEGATO__BUS__QUEUE_EXPIRY_MS".to_owned(),
            "120000".to_owned(),
        ),
    ];
    env.extend(azure_store_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let legato = Legato::start_with_env(dir.path(), &env);
    legato
        .register(json!({"name": "steady", "version": 1, "steps": [
            echo_step("a", &[], json!({"value": 1, "sleep_ms": 700})),
            echo_step("b", &["a"], json!({"value": 2, "sleep_ms": 700})),
            echo_step("c", &["b"], json!({"value": 3, "sleep_ms": 700})),
        ], "output": "${{ steps.c.output.value }}"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(legato.start_instance("steady", json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl("start_app");
    })
    .await
    .unwrap();
    for id in &ids {
        let status = legato
            .wait_for(id, "Completed", Duration::from_secs(90), |s| {
                s["runtimeStatus"] == "Completed"
            })
            .await;
        assert_eq!(status["output"], json!(3));
        assert_eq!(
            events(&status, "task_completed").len(),
            3,
            "{id}: each result once"
        );
    }
}
