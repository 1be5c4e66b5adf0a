//! What one replica saw of agents' tasks, kept in memory and cut to the
//! window when reported. Callers pass the time in, so it is decided here
//! and tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;

use super::figures::{AgentReport, WorkerSeen, latest_first};
use super::{Durations, WINDOW};

/// Ended tasks are counted in slices of this many seconds, so the window
/// moves on in steps no coarser.
const SLICE_SECS: i64 = 10;
/// Workers remembered per agent (the latest ones).
const MAX_WORKERS_KEPT: usize = 1_000;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
}

#[derive(Debug, Default)]
struct Slice {
    start: i64,
    completed: u64,
    failed: u64,
    durations: Durations,
}

#[derive(Debug, Default)]
struct AgentTally {
    /// Attempts running here, with the end of their lease, if leased: a
    /// lease that lapses without a word means the task is not running here
    /// any more (its worker went, or reports through another replica).
    running: HashMap<String, Option<OffsetDateTime>>,
    slices: VecDeque<Slice>,
    workers: HashMap<String, OffsetDateTime>,
}

impl AgentTally {
    fn slice(&mut self, now: OffsetDateTime) -> &mut Slice {
        let start = now.unix_timestamp().div_euclid(SLICE_SECS);
        if self.slices.back().is_none_or(|s| s.start != start) {
            self.slices.push_back(Slice {
                start,
                ..Slice::default()
            });
        }
        let last = self.slices.len() - 1;
        &mut self.slices[last]
    }

    /// Forgets what is out of the window; true when nothing is left.
    fn prune(&mut self, now: OffsetDateTime) -> bool {
        let oldest = (now - WINDOW).unix_timestamp().div_euclid(SLICE_SECS);
        while self.slices.front().is_some_and(|s| s.start <= oldest) {
            self.slices.pop_front();
        }
        self.running
            .retain(|_, lease| lease.is_none_or(|until| until > now));
        self.workers.retain(|_, seen| *seen > now - WINDOW);
        self.running.is_empty() && self.slices.is_empty() && self.workers.is_empty()
    }

    fn report(&self) -> AgentReport {
        let mut report = AgentReport {
            running: self.running.len() as u64,
            ..AgentReport::default()
        };
        for slice in &self.slices {
            report.completed += slice.completed;
            report.failed += slice.failed;
            report.durations.add(&slice.durations);
        }
        report.workers = latest_first(
            self.workers
                .iter()
                .map(|(id, at)| WorkerSeen {
                    id: id.clone(),
                    last_poll: *at,
                })
                .collect(),
        );
        report
    }
}

/// Shared by every task path of one replica.
#[derive(Debug, Default)]
pub struct Tally(Mutex<HashMap<String, AgentTally>>);

impl Tally {
    fn agents(&self) -> MutexGuard<'_, HashMap<String, AgentTally>> {
        // A panic elsewhere while counting leaves counts worth keeping.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `attempt` of `agent` started here, held until `lease_until` unless
    /// renewed (or until it ends, when not leased).
    pub fn started(&self, agent: &str, attempt: &str, lease_until: Option<OffsetDateTime>) {
        self.agents()
            .entry(agent.to_owned())
            .or_default()
            .running
            .insert(attempt.to_owned(), lease_until);
    }

    /// `attempt` showed life here: its lease runs to `lease_until`. One
    /// this replica did not start (its worker came through another) counts
    /// from now on.
    pub fn renewed(&self, agent: &str, attempt: &str, lease_until: OffsetDateTime) {
        self.started(agent, attempt, Some(lease_until));
    }

    /// `attempt` ended after `took` (when known).
    pub fn ended(
        &self,
        agent: &str,
        attempt: &str,
        outcome: Outcome,
        took: Option<Duration>,
        now: OffsetDateTime,
    ) {
        let mut agents = self.agents();
        let tally = agents.entry(agent.to_owned()).or_default();
        tally.running.remove(attempt);
        let slice = tally.slice(now);
        match outcome {
            Outcome::Completed => slice.completed += 1,
            Outcome::Failed => slice.failed += 1,
        }
        if let Some(took) = took {
            slice.durations.record(took);
        }
    }

