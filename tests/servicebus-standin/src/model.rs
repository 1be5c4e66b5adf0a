//! The namespace's entities and messages, as the Service Bus documentation
//! describes their behaviour: topics fan messages out to every
//! subscription with a matching rule (a message no rule matches is
//! dropped), peek-lock hands out a message under a lock of the
//! subscription's `LockDuration` and counts the delivery, an abandoned or
//! expired lock makes it available again, and once `DeliveryCount` reaches
//! `MaxDeliveryCount` it moves to the subscription's `$DeadLetterQueue`
//! with `DeadLetterReason = MaxDeliveryCountExceeded`. Duplicate detection
//! drops a `MessageId` seen within the topic's window; `AutoDeleteOnIdle`
//! deletes a subscription nobody received from for that long.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::filter::Filter;

/// Azure's defaults for entities created without these settings.
pub(crate) const DEFAULT_LOCK: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_MAX_DELIVERY_COUNT: u32 = 10;
pub(crate) const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// Standard tier: a message, properties included, is at most 256 KB.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The first sequence number handed out: past 2^32, so a client that
/// keeps sequence numbers in 32 bits fails here as it would on a busy or
/// partitioned entity.
const FIRST_SEQUENCE: i64 = 41_095_346_599_755_778;

#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl PropertyValue {
    /// Custom properties travel as HTTP headers whose values are JSON-like:
    /// a quoted string, a number or a boolean. The Send documentation's
    /// own example sends an unquoted word, so that is taken as a string.
    pub(crate) fn from_header(text: &str) -> Self {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::String(s)) => Self::Str(s),
            Ok(serde_json::Value::Bool(b)) => Self::Bool(b),
            Ok(serde_json::Value::Number(n)) => {
                n.as_f64().map_or(Self::Str(text.into()), Self::Num)
            }
            _ => Self::Str(text.to_owned()),
        }
    }

    /// How a received message carries it: strings come back quoted.
    pub(crate) fn to_header(&self) -> String {
        match self {
            Self::Str(s) => serde_json::Value::String(s.clone()).to_string(),
            Self::Num(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// The settable broker properties (the `BrokerProperties` header).
#[derive(Debug, Clone, Default)]
pub struct Broker {
    pub message_id: String,
    pub correlation_id: Option<String>,
    pub session_id: Option<String>,
    pub label: Option<String>,
    pub reply_to: Option<String>,
    pub to: Option<String>,
    pub reply_to_session_id: Option<String>,
    pub partition_key: Option<String>,
    pub time_to_live: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub body: Bytes,
    pub broker: Broker,
    pub properties: Vec<(String, PropertyValue)>,
    pub content_type: Option<String>,
    pub sequence_number: i64,
    pub enqueued_at: OffsetDateTime,
    pub delivery_count: u32,
    expires_at: Option<Instant>,
}

impl Message {
    pub(crate) fn new(
        body: Bytes,
        broker: Broker,
        properties: Vec<(String, PropertyValue)>,
        content_type: Option<String>,
    ) -> Self {
        Self {
            body,
            broker,
            properties,
            content_type,
            sequence_number: 0,
            enqueued_at: OffsetDateTime::UNIX_EPOCH,
            delivery_count: 0,
            expires_at: None,
        }
    }

    /// User property names are matched without regard to case (they
    /// arrive as HTTP header names).
    pub fn property(&self, name: &str) -> Option<&PropertyValue> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn set_property(&mut self, name: &str, value: PropertyValue) {
        self.properties
            .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.properties.push((name.to_owned(), value));
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub filter: Filter,
    pub created: OffsetDateTime,
}

#[derive(Default)]
pub(crate) struct Queue {
    ready: BTreeMap<i64, Message>,
    locked: HashMap<Uuid, (Message, Instant)>,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.locked.len()
    }
}

pub(crate) struct Subscription {
    pub name: String,
    pub lock_duration: Duration,
    pub max_delivery_count: u32,
    pub auto_delete_on_idle: Option<Duration>,
    pub dead_lettering_on_expiration: bool,
    pub rules: BTreeMap<String, Rule>,
    pub created: OffsetDateTime,
    pub(crate) last_used: Instant,
    pub(crate) main: Queue,
    pub(crate) dead: Queue,
}

pub(crate) struct Topic {
    pub name: String,
    pub duplicate_window: Option<Duration>,
    pub max_size_mb: u32,
    pub created: OffsetDateTime,
    recent_ids: HashMap<String, Instant>,
    next_sequence: i64,
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
}

impl Topic {
    pub(crate) fn new(
        name: &str,
        duplicate_window: Option<Duration>,
        max_size_mb: u32,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            name: name.to_owned(),
            duplicate_window,
            max_size_mb,
            created: now,
            recent_ids: HashMap::new(),
            next_sequence: FIRST_SEQUENCE,
            subscriptions: BTreeMap::new(),
        }
    }
}

/// Why a runtime operation was refused, with the status Azure documents.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 410 Gone: the topic or subscription does not exist.
    NoEntity(String),
    /// 404: no message holds that lock (settled, expired or never issued).
    NoLock,
}

/// Where a lock was issued: the subscription itself or its dead-letter
/// sub-queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Main,
    DeadLetters,
}

