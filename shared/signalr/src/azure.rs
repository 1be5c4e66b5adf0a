//! Azure SignalR Service, serverless mode, with an access key or with
//! Microsoft Entra ID (a managed identity).
//!
//! - The notifier sends each progress event to the group named by the
//!   instance id: `POST {endpoint}/api/v1/hubs/{hub}/groups/{group}` with
//!   `{"target": "progress", "arguments": [event]}` (202 Accepted).
//! - The gateway adds a client's connection (or user) to an instance's
//!   group after checking the caller may watch it:
//!   `PUT {endpoint}/api/v1/hubs/{hub}/groups/{group}/connections/{id}`
//!   or `.../users/{user}`.
//! - The gateway's negotiate answers `{url, accessToken}` so the stock
//!   client connects to `{endpoint}/client/?hub={hub}`.
//!
//! With an access key every REST call carries `Authorization: Bearer
//! <JWT>` signed HS256 with the key's UTF-8 bytes, `aud` = the request URL
//! without query or trailing slash, and `exp`; a client token's `aud` is
//! the client URL and `nameid` the user id.
//!
//! With Entra ID (`AuthType=azure.msi`, the service's local auth disabled)
//! REST calls carry the identity's token for `https://signalr.azure.com`
//! (role SignalR REST API Owner), and client tokens come from the service:
//! `POST {endpoint}/api/hubs/{hub}/:generateToken?api-version=2022-11-01
//! &userId=…&minutesToExpire=…` answers `{"token": "…"}`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::TokenCredential;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AzureError {
    #[error("signalr connection string: {0}")]
    ConnectionString(String),
    /// Network trouble, 408, 429 or 5xx: try again, not before
    /// `retry_after` when the service said so.
    #[error("Azure SignalR unavailable: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good: `status` says why (404: no such connection, 400:
    /// a bad request, 401/403: legato's credentials, 413: too large).
    #[error("Azure SignalR refused the request: {message}")]
    Refused { status: u16, message: String },
    #[error("signing a token: {0}")]
    Token(String),
}

/// The Entra ID scope of the service's data plane.
pub const ENTRA_SCOPE: &str = "https://signalr.azure.com/.default";
/// The API version of `:generateToken` (not in the 2022-06-01 one).
const GENERATE_TOKEN_API: &str = "2022-11-01";
/// The largest request body the service takes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

impl AzureError {
    fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// How long the service asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `Endpoint=https://<name>.service.signalr.net;AccessKey=<key>;Version=1.0;`
/// or, keyless, `Endpoint=…;AuthType=azure.msi;[ClientId=<id>;]Version=1.0;`
/// (optionally `Port=`), as the service's SDKs read them.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Scheme, host and port; no trailing slash.
    pub endpoint: String,
    pub auth: ConnectionAuth,
}

/// How the service is authenticated to.
#[derive(Clone, PartialEq, Eq)]
pub enum ConnectionAuth {
    AccessKey(String),
    /// The managed identity; `client_id` picks a user-assigned one.
    ManagedIdentity {
        client_id: Option<String>,
    },
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: never in logs.
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl FromStr for ConnectionString {
    type Err = AzureError;

    fn from_str(text: &str) -> Result<Self, AzureError> {
        let mut endpoint = None;
        let mut key = None;
        let mut port = None;
        let mut managed_identity = false;
        let mut client_id = None;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                AzureError::ConnectionString(format!("{part:?} is not Name=Value"))
            })?;
            match name.to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim_end_matches('/').to_owned()),
                "accesskey" => key = Some(value.to_owned()),
                "port" => {
                    port = Some(value.parse::<u16>().map_err(|_| {
                        AzureError::ConnectionString(format!("Port {value:?} is not a port"))
                    })?)
                }
                "version" if value != "1.0" => {
                    return Err(AzureError::ConnectionString(format!(
                        "Version {value} (expected 1.0)"
                    )));
                }
                "authtype" if value.eq_ignore_ascii_case("azure.msi") => managed_identity = true,
                "authtype" => {
                    return Err(AzureError::ConnectionString(format!(
                        "AuthType {value:?} is not supported (azure.msi is, or an AccessKey)"
                    )));
                }
                "clientid" => client_id = Some(value.to_owned()).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        let mut endpoint =
            endpoint.ok_or_else(|| AzureError::ConnectionString("Endpoint is missing".into()))?;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(AzureError::ConnectionString(format!(
                "Endpoint {endpoint:?} is not an http(s) URL"
            )));
        }
        if let Some(port) = port {
            endpoint = format!("{endpoint}:{port}");
        }
        let key = key.filter(|k| !k.is_empty());
        let auth = match (managed_identity, key) {
            (true, None) => ConnectionAuth::ManagedIdentity { client_id },
            (false, Some(key)) => ConnectionAuth::AccessKey(key),
            (true, Some(_)) => {
                return Err(AzureError::ConnectionString(
                    "AuthType=azure.msi and an AccessKey: choose one".into(),
                ));
            }
            (false, None) => {
                return Err(AzureError::ConnectionString(
                    "AccessKey is missing (or set AuthType=azure.msi for the managed identity)"
                        .into(),
                ));
            }
        };
        Ok(Self { endpoint, auth })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameid: Option<&'a str>,
}

