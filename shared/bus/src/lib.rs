//! The Bus port: topics with routing keys, consumer groups with manual
//! acknowledgement, bounded prefetch, redelivery and dead letters.
//!
//! Semantics every adapter keeps (checked by [`conformance`]):
//! - a message published to a topic reaches every consumer group with a
//!   binding that matches its routing key (AMQP topic patterns: `*` is one
//!   dot-separated word, `#` zero or more), and one consumer within a group;
//! - publishing a work message (any topic but `progress`) that no group is
//!   bound for fails with [`BusError::Unroutable`] instead of vanishing;
//! - delivery is at-least-once: a delivery that is nacked, or dropped without
//!   being settled (a crashed consumer), is delivered again with a higher
//!   `delivery_count`;
//! - after `max_deliveries` failed deliveries (nacked), or when a consumer
//!   says so, the message moves to the group's dead-letter queue with its
//!   reason and never blocks the messages behind it. A delivery its consumer
//!   never settled (the process crashed or lost its connection while holding
//!   it) says little about the message, so those count against a limit
//!   [`UNSETTLED_DELIVERY_FACTOR`] times higher: a message that keeps
//!   killing its consumers is still parked, while one that was merely in
//!   flight during a few crashes is not lost to them.

pub mod conformance;
mod in_process;
mod pattern;
mod rabbitmq;
mod servicebus;
pub mod topology;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use legato_contracts::{DecodeError, Envelope, Topic};

pub use in_process::InProcessBus;
pub use pattern::matches as routing_key_matches;
pub use rabbitmq::{DEFAULT_BROKER_TIMEOUT, EPHEMERAL_DEAD_LETTERS, RabbitMqBus, RabbitMqOptions};
pub use servicebus::{
    DEFAULT_SERVICEBUS_REQUEST_TIMEOUT, PlannedSubscription, RuleFilter, ServiceBusAuth,
    ServiceBusBus, ServiceBusConnection, ServiceBusEntities, ServiceBusOperations,
    ServiceBusOptions, SubscriptionSettings,
};

/// Header carrying why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "x-legato-dead-letter-reason";
/// Header carrying how many deliveries a message had when it was
/// dead-lettered.
pub const DEAD_LETTER_DELIVERIES: &str = "x-legato-dead-letter-deliveries";
/// How many deliveries a poison message gets before it is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Deliveries never settled (consumer crashed) count against
/// `max_deliveries` times this.
pub const UNSETTLED_DELIVERY_FACTOR: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("subscription closed")]
    Closed,
    /// No consumer group is bound for the routing key. Work messages are
    /// refused rather than lost (the outbox keeps them and retries); only
    /// `progress`, which nobody may be watching, is dropped.
    #[error("no consumer group is bound for {0}")]
    Unroutable(String),
    /// The broker refused this request for good (too large, malformed, a
    /// routing pattern it cannot express): retrying it will not help.
    #[error("refused: {0}")]
    Rejected(String),
}

/// Whether a message nobody is bound for may be dropped.
pub fn droppable_when_unrouted(topic: Topic) -> bool {
    topic == Topic::Progress
}

/// Bytes to publish plus the metadata every adapter carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The CloudEvents id; brokers with duplicate detection key on it.
    pub id: String,
    pub body: Bytes,
    pub headers: BTreeMap<String, String>,
}

impl OutgoingMessage {
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, BusError> {
        let mut headers = BTreeMap::new();
        headers.insert(
            "cloudEvents_type".to_owned(),
            envelope.type_name().to_owned(),
        );
        headers.insert(
            "cloudEvents_subject".to_owned(),
            envelope.subject.to_string(),
        );
        if let Some(tp) = &envelope.traceparent {
            headers.insert("traceparent".to_owned(), tp.as_str().to_owned());
        }
        Ok(Self {
            id: envelope.id.clone(),
            body: Bytes::from(envelope.encode()?),
            headers,
        })
    }
}

