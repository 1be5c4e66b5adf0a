//! The RabbitMQ adapter (AMQP 0-9-1 through `lapin`).
//!
//! - One durable topic exchange per topic: `<prefix>commands`,
//!   `<prefix>agent-tasks`, `<prefix>agent-results`, `<prefix>progress`.
//! - One durable quorum queue per consumer group, `<prefix><topic>.<group>`,
//!   bound with the group's routing-key patterns. Quorum queues count
//!   deliveries (`x-delivery-count`), which is what `delivery_count` and
//!   `max_deliveries` rest on. Ephemeral groups get an exclusive, auto-delete
//!   classic queue instead.
//! - Each group's dead letters go to `<prefix><topic>.<group>.dead`, with the
//!   reason in the `x-legato-dead-letter-reason` header. The adapter moves
//!   them itself (publish to the dead-letter queue, confirmed, then ack), so
//!   the reason is ours and a poison message never blocks its queue.
//! - Messages are persistent and every publish waits for the broker's
//!   confirm; consumers use manual acks with a bounded prefetch.
//! - A lost connection is replaced, not recovered in place: the first
//!   publish or subscription that finds it gone opens a new one (once, for
//!   all of them), and every subscription opens its channel and consumer
//!   again on it, retrying while the broker is away. lapin's own automatic
//!   recovery is left off: a connection it brought back late would restore
//!   consumers nobody reads any more (holding their prefetched messages)
//!   and exclusive queues the new connection needs. Unacked deliveries of a
//!   lost connection return to their queue, so nothing is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use legato_contracts::Topic;

use crate::{
    Bus, BusError, DEAD_LETTER_DELIVERIES, DEAD_LETTER_REASON, Delivery, OutgoingMessage, Routed,
    Settle, Subscription, SubscriptionSpec,
};

/// How long a publish keeps trying (on a new connection, while the broker
/// restarts) before it reports the bus unavailable.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// [`RabbitMqOptions::timeout`] unless set.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(15);
/// How many [`RabbitMqOptions::timeout`]s opening a connection may take.
const CONNECT_TIMEOUTS: u32 = 4;
/// A subscription idle this long checks that its consumer still exists on
/// the broker and opens a new one if a recovery left it without.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Attempts, a second apart, to open a subscription again (on a new
/// connection if need be) before its consumer reports the bus unavailable.
const REOPEN_ATTEMPTS: usize = 300;
const CONTENT_TYPE: &str = "application/cloudevents+json";
const DELIVERY_COUNT: &str = "x-delivery-count";
/// The group name whose dead-letter queue ephemeral groups share:
/// `dead_letters(topic, EPHEMERAL_DEAD_LETTERS)` reads them.
pub const EPHEMERAL_DEAD_LETTERS: &str = "ephemeral";

/// How the adapter names and keeps its broker objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitMqOptions {
    /// Prepended to every exchange and queue name (tests and tenants of a
    /// shared broker use their own).
    pub prefix: String,
    /// Delete queues unused for this long (`x-expires`); `None` keeps them.
    /// Tests set it so their unique queues do not pile up on the broker.
    pub queue_expiry: Option<Duration>,
    /// A quarter of the longest opening a connection may take, and the
    /// wait for a publish's confirm (one that has not come by then is taken as lost
    /// and the message sent again; consumers deduplicate by message id).
    /// A connection gone silent (a peer that hangs, a flow a NAT forgot)
    /// is found by missed AMQP heartbeats (the url's `heartbeat`, else the
    /// broker's) and replaced.
    pub timeout: Duration,
}

impl Default for RabbitMqOptions {
    fn default() -> Self {
        Self {
            prefix: "legato.".into(),
            queue_expiry: None,
            timeout: DEFAULT_BROKER_TIMEOUT,
        }
    }
}

#[derive(Clone)]
pub struct RabbitMqBus {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    link: std::sync::RwLock<Arc<Link>>,
    /// Held while a new connection is opened, so that many callers who saw
    /// the old one fail open one between them.
    relinking: tokio::sync::Mutex<()>,
    options: RabbitMqOptions,
}

/// A connection and the channel everything is published on.
struct Link {
    connection: Connection,
    publisher: Channel,
    generation: u64,
}

