//! The runtime API: send, peek-lock, receive-and-delete, and the three
//! operations on a lock (`Location` URL): `DELETE` completes, `PUT`
//! unlocks (abandons), `POST` renews.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use uuid::Uuid;

use crate::auth::Needed;
use crate::model::{self, Broker, Locked, Message, PropertyValue, Refusal, Settlement, Source};
use crate::{Call, Namespace, Route, error};

/// A peek-lock without `timeout` waits this long for a message.
const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Lock expiries are noticed at least this often by a waiting receive.
const RECHECK: Duration = Duration::from_millis(100);
/// Request headers that are HTTP's or the API's own, not custom
/// properties of the message.
const NOT_PROPERTIES: [&str; 13] = [
    "authorization",
    "content-type",
    "content-length",
    "host",
    "brokerproperties",
    "accept",
    "accept-encoding",
    "connection",
    "user-agent",
    "transfer-encoding",
    "expect",
    "te",
    "date",
];

pub(crate) enum Op {
    Send {
        topic: String,
    },
    Receive {
        topic: String,
        subscription: String,
        source: Source,
        delete: bool,
    },
    Settle {
        topic: String,
        subscription: String,
        source: Source,
        lock: String,
        method: Method,
    },
}

impl Op {
    pub(crate) fn needs(&self) -> Needed {
        match self {
            Op::Send { .. } => Needed::Send,
            _ => Needed::Listen,
        }
    }

    /// The queue a receive reads, lower-cased.
    pub(crate) fn receive_path(&self) -> Option<String> {
        let Op::Receive {
            topic,
            subscription,
            source,
            ..
        } = self
        else {
            return None;
        };
        let dead = match source {
            Source::Main => "",
            Source::DeadLetters => "/$deadletterqueue",
        };
        Some(format!("{topic}/subscriptions/{subscription}{dead}").to_ascii_lowercase())
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::Send { .. } => "send",
            Op::Receive { delete: false, .. } => "peek-lock",
            Op::Receive { delete: true, .. } => "receive-and-delete",
            Op::Settle { method, .. } if method == Method::DELETE => "complete",
            Op::Settle { method, .. } if method == Method::PUT => "abandon",
            Op::Settle { .. } => "renew",
        }
    }
}

fn is(segment: &str, word: &str) -> bool {
    segment.eq_ignore_ascii_case(word)
}

