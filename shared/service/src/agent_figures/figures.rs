//! What one replica reports about one agent, and the sum of every
//! replica's reports.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Durations;

/// Most workers one report names, the latest first.
pub const MAX_WORKERS_REPORTED: usize = 50;

/// One replica's figures on one agent, as of when it wrote them; the
/// counts are of the last [`super::WINDOW`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    #[serde(default)]
    pub durations: Durations,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerSeen>,
}

/// A pull worker and when it last asked for this agent's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSeen {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub last_poll: OffsetDateTime,
}

/// Every replica's figures on one agent, added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub durations: Durations,
    /// The latest first, each worker once (at most [`MAX_WORKERS_REPORTED`]).
    pub workers: Vec<WorkerSeen>,
}

impl Figures {
    pub fn sum<'a>(reports: impl IntoIterator<Item = &'a AgentReport>) -> Self {
        let mut sum = Self::default();
        let mut workers: HashMap<&str, OffsetDateTime> = HashMap::new();
        for report in reports {
            sum.running += report.running;
            sum.completed += report.completed;
            sum.failed += report.failed;
            sum.durations.add(&report.durations);
            for worker in &report.workers {
                let last = workers.entry(&worker.id).or_insert(worker.last_poll);
                *last = (*last).max(worker.last_poll);
            }
        }
        sum.workers = latest_first(
            workers
                .into_iter()
                .map(|(id, last_poll)| WorkerSeen {
                    id: id.to_owned(),
                    last_poll,
                })
                .collect(),
        );
        sum
    }

    /// The median duration of the tasks that ended in the window.
    pub fn p50_ms(&self) -> Option<f64> {
        self.durations.median_ms()
    }
}

pub(super) fn latest_first(mut workers: Vec<WorkerSeen>) -> Vec<WorkerSeen> {
    workers.sort_by(|a, b| b.last_poll.cmp(&a.last_poll).then(a.id.cmp(&b.id)));
    workers.truncate(MAX_WORKERS_REPORTED);
    workers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;

    #[test]
    fn replicas_add_up_and_a_worker_seen_by_two_counts_once_at_its_latest() {
        let at = datetime!(2026-12-07 10:00 UTC);
        let worker = |id: &str, secs: i64| WorkerSeen {
            id: id.into(),
            last_poll: at + time::Duration::seconds(secs),
        };
        let mut durations = Durations::default();
        durations.record(Duration::from_millis(10));
        let one = AgentReport {
            running: 2,
            completed: 5,
            failed: 1,
            durations: durations.clone(),
            workers: vec![worker("w1", 3), worker("w2", 1)],
        };
        let two = AgentReport {
            running: 1,
            completed: 4,
            failed: 0,
            durations,
            workers: vec![worker("w1", 7)],
        };
        let sum = Figures::sum([&one, &two]);
        assert_eq!((sum.running, sum.completed, sum.failed), (3, 9, 1));
        assert_eq!(sum.durations.count(), 2);
        assert_eq!(sum.workers, vec![worker("w1", 7), worker("w2", 1)]);
        assert_eq!(Figures::sum([]).p50_ms(), None);
    }
}
