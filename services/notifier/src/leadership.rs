//! Which notifier replica relays progress to Azure SignalR: the one holding
//! the store lease `signalr-relay`. Every replica keeps its own feed of all
//! progress (its clients need it), but only the holder sends to Azure, so
//! each event is sent once whatever the number of replicas. The holder
//! renews every [`RENEW`]; when it dies, another takes over once [`TTL`]
//! has passed since the last renewal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use legato_service::Shutdown;
use legato_store::Store;
use tokio::sync::watch;

/// How long a lease lasts without renewal: the longest gap in relaying
/// after the holder dies.
pub const TTL: Duration = Duration::from_secs(10);
/// How often the holder renews (and the others ask).
pub const RENEW: Duration = Duration::from_secs(3);
const LEASE: &str = "signalr-relay";

/// Whether this replica holds the lease, kept current by a task.
#[derive(Clone)]
pub struct Leadership {
    holds: watch::Receiver<bool>,
}

impl Leadership {
    /// Starts asking for the lease, as a replica of its own, until
    /// shutdown.
    pub fn follow(store: Arc<dyn Store>, shutdown: Shutdown) -> Self {
        let replica = uuid::Uuid::new_v4().simple().to_string();
        let (tell, holds) = watch::channel(false);
        tokio::spawn(async move {
            let mut last_held: Option<Instant> = None;
            loop {
                let holds = match store.acquire_lease(LEASE, &replica, TTL).await {
                    Ok(true) => {
                        last_held = Some(Instant::now());
                        true
                    }
                    Ok(false) => false,
                    // Unknown: keep relaying only while the last renewal
                    // still covers us, so two replicas never both do.
                    Err(e) => {
                        tracing::warn!("relay lease not renewed: {e}");
                        last_held.is_some_and(|at| at.elapsed() + RENEW < TTL)
                    }
                };
                tell.send_if_modified(|held| std::mem::replace(held, holds) != holds);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(RENEW) => {}
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
