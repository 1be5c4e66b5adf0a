//! Service Bus (the stand-in) behind a TCP proxy whose open connections
//! go silent without closing: a request on one fails at its deadline
//! (`request_timeout`, or a long poll's wait plus a margin) instead of
//! waiting forever, and the next goes out on a new connection; publishing
//! and receiving go on with nothing restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use legato_bus::{
    Bus, OutgoingMessage, ServiceBusBus, ServiceBusConnection, ServiceBusOptions, SubscriptionSpec,
};
use legato_contracts::Topic;
use legato_fault_proxy::FaultProxy;
use legato_servicebus_standin::{Config, StandIn};

/// A long poll on a silent connection ends after its wait plus 15 s; the
/// message it may have locked returns after the lock. Both well inside.
const ENDS_WITHIN: Duration = Duration::from_secs(45);

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.into(),
        body: bytes::Bytes::from(id.to_owned()),
        headers: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_silent_connection_end_at_their_deadline_and_work_goes_on() {
    let standin = StandIn::start(Config::new("silent")).await.unwrap();
    let upstream: SocketAddr = standin
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let connection =
        ServiceBusConnection::from_connection_string(&standin.connection_string()).unwrap();
    let options = ServiceBusOptions {
        prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        endpoint: Some(format!("http://{}", proxy.addr())),
        lock_duration: Duration::from_secs(5),
        receive_wait: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..ServiceBusOptions::default()
    };
    let bus = ServiceBusBus::connect(connection, options).await.unwrap();
    let mut work = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, "silent").bind("k"))
        .await
        .unwrap();
    bus.publish(Topic::Commands, "k", message("before"))
        .await
        .unwrap();
    let d = tokio::time::timeout(ENDS_WITHIN, work.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message_id, "before");
    d.ack().await.unwrap();
    let opened = proxy.connections();

    proxy.forget_connections();
    // A send on a pooled connection gone silent fails at the deadline (the
    // outbox sends it again); the next goes out on a new connection.
    let first = tokio::time::timeout(
        ENDS_WITHIN,
        bus.publish(Topic::Commands, "k", message("after")),
    )
    .await
    .expect("a send on a silent connection never ended");
    if first.is_err() {
        tokio::time::timeout(
            ENDS_WITHIN,
            bus.publish(Topic::Commands, "k", message("after")),
        )
        .await
        .expect("the send again never ended")
        .expect("the send again failed");
    }
    assert!(proxy.connections() > opened, "no new connection was opened");
    let mut seen = Vec::new();
    while !seen.iter().any(|id| id == "after") {
        assert!(seen.len() < 3, "{seen:?}");
        let d = tokio::time::timeout(ENDS_WITHIN, work.next())
            .await
            .expect("the receiver stayed on the silent connection")
            .unwrap();
        seen.push(d.message_id.clone());
        d.ack().await.unwrap();
    }
}
