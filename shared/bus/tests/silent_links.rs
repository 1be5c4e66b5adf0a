//! Both buses behind a TCP proxy whose connections go silent without
//! closing (a NAT or load balancer forgetting its flows, a link that
//! drops packets, a peer that hangs): only a deadline notices. Work goes
//! on over new connections, with nothing restarted.
//!
//! - RabbitMQ: connecting through a hung link fails at the broker timeout
//!   instead of waiting forever; when the open connection goes silent, its
//!   missed heartbeats have a publish go out on a new one and the consumer
//!   move to it too.
//! - Service Bus (the stand-in): a request on a silent connection fails at
//!   its deadline (`request_timeout`, or a long poll's wait plus a margin)
//!   and the next goes out on a new connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use legato_bus::{
    Bus, OutgoingMessage, RabbitMqBus, RabbitMqOptions, ServiceBusBus, ServiceBusConnection,
    ServiceBusOptions, Subscription, SubscriptionSpec,
};
use legato_contracts::Topic;
use legato_fault_proxy::{FaultProxy, Link};
use legato_servicebus_standin::{Config, StandIn};

const RABBIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Far more than the few RabbitMQ timeouts each step may take; far less
/// than the 30 s a publish is retried for before giving up.
const RABBIT_ENDS_WITHIN: Duration = Duration::from_secs(20);
/// A Service Bus long poll on a silent connection ends after its wait plus
/// 15 s; the message it may have locked returns after the lock. Both well
/// inside.
const SERVICEBUS_ENDS_WITHIN: Duration = Duration::from_secs(45);

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.into(),
        body: bytes::Bytes::from(id.to_owned()),
        headers: Default::default(),
    }
}

/// Publishes `before` and takes it; returns the connections the proxy has
/// seen so far.
async fn before_the_silence(
    bus: &dyn Bus,
    topic: Topic,
    work: &mut Box<dyn Subscription>,
    proxy: &FaultProxy,
    within: Duration,
) -> u64 {
    bus.publish(topic, "k", message("before")).await.unwrap();
    let d = tokio::time::timeout(within, work.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message_id, "before");
    d.ack().await.unwrap();
    proxy.connections()
}

/// Takes deliveries until `after` comes. What the silent connection held
/// goes back to its queue (so `before`, whose ack may have been lost in
/// the silence, can come again: at least once, as ever).
async fn receive_after(work: &mut Box<dyn Subscription>, within: Duration) {
    let mut seen = Vec::new();
    while !seen.iter().any(|id| id == "after") {
        assert!(seen.len() < 3, "{seen:?}");
        let d = tokio::time::timeout(within, work.next())
            .await
            .expect("the consumer stayed on the silent connection")
            .unwrap();
        seen.push(d.message_id.clone());
        d.ack().await.unwrap();
    }
}

async fn rabbit_proxy() -> FaultProxy {
    FaultProxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap()
}

fn rabbit_options() -> RabbitMqOptions {
    RabbitMqOptions {
        prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
        queue_expiry: Some(Duration::from_secs(60)),
        timeout: RABBIT_TIMEOUT,
    }
}

fn rabbit_uri(proxy: &FaultProxy) -> String {
    // Heartbeats find a silent connection: short ones, so the test is.
    format!("amqp://guest:guest@{}/%2f?heartbeat=2", proxy.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_rabbitmq_through_a_hung_link_fails_at_the_broker_timeout() {
    let proxy = rabbit_proxy().await;
    proxy.set_link(Link::Hung);
    let connected = tokio::time::timeout(
        RABBIT_ENDS_WITHIN,
        RabbitMqBus::connect(&rabbit_uri(&proxy), rabbit_options()),
    )
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
async fn a_rabbitmq_connection_gone_silent_is_replaced_for_publishing_and_consuming() {
    let proxy = rabbit_proxy().await;
    let bus = RabbitMqBus::connect(&rabbit_uri(&proxy), rabbit_options())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest)");
    let mut work = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, "silent").bind("k"))
        .await
        .unwrap();
    let opened = before_the_silence(
        &bus,
        Topic::AgentTasks,
        &mut work,
        &proxy,
        RABBIT_ENDS_WITHIN,
    )
    .await;

    proxy.forget_connections();
    tokio::time::timeout(
        RABBIT_ENDS_WITHIN,
        bus.publish(Topic::AgentTasks, "k", message("after")),
    )
    .await
    .expect("a publish on a silent connection never ended")
    .expect("the publish did not go out on a new connection");
    assert!(proxy.connections() > opened, "no new connection was opened");
    receive_after(&mut work, RABBIT_ENDS_WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bus_requests_on_a_silent_connection_end_at_their_deadline_and_work_goes_on() {
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
    let opened = before_the_silence(
        &bus,
        Topic::Commands,
        &mut work,
        &proxy,
        SERVICEBUS_ENDS_WITHIN,
    )
    .await;

    proxy.forget_connections();
    // A send on a pooled connection gone silent fails at the deadline (the
    // outbox sends it again) and that connection is dropped. The pool may
    // hold several, each failing once: a send goes out on a new connection
    // before every connection seen so far has failed.
    let mut failed = 0;
    loop {
        let sent = tokio::time::timeout(
            SERVICEBUS_ENDS_WITHIN,
            bus.publish(Topic::Commands, "k", message("after")),
        )
        .await
        .expect("a send on a silent connection never ended");
        match sent {
            Ok(()) => break,
            Err(error) => {
                failed += 1;
                assert!(
                    failed <= opened,
                    "{failed} sends failed with {opened} connections seen: {error:?}"
                );
            }
        }
    }
    assert!(proxy.connections() > opened, "no new connection was opened");
    receive_after(&mut work, SERVICEBUS_ENDS_WITHIN).await;
}
