//! Parsed definitions by (name, version), for the gateway's starts and the
//! orchestrator's Started events. A version never changes once registered
//! (the store refuses different content under the same version), so cached
//! entries never go stale, and a definition is validated once per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use legato_contracts::{TenantId, WorkflowName};
use legato_store::{DefinitionRecord, Store, StoreError};
use legato_workflow::Workflow;

/// The workflows `local` may name in `tenant`'s scope, in the order they
/// are looked for: the tenant's own (which shadows the shared one), then
/// the shared one.
pub fn visible_names(tenant: Option<&TenantId>, local: &str) -> Vec<WorkflowName> {
    let own = tenant.and_then(|tenant| WorkflowName::scoped(Some(tenant), local).ok());
    own.into_iter()
        .chain(WorkflowName::scoped(None, local).ok())
        .collect()
}

#[derive(Default)]
pub struct Definitions {
    cache: Mutex<HashMap<(WorkflowName, u32), Arc<Workflow>>>,
}

impl Definitions {
    /// The parsed form of a record read from the store.
    pub fn parse(&self, record: DefinitionRecord) -> Result<Arc<Workflow>, StoreError> {
        let key = (record.name.clone(), record.version);
        if let Some(found) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(found);
        }
        let workflow = legato_workflow::from_value(record.body)
            .map_err(|e| StoreError::Corrupt(format!("workflow {} v{}: {e}", key.0, key.1)))?;
        let workflow = Arc::new(workflow);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, workflow.clone());
        }
        Ok(workflow)
    }

    pub async fn get(
        &self,
        store: &dyn Store,
        name: &WorkflowName,
        version: u32,
    ) -> Result<Arc<Workflow>, StoreError> {
        let key = (name.clone(), version);
        if let Some(found) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(found);
        }
        let record = store
            .get_definition(name, Some(version))
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("workflow {name} version {version}")))?;
        self.parse(record)
    }
}
