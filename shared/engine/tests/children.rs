//! Child workflows: a step whose attempts are each a run of another
//! workflow, started, stopped and answered through commands.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Harness, key};
use legato_contracts::{InstanceId, ParentLink, RuntimeStatus, StepId, TaskError, TaskRole};
use legato_engine::{ChildResult, ChildStart, Command, Event, InstanceState, MAX_DEPTH, decide};
use serde_json::json;

const PARENT: &str = r#"
name: feature
version: 1
steps:
  - id: code
    workflow: coder
    input: { task: "${{ input.task }}" }
    retry: { max_attempts: 2, initial_interval_ms: 10 }
  - id: each
    needs: [code]
    for_each: ${{ input.parts }}
    workflow: { name: tester, version: 3 }
    input: { part: "${{ item }}" }
    max_parallel: 1
"#;

fn starts(commands: &[Command]) -> Vec<ChildStart> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::StartChild(start) => Some(start.clone()),
            _ => None,
        })
        .collect()
}

fn terminated(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::TerminateChild { child, .. } => Some(child.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_child_run_per_attempt_with_an_id_derived_from_it_and_its_output_as_the_steps() {
    let mut h = Harness::start(PARENT, json!({ "task": "csv", "parts": ["a", "b"] }));
    let first = starts(&h.take());
    assert_eq!(first.len(), 1, "{first:?}");
    let start = &first[0];
    assert_eq!(start.child.as_str(), "inst-1::code.a1");
    assert_eq!(start.workflow.name.as_str(), "coder");
    assert_eq!(start.workflow.version, None);
    assert_eq!(start.input, json!({ "task": "csv" }));
    assert_eq!(start.parent.instance.as_str(), "inst-1");
    assert_eq!(start.parent.key, key("code", None));
    assert_eq!((start.parent.attempt, start.parent.depth), (1, 1));
    // The view's link to the child.
    let slot = h.state.task_slot(&key("code", None)).unwrap();
    assert_eq!(
        slot.child.as_ref().unwrap().instance,
        Some(start.child.clone())
    );
    assert_eq!(slot.agent, None);

    // The child failed: the retry policy starts a fresh child run.
    let at = h.now;
    h.send(Event::TaskFailed {
        at,
        key: key("code", None),
        attempt: 1,
        error: TaskError {
            message: "child workflow inst-1::code.a1 failed: tests failed".into(),
            retryable: true,
        },
        usage: None,
    });
    let retry = common::scheduled(&h.take());
    h.advance(10);
    h.fire(retry[0].0.clone());
    let second = starts(&h.take());
    assert_eq!(second[0].child.as_str(), "inst-1::code.a2");
    assert_eq!(second[0].parent.attempt, 2);

    h.complete(key("code", None), 2, json!({ "diff": "+csv" }));
    assert_eq!(
        h.state.steps["code"].output,
        Some(json!({ "diff": "+csv" }))
    );
    // for_each: one child per item, max_parallel honoured, the version pinned.
    let items = starts(&h.take());
    assert_eq!(items.len(), 1, "max_parallel 1: {items:?}");
    assert_eq!(items[0].child.as_str(), "inst-1::each.0.a1");
    assert_eq!(items[0].workflow.version, Some(3));
    h.complete(key("each", Some(0)), 1, json!("ok a"));
    let next = starts(&h.take());
    assert_eq!(next[0].child.as_str(), "inst-1::each.1.a1");
    assert_eq!(next[0].input, json!({ "part": "b" }));
    h.complete(key("each", Some(1)), 1, json!("ok b"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.steps["each"].output, Some(json!(["ok a", "ok b"])));
}

#[test]
fn terminating_the_parent_terminates_its_running_children() {
    let mut h = Harness::start(PARENT, json!({ "task": "csv", "parts": [] }));
    h.take();
    let at = h.now;
    h.send(Event::TerminateRequested {
        at,
        id: "m-1".into(),
        reason: Some("changed my mind".into()),
    });
    let commands = h.take();
    assert_eq!(terminated(&commands), ["inst-1::code.a1"]);
    assert!(
        !commands.iter().any(|c| matches!(c, Command::CancelTask(_))),
        "no agent runs the child's work: {commands:?}"
    );
}

#[test]
fn a_timed_out_attempt_terminates_its_child_and_retries_with_a_new_one() {
    let yaml = r#"
name: bounded
version: 1
steps:
  - id: code
    workflow: coder
    timeout_ms: 1000
    retry: { max_attempts: 2, initial_interval_ms: 10 }
"#;
    let mut h = Harness::start(yaml, json!({}));
    let commands = h.take();
    let timeout = common::scheduled(&commands)
        .into_iter()
        .find(|(t, _)| matches!(t, legato_engine::TimerKey::AttemptTimeout { .. }))
        .unwrap();
    h.advance(1000);
    h.fire(timeout.0);
    let commands = h.take();
    assert_eq!(terminated(&commands), ["inst-1::code.a1"]);
    let retry = common::scheduled(&commands)[0].0.clone();
    h.advance(10);
    h.fire(retry);
    assert_eq!(starts(&h.take())[0].child.as_str(), "inst-1::code.a2");
}

/// The child's side: its end goes to its parent's attempt, however it ends.
fn child_state(yaml: &str) -> (InstanceState, ParentLink) {
    let parent = ParentLink {
        instance: InstanceId::parse("acme~order-1").unwrap(),
        key: key("code", None),
        attempt: 2,
        depth: 1,
    };
    let id = InstanceId::parse("acme~order-1::code.a2").unwrap();
    let started = Event::Started {
        at: time::macros::datetime!(2026-12-07 10:00 UTC),
        instance: id.clone(),
        workflow: Arc::new(legato_workflow::parse(yaml).unwrap()),
        input: json!({ "task": "csv" }),
        tenant: Some("acme".into()),
        run: 9,
        created_at: None,
        parent: Some(parent.clone()),
        budget: None,
        serves: None,
    };
    let decision = decide(&InstanceState::new(id), &started);
    (decision.state, parent)
}

fn reports(commands: &[Command]) -> Vec<(ParentLink, ChildResult)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ReportToParent { parent, result } => Some((parent.clone(), result.clone())),
            _ => None,
        })
        .collect()
}

