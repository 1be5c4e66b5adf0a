//! Conformance cases of durable entities (see `crate::entity`).

use legato_contracts::{EntityId, EntityType, TenantId};
use serde_json::json;

use super::{BASE, unique};
use crate::{
    ENTITY_OPERATIONS_KEPT, EntityCommit, EntityKey, EntityOperationRow, EntityQuery, EntityRecord,
    Expected, Store, StoreError, TenantFilter, Version,
};

fn key(tenant: Option<&str>, entity_type: &EntityType, id: &str) -> EntityKey {
    EntityKey::new(
        tenant.map(|t| TenantId::parse(t).unwrap()),
        entity_type.clone(),
        EntityId::parse(id).unwrap(),
    )
}

fn fresh_type() -> EntityType {
    EntityType::parse(unique("t")).unwrap()
}

/// Operations `seqs` of an increment each, answered with the count so far
/// (`seq` 7 fails, to keep a failure among them).
fn increments(seqs: std::ops::RangeInclusive<u64>) -> Vec<EntityOperationRow> {
    seqs.map(|seq| EntityOperationRow {
        seq,
        id: format!("op-{seq}"),
        at: BASE + time::Duration::milliseconds(seq as i64),
        operation: json!({"op": "increment"}),
        answer: if seq == 7 {
            Err("increment: 6 + 1 would pass the maximum 6".into())
        } else {
            Ok(json!(seq))
        },
        sender: Some("acme~order-1".into()),
    })
    .collect()
}

/// Commits `operations` on top of what the entity holds (`version`).
async fn apply(
    store: &dyn Store,
    key: &EntityKey,
    version: Option<Version>,
    operations: Vec<EntityOperationRow>,
) -> Result<Version, StoreError> {
    let last = operations.last().map_or(0, |op| op.seq);
    store
        .commit_entity(EntityCommit {
            record: EntityRecord {
                key: key.clone(),
                state: json!({"count": last}),
                lock: if last.is_multiple_of(2) {
                    json!({"holders": [{"instance": "i-1", "key": {"execution": 0, "step": "edit"}}]})
                } else {
                    serde_json::Value::Null
                },
                operations: last,
                updated_at: BASE + time::Duration::seconds(last as i64),
            },
            expected: version.map_or(Expected::New, Expected::Version),
            operations,
        })
        .await
}

