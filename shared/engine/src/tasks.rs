//! Agent task attempts: dispatch, results, retries, timeouts and timers.

use legato_contracts::{ProgressKind, StepId, TaskDispatched, TaskError, TaskKey, TaskRole};
use legato_workflow::{Action, Step};
use serde_json::{Value, json};

use crate::InstanceState;
use crate::decide::{Ctx, Ignored, ignore};
use crate::event::AgentNews;
use crate::state::{SlotStatus, StepStatus, TaskSlot};
use crate::{Command, TimerKey, children, lifecycle, scheduler};

fn slot<'a>(state: &'a InstanceState, key: &TaskKey) -> Option<&'a TaskSlot> {
    state.task_slot(key)
}

pub(crate) fn slot_of<'a>(state: &'a InstanceState, key: &TaskKey) -> Option<&'a TaskSlot> {
    slot(state, key)
}

pub(crate) fn slot_mut<'a>(ctx: &'a mut Ctx, key: &TaskKey) -> Option<&'a mut TaskSlot> {
    let step = ctx.state.step_mut(&key.step)?;
    match key.role {
        TaskRole::Action => step
            .tasks
            .get_mut(key.item.unwrap_or(0) as usize)
            .map(std::sync::Arc::make_mut),
        TaskRole::Compensation => step.compensation.as_mut(),
    }
}

/// The `item` of a step's `index`-th action task: only `for_each` tasks
/// carry their item index in the task key.
pub(crate) fn item_of(step: &Step, index: usize) -> Option<u32> {
    matches!(step.action, Action::ForEach { .. } | Action::Lock { .. })
        .then(|| u32::try_from(index).unwrap_or(u32::MAX))
}

/// The heartbeat lease of a task's step: only action tasks have one.
fn step_lease(ctx: &Ctx, key: &TaskKey) -> Option<u64> {
    if key.role != TaskRole::Action {
        return None;
    }
    ctx.workflow()
        .ok()?
        .step(key.step.as_str())?
        .heartbeat_timeout_ms
}

/// The lease the current attempt runs under: its step's, or the one the
/// worker that took it asked for.
fn lease_of(ctx: &Ctx, key: &TaskKey) -> Option<u64> {
    step_lease(ctx, key).or_else(|| slot(&ctx.state, key).and_then(|s| s.lease_ms))
}

/// Sends the next attempt of a queued or backing-off task: to its agent,
/// or as a fresh child run, under its step's `timeout_ms`.
pub(crate) fn dispatch(ctx: &mut Ctx, key: &TaskKey) {
    let Ok(workflow) = ctx.workflow() else { return };
    let timeout_ms = workflow.step(key.step.as_str()).and_then(|s| s.timeout_ms);
    let deadline = timeout_ms.map(|ms| ctx.at_plus(ms));
    let lease = step_lease(ctx, key);
    let at = ctx.at;
    let Some(slot) = slot_mut(ctx, key) else {
        return;
    };
    slot.attempt += 1;
    slot.status = SlotStatus::Running;
    slot.heartbeat_at = lease.map(|_| at);
    slot.lease_checks = u32::from(lease.is_some());
    slot.lease_ms = None;
    slot.news.clear();
    let attempt = slot.attempt;
    if slot.entity.is_some() {
        return crate::entity_steps::send(ctx, key, attempt, deadline);
    }
    let Some(agent) = slot.agent.clone() else {
        return children::start(ctx, key, attempt, deadline);
    };
    let task = TaskDispatched {
        key: key.clone(),
        attempt,
        agent,
        workflow: workflow.name.clone(),
        input: slot.input.clone(),
        deadline,
        heartbeat_timeout_ms: lease,
        resent: false,
        answers: slot.answers.clone(),
    };
    let agent = task.agent.to_string();
    ctx.commands.push(Command::DispatchTask(task));
    if let Some(lease) = lease {
        let check = TimerKey::HeartbeatLease {
            key: key.clone(),
            attempt,
            check: 1,
        };
        ctx.schedule(check, ctx.at_plus(lease));
    }
    watch_deadline(ctx, key, attempt, deadline);
    let kind = match key.role {
        TaskRole::Action => ProgressKind::StepStarted,
        TaskRole::Compensation => ProgressKind::Compensating,
    };
    ctx.progress(kind)
        .step(&key.step)
        .item(key.item)
        .attempt(attempt)
        .data(json!({ "agent": agent }));
}

