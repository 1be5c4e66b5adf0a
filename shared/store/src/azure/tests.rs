//! The adapter against Azurite: plain, with an account key, and with
//! Entra ID tokens over HTTPS; its races and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::{JsonText, conformance};
use legato_contracts::Topic;
use serde_json::json;

async fn azurite() -> AzureTableStore {
    AzureTableStore::connect(
        &AzureTableConnection::ConnectionString(conformance::test_tables()),
        "legatotest",
    )
    .await
    .expect("Azurite must be running on 127.0.0.1:10002 (scripts/test starts it)")
}

mod against_azurite {
    crate::store_conformance_tests!(super::azurite().await);
}

/// The Container Apps identity endpoint stand-in, for the whole test
/// process on a runtime of its own (each test has its own runtime).
fn identity_endpoint() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let issuer = std::sync::Arc::new(legato_servicebus_standin::TestIssuer::new());
                let identity = legato_servicebus_standin::Identity {
                    secret: "platform-secret".into(),
                    client_id: Some("legato-identity".into()),
                    object_id: "legato-app".into(),
                };
                let endpoint = legato_servicebus_standin::IdentityEndpoint::start(issuer, identity)
                    .await
                    .unwrap();
                tx.send(endpoint.url()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
}

/// Azurite's Table service in OAuth mode over HTTPS, which `scripts/test`
/// starts on 127.0.0.1:10012 with a certificate it makes (trusted
/// through `LEGATO_TLS_CA_FILE`); `LEGATO_TEST_TABLES_OAUTH` names
/// another endpoint.
fn oauth_endpoint() -> String {
    std::env::var("LEGATO_TEST_TABLES_OAUTH")
        .unwrap_or_else(|_| "https://127.0.0.1:10012/devstoreaccount1".to_owned())
}

async fn azurite_with_entra(client_id: &str) -> Result<AzureTableStore, StoreError> {
    let credential = legato_azure::ManagedIdentityCredential::new(
        identity_endpoint().to_owned(),
        "platform-secret".into(),
        Some(client_id.to_owned()),
    )
    .unwrap();
    let connection = AzureTableConnection::Entra {
        account: "devstoreaccount1".into(),
        endpoint: Some(oauth_endpoint()),
        credential: Arc::new(credential),
    };
    AzureTableStore::connect(&connection, "legatoentra").await
}

mod against_azurite_with_entra_tokens {
    crate::store_conformance_tests!(super::azurite_with_entra("legato-identity").await.expect(
        "Azurite in OAuth mode must be running on 127.0.0.1:10012 with its \
             certificate in LEGATO_TLS_CA_FILE (scripts/test starts it)"
    ));
}

/// The OAuth Azurite checks tokens (issuer, audience, lifetime): an
/// identity the endpoint does not know gets no token and no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_from_the_identity_nothing_is_reached() {
    let refused = azurite_with_entra("not-assigned-to-this-app").await;
    let Err(e) = refused else {
        panic!("connected without a token")
    };
    assert!(e.to_string().contains("client_id"), "{e}");
}

/// A token for another service (Service Bus's audience) is refused by
/// the emulator itself: the OAuth mode really checks what it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_refused_by_the_account() {
    #[derive(Debug)]
    struct Fixed(String);
    #[async_trait::async_trait]
    impl azure_core::auth::TokenCredential for Fixed {
        async fn get_token(
            &self,
            _scopes: &[&str],
        ) -> azure_core::Result<azure_core::auth::AccessToken> {
            Ok(azure_core::auth::AccessToken::new(
                self.0.clone(),
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            ))
        }
        async fn clear_cache(&self) -> azure_core::Result<()> {
            Ok(())
        }
    }
    let issuer = legato_servicebus_standin::TestIssuer::new();
    let wrong = issuer.token(
        "https://servicebus.azure.net",
        "legato-app",
        Duration::from_secs(600),
    );
    let connection = AzureTableConnection::Entra {
        account: "devstoreaccount1".into(),
        endpoint: Some(oauth_endpoint()),
        credential: Arc::new(Fixed(wrong)),
    };
    let refused = AzureTableStore::connect(&connection, "legatoentra").await;
    let Err(e) = refused else {
        panic!("a Service Bus token opened the tables")
    };
    assert!(e.to_string().contains("403"), "{e}");
}

async fn rows(store: &AzureTableStore, table: &TableClient, filter: String) -> Vec<String> {
    store
        .query(table, filter, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| text(e, "RowKey").unwrap().to_owned())
        .collect()
}