pub async fn entity_batches_commit_at_the_version_read_and_apply_each_id_once(store: &dyn Store) {
    let key = key(Some("acme"), &fresh_type(), "jane@example.com");
    assert!(store.load_entity(&key).await.unwrap().is_none());
    let v1 = apply(store, &key, None, increments(1..=3)).await.unwrap();
    assert!(
        matches!(
            apply(store, &key, None, increments(1..=1)).await,
            Err(StoreError::Conflict(_)) | Err(StoreError::Claimed(_))
        ),
        "an entity is created once"
    );
    let loaded = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(loaded.version, v1);
    assert_eq!(loaded.record.state, json!({"count": 3}));
    assert_eq!(loaded.record.lock, serde_json::Value::Null);
    assert_eq!(loaded.record.operations, 3);
    assert_eq!(loaded.record.updated_at, BASE + time::Duration::seconds(3));

    let v2 = apply(store, &key, Some(v1.clone()), increments(4..=7))
        .await
        .unwrap();
    let stale = apply(store, &key, Some(v1), increments(8..=8)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    // An id applied before refuses the whole batch, whatever else it holds.
    let mut again = increments(8..=9);
    again[1].id = "op-2".into();
    let claimed = apply(store, &key, Some(v2.clone()), again).await;
    assert!(
        matches!(&claimed, Err(StoreError::Claimed(id)) if id == "op-2"),
        "{claimed:?}"
    );
    let loaded = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!((loaded.version.clone(), loaded.record.operations), (v2, 7));
    let v3 = apply(store, &key, Some(loaded.version), increments(8..=8))
        .await
        .unwrap();
    let locked = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(
        locked.record.lock["holders"][0]["instance"], "i-1",
        "the lock is kept beside the state"
    );
    apply(store, &key, Some(v3), increments(9..=9))
        .await
        .unwrap();
    let freed = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(
        freed.record.lock,
        serde_json::Value::Null,
        "and goes when it is free"
    );
    assert_eq!(
        store.entity_answer(&key, "op-2").await.unwrap(),
        Some((2, Ok(json!(2))))
    );
    assert_eq!(
        store.entity_answer(&key, "op-7").await.unwrap(),
        Some((7, Err("increment: 6 + 1 would pass the maximum 6".into())))
    );
    assert_eq!(store.entity_answer(&key, "op-10").await.unwrap(), None);
    let recent = store.entity_operations(&key, 2).await.unwrap();
    assert_eq!(
        recent,
        increments(8..=9).into_iter().rev().collect::<Vec<_>>()
    );
}

pub async fn entities_keep_their_latest_operations_and_every_answer(store: &dyn Store) {
    let key = key(None, &fresh_type(), "repo:acme.billing");
    let total = ENTITY_OPERATIONS_KEPT + 20;
    let mut version = None;
    let mut from = 1;
    while from <= total {
        let to = (from + 15).min(total);
        version = Some(
            apply(store, &key, version, increments(from..=to))
                .await
                .unwrap(),
        );
        from = to + 1;
    }
    let recent = store.entity_operations(&key, usize::MAX).await.unwrap();
    let seqs: Vec<u64> = recent.iter().map(|op| op.seq).collect();
    let expected: Vec<u64> = (total - ENTITY_OPERATIONS_KEPT + 1..=total).rev().collect();
    assert_eq!(seqs, expected, "the latest window, newest first");
    assert_eq!(recent[0].sender.as_deref(), Some("acme~order-1"));
    assert_eq!(
        store.entity_answer(&key, "op-1").await.unwrap(),
        Some((1, Ok(json!(1)))),
        "an answer outlives its operation's row"
    );
}

pub async fn entities_list_by_tenant_and_type_in_pages(store: &dyn Store) {
    let (kind, other) = (fresh_type(), fresh_type());
    for (tenant, entity_type, id) in [
        (Some("acme"), &kind, "c"),
        (Some("acme"), &kind, "a"),
        (Some("acme"), &kind, "b"),
        (Some("acme"), &other, "a"),
        (Some("beta"), &kind, "a"),
        (None, &kind, "z"),
    ] {
        apply(
            store,
            &key(tenant, entity_type, id),
            None,
            increments(1..=1),
        )
        .await
        .unwrap();
    }
    let query = |tenant: TenantFilter, top: usize, continuation: Option<String>| EntityQuery {
        entity_type: Some(kind.clone()),
        tenant,
        top,
        continuation,
    };
    let acme = TenantFilter::Only(Some("acme".into()));
    let first = store
        .list_entities(&query(acme.clone(), 2, None))
        .await
        .unwrap();
    let ids: Vec<&str> = first
        .items
        .iter()
        .map(|e| e.key.entity.id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(first.items[0].operations, 1);
    let rest = store
        .list_entities(&query(acme, 2, first.continuation.clone()))
        .await
        .unwrap();
    let ids: Vec<&str> = rest
        .items
        .iter()
        .map(|e| e.key.entity.id.as_str())
        .collect();
    assert_eq!((ids, rest.continuation), (vec!["c"], None));
    let none = store
        .list_entities(&query(TenantFilter::Only(None), 10, None))
        .await
        .unwrap();
    assert_eq!(none.items.len(), 1);
    assert_eq!(none.items[0].key, key(None, &kind, "z"));
    let all = store
        .list_entities(&query(TenantFilter::All, 10, None))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5, "every tenant's, this type only");
    assert!(matches!(
        store
            .list_entities(&query(TenantFilter::All, 1, Some("not a token".into())))
            .await,
        Err(StoreError::InvalidToken)
    ));
}

pub async fn deleting_an_entity_removes_its_operations_and_ids(store: &dyn Store) {
    let key = key(Some("acme"), &fresh_type(), "gone");
    apply(store, &key, None, increments(1..=3)).await.unwrap();
    assert!(store.delete_entity(&key).await.unwrap());
    assert!(store.load_entity(&key).await.unwrap().is_none());
    assert_eq!(store.entity_answer(&key, "op-1").await.unwrap(), None);
    assert!(store.entity_operations(&key, 10).await.unwrap().is_empty());
    assert!(!store.delete_entity(&key).await.unwrap());
    // Made again, it starts from nothing: the same ids apply anew.
    apply(store, &key, None, increments(1..=2)).await.unwrap();
    let loaded = store.load_entity(&key).await.unwrap().unwrap();
    assert_eq!(loaded.record.operations, 2);
}

pub async fn entity_types_are_registered_per_tenant_at_the_version_read(store: &dyn Store) {
    let tenant = TenantId::parse(unique("t").replace('-', "")).unwrap();
    let name = EntityType::parse(unique("c").replace('-', "")).unwrap();
    let at = time::macros::datetime!(2026-12-07 10:00 UTC);
    let record = |tenant: Option<&TenantId>, visits: u64| crate::EntityTypeRecord {
        name: name.clone(),
        tenant: tenant.cloned(),
        body: json!({"state_schema": {"type": "object", "maxProperties": visits}}),
        updated_at: at,
    };
    let shared = record(None, 3);
    let own = record(Some(&tenant), 5);
    let v1 = store
        .put_entity_type(&shared, &Expected::New)
        .await
        .unwrap();
    store.put_entity_type(&own, &Expected::New).await.unwrap();
    assert!(matches!(
        store.put_entity_type(&own, &Expected::New).await,
        Err(StoreError::Conflict(_))
    ));
    // One name, two registrations: the shared one and the tenant's own.
    assert_eq!(
        store
            .get_entity_type(None, &name)
            .await
            .unwrap()
            .unwrap()
            .record,
        shared
    );
    assert_eq!(
        store
            .get_entity_type(Some(&tenant), &name)
            .await
            .unwrap()
            .unwrap()
            .record,
        own
    );
    let other = TenantId::parse(unique("t").replace('-', "")).unwrap();
    assert_eq!(
        store.get_entity_type(Some(&other), &name).await.unwrap(),
        None
    );

    let changed = record(None, 4);
    let v2 = store
        .put_entity_type(&changed, &Expected::Version(v1.clone()))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        store.put_entity_type(&shared, &Expected::Version(v1)).await,
        Err(StoreError::Conflict(_))
    ));
    let listed: Vec<_> = store
        .list_entity_types()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.record)
        .filter(|r| r.name == name)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&changed) && listed.contains(&own));

    assert!(
        store
            .delete_entity_type(Some(&tenant), &name)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_entity_type(Some(&tenant), &name)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_entity_type(Some(&tenant), &name).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .get_entity_type(None, &name)
            .await
            .unwrap()
            .unwrap()
            .record,
        changed
    );
}