pub(crate) fn route(method: &Method, path: &[String]) -> Option<Route> {
    let op = match path {
        [topic, messages] if is(messages, "messages") && method == Method::POST => Op::Send {
            topic: topic.clone(),
        },
        [topic, subs, sub, rest @ ..] if is(subs, "subscriptions") => {
            let (source, rest) = match rest {
                [dlq, rest @ ..] if is(dlq, "$deadletterqueue") => (Source::DeadLetters, rest),
                _ => (Source::Main, rest),
            };
            match rest {
                [messages, head] if is(messages, "messages") && is(head, "head") => {
                    let delete = match *method {
                        Method::POST => false,
                        Method::DELETE => true,
                        _ => return None,
                    };
                    Op::Receive {
                        topic: topic.clone(),
                        subscription: sub.clone(),
                        source,
                        delete,
                    }
                }
                [messages, _id, lock] if is(messages, "messages") => {
                    if ![Method::DELETE, Method::PUT, Method::POST].contains(method) {
                        return None;
                    }
                    Op::Settle {
                        topic: topic.clone(),
                        subscription: sub.clone(),
                        source,
                        lock: lock.clone(),
                        method: method.clone(),
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(Route::Runtime(op))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::NoEntity(what) => error(StatusCode::GONE, &what),
        Refusal::NoLock => error(
            StatusCode::NOT_FOUND,
            "No message was found with the specified lock token; it was settled or its lock expired.",
        ),
    }
}

pub(crate) async fn run(ns: &Namespace, op: Op, call: &Call) -> Response {
    match op {
        Op::Send { topic } => send(ns, &topic, call),
        Op::Receive {
            topic,
            subscription,
            source,
            delete,
        } => receive(ns, &topic, &subscription, source, delete, call).await,
        Op::Settle {
            topic,
            subscription,
            source,
            lock,
            method,
        } => {
            let Ok(lock) = Uuid::parse_str(&lock) else {
                return error(StatusCode::BAD_REQUEST, "the lock token is not a GUID");
            };
            let settlement = match method {
                Method::DELETE => Settlement::Complete,
                Method::PUT => Settlement::Abandon,
                _ => Settlement::Renew,
            };
            let now = ns.clock.now();
            let settled = ns
                .state()
                .settle(&topic, &subscription, source, lock, settlement, now);
            match settled {
                Ok(()) => {
                    ns.available.notify_waiters();
                    StatusCode::OK.into_response()
                }
                Err(r) => refused(r),
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Settable {
    message_id: Option<String>,
    correlation_id: Option<String>,
    session_id: Option<String>,
    label: Option<String>,
    reply_to: Option<String>,
    to: Option<String>,
    reply_to_session_id: Option<String>,
    partition_key: Option<String>,
    time_to_live: Option<f64>,
}

/// Send Message Batch's content type (documented without parameters).
const BATCH: &str = "application/vnd.microsoft.servicebus.json";

/// One message of a batch: its body (base64 when `IsBodyBase64`), its
/// broker properties and its custom properties.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BatchEntry {
    body: String,
    #[serde(default)]
    is_body_base64: bool,
    #[serde(default)]
    broker_properties: Settable,
    #[serde(default)]
    user_properties: serde_json::Map<String, serde_json::Value>,
}

impl Settable {
    fn into_broker(self) -> Broker {
        Broker {
            message_id: self
                .message_id
                .unwrap_or_else(|| Uuid::new_v4().simple().to_string()),
            correlation_id: self.correlation_id,
            session_id: self.session_id,
            label: self.label,
            reply_to: self.reply_to,
            to: self.to,
            reply_to_session_id: self.reply_to_session_id,
            partition_key: self.partition_key,
            time_to_live: self.time_to_live,
        }
    }
}

/// Send Message Batch: every message of the array, in order, or none (a
/// refused batch sends nothing). The batch counts as one message against
/// the size limit.
fn send_batch(ns: &Namespace, topic: &str, call: &Call) -> Response {
    if call.body.len() > model::MAX_MESSAGE_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "The batch of {} bytes is over the {} bytes this tier allows.",
                call.body.len(),
                model::MAX_MESSAGE_BYTES
            ),
        );
    }
    let entries: Vec<BatchEntry> = match serde_json::from_slice(&call.body) {
        Ok(entries) => entries,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the batch is not a JSON array of messages: {e}"),
            );
        }
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let body = if entry.is_body_base64 {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(&entry.body) {
                Ok(bytes) => bytes::Bytes::from(bytes),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("a Body is not base64: {e}"),
                    );
                }
            }
        } else {
            bytes::Bytes::from(entry.body)
        };
        let mut properties = Vec::new();
        for (name, value) in entry.user_properties {
            let value = match value {
                serde_json::Value::String(s) => PropertyValue::Str(s),
                serde_json::Value::Bool(b) => PropertyValue::Bool(b),
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(n) => PropertyValue::Num(n),
                    None => PropertyValue::Str(n.to_string()),
                },
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("property {name} is {other}: not a string, number or boolean"),
                    );
                }
            };
            properties.push((name.to_ascii_lowercase(), value));
        }
        messages.push(Message::new(
            body,
            entry.broker_properties.into_broker(),
            properties,
            None,
        ));
    }
    let (now, wall) = (ns.clock.now(), ns.clock.wall());
    let mut state = ns.state();
    if let Err(r) = state.topic_mut(topic) {
        return refused(r);
    }
    for message in messages {
        if let Err(r) = state.send(topic, message, now, wall) {
            return refused(r);
        }
    }
    drop(state);
    ns.available.notify_waiters();
    StatusCode::CREATED.into_response()
}

fn send(ns: &Namespace, topic: &str, call: &Call) -> Response {
    if call.header("content-type") == Some(BATCH) {
        return send_batch(ns, topic, call);
    }
    let settable: Settable = match call.header("brokerproperties") {
        Some(text) => match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("BrokerProperties is not valid JSON: {e}"),
                );
            }
        },
        None => Settable::default(),
    };
    let mut size = call.body.len();
    let mut properties = Vec::new();
    for (name, value) in &call.headers {
        let name = name.as_str();
        if NOT_PROPERTIES.contains(&name) || name.starts_with("x-ms-") {
            continue;
        }
        let Ok(value) = value.to_str() else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("property {name} is not text"),
            );
        };
        size += name.len() + value.len();
        properties.push((name.to_owned(), PropertyValue::from_header(value)));
    }
    size += call.header("brokerproperties").map_or(0, str::len);
    if size > model::MAX_MESSAGE_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "The message of {size} bytes is over the {} bytes this tier allows.",
                model::MAX_MESSAGE_BYTES
            ),
        );
    }
    let broker = settable.into_broker();
    let message = Message::new(
        call.body.clone(),
        broker,
        properties,
        call.header("content-type").map(str::to_owned),
    );
    let (now, wall) = (ns.clock.now(), ns.clock.wall());
    let sent = ns.state().send(topic, message, now, wall);
    match sent {
        Ok(_) => {
            ns.available.notify_waiters();
            StatusCode::CREATED.into_response()
        }
        Err(r) => refused(r),
    }
}

