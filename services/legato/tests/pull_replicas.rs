//! Pull workers across gateway replicas, every service its own process over
//! RabbitMQ and Azurite: a gateway replica killed with -9 while a worker
//! holds a task it handed out, and while its feeder holds another, loses
//! nothing: the held task is completed through the other replica (any
//! replica answers any token) and the other comes back from the broker to
//! the surviving replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Service, client_for, echo_step, services_env, step_of, temp_dir};

async fn poll(gateway: &support::Legato, wait_ms: u64) -> Vec<Value> {
    let (status, body) = gateway
        .post(
            "/api/v1/tasks/poll",
            json!({"agents": ["reviewer"], "maxTasks": 1, "waitMs": wait_ms}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["tasks"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_replica_killed_mid_poll_loses_no_task() {
    let dir = temp_dir();
    let env = services_env(dir.path());
    let _services: Vec<Service> = ["orchestrator", "notifier", "agent-echo"]
        .iter()
        .map(|name| Service::start(name, dir.path(), &env))
        .collect();
    let a = Service::start("gateway", dir.path(), &env);
    let b = Service::start("gateway", dir.path(), &env);
    let (ga, gb) = (client_for(&a, dir.path()), client_for(&b, dir.path()));

    let (status, body) = ga
        .put(
            "/api/v1/agents/reviewer",
            json!({"kind": "pull", "leaseMs": 60000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    ga.register(json!({"name": "reviewed", "version": 1, "steps": [
        echo_step("draft", &[], json!({"value": "${{ input.n }}"})),
        {"id": "review", "needs": ["draft"], "agent": "reviewer", "input": {"n": "${{ input.n }}"}},
    ]}))
    .await;

    // A worker polls replica B; two instances start.
    let held = tokio::spawn(async move {
        let tasks = poll(&gb, 20_000).await;
        (gb, tasks)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = ga
        .start_instance("reviewed", json!({"input": {"n": 1}}))
        .await;
    let second = ga
        .start_instance("reviewed", json!({"input": {"n": 2}}))
        .await;
    let (_gb, tasks) = held.await.unwrap();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let held = tasks[0].clone();

    // B dies holding what its feeder took beyond the task it handed out.
    b.kill();

    // The other task comes to replica A.
    let mut other = None;
    for _ in 0..12 {
        if let Some(task) = poll(&ga, 5_000).await.pop() {
            other = Some(task);
            break;
        }
    }
    let other = other.expect("the other task reached the surviving replica");
    let instances = [held["instanceId"].clone(), other["instanceId"].clone()];
    assert!(
        instances.contains(&json!(first)) && instances.contains(&json!(second)),
        "{instances:?}"
    );

    // The task B handed out is completed through A: any replica answers.
    for task in [&held, &other] {
        let token = task["token"].as_str().unwrap();
        let (status, body) = ga
            .post(
                &format!("/api/v1/tasks/{token}/complete"),
                json!({"output": {"n": task["input"]["n"]}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for (id, n) in [(&first, 1), (&second, 2)] {
        let done = ga.wait_status(id, "Completed").await;
        assert_eq!(step_of(&done, "review")["output"], json!({"n": n}));
        assert_eq!(
            step_of(&done, "review")["attempts"],
            1,
            "no retry was needed"
        );
    }
}
