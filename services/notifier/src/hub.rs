//! Fan-out of progress events to everyone watching, in process.
//!
//! One broadcast channel for all instances: a watcher filters by instance
//! id, which costs little next to a socket write and needs no
//! per-instance channel bookkeeping. Beside it, a bounded buffer of each
//! instance's recent events lets a watcher that arrives late (a client that
//! subscribes right after starting an instance) replay what it missed, with
//! no gap and no repeat: the buffer snapshot and the new receiver are taken
//! under the same lock that publishing holds. The buffer also drops
//! redelivered messages (same message id), so watchers see each event once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use legato_contracts::{InstanceId, ProgressEvent, ProgressKind};
use serde_json::Value;
use tokio::sync::broadcast;

/// Events buffered in the channel for slow watchers before they lag.
const CHANNEL_CAPACITY: usize = 16_384;
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
    next: u64,
}

#[derive(Clone)]
pub struct ProgressHub {
    sender: broadcast::Sender<Arc<Update>>,
    inner: Arc<Mutex<Inner>>,
}

impl Default for ProgressHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CHANNEL_CAPACITY).0,
            inner: Arc::new(Mutex::new(Inner {
                replay: HashMap::new(),
                next: 0,
            })),
        }
    }
}

impl ProgressHub {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each critical section leaves the maps consistent, so a poisoned
        // lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        let replay = inner.replay.entry(instance).or_default();
        if replay.events.len() == REPLAY_PER_INSTANCE {
            replay.events.pop_front();
        }
        replay.events.push_back(update.clone());
        if update.is_final() {
            replay.finished_at = Some(Instant::now());
        }
        // Sent under the lock, so replay snapshots and receivers agree.
        let _no_watchers_is_fine = self.sender.send(update);
    }

    /// Every update from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Update>> {
        self.sender.subscribe()
    }

    /// An instance's buffered updates and a receiver for everything after
    /// them.
    pub fn watch(
        &self,
        instance: &InstanceId,
    ) -> (Vec<Arc<Update>>, broadcast::Receiver<Arc<Update>>) {
        let inner = self.lock();
        (
            self.replay_locked(&inner, instance),
            self.sender.subscribe(),
        )
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
