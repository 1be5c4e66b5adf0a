//! Kill -9 at random moments: one of two orchestrator replicas, one of two
//! echo agent replicas and the gateway, at least 20 kills spread over 50
//! running instances, each killed service restarted. Every instance
//! completes, every step's result is recorded exactly once, and none is
//! left stuck. Each bus's test file runs it with its own settings
//! (`e2e/main.rs` over RabbitMQ, `per_service_servicebus.rs` over the
//! Service Bus stand-in), state in Azurite either way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use legato_bus::Bus;
use serde_json::json;

use crate::support::{Legato, Service, echo_step, events, step_of, temp_dir};

/// A small deterministic generator, so a failing run can be replayed from
/// the seed it prints.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

/// A generator seeded from the clock, and the seed (printed, to replay a
/// failing run).
fn seeded() -> (u64, Lcg) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("chaos seed {seed}");
    (seed, Lcg(seed))
}

/// `env` for a gateway on a free port, and the port.
fn on_a_free_port(env: &[(String, String)]) -> (u16, Vec<(String, String)>) {
    let port = free_port();
    let mut gateway = env.to_vec();
    gateway.push(("LEGATO__HTTP__PORT".into(), port.to_string()));
    (port, gateway)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The run, with every process given `settings(data_dir)`.
pub async fn twenty_kills_during_fifty_instances(
    settings: impl FnOnce(&Path) -> Vec<(String, String)>,
) {
    let (seed, mut rng) = seeded();
    let dir = temp_dir();
    let env = settings(dir.path());
    let (gateway_port, gateway_env) = on_a_free_port(&env);
    let start = |name: &str| {
        let env = if name == "gateway" {
            &gateway_env
        } else {
            &env
        };
        Service::start(name, dir.path(), env)
    };
    let mut orchestrator = start("orchestrator");
    // A second replica that is never killed shares the orchestrator queues.
    let _orchestrator_b = start("orchestrator");
    let mut gateway = start("gateway");
    let mut echo_a = start("agent-echo");
    let _echo_b = start("agent-echo");
    let legato = Legato::attach(format!("http://127.0.0.1:{gateway_port}"), dir.path());
    legato
        .register(json!({"name": "chaos-child", "version": 1, "steps": [
            echo_step("inner", &[], json!({"value": "${{ input.value }}", "sleep_ms": "${{ input.ms }}"})),
        ], "output": "${{ steps.inner.output.value }}"}))
        .await;
    legato
        .register(json!({"name": "chaos", "version": 1, "steps": [
            echo_step("a", &[], json!({"value": 1, "sleep_ms": "${{ input.ms }}"})),
            echo_step("b", &[], json!({"value": 2, "sleep_ms": "${{ input.ms }}"})),
            {"id": "each", "needs": ["a", "b"], "for_each": "${{ [1, 2, 3] }}", "agent": "echo",
             "input": {"value": "${{ item }}", "sleep_ms": "${{ input.ms }}"}, "max_parallel": 2},
            {"id": "kid", "needs": ["a"], "workflow": "chaos-child",
             "input": {"value": 3, "ms": "${{ input.ms }}"}},
            echo_step("join", &["each", "kid"], json!({"value": "${{ steps.a.output.value + steps.b.output.value + steps.kid.output - 3 }}"})),
        ], "output": "${{ steps.join.output.value }}"}))
        .await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let ms = 200 + rng.next(600);
        ids.push(
            legato
                .start_instance(
                    "chaos",
                    json!({"input": {"ms": ms}, "instanceId": format!("chaos-{i}")}),
                )
                .await,
        );
    }

    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while kills < 21 {
        tokio::time::sleep(Duration::from_millis(100 + rng.next(300))).await;
        match rng.next(3) {
            0 => {
                orchestrator.kill();
                orchestrator = start("orchestrator");
            }
            1 => {
                echo_a.kill();
                echo_a = start("agent-echo");
            }
            _ => {
                gateway.kill();
                gateway = start("gateway");
            }
        }
        kills += 1;
        assert!(Instant::now() < deadline, "the kills took too long");
    }
    let finish_by = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let status = loop {
            let status = legato.status(id).await;
            if status["runtimeStatus"] == "Completed" {
                break status;
            }
            if Instant::now() > finish_by {
                let dead = dead_letters(&env, Some(&legato)).await;
                panic!("seed {seed}: {id} not Completed: {status:#}\ndead letters: {dead:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status["output"], json!(3), "{id}");
        // Exactly one accepted result per task: a, b, three items, the
        // child run, join.
        let completed = events(&status, "task_completed");
        assert_eq!(completed.len(), 7, "{id}: {completed:#?}");
        let mut keys: Vec<String> = completed
            .iter()
            .map(|e| e["event"]["key"].to_string())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 7, "{id}: a step's result was recorded twice");
        for step in ["a", "b", "kid", "join"] {
            assert_eq!(step_of(&status, step)["status"], "Completed", "{id}");
        }
        // One child run, started once, its own work recorded once.
        let kid = format!("{id}::kid.a1");
        assert_eq!(step_of(&status, "kid")["children"], json!([kid]), "{id}");
        let child = legato.status(&kid).await;
        assert_eq!(child["runtimeStatus"], "Completed", "{child:#}");
        assert_eq!(events(&child, "task_completed").len(), 1, "{child:#}");
        assert_eq!(events(&child, "started").len(), 1, "{child:#}");
    }
    let (_, running) = legato
        .get_json("/api/v1/instances?status=Running&workflow=chaos")
        .await;
    assert_eq!(running["items"], json!([]), "no instance is left running");
    let dead = dead_letters(&env, Some(&legato)).await;
    assert!(dead.is_empty(), "seed {seed}: dead-lettered: {dead:#?}");
    drop(gateway);
}

/// The run's bus, as its settings name it, to read its dead letters.
pub(crate) async fn bus_of(env: &[(String, String)]) -> Arc<dyn Bus> {
    use legato_bus::{
        RabbitMqBus, RabbitMqOptions, ServiceBusBus, ServiceBusConnection, ServiceBusOptions,
    };
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} is not set"))
    };
    let prefix = setting("LEGATO__BUS__PREFIX");
    match setting("LEGATO__BUS__KIND").as_str() {
        "rabbitmq" => {
            let options = RabbitMqOptions {
                prefix,
                queue_expiry: Some(Duration::from_secs(120)),
                ..RabbitMqOptions::default()
            };
            let bus = RabbitMqBus::connect("amqp://guest:guest@127.0.0.1:5672/%2f", options);
            Arc::new(bus.await.unwrap())
        }
        "servicebus" => {
            let connection = ServiceBusConnection::from_connection_string(&setting(
                "LEGATO__BUS__CONNECTION_STRING",
            ))
            .unwrap();
            let options = ServiceBusOptions {
                prefix,
                endpoint: Some(setting("LEGATO__BUS__ENDPOINT")),
                ..ServiceBusOptions::default()
            };
            Arc::new(ServiceBusBus::connect(connection, options).await.unwrap())
        }
        other => panic!("no dead-letter reader for bus {other}"),
    }
}

