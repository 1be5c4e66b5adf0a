//! `legato watch`: follows an instance until it ends. The progress stream
//! says when something happened; the instance's status says what the steps
//! look like now, and is what is drawn: on a terminal, one live line per
//! step (a spinner while it runs, a bar for a `for_each`'s items), else one
//! printed line per change; with `--output json`, every stream event as a
//! line of JSON.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use legato_contracts::RuntimeStatus;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Gateway, Output, segment};
use crate::sse::Events;

/// Redraws from the status at most this often while events pour in.
const REFRESH: Duration = Duration::from_millis(200);
/// How long the stream may be quiet before the status is read instead.
const QUIET: Duration = Duration::from_secs(10);
/// How often a scheduled run not yet started is looked for.
const SCHEDULED_RUN_POLL: Duration = Duration::from_millis(250);
/// How often a dropped stream (a restarting notifier) is reopened.
const RECONNECTS: u32 = 20;

/// Follows `id` until it ends and returns how it ended.
pub async fn watch(gateway: &Gateway, id: &str, output: Output) -> anyhow::Result<RuntimeStatus> {
    let mut view = View::new(output);
    let status_path = format!("/api/v1/instances/{}", segment(id));
    wait_for_scheduled_run(gateway, id, &status_path).await?;
    let mut reconnects = 0;
    // The last progress position seen: a reopened stream resumes after it,
    // so `--output json` prints each event once.
    let mut seen = None;
    loop {
        let mut events = Events::new(gateway.stream(id, seen).await?);
        let mut drawn_at: Option<Instant> = None;
        loop {
            let frame = match tokio::time::timeout(QUIET, events.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(_)) | None) => break,
                // Nothing for a while: the instance may have ended with
                // the news of it lost on the way; its status says.
                Err(_) => {
                    let instance = gateway.call(Method::GET, &status_path, None).await?;
                    view.draw(&instance);
                    if let Some(status) = terminal(&instance) {
                        view.finish(&instance);
                        return Ok(status);
                    }
                    continue;
                }
            };
            seen = frame.position().or(seen);
            if output == Output::Json {
                println!("{}", json!({"event": frame.event, "data": frame.data}));
            }
            if let Some(status) = frame.final_status() {
                let instance = gateway.call(Method::GET, &status_path, None).await?;
                view.draw(&instance);
                view.finish(&instance);
                return Ok(status);
            }
            if drawn_at.is_none_or(|at| at.elapsed() >= REFRESH) {
                view.draw(&gateway.call(Method::GET, &status_path, None).await?);
                drawn_at = Some(Instant::now());
            }
        }
        // The stream ended without the instance (a notifier restarting or
        // draining): read where it is and listen again.
        let instance = gateway.call(Method::GET, &status_path, None).await?;
        view.draw(&instance);
        if let Some(status) = terminal(&instance) {
            view.finish(&instance);
            return Ok(status);
        }
        reconnects += 1;
        anyhow::ensure!(
            reconnects <= RECONNECTS,
            "the progress stream of {id} keeps closing; giving up after {RECONNECTS} reconnects"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn terminal(instance: &Value) -> Option<RuntimeStatus> {
    instance["runtimeStatus"]
        .as_str()
        .and_then(RuntimeStatus::parse)
        .filter(|s| s.is_terminal())
}

/// A triggered, backfilled or buffered run's id is handed out before its
/// instance exists (the scheduler starts it at its next poll, or when the
/// running ones end): while the instance is not there and its schedule
/// still names it as waiting, wait. Anything else that is not there is
/// for the stream to report.
async fn wait_for_scheduled_run(
    gateway: &Gateway,
    id: &str,
    status_path: &str,
) -> anyhow::Result<()> {
    // Scheduled runs are `<schedule>:<time>`.
    let Some((schedule, _)) = id.split_once(':') else {
        return Ok(());
    };
    let schedule_path = format!("/api/v1/schedules/{}", segment(schedule));
    let mut told = false;
    loop {
        if gateway.get_if_found(status_path).await?.is_some() {
            return Ok(());
        }
        let waiting = gateway
            .get_if_found(&schedule_path)
            .await?
            .is_some_and(|s| {
                s["waitingRuns"]
                    .as_array()
                    .is_some_and(|runs| runs.iter().any(|r| r == id))
            });
        if !waiting {
            // Started meanwhile, or never coming: look once more.
            return Ok(());
        }
        if !told {
            eprintln!("{id} waits for schedule {schedule} to start it");
            told = true;
        }
        tokio::time::sleep(SCHEDULED_RUN_POLL).await;
    }
}

/// What one step looks like, to notice changes.
#[derive(Debug, Clone, PartialEq)]
struct StepLine {
    status: String,
    attempts: u64,
    items: Option<(u64, u64, u64)>,
    /// A loop's iteration, or the one a step inside it is in: a step run
    /// again in the next iteration is a change.
    iteration: Option<u64>,
}

impl StepLine {
    fn of(step: &Value) -> Self {
        let items = &step["items"];
        Self {
            status: step["status"].as_str().unwrap_or("?").to_owned(),
            attempts: step["attempts"].as_u64().unwrap_or(0),
            items: items.is_object().then(|| {
                let n = |k: &str| items[k].as_u64().unwrap_or(0);
                (n("completed"), n("failed"), n("total"))
            }),
            iteration: step["iteration"].as_u64(),
        }
    }

    fn finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Completed" | "Skipped" | "Failed" | "Cancelled"
        )
    }

    fn describe(&self) -> String {
        let mut text = self.status.clone();
        // Attempts are summed over a for_each's items: more than one per
        // item means retries.
        let mut tasks = 1;
        if let Some((done, failed, total)) = self.items {
            text.push_str(&format!(" {done}/{total} items"));
            if failed > 0 {
                text.push_str(&format!(", {failed} failed"));
            }
            tasks = total.max(1);
        }
        let retries = self.attempts.saturating_sub(tasks);
        if retries > 0 {
            text.push_str(&format!(" ({retries} retries)"));
        }
        if let Some(iteration) = self.iteration {
            text.push_str(&format!(", iteration {iteration}"));
        }
        text
    }
}

