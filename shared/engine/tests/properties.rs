#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Properties over random DAGs and random event orders:
//! - replaying the accepted history rebuilds the same state;
//! - progress positions run 1, 2, 3, ... with no gap and no repeat;
//! - delivering any accepted event again (at once or much later) changes nothing;
//! - with only recoverable failures every DAG completes, each task attempt
//!   dispatched exactly once and never more than `max_parallel` in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use legato_contracts::{EventName, HeartbeatKind, InstanceId, RuntimeStatus, TaskError, TaskKey};
use legato_engine::{AgentNews, Command, Decision, Event, InstanceState, TimerKey, decide, replay};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Debug, Clone)]
struct StepSpec {
    needs: Vec<usize>,
    for_each: Option<(usize, u32)>,
    max_attempts: u32,
    wait: bool,
}

fn step_spec(index: usize) -> impl Strategy<Value = StepSpec> {
    let needs = proptest::collection::vec(any::<bool>(), index).prop_map(|mask| {
        mask.iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    });
    (
        needs,
        prop::option::of((0usize..5, 1u32..4)),
        1u32..4,
        prop::bool::weighted(0.15),
    )
        .prop_map(|(needs, for_each, max_attempts, wait)| StepSpec {
            needs,
            for_each,
            max_attempts,
            wait,
        })
}

fn dag() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..8).prop_flat_map(|n| (0..n).map(step_spec).collect::<Vec<_>>())
}

fn workflow(specs: &[StepSpec]) -> (Arc<legato_workflow::Workflow>, Value) {
    let mut input = serde_json::Map::new();
    let steps: Vec<Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut step = json!({
                "id": format!("s{i}"),
                "needs": s.needs.iter().map(|n| format!("s{n}")).collect::<Vec<_>>(),
            });
            if s.wait {
                step["wait_for_event"] = json!({"name": format!("ev{i}")});
                return step;
            }
            step["agent"] = json!("echo");
            step["retry"] = json!({"max_attempts": s.max_attempts, "initial_interval_ms": 10});
            if let Some((len, max_parallel)) = s.for_each {
                input.insert(format!("items{i}"), json!((0..len).collect::<Vec<_>>()));
                step["for_each"] = json!(format!("${{{{ input.items{i} }}}}"));
                step["max_parallel"] = json!(max_parallel);
                step["input"] = json!({"value": "${{ item }}"});
            }
            step
        })
        .collect();
    let doc = json!({"name": "prop", "version": 1, "steps": steps});
    (
        Arc::new(legato_workflow::from_value(doc).unwrap()),
        Value::Object(input),
    )
}

/// Tracks what the commands asked for: tasks in flight and pending timers.
#[derive(Default)]
struct World {
    in_flight: Vec<(TaskKey, u32)>,
    timers: BTreeSet<TimerKey>,
    dispatches: BTreeMap<(TaskKey, u32), u32>,
    max_in_flight: BTreeMap<String, usize>,
    /// Every progress event's position, in the order they were emitted.
    positions: Vec<u64>,
}

impl World {
    fn absorb(&mut self, commands: &[Command]) {
        for c in commands {
            match c {
                Command::DispatchTask(t) => {
                    *self
                        .dispatches
                        .entry((t.key.clone(), t.attempt))
                        .or_default() += 1;
                    self.in_flight.push((t.key.clone(), t.attempt));
                }
                Command::CancelTask(t) => self
                    .in_flight
                    .retain(|(k, a)| !(k == &t.key && *a == t.attempt)),
                Command::ScheduleTimer { timer, .. } => {
                    self.timers.insert(timer.clone());
                }
                Command::CancelTimer { timer } => {
                    self.timers.remove(timer);
                }
                Command::PublishProgress(p) => self.positions.push(p.position),
                _ => {}
            }
        }
        let mut per_step: BTreeMap<String, usize> = BTreeMap::new();
        for (k, _) in &self.in_flight {
            *per_step.entry(k.step.to_string()).or_default() += 1;
        }
        for (step, n) in per_step {
            let max = self.max_in_flight.entry(step).or_default();
            *max = (*max).max(n);
        }
    }
}

