//! A reader of legato's progress stream (server-sent events), for the CLI's
//! `watch`, the benchmark and the end-to-end tests.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use legato_contracts::RuntimeStatus;
use serde_json::Value;

/// One event of the stream: `status` or `progress`, with its `id:` (a
/// progress event's position) and data.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

impl Frame {
    fn parse(text: &str) -> Option<Self> {
        let mut event = "message";
        let mut id = None;
        let mut data = String::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        // Comments (keep-alives) carry no data.
        let data = serde_json::from_str(&data).ok()?;
        Some(Self {
            event: event.to_owned(),
            id,
            data,
        })
    }

    /// A progress event's position (its `id:`).
    pub fn position(&self) -> Option<u64> {
        self.id.as_deref()?.parse().ok()
    }

    /// The instance's final status, if this event says it ended.
    pub fn final_status(&self) -> Option<RuntimeStatus> {
        let status = match self.event.as_str() {
            "status" => self.data["runtimeStatus"].as_str()?,
            "progress" => match self.data["kind"].as_str()? {
                "instance_completed" | "instance_failed" | "instance_terminated" => {
                    self.data["status"].as_str()?
                }
                _ => return None,
            },
            _ => return None,
        };
        RuntimeStatus::parse(status).filter(|s| s.is_terminal())
    }
}

/// The events of one open stream, in order.
pub struct Events {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    /// Bytes, not text: a chunk may end inside a character.
    buffer: Vec<u8>,
}

impl Events {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<anyhow::Result<Frame>> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = Frame::parse(&String::from_utf8_lossy(&raw)) {
                    return Some(Ok(frame));
                }
            }
            match self.body.next().await? {
                Ok(chunk) => self.buffer.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

/// Follows `GET .../stream` until the instance ends; returns its status.
pub async fn wait_for_end(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<RuntimeStatus> {
    let response = client.get(url).send().await?.error_for_status()?;
    let mut events = Events::new(response);
    let read = async {
        while let Some(frame) = events.next().await {
            if let Some(status) = frame?.final_status() {
                return Ok(status);
            }
        }
        anyhow::bail!("the stream ended before the instance did")
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow::anyhow!("no final status within {limit:?}"))?
}
