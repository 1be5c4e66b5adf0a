//! A ten-turn model-and-tool loop in the Rust runtime (`ctx.chat`,
//! `ctx.tool`) against the OpenAI-compatible stand-in, its worker process
//! killed with SIGKILL at turn seven: after a new worker process takes
//! the redelivered task (over RabbitMQ, journal in a SQLite file), no model
//! call and no tool side effect happened twice, and the result is an
//! uninterrupted run's. The worker processes are this test binary run
//! again with `LEGATO_LOOP_WORKER` set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use legato_agent::llm::{ChatClient, LlmSettings, arguments};
use legato_agent::{Agent, Task, TaskContext, Worker, WorkerSettings};
use legato_bus::{Bus, RabbitMqBus, RabbitMqOptions, SubscriptionSpec};
use legato_contracts::{
    AgentName, Envelope, InstanceId, Payload, StepId, TaskDispatched, TaskError, TaskKey, TaskRole,
    Topic, WorkflowName,
};
use legato_model_standin::ModelStandIn;
use legato_service::Shutdown;
use legato_store::SqliteStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TURNS: u32 = 10;
const AGENT: &str = "tool-loop";

/// What a worker process is told through `LEGATO_LOOP_WORKER`.
#[derive(Serialize, Deserialize)]
struct Setup {
    prefix: String,
    store: String,
    model: String,
    die_at: Option<u32>,
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "add",
        "description": "Doubles n, with a side effect the stand-in counts.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}])
}

struct ToolLoop {
    name: AgentName,
    client: ChatClient,
    effects: String,
    die_at: Option<u32>,
}

#[async_trait]
impl Agent for ToolLoop {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let mut messages =
            vec![json!({"role": "user", "content": format!("loop:{TURNS} for {}", task.instance)})];
        for turn in 1..=TURNS {
            let reply = ctx.chat(&self.client, &messages, Some(&tools())).await?;
            if reply.tool_calls.is_empty() {
                return Ok(json!({"answer": reply.content, "turns": turn}));
            }
            messages.push(reply.to_message());
            for call in &reply.tool_calls {
                let doubled: i64 = ctx
                    .tool(call, || async {
                        let n = arguments(call).map_err(|e| TaskError {
                            message: e,
                            retryable: false,
                        })?["n"]
                            .as_i64()
                            .unwrap_or_default();
                        reqwest::Client::new()
                            .post(&self.effects)
                            .json(&json!({"key": format!("{}/{}", task.instance, call.id)}))
                            .send()
                            .await
                            .and_then(reqwest::Response::error_for_status)
                            .map_err(|e| TaskError {
                                message: e.to_string(),
                                retryable: true,
                            })?;
                        Ok(n * 2)
                    })
                    .await?;
                messages.push(json!({"role": "tool", "tool_call_id": call.id, "content": doubled.to_string()}));
            }
            if Some(turn) == self.die_at && task.attempt == 1 {
                println!("DYING {} {turn}", task.instance);
                let pid = std::process::id().to_string();
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
        Err(TaskError {
            message: format!("no answer in {TURNS} turns"),
            retryable: false,
        })
    }
}

fn options(prefix: &str) -> RabbitMqOptions {
    RabbitMqOptions {
        prefix: prefix.to_owned(),
        queue_expiry: Some(Duration::from_secs(120)),
        ..RabbitMqOptions::default()
    }
}

/// The worker process: serves the loop until it is killed.
#[tokio::test]
#[ignore = "run as a worker process by the test below"]
async fn loop_worker_process() {
    let Ok(setup) = std::env::var("LEGATO_LOOP_WORKER") else {
        return;
    };
    let setup: Setup = serde_json::from_str(&setup).unwrap();
    let bus = Arc::new(
        RabbitMqBus::connect(AMQP, options(&setup.prefix))
            .await
            .unwrap(),
    );
    let store = Arc::new(SqliteStore::open(&setup.store).unwrap());
    let client = ChatClient::from_settings(&LlmSettings {
        endpoint: setup.model.clone(),
        api_key: "sk-standin".into(),
        model: "standin".into(),
        ..LlmSettings::default()
    })
    .unwrap()
    .unwrap();
    let agent = ToolLoop {
        name: AgentName::parse(AGENT).unwrap(),
        client,
        effects: format!("{}/effects", setup.model.trim_end_matches("/v1")),
        die_at: setup.die_at,
    };
    let worker = Worker::new(
        Arc::new(agent),
        bus,
        WorkerSettings::default(),
        Shutdown::new(),
    )
    .with_store(store);
    let running = worker.start().await.unwrap();
    println!("READY");
    running.await.unwrap();
}

/// Starts a worker process and waits for it to be consuming.
fn worker(setup: &Setup) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["loop_worker_process", "--exact", "--ignored", "--nocapture"])
        .env("LEGATO_LOOP_WORKER", serde_json::to_string(setup).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().trim() == "READY" {
            return (child, lines);
        }
    }
    let ended = child.wait();
    panic!("the worker process ended before it was ready: {ended:?}");
}

