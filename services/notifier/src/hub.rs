//! Fan-out of progress events to everyone watching, in process.
//!
//! Each watched instance has a broadcast channel of its own, so an event
//! wakes only its instance's watchers: with one channel for every
//! instance, each event woke every open stream, which cost more per event
//! the more clients were connected. Relays that forward every event (Azure
//! SignalR) take the hub-wide channel. Beside them, a bounded buffer of
//! each instance's recent events lets a watcher that arrives late (a
//! client that subscribes right after starting an instance) replay what it
//! missed, with no gap and no repeat: the buffer snapshot and the new
//! receiver are taken under the same lock that publishing holds. The
//! buffer also drops redelivered messages (same message id), so watchers
//! see each event once.
//!
//! The pieces of a model's output an agent relays go down the same
//! channels, in the order they came, but are not buffered: a watcher who
//! comes later reads the whole reply from the task's journal or result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use legato_contracts::{AgentOutput, InstanceId, ProgressEvent, ProgressKind, TaskRole};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// Events buffered in the hub-wide channel for a slow relay before it lags.
const CHANNEL_CAPACITY: usize = 16_384;
/// Events buffered in an instance's channel for a slow watcher before it
/// lags (and reads what it missed from the history). Allocated per watched
/// instance, so kept small.
const INSTANCE_CHANNEL_CAPACITY: usize = 256;
/// Recent events kept per instance for late watchers.
pub(crate) const REPLAY_PER_INSTANCE: usize = 1_024;
/// Instances with a replay buffer; finished ones are dropped first.
const REPLAY_INSTANCES: usize = 10_000;
/// How long a finished instance's buffer is kept for stragglers.
const FINISHED_RETENTION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub instance: InstanceId,
    pub event: ProgressEvent,
    pub message_id: String,
    /// Hub-wide publication order; a watcher that replayed up to `n`
    /// skips live updates numbered `n` or lower.
    pub n: u64,
}

impl Update {
    /// The event as clients receive it: the progress fields plus
    /// `instanceId`, as the instance's tenant knows it.
    pub fn to_client_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.event).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert(
                "instanceId".into(),
                Value::String(self.instance.local().to_owned()),
            );
        }
        value
    }

    pub fn is_final(&self) -> bool {
        is_final(self.event.kind)
    }
}

/// What an instance's watchers are sent, in the order it came.
#[derive(Debug, Clone)]
pub enum Relayed {
    Progress(Arc<Update>),
    Output(Arc<Output>),
}

impl Relayed {
    pub fn instance(&self) -> &InstanceId {
        match self {
            Self::Progress(update) => &update.instance,
            Self::Output(output) => &output.instance,
        }
    }

    /// The progress event, if this is one.
    pub fn progress(&self) -> Option<&Arc<Update>> {
        match self {
            Self::Progress(update) => Some(update),
            Self::Output(_) => None,
        }
    }
}

/// A piece of a model's output inside one of the instance's tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub instance: InstanceId,
    pub piece: AgentOutput,
}

/// A piece as clients receive it: where in the instance it comes from,
/// flat, like a progress event's `step`, `item` and `iteration`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientOutput<'a> {
    instance_id: &'a str,
    step: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iteration: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    compensation: bool,
    attempt: u32,
    call: &'a str,
    seq: u64,
    text: &'a str,
}

impl Output {
    pub fn to_client_json(&self) -> Value {
        let key = &self.piece.key;
        serde_json::to_value(ClientOutput {
            instance_id: self.instance.local(),
            step: key.step.as_str(),
            item: key.item,
            iteration: key.iteration,
            compensation: key.role == TaskRole::Compensation,
            attempt: self.piece.attempt,
            call: &self.piece.call,
            seq: self.piece.seq,
            text: &self.piece.text,
        })
        .unwrap_or(Value::Null)
    }
}

pub fn is_final(kind: ProgressKind) -> bool {
    matches!(
        kind,
        ProgressKind::InstanceCompleted
            | ProgressKind::InstanceFailed
            | ProgressKind::InstanceTerminated
    )
}

#[derive(Default)]
struct Replay {
    events: VecDeque<Arc<Update>>,
    finished_at: Option<Instant>,
}

struct Inner {
    replay: HashMap<InstanceId, Replay>,
    /// The channel of each instance someone watches; removed with its last
    /// watcher.
    watched: HashMap<InstanceId, broadcast::Sender<Relayed>>,
    next: u64,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Each critical section leaves the maps consistent, so a poisoned lock
    // is still safe to use.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
pub struct ProgressHub {
    sender: broadcast::Sender<Relayed>,
    inner: Arc<Mutex<Inner>>,
}

impl Default for ProgressHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            inner: Arc::new(Mutex::new(Inner {
                replay: HashMap::new(),
                watched: HashMap::new(),
                next: 0,
            })),
        }
    }
}

