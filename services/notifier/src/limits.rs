//! A cap on the streams and hub connections one tenant holds open at once,
//! so no tenant (or anyone holding its key) can exhaust the notifier's
//! sockets and memory for the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use legato_contracts::TenantId;

/// Open connections by tenant (`None`: callers without one).
#[derive(Clone)]
pub struct ConnectionCap {
    limit: usize,
    open: Arc<Mutex<HashMap<Option<TenantId>, usize>>>,
}

/// Held while a connection is open; frees its place when dropped.
pub struct Slot {
    tenant: Option<TenantId>,
    open: Arc<Mutex<HashMap<Option<TenantId>, usize>>>,
}

impl ConnectionCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Arc::default(),
        }
    }

    /// A place for one more of `tenant`'s connections, if it has room.
    pub fn take(&self, tenant: Option<&TenantId>) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(tenant.cloned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            tenant: tenant.cloned(),
            open: self.open.clone(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_room_and_gets_it_back() {
        let cap = ConnectionCap::new(2);
        let acme = TenantId::parse("acme").ok();
        let a1 = cap.take(acme.as_ref());
        let a2 = cap.take(acme.as_ref());
        assert!(a1.is_some() && a2.is_some());
        assert!(cap.take(acme.as_ref()).is_none(), "acme is full");
        assert!(cap.take(None).is_some(), "others are not affected");
        drop(a1);
        assert!(
            cap.take(acme.as_ref()).is_some(),
            "a closed one frees a place"
        );
        drop(a2);
        assert!(cap.open.lock().unwrap().len() <= 1);
    }
}
