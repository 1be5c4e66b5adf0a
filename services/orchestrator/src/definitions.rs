//! Pinned definitions by (name, version). A version never changes once
//! registered (the store refuses different content under the same version),
//! so cached entries never go stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use legato_contracts::WorkflowName;
use legato_store::{Store, StoreError};
use legato_workflow::Workflow;

#[derive(Default)]
pub(crate) struct Definitions {
    cache: Mutex<HashMap<(WorkflowName, u32), Arc<Workflow>>>,
}

impl Definitions {
    pub(crate) async fn get(
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
        let workflow = legato_workflow::from_value(record.body)
            .map_err(|e| StoreError::Corrupt(format!("workflow {name} v{version}: {e}")))?;
        let workflow = Arc::new(workflow);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, workflow.clone());
        }
        Ok(workflow)
    }
}