fn task(instance: &InstanceId, attempt: u32) -> Envelope {
    Envelope::new(
        "/test",
        instance.clone(),
        OffsetDateTime::now_utc(),
        TaskDispatched {
            key: TaskKey {
                run: 7,
                execution: 0,
                step: StepId::parse("loop").unwrap(),
                item: None,
                iteration: None,
                role: TaskRole::Action,
            },
            attempt,
            agent: AgentName::parse(AGENT).unwrap(),
            workflow: WorkflowName::parse("w").unwrap(),
            input: json!({}),
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_killed_at_turn_seven_repeats_no_model_call_or_tool() {
    let model = ModelStandIn::start(0, "sk-standin").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup {
        prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
        store: dir.path().join("journal.db").display().to_string(),
        model: model.base_url(),
        die_at: Some(7),
    };
    let bus = RabbitMqBus::connect(AMQP, options(&setup.prefix))
        .await
        .unwrap();
    let mut results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let killed = InstanceId::parse("killed-1").unwrap();
    let whole = InstanceId::parse("whole-1").unwrap();

    let (mut dying, mut said) = worker(&setup);
    bus.publish_envelope(&task(&killed, 1)).await.unwrap();
    let line = tokio::task::spawn_blocking(move || said.next().unwrap().unwrap())
        .await
        .unwrap();
    assert_eq!(line, format!("DYING {killed} 7"));
    let status = tokio::task::spawn_blocking(move || dying.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");

    // The broker hands the unsettled attempt to a new worker process (a
    // redelivery: the runtime reads the journal); then a run nothing
    // interrupts.
    setup.die_at = None;
    let (mut healthy, _) = worker(&setup);
    bus.publish_envelope(&task(&whole, 1)).await.unwrap();
    let mut outputs = std::collections::BTreeMap::new();
    while outputs.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), results.next())
            .await
            .expect("both results within 60 s")
            .unwrap();
        let envelope = delivery.decode().unwrap();
        delivery.ack().await.unwrap();
        match envelope.payload {
            Payload::TaskCompleted(done) => {
                outputs.insert(envelope.subject.to_string(), (done.attempt, done.output));
            }
            Payload::TaskFailed(failed) => panic!("{failed:?}"),
            _ => {}
        }
    }
    healthy.kill().unwrap();
    healthy.wait().unwrap();

    let expected = json!({
        "answer": format!("done after {TURNS} turns: {}", (1..TURNS).map(|t| (2 * t).to_string()).collect::<Vec<_>>().join(", ")),
        "turns": TURNS,
    });
    assert_eq!(outputs[killed.as_str()], (1, expected.clone()));
    assert_eq!(outputs[whole.as_str()], (1, expected));
    let calls = model.calls();
    let turns = &calls[&format!("loop:{TURNS} for {killed}")];
    assert_eq!(
        turns.iter().map(|(t, n)| (*t, *n)).collect::<Vec<_>>(),
        (1..=TURNS).map(|t| (t, 1)).collect::<Vec<_>>(),
        "each model turn called once"
    );
    let effects = model.effects();
    let done: Vec<(&String, &u32)> = effects
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{killed}/")))
        .collect();
    assert_eq!(done.len(), 9, "{effects:?}");
    assert!(done.iter().all(|(_, n)| **n == 1), "{effects:?}");
}
