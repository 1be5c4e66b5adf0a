//! Lock steps in the pure engine: entities acquired one after the other in
//! (type, id) order, the body run once all are held, and every entity
//! released when the block ends, fails, or the run is terminated; a
//! redrive goes on without running again what the block completed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, RUN};
use legato_contracts::{EntityOperation, Operation, StepId, TaskKey, TaskRole};
use legato_engine::{Command, Event, LockHold};
use serde_json::json;

const GUARDED: &str = r#"
name: guarded
version: 1
steps:
  - id: edit
    lock:
      entities:
        - { type: repo, id: "${{ input.repo }}" }
        - { type: budget, id: team }
      steps:
        - { id: code, agent: coder, input: {} }
        - { id: test, agent: tester, needs: [code], input: {} }
      output: "${{ steps.test.output }}"
"#;

fn acquisition(item: u32, execution: u32) -> TaskKey {
    TaskKey {
        run: RUN,
        execution,
        step: StepId::parse("edit").unwrap(),
        item: Some(item),
        iteration: None,
        role: TaskRole::Action,
    }
}

fn body(step: &str, execution: u32) -> TaskKey {
    TaskKey {
        execution,
        ..common::key(step, None)
    }
}

fn operations(commands: Vec<Command>) -> Vec<EntityOperation> {
    commands
        .into_iter()
        .filter_map(|c| match c {
            Command::OperateEntity(op) => Some(op),
            _ => None,
        })
        .collect()
}

/// Names what each operation does to which entity: `acquire budget/team`.
fn described(ops: &[EntityOperation]) -> Vec<String> {
    ops.iter()
        .map(|op| format!("{} {}", op.operation.name(), op.entity))
        .collect()
}

fn granted(h: &mut Harness, key: TaskKey) {
    h.complete(key, 1, json!({"granted": true}));
}

#[test]
fn entities_are_taken_in_order_the_body_runs_held_and_all_are_released_at_its_end() {
    let mut h = Harness::start(GUARDED, json!({"repo": "acme.web"}));
    // budget/team sorts before repo/acme.web: taken first, one at a time.
    let sent = operations(h.take());
    assert_eq!(described(&sent), ["acquire budget/team"]);
    let Operation::Acquire { holder, capacity } = &sent[0].operation else {
        panic!("{sent:?}");
    };
    assert_eq!((holder.key.clone(), *capacity), (acquisition(0, 0), 1));
    assert_eq!(h.state.lock_hold(holder), LockHold::Waiting { attempt: 1 });
    granted(&mut h, acquisition(0, 0));
    assert_eq!(h.state.lock_hold(holder), LockHold::Holding);
    assert_eq!(described(&operations(h.take())), ["acquire repo/acme.web"]);
    granted(&mut h, acquisition(1, 0));
    let started = h.dispatched();
    assert_eq!(started.len(), 1, "the body's first step, once all is held");
    assert_eq!(started[0].key.step.as_str(), "code");
    h.complete(body("code", 0), 1, json!("diff"));
    h.take();
    h.complete(body("test", 0), 1, json!("green"));
    let released = operations(h.take());
    assert_eq!(
        described(&released),
        ["release budget/team", "release repo/acme.web"]
    );
    assert!(
        released.iter().all(|op| op.caller.is_none()),
        "fire and forget"
    );
    assert_eq!(
        h.state.steps.get("edit").unwrap().output,
        Some(json!("green"))
    );
    assert_eq!(h.state.lock_hold(holder), LockHold::Gone);
    assert_eq!(h.state.status.as_str(), "Completed");
    assert_eq!(h.state.output, Some(json!({"edit": "green"})));
}

#[test]
fn a_failed_block_releases_and_a_redrive_goes_on_without_redoing_what_completed() {
    let mut h = Harness::start(GUARDED, json!({"repo": "acme.web"}));
    granted(&mut h, acquisition(0, 0));
    granted(&mut h, acquisition(1, 0));
    h.complete(body("code", 0), 1, json!("diff"));
    h.take();
    h.fail(body("test", 0), 1, false);
    let released = operations(h.take());
    assert_eq!(
        described(&released),
        ["release budget/team", "release repo/acme.web"]
    );
    assert_eq!(h.state.status.as_str(), "Failed");

    h.send(Event::RedriveRequested {
        at: h.now,
        id: "redrive-1".into(),
        workflow: None,
    });
    assert_eq!(described(&operations(h.take())), ["acquire budget/team"]);
    granted(&mut h, acquisition(0, 1));
    h.take();
    granted(&mut h, acquisition(1, 1));
    let started = h.dispatched();
    let steps: Vec<&str> = started.iter().map(|t| t.key.step.as_str()).collect();
    assert_eq!(steps, ["test"], "the completed code step is not run again");
}

#[test]
fn terminating_a_run_releases_what_it_holds_and_what_it_waits_for() {
    let mut h = Harness::start(GUARDED, json!({"repo": "acme.web"}));
    granted(&mut h, acquisition(0, 0));
    h.take();
    h.send(Event::TerminateRequested {
        at: h.now,
        id: "stop-1".into(),
        reason: Some("killed".into()),
    });
    assert_eq!(
        described(&operations(h.take())),
        ["release budget/team", "release repo/acme.web"],
        "the one held and the one waited for"
    );
}
