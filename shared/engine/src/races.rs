//! Races: branches started together; the first to complete wins and the
//! others are cancelled. A branch that fails is out of the race; the race
//! fails only when no branch is left to win it.

use std::sync::Arc;

use legato_workflow::{RaceSpec, Step};
use serde_json::json;

use crate::decide::Ctx;
use crate::state::{StepState, StepStatus};
use crate::{lifecycle, tasks};

pub(crate) fn start(ctx: &mut Ctx, step: &Step, race: &RaceSpec) {
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.status = StepStatus::Running;
    }
    for branch in &race.steps {
        ctx.state
            .steps
            .insert(branch.id.clone(), Arc::new(StepState::pending()));
    }
}

/// After the branches moved: the race is won (the others cancelled), lost
/// (every branch failed or was skipped), or goes on. Whether it ended.
pub(crate) fn settle(ctx: &mut Ctx, step: &Step, race: &RaceSpec) -> bool {
    let status = |id| {
        ctx.state
            .steps
            .get(id)
            .map_or(StepStatus::Pending, |s| s.status)
    };
    if let Some(winner) = race
        .steps
        .iter()
        .find(|b| status(&b.id) == StepStatus::Completed)
    {
        let output = ctx
            .state
            .steps
            .get(&winner.id)
            .and_then(|s| s.output.clone())
            .unwrap_or_default();
        let reason = format!("{} won race {}", winner.id, step.id);
        for loser in race.steps.iter().filter(|b| b.id != winner.id) {
            lifecycle::cancel_step(ctx, &loser.id, &reason);
        }
        tasks::complete_step(
            ctx,
            &step.id,
            json!({ "winner": winner.id, "output": output }),
        );
        return true;
    }
    let out = |s: StepStatus| matches!(s, StepStatus::Failed | StepStatus::Skipped);
    if race.steps.iter().all(|b| out(status(&b.id))) {
        let why: Vec<String> = race
            .steps
            .iter()
            .map(|b| {
                let error = ctx.state.steps.get(&b.id).and_then(|s| s.error.clone());
                format!("{}: {}", b.id, error.unwrap_or_else(|| "skipped".into()))
            })
            .collect();
        tasks::step_failed(
            ctx,
            &step.id,
            format!("no branch completed ({})", why.join("; ")),
        );
        return true;
    }
    false
}