/// Schedules the timeout of an attempt that has one.
pub(crate) fn watch_deadline(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    deadline: Option<time::OffsetDateTime>,
) {
    if let Some(deadline) = deadline {
        ctx.schedule(
            TimerKey::AttemptTimeout {
                key: key.clone(),
                attempt,
            },
            deadline,
        );
    }
}

/// Accepts a result only for the task's current running attempt.
pub(crate) fn check_running(
    state: &InstanceState,
    key: &TaskKey,
    attempt: u32,
) -> Result<(), Ignored> {
    if !state.is_current(key) {
        return ignore(format!(
            "task {key} belongs to an earlier run or execution of this id"
        ));
    }
    match slot(state, key) {
        Some(slot) if slot.status == SlotStatus::Running && slot.attempt == attempt => Ok(()),
        Some(slot) => ignore(format!(
            "task {key} attempt {attempt} is not running (attempt {} is {:?})",
            slot.attempt, slot.status
        )),
        None => ignore(format!("unknown task {key}")),
    }
}

/// The slot for a result, if the result is for its current running attempt.
fn running_slot<'a>(
    ctx: &'a mut Ctx,
    key: &TaskKey,
    attempt: u32,
) -> Result<&'a mut TaskSlot, Ignored> {
    check_running(&ctx.state, key, attempt)?;
    match slot_mut(ctx, key) {
        Some(slot) => Ok(slot),
        None => ignore(format!("unknown task {key}")),
    }
}

pub(crate) fn completed(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    output: &Value,
    custom_status: Option<&Value>,
) -> Result<(), Ignored> {
    let slot = running_slot(ctx, key, attempt)?;
    slot.status = SlotStatus::Completed;
    slot.output = Some(output.clone());
    slot.error = None;
    ctx.cancel_timer(TimerKey::AttemptTimeout {
        key: key.clone(),
        attempt,
    });
    cancel_lease(ctx, key, attempt);
    if let Some(status) = custom_status {
        ctx.state.custom_status = Some(status.clone());
        ctx.progress(ProgressKind::CustomStatus)
            .step(&key.step)
            .data(status.clone());
    }
    match key.role {
        TaskRole::Compensation => lifecycle::next_compensation(ctx),
        TaskRole::Action => after_action_completed(ctx, key),
    }
    Ok(())
}

fn after_action_completed(ctx: &mut Ctx, key: &TaskKey) {
    let Some(step_state) = ctx.state.steps.get(&key.step) else {
        return;
    };
    if step_state
        .tasks
        .iter()
        .all(|t| t.status == SlotStatus::Completed)
    {
        if let Ok(workflow) = ctx.workflow()
            && let Some(step) = workflow.step(key.step.as_str())
            && let Action::Lock { lock } = &step.action
        {
            // Every entity is held: the critical section begins.
            return crate::locks::acquired(ctx, step, lock);
        }
        let outputs = step_state
            .tasks
            .iter()
            .map(|t| t.output.clone().unwrap_or(Value::Null));
        let output = match key.item {
            Some(_) => Value::Array(outputs.collect()),
            None => outputs.into_iter().next().unwrap_or(Value::Null),
        };
        complete_step(ctx, &key.step, output);
    } else if let Ok(workflow) = ctx.workflow()
        && let Some(step) = workflow.step(key.step.as_str())
    {
        scheduler::dispatch_queued(ctx, step);
    }
}

/// Ends the running attempt `attempt` without a result: its timeout and
/// lease are no longer watched.
pub(crate) fn end_attempt(ctx: &mut Ctx, key: &TaskKey, attempt: u32) -> Result<(), Ignored> {
    running_slot(ctx, key, attempt)?;
    ctx.cancel_timer(TimerKey::AttemptTimeout {
        key: key.clone(),
        attempt,
    });
    cancel_lease(ctx, key, attempt);
    Ok(())
}

