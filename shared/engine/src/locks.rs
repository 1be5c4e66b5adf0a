//! Lock steps: a block of steps run while the instance holds entities.
//! Each entity is one acquisition task (an `acquire` operation, answered
//! when the instance's turn comes), dispatched one after the other in
//! (type, id) order: every lock step takes its entities in that one global
//! order, so no two wait on each other in a cycle. Once all are held the
//! body runs like a loop's single iteration; when it ends, fails, or the
//! step is stopped, every entity is released.

use std::sync::Arc;

use legato_contracts::{
    EntityId, EntityOperation, EntityRef, Holder, Operation, StepId, TaskKey, TaskRole,
};
use legato_workflow::{LockSpec, Scope, Step};
use serde_json::{Value, json};

use crate::decide::Ctx;
use crate::entity_steps::EntitySlot;
use crate::state::{SlotStatus, StepState, StepStatus, TaskSlot};
use crate::{Command, InstanceState, scheduler, tasks};

/// The acquisition tasks of a lock step, in the order they are taken.
pub(crate) fn start(ctx: &mut Ctx, step: &Step, lock: &LockSpec, scope: &Scope) {
    let mut entities = Vec::new();
    for target in &lock.entities {
        let id = match target.id.render(scope) {
            Ok(Value::String(id)) => EntityId::parse(id).map_err(|e| e.to_string()),
            Ok(other) => Err(format!("lock entity id rendered to {other}, not a string")),
            Err(e) => Err(e.to_string()),
        };
        match id {
            Ok(id) => entities.push(EntityRef {
                entity_type: target.entity_type.clone(),
                id,
            }),
            Err(e) => return tasks::step_failed(ctx, &step.id, e),
        }
    }
    entities.sort();
    entities.dedup();
    let slots = entities
        .into_iter()
        .map(|entity| {
            let acquire = json!({ "op": "acquire", "capacity": lock.capacity });
            TaskSlot::for_entity(
                EntitySlot {
                    entity,
                    signal: false,
                },
                acquire,
            )
        })
        .collect();
    scheduler::start_tasks(ctx, step, slots);
}

/// Whether `slot` is an acquisition (its input the engine's `acquire`).
pub(crate) fn is_acquisition(slot: &TaskSlot) -> bool {
    slot.entity.is_some() && slot.input.get("op").and_then(Value::as_str) == Some("acquire")
}

/// The `acquire` operation an acquisition's attempt sends.
pub(crate) fn acquire(state: &InstanceState, key: &TaskKey, slot: &TaskSlot) -> Operation {
    let capacity = slot
        .input
        .get("capacity")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(1);
    Operation::Acquire {
        holder: Holder {
            instance: state.id.clone(),
            key: key.clone(),
        },
        capacity,
    }
}

/// Every entity is held: the body starts. Its steps that completed before
/// (a redrive of a lock step whose block failed) stay done, as a redrive
/// promises; the others start afresh.
pub(crate) fn acquired(ctx: &mut Ctx, step: &Step, lock: &LockSpec) {
    for inner in &lock.steps {
        if ctx
            .state
            .steps
            .get(&inner.id)
            .is_some_and(|s| s.status.is_done())
        {
            continue;
        }
        ctx.state
            .steps
            .insert(inner.id.clone(), Arc::new(StepState::pending()));
    }
    let locked = held_entities(&ctx.state, &step.id);
    ctx.progress(legato_contracts::ProgressKind::StepStarted)
        .step(&step.id)
        .data(json!({ "locked": locked }));
}

/// Whether the lock step holds everything it asked for (its body runs).
pub(crate) fn holds_all(state: &InstanceState, id: &StepId) -> bool {
    state.steps.get(id).is_some_and(|s| {
        s.status == StepStatus::Running
            && !s.tasks.is_empty()
            && s.tasks.iter().all(|t| t.status == SlotStatus::Completed)
    })
}

