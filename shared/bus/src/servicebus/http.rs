//! The `HttpClient` every Service Bus request goes through, crate-made or
//! ours. It fills the gaps `azure_messaging_servicebus` 0.21 leaves:
//!
//! - Entra ID: the crate only signs with a shared key; with a credential
//!   the signature is replaced by `Authorization: Bearer <token>`.
//! - Endpoint: the crate builds `https://{ns}.servicebus.windows.net/…`;
//!   an endpoint set in the options (a local stand-in, a sovereign cloud)
//!   receives the request instead, path and query unchanged, and the
//!   signature still names the URL Azure would see.
//! - Time limits: the crate sets none. A long poll (`?timeout=N`) may take
//!   N seconds plus a margin; anything else the request timeout
//!   ([`super::ServiceBusOptions::request_timeout`], 30 s by default).
//! - 64-bit sequence numbers: the crate reads `EnqueuedSequenceNumber` as
//!   an `i32` and requires `State` and `TimeToLive` (and `EnqueuedTimeUtc`,
//!   which Service Bus always sends), so a message on a busy
//!   or partitioned entity would fail to parse after it was locked. The
//!   original `BrokerProperties` is kept under [`RAW_BROKER_PROPERTIES`]
//!   for the adapter (which reads it with 64-bit numbers) and the crate is
//!   given a copy it can parse.
//! - Counting: every request is one billed operation, counted by kind
//!   ([`Operations`]) so a bench can say where the bill comes from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use azure_core::auth::TokenCredential;
use azure_core::error::{Error, ErrorKind};
use azure_core::headers::{HeaderName, HeaderValue};
use azure_core::{HttpClient, Request, Response, Url};

use super::connection::ENTRA_SCOPE;

/// Where the untouched `BrokerProperties` of a received message is kept.
pub(super) const RAW_BROKER_PROPERTIES: &str = "x-legato-raw-brokerproperties";
/// A request that is not a long poll, including its connection, unless
/// the options say otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a long poll may take beyond the wait it asked for.
const POLL_MARGIN: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub(super) struct ServiceBusHttp {
    inner: legato_azure::Transport,
    request_timeout: Duration,
    endpoint: Option<Url>,
    credential: Option<Arc<dyn TokenCredential>>,
    pub(super) counters: Counters,
}

/// Service Bus requests made, by kind. Azure's Standard tier bills each
/// one as an operation, empty long polls included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Operations {
    /// Send requests to a topic (work, progress and dead-letter copies): a
    /// batch of messages is one.
    pub sends: u64,
    /// Peek-lock receives that returned a message.
    pub receives: u64,
    /// Peek-lock receives that waited and returned nothing.
    pub empty_receives: u64,
    /// Completes and abandons.
    pub settlements: u64,
    /// Lock renewals of messages whose handling outlasts part of the lock.
    pub renewals: u64,
    /// Management API requests (entities, rules, listings).
    pub management: u64,
}

impl Operations {
    pub fn total(&self) -> u64 {
        self.sends
            + self.receives
            + self.empty_receives
            + self.settlements
            + self.renewals
            + self.management
    }