pub(crate) enum Settlement {
    Complete,
    Abandon,
    Renew,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) topics: BTreeMap<String, Topic>,
}

pub(crate) fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

pub(crate) struct Locked {
    pub message: Message,
    pub lock_token: Uuid,
    pub locked_until: OffsetDateTime,
}

impl State {
    pub(crate) fn topic_mut(&mut self, topic: &str) -> Result<&mut Topic, Refusal> {
        self.topics
            .get_mut(&key(topic))
            .ok_or_else(|| Refusal::NoEntity(format!("topic {topic} does not exist")))
    }

    pub(crate) fn subscription_mut(
        &mut self,
        topic: &str,
        subscription: &str,
    ) -> Result<&mut Subscription, Refusal> {
        self.topic_mut(topic)?
            .subscriptions
            .get_mut(&key(subscription))
            .ok_or_else(|| {
                Refusal::NoEntity(format!(
                    "subscription {topic}/{subscription} does not exist"
                ))
            })
    }

    /// Enqueues a copy in every subscription a rule of which matches.
    /// `Ok(false)`: a duplicate within the window, accepted and dropped.
    pub(crate) fn send(
        &mut self,
        topic: &str,
        mut message: Message,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Result<bool, Refusal> {
        let topic = self.topic_mut(topic)?;
        if let Some(window) = topic.duplicate_window {
            topic
                .recent_ids
                .retain(|_, at| now.duration_since(*at) < window);
            if topic.recent_ids.contains_key(&message.broker.message_id) {
                return Ok(false);
            }
            topic
                .recent_ids
                .insert(message.broker.message_id.clone(), now);
        }
        topic.next_sequence += 1;
        message.sequence_number = topic.next_sequence;
        message.enqueued_at = wall;
        message.expires_at = message
            .broker
            .time_to_live
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(|t| now + Duration::from_secs_f64(t));
        for subscription in topic.subscriptions.values_mut() {
            if subscription
                .rules
                .values()
                .any(|r| r.filter.matches(&message))
            {
                subscription
                    .main
                    .ready
                    .insert(message.sequence_number, message.clone());
            }
        }
        Ok(true)
    }

    /// Locks the first available message, counting the delivery.
    pub(crate) fn peek_lock(
        &mut self,
        topic: &str,
        subscription: &str,
        source: Source,
        now: Instant,
        wall: OffsetDateTime,
    ) -> Result<Option<Locked>, Refusal> {
        let sub = self.subscription_mut(topic, subscription)?;
        sub.last_used = now;
        sub.expire(now);
        let lock = sub.lock_duration;
        let queue = match source {
            Source::Main => &mut sub.main,
            Source::DeadLetters => &mut sub.dead,
        };
        let Some((_, mut message)) = queue.ready.pop_first() else {
            return Ok(None);
        };
        message.delivery_count += 1;
        let lock_token = Uuid::new_v4();
        queue
            .locked
            .insert(lock_token, (message.clone(), now + lock));
        Ok(Some(Locked {
            message,
            lock_token,
            locked_until: wall + lock,
        }))
    }

    /// Receive-and-delete: the first available message, gone at once.
    pub(crate) fn receive_and_delete(
        &mut self,
        topic: &str,
        subscription: &str,
        source: Source,
        now: Instant,
    ) -> Result<Option<Message>, Refusal> {
        let sub = self.subscription_mut(topic, subscription)?;
        sub.last_used = now;
        sub.expire(now);
        let queue = match source {
            Source::Main => &mut sub.main,
            Source::DeadLetters => &mut sub.dead,
        };
        Ok(queue.ready.pop_first().map(|(_, mut m)| {
            m.delivery_count += 1;
            m
        }))
    }

    /// Complete, abandon (unlock) or renew the lock `lock_token`. Returns
    /// the new lock expiry for a renewal.
    pub(crate) fn settle(
        &mut self,
        topic: &str,
        subscription: &str,
        source: Source,
        lock_token: Uuid,
        settlement: Settlement,
        now: Instant,
    ) -> Result<(), Refusal> {
        let sub = self.subscription_mut(topic, subscription)?;
        sub.last_used = now;
        sub.expire(now);
        let lock = sub.lock_duration;
        let max = sub.max_delivery_count;
        let (queue, dead) = match source {
            Source::Main => (&mut sub.main, Some(&mut sub.dead)),
            Source::DeadLetters => (&mut sub.dead, None),
        };
        match settlement {
            Settlement::Complete => {
                queue.locked.remove(&lock_token).ok_or(Refusal::NoLock)?;
            }
            Settlement::Renew => {
                let (_, until) = queue.locked.get_mut(&lock_token).ok_or(Refusal::NoLock)?;
                *until = now + lock;
            }
            Settlement::Abandon => {
                let (message, _) = queue.locked.remove(&lock_token).ok_or(Refusal::NoLock)?;
                release(&mut queue.ready, dead, message, max);
            }
        }
        Ok(())
    }

    /// Expired locks and messages, idle subscriptions.
    pub(crate) fn housekeeping(&mut self, now: Instant) {
        for topic in self.topics.values_mut() {
            topic.subscriptions.retain(|_, sub| {
                sub.expire(now);
                sub.auto_delete_on_idle
                    .is_none_or(|idle| now.duration_since(sub.last_used) < idle)
            });
        }
    }
}

/// A message whose lock ended without completion: available again, or
/// dead-lettered once its deliveries reached the limit.
fn release(
    ready: &mut BTreeMap<i64, Message>,
    dead: Option<&mut Queue>,
    mut message: Message,
    max_delivery_count: u32,
) {
    match dead {
        Some(dead) if message.delivery_count >= max_delivery_count => {
            message.set_property(
                "DeadLetterReason",
                PropertyValue::Str("MaxDeliveryCountExceeded".into()),
            );
            message.set_property(
                "DeadLetterErrorDescription",
                PropertyValue::Str(format!(
                    "Message could not be consumed after {max_delivery_count} delivery attempts."
                )),
            );
            dead.ready.insert(message.sequence_number, message);
        }
        _ => {
            ready.insert(message.sequence_number, message);
        }
    }
}

impl Subscription {
    pub(crate) fn new(name: &str, now: Instant, wall: OffsetDateTime) -> Self {
        Self {
            name: name.to_owned(),
            lock_duration: DEFAULT_LOCK,
            max_delivery_count: DEFAULT_MAX_DELIVERY_COUNT,
            auto_delete_on_idle: None,
            dead_lettering_on_expiration: false,
            rules: BTreeMap::new(),
            created: wall,
            last_used: now,
            main: Queue::default(),
            dead: Queue::default(),
        }
    }

