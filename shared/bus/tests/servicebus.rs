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

    async fn publish_all(&self, messages: Vec<legato_bus::Routed>) -> Result<(), BusError> {
        self.bus.publish_all(messages).await
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

fn message(body: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: uuid::Uuid::new_v4().to_string(),
        body: bytes::Bytes::from(body.to_owned()),
        headers: Default::default(),
    }
}

async fn standin_bus(config: Config, lock: Duration) -> (StandIn, ServiceBusBus) {
    let standin = StandIn::start(config).await.unwrap();
    let connection =
        ServiceBusConnection::from_connection_string(&standin.connection_string()).unwrap();
    let mut options = options(Some(standin.url()));
    options.lock_duration = lock;
    let bus = ServiceBusBus::connect(connection, options).await.unwrap();
    (standin, bus)
}

/// A handler that runs past the lock duration keeps its message: the
/// lock is renewed, nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_held_past_its_lock_is_renewed_not_redelivered() {
    let (standin, bus) = standin_bus(Config::new("renew"), Duration::from_secs(5)).await;
    let spec = SubscriptionSpec::new(Topic::AgentTasks, "slow").bind("slow");
    let mut first = bus.subscribe(spec.clone()).await.unwrap();
    let mut second = bus.subscribe(spec).await.unwrap();
    bus.publish(Topic::AgentTasks, "slow", message("long task"))
        .await
        .unwrap();
    // Either consumer may get it; the other must not while it is held.
    let (held, mut other) = tokio::select! {
        d = first.next() => (d.unwrap(), second),
        d = second.next() => (d.unwrap(), first),
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("not delivered"),
    };
    let again = tokio::time::timeout(Duration::from_secs(12), other.next()).await;
    assert!(again.is_err(), "delivered again while held: {again:?}");
    held.ack().await.unwrap();
    let renewals = standin
        .requests_by_kind()
        .get("renew")
        .copied()
        .unwrap_or(0);
    assert!(renewals >= 3, "{renewals} renewals in 12 s with a 5 s lock");
}

/// An ephemeral group's subscription goes when its consumer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_subscription_is_deleted_with_its_consumer() {
    let (standin, bus) = standin_bus(Config::new("ephemeral"), Duration::from_secs(5)).await;
    let feed = bus
        .subscribe(
            SubscriptionSpec::new(Topic::Progress, "feed-1")
                .bind("#")
                .ephemeral(),
        )
        .await
        .unwrap();
    let topic = standin
        .topics()
        .into_iter()
        .find(|t| t.ends_with("progress"))
        .unwrap();
    assert_eq!(
        standin.subscriptions(&topic).unwrap(),
        vec!["feed-1".to_owned()]
    );
    drop(feed);
    for _ in 0..50 {
        if standin.subscriptions(&topic).unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ephemeral subscription is still there");
}

