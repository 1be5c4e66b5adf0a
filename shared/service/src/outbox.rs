//! The outbox relay. An orchestrator (or the gateway) commits the messages
//! a decision causes together with the state, then calls [`OutboxRelay::publish`]
//! to send them and delete the rows. If the process dies in between, the
//! rows stay, and [`OutboxRelay::run`] publishes them on the next start.
//! Consumers deduplicate, so publishing a row twice is harmless; losing one
//! is impossible.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use legato_bus::{Bus, BusError, OutgoingMessage, Routed};
use legato_contracts::{Envelope, InstanceId};
use legato_store::{Commit, OutboxRow, Store, StoreError, Version};

use crate::Shutdown;

/// Rows read per sweep round.
const SWEEP_BATCH: usize = 500;
/// Rounds per sweep, so one sweep always ends.
const SWEEP_ROUNDS: usize = 1_000;

/// The rows as the bus takes them, in order.
fn routed(rows: &[OutboxRow]) -> Vec<Routed> {
    rows.iter()
        .map(|row| Routed {
            topic: row.topic,
            routing_key: row.routing_key.clone(),
            message: OutgoingMessage {
                id: row.id.clone(),
                body: row.body.clone().into(),
                headers: Default::default(),
            },
        })
        .collect()
}

/// The outbox row that publishes `envelope` with its payload's topic and
/// routing key.
pub fn row_of(envelope: &Envelope) -> Result<OutboxRow, serde_json::Error> {
    Ok(OutboxRow {
        id: envelope.id.clone(),
        topic: envelope.payload.topic(),
        routing_key: envelope
            .payload
            .routing_key(envelope.subject.as_str())
            .into_owned(),
        body: envelope.encode()?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct OutboxRelay {
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    /// Set when an inline publish failed, so the next tick sweeps at once.
    dirty: AtomicBool,
}

impl OutboxRelay {
    pub fn new(bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Self {
        Self {
            bus,
            store,
            dirty: AtomicBool::new(false),
        }
    }

    /// Commits, then publishes what the commit put in its outbox. Once the
    /// commit is durable, a failed publish is only logged: the rows stay
    /// for the sweeper, so the caller sees the commit's outcome alone.
    pub async fn commit(&self, commit: Commit) -> Result<Version, StoreError> {
        let instance = commit.record.summary.id.clone();
        let outbox = commit.outbox.clone();
        let version = self.store.commit(commit).await?;
        if let Err(e) = self.publish(&instance, &outbox).await {
            tracing::warn!(%instance, "committed, not yet published (the outbox sweep sends it): {e}");
        }
        Ok(version)
    }

    /// Publishes one commit's rows in order, then deletes them. On failure
    /// the rows stay for the sweeper.
    pub async fn publish(
        &self,
        instance: &InstanceId,
        rows: &[OutboxRow],
    ) -> Result<(), RelayError> {
        if rows.is_empty() {
            return Ok(());
        }
        let result = self.send_and_delete(instance, rows).await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    /// Publishes rows that were never committed: messages that can be
    /// derived again from what is stored, should this send be lost.
    pub async fn send(&self, rows: &[OutboxRow]) -> Result<(), RelayError> {
        self.bus.publish_all(routed(rows)).await?;
        Ok(())
    }

    async fn send_and_delete(
        &self,
        instance: &InstanceId,
        rows: &[OutboxRow],
    ) -> Result<(), RelayError> {
        // In flight together (one round trip on RabbitMQ), in order.
        self.bus.publish_all(routed(rows)).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        self.store.delete_outbox(instance, &ids).await?;
        Ok(())
    }

    /// Publishes every row left behind; returns how many.
    pub async fn sweep(&self) -> Result<usize, RelayError> {
        self.dirty.store(false, Ordering::Release);
        let mut total = 0;
        for _ in 0..SWEEP_ROUNDS {
            let entries = self.store.pending_outbox(SWEEP_BATCH).await?;
            if total == 0 {
                // What the sweep found waiting (a full batch: at least).
                crate::metrics::outbox_backlog(entries.len());
            }
            if entries.is_empty() {
                break;
            }
            total += entries.len();
            // Group consecutive rows of one instance so each group is one
            // publish-then-delete, keeping per-instance order.
            let mut failed = None;
            let mut start = 0;
            while start < entries.len() {
                let instance = &entries[start].instance;
                let end = entries[start..]
                    .iter()
                    .position(|e| &e.instance != instance)
                    .map_or(entries.len(), |n| start + n);
                let rows: Vec<OutboxRow> =
                    entries[start..end].iter().map(|e| e.row.clone()).collect();
                // One instance's undeliverable message (no consumer bound
                // yet) must not hold back the others; it stays for later.
                if let Err(e) = self.send_and_delete(instance, &rows).await {
                    tracing::warn!(%instance, "outbox rows kept for a later sweep: {e}");
                    failed = Some(e);
                }
                start = end;
            }
            // Rows that could not go would come first again: try them on
            // the next sweep rather than looping over them now.
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(total)
    }

    /// Sweeps at once, then whenever an inline publish failed (checked every
    /// `tick`) and every `safety_interval` regardless, until shutdown.
    pub async fn run(
        self: Arc<Self>,
        shutdown: Shutdown,
        tick: Duration,
        safety_interval: Duration,
    ) {
        let mut since_sweep = Duration::MAX;
        // Failed sweeps in a row: the first is worth a warning, the rest of
        // an outage is not.
        let mut failures = 0u32;
        loop {
            if self.dirty.load(Ordering::Acquire) || since_sweep >= safety_interval {
                since_sweep = Duration::ZERO;
                match self.sweep().await {
                    Ok(n) => {
                        if failures > 0 {
                            tracing::info!(failures, "outbox sweep works again");
                        }
                        failures = 0;
                        if n > 0 {
                            tracing::info!(rows = n, "outbox: published rows left behind");
                        }
                    }
                    Err(e) => {
                        if failures == 0 {
                            tracing::warn!("outbox sweep failed, retrying every tick: {e}");
                        } else {
                            tracing::debug!("outbox sweep failed again: {e}");
                        }
                        failures += 1;
                        self.dirty.store(true, Ordering::Release);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(tick) => since_sweep = since_sweep.saturating_add(tick),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use legato_bus::Bus as _;
    use legato_bus::{InProcessBus, SubscriptionSpec};
    use legato_contracts::Topic;
    use legato_store::{
        AzureTableConnection, AzureTableStore, Commit, Expected, SqliteStore, conformance,
    };

    use super::*;

    #[tokio::test]
    async fn rows_left_by_a_crash_are_published_by_the_sweep_then_deleted() {
        rows_left_by_a_crash_are_swept(Arc::new(SqliteStore::in_memory().unwrap())).await;
    }

    /// Against Azurite (`scripts/test` starts it), in tables of its own.
    #[tokio::test]
    async fn rows_left_by_a_crash_are_swept_from_azure_tables() {
        let prefix = format!("outbox{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let connection = AzureTableConnection::ConnectionString(conformance::test_tables());
        let store = Arc::new(
            AzureTableStore::connect(&connection, &prefix)
                .await
                .unwrap(),
        );
        rows_left_by_a_crash_are_swept(store.clone()).await;
        store.delete_tables().await.unwrap();
    }

    async fn rows_left_by_a_crash_are_swept(store: Arc<dyn Store>) {
        let bus = InProcessBus::default();
        let mut sub = bus
            .subscribe(SubscriptionSpec::new(Topic::Progress, "watch").bind("#"))
            .await
            .unwrap();
        let record = conformance::record("i", legato_contracts::RuntimeStatus::Running);
        let instance = record.summary.id.clone();
        let mut commit = Commit::new(record, Expected::New);
        for n in 0..3 {
            commit.outbox.push(OutboxRow {
                id: format!("m{n}"),
                topic: Topic::Progress,
                routing_key: instance.to_string(),
                body: format!("{n}").into_bytes(),
            });
        }
        store.commit(commit).await.unwrap();
        let relay = OutboxRelay::new(Arc::new(bus), store.clone());
        assert_eq!(relay.sweep().await.unwrap(), 3);
        for n in 0..3 {
            let d = sub.next().await.unwrap();
            assert_eq!(d.message_id, format!("m{n}"));
            d.ack().await.unwrap();
        }
        assert!(store.pending_outbox(10).await.unwrap().is_empty());
        assert_eq!(relay.sweep().await.unwrap(), 0);
    }
}
