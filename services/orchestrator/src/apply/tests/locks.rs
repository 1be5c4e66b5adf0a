//! A lock step with the orchestrator's two appliers over a real store and
//! bus (SQLite, in-process): what the e2e tests cannot time, such as a
//! holder whose release was lost.

use std::time::Duration;

use legato_bus::{Bus, InProcessBus, Subscription, SubscriptionSpec};
use legato_contracts::{EntityOperation, Envelope, Holder, Operation, Payload, Topic};
use legato_store::{EntityCommit, EntityKey, EntityRecord, SqliteStore};
use serde_json::json;

use super::*;
use crate::entities::Entities;

async fn next(subscription: &mut Box<dyn Subscription>) -> Envelope {
    let delivery = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .unwrap()
        .unwrap();
    let envelope = delivery.decode().unwrap();
    delivery.ack().await.unwrap();
    envelope
}

/// The entity is held by a run no store knows (its release lost with a
/// bus that forgets, or it was purged): the next acquisition releases it
/// on that run's behalf, is granted, and its lock step's body runs.
#[tokio::test]
async fn a_holder_whose_run_is_gone_is_released_for_the_next_in_line() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let bus = Arc::new(InProcessBus::default());
    let spec = |topic| SubscriptionSpec::new(topic, "test").bind("#");
    let mut commands = bus.subscribe(spec(Topic::Commands)).await.unwrap();
    let mut results = bus.subscribe(spec(Topic::AgentResults)).await.unwrap();
    let relay = Arc::new(OutboxRelay::new(bus.clone(), store.clone()));
    let applier = Arc::new(Applier::new(
        store.clone(),
        relay.clone(),
        OrchestratorSettings::default(),
    ));
    let entities = Arc::new(Entities::new(store.clone(), relay));
    let (id, workflow, now) = (
        InstanceId::parse("live").unwrap(),
        WorkflowName::parse("guard").unwrap(),
        OffsetDateTime::now_utc(),
    );
    store
        .put_definition(&legato_store::DefinitionRecord {
            name: workflow.clone(),
            version: 1,
            hash: "h".into(),
            body: json!({"name": "guard", "version": 1, "steps": [{"id": "edit", "lock": {
                "entities": [{"type": "repo", "id": "acme.billing"}],
                "steps": [{"id": "wait", "wait_for_event": {"name": "done"}}]
            }}]}),
            registered_at: now,
        })
        .await
        .unwrap();
    pending(&store, &id, &workflow, None, now).await;
    applier
        .apply(&id, &start_of(workflow, None, now), None)
        .await
        .unwrap();
    let sent = next(&mut commands).await;
    let Payload::EntityOperation(acquire) = sent.payload else {
        panic!("expected the acquisition, got {:?}", sent.payload);
    };
    let Some(caller) = acquire.caller.clone() else {
        panic!("an acquisition has a caller");
    };

    let ghost = Holder {
        instance: InstanceId::parse("ghost").unwrap(),
        key: caller.key.clone(),
    };
    let key = EntityKey {
        tenant: None,
        entity: acquire.entity.clone(),
    };
    store
        .commit_entity(EntityCommit {
            record: EntityRecord {
                key: key.clone(),
                state: json!({"kept": 1}),
                lock: json!({"holders": [ghost]}),
                operations: 0,
                updated_at: now,
            },
            expected: Expected::New,
            operations: Vec::new(),
        })
        .await
        .unwrap();
    entities
        .apply(&sent.subject, acquire.clone(), now)
        .await
        .unwrap();

    let told = next(&mut results).await;
    let Payload::TaskCompleted(granted) = told.payload else {
        panic!("expected the grant, got {:?}", told.payload);
    };
    assert_eq!(
        (&granted.key, granted.attempt),
        (&caller.key, caller.attempt)
    );
    assert_eq!(granted.output, json!({"granted": true}));
    let stored = store.load_entity(&key).await.unwrap().unwrap();
    let live = Holder {
        instance: id.clone(),
        key: caller.key.clone(),
    };
    assert_eq!(stored.record.lock["holders"], json!([live]));
    assert_eq!(
        stored.record.state,
        json!({"kept": 1}),
        "locking leaves the state alone"
    );
    let ids: Vec<String> = store
        .entity_operations(&key, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|op| op.id)
        .collect();
    assert_eq!(
        ids,
        [format!("ghost/{}/release", caller.key), acquire.id.clone()],
        "the acquisition queued, then the ghost was released on its behalf"
    );
    // The ghost's own release, late: the same operation as its eviction,
    // so nothing is recorded twice and the live holder keeps the lock.
    let late = EntityOperation {
        entity: acquire.entity.clone(),
        id: format!("ghost/{}/release", caller.key),
        operation: Operation::Release {
            holder: ghost.clone(),
        },
        caller: None,
    };
    entities.apply(&sent.subject, late, now).await.unwrap();
    let stored = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.record.operations, 2,
        "the late release is not recorded"
    );
    assert_eq!(stored.record.lock["holders"], json!([live]));

    let grant = Input::Event(Event::TaskCompleted {
        at: OffsetDateTime::now_utc(),
        key: granted.key,
        attempt: granted.attempt,
        output: granted.output,
        custom_status: None,
        usage: None,
    });
    applier.apply(&id, &grant, None).await.unwrap();
    let state = state_of(&store.load(&id).await.unwrap().unwrap().record).unwrap();
    let wait = state.steps.get("wait").unwrap();
    assert_eq!(
        wait.status,
        legato_engine::StepStatus::Waiting,
        "the body runs"
    );
}
