//! `legato bench --agent pull|push`: the same workflow with its five tasks
//! done outside the binary instead of by the built-in echo agent: by pull
//! workers over HTTP (the TypeScript SDK's echo worker, in processes of
//! their own on this machine), or POSTed to a push endpoint (the SDK's push
//! handler, one process). It runs right after the built-in figures in the
//! same stack, so what the HTTP path adds per task reads off the two.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::client::{Outcome, drive};

/// Tasks one after the other on the workflow's longest path (four in
/// parallel, then one).
const CRITICAL_PATH: f64 = 2.0;

/// Where the SDK's bench scripts are unless `--agent-worker` says where
/// the pull worker is.
pub(super) const DEFAULT_WORKER: &str = "sdk/typescript/dist/bench/echo-worker.js";
const PUSH_ENDPOINT: &str = "sdk/typescript/dist/bench/echo-push.js";

/// How the tasks get outside the binary.
pub(super) enum Outside<'a> {
    /// `workers` processes of the pull worker `script`.
    Pull { script: &'a Path, workers: usize },
    /// One process of the push endpoint, signing with `secret`.
    Push { secret: &'a str },
}

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

/// Starts `node script args…` and waits until its first line says
/// `READY` (what follows the word is returned).
async fn spawn_node(script: &Path, args: &[&str]) -> anyhow::Result<(Child, String)> {
    anyhow::ensure!(
        script.is_file(),
        "no {} : build the TypeScript SDK (cd sdk/typescript && npm ci && npm run build) or name a pull worker with --agent-worker",
        script.display()
    );
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("node {}: {e}", script.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the script's stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let rest = match ready {
        Ok(Ok(Some(ref line))) if line.starts_with("READY") => {
            line["READY".len()..].trim().to_owned()
        }
        other => anyhow::bail!("{} did not start: {other:?}", script.display()),
    };
    Ok((child, rest))
}

/// Runs the comparison on the stack at `base` and prints it beside the
/// built-in run.
pub(super) async fn compare(
    client: &reqwest::Client,
    base: &str,
    outside: Outside<'_>,
    instances: usize,
    concurrency: usize,
    builtin: Builtin<'_>,
) -> anyhow::Result<()> {
    // Enough slots that the agent never holds the stack back: every task
    // of every instance in flight at once.
    let in_flight = concurrency * 4;
    let (agent, mut children, what) = match outside {
        Outside::Pull { script, workers } => {
            let agent = "bench-pull";
            let per_worker = in_flight.div_ceil(workers.max(1)).max(1);
            let spec = json!({"kind": "pull", "description": "legato bench's echo worker"});
            put(client, format!("{base}/api/v1/agents/{agent}"), spec).await?;
            let mut children = Vec::with_capacity(workers);
            for _ in 0..workers {
                let args = [base, agent, &per_worker.to_string()];
                children.push(spawn_node(script, &args).await?.0);
            }
            let what = format!(
                "a pull agent: {workers} TypeScript SDK workers over HTTP ({per_worker} tasks each at once)"
            );
            (agent, children, what)
        }
        Outside::Push { secret } => {
            let agent = "bench-push";
            let (child, port) = spawn_node(Path::new(PUSH_ENDPOINT), &[agent, secret]).await?;
            let spec = json!({
                "kind": "push", "url": format!("http://127.0.0.1:{port}/"),
                "concurrency": in_flight.clamp(1, 1024),
                "description": "legato bench's echo endpoint",
            });
            put(client, format!("{base}/api/v1/agents/{agent}"), spec).await?;
            let what = format!(
                "a push agent: one TypeScript SDK endpoint, {} requests at once",
                in_flight.clamp(1, 1024)
            );
            (agent, vec![child], what)
        }
    };
    let workflow = format!("bench-fan-out-{agent}");
    put(
        client,
        format!("{base}/api/v1/workflows/{workflow}"),
        super::definition(&workflow, agent),
    )
    .await?;
    let warmup = concurrency.min(instances).max(1);
    let warm = drive(client, base, &workflow, warmup, concurrency);
    while_alive(&mut children, warm).await?;
    let started = Instant::now();
    let run = drive(client, base, &workflow, instances, concurrency);
    let outcome = while_alive(&mut children, run).await;
    let elapsed = started.elapsed();
    for child in &mut children {
        let _ = child.start_kill();
    }
    let outcome = outcome?;

    let ms = |v: u64| v as f64 / 1000.0;
    let rate = |o: &Outcome, e: Duration| o.completed as f64 / e.as_secs_f64();
    let builtin_rate = rate(builtin.outcome, builtin.elapsed);
    let their_rate = rate(&outcome, elapsed);
    let builtin_p50 = ms(builtin.outcome.latency_us.value_at_quantile(0.50));
    let their_p50 = ms(outcome.latency_us.value_at_quantile(0.50));
    println!("  {agent}: the same workflow on {what}");
    println!(
        "            {} completed, {} failed in {:.2} s = {:.1} instances/s ({:.0}% of built-in {:.1})",
        outcome.completed,
        outcome.failed,
        elapsed.as_secs_f64(),
        their_rate,
        100.0 * their_rate / builtin_rate.max(f64::MIN_POSITIVE),
        builtin_rate
    );
    println!(
        "            start-to-complete p50 {:.1} ms  p99 {:.1} ms (built-in p50 {:.1} ms): {:+.2} ms p50 per task on the 2-task path",
        their_p50,
        ms(outcome.latency_us.value_at_quantile(0.99)),
        builtin_p50,
        (their_p50 - builtin_p50) / CRITICAL_PATH
    );
    Ok(())
}

/// One worker process per two cores, at least one: a Node worker is one
/// event loop, and more of them than the machine has cores to spare only
/// take turns with the stack they serve.
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// `work`, unless one of `children` exits first: the run cannot finish
/// without them.
async fn while_alive<T>(
    children: &mut [Child],
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let exited = futures::future::select_all(children.iter_mut().map(|c| Box::pin(c.wait())));
    tokio::select! {
        done = work => done,
        (status, which, _) = exited => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            anyhow::bail!("agent process {which} exited during the run ({status}); its error is above")
        }
    }
}

/// The worker script: `--agent-worker`, else the SDK's build beside the
/// working directory.
pub(super) fn worker_script(named: Option<&PathBuf>) -> PathBuf {
    named
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKER))
}