fn exchange_name(options: &RabbitMqOptions, topic: Topic) -> ShortString {
    format!("{}{}", options.prefix, topic.as_str()).into()
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RabbitMqBus {
    /// Connects (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`) and declares
    /// the topic exchanges.
    pub async fn connect(uri: &str, options: RabbitMqOptions) -> Result<Self, BusError> {
        let link = Self::open_link(uri, &options, 0).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                uri: uri.to_owned(),
                link: std::sync::RwLock::new(Arc::new(link)),
                relinking: tokio::sync::Mutex::new(()),
                options,
            }),
        })
    }

    async fn open_link(
        uri: &str,
        options: &RabbitMqOptions,
        generation: u64,
    ) -> Result<Link, BusError> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("legato"));
        let amqp: lapin::uri::AMQPUri = uri
            .parse()
            .map_err(|e: String| BusError::Unavailable(format!("the bus url: {e}")))?;
        // Heartbeats find a connection gone silent, on both sides: the
        // client fails it (and it is replaced, its consumers opened again),
        // and the broker closes it and puts back what its consumers held.
        // Their interval is the url's `heartbeat`, else the broker's: a
        // shorter default (15 s) failed the soak under kill -9s.
        // A broker busy declaring queues is slow to accept, not silent: the
        // handshake gets several timeouts; past them the link is taken as
        // hung (and the heartbeat watches everything after it).
        let patience = options.timeout.saturating_mul(CONNECT_TIMEOUTS);
        let connection = tokio::time::timeout(patience, Connection::connect_uri(amqp, properties))
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "the broker did not open a connection within {patience:?}"
                ))
            })?
            .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        for topic in Topic::ALL {
            publisher
                .exchange_declare(
                    exchange_name(options, topic),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(Link {
            connection,
            publisher,
            generation,
        })
    }

    fn link(&self) -> Arc<Link> {
        match self.inner.link.read() {
            Ok(link) => link.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces a lost connection (or one whose publishing channel the
    /// broker closed) with a new one, unless another caller already did.
    async fn relink(&self, failed: &Link) -> Result<Arc<Link>, BusError> {
        let _one_at_a_time = self.inner.relinking.lock().await;
        let current = self.link();
        if current.generation != failed.generation {
            return Ok(current);
        }
        let link = Arc::new(
            Self::open_link(&self.inner.uri, &self.inner.options, failed.generation + 1).await?,
        );
        let old = {
            let mut slot = match self.inner.link.write() {
                Ok(slot) => slot,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *slot, link.clone())
        };
        tracing::warn!("opened a new broker connection after the old one failed to recover");
        tokio::spawn(async move {
            let _ = old.connection.close(200, "replaced".into()).await;
        });
        Ok(link)
    }

    fn exchange(&self, topic: Topic) -> ShortString {
        exchange_name(&self.inner.options, topic)
    }

    fn queue(&self, topic: Topic, group: &str) -> String {
        format!("{}{}.{}", self.inner.options.prefix, topic.as_str(), group)
    }

    fn dead_queue(&self, topic: Topic, group: &str) -> String {
        format!("{}.dead", self.queue(topic, group))
    }

    fn durable_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(expiry) = self.inner.options.queue_expiry {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(expiry.as_millis() as i64),
            );
        }
        args
    }

    async fn declare_durable(&self, channel: &Channel, name: &str) -> Result<(), BusError> {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::durable(),
                self.durable_arguments(),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Publishes with confirmation, on a new connection if the old one is
    /// lost, for up to [`PUBLISH_PATIENCE`].
    async fn publish_raw(
        &self,
        exchange: ShortString,
        routing_key: &str,
        message: &OutgoingMessage,
        mandatory: bool,
    ) -> Result<(), BusError> {
        let properties = properties(message);
        let mut last_error = None;
        let mut link = self.link();
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        while tokio::time::Instant::now() < deadline {
            let publisher = link.publisher.clone();
            let sent = async {
                publisher
                    .basic_publish(
                        exchange.clone(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory,
                            ..BasicPublishOptions::default()
                        },
                        &message.body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            let timeout = self.inner.options.timeout;
            let Ok(sent) = tokio::time::timeout(timeout, sent).await else {
                // A busy broker confirms late; a silent connection is
                // found by its missed heartbeats and then replaced here.
                tracing::warn!("no confirm within {timeout:?}; publishing again");
                last_error = Some(format!("no confirm within {timeout:?}"));
                if !link.publisher.status().connected()
                    && let Ok(new) = self.relink(&link).await
                {
                    link = new;
                }
                continue;
            };
            match sent {
                // A mandatory message no queue took comes back with the ack.
                Ok(Confirmation::Ack(Some(_))) => {
                    return Err(unroutable(&exchange, routing_key));
                }
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Nack(_)) => {
                    return Err(BusError::Unavailable(
                        "the broker refused the message".into(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("publish failed, on a new connection if need be: {e}");
                    last_error = Some(e.to_string());
                    if link.publisher.status().connected() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    match self.relink(&link).await {
                        Ok(new) => link = new,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
        }
        Err(BusError::Unavailable(last_error.unwrap_or_default()))
    }

    async fn consume(
        &self,
        channel: Channel,
        queue: &str,
        prefetch: usize,
    ) -> Result<Consumer, BusError> {
        channel
            .basic_qos(
                prefetch.clamp(1, u16::MAX as usize) as u16,
                BasicQosOptions::default(),
            )
            .await
            .map_err(unavailable)?;
        channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }
}

/// A mandatory message no queue took.
fn unroutable(exchange: &ShortString, routing_key: &str) -> BusError {
    BusError::Unroutable(format!("{exchange} with routing key {routing_key:?}"))
}

/// Persistent, with the message's id and headers.
fn properties(message: &OutgoingMessage) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(message.id.clone().into())
        .with_headers(to_table(&message.headers))
}

fn to_table(headers: &BTreeMap<String, String>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    table
}

fn from_table(table: Option<&FieldTable>) -> (BTreeMap<String, String>, Option<u32>) {
    let mut headers = BTreeMap::new();
    let mut previous_deliveries = None;
    for (k, v) in table.map(|t| t.inner().iter()).into_iter().flatten() {
        let number = match v {
            AMQPValue::LongLongInt(n) => Some(*n),
            AMQPValue::LongInt(n) => Some(i64::from(*n)),
            AMQPValue::LongUInt(n) => Some(i64::from(*n)),
            AMQPValue::ShortInt(n) => Some(i64::from(*n)),
            _ => None,
        };
        if k.as_str() == DELIVERY_COUNT {
            previous_deliveries = number.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            continue;
        }
        match v {
            AMQPValue::LongString(s) => {
                headers.insert(
                    k.to_string(),
                    String::from_utf8_lossy(s.as_bytes()).into_owned(),
                );
            }
            AMQPValue::ShortString(s) => {
                headers.insert(k.to_string(), s.to_string());
            }
            _ => {}
        }
    }
    (headers, previous_deliveries)
}

#[async_trait]
impl Bus for RabbitMqBus {
    async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError> {
        let mandatory = !crate::droppable_when_unrouted(topic);
        self.publish_raw(self.exchange(topic), routing_key, &message, mandatory)
            .await
    }

    /// Every frame sent in order on the publishing channel, then the
    /// confirms awaited together: one round trip for the lot. From the
    /// first message not confirmed that way (a lost connection, a nack, no
    /// confirm in time) the rest go one at a time with [`Self::publish`]'s
    /// patience; a message sent twice is a redelivery consumers expect.
    async fn publish_all(&self, messages: Vec<Routed>) -> Result<(), BusError> {
        let link = self.link();
        let mut confirms = Vec::with_capacity(messages.len());
        for routed in &messages {
            let options = BasicPublishOptions {
                mandatory: !crate::droppable_when_unrouted(routed.topic),
                ..BasicPublishOptions::default()
            };
            let sent = link
                .publisher
                .basic_publish(
                    self.exchange(routed.topic),
                    routed.routing_key.as_str().into(),
                    options,
                    &routed.message.body,
                    properties(&routed.message),
                )
                .await;
            match sent {
                Ok(confirm) => confirms.push(confirm),
                Err(_) => break,
            }
        }
        let mut confirmed = 0;
        if let Ok(answers) = tokio::time::timeout(
            self.inner.options.timeout,
            futures::future::join_all(confirms),
        )
        .await
        {
            for (answer, routed) in answers.into_iter().zip(&messages) {
                match answer {
                    Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => confirmed += 1,
                    Ok(Confirmation::Ack(Some(_))) => {
                        return Err(unroutable(
                            &self.exchange(routed.topic),
                            &routed.routing_key,
                        ));
                    }
                    Ok(Confirmation::Nack(_)) | Err(_) => break,
                }
            }
        }
        for routed in messages.into_iter().skip(confirmed) {
            self.publish(routed.topic, &routed.routing_key, routed.message)
                .await?;
        }
        Ok(())
    }

    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        self.subscription(Source::Group(spec)).await
    }

    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.subscription(Source::DeadLetters(self.dead_queue(topic, group)))
            .await
    }

    /// The queue's ready messages, from a passive declaration on a channel
    /// of its own (a missing queue closes the channel it was asked on).
    async fn waiting(&self, topic: Topic, group: &str) -> Result<Option<u64>, BusError> {
        let channel = self
            .link()
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(
                self.queue(topic, group).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await;
        let count = match declared {
            Ok(declared) => declared.message_count(),
            // NOT_FOUND: no such group, so nothing waits on it.
            Err(_) => 0,
        };
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        Ok(Some(u64::from(count)))
    }
}

/// What a subscription reads, kept so that it can be opened again.
enum Source {
    Group(SubscriptionSpec),
    /// A dead-letter queue, read to inspect or replay it.
    DeadLetters(String),
}

impl Source {
    /// Where this subscription's dead letters go (`None` when reading them).
    fn dead_queue(&self, bus: &RabbitMqBus) -> Option<String> {
        match self {
            // An ephemeral group's name is new with every process; its dead
            // letters go to one durable queue per topic rather than leaving
            // a queue behind for every process that ever ran.
            Source::Group(spec) if spec.ephemeral => {
                Some(bus.dead_queue(spec.topic, EPHEMERAL_DEAD_LETTERS))
            }
            Source::Group(spec) => Some(bus.dead_queue(spec.topic, &spec.group)),
            Source::DeadLetters(_) => None,
        }
    }

    fn queue(&self, bus: &RabbitMqBus) -> String {
        match self {
            Source::Group(spec) => bus.queue(spec.topic, &spec.group),
            Source::DeadLetters(queue) => queue.clone(),
        }
    }

    fn max_deliveries(&self) -> u32 {
        match self {
            Source::Group(spec) => spec.max_deliveries,
            Source::DeadLetters(_) => u32::MAX,
        }
    }
}

impl RabbitMqBus {
    async fn subscription(&self, source: Source) -> Result<Box<dyn Subscription>, BusError> {
        let (channel, consumer) = self.open(&source).await?;
        Ok(Box::new(RabbitSubscription {
            bus: self.clone(),
            channel,
            consumer,
            source,
        }))
    }

    /// Declares what the subscription reads (idempotent) and starts a
    /// consumer on a channel of its own.
    async fn open(&self, source: &Source) -> Result<(Channel, Consumer), BusError> {
        let link = self.link();
        let channel = match link.connection.create_channel().await {
            Ok(channel) => channel,
            // A lost connection does not come back by itself.
            Err(e) if !link.connection.status().connected() => {
                tracing::warn!("cannot open a channel ({e}); opening a new connection");
                self.relink(&link)
                    .await?
                    .connection
                    .create_channel()
                    .await
                    .map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        let queue = source.queue(self);
        let prefetch = match source {
            Source::Group(spec) => {
                if spec.ephemeral {
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                exclusive: true,
                                auto_delete: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map_err(unavailable)?;
                } else {
                    self.declare_durable(&channel, &queue).await?;
                }
                for pattern in &spec.bindings {
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            self.exchange(spec.topic),
                            pattern.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(unavailable)?;
                }
                spec.prefetch
            }
            Source::DeadLetters(_) => 16,
        };
        if let Some(dead) = source.dead_queue(self) {
            self.declare_durable(&channel, &dead).await?;
        } else {
            self.declare_durable(&channel, &queue).await?;
        }
        let consumer = self.consume(channel.clone(), &queue, prefetch).await?;
        Ok((channel, consumer))
    }
}

struct RabbitSubscription {
    bus: RabbitMqBus,
    channel: Channel,
    consumer: Consumer,
    source: Source,
}

impl RabbitSubscription {
    /// Whether the broker still has this subscription's consumer. Automatic
    /// recovery can come back without it (a quorum queue not yet available
    /// when the consumer was restored), which would otherwise look like an
    /// idle queue forever.
    async fn consuming(&self) -> bool {
        if !self.channel.status().connected() {
            return false;
        }
        let queue = self.source.queue(&self.bus);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match self
            .channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(declared) => declared.consumer_count() > 0,
            Err(_) => false,
        }
    }

    /// A new channel and consumer in place of a lost one, retried while the
    /// connection recovers.
    async fn reopen(&mut self) -> Result<(), BusError> {
        let mut last = None;
        for _ in 0..REOPEN_ATTEMPTS {
            match self.bus.open(&self.source).await {
                Ok((channel, consumer)) => {
                    let old = std::mem::replace(&mut self.channel, channel);
                    self.consumer = consumer;
                    tokio::spawn(async move {
                        let _ = old.close(200, "replaced".into()).await;
                    });
                    tracing::warn!(
                        queue = %self.source.queue(&self.bus),
                        "consumer opened again after the broker lost it"
                    );
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(last.unwrap_or(BusError::Closed))
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        // Closing the channel returns its unacked deliveries to the queue,
        // as a crashed consumer's connection would.
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close(200, "subscription dropped".into()).await;
            });
        }
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let delivery = match tokio::time::timeout(IDLE_CHECK, self.consumer.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => {
                    tracing::warn!("consumer interrupted, opening it again: {e}");
                    self.reopen().await?;
                    continue;
                }
                // The channel ended: the broker cancelled the consumer or
                // closed the channel, or the connection went and did not
                // recover (`open` replaces it then).
                Ok(None) => {
                    self.reopen().await?;
                    continue;
                }
                Err(_idle) => {
                    if !self.consuming().await {
                        self.reopen().await?;
                    }
                    continue;
                }
            };
            let (headers, previous) = from_table(delivery.properties.headers().as_ref());
            // Quorum queues count earlier deliveries; a classic (ephemeral)
            // queue only says whether there was one.
            let count = previous.map_or(if delivery.redelivered { 2 } else { 1 }, |p| {
                p.saturating_add(1)
            });
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let settle = RabbitSettle {
                bus: self.bus.clone(),
                acker: delivery.acker,
                dead_queue: self.source.dead_queue(&self.bus),
                count,
                max_deliveries: self.source.max_deliveries(),
                copy: OutgoingMessage {
                    id: message_id.clone(),
                    body: Bytes::from(delivery.data),
                    headers,
                },
            };
            let unsettled_limit = self
                .source
                .max_deliveries()
                .saturating_mul(crate::UNSETTLED_DELIVERY_FACTOR);
            if settle.dead_queue.is_some() && count > unsettled_limit {
                // Redelivered past the limit without being settled (its
                // consumers keep crashing): park it. Explicit failures are
                // counted in `nack`, against max_deliveries itself.
                let reason = format!(
                    "delivered {} times without being settled (limit {unsettled_limit})",
                    count - 1
                );
                Box::new(settle).dead_letter(&reason).await?;
                continue;
            }
            return Ok(Delivery::new(
                message_id,
                delivery.routing_key.to_string(),
                settle.copy.body.clone(),
                settle.copy.headers.clone(),
                count,
                Box::new(settle),
            ));
        }
    }
}

async fn requeue(acker: &Acker) -> Result<(), BusError> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    acker.nack(options).await.map_err(unavailable)?;
    Ok(())
}

struct RabbitSettle {
    bus: RabbitMqBus,
    acker: Acker,
    dead_queue: Option<String>,
    count: u32,
    max_deliveries: u32,
    copy: OutgoingMessage,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BusError> {
        if self.dead_queue.is_some() && self.count >= self.max_deliveries {
            let reason = format!(
                "failed {} deliveries (max_deliveries {})",
                self.count, self.max_deliveries
            );
            return self.dead_letter(&reason).await;
        }
        requeue(&self.acker).await
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        let Some(queue) = &self.dead_queue else {
            // Reading the dead letters themselves: drop it from there.
            return self.ack().await;
        };
        let mut copy = self.copy.clone();
        copy.headers
            .insert(DEAD_LETTER_REASON.to_owned(), reason.to_owned());
        copy.headers
            .insert(DEAD_LETTER_DELIVERIES.to_owned(), self.count.to_string());
        // Confirmed in the dead-letter queue before it leaves its own queue:
        // a crash in between leaves a duplicate, never a loss.
        self.bus.publish_raw("".into(), queue, &copy, true).await?;
        self.ack().await
    }

    fn abandon(self: Box<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = requeue(&self.acker).await;
            });
        }
    }
}
