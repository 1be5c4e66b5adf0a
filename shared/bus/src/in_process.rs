//! The in-process adapter for `legato up` and tests: the same semantics as a
//! broker, inside one process. It is not durable across restarts; in
//! `legato up` durability comes from the store's outbox, which republishes
//! whatever had not been delivered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use legato_contracts::Topic;
use tokio::sync::Notify;

use crate::{
    Bus, BusError, DEAD_LETTER_DELIVERIES, DEAD_LETTER_REASON, Delivery, OutgoingMessage, Settle,
    Subscription, SubscriptionSpec,
};

/// Consumer-group queues by topic and group name.
type Groups = HashMap<(Topic, String), Arc<Queue>>;

#[derive(Clone, Default)]
pub struct InProcessBus {
    groups: Arc<Mutex<Groups>>,
}

#[derive(Clone)]
struct Stored {
    id: String,
    routing_key: String,
    body: Bytes,
    headers: BTreeMap<String, String>,
    delivery_count: u32,
}

struct Queue {
    bindings: Mutex<Vec<String>>,
    ready: Mutex<VecDeque<Stored>>,
    available: Notify,
    max_deliveries: Mutex<u32>,
    dead: Option<Arc<Queue>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the queue
    // half-updated (every critical section is a single push or pop), so a
    // poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Queue {
    fn new(dead: Option<Arc<Queue>>) -> Self {
        Self {
            bindings: Mutex::new(Vec::new()),
            ready: Mutex::new(VecDeque::new()),
            available: Notify::new(),
            max_deliveries: Mutex::new(crate::DEFAULT_MAX_DELIVERIES),
            dead,
        }
    }

    fn push(&self, message: Stored) {
        lock(&self.ready).push_back(message);
        self.available.notify_waiters();
    }

    fn requeue(&self, message: Stored) {
        // Back to the front: a redelivery should not wait behind the backlog.
        lock(&self.ready).push_front(message);
        self.available.notify_waiters();
    }

    fn dead_letter(&self, mut message: Stored, reason: &str) {
        message
            .headers
            .insert(DEAD_LETTER_REASON.to_owned(), reason.to_owned());
        message.headers.insert(
            DEAD_LETTER_DELIVERIES.to_owned(),
            message.delivery_count.to_string(),
        );
        message.delivery_count = 0;
        if let Some(dead) = &self.dead {
            dead.push(message);
        }
    }

    /// Returns a delivery for redelivery, or dead-letters it when its
    /// deliveries are used up (`factor` times more for unsettled ones).
    fn retry_or_dead_letter(&self, message: Stored, factor: u32) {
        let max = lock(&self.max_deliveries).saturating_mul(factor);
        if message.delivery_count >= max {
            let reason = format!("not settled after {} deliveries", message.delivery_count);
            self.dead_letter(message, &reason);
        } else {
            self.requeue(message);
        }
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, topic: Topic, group: &str) -> Arc<Queue> {
        lock(&self.groups)
            .entry((topic, group.to_owned()))
            .or_insert_with(|| Arc::new(Queue::new(Some(Arc::new(Queue::new(None))))))
            .clone()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError> {
        let groups: Vec<Arc<Queue>> = lock(&self.groups)
            .iter()
            .filter(|((t, _), q)| {
                *t == topic
                    && lock(&q.bindings)
                        .iter()
                        .any(|p| crate::pattern::matches(p, routing_key))
            })
            .map(|(_, q)| q.clone())
            .collect();
        if groups.is_empty() && !crate::droppable_when_unrouted(topic) {
            return Err(BusError::Unroutable(format!(
                "{} with routing key {routing_key:?}",
                topic.as_str()
            )));
        }
        for queue in groups {
            queue.push(Stored {
                id: message.id.clone(),
                routing_key: routing_key.to_owned(),
                body: message.body.clone(),
                headers: message.headers.clone(),
                delivery_count: 0,
            });
        }
        Ok(())
    }

    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        let queue = self.queue(spec.topic, &spec.group);
        {
            let mut bindings = lock(&queue.bindings);
            for b in spec.bindings {
                if !bindings.contains(&b) {
                    bindings.push(b);
                }
            }
        }
        *lock(&queue.max_deliveries) = spec.max_deliveries;
        let mut consumer = Consumer::new(queue, spec.prefetch);
        if spec.ephemeral {
            consumer.remove_on_drop = Some(Registration {
                groups: self.groups.clone(),
                key: (spec.topic, spec.group),
            });
        }
        Ok(Box::new(consumer))
    }

