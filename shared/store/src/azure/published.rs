//! Outbox groups published but not yet deleted. Deleting a group right
//! after its messages went out costs a request per event; instead the
//! relay's delete is remembered here and the instance's next commit
//! deletes the group inside its own transaction (same partition). A group
//! no commit takes within [`FLUSH_AFTER`] (the instance's last event, or
//! one waiting for a person) is deleted on its own by a background flush.
//!
//! Nothing is lost either way: a group still in the table when this
//! process dies is published again by a sweep, and consumers deduplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use azure_data_tables::prelude::TableClient;
use futures::StreamExt;

use super::{PARALLEL_READS, if_match, status};

/// How long a published group waits for its instance's next commit.
const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// How often the flush looks for groups that waited long enough.
const FLUSH_TICK: Duration = Duration::from_millis(100);
/// Instances with groups waiting; past this a delete is not deferred.
const MOST_WAITING: usize = 100_000;

/// A published group, as its commit wrote it.
#[derive(Debug, Clone)]
pub(super) struct PublishedGroup {
    pub row: String,
    pub etag: String,
    since: Instant,
}

type Waiting = Mutex<HashMap<String, Vec<PublishedGroup>>>;

/// The groups this process published and has not deleted yet, by instance.
pub(super) struct Published {
    waiting: Arc<Waiting>,
}

impl Published {
    /// Starts the flush, which ends when this value is dropped.
    pub(super) fn start(instances: TableClient) -> Self {
        let waiting = Arc::new(Waiting::default());
        tokio::spawn(flush(Arc::downgrade(&waiting), instances));
        Self { waiting }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<PublishedGroup>>> {
        // Each change leaves the map consistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a published group for the instance's next commit; `false`
    /// when too many wait already (the caller deletes it now).
    pub(super) fn defer(&self, instance: &str, row: String, etag: String) -> bool {
        let mut waiting = self.lock();
        if waiting.len() >= MOST_WAITING && !waiting.contains_key(instance) {
            return false;
        }
        waiting
            .entry(instance.to_owned())
            .or_default()
            .push(PublishedGroup {
                row,
                etag,
                since: Instant::now(),
            });
        true
    }

    /// The instance's waiting groups, at most `room`, for a commit to delete.
    pub(super) fn take(&self, instance: &str, room: usize) -> Vec<PublishedGroup> {
        let mut waiting = self.lock();
        let Some(groups) = waiting.get_mut(instance) else {
            return Vec::new();
        };
        if groups.len() > room {
            return Vec::new();
        }
        let taken = std::mem::take(groups);
        waiting.remove(instance);
        taken
    }

    /// Groups a commit took but did not delete (it failed): the flush
    /// deletes them.
    pub(super) fn put_back(&self, instance: &str, groups: Vec<PublishedGroup>) {
        if groups.is_empty() {
            return;
        }
        self.lock()
            .entry(instance.to_owned())
            .or_default()
            .extend(groups);
    }

    /// Whether the group was published by this process, so a sweep must
    /// not send it again.
    pub(super) fn holds(&self, instance: &str, row: &str) -> bool {
        self.lock()
            .get(instance)
            .is_some_and(|groups| groups.iter().any(|g| g.row == row))
    }

    /// Forgets an instance whose rows are all gone (purged).
    pub(super) fn forget(&self, instance: &str) {
        self.lock().remove(instance);
    }
}

/// Deletes groups that waited [`FLUSH_AFTER`], every [`FLUSH_TICK`], until
/// the store is dropped.
async fn flush(waiting: Weak<Waiting>, instances: TableClient) {
    loop {
        tokio::time::sleep(FLUSH_TICK).await;
        let Some(waiting) = waiting.upgrade() else {
            return;
        };
        let due: Vec<(String, PublishedGroup)> = {
            let mut map = waiting.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            map.retain(|instance, groups| {
                groups.retain(|group| {
                    let ripe = group.since.elapsed() >= FLUSH_AFTER;
                    if ripe {
                        due.push((instance.clone(), group.clone()));
                    }
                    !ripe
                });
                !groups.is_empty()
            });
            due
        };
        drop(waiting);
        futures::stream::iter(due)
            .for_each_concurrent(PARALLEL_READS, |(instance, group)| {
                let instances = &instances;
                async move {
                    let deleted = instances
                        .partition_key_client(&instance)
                        .entity_client(&group.row)
                        .delete()
                        .if_match(if_match(Some(&group.etag)))
                        .await;
                    match deleted {
                        Ok(_) => {}
                        // Gone (purged, or swept by another replica) or
                        // rewritten by a partial delete: not ours to delete.
                        Err(e) if matches!(status(&e), Some(404 | 412)) => {}
                        // Left for the sweep, which publishes it again and
                        // deletes it.
                        Err(e) => {
                            tracing::debug!(%instance, "published outbox group not deleted yet: {e}");
                        }
                    }
                }
            })
            .await;
    }
}
