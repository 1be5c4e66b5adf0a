//! Races: branches started together, the first to complete wins, the
//! others are cancelled.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, key};
use legato_contracts::{RuntimeStatus, StepId};
use legato_engine::{Command, StepStatus, TimerKey};
use serde_json::json;

const RACE: &str = r#"
name: race
version: 1
steps:
  - id: answer
    race:
      steps:
        - { id: fast, agent: model-a, input: { q: "${{ input.q }}" } }
        - { id: slow, agent: model-b, input: { q: "${{ input.q }}" } }
        - { id: deadline, timer: { delay_ms: 5000 } }
  - id: use
    needs: [answer]
    agent: echo
    input: { value: "${{ steps.answer.output }}" }
"#;

fn status(h: &Harness, id: &str) -> StepStatus {
    h.state.steps[&StepId::parse(id).unwrap()].status
}

fn deadline() -> TimerKey {
    TimerKey::Delay {
        execution: 0,
        step: StepId::parse("deadline").unwrap(),
        iteration: None,
    }
}

#[test]
fn the_first_branch_to_complete_wins_and_the_others_are_cancelled() {
    let mut h = Harness::start(RACE, json!({ "q": "2+2" }));
    let started = h.take();
    let agents: Vec<&str> = started
        .iter()
        .filter_map(|c| match c {
            Command::DispatchTask(t) => Some(t.agent.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(agents, ["model-a", "model-b"]);
    assert_eq!(common::scheduled(&started)[0].0, deadline());
    h.complete(key("slow", None), 1, json!(4));
    let after = h.take();
    let cancelled: Vec<String> = after
        .iter()
        .filter_map(|c| match c {
            Command::CancelTask(t) => Some(format!("{} {}", t.key.step, t.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, ["fast slow won race answer"]);
    assert!(
        after
            .iter()
            .any(|c| matches!(c, Command::CancelTimer { timer } if *timer == deadline())),
        "{after:?}"
    );
    assert_eq!(
        (
            status(&h, "fast"),
            status(&h, "slow"),
            status(&h, "deadline")
        ),
        (
            StepStatus::Cancelled,
            StepStatus::Completed,
            StepStatus::Cancelled
        )
    );
    let answer = &h.state.steps[&StepId::parse("answer").unwrap()];
    assert_eq!(
        answer.output,
        Some(json!({ "winner": "slow", "output": 4 }))
    );
    let used = after
        .iter()
        .find_map(|c| match c {
            Command::DispatchTask(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        used.input,
        json!({ "value": { "winner": "slow", "output": 4 } })
    );
    // The loser's late answer changes nothing, nor does the timer firing.
    assert!(!h.complete(key("fast", None), 1, json!(5)).applied());
    assert!(!h.fire(deadline()).applied());
    h.complete(used.key, 1, json!("done"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn a_timer_can_win_the_race() {
    let mut h = Harness::start(RACE, json!({ "q": "halting problem" }));
    h.take();
    h.advance(5000);
    h.fire(deadline());
    let answer = &h.state.steps[&StepId::parse("answer").unwrap()];
    assert_eq!(
        answer.output,
        Some(json!({ "winner": "deadline", "output": null }))
    );
    assert_eq!(status(&h, "fast"), StepStatus::Cancelled);
}

#[test]
fn a_failed_branch_is_out_of_the_race_and_the_race_fails_when_none_is_left() {
    let yaml = RACE.replace(
        "        - { id: deadline, timer: { delay_ms: 5000 } }\n",
        "",
    );
    let mut h = Harness::start(&yaml, json!({ "q": "?" }));
    h.take();
    h.fail(key("fast", None), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Running);
    assert_eq!(status(&h, "fast"), StepStatus::Failed);
    assert_eq!(status(&h, "answer"), StepStatus::Running);
    h.fail(key("slow", None), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    let error = h.state.error.clone().unwrap();
    assert!(
        error.starts_with("step answer failed: no branch completed (fast: task failed: boom 1"),
        "{error}"
    );
}

#[test]
fn races_are_checked_like_everything_else() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "        - { id: slow, agent: model-b, input: { q: \"${{ input.q }}\" } }\n        - { id: deadline, timer: { delay_ms: 5000 } }\n",
            "",
            "race.steps: must list at least two branches",
        ),
        (
            "{ id: slow, agent: model-b,",
            "{ id: slow, needs: [fast], agent: model-b,",
            "(slow).needs: a race's branches start together: a branch has no needs",
        ),
        (
            "input: { value: \"${{ steps.answer.output }}\" }",
            "input: { value: \"${{ steps.fast.output }}\" }",
            "reads steps.fast, which is inside race answer: read the race's output (steps.answer.output) instead",
        ),
        (
            "        - { id: deadline, timer: { delay_ms: 5000 } }\n",
            "        - { id: deadline, loop: { max_iterations: 2, steps: [{ id: again, agent: echo }] } }\n",
            "loops, races and locks do not nest",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(RACE.contains(from), "{from}");
        let text = legato_workflow::parse(&RACE.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(text.contains(expected), "{from} -> {to}:\n{text}");
    }
}