async fn index_rows(store: &AzureTableStore, id: &InstanceId) -> Vec<String> {
    rows(
        store,
        &store.index,
        format!(
            "Instance eq {} or RowKey eq {}",
            odata(id.as_str()),
            odata(id.as_str())
        ),
    )
    .await
}

fn big(len: usize, seed: u8) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i + usize::from(seed)) % 26) as u8))
        .collect()
}

#[tokio::test]
async fn a_commit_that_lost_its_race_leaves_index_entries_that_readers_remove() {
    let store = azurite().await.with_index_grace(Duration::from_millis(300));
    let record = conformance::record("lost", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let v1 = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    store
        .commit(Commit::new(record.clone(), Expected::Version(v1.clone())))
        .await
        .unwrap();
    let mut stale = Commit::new(record, Expected::Version(v1));
    stale.outbox = vec![OutboxRow {
        id: "m".into(),
        topic: Topic::AgentTasks,
        routing_key: "echo".into(),
        body: b"x".to_vec(),
    }];
    stale.add_timers = vec![TimerRow {
        instance: id.clone(),
        id: "t/#?".into(),
        due_at: OffsetDateTime::UNIX_EPOCH,
        payload: json!({}),
    }];
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict(_))
    ));
    // Listing, marker and timer entries were written before the batch.
    assert_eq!(index_rows(&store, &id).await.len(), 3);
    assert!(
        store
            .due_timers(OffsetDateTime::UNIX_EPOCH, 10_000)
            .await
            .unwrap()
            .iter()
            .all(|t| t.instance != id)
    );
    // The marker names no group: the first read past the grace removes
    // it. The timer's row is missing: that read marks it, one a grace
    // later removes it.
    for left in [2, 1] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        store
            .due_timers(OffsetDateTime::UNIX_EPOCH, 10_000)
            .await
            .unwrap();
        store.pending_outbox(10_000).await.unwrap();
        if left == 2 {
            assert_eq!(
                index_rows(&store, &id).await.len(),
                left,
                "the timer marked only"
            );
        }
    }
    assert_eq!(
        index_rows(&store, &id).await.len(),
        1,
        "only the listing entry is left"
    );
    assert_eq!(
        store
            .list(&InstanceQuery {
                workflow: Some(
                    conformance::record("x", RuntimeStatus::Running)
                        .summary
                        .workflow
                ),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len(),
        0
    );
}

#[tokio::test]
async fn the_relays_delete_after_a_commit_needs_no_lookup() {
    let store = azurite().await;
    let record = conformance::record("relay", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record, Expected::New);
    let message = |id: &str| OutboxRow {
        id: id.into(),
        topic: Topic::AgentTasks,
        routing_key: "echo".into(),
        body: b"x".to_vec(),
    };
    c.outbox = vec![message("a"), message("b")];
    store.commit(c).await.unwrap();
    let remembered = |store: &AzureTableStore| {
        store
            .recent_groups
            .lock()
            .unwrap()
            .contains_key(id.as_str())
    };
    assert!(
        remembered(&store),
        "the group's ETag came back with the batch"
    );
    // Not the whole group: the general path, and the group stays known.
    assert!(store.recent_group(id.as_str(), &["a".into()]).is_none());
    assert!(remembered(&store));
    store
        .delete_outbox(&id, &["b".into(), "a".into()])
        .await
        .unwrap();
    assert!(!remembered(&store));
    let left = store.pending_outbox(100_000).await.unwrap();
    assert!(left.iter().all(|o| o.instance != id));
}

/// A published group is deleted inside the instance's next commit, or by
/// the flush when no commit comes; one already gone does not fail the
/// commit that meant to delete it.
#[tokio::test]
async fn a_published_group_goes_with_the_next_commit_or_the_flush() {
    let store = azurite().await;
    let record = conformance::record("piggyback", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let message = |id: &str| OutboxRow {
        id: id.into(),
        topic: Topic::AgentTasks,
        routing_key: "echo".into(),
        body: b"x".to_vec(),
    };
    async fn groups(store: &AzureTableStore, id: &InstanceId) -> Vec<String> {
        let mut rows: Vec<String> = store
            .outbox_groups(id.as_str())
            .await
            .unwrap()
            .iter()
            .map(|g| text(g, "RowKey").unwrap().to_owned())
            .collect();
        rows.sort();
        rows
    }
    let mut c = Commit::new(record.clone(), Expected::New);
    c.outbox = vec![message("a")];
    let mut version = store.commit(c).await.unwrap();
    store.delete_outbox(&id, &["a".into()]).await.unwrap();
    let first = groups(&store, &id).await;
    assert_eq!(first.len(), 1, "deferred, not deleted yet");
    assert!(store.published.holds(id.as_str(), &first[0]));
    assert!(
        store
            .pending_outbox(100_000)
            .await
            .unwrap()
            .iter()
            .all(|o| o.instance != id),
        "a sweep here does not send it again"
    );

    // The next commit deletes it in its own transaction.
    let mut c = Commit::new(record.clone(), Expected::Version(version));
    c.outbox = vec![message("b")];
    version = store.commit(c).await.unwrap();
    let second = groups(&store, &id).await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);

    // Gone before the commit that meant to delete it (another replica's
    // sweep): the commit still lands.
    store.delete_outbox(&id, &["b".into()]).await.unwrap();
    store
        .delete(&store.instances, id.as_str(), &second[0], None)
        .await
        .unwrap();
    let mut c = Commit::new(record.clone(), Expected::Version(version));
    c.outbox = vec![message("c")];
    store.commit(c).await.unwrap();
    assert_eq!(groups(&store, &id).await.len(), 1);

    // The instance's last group: the flush deletes it.
    store.delete_outbox(&id, &["c".into()]).await.unwrap();
    let mut left = groups(&store, &id).await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = groups(&store, &id).await;
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the flush deleted the last group"
    );
    assert!(!store.published.holds(id.as_str(), &second[0]));
}

