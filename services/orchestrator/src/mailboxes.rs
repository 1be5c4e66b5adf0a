//! Messages waiting for the one runner that works through their key's
//! mailbox (an instance's, an entity's), so a key's messages are applied
//! one batch at a time in this process, in the order they came.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

pub(crate) struct Mailboxes<K, T> {
    /// A key has an entry while a runner works through it.
    open: Mutex<HashMap<K, Vec<T>>>,
}

impl<K: Hash + Eq + Clone, T> Default for Mailboxes<K, T> {
    fn default() -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, T> Mailboxes<K, T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Vec<T>>> {
        // Each critical section leaves the map consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`; true when no runner works through `key`'s mailbox,
    /// so the caller must start one.
    pub(crate) fn post(&self, key: &K, item: T) -> bool {
        match self.lock().entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push(item);
                false
            }
            Entry::Vacant(free) => {
                free.insert(vec![item]);
                true
            }
        }
    }

    /// A runner for `key`'s mailbox, taken by whoever posted first.
    pub(crate) fn runner<'a>(&'a self, key: &'a K) -> Runner<'a, K, T> {
        Runner {
            mailboxes: self,
            key,
            armed: true,
        }
    }
}

/// Works through one key's mailbox. Should it be dropped before the
/// mailbox is empty (its task died), the mailbox closes, so the next item
/// posted starts a runner again rather than wait behind one that is gone.
pub(crate) struct Runner<'a, K: Hash + Eq + Clone, T> {
    mailboxes: &'a Mailboxes<K, T>,
    key: &'a K,
    armed: bool,
}

impl<K: Hash + Eq + Clone, T> Runner<'_, K, T> {
    /// The next batch, at most `max`, oldest first; `None` once the
    /// mailbox is empty, which closes it under the same lock, so an item
    /// posted afterwards finds no runner and starts one.
    pub(crate) fn next_batch(&mut self, max: usize) -> Option<Vec<T>> {
        let mut open = self.mailboxes.lock();
        let waiting = open.get_mut(self.key)?;
        if waiting.is_empty() {
            open.remove(self.key);
            self.armed = false;
            return None;
        }
        let take = waiting.len().min(max);
        Some(waiting.drain(..take).collect())
    }
}

impl<K: Hash + Eq + Clone, T> Drop for Runner<'_, K, T> {
    fn drop(&mut self) {
        if self.armed {
            self.mailboxes.lock().remove(self.key);
        }
    }
}
