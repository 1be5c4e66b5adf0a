//! How every adapter turns stored values back into the port's types: times
//! kept to the millisecond, topics by name, and the error for data that
//! does not read back.

use legato_contracts::Topic;
use time::OffsetDateTime;

use crate::StoreError;

pub(crate) fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now and `ttl` from now, in milliseconds since the epoch: when a lease
/// or a report written now runs out.
pub(crate) fn expiry(ttl: std::time::Duration) -> (i64, i64) {
    let now = millis(OffsetDateTime::now_utc());
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    (now, now.saturating_add(ttl))
}

pub(crate) fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms}: {e}")))
}

pub(crate) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

pub(crate) fn topic_from(text: &str) -> Result<Topic, StoreError> {
    Topic::ALL
        .into_iter()
        .find(|t| t.as_str() == text)
        .ok_or_else(|| StoreError::Corrupt(format!("topic {text}")))
}
