//! A local stand-in for the Azure Service Bus REST API, for tests and
//! benchmarks on machines that cannot reach Azure. It is written from
//! Microsoft's documentation of the runtime API (send, peek-lock, unlock,
//! complete, renew, receive-and-delete; `BrokerProperties` and custom
//! properties as headers; `Location` lock URLs), the Atom management API
//! (topics, subscriptions, rules), shared access signatures and Entra ID
//! bearer tokens, not from legato's adapter. It also stands in for the
//! Container Apps managed identity endpoint ([`IdentityEndpoint`]).
//!
//! What it models, and what it leaves out, is listed in
//! `docs/operations.md` ("Service Bus stand-in"). Entity names are matched
//! without regard to case, as Azure does.

mod auth;
mod clock;
mod filter;
mod identity;
mod management;
mod model;
mod runtime;
mod xml;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub use auth::{AUDIENCE, Entra, Policy, Rights};
pub use identity::{Identity, IdentityEndpoint};
pub use model::{Message, PropertyValue};

/// The policy every stand-in has, with all rights (as a namespace's
/// `RootManageSharedAccessKey` has).
pub const ROOT_POLICY: &str = "RootManageSharedAccessKey";

/// How a stand-in namespace starts.
#[derive(Clone)]
pub struct Config {
    /// The namespace's name: its host is `<name>.servicebus.windows.net`.
    pub namespace: String,
    pub policies: Vec<Policy>,
    pub entra: Option<Entra>,
    /// Added before every answer: a namespace far away, or slow.
    pub latency: Duration,
}

impl Config {
    /// A namespace with a root policy whose key is random.
    pub fn new(namespace: &str) -> Self {
        let key = base64_key();
        Self {
            namespace: namespace.to_owned(),
            policies: vec![Policy {
                name: ROOT_POLICY.into(),
                key,
                rights: Rights::ALL,
            }],
            entra: None,
            latency: Duration::ZERO,
        }
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    pub fn entra(mut self, entra: Entra) -> Self {
        self.entra = Some(entra);
        self
    }
}

fn base64_key() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) struct Namespace {
    pub(crate) host: String,
    pub(crate) config: Config,
    pub(crate) state: Mutex<model::State>,
    pub(crate) clock: clock::Clock,
    /// Woken on every event that can make a message available.
    pub(crate) available: tokio::sync::Notify,
    pub(crate) requests: AtomicU64,
    pub(crate) by_kind: Mutex<HashMap<&'static str, u64>>,
    /// Receive requests by queue path (`topic/subscriptions/name[/$deadletterqueue]`).
    pub(crate) receives: Mutex<HashMap<String, u64>>,
}

impl Namespace {
    pub(crate) fn state(&self) -> MutexGuard<'_, model::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, kind: &'static str) {
        *self
            .by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// A running stand-in on 127.0.0.1. Dropping it stops the server.
pub struct StandIn {
    namespace: Arc<Namespace>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
        self.sweeper.abort();
    }
}

