//! Custom operations as whoever begins one carries them out: the run that
//! applies it (an instance of the workflow its type names, with an id
//! derived from the entity and the operation, so that starting it again
//! is harmless), and waiting for an operation's answer.

use std::sync::Arc;
use std::time::Duration;

use legato_contracts::{
    CustomOutcome, EntityLink, EntityOperation, InstanceId, Operation, Payload, StartInstance,
};
use legato_engine::entities::Busy;
use legato_store::{EntityAnswer, EntityKey, Store, StoreError};
use legato_workflow::EntityTypeDef;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::definitions::{Definitions, visible_names};

/// The custom operation an entity is busy with, whose run is to start,
/// and the state it sees.
#[derive(Debug, Clone)]
pub struct CustomStart {
    pub busy: Busy,
    pub state: Value,
    pub def: Arc<EntityTypeDef>,
}

/// The id of the run applying operation `operation_id` on the entity:
/// `entity.<type>.<hash>` in the entity's tenant, the same however often
/// it is asked.
pub fn custom_instance(key: &EntityKey, operation_id: &str) -> Result<InstanceId, StoreError> {
    let digest = Sha256::digest(format!("{key}\n{operation_id}").as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    InstanceId::scoped(
        key.tenant.as_ref(),
        format!("entity.{}.{hash}", key.entity.entity_type),
    )
    .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The message that starts the run of `start`'s operation (its subject
/// and payload): a start of the latest version of the workflow its type
/// names for it, in the entity's tenant (its own workflow, else the shared
/// one). When no workflow can take it, the operation's outcome instead:
/// failed, saying why.
pub async fn start_of(
    store: &dyn Store,
    definitions: &Definitions,
    key: &EntityKey,
    start: &CustomStart,
) -> Result<(InstanceId, Payload), StoreError> {
    let busy = &start.busy;
    let (name, input) = match &busy.operation.operation {
        Operation::Custom(custom) => (custom.name.as_str(), &custom.input),
        other => {
            return Err(StoreError::Corrupt(format!(
                "entity {key} is busy with {}, not a custom operation",
                other.name()
            )));
        }
    };
    let failed = |why: String| {
        let outcome = EntityOperation {
            entity: key.entity.clone(),
            id: format!("{}/complete", busy.operation.id),
            operation: Operation::Complete {
                operation: busy.operation.id.clone(),
                instance: busy.instance.clone(),
                outcome: CustomOutcome::Failed(why),
            },
            caller: None,
        };
        Ok((busy.instance.clone(), outcome.into()))
    };
    let Some(def) = start.def.operations.get(name) else {
        return failed(format!(
            "entity type {} no longer declares operation {name}",
            key.entity.entity_type
        ));
    };
    let input = json!({
        "entity": key.entity,
        "operation": name,
        "input": input,
        "state": start.state,
    });
    for workflow in visible_names(key.tenant.as_ref(), &def.workflow) {
        let Some(latest) = store.get_definition(&workflow, None).await? else {
            continue;
        };
        let version = latest.version;
        if let Err(errors) = definitions.parse(latest)?.check_input(&input) {
            let errors: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.pointer, e.message))
                .collect();
            return failed(format!(
                "operation {name}: its input does not match workflow {}'s input_schema: {}",
                def.workflow,
                errors.join("; ")
            ));
        }
        let start = StartInstance {
            workflow,
            version,
            input,
            tenant: key.tenant.as_ref().map(ToString::to_string),
            parent: None,
            budget: None,
            entity_operation: Some(EntityLink {
                entity: key.entity.clone(),
                operation: busy.operation.id.clone(),
            }),
        };
        return Ok((busy.instance.clone(), start.into()));
    }
    failed(format!(
        "operation {name}: no workflow {} is registered",
        def.workflow
    ))
}

/// The answer of operation `id` on the entity once it is applied, asking
/// the store until `within` has passed (`None` then: it still waits, behind
/// a custom operation or as one).
pub async fn wait_for_answer(
    store: &dyn Store,
    key: &EntityKey,
    id: &str,
    within: Duration,
) -> Result<Option<EntityAnswer>, StoreError> {
    let until = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some((_, answer)) = store.entity_answer(key, id).await? {
            return Ok(Some(answer));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
