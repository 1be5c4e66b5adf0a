#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Behaviour of each step kind as tables of events and expected commands.

mod common;

use common::{Harness, comp_key, key, scheduled};
use legato_contracts::{HeartbeatKind, ProgressEvent, ProgressKind, RuntimeStatus, StepId};
use legato_engine::{AgentNews, Command, Event, SlotStatus, StepStatus, TimerKey, replay};
use serde_json::json;

fn step(id: &str) -> StepId {
    StepId::parse(id).unwrap()
}

#[test]
fn sequence_dispatches_each_step_after_the_previous() {
    let mut h = Harness::start(
        r#"
name: seq
version: 1
steps:
  - { id: a, agent: echo, input: { value: "${{ input.x }}" } }
  - { id: b, agent: echo, needs: [a], input: { value: "${{ steps.a.output.value + 1 }}" } }
output: { result: "${{ steps.b.output.value }}" }
"#,
        json!({"x": 1}),
    );
    let first = h.dispatched();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].input, json!({"value": 1}));
    h.complete(key("a", None), 1, json!({"value": 1}));
    let second = h.dispatched();
    assert_eq!(
        (second[0].key.step.as_str(), second[0].input.clone()),
        ("b", json!({"value": 2}))
    );
    h.complete(key("b", None), 1, json!({"value": 2}));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.output, Some(json!({"result": 2})));
    assert!(h.take().iter().any(
        |c| matches!(c, Command::CompleteInstance { output } if output == &json!({"result": 2}))
    ));
}

#[test]
fn fan_out_then_fan_in_waits_for_all() {
    let mut h = Harness::start(
        r#"
name: fan
version: 1
steps:
  - { id: a, agent: echo }
  - { id: b, agent: echo }
  - { id: c, agent: echo }
  - { id: d, agent: echo }
  - { id: join, agent: echo, needs: [a, b, c, d], input: "${{ [steps.a.output, steps.d.output] }}" }
"#,
        json!({}),
    );
    assert_eq!(h.dispatched().len(), 4, "independent steps start together");
    for (i, id) in ["d", "b", "a"].into_iter().enumerate() {
        h.complete(key(id, None), 1, json!(i));
        assert!(h.dispatched().is_empty(), "join must wait for all four");
    }
    h.complete(key("c", None), 1, json!(9));
    let join = h.dispatched();
    assert_eq!(join.len(), 1);
    assert_eq!(join[0].input, json!([2, 0]));
}

#[test]
fn for_each_respects_max_parallel_and_keeps_item_order() {
    let mut h = Harness::start(
        r#"
name: each
version: 1
steps:
  - id: each
    for_each: "${{ input.items }}"
    agent: echo
    input: { value: "${{ item }}" }
    max_parallel: 2
"#,
        json!({"items": [10, 20, 30, 40, 50]}),
    );
    let mut running: Vec<u32> = h.dispatched().iter().map(|t| t.key.item.unwrap()).collect();
    assert_eq!(running, vec![0, 1]);
    // Complete out of order; never more than two in flight.
    let mut done = 0;
    while let Some(item) = running.pop() {
        h.complete(key("each", Some(item)), 1, json!(item * 100));
        done += 1;
        let next: Vec<u32> = h.dispatched().iter().map(|t| t.key.item.unwrap()).collect();
        running.extend(next);
        assert!(running.len() <= 2);
    }
    assert_eq!(done, 5);
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(
        h.state.steps[&step("each")].output,
        Some(json!([0, 100, 200, 300, 400]))
    );
}

#[test]
fn empty_for_each_completes_with_an_empty_list() {
    let h = Harness::start(
        "name: e\nversion: 1\nsteps: [{ id: each, for_each: '${{ input.items }}', agent: echo }]\n",
        json!({"items": []}),
    );
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.output, Some(json!({"each": []})));
}