pub(crate) fn failed(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    error: &TaskError,
) -> Result<(), Ignored> {
    running_slot(ctx, key, attempt)?;
    ctx.cancel_timer(TimerKey::AttemptTimeout {
        key: key.clone(),
        attempt,
    });
    fail_attempt(ctx, key, attempt, error);
    Ok(())
}

/// Stops watching an attempt's heartbeats: it ended.
fn cancel_lease(ctx: &mut Ctx, key: &TaskKey, attempt: u32) {
    let check = slot(&ctx.state, key).map_or(0, |s| s.lease_checks);
    if check > 0 {
        ctx.cancel_timer(TimerKey::HeartbeatLease {
            key: key.clone(),
            attempt,
            check,
        });
    }
}

/// An agent's heartbeat: the running attempt's lease runs from `at`, and
/// its news goes to the watchers. News of the current attempt counts even
/// after its result was applied: the two travel separately and may be taken
/// in either order, and an approval request must not be lost to that race.
/// A heartbeat with `lease_ms` (a worker took the attempt) gives an attempt
/// without a lease one.
pub(crate) fn heartbeat(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    at: time::OffsetDateTime,
    news: Option<&AgentNews>,
    lease_ms: Option<u64>,
) -> Result<(), Ignored> {
    let running = check_running(&ctx.state, key, attempt).is_ok();
    let taken = running && take_lease(ctx, key, attempt, lease_ms);
    let leased = running && lease_of(ctx, key).is_some();
    let renewed = taken || (leased && due_for_renewal(ctx, key, at));
    if renewed && let Some(slot) = slot_mut(ctx, key) {
        slot.heartbeat_at = Some(at);
    }
    let news = news.filter(|news| {
        ctx.state.is_current(key)
            && slot(&ctx.state, key)
                .is_some_and(|s| s.attempt == attempt && !s.news.contains(&news.id))
    });
    let Some(news) = news else {
        if renewed {
            return Ok(());
        }
        if leased {
            return ignore(format!(
                "heartbeat of task {key} attempt {attempt} comes within a quarter of its lease of the last one recorded, and carries no news"
            ));
        }
        return ignore(format!(
            "heartbeat of task {key} attempt {attempt} renews no lease and carries no news not yet told"
        ));
    };
    if let Some(slot) = slot_mut(ctx, key) {
        if slot.news.len() == TaskSlot::NEWS_REMEMBERED {
            slot.news.remove(0);
        }
        slot.news.push(news.id.clone());
    }
    let mut progress = ctx
        .progress(news.kind.into())
        .step(&key.step)
        .item(key.item)
        .attempt(attempt)
        .message_opt(news.message.as_deref());
    if let Some(data) = &news.data {
        progress = progress.data(data.clone());
    }
    drop(progress);
    Ok(())
}

/// Whether a heartbeat at `at` is worth recording: a quarter of the lease
/// or more since the last one recorded. Closer ones are folded into it,
/// so an agent that beats ten times a second costs a commit per quarter
/// lease, and the lease still never runs out while it beats: recorded
/// beats are at most a quarter lease plus its beat interval apart.
fn due_for_renewal(ctx: &Ctx, key: &TaskKey, at: time::OffsetDateTime) -> bool {
    let (Some(lease), Some(slot)) = (lease_of(ctx, key), slot(&ctx.state, key)) else {
        return false;
    };
    let quarter = time::Duration::milliseconds(i64::try_from(lease / 4).unwrap_or(i64::MAX));
    slot.heartbeat_at.is_none_or(|last| at - last >= quarter)
}

/// Gives a running attempt without a lease the one its worker took it
/// with, watched from now on. False when there is nothing to take: no
/// lease asked for, or the attempt has one already (its step's, or an
/// earlier claim's: a second worker taking a redelivered copy renews it).
fn take_lease(ctx: &mut Ctx, key: &TaskKey, attempt: u32, lease_ms: Option<u64>) -> bool {
    let Some(lease) = lease_ms.filter(|ms| *ms > 0) else {
        return false;
    };
    if lease_of(ctx, key).is_some() {
        return false;
    }
    let at = ctx.at;
    let Some(slot) = slot_mut(ctx, key) else {
        return false;
    };
    slot.lease_ms = Some(lease);
    slot.heartbeat_at = Some(at);
    slot.lease_checks += 1;
    let check = TimerKey::HeartbeatLease {
        key: key.clone(),
        attempt,
        check: slot.lease_checks,
    };
    ctx.schedule(check, ctx.at_plus(lease));
    true
}

