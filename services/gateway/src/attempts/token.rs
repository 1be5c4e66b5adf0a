//! The task token: what a worker holds for one attempt and sends back with
//! every report on it. Opaque to workers; any gateway replica reads it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use legato_contracts::{AgentName, InstanceId, TaskKey};
use legato_service::problem::Problem;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a token names: one attempt of one task of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Token {
    #[serde(rename = "i")]
    pub instance: InstanceId,
    #[serde(rename = "k")]
    pub key: TaskKey,
    #[serde(rename = "a")]
    pub attempt: u32,
    #[serde(rename = "g")]
    pub agent: AgentName,
    /// When it was handed out (ms since the epoch), for the agent's
    /// figures; absent in tokens issued before it was added.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub taken_ms: Option<i64>,
}

impl Token {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(raw: &str) -> Result<Self, Problem> {
        let bad = || Problem::field("token", "is not a task token this service issued");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }

    /// Stable across deliveries of this attempt.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}#{}", self.instance, self.key, self.attempt)
    }

    /// How long since it was handed out.
    pub(super) fn held_for(&self, now: OffsetDateTime) -> Option<Duration> {
        let taken =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.taken_ms?) * 1_000_000)
                .ok()?;
        (now - taken).try_into().ok()
    }
}

pub(super) fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
