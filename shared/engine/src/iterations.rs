//! Loops: starting one, and what ends each iteration: the next one, the
//! loop's completion, or its failure at the ceiling.

use std::sync::Arc;

use legato_contracts::ProgressKind;
use legato_workflow::{ExprError, LoopSpec, OnMaxIterations, Step};
use serde_json::{Value, json};

use crate::decide::Ctx;
use crate::state::{StepState, StepStatus};
use crate::tasks;

/// What the end of an iteration led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The next iteration started.
    Iteration,
    /// The loop step completed or failed.
    Loop,
}

pub(crate) fn start(ctx: &mut Ctx, step: &Step, repeat: &LoopSpec) {
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.status = StepStatus::Running;
        s.output = None;
        s.iterations.clear();
    }
    begin(ctx, step, repeat, 1);
}

/// Starts `iteration`: the body's steps afresh, each replacing its state
/// of the iteration before (so the instance does not grow with them).
fn begin(ctx: &mut Ctx, step: &Step, repeat: &LoopSpec, iteration: u32) {
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.iteration = iteration;
    }
    for inner in &repeat.steps {
        ctx.state
            .steps
            .insert(inner.id.clone(), Arc::new(StepState::pending_in(iteration)));
    }
    ctx.progress(ProgressKind::IterationStarted)
        .step(&step.id)
        .data(json!({ "max_iterations": repeat.max_iterations }));
}

/// The current iteration's body is done: its output is the loop's latest
/// (what `previous` holds next), and `until` says whether to go on.
pub(crate) fn end(ctx: &mut Ctx, step: &Step, repeat: &LoopSpec) -> Ended {
    let Some(state) = ctx.state.steps.get(&step.id) else {
        return Ended::Loop;
    };
    let iteration = state.iteration;
    let outcome = outcome(ctx, repeat, iteration, state.output.as_ref());
    let (output, done) = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            tasks::step_failed(ctx, &step.id, format!("iteration {iteration}: {e}"));
            return Ended::Loop;
        }
    };
    if let Some(s) = ctx.state.step_mut(&step.id) {
        s.output = Some(output.clone());
        // Once per iteration: a redrive of a loop stopped at its ceiling
        // ends that iteration again.
        if repeat.keep_iterations && s.iterations.len() < iteration as usize {
            s.iterations.push(output.clone());
        }
    }
    if done {
        tasks::complete_step(ctx, &step.id, output);
        return Ended::Loop;
    }
    if iteration < repeat.max_iterations {
        begin(ctx, step, repeat, iteration + 1);
        return Ended::Iteration;
    }
    match (&repeat.until, repeat.on_max_iterations) {
        // Without `until`, the ceiling is the loop's count.
        (None, _) | (Some(_), OnMaxIterations::Complete) => {
            tasks::complete_step(ctx, &step.id, output);
        }
        (Some(until), OnMaxIterations::Fail) => tasks::step_failed(
            ctx,
            &step.id,
            format!(
                "`{}` did not hold after {} iterations (max_iterations)",
                until.source(),
                repeat.max_iterations
            ),
        ),
    }
    Ended::Loop
}

/// The iteration's output and whether `until` holds after it.
fn outcome(
    ctx: &Ctx,
    repeat: &LoopSpec,
    iteration: u32,
    previous: Option<&Value>,
) -> Result<(Value, bool), ExprError> {
    // Only the steps `until` and `output` read, so ending an iteration costs
    // the same in the thousandth as in the first (the loop's kept
    // iterations are read only by an expression that asks for them).
    let scope = ctx
        .state
        .scope_reading(repeat.steps_read())?
        .in_iteration(iteration, previous.unwrap_or(&Value::Null))?;
    let output = match &repeat.output {
        Some(template) => template.render(&scope)?,
        None => Value::Object(
            repeat
                .steps
                .iter()
                .map(|s| {
                    let output = ctx.state.steps.get(&s.id).and_then(|s| s.output.clone());
                    (s.id.to_string(), output.unwrap_or(Value::Null))
                })
                .collect(),
        ),
    };
    let done = match &repeat.until {
        Some(until) => until.evaluate_bool(&scope)?,
        None => false,
    };
    Ok((output, done))
}
