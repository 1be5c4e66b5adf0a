//! Users this gateway added to instances' Azure SignalR groups, removed
//! again once the instance has finished. Azure has no call that lists or
//! clears a group's users, so the gateway remembers whom it added; what a
//! restart forgets (or what exceeds [`CAPACITY`]) still lapses with the
//! membership TTL it was added with.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use legato_contracts::InstanceId;
use legato_service::Shutdown;
use legato_signalr::azure::AzureSignalR;
use legato_store::Store;

/// Instances remembered at most.
pub const CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct Memberships {
    added: Mutex<HashMap<InstanceId, BTreeSet<String>>>,
}

impl Memberships {
    fn added(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, BTreeSet<String>>> {
        self.added.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `user` joined `instance`'s group.
    pub fn track(&self, instance: &InstanceId, user: &str) {
        let mut added = self.added();
        if added.len() >= CAPACITY && !added.contains_key(instance) {
            tracing::warn!(instance = %instance, user, "too many watched instances to remember: this membership lapses with its TTL");
            return;
        }
        added
            .entry(instance.clone())
            .or_default()
            .insert(user.to_owned());
    }

    /// Every `period`, removes the members of instances that finished (or
    /// were purged), until shutdown.
    pub async fn sweep(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        azure: AzureSignalR,
        period: Duration,
        shutdown: Shutdown,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let watched: Vec<InstanceId> = self.added().keys().cloned().collect();
            for instance in watched {
                let finished = match store.load(&instance).await {
                    Ok(Some(stored)) => stored.record.summary.status.is_terminal(),
                    Ok(None) => true,
                    Err(e) => {
                        tracing::debug!(instance = %instance, "membership check postponed: {e}");
                        continue;
                    }
                };
                if !finished {
                    continue;
                }
                let users = self.added().remove(&instance).unwrap_or_default();
                for user in users {
                    if let Err(e) = azure.remove_user_from_group(instance.as_str(), &user).await {
                        tracing::warn!(instance = %instance, user, "membership not removed (it lapses with its TTL): {e}");
                    }
                }
            }
        }
    }
}
