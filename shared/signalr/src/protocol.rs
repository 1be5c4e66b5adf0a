//! The SignalR JSON hub protocol, version 1.
//!
//! Every message is a JSON object followed by the record separator 0x1E;
//! one WebSocket text frame may carry several. The first record from a
//! client is the handshake request, answered by `{}` (or `{"error": ...}`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const RECORD_SEPARATOR: char = '\u{1e}';

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HandshakeRequest {
    pub protocol: String,
    pub version: u32,
}

/// The handshake answer: `{}` accepts, `{"error": ...}` refuses.
pub fn handshake_response(error: Option<&str>) -> String {
    let body = match error {
        Some(e) => serde_json::json!({ "error": e }),
        None => serde_json::json!({}),
    };
    frame(&body)
}

/// Hub messages by their numeric `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 1: a call; `invocation_id` absent for fire-and-forget.
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
    },
    /// 3: the answer to an invocation with an id.
    Completion {
        invocation_id: String,
        result: Option<Value>,
        error: Option<String>,
    },
    /// 6
    Ping,
    /// 7
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// Types this hub does not act on (streams, cancel, acks).
    Other(u8),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arguments: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow_reconnect: Option<bool>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("message is incomplete: no record separator")]
    Incomplete,
    #[error("not a hub message: {0}")]
    Malformed(String),
}

impl Message {
    pub fn parse(record: &str) -> Result<Self, ProtocolError> {
        let wire: Wire =
            serde_json::from_str(record).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        Ok(match wire.kind {
            1 => Self::Invocation {
                invocation_id: wire.invocation_id,
                target: wire
                    .target
                    .ok_or_else(|| ProtocolError::Malformed("invocation without target".into()))?,
                arguments: wire.arguments.unwrap_or_default(),
            },
            3 => Self::Completion {
                invocation_id: wire.invocation_id.unwrap_or_default(),
                result: wire.result,
                error: wire.error,
            },
            6 => Self::Ping,
            7 => Self::Close {
                error: wire.error,
                allow_reconnect: wire.allow_reconnect.unwrap_or(false),
            },
            other => Self::Other(other),
        })
    }

    /// The message as one record (JSON + 0x1E).
    pub fn encode(&self) -> String {
        let wire = match self {
            Self::Invocation {
                invocation_id,
                target,
                arguments,
            } => Wire {
                kind: 1,
                invocation_id: invocation_id.clone(),
                target: Some(target.clone()),
                arguments: Some(arguments.clone()),
                ..Wire::empty()
            },
            Self::Completion {
                invocation_id,
                result,
                error,
            } => Wire {
                kind: 3,
                invocation_id: Some(invocation_id.clone()),
                result: if error.is_some() {
                    None
                } else {
                    Some(result.clone().unwrap_or(Value::Null))
                },
                error: error.clone(),
                ..Wire::empty()
            },
            Self::Ping => Wire {
                kind: 6,
                ..Wire::empty()
            },
            Self::Close {
                error,
                allow_reconnect,
            } => Wire {
                kind: 7,
                error: error.clone(),
                allow_reconnect: allow_reconnect.then_some(true),
                ..Wire::empty()
            },
            Self::Other(kind) => Wire {
                kind: *kind,
                ..Wire::empty()
            },
        };
        frame(&wire)
    }
}

impl Wire {
    fn empty() -> Self {
        Self {
            kind: 0,
            invocation_id: None,
            target: None,
            arguments: None,
            result: None,
            error: None,
            allow_reconnect: None,
        }
    }
}

fn frame<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    text.push(RECORD_SEPARATOR);
    text
}

/// Splits a text frame into its records. Every record must be terminated;
/// a trailing fragment is an error (the stock client never splits a record
/// across frames).
pub fn records(frame: &str) -> Result<Vec<&str>, ProtocolError> {
    if !frame.ends_with(RECORD_SEPARATOR) {
        return Err(ProtocolError::Incomplete);
    }
    Ok(frame
        .split(RECORD_SEPARATOR)
        .filter(|r| !r.is_empty())
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_and_records_follow_the_protocol() {
        assert_eq!(handshake_response(None), "{}\u{1e}");
        assert_eq!(
            handshake_response(Some("nope")),
            "{\"error\":\"nope\"}\u{1e}"
        );
        let frame = "{\"protocol\":\"json\",\"version\":1}\u{1e}{\"type\":6}\u{1e}";
        let parts = records(frame).unwrap();
        let hello: HandshakeRequest = serde_json::from_str(parts[0]).unwrap();
        assert_eq!(
            hello,
            HandshakeRequest {
                protocol: "json".into(),
                version: 1
            }
        );
        assert_eq!(Message::parse(parts[1]).unwrap(), Message::Ping);
        assert_eq!(records("{\"type\":6}"), Err(ProtocolError::Incomplete));
    }

    #[test]
    fn invocations_and_completions_round_trip_in_the_documented_shape() {
        let call = Message::parse(
            r#"{"type":1,"invocationId":"0","target":"Subscribe","arguments":["i-1"]}"#,
        )
        .unwrap();
        assert_eq!(
            call,
            Message::Invocation {
                invocation_id: Some("0".into()),
                target: "Subscribe".into(),
                arguments: vec![json!("i-1")]
            }
        );
        let done = Message::Completion {
            invocation_id: "0".into(),
            result: Some(json!({"seq": 3})),
            error: None,
        }
        .encode();
        assert_eq!(
            done,
            "{\"type\":3,\"invocationId\":\"0\",\"result\":{\"seq\":3}}\u{1e}"
        );
        let failed = Message::Completion {
            invocation_id: "1".into(),
            result: None,
            error: Some("no".into()),
        }
        .encode();
        assert_eq!(
            failed,
            "{\"type\":3,\"invocationId\":\"1\",\"error\":\"no\"}\u{1e}"
        );
        let push = Message::Invocation {
            invocation_id: None,
            target: "progress".into(),
            arguments: vec![json!({"seq": 1})],
        }
        .encode();
        assert_eq!(
            push,
            "{\"type\":1,\"target\":\"progress\",\"arguments\":[{\"seq\":1}]}\u{1e}"
        );
        let close = Message::Close {
            error: Some("bye".into()),
            allow_reconnect: true,
        }
        .encode();
        assert_eq!(
            close,
            "{\"type\":7,\"error\":\"bye\",\"allowReconnect\":true}\u{1e}"
        );
    }
}
