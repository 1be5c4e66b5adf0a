//! What agents report spending, summed per step and per instance, and the
//! instance's budget: a result that takes the sum past it suspends the
//! instance before anything more starts (the result itself is applied),
//! unless nothing is left to run. A person raises the budget and resumes,
//! or terminates.

use legato_contracts::{ProgressKind, RuntimeStatus, TaskKey, Usage};
use serde_json::json;

use crate::decide::{Ctx, Ignored, ignore};
use crate::scheduler;

/// The reason an instance suspended for its budget says it was.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";

/// Counts a result's usage into its step and the instance. When that takes
/// the instance past its budget, the instance is held (status Suspended,
/// so applying the result starts nothing) and why is returned, for
/// [`settle`] once the result is applied.
pub(crate) fn account(ctx: &mut Ctx, key: &TaskKey, usage: Option<&Usage>) -> Option<String> {
    let usage = usage.filter(|u| !u.is_empty())?;
    if let Some(step) = ctx.state.step_mut(&key.step) {
        step.usage.add(usage);
    }
    ctx.state.usage.add(usage);
    let why = ctx
        .state
        .budget
        .as_ref()
        .and_then(|budget| budget.exceeded_by(&ctx.state.usage))?;
    if ctx.state.status != RuntimeStatus::Running {
        return None;
    }
    ctx.state.status = RuntimeStatus::Suspended;
    Some(why)
}

/// After a result that crossed the budget was applied: the instance stays
/// suspended and watchers are told, unless the result finished its run
/// (nothing more to spend) or ended it otherwise.
pub(crate) fn settle(ctx: &mut Ctx, why: String) {
    if ctx.state.status != RuntimeStatus::Suspended {
        return;
    }
    ctx.state.status = RuntimeStatus::Running;
    if scheduler::all_done(ctx) {
        scheduler::advance(ctx);
        return;
    }
    ctx.state.status = RuntimeStatus::Suspended;
    let data = json!({
        "reason": BUDGET_EXCEEDED,
        "usage": ctx.state.usage,
        "budget": ctx.state.budget,
    });
    ctx.progress(ProgressKind::InstanceSuspended)
        .message(why)
        .data(data);
}

/// Replaces the budget of an instance about to resume; refused while what
/// it spent is still past the budget it would have.
pub(crate) fn rebudget(
    ctx: &mut Ctx,
    budget: Option<&legato_contracts::Budget>,
) -> Result<(), Ignored> {
    if let Some(budget) = budget {
        ctx.state.budget = Some(budget.clone());
    }
    match ctx
        .state
        .budget
        .as_ref()
        .and_then(|b| b.exceeded_by(&ctx.state.usage))
    {
        Some(why) => ignore(format!("{why}: raise the budget to resume")),
        None => Ok(()),
    }
}
