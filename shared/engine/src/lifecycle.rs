//! Instance-level transitions: start, completion, failure with saga
//! compensation, external events, and the control operations (terminate,
//! suspend, resume, restart).

use std::sync::Arc;

use legato_contracts::{
    EventName, InstanceId, ParentLink, ProgressKind, RuntimeStatus, StepId, TaskKey, TaskRole,
};
use legato_workflow::Workflow;
use serde_json::{Value, json};

use crate::decide::{Ctx, Ignored, apply_running, ignore};
use crate::state::{CompensationState, PendingEvent, SlotStatus, StepState, StepStatus, TaskSlot};
use crate::{Command, Event, TimerKey, children, scheduler, tasks};

pub(crate) fn start(
    ctx: &mut Ctx,
    instance: &InstanceId,
    workflow: &Arc<Workflow>,
    input: &Value,
    tenant: Option<&String>,
    run: u64,
    parent: Option<&ParentLink>,
) -> Result<(), Ignored> {
    if instance != &ctx.state.id {
        return ignore(format!("start event is for instance {instance}"));
    }
    if ctx.state.status != RuntimeStatus::Pending || ctx.state.workflow.is_some() {
        return ignore("instance has already started");
    }
    ctx.state.definition_hash = workflow.content_hash();
    ctx.state.workflow = Some(workflow.clone());
    ctx.state.input = input.clone();
    ctx.state.tenant = tenant.cloned();
    ctx.state.run = run;
    ctx.state.parent = parent.cloned();
    ctx.state.created_at = Some(ctx.at);
    ctx.state.steps = pending_steps(workflow);
    ctx.state.status = RuntimeStatus::Running;
    ctx.state.run_position = ctx.state.position;
    ctx.progress(ProgressKind::InstanceStarted)
        .data(json!({ "workflow": workflow.name, "version": workflow.version }));
    scheduler::advance(ctx);
    Ok(())
}

/// Every step of `workflow`, loops' bodies too, not started.
fn pending_steps(workflow: &Workflow) -> std::collections::BTreeMap<StepId, Arc<StepState>> {
    workflow
        .all_steps()
        .into_iter()
        .map(|s| (s.id.clone(), Arc::new(StepState::pending())))
        .collect()
}

/// Every step is done: render the output and finish.
pub(crate) fn complete(ctx: &mut Ctx) {
    let Ok(workflow) = ctx.workflow() else { return };
    match workflow.render_output(&ctx.state.input, ctx.state.steps_scope()) {
        Ok(output) => {
            ctx.state.status = RuntimeStatus::Completed;
            ctx.state.output = Some(output.clone());
            ctx.commands.push(Command::CompleteInstance {
                output: output.clone(),
            });
            ctx.progress(ProgressKind::InstanceCompleted).data(output);
            children::report(ctx);
        }
        Err(e) => fail(ctx, format!("output: {e}")),
    }
}

/// Stops all work, then compensates completed steps in reverse completion
/// order before the instance is marked Failed.
pub(crate) fn fail(ctx: &mut Ctx, error: String) {
    cancel_all_work(ctx, &error);
    let Ok(workflow) = ctx.workflow() else { return };
    let remaining: Vec<_> = ctx
        .state
        .completed_latest_first()
        .into_iter()
        .filter(|id| {
            workflow
                .step(id.as_str())
                .is_some_and(|s| s.compensate.is_some())
        })
        .collect();
    ctx.state.compensation = Some(CompensationState {
        failure: error,
        current: None,
        remaining,
        errors: Vec::new(),
    });
    next_compensation(ctx);
}

