//! Registered entity types as whoever applies operations reads them: a
//! tenant's own type, else the shared one of that name, kept a moment so
//! that a batch does not cost a read of the type. A change of a type is
//! seen within [`EntityTypes::FRESH`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use legato_contracts::{EntityType, TenantId};
use legato_store::{Store, StoreError, StoredEntityType};
use legato_workflow::EntityTypeDef;

type Key = (Option<TenantId>, EntityType);
/// A type as read, and when: `None` when nobody registered it.
type Kept = (Instant, Option<Arc<EntityTypeDef>>);

#[derive(Default)]
pub struct EntityTypes {
    kept: Mutex<HashMap<Key, Kept>>,
}

impl EntityTypes {
    /// How long a type read is used before it is read again.
    pub const FRESH: Duration = Duration::from_secs(2);

    /// The type `name` as `tenant` sees it; `None` when neither the tenant
    /// nor everyone registered it.
    pub async fn get(
        &self,
        store: &dyn Store,
        tenant: Option<&TenantId>,
        name: &EntityType,
    ) -> Result<Option<Arc<EntityTypeDef>>, StoreError> {
        let key = (tenant.cloned(), name.clone());
        if let Ok(kept) = self.kept.lock()
            && let Some((at, def)) = kept.get(&key)
            && at.elapsed() < Self::FRESH
        {
            return Ok(def.clone());
        }
        self.read(store, tenant, name).await
    }

    /// As [`EntityTypes::get`], read from the store now: before refusing
    /// an operation for good because the type kept lately does not
    /// declare it (it may have been registered since).
    pub async fn read(
        &self,
        store: &dyn Store,
        tenant: Option<&TenantId>,
        name: &EntityType,
    ) -> Result<Option<Arc<EntityTypeDef>>, StoreError> {
        let key = (tenant.cloned(), name.clone());
        let def = registered(store, tenant, name).await?.map(Arc::new);
        if let Ok(mut kept) = self.kept.lock() {
            kept.insert(key, (Instant::now(), def.clone()));
        }
        Ok(def)
    }

    /// Forgets every type read, so the next batch reads them again (after
    /// this process registered or removed one).
    pub fn forget(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.clear();
        }
    }
}

/// The type as `tenant` sees it: its own registration, else the shared
/// one.
pub async fn visible_type(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    name: &EntityType,
) -> Result<Option<StoredEntityType>, StoreError> {
    let mut scopes = vec![None];
    if tenant.is_some() {
        scopes.insert(0, tenant);
    }
    for scope in scopes {
        if let Some(stored) = store.get_entity_type(scope, name).await? {
            return Ok(Some(stored));
        }
    }
    Ok(None)
}

/// The type as registered, read.
async fn registered(
    store: &dyn Store,
    tenant: Option<&TenantId>,
    name: &EntityType,
) -> Result<Option<EntityTypeDef>, StoreError> {
    visible_type(store, tenant, name)
        .await?
        .map(|stored| {
            EntityTypeDef::parse(name, stored.record.body)
                .map_err(|e| StoreError::Corrupt(format!("entity type {name}: {e}")))
        })
        .transpose()
}
