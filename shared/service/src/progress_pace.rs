//! Agent progress from one attempt, paced. An agent may report progress as
//! often as it likes, but every report sent on costs the instance a commit
//! (and a row of its history), so one attempt's progress goes on at most
//! once per turn (half a second, or a quarter of its lease if shorter): a
//! report that comes sooner waits for its turn, and one that comes while
//! another waits replaces it, so watchers see the latest. Used where
//! reports leave for the orchestrator: the gateway (pull and push agents)
//! and the built-in agents' runtime. Decided here with the time passed in;
//! the caller sends and schedules.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use legato_contracts::{InstanceId, TaskHeartbeat};
use tokio::time::Instant;

const TURN: Duration = Duration::from_millis(500);
/// Lanes kept before the ones quiet for a minute are forgotten.
const LANES_KEPT: usize = 4_096;

struct Lane {
    last_sent: Instant,
    waiting: Option<(InstanceId, TaskHeartbeat)>,
}

/// What to do with a report now.
#[derive(Debug, PartialEq)]
pub enum Turn {
    /// Send it (here it is back).
    Now(TaskHeartbeat),
    /// It waits; when `first`, nothing was waiting before it, so the
    /// caller sends what waits (see [`ProgressPace::due`]) after `wait`.
    Later { wait: Duration, first: bool },
}

#[derive(Default)]
pub struct ProgressPace(Mutex<HashMap<String, Lane>>);

impl ProgressPace {
    fn lanes(&self) -> MutexGuard<'_, HashMap<String, Lane>> {
        // A few map operations per call: a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The turn of `beat`, a report of `attempt` under a lease of
    /// `lease_ms`, arriving `now`.
    pub fn offer(
        &self,
        attempt: &str,
        instance: &InstanceId,
        beat: TaskHeartbeat,
        lease_ms: u64,
        now: Instant,
    ) -> Turn {
        let turn = TURN.min(Duration::from_millis(lease_ms / 4));
        let mut lanes = self.lanes();
        if lanes.len() >= LANES_KEPT {
            lanes.retain(|_, lane| {
                lane.waiting.is_some()
                    || now.duration_since(lane.last_sent) < Duration::from_secs(60)
            });
        }
        match lanes.get_mut(attempt) {
            Some(lane) if now.duration_since(lane.last_sent) < turn => {
                let first = lane.waiting.is_none();
                lane.waiting = Some((instance.clone(), beat));
                let wait = turn.saturating_sub(now.duration_since(lane.last_sent));
                Turn::Later { wait, first }
            }
            Some(lane) => {
                lane.last_sent = now;
                lane.waiting = None;
                Turn::Now(beat)
            }
            None => {
                let lane = Lane {
                    last_sent: now,
                    waiting: None,
                };
                lanes.insert(attempt.to_owned(), lane);
                Turn::Now(beat)
            }
        }
    }

    /// The report waiting for its turn, if one still is; its turn starts
    /// `now`.
    pub fn due(&self, attempt: &str, now: Instant) -> Option<(InstanceId, TaskHeartbeat)> {
        let mut lanes = self.lanes();
        let lane = lanes.get_mut(attempt)?;
        let waiting = lane.waiting.take()?;
        lane.last_sent = now;
        Some(waiting)
    }

    /// The attempt ended: what waits is no longer news.
    pub fn forget(&self, attempt: &str) {
        self.lanes().remove(attempt);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use legato_contracts::{HeartbeatKind, StepId, TaskKey, TaskRole};

    use super::*;

    fn beat(message: &str) -> TaskHeartbeat {
        TaskHeartbeat {
            key: TaskKey {
                run: 1,
                execution: 0,
                step: StepId::parse("s").unwrap(),
                item: None,
                iteration: None,
                role: TaskRole::Action,
            },
            attempt: 1,
            progress: None,
            kind: Some(HeartbeatKind::AgentProgress),
            message: Some(message.into()),
            leased: false,
            lease_ms: Some(60_000),
        }
    }

    #[test]
    fn reports_inside_a_turn_wait_and_only_the_latest_goes() {
        let pace = ProgressPace::default();
        let instance = InstanceId::parse("i-1").unwrap();
        let t0 = Instant::now();
        let offer = |m: &str, ms: u64| {
            pace.offer(
                "a",
                &instance,
                beat(m),
                60_000,
                t0 + Duration::from_millis(ms),
            )
        };
        assert!(matches!(offer("1", 0), Turn::Now(b) if b.message.as_deref() == Some("1")));
        assert_eq!(
            offer("2", 100),
            Turn::Later {
                wait: Duration::from_millis(400),
                first: true
            }
        );
        assert_eq!(
            offer("3", 200),
            Turn::Later {
                wait: Duration::from_millis(300),
                first: false
            }
        );
        let (_, due) = pace.due("a", t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(
            due.message.as_deref(),
            Some("3"),
            "the latest replaced the others"
        );
        assert!(pace.due("a", t0 + Duration::from_millis(500)).is_none());
        assert!(matches!(offer("4", 700), Turn::Later { first: true, .. }));
        assert!(
            matches!(offer("5", 1_000), Turn::Now(_)),
            "a turn after the last sent"
        );
        pace.forget("a");
        assert!(pace.due("a", t0 + Duration::from_millis(1_100)).is_none());
    }

    #[test]
    fn a_short_lease_shortens_the_turn() {
        let pace = ProgressPace::default();
        let instance = InstanceId::parse("i-1").unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            pace.offer("a", &instance, beat("1"), 1_000, t0),
            Turn::Now(_)
        ));
        assert_eq!(
            pace.offer(
                "a",
                &instance,
                beat("2"),
                1_000,
                t0 + Duration::from_millis(100)
            ),
            Turn::Later {
                wait: Duration::from_millis(150),
                first: true
            }
        );
    }
}