    /// What was made since `earlier`.
    pub fn since(&self, earlier: &Operations) -> Operations {
        Operations {
            sends: self.sends - earlier.sends,
            receives: self.receives - earlier.receives,
            empty_receives: self.empty_receives - earlier.empty_receives,
            settlements: self.settlements - earlier.settlements,
            renewals: self.renewals - earlier.renewals,
            management: self.management - earlier.management,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Receive,
    Settle,
    Renew,
    Management,
}

/// Tells a runtime request from a management one by its documented path:
/// `POST /{topic}/messages` sends, `…/messages/head` receives, and
/// `…/messages/{seq}/{lock}` is complete (DELETE), abandon (PUT) or renew
/// (POST); anything else is an entity request.
fn kind(method: &azure_core::Method, path: &str) -> Kind {
    let path = path.trim_end_matches('/');
    if path.ends_with("/messages/head") {
        return Kind::Receive;
    }
    if path.ends_with("/messages") && *method == azure_core::Method::Post {
        return Kind::Send;
    }
    if path.contains("/messages/") {
        return match *method {
            azure_core::Method::Post => Kind::Renew,
            _ => Kind::Settle,
        };
    }
    Kind::Management
}

#[derive(Debug, Default, Clone)]
pub(super) struct Counters(Arc<[AtomicU64; 6]>);

impl Counters {
    fn record(&self, kind: Kind, empty: bool) {
        let slot = match (kind, empty) {
            (Kind::Send, _) => 0,
            (Kind::Receive, false) => 1,
            (Kind::Receive, true) => 2,
            (Kind::Settle, _) => 3,
            (Kind::Renew, _) => 4,
            (Kind::Management, _) => 5,
        };
        self.0[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> Operations {
        let [
            sends,
            receives,
            empty_receives,
            settlements,
            renewals,
            management,
        ] = self.0.each_ref().map(|c| c.load(Ordering::Relaxed));
        Operations {
            sends,
            receives,
            empty_receives,
            settlements,
            renewals,
            management,
        }
    }
}

impl ServiceBusHttp {
    pub(super) fn new(
        endpoint: Option<Url>,
        credential: Option<Arc<dyn TokenCredential>>,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: legato_azure::Transport::new(None, None).map_err(|e| e.to_string())?,
            request_timeout,
            endpoint,
            credential,
            counters: Counters::default(),
        })
    }
}

fn time_limit(url: &Url, request_timeout: Duration) -> Duration {
    url.query_pairs()
        .find(|(k, _)| k == "timeout")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map_or(request_timeout, |s| Duration::from_secs(s) + POLL_MARGIN)
}

fn redirect(url: &mut Url, endpoint: &Url) -> azure_core::Result<()> {
    let bad = |what: &str| {
        Error::message(
            ErrorKind::Other,
            format!("bus.endpoint: cannot use its {what}"),
        )
    };
    url.set_scheme(endpoint.scheme())
        .map_err(|()| bad("scheme"))?;
    url.set_host(endpoint.host_str()).map_err(|_| bad("host"))?;
    url.set_port(endpoint.port()).map_err(|()| bad("port"))?;
    Ok(())
}

/// A `BrokerProperties` the crate can parse: numbers it would read as
/// `i32` dropped when larger, required fields present.
fn for_the_crate(raw: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let object = value.as_object_mut()?;
    if object
        .get("EnqueuedSequenceNumber")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|n| i32::try_from(n).is_err())
    {
        object.remove("EnqueuedSequenceNumber");
    }
    object
        .entry("State")
        .or_insert_with(|| serde_json::Value::String("Active".into()));
    object
        .entry("TimeToLive")
        .or_insert_with(|| serde_json::json!(922_337_203_685.477_5));
    Some(value.to_string())
}

#[async_trait::async_trait]
impl HttpClient for ServiceBusHttp {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let kind = kind(request.method(), request.url().path());
        let mut request = request.clone();
        if let Some(credential) = &self.credential {
            let token = credential.get_token(&[ENTRA_SCOPE]).await?;
            request.insert_header(
                azure_core::headers::AUTHORIZATION,
                format!("Bearer {}", token.token.secret()),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            redirect(request.url_mut(), endpoint)?;
        }
        let limit = time_limit(request.url(), self.request_timeout);
        let response = tokio::time::timeout(limit, self.inner.execute_request(&request))
            .await
            .map_err(|_| {
                Error::message(
                    ErrorKind::Io,
                    format!("no answer from Service Bus within {limit:?}"),
                )
            })??;
        self.counters
            .record(kind, response.status() == azure_core::StatusCode::NoContent);
        let broker = HeaderName::from_static("brokerproperties");
        let Some(raw) = response
            .headers()
            .get_optional_str(&broker)
            .map(str::to_owned)
        else {
            return Ok(response);
        };
        let (status, mut headers, body) = response.deconstruct();
        headers.insert(
            HeaderName::from_static(RAW_BROKER_PROPERTIES),
            HeaderValue::from(raw.clone()),
        );
        match for_the_crate(&raw) {
            Some(sanitised) => headers.insert(broker, HeaderValue::from(sanitised)),
            // Unparseable: the adapter reports it from the raw copy.
            None => headers.insert(broker, HeaderValue::from_static("{}")),
        }
        let body = body.collect().await?;
        let stream = futures::stream::iter(std::iter::once(Ok(body)));
        Ok(Response::new(status, headers, Box::pin(stream)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_number_past_32_bits_does_not_break_the_crates_parse() {
        // As a peek-lock answers (the documented example's fields), on an
        // entity whose sequence numbers are past 32 bits, without `State`
        // and `TimeToLive`.
        let raw = r#"{"DeliveryCount":1,"EnqueuedSequenceNumber":41095346599755778,"EnqueuedTimeUtc":"Wed, 02 Jul 2014 01:32:27 GMT","LockToken":"a","LockedUntilUtc":"Wed, 02 Jul 2014 01:33:27 GMT","MessageId":"m","SequenceNumber":41095346599755778}"#;
        let fixed = for_the_crate(raw).unwrap();
        let parsed: azure_messaging_servicebus::service_bus::BrokerProperties =
            fixed.parse().unwrap();
        assert_eq!(parsed.sequence_number, 41_095_346_599_755_778);
        assert_eq!(parsed.state, "Active");
    }

    #[test]
    fn requests_are_counted_by_their_documented_paths() {
        use azure_core::Method;
        let base = "/legato-agent-tasks/subscriptions/echo/messages";
        assert_eq!(kind(&Method::Post, "/legato-commands/messages"), Kind::Send);
        assert_eq!(kind(&Method::Post, &format!("{base}/head")), Kind::Receive);
        assert_eq!(
            kind(&Method::Delete, &format!("{base}/12/abc")),
            Kind::Settle
        );
        assert_eq!(kind(&Method::Put, &format!("{base}/12/abc")), Kind::Settle);
        assert_eq!(kind(&Method::Post, &format!("{base}/12/abc")), Kind::Renew);
        assert_eq!(
            kind(&Method::Put, "/legato-commands/subscriptions/orchestrator"),
            Kind::Management
        );
        assert_eq!(kind(&Method::Get, "/$Resources/Topics"), Kind::Management);
    }

    #[test]
    fn long_polls_get_their_wait_plus_a_margin() {
        let poll = Url::parse(
            "https://ns.servicebus.windows.net/t/subscriptions/s/messages/head?timeout=30",
        )
        .unwrap();
        let limit = Duration::from_secs(7);
        assert_eq!(time_limit(&poll, limit), Duration::from_secs(45));
        let send = Url::parse("https://ns.servicebus.windows.net/t/messages").unwrap();
        assert_eq!(time_limit(&send, limit), limit);
    }
}
