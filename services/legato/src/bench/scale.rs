//! `legato bench --fan-out N` / `--sequence N` / `--iterations N` /
//! `--children N`: one large instance (a wide fan-out, a long chain, a
//! long-running loop, a fan-out of child workflows), to
//! see whether an event costs more as an instance grows. Prints the run's time,
//! the mean time between committed events over the first and the last
//! tenth of its history, and the process's peak resident memory (the
//! embedded stack runs in this process).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const NAME: &str = "bench-scale";
/// The workflow each child of `--children` runs.
const CHILD: &str = "bench-child";
/// The longest a single scale run may take.
const LIMIT: Duration = Duration::from_secs(30 * 60);

/// The one instance a scale run measures.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A `for_each` over N echo items.
    FanOut(usize),
    /// N echo steps one after the other.
    Sequence(usize),
    /// A loop of N iterations of two echo steps (write, then review).
    Loop(usize),
    /// A `for_each` over N items, each a child workflow of one echo step.
    Children(usize),
}

impl Shape {
    /// The shape the options ask for, if any.
    pub fn of(
        fan_out: Option<usize>,
        sequence: Option<usize>,
        iterations: Option<usize>,
        children: Option<usize>,
    ) -> Option<Self> {
        fan_out
            .map(Self::FanOut)
            .or(sequence.map(Self::Sequence))
            .or(iterations.map(Self::Loop))
            .or(children.map(Self::Children))
    }

    fn describe(self) -> String {
        match self {
            Self::FanOut(n) => format!("for_each over {n} echo tasks"),
            Self::Sequence(n) => format!("sequence of {n} echo tasks"),
            Self::Loop(n) => format!("loop of {n} iterations of 2 echo tasks"),
            Self::Children(n) => format!("for_each over {n} child workflows of 1 echo task"),
        }
    }

    /// What must be registered before the definition: the children's.
    fn children_definition(self) -> Option<Value> {
        matches!(self, Self::Children(_)).then(|| {
            json!({"name": CHILD, "version": 1, "steps": [
                {"id": "work", "agent": "echo", "input": {"value": "${{ input.value }}"}}
            ], "output": "${{ steps.work.output.value }}"})
        })
    }

    fn definition(self) -> Value {
        match self {
            Self::FanOut(_) => json!({"name": NAME, "version": 1, "steps": [
                {"id": "each", "for_each": "${{ input.items }}", "agent": "echo",
                 "input": {"value": "${{ item }}"}, "max_parallel": 100}
            ]}),
            Self::Children(_) => json!({"name": NAME, "version": 1, "steps": [
                {"id": "each", "for_each": "${{ input.items }}", "workflow": CHILD,
                 "input": {"value": "${{ item }}"}, "max_parallel": 100}
            ]}),
            Self::Sequence(n) => {
                let steps: Vec<Value> = (0..n)
                    .map(|i| {
                        let mut step = json!({"id": format!("s{i}"), "agent": "echo",
                            "input": {"value": i}});
                        if i > 0 {
                            step["needs"] = json!([format!("s{}", i - 1)]);
                        }
                        step
                    })
                    .collect();
                json!({"name": NAME, "version": 1, "steps": steps})
            }
            Self::Loop(n) => json!({"name": NAME, "version": 1, "steps": [{
                "id": "rounds",
                "loop": {
                    "max_iterations": n,
                    "until": "${{ steps.review.output.value }}",
                    "output": "${{ steps.write.output.value }}",
                    "steps": [
                        {"id": "write", "agent": "echo", "input": {"value": "${{ iteration }}"}},
                        {"id": "review", "agent": "echo", "needs": ["write"],
                         "input": {"value": "${{ steps.write.output.value >= input.rounds }}"}}
                    ]
                }
            }]}),
        }
    }

    fn input(self) -> Value {
        match self {
            Self::FanOut(n) | Self::Children(n) => json!({"items": (0..n).collect::<Vec<_>>()}),
            Self::Sequence(_) => json!({}),
            Self::Loop(n) => json!({"rounds": n}),
        }
    }
}

