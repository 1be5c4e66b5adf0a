//! Child workflows: a task whose attempts are each a run of another
//! workflow. The engine only decides: it asks for the child's start (with
//! an id derived from the attempt, so starting it twice is starting it
//! once), for its termination when the attempt is stopped, and, in the
//! child, for its end to be reported as the parent's attempt result. The
//! orchestrator carries those out as messages.

use std::fmt::Write as _;

use legato_contracts::{
    ParentLink, ProgressKind, RuntimeStatus, TaskCancelled, TaskError, TaskKey,
};
use serde_json::json;

use crate::decide::Ctx;
use crate::state::TaskSlot;
use crate::{ChildResult, ChildStart, Command, InstanceState, tasks};

/// How many parents a child may have above it: deep enough for a coder
/// whose fix step is itself a workflow, shallow enough that a workflow
/// starting itself stops soon.
pub const MAX_DEPTH: u32 = 8;

/// The part of a child's id after its parent's (see
/// [`legato_contracts::InstanceId::child`]): the step, then the item, the
/// iteration and the execution where they apply, then the attempt, as in
/// `review.i2.a1`. Each attempt is a child of its own.
fn name(key: &TaskKey, attempt: u32) -> String {
    let mut name = key.step.to_string();
    if let Some(item) = key.item {
        let _ = write!(name, ".{item}");
    }
    if let Some(iteration) = key.iteration {
        let _ = write!(name, ".i{iteration}");
    }
    if key.execution > 0 {
        let _ = write!(name, ".e{}", key.execution);
    }
    let _ = write!(name, ".a{attempt}");
    name
}

/// Starts the child run of an attempt just begun, or fails the attempt
/// for good when it cannot be a child: too deep, or an id too long.
pub(crate) fn start(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    deadline: Option<time::OffsetDateTime>,
) {
    let depth = ctx.state.parent.as_ref().map_or(0, |p| p.depth) + 1;
    let child = if depth > MAX_DEPTH {
        Err(format!(
            "child workflows nest at most {MAX_DEPTH} deep, and this child would be at depth {depth}"
        ))
    } else {
        ctx.state.id.child(&name(key, attempt)).map_err(|e| {
            format!("the child run's id would be invalid ({e}): use shorter instance or step ids")
        })
    };
    let child = match child {
        Ok(child) => child,
        Err(message) => {
            let error = TaskError {
                message,
                retryable: false,
            };
            return tasks::fail_attempt(ctx, key, attempt, &error);
        }
    };
    let Some(slot) = tasks::slot_mut(ctx, key) else {
        return;
    };
    let Some(spec) = slot.child.as_mut() else {
        return;
    };
    spec.instance = Some(child.clone());
    let Some(start) = start_of(&ctx.state, key, ctx.state.task_slot(key)) else {
        return;
    };
    let workflow = start.workflow.name.clone();
    ctx.commands.push(Command::StartChild(start));
    tasks::watch_deadline(ctx, key, attempt, deadline);
    ctx.progress(ProgressKind::StepStarted)
        .step(&key.step)
        .item(key.item)
        .attempt(attempt)
        .data(json!({ "workflow": workflow, "child": child }));
}

/// The start of the child run `slot`'s current attempt is, once its id
/// is chosen.
pub(crate) fn start_of(
    state: &InstanceState,
    key: &TaskKey,
    slot: Option<&TaskSlot>,
) -> Option<ChildStart> {
    let slot = slot?;
    let spec = slot.child.as_ref()?;
    Some(ChildStart {
        child: spec.instance.clone()?,
        workflow: spec.workflow.clone(),
        input: slot.input.clone(),
        tenant: state.tenant.clone(),
        parent: ParentLink {
            instance: state.id.clone(),
            key: key.clone(),
            attempt: slot.attempt,
            depth: state.parent.as_ref().map_or(0, |p| p.depth) + 1,
        },
    })
}

/// Tells whoever does an attempt to stop: its agent, or its child run
/// (terminated).
pub(crate) fn stop(ctx: &mut Ctx, key: &TaskKey, attempt: u32, reason: &str) {
    // An operation sent to an entity is applied whatever happens to its
    // sender: there is no one to stop.
    if ctx.state.task_slot(key).is_some_and(|s| s.entity.is_some()) {
        return;
    }
    let child = ctx
        .state
        .task_slot(key)
        .and_then(|s| s.child.as_ref())
        .and_then(|c| c.instance.clone());
    ctx.commands.push(match child {
        Some(child) => Command::TerminateChild {
            child,
            reason: reason.to_owned(),
        },
        None => Command::CancelTask(TaskCancelled {
            key: key.clone(),
            attempt,
            reason: reason.to_owned(),
        }),
    });
}

/// A child run ended: its parent's attempt has the result. A run applying
/// an entity's custom operation ended: the entity has it.
pub(crate) fn report(ctx: &mut Ctx) {
    let Some(result) = result_of(&ctx.state) else {
        return;
    };
    if let Some(link) = ctx.state.serves.clone() {
        ctx.commands.push(Command::AnswerEntity {
            instance: ctx.state.id.clone(),
            link,
            result: result.clone(),
        });
    }
    if let Some(parent) = ctx.state.parent.clone() {
        ctx.commands
            .push(Command::ReportToParent { parent, result });
    }
}

/// What an ended instance's parent is told of it; `None` while it runs.
pub fn result_of(state: &InstanceState) -> Option<ChildResult> {
    let usage = (!state.usage.is_empty()).then(|| state.usage.clone());
    let (message, retryable) = match state.status {
        RuntimeStatus::Completed => {
            let output = state.output.clone().unwrap_or_default();
            return Some(ChildResult::Completed { output, usage });
        }
        // A failed child is worth another run under its step's retry
        // policy, like a retryable agent error.
        RuntimeStatus::Failed => (
            format!(
                "child workflow {} failed: {}",
                state.id,
                state.error.as_deref().unwrap_or("no reason given")
            ),
            true,
        ),
        // Someone meant it to stop: no retry runs it again.
        RuntimeStatus::Terminated => (
            format!(
                "child workflow {} was terminated: {}",
                state.id,
                state
                    .output
                    .as_ref()
                    .and_then(|o| o.as_str())
                    .unwrap_or("terminated")
            ),
            false,
        ),
        _ => return None,
    };
    Some(ChildResult::Failed {
        error: TaskError { message, retryable },
        usage,
    })
}