/// Infrastructure-made entities (`manage_entities` off): a durable group's
/// subscription is not created by the service, but a replica's own
/// (ephemeral) one still is, used, and deleted with its consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_managing_entities_only_a_replicas_own_subscription_is_made() {
    let (standin, _infra) = standin_bus(Config::new("infra-made"), Duration::from_secs(5)).await;
    let bus = unmanaged_bus(&standin).await;
    let topic = |suffix: &str| {
        standin
            .topics()
            .into_iter()
            .find(|t| t.ends_with(suffix))
            .unwrap()
    };
    let _durable = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, "orchestrator").bind("#"))
        .await
        .unwrap();
    assert_eq!(
        standin.subscriptions(&topic("commands")).unwrap(),
        Vec::<String>::new()
    );
    let mut feed = bus
        .subscribe(
            SubscriptionSpec::new(Topic::Progress, "feed-2")
                .bind("#")
                .ephemeral(),
        )
        .await
        .unwrap();
    assert_eq!(
        standin.subscriptions(&topic("progress")).unwrap(),
        vec!["feed-2".to_owned()]
    );
    bus.publish(Topic::Progress, "i-1", message("step started"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.body[..], b"step started");
    d.ack().await.unwrap();
    drop(feed);
    for _ in 0..50 {
        if standin
            .subscriptions(&topic("progress"))
            .unwrap()
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica's subscription outlived it");
}

/// An agent registered at run time gets its task subscription from the
/// adapter even when the infrastructure made every other entity: its
/// tasks wait there for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_managing_entities_an_agents_task_queue_is_still_made() {
    let (standin, _infra) = standin_bus(Config::new("infra-agent"), Duration::from_secs(5)).await;
    let bus = unmanaged_bus(&standin).await;
    let tasks = standin
        .topics()
        .into_iter()
        .find(|t| t.ends_with("agent-tasks"))
        .unwrap();
    let before = standin.subscriptions(&tasks).unwrap();
    let queue = bus
        .subscribe(legato_bus::topology::agent_tasks("late-reviewer"))
        .await
        .unwrap();
    let after = standin.subscriptions(&tasks).unwrap();
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");
    let group = legato_bus::topology::agent_tasks("late-reviewer").group;
    drop(queue);
    bus.publish(Topic::AgentTasks, "late-reviewer", message("review this"))
        .await
        .unwrap();
    assert_eq!(
        bus.waiting(Topic::AgentTasks, &group).await.unwrap(),
        Some(1),
        "read from the subscription's description"
    );
    let mut queue = bus
        .subscribe(legato_bus::topology::agent_tasks("late-reviewer"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), queue.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.body[..], b"review this");
    d.ack().await.unwrap();
}

/// A second bus on the entities another one made, managing none itself
/// (as deployed, where the infrastructure makes them).
async fn unmanaged_bus(standin: &StandIn) -> ServiceBusBus {
    let connection =
        ServiceBusConnection::from_connection_string(&standin.connection_string()).unwrap();
    let mut unmanaged = options(Some(standin.url()));
    unmanaged.prefix = infra_prefix(standin);
    unmanaged.manage_entities = false;
    ServiceBusBus::connect(connection, unmanaged).await.unwrap()
}

/// The prefix the stand-in's topics carry (one run's own).
fn infra_prefix(standin: &StandIn) -> String {
    let commands = standin
        .topics()
        .into_iter()
        .find(|t| t.ends_with("commands"))
        .unwrap();
    commands.trim_end_matches("commands").to_owned()
}

/// Over the size limit is refused for good, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_rejected_not_retried() {
    let (_standin, bus) = standin_bus(Config::new("size"), Duration::from_secs(5)).await;
    let _sub = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, "big").bind("big"))
        .await
        .unwrap();
    let refused = bus
        .publish(Topic::Commands, "big", message(&"x".repeat(300 * 1024)))
        .await;
    assert!(
        matches!(&refused, Err(BusError::Rejected(why)) if why.contains("413")),
        "{refused:?}"
    );
}

/// Keyless: tokens from a managed-identity endpoint (a stand-in that
/// checks the header and the resource), verified by the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_identity_token_is_fetched_cached_and_sent_as_bearer() {
    use std::sync::Arc;

    use legato_servicebus_standin::{Identity, IdentityEndpoint, Rights, TestIssuer};

    let issuer = Arc::new(TestIssuer::new());
    let principals = std::collections::HashMap::from([("legato-app".to_owned(), Rights::ALL)]);
    let standin = StandIn::start(Config::new("keyless").entra(issuer.entra(principals)))
        .await
        .unwrap();
    let identity = IdentityEndpoint::start(
        issuer.clone(),
        Identity {
            secret: "rotating-secret".into(),
            client_id: Some("user-assigned-id".into()),
            object_id: "legato-app".into(),
        },
    )
    .await
    .unwrap();
    let credential = legato_azure::ManagedIdentityCredential::new(
        identity.url(),
        "rotating-secret".into(),
        Some("user-assigned-id".into()),
    )
    .unwrap();
    let connection = ServiceBusConnection::entra(standin.host(), Arc::new(credential));
    let bus = ServiceBusBus::connect(connection, options(Some(standin.url())))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, "keyless").bind("k"))
        .await
        .unwrap();
    bus.publish(Topic::Commands, "k", message("signed by nobody"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.body[..], b"signed by nobody");
    d.ack().await.unwrap();
    assert_eq!(
        identity.issued(),
        vec!["https://servicebus.azure.net".to_owned()],
        "one token, for Service Bus's resource, cached rather than fetched per request"
    );
    // A wrong identity secret gets no token, and the bus says why.
    let wrong = legato_azure::ManagedIdentityCredential::new(
        "http://127.0.0.1:1/msi/token".to_owned(),
        "x".into(),
        None,
    )
    .unwrap();
    let refused = ServiceBusBus::connect(
        ServiceBusConnection::entra(standin.host(), Arc::new(wrong)),
        options(Some(standin.url())),
    )
    .await;
    assert!(refused.is_err());
}

