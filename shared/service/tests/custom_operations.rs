#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Custom operations as `apply_batch` carries them out, on the embedded
//! store: the entity busy while its run goes on, writes queued behind it in
//! order and applied once its outcome comes, each operation once however
//! often it is sent.

use legato_contracts::{
    Caller, CustomOperation, CustomOutcome, EntityId, EntityOperation, EntityRef, EntityType,
    InstanceId, Operation, TaskKey,
};
use legato_engine::entities::{MAX_QUEUED, Reply};
use legato_service::entities::{Batch, EntityOp, EntityTypes, apply_batch, lock_of};
use legato_store::{EntityKey, EntityTypeRecord, Expected, SqliteStore, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn key() -> EntityKey {
    EntityKey {
        tenant: None,
        entity: EntityRef {
            entity_type: EntityType::parse("visitor").unwrap(),
            id: EntityId::parse("ann").unwrap(),
        },
    }
}

fn caller(step: &str) -> Caller {
    Caller {
        instance: InstanceId::parse("i-1").unwrap(),
        key: serde_json::from_value::<TaskKey>(json!({"execution": 0, "step": step})).unwrap(),
        attempt: 1,
        signal: false,
    }
}

fn op(id: &str, operation: Operation, caller: Option<Caller>) -> EntityOp {
    EntityOp {
        operation: EntityOperation {
            entity: key().entity,
            id: id.into(),
            operation,
            caller,
        },
        sender: InstanceId::parse("i-1").unwrap(),
        at: OffsetDateTime::now_utc(),
    }
}

fn visit(id: &str) -> EntityOp {
    op(
        id,
        Operation::Custom(CustomOperation {
            name: "visit".into(),
            input: json!({"by": 1}),
        }),
        Some(caller(id)),
    )
}

fn increment(id: &str) -> EntityOp {
    op(
        id,
        Operation::from_json(json!({"op": "increment", "path": "/notes"})).unwrap(),
        Some(caller(id)),
    )
}

/// The outcome of the run the entity is busy with, as its end sends it.
async fn completion(store: &dyn Store, outcome: CustomOutcome) -> EntityOp {
    let busy = lock_of(store, &key()).await.unwrap().busy.unwrap();
    op(
        &format!("{}/complete", busy.operation.id),
        Operation::Complete {
            operation: busy.operation.id,
            instance: busy.instance,
            outcome,
        },
        None,
    )
}

async fn apply(store: &dyn Store, types: &EntityTypes, ops: &[EntityOp]) -> Batch {
    let refs: Vec<&EntityOp> = ops.iter().collect();
    apply_batch(store, types, &key(), &refs).await.unwrap()
}

async fn state(store: &dyn Store) -> Value {
    store
        .load_entity(&key())
        .await
        .unwrap()
        .unwrap()
        .record
        .state
}

async fn registered() -> SqliteStore {
    registered_in(SqliteStore::in_memory().unwrap()).await
}

async fn registered_in(store: SqliteStore) -> SqliteStore {
    store
        .put_entity_type(
            &EntityTypeRecord {
                name: EntityType::parse("visitor").unwrap(),
                tenant: None,
                body: json!({
                    "state_schema": {"type": "object", "properties": {"visits": {"maximum": 10}}},
                    "operations": {"visit": {"workflow": "visit-op"}}
                }),
                updated_at: OffsetDateTime::now_utc(),
            },
            &Expected::New,
        )
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn writes_wait_behind_a_custom_operation_and_apply_in_order_once_it_is_over() {
    let store = registered().await;
    let types = EntityTypes::default();
    let batch = apply(&store, &types, &[visit("v1"), increment("n1")]).await;
    assert!(matches!(batch.outcomes[0].reply, Reply::Later));
    assert!(matches!(batch.outcomes[1].reply, Reply::Later), "queued");
    let start = batch.start.expect("the run is to start");
    assert_eq!(start.state, Value::Null);
    assert!(start.busy.instance.as_str().starts_with("entity.visitor."));

    // Sent again while busy (a redelivery, a later attempt): still waiting,
    // and the run is asked for again (starting it twice is harmless).
    let again = apply(
        &store,
        &types,
        &[visit("v1"), increment("n1"), increment("n2")],
    )
    .await;
    assert!(
        again
            .outcomes
            .iter()
            .all(|o| matches!(o.reply, Reply::Later))
    );
    assert!(again.start.is_some());
    assert_eq!(lock_of(&store, &key()).await.unwrap().queued.len(), 2);

    // The run's outcome: its state and answer, then the queue in order,
    // each caller told.
    let done = completion(
        &store,
        CustomOutcome::Completed(json!({"state": {"visits": 1, "notes": 0}, "answer": 1})),
    )
    .await;
    let batch = apply(&store, &types, std::slice::from_ref(&done)).await;
    let told: Vec<(String, Value)> = batch
        .told
        .iter()
        .map(|(c, a)| (c.key.step.to_string(), a.clone().unwrap()))
        .collect();
    assert_eq!(
        told,
        [
            ("v1".to_owned(), json!(1)),
            ("n1".to_owned(), json!(1)),
            ("n2".to_owned(), json!(2))
        ]
    );
    assert_eq!(state(&store).await, json!({"visits": 1, "notes": 2}));
    assert!(lock_of(&store, &key()).await.unwrap().is_free());

    // Sent again once applied: answered as recorded, the run not started
    // again; the outcome sent again changes nothing.
    let late = apply(&store, &types, &[visit("v1"), increment("n1"), done]).await;
    assert!(late.start.is_none());
    let answers: Vec<_> = late
        .outcomes
        .iter()
        .map(|o| o.answer().cloned().unwrap().unwrap())
        .collect();
    assert_eq!(answers, [json!(1), json!(1), Value::Null]);
    assert_eq!(state(&store).await, json!({"visits": 1, "notes": 2}));
    let record = store.load_entity(&key()).await.unwrap().unwrap().record;
    assert_eq!(record.operations, 3, "each applied once");
}

#[tokio::test]
async fn a_custom_operation_queued_behind_another_begins_when_it_ends() {
    let store = registered().await;
    let types = EntityTypes::default();
    apply(&store, &types, &[visit("v1"), visit("v2"), increment("n1")]).await;
    let done = completion(
        &store,
        CustomOutcome::Completed(json!({"state": {"visits": 1}})),
    )
    .await;
    let batch = apply(&store, &types, &[done]).await;
    let busy = lock_of(&store, &key()).await.unwrap().busy.unwrap();
    assert_eq!(busy.operation.id, "v2", "the next custom one is under way");
    assert_eq!(batch.start.unwrap().state, json!({"visits": 1}));
    assert_eq!(batch.told.len(), 1, "only v1 is answered: {:?}", batch.told);
    // A failed run changes nothing and fails its operation; the write
    // behind it applies.
    let failed = completion(&store, CustomOutcome::Failed("model unavailable".into())).await;
    let batch = apply(&store, &types, &[failed]).await;
    let told: Vec<_> = batch.told.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(told, [Err("model unavailable".into()), Ok(json!(1))]);
    assert_eq!(state(&store).await, json!({"visits": 1, "notes": 1}));
}

#[tokio::test]
async fn what_the_type_refuses_fails_without_changing_anything() {
    let store = registered().await;
    let types = EntityTypes::default();
    let undeclared = op(
        "x",
        Operation::Custom(CustomOperation {
            name: "leave".into(),
            input: Value::Null,
        }),
        None,
    );
    let too_many = op(
        "s",
        Operation::from_json(json!({"op": "set", "path": "/visits", "value": 11})).unwrap(),
        None,
    );
    let batch = apply(&store, &types, &[undeclared, too_many]).await;
    let errors: Vec<String> = batch
        .outcomes
        .iter()
        .map(|o| o.answer().cloned().unwrap().unwrap_err())
        .collect();
    assert!(errors[0].contains("no operation leave"), "{errors:?}");
    assert!(errors[1].contains("state_schema"), "{errors:?}");
    assert_eq!(state(&store).await, Value::Null);

    // An output of the wrong shape, or a state the schema refuses, fails
    // the operation and leaves the state as it was.
    apply(&store, &types, &[visit("v1")]).await;
    let done = completion(
        &store,
        CustomOutcome::Completed(json!({"state": {"visits": 50}})),
    )
    .await;
    let batch = apply(&store, &types, &[done]).await;
    let (_, answer) = &batch.told[0];
    assert!(
        answer.as_ref().unwrap_err().contains("state_schema"),
        "{answer:?}"
    );
    assert_eq!(state(&store).await, Value::Null);

    // Without a registered type there are no custom operations.
    let untyped = EntityTypes::default();
    store
        .delete_entity_type(None, &key().entity.entity_type)
        .await
        .unwrap();
    let batch = apply(&store, &untyped, &[visit("v2")]).await;
    let why = batch.outcomes[0].answer().cloned().unwrap().unwrap_err();
    assert!(why.contains("not registered"), "{why}");
}

#[tokio::test]
async fn a_long_queue_drains_over_several_commits_and_a_full_one_refuses() {
    let store = registered().await;
    let types = EntityTypes::default();
    apply(&store, &types, &[visit("v1")]).await;
    for chunk in 0..(MAX_QUEUED / 10) {
        let ops: Vec<EntityOp> = (0..10)
            .map(|n| increment(&format!("n{}", chunk * 10 + n)))
            .collect();
        apply(&store, &types, &ops).await;
    }
    let full = apply(&store, &types, &[increment("late")]).await;
    let why = full.outcomes[0].answer().cloned().unwrap().unwrap_err();
    assert!(why.contains("busy with custom operation visit"), "{why}");
    let done = completion(&store, CustomOutcome::Completed(json!({"answer": "ok"}))).await;
    let batch = apply(&store, &types, &[done]).await;
    assert_eq!(batch.told.len(), 1 + MAX_QUEUED);
    assert_eq!(
        state(&store).await,
        json!({"notes": MAX_QUEUED}),
        "every queued increment once"
    );
    assert!(lock_of(&store, &key()).await.unwrap().is_free());
}

#[tokio::test]
async fn a_type_registered_a_moment_ago_is_read_again_rather_than_refused() {
    let store = SqliteStore::in_memory().unwrap();
    let types = EntityTypes::default();
    // Kept as unregistered by a first batch…
    apply(&store, &types, &[increment("n0")]).await;
    // …then registered: the custom operation is not refused for good.
    let registered = registered_in(store).await;
    let batch = apply(&registered, &types, &[visit("v1")]).await;
    assert!(matches!(batch.outcomes[0].reply, Reply::Later), "begun");
    assert!(batch.start.is_some());
}