/// What the gateway's negotiate answers in Azure mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NegotiateRedirect {
    pub url: String,
    pub access_token: String,
}

/// What signs requests and client tokens.
#[derive(Clone)]
enum Signer {
    AccessKey(String),
    Entra(Arc<dyn TokenCredential>),
}

#[derive(Clone)]
pub struct AzureSignalR {
    http: reqwest::Client,
    endpoint: String,
    signer: Signer,
    hub: String,
    token_lifetime: Duration,
    membership_ttl: Duration,
}

#[derive(serde::Deserialize)]
struct GeneratedToken {
    token: String,
}

impl AzureSignalR {
    /// A client for the connection string; with `AuthType=azure.msi` the
    /// managed identity of this container (`IDENTITY_ENDPOINT`,
    /// `IDENTITY_HEADER`) signs.
    pub fn new(
        connection: ConnectionString,
        hub: &str,
        token_lifetime: Duration,
    ) -> Result<Self, AzureError> {
        let signer = match connection.auth {
            ConnectionAuth::AccessKey(key) => Signer::AccessKey(key),
            ConnectionAuth::ManagedIdentity { client_id } => {
                let credential =
                    legato_azure::ManagedIdentityCredential::from_environment(client_id)
                        .map_err(|e| AzureError::ConnectionString(e.to_string()))?;
                Signer::Entra(Arc::new(credential))
            }
        };
        Self::build(connection.endpoint, signer, hub, token_lifetime)
    }

    /// A keyless client with a credential of the caller's.
    pub fn with_credential(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        hub: &str,
        token_lifetime: Duration,
    ) -> Result<Self, AzureError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        Self::build(endpoint, Signer::Entra(credential), hub, token_lifetime)
    }

    fn build(
        endpoint: String,
        signer: Signer,
        hub: &str,
        token_lifetime: Duration,
    ) -> Result<Self, AzureError> {
        let http = client(DEFAULT_REQUEST_TIMEOUT)?;
        Ok(Self {
            http,
            endpoint,
            signer,
            hub: hub.to_ascii_lowercase(),
            token_lifetime,
            membership_ttl: Duration::from_secs(86_400),
        })
    }

    /// Each REST call fails after `timeout` (a hung link is then left for
    /// a new connection).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Result<Self, AzureError> {
        self.http = client(timeout)?;
        Ok(self)
    }

    /// How long a user added to a group stays in it.
    pub fn with_membership_ttl(mut self, ttl: Duration) -> Self {
        self.membership_ttl = ttl;
        self
    }

    /// An HS256 token for `audience`, optionally naming a user.
    fn signed(&self, key: &str, audience: &str, user: Option<&str>) -> Result<String, AzureError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            aud: audience,
            iat: now,
            exp: now + self.token_lifetime.as_secs() as i64,
            nameid: user,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .map_err(|e| AzureError::Token(e.to_string()))
    }

    /// The bearer token for a REST call to `url`.
    async fn bearer(&self, url: &str) -> Result<String, AzureError> {
        match &self.signer {
            Signer::AccessKey(key) => self.signed(key, url, None),
            Signer::Entra(credential) => credential
                .get_token(&[ENTRA_SCOPE])
                .await
                .map(|t| t.token.secret().to_owned())
                .map_err(|e| AzureError::transient(format!("no Entra ID token: {e}"))),
        }
    }

    fn hub_url(&self) -> String {
        format!("{}/api/v1/hubs/{}", self.endpoint, self.hub)
    }

    /// Where clients connect, and a token for `user` to connect with:
    /// signed here with the key, or issued by the service for the identity.
    pub async fn negotiate(&self, user: &str) -> Result<NegotiateRedirect, AzureError> {
        let url = format!("{}/client/?hub={}", self.endpoint, self.hub);
        let access_token = match &self.signer {
            Signer::AccessKey(key) => self.signed(key, &url, Some(user))?,
            Signer::Entra(_) => self.generate_token(user).await?,
        };
        Ok(NegotiateRedirect { access_token, url })
    }

    async fn generate_token(&self, user: &str) -> Result<String, AzureError> {
        let url = format!(
            "{}/api/hubs/{}/:generateToken",
            self.endpoint,
            segment(&self.hub)
        );
        let minutes = (self.token_lifetime.as_secs() / 60).max(1).to_string();
        let with_query = url::Url::parse_with_params(
            &url,
            [
                ("api-version", GENERATE_TOKEN_API),
                ("userId", user),
                ("minutesToExpire", &minutes),
            ],
        )
        .map_err(|e| AzureError::ConnectionString(format!("{url}: {e}")))?;
        let request = self
            .http
            .post(with_query)
            .bearer_auth(self.bearer(&url).await?);
        let response = checked(request.send().await, &url).await?;
        let body: GeneratedToken = response
            .json()
            .await
            .map_err(|e| AzureError::transient(format!("{url} answered no token: {e}")))?;
        Ok(body.token)
    }

    /// Invokes `target` with `arguments` on every connection in `group`.
    pub async fn send_to_group(
        &self,
        group: &str,
        target: &str,
        arguments: Vec<Value>,
    ) -> Result<(), AzureError> {
        let url = format!("{}/groups/{}", self.hub_url(), segment(group));
        let body = json!({ "target": target, "arguments": arguments });
        self.call(reqwest::Method::POST, &url, Some(body)).await
    }

    pub async fn add_connection_to_group(
        &self,
        group: &str,
        connection_id: &str,
    ) -> Result<(), AzureError> {
        let url = format!(
            "{}/groups/{}/connections/{}",
            self.hub_url(),
            segment(group),
            segment(connection_id)
        );
        self.call(reqwest::Method::PUT, &url, None).await
    }

    /// Adds `user` for the membership TTL: without one Azure keeps a
    /// membership up to a year, and only a user's 100 newest.
    pub async fn add_user_to_group(&self, group: &str, user: &str) -> Result<(), AzureError> {
        let url = format!(
            "{}/groups/{}/users/{}?ttl={}",
            self.hub_url(),
            segment(group),
            segment(user),
            self.membership_ttl.as_secs().max(1)
        );
        self.call(reqwest::Method::PUT, &url, None).await
    }

    pub async fn remove_user_from_group(&self, group: &str, user: &str) -> Result<(), AzureError> {
        let url = format!(
            "{}/groups/{}/users/{}",
            self.hub_url(),
            segment(group),
            segment(user)
        );
        self.call(reqwest::Method::DELETE, &url, None).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(), AzureError> {
        // The token's audience is the URL without its query.
        let audience = url.split('?').next().unwrap_or(url);
        let token = self.bearer(audience).await?;
        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        checked(request.send().await, url).await.map(drop)
    }
}