enum View {
    /// Live lines on a terminal.
    Live {
        bars: MultiProgress,
        steps: HashMap<String, (ProgressBar, StepLine)>,
    },
    /// A line per change, for logs and pipes.
    Lines { steps: HashMap<String, StepLine> },
    /// `--output json`: the events themselves are printed.
    Quiet,
}

impl View {
    fn new(output: Output) -> Self {
        match output {
            Output::Json => Self::Quiet,
            Output::Text if std::io::stdout().is_terminal() => Self::Live {
                bars: MultiProgress::new(),
                steps: HashMap::new(),
            },
            Output::Text => Self::Lines {
                steps: HashMap::new(),
            },
        }
    }

    fn draw(&mut self, instance: &Value) {
        let steps = instance["steps"].as_array().map_or(&[][..], Vec::as_slice);
        match self {
            Self::Quiet => {}
            Self::Lines { steps: seen } => {
                for step in steps {
                    let id = step["id"].as_str().unwrap_or("?");
                    let line = StepLine::of(step);
                    if line.status != "Pending" && seen.get(id) != Some(&line) {
                        println!("{id:<20} {}", line.describe());
                        seen.insert(id.to_owned(), line);
                    }
                }
            }
            Self::Live { bars, steps: shown } => {
                for step in steps {
                    let id = step["id"].as_str().unwrap_or("?");
                    let line = StepLine::of(step);
                    let (bar, last) = shown.entry(id.to_owned()).or_insert_with(|| {
                        let bar = bars.add(new_bar(&line));
                        bar.set_prefix(format!("{id:<20}"));
                        (bar, line.clone())
                    });
                    if let Some((done, failed, total)) = line.items {
                        bar.set_length(total);
                        bar.set_position(done + failed);
                    }
                    bar.set_message(line.describe());
                    if line.finished() && !bar.is_finished() {
                        bar.finish();
                    } else if !line.finished() && line.status != "Pending" {
                        bar.enable_steady_tick(Duration::from_millis(120));
                    }
                    *last = line;
                }
            }
        }
    }

    fn finish(&mut self, instance: &Value) {
        if let Self::Live { steps, .. } = self {
            for (bar, _) in steps.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
        if matches!(self, Self::Quiet) {
            return;
        }
        let id = instance["id"].as_str().unwrap_or("?");
        let status = instance["runtimeStatus"].as_str().unwrap_or("?");
        println!("instance {id}: {status}");
        if let Some(error) = instance["error"].as_str() {
            println!("error: {error}");
        }
        if let Some(output) = instance.get("output").filter(|o| !o.is_null()) {
            println!("output: {output}");
        }
    }
}

fn new_bar(line: &StepLine) -> ProgressBar {
    let style = if line.items.is_some() {
        ProgressStyle::with_template("{spinner} {prefix} [{bar:24}] {msg}")
    } else {
        ProgressStyle::with_template("{spinner} {prefix} {msg}")
    };
    let bar = ProgressBar::no_length();
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_line_says_status_items_and_retries() {
        let step = json!({"id": "work", "status": "Running", "attempts": 5,
            "items": {"total": 10, "completed": 3, "failed": 1, "running": 2}});
        let line = StepLine::of(&step);
        assert_eq!(line.describe(), "Running 3/10 items, 1 failed");
        let retried = StepLine::of(&json!({"status": "Running", "attempts": 3}));
        assert_eq!(retried.describe(), "Running (2 retries)");
        assert!(!line.finished());
        let done = StepLine::of(&json!({"status": "Completed", "attempts": 1}));
        assert_eq!(done.describe(), "Completed");
        assert!(done.finished());
        let looping = StepLine::of(&json!({"status": "Running", "attempts": 0, "iteration": 2}));
        assert_eq!(looping.describe(), "Running, iteration 2");
        let next = StepLine::of(&json!({"status": "Running", "attempts": 0, "iteration": 3}));
        assert_ne!(looping, next, "a new iteration is a change to show");
    }
}
