//! Fan-out of progress events to everyone watching, in process. One
//! broadcast channel for all instances: a watcher filters by instance id,
//! which costs little next to a socket write and needs no per-instance
//! bookkeeping. A watcher that falls behind learns how much it missed and
//! can read the history for it.

use std::sync::Arc;

use legato_contracts::{InstanceId, ProgressEvent};
use tokio::sync::broadcast;

/// Events buffered for slow watchers before they lag.
const CAPACITY: usize = 16_384;

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub instance: InstanceId,
    pub event: ProgressEvent,
}

#[derive(Clone)]
pub struct ProgressHub {
    sender: broadcast::Sender<Arc<Update>>,
}

impl Default for ProgressHub {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl ProgressHub {
    pub fn publish(&self, instance: InstanceId, event: ProgressEvent) {
        // No watchers is not an error.
        let _ = self.sender.send(Arc::new(Update { instance, event }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Update>> {
        self.sender.subscribe()
    }
}
