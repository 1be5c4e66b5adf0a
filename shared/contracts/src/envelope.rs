//! The CloudEvents 1.0 structured-mode envelope (`application/cloudevents+json`)
//! around every [`Payload`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::{IdError, InstanceId, Payload, TenantId};

pub const SPEC_VERSION: &str = "1.0";
const DATA_CONTENT_TYPE: &str = "application/json";

/// A W3C trace-context `traceparent` (`00-<trace id>-<span id>-<flags>`), so
/// one request is one trace across every service it touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceParent(String);

impl TraceParent {
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let parts: Vec<&str> = value.split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = parts.len() == 4
            && hex(parts[0], 2)
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0');
        if valid {
            Ok(Self(value))
        } else {
            Err(IdError {
                kind: "traceparent",
                value,
                rule: "00-<32 hex>-<16 hex>-<2 hex>, ids not all zero",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TraceParent {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(value)
    }
}

impl From<TraceParent> for String {
    fn from(t: TraceParent) -> String {
        t.0
    }
}

/// One message on the bus. `subject` is always the instance id the message
/// is about, so any consumer can route or deduplicate without opening `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique per message; consumers deduplicate redeliveries by it.
    pub id: String,
    /// The producing service, e.g. `/legato/gateway`.
    pub source: String,
    pub subject: InstanceId,
    pub time: OffsetDateTime,
    pub traceparent: Option<TraceParent>,
    pub payload: Payload,
}

/// Why bytes from the bus are not a message this version can act on. A
/// consumer dead-letters the message with this text as the reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CloudEvents JSON envelope: {0}")]
    Malformed(serde_json::Error),
    #[error("unsupported CloudEvents specversion {0:?} (expected \"1.0\")")]
    UnsupportedSpecVersion(String),
    #[error("unsupported datacontenttype {0:?} (expected \"application/json\")")]
    UnsupportedContentType(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("tenant {attribute:?} does not own subject {subject:?}")]
    TenantMismatch {
        attribute: TenantId,
        subject: InstanceId,
    },
    #[error("invalid data for {type_name}: {error}")]
    InvalidData {
        type_name: String,
        error: serde_json::Error,
    },
}

/// An envelope as it is read: `data` stays text until the type says what
/// it holds, and is then read once, into that type.
#[derive(Deserialize)]
struct Wire {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    type_name: String,
    subject: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    #[serde(default)]
    datacontenttype: Option<String>,
    #[serde(default)]
    traceparent: Option<TraceParent>,
    /// Extension attribute: the tenant owning the subject, so a consumer
    /// sees it without parsing ids (it must agree with the subject).
    #[serde(default)]
    tenant: Option<TenantId>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// An envelope as it is written: the message's own fields, its payload
/// written straight in as `data`.
#[derive(Serialize)]
struct WireOut<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    type_name: &'static str,
    subject: &'a InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a TraceParent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<TenantId>,
    data: &'a Payload,
}

impl Envelope {
    /// A new message with a fresh random id.
    pub fn new(
        source: impl Into<String>,
        subject: InstanceId,
        time: OffsetDateTime,
        payload: impl Into<Payload>,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            source: source.into(),
            subject,
            time,
            traceparent: None,
            payload: payload.into(),
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<TraceParent>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn type_name(&self) -> &'static str {
        self.payload.type_name()
    }