/// Registers a definition with the gateway at `base`.
pub(super) async fn register(
    client: &reqwest::Client,
    base: &str,
    definition: &Value,
) -> anyhow::Result<()> {
    let name = definition["name"].as_str().unwrap_or_default();
    let put = client
        .put(format!("{base}/api/v1/workflows/{name}"))
        .json(definition)
        .send()
        .await?;
    anyhow::ensure!(
        put.status().is_success(),
        "registering {name}: {}",
        put.status()
    );
    Ok(())
}

pub async fn run(client: &reqwest::Client, base: &str, shape: Shape) -> anyhow::Result<()> {
    for definition in shape
        .children_definition()
        .into_iter()
        .chain([shape.definition()])
    {
        register(client, base, &definition).await?;
    }
    let input = shape.input();
    let began = Instant::now();
    let started: Value = client
        .post(format!("{base}/api/v1/workflows/{NAME}/instances"))
        .json(&json!({ "input": input }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let url = format!("{base}/api/v1/instances/{id}");
    // Followed over its stream, as a client would: polling the status
    // would load all 10,000 slots each time and measure the bench's reads.
    let status = crate::sse::wait_for_end(client, &format!("{url}/stream"), LIMIT)
        .await?
        .as_str();
    let elapsed = began.elapsed();
    // The run's peak, before the bench pages through the history itself.
    let peak = peak_rss_mb();
    let times = history_times(client, &url).await?;
    let tenth = (times.len() / 10).max(1);
    let mean_gap = |slice: &[OffsetDateTime]| {
        let gaps: Vec<f64> = slice
            .windows(2)
            .map(|w| (w[1] - w[0]).as_seconds_f64() * 1000.0)
            .collect();
        gaps.iter().sum::<f64>() / gaps.len().max(1) as f64
    };
    println!(
        "legato bench: one {}: {status} in {:.2} s",
        shape.describe(),
        elapsed.as_secs_f64()
    );
    match shape {
        Shape::Loop(n) => println!(
            "  loop:     {:.3} ms per iteration (start to end over {n})",
            elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64
        ),
        Shape::Children(n) => println!(
            "  children: {:.3} ms per child run (start to end over {n}, 100 at a time)",
            elapsed.as_secs_f64() * 1000.0 / n.max(1) as f64
        ),
        Shape::FanOut(_) | Shape::Sequence(_) => {}
    }
    println!(
        "  events:   {} committed; mean gap between events {:.2} ms over the first tenth, {:.2} ms over the last",
        times.len(),
        mean_gap(&times[..tenth.min(times.len())]),
        mean_gap(&times[times.len().saturating_sub(tenth)..])
    );
    match peak {
        Some(mb) => println!(
            "  memory:   peak resident {mb:.0} MB until the instance ended (this process: the \
             embedded stack, orchestrator included)"
        ),
        None => println!("  memory:   peak resident size unavailable (no /proc)"),
    }
    anyhow::ensure!(status == "Completed", "the instance ended {status}");
    Ok(())
}

/// When each history row was committed, paging through the history.
async fn history_times(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<OffsetDateTime>> {
    let mut times = Vec::new();
    let mut after = 0u64;
    // Bounded: far more pages than a scale run's history holds.
    for _ in 0..MAX_HISTORY_PAGES {
        let page: Value = client
            .get(format!("{url}?history=true&afterSeq={after}&limit=1000"))
            .send()
            .await?
            .json()
            .await?;
        let rows = page["history"].as_array().cloned().unwrap_or_default();
        for row in &rows {
            if let Some(at) = row["at"]
                .as_str()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            {
                times.push(at);
            }
            after = row["seq"].as_u64().unwrap_or(after);
        }
        if rows.len() < 1000 {
            return Ok(times);
        }
    }
    anyhow::bail!("the history of {url} has more than {MAX_HISTORY_PAGES} pages")
}

const MAX_HISTORY_PAGES: usize = 1_000;

/// `VmHWM` of this process, in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