impl ProgressHub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Records and broadcasts an event; a redelivered message is dropped.
    pub fn publish(&self, instance: InstanceId, event: ProgressEvent, message_id: String) {
        let mut inner = self.lock();
        if let Some(replay) = inner.replay.get(&instance)
            && replay.events.iter().any(|u| u.message_id == message_id)
        {
            return;
        }
        // A new life of the id (it was purged and started again): the old
        // one's events are no longer this instance's.
        if update_starts_anew(&event)
            && let Some(replay) = inner.replay.get_mut(&instance)
        {
            replay.events.clear();
            replay.finished_at = None;
        }
        inner.next += 1;
        let update = Arc::new(Update {
            instance: instance.clone(),
            event,
            message_id,
            n: inner.next,
        });
        if !inner.replay.contains_key(&instance) {
            evict(&mut inner.replay);
        }
        // Sent under the lock, so replay snapshots and receivers agree.
        if let Some(watchers) = inner.watched.get(&instance) {
            let _all_gone_is_fine = watchers.send(Relayed::Progress(update.clone()));
        }
        let replay = inner.replay.entry(instance).or_default();
        if replay.events.len() == REPLAY_PER_INSTANCE {
            replay.events.pop_front();
        }
        replay.events.push_back(update.clone());
        if update.is_final() {
            replay.finished_at = Some(Instant::now());
        }
        let _no_relay_is_fine = self.sender.send(Relayed::Progress(update));
    }

    /// Passes a piece of a model's output to the instance's watchers now,
    /// keeping nothing: pieces are worth seeing only as they come.
    pub fn publish_output(&self, instance: InstanceId, piece: AgentOutput) {
        let output = Relayed::Output(Arc::new(Output { instance, piece }));
        let inner = self.lock();
        // Under the lock, so a piece keeps its place among progress events.
        if let Some(watchers) = inner.watched.get(output.instance()) {
            let _all_gone_is_fine = watchers.send(output.clone());
        }
        let _no_relay_is_fine = self.sender.send(output);
    }

    /// Every instance's updates from now on (for relays that forward all).
    pub fn subscribe(&self) -> broadcast::Receiver<Relayed> {
        self.sender.subscribe()
    }

    /// An instance's buffered updates and its updates after them.
    pub fn watch(&self, instance: &InstanceId) -> (Vec<Arc<Update>>, InstanceUpdates) {
        let mut inner = self.lock();
        let replay = self.replay_locked(&inner, instance);
        let receiver = inner
            .watched
            .entry(instance.clone())
            .or_insert_with(|| broadcast::channel(INSTANCE_CHANNEL_CAPACITY).0)
            .subscribe();
        let updates = InstanceUpdates {
            receiver: Some(receiver),
            instance: instance.clone(),
            hub: self.inner.clone(),
        };
        (replay, updates)
    }

    /// Instances with a watcher now (their channels).
    pub fn watched(&self) -> usize {
        self.lock().watched.len()
    }

    /// An instance's buffered updates (for a receiver the caller already has).
    pub fn replay(&self, instance: &InstanceId) -> Vec<Arc<Update>> {
        let inner = self.lock();
        self.replay_locked(&inner, instance)
    }

    fn replay_locked(&self, inner: &Inner, instance: &InstanceId) -> Vec<Arc<Update>> {
        inner
            .replay
            .get(instance)
            .map(|r| r.events.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One instance's updates for one watcher; its instance's channel goes
/// when the last watcher's does.
pub struct InstanceUpdates {
    /// `None` only while dropping.
    receiver: Option<broadcast::Receiver<Relayed>>,
    instance: InstanceId,
    hub: Arc<Mutex<Inner>>,
}

impl InstanceUpdates {
    pub async fn recv(&mut self) -> Result<Relayed, RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => Err(RecvError::Closed),
        }
    }

    pub fn try_recv(&mut self) -> Result<Relayed, broadcast::error::TryRecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl Drop for InstanceUpdates {
    fn drop(&mut self) {
        // Under the lock that `watch` subscribes with, so a watcher
        // arriving now either joins the channel before this check or
        // finds it gone and makes a new one.
        let mut inner = lock(&self.hub);
        drop(self.receiver.take());
        if inner
            .watched
            .get(&self.instance)
            .is_some_and(|channel| channel.receiver_count() == 0)
        {
            inner.watched.remove(&self.instance);
        }
    }
}

fn update_starts_anew(event: &ProgressEvent) -> bool {
    event.position == 1 && event.kind == ProgressKind::InstanceStarted
}

/// Makes room for one more instance: finished buffers past their retention
/// first, then the oldest finished, then any.
fn evict(replay: &mut HashMap<InstanceId, Replay>) {
    if replay.len() < REPLAY_INSTANCES {
        return;
    }
    replay.retain(|_, r| {
        r.finished_at
            .is_none_or(|t| t.elapsed() < FINISHED_RETENTION)
    });
    if replay.len() < REPLAY_INSTANCES {
        return;
    }
    let victim = replay
        .iter()
        .min_by_key(|(_, r)| (r.finished_at.is_none(), r.finished_at))
        .map(|(id, _)| id.clone());
    if let Some(id) = victim {
        replay.remove(&id);
    }
}