#[test]
fn retryable_failures_back_off_exponentially() {
    let mut h = Harness::start(
        r#"
name: retry
version: 1
steps:
  - id: a
    agent: echo
    retry: { max_attempts: 3, initial_interval_ms: 100, backoff: 2 }
"#,
        json!({}),
    );
    h.take();
    h.fail(key("a", None), 1, true);
    let timers = scheduled(&h.take());
    assert_eq!(
        timers,
        vec![(
            TimerKey::Retry {
                key: key("a", None),
                attempt: 1
            },
            h.now + time::Duration::milliseconds(100)
        )]
    );
    assert!(
        h.fire(TimerKey::Retry {
            key: key("a", None),
            attempt: 1
        })
        .applied()
    );
    assert_eq!(h.dispatched()[0].attempt, 2);
    h.fail(key("a", None), 2, true);
    let timers = scheduled(&h.take());
    assert_eq!(timers[0].1, h.now + time::Duration::milliseconds(200));
    h.fire(TimerKey::Retry {
        key: key("a", None),
        attempt: 2,
    });
    assert_eq!(h.dispatched()[0].attempt, 3);
    h.complete(key("a", None), 3, json!("ok"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.steps[&step("a")].attempts(), 3);
}

#[test]
fn exhausted_retries_fail_the_instance() {
    let mut h = Harness::start(
        "name: r\nversion: 1\nsteps: [{ id: a, agent: echo, retry: { max_attempts: 2, initial_interval_ms: 5 } }]\n",
        json!({}),
    );
    h.fail(key("a", None), 1, true);
    h.fire(TimerKey::Retry {
        key: key("a", None),
        attempt: 1,
    });
    h.fail(key("a", None), 2, true);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    assert_eq!(
        h.state.error.as_deref(),
        Some("step a failed: task failed: boom 2 (after 2 attempts)")
    );
}

#[test]
fn failure_compensates_completed_steps_in_reverse_order() {
    let mut h = Harness::start(
        r#"
name: saga
version: 1
steps:
  - { id: reserve, agent: echo, compensate: { agent: echo, input: { undo: "${{ steps.reserve.output }}" } } }
  - { id: charge, agent: echo, needs: [reserve], compensate: { agent: echo, input: { undo: charge } } }
  - { id: ship, agent: echo, needs: [charge] }
"#,
        json!({}),
    );
    h.complete(key("reserve", None), 1, json!("r1"));
    h.complete(key("charge", None), 1, json!("c1"));
    h.take();
    h.fail(key("ship", None), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Running, "still compensating");
    let comp = h.dispatched();
    assert_eq!(
        (comp[0].key.clone(), comp[0].input.clone()),
        (comp_key("charge"), json!({"undo": "charge"}))
    );
    h.complete(comp_key("charge"), 1, json!(null));
    let comp = h.dispatched();
    assert_eq!(
        (comp[0].key.clone(), comp[0].input.clone()),
        (comp_key("reserve"), json!({"undo": "r1"}))
    );
    h.complete(comp_key("reserve"), 1, json!(null));
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    assert!(h.take().iter().any(
        |c| matches!(c, Command::FailInstance { error } if error.starts_with("step ship failed"))
    ));
}

const APPROVAL: &str = r#"
name: approval
version: 1
steps:
  - { id: ask, wait_for_event: { name: approval, timeout_ms: 60000 } }
  - { id: done, agent: echo, needs: [ask], if: "${{ steps.ask.output.approved }}" }
"#;

#[test]
fn approval_event_completes_the_wait_and_cancels_its_timer() {
    let mut h = Harness::start(APPROVAL, json!({}));
    let started = h.take();
    assert!(started.iter().any(
        |c| matches!(c, Command::PublishProgress(p) if p.kind == ProgressKind::WaitingForEvent)
    ));
    assert_eq!(
        scheduled(&started)[0].0,
        TimerKey::EventTimeout {
            execution: 0,
            step: step("ask"),
            iteration: None,
        }
    );
    h.raise("approval", json!({"approved": true}));
    let cmds = h.take();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTimer { .. }))
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::DispatchTask(t) if t.key.step.as_str() == "done"))
    );
    // The timer firing later is stale.
    assert!(
        !h.fire(TimerKey::EventTimeout {
            execution: 0,
            step: step("ask"),
            iteration: None,
        })
        .applied()
    );
}

#[test]
fn rejected_approval_skips_the_conditional_step() {
    let mut h = Harness::start(APPROVAL, json!({}));
    h.raise("approval", json!({"approved": false}));
    assert_eq!(h.state.steps[&step("done")].status, StepStatus::Skipped);
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn approval_timeout_fails_or_takes_on_timeout_output() {
    let mut h = Harness::start(APPROVAL, json!({}));
    h.advance(60_000);
    h.fire(TimerKey::EventTimeout {
        execution: 0,
        step: step("ask"),
        iteration: None,
    });
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    assert!(
        h.state
            .error
            .as_deref()
            .unwrap()
            .contains("timed out waiting for event \"approval\"")
    );

    let with_default = APPROVAL.replace(
        "timeout_ms: 60000 }",
        "timeout_ms: 60000, on_timeout: { output: { approved: false } } }",
    );
    let mut h = Harness::start(&with_default, json!({}));
    h.fire(TimerKey::EventTimeout {
        execution: 0,
        step: step("ask"),
        iteration: None,
    });
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(
        h.state.steps[&step("ask")].output,
        Some(json!({"approved": false}))
    );
}

#[test]
fn an_event_raised_early_is_kept_for_the_wait() {
    let mut h = Harness::start(
        "name: w\nversion: 1\nsteps:\n  - { id: a, agent: echo }\n  - { id: ask, needs: [a], wait_for_event: { name: go } }\n",
        json!({}),
    );
    h.raise("go", json!(7));
    h.complete(key("a", None), 1, json!(null));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.steps[&step("ask")].output, Some(json!(7)));
}

#[test]
fn duplicates_and_stale_results_change_nothing() {
    let mut h = Harness::start(
        "name: d\nversion: 1\nsteps: [{ id: a, agent: echo }, { id: b, agent: echo, needs: [a] }]\n",
        json!({}),
    );
    assert!(h.complete(key("a", None), 1, json!(1)).applied());
    assert!(
        !h.complete(key("a", None), 1, json!(1)).applied(),
        "same attempt twice"
    );
    assert!(
        !h.complete(key("b", None), 2, json!(1)).applied(),
        "attempt never dispatched"
    );
    assert!(
        !h.complete(key("zzz", None), 1, json!(1)).applied(),
        "unknown step"
    );
    let stale_execution = legato_contracts::TaskKey {
        execution: 5,
        ..key("b", None)
    };
    assert!(!h.complete(stale_execution, 1, json!(1)).applied());
    // The same step and attempt of an earlier instance that had this id.
    let earlier_run = legato_contracts::TaskKey {
        run: common::RUN + 1,
        ..key("b", None)
    };
    assert!(!h.complete(earlier_run, 1, json!(1)).applied());
    let at = h.now;
    assert!(
        h.send(Event::TerminateRequested {
            at,
            id: "t1".into(),
            reason: Some("stop".into())
        })
        .applied()
    );
    assert!(
        !h.complete(key("b", None), 1, json!(1)).applied(),
        "result after termination"
    );
    assert!(
        !h.send(Event::TerminateRequested {
            at,
            id: "t2".into(),
            reason: None
        })
        .applied()
    );
}

