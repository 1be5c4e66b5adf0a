//! The worker runtime on the in-process bus: redeliveries answered without
//! re-running, the concurrency cap, cancellation, progress and poison
//! messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::next_result;
use legato_agent::{Agent, Task, TaskContext, Worker, WorkerSettings};
use legato_bus::{Bus, InProcessBus, OutgoingMessage, Subscription, SubscriptionSpec};
use legato_contracts::{
    AgentName, Envelope, HeartbeatKind, InstanceId, Payload, StepId, TaskCancelled, TaskDispatched,
    TaskError, TaskKey, TaskRole, Topic, WorkflowName,
};
use legato_service::Shutdown;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Default)]
struct Counting {
    runs: AtomicUsize,
    running: AtomicUsize,
    most: AtomicUsize,
}

struct Running<'a>(&'a Counting);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Slow {
    name: AgentName,
    sleep: Duration,
    stats: Arc<Counting>,
}

#[async_trait]
impl Agent for Slow {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        self.stats.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.stats.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.stats.most.fetch_max(now, Ordering::SeqCst);
        // Counts down however the run ends, also when the worker drops it.
        let _running = Running(&self.stats);
        ctx.progress("halfway", Some(json!({"percent": 50}))).await;
        tokio::time::sleep(self.sleep).await;
        Ok(json!({"echo": task.input}))
    }
}

fn key(item: u32) -> TaskKey {
    TaskKey {
        run: 1,
        execution: 0,
        step: StepId::parse("s").unwrap(),
        item: Some(item),
        iteration: None,
        role: TaskRole::Action,
    }
}

fn dispatched(item: u32) -> Envelope {
    Envelope::new(
        "/test",
        InstanceId::parse("i-1").unwrap(),
        OffsetDateTime::now_utc(),
        TaskDispatched {
            key: key(item),
            attempt: 1,
            agent: AgentName::parse("slow").unwrap(),
            workflow: WorkflowName::parse("w").unwrap(),
            input: json!(item),
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        },
    )
}

struct Rig {
    bus: Arc<InProcessBus>,
    stats: Arc<Counting>,
    results: Box<dyn Subscription>,
    shutdown: Shutdown,
}

async fn rig(sleep_ms: u64, concurrency: usize) -> Rig {
    let bus = Arc::new(InProcessBus::default());
    let results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let stats = Arc::new(Counting::default());
    let agent = Arc::new(Slow {
        name: AgentName::parse("slow").unwrap(),
        sleep: Duration::from_millis(sleep_ms),
        stats: stats.clone(),
    });
    let shutdown = Shutdown::new();
    let settings = WorkerSettings {
        concurrency,
        ..WorkerSettings::default()
    };
    let worker = Worker::new(agent, bus.clone(), settings, shutdown.clone());
    tokio::spawn(worker.start().await.unwrap());
    Rig {
        bus,
        stats,
        results,
        shutdown,
    }
}

#[tokio::test]
async fn a_redelivered_attempt_is_answered_from_memory_not_run_again() {
    let mut rig = rig(10, 4).await;
    let task = dispatched(1);
    rig.bus.publish_envelope(&task).await.unwrap();
    let first = next_result(&mut rig.results).await;
    rig.bus.publish_envelope(&task).await.unwrap();
    let second = next_result(&mut rig.results).await;
    assert_eq!(first, second);
    assert!(matches!(first, Payload::TaskCompleted(_)));
    assert_eq!(rig.stats.runs.load(Ordering::SeqCst), 1);
    rig.shutdown.trigger();
}

#[tokio::test]
async fn never_more_tasks_at_once_than_the_concurrency_cap() {
    let mut rig = rig(40, 2).await;
    for item in 0..8 {
        rig.bus.publish_envelope(&dispatched(item)).await.unwrap();
    }
    for _ in 0..8 {
        next_result(&mut rig.results).await;
    }
    assert_eq!(rig.stats.runs.load(Ordering::SeqCst), 8);
    assert_eq!(rig.stats.most.load(Ordering::SeqCst), 2);
    rig.shutdown.trigger();
}

#[tokio::test]
async fn a_cancelled_task_stops_and_sends_no_result() {
    let mut rig = rig(60_000, 2).await;
    rig.bus.publish_envelope(&dispatched(1)).await.unwrap();
    // Progress arrives as a heartbeat while the task runs.
    let delivery = rig.results.next().await.unwrap();
    let Payload::TaskHeartbeat(beat) = delivery.decode().unwrap().payload else {
        panic!("expected a heartbeat")
    };
    delivery.ack().await.unwrap();
    assert_eq!(beat.kind, Some(HeartbeatKind::AgentProgress));
    assert_eq!(beat.progress, Some(json!({"percent": 50})));
    let cancel = Envelope::new(
        "/test",
        InstanceId::parse("i-1").unwrap(),
        OffsetDateTime::now_utc(),
        TaskCancelled {
            key: key(1),
            attempt: 1,
            reason: "terminated".into(),
        },
    );
    rig.bus.publish_envelope(&cancel).await.unwrap();
    // A second task still runs to completion; the cancelled one never answers.
    rig.bus.publish_envelope(&dispatched(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rig.stats.running.load(Ordering::SeqCst),
        1,
        "the cancelled run was dropped"
    );
    rig.shutdown.trigger();
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_with_its_reason() {
    let rig = rig(10, 2).await;
    rig.bus
        .publish(
            Topic::AgentTasks,
            "slow",
            OutgoingMessage {
                id: "poison-1".into(),
                body: Bytes::from_static(b"not json"),
                headers: Default::default(),
            },
        )
        .await
        .unwrap();
    let mut dead = rig
        .bus
        .dead_letters(Topic::AgentTasks, "agent-slow")
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message_id, "poison-1");
    assert!(delivery.headers[legato_bus::DEAD_LETTER_REASON].contains("CloudEvents"));
    rig.shutdown.trigger();
}

/// Reports progress ten times in a row, then waits a while and ends.
struct Chatty(AgentName);

#[async_trait]
impl Agent for Chatty {
    fn name(&self) -> &AgentName {
        &self.0
    }

    async fn run(&self, _task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        for n in 0..10 {
            ctx.progress(format!("p{n}"), None).await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(json!("done"))
    }
}

#[tokio::test]
async fn progress_sent_in_a_burst_goes_on_first_and_latest() {
    let bus = Arc::new(InProcessBus::default());
    let mut results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let name = AgentName::parse("slow").unwrap();
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        Arc::new(Chatty(name)),
        bus.clone(),
        WorkerSettings::default(),
        shutdown.clone(),
    );
    tokio::spawn(worker.start().await.unwrap());
    bus.publish_envelope(&dispatched(1)).await.unwrap();
    let mut told = Vec::new();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .expect("a message within 10 s")
            .unwrap();
        let payload = delivery.decode().unwrap().payload;
        delivery.ack().await.unwrap();
        match payload {
            Payload::TaskHeartbeat(beat) => told.extend(beat.message),
            _ => break,
        }
    }
    assert_eq!(told, ["p0", "p9"], "one report per turn, the latest");
    shutdown.trigger();
}
