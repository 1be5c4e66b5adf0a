//! `docker compose up` for real: the project's docker-compose.yml, its
//! images built from the Dockerfile, in a Docker engine. scripts/check-compose
//! prepares the engine and images, chooses free ports and runs this test,
//! which drives the stack only through its published ports: a
//! feature-request approved (its plan fans out as a `for_each`), another
//! rejected and rolled back, one followed over the SignalR hub; then the
//! echo agents and the orchestrator killed mid-run and started again, and
//! every instance still completes with each result recorded once.
//! Ignored in the workspace run: it needs what the script sets up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::hub::{connect, invoke, next};
use support::{Legato, echo_step, events, step_of, temp_dir};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/check-compose"))
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `docker-compose -p <project> <args>` on the project's compose file.
fn compose(args: &[&str]) -> String {
    let output = Command::new("docker-compose")
        .arg("-p")
        .arg(var("LEGATO_COMPOSE_PROJECT"))
        .arg("-f")
        .arg(repo().join("docker-compose.yml"))
        .args(args)
        .output()
        .expect("docker-compose runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "docker-compose {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("/usr/bin/docker")
        .args(args)
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Every container of the project, with its health.
fn health() -> Vec<(String, String)> {
    compose(&["ps", "-q"])
        .lines()
        .filter(|id| !id.is_empty())
        .map(|id| {
            let name = docker(&["inspect", "--format", "{{.Name}}", id]);
            let status = docker(&[
                "inspect",
                "--format",
                "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                id,
            ]);
            (name, status)
        })
        .collect()
}

fn wait_healthy(containers: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let health = health();
        if health.len() == containers && health.iter().all(|(_, s)| s == "healthy") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not all {containers} containers healthy within {limit:?}: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every container `up` starts.
const CONTAINERS: usize = 12;

async fn approve(legato: &Legato, id: &str, data: Value) {
    legato.wait_step(id, "approve", "Waiting").await;
    let (status, body) = legato
        .post(&format!("/api/v1/instances/{id}/events/approval"), data)
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
#[ignore = "needs the Docker engine and images scripts/check-compose prepares"]
async fn docker_compose_up_runs_the_stack_and_survives_kills() {
    let gateway = format!("http://127.0.0.1:{}", var("LEGATO_GATEWAY_PORT"));
    let notifier = format!("http://127.0.0.1:{}", var("LEGATO_NOTIFIER_PORT"));
    let up = Instant::now();
    compose(&["up", "-d", "--no-build", "--scale", "agent-echo=2"]);
    // Eight services (two echo agents), the Python reviewer, RabbitMQ and
    // Azurite.
    let healthy = wait_healthy(CONTAINERS, Duration::from_secs(240));
    println!(
        "{CONTAINERS} containers healthy {healthy:?} after `up` ({:?} in all)",
        up.elapsed()
    );

    let dir = temp_dir();
    let mut legato = Legato::attach(gateway, dir.path());
    legato.stream_base = notifier.clone();

    // The gateway points clients at the notifier's stream and hub.
    let negotiated = legato.negotiate("compose").await;
    let hub = negotiated["url"].as_str().unwrap();
    assert!(
        hub.starts_with(&format!("http://localhost:{}", var("LEGATO_NOTIFIER_PORT"))),
        "negotiate points at the notifier: {negotiated}"
    );
    let request = json!({"request": "add CSV export to billing and check last month totals"});

    // Approved: the plan fans out, the approval lands, it completes; the
    // hub follows it.
    let yes = legato
        .start_instance("feature-request", json!({"input": request}))
        .await;
    let mut socket = connect(&legato, "").await;
    let subscribed = invoke(&mut socket, "1", "Subscribe", json!([yes])).await;
    assert!(subscribed.get("error").is_none(), "{subscribed}");
    approve(&legato, &yes, json!({"approved": true, "by": "compose"})).await;
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kinds.iter().any(|k| k == "instance_completed") {
        assert!(Instant::now() < deadline, "hub saw only {kinds:?}");
        let message = next(&mut socket).await;
        if message["target"] == "progress" {
            kinds.push(message["arguments"][0]["kind"].as_str().unwrap().to_owned());
        }
    }
    for kind in ["instance_started", "approval_requested", "step_completed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in {kinds:?}");
    }
    let done = legato.wait_status(&yes, "Completed").await;
    let work = step_of(&done, "work");
    assert!(
        work["items"]["total"].as_u64().unwrap() >= 2,
        "the plan fanned out: {work}"
    );

    // Rejected: the saga rolls back and the instance fails with the reason.
    let no = legato
        .start_instance("feature-request", json!({"input": request}))
        .await;
    approve(
        &legato,
        &no,
        json!({"approved": false, "reason": "not this quarter"}),
    )
    .await;
    let failed = legato.wait_status(&no, "Failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("not this quarter")
    );
    assert!(
        !events(&failed, "task_completed")
            .iter()
            .filter(|e| e["event"]["key"]["role"] == "compensation")
            .collect::<Vec<_>>()
            .is_empty(),
        "compensations ran: {failed:#}"
    );

    // The Python reviewer (a pull worker in its own container) reviews a
    // change; the workflow and the agent came from the mounted catalogue.
    let reviewed = legato
        .start_instance(
            "reviewed-change",
            json!({"input": {"request": "add CSV export", "change": "add CSV export to billing (TODO: totals)"}}),
        )
        .await;
    let reviewed = legato.wait_status(&reviewed, "Completed").await;
    assert_eq!(
        reviewed["output"],
        json!({"approved": false, "comments": ["unfinished: contains TODO"]}),
        "{reviewed:#}"
    );
    let (_, reviewer) = legato.get_json("/api/v1/agents/reviewer").await;
    assert_eq!(reviewer["kind"], "pull", "{reviewer}");

    // Kill the echo agents and the orchestrator mid-run, start them again.
    legato
        .register(json!({"name": "steady", "version": 1, "steps": [
            echo_step("a", &[], json!({"value": 1, "sleep_ms": 800})),
            {"id": "each", "needs": ["a"], "for_each": "${{ [1, 2, 3] }}", "agent": "echo",
             "input": {"value": "${{ item }}", "sleep_ms": 800}},
            echo_step("join", &["each"], json!({"value": "${{ steps.each.output }}"})),
        ], "output": "${{ steps.join.output.value }}"}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(legato.start_instance("steady", json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    compose(&["kill", "agent-echo", "orchestrator"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    compose(&["start", "agent-echo", "orchestrator"]);
    for id in &ids {
        let status = legato
            .wait_for(id, "Completed", Duration::from_secs(120), |s| {
                s["runtimeStatus"] == "Completed"
            })
            .await;
        assert_eq!(
            events(&status, "task_completed").len(),
            5,
            "{id}: each of the five results recorded once"
        );
    }
    let healthy = wait_healthy(CONTAINERS, Duration::from_secs(120));
    println!("all healthy again {healthy:?} after the kills; every instance completed once");
    compose(&["down", "-v"]);
}
