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
    };
    RabbitMqBus::connect(&uri, options)
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest)")
}

legato_bus::bus_conformance_tests!(rabbit().await);
