//! The index against a store that answers for a while as if it did not
//! have rows it has (an emulator starting, a failover): index entries are
//! kept through it, and found again after. Azurite sits behind a proxy
//! that, while told to, answers every read of the instances table with
//! "not found" (an entity) or nothing (a query).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::*;
use crate::conformance;

const AZURITE: &str = "http://127.0.0.1:10002";

#[derive(Clone)]
struct Proxy {
    blind: Arc<AtomicBool>,
    client: reqwest::Client,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if proxy.blind.load(Ordering::SeqCst)
        && parts.method == Method::GET
        && path.contains("legatotestinstances")
    {
        let (status, body) = if path.contains("PartitionKey=") {
            (
                StatusCode::NOT_FOUND,
                json!({"odata.error": {"code": "ResourceNotFound",
                    "message": {"lang": "en-US", "value": "The specified resource does not exist."}}}),
            )
        } else {
            (
                StatusCode::OK,
                json!({"odata.metadata": "http://127.0.0.1/devstoreaccount1/$metadata#legatotestinstances",
                    "value": []}),
            )
        };
        return Response::builder()
            .status(status)
            .header("content-type", "application/json;odata=minimalmetadata")
            .header("x-ms-request-id", uuid::Uuid::new_v4().to_string())
            .header("x-ms-version", "2019-02-02")
            .header("date", "Mon, 07 Dec 2026 00:00:00 GMT")
            .header("server", "blind-proxy")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{AZURITE}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.unwrap();
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

/// A store whose requests go through the proxy, and the proxy's switch.
async fn through_proxy(grace: Duration) -> (AzureTableStore, Arc<AtomicBool>) {
    let blind = Arc::new(AtomicBool::new(false));
    let proxy = Proxy {
        blind: blind.clone(),
        client: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let store = AzureTableStore::connect(
        &AzureTableConnection::AccountKey {
            account: azure_storage::EMULATOR_ACCOUNT.into(),
            key: azure_storage::EMULATOR_ACCOUNT_KEY.into(),
            endpoint: Some(format!("http://127.0.0.1:{port}/devstoreaccount1/")),
        },
        "legatotest",
    )
    .await
    .expect("Azurite must be running on 127.0.0.1:10002 (scripts/test starts it)");
    // Blind for longer than the grace, shorter than the confirmation.
    (
        store
            .with_index_grace(grace)
            .with_absence_confirmation(grace * 20),
        blind,
    )
}

#[tokio::test]
async fn index_entries_outlive_a_store_that_answers_not_found_for_a_while() {
    let grace = Duration::from_millis(300);
    let (store, blind) = through_proxy(grace).await;
    let record = conformance::record("blind", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    let workflow = record.summary.workflow.clone();
    let mut commit = Commit::new(record, Expected::New);
    commit.add_timers = vec![TimerRow {
        instance: id.clone(),
        id: "wake".into(),
        due_at: OffsetDateTime::UNIX_EPOCH,
        payload: json!({}),
    }];
    store.commit(commit).await.unwrap();
    let store = &store;
    let query = InstanceQuery {
        workflow: Some(workflow),
        ..Default::default()
    };
    let listed = || async { store.list(&query).await.unwrap().items.len() };
    let timer_due = || async {
        store
            .due_timers(OffsetDateTime::now_utc(), 10_000)
            .await
            .unwrap()
            .iter()
            .any(|t| t.instance == id)
    };
    assert_eq!(listed().await, 1);
    assert!(timer_due().await);
    let entries = index_entries(store, &id).await;
    assert_eq!(entries, 2, "the listing and the timer entry");

    // Twice blind, each time for longer than the grace, with the truth seen
    // in between: every read past the grace finds nothing, and nothing is
    // removed.
    for _ in 0..2 {
        tokio::time::sleep(grace * 2).await;
        blind.store(true, Ordering::SeqCst);
        assert_eq!(listed().await, 0);
        assert!(!timer_due().await);
        tokio::time::sleep(grace * 2).await;
        assert_eq!(listed().await, 0);
        assert!(!timer_due().await);
        blind.store(false, Ordering::SeqCst);
        assert_eq!(index_entries(store, &id).await, 2, "nothing removed");
        tokio::time::sleep(grace * 2).await;
        assert_eq!(listed().await, 1, "listed again");
        assert!(timer_due().await, "the timer is found again");
    }
}

/// The listing and timer entries of the instance `id`.
async fn index_entries(store: &AzureTableStore, id: &InstanceId) -> usize {
    store
        .query(
            &store.index,
            format!("Instance eq {}", odata(id.as_str())),
            usize::MAX,
        )
        .await
        .unwrap()
        .len()
}
