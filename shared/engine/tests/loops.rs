//! Loops: a block of steps repeated until a condition holds, at most
//! `max_iterations` times.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, RUN};
use legato_contracts::{ProgressKind, RuntimeStatus, StepId, TaskKey, TaskRole};
use legato_engine::{Command, Event, StepStatus, TimerKey};
use serde_json::json;

const REVIEW_LOOP: &str = r#"
name: write-review
version: 1
steps:
  - id: draft
    loop:
      max_iterations: 5
      until: ${{ steps.review.output.approved }}
      output: { text: "${{ steps.write.output.text }}", approved: "${{ steps.review.output.approved }}" }
      keep_iterations: true
      steps:
        - id: write
          agent: coder
          input: { task: "${{ input.task }}", round: "${{ iteration }}", feedback: "${{ previous == null ? '' : previous.text }}" }
        - id: review
          agent: reviewer
          needs: [write]
          input: { draft: "${{ steps.write.output.text }}" }
  - id: publish
    agent: echo
    needs: [draft]
    input: { text: "${{ steps.draft.output.text }}", rounds: "${{ size(steps.draft.iterations) }}" }
"#;

fn key(step: &str, iteration: u32) -> TaskKey {
    TaskKey {
        run: RUN,
        execution: 0,
        step: StepId::parse(step).unwrap(),
        item: None,
        iteration: Some(iteration),
        role: TaskRole::Action,
    }
}

