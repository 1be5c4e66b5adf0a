//! Usage and budgets: results' usage summed per step and per instance; a
//! result that crosses the budget is applied and then the instance is
//! suspended before anything more starts; resuming needs a budget above
//! what was spent; a run that crossed it with its last result completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, key};
use legato_contracts::{Budget, ProgressKind, RuntimeStatus, TaskError, Usage};
use legato_engine::{Command, Event, Outcome, StepStatus};
use serde_json::json;

const THREE_STEPS: &str = r#"
name: spend
version: 1
budget: {tokens: 1000}
steps:
  - {id: plan, agent: planner, input: {}}
  - {id: write, agent: coder, needs: [plan], input: {}}
  - {id: review, agent: echo, needs: [write], input: {}}
"#;

fn usage(input: u64, output: u64, cost: f64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        cost,
        model: Some("gpt-test".into()),
    })
}

fn spend(h: &mut Harness, step: &str, spent: Option<Usage>) -> legato_engine::Decision {
    let at = h.now;
    h.send(Event::TaskCompleted {
        at,
        key: key(step, None),
        attempt: 1,
        output: json!(step),
        custom_status: None,
        usage: spent,
    })
}

fn resume(h: &mut Harness, id: &str, budget: Option<Budget>) -> legato_engine::Decision {
    let at = h.now;
    h.send(Event::ResumeRequested {
        at,
        id: id.into(),
        reason: None,
        budget,
    })
}

#[test]
fn usage_is_summed_per_step_and_per_instance() {
    let mut h = Harness::start(THREE_STEPS, json!({}));
    assert_eq!(
        h.state.budget,
        Some(Budget {
            tokens: Some(1000),
            cost: None
        })
    );
    spend(&mut h, "plan", usage(100, 50, 0.01));
    let at = h.now;
    // A failed attempt's spending counts too.
    h.send(Event::TaskFailed {
        at,
        key: key("write", None),
        attempt: 1,
        error: TaskError {
            message: "flaky".into(),
            retryable: false,
        },
        usage: usage(10, 0, 0.001),
    });
    assert_eq!(h.state.steps["plan"].usage.tokens(), 150);
    assert_eq!(h.state.steps["write"].usage.tokens(), 10);
    assert_eq!(h.state.usage.tokens(), 160);
    assert!((h.state.usage.cost - 0.011).abs() < 1e-9);
    assert_eq!(h.state.usage.model, None, "a sum names no model");
}

#[test]
fn crossing_the_budget_suspends_before_the_next_step_and_a_raised_budget_resumes() {
    let mut h = Harness::start(THREE_STEPS, json!({}));
    h.take();
    let crossed = spend(&mut h, "plan", usage(900, 200, 0.0));
    assert!(crossed.applied());
    // The result is applied, nothing new starts, watchers are told why.
    assert_eq!(h.state.steps["plan"].status, StepStatus::Completed);
    assert_eq!(h.state.status, RuntimeStatus::Suspended);
    let commands = h.take();
    assert!(
        !commands
            .iter()
            .any(|c| matches!(c, Command::DispatchTask(_))),
        "{commands:?}"
    );
    let suspended = commands
        .iter()
        .find_map(|c| match c {
            Command::PublishProgress(p) if p.kind == ProgressKind::InstanceSuspended => Some(p),
            _ => None,
        })
        .expect("watchers are told");
    assert_eq!(
        suspended.data.as_ref().unwrap()["reason"],
        "budget_exceeded"
    );
    assert!(
        suspended
            .message
            .as_deref()
            .unwrap()
            .contains("1100 tokens used of 1000"),
        "{suspended:?}"
    );

    // Resuming without more budget is refused; with more, the run goes on.
    let refused = resume(&mut h, "r-1", None);
    assert!(
        matches!(&refused.outcome, Outcome::Ignored(why) if why.contains("raise the budget")),
        "{:?}",
        refused.outcome
    );
    let too_little = resume(
        &mut h,
        "r-2",
        Some(Budget {
            tokens: Some(1050),
            cost: None,
        }),
    );
    assert!(!too_little.applied());
    let resumed = resume(
        &mut h,
        "r-3",
        Some(Budget {
            tokens: Some(5000),
            cost: None,
        }),
    );
    assert!(resumed.applied(), "{:?}", resumed.outcome);
    assert_eq!(h.state.status, RuntimeStatus::Running);
    assert_eq!(h.dispatched().len(), 1, "the next step starts");
}

#[test]
fn results_held_while_suspended_count_on_resume_and_can_suspend_again() {
    let yaml = r#"
name: fan
version: 1
budget: {cost: 1.0}
steps:
  - {id: each, for_each: "${{ [1, 2, 3] }}", agent: echo, input: {}}
  - {id: after, agent: echo, needs: [each], input: {}}
"#;
    let mut h = Harness::start(yaml, json!({}));
    h.take();
    let at = h.now;
    h.send(Event::SuspendRequested {
        at,
        id: "s-1".into(),
        reason: None,
    });
    for item in 0..3 {
        let at = h.now;
        h.send(Event::TaskCompleted {
            at,
            key: key("each", Some(item)),
            attempt: 1,
            output: json!(item),
            custom_status: None,
            usage: usage(0, 0, 0.6),
        });
    }
    assert_eq!(h.state.backlog.len(), 3);
    resume(&mut h, "r-1", None);
    // The second held result crossed the budget: the third waits again.
    assert_eq!(h.state.status, RuntimeStatus::Suspended);
    assert_eq!(h.state.backlog.len(), 1);
    assert!((h.state.usage.cost - 1.2).abs() < 1e-9);
    assert!(h.dispatched().is_empty());
    resume(
        &mut h,
        "r-2",
        Some(Budget {
            tokens: None,
            cost: Some(10.0),
        }),
    );
    assert_eq!(h.state.status, RuntimeStatus::Running);
    assert_eq!(h.state.backlog.len(), 0);
    assert_eq!(h.state.steps["each"].status, StepStatus::Completed);
    assert_eq!(h.dispatched().len(), 1, "`after` starts");
}

#[test]
fn the_last_result_crossing_the_budget_completes_the_run() {
    let mut h = Harness::start(THREE_STEPS, json!({}));
    spend(&mut h, "plan", None);
    spend(&mut h, "write", None);
    spend(&mut h, "review", usage(5000, 0, 0.0));
    assert_eq!(
        h.state.status,
        RuntimeStatus::Completed,
        "nothing left to spend on"
    );
    assert_eq!(h.state.usage.tokens(), 5000);
}

#[test]
fn a_start_budget_replaces_the_definitions() {
    let workflow = std::sync::Arc::new(legato_workflow::parse(THREE_STEPS).unwrap());
    let id = legato_contracts::InstanceId::parse("b-1").unwrap();
    let started = legato_engine::decide(
        &legato_engine::InstanceState::new(id.clone()),
        &Event::Started {
            at: time::macros::datetime!(2026-11-26 12:00 UTC),
            instance: id,
            workflow,
            input: json!({}),
            tenant: None,
            run: 1,
            created_at: None,
            parent: None,
            budget: Some(Budget {
                tokens: Some(10),
                cost: None,
            }),
            serves: None,
        },
    );
    assert_eq!(
        started.state.budget,
        Some(Budget {
            tokens: Some(10),
            cost: None
        })
    );
}
