//! Starting steps: which are ready, and what starting each kind means.

use legato_contracts::{ProgressKind, RuntimeStatus, StepId, TaskRole};
use legato_workflow::{Action, Step, Work, Workflow};
use serde_json::{Value, json};

use crate::decide::Ctx;
use crate::state::{InstanceState, SlotStatus, StepStatus, TaskSlot};
use crate::{TimerKey, iterations, lifecycle, races, tasks};

/// Starts every step whose needs are done, repeatedly (a skipped step can
/// make others ready at once), drives the loops and races that run, then
/// completes
/// the instance if all are done. Idempotent, so every handler can simply
/// call it.
pub(crate) fn advance(ctx: &mut Ctx) {
    let Ok(workflow) = ctx.workflow() else { return };
    if drive(ctx, &workflow, Block::Top) && going(ctx) {
        lifecycle::complete(ctx);
    }
}

/// Whether every top-level step is done: the run has nothing left to do.
pub(crate) fn all_done(ctx: &Ctx) -> bool {
    let Ok(workflow) = ctx.workflow() else {
        return false;
    };
    statuses(&ctx.state, &workflow).iter().all(|s| s.is_done())
}

/// Whether steps may still be started.
fn going(ctx: &Ctx) -> bool {
    ctx.state.status == RuntimeStatus::Running && ctx.state.compensation.is_none()
}

/// The steps one [`drive`] works on.
#[derive(Clone, Copy)]
enum Block<'w> {
    /// The definition's own steps.
    Top,
    /// A loop's body (for the loop's current iteration) or a race's
    /// branches.
    Body(&'w [Step]),
}

/// Takes a block as far as it goes now; whether all its steps are done.
fn drive(ctx: &mut Ctx, workflow: &Workflow, block: Block<'_>) -> bool {
    let steps = match block {
        Block::Top => &workflow.steps[..],
        Block::Body(steps) => steps,
    };
    loop {
        if !going(ctx) {
            return false;
        }
        // Read once per pass: when nothing is ready, the same statuses
        // say which loops and races to drive and whether everything is
        // done.
        let statuses = match block {
            Block::Top => statuses(&ctx.state, workflow),
            Block::Body(steps) => steps
                .iter()
                .map(|s| {
                    ctx.state
                        .steps
                        .get(&s.id)
                        .map_or(StepStatus::Pending, |s| s.status)
                })
                .collect(),
        };
        let done = |position: &usize| statuses.get(*position).is_some_and(|s| s.is_done());
        let ready = match block {
            Block::Top => next_ready(steps, &statuses, |position| {
                workflow.needs_at(position).iter().all(done)
            }),
            Block::Body(steps) => next_ready(steps, &statuses, |position| {
                sibling_needs(steps, position).all(|p| done(&p))
            }),
        };
        if let Some(step) = ready {
            start_step(ctx, step);
            continue;
        }
        let mut changed = false;
        for (step, status) in steps.iter().zip(&statuses) {
            if *status != StepStatus::Running {
                continue;
            }
            match &step.action {
                Action::Loop { .. } => changed |= drive_loop(ctx, workflow, step),
                Action::Race { race } => {
                    drive(ctx, workflow, Block::Body(&race.steps));
                    changed |= going(ctx) && races::settle(ctx, step, race);
                }
                // Its body runs once every entity is held; when the body is
                // done, the lock step completes and lets go.
                Action::Lock { lock }
                    if crate::locks::holds_all(&ctx.state, &step.id)
                        && drive(ctx, workflow, Block::Body(&lock.steps))
                        && going(ctx) =>
                {
                    crate::locks::end(ctx, step, lock);
                    changed = true;
                }
                _ => {}
            }
        }
        if !changed {
            return statuses.iter().all(|status| status.is_done());
        }
    }
}

/// Each top-level step's status, by position in the definition.
fn statuses(state: &InstanceState, workflow: &Workflow) -> Vec<StepStatus> {
    let mut statuses: Vec<StepStatus> = state
        .steps_by_position(workflow)
        .into_iter()
        .map(|s| s.map_or(StepStatus::Pending, |s| s.status))
        .collect();
    statuses.truncate(workflow.steps.len());
    statuses
}

/// The positions in a loop's body of the steps the one at `position`
/// needs (validation keeps a body's `needs` inside it).
fn sibling_needs(steps: &[Step], position: usize) -> impl Iterator<Item = usize> + '_ {
    let needs = steps.get(position).map_or(&[][..], |s| &s.needs[..]);
    needs
        .iter()
        .filter_map(|need| steps.iter().position(|s| &s.id == need))
}

/// The first step, in definition order, that is pending and whose needs
/// are done.
fn next_ready<'w>(
    steps: &'w [Step],
    statuses: &[StepStatus],
    needs_done: impl Fn(usize) -> bool,
) -> Option<&'w Step> {
    steps
        .iter()
        .zip(statuses)
        .enumerate()
        .find(|(position, (_, status))| **status == StepStatus::Pending && needs_done(*position))
        .map(|(_, (step, _))| step)
}

/// Takes a running loop as far as it goes now: its body, and each
/// iteration that ends, the next. Whether the loop step itself finished.
fn drive_loop(ctx: &mut Ctx, workflow: &Workflow, step: &Step) -> bool {
    let Action::Loop { repeat } = &step.action else {
        return false;
    };
    // Each pass ends an iteration or returns; the iterations are bounded.
    for _ in 0..=repeat.max_iterations {
        if !drive(ctx, workflow, Block::Body(&repeat.steps)) {
            return false;
        }
        if iterations::end(ctx, step, repeat) == iterations::Ended::Loop {
            return true;
        }
    }
    false
}