struct Run {
    max_attempts: Vec<u32>,
    state: InstanceState,
    history: Vec<Event>,
    world: World,
    now: OffsetDateTime,
    ids: u32,
    /// Message ids claimed by applied decisions, as the store keeps them.
    claimed: BTreeSet<String>,
}

impl Run {
    fn new(specs: &[StepSpec]) -> Self {
        let (workflow, input) = workflow(specs);
        let id = InstanceId::parse("prop-1").unwrap();
        let mut run = Self {
            max_attempts: specs.iter().map(|s| s.max_attempts).collect(),
            state: InstanceState::new(id.clone()),
            history: Vec::new(),
            world: World::default(),
            now: time::macros::datetime!(2026-01-01 0:00 UTC),
            ids: 0,
            claimed: BTreeSet::new(),
        };
        let at = run.now;
        run.deliver(Event::Started {
            at,
            instance: id,
            workflow,
            input,
            tenant: None,
            run: 42,
            created_at: None,
            parent: None,
            budget: None,
            serves: None,
        });
        run
    }

    /// The decision to apply for `event`, if any: the engine's, unless it
    /// claims a message id claimed before (the store refuses that commit).
    fn decision(&self, event: &Event) -> Option<Decision> {
        let decision = decide(&self.state, event);
        if !decision.applied() {
            prop_assert_eq_unchecked(&decision.state, &self.state);
            assert!(decision.commands.is_empty());
            return None;
        }
        decision
            .claimed_before(&self.claimed)
            .is_none()
            .then_some(decision)
    }

    /// Applies an event and checks that delivering it again changes nothing.
    fn deliver(&mut self, event: Event) -> bool {
        let Some(decision) = self.decision(&event) else {
            return false;
        };
        self.claimed.extend(decision.claims.iter().cloned());
        self.state = decision.state;
        self.world.absorb(&decision.commands);
        self.history.push(event.clone());
        assert!(
            self.decision(&event).is_none(),
            "second delivery of {event:?} was applied"
        );
        true
    }

    fn next_id(&mut self) -> String {
        self.ids += 1;
        format!("m{}", self.ids)
    }