/// A group's dead letters come from two queues (the adapter's copies and
/// Service Bus's own `$DeadLetterQueue`): going idle must leave each of
/// them with a receive, not the pair with one between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_dead_letters_keeps_polling_both_queues_while_idle() {
    let standin = StandIn::start(Config::new("idle")).await.unwrap();
    let connection =
        ServiceBusConnection::from_connection_string(&standin.connection_string()).unwrap();
    let mut options = options(Some(standin.url()));
    options.receive_wait = Duration::from_secs(1);
    let prefix = options.prefix.clone();
    let bus = ServiceBusBus::connect(connection, options).await.unwrap();
    let _group = bus
        .subscribe(SubscriptionSpec::new(Topic::Commands, "quiet").bind("q"))
        .await
        .unwrap();
    let _dead = bus.dead_letters(Topic::Commands, "quiet").await.unwrap();
    let copies = format!("{prefix}dead-letters/subscriptions/commands.quiet");
    let native = format!("{prefix}commands/subscriptions/quiet/$DeadLetterQueue");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = (standin.receives(&copies), standin.receives(&native));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = (standin.receives(&copies), standin.receives(&native));
    assert!(
        after.0 >= before.0 + 2 && after.1 >= before.1 + 2,
        "receives went from {before:?} to {after:?}: a queue stopped being read"
    );
}

#[tokio::test]
async fn an_outbox_group_goes_in_one_request_per_topic() {
    let (_standin, bus) = standin_bus(Config::new("legato-batch"), Duration::from_secs(5)).await;
    let key = format!("k{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut tasks = bus
        .subscribe(SubscriptionSpec::new(Topic::AgentTasks, "batch-tasks").bind(&key))
        .await
        .unwrap();
    let mut progress = bus
        .subscribe(SubscriptionSpec::new(Topic::Progress, "batch-progress").bind("#"))
        .await
        .unwrap();
    let routed = |topic, n: usize| legato_bus::Routed {
        topic,
        routing_key: key.clone(),
        message: OutgoingMessage {
            headers: [("cloudEvents_type".to_owned(), format!("t{n} ✓"))].into(),
            ..message(&format!("m{n} ✓"))
        },
    };
    let group: Vec<_> = (0..5)
        .map(|n| routed(Topic::AgentTasks, n))
        .chain((5..8).map(|n| routed(Topic::Progress, n)))
        .collect();
    let before = bus.operations();
    bus.publish_all(group.clone()).await.unwrap();
    assert_eq!(
        bus.operations().since(&before).sends,
        2,
        "one batch per topic"
    );
    for (sub, sent) in [(&mut tasks, &group[..5]), (&mut progress, &group[5..])] {
        let mut left: std::collections::BTreeMap<_, _> =
            sent.iter().map(|r| (r.message.id.clone(), r)).collect();
        for _ in 0..sent.len() {
            let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("a batched message arrives")
                .unwrap();
            let expected = left.remove(&got.message_id).expect("each once");
            assert_eq!(got.routing_key, key);
            assert_eq!(got.headers, expected.message.headers);
            assert_eq!(got.body, expected.message.body);
            got.ack().await.unwrap();
        }
    }
}