/// Dispatches the next compensation, or finishes the failure when none is left.
pub(crate) fn next_compensation(ctx: &mut Ctx) {
    let Ok(workflow) = ctx.workflow() else { return };
    loop {
        let Some(comp) = ctx.state.compensation.as_mut() else {
            return;
        };
        if comp.remaining.is_empty() {
            comp.current = None;
            return finish_failed(ctx);
        }
        let id = comp.remaining.remove(0);
        comp.current = Some(id.clone());
        let Some(spec) = workflow
            .step(id.as_str())
            .and_then(|s| s.compensate.as_ref())
        else {
            continue;
        };
        match ctx
            .state
            .scope()
            .and_then(|scope| spec.input.render(&scope))
        {
            Ok(rendered) => {
                if let Some(step) = ctx.state.step_mut(&id) {
                    step.compensation = Some(TaskSlot::for_agent(spec.agent.clone(), rendered));
                }
                let key = ctx.state.task_key(id.clone(), None, TaskRole::Compensation);
                return tasks::dispatch(ctx, &key);
            }
            Err(e) => {
                if let Some(comp) = ctx.state.compensation.as_mut() {
                    comp.errors
                        .push(format!("compensation of {id}: input: {e}"));
                }
            }
        }
    }
}

fn finish_failed(ctx: &mut Ctx) {
    let Some(comp) = ctx.state.compensation.take() else {
        return;
    };
    let mut error = comp.failure;
    if !comp.errors.is_empty() {
        error = format!("{error}; rollback incomplete: {}", comp.errors.join("; "));
    }
    ctx.state.status = RuntimeStatus::Failed;
    ctx.state.error = Some(error.clone());
    ctx.commands.push(Command::FailInstance {
        error: error.clone(),
    });
    ctx.progress(ProgressKind::InstanceFailed).message(error);
    children::report(ctx);
}

/// Cancels in-flight tasks (telling their agents) and every pending timer.
fn cancel_all_work(ctx: &mut Ctx, reason: &str) {
    let ids: Vec<StepId> = ctx.state.steps.keys().cloned().collect();
    for id in &ids {
        if crate::locks::is_active_lock(ctx, id) {
            crate::locks::release(ctx, id);
        }
    }
    let cancels: Vec<_> = ids
        .iter()
        .flat_map(|id| stop_step(&mut ctx.state, id))
        .collect();
    tell_cancelled(ctx, cancels, reason);
    for timer in std::mem::take(&mut ctx.state.timers) {
        ctx.commands.push(Command::CancelTimer { timer });
    }
}

/// Stops one step's work (a race's loser): its running tasks cancelled
/// (their agents told), the others dropped, its timers cancelled, and the
/// step `Cancelled` if it was under way.
pub(crate) fn cancel_step(ctx: &mut Ctx, id: &StepId, reason: &str) {
    if crate::locks::is_active_lock(ctx, id) {
        crate::locks::release(ctx, id);
    }
    let cancels = stop_step(&mut ctx.state, id);
    tell_cancelled(ctx, cancels, reason);
    let timers: Vec<TimerKey> = ctx
        .state
        .timers
        .iter()
        .filter(|t| t.step() == id)
        .cloned()
        .collect();
    for timer in timers {
        ctx.cancel_timer(timer);
    }
}

fn tell_cancelled(ctx: &mut Ctx, cancels: Vec<(TaskKey, u32)>, reason: &str) {
    for (key, attempt) in cancels {
        children::stop(ctx, &key, attempt, reason);
    }
}

/// Marks a step's live work cancelled; the attempts that were running,
/// whose agents are to be told.
fn stop_step(state: &mut crate::InstanceState, id: &StepId) -> Vec<(TaskKey, u32)> {
    let (run, execution) = (state.run, state.execution);
    let iteration = state.iteration_of(id);
    let workflow = state.workflow.clone();
    let live = |slot: &TaskSlot| {
        matches!(
            slot.status,
            SlotStatus::Queued | SlotStatus::Running | SlotStatus::Backoff
        )
    };
    let active =
        |step: &StepState| matches!(step.status, StepStatus::Running | StepStatus::Waiting);
    let Some(step) = state.steps.get_mut(id) else {
        return Vec::new();
    };
    // Steps and items with nothing to stop stay shared with the state
    // before, so they are not written again.
    let stoppable = active(step)
        || step.tasks.iter().any(|s| live(s))
        || step.compensation.as_ref().is_some_and(live);
    if !stoppable {
        return Vec::new();
    }
    let step = Arc::make_mut(step);
    if active(step) {
        step.status = StepStatus::Cancelled;
    }
    let definition = workflow.as_ref().and_then(|wf| wf.step(id.as_str()));
    let slots = step
        .tasks
        .iter_mut()
        .enumerate()
        .filter(|(_, s)| live(s))
        .map(|(i, s)| {
            let item = definition.and_then(|d| tasks::item_of(d, i));
            (item, TaskRole::Action, Arc::make_mut(s))
        });
    let comp = step
        .compensation
        .iter_mut()
        .map(|s| (None, TaskRole::Compensation, s));
    let mut cancels = Vec::new();
    for (item, role, slot) in slots.chain(comp) {
        if slot.status == SlotStatus::Running {
            cancels.push((
                TaskKey {
                    run,
                    execution,
                    step: id.clone(),
                    item,
                    iteration,
                    role,
                },
                slot.attempt,
            ));
        }
        if live(slot) {
            slot.status = SlotStatus::Cancelled;
        }
    }
    cancels
}