    /// `attempt` stopped running here without an end to count (given back
    /// to the queue, or found no longer wanted).
    pub fn dropped(&self, agent: &str, attempt: &str) {
        if let Some(tally) = self.agents().get_mut(agent) {
            tally.running.remove(attempt);
        }
    }

    /// `worker` asked for `agent`'s tasks.
    pub fn polled(&self, agent: &str, worker: &str, now: OffsetDateTime) {
        let mut agents = self.agents();
        let workers = &mut agents.entry(agent.to_owned()).or_default().workers;
        if workers.len() >= MAX_WORKERS_KEPT && !workers.contains_key(worker) {
            let oldest = workers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                workers.remove(&oldest);
            }
        }
        // Milliseconds are as fine as a poll's time is worth telling.
        let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
        workers.insert(worker.to_owned(), now);
    }

    /// One report per agent with anything in the window, forgetting the
    /// rest.
    pub fn reports(&self, now: OffsetDateTime) -> Vec<(String, AgentReport)> {
        let mut agents = self.agents();
        agents.retain(|_, tally| !tally.prune(now));
        let mut reports: Vec<_> = agents
            .iter()
            .map(|(agent, tally)| (agent.clone(), tally.report()))
            .collect();
        reports.sort_by(|a, b| a.0.cmp(&b.0));
        reports
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const AT: OffsetDateTime = datetime!(2026-12-07 10:00:05 UTC);

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    #[test]
    fn running_attempts_end_and_ended_ones_count_for_five_minutes() {
        let tally = Tally::default();
        tally.started("echo", "a1", None);
        tally.started("echo", "a2", None);
        tally.ended(
            "echo",
            "a1",
            Outcome::Completed,
            Some(Duration::from_millis(4)),
            AT,
        );
        tally.ended(
            "echo",
            "a3",
            Outcome::Failed,
            Some(Duration::from_millis(8)),
            AT,
        );
        let reports = tally.reports(AT + secs(1));
        assert_eq!(reports.len(), 1);
        let (agent, report) = &reports[0];
        assert_eq!(agent, "echo");
        assert_eq!((report.running, report.completed, report.failed), (1, 1, 1));
        assert_eq!(report.durations.count(), 2);

        let later = tally.reports(AT + secs(4 * 60 + 50));
        assert_eq!(later[0].1.completed, 1, "still in the window");
        tally.dropped("echo", "a2");
        assert!(tally.reports(AT + secs(5 * 60 + 10)).is_empty(), "all gone");
    }

    #[test]
    fn a_lease_that_lapses_stops_the_attempt_running_here_and_renewal_keeps_it() {
        let tally = Tally::default();
        tally.started("pull", "a1", Some(AT + secs(30)));
        tally.started("pull", "a2", Some(AT + secs(30)));
        tally.renewed("pull", "a2", AT + secs(90));
        tally.renewed("pull", "b1", AT + secs(90));
        let reports = tally.reports(AT + secs(60));
        assert_eq!(reports[0].1.running, 2);
    }

    #[test]
    fn workers_are_reported_latest_first_and_forgotten_after_the_window() {
        let tally = Tally::default();
        tally.polled("pull", "w1", AT);
        tally.polled("pull", "w2", AT + secs(2));
        tally.polled("pull", "w1", AT + secs(3));
        let report = &tally.reports(AT + secs(4))[0].1;
        let ids: Vec<_> = report.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
        assert_eq!(report.workers[0].last_poll, AT + secs(3));
        assert!(tally.reports(AT + secs(5 * 60 + 3)).is_empty());
    }

    #[test]
    fn a_report_goes_out_as_camel_case_json() {
        let tally = Tally::default();
        tally.polled("pull", "w1", AT);
        let body = serde_json::to_value(&tally.reports(AT)[0].1).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "running": 0, "completed": 0, "failed": 0, "durations": {},
                "workers": [{"id": "w1", "lastPoll": "2026-12-07T10:00:05Z"}]
            })
        );
    }
}
