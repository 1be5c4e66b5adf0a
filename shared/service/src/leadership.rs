//! Work one replica of a service does at a time: the replica holding a
//! named store lease does it (the notifier's relay to Azure SignalR, the
//! orchestrator's schedule ticks). The holder renews every third of the
//! lease's time to live ([`TTL`] unless said otherwise), and the others ask
//! as often; when it dies, another takes over once that time has passed
//! since the last renewal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use legato_store::Store;
use tokio::sync::watch;

use crate::Shutdown;

/// How long a lease lasts without renewal: the longest gap in the work
/// after the holder dies.
pub const TTL: Duration = Duration::from_secs(10);

/// Whether this replica holds the lease, kept current by a task.
#[derive(Clone)]
pub struct Leadership {
    holds: watch::Receiver<bool>,
}

impl Leadership {
    /// Starts asking for the lease `lease`, as a replica of its own, until
    /// shutdown, with the default [`TTL`].
    pub fn follow(lease: &'static str, store: Arc<dyn Store>, shutdown: Shutdown) -> Self {
        Self::follow_for(lease, TTL, store, shutdown)
    }

    /// Like [`Leadership::follow`], for a lease that lasts `ttl` without
    /// renewal (renewed every third of it).
    pub fn follow_for(
        lease: &'static str,
        ttl: Duration,
        store: Arc<dyn Store>,
        shutdown: Shutdown,
    ) -> Self {
        let renew = ttl / 3;
        let replica = uuid::Uuid::new_v4().simple().to_string();
        let (tell, holds) = watch::channel(false);
        tokio::spawn(async move {
            let mut last_held: Option<Instant> = None;
            loop {
                let holds = match store.acquire_lease(lease, &replica, ttl).await {
                    Ok(true) => {
                        last_held = Some(Instant::now());
                        true
                    }
                    Ok(false) => false,
                    // Unknown: keep working only while the last renewal
                    // still covers us, so two replicas never both do.
                    Err(e) => {
                        tracing::warn!(lease, "lease not renewed: {e}");
                        last_held.is_some_and(|at| at.elapsed() + renew < ttl)
                    }
                };
                tell.send_if_modified(|held| std::mem::replace(held, holds) != holds);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(renew) => {}
                }
            }
        });
        Self { holds }
    }

    pub fn holds(&self) -> bool {
        *self.holds.borrow()
    }

    /// Waits until holding changes; never returns once the task ended.
    pub async fn changed(&mut self) {
        if self.holds.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
