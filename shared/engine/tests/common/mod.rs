//! A driver for engine tests: feeds events with a fake clock and keeps the
//! history and the claimed message ids (as the store does), never sleeping.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use legato_contracts::{
    EventName, InstanceId, StepId, TaskDispatched, TaskError, TaskKey, TaskRole,
};
use legato_engine::{Command, Decision, Event, InstanceState, Outcome, TimerKey, decide};
use serde_json::Value;
use time::OffsetDateTime;

pub struct Harness {
    pub state: InstanceState,
    pub now: OffsetDateTime,
    pub history: Vec<Event>,
    pub commands: Vec<Command>,
    /// Message ids claimed by applied decisions (see `Decision::claims`).
    pub claimed: BTreeSet<String>,
    next_id: u32,
}

/// The run every harness instance starts as.
pub const RUN: u64 = 0x5eed;

pub fn key(step: &str, item: Option<u32>) -> TaskKey {
    TaskKey {
        run: RUN,
        execution: 0,
        step: StepId::parse(step).unwrap(),
        item,
        iteration: None,
        role: TaskRole::Action,
    }
}

pub fn comp_key(step: &str) -> TaskKey {
    TaskKey {
        run: RUN,
        execution: 0,
        step: StepId::parse(step).unwrap(),
        item: None,
        iteration: None,
        role: TaskRole::Compensation,
    }
}

impl Harness {
    pub fn start(yaml: &str, input: Value) -> Self {
        let workflow = Arc::new(legato_workflow::parse(yaml).unwrap());
        let id = InstanceId::parse("inst-1").unwrap();
        let mut h = Self {
            state: InstanceState::new(id.clone()),
            now: time::macros::datetime!(2026-11-26 12:00 UTC),
            history: Vec::new(),
            commands: Vec::new(),
            claimed: BTreeSet::new(),
            next_id: 0,
        };
        let at = h.now;
        h.send(Event::Started {
            at,
            instance: id,
            workflow,
            input,
            tenant: None,
            run: RUN,
            created_at: None,
            parent: None,
            budget: None,
            serves: None,
        });
        h
    }

    /// Applies an event; returns the decision. Commands of applied events
    /// accumulate in `commands` (cleared with `take`). A decision claiming
    /// an id claimed before is ignored, as the store refuses its commit.
    pub fn send(&mut self, event: Event) -> Decision {
        let mut decision = decide(&self.state, &event);
        if let Some(id) = decision.claimed_before(&self.claimed) {
            decision = Decision {
                outcome: Outcome::Ignored(format!("message {id} was already applied")),
                state: self.state.clone(),
                commands: Vec::new(),
                claims: Vec::new(),
            };
        }
        if decision.applied() {
            self.claimed.extend(decision.claims.iter().cloned());
            self.history.push(event);
            self.state = decision.state.clone();
            self.commands.extend(decision.commands.clone());
        } else {
            assert!(
                decision.commands.is_empty(),
                "an ignored event must not produce commands"
            );
            assert_eq!(
                decision.state, self.state,
                "an ignored event must not change state"
            );
        }
        decision
    }

    pub fn advance(&mut self, ms: i64) {
        self.now += time::Duration::milliseconds(ms);
    }

    pub fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    pub fn dispatched(&mut self) -> Vec<TaskDispatched> {
        self.take()
            .into_iter()
            .filter_map(|c| match c {
                Command::DispatchTask(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    pub fn complete(&mut self, key: TaskKey, attempt: u32, output: Value) -> Decision {
        let at = self.now;
        self.send(Event::TaskCompleted {
            at,
            key,
            attempt,
            output,
            custom_status: None,
            usage: None,
        })
    }

    pub fn fail(&mut self, key: TaskKey, attempt: u32, retryable: bool) -> Decision {
        let at = self.now;
        let error = TaskError {
            message: format!("boom {attempt}"),
            retryable,
        };
        self.send(Event::TaskFailed {
            at,
            key,
            attempt,
            error,
            usage: None,
        })
    }

    pub fn fire(&mut self, timer: TimerKey) -> Decision {
        let at = self.now;
        self.send(Event::TimerFired { at, timer })
    }

    pub fn raise(&mut self, name: &str, data: Value) -> Decision {
        self.next_id += 1;
        let at = self.now;
        let id = format!("msg-{}", self.next_id);
        self.send(Event::EventRaised {
            at,
            id,
            name: EventName::parse(name).unwrap(),
            data,
        })
    }
}

pub fn scheduled(commands: &[Command]) -> Vec<(TimerKey, OffsetDateTime)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ScheduleTimer { timer, fire_at } => Some((timer.clone(), *fire_at)),
            _ => None,
        })
        .collect()
}
