//! A legato message on the Service Bus wire. The routing key is the
//! `Label` (what subscription rules filter on), the CloudEvents id the
//! `MessageId` (what duplicate detection keys on), the instance the
//! `CorrelationId`. The message's headers travel as one custom property,
//! `legato-headers`, holding their JSON: custom properties are HTTP
//! headers, whose names lose their case and whose values must be
//! JSON-like and ASCII, while legato's header names are case-sensitive
//! (`cloudEvents_type`).

use std::collections::{BTreeMap, HashMap};

use azure_core::headers::{HeaderName, Headers};
use azure_messaging_servicebus::service_bus::{SendMessageOptions, SettableBrokerProperties};
use serde::Deserialize;

use crate::{BusError, DEAD_LETTER_REASON, OutgoingMessage};

use super::http::RAW_BROKER_PROPERTIES;

pub(super) const CONTENT_TYPE: &str = "application/cloudevents+json";
const HEADERS: &str = "legato-headers";
/// On a dead-letter copy: the routing key and id the message had.
const ROUTING_KEY: &str = "legato-routing-key";
const ORIGINAL_ID: &str = "legato-original-id";
/// What Service Bus puts on a message it dead-lettered itself.
const NATIVE_REASON: &str = "deadletterreason";
const NATIVE_DESCRIPTION: &str = "deadlettererrordescription";

/// JSON with every non-ASCII character escaped, fit for a header value.
fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A custom property's value: a JSON string.
fn quoted(text: &str) -> String {
    ascii_json(&serde_json::Value::String(text.to_owned()))
}

pub(super) struct Outgoing<'a> {
    pub body: &'a str,
    pub options: SendMessageOptions,
}

/// What goes on the wire for `message` published with `label` (the
/// routing key, or a dead-letter copy's group label).
pub(super) fn outgoing<'a>(
    message: &'a OutgoingMessage,
    message_id: &str,
    label: &str,
    dead_copy_of: Option<(&str, &str)>,
) -> Result<Outgoing<'a>, BusError> {
    let body = std::str::from_utf8(&message.body).map_err(|_| {
        BusError::Rejected("Service Bus messages sent over REST must be UTF-8 text".into())
    })?;
    let headers = serde_json::to_value(&message.headers)?;
    let mut custom = HashMap::new();
    custom.insert(HEADERS.to_owned(), quoted(&ascii_json(&headers)));
    if let Some((routing_key, original_id)) = dead_copy_of {
        custom.insert(ROUTING_KEY.to_owned(), quoted(routing_key));
        custom.insert(ORIGINAL_ID.to_owned(), quoted(original_id));
    }
    let broker = SettableBrokerProperties {
        message_id: Some(message_id.to_owned()),
        label: Some(label.to_owned()),
        correlation_id: message.headers.get("cloudEvents_subject").cloned(),
        ..SettableBrokerProperties::default()
    };
    Ok(Outgoing {
        body,
        options: SendMessageOptions {
            content_type: Some(CONTENT_TYPE.to_owned()),
            broker_properties: Some(broker),
            custom_properties: Some(custom),
        },
    })
}

/// The broker properties of a received message, read with 64-bit numbers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Received {
    pub delivery_count: u32,
    pub message_id: String,
    pub sequence_number: i64,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub locked_until_utc: Option<String>,
}

impl Received {
    pub(super) fn from_headers(headers: &Headers) -> Result<Self, String> {
        let raw = headers
            .get_optional_str(&HeaderName::from_static(RAW_BROKER_PROPERTIES))
            .ok_or("the message came without BrokerProperties")?;
        serde_json::from_str(raw).map_err(|e| format!("unreadable BrokerProperties {raw:?}: {e}"))
    }

    /// How long the lock lasts from now, if the message says.
    pub(super) fn lock_remaining(&self) -> Option<std::time::Duration> {
        let text = self.locked_until_utc.as_deref()?;
        let until = time::OffsetDateTime::parse(
            &text.replace(" GMT", " +0000"),
            &time::format_description::well_known::Rfc2822,
        )
        .ok()?;
        let left = until - time::OffsetDateTime::now_utc();
        left.try_into().ok()
    }
}

fn property(headers: &Headers, name: &'static str) -> Option<String> {
    let text = headers.get_optional_str(&HeaderName::from_static(name))?;
    Some(match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(s)) => s,
        _ => text.to_owned(),
    })
}

/// The delivery's id, routing key and headers.
pub(super) fn incoming(
    received: &Received,
    headers: &Headers,
) -> (String, String, BTreeMap<String, String>) {
    let mut map: BTreeMap<String, String> = property(headers, HEADERS)
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    if let Some(reason) = property(headers, NATIVE_REASON) {
        let described = match property(headers, NATIVE_DESCRIPTION) {
            Some(d) if !d.is_empty() => format!("{reason}: {d}"),
            _ => reason,
        };
        map.entry(DEAD_LETTER_REASON.to_owned())
            .or_insert(described);
    }
    let id = property(headers, ORIGINAL_ID).unwrap_or_else(|| received.message_id.clone());
    let key = property(headers, ROUTING_KEY)
        .or_else(|| received.label.clone())
        .unwrap_or_default();
    (id, key, map)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_as_one_ascii_property() {
        let mut headers = BTreeMap::new();
        headers.insert("cloudEvents_type".to_owned(), "legato.test.v1".to_owned());
        headers.insert("note".to_owned(), "naïve \"quoted\"\n".to_owned());
        let message = OutgoingMessage {
            id: "id-1".into(),
            body: bytes::Bytes::from_static(b"{}"),
            headers: headers.clone(),
        };
        let out = outgoing(&message, "id-1", "echo", None).unwrap();
        let value = &out.options.custom_properties.as_ref().unwrap()[HEADERS];
        assert!(value.is_ascii() && !value.contains('\n'), "{value}");
        let mut received = Headers::new();
        received.insert(HeaderName::from_static(HEADERS), value.clone());
        let r = Received {
            delivery_count: 1,
            message_id: "id-1".into(),
            sequence_number: 1 << 40,
            label: Some("echo".into()),
            locked_until_utc: None,
        };
        let (id, key, back) = incoming(&r, &received);
        assert_eq!((id.as_str(), key.as_str(), back), ("id-1", "echo", headers));
    }

    #[test]
    fn a_body_that_is_not_text_is_refused() {
        let message = OutgoingMessage {
            id: "x".into(),
            body: bytes::Bytes::from_static(&[0xff, 0xfe]),
            headers: BTreeMap::new(),
        };
        assert!(matches!(
            outgoing(&message, "x", "k", None),
            Err(BusError::Rejected(_))
        ));
    }
}
