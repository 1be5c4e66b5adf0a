//! The bus conformance suite against the RabbitMQ on 127.0.0.1:5672
//! (`LEGATO_TEST_AMQP_URL` to point elsewhere). Each test uses its own name
//! prefix, and its queues expire a minute after use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use legato_bus::{RabbitMqBus, RabbitMqOptions};

async fn rabbit() -> RabbitMqBus {
    let uri = std::env::var("LEGATO_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let options = RabbitMqOptions {
        prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
        queue_expiry: Some(Duration::from_secs(60)),
        ..RabbitMqOptions::default()
    };
    RabbitMqBus::connect(&uri, options)
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest)")
}

legato_bus::bus_conformance_tests!(rabbit().await);

/// Ephemeral groups (one per process) share one dead-letter queue per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_groups_dead_letter_into_one_shared_queue() {
    use legato_bus::{Bus, EPHEMERAL_DEAD_LETTERS, OutgoingMessage, SubscriptionSpec};
    use legato_contracts::Topic;

    let bus = rabbit().await;
    let mut feed = bus
        .subscribe(
            SubscriptionSpec::new(Topic::Progress, "feed-1")
                .bind("k")
                .ephemeral(),
        )
        .await
        .unwrap();
    let message = OutgoingMessage {
        id: "odd".into(),
        body: bytes::Bytes::from_static(b"odd"),
        headers: Default::default(),
    };
    bus.publish(Topic::Progress, "k", message).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    d.dead_letter("not progress").await.unwrap();
    let mut dead = bus
        .dead_letters(Topic::Progress, EPHEMERAL_DEAD_LETTERS)
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message_id, "odd");
    assert_eq!(d.headers[legato_bus::DEAD_LETTER_REASON], "not progress");
    d.ack().await.unwrap();
}

/// A consumer the broker drops (here: its queue deleted under it, as a
/// recovery that cannot restore it leaves it) is noticed while idle and
/// opened again, queue and bindings declared anew; work then flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_dropped_is_opened_again() {
    use legato_bus::{Bus, BusError, OutgoingMessage, SubscriptionSpec};
    use legato_contracts::Topic;

    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let uri = std::env::var("LEGATO_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let options = RabbitMqOptions {
        prefix: prefix.clone(),
        queue_expiry: Some(Duration::from_secs(60)),
        ..RabbitMqOptions::default()
    };
    let bus = RabbitMqBus::connect(&uri, options).await.unwrap();
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, "dropped").bind("k"))
        .await
        .unwrap();
    let message = |id: &str| OutgoingMessage {
        id: id.into(),
        body: bytes::Bytes::from_static(b"{}"),
        headers: Default::default(),
    };
    let deleted = tokio::process::Command::new("rabbitmqctl")
        .args(["delete_queue", &format!("{prefix}agent-tasks.dropped")])
        .status()
        .await
        .expect("rabbitmqctl runs");
    assert!(deleted.success());
    let receive = tokio::spawn(async move {
        let delivery = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("the consumer came back within 30 s")
            .unwrap();
        delivery.message_id.clone()
    });
    // Refused as unroutable until the subscription has declared its queue
    // and binding again.
    let mut sent = false;
    for _ in 0..300 {
        match bus.publish(Topic::AgentTasks, "k", message("after")).await {
            Ok(()) => {
                sent = true;
                break;
            }
            Err(BusError::Unroutable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent, "the queue was never declared again");
    assert_eq!(receive.await.unwrap(), "after");
}
