//! What one applied decision counts: an instance starting or ending, how
//! long each step that ended took, what its agents spent, and a budget
//! crossed.

use legato_contracts::{ProgressKind, WorkflowName};
use legato_engine::{Command, Decision, InstanceState};

pub(crate) fn record(workflow: &WorkflowName, before: &InstanceState, decision: &Decision) {
    let after = &decision.state;
    let workflow = workflow.as_str();
    if before.status == legato_contracts::RuntimeStatus::Pending
        && after.status != legato_contracts::RuntimeStatus::Pending
    {
        legato_service::metrics::instance_started(workflow);
    }
    if !before.status.is_terminal() && after.status.is_terminal() {
        legato_service::metrics::instance_finished(workflow, after.status.as_str());
    }
    let (was, is) = (&before.usage, &after.usage);
    if is != was {
        legato_service::metrics::spent(
            workflow,
            is.input_tokens.saturating_sub(was.input_tokens),
            is.output_tokens.saturating_sub(was.output_tokens),
            (is.cost - was.cost).max(0.0),
        );
    }
    for command in &decision.commands {
        let Command::PublishProgress(progress) = command else {
            continue;
        };
        let outcome = match progress.kind {
            ProgressKind::StepCompleted => "completed",
            ProgressKind::StepFailed => "failed",
            ProgressKind::InstanceSuspended
                if progress
                    .data
                    .as_ref()
                    .is_some_and(|d| d["reason"] == legato_engine::BUDGET_EXCEEDED) =>
            {
                legato_service::metrics::budget_exceeded(workflow);
                continue;
            }
            _ => continue,
        };
        let Some(step) = progress
            .step
            .as_ref()
            .and_then(|id| after.steps.get(id).map(|s| (id, s)))
        else {
            continue;
        };
        if let (Some(started), Some(ended)) = (step.1.started_at, step.1.completed_at) {
            let seconds = (ended - started).as_seconds_f64().max(0.0);
            legato_service::metrics::step_finished(workflow, step.0.as_str(), outcome, seconds);
        }
    }
}
