//! Child workflows as the orchestrator carries them out: which definition
//! a child runs (resolved in its parent's tenant when the start is
//! committed), and the messages that start, stop and answer children.

use legato_contracts::{
    CustomOutcome, EntityLink, EntityOperation, InstanceId, Operation, ParentLink, Payload,
    StartInstance, TaskCompleted, TaskFailed, TenantId, TerminateInstance,
};
use legato_engine::{ChildResult, ChildStart, Command};
use legato_service::definitions::{Definitions, visible_names};
use legato_store::{Store, StoreError};

/// Pins the definition `start` runs: its parent's tenant's own workflow by
/// that name, else the shared one (a tenant's own shadows the shared one
/// whatever versions either has), at the pinned version or the latest.
/// `Ok(Err(why))` when there is none, or the input does not fit its
/// `input_schema`: the attempt fails for good, as for a missing agent.
pub(crate) async fn resolve(
    store: &dyn Store,
    definitions: &Definitions,
    start: &mut ChildStart,
) -> Result<Result<(), String>, StoreError> {
    let local = start.workflow.name.local().to_owned();
    let tenant = start.tenant.as_deref().map(TenantId::parse).transpose();
    let Ok(tenant) = tenant else {
        return Ok(Err(format!("tenant {:?} is not valid", start.tenant)));
    };
    for name in visible_names(tenant.as_ref(), &local) {
        let Some(latest) = store.get_definition(&name, None).await? else {
            continue;
        };
        let version = start.workflow.version.unwrap_or(latest.version);
        let workflow = if version == latest.version {
            definitions.parse(latest)?
        } else {
            match definitions.get(store, &name, version).await {
                Ok(workflow) => workflow,
                Err(StoreError::NotFound(_)) => {
                    return Ok(Err(format!("no workflow {local} version {version}")));
                }
                Err(e) => return Err(e),
            }
        };
        if let Err(errors) = workflow.check_input(&start.input) {
            let errors: Vec<String> = errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        if e.pointer.is_empty() {
                            "/"
                        } else {
                            &e.pointer
                        },
                        e.message
                    )
                })
                .collect();
            return Ok(Err(format!(
                "the input does not match workflow {local}'s input_schema: {}",
                errors.join("; ")
            )));
        }
        start.workflow.name = name;
        start.workflow.version = Some(version);
        return Ok(Ok(()));
    }
    Ok(Err(format!("no workflow {local} is registered")))
}

/// The message a child workflow command sends, and the instance it is
/// about; `None` for every other command.
pub(crate) fn message(command: &Command) -> Result<Option<(InstanceId, Payload)>, StoreError> {
    Ok(Some(match command {
        Command::StartChild(start) => {
            let version = start.workflow.version.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the start of child {} names no version of {}",
                    start.child, start.workflow.name
                ))
            })?;
            let payload = StartInstance {
                workflow: start.workflow.name.clone(),
                version,
                input: start.input.clone(),
                tenant: start.tenant.clone(),
                parent: Some(start.parent.clone()),
                budget: None,
                entity_operation: None,
            };
            (start.child.clone(), payload.into())
        }
        Command::TerminateChild { child, reason } => {
            let payload = TerminateInstance {
                reason: Some(reason.clone()),
            };
            (child.clone(), payload.into())
        }
        Command::ReportToParent { parent, result } => report(parent, result),
        Command::AnswerEntity {
            instance,
            link,
            result,
        } => answer(instance, link, result),
        _ => return Ok(None),
    }))
}

/// What a run applying an entity's custom operation tells the entity when
/// it ends, and the run it comes from (the entity's tenant is its).
pub(crate) fn answer(
    instance: &InstanceId,
    link: &EntityLink,
    result: &ChildResult,
) -> (InstanceId, Payload) {
    let outcome = match result {
        ChildResult::Completed { output, .. } => CustomOutcome::Completed(output.clone()),
        ChildResult::Failed { error, .. } => CustomOutcome::Failed(error.message.clone()),
    };
    let message = EntityOperation {
        entity: link.entity.clone(),
        id: format!("{}/complete", link.operation),
        operation: Operation::Complete {
            operation: link.operation.clone(),
            instance: instance.clone(),
            outcome,
        },
        caller: None,
    };
    (instance.clone(), message.into())
}

/// The result a child's end is for its parent's task attempt, and the
/// parent it goes to.
pub(crate) fn report(parent: &ParentLink, result: &ChildResult) -> (InstanceId, Payload) {
    let (key, attempt) = (parent.key.clone(), parent.attempt);
    let payload: Payload = match result {
        ChildResult::Completed { output, usage } => TaskCompleted {
            key,
            attempt,
            output: output.clone(),
            custom_status: None,
            usage: usage.clone(),
        }
        .into(),
        ChildResult::Failed { error, usage } => TaskFailed {
            key,
            attempt,
            error: error.clone(),
            usage: usage.clone(),
        }
        .into(),
    };
    (parent.instance.clone(), payload)
}