const CHILD: &str = r#"
name: coder
version: 1
steps:
  - id: write
    agent: coder
    input: { task: "${{ input.task }}" }
output: { diff: "${{ steps.write.output }}" }
"#;

#[test]
fn a_child_reports_completion_failure_and_termination_to_its_parent() {
    let (state, parent) = child_state(CHILD);
    let write = state.task_key(StepId::parse("write").unwrap(), None, TaskRole::Action);
    let at = time::macros::datetime!(2026-12-07 10:01 UTC);
    let done = decide(
        &state,
        &Event::TaskCompleted {
            at,
            key: write.clone(),
            attempt: 1,
            output: json!("+csv"),
            custom_status: None,
            usage: None,
        },
    );
    assert_eq!(
        reports(&done.commands),
        [(
            parent.clone(),
            ChildResult::Completed {
                output: json!({ "diff": "+csv" }),
                usage: None,
            }
        )]
    );

    let failed = decide(
        &state,
        &Event::TaskFailed {
            at,
            key: write,
            attempt: 1,
            error: TaskError {
                message: "no compiler".into(),
                retryable: false,
            },
            usage: None,
        },
    );
    let [(to, ChildResult::Failed { error, .. })] = &reports(&failed.commands)[..] else {
        panic!("{:?}", failed.commands);
    };
    assert_eq!(to, &parent);
    assert!(error.retryable, "a failed child may be run again");
    assert!(
        error.message.contains("acme~order-1::code.a2 failed"),
        "{}",
        error.message
    );
    assert!(error.message.contains("no compiler"), "{}", error.message);

    let terminated = decide(
        &state,
        &Event::TerminateRequested {
            at,
            id: "m-9".into(),
            reason: Some("by hand".into()),
        },
    );
    let [(_, ChildResult::Failed { error, .. })] = &reports(&terminated.commands)[..] else {
        panic!("{:?}", terminated.commands);
    };
    assert!(!error.retryable, "a terminated child is not run again");
    assert!(error.message.contains("by hand"), "{}", error.message);
    assert_eq!(
        legato_engine::result_of(&terminated.state),
        Some(ChildResult::Failed {
            error: error.clone(),
            usage: None,
        })
    );
    assert_eq!(
        legato_engine::result_of(&state),
        None,
        "a running child has no result"
    );
}

#[test]
fn a_child_of_a_child_is_one_level_deeper_and_the_depth_is_bounded() {
    let yaml = r#"
name: nest
version: 1
steps:
  - id: again
    workflow: nest
"#;
    let (state, _) = child_state(yaml);
    // The start the child's own dispatch asked for, one level down.
    let start = state.running_children();
    assert_eq!(start.len(), 1);
    assert_eq!(start[0].child.as_str(), "acme~order-1::code.a2::again.a1");
    assert_eq!(start[0].parent.depth, 2);
    assert_eq!(start[0].tenant.as_deref(), Some("acme"));

    // At the deepest level, starting one more child fails the step for good.
    let mut deepest = state.clone();
    if let Some(parent) = deepest.parent.as_mut() {
        parent.depth = MAX_DEPTH;
    }
    let id = deepest.id.clone();
    let mut fresh = InstanceState::new(id.clone());
    fresh.parent = deepest.parent.clone();
    let started = Event::Started {
        at: time::macros::datetime!(2026-12-07 10:00 UTC),
        instance: id,
        workflow: Arc::new(legato_workflow::parse(yaml).unwrap()),
        input: json!({}),
        tenant: Some("acme".into()),
        run: 9,
        created_at: None,
        parent: deepest.parent.clone(),
        budget: None,
        serves: None,
    };
    let decision = decide(&fresh, &started);
    assert_eq!(decision.state.status, RuntimeStatus::Failed);
    assert!(
        decision
            .state
            .error
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("nest at most {MAX_DEPTH} deep")),
        "{:?}",
        decision.state.error
    );
    assert!(starts(&decision.commands).is_empty());
}

#[test]
fn a_failing_parent_terminates_its_other_running_children_before_it_rolls_back() {
    let yaml = r#"
name: fan
version: 1
steps:
  - id: first
    agent: echo
    compensate: { agent: echo, input: { undo: true } }
  - id: each
    needs: [first]
    for_each: ${{ [1, 2, 3] }}
    workflow: part
"#;
    let mut h = Harness::start(yaml, json!({}));
    h.take();
    h.complete(key("first", None), 1, json!("done"));
    let children = starts(&h.take());
    assert_eq!(children.len(), 3);
    // Item 1's child failed for good: the others are terminated, and the
    // completed step is compensated.
    let at = h.now;
    h.send(Event::TaskFailed {
        at,
        key: key("each", Some(1)),
        attempt: 1,
        error: TaskError {
            message: "child workflow inst-1::each.1.a1 failed: no".into(),
            retryable: true,
        },
        usage: None,
    });
    let commands = h.take();
    assert_eq!(
        terminated(&commands),
        ["inst-1::each.0.a1", "inst-1::each.2.a1"]
    );
    let compensating = commands
        .iter()
        .any(|c| matches!(c, Command::DispatchTask(t) if t.key.role == TaskRole::Compensation));
    assert!(compensating, "{commands:?}");
}