/// A lease check: an attempt silent for its whole lease is hung; it is
/// failed as retryable and its agent told to stop. One that heartbeated
/// is checked again when its lease would run out.
fn check_lease(ctx: &mut Ctx, key: &TaskKey, attempt: u32, check: u32) {
    if check_running(&ctx.state, key, attempt).is_err() {
        return;
    }
    let (Some(lease), Some(slot)) = (lease_of(ctx, key), slot(&ctx.state, key)) else {
        return;
    };
    if slot.lease_checks != check {
        return;
    }
    let last = slot.heartbeat_at.unwrap_or(ctx.at);
    let expires = last + time::Duration::milliseconds(i64::try_from(lease).unwrap_or(i64::MAX));
    if ctx.at < expires {
        if let Some(slot) = slot_mut(ctx, key) {
            slot.lease_checks += 1;
        }
        let next = TimerKey::HeartbeatLease {
            key: key.clone(),
            attempt,
            check: check + 1,
        };
        ctx.schedule(next, expires);
        return;
    }
    let message = format!("no heartbeat for {lease} ms: the agent is presumed hung");
    ctx.cancel_timer(TimerKey::AttemptTimeout {
        key: key.clone(),
        attempt,
    });
    children::stop(ctx, key, attempt, &message);
    fail_attempt(
        ctx,
        key,
        attempt,
        &TaskError {
            message,
            retryable: true,
        },
    );
}

/// A failed attempt: back off and retry under the step's policy, or give up.
pub(crate) fn fail_attempt(ctx: &mut Ctx, key: &TaskKey, attempt: u32, error: &TaskError) {
    cancel_lease(ctx, key, attempt);
    let policy = ctx
        .workflow()
        .ok()
        .and_then(|wf| wf.step(key.step.as_str()).map(|s| s.retry_policy()));
    // Attempts that ended by asking a person are not failures.
    let asks = slot(&ctx.state, key).map_or(0, |s| s.asks);
    let delay = policy
        .filter(|_| error.retryable)
        .and_then(|p| p.delay_after(attempt.saturating_sub(asks).max(1)));
    let retrying = delay.is_some();
    if let Some(slot) = slot_mut(ctx, key) {
        slot.status = if retrying {
            SlotStatus::Backoff
        } else {
            SlotStatus::Failed
        };
        slot.error = Some(error.message.clone());
    }
    if let Some(delay) = delay {
        ctx.schedule(
            TimerKey::Retry {
                key: key.clone(),
                attempt,
            },
            ctx.at_plus(delay),
        );
        ctx.progress(ProgressKind::StepRetrying)
            .step(&key.step)
            .item(key.item)
            .attempt(attempt)
            .message(error.message.clone())
            .data(json!({ "retry_in_ms": delay }));
        return;
    }
    let attempts = if attempt == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{attempt} attempts")
    };
    let message = format!("{} (after {attempts})", error.message);
    match key.role {
        TaskRole::Compensation => {
            if let Some(c) = ctx.state.compensation.as_mut() {
                c.errors
                    .push(format!("compensation of {}: {message}", key.step));
            }
            lifecycle::next_compensation(ctx);
        }
        TaskRole::Action => {
            let item = key.item.map(|i| format!(" item {i}")).unwrap_or_default();
            step_failed(ctx, &key.step, format!("task{item} failed: {message}"));
        }
    }
}