fn progress(commands: &[Command]) -> Vec<legato_contracts::ProgressEvent> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::PublishProgress(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// One round of write then review; the review approves when told to.
fn round(h: &mut Harness, iteration: u32, approve: bool) {
    let write = h.dispatched();
    assert_eq!(write.len(), 1, "{write:?}");
    assert_eq!(write[0].key, key("write", iteration));
    h.complete(
        key("write", iteration),
        1,
        json!({ "text": format!("draft {iteration}") }),
    );
    let review = h.dispatched();
    assert_eq!(review[0].key, key("review", iteration));
    assert_eq!(
        review[0].input,
        json!({ "draft": format!("draft {iteration}") })
    );
    h.complete(key("review", iteration), 1, json!({ "approved": approve }));
}

#[test]
fn a_loop_repeats_its_body_until_the_condition_holds_and_each_round_sees_the_last() {
    let mut h = Harness::start(REVIEW_LOOP, json!({ "task": "csv export" }));
    let started = progress(&h.commands);
    let iteration = started
        .iter()
        .find(|p| p.kind == ProgressKind::IterationStarted)
        .unwrap();
    assert_eq!(
        (
            iteration.step.as_ref().unwrap().as_str(),
            iteration.iteration
        ),
        ("draft", Some(1))
    );
    assert_eq!(iteration.data, Some(json!({ "max_iterations": 5 })));
    let first = h.dispatched();
    assert_eq!(
        first[0].input,
        json!({ "task": "csv export", "round": 1, "feedback": "" })
    );
    // Iteration 1's keys are its own: agents deduplicating by key never
    // mistake the next iteration's work for it.
    assert_eq!(first[0].key.to_string(), format!("{RUN:016x}/e0/write@1"));
    h.complete(key("write", 1), 1, json!({ "text": "draft 1" }));
    let review = h.dispatched();
    h.complete(review[0].key.clone(), 1, json!({ "approved": false }));
    let second = h.commands.clone();
    let write = h.dispatched();
    assert_eq!(
        write[0].input,
        json!({ "task": "csv export", "round": 2, "feedback": "draft 1" })
    );
    // Every event of the second round names it.
    let told = progress(&second);
    assert!(
        told.iter()
            .any(|p| p.kind == ProgressKind::IterationStarted && p.iteration == Some(2)),
        "{told:?}"
    );
    assert!(
        told.iter()
            .filter(|p| p.step.as_ref().is_some_and(|s| s.as_str() == "write"))
            .all(|p| p.iteration == Some(2)),
        "{told:?}"
    );
    h.complete(key("write", 2), 1, json!({ "text": "draft 2" }));
    h.dispatched();
    h.complete(key("review", 2), 1, json!({ "approved": false }));
    round(&mut h, 3, true);
    let publish = h.dispatched();
    assert_eq!(publish[0].key.iteration, None);
    assert_eq!(publish[0].input, json!({ "text": "draft 3", "rounds": 3 }));
    let draft = &h.state.steps[&StepId::parse("draft").unwrap()];
    assert_eq!(draft.status, StepStatus::Completed);
    assert_eq!(draft.iteration, 3);
    assert_eq!(
        draft.output,
        Some(json!({ "text": "draft 3", "approved": true }))
    );
    assert_eq!(draft.iterations.len(), 3);
    assert_eq!(
        draft.iterations[0],
        json!({ "text": "draft 1", "approved": false })
    );
    h.complete(publish[0].key.clone(), 1, json!("ok"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn a_late_result_of_an_earlier_iteration_is_not_taken_for_the_current_one() {
    let mut h = Harness::start(REVIEW_LOOP, json!({ "task": "t" }));
    round(&mut h, 1, false);
    assert_eq!(h.dispatched()[0].key, key("write", 2));
    // Iteration 1's write, redelivered: same step, same attempt number.
    let late = h.complete(key("write", 1), 1, json!({ "text": "stale" }));
    assert!(!late.applied(), "{late:?}");
    // And a key without an iteration names nothing in a loop.
    let mut bare = key("write", 2);
    bare.iteration = None;
    assert!(!h.complete(bare, 1, json!({ "text": "bare" })).applied());
    h.complete(key("write", 2), 1, json!({ "text": "draft 2" }));
    assert_eq!(h.dispatched()[0].input, json!({ "draft": "draft 2" }));
}

#[test]
fn the_ceiling_fails_the_loop_or_completes_it_as_the_definition_says() {
    let mut h = Harness::start(
        REVIEW_LOOP
            .replace("max_iterations: 5", "max_iterations: 2")
            .as_str(),
        json!({ "task": "t" }),
    );
    round(&mut h, 1, false);
    round(&mut h, 2, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    let error = h.state.error.clone().unwrap();
    assert!(
        error.contains("step draft failed")
            && error.contains("steps.review.output.approved")
            && error.contains("2 iterations"),
        "{error}"
    );
    assert!(h.dispatched().is_empty());

    let lenient = REVIEW_LOOP.replace(
        "max_iterations: 5",
        "max_iterations: 2\n      on_max_iterations: complete",
    );
    let mut h = Harness::start(&lenient, json!({ "task": "t" }));
    round(&mut h, 1, false);
    round(&mut h, 2, false);
    let publish = h.dispatched();
    assert_eq!(publish[0].input, json!({ "text": "draft 2", "rounds": 2 }));
}

#[test]
fn without_until_a_loop_runs_its_count_and_its_output_defaults_to_the_body_s() {
    let mut h = Harness::start(
        r#"
name: thrice
version: 1
steps:
  - id: vote
    loop:
      max_iterations: 3
      steps:
        - { id: ask, agent: echo, input: { n: "${{ iteration }}" } }
"#,
        json!({}),
    );
    for n in 1..=3 {
        let ask = h.dispatched();
        assert_eq!(ask[0].input, json!({ "n": n }));
        h.complete(ask[0].key.clone(), 1, json!(n * 10));
    }
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.output, Some(json!({ "vote": { "ask": 30 } })));
}

#[test]
fn a_failing_step_fails_its_loop_naming_the_iteration_and_redrive_goes_on_in_it() {
    let mut h = Harness::start(REVIEW_LOOP, json!({ "task": "t" }));
    round(&mut h, 1, false);
    h.dispatched();
    h.complete(key("write", 2), 1, json!({ "text": "draft 2" }));
    h.dispatched();
    h.fail(key("review", 2), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    let draft = &h.state.steps[&StepId::parse("draft").unwrap()];
    assert_eq!(draft.status, StepStatus::Failed);
    assert!(
        draft
            .error
            .as_deref()
            .unwrap()
            .starts_with("iteration 2: step review failed"),
        "{draft:?}"
    );
    assert!(
        h.state
            .error
            .as_deref()
            .unwrap()
            .starts_with("step draft failed: iteration 2: step review failed"),
        "{:?}",
        h.state.error
    );
    let at = h.now;
    h.send(Event::RedriveRequested {
        at,
        id: "redrive-1".into(),
        workflow: None,
    });
    assert_eq!(h.state.status, RuntimeStatus::Running);
    // The write of iteration 2 stays done; its review runs again, in a
    // new execution.
    let review = h.dispatched();
    assert_eq!(review.len(), 1, "{review:?}");
    assert_eq!(
        (
            review[0].key.step.as_str(),
            review[0].key.iteration,
            review[0].key.execution
        ),
        ("review", Some(2), 1)
    );
    assert_eq!(review[0].input, json!({ "draft": "draft 2" }));
    h.complete(review[0].key.clone(), 1, json!({ "approved": true }));
    assert_eq!(
        h.dispatched()[0].input,
        json!({ "text": "draft 2", "rounds": 2 })
    );
}

#[test]
fn timers_and_waits_inside_a_loop_are_each_iteration_s_own() {
    let mut h = Harness::start(
        r#"
name: poll
version: 1
steps:
  - id: poll
    loop:
      max_iterations: 3
      until: ${{ steps.check.output.ready }}
      steps:
        - { id: pause, timer: { delay_ms: 1000 } }
        - { id: check, agent: echo, needs: [pause], input: { n: "${{ iteration }}" } }
"#,
        json!({}),
    );
    let delay = |iteration| TimerKey::Delay {
        execution: 0,
        step: StepId::parse("pause").unwrap(),
        iteration: Some(iteration),
    };
    assert_eq!(common::scheduled(&h.take())[0].0, delay(1));
    h.advance(1000);
    h.fire(delay(1));
    let check = h.dispatched();
    h.complete(check[0].key.clone(), 1, json!({ "ready": false }));
    assert_eq!(common::scheduled(&h.take())[0].0, delay(2));
    // Iteration 1's timer fired again (a redelivery) ends nothing now.
    assert!(!h.fire(delay(1)).applied());
    h.fire(delay(2));
    let check = h.dispatched();
    assert_eq!(check[0].input, json!({ "n": 2 }));
    h.complete(check[0].key.clone(), 1, json!({ "ready": true }));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn an_iteration_whose_steps_are_all_skipped_moves_on_at_once() {
    let h = Harness::start(
        r#"
name: skip
version: 1
steps:
  - id: count
    loop:
      max_iterations: 1000
      until: ${{ iteration == 1000 }}
      output: "${{ iteration }}"
      steps:
        - { id: never, agent: echo, if: "${{ input.run }}" }
"#,
        json!({ "run": false }),
    );
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.output, Some(json!({ "count": 1000 })));
}

#[test]
fn the_state_does_not_grow_with_iterations() {
    let yaml = REVIEW_LOOP
        .replace("max_iterations: 5", "max_iterations: 200")
        .replace("      keep_iterations: true\n", "")
        .replace(", rounds: \"${{ size(steps.draft.iterations) }}\"", "");
    let mut h = Harness::start(&yaml, json!({ "task": "t" }));
    let size = |h: &Harness| {
        serde_json::to_vec(&h.state.without_steps()).unwrap().len()
            + h.state
                .steps
                .values()
                .map(|s| serde_json::to_vec(&**s).unwrap().len())
                .sum::<usize>()
    };
    round(&mut h, 1, false);
    round(&mut h, 2, false);
    let after_two = size(&h);
    for n in 3..=150 {
        round(&mut h, n, false);
    }
    // The numbers grow a digit or two; nothing piles up.
    assert!(size(&h) <= after_two + 40, "{} vs {after_two}", size(&h));
    assert_eq!(h.history.len(), 1 + 150 * 2);
}

#[test]
fn terminating_cancels_the_running_iteration_s_task_by_its_key() {
    let mut h = Harness::start(REVIEW_LOOP, json!({ "task": "t" }));
    round(&mut h, 1, false);
    h.dispatched();
    let at = h.now;
    h.send(Event::TerminateRequested {
        at,
        id: "stop".into(),
        reason: None,
    });
    let cancelled: Vec<TaskKey> = h
        .take()
        .into_iter()
        .filter_map(|c| match c {
            Command::CancelTask(t) => Some(t.key),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, vec![key("write", 2)]);
}

#[test]
fn a_loop_failed_at_its_ceiling_goes_on_when_redriven_onto_a_higher_one() {
    let two = REVIEW_LOOP.replace("max_iterations: 5", "max_iterations: 2");
    let mut h = Harness::start(&two, json!({ "task": "t" }));
    round(&mut h, 1, false);
    round(&mut h, 2, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    let four = two
        .replace("max_iterations: 2", "max_iterations: 4")
        .replace("version: 1", "version: 2");
    let at = h.now;
    h.send(Event::RedriveRequested {
        at,
        id: "onto-4".into(),
        workflow: Some(std::sync::Arc::new(legato_workflow::parse(&four).unwrap())),
    });
    assert_eq!(h.state.status, RuntimeStatus::Running);
    // Iteration 2 ended again without being kept twice; 3 runs.
    let write = h.dispatched();
    assert_eq!(
        (
            write[0].key.step.as_str(),
            write[0].key.iteration,
            write[0].key.execution
        ),
        ("write", Some(3), 1)
    );
    let mut three = key("write", 3);
    three.execution = 1;
    h.complete(three.clone(), 1, json!({ "text": "draft 3" }));
    let review = h.dispatched();
    h.complete(review[0].key.clone(), 1, json!({ "approved": true }));
    let draft = &h.state.steps[&StepId::parse("draft").unwrap()];
    assert_eq!(draft.status, StepStatus::Completed);
    assert_eq!(draft.iterations.len(), 3, "{:?}", draft.iterations);
}

#[test]
fn a_skipped_loop_skips_its_body_too() {
    let yaml = REVIEW_LOOP.replace(
        "  - id: draft\n    loop:",
        "  - id: draft\n    if: \"${{ input.task != 'none' }}\"\n    loop:",
    );
    let h = Harness::start(&yaml, json!({ "task": "none" }));
    for id in ["draft", "write", "review"] {
        assert_eq!(
            h.state.steps[&StepId::parse(id).unwrap()].status,
            StepStatus::Skipped,
            "{id}"
        );
    }
}