pub(crate) fn event_raised(
    ctx: &mut Ctx,
    id: &str,
    name: &EventName,
    data: &Value,
) -> Result<(), Ignored> {
    first_delivery(ctx, id)?;
    // A task's question of that name takes the answer first.
    if crate::questions::answer(ctx, name, data) {
        return Ok(());
    }
    let waiting = ctx.state.waiting_for(name).cloned();
    match waiting {
        Some(step) => {
            let execution = ctx.state.execution;
            let iteration = ctx.state.iteration_of(&step);
            ctx.cancel_timer(crate::TimerKey::EventTimeout {
                execution,
                step: step.clone(),
                iteration,
            });
            ctx.progress(ProgressKind::EventReceived)
                .step(&step)
                .data(json!({ "event": name }));
            tasks::complete_step(ctx, &step, data.clone());
        }
        None => {
            // Durable Functions semantics: an event raised before anyone
            // waits is kept for the first step that waits for its name.
            ctx.state.pending_events.push(PendingEvent {
                id: id.to_owned(),
                name: name.clone(),
                data: data.clone(),
            });
            ctx.progress(ProgressKind::EventReceived)
                .data(json!({ "event": name, "buffered": true }));
        }
    }
    Ok(())
}

pub(crate) fn terminate(ctx: &mut Ctx, reason: Option<&str>) -> Result<(), Ignored> {
    let status = ctx.state.status;
    if status.is_terminal() {
        return ignore(format!("instance is already {status}"));
    }
    let reason = reason.unwrap_or("terminated");
    cancel_all_work(ctx, reason);
    // What waited for a resume is dropped; its external events stay
    // claimed (since they were buffered), so no redelivery brings them back.
    ctx.state.backlog.clear();
    ctx.state.compensation = None;
    ctx.state.status = RuntimeStatus::Terminated;
    ctx.state.output = Some(Value::String(reason.to_owned()));
    ctx.progress(ProgressKind::InstanceTerminated)
        .message(reason);
    children::report(ctx);
    Ok(())
}

pub(crate) fn suspend(ctx: &mut Ctx, reason: Option<&str>) -> Result<(), Ignored> {
    if ctx.state.status != RuntimeStatus::Running {
        return ignore(format!(
            "only a Running instance can be suspended (it is {})",
            ctx.state.status
        ));
    }
    ctx.state.status = RuntimeStatus::Suspended;
    ctx.progress(ProgressKind::InstanceSuspended)
        .message_opt(reason);
    Ok(())
}

/// While suspended nothing is dispatched; results, timers and events wait in
/// the backlog, each once, and are applied in arrival order on resume.
pub(crate) fn buffer_while_suspended(ctx: &mut Ctx, event: &Event) -> Result<(), Ignored> {
    let key = event.dedup_key();
    if ctx.state.backlog.iter().any(|e| e.dedup_key() == key) {
        return ignore("already waiting in the suspended instance's backlog");
    }
    // A late redelivery of something applied before the suspension must not
    // be kept either.
    let stale = match event {
        Event::TaskCompleted { key, attempt, .. }
        | Event::TaskFailed { key, attempt, .. }
        | Event::TaskAsked { key, attempt, .. } => {
            tasks::check_running(&ctx.state, key, *attempt).is_err()
        }
        Event::TimerFired { timer, .. } => !ctx.state.timers.contains(timer),
        _ => false,
    };
    if stale {
        return ignore("already applied before the instance was suspended");
    }
    if let Event::EventRaised { id, .. } = event {
        // Claimed now, not on resume, so a redelivery of an event accepted
        // before the suspension is refused as any other.
        first_delivery(ctx, id)?;
    }
    ctx.state.backlog.push(event.clone());
    Ok(())
}

