//! A table service that stops answering: Azurite behind a TCP proxy that
//! hangs its connections (open, silent). Each request ends at the request
//! timeout instead of waiting forever, and once the link answers again
//! the store is reached on a new connection, with nothing restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use legato_contracts::RuntimeStatus;
use legato_fault_proxy::{FaultProxy, Link};

use super::*;
use crate::conformance;

/// More than enough for a request that ends at its one-second timeout.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_fails_each_request_at_its_deadline_and_is_used_again_after() {
    let proxy = FaultProxy::start("127.0.0.1:10002".parse().unwrap())
        .await
        .unwrap();
    let store = AzureTableStore::connect_with_timeout(
        &AzureTableConnection::AccountKey {
            account: azure_storage::EMULATOR_ACCOUNT.into(),
            key: azure_storage::EMULATOR_ACCOUNT_KEY.into(),
            endpoint: Some(format!("http://{}/devstoreaccount1/", proxy.addr())),
        },
        "legatotest",
        Duration::from_secs(1),
    )
    .await
    .expect("Azurite must be running on 127.0.0.1:10002 (scripts/test starts it)");
    let record = conformance::record("hung", RuntimeStatus::Running);
    let id = record.summary.id.clone();
    store
        .commit(Commit::new(record, Expected::New))
        .await
        .unwrap();

    proxy.set_link(Link::Hung);
    for _ in 0..2 {
        let answer = tokio::time::timeout(ENDS_WITHIN, store.load(&id))
            .await
            .expect("a request to a silent store never ended");
        assert!(
            matches!(answer, Err(StoreError::Unavailable(_))),
            "{answer:?}"
        );
    }
    let pinged = tokio::time::timeout(ENDS_WITHIN, store.ping())
        .await
        .expect("a ping of a silent store never ended");
    assert!(pinged.is_err());

    proxy.heal();
    let loaded = tokio::time::timeout(ENDS_WITHIN, store.load(&id))
        .await
        .expect("the store was not reached again")
        .unwrap();
    assert_eq!(loaded.unwrap().record.summary.id, id);
    store.purge(&id).await.unwrap();
}
