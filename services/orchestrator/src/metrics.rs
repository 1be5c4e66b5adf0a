//! What one applied decision counts: an instance starting or ending, and
//! how long each step that ended took.

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
    for command in &decision.commands {
        let Command::PublishProgress(progress) = command else {
            continue;
        };
        let outcome = match progress.kind {
            ProgressKind::StepCompleted => "completed",
            ProgressKind::StepFailed => "failed",
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