pub(crate) fn resume(ctx: &mut Ctx, reason: Option<&str>) -> Result<(), Ignored> {
    if ctx.state.status != RuntimeStatus::Suspended {
        return ignore(format!(
            "only a Suspended instance can be resumed (it is {})",
            ctx.state.status
        ));
    }
    ctx.state.status = RuntimeStatus::Running;
    ctx.progress(ProgressKind::InstanceResumed)
        .message_opt(reason);
    let backlog = std::mem::take(&mut ctx.state.backlog);
    for event in &backlog {
        if let Event::EventRaised { id, .. } = event {
            ctx.claimed.insert(id.clone());
        }
    }
    let mut backlog = backlog.into_iter();
    for event in backlog.by_ref() {
        // A stale backlog entry is simply dropped, as it would have been
        // had it arrived while running.
        let _ignored = apply_running(ctx, &event);
        if ctx.state.status != RuntimeStatus::Running {
            break;
        }
    }
    if ctx.state.status == RuntimeStatus::Suspended {
        // Held again (a result took it past its budget): the rest waits.
        ctx.state.backlog.extend(backlog);
        return Ok(());
    }
    scheduler::advance(ctx);
    Ok(())
}

/// Control messages and external events count once per message id, however
/// late a redelivery: the decision claims the id (see
/// [`crate::Decision::claims`]). Ids accepted before claims existed are
/// still recognised from the state.
pub(crate) fn first_delivery(ctx: &mut Ctx, id: &str) -> Result<(), Ignored> {
    if ctx.state.seen_message_ids.contains(id) {
        return ignore(format!("message {id} was already applied"));
    }
    ctx.claim(id);
    Ok(())
}

/// Why an instance cannot be redriven, if it cannot: only a Failed or
/// Terminated one can, and not after its saga rolled back (the completed
/// steps' effects were undone; restart it instead).
pub fn redrive_refused(state: &crate::InstanceState) -> Option<String> {
    if !matches!(
        state.status,
        RuntimeStatus::Failed | RuntimeStatus::Terminated
    ) {
        return Some(format!(
            "instance is {}: only a Failed or Terminated instance can be redriven",
            state.status
        ));
    }
    let rolled_back = state
        .steps
        .values()
        .any(|s| s.compensation.as_ref().is_some_and(|c| c.attempt > 0));
    rolled_back.then(|| {
        "the instance rolled back (compensations ran): redriving would build on undone \
         steps; restart it instead"
            .to_owned()
    })
}