/// The response if it succeeded; otherwise what went wrong, as transient
/// (network, 429, 5xx) or refused.
async fn checked(
    sent: Result<reqwest::Response, reqwest::Error>,
    url: &str,
) -> Result<reqwest::Response, AzureError> {
    let response = sent.map_err(|e| AzureError::transient(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let text = response.text().await.unwrap_or_default();
    let message = format!(
        "{status} from {url}: {}",
        text.chars().take(300).collect::<String>()
    );
    // As the service's SDK does: 408, 429 and 5xx are worth another try.
    if matches!(status.as_u16(), 408 | 429) || status.is_server_error() {
        Err(AzureError::Transient {
            message,
            retry_after,
        })
    } else {
        Err(AzureError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at =
        OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822).ok()?;
    let wait = at - OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// A path segment: unreserved characters pass, the rest is percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Each REST call's deadline unless `signalr.request_timeout_ms` says
/// otherwise.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client of the REST calls, each ending at `timeout`.
fn client(timeout: Duration) -> Result<reqwest::Client, AzureError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| AzureError::ConnectionString(format!("HTTP client: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_with_port_and_refuse_what_is_missing() {
        let c: ConnectionString =
            "Endpoint=https://demo.service.signalr.net;AccessKey=abc;Version=1.0;"
                .parse()
                .unwrap();
        assert_eq!(c.endpoint, "https://demo.service.signalr.net");
        let c: ConnectionString = "Endpoint=http://localhost/;Port=8888;AccessKey=k;Version=1.0;"
            .parse()
            .unwrap();
        assert_eq!(c.endpoint, "http://localhost:8888");
        assert!(format!("{c:?}").contains("localhost") && !format!("{c:?}").contains("AccessKey"));
        let c: ConnectionString =
            "Endpoint=https://demo.service.signalr.net;AuthType=azure.msi;ClientId=abc;Version=1.0;"
                .parse()
                .unwrap();
        assert!(matches!(
            c.auth,
            ConnectionAuth::ManagedIdentity { client_id: Some(ref id) } if id == "abc"
        ));
        for bad in [
            "Endpoint=https://x;AuthType=azure.app;Version=1.0;",
            "Endpoint=https://x;AuthType=azure.msi;AccessKey=k;Version=1.0;",
            "AccessKey=k;Version=1.0;",
            "Endpoint=https://x;Version=1.0;",
            "Endpoint=https://x;AccessKey=k;Version=2.0;",
            "Endpoint=x;AccessKey=k",
        ] {
            assert!(bad.parse::<ConnectionString>().is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn segments_encode_what_a_path_cannot_hold() {
        assert_eq!(segment("order-42.a_b"), "order-42.a_b");
        assert_eq!(segment("a:b/c"), "a%3Ab%2Fc");
    }
}