pub(crate) fn timer_fired(ctx: &mut Ctx, timer: &TimerKey) -> Result<(), Ignored> {
    if !ctx.state.timers.remove(timer) {
        return ignore(format!("timer {timer} is not pending"));
    }
    let workflow = ctx.workflow()?;
    match timer {
        TimerKey::AskTimeout { key, attempt } => crate::questions::timed_out(ctx, key, *attempt),
        TimerKey::Retry { key, attempt } => {
            let backing_off = slot(&ctx.state, key)
                .is_some_and(|s| s.status == SlotStatus::Backoff && s.attempt == *attempt);
            if backing_off {
                dispatch(ctx, key);
            }
        }
        TimerKey::AttemptTimeout { key, attempt } => {
            if check_running(&ctx.state, key, *attempt).is_ok() {
                let timeout = workflow
                    .step(key.step.as_str())
                    .and_then(|s| s.timeout_ms)
                    .unwrap_or_default();
                let message = format!("attempt timed out after {timeout} ms");
                children::stop(ctx, key, *attempt, &message);
                fail_attempt(
                    ctx,
                    key,
                    *attempt,
                    &TaskError {
                        message,
                        retryable: true,
                    },
                );
            }
        }
        TimerKey::HeartbeatLease {
            key,
            attempt,
            check,
        } => check_lease(ctx, key, *attempt, *check),
        TimerKey::EventTimeout { step, .. } => {
            let waiting = ctx
                .state
                .steps
                .get(step)
                .is_some_and(|s| s.status == StepStatus::Waiting);
            if let (true, Some(Action::WaitForEvent { wait_for_event })) =
                (waiting, workflow.step(step.as_str()).map(|s| &s.action))
            {
                match &wait_for_event.on_timeout {
                    Some(on_timeout) => {
                        match ctx
                            .state
                            .scope()
                            .and_then(|scope| ctx.state.in_loop_of(step, scope))
                            .and_then(|scope| on_timeout.output.render(&scope))
                        {
                            Ok(output) => complete_step(ctx, step, output),
                            Err(e) => step_failed(ctx, step, format!("on_timeout.output: {e}")),
                        }
                    }
                    None => step_failed(
                        ctx,
                        step,
                        format!(
                            "timed out waiting for event {:?}",
                            wait_for_event.name.as_str()
                        ),
                    ),
                }
            }
        }
        TimerKey::Delay { step, .. } => {
            if ctx
                .state
                .steps
                .get(step)
                .is_some_and(|s| s.status == StepStatus::Running)
            {
                complete_step(ctx, step, Value::Null);
            }
        }
    }
    Ok(())
}

pub(crate) fn complete_step(ctx: &mut Ctx, id: &StepId, output: Value) {
    let at = ctx.at;
    ctx.state.completions += 1;
    let nth = ctx.state.completions;
    if let Some(s) = ctx.state.step_mut(id) {
        s.status = StepStatus::Completed;
        s.output = Some(output.clone());
        s.completed_at = Some(at);
        s.completed_nth = Some(nth);
    }
    ctx.progress(ProgressKind::StepCompleted)
        .step(id)
        .data(output);
}

/// A step failed for good: the loops around it fail with it, saying in
/// which iteration, and the instance fails (and compensates); a race's
/// branch is only out of its race.
pub(crate) fn step_failed(ctx: &mut Ctx, id: &StepId, error: String) {
    mark_failed(ctx, id, &error);
    let (mut failed, mut error) = (id.clone(), error);
    let workflow = ctx.workflow().ok();
    while let Some(block) = workflow.as_ref().and_then(|w| w.enclosing(failed.as_str())) {
        if matches!(block.action, Action::Race { .. }) {
            // A branch out of the race: the race goes on while another
            // may win it (see `races::settle`).
            return;
        }
        let iteration = ctx.state.iteration_of(&failed).unwrap_or_default();
        error = format!("iteration {iteration}: step {failed} failed: {error}");
        failed = block.id.clone();
        mark_failed(ctx, &failed, &error);
    }
    lifecycle::fail(ctx, format!("step {failed} failed: {error}"));
}

fn mark_failed(ctx: &mut Ctx, id: &StepId, error: &str) {
    if crate::locks::is_active_lock(ctx, id) {
        crate::locks::release(ctx, id);
    }
    let at = ctx.at;
    if let Some(s) = ctx.state.step_mut(id) {
        s.status = StepStatus::Failed;
        s.error = Some(error.to_owned());
        s.completed_at = Some(at);
    }
    ctx.progress(ProgressKind::StepFailed)
        .step(id)
        .message(error);
}