#[tokio::test]
async fn a_reader_racing_commits_of_large_states_always_reads_a_whole_one() {
    let store = azurite().await;
    let mut record = conformance::record("racing", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    record.state = JsonText::of(&json!(big(700_000, 0))).unwrap();
    let mut version = store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    let writer = async {
        for n in 1..=8u8 {
            record.state = JsonText::of(&json!(big(700_000, n))).unwrap();
            version = store
                .commit(Commit::new(
                    record.clone(),
                    Expected::Version(version.clone()),
                ))
                .await
                .unwrap();
        }
    };
    let reader = async {
        let mut reads = 0;
        for _ in 0..200 {
            let loaded = store.load(&id).await.unwrap().unwrap();
            assert_eq!(loaded.record.state.read::<String>().unwrap().len(), 700_000);
            reads += 1;
        }
        reads
    };
    let ((), reads) = tokio::join!(writer, reader);
    assert_eq!(reads, 200);
}

#[tokio::test]
async fn account_and_key_work_and_a_wrong_key_is_refused() {
    let account_key = |key: &str| AzureTableConnection::AccountKey {
        account: azure_storage::EMULATOR_ACCOUNT.into(),
        key: key.into(),
        endpoint: Some("http://127.0.0.1:10002/devstoreaccount1/".into()),
    };
    let store = AzureTableStore::connect(
        &account_key(azure_storage::EMULATOR_ACCOUNT_KEY),
        "legatotest",
    )
    .await
    .unwrap();
    let record = conformance::record("keyed", RuntimeStatus::Running);
    store
        .commit(Commit::new(record.clone(), Expected::New))
        .await
        .unwrap();
    assert_eq!(
        store
            .load(&record.summary.id)
            .await
            .unwrap()
            .unwrap()
            .record,
        record
    );
    let wrong = AzureTableStore::connect(&account_key("d3Jvbmcga2V5"), "legatotest").await;
    let Err(error) = wrong else {
        panic!("a wrong key must be refused");
    };
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        !error.to_string().contains("d3Jvbmcga2V5"),
        "the key is not echoed: {error}"
    );
    assert!(!format!("{:?}", account_key("d3Jvbmcga2V5")).contains("d3Jvbmcga2V5"));
}