    /// The tenant the message is about (its subject's).
    pub fn tenant(&self) -> Option<TenantId> {
        self.subject.tenant()
    }

    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self.to_wire())
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.to_wire())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        Self::from_wire(wire)
    }

    pub fn from_json(value: Value) -> Result<Self, DecodeError> {
        // As text: `data` is read from text only (see `Wire`).
        Self::decode(&serde_json::to_vec(&value).map_err(DecodeError::Malformed)?)
    }

    fn to_wire(&self) -> WireOut<'_> {
        WireOut {
            specversion: SPEC_VERSION,
            id: &self.id,
            source: &self.source,
            type_name: self.payload.type_name(),
            subject: &self.subject,
            time: self.time,
            datacontenttype: DATA_CONTENT_TYPE,
            traceparent: self.traceparent.as_ref(),
            tenant: self.subject.tenant(),
            data: &self.payload,
        }
    }

    fn from_wire(wire: Wire) -> Result<Self, DecodeError> {
        if wire.specversion != SPEC_VERSION {
            return Err(DecodeError::UnsupportedSpecVersion(wire.specversion));
        }
        if let Some(content_type) = wire.datacontenttype.filter(|c| c != DATA_CONTENT_TYPE) {
            return Err(DecodeError::UnsupportedContentType(content_type));
        }
        if let Some(attribute) = wire
            .tenant
            .filter(|t| Some(t) != wire.subject.tenant().as_ref())
        {
            return Err(DecodeError::TenantMismatch {
                attribute,
                subject: wire.subject,
            });
        }
        let data = wire.data.as_deref().map_or("null", RawValue::get);
        let payload = match Payload::from_data(&wire.type_name, data) {
            None => return Err(DecodeError::UnknownType(wire.type_name)),
            Some(Err(error)) => {
                return Err(DecodeError::InvalidData {
                    type_name: wire.type_name,
                    error,
                });
            }
            Some(Ok(payload)) => payload,
        };
        Ok(Self {
            id: wire.id,
            source: wire.source,
            subject: wire.subject,
            time: wire.time,
            traceparent: wire.traceparent,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventName, RaiseEvent};

    fn sample() -> Envelope {
        Envelope::new(
            "/legato/gateway",
            InstanceId::parse("i-1").unwrap(),
            time::macros::datetime!(2026-11-26 12:00 UTC),
            RaiseEvent {
                name: EventName::parse("approval").unwrap(),
                data: serde_json::json!({"approved": true}),
            },
        )
        .with_traceparent(Some(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap(),
        ))
    }

    #[test]
    fn roundtrips_through_bytes() {
        let envelope = sample();
        let decoded = Envelope::decode(&envelope.encode().unwrap()).unwrap();
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn unknown_type_is_named() {
        let mut json = sample().to_json().unwrap();
        json["type"] = "legato.nope.v9".into();
        let err = Envelope::from_json(json).unwrap_err();
        assert_eq!(err.to_string(), "unknown message type \"legato.nope.v9\"");
    }

    #[test]
    fn bad_data_names_the_type_and_field() {
        let mut json = sample().to_json().unwrap();
        json["data"] = serde_json::json!({"name": "bad name!"});
        let err = Envelope::from_json(json).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid data for legato.instance.raise-event.v1"),
            "{err}"
        );
        assert!(err.contains("invalid event name"), "{err}");
    }

    #[test]
    fn wrong_spec_version_and_garbage_are_rejected() {
        let mut json = sample().to_json().unwrap();
        json["specversion"] = "0.3".into();
        assert!(matches!(
            Envelope::from_json(json),
            Err(DecodeError::UnsupportedSpecVersion(_))
        ));
        assert!(matches!(
            Envelope::decode(b"\x00\x01 not json"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn tenant_travels_as_an_attribute_that_must_match_the_subject() {
        let mut envelope = sample();
        envelope.subject = InstanceId::parse("acme~i-1").unwrap();
        let json = envelope.to_json().unwrap();
        assert_eq!(json["tenant"], "acme");
        assert_eq!(
            Envelope::from_json(json.clone())
                .unwrap()
                .tenant()
                .unwrap()
                .as_str(),
            "acme"
        );
        assert!(sample().to_json().unwrap().get("tenant").is_none());
        let mut forged = json;
        forged["tenant"] = "beta".into();
        assert!(matches!(
            Envelope::from_json(forged),
            Err(DecodeError::TenantMismatch { .. })
        ));
    }

    #[test]
    fn traceparent_is_checked() {
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err()
        );
        assert!(TraceParent::parse("garbage").is_err());
    }
}