    /// Locks that ran out return their messages; messages past their time
    /// to live leave (to the dead letters if the subscription says so).
    fn expire(&mut self, now: Instant) {
        let max = self.max_delivery_count;
        for source in [Source::Main, Source::DeadLetters] {
            let (queue, dead) = match source {
                Source::Main => (&mut self.main, Some(&mut self.dead)),
                Source::DeadLetters => (&mut self.dead, None),
            };
            let lapsed: Vec<Uuid> = queue
                .locked
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(token, _)| *token)
                .collect();
            let mut dead = dead;
            for token in lapsed {
                if let Some((message, _)) = queue.locked.remove(&token) {
                    release(&mut queue.ready, dead.as_deref_mut(), message, max);
                }
            }
        }
        let expired: Vec<i64> = self
            .main
            .ready
            .iter()
            .filter(|(_, m)| m.expires_at.is_some_and(|at| at <= now))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(mut message) = self.main.ready.remove(&seq)
                && self.dead_lettering_on_expiration
            {
                message.set_property(
                    "DeadLetterReason",
                    PropertyValue::Str("TTLExpiredException".into()),
                );
                self.dead.ready.insert(seq, message);
            }
        }
    }

    pub(crate) fn message_count(&self) -> usize {
        self.main.len() + self.dead.len()
    }

    pub(crate) fn active_count(&self) -> usize {
        self.main.len()
    }

    pub(crate) fn dead_letter_count(&self) -> usize {
        self.dead.len()
    }
}