fn start_step(ctx: &mut Ctx, step: &Step) {
    let scope = match ctx.state.scope_for(step) {
        Ok(scope) => scope,
        Err(e) => return tasks::step_failed(ctx, &step.id, e.to_string()),
    };
    if let Some(condition) = &step.condition {
        match condition.evaluate_bool(&scope) {
            Ok(true) => {}
            Ok(false) => {
                set_status(ctx, &step.id, StepStatus::Skipped);
                // A skipped loop's or race's steps are skipped with it,
                // not left pending.
                for inner in step.body().into_iter().flatten() {
                    set_status(ctx, &inner.id, StepStatus::Skipped);
                }
                ctx.progress(ProgressKind::StepSkipped).step(&step.id);
                return;
            }
            Err(e) => return tasks::step_failed(ctx, &step.id, format!("if: {e}")),
        }
    }
    let at = ctx.at;
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.started_at = Some(at);
    }
    match &step.action {
        Action::Agent { agent, input } => {
            let slot = agent
                .resolve(&scope)
                .and_then(|agent| Ok(TaskSlot::for_agent(agent, input.render(&scope)?)));
            match slot {
                Ok(slot) => start_tasks(ctx, step, vec![slot]),
                Err(e) => tasks::step_failed(ctx, &step.id, e.to_string()),
            }
        }
        Action::Workflow { workflow, input } => match input.render(&scope) {
            Ok(input) => start_tasks(
                ctx,
                step,
                vec![TaskSlot::for_child(workflow.clone(), input)],
            ),
            Err(e) => tasks::step_failed(ctx, &step.id, e.to_string()),
        },
        Action::ForEach {
            for_each,
            work,
            input,
            ..
        } => {
            let slots = for_each.evaluate_list(&scope).and_then(|items| {
                items
                    .iter()
                    .map(|item| {
                        let scope = scope.with_item(item)?;
                        let input = input.render(&scope)?;
                        Ok(match work {
                            Work::Agent(agent) => {
                                TaskSlot::for_agent(agent.resolve(&scope)?, input)
                            }
                            Work::Workflow(workflow) => {
                                TaskSlot::for_child(workflow.clone(), input)
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            });
            match slots {
                Ok(slots) if slots.is_empty() => {
                    tasks::complete_step(ctx, &step.id, Value::Array(Vec::new()))
                }
                Ok(slots) => start_tasks(ctx, step, slots),
                Err(e) => tasks::step_failed(ctx, &step.id, e.to_string()),
            }
        }
        Action::Entity { entity } => match crate::entity_steps::slot(entity, &scope) {
            Ok(slot) => start_tasks(ctx, step, vec![slot]),
            Err(e) => tasks::step_failed(ctx, &step.id, e),
        },
        Action::Lock { lock } => crate::locks::start(ctx, step, lock, &scope),
        Action::Loop { repeat } => iterations::start(ctx, step, repeat),
        Action::Race { race } => races::start(ctx, step, race),
        Action::WaitForEvent { wait_for_event } => {
            set_status(ctx, &step.id, StepStatus::Waiting);
            ctx.progress(ProgressKind::WaitingForEvent)
                .step(&step.id)
                .data(json!({ "event": wait_for_event.name, "timeout_ms": wait_for_event.timeout_ms }));
            let buffered = ctx
                .state
                .pending_events
                .iter()
                .position(|e| e.name == wait_for_event.name);
            if let Some(index) = buffered {
                let event = ctx.state.pending_events.remove(index);
                tasks::complete_step(ctx, &step.id, event.data);
            } else if let Some(timeout) = wait_for_event.timeout_ms {
                let timer = TimerKey::EventTimeout {
                    execution: ctx.state.execution,
                    step: step.id.clone(),
                    iteration: ctx.state.iteration_of(&step.id),
                };
                ctx.schedule(timer, ctx.at_plus(timeout));
            }
        }
        Action::Timer { timer } => {
            set_status(ctx, &step.id, StepStatus::Running);
            let key = TimerKey::Delay {
                execution: ctx.state.execution,
                step: step.id.clone(),
                iteration: ctx.state.iteration_of(&step.id),
            };
            ctx.schedule(key, ctx.at_plus(timer.delay_ms));
        }
    }
}

fn set_status(ctx: &mut Ctx, id: &StepId, status: StepStatus) {
    if let Some(s) = ctx.state.step_mut(id) {
        s.status = status;
    }
}

pub(crate) fn start_tasks(ctx: &mut Ctx, step: &Step, slots: Vec<TaskSlot>) {
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.status = StepStatus::Running;
        s.tasks = slots.into_iter().map(std::sync::Arc::new).collect();
    }
    dispatch_queued(ctx, step);
}

/// Dispatches queued items while fewer than `max_parallel` are in flight. A
/// task waiting out its retry backoff still holds its place.
pub(crate) fn dispatch_queued(ctx: &mut Ctx, step: &Step) {
    let limit = match &step.action {
        Action::ForEach { max_parallel, .. } => max_parallel.map_or(usize::MAX, |m| m as usize),
        _ => 1,
    };
    loop {
        // A suspended instance (held for its budget while a result is
        // applied) starts nothing.
        if ctx.state.status != RuntimeStatus::Running {
            return;
        }
        let Some(state) = ctx.state.steps.get(&step.id) else {
            return;
        };
        let in_flight = state
            .tasks
            .iter()
            .filter(|t| matches!(t.status, SlotStatus::Running | SlotStatus::Backoff))
            .count();
        if in_flight >= limit {
            return;
        }
        let Some(next) = state
            .tasks
            .iter()
            .position(|t| t.status == SlotStatus::Queued)
        else {
            return;
        };
        let key = ctx.state.task_key(
            step.id.clone(),
            tasks::item_of(step, next),
            TaskRole::Action,
        );
        tasks::dispatch(ctx, &key);
    }
}
