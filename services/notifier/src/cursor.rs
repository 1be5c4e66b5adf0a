//! A watcher's place in one instance's progress, by position.
//!
//! The hub relays what the bus brings, which is each instance's progress in
//! order except when an outbox row was published late (its first publish
//! failed and a later commit's went first) or reached this notifier before
//! it started. A watcher therefore sends an event only if its position is
//! the next one; when it sees a later one, the events in between are
//! already durable (their commit came first), so it reads them from the
//! instance's history and sends them first. A client that resumes after
//! position N thus misses and repeats nothing, whichever way it follows the
//! instance.

use std::sync::Arc;

use legato_contracts::{InstanceId, ProgressEvent};
use legato_store::{HistoryFrom, Store};

use crate::Update;

/// Most of the current run's events a new watcher is shown (as many as
/// the hub holds per instance).
pub(crate) const NEW_WATCHER_REPLAY: u64 = crate::hub::REPLAY_PER_INSTANCE as u64;
/// History rows read per store request while filling a gap.
const FILL_PAGE: usize = 500;
/// Pages read for one gap at most, so a fill always ends.
const FILL_PAGES: usize = 200;

pub(crate) struct Cursor {
    instance: InstanceId,
    /// The last position sent.
    after: u64,
    /// The last hub number sent, for events from before positions existed.
    after_n: u64,
}

impl Cursor {
    /// A watcher that asked for no particular place: it is shown the
    /// current run's progress (its last [`NEW_WATCHER_REPLAY`] events at
    /// most), then what follows. `run_position` and `position` are the
    /// instance's as stored now.
    pub(crate) fn new_watcher(instance: InstanceId, run_position: u64, position: u64) -> Self {
        let recent = position.saturating_sub(NEW_WATCHER_REPLAY);
        Self::after(instance, run_position.max(recent))
    }

    /// A watcher that saw every event up to `position`.
    pub(crate) fn after(instance: InstanceId, position: u64) -> Self {
        Self {
            instance,
            after: position,
            after_n: 0,
        }
    }

    /// What to send for `update`, in order: nothing when the watcher has it,
    /// else the events it missed before it (from the history) and it.
    pub(crate) async fn admit(
        &mut self,
        store: &dyn Store,
        update: Arc<Update>,
    ) -> Vec<Arc<Update>> {
        let position = update.event.position;
        if position == 0 {
            // From before positions: the hub's own order is all there is.
            if update.n <= self.after_n {
                return Vec::new();
            }
            self.after_n = update.n;
            return vec![update];
        }
        if position <= self.after {
            return Vec::new();
        }
        let mut out = Vec::new();
        if position > self.after + 1 {
            out = self.missed(store, self.after, position).await;
        }
        self.after = position;
        self.after_n = self.after_n.max(update.n);
        out.push(update);
        out
    }

    /// Events after `position` the history holds beyond what was sent (the
    /// instance's progress that never reached this notifier), up to
    /// `until` (exclusive; `None` for all).
    pub(crate) async fn catch_up(
        &mut self,
        store: &dyn Store,
        until: Option<u64>,
    ) -> Vec<Arc<Update>> {
        let missed = self
            .missed(store, self.after, until.unwrap_or(u64::MAX))
            .await;
        if let Some(last) = missed.last() {
            self.after = last.event.position;
        }
        missed
    }

    /// The progress events with positions in `(after, until)`, from the
    /// history. A store failure leaves the gap (the watcher sees positions
    /// jump and can read the history itself later).
    async fn missed(&self, store: &dyn Store, after: u64, until: u64) -> Vec<Arc<Update>> {
        let mut out = Vec::new();
        if until <= after.saturating_add(1) {
            // No position in between: nothing to read.
            return out;
        }
        let mut from = HistoryFrom::position(after);
        for _ in 0..FILL_PAGES {
            let rows = match store.history(&self.instance, from, FILL_PAGE).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(instance = %self.instance, after, "progress missed by this notifier could not be read from the history: {e}");
                    return out;
                }
            };
            let Some(last) = rows.last() else {
                return out;
            };
            from.seq = last.seq;
            let full_page = rows.len() == FILL_PAGE;
            for row in rows {
                for event in row.progress {
                    if event.position >= until {
                        return out;
                    }
                    if event.position > after {
                        out.push(self.update_of(event));
                    }
                }
            }
            if !full_page {
                return out;
            }
        }
        out
    }

    fn update_of(&self, event: ProgressEvent) -> Arc<Update> {
        Arc::new(Update {
            instance: self.instance.clone(),
            message_id: String::new(),
            event,
            n: 0,
        })
    }
}