#[test]
fn terminate_cancels_running_tasks_and_timers() {
    let mut h = Harness::start(
        "name: t\nversion: 1\nsteps: [{ id: a, agent: echo, timeout_ms: 1000 }, { id: w, timer: { delay_ms: 5000 } }]\n",
        json!({}),
    );
    h.take();
    let at = h.now;
    h.send(Event::TerminateRequested {
        at,
        id: "t1".into(),
        reason: Some("user asked".into()),
    });
    let cmds = h.take();
    assert!(
        cmds.iter().any(
            |c| matches!(c, Command::CancelTask(t) if t.key == key("a", None) && t.attempt == 1)
        )
    );
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::CancelTimer { .. }))
            .count(),
        2
    );
    assert_eq!(h.state.status, RuntimeStatus::Terminated);
    assert!(h.state.timers.is_empty());
}

#[test]
fn suspended_instances_dispatch_nothing_until_resumed() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps: [{ id: a, agent: echo }, { id: b, agent: echo, needs: [a] }]\n",
        json!({}),
    );
    h.take();
    let at = h.now;
    h.send(Event::SuspendRequested {
        at,
        id: "s1".into(),
        reason: None,
    });
    assert!(
        h.complete(key("a", None), 1, json!(1)).applied(),
        "kept in the backlog"
    );
    assert!(
        !h.complete(key("a", None), 1, json!(1)).applied(),
        "a redelivery is not kept twice"
    );
    assert!(h.dispatched().is_empty());
    h.send(Event::ResumeRequested {
        at,
        id: "r1".into(),
        reason: None,
        budget: None,
    });
    let suspend_again = Event::SuspendRequested {
        at,
        id: "s1".into(),
        reason: None,
    };
    assert!(
        !h.send(suspend_again).applied(),
        "a late redelivery of the suspend must not suspend again"
    );
    let next = h.dispatched();
    assert_eq!(next[0].key, key("b", None));
    assert!(h.state.backlog.is_empty());
}

/// The ids of accepted messages are claimed with the decision, for the store
/// to keep: the state does not grow with the messages an instance is sent.
#[test]
fn accepted_message_ids_are_claimed_not_kept_in_the_state() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps: [{ id: a, agent: echo }]\n",
        json!({}),
    );
    let at = h.now;
    let size = |h: &Harness| serde_json::to_vec(&h.state).unwrap().len();
    let mut sizes = Vec::new();
    for n in 0..200 {
        let suspend = h.send(Event::SuspendRequested {
            at,
            id: format!("s{n}"),
            reason: None,
        });
        assert_eq!(suspend.claims, vec![format!("s{n}")]);
        let resume = h.send(Event::ResumeRequested {
            at,
            id: format!("r{n}"),
            reason: None,
            budget: None,
        });
        assert_eq!(resume.claims, vec![format!("r{n}")]);
        sizes.push(size(&h));
    }
    assert!(h.state.seen_message_ids.is_empty());
    // Only the counters' digits may grow.
    assert!(sizes[199] - sizes[0] < 16, "{} -> {}", sizes[0], sizes[199]);
}

/// An event raised while suspended is claimed when it is buffered, not again
/// when the resume applies it.
#[test]
fn an_event_buffered_while_suspended_is_claimed_once() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps: [{ id: w, wait_for_event: { name: go } }]\n",
        json!({}),
    );
    let at = h.now;
    let raised = Event::EventRaised {
        at,
        id: "e1".into(),
        name: legato_contracts::EventName::parse("go").unwrap(),
        data: json!(1),
    };
    h.send(Event::SuspendRequested {
        at,
        id: "s1".into(),
        reason: None,
    });
    assert_eq!(h.send(raised.clone()).claims, vec!["e1".to_owned()]);
    assert!(!h.send(raised.clone()).applied(), "kept once");
    let resume = h.send(Event::ResumeRequested {
        at,
        id: "r1".into(),
        reason: None,
        budget: None,
    });
    assert_eq!(resume.claims, vec!["r1".to_owned()]);
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert!(!h.send(raised).applied(), "a redelivery after the resume");
}

/// A state written while the engine kept the ids itself still recognises them.
#[test]
fn ids_kept_in_an_older_state_still_count() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps: [{ id: a, agent: echo }]\n",
        json!({}),
    );
    h.state.seen_message_ids.insert("old".into());
    let at = h.now;
    assert!(
        !h.send(Event::SuspendRequested {
            at,
            id: "old".into(),
            reason: None,
        })
        .applied()
    );
}

#[test]
fn an_event_dropped_from_the_backlog_by_a_restart_is_not_applied_when_redelivered() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps: [{ id: a, agent: echo }, { id: w, wait_for_event: { name: go }, needs: [a] }]\n",
        json!({}),
    );
    h.take();
    let at = h.now;
    let raised = Event::EventRaised {
        at,
        id: "e1".into(),
        name: legato_contracts::EventName::parse("go").unwrap(),
        data: json!({"old": true}),
    };
    h.send(Event::SuspendRequested {
        at,
        id: "s1".into(),
        reason: None,
    });
    assert!(h.send(raised.clone()).applied(), "kept in the backlog");
    assert!(
        h.send(Event::RestartRequested {
            at,
            id: "r1".into(),
            input: None
        })
        .applied()
    );
    assert!(h.state.backlog.is_empty());
    assert!(
        !h.send(raised).applied(),
        "the restarted run must not take an event the earlier run accepted"
    );
    assert!(h.state.pending_events.is_empty());
}

