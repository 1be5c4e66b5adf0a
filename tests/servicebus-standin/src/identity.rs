//! A stand-in for the managed identity endpoint Azure Container Apps gives
//! each app (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`), written from
//! Microsoft's documentation ("Managed identities in Azure Container
//! Apps", REST protocol): `GET {endpoint}?api-version=2019-08-01
//! &resource=<resource>[&client_id=<id>]` with the header
//! `X-IDENTITY-HEADER: <secret>` answers
//! `{access_token, expires_on, resource, token_type, client_id}`, with
//! `expires_on` in seconds since the epoch, as a string.
//!
//! Tokens come from a [`TestIssuer`]: RS256, `aud` the resource asked for,
//! `iss` an Entra ID issuer, `oid` the identity's object id. What it
//! refuses: a missing or wrong header (401), another api-version or no
//! resource (400), a client id that is not the identity's (400, as for an
//! identity not assigned to the app).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::TestIssuer;

const API_VERSION: &str = "2019-08-01";
const LIFETIME: Duration = Duration::from_secs(3600);

/// The identity the endpoint hands out tokens for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `X-IDENTITY-HEADER` value the platform gave the app.
    pub secret: String,
    /// A user-assigned identity's client id; `None` is a system-assigned
    /// identity, which answers requests without `client_id`.
    pub client_id: Option<String>,
    /// The object id its tokens name (`oid`), which role assignments use.
    pub object_id: String,
}

struct Endpoint {
    issuer: Arc<TestIssuer>,
    identity: Identity,
    /// Resources asked for, in order.
    asked: Mutex<Vec<String>>,
}

/// A running identity endpoint on 127.0.0.1; stops when dropped.
pub struct IdentityEndpoint {
    addr: SocketAddr,
    endpoint: Arc<Endpoint>,
    server: tokio::task::JoinHandle<()>,
}

impl IdentityEndpoint {
    pub async fn start(issuer: Arc<TestIssuer>, identity: Identity) -> std::io::Result<Self> {
        let endpoint = Arc::new(Endpoint {
            issuer,
            identity,
            asked: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/msi/token", axum::routing::get(token))
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("identity stand-in stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            endpoint,
            server,
        })
    }

    /// What the platform puts in `IDENTITY_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }

    /// The resources tokens were issued for, one entry per token.
    pub fn issued(&self) -> Vec<String> {
        self.endpoint
            .asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for IdentityEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn refuse(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": error, "error_description": description});
    (status, axum::Json(body)).into_response()
}

async fn token(
    State(endpoint): State<Arc<Endpoint>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let identity = &endpoint.identity;
    let secret = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if secret != Some(identity.secret.as_str()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "X-IDENTITY-HEADER is missing or wrong",
        );
    }
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version must be 2019-08-01",
        );
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "resource is required",
        );
    };
    if query.get("client_id") != identity.client_id.as_ref() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no identity with that client_id is assigned to this app",
        );
    }
    endpoint
        .asked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(resource.clone());
    let access_token = endpoint
        .issuer
        .token(resource, &identity.object_id, LIFETIME);
    let expires_on = time::OffsetDateTime::now_utc().unix_timestamp() + LIFETIME.as_secs() as i64;
    axum::Json(serde_json::json!({
        "access_token": access_token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity.client_id.clone().unwrap_or_default(),
    }))
    .into_response()
}
