//! Azure SignalR Service, serverless mode, with an access key.
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
//! Every REST call carries `Authorization: Bearer <JWT>` signed HS256 with
//! the access key's UTF-8 bytes, `aud` = the request URL without query or
//! trailing slash, and `exp`. A client token's `aud` is the client URL and
//! `nameid` the user id.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AzureError {
    #[error("signalr connection string: {0}")]
    ConnectionString(String),
    /// Network trouble, 429 or 5xx: try again.
    #[error("Azure SignalR unavailable: {0}")]
    Transient(String),
    #[error("Azure SignalR refused the request: {0}")]
    Refused(String),
    #[error("signing a token: {0}")]
    Token(String),
}

/// `Endpoint=https://<name>.service.signalr.net;AccessKey=<key>;Version=1.0;`
/// (optionally `Port=`).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Scheme, host and port; no trailing slash.
    pub endpoint: String,
    access_key: String,
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
                "authtype" => {
                    return Err(AzureError::ConnectionString(
                        "AuthType (managed identity) is not supported yet; use an access key"
                            .into(),
                    ));
                }
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
        let access_key = key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AzureError::ConnectionString("AccessKey is missing".into()))?;
        Ok(Self {
            endpoint,
            access_key,
        })
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

#[derive(Clone)]
pub struct AzureSignalR {
    http: reqwest::Client,
    connection: ConnectionString,
    hub: String,
    token_lifetime: Duration,
}

impl AzureSignalR {
    pub fn new(
        connection: ConnectionString,
        hub: &str,
        token_lifetime: Duration,
    ) -> Result<Self, AzureError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AzureError::Refused(e.to_string()))?;
        Ok(Self {
            http,
            connection,
            hub: hub.to_ascii_lowercase(),
            token_lifetime,
        })
    }

    /// An HS256 token for `audience`, optionally naming a user.
    pub fn token(&self, audience: &str, user: Option<&str>) -> Result<String, AzureError> {
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
            &EncodingKey::from_secret(self.connection.access_key.as_bytes()),
        )
        .map_err(|e| AzureError::Token(e.to_string()))
    }

    fn hub_url(&self) -> String {
        format!("{}/api/v1/hubs/{}", self.connection.endpoint, self.hub)
    }

    /// Where clients connect, and a token for `user` to connect with.
    pub fn negotiate(&self, user: &str) -> Result<NegotiateRedirect, AzureError> {
        let url = format!("{}/client/?hub={}", self.connection.endpoint, self.hub);
        Ok(NegotiateRedirect {
            access_token: self.token(&url, Some(user))?,
            url,
        })
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

    pub async fn add_user_to_group(&self, group: &str, user: &str) -> Result<(), AzureError> {
        let url = format!(
            "{}/groups/{}/users/{}",
            self.hub_url(),
            segment(group),
            segment(user)
        );
        self.call(reqwest::Method::PUT, &url, None).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(), AzureError> {
        let token = self.token(url, None)?;
        let mut request = self.http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| AzureError::Transient(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let message = format!(
            "{status} from {url}: {}",
            text.chars().take(300).collect::<String>()
        );
        if status.as_u16() == 429 || status.is_server_error() {
            Err(AzureError::Transient(message))
        } else {
            Err(AzureError::Refused(message))
        }
    }
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
        for bad in [
            "AccessKey=k;Version=1.0;",
            "Endpoint=https://x;Version=1.0;",
            "Endpoint=https://x;AccessKey=k;Version=2.0;",
            "Endpoint=x;AccessKey=k",
        ] {
            assert!(bad.parse::<ConnectionString>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_encode_what_a_path_cannot_hold() {
        assert_eq!(segment("order-42.a_b"), "order-42.a_b");
        assert_eq!(segment("a:b/c"), "a%3Ab%2Fc");
    }
}