#[test]
fn attempt_timeout_cancels_and_retries() {
    let mut h = Harness::start(
        "name: to\nversion: 1\nsteps: [{ id: a, agent: echo, timeout_ms: 500, retry: { max_attempts: 2, initial_interval_ms: 10 } }]\n",
        json!({}),
    );
    let first = h.dispatched();
    assert_eq!(
        first[0].deadline,
        Some(h.now + time::Duration::milliseconds(500))
    );
    h.advance(500);
    h.fire(TimerKey::AttemptTimeout {
        key: key("a", None),
        attempt: 1,
    });
    let cmds = h.take();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTask(t) if t.reason.contains("timed out")))
    );
    assert!(
        scheduled(&cmds)
            .iter()
            .any(|(t, _)| matches!(t, TimerKey::Retry { attempt: 1, .. }))
    );
    // The late result of the timed-out attempt is stale.
    assert!(!h.complete(key("a", None), 1, json!(1)).applied());
}

#[test]
fn restart_starts_a_new_execution_and_ignores_the_old_one() {
    let mut h = Harness::start(
        "name: rs\nversion: 1\nsteps: [{ id: a, agent: echo }]\n",
        json!({"v": 1}),
    );
    h.take();
    let at = h.now;
    assert!(
        h.send(Event::RestartRequested {
            at,
            id: "r1".into(),
            input: Some(json!({"v": 2}))
        })
        .applied()
    );
    assert!(
        !h.send(Event::RestartRequested {
            at,
            id: "r1".into(),
            input: None
        })
        .applied(),
        "same restart twice"
    );
    let cmds = h.take();
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::CancelTask(t) if t.key.execution == 0))
    );
    let new = cmds
        .iter()
        .find_map(|c| match c {
            Command::DispatchTask(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(new.key.execution, 1);
    assert!(!h.complete(key("a", None), 1, json!("old")).applied());
    h.complete(new.key, 1, json!("new"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.input, json!({"v": 2}));
}

#[test]
fn timer_step_completes_when_it_fires() {
    let mut h = Harness::start(
        "name: tm\nversion: 1\nsteps: [{ id: nap, timer: { delay_ms: 250 } }]\n",
        json!({}),
    );
    let timers = scheduled(&h.take());
    assert_eq!(timers[0].1, h.now + time::Duration::milliseconds(250));
    h.fire(TimerKey::Delay {
        execution: 0,
        step: step("nap"),
        iteration: None,
    });
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn runtime_expression_errors_fail_the_step_with_the_reason() {
    let h = Harness::start(
        "name: x\nversion: 1\nsteps: [{ id: each, for_each: '${{ input.items }}', agent: echo }]\n",
        json!({"items": 3}),
    );
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    assert!(
        h.state.error.as_deref().unwrap().contains("must be a list"),
        "{:?}",
        h.state.error
    );
}

#[test]
fn custom_status_comes_from_agent_results() {
    let mut h = Harness::start(
        "name: c\nversion: 1\nsteps: [{ id: a, agent: echo }]\n",
        json!({}),
    );
    let at = h.now;
    h.send(Event::TaskCompleted {
        at,
        key: key("a", None),
        attempt: 1,
        output: json!(1),
        custom_status: Some(json!({"phase": "done"})),
        usage: None,
    });
    assert_eq!(h.state.custom_status, Some(json!({"phase": "done"})));
}

#[test]
fn progress_carries_the_history_sequence_and_replay_matches() {
    let mut h = Harness::start(
        "name: p\nversion: 1\nsteps: [{ id: a, agent: echo }]\n",
        json!({}),
    );
    h.complete(key("a", None), 1, json!(1));
    let told: Vec<(u64, u64)> = h
        .take()
        .iter()
        .filter_map(|c| match c {
            Command::PublishProgress(p) => Some((p.seq, p.position)),
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        vec![(1, 1), (1, 2), (2, 3), (2, 4)],
        "started+step started at seq 1, step+instance completed at seq 2; each its own position"
    );
    assert_eq!(h.state.position, 4);
    assert_eq!(replay(h.state.id.clone(), &h.history), h.state);
}

fn news(id: &str, kind: HeartbeatKind) -> Option<AgentNews> {
    Some(AgentNews {
        id: id.into(),
        kind,
        message: Some("asking".into()),
        data: Some(json!({"event": "approval"})),
    })
}

fn told(h: &mut Harness) -> Vec<ProgressEvent> {
    h.take()
        .into_iter()
        .filter_map(|c| match c {
            Command::PublishProgress(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn agent_news_is_told_once_in_its_place() {
    let mut h = Harness::start(
        "name: n\nversion: 1\nsteps: [{ id: a, agent: echo }, { id: b, agent: echo, needs: [a] }]\n",
        json!({}),
    );
    h.take();
    let before = h.state.position;
    let at = h.now;
    let beat = |id: &str, attempt: u32| Event::TaskHeartbeat {
        lease_ms: None,
        at,
        key: key("a", None),
        attempt,
        news: news(id, HeartbeatKind::ApprovalRequested),
    };
    assert!(h.send(beat("m1", 1)).applied());
    let progress = told(&mut h);
    assert_eq!(progress.len(), 1);
    let p = &progress[0];
    assert_eq!(
        (
            p.kind,
            p.position,
            p.step.as_ref().map(|s| s.as_str()),
            p.attempt
        ),
        (
            ProgressKind::ApprovalRequested,
            before + 1,
            Some("a"),
            Some(1)
        )
    );
    assert_eq!(p.data, Some(json!({"event": "approval"})));
    assert!(
        !h.send(beat("m1", 1)).applied(),
        "a redelivered beat is told once"
    );
    assert!(
        !h.send(beat("m2", 2)).applied(),
        "no attempt 2 was dispatched"
    );

    // The attempt's result may be taken before its last news: the news
    // still counts (an approval request must not be lost to that race).
    h.complete(key("a", None), 1, json!(1));
    h.take();
    assert!(h.send(beat("m3", 1)).applied());
    assert_eq!(told(&mut h)[0].kind, ProgressKind::ApprovalRequested);

    h.complete(key("b", None), 1, json!(2));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert!(
        !h.send(beat("m4", 1)).applied(),
        "nobody waits on a finished instance's news"
    );
    assert_eq!(replay(h.state.id.clone(), &h.history), h.state);
}

#[test]
fn dynamic_agents_come_from_the_planner_output() {
    let mut h = Harness::start(
        r#"
name: plan
version: 1
steps:
  - { id: plan, agent: planner }
  - { id: work, needs: [plan], for_each: "${{ steps.plan.output.tasks }}", agent: "${{ item.agent }}", input: "${{ item.input }}" }
"#,
        json!({}),
    );
    h.take();
    h.complete(
        key("plan", None),
        1,
        json!({"tasks": [{"agent": "coder", "input": 1}, {"agent": "data", "input": 2}]}),
    );
    let tasks = h.dispatched();
    let agents: Vec<&str> = tasks.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(agents, vec!["coder", "data"]);
}

#[test]
fn state_round_trips_through_json() {
    let mut h = Harness::start(APPROVAL, json!({}));
    h.raise("other", json!(1));
    let json = serde_json::to_string(&h.state).unwrap();
    let back: legato_engine::InstanceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, h.state);
    let history = serde_json::to_string(&h.history).unwrap();
    let back: Vec<Event> = serde_json::from_str(&history).unwrap();
    assert_eq!(back, h.history);
}

/// One instance, one table: each row is an event and whether the engine must
/// apply it, in order.
#[test]
fn event_acceptance_table() {
    let mut h = Harness::start(
        "name: t\nversion: 1\nsteps:\n  - { id: a, agent: echo, retry: { max_attempts: 2, initial_interval_ms: 10 } }\n  - { id: ask, needs: [a], wait_for_event: { name: go } }\n",
        json!({}),
    );
    let at = h.now;
    let ev = |id: &str, name: &str| Event::EventRaised {
        at,
        id: id.into(),
        name: legato_contracts::EventName::parse(name).unwrap(),
        data: json!(id),
    };
    let failed = |attempt| Event::TaskFailed {
        at,
        key: key("a", None),
        attempt,
        error: legato_contracts::TaskError {
            message: "x".into(),
            retryable: true,
        },
        usage: None,
    };
    let done = |attempt| Event::TaskCompleted {
        at,
        key: key("a", None),
        attempt,
        output: json!(attempt),
        custom_status: None,
        usage: None,
    };
    let retry = |attempt| Event::TimerFired {
        at,
        timer: TimerKey::Retry {
            key: key("a", None),
            attempt,
        },
    };
    let rows: Vec<(&str, Event, bool)> = vec![
        ("attempt 1 fails, retryable", failed(1), true),
        ("the same failure again", failed(1), false),
        ("a result for attempt 1 after it failed", done(1), false),
        ("the retry timer fires", retry(1), true),
        ("the retry timer fires twice", retry(1), false),
        ("an early event is buffered", ev("e1", "go"), true),
        ("the same event message again", ev("e1", "go"), false),
        (
            "suspend",
            Event::SuspendRequested {
                at,
                id: "s".into(),
                reason: None,
            },
            true,
        ),
        ("attempt 2 completes while suspended", done(2), true),
        ("and is redelivered while suspended", done(2), false),
        (
            "suspend again",
            Event::SuspendRequested {
                at,
                id: "s2".into(),
                reason: None,
            },
            false,
        ),
        (
            "resume: a completes, ask takes the buffered event",
            Event::ResumeRequested {
                at,
                id: "r".into(),
                reason: None,
                budget: None,
            },
            true,
        ),
        ("attempt 2 redelivered after resume", done(2), false),
        (
            "a restart after completion",
            Event::RestartRequested {
                at,
                id: "x".into(),
                input: None,
            },
            true,
        ),
        ("the old execution's result", done(2), false),
    ];
    for (why, event, applies) in rows {
        assert_eq!(h.send(event).applied(), applies, "{why}");
    }
    assert_eq!(h.state.execution, 1);
}

#[test]
fn running_tasks_are_the_unanswered_attempts_exactly_as_dispatched() {
    let mut h = Harness::start(
        r#"
name: each
version: 1
steps:
  - id: each
    for_each: "${{ input.items }}"
    agent: echo
    input: { value: "${{ item }}" }
    max_parallel: 2
    timeout_ms: 1000
"#,
        json!({"items": [1, 2, 3]}),
    );
    let mut sent = h.dispatched();
    h.complete(key("each", Some(0)), 1, json!(1));
    sent.retain(|t| t.key.item != Some(0));
    sent.extend(h.dispatched());
    for t in &mut sent {
        t.deadline = None;
        t.resent = true;
    }
    assert_eq!(h.state.running_tasks(), sent);
    assert_eq!(sent.len(), 2);
}

const LEASED: &str = r#"
name: leased
version: 1
steps:
  - { id: work, agent: echo, heartbeat_timeout_ms: 1000, retry: { max_attempts: 2, initial_interval_ms: 10 } }
"#;

fn lease(attempt: u32, check: u32) -> TimerKey {
    TimerKey::HeartbeatLease {
        key: key("work", None),
        attempt,
        check,
    }
}

#[test]
fn a_heartbeat_lease_is_renewed_by_heartbeats_and_lost_to_silence() {
    let mut h = Harness::start(LEASED, json!({}));
    let started = h.take();
    let dispatched: Vec<_> = started
        .iter()
        .filter_map(|c| match c {
            Command::DispatchTask(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dispatched[0].heartbeat_timeout_ms, Some(1000));
    let first_check = scheduled(&started);
    assert_eq!(
        first_check,
        vec![(lease(1, 1), h.now + time::Duration::seconds(1))]
    );

    // A heartbeat at +600 ms: the check at +1 s finds it alive and looks
    // again when the renewed lease would run out (+1.6 s).
    h.advance(600);
    let at = h.now;
    assert!(
        h.send(Event::TaskHeartbeat {
            lease_ms: None,
            news: None,
            at,
            key: key("work", None),
            attempt: 1
        })
        .applied()
    );
    assert!(h.take().is_empty(), "a heartbeat commands nothing");
    h.advance(400);
    h.fire(lease(1, 1));
    let renewed = h.take();
    assert_eq!(
        scheduled(&renewed),
        vec![(lease(1, 2), at + time::Duration::seconds(1))]
    );
    assert!(!renewed.iter().any(|c| matches!(c, Command::CancelTask(_))));

    // Silence: the next check fails the attempt, cancels it and retries.
    h.advance(600);
    h.fire(lease(1, 2));
    let lost = h.take();
    assert!(
        lost.iter()
            .any(|c| matches!(c, Command::CancelTask(t) if t.attempt == 1))
    );
    assert!(lost.iter().any(|c| matches!(
        c,
        Command::PublishProgress(p) if p.kind == ProgressKind::StepRetrying
            && p.message.as_deref().is_some_and(|m| m.contains("no heartbeat for 1000 ms"))
    )));
    assert_eq!(
        h.state.steps[&step("work")].tasks[0].status,
        SlotStatus::Backoff
    );

    // The abandoned attempt's late result and heartbeats change nothing.
    let late = h.complete(key("work", None), 1, json!("late"));
    assert!(!late.applied());
    let at = h.now;
    assert!(
        !h.send(Event::TaskHeartbeat {
            lease_ms: None,
            news: None,
            at,
            key: key("work", None),
            attempt: 1
        })
        .applied()
    );

    // The retry gets a lease of its own; finishing it cancels the check.
    h.fire(TimerKey::Retry {
        key: key("work", None),
        attempt: 1,
    });
    assert_eq!(scheduled(&h.take())[0].0, lease(2, 1));
    h.complete(key("work", None), 2, json!("done"));
    let done = h.take();
    assert!(
        done.iter()
            .any(|c| matches!(c, Command::CancelTimer { timer } if *timer == lease(2, 1)))
    );
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn a_worker_that_takes_an_attempt_holds_it_under_its_lease() {
    let mut h = Harness::start(
        "name: pulled\nversion: 1\nsteps:\n  - { id: work, agent: reviewer, retry: { max_attempts: 2, initial_interval_ms: 10 } }\n",
        json!({}),
    );
    let started = h.take();
    assert!(
        scheduled(&started).is_empty(),
        "a task waiting for a worker has no lease"
    );
    let claim = |h: &mut Harness, attempt: u32, lease_ms: Option<u64>| {
        let at = h.now;
        h.send(Event::TaskHeartbeat {
            lease_ms,
            news: None,
            at,
            key: key("work", None),
            attempt,
        })
    };

    // The claim: the lease is watched from now on.
    h.advance(5_000);
    let taken_at = h.now;
    assert!(claim(&mut h, 1, Some(1_000)).applied());
    assert_eq!(
        scheduled(&h.take()),
        vec![(lease(1, 1), taken_at + time::Duration::seconds(1))]
    );
    assert_eq!(h.state.steps[&step("work")].tasks[0].lease_ms, Some(1_000));

    // A second claim (a redelivered copy taken by another worker) and the
    // worker's heartbeats renew it without another timer.
    h.advance(500);
    let renewed_at = h.now;
    assert!(claim(&mut h, 1, Some(1_000)).applied());
    assert!(scheduled(&h.take()).is_empty());
    h.advance(500);
    h.fire(lease(1, 1));
    assert_eq!(
        scheduled(&h.take()),
        vec![(lease(1, 2), renewed_at + time::Duration::seconds(1))]
    );

    // The worker vanished: the attempt is failed and retried, and the
    // retry waits for a worker again, with no lease.
    h.advance(1_000);
    h.fire(lease(1, 2));
    let lost = h.take();
    assert!(lost.iter().any(|c| matches!(
        c,
        Command::PublishProgress(p) if p.kind == ProgressKind::StepRetrying
            && p.message.as_deref().is_some_and(|m| m.contains("no heartbeat for 1000 ms"))
    )));
    h.fire(TimerKey::Retry {
        key: key("work", None),
        attempt: 1,
    });
    let retried = h.take();
    assert!(scheduled(&retried).is_empty());
    assert_eq!(h.state.steps[&step("work")].tasks[0].lease_ms, None);
    assert!(
        !claim(&mut h, 1, Some(1_000)).applied(),
        "the abandoned attempt cannot be taken again"
    );

    // Done within the lease: the check goes with it.
    assert!(claim(&mut h, 2, Some(1_000)).applied());
    h.take();
    h.complete(key("work", None), 2, json!("done"));
    let done = h.take();
    assert!(
        done.iter()
            .any(|c| matches!(c, Command::CancelTimer { timer } if *timer == lease(2, 1)))
    );
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn heartbeats_ten_a_second_are_recorded_once_a_quarter_lease_and_keep_the_lease() {
    let mut h = Harness::start(LEASED, json!({}));
    h.take();
    let beat = |h: &mut Harness| {
        let at = h.now;
        h.send(Event::TaskHeartbeat {
            lease_ms: None,
            news: None,
            at,
            key: key("work", None),
            attempt: 1,
        })
        .applied()
    };
    // Two and a half seconds of beats every 100 ms against a 1 s lease,
    // the lease checks firing when due.
    let mut recorded = 0;
    let mut check = 1;
    let mut due = h.now + time::Duration::seconds(1);
    for _ in 0..25 {
        h.advance(100);
        if beat(&mut h) {
            recorded += 1;
        }
        if h.now >= due {
            h.fire(lease(1, check));
            let next = scheduled(&h.take());
            assert_eq!(next.len(), 1, "the lease holds while it beats");
            check += 1;
            due = next[0].1;
        }
    }
    // At +300, +600, … +2,400 ms: the first beat a quarter lease (250 ms)
    // after the last one recorded.
    assert_eq!(recorded, 8, "{recorded} of 25 recorded");
    assert_eq!(
        h.state.steps[&step("work")].tasks[0].status,
        SlotStatus::Running
    );
}

#[test]
fn steps_without_a_lease_ignore_heartbeats() {
    let mut h = Harness::start(
        "name: plain\nversion: 1\nsteps:\n  - { id: work, agent: echo }\n",
        json!({}),
    );
    h.take();
    let at = h.now;
    let beat = h.send(Event::TaskHeartbeat {
        lease_ms: None,
        news: None,
        at,
        key: key("work", None),
        attempt: 1,
    });
    assert!(
        !beat.applied(),
        "no commit for a heartbeat nothing waits on"
    );
}

fn redrive(h: &mut Harness, id: &str) -> legato_engine::Decision {
    let at = h.now;
    h.send(Event::RedriveRequested {
        at,
        id: id.into(),
        workflow: None,
    })
}

fn in_execution(mut key: legato_contracts::TaskKey, execution: u32) -> legato_contracts::TaskKey {
    key.execution = execution;
    key
}

#[test]
fn redrive_reruns_only_the_failed_items_of_a_for_each() {
    let mut h = Harness::start(
        r#"
name: r
version: 1
steps:
  - { id: first, agent: echo }
  - { id: each, needs: [first], for_each: "${{ [1, 2, 3] }}", agent: echo, input: "${{ item }}" }
  - { id: last, needs: [each], agent: echo }
"#,
        json!({}),
    );
    h.complete(key("first", None), 1, json!("f"));
    h.complete(key("each", Some(0)), 1, json!(10));
    h.fail(key("each", Some(1)), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    h.take();

    assert!(redrive(&mut h, "r1").applied());
    assert_eq!(h.state.status, RuntimeStatus::Running);
    assert_eq!(h.state.execution, 1);
    // Item 0 kept its output; items 1 and 2 run again, as a new execution.
    let sent: Vec<_> = h
        .dispatched()
        .iter()
        .map(|t| (t.key.clone(), t.attempt))
        .collect();
    assert_eq!(
        sent,
        vec![
            (in_execution(key("each", Some(1)), 1), 1),
            (in_execution(key("each", Some(2)), 1), 1)
        ]
    );
    assert!(!redrive(&mut h, "r1").applied(), "a redelivery counts once");
    h.complete(in_execution(key("each", Some(1)), 1), 1, json!(11));
    h.complete(in_execution(key("each", Some(2)), 1), 1, json!(12));
    assert_eq!(
        h.state.steps[&step("each")].output,
        Some(json!([10, 11, 12]))
    );
    h.complete(in_execution(key("last", None), 1), 1, json!("done"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(replay(h.state.id.clone(), &h.history), h.state);
}

#[test]
fn redrive_of_a_sequence_keeps_completed_steps_and_ignores_the_old_attempt() {
    let mut h = Harness::start(
        "name: s\nversion: 1\nsteps:\n  - { id: a, agent: echo }\n  - { id: b, agent: echo, needs: [a] }\n",
        json!({}),
    );
    h.complete(key("a", None), 1, json!(1));
    h.fail(key("b", None), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    h.take();
    let started = h.state.position;
    assert!(redrive(&mut h, "r").applied());
    let told: Vec<_> = h.take();
    assert!(told.iter().any(|c| matches!(c, Command::PublishProgress(p) if p.kind == ProgressKind::InstanceRedriven && p.position > started)));
    assert_eq!(h.state.steps[&step("a")].status, StepStatus::Completed);
    // A late answer from before the redrive changes nothing.
    assert!(!h.complete(key("b", None), 1, json!("late")).applied());
    h.complete(in_execution(key("b", None), 1), 1, json!(2));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
}

#[test]
fn redrive_is_refused_after_a_rollback_and_for_live_instances() {
    let mut h = Harness::start(
        r#"
name: saga
version: 1
steps:
  - { id: a, agent: echo, compensate: { agent: echo } }
  - { id: b, agent: echo, needs: [a] }
"#,
        json!({}),
    );
    assert!(
        legato_engine::redrive_refused(&h.state).is_some(),
        "running"
    );
    assert!(!redrive(&mut h, "r0").applied());
    h.complete(key("a", None), 1, json!(1));
    h.fail(key("b", None), 1, false);
    h.complete(comp_key("a"), 1, json!("undone"));
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    let reason = legato_engine::redrive_refused(&h.state).unwrap();
    assert!(reason.contains("rolled back"), "{reason}");
    assert!(!redrive(&mut h, "r1").applied());
}

/// The instance keeps the time its start was accepted (the Pending record's,
/// by which the Azure store lists it), not the time the orchestrator took
/// the start up: a listing entry whose time no longer matched was removed
/// as dangling a minute later (the soak found instances missing from
/// `GET /instances`).
#[test]
fn a_started_instance_keeps_its_creation_time() {
    let accepted = time::macros::datetime!(2026-11-26 11:59:58 UTC);
    let workflow = std::sync::Arc::new(
        legato_workflow::parse("name: c\nversion: 1\nsteps: [{ id: a, agent: echo }]\n").unwrap(),
    );
    let id = legato_contracts::InstanceId::parse("created-1").unwrap();
    let mut state = legato_engine::InstanceState::new(id.clone());
    state.created_at = Some(accepted);
    let started = Event::Started {
        at: accepted + time::Duration::seconds(2),
        instance: id,
        workflow,
        input: json!({}),
        tenant: None,
        run: 7,
        created_at: state.created_at,
        parent: None,
        budget: None,
        serves: None,
    };
    let decision = legato_engine::decide(&state, &started);
    assert!(decision.applied());
    assert_eq!(decision.state.created_at, Some(accepted));
    assert_eq!(
        replay(decision.state.id.clone(), [&started]).created_at,
        Some(accepted),
        "replay agrees"
    );
}

#[test]
fn redrive_onto_a_later_version_keeps_completed_steps_and_adds_new_ones() {
    let v1 = "name: s\nversion: 1\nsteps:\n  - { id: first, agent: echo }\n  - { id: second, needs: [first], agent: echo }\n  - { id: gone, needs: [first], agent: echo }\n";
    let mut h = Harness::start(v1, json!({}));
    h.complete(key("first", None), 1, json!("f"));
    h.fail(key("second", None), 1, false);
    assert_eq!(h.state.status, RuntimeStatus::Failed);
    h.take();
    let parse = |yaml: &str| std::sync::Arc::new(legato_workflow::parse(yaml).unwrap());
    // Refused: an older version, another workflow, a completed step gone
    // or of another kind.
    let renamed = parse("name: s\nversion: 2\nsteps:\n  - { id: other, agent: echo }\n");
    let rekinded = parse(
        "name: s\nversion: 2\nsteps:\n  - { id: first, for_each: \"${{ [1] }}\", agent: echo }\n",
    );
    let foreign = parse("name: t\nversion: 2\nsteps:\n  - { id: first, agent: echo }\n");
    for (workflow, why) in [
        (renamed, "no step first"),
        (rekinded, "another"),
        (foreign, "not s"),
    ] {
        let refused = legato_engine::redrive_onto_refused(&h.state, &workflow).unwrap();
        assert!(refused.contains(why), "{refused}");
        let at = h.now;
        let decision = h.send(Event::RedriveRequested {
            at,
            id: format!("x-{why}"),
            workflow: Some(workflow),
        });
        assert!(!decision.applied());
    }
    // Accepted: `first` kept, `second` runs again, `gone` dropped, `third` new.
    let v2 = parse(
        "name: s\nversion: 2\nsteps:\n  - { id: first, agent: echo }\n  - { id: second, needs: [first], agent: echo }\n  - { id: third, needs: [second], agent: echo }\n",
    );
    assert_eq!(legato_engine::redrive_onto_refused(&h.state, &v2), None);
    let at = h.now;
    assert!(
        h.send(Event::RedriveRequested {
            at,
            id: "r".into(),
            workflow: Some(v2)
        })
        .applied()
    );
    assert_eq!(h.state.workflow.as_ref().unwrap().version, 2);
    assert!(!h.state.steps.contains_key(&step("gone")));
    let sent: Vec<_> = h.dispatched().iter().map(|t| t.key.clone()).collect();
    assert_eq!(sent, vec![in_execution(key("second", None), 1)]);
    h.complete(in_execution(key("second", None), 1), 1, json!("s"));
    h.complete(in_execution(key("third", None), 1), 1, json!("t"));
    assert_eq!(h.state.status, RuntimeStatus::Completed);
    assert_eq!(h.state.steps[&step("first")].output, Some(json!("f")));
    assert_eq!(replay(h.state.id.clone(), &h.history), h.state);
}
