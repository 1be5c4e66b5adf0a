//! Entity steps: each attempt sends its operation to the entity. A call's
//! answer comes back as the attempt's result (a failed operation fails it
//! for good); a signal's step completes once the entity applied it,
//! whatever its answer: waiting that long is what keeps a signal from
//! being lost in a crash on a bus that forgets (`legato up`), as its
//! attempt is re-sent like any other. Every attempt of one task sends the
//! same operation id, so the entity applies it once however many attempts
//! (or redeliveries) there are.

use legato_contracts::{
    Caller, EntityId, EntityOperation, EntityRef, Operation, ProgressKind, TaskError, TaskKey,
};
use legato_workflow::{EntityStep, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::decide::Ctx;
use crate::state::TaskSlot;
use crate::{Command, InstanceState, tasks};

/// The entity a task's attempts operate on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitySlot {
    pub entity: EntityRef,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signal: bool,
}

/// The task of an entity step: its operation, rendered, is the slot's
/// input.
pub(crate) fn slot(step: &EntityStep, scope: &Scope) -> Result<TaskSlot, String> {
    let id = match step.id.render(scope).map_err(|e| e.to_string())? {
        Value::String(id) => EntityId::parse(id).map_err(|e| e.to_string())?,
        other => return Err(format!("entity.id rendered to {other}, not a string")),
    };
    let operation = step.operation.render(scope).map_err(|e| e.to_string())?;
    let parsed = Operation::from_json(operation.clone())
        .map_err(|e| format!("entity operation {operation}: {} {}", e.pointer, e.message))?;
    if parsed.is_internal() {
        return Err(format!(
            "entity operation {operation}: {} is legato's own",
            parsed.name()
        ));
    }
    let slot = EntitySlot {
        entity: EntityRef {
            entity_type: step.entity_type.clone(),
            id,
        },
        signal: step.signal,
    };
    let input = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    Ok(TaskSlot::for_entity(slot, input))
}

/// Sends the operation of an attempt just begun; a signal's attempt
/// completes with it.
pub(crate) fn send(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    deadline: Option<time::OffsetDateTime>,
) {
    let Some(slot) = ctx.state.task_slot(key) else {
        return;
    };
    let Some(spec) = slot.entity.clone() else {
        return;
    };
    let message = match operation_of(&ctx.state, key, slot) {
        Ok(message) => message,
        Err(message) => {
            let error = TaskError {
                message,
                retryable: false,
            };
            return tasks::fail_attempt(ctx, key, attempt, &error);
        }
    };
    let op = message.operation.name().to_owned();
    ctx.commands.push(Command::OperateEntity(message));
    ctx.progress(ProgressKind::StepStarted)
        .step(&key.step)
        .item(key.item)
        .attempt(attempt)
        .data(json!({ "entity": spec.entity, "op": op, "signal": spec.signal }));
    tasks::watch_deadline(ctx, key, attempt, deadline);
}

/// The message the slot's current attempt sends, `Err` when its input is
/// not an operation.
fn operation_of(
    state: &InstanceState,
    key: &TaskKey,
    slot: &TaskSlot,
) -> Result<EntityOperation, String> {
    let spec = slot
        .entity
        .as_ref()
        .ok_or_else(|| format!("task {key} is not an entity operation"))?;
    let (operation, id) = if crate::locks::is_acquisition(slot) {
        // Each attempt asks anew (the entity knows its holder, and tells
        // the latest attempt when its turn comes); a redelivery of one
        // attempt is still one operation.
        let operation = crate::locks::acquire(state, key, slot);
        (operation, format!("{}/{key}@{}", state.id, slot.attempt))
    } else {
        let operation: Operation = serde_json::from_value(slot.input.clone())
            .map_err(|e| format!("entity operation {}: {e}", slot.input))?;
        // The same for every attempt and redelivery of the task.
        (operation, format!("{}/{key}", state.id))
    };
    Ok(EntityOperation {
        entity: spec.entity.clone(),
        id,
        operation,
        caller: Some(Caller {
            instance: state.id.clone(),
            key: key.clone(),
            attempt: slot.attempt,
            signal: spec.signal,
        }),
    })
}

/// The operations still waiting for their answer, as sent: for a bus that
/// forgets on restart, sending them again is a redelivery (the entity
/// applies each id once).
pub(crate) fn running_calls(state: &InstanceState) -> Vec<EntityOperation> {
    state
        .running_slots()
        .into_iter()
        .filter(|(_, _, slot)| slot.entity.is_some())
        .filter_map(|(_, key, slot)| operation_of(state, &key, slot).ok())
        .collect()
}
