#![allow(clippy::unwrap_used, clippy::expect_used)] // test-support code: a failed step is a failed test
//! The conformance suite every Store adapter runs unchanged:
//! `legato_store::store_conformance_tests!(make_store())` inside a test
//! module expands to one `#[tokio::test]` per case. Cases use fresh instance
//! ids and workflow names, so they are safe against a shared database (an
//! Azurite account) and in any order.

use legato_contracts::{
    InstanceId, ProgressEvent, ProgressKind, RuntimeStatus, ScheduleName, Topic, WorkflowName,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::{
    Commit, DeadLetter, DeadLetterPage, DeadLetterQuery, DefinitionRecord, Expected, HistoryFrom,
    HistoryRow, InstanceQuery, InstanceRecord, InstanceSummary, JsonText, OutboxRow,
    ScheduleRecord, StateParts, Store, StoreError, TenantFilter, TimerRow,
};

mod entities;
pub use entities::*;

const BASE: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

/// The Table Storage endpoint tests use: Azurite on 127.0.0.1:10002, which
/// `scripts/test` installs and starts, unless `LEGATO_TEST_TABLES` names
/// another connection string.
pub fn test_tables() -> String {
    std::env::var("LEGATO_TEST_TABLES").unwrap_or_else(|_| "UseDevelopmentStorage=true".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh record with a unique id and workflow name.
pub fn record(prefix: &str, status: RuntimeStatus) -> InstanceRecord {
    record_for(
        &WorkflowName::parse(unique("w")).unwrap(),
        prefix,
        status,
        BASE,
    )
}

fn record_for(
    workflow: &WorkflowName,
    prefix: &str,
    status: RuntimeStatus,
    created_at: OffsetDateTime,
) -> InstanceRecord {
    InstanceRecord {
        summary: InstanceSummary {
            id: InstanceId::parse(unique(&format!("{prefix}-"))).unwrap(),
            workflow: workflow.clone(),
            workflow_version: 1,
            status,
            tenant: Some("tenant-a".into()),
            created_at,
            updated_at: created_at,
        },
        state: JsonText::of(&json!({"status": status.as_str(), "nested": {"list": [1, 2, 3]}}))
            .unwrap(),
        parts: Default::default(),
    }
}

/// Rows as the orchestrator writes them: row `seq` told watchers `seq % 3`
/// things (so rows 3 and 6 told nothing), numbered on from the rows before.
fn history(seqs: std::ops::RangeInclusive<u64>) -> Vec<HistoryRow> {
    let told = |seq: u64| seq % 3;
    let mut position: u64 = (1..*seqs.start()).map(told).sum();
    seqs.map(|seq| {
        let progress = (0..told(seq))
            .map(|_| {
                position += 1;
                ProgressEvent {
                    position,
                    seq,
                    kind: ProgressKind::StepStarted,
                    status: RuntimeStatus::Running,
                    step: None,
                    item: None,
                    iteration: None,
                    attempt: None,
                    message: None,
                    data: Some(json!({"n": position})),
                }
            })
            .collect();
        HistoryRow {
            seq,
            at: BASE + time::Duration::seconds(seq as i64),
            event: JsonText::of(&json!({"type": "e", "seq": seq})).unwrap(),
            position,
            progress,
        }
    })
    .collect()
}

fn outbox(id: &str) -> OutboxRow {
    OutboxRow {
        id: id.to_owned(),
        topic: Topic::AgentTasks,
        routing_key: "echo".into(),
        body: format!("body-{id}").into_bytes(),
    }
}

fn timer(instance: &InstanceId, id: &str, due: OffsetDateTime) -> TimerRow {
    TimerRow {
        instance: instance.clone(),
        id: id.to_owned(),
        due_at: due,
        payload: json!({"kind": id}),
    }
}

async fn history_rows(store: &dyn Store, id: &InstanceId) -> usize {
    store
        .history(id, HistoryFrom::default(), 100)
        .await
        .unwrap()
        .len()
}

async fn assert_no_outbox_or_timers(store: &dyn Store, id: &InstanceId) {
    let outbox = store.pending_outbox(10_000).await.unwrap();
    assert!(
        !outbox.iter().any(|o| &o.instance == id),
        "outbox rows left for {id}"
    );
    let timers = store.due_timers(BASE, 10_000).await.unwrap();
    assert!(
        !timers.iter().any(|t| &t.instance == id),
        "timers left for {id}"
    );
}

pub async fn create_then_load_returns_the_record(store: &dyn Store) {
    let record = record("create", RuntimeStatus::Pending);
    let version = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let loaded = store
        .load(&record.summary.id)
        .await
        .unwrap()
        .expect("instance exists");
    assert_eq!(loaded.record, record);
    assert_eq!(loaded.version, version);
    let unknown = InstanceId::parse(unique("nobody-")).unwrap();
    assert!(store.load(&unknown).await.unwrap().is_none());
}

pub async fn creating_an_existing_instance_conflicts(store: &dyn Store) {
    let record = record("dup", RuntimeStatus::Pending);
    store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let err = store
        .commit(Commit::new(record, Expected::New))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

pub async fn a_stale_version_conflicts_and_writes_nothing(store: &dyn Store) {
    let mut record = record("stale", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let v1 = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    record.summary.status = RuntimeStatus::Completed;
    let mut first = Commit::new(record.clone(), Expected::Version(v1.clone()));
    first.history = history(1..=1);
    let v2 = store.commit(first).await.unwrap();
    assert_ne!(v1, v2);

    record.summary.status = RuntimeStatus::Failed;
    let mut stale = Commit::new(record, Expected::Version(v1));
    stale.history = history(2..=2);
    stale.outbox = vec![outbox("lost")];
    stale.add_timers = vec![timer(&id, "lost", BASE)];
    let err = store.commit(stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(
        (loaded.record.summary.status, loaded.version),
        (RuntimeStatus::Completed, v2)
    );
    assert_eq!(history_rows(store, &id).await, 1);
    assert_no_outbox_or_timers(store, &id).await;
}

pub async fn concurrent_commits_on_one_version_have_one_winner(store: &dyn Store) {
    let record = record("race", RuntimeStatus::Running);
    let v1 = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let attempt = |n: u64| {
        let mut c = Commit::new(record.clone(), Expected::Version(v1.clone()));
        c.history = history(n..=n);
        c.history[0].seq = 1;
        store.commit(c)
    };
    let (a, b, c, d) = tokio::join!(attempt(1), attempt(2), attempt(3), attempt(4));
    let results = [a, b, c, d];
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::Conflict(_)))
    );
    assert_eq!(
        store
            .history(&record.summary.id, HistoryFrom::default(), 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn history_appends_in_order_and_reads_after_a_sequence_or_position(store: &dyn Store) {
    let record = record("hist", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record.clone(), Expected::New);
    c.history = history(1..=3);
    let v = store.commit(c).await.unwrap();
    let mut c = Commit::new(record, Expected::Version(v));
    c.history = history(4..=6);
    store.commit(c).await.unwrap();
    let all = store
        .history(&id, HistoryFrom::default(), 100)
        .await
        .unwrap();
    assert_eq!(all, history(1..=6));
    assert_eq!(
        all.iter().map(|h| h.position).collect::<Vec<_>>(),
        [1, 3, 3, 4, 6, 6]
    );
    let after = store.history(&id, HistoryFrom::seq(4), 1).await.unwrap();
    assert_eq!(after, history(5..=5));
    // A watcher that saw position 3 resumes at the row that told it 4:
    // row 3, which told nothing after row 2's 3, is not repeated.
    let seqs = |rows: Vec<HistoryRow>| rows.iter().map(|h| h.seq).collect::<Vec<_>>();
    let resumed = store
        .history(&id, HistoryFrom::position(3), 100)
        .await
        .unwrap();
    assert_eq!(seqs(resumed), [4, 5, 6]);
    let resumed = store
        .history(&id, HistoryFrom::position(4), 100)
        .await
        .unwrap();
    assert_eq!(seqs(resumed), [5, 6]);
    let paged = HistoryFrom {
        seq: 5,
        position: 3,
    };
    assert_eq!(seqs(store.history(&id, paged, 100).await.unwrap()), [6]);
    assert!(
        store
            .history(&id, HistoryFrom::position(6), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn outbox_rows_are_pending_until_deleted(store: &dyn Store) {
    let record = record("outbox", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record, Expected::New);
    c.outbox = vec![outbox("m1"), outbox("m2"), outbox("m3")];
    store.commit(c).await.unwrap();
    let mine = |rows: Vec<crate::OutboxEntry>| {
        rows.into_iter()
            .filter(|o| o.instance == id)
            .map(|o| o.row)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        mine(store.pending_outbox(10_000).await.unwrap()),
        vec![outbox("m1"), outbox("m2"), outbox("m3")]
    );
    store
        .delete_outbox(&id, &["m1".into(), "m3".into()])
        .await
        .unwrap();
    assert_eq!(
        mine(store.pending_outbox(10_000).await.unwrap()),
        vec![outbox("m2")]
    );
}

pub async fn timers_come_due_in_order_and_commits_remove_them(store: &dyn Store) {
    let record = record("timers", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record.clone(), Expected::New);
    c.add_timers = vec![
        timer(&id, "late", BASE + time::Duration::hours(1)),
        timer(&id, "second", BASE + time::Duration::seconds(2)),
        timer(&id, "first", BASE + time::Duration::seconds(1)),
    ];
    let v = store.commit(c).await.unwrap();
    let due = |now| {
        let id = id.clone();
        async move {
            store
                .due_timers(now, 10_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|t| t.instance == id)
                .collect::<Vec<_>>()
        }
    };
    let at_5s = due(BASE + time::Duration::seconds(5)).await;
    assert_eq!(
        at_5s.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["first", "second"]
    );
    assert_eq!(
        at_5s[0],
        timer(
            &record.summary.id,
            "first",
            BASE + time::Duration::seconds(1)
        )
    );
    let mut c = Commit::new(record.clone(), Expected::Version(v));
    c.remove_timers = vec!["first".into()];
    store.commit(c).await.unwrap();
    let later = due(BASE + time::Duration::hours(2)).await;
    assert_eq!(
        later.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["second", "late"]
    );
}

pub async fn listing_filters_and_pages_without_gaps(store: &dyn Store) {
    let workflow = WorkflowName::parse(unique("list")).unwrap();
    let mut created = Vec::new();
    for i in 0..25 {
        let status = if i % 5 == 0 {
            RuntimeStatus::Completed
        } else {
            RuntimeStatus::Running
        };
        // Pairs share a timestamp so paging must break ties by id.
        let record = record_for(
            &workflow,
            "list",
            status,
            BASE + time::Duration::seconds(i / 2),
        );
        created.push(record.summary.clone());
        store
            .commit(Commit::new(record, Expected::New))
            .await
            .unwrap();
    }
    let mut query = InstanceQuery {
        workflow: Some(workflow.clone()),
        top: 10,
        ..InstanceQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list(&query).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        seen.extend(page.items);
        match page.continuation {
            Some(token) => query.continuation = Some(token),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut expected = created.clone();
    expected.sort_by(|a, b| (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str())));
    assert_eq!(
        seen, expected,
        "newest first, ties by id, no gaps or repeats"
    );

    let completed = store
        .list(&InstanceQuery {
            workflow: Some(workflow.clone()),
            status: Some(RuntimeStatus::Completed),
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(completed.items.len(), 5);
    assert!(completed.continuation.is_none());

    let window = store
        .list(&InstanceQuery {
            workflow: Some(workflow.clone()),
            created_from: Some(BASE + time::Duration::seconds(2)),
            created_to: Some(BASE + time::Duration::seconds(4)),
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(window.items.len(), 4, "seconds 2 and 3, two instances each");

    // Two more of the workflow: one without a tenant, one of tenant-b.
    for tenant in [None, Some("tenant-b")] {
        let mut other = record_for(&workflow, "list", RuntimeStatus::Running, BASE);
        other.summary.tenant = tenant.map(str::to_owned);
        store
            .commit(Commit::new(other, Expected::New))
            .await
            .unwrap();
    }
    for (filter, expected) in [
        (TenantFilter::All, 27),
        (TenantFilter::Only(Some("tenant-a".into())), 25),
        (TenantFilter::Only(Some("tenant-b".into())), 1),
        (TenantFilter::Only(None), 1),
        (TenantFilter::Only(Some("tenant-c".into())), 0),
    ] {
        let page = store
            .list(&InstanceQuery {
                workflow: Some(workflow.clone()),
                tenant: filter.clone(),
                ..InstanceQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.items.len(), expected, "{filter:?}");
        assert!(
            page.items
                .iter()
                .all(|s| filter.admits(s.tenant.as_deref()))
        );
    }

    let bad = store
        .list(&InstanceQuery {
            continuation: Some("not a token!".into()),
            ..InstanceQuery::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidToken)), "{bad:?}");
}

/// A message id counts once per instance, however late it comes again; a
/// refused commit writes nothing, and purging the instance forgets its ids.
pub async fn claimed_message_ids_are_refused_until_purge(store: &dyn Store) {
    let record = record("claims", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let v1 = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let odd = "odd/id#?\\ \u{e9}".to_owned();
    let long = "long".repeat(500);
    let mut first = Commit::new(record.clone(), Expected::Version(v1.clone()));
    first.history = history(1..=1);
    first.claims = vec!["m1".into(), odd.clone(), long.clone()];
    let v2 = store.commit(first).await.unwrap();

    let mut again = Commit::new(record.clone(), Expected::Version(v2.clone()));
    again.history = history(2..=2);
    again.outbox = vec![outbox("lost")];
    again.add_timers = vec![timer(&id, "lost", BASE)];
    again.claims = vec!["m2".into(), odd.clone()];
    let err = store.commit(again).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed(m) if *m == odd),
        "{err:?}"
    );
    // Even at a version no longer current: the message was applied.
    let mut late = Commit::new(record.clone(), Expected::Version(v1));
    late.claims = vec!["m3".into(), long.clone()];
    let err = store.commit(late).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed(m) if *m == long),
        "{err:?}"
    );
    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded.version, v2, "a refused commit writes nothing");
    assert_no_outbox_or_timers(store, &id).await;

    let mut next = Commit::new(record.clone(), Expected::Version(v2));
    next.history = history(2..=2);
    next.claims = vec!["m2".into()];
    store.commit(next).await.unwrap();
    assert_eq!(history_rows(store, &id).await, 2);

    // Ids are the instance's own.
    let other = self::record("claims", RuntimeStatus::Running);
    let v = store
        .commit(Commit::new(other.clone(), Expected::New))
        .await
        .unwrap();
    let mut theirs = Commit::new(other, Expected::Version(v));
    theirs.claims = vec!["m1".into()];
    store.commit(theirs).await.unwrap();

    assert!(store.purge(&id).await.unwrap());
    let v = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let mut reborn = Commit::new(record, Expected::Version(v));
    reborn.claims = vec!["m1".into(), odd];
    store.commit(reborn).await.unwrap();
}

pub async fn purge_removes_the_whole_instance(store: &dyn Store) {
    let record = record("purge", RuntimeStatus::Completed);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record, Expected::New);
    c.history = history(1..=3);
    c.outbox = vec![outbox("x")];
    c.add_timers = vec![timer(&id, "t", BASE)];
    store.commit(c).await.unwrap();
    assert!(store.purge(&id).await.unwrap());
    assert!(store.load(&id).await.unwrap().is_none());
    assert!(
        store
            .history(&id, HistoryFrom::default(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_no_outbox_or_timers(store, &id).await;
    assert!(!store.purge(&id).await.unwrap(), "nothing left to purge");

    // The outbox relay deleting what it published while the instance is
    // purged (a finished instance purged right away) leaves nothing either.
    for round in 0..10 {
        let racing = self::record("purge-race", RuntimeStatus::Terminated);
        let id = racing.summary.id.clone();
        let mut c = Commit::new(racing, Expected::New);
        c.history = history(1..=2);
        c.outbox = vec![outbox("a"), outbox("b")];
        store.commit(c).await.unwrap();
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let (purged, deleted) = tokio::join!(store.purge(&id), store.delete_outbox(&id, &ids));
        assert!(purged.unwrap(), "round {round}");
        deleted.unwrap();
        assert!(
            store.load(&id).await.unwrap().is_none(),
            "round {round}: the record survived its purge"
        );
    }
}

/// A record like `parent`'s, under the id `id`.
fn record_with_id(parent: &InstanceRecord, id: &InstanceId) -> InstanceRecord {
    let mut record = parent.clone();
    record.summary.id = id.clone();
    record
}

pub async fn descendants_are_found_by_their_parents_id(store: &dyn Store) {
    let parent = record("parent", RuntimeStatus::Running);
    let id = parent.summary.id.clone();
    let child = id.child("code.a1").unwrap();
    let second = id.child("code.a2").unwrap();
    let grandchild = child.child("fix.i3.a1").unwrap();
    // Ids that only look alike: the parent's id with more after it, on
    // either side of the descendants' range.
    let lookalikes = [
        InstanceId::parse(format!("{id}-2")).unwrap(),
        InstanceId::parse(format!("{id}:9")).unwrap(),
        InstanceId::parse(format!("{id}:a")).unwrap(),
    ];
    for one in std::iter::once(&id)
        .chain([&child, &second, &grandchild])
        .chain(lookalikes.iter())
    {
        let commit = Commit::new(record_with_id(&parent, one), Expected::New);
        store.commit(commit).await.unwrap();
    }
    let found = store.descendants(&id, 100).await.unwrap();
    assert_eq!(found, [child.clone(), grandchild.clone(), second.clone()]);
    assert_eq!(store.descendants(&child, 100).await.unwrap(), [grandchild]);
    assert_eq!(store.descendants(&id, 2).await.unwrap().len(), 2);
    assert!(store.descendants(&second, 100).await.unwrap().is_empty());
    for one in &lookalikes {
        assert!(store.purge(one).await.unwrap());
    }
    store.purge(&second).await.unwrap();
    assert_eq!(store.descendants(&id, 100).await.unwrap().len(), 2);
}

pub async fn large_values_round_trip_intact(store: &dyn Store) {
    let mut record = record("large", RuntimeStatus::Running);
    // 2 MiB of varied text: beyond one Azure Table property and entity.
    let big: String = (0..2 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let value = json!({"blob": big, "unicode": "żółć ✓"});
    record.state = JsonText::of(&value).unwrap();
    let id = record.summary.id.clone();
    let mut c = Commit::new(record.clone(), Expected::New);
    c.history = vec![HistoryRow {
        seq: 1,
        at: BASE,
        event: JsonText::of(&value).unwrap(),
        position: 0,
        progress: Vec::new(),
    }];
    store.commit(c).await.unwrap();
    assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
    assert_eq!(
        store
            .history(&id, HistoryFrom::default(), 10)
            .await
            .unwrap()[0]
            .event
            .read::<Value>()
            .unwrap(),
        value
    );
}

/// Parts are written and removed by name with the commit, read back with
/// the record, kept when a commit does not name them (or names none), left
/// untouched by a commit that fails, and purged with the instance; a large
/// part (a run of big outputs) round-trips like any large value.
pub async fn state_parts_change_by_name_with_their_commit(store: &dyn Store) {
    let mut record = record("parts", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let big: String = (0..700_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let part = |v: Value| Some(v);
    record.parts = [
        ("workflow".to_owned(), part(json!({"steps": ["a", "b"]}))),
        ("steps.0".to_owned(), part(json!({"a": 1}))),
        ("tasks.b.0".to_owned(), part(json!([{"output": big}]))),
        ("odd name/#?".to_owned(), part(json!("kept"))),
    ]
    .into();
    let v1 = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded.record, record);

    let mut next = record.clone();
    next.parts = [
        ("steps.0".to_owned(), part(json!({"a": 2}))),
        ("tasks.b.0".to_owned(), None),
        ("tasks.b.1".to_owned(), part(json!([{"output": "small"}]))),
    ]
    .into();
    let v2 = store
        .commit(Commit::new(next.clone(), Expected::Version(v1.clone())))
        .await
        .unwrap();
    let expected: StateParts = [
        ("workflow".to_owned(), part(json!({"steps": ["a", "b"]}))),
        ("steps.0".to_owned(), part(json!({"a": 2}))),
        ("tasks.b.1".to_owned(), part(json!([{"output": "small"}]))),
        ("odd name/#?".to_owned(), part(json!("kept"))),
    ]
    .into();
    assert_eq!(
        store.load(&id).await.unwrap().unwrap().record.parts,
        expected
    );

    // At a stale version nothing of a commit lands.
    next.parts = [
        ("steps.0".to_owned(), part(json!({"a": 3}))),
        ("workflow".to_owned(), None),
    ]
    .into();
    let stale = Commit::new(next, Expected::Version(v1));
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.load(&id).await.unwrap().unwrap().record.parts,
        expected
    );

    // Commits that name no part keep them all, whether their version came
    // from a commit or from a load.
    let mut core_only = record.clone();
    core_only.parts = StateParts::new();
    store
        .commit(Commit::new(core_only.clone(), Expected::Version(v2)))
        .await
        .unwrap();
    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded.record.parts, expected);
    store
        .commit(Commit::new(core_only, Expected::Version(loaded.version)))
        .await
        .unwrap();
    assert_eq!(
        store.load(&id).await.unwrap().unwrap().record.parts,
        expected
    );

    assert!(store.purge(&id).await.unwrap());
    assert!(store.load(&id).await.unwrap().is_none());
    let mut again = record.clone();
    again.parts = StateParts::new();
    store
        .commit(Commit::new(again, Expected::New))
        .await
        .unwrap();
    let reborn = store.load(&id).await.unwrap().unwrap();
    assert!(
        reborn.record.parts.is_empty(),
        "{:?}",
        reborn.record.parts.keys()
    );
}

pub async fn definitions_are_versioned_and_immutable(store: &dyn Store) {
    let name = WorkflowName::parse(unique("def")).unwrap();
    let def = |version: u32, hash: &str| DefinitionRecord {
        name: name.clone(),
        version,
        hash: hash.to_owned(),
        body: json!({"name": name.as_str(), "version": version}),
        registered_at: BASE,
    };
    store.put_definition(&def(1, "h1")).await.unwrap();
    store.put_definition(&def(2, "h2")).await.unwrap();
    store.put_definition(&def(1, "h1")).await.unwrap();
    let err = store.put_definition(&def(1, "changed")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.get_definition(&name, None).await.unwrap(),
        Some(def(2, "h2"))
    );
    assert_eq!(
        store.get_definition(&name, Some(1)).await.unwrap(),
        Some(def(1, "h1"))
    );
    assert_eq!(store.get_definition(&name, Some(3)).await.unwrap(), None);
    let listed: Vec<_> = store
        .list_definitions()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.name == name)
        .collect();
    assert_eq!(listed, vec![def(2, "h2")]);
    store.put_definition(&def(10, "h10")).await.unwrap();
    assert_eq!(
        store.definition_versions(&name).await.unwrap(),
        vec![10, 2, 1],
        "newest first, numerically"
    );
    let unknown = WorkflowName::parse(unique("nodef")).unwrap();
    assert!(
        store
            .definition_versions(&unknown)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A lease has one holder at a time: others wait until it expires, the
/// holder renews it, and of many racing for a free one exactly one wins.
pub async fn leases_have_one_holder_at_a_time(store: &dyn Store) {
    use std::time::Duration;
    let name = unique("lease");
    let long = Duration::from_secs(60);
    assert!(store.acquire_lease(&name, "a", long).await.unwrap());
    assert!(!store.acquire_lease(&name, "b", long).await.unwrap());
    assert!(
        store.acquire_lease(&name, "a", long).await.unwrap(),
        "renewal"
    );
    assert!(!store.acquire_lease(&name, "b", long).await.unwrap());

    let short = unique("lease");
    assert!(
        store
            .acquire_lease(&short, "a", Duration::from_millis(1))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store.acquire_lease(&short, "b", long).await.unwrap(),
        "expired"
    );
    assert!(!store.acquire_lease(&short, "a", long).await.unwrap());

    let raced = unique("lease");
    let attempts: Vec<_> = (0..8)
        .map(|i| store.acquire_lease(&raced, ["p", "q", "r", "s", "t", "u", "v", "w"][i], long))
        .collect();
    let won = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(won, 1, "racing holders");
}

/// A replica's report replaces its last one, every replica's reports on
/// every subject are read back, and one whose time ran out is not.
pub async fn reports_are_replaced_per_replica_and_age_out(store: &dyn Store) {
    use std::time::Duration;
    let (one, two) = (unique("subject"), unique("subject"));
    let long = Duration::from_secs(60);
    async fn on(store: &dyn Store, subject: &str) -> Vec<(String, Value)> {
        let reports = store.reports().await.unwrap().into_iter();
        reports
            .filter(|r| r.subject == subject)
            .map(|r| (r.replica, r.body))
            .collect()
    }
    store
        .put_report(&one, "r/1", &json!({"n": 1}), long)
        .await
        .unwrap();
    store
        .put_report(&one, "r/1", &json!({"n": 2}), long)
        .await
        .unwrap();
    store
        .put_report(&one, "r 2", &json!({"n": 3}), long)
        .await
        .unwrap();
    store
        .put_report(&two, "r/1", &json!({"n": 4}), long)
        .await
        .unwrap();
    assert_eq!(
        on(store, &one).await,
        vec![
            ("r 2".to_owned(), json!({"n": 3})),
            ("r/1".to_owned(), json!({"n": 2}))
        ]
    );
    assert_eq!(
        on(store, &two).await,
        vec![("r/1".to_owned(), json!({"n": 4}))]
    );
    let before = OffsetDateTime::now_utc() - Duration::from_secs(5);
    assert!(
        store
            .reports()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.subject == one)
            .all(|r| r.updated_at > before)
    );

    store
        .put_report(&two, "r/1", &json!({"n": 5}), Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(on(store, &two).await.is_empty(), "a report past its time");
    assert_eq!(on(store, &one).await.len(), 2);
}

/// Dead letters park once per id, list newest first in pages, filter by
/// topic, group and tenant, keep a large body whole, and go when removed.
pub async fn dead_letters_park_once_list_in_pages_and_go_when_removed(store: &dyn Store) {
    let group = unique("g");
    let letter = |n: i64, topic: Topic, tenant: Option<&str>, body: Vec<u8>| {
        let message_id = format!("m{n}");
        DeadLetter {
            id: DeadLetter::id_of(topic, &group, &message_id),
            topic,
            group: group.clone(),
            message_id,
            routing_key: "echo".into(),
            reason: format!("reason {n}"),
            delivery_count: 5,
            instance: Some(format!("i{n}")),
            type_name: Some("legato.task.dispatched.v1".into()),
            tenant: tenant.map(str::to_owned),
            body,
            parked_at: BASE + time::Duration::seconds(n),
        }
    };
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let letters = [
        letter(1, Topic::AgentTasks, None, b"one".to_vec()),
        letter(2, Topic::AgentResults, Some("acme"), b"two".to_vec()),
        letter(3, Topic::AgentTasks, Some("acme"), big),
    ];
    for l in &letters {
        store.park_dead_letter(l).await.unwrap();
    }
    let mut again = letters[0].clone();
    again.parked_at = BASE + time::Duration::seconds(9);
    store.park_dead_letter(&again).await.unwrap();

    let mine = |top: usize, continuation: Option<String>| DeadLetterQuery {
        group: Some(group.clone()),
        top,
        continuation,
        ..DeadLetterQuery::default()
    };
    let ids = |page: &DeadLetterPage| {
        page.items
            .iter()
            .map(|l| l.message_id.clone())
            .collect::<Vec<_>>()
    };
    let all = store.dead_letters(&mine(0, None)).await.unwrap();
    assert_eq!(ids(&all), ["m3", "m2", "m1"], "newest first, parked once");
    assert_eq!(all.items[0], letters[2], "a large body comes back whole");
    assert_eq!(all.continuation, None);
    let first = store.dead_letters(&mine(2, None)).await.unwrap();
    assert_eq!(ids(&first), ["m3", "m2"]);
    let second = store
        .dead_letters(&mine(2, first.continuation.clone()))
        .await
        .unwrap();
    assert_eq!(
        (ids(&second), second.continuation),
        (vec!["m1".to_owned()], None)
    );
    let tasks = DeadLetterQuery {
        topic: Some(Topic::AgentTasks),
        ..mine(0, None)
    };
    assert_eq!(
        ids(&store.dead_letters(&tasks).await.unwrap()),
        ["m3", "m1"]
    );
    let acme = DeadLetterQuery {
        tenant: TenantFilter::Only(Some("acme".into())),
        ..mine(0, None)
    };
    assert_eq!(ids(&store.dead_letters(&acme).await.unwrap()), ["m3", "m2"]);
    let untenanted = DeadLetterQuery {
        tenant: TenantFilter::Only(None),
        ..mine(0, None)
    };
    assert_eq!(ids(&store.dead_letters(&untenanted).await.unwrap()), ["m1"]);
    assert!(matches!(
        store
            .dead_letters(&mine(0, Some("not-a-token".into())))
            .await,
        Err(StoreError::InvalidToken)
    ));

    assert_eq!(
        store.dead_letter(&letters[1].id).await.unwrap(),
        Some(letters[1].clone())
    );
    assert!(store.remove_dead_letter(&letters[2].id).await.unwrap());
    assert!(!store.remove_dead_letter(&letters[2].id).await.unwrap());
    assert_eq!(store.dead_letter(&letters[2].id).await.unwrap(), None);
    assert_eq!(
        ids(&store.dead_letters(&mine(0, None)).await.unwrap()),
        ["m2", "m1"]
    );
}

pub async fn agents_are_registered_at_the_version_read(store: &dyn Store) {
    let prefix = unique("a").replace('-', "");
    let name =
        |local: &str| legato_contracts::AgentName::parse(format!("{prefix}-{local}")).unwrap();
    let at = datetime!(2026-12-06 10:00 UTC);
    let record = |local: &str, tenant: Option<&str>, lease: u64| crate::AgentRecord {
        name: name(local),
        tenant: tenant.map(str::to_owned),
        body: json!({"kind": "pull", "lease_ms": lease}),
        updated_at: at,
    };
    let reviewer = record("reviewer", None, 60_000);
    let v1 = store.put_agent(&reviewer, &Expected::New).await.unwrap();
    assert!(
        matches!(
            store.put_agent(&reviewer, &Expected::New).await,
            Err(StoreError::Conflict(_))
        ),
        "a name is registered once"
    );
    let read = store.get_agent(&reviewer.name).await.unwrap().unwrap();
    assert_eq!(
        (read.record, read.version.clone()),
        (reviewer.clone(), v1.clone())
    );

    // A change at the version read wins once; the same version again loses.
    let changed = crate::AgentRecord {
        updated_at: at + time::Duration::minutes(1),
        ..record("reviewer", None, 5_000)
    };
    let v2 = store
        .put_agent(&changed, &Expected::Version(v1.clone()))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        store.put_agent(&reviewer, &Expected::Version(v1)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_agent(&changed.name)
            .await
            .unwrap()
            .unwrap()
            .record,
        changed
    );

    let owned = record("coder", Some("team-a"), 1_000);
    store.put_agent(&owned, &Expected::New).await.unwrap();
    let listed: Vec<_> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.record)
        .filter(|r| r.name.as_str().starts_with(&prefix))
        .collect();
    assert_eq!(listed, vec![owned.clone(), changed.clone()], "by name");

    assert!(store.delete_agent(&changed.name).await.unwrap());
    assert!(!store.delete_agent(&changed.name).await.unwrap());
    assert_eq!(store.get_agent(&changed.name).await.unwrap(), None);
    assert_eq!(store.get_agent(&name("nobody")).await.unwrap(), None);
    // A deleted name may be registered again, from scratch.
    store.put_agent(&reviewer, &Expected::New).await.unwrap();
}

pub async fn schedules_are_written_at_the_version_read_and_found_when_due(store: &dyn Store) {
    let tenant = unique("t").replace('-', "");
    let name = |local: &str| ScheduleName::parse(format!("{tenant}~{local}")).unwrap();
    let record = |local: &str, due: Option<OffsetDateTime>, n: i64| ScheduleRecord {
        name: name(local),
        tenant: Some(tenant.clone()),
        next_due: due,
        body: json!({"spec": {"workflow": "w"}, "n": n}),
    };
    let long_ago = datetime!(1990-01-01 00:00 UTC);
    let a = record("a", Some(long_ago + time::Duration::seconds(2)), 0);
    let v1 = store.put_schedule(&a, &Expected::New).await.unwrap();
    assert!(matches!(
        store.put_schedule(&a, &Expected::New).await,
        Err(StoreError::Conflict(_))
    ));
    let read = store.get_schedule(&a.name).await.unwrap().unwrap();
    assert_eq!(
        (read.record.clone(), read.version.clone()),
        (a.clone(), v1.clone())
    );
    // A write at the version read wins once; the same version again loses.
    let a2 = record("a", Some(long_ago + time::Duration::seconds(1)), 1);
    let v2 = store
        .put_schedule(&a2, &Expected::Version(v1.clone()))
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        store.put_schedule(&a, &Expected::Version(v1.clone())).await,
        Err(StoreError::Conflict(_))
    ));
    let racers = [record("a", None, 2), record("a", None, 3)];
    let at_v2 = Expected::Version(v2.clone());
    let results =
        futures::future::join_all(racers.iter().map(|r| store.put_schedule(r, &at_v2))).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let after_race = store.get_schedule(&a.name).await.unwrap().unwrap();
    assert_eq!(after_race.record.next_due, None);
    // Put back as due, with two more: one due later, one never.
    let a3 = record("a", Some(long_ago + time::Duration::seconds(1)), 4);
    store
        .put_schedule(&a3, &Expected::Version(after_race.version))
        .await
        .unwrap();
    let b = record("b", Some(long_ago), 0);
    let c = record("c", None, 0);
    let d = record(
        "d",
        Some(OffsetDateTime::now_utc() + time::Duration::days(1)),
        0,
    );
    for r in [&b, &c, &d] {
        store.put_schedule(r, &Expected::New).await.unwrap();
    }
    let due: Vec<String> = store
        .due_schedules(long_ago + time::Duration::seconds(5), 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.record.name.to_string())
        .filter(|n| n.starts_with(&tenant))
        .collect();
    assert_eq!(
        due,
        [b.name.to_string(), a.name.to_string()],
        "earliest first"
    );
    let listed: Vec<String> = store
        .list_schedules(&TenantFilter::Only(Some(tenant.clone())))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.record.name.to_string())
        .collect();
    assert_eq!(
        listed,
        [&a.name, &b.name, &c.name, &d.name].map(|n| n.to_string())
    );
    assert!(
        store
            .list_schedules(&TenantFilter::Only(Some(unique("nobody"))))
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting at a stale version conflicts; at the current one it goes.
    assert!(matches!(
        store.delete_schedule(&a.name, Some(&v1)).await,
        Err(StoreError::Conflict(_))
    ));
    let current = store.get_schedule(&a.name).await.unwrap().unwrap().version;
    assert!(
        store
            .delete_schedule(&a.name, Some(&current))
            .await
            .unwrap()
    );
    assert!(!store.delete_schedule(&a.name, None).await.unwrap());
    assert!(store.delete_schedule(&b.name, None).await.unwrap());
    assert_eq!(store.get_schedule(&a.name).await.unwrap(), None);
    // Moved many times, a schedule is due once, at its latest time; a
    // deleted one is due no more.
    let mut e = record("e", Some(long_ago), 0);
    let mut version = store.put_schedule(&e, &Expected::New).await.unwrap();
    for n in 1..=5 {
        e = record("e", Some(long_ago + time::Duration::seconds(n)), n);
        version = store
            .put_schedule(&e, &Expected::Version(version))
            .await
            .unwrap();
    }
    let due: Vec<_> = store
        .due_schedules(long_ago + time::Duration::seconds(10), 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.record.name.as_str().starts_with(&tenant))
        .map(|s| s.record)
        .collect();
    assert_eq!(due, [e.clone()]);
    assert!(
        store
            .delete_schedule(&e.name, Some(&version))
            .await
            .unwrap()
    );
    assert!(
        store
            .due_schedules(long_ago + time::Duration::seconds(10), 10_000)
            .await
            .unwrap()
            .iter()
            .all(|s| !s.record.name.as_str().starts_with(&tenant))
    );
}

pub async fn journal_entries_are_recorded_once_bounded_and_go_with_the_instance(store: &dyn Store) {
    use legato_contracts::journal::{JournalKey, MAX_ENTRY_BYTES, MAX_TASK_BYTES};
    use legato_contracts::{StepId, TaskKey, TaskRole};
    let record = record("journal", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    store
        .commit(Commit::new(record, Expected::New))
        .await
        .unwrap();
    let key = |step: &str, item: Option<u32>| {
        JournalKey::of(&TaskKey {
            run: 7,
            execution: 0,
            step: StepId::parse(step).unwrap(),
            item,
            iteration: None,
            role: TaskRole::Action,
        })
    };
    let entry = |name: &str, value: Value, attempt: u32| crate::JournalEntry {
        name: name.into(),
        value,
        attempt,
        recorded_at: BASE,
    };
    let (task, other) = (key("write", Some(1)), key("write", Some(12)));
    assert!(store.journal(&id, &task).await.unwrap().is_empty());
    let first = entry("turn 1: model", json!({"text": "draft", "tokens": 12}), 1);
    assert_eq!(
        store.record_journal(&id, &task, &first).await.unwrap(),
        crate::Journaled::Recorded
    );
    // A second writer of the name (a later attempt, a racing copy) gets
    // the first value back; nothing is replaced.
    let again = entry("turn 1: model", json!("another"), 2);
    assert_eq!(
        store.record_journal(&id, &task, &again).await.unwrap(),
        crate::Journaled::RecordedBefore(first.value.clone())
    );
    let long_name = "é".repeat(200);
    let second = entry(&long_name, json!([1, 2, 3]), 2);
    assert_eq!(
        store.record_journal(&id, &task, &second).await.unwrap(),
        crate::Journaled::Recorded
    );
    // Another task's journal, whose key begins like this one's, is apart.
    store
        .record_journal(&id, &other, &entry("turn 1: model", json!(0), 1))
        .await
        .unwrap();
    let read = store.journal(&id, &task).await.unwrap();
    assert_eq!(read, {
        let mut both = vec![first.clone(), second.clone()];
        both.sort_by(|a, b| a.name.cmp(&b.name));
        both
    });
    assert_eq!(store.journal(&id, &other).await.unwrap().len(), 1);

    // Bounded: past the task's total, an entry is refused and not kept.
    let big = json!("x".repeat(MAX_ENTRY_BYTES - 2));
    let fit = MAX_TASK_BYTES / MAX_ENTRY_BYTES;
    let bounded = key("bounded", None);
    for n in 0..fit {
        let recorded = store
            .record_journal(&id, &bounded, &entry(&format!("big {n}"), big.clone(), 1))
            .await
            .unwrap();
        assert_eq!(recorded, crate::Journaled::Recorded, "entry {n}");
    }
    let refused = store
        .record_journal(&id, &bounded, &entry("one too many", big.clone(), 1))
        .await
        .unwrap();
    assert!(
        matches!(&refused, crate::Journaled::Full(why) if why.contains("full")),
        "{refused:?}"
    );
    assert_eq!(store.journal(&id, &bounded).await.unwrap().len(), fit);

    // Cleared on request (a restart), and gone with a purge.
    assert_eq!(store.clear_journal(&id).await.unwrap(), 3 + fit as u64);
    assert!(store.journal(&id, &task).await.unwrap().is_empty());
    store.record_journal(&id, &task, &first).await.unwrap();
    assert!(store.purge(&id).await.unwrap());
    assert!(store.journal(&id, &task).await.unwrap().is_empty());
}

/// Expands to one test per conformance case for the adapter built by `$make`
/// (an expression, evaluated inside each async test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            create_then_load_returns_the_record,
            creating_an_existing_instance_conflicts,
            a_stale_version_conflicts_and_writes_nothing,
            concurrent_commits_on_one_version_have_one_winner,
            history_appends_in_order_and_reads_after_a_sequence_or_position,
            outbox_rows_are_pending_until_deleted,
            timers_come_due_in_order_and_commits_remove_them,
            listing_filters_and_pages_without_gaps,
            claimed_message_ids_are_refused_until_purge,
            purge_removes_the_whole_instance,
            descendants_are_found_by_their_parents_id,
            large_values_round_trip_intact,
            state_parts_change_by_name_with_their_commit,
            definitions_are_versioned_and_immutable,
            leases_have_one_holder_at_a_time,
            reports_are_replaced_per_replica_and_age_out,
            dead_letters_park_once_list_in_pages_and_go_when_removed,
            schedules_are_written_at_the_version_read_and_found_when_due,
            agents_are_registered_at_the_version_read,
            journal_entries_are_recorded_once_bounded_and_go_with_the_instance,
            entity_batches_commit_at_the_version_read_and_apply_each_id_once,
            entities_keep_their_latest_operations_and_every_answer,
            entities_list_by_tenant_and_type_in_pages,
            deleting_an_entity_removes_its_operations_and_ids,
            entity_types_are_registered_per_tenant_at_the_version_read,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make;
                $crate::conformance::$case(&store).await;
            }
        )*
    };
}