    async fn waiting(&self, topic: Topic, group: &str) -> Result<Option<u64>, BusError> {
        let queue = lock(&self.groups).get(&(topic, group.to_owned())).cloned();
        Ok(Some(queue.map_or(0, |q| lock(&q.ready).len() as u64)))
    }

    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let queue = self.queue(topic, group);
        let dead = queue.dead.clone().ok_or(BusError::Closed)?;
        Ok(Box::new(Consumer::new(dead, usize::MAX)))
    }
}

struct Consumer {
    queue: Arc<Queue>,
    prefetch: usize,
    unsettled: Arc<(AtomicUsize, Notify)>,
    /// An ephemeral group's queue goes away with its consumer, as an
    /// exclusive broker queue does with its connection.
    remove_on_drop: Option<Registration>,
}

/// Where a consumer's group is registered, to unregister it.
struct Registration {
    groups: Arc<Mutex<Groups>>,
    key: (Topic, String),
}

impl Consumer {
    fn new(queue: Arc<Queue>, prefetch: usize) -> Self {
        Self {
            queue,
            prefetch,
            unsettled: Arc::new((AtomicUsize::new(0), Notify::new())),
            remove_on_drop: None,
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(registration) = self.remove_on_drop.take() {
            lock(&registration.groups).remove(&registration.key);
        }
    }
}

#[async_trait]
impl Subscription for Consumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Register interest before looking, so a settle or publish that
            // happens in between is not missed.
            let settled = self.unsettled.1.notified();
            let published = self.queue.available.notified();
            tokio::pin!(settled, published);
            settled.as_mut().enable();
            published.as_mut().enable();

            if self.unsettled.0.load(Ordering::SeqCst) >= self.prefetch {
                settled.await;
                continue;
            }
            let message = lock(&self.queue.ready).pop_front();
            let Some(mut message) = message else {
                published.await;
                continue;
            };
            message.delivery_count += 1;
            self.unsettled.0.fetch_add(1, Ordering::SeqCst);
            let settle = InProcessSettle {
                queue: self.queue.clone(),
                message: message.clone(),
                unsettled: self.unsettled.clone(),
            };
            return Ok(Delivery::new(
                message.id,
                message.routing_key,
                message.body,
                message.headers,
                message.delivery_count,
                Box::new(settle),
            ));
        }
    }
}

struct InProcessSettle {
    queue: Arc<Queue>,
    message: Stored,
    unsettled: Arc<(AtomicUsize, Notify)>,
}

impl InProcessSettle {
    fn release(&self) {
        self.unsettled.0.fetch_sub(1, Ordering::SeqCst);
        self.unsettled.1.notify_waiters();
    }
}

#[async_trait]
impl Settle for InProcessSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.release();
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), BusError> {
        self.release();
        self.queue.retry_or_dead_letter(self.message, 1);
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        self.release();
        self.queue.dead_letter(self.message, reason);
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        self.release();
        self.queue
            .retry_or_dead_letter(self.message, crate::UNSETTLED_DELIVERY_FACTOR);
    }
}

#[cfg(test)]
mod conformance_tests {
    crate::bus_conformance_tests!(crate::InProcessBus::new());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ephemeral_tests {
    use super::*;

    #[tokio::test]
    async fn an_ephemeral_group_goes_away_with_its_consumer() {
        let bus = InProcessBus::new();
        let spec = SubscriptionSpec::new(Topic::Progress, "feed-1")
            .bind("#")
            .ephemeral();
        let sub = bus.subscribe(spec).await.unwrap();
        assert_eq!(lock(&bus.groups).len(), 1);
        drop(sub);
        assert!(lock(&bus.groups).is_empty());
        // Publishing afterwards keeps nothing for it.
        let message = OutgoingMessage {
            id: "m".into(),
            body: Bytes::from_static(b"x"),
            headers: BTreeMap::new(),
        };
        bus.publish(Topic::Progress, "k", message).await.unwrap();
        assert!(lock(&bus.groups).is_empty());
    }
}
