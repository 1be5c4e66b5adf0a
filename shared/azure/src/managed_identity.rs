//! Microsoft Entra ID tokens from the managed identity of an Azure
//! Container App (or App Service): the platform sets `IDENTITY_ENDPOINT`
//! and `IDENTITY_HEADER`, and a token is a `GET` of
//! `{IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>` with
//! the header `X-IDENTITY-HEADER`. A user-assigned identity is chosen by
//! `client_id`; without one the system-assigned identity answers.
//!
//! `azure_identity` 0.21 covers only the system-assigned case (its id is
//! fixed), and a user-assigned identity is what an app needs to pull its
//! first image and authenticate its scale rules, so this is written against
//! the documented protocol instead.

use std::collections::HashMap;
use std::time::Duration;

use azure_core::auth::{AccessToken, Secret, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

const API_VERSION: &str = "2019-08-01";
/// A cached token is replaced this long before it expires, so a request
/// never leaves with a token that lapses in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ManagedIdentityError {
    #[error("{0} is not set: no managed identity is available to this process")]
    MissingVariable(&'static str),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Tokens from the managed identity endpoint, cached per resource and
/// refreshed before they expire. `Debug` shows no secret.
pub struct ManagedIdentityCredential {
    endpoint: String,
    header: Secret,
    client_id: Option<String>,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, AccessToken>>,
}

impl std::fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds since the epoch; the endpoint sends a string, some hosts a
    /// number.
    expires_on: serde_json::Value,
}

impl ManagedIdentityCredential {
    /// The identity of this container: `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER` from the environment, and `client_id` for a
    /// user-assigned identity.
    pub fn from_environment(client_id: Option<String>) -> Result<Self, ManagedIdentityError> {
        let endpoint = std::env::var("IDENTITY_ENDPOINT")
            .map_err(|_| ManagedIdentityError::MissingVariable("IDENTITY_ENDPOINT"))?;
        let header = std::env::var("IDENTITY_HEADER")
            .map_err(|_| ManagedIdentityError::MissingVariable("IDENTITY_HEADER"))?;
        Self::new(endpoint, header, client_id)
    }

    pub fn new(
        endpoint: String,
        header: String,
        client_id: Option<String>,
    ) -> Result<Self, ManagedIdentityError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ManagedIdentityError::Client(e.to_string()))?;
        Ok(Self {
            endpoint,
            header: Secret::new(header),
            client_id: client_id.filter(|id| !id.is_empty()),
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch(&self, resource: &str) -> azure_core::Result<AccessToken> {
        let mut query = vec![("api-version", API_VERSION), ("resource", resource)];
        if let Some(id) = &self.client_id {
            query.push(("client_id", id));
        }
        let url = url::Url::parse_with_params(&self.endpoint, &query)
            .map_err(|e| Error::full(ErrorKind::Credential, e, "IDENTITY_ENDPOINT is not a URL"))?;
        let response = self
            .http
            .get(url)
            .header("X-IDENTITY-HEADER", self.header.secret())
            .header("Metadata", "true")
            .send()
            .await
            .map_err(|e| {
                Error::full(
                    ErrorKind::Io,
                    e,
                    "the managed identity endpoint did not answer",
                )
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            // The body names the problem (unknown client id, no identity
            // assigned) and carries no token.
            return Err(Error::message(
                ErrorKind::Credential,
                format!("the managed identity endpoint answered {status} for {resource}: {text}"),
            ));
        }
        let token: TokenResponse = serde_json::from_str(&text).map_err(|e| {
            Error::full(
                ErrorKind::DataConversion,
                e,
                "the managed identity endpoint answered something other than a token",
            )
        })?;
        let seconds = match &token.expires_on {
            serde_json::Value::String(s) => s.parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| {
            Error::message(
                ErrorKind::DataConversion,
                "the managed identity token has no usable expires_on",
            )
        })?;
        let expires_on = OffsetDateTime::from_unix_timestamp(seconds)
            .map_err(|e| Error::full(ErrorKind::DataConversion, e, "expires_on is out of range"))?;
        Ok(AccessToken::new(token.access_token, expires_on))
    }
}

/// `https://servicebus.azure.net/.default` asks for the resource
/// `https://servicebus.azure.net`.
fn resource_of(scope: &str) -> &str {
    scope
        .strip_suffix(azure_core::auth::DEFAULT_SCOPE_SUFFIX)
        .unwrap_or(scope)
}

#[async_trait::async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(Error::message(
                ErrorKind::Credential,
                "a managed identity token is for exactly one resource",
            ));
        };
        let resource = resource_of(scope);
        // One fetch at a time: callers that arrive while a token is being
        // fetched take it from the cache instead of asking again.
        let mut cache = self.cache.lock().await;
        let fresh_until = OffsetDateTime::now_utc() + REFRESH_MARGIN;
        if let Some(token) = cache.get(resource).filter(|t| t.expires_on > fresh_until) {
            return Ok(token.clone());
        }
        let token = self.fetch(resource).await?;
        cache.insert(resource.to_owned(), token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.cache.lock().await.clear();
        Ok(())
    }
}
