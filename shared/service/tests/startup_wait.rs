//! A service starting while its link to the broker or the store is cut
//! waits for it (up to `wiring::STARTUP_WAIT`) instead of exiting at once:
//! through a partitioned fault proxy that heals two seconds later, the
//! real RabbitMQ and Azurite (127.0.0.1:10002) are opened all the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use legato_fault_proxy::{FaultProxy, Link};
use legato_service::settings::{BusSettings, StoreSettings};
use legato_service::wiring;
use serde_json::json;

const CUT_FOR: Duration = Duration::from_secs(2);

async fn partitioned(upstream: &str) -> FaultProxy {
    let proxy = FaultProxy::start(upstream.parse().unwrap()).await.unwrap();
    proxy.set_link(Link::Partitioned);
    proxy
}

fn rabbitmq_through(proxy: &FaultProxy) -> BusSettings {
    serde_json::from_value(json!({
        "kind": "rabbitmq",
        "url": format!("amqp://guest:guest@{}/%2f", proxy.addr()),
        "prefix": "startup-wait.",
        "queue_expiry_ms": 60000,
        "timeout_ms": 2000,
    }))
    .unwrap()
}

/// What `opening` opened once the proxy healed, after checking it was
/// still waiting while the link was cut.
async fn opened_once_healed<T>(
    opening: tokio::task::JoinHandle<anyhow::Result<T>>,
    proxy: &FaultProxy,
) -> T {
    tokio::time::sleep(CUT_FOR).await;
    assert!(!opening.is_finished(), "it gave up while the link was cut");
    proxy.heal();
    let opened = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .expect("opened once the link healed")
        .unwrap();
    opened.unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn a_bus_cut_off_at_start_is_waited_for() {
    let proxy = partitioned("127.0.0.1:5672").await;
    let settings = rabbitmq_through(&proxy);
    let opening =
        tokio::spawn(
            async move { wiring::open_bus_within(&settings, Duration::from_secs(60)).await },
        );
    opened_once_healed(opening, &proxy).await;
}

#[tokio::test]
async fn a_bus_cut_off_for_longer_than_the_wait_fails_naming_it() {
    let proxy = partitioned("127.0.0.1:5672").await;
    let opened = wiring::open_bus_within(&rabbitmq_through(&proxy), Duration::from_secs(1)).await;
    let error = format!("{:#}", opened.err().expect("the link stayed cut"));
    assert!(error.starts_with("bus (RabbitMQ at amqp://"), "{error}");
}

#[tokio::test]
async fn a_store_cut_off_at_start_is_waited_for() {
    let proxy = partitioned("127.0.0.1:10002").await;
    let settings: StoreSettings = serde_json::from_value(json!({
        "kind": "azure_table",
        "connection_string": format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
             AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
             TableEndpoint=http://{}/devstoreaccount1;",
            proxy.addr()
        ),
        "table_prefix": "startupwait",
        "request_timeout_ms": 2000,
    }))
    .unwrap();
    let opening = tokio::spawn(async move { wiring::open_store(&settings).await });
    opened_once_healed(opening, &proxy).await;
}
