//! `--entity-operations N`: what durable entities take, end to end. N
//! increments sent through the API (as signals, `--concurrency` at a
//! time), first all to one entity, then spread over 100; each run is timed
//! from the first send until the entities' operation counts say every one
//! was applied.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

/// Spread of the second run.
const MANY: usize = 100;
/// How long the bench waits for the last operation to apply.
const APPLIED_WITHIN: Duration = Duration::from_secs(600);

pub(super) async fn run(
    client: &reqwest::Client,
    base: &str,
    operations: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    println!("entity operations: {operations} increments through the API, {concurrency} in flight");
    for entities in [1, MANY] {
        let kind = format!("bench-{}-{entities}", std::process::id());
        let started = Instant::now();
        let sent = futures::stream::iter(0..operations)
            .map(|n| {
                let url = format!("{base}/api/v1/entities/{kind}/e{}/operations", n % entities);
                async move {
                    let response = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(json!({"op": "increment"}).to_string())
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "an operation was refused: {}",
                        response.status()
                    );
                    Ok(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<anyhow::Result<()>>>()
            .await;
        sent.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let sending = started.elapsed();
        wait_applied(client, base, &kind, operations).await?;
        let elapsed = started.elapsed();
        let label = if entities == 1 {
            "one entity".to_owned()
        } else {
            format!("{entities} entities")
        };
        println!(
            "  {label:>12}: {:.0} operations/s applied ({:.2} s; sent in {:.2} s)",
            operations as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            sending.as_secs_f64()
        );
    }
    Ok(())
}

/// Waits until the entities of `kind` count `operations` applied.
async fn wait_applied(
    client: &reqwest::Client,
    base: &str,
    kind: &str,
    operations: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + APPLIED_WITHIN;
    loop {
        let page: Value = client
            .get(format!("{base}/api/v1/entities?type={kind}&top=1000"))
            .send()
            .await?
            .json()
            .await?;
        let applied: u64 = page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["operations"].as_u64())
            .sum();
        if applied >= operations as u64 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {applied} of {operations} operations applied within {APPLIED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
