//! The soak's checks, read through the gateway once the faults stop: every
//! instance completed with the right output, each of its tasks' results
//! was recorded exactly once, and no dead letter was parked.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Soak;

/// Tasks an instance of the soak workflow runs: a, b, three items, two
/// rounds of a loop's two steps, one race's winner, the child run, join.
const TASKS: usize = 12;
/// Tasks of the approval workflow's instances: before and after.
const APPROVAL_TASKS: usize = 2;

/// An instance the soak started and what it should have done: output 3,
/// each of its tasks' results recorded once.
pub(super) struct Expected {
    pub id: String,
    pub workflow: &'static str,
    tasks: usize,
    /// It ran a child workflow (`<id>::kid.a1`).
    child: bool,
}

impl Expected {
    /// An instance of the soak workflow.
    pub fn soak(id: String) -> Self {
        Self {
            id,
            workflow: "soak",
            tasks: TASKS,
            child: true,
        }
    }

    /// An instance of the approval workflow (a wait for an event and a
    /// timer side by side).
    pub fn approval(id: String) -> Self {
        Self {
            id,
            workflow: super::upgrade::APPROVAL_WORKFLOW,
            tasks: APPROVAL_TASKS,
            child: false,
        }
    }
}
/// How long dead letters are looked for after the last instance finished
/// (the keeper parks what reaches a dead-letter queue within moments).
const DEAD_LETTER_SETTLE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Verdict {
    instances: usize,
    completed: usize,
    results_expected: usize,
    results_once: usize,
    listed: usize,
    problems: Vec<String>,
    dead_letters: Vec<String>,
}

impl Verdict {
    pub(super) fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    pub(super) fn passed(&self) -> bool {
        self.problems.is_empty() && self.dead_letters.is_empty()
    }

    pub(super) fn print(&self) {
        println!(
            "  {:<36} {:>6}/{}",
            "instances completed", self.completed, self.instances
        );
        println!(
            "  {:<36} {:>6}/{}",
            "task results recorded exactly once", self.results_once, self.results_expected
        );
        println!(
            "  {:<36} {:>6}/{}",
            "instances listed by GET /instances", self.listed, self.instances
        );
        println!("  {:<36} {:>6}", "dead letters", self.dead_letters.len());
        for problem in self.problems.iter().take(20) {
            println!("  problem: {problem}");
        }
        for letter in self.dead_letters.iter().take(20) {
            println!("  dead letter: {letter}");
        }
        println!("chaos: {}", if self.passed() { "PASSED" } else { "FAILED" });
    }
}

pub(super) async fn check(soak: &Soak, runs: &[Expected], limit: Duration) -> Verdict {
    let mut verdict = Verdict {
        instances: runs.len(),
        results_expected: runs.iter().map(|run| run.tasks).sum(),
        ..Verdict::default()
    };
    let deadline = Instant::now() + limit.max(Duration::from_secs(60));
    for run in runs {
        let id = &run.id;
        match finished(soak, id, deadline).await {
            Ok(status) => judge(&mut verdict, run, &status),
            Err(problem) => verdict.problems.push(problem),
        }
        if !run.child {
            continue;
        }
        // Its child run: started once, its one task's result recorded once.
        let child = format!("{id}::kid.a1");
        match finished(soak, &child, deadline).await {
            Ok(status) => {
                let results = task_results(&status);
                if status["runtimeStatus"] != "Completed" || results.len() != 1 {
                    verdict.problems.push(format!(
                        "{child} ended {} with {} task results",
                        status["runtimeStatus"],
                        results.len()
                    ));
                }
            }
            Err(problem) => verdict.problems.push(problem),
        }
    }
    match listed(soak, runs).await {
        Ok(n) => verdict.listed = n,
        Err(e) => verdict.problems.push(format!("instances not listed: {e}")),
    }
    if verdict.listed != runs.len() {
        verdict.problems.push(format!(
            "GET /instances lists {} of the {} instances",
            verdict.listed,
            runs.len()
        ));
    }
    tokio::time::sleep(DEAD_LETTER_SETTLE).await;
    match soak
        .send(
            reqwest::Method::GET,
            "/api/v1/dead-letters?top=1000",
            &Value::Null,
        )
        .await
    {
        Ok(page) => {
            for letter in page["items"].as_array().into_iter().flatten() {
                verdict.dead_letters.push(format!(
                    "{}/{} {}: {}",
                    letter["topic"], letter["group"], letter["messageId"], letter["reason"]
                ));
            }
        }
        Err(e) => verdict.problems.push(format!("dead letters not read: {e}")),
    }
    verdict
}

/// How many of the run's instances the listing shows, workflow by
/// workflow, page by page.
async fn listed(soak: &Soak, runs: &[Expected]) -> anyhow::Result<usize> {
    let wanted: BTreeSet<&str> = runs.iter().map(|run| run.id.as_str()).collect();
    let workflows: BTreeSet<&str> = runs.iter().map(|run| run.workflow).collect();
    let mut seen = BTreeSet::new();
    for workflow in workflows {
        let mut token: Option<String> = None;
        // Bounded: each page holds up to 1,000 and the run has `runs.len()`.
        for _ in 0..(runs.len() / 100 + 10) {
            let mut path = format!("/api/v1/instances?workflow={workflow}&top=1000");
            if let Some(token) = &token {
                path.push_str(&format!("&continuationToken={token}"));
            }
            let page = soak.send(reqwest::Method::GET, &path, &Value::Null).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(id) = item["id"].as_str().filter(|id| wanted.contains(id)) {
                    seen.insert(id.to_owned());
                }
            }
            match page["continuationToken"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
    }
    Ok(seen.len())
}

/// The instance with its history once it is terminal.
async fn finished(soak: &Soak, id: &str, deadline: Instant) -> Result<Value, String> {
    let path = format!("/api/v1/instances/{id}?history=true");
    loop {
        let status = soak
            .send(reqwest::Method::GET, &path, &Value::Null)
            .await
            .map_err(|e| format!("{id}: {e}"))?;
        let runtime = status["runtimeStatus"].as_str().unwrap_or_default();
        if matches!(runtime, "Completed" | "Failed" | "Terminated") {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("{id} still {runtime} at the time limit"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn judge(verdict: &mut Verdict, run: &Expected, status: &Value) {
    let (id, tasks) = (&run.id, run.tasks);
    if status["runtimeStatus"] != "Completed" || status["output"] != 3 {
        verdict.problems.push(format!(
            "{id} ended {} with output {} ({})",
            status["runtimeStatus"], status["output"], status["error"]
        ));
        return;
    }
    verdict.completed += 1;
    let results = task_results(status);
    let distinct: BTreeSet<&String> = results.iter().collect();
    if results.len() == tasks && distinct.len() == tasks {
        verdict.results_once += tasks;
    } else {
        verdict.results_once += distinct.len().min(tasks);
        verdict.problems.push(format!(
            "{id}: {} results recorded for {} tasks",
            results.len(),
            distinct.len()
        ));
    }
}

/// The task results an instance recorded, by task key.
fn task_results(status: &Value) -> Vec<String> {
    status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["event"]["type"] == "task_completed")
        .map(|row| row["event"]["key"].to_string())
        .collect()
}
