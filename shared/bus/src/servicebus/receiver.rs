//! Reading a subscription: peek-lock receives, many in flight, each
//! delivery settled through its lock URL.
//!
//! REST hands out one message per request, so a subscription keeps
//! several long-polling receives going: one while idle (so an idle
//! subscription costs one request per poll timeout), and one more each
//! time a receive brings a message, up to the prefetch. A receive holds a
//! prefetch permit from before it is sent until its message is settled,
//! so the prefetch bounds receives in flight plus unsettled deliveries.
//!
//! Dropping the subscription cancels its receives in flight: one that
//! went on would lock a message nobody takes (and raise its delivery
//! count); one that already returned a message unlocks it at once. A delivery held longer than a third
//! of the lock duration has its lock renewed until it is settled; a lock
//! that is lost anyway (a long stall) means the message is delivered again,
//! and settling it then is no error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::headers::Headers;
use azure_messaging_servicebus::service_bus::{
    PeekLockResponse, SubscriptionReceiver, TopicSender,
};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::errors::{self, lock_lost, status_of};
use super::message::{self, Received};
use crate::{
    BusError, DEAD_LETTER_DELIVERIES, DEAD_LETTER_REASON, Delivery, OutgoingMessage, Settle,
    Subscription, UNSETTLED_DELIVERY_FACTOR,
};

/// Waits after a failed receive, doubling up to the last.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// Most receives one subscription keeps in flight.
const MAX_POLLERS: usize = 32;

/// Where a group's dead letters are sent: the dead-letter topic with the
/// group's label.
#[derive(Clone)]
pub(super) struct DeadLetterTarget {
    pub sender: TopicSender,
    pub label: String,
    /// Distinguishes this subscription's dead letters in duplicate
    /// detection (with the sequence number).
    pub scope: u64,
}

pub(super) struct Source {
    pub receiver: SubscriptionReceiver,
    /// `topic/subscriptions/name`, for logs.
    pub path: String,
    /// Receives in flight on this source: one always stays while idle.
    pub pollers: AtomicUsize,
}

impl Source {
    pub(super) fn new(receiver: SubscriptionReceiver, path: String) -> Self {
        Self {
            receiver,
            path,
            pollers: AtomicUsize::new(0),
        }
    }
}

pub(super) struct ReaderSettings {
    pub prefetch: usize,
    pub max_deliveries: u32,
    pub poll: Duration,
    pub dead_letters: Option<DeadLetterTarget>,
}