/// The body is done: the step completes with its output, and lets go.
pub(crate) fn end(ctx: &mut Ctx, step: &Step, lock: &LockSpec) {
    let output = match &lock.output {
        Some(template) => {
            match ctx
                .state
                .scope_reading(lock.steps_read())
                .and_then(|scope| template.render(&scope))
            {
                Ok(output) => output,
                Err(e) => return tasks::step_failed(ctx, &step.id, format!("output: {e}")),
            }
        }
        None => Value::Object(
            lock.steps
                .iter()
                .map(|s| {
                    let output = ctx.state.steps.get(&s.id).and_then(|s| s.output.clone());
                    (s.id.to_string(), output.unwrap_or(Value::Null))
                })
                .collect(),
        ),
    };
    release(ctx, &step.id);
    tasks::complete_step(ctx, &step.id, output);
}

/// Lets go of every entity the lock step asked for, held or waited for
/// (a release of one not held is nothing). Each release has an id of its
/// own holder's, so it is applied once however often it is sent.
pub(crate) fn release(ctx: &mut Ctx, id: &StepId) {
    let Some(step) = ctx.state.steps.get(id) else {
        return;
    };
    let releases: Vec<EntityOperation> = step
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, slot)| slot.attempt > 0 && is_acquisition(slot))
        .filter_map(|(i, slot)| {
            let key = ctx.state.task_key(
                id.clone(),
                Some(u32::try_from(i).unwrap_or(u32::MAX)),
                TaskRole::Action,
            );
            let entity = slot.entity.as_ref()?.entity.clone();
            Some(EntityOperation {
                entity,
                id: format!("{}/{key}/release", ctx.state.id),
                operation: Operation::Release {
                    holder: Holder {
                        instance: ctx.state.id.clone(),
                        key,
                    },
                },
                caller: None,
            })
        })
        .collect();
    for release in releases {
        ctx.commands.push(Command::OperateEntity(release));
    }
}

/// Whether step `id` is a lock step under way: one to release when it is
/// stopped.
pub(crate) fn is_active_lock(ctx: &Ctx, id: &StepId) -> bool {
    let is_lock = ctx.workflow().ok().is_some_and(|w| {
        w.step(id.as_str())
            .is_some_and(|s| matches!(s.action, legato_workflow::Action::Lock { .. }))
    });
    is_lock
        && ctx
            .state
            .steps
            .get(id)
            .is_some_and(|s| matches!(s.status, StepStatus::Running | StepStatus::Waiting))
}

fn held_entities(state: &InstanceState, id: &StepId) -> Vec<EntityRef> {
    state
        .steps
        .get(id)
        .map(|s| {
            s.tasks
                .iter()
                .filter_map(|t| t.entity.as_ref().map(|e| e.entity.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Where a holder's lock step is with the entity it names, as its
/// instance's state says: what an entity asks to tell a holder that is
/// gone (its lock to be released on its behalf) from one still waiting
/// for a grant it may have missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHold {
    /// Its acquisition waits for the grant, in this attempt.
    Waiting { attempt: u32 },
    /// It holds the entity: its body runs.
    Holding,
    /// Its lock step is over (or the instance, or this run of it).
    Gone,
}

impl InstanceState {
    pub fn lock_hold(&self, holder: &Holder) -> LockHold {
        let key = &holder.key;
        if holder.instance != self.id
            || self.status.is_terminal()
            || key.run != self.run
            || key.execution != self.execution
            || key.role != TaskRole::Action
        {
            return LockHold::Gone;
        }
        let Some(step) = self.steps.get(&key.step) else {
            return LockHold::Gone;
        };
        if step.status != StepStatus::Running {
            return LockHold::Gone;
        }
        match self.task_slot(key) {
            Some(slot) if !is_acquisition(slot) => LockHold::Gone,
            Some(slot) => match slot.status {
                SlotStatus::Running | SlotStatus::Backoff => LockHold::Waiting {
                    attempt: slot.attempt,
                },
                SlotStatus::Completed => LockHold::Holding,
                _ => LockHold::Gone,
            },
            None => LockHold::Gone,
        }
    }
}