/// Why an instance cannot be moved onto `workflow` as it is redriven, if
/// it cannot: it must be a later version of the same definition, and every
/// step that completed or was skipped (or a `for_each` with completed
/// items) must be there under the same id and of the same kind, so what it
/// kept still means the same.
pub fn redrive_onto_refused(
    state: &crate::InstanceState,
    workflow: &legato_workflow::Workflow,
) -> Option<String> {
    let current = state.workflow.as_ref()?;
    if workflow.name != current.name {
        return Some(format!(
            "version {} is of workflow {}, not {}",
            workflow.version, workflow.name, current.name
        ));
    }
    if workflow.version < current.version {
        return Some(format!(
            "version {} is older than the instance's version {}",
            workflow.version, current.version
        ));
    }
    let kind = |action: &legato_workflow::Action| std::mem::discriminant(action);
    for step in current.all_steps() {
        let Some(s) = state.steps.get(&step.id) else {
            continue;
        };
        let kept = s.status.is_done() || s.tasks.iter().any(|t| t.status == SlotStatus::Completed);
        if !kept {
            continue;
        }
        match workflow.step(step.id.as_str()) {
            None => {
                return Some(format!(
                    "step {} completed, and version {} has no step {}",
                    step.id, workflow.version, step.id
                ));
            }
            Some(new) if kind(&new.action) != kind(&step.action) => {
                return Some(format!(
                    "step {} completed as one kind of step, and is another in version {}",
                    step.id, workflow.version
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Resumes a Failed or Terminated instance as a new execution that keeps
/// what completed: completed and skipped steps keep their outputs, a
/// `for_each` keeps its completed items and runs only the others, a loop
/// goes on in the iteration it stopped in, and every other step starts
/// again with a fresh retry budget. `onto` moves it to a
/// later version of its definition first: steps new there start pending,
/// and steps gone from it (none of which completed) are dropped.
pub(crate) fn redrive(ctx: &mut Ctx, onto: Option<&Arc<Workflow>>) -> Result<(), Ignored> {
    if let Some(reason) = redrive_refused(&ctx.state) {
        return ignore(reason);
    }
    if let Some(workflow) = onto {
        if let Some(reason) = redrive_onto_refused(&ctx.state, workflow) {
            return ignore(reason);
        }
        let state = &mut ctx.state;
        state
            .steps
            .retain(|id, _| workflow.step(id.as_str()).is_some());
        for step in workflow.all_steps() {
            state
                .steps
                .entry(step.id.clone())
                .or_insert_with(|| Arc::new(StepState::pending()));
        }
        state.workflow = Some(workflow.clone());
    }
    let workflow = ctx.workflow()?;
    let state = &mut ctx.state;
    state.execution += 1;
    let mut partial = Vec::new();
    for step in workflow.all_steps() {
        // Done steps stay shared with the state before (not written again).
        if state.steps.get(&step.id).is_none_or(|s| s.status.is_done()) {
            continue;
        }
        let Some(s) = state.step_mut(&step.id) else {
            continue;
        };
        s.error = None;
        s.completed_at = None;
        s.compensation = None;
        let kept = s.tasks.iter().any(|t| t.status == SlotStatus::Completed);
        if matches!(step.action, legato_workflow::Action::ForEach { .. }) && kept {
            for slot in s
                .tasks
                .iter_mut()
                .filter(|t| t.status != SlotStatus::Completed)
            {
                *slot = Arc::new(slot.again());
            }
            s.status = StepStatus::Running;
            partial.push(step.clone());
        } else if step.body().is_some() && s.iteration > 0 {
            // A loop goes on from the iteration it stopped in: its body's
            // steps that did not complete start again.
            s.status = StepStatus::Running;
        } else {
            *s = StepState::pending_in(s.iteration);
        }
    }
    state.compensation = None;
    state.output = None;
    state.error = None;
    state.status = RuntimeStatus::Running;
    state.run_position = state.position;
    let execution = state.execution;
    let version = workflow.version;
    ctx.progress(ProgressKind::InstanceRedriven)
        .data(json!({ "execution": execution, "version": version }));
    for step in &partial {
        scheduler::dispatch_queued(ctx, step);
    }
    scheduler::advance(ctx);
    Ok(())
}

pub(crate) fn restart(ctx: &mut Ctx, input: Option<&Value>) -> Result<(), Ignored> {
    if ctx.state.status == RuntimeStatus::Pending {
        return ignore("instance has not started");
    }
    let workflow = ctx.workflow()?;
    cancel_all_work(ctx, "instance restarted");
    let state = &mut ctx.state;
    state.execution += 1;
    if let Some(input) = input {
        state.input = input.clone();
    }
    state.steps = pending_steps(&workflow);
    state.completion_order.clear();
    state.pending_events.clear();
    // As on termination: dropped, and its external events stay claimed.
    state.backlog.clear();
    state.compensation = None;
    state.output = None;
    state.error = None;
    state.custom_status = None;
    state.status = RuntimeStatus::Running;
    state.run_position = state.position;
    let execution = state.execution;
    ctx.progress(ProgressKind::InstanceRestarted)
        .data(json!({ "execution": execution }));
    scheduler::advance(ctx);
    Ok(())
}
