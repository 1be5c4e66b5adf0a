//! The bench's client: starts instances through the gateway, as a user
//! would, and follows each to its end over its stream or by polling.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use legato_contracts::RuntimeStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(super) struct Outcome {
    pub completed: usize,
    pub failed: usize,
    pub latency_us: Histogram<u64>,
    pub sample: Option<String>,
    /// Starts the gateway's rate limit answered 429 and that were sent
    /// again after its `Retry-After`.
    pub throttled: u64,
}

/// Instances the polled comparison runs (polling loads the gateway, so
/// fewer than the measured run).
pub(super) const POLLED_INSTANCES: usize = 200;

/// How long an instance may take, from its first start request to its end.
const INSTANCE_LIMIT: Duration = Duration::from_secs(120);

/// How a driver learns that an instance ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Follow {
    Stream,
    Poll,
}

pub(super) async fn drive(
    client: &reqwest::Client,
    base: &str,
    workflow: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    drive_with(client, base, workflow, n, concurrency, Follow::Stream).await
}

pub(super) async fn drive_with(
    client: &reqwest::Client,
    base: &str,
    workflow: &str,
    n: usize,
    concurrency: usize,
    follow: Follow,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome {
        completed: 0,
        failed: 0,
        latency_us: Histogram::new(3)?,
        sample: None,
        throttled: 0,
    };
    let mut runs = futures::stream::iter(0..n)
        .map(|i| one(client, base, workflow, i, follow))
        .buffer_unordered(concurrency.max(1));
    while let Some(run) = runs.next().await {
        outcome.throttled += u64::from(run.throttled);
        match run.result {
            Ok((id, latency)) => {
                outcome.completed += 1;
                outcome.latency_us.record(latency.as_micros() as u64)?;
                outcome.sample.get_or_insert(id);
            }
            Err(e) => {
                outcome.failed += 1;
                eprintln!("instance failed: {e:#}");
            }
        }
    }
    Ok(outcome)
}

/// One instance's run: its id and start-to-complete time, and how often
/// its start was throttled.
struct Run {
    result: anyhow::Result<(String, Duration)>,
    throttled: u32,
}

/// Starts one instance and follows it to the end. The latency runs from
/// the start the gateway accepted: waiting out its rate limit is the
/// client's, not the instance's.
async fn one(
    client: &reqwest::Client,
    base: &str,
    workflow: &str,
    i: usize,
    follow: Follow,
) -> Run {
    let deadline = Instant::now() + INSTANCE_LIMIT;
    let mut throttled = 0;
    let result = async {
        let (begin, started) = loop {
            let begin = Instant::now();
            let response = client
                .post(format!("{base}/api/v1/workflows/{workflow}/instances"))
                .json(&json!({"input": {"value": i}}))
                .send()
                .await?;
            match retry_after(&response) {
                Some(wait) if Instant::now() + wait < deadline => {
                    throttled += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => break (begin, response.error_for_status()?.json::<Value>().await?),
            }
        };
        let id = started["id"].as_str().unwrap_or_default().to_owned();
        let limit = deadline.saturating_duration_since(Instant::now());
        let status = match follow {
            Follow::Stream => {
                crate::sse::wait_for_end(
                    client,
                    &format!("{base}/api/v1/instances/{id}/stream"),
                    limit,
                )
                .await?
            }
            Follow::Poll => {
                let url = format!("{base}/api/v1/instances/{id}");
                poll_for_end(client, &url, Duration::from_micros(500), limit).await?
            }
        };
        anyhow::ensure!(
            status == RuntimeStatus::Completed,
            "instance {id} ended {}",
            status.as_str()
        );
        Ok((id, begin.elapsed()))
    }
    .await;
    Run { result, throttled }
}

/// How long a 429 asks the client to wait (`Retry-After` in seconds, 1 if
/// it names none); `None` for any other answer.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    (response.status() == StatusCode::TOO_MANY_REQUESTS).then(|| {
        let seconds = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1);
        Duration::from_secs(seconds.clamp(1, 60))
    })
}

/// Asks for the status every `every` until the instance ends, for at most
/// `limit`.
async fn poll_for_end(
    client: &reqwest::Client,
    url: &str,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<RuntimeStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let status: Value = client.get(url).send().await?.json().await?;
        if let Some(ended) = status["runtimeStatus"]
            .as_str()
            .and_then(RuntimeStatus::parse)
            .filter(|s| s.is_terminal())
        {
            return Ok(ended);
        }
        tokio::time::sleep(every).await;
    }
    anyhow::bail!("{url} did not end within {limit:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after: Option<&str>) -> reqwest::Response {
        let mut builder = axum::http::Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header("retry-after", value);
        }
        reqwest::Response::from(builder.body(Vec::<u8>::new()).unwrap())
    }

    #[test]
    fn a_throttled_start_waits_what_the_gateway_asks() {
        let wait = |status, header| retry_after(&answer(status, header));
        assert_eq!(wait(429, Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(wait(429, None), Some(Duration::from_secs(1)));
        assert_eq!(wait(429, Some("soon")), Some(Duration::from_secs(1)));
        assert_eq!(wait(429, Some("86400")), Some(Duration::from_secs(60)));
        assert_eq!(wait(202, Some("3")), None);
        assert_eq!(wait(503, Some("3")), None);
    }
}