/// What the run's consumers dead-lettered: what is still on the broker,
/// and what the gateway's keeper parked (read through `legato`'s API).
pub(crate) async fn dead_letters(env: &[(String, String)], legato: Option<&Legato>) -> Vec<String> {
    use legato_contracts::Topic;
    let bus = bus_of(env).await;
    let mut found = Vec::new();
    if let Some(legato) = legato {
        let (_, page) = legato.get_json("/api/v1/dead-letters").await;
        for letter in page["items"].as_array().into_iter().flatten() {
            found.push(format!("parked: {letter}"));
        }
    }
    for (topic, group) in [
        (Topic::AgentTasks, "agent-echo"),
        (Topic::AgentResults, "orchestrator"),
        (Topic::Commands, "orchestrator"),
    ] {
        let mut dead = bus.dead_letters(topic, group).await.unwrap();
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(300), dead.next()).await {
            found.push(format!(
                "{}/{group}: {} {:?} {}",
                topic.as_str(),
                d.message_id,
                d.headers.get(legato_bus::DEAD_LETTER_REASON),
                String::from_utf8_lossy(&d.body)
            ));
            let _ = d.nack().await;
        }
    }
    found
}

/// `instances` tallies of `times` increments each on one entity, while one
/// of two orchestrator replicas is killed with `-9` (and restarted) every
/// second or so: the entity ends at exactly `instances * times`, with as
/// many operations applied, and nothing is dead-lettered.
pub async fn increments_survive_orchestrator_kills(
    settings: impl FnOnce(&Path) -> Vec<(String, String)>,
    instances: usize,
    times: u32,
) {
    let (seed, mut rng) = seeded();
    let dir = temp_dir();
    let env = settings(dir.path());
    let (gateway_port, gateway_env) = on_a_free_port(&env);
    let mut orchestrator = Service::start("orchestrator", dir.path(), &env);
    let _orchestrator_b = Service::start("orchestrator", dir.path(), &env);
    let _gateway = Service::start("gateway", dir.path(), &gateway_env);
    let legato = Legato::attach(format!("http://127.0.0.1:{gateway_port}"), dir.path());
    legato.register(crate::entities::tally()).await;
    let ids = crate::entities::start_tallies(&legato, "chaos", instances, times).await;
    let total = instances as u64 * u64::from(times);
    let path = "/api/v1/entities/counter/chaos";
    let applied = || async {
        let (_, entity) = legato.get_json(path).await;
        entity["operations"].as_u64().unwrap_or(0)
    };
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while applied().await < total * 9 / 10 && kills < 20 {
        tokio::time::sleep(Duration::from_millis(500 + rng.next(1000))).await;
        orchestrator.kill();
        orchestrator = Service::start("orchestrator", dir.path(), &env);
        kills += 1;
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the kills took too long"
        );
    }
    assert!(kills >= 2, "seed {seed}: only {kills} kills before the end");
    for id in &ids {
        legato
            .wait_for(id, "completed", Duration::from_secs(300), |s| {
                s["runtimeStatus"] == "Completed"
            })
            .await;
    }
    let (_, entity) = legato.get_json(path).await;
    assert_eq!(entity["state"], json!(total), "seed {seed}: {entity:#}");
    assert_eq!(
        entity["operations"],
        json!(total),
        "seed {seed}: each increment applied once"
    );
    let dead = dead_letters(&env, Some(&legato)).await;
    assert!(dead.is_empty(), "seed {seed}: dead-lettered: {dead:#?}");
}
