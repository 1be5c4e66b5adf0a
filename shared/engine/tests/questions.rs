//! A task that asks a person a question: the attempt ends holding no
//! worker, the step waits, the answer sends the task again with it (not
//! counted as a retry), a second question gets both answers, an unanswered
//! one times out and fails the step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, key};
use legato_contracts::{EventName, ProgressKind};
use legato_engine::{Command, Event, SlotStatus, StepStatus, TimerKey};
use serde_json::json;

const ONE: &str = r#"
name: asks
version: 1
steps:
  - {id: write, agent: coder, input: {}, retry: {max_attempts: 1}}
  - {id: after, agent: echo, needs: [write], input: {}}
"#;

fn ask(
    h: &mut Harness,
    attempt: u32,
    name: &str,
    timeout_ms: Option<u64>,
) -> legato_engine::Decision {
    let at = h.now;
    h.send(Event::TaskAsked {
        at,
        key: key("write", None),
        attempt,
        name: EventName::parse(name).unwrap(),
        question: format!("{name}?"),
        schema: Some(json!({"type": "object", "required": ["scope"]})),
        timeout_ms,
    })
}

#[test]
fn an_answer_sends_the_task_again_with_it_and_asking_is_no_retry() {
    let mut h = Harness::start(ONE, json!({}));
    assert_eq!(h.dispatched().len(), 1);
    assert!(ask(&mut h, 1, "scope", None).applied());
    let step = &h.state.steps["write"];
    assert_eq!(step.status, StepStatus::Waiting);
    assert_eq!(step.tasks[0].status, SlotStatus::Backoff);
    let commands = h.take();
    let told = commands
        .iter()
        .find_map(|c| match c {
            Command::PublishProgress(p) if p.kind == ProgressKind::InputRequested => Some(p),
            _ => None,
        })
        .expect("watchers are asked");
    assert_eq!(told.message.as_deref(), Some("scope?"));
    assert_eq!(told.data.as_ref().unwrap()["name"], "scope");
    assert_eq!(
        told.data.as_ref().unwrap()["schema"]["required"][0],
        "scope"
    );
    // A late result of the attempt that asked counts for nothing.
    assert!(!h.complete(key("write", None), 1, json!("late")).applied());

    h.raise("scope", json!({"scope": "billing only"}));
    let again = h.dispatched();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].answers["scope"], json!({"scope": "billing only"}));
    assert_eq!(h.state.steps["write"].status, StepStatus::Running);

    // A second question: the next attempt gets both answers. The step's
    // retry policy (one attempt) still allows it: asking is not failing.
    ask(&mut h, 2, "tone", None);
    h.raise("tone", json!("formal"));
    let third = h.dispatched();
    assert_eq!(third[0].attempt, 3);
    assert_eq!(third[0].answers.len(), 2);
    h.complete(key("write", None), 3, json!("done"));
    assert_eq!(h.state.steps["write"].status, StepStatus::Completed);
    assert_eq!(h.dispatched().len(), 1, "`after` starts");
}

#[test]
fn an_unanswered_question_times_out_and_fails_the_step() {
    let mut h = Harness::start(ONE, json!({}));
    h.take();
    ask(&mut h, 1, "scope", Some(60_000));
    h.advance(60_000);
    h.fire(TimerKey::AskTimeout {
        key: key("write", None),
        attempt: 1,
    });
    assert_eq!(h.state.steps["write"].status, StepStatus::Failed);
    assert!(
        h.state
            .error
            .as_deref()
            .unwrap()
            .contains("no answer to question scope"),
        "{:?}",
        h.state.error
    );
}

#[test]
fn an_answer_raised_before_the_question_is_kept_for_it() {
    let mut h = Harness::start(ONE, json!({}));
    h.take();
    h.raise("scope", json!({"accounts": "all"}));
    assert_eq!(h.state.pending_events.len(), 1, "kept for whoever asks");
    ask(&mut h, 1, "scope", None);
    assert!(h.state.pending_events.is_empty());
    let again = h.dispatched();
    assert_eq!(again.len(), 1, "answered at once");
    assert_eq!(again[0].answers["scope"], json!({"accounts": "all"}));
    assert_eq!(h.state.steps["write"].status, StepStatus::Running);
}