    /// One step of the simulation driven by `choice`. `chaos` allows
    /// permanent failures, control operations and late redeliveries.
    fn step(&mut self, choice: u16, chaos: bool) -> bool {
        self.now += time::Duration::milliseconds(7);
        let at = self.now;
        let c = choice as usize;
        if chaos && c.is_multiple_of(23) && !self.history.is_empty() {
            let old = self.history[c % self.history.len()].clone();
            assert!(
                self.decision(&old).is_none(),
                "late redelivery of {old:?} was applied"
            );
            return true;
        }
        if chaos && c % 29 == 1 {
            let id = self.next_id();
            let event = match c % 5 {
                0 => Event::SuspendRequested {
                    at,
                    id,
                    reason: None,
                },
                1 => Event::ResumeRequested {
                    at,
                    id,
                    reason: None,
                    budget: None,
                },
                2 => Event::RestartRequested {
                    at,
                    id,
                    input: None,
                },
                3 => Event::RedriveRequested {
                    at,
                    id,
                    workflow: None,
                },
                _ => Event::TerminateRequested {
                    at,
                    id,
                    reason: None,
                },
            };
            self.deliver(event);
            return true;
        }
        if chaos && c % 31 == 2 && !self.world.in_flight.is_empty() {
            let (key, attempt) = self.world.in_flight[c % self.world.in_flight.len()].clone();
            let id = self.next_id();
            self.deliver(Event::TaskHeartbeat {
                lease_ms: None,
                at,
                key,
                attempt,
                news: Some(AgentNews {
                    id,
                    kind: HeartbeatKind::AgentProgress,
                    message: Some("working".into()),
                    data: None,
                }),
            });
            return true;
        }
        if !self.world.in_flight.is_empty() && c % 5 != 4 {
            let (key, attempt) = self
                .world
                .in_flight
                .remove(c / 5 % self.world.in_flight.len());
            let step_index: usize = key.step.as_str()[1..].parse().unwrap_or(0);
            // Outside chaos, never fail a task's last attempt.
            let last_attempt = attempt >= self.max_attempts[step_index];
            let outcome = if !chaos && last_attempt { 0 } else { c % 5 };
            let event = match outcome {
                0 | 1 => Event::TaskCompleted {
                    at,
                    key,
                    attempt,
                    output: json!(attempt),
                    custom_status: None,
                    usage: None,
                },
                2 if chaos && c.is_multiple_of(3) => Event::TaskFailed {
                    at,
                    key,
                    attempt,
                    error: TaskError {
                        message: "fatal".into(),
                        retryable: false,
                    },
                    usage: None,
                },
                _ => Event::TaskFailed {
                    at,
                    key,
                    attempt,
                    error: TaskError {
                        message: "flaky".into(),
                        retryable: true,
                    },
                    usage: None,
                },
            };
            self.deliver(event);
            return true;
        }
        if let Some(timer) = self
            .world
            .timers
            .iter()
            .nth(c % self.world.timers.len().max(1))
            .cloned()
        {
            self.world.timers.remove(&timer);
            self.deliver(Event::TimerFired { at, timer });
            return true;
        }
        // Nothing else moves: answer whatever wait is pending.
        let waiting: Vec<String> = self
            .state
            .steps
            .iter()
            .filter(|(_, s)| s.status == legato_engine::StepStatus::Waiting)
            .map(|(id, _)| id.as_str().replace('s', "ev"))
            .collect();
        if let Some(name) = waiting.first() {
            let id = self.next_id();
            let name = EventName::parse(name.clone()).unwrap();
            self.deliver(Event::EventRaised {
                at,
                id,
                name,
                data: json!({"ok": true}),
            });
            return true;
        }
        if self.state.status == RuntimeStatus::Suspended {
            let id = self.next_id();
            self.deliver(Event::ResumeRequested {
                at,
                id,
                reason: None,
                budget: None,
            });
            return true;
        }
        !self.world.in_flight.is_empty()
    }
}

fn prop_assert_eq_unchecked(a: &InstanceState, b: &InstanceState) {
    assert_eq!(a, b, "an ignored event changed the state");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn replaying_history_rebuilds_the_state(specs in dag(), choices in proptest::collection::vec(any::<u16>(), 1..300)) {
        let mut run = Run::new(&specs);
        for c in choices {
            if !run.step(c, true) {
                break;
            }
        }
        let rebuilt = replay(run.state.id.clone(), &run.history);
        prop_assert_eq!(&rebuilt, &run.state);
        // Every progress event has its own position, one more than the
        // last, through restarts, suspensions and agents' news.
        let expected: Vec<u64> = (1..=run.world.positions.len() as u64).collect();
        prop_assert_eq!(&run.world.positions, &expected);
        prop_assert_eq!(run.state.position, expected.len() as u64);
    }

    #[test]
    fn every_dag_completes_with_each_attempt_dispatched_once(specs in dag(), choices in proptest::collection::vec(any::<u16>(), 400)) {
        let mut run = Run::new(&specs);
        // Bounded: a DAG of at most 7 steps with 4 items and 3 attempts each
        // needs far fewer than 400 + 1000 moves.
        let mut moves = choices.into_iter().chain(std::iter::repeat_n(0u16, 1000));
        while run.state.status == RuntimeStatus::Running {
            let Some(c) = moves.next() else { break };
            run.step(c, false);
        }
        prop_assert_eq!(run.state.status, RuntimeStatus::Completed, "{:?}", run.state.error);
        for ((key, attempt), count) in &run.world.dispatches {
            prop_assert_eq!(*count, 1, "{} attempt {} dispatched {} times", key, attempt, count);
        }
        for (i, spec) in specs.iter().enumerate() {
            if let Some((_, max_parallel)) = spec.for_each {
                let seen = run.world.max_in_flight.get(&format!("s{i}")).copied().unwrap_or(0);
                prop_assert!(seen <= max_parallel as usize, "s{} had {} in flight, max_parallel {}", i, seen, max_parallel);
            }
        }
    }
}
