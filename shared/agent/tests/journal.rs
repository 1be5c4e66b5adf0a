//! `TaskContext::step` on the in-process bus with a real SQLite store: a
//! step's work runs once per task across attempts, redeliveries and
//! copies sent again; a failed step is not recorded; a name used twice and
//! a worker without a store fail clearly; each new entry is told to the
//! instance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use legato_agent::{Agent, Task, TaskContext, Worker, WorkerSettings};
use legato_bus::{Bus, InProcessBus, Subscription, SubscriptionSpec};
use legato_contracts::journal::JournalKey;
use legato_contracts::{
    AgentName, Envelope, HeartbeatKind, InstanceId, Payload, StepId, TaskDispatched, TaskError,
    TaskKey, TaskRole, Topic, WorkflowName,
};
use legato_service::Shutdown;
use legato_store::{SqliteStore, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Two model turns and a tool call, each a step; the tool fails on the
/// first attempt after both turns are recorded, as a crash would.
struct Looping {
    name: AgentName,
    turns: AtomicUsize,
    tool_calls: AtomicUsize,
}

#[async_trait]
impl Agent for Looping {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        if task.input["twice"] == json!(true) {
            ctx.step("same", || async { Ok(1) }).await?;
            ctx.step("same", || async { Ok(2) }).await?;
        }
        let mut said = Vec::new();
        for turn in 1..=2 {
            let attempt = task.attempt;
            let text: String = ctx
                .step(&format!("model turn {turn}"), || async {
                    self.turns.fetch_add(1, Ordering::SeqCst);
                    Ok(format!("turn {turn} said in attempt {attempt}"))
                })
                .await?;
            said.push(text);
        }
        let tool: Value = ctx
            .step("tool: open pull request", || async {
                self.tool_calls.fetch_add(1, Ordering::SeqCst);
                if attempt_fails(task) {
                    return Err(TaskError {
                        message: "the tool's service was down".into(),
                        retryable: true,
                    });
                }
                Ok(json!({"pr": 42}))
            })
            .await?;
        Ok(json!({"said": said, "tool": tool}))
    }
}

fn attempt_fails(task: &Task) -> bool {
    task.attempt == 1
}

fn key() -> TaskKey {
    TaskKey {
        run: 9,
        execution: 0,
        step: StepId::parse("code").unwrap(),
        item: None,
        iteration: None,
        role: TaskRole::Action,
    }
}

fn dispatched(attempt: u32, input: Value) -> Envelope {
    Envelope::new(
        "/test",
        InstanceId::parse("loop-1").unwrap(),
        OffsetDateTime::now_utc(),
        TaskDispatched {
            key: key(),
            attempt,
            agent: AgentName::parse("looping").unwrap(),
            workflow: WorkflowName::parse("w").unwrap(),
            input,
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        },
    )
}

struct Rig {
    bus: Arc<InProcessBus>,
    store: Arc<SqliteStore>,
    agent: Arc<Looping>,
    results: Box<dyn Subscription>,
    _shutdown: Shutdown,
}

async fn rig(with_store: bool) -> Rig {
    let bus = Arc::new(InProcessBus::default());
    let results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let agent = Arc::new(Looping {
        name: AgentName::parse("looping").unwrap(),
        turns: AtomicUsize::new(0),
        tool_calls: AtomicUsize::new(0),
    });
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let shutdown = Shutdown::new();
    let mut worker = Worker::new(
        agent.clone(),
        bus.clone(),
        WorkerSettings::default(),
        shutdown.clone(),
    );
    if with_store {
        worker = worker.with_store(store.clone());
    }
    tokio::spawn(worker.start().await.unwrap());
    Rig {
        bus,
        store,
        agent,
        results,
        _shutdown: shutdown,
    }
}

/// Messages on agent-results up to the first result: the journal notices
/// (heartbeats) before it, and the result.
async fn until_result(results: &mut Box<dyn Subscription>) -> (Vec<Value>, Payload) {
    let mut notices = Vec::new();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a result within 10 s")
            .unwrap();
        let envelope = delivery.decode().unwrap();
        delivery.ack().await.unwrap();
        match envelope.payload {
            Payload::TaskHeartbeat(beat) if beat.kind == Some(HeartbeatKind::JournalRecorded) => {
                notices.push(beat.progress.unwrap())
            }
            Payload::TaskHeartbeat(_) => {}
            other => return (notices, other),
        }
    }
}

