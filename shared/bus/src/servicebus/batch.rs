//! Sending several messages to one topic in one request (Service Bus REST
//! "Send Message Batch"): `POST /{topic}/messages` with `Content-Type:
//! application/vnd.microsoft.servicebus.json` and a JSON array of messages,
//! each its `Body` with its `BrokerProperties` and `UserProperties`,
//! answered 201. An operation is billed per API call, so an outbox group
//! costs one send per topic instead of one per message. The batch counts
//! against the message size limit as a whole (256 KB on Standard), so
//! batches are kept well below it; a message too large for one is sent on
//! its own.

use azure_core::{Method, Url};
use serde_json::{Value, json};

use super::errors;
use super::management::Management;
use crate::{BusError, OutgoingMessage};

const CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";
/// Most bytes of messages one batch carries, below the 256 KB limit.
pub(super) const MAX_BYTES: usize = 192 * 1024;
/// Most messages one batch carries.
pub(super) const MAX_MESSAGES: usize = 100;

/// One message of a batch, and its size as sent.
pub(super) fn entry(message: &OutgoingMessage, label: &str) -> Result<(Value, usize), BusError> {
    let wire = super::message::outgoing(message, &message.id, label, None)?;
    let broker = wire.options.broker_properties.unwrap_or_default();
    let mut properties = serde_json::Map::new();
    for (name, quoted) in wire.options.custom_properties.unwrap_or_default() {
        // A header carries the value as a JSON literal; the body carries
        // the value itself.
        let value = serde_json::from_str(&quoted).unwrap_or(Value::String(quoted));
        properties.insert(name, value);
    }
    let mut settable = serde_json::Map::new();
    for (name, value) in [
        ("MessageId", broker.message_id),
        ("Label", broker.label),
        ("CorrelationId", broker.correlation_id),
    ] {
        if let Some(value) = value {
            settable.insert(name.to_owned(), Value::String(value));
        }
    }
    let entry = json!({
        "Body": wire.body,
        "BrokerProperties": settable,
        "UserProperties": properties,
    });
    let size = entry.to_string().len();
    Ok((entry, size))
}

impl Management {
    /// Sends `entries` to `topic` in one request.
    pub(super) async fn send_batch(
        &self,
        topic: &str,
        entries: Vec<Value>,
    ) -> Result<(), BusError> {
        let doing = format!("sending a batch of {} to {topic}", entries.len());
        let url = Url::parse(&format!("https://{}/{topic}/messages", self.host))
            .map_err(|e| BusError::Rejected(format!("topic path {topic:?}: {e}")))?;
        let body = Value::Array(entries).to_string();
        let (status, answer) = self
            .call_with(Method::Post, url, Some((body, CONTENT_TYPE)))
            .await?;
        if status == 201 {
            return Ok(());
        }
        Err(errors::from_status(
            status,
            &doing,
            &String::from_utf8_lossy(&answer),
        ))
    }
}
