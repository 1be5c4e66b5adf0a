//! `legato bench --agent pull`: the same workflow with its five tasks done
//! by pull workers over HTTP (the TypeScript SDK's echo worker, in
//! processes of their own on this machine) instead of the built-in echo
//! agent, run right after the built-in figures in the same stack, so what
//! the HTTP path adds per task reads off the two.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::client::{Outcome, drive};

const AGENT: &str = "bench-pull";
const WORKFLOW: &str = "bench-fan-out-pull";
/// Tasks one after the other on the workflow's longest path (four in
/// parallel, then one).
const CRITICAL_PATH: f64 = 2.0;

/// Where the worker script is unless `--agent-worker` says.
pub(super) const DEFAULT_WORKER: &str = "sdk/typescript/dist/bench/echo-worker.js";

/// The built-in run's figures, to print beside the pull run's.
pub(super) struct Builtin<'a> {
    pub outcome: &'a Outcome,
    pub elapsed: Duration,
}

async fn put(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<()> {
    let response = client.put(&url).json(&body).send().await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "PUT {url}: {status} {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Starts `workers` worker processes of `concurrency` tasks each and waits
/// until each says it is polling.
async fn spawn_workers(
    script: &Path,
    base: &str,
    workers: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Child>> {
    anyhow::ensure!(
        script.is_file(),
        "no pull worker at {}: build the TypeScript SDK (cd sdk/typescript && npm ci && npm run build) or name one with --agent-worker",
        script.display()
    );
    let mut children = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut child = Command::new("node")
            .arg(script)
            .args([base, AGENT, &concurrency.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("node {}: {e}", script.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("the worker's stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        anyhow::ensure!(
            matches!(ready, Ok(Ok(Some(ref line))) if line == "READY"),
            "the pull worker did not start: {ready:?}"
        );
        children.push(child);
    }
    Ok(children)
}

/// Runs the pull comparison on the stack at `base` and prints it beside
/// the built-in run.
pub(super) async fn compare_pull(
    client: &reqwest::Client,
    base: &str,
    script: &Path,
    workers: usize,
    instances: usize,
    concurrency: usize,
    builtin: Builtin<'_>,
) -> anyhow::Result<()> {
    put(
        client,
        format!("{base}/api/v1/agents/{AGENT}"),
        json!({"kind": "pull", "description": "legato bench's echo worker"}),
    )
    .await?;
    put(
        client,
        format!("{base}/api/v1/workflows/{WORKFLOW}"),
        super::definition(WORKFLOW, AGENT),
    )
    .await?;
    // Enough slots that the workers never hold the stack back: every task
    // of every instance in flight at once.
    let per_worker = (concurrency * 4).div_ceil(workers.max(1)).max(1);
    let mut children = spawn_workers(script, base, workers, per_worker).await?;
    let warmup = concurrency.min(instances).max(1);
    drive(client, base, WORKFLOW, warmup, concurrency).await?;
    let started = Instant::now();
    let outcome = drive(client, base, WORKFLOW, instances, concurrency).await;
    let elapsed = started.elapsed();
    for child in &mut children {
        let _ = child.start_kill();
    }
    let outcome = outcome?;

    let ms = |v: u64| v as f64 / 1000.0;
    let rate = |o: &Outcome, e: Duration| o.completed as f64 / e.as_secs_f64();
    let builtin_rate = rate(builtin.outcome, builtin.elapsed);
    let pull_rate = rate(&outcome, elapsed);
    let builtin_p50 = ms(builtin.outcome.latency_us.value_at_quantile(0.50));
    let pull_p50 = ms(outcome.latency_us.value_at_quantile(0.50));
    println!(
        "  pull:     the same workflow on a pull agent: {workers} TypeScript SDK workers over HTTP ({per_worker} tasks each at once)"
    );
    println!(
        "            {} completed, {} failed in {:.2} s = {:.1} instances/s ({:.0}% of built-in {:.1})",
        outcome.completed,
        outcome.failed,
        elapsed.as_secs_f64(),
        pull_rate,
        100.0 * pull_rate / builtin_rate.max(f64::MIN_POSITIVE),
        builtin_rate
    );
    println!(
        "            start-to-complete p50 {:.1} ms  p99 {:.1} ms (built-in p50 {:.1} ms): {:+.2} ms p50 per task on the 2-task path",
        pull_p50,
        ms(outcome.latency_us.value_at_quantile(0.99)),
        builtin_p50,
        (pull_p50 - builtin_p50) / CRITICAL_PATH
    );
    Ok(())
}

/// The worker script: `--agent-worker`, else the SDK's build beside the
/// working directory.
pub(super) fn worker_script(named: Option<&PathBuf>) -> PathBuf {
    named
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKER))
}