#[tokio::test]
async fn one_commit_may_carry_more_rows_than_a_batch_holds() {
    let store = azurite().await;
    let record = conformance::record("wide", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let mut c = Commit::new(record, Expected::New);
    c.history = (1..=150)
        .map(|seq| HistoryRow {
            seq,
            at: OffsetDateTime::UNIX_EPOCH,
            event: JsonText::of(&json!({"seq": seq})).unwrap(),
            position: seq,
            progress: Vec::new(),
        })
        .collect();
    c.outbox = (0..150)
        .map(|n| OutboxRow {
            id: format!("m{n:03}"),
            topic: Topic::AgentTasks,
            routing_key: "echo".into(),
            body: vec![1; 100],
        })
        .collect();
    c.add_timers = (0..120)
        .map(|n| TimerRow {
            instance: id.clone(),
            id: format!("t{n}"),
            due_at: OffsetDateTime::UNIX_EPOCH,
            payload: json!(n),
        })
        .collect();
    store.commit(c).await.unwrap();
    assert_eq!(
        store
            .history(&id, HistoryFrom::default(), 1_000)
            .await
            .unwrap()
            .len(),
        150
    );
    assert_eq!(
        store
            .history(&id, HistoryFrom::seq(140), 5)
            .await
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect::<Vec<_>>(),
        vec![141, 142, 143, 144, 145]
    );
    // A resuming watcher's read finds its place inside a page.
    let resumed = store
        .history(&id, HistoryFrom::position(147), 100)
        .await
        .unwrap();
    assert_eq!(
        resumed.iter().map(|h| h.seq).collect::<Vec<_>>(),
        vec![148, 149, 150]
    );
    let mine = store
        .pending_outbox(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.instance == id)
        .count();
    assert_eq!(mine, 150);
    let due = store
        .due_timers(OffsetDateTime::UNIX_EPOCH, 100_000)
        .await
        .unwrap();
    assert_eq!(due.iter().filter(|t| t.instance == id).count(), 120);
    assert!(store.purge(&id).await.unwrap());
    assert!(
        index_rows(&store, &id).await.is_empty(),
        "purge removes the index entries"
    );
}

#[tokio::test]
async fn values_near_every_limit_fit_one_batch_and_superseded_blobs_go() {
    let store = azurite().await;
    let mut record = conformance::record("limits", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    // The largest inline value, four times over: the batch's worst case.
    let inline = big(511_900, 1);
    record.state = JsonText::of(&json!(inline)).unwrap();
    let mut c = Commit::new(record.clone(), Expected::New);
    c.history = vec![HistoryRow {
        seq: 1,
        at: OffsetDateTime::UNIX_EPOCH,
        event: JsonText::of(&json!(inline)).unwrap(),
        position: 0,
        progress: Vec::new(),
    }];
    c.outbox = vec![OutboxRow {
        id: "m".into(),
        topic: Topic::AgentTasks,
        routing_key: "echo".into(),
        body: big(380_000, 5).into_bytes(), // base64 in the group: 506,667 characters
    }];
    c.add_timers = vec![TimerRow {
        instance: id.clone(),
        id: "t".into(),
        due_at: OffsetDateTime::UNIX_EPOCH,
        payload: json!(big(380_000, 2)),
    }];
    let v = store.commit(c).await.unwrap();
    assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);

    let blobs = || {
        rows(
            &store,
            &store.instances,
            format!(
                "PartitionKey eq {} and RowKey ge 'b' and RowKey lt 'c'",
                odata(id.as_str())
            ),
        )
    };
    assert!(blobs().await.is_empty());
    record.state = JsonText::of(&json!(big(3_000_000, 3))).unwrap();
    let v = store
        .commit(Commit::new(record.clone(), Expected::Version(v)))
        .await
        .unwrap();
    assert_eq!(
        blobs().await.len(),
        5,
        "3,000,002 bytes in parts of 640,000"
    );
    assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
    record.state = JsonText::of(&json!(big(1_000_000, 4))).unwrap();
    let v = store
        .commit(Commit::new(record.clone(), Expected::Version(v)))
        .await
        .unwrap();
    assert_eq!(
        blobs().await.len(),
        2,
        "the superseded state's parts are removed"
    );
    record.state = JsonText::of(&json!("small")).unwrap();
    store
        .commit(Commit::new(record.clone(), Expected::Version(v.clone())))
        .await
        .unwrap();
    assert!(blobs().await.is_empty());
    assert_eq!(store.load(&id).await.unwrap().unwrap().record, record);
    // A stale writer's large state is refused and leaves nothing behind.
    let mut stale = record.clone();
    stale.state = JsonText::of(&json!(big(700_000, 6))).unwrap();
    let refused = store.commit(Commit::new(stale, Expected::Version(v))).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert!(blobs().await.is_empty());
}

#[test]
fn versions_carry_the_etag_the_state_blob_reference_and_the_parts_flag() {
    let etag = "W/\"datetime'2026-11-26T10%3A00%3A00Z'\"";
    for version in [
        RecordVersion {
            etag: etag.to_owned(),
            state_ref: Some("abc:3".to_owned()),
            parts: true,
        },
        RecordVersion {
            etag: "e".to_owned(),
            state_ref: None,
            parts: false,
        },
    ] {
        assert_eq!(RecordVersion::decode(&version.encode()), version);
    }
    // Not made here: an ETag whose record may keep parts.
    assert_eq!(
        RecordVersion::decode(&Version("e".to_owned())),
        RecordVersion {
            etag: "e".to_owned(),
            state_ref: None,
            parts: true
        }
    );
}

async fn instance_row(store: &AzureTableStore, id: &InstanceId) -> Entity {
    let (row, _) = store
        .get(&store.instances, id.as_str(), keys::INSTANCE_ROW)
        .await
        .unwrap()
        .unwrap();
    row
}

async fn parts_flag(store: &AzureTableStore, id: InstanceId) -> Option<Value> {
    instance_row(store, &id).await.get(PARTS_FLAG).cloned()
}

/// The instance row says whether the record keeps parts, so a load of one
/// without parts is a point read; a row written before it said so (no
/// flag) is read with its parts as before, and its next commit flags it.
#[tokio::test]
async fn the_instance_row_says_whether_parts_are_kept() {
    let store = azurite().await;
    let whole = conformance::record("whole", RuntimeStatus::Running);
    store
        .commit(Commit::new(whole.clone(), Expected::New))
        .await
        .unwrap();
    assert_eq!(
        parts_flag(&store, whole.summary.id.clone()).await,
        Some(json!(false))
    );
    assert_eq!(
        store.load(&whole.summary.id).await.unwrap().unwrap().record,
        whole
    );

    let mut parted = conformance::record("parted", RuntimeStatus::Running);
    let id = parted.summary.id.clone();
    parted.parts = [("workflow".to_owned(), Some(json!({"steps": ["a"]})))].into();
    store
        .commit(Commit::new(parted.clone(), Expected::New))
        .await
        .unwrap();
    assert_eq!(parts_flag(&store, id.clone()).await, Some(json!(true)));

    // As an older build left it: the same row without the flag.
    let mut row = instance_row(&store, &id).await;
    row.remove(PARTS_FLAG);
    row.retain(|name, _| !name.starts_with("odata.") && name != "Timestamp");
    store
        .upsert(&store.instances, id.as_str(), keys::INSTANCE_ROW, row)
        .await
        .unwrap();
    assert_eq!(parts_flag(&store, id.clone()).await, None);
    let loaded = store.load(&id).await.unwrap().unwrap();
    assert_eq!(loaded.record, parted);

    let mut core_only = parted.clone();
    core_only.parts = StateParts::new();
    store
        .commit(Commit::new(core_only, Expected::Version(loaded.version)))
        .await
        .unwrap();
    assert_eq!(parts_flag(&store, id.clone()).await, Some(json!(true)));
    assert_eq!(store.load(&id).await.unwrap().unwrap().record, parted);
}

#[test]
fn connection_strings_name_their_endpoint() {
    let (emulator, _) = location(&AzureTableConnection::ConnectionString(
        "UseDevelopmentStorage=true".into(),
    ))
    .unwrap();
    assert_eq!(emulator.account(), "devstoreaccount1");
    let (custom, _) = location(&AzureTableConnection::ConnectionString(
        "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:10002/acct/".into(),
    ))
    .unwrap();
    assert_eq!(
        custom
            .url(azure_storage::clients::ServiceType::Table)
            .unwrap()
            .as_str(),
        "http://127.0.0.1:10002/acct"
    );
    assert!(location_err("AccountKey=a2V5").contains("AccountName"));
}

fn location_err(text: &str) -> String {
    match location(&AzureTableConnection::ConnectionString(text.into())) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn schedules_written_before_the_due_index_are_found_when_due() {
    let prefix = format!("legacy{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let store = AzureTableStore::connect(
        &AzureTableConnection::ConnectionString(conformance::test_tables()),
        &prefix,
    )
    .await
    .unwrap();
    // A row as the release before the index wrote it: no index row, and
    // no `DueIndex` naming one.
    let row = |name: &str, due: &str| {
        let body = payload::encode("B", br#"{"spec":{"workflow":"w"}}"#);
        let (mut row, _) = entity("~schedules", name, body);
        row.insert("Tenant".into(), "".into());
        row.insert("NextDue".into(), due.into());
        row
    };
    for (name, due) in [("old-due", "000000000001000"), ("old-never", "~")] {
        store
            .upsert(&store.definitions, "~schedules", name, row(name, due))
            .await
            .unwrap();
    }
    let due = store
        .due_schedules(OffsetDateTime::now_utc(), 100)
        .await
        .unwrap();
    assert_eq!(
        due.iter()
            .map(|s| s.record.name.as_str())
            .collect::<Vec<_>>(),
        ["old-due"]
    );
    // Its next write moves it like any other.
    let mut moved = due[0].record.clone();
    moved.next_due = None;
    store
        .put_schedule(&moved, &Expected::Version(due[0].version.clone()))
        .await
        .unwrap();
    assert!(
        store
            .due_schedules(OffsetDateTime::now_utc(), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_schedules(&TenantFilter::All)
            .await
            .unwrap()
            .len(),
        2
    );
    store.delete_tables().await.unwrap();
}
