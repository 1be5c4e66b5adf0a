//! Process-per-service: every service its own process (`legato run
//! <service>`), talking only over RabbitMQ, keeping state in Azurite.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    AGENTS, Service, client_for, echo_step, events, services_env, step_of, temp_dir,
};

#[tokio::test]
async fn the_services_run_a_saga_over_rabbitmq_and_survive_a_killed_orchestrator() {
    let dir = temp_dir();
    let mut env = services_env(dir.path());
    // As in docker-compose.yml: the gateway registers the catalogue.
    let catalogue = concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows");
    env.push(("LEGATO__GATEWAY__WORKFLOWS_DIR".into(), catalogue.into()));
    let mut orchestrator = Some(Service::start("orchestrator", dir.path(), &env));
    let gateway = Service::start("gateway", dir.path(), &env);
    let _notifier = Service::start("notifier", dir.path(), &env);
    // Two echo replicas share the echo queue.
    let _agents: Vec<Service> = AGENTS
        .iter()
        .chain(["agent-echo"].iter())
        .map(|a| Service::start(a, dir.path(), &env))
        .collect();
    let legato = client_for(&gateway, dir.path());

    let id = legato
        .start_instance(
            "feature-request",
            json!({"input": {"request": "add CSV export to billing and check last month totals"}}),
        )
        .await;
    legato.wait_step(&id, "approve", "Waiting").await;
    legato
        .post(
            &format!("/api/v1/instances/{id}/events/approval"),
            json!({"approved": true}),
        )
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(done["output"]["finalized"].as_array().unwrap().len(), 1);

    // Kill the orchestrator while slow steps run; a new one finishes them.
    legato
        .register(json!({"name": "slow-fan", "version": 1, "steps": [
            echo_step("a", &[], json!({"value": 1, "sleep_ms": 1500})),
            echo_step("b", &[], json!({"value": 2, "sleep_ms": 1500})),
            echo_step("join", &["a", "b"], json!({"value": "${{ steps.a.output.value + steps.b.output.value }}"})),
        ], "output": "${{ steps.join.output.value }}"}))
        .await;
    let ids: Vec<String> =
        futures::future::join_all((0..5).map(|_| legato.start_instance("slow-fan", json!({}))))
            .await;
    for id in &ids {
        legato.wait_step(id, "a", "Running").await;
    }
    orchestrator.take().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _orchestrator = Service::start("orchestrator", dir.path(), &env);
    for id in &ids {
        let status = legato.wait_status(id, "Completed").await;
        assert_eq!(status["output"], json!(3));
        for step in ["a", "b", "join"] {
            assert_eq!(
                step_of(&status, step)["attempts"],
                1,
                "{id}: {step} dispatched once"
            );
        }
        assert_eq!(
            events(&status, "task_completed").len(),
            3,
            "{id}: each result recorded once"
        );
    }

    // Each agent process reports what it ran; the registry adds the two
    // echo replicas up.
    let echo = legato
        .agent_when("echo", |a| a["completed"].as_u64() >= Some(15))
        .await;
    assert!(echo["p50Ms"].as_f64().is_some(), "{echo:#}");
    legato
        .agent_when("planner", |a| a["completed"].as_u64() >= Some(1))
        .await;
}

/// Undecodable bytes and a message type the orchestrator does not take land
/// in its dead-letter queue with the reason, and the queue keeps flowing.
#[tokio::test]
async fn poison_commands_are_dead_lettered_with_their_reason() {
    use legato_bus::{Bus, OutgoingMessage, RabbitMqBus, RabbitMqOptions};
    use legato_contracts::Topic;

    let dir = temp_dir();
    let mut env = services_env(dir.path());
    let catalogue = concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows");
    env.push(("LEGATO__GATEWAY__WORKFLOWS_DIR".into(), catalogue.into()));
    let _orchestrator = Service::start("orchestrator", dir.path(), &env);
    let gateway = Service::start("gateway", dir.path(), &env);
    let _echo = Service::start("agent-echo", dir.path(), &env);
    let legato = client_for(&gateway, dir.path());

    let prefix = env
        .iter()
        .find(|(k, _)| k == "LEGATO__BUS__PREFIX")
        .unwrap()
        .1
        .clone();
    let bus = RabbitMqBus::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        RabbitMqOptions {
            prefix,
            queue_expiry: Some(Duration::from_secs(120)),
            ..RabbitMqOptions::default()
        },
    )
    .await
    .unwrap();
    let poison = |id: &str, body: &'static [u8]| OutgoingMessage {
        id: id.to_owned(),
        body: bytes::Bytes::from_static(body),
        headers: Default::default(),
    };
    bus.publish(Topic::Commands, "x", poison("poison-1", b"\x00not json"))
        .await
        .unwrap();
    let progress = br#"{"specversion":"1.0","id":"poison-2","source":"/test","type":"legato.progress.v1","subject":"x","time":"2026-11-26T12:00:00Z","data":{"seq":1,"kind":"step_started","status":"Running"}}"#;
    bus.publish(Topic::Commands, "x", poison("poison-2", progress))
        .await
        .unwrap();

    // Work behind the poison still flows.
    let id = legato
        .start_instance("fan-out-fan-in", json!({"input": {"value": 1}}))
        .await;
    legato.wait_status(&id, "Completed").await;

    // The gateway's keeper parks the dead letters, with their reasons.
    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let (_, page) = legato.get_json("/api/v1/dead-letters?topic=commands").await;
        for letter in page["items"].as_array().into_iter().flatten() {
            assert_eq!(letter["group"], "orchestrator", "{letter}");
            reasons.insert(
                letter["messageId"].as_str().unwrap().to_owned(),
                letter["reason"].as_str().unwrap().to_owned(),
            );
        }
        if reasons.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reasons["poison-1"].contains("not a CloudEvents JSON envelope"),
        "{reasons:?}"
    );
    assert!(
        reasons["poison-2"].contains("legato.progress.v1"),
        "{reasons:?}"
    );
}
