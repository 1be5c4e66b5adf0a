//! A minimal reader of legato's progress stream, for the benchmark (and
//! the end-to-end tests, which include this file): waits until the stream
//! reports a final status.

use std::time::Duration;

use futures::StreamExt;
use legato_contracts::RuntimeStatus;
use serde_json::Value;

/// Follows `GET .../stream` until the instance ends; returns its status.
pub async fn wait_for_end(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<RuntimeStatus> {
    let response = client.get(url).send().await?.error_for_status()?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(status) = final_status(&frame) {
                    return Ok(status);
                }
            }
        }
        anyhow::bail!("the stream ended before the instance did")
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow::anyhow!("no final status within {limit:?}"))?
}

fn final_status(frame: &str) -> Option<RuntimeStatus> {
    let mut event = "message";
    let mut data = String::new();
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    let value: Value = serde_json::from_str(&data).ok()?;
    let status = match event {
        "status" => value["runtimeStatus"].as_str()?,
        "progress" => match value["kind"].as_str()? {
            "instance_completed" | "instance_failed" | "instance_terminated" => {
                value["status"].as_str()?
            }
            _ => return None,
        },
        _ => return None,
    };
    RuntimeStatus::parse(status).filter(|s| s.is_terminal())
}
