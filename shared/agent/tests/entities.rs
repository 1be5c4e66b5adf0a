//! `TaskContext::entity` on the in-process bus with a real SQLite store:
//! an agent's call is applied once per task however often the task is
//! tried (its answer comes back from the journal), reads see the state as
//! committed, and an operation that fails is an error no retry mends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::next_result;
use legato_agent::{Agent, Task, TaskContext, Worker, WorkerSettings};
use legato_bus::{Bus, InProcessBus, SubscriptionSpec};
use legato_contracts::{
    AgentName, EntityId, EntityType, Envelope, InstanceId, Payload, StepId, TaskDispatched,
    TaskError, TaskKey, TaskRole, TenantId, Topic, WorkflowName,
};
use legato_service::Shutdown;
use legato_store::{EntityKey, SqliteStore, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Remembers a visit of `input.customer`; fails (retryably) on its first
/// attempt once the visit is counted, as a crash there would.
struct Receptionist {
    name: AgentName,
}

#[async_trait]
impl Agent for Receptionist {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let customer = ctx.entity("customer", task.input["customer"].as_str().unwrap_or("-"))?;
        let before = customer.read("/visits").await?;
        let visit = customer
            .call("visit", json!({"op": "increment", "path": "/visits"}))
            .await?;
        customer
            .signal(
                "note",
                json!({"op": "append", "path": "/notes", "value": task.attempt, "cap": 3}),
            )
            .await?;
        if task.attempt == 1 {
            return Err(TaskError {
                message: "the phone line dropped".into(),
                retryable: true,
            });
        }
        if task.input["overdraw"] == json!(true) {
            customer
                .call(
                    "overdraw",
                    json!({"op": "increment", "path": "/credit", "by": -5, "min": 0}),
                )
                .await?;
        }
        Ok(json!({"before": before, "visit": visit}))
    }
}

fn dispatched(attempt: u32, input: Value) -> Envelope {
    Envelope::new(
        "/test",
        InstanceId::parse("acme~desk-1").unwrap(),
        OffsetDateTime::now_utc(),
        TaskDispatched {
            key: TaskKey {
                run: 3,
                execution: 0,
                step: StepId::parse("greet").unwrap(),
                item: None,
                iteration: None,
                role: TaskRole::Action,
            },
            attempt,
            agent: AgentName::parse("receptionist").unwrap(),
            workflow: WorkflowName::parse("acme~w").unwrap(),
            input,
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        },
    )
}

#[tokio::test]
async fn an_agents_call_is_applied_once_per_task_in_its_tenant() {
    let bus = Arc::new(InProcessBus::default());
    let mut results = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentResults, "test").bind("#"))
        .await
        .unwrap();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let shutdown = Shutdown::new();
    let agent = Arc::new(Receptionist {
        name: AgentName::parse("receptionist").unwrap(),
    });
    let worker = Worker::new(
        agent,
        bus.clone(),
        WorkerSettings::default(),
        shutdown.clone(),
    )
    .with_store(store.clone());
    tokio::spawn(worker.start().await.unwrap());

    let input = json!({"customer": "jane@example.com", "overdraw": true});
    bus.publish_envelope(&dispatched(1, input.clone()))
        .await
        .unwrap();
    assert!(matches!(next_result(&mut results).await, Payload::TaskFailed(f) if f.error.retryable));
    bus.publish_envelope(&dispatched(2, input)).await.unwrap();
    let Payload::TaskFailed(failed) = next_result(&mut results).await else {
        panic!("the overdraw fails the task");
    };
    assert!(!failed.error.retryable, "{failed:?}");
    assert!(
        failed
            .error
            .message
            .contains("would go below the minimum 0"),
        "{failed:?}"
    );

    let key = EntityKey::new(
        Some(TenantId::parse("acme").unwrap()),
        EntityType::parse("customer").unwrap(),
        EntityId::parse("jane@example.com").unwrap(),
    );
    let entity = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(
        entity.record.state,
        json!({"visits": 1, "notes": [1]}),
        "the call and the signal applied once over two attempts"
    );
    assert_eq!(
        entity.record.operations, 3,
        "visit, note, and the failed overdraw"
    );
    let other_tenant = EntityKey {
        tenant: None,
        ..key
    };
    assert!(store.load_entity(&other_tenant).await.unwrap().is_none());
    shutdown.trigger();
}