impl StandIn {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(config: Config, addr: SocketAddr) -> std::io::Result<Self> {
        let namespace = Arc::new(Namespace {
            host: format!("{}.servicebus.windows.net", config.namespace),
            config,
            state: Mutex::new(model::State::default()),
            clock: clock::Clock::default(),
            available: tokio::sync::Notify::new(),
            requests: AtomicU64::new(0),
            by_kind: Mutex::new(HashMap::new()),
            receives: Mutex::new(HashMap::new()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .fallback(dispatch)
            .with_state(namespace.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("service bus stand-in stopped: {e}");
            }
        });
        let sweeping = namespace.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let now = sweeping.clock.now();
                sweeping.state().housekeeping(now);
                sweeping.available.notify_waiters();
            }
        });
        Ok(Self {
            namespace,
            addr,
            server,
            sweeper,
        })
    }

    /// Where requests go instead of `https://<namespace host>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `<name>.servicebus.windows.net`.
    pub fn host(&self) -> &str {
        &self.namespace.host
    }

    /// The root policy's connection string, as the portal shows it.
    pub fn connection_string(&self) -> String {
        self.connection_string_for(ROOT_POLICY).unwrap_or_default()
    }

    pub fn connection_string_for(&self, policy: &str) -> Option<String> {
        let policy = self
            .namespace
            .config
            .policies
            .iter()
            .find(|p| p.name == policy)?;
        Some(format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={};SharedAccessKey={}",
            self.namespace.host, policy.name, policy.key
        ))
    }

    /// Moves the stand-in's clock forward (lock expiry, idle deletion,
    /// duplicate windows, token expiry).
    pub fn advance(&self, by: Duration) {
        self.namespace.clock.advance(by);
        let now = self.namespace.clock.now();
        self.namespace.state().housekeeping(now);
        self.namespace.available.notify_waiters();
    }

    /// Requests served (every one is a billed operation on Azure, failed
    /// ones and empty receives included).
    pub fn requests(&self) -> u64 {
        self.namespace.requests.load(Ordering::Relaxed)
    }

    /// Requests by operation: `send`, `peek-lock`, `complete`, `abandon`,
    /// `renew`, `receive-and-delete`, `management`.
    pub fn requests_by_kind(&self) -> HashMap<&'static str, u64> {
        self.namespace
            .by_kind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Receive requests (peek-lock or receive-and-delete, empty ones
    /// included) on `topic/subscriptions/name`, or on its
    /// `…/$DeadLetterQueue`; names without regard to case.
    pub fn receives(&self, queue: &str) -> u64 {
        self.namespace
            .receives
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&queue.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Names of a topic's subscriptions, as stored (`None`: no topic).
    pub fn subscriptions(&self, topic: &str) -> Option<Vec<String>> {
        let state = self.namespace.state();
        let topic = state.topics.get(&model::key(topic))?;
        Some(
            topic
                .subscriptions
                .values()
                .map(|s| s.name.clone())
                .collect(),
        )
    }

    pub fn topics(&self) -> Vec<String> {
        self.namespace
            .state()
            .topics
            .values()
            .map(|t| t.name.clone())
            .collect()
    }

    /// (messages in the subscription, messages in its dead-letter queue).
    pub fn counts(&self, topic: &str, subscription: &str) -> Option<(usize, usize)> {
        let mut state = self.namespace.state();
        let sub = state.subscription_mut(topic, subscription).ok()?;
        Some((sub.active_count(), sub.dead_letter_count()))
    }
}

/// Every request: authorize for what it does, then run it.
async fn dispatch(State(ns): State<Arc<Namespace>>, request: Request) -> Response {
    ns.requests.fetch_add(1, Ordering::Relaxed);
    if !ns.config.latency.is_zero() {
        tokio::time::sleep(ns.config.latency).await;
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 1024 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("unreadable body: {e}")),
    };
    let call = Call {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let Some(path) = call.segments() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the path is not valid percent-encoding",
        );
    };
    let route =
        runtime::route(&call.method, &path).or_else(|| management::route(&call.method, &path));
    let Some(route) = route else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "{} {} is not an operation of this API",
                call.method,
                call.uri.path()
            ),
        );
    };
    ns.count(route.kind());
    if let Route::Runtime(op) = &route
        && let Some(queue) = op.receive_path()
    {
        *ns.receives
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue)
            .or_default() += 1;
    }
    let resource = format!(
        "https://{}{}",
        ns.host,
        call.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let authorization = call
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if let Err(why) = auth::authorize(
        authorization,
        &resource,
        route.needs(),
        &ns.config.policies,
        ns.config.entra.as_ref(),
        ns.clock.wall().unix_timestamp(),
    ) {
        return error(StatusCode::UNAUTHORIZED, &why);
    }
    match route {
        Route::Runtime(op) => runtime::run(&ns, op, &call).await,
        Route::Management(op) => management::run(&ns, op, &call),
    }
}

pub(crate) struct Call {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    fn segments(&self) -> Option<Vec<String>> {
        self.uri
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|v| v.into_owned())
            })
            .collect()
    }

    pub(crate) fn query(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_owned())
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) enum Route {
    Runtime(runtime::Op),
    Management(management::Op),
}

impl Route {
    fn needs(&self) -> auth::Needed {
        match self {
            Route::Runtime(op) => op.needs(),
            Route::Management(_) => auth::Needed::Manage,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Route::Runtime(op) => op.kind(),
            Route::Management(_) => "management",
        }
    }
}

/// An error the way Service Bus sends one: a status and an XML body with
/// the code and detail.
pub(crate) fn error(status: StatusCode, detail: &str) -> Response {
    let body = format!(
        "<Error><Code>{}</Code><Detail>{}</Detail></Error>",
        status.as_u16(),
        xml::escape(detail)
    );
    (
        status,
        [("content-type", "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An Entra ID issuer for tests: RS256 tokens signed with a key pair kept
/// in `fixtures/` for nothing but tests, and the namespace configuration
/// that trusts it.
pub struct TestIssuer {
    key: jsonwebtoken::EncodingKey,
}

impl TestIssuer {
    pub fn new() -> Self {
        Self {
            key: jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
                "../fixtures/entra-test-key.der"
            )),
        }
    }

    /// Trusts this issuer, with these role assignments by object id.
    pub fn entra(&self, principals: HashMap<String, Rights>) -> Entra {
        Entra {
            key: jsonwebtoken::DecodingKey::from_rsa_der(include_bytes!(
                "../fixtures/entra-test-key.pub.der"
            )),
            principals,
        }
    }

    /// A token for `audience` naming `oid`, valid from now for `lifetime`,
    /// with the claims Entra ID always sets (`iss`, `iat`, `nbf`, `exp`).
    pub fn token(&self, audience: &str, oid: &str, lifetime: Duration) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let exp = now + lifetime.as_secs() as i64;
        let claims = serde_json::json!({"aud": audience, "oid": oid, "iat": now, "nbf": now,
            "exp": exp, "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .unwrap_or_default()
    }
}

impl TestIssuer {
    /// Checks a token as a service trusting this issuer does: RS256 with
    /// the issuer's key, `aud` exactly `audience`, `exp` in the future.
    /// Returns the claims, or why the token is refused.
    pub fn verify(&self, token: &str, audience: &str) -> Result<serde_json::Value, String> {
        let key = jsonwebtoken::DecodingKey::from_rsa_der(include_bytes!(
            "../fixtures/entra-test-key.pub.der"
        ));
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| e.to_string())
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}