async fn receive(
    ns: &Namespace,
    topic: &str,
    subscription: &str,
    source: Source,
    delete: bool,
    call: &Call,
) -> Response {
    let wait = call
        .query("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_RECEIVE_TIMEOUT, Duration::from_secs);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = ns.available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (now, wall) = (ns.clock.now(), ns.clock.wall());
        let outcome = if delete {
            ns.state()
                .receive_and_delete(topic, subscription, source, now)
                .map(|m| m.map(|message| (message, None)))
        } else {
            ns.state()
                .peek_lock(topic, subscription, source, now, wall)
                .map(|l| {
                    l.map(
                        |Locked {
                             message,
                             lock_token,
                             locked_until,
                         }| { (message, Some((lock_token, locked_until))) },
                    )
                })
        };
        match outcome {
            Err(r) => return refused(r),
            Ok(Some((message, lock))) => {
                return delivered(ns, topic, subscription, source, &message, lock);
            }
            Ok(None) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return StatusCode::NO_CONTENT.into_response();
        }
        let _ = tokio::time::timeout((deadline - now).min(RECHECK), notified).await;
    }
}

fn http_date(t: OffsetDateTime) -> String {
    // RFC 2616 dates end in "GMT".
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc2822)
        .map(|s| s.replace("+0000", "GMT"))
        .unwrap_or_default()
}

fn delivered(
    ns: &Namespace,
    topic: &str,
    subscription: &str,
    source: Source,
    message: &Message,
    lock: Option<(Uuid, OffsetDateTime)>,
) -> Response {
    let b = &message.broker;
    let mut broker = serde_json::json!({
        "DeliveryCount": message.delivery_count,
        "EnqueuedSequenceNumber": message.sequence_number,
        "EnqueuedTimeUtc": http_date(message.enqueued_at),
        "MessageId": b.message_id,
        "SequenceNumber": message.sequence_number,
        "State": "Active",
        "TimeToLive": b.time_to_live.unwrap_or(922_337_203_685.477_5),
    });
    let optional = [
        ("CorrelationId", &b.correlation_id),
        ("SessionId", &b.session_id),
        ("Label", &b.label),
        ("ReplyTo", &b.reply_to),
        ("To", &b.to),
        ("ReplyToSessionId", &b.reply_to_session_id),
        ("PartitionKey", &b.partition_key),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            broker[name] = serde_json::Value::String(v.clone());
        }
    }
    let mut response = if let Some((token, until)) = lock {
        broker["LockToken"] = serde_json::Value::String(token.to_string());
        broker["LockedUntilUtc"] = serde_json::Value::String(http_date(until));
        let queue = match source {
            Source::Main => String::new(),
            Source::DeadLetters => "/$DeadLetterQueue".to_owned(),
        };
        let location = format!(
            "https://{}/{topic}/subscriptions/{subscription}{queue}/messages/{}/{token}",
            ns.host,
            percent_encoding::utf8_percent_encode(
                &b.message_id,
                percent_encoding::NON_ALPHANUMERIC
            ),
        );
        let mut r = (StatusCode::CREATED, message.body.clone()).into_response();
        if let Ok(v) = location.parse() {
            r.headers_mut().insert("location", v);
        }
        r
    } else {
        (StatusCode::OK, message.body.clone()).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(v) = broker.to_string().parse() {
        headers.insert("brokerproperties", v);
    }
    if let Some(ct) = message.content_type.as_deref().and_then(|c| c.parse().ok()) {
        headers.insert("content-type", ct);
    }
    for (name, value) in &message.properties {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            value.to_header().parse(),
        ) {
            headers.insert(n, v);
        }
    }
    response
}