#[tokio::test]
async fn a_retried_task_replays_its_recorded_steps_instead_of_running_them() {
    let mut rig = rig(true).await;
    rig.bus
        .publish_envelope(&dispatched(1, json!({})))
        .await
        .unwrap();
    let (notices, first) = until_result(&mut rig.results).await;
    let Payload::TaskFailed(failed) = first else {
        panic!("attempt 1 fails in its tool step: {first:?}");
    };
    assert!(failed.error.retryable);
    // Both model turns are recorded, the failed tool call is not.
    let names: Vec<&str> = notices
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["model turn 1", "model turn 2"]);
    assert!(notices.iter().all(|n| n["bytes"].as_u64().unwrap() > 10));
    let journal = rig
        .store
        .journal(
            &InstanceId::parse("loop-1").unwrap(),
            &JournalKey::of(&key()),
        )
        .await
        .unwrap();
    assert_eq!(journal.len(), 2);
    assert!(journal.iter().all(|e| e.attempt == 1));

    rig.bus
        .publish_envelope(&dispatched(2, json!({})))
        .await
        .unwrap();
    let (notices, second) = until_result(&mut rig.results).await;
    let Payload::TaskCompleted(done) = second else {
        panic!("attempt 2 completes: {second:?}");
    };
    assert_eq!(
        done.output,
        json!({
            "said": ["turn 1 said in attempt 1", "turn 2 said in attempt 1"],
            "tool": {"pr": 42},
        })
    );
    assert_eq!(
        rig.agent.turns.load(Ordering::SeqCst),
        2,
        "each model turn ran once"
    );
    assert_eq!(
        rig.agent.tool_calls.load(Ordering::SeqCst),
        2,
        "the failed call ran again"
    );
    let names: Vec<&str> = notices
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tool: open pull request"]);

    // A later attempt (the worker remembers attempt 2's result, so a
    // copy of it would be answered from memory) reads the whole journal.
    rig.bus
        .publish_envelope(&dispatched(3, json!({})))
        .await
        .unwrap();
    let (notices, third) = until_result(&mut rig.results).await;
    assert!(matches!(third, Payload::TaskCompleted(_)), "{third:?}");
    assert!(notices.is_empty(), "nothing new recorded");
    assert_eq!(rig.agent.turns.load(Ordering::SeqCst), 2);
    assert_eq!(rig.agent.tool_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_name_used_twice_and_a_worker_without_a_store_fail_clearly() {
    let mut stored = rig(true).await;
    stored
        .bus
        .publish_envelope(&dispatched(1, json!({"twice": true})))
        .await
        .unwrap();
    let (_, result) = until_result(&mut stored.results).await;
    let Payload::TaskFailed(failed) = result else {
        panic!("a name twice fails the attempt: {result:?}");
    };
    assert!(!failed.error.retryable);
    assert!(
        failed.error.message.contains("ran twice in one attempt"),
        "{}",
        failed.error.message
    );

    let mut bare = rig(false).await;
    bare.bus
        .publish_envelope(&dispatched(1, json!({})))
        .await
        .unwrap();
    let (_, result) = until_result(&mut bare.results).await;
    let Payload::TaskFailed(failed) = result else {
        panic!("no store, no steps: {result:?}");
    };
    assert!(!failed.error.retryable);
    assert!(
        failed.error.message.contains("store"),
        "{}",
        failed.error.message
    );
}

/// A model-backed agent: one `ctx.chat` against a local streaming
/// endpoint, then a failure on the first attempt.
struct Chatty {
    name: AgentName,
    client: legato_agent::llm::ChatClient,
}

#[async_trait]
impl Agent for Chatty {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let messages = [json!({"role": "user", "content": "plan it"})];
        let reply = ctx.chat(&self.client, &messages, None).await?;
        if task.attempt == 1 {
            return Err(TaskError {
                message: "crashed after the model answered".into(),
                retryable: true,
            });
        }
        Ok(json!({"said": reply.content}))
    }
}

#[tokio::test]
async fn a_model_call_is_journaled_and_its_tokens_counted_once() {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(post(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            (
                [("content-type", "text/event-stream")],
                concat!(
                    "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a \"}}]}\n\n",
                    "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"plan\"}}]}\n\n",
                    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":5}}\n\n",
                    "data: [DONE]\n\n",
                ),
            )
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let settings = legato_agent::llm::LlmSettings {
        endpoint: format!("http://{addr}/v1"),
        ..Default::default()
    };
    let client = legato_agent::llm::ChatClient::from_settings(&settings)
        .unwrap()
        .unwrap();

    let bus = Arc::new(InProcessBus::default());
    let mut results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let mut watched = bus
        .subscribe(SubscriptionSpec::new(Topic::Progress, "watcher").bind("#"))
        .await
        .unwrap();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let shutdown = Shutdown::new();
    let agent = Arc::new(Chatty {
        name: AgentName::parse("looping").unwrap(),
        client,
    });
    let worker = Worker::new(
        agent,
        bus.clone(),
        WorkerSettings::default(),
        shutdown.clone(),
    )
    .with_store(store);
    tokio::spawn(worker.start().await.unwrap());

    bus.publish_envelope(&dispatched(1, json!({})))
        .await
        .unwrap();
    let (notices, first) = until_result(&mut results).await;
    let Payload::TaskFailed(failed) = first else {
        panic!("{first:?}");
    };
    let spent = failed.usage.expect("the failed attempt spent tokens");
    assert_eq!((spent.input_tokens, spent.output_tokens), (30, 5));
    assert_eq!(spent.model.as_deref(), Some("m"));
    assert_eq!(notices[0]["name"], "chat 1");
    // The text went out as it came, before the call was recorded.
    let (mut text, mut seqs) = (String::new(), Vec::new());
    while let Ok(delivery) = tokio::time::timeout(Duration::from_millis(200), watched.next()).await
    {
        let delivery = delivery.unwrap();
        let Payload::AgentOutput(piece) = delivery.decode().unwrap().payload else {
            panic!("only output on the progress topic here");
        };
        delivery.ack().await.unwrap();
        assert_eq!((piece.call.as_str(), piece.attempt), ("chat 1", 1));
        text.push_str(&piece.text);
        seqs.push(piece.seq);
    }
    assert_eq!(text, "a plan");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    bus.publish_envelope(&dispatched(2, json!({})))
        .await
        .unwrap();
    let (_, second) = until_result(&mut results).await;
    let Payload::TaskCompleted(done) = second else {
        panic!("{second:?}");
    };
    assert_eq!(done.output, json!({"said": "a plan"}));
    assert_eq!(done.usage, None, "the replayed call spent nothing");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the model was called once");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watched.next())
            .await
            .is_err(),
        "a replayed call relays nothing"
    );
}