struct Shared {
    settings: ReaderSettings,
    permits: Arc<Semaphore>,
    deliveries: mpsc::Sender<Delivery>,
    stopped: AtomicBool,
    running: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A subscription's deliveries; dropping it stops its receives.
pub(super) struct Reader {
    shared: Arc<Shared>,
    deliveries: mpsc::Receiver<Delivery>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Reader {
    pub(super) fn start(sources: Vec<Source>, settings: ReaderSettings) -> Self {
        let prefetch = settings.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let shared = Arc::new(Shared {
            settings,
            permits: Arc::new(Semaphore::new(prefetch)),
            deliveries: tx,
            stopped: AtomicBool::new(false),
            running: std::sync::Mutex::new(Vec::new()),
        });
        for source in sources {
            spawn_poller(shared.clone(), Arc::new(source));
        }
        Self {
            shared,
            deliveries: rx,
            on_drop: None,
        }
    }

    /// Runs when the subscription is dropped (an ephemeral one deletes
    /// itself).
    pub(super) fn on_drop(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_drop = Some(Box::new(f));
        self
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let running = std::mem::take(
            &mut *self
                .shared
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for poller in running {
            poller.abort();
        }
        self.deliveries.close();
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

#[async_trait]
impl Subscription for Reader {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        self.deliveries.recv().await.ok_or(BusError::Closed)
    }
}

fn spawn_poller(shared: Arc<Shared>, source: Arc<Source>) {
    if shared.stopped.load(Ordering::SeqCst) {
        return;
    }
    source.pollers.fetch_add(1, Ordering::SeqCst);
    let running = shared.clone();
    let task = tokio::spawn(async move {
        poll(&shared, &source).await;
        source.pollers.fetch_sub(1, Ordering::SeqCst);
    });
    let mut handles = running.running.lock().unwrap_or_else(|p| p.into_inner());
    handles.retain(|h| !h.is_finished());
    handles.push(task.abort_handle());
}

async fn poll(shared: &Arc<Shared>, source: &Arc<Source>) {
    let mut failures = 0usize;
    // Bounded by the subscription's life: it ends when the subscription is
    // dropped or, while idle, when other receives are in flight.
    while !shared.stopped.load(Ordering::SeqCst) {
        let Ok(permit) = shared.permits.clone().acquire_owned().await else {
            return;
        };
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let received = source
            .receiver
            .peek_lock_message2(Some(shared.settings.poll))
            .await
            .map_err(|e| errors::from_azure(e, "receive"))
            .and_then(|r| match u16::from(*r.status()) {
                200..=299 => Ok(r),
                status => Err(errors::from_status(
                    status,
                    &format!("receiving from {}", source.path),
                    &r.body(),
                )),
            });
        let response = match received {
            Ok(r) => r,
            Err(error) => {
                failures += 1;
                tracing::warn!(subscription = %source.path, "{error}");
                drop(permit);
                tokio::time::sleep(BACKOFF[failures.min(BACKOFF.len()) - 1]).await;
                continue;
            }
        };
        if u16::from(*response.status()) == 204 {
            failures = 0;
            drop(permit);
            // Idle: one receive per source is enough.
            if source.pollers.load(Ordering::SeqCst) > 1 {
                return;
            }
            continue;
        }
        failures = 0;
        let response = Arc::new(response);
        if shared.stopped.load(Ordering::SeqCst) {
            // Nobody will take it: let someone else have it now.
            let _ = response.unlock_message().await;
            return;
        }
        let delivery = match deliver(shared, &response, permit) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(why) => {
                // A message we cannot even read the properties of goes to
                // the dead letters with the reason, once.
                let settle = LockedMessage::unreadable(shared, response.clone());
                if let Err(e) = Box::new(settle).dead_letter(&why).await {
                    tracing::error!(subscription = %source.path, "could not dead-letter an unreadable message: {e}");
                }
                continue;
            }
        };
        if source.pollers.load(Ordering::SeqCst) < MAX_POLLERS.min(shared.settings.prefetch)
            && shared.permits.available_permits() > 0
        {
            spawn_poller(shared.clone(), source.clone());
        }
        if shared.deliveries.send(delivery).await.is_err() {
            // Dropped while handing over: the delivery's drop unlocked it.
            return;
        }
    }
}

fn deliver(
    shared: &Arc<Shared>,
    response: &Arc<PeekLockResponse>,
    permit: OwnedSemaphorePermit,
) -> Result<Option<Delivery>, String> {
    let headers: Headers = response
        .custom_properties()
        .unwrap_or_else(|e: std::convert::Infallible| match e {});
    let received = Received::from_headers(&headers)?;
    let (id, key, properties) = message::incoming(&received, &headers);
    let body = Bytes::from(response.body());
    let settings = &shared.settings;
    let unsettled_limit = settings
        .max_deliveries
        .saturating_mul(UNSETTLED_DELIVERY_FACTOR);
    let settle = LockedMessage {
        response: response.clone(),
        dead_letters: settings.dead_letters.clone(),
        count: received.delivery_count,
        max_deliveries: settings.max_deliveries,
        sequence_number: received.sequence_number,
        copy: OutgoingMessage {
            id: id.clone(),
            body: body.clone(),
            headers: properties.clone(),
        },
        routing_key: key.clone(),
        renewal: Some(renew(response.clone(), received.lock_remaining())),
        _permit: Some(permit),
    };
    if settle.dead_letters.is_some() && received.delivery_count > unsettled_limit {
        // Redelivered past the limit without being settled (its consumers
        // keep crashing or stalling): park it. Explicit failures count in
        // `nack`, against max_deliveries itself.
        let reason = format!(
            "delivered {} times without being settled (limit {unsettled_limit})",
            received.delivery_count - 1
        );
        tokio::spawn(async move {
            if let Err(e) = Box::new(settle).dead_letter(&reason).await {
                tracing::error!("could not dead-letter a message: {e}");
            }
        });
        return Ok(None);
    }
    Ok(Some(Delivery::new(
        id,
        key,
        body,
        properties,
        received.delivery_count,
        Box::new(settle),
    )))
}

/// Renews the lock at a third of its duration until aborted.
fn renew(response: Arc<PeekLockResponse>, lock: Option<Duration>) -> tokio::task::JoinHandle<()> {
    let every = (lock.unwrap_or(Duration::from_secs(30)) / 3).max(Duration::from_millis(500));
    tokio::spawn(async move {
        // Bounded by the delivery: aborted when it is settled or dropped.
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = response.renew_message_lock().await {
                if lock_lost(status_of(&e)) {
                    tracing::warn!(
                        "lock lost before the message was settled; it will be delivered again"
                    );
                    return;
                }
                tracing::warn!("lock renewal failed, trying again: {e}");
            }
        }
    })
}

struct LockedMessage {
    response: Arc<PeekLockResponse>,
    dead_letters: Option<DeadLetterTarget>,
    count: u32,
    max_deliveries: u32,
    sequence_number: i64,
    copy: OutgoingMessage,
    routing_key: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for LockedMessage {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl LockedMessage {
    /// A message whose properties could not be read: it can still be
    /// copied to the dead letters (body as it is) and completed.
    fn unreadable(shared: &Arc<Shared>, response: Arc<PeekLockResponse>) -> Self {
        let body = Bytes::from(response.body());
        Self {
            response,
            dead_letters: shared.settings.dead_letters.clone(),
            count: 0,
            max_deliveries: shared.settings.max_deliveries,
            // Unknown: a fresh id, so the copy is never taken for a duplicate.
            sequence_number: uuid::Uuid::new_v4().as_u64_pair().0 as i64,
            copy: OutgoingMessage {
                id: String::new(),
                body,
                headers: Default::default(),
            },
            routing_key: String::new(),
            renewal: None,
            _permit: None,
        }
    }

    async fn complete(&self) -> Result<(), BusError> {
        match self.response.delete_message().await {
            Ok(_) => Ok(()),
            Err(e) if lock_lost(status_of(&e)) => {
                tracing::warn!(message = %self.copy.id, "settled after its lock was lost; it will be delivered again and deduplicated");
                Ok(())
            }
            Err(e) => Err(errors::from_azure(e, "completing a message")),
        }
    }

    async fn unlock(&self) -> Result<(), BusError> {
        match self.response.unlock_message().await {
            Ok(()) => Ok(()),
            Err(e) if lock_lost(status_of(&e)) => Ok(()),
            Err(e) => Err(errors::from_azure(e, "abandoning a message")),
        }
    }
}

#[async_trait]
impl Settle for LockedMessage {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.complete().await
    }

    async fn nack(self: Box<Self>) -> Result<(), BusError> {
        if self.dead_letters.is_some() && self.count >= self.max_deliveries {
            let reason = format!(
                "failed {} deliveries (max_deliveries {})",
                self.count, self.max_deliveries
            );
            return self.dead_letter(&reason).await;
        }
        self.unlock().await
    }

    /// REST has no dead-letter operation: a copy goes to the dead-letter
    /// topic first (its id, made of this subscription and the message's
    /// sequence number, lets duplicate detection drop a second copy if we
    /// crash before completing), then the original is completed.
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        let Some(target) = &self.dead_letters else {
            // Reading the dead letters themselves: take it off the queue.
            return self.complete().await;
        };
        let mut copy = self.copy.clone();
        copy.headers
            .insert(DEAD_LETTER_REASON.to_owned(), reason.to_owned());
        copy.headers
            .insert(DEAD_LETTER_DELIVERIES.to_owned(), self.count.to_string());
        let id = format!("dl-{:016x}-{}", target.scope, self.sequence_number);
        let original = if copy.id.is_empty() {
            id.clone()
        } else {
            copy.id.clone()
        };
        if std::str::from_utf8(&copy.body).is_err() {
            // A body that is not text cannot travel over REST; its reason can.
            copy.body = Bytes::from(format!(
                "(a body of {} bytes that is not UTF-8)",
                copy.body.len()
            ));
        }
        let wire = message::outgoing(
            &copy,
            &id,
            &target.label,
            Some((&self.routing_key, &original)),
        )?;
        target
            .sender
            .send_message(wire.body, Some(wire.options))
            .await
            .map_err(|e| errors::from_azure(e, "dead-lettering a message"))?;
        self.complete().await
    }

    fn abandon(self: Box<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = self.unlock().await;
            });
        }
    }
}
