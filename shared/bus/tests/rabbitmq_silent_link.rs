//! RabbitMQ behind a TCP proxy that makes connections go silent without
//! closing them (a NAT or load balancer forgetting its flows, a link that
//! drops packets): only a deadline notices. Connecting through a hung
//! link fails at the broker timeout instead of waiting forever; when the
//! open connection goes silent, a publish goes out on a new one and the
//! consumer moves to it too, with nothing restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use legato_bus::{Bus, OutgoingMessage, RabbitMqBus, RabbitMqOptions, SubscriptionSpec};
use legato_contracts::Topic;
use legato_fault_proxy::{FaultProxy, Link};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Far more than the few timeouts each step may take; far less than the
/// 30 s a publish is retried for before giving up.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

async fn proxy() -> FaultProxy {
    FaultProxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap()
}

fn options() -> RabbitMqOptions {
    RabbitMqOptions {
        prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
        queue_expiry: Some(Duration::from_secs(60)),
        timeout: TIMEOUT,
    }
}

fn uri(proxy: &FaultProxy) -> String {
    format!("amqp://guest:guest@{}/%2f", proxy.addr())
}

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.into(),
        body: bytes::Bytes::from(id.to_owned()),
        headers: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_through_a_hung_link_fails_at_the_broker_timeout() {
    let proxy = proxy().await;
    proxy.set_link(Link::Hung);
    let connected =
        tokio::time::timeout(ENDS_WITHIN, RabbitMqBus::connect(&uri(&proxy), options()))
            .await
            .expect("connecting through a hung link never ended");
    let Err(error) = connected else {
        panic!("connected through a hung link");
    };
    assert!(
        error.to_string().contains("did not open a connection"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced_for_publishing_and_consuming() {
    let proxy = proxy().await;
    let bus = RabbitMqBus::connect(&uri(&proxy), options())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest)");
    let mut work = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, "silent").bind("k"))
        .await
        .unwrap();
    bus.publish(Topic::AgentTasks, "k", message("before"))
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
    tokio::time::timeout(
        ENDS_WITHIN,
        bus.publish(Topic::AgentTasks, "k", message("after")),
    )
    .await
    .expect("a publish on a silent connection never ended")
    .expect("the publish did not go out on a new connection");
    assert!(proxy.connections() > opened, "no new connection was opened");
    // The consumer notices its channel no longer answers and opens again
    // on the new connection. What the silent one held goes back to the
    // queue when the broker drops it (so `before`, whose ack may have been
    // lost in the silence, can come again: at least once, as ever).
    let mut seen = Vec::new();
    while !seen.iter().any(|id| id == "after") {
        assert!(seen.len() < 3, "{seen:?}");
        let d = tokio::time::timeout(ENDS_WITHIN, work.next())
            .await
            .expect("the consumer stayed on the silent connection")
            .unwrap();
        seen.push(d.message_id.clone());
        d.ack().await.unwrap();
    }
}