/// Where a consumer group reads from and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub topic: Topic,
    /// The durable queue shared by all consumers of the group.
    pub group: String,
    /// Routing-key patterns the group's queue is bound with.
    pub bindings: Vec<String>,
    /// Most unsettled deliveries this consumer holds at once.
    pub prefetch: usize,
    pub max_deliveries: u32,
    /// A queue of one process (a notifier replica's feed, an agent
    /// replica's cancellations): it goes away with its consumer instead of
    /// outliving it on the broker.
    pub ephemeral: bool,
}

impl SubscriptionSpec {
    pub fn new(topic: Topic, group: impl Into<String>) -> Self {
        Self {
            topic,
            group: group.into(),
            bindings: Vec::new(),
            prefetch: 16,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            ephemeral: false,
        }
    }

    pub fn bind(mut self, pattern: impl Into<String>) -> Self {
        self.bindings.push(pattern.into());
        self
    }

    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max.max(1);
        self
    }
}

/// A message with where it goes, for [`Bus::publish_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub topic: Topic,
    pub routing_key: String,
    pub message: OutgoingMessage,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError>;

    /// Publishes messages in their order, done once every one is
    /// confirmed (the order they are sent in, not a delivery order: Service
    /// Bus hands them to concurrent receives). An adapter may keep them all in flight at once (RabbitMQ
    /// sends every frame, then awaits the confirms together) instead of a
    /// round trip each; by default, one after the other.
    async fn publish_all(&self, messages: Vec<Routed>) -> Result<(), BusError> {
        for routed in messages {
            self.publish(routed.topic, &routed.routing_key, routed.message)
                .await?;
        }
        Ok(())
    }

    /// Declares the group's queue (idempotently) and starts consuming.
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError>;

    /// Consumes the dead-letter queue of a consumer group.
    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// How many messages wait on a group's queue, ready for a consumer
    /// (not counting deliveries a consumer holds); `None` when the adapter
    /// cannot tell cheaply. A group that does not exist has none waiting.
    async fn waiting(&self, _topic: Topic, _group: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// Publishes an envelope with its payload's routing key.
    async fn publish_envelope(&self, envelope: &Envelope) -> Result<(), BusError> {
        let key = envelope
            .payload
            .routing_key(envelope.subject.as_str())
            .into_owned();
        self.publish(
            envelope.payload.topic(),
            &key,
            OutgoingMessage::from_envelope(envelope)?,
        )
        .await
    }
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// How an adapter settles one delivery.
#[async_trait]
pub trait Settle: Send {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Return for redelivery (dead-lettered instead once deliveries run out).
    async fn nack(self: Box<Self>) -> Result<(), BusError>;
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BusError>;
    /// Called when a delivery is dropped unsettled: redeliver it, as a
    /// broker does when a consumer's connection drops.
    fn abandon(self: Box<Self>);
}

/// One delivery of one message to one consumer. Settle it exactly once;
/// dropping it unsettled returns it to the queue.
pub struct Delivery {
    pub message_id: String,
    pub routing_key: String,
    pub body: Bytes,
    pub headers: BTreeMap<String, String>,
    /// 1 on first delivery.
    pub delivery_count: u32,
    settle: Option<Box<dyn Settle>>,
}

impl Delivery {
    pub fn new(
        message_id: String,
        routing_key: String,
        body: Bytes,
        headers: BTreeMap<String, String>,
        delivery_count: u32,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            message_id,
            routing_key,
            body,
            headers,
            delivery_count,
            settle: Some(settle),
        }
    }

    pub fn decode(&self) -> Result<Envelope, DecodeError> {
        Envelope::decode(&self.body)
    }

    pub async fn ack(mut self) -> Result<(), BusError> {
        match self.settle.take() {
            Some(s) => s.ack().await,
            None => Ok(()),
        }
    }

    pub async fn nack(mut self) -> Result<(), BusError> {
        match self.settle.take() {
            Some(s) => s.nack().await,
            None => Ok(()),
        }
    }

    pub async fn dead_letter(mut self, reason: &str) -> Result<(), BusError> {
        match self.settle.take() {
            Some(s) => s.dead_letter(reason).await,
            None => Ok(()),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.abandon();
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("routing_key", &self.routing_key)
            .field("delivery_count", &self.delivery_count)
            .field("bytes", &self.body.len())
            .finish()
    }
}
