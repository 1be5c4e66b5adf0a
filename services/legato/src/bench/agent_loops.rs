//! What an agent's durable loop costs: `--journal-steps N` times one-step
//! runs of the echo agent with and without N journaled steps (run in turns,
//! one instance at a time) and prints what a step adds; `--output-pieces N`
//! has the echo agent write N pieces of output a few milliseconds apart,
//! each carrying the time it was pushed, and prints how long each took to
//! reach a client of the instance's stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::client::drive;
use super::scale::register;
use crate::sse::Events;

const PLAIN: &str = "bench-plain-step";
const JOURNALED: &str = "bench-journaled-step";
const WRITER: &str = "bench-output";
/// Interleaved rounds of each shape, so drift (a warm cache, a busy
/// machine) falls on both.
const ROUNDS: usize = 3;
/// How far apart the echo agent pushes its pieces.
const PIECE_EVERY_MS: u64 = 5;

fn one_step(name: &str, input: Value) -> Value {
    json!({"name": name, "version": 1, "steps": [{"id": "work", "agent": "echo", "input": input}]})
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub(super) async fn journal(
    client: &reqwest::Client,
    base: &str,
    steps: usize,
    instances: usize,
) -> anyhow::Result<()> {
    let names: Vec<String> = (1..=steps).map(|n| format!("turn {n}")).collect();
    register(client, base, &one_step(PLAIN, json!({"value": 1}))).await?;
    register(
        client,
        base,
        &one_step(JOURNALED, json!({"value": 1, "journal": names})),
    )
    .await?;
    for workflow in [PLAIN, JOURNALED] {
        drive(client, base, workflow, 20, 1).await?;
    }
    let mut plain = Histogram::<u64>::new(3)?;
    let mut journaled = Histogram::<u64>::new(3)?;
    for _ in 0..ROUNDS {
        plain.add(drive(client, base, PLAIN, instances, 1).await?.latency_us)?;
        journaled.add(
            drive(client, base, JOURNALED, instances, 1)
                .await?
                .latency_us,
        )?;
    }
    let (p50_plain, p50_journaled) = (
        plain.value_at_quantile(0.5),
        journaled.value_at_quantile(0.5),
    );
    let per_step = ms(p50_journaled.saturating_sub(p50_plain)) / steps as f64;
    println!(
        "journaled steps: {} runs each of one echo step, one at a time",
        plain.len()
    );
    println!(
        "  without a journal:      p50 {:.2} ms  p99 {:.2} ms",
        ms(p50_plain),
        ms(plain.value_at_quantile(0.99))
    );
    println!(
        "  with {steps} journaled steps: p50 {:.2} ms  p99 {:.2} ms",
        ms(p50_journaled),
        ms(journaled.value_at_quantile(0.99))
    );
    println!("  a journaled step adds {per_step:.2} ms at p50 (target: at most 2 ms)");
    Ok(())
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(super) async fn output(
    client: &reqwest::Client,
    base: &str,
    pieces: usize,
) -> anyhow::Result<()> {
    register(
        client,
        base,
        &json!({"name": WRITER, "version": 1, "steps": [
            {"id": "go", "wait_for_event": {"name": "go"}},
            {"id": "write", "needs": ["go"], "agent": "echo", "input": {"value": 1,
                "output_clock": {"pieces": pieces, "every_ms": PIECE_EVERY_MS}}}
        ]}),
    )
    .await?;
    let started = client
        .post(format!("{base}/api/v1/workflows/{WRITER}/instances"))
        .json(&json!({"input": {}}))
        .send()
        .await?;
    anyhow::ensure!(started.status().is_success(), "start: {}", started.status());
    let id = started.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stream = client
        .get(format!("{base}/api/v1/instances/{id}/stream"))
        .send()
        .await?;
    let mut events = Events::new(stream);
    let mut delay_us = Histogram::<u64>::new(3)?;
    let limit = Duration::from_secs(60) + Duration::from_millis(PIECE_EVERY_MS) * pieces as u32;
    let read = async {
        while let Some(frame) = events.next().await {
            let frame = frame?;
            if frame.data["kind"] == "waiting_for_event" {
                let raised = client
                    .post(format!("{base}/api/v1/instances/{id}/events/go"))
                    .json(&json!({}))
                    .send()
                    .await?;
                anyhow::ensure!(raised.status().is_success(), "raise: {}", raised.status());
            }
            if frame.event == "output" {
                let now = micros_now();
                // Pieces pushed while one was being sent arrive together.
                for pushed in frame.data["text"]
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    delay_us.record(now.saturating_sub(pushed.parse()?))?;
                }
            }
            if frame.final_status().is_some() {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow::anyhow!("the output run did not end within {limit:?}"))??;
    anyhow::ensure!(
        delay_us.len() == pieces as u64,
        "{} of {pieces} pieces reached the stream",
        delay_us.len()
    );
    println!(
        "live output: {pieces} pieces pushed {PIECE_EVERY_MS} ms apart by the echo agent, read from the instance's stream"
    );
    println!(
        "  push to stream client: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (target: p50 within 10 ms)",
        ms(delay_us.value_at_quantile(0.5)),
        ms(delay_us.value_at_quantile(0.99)),
        ms(delay_us.max())
    );
    Ok(())
}
