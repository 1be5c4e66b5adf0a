//! Who may call a service, and what they may do: every API route needs
//! a [`Role`]; the caller's roles and tenant come from an API key or a JWT
//! ([`settings::AuthMode`]). A missing or bad credential is 401 with
//! `WWW-Authenticate: Bearer`, a missing role 403, both as problem
//! details. Health and the OpenAPI document stay open. The gateway and the
//! notifier (its progress stream and hub) use the same [`Guard`].

mod jwt;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use legato_contracts::TenantId;
use sha2::{Digest, Sha256};

use crate::problem::Problem;
pub use settings::{ApiKeySetting, AuthMode, AuthSettings, JwtSettings, Role};

/// The caller, as its credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    /// Whose instances and definitions the caller sees; `None` is the
    /// instances without a tenant (every caller when auth is off).
    pub tenant: Option<TenantId>,
    pub roles: Vec<Role>,
    /// The agents the caller may serve as a worker; `None`: any of its
    /// tenant's.
    pub agents: Option<Vec<String>>,
}

impl Principal {
    pub fn may(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r == role || *r == Role::Admin)
    }

    /// Whether the caller's credential names `agent` among those it may
    /// serve (the tenant check is the registry's).
    pub fn may_serve(&self, agent: &str) -> bool {
        self.may(Role::Agent)
            && self
                .agents
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == agent))
    }

    /// The caller as one user across tenants (`tenant/subject`): two
    /// tenants' users with the same subject stay two users, for example
    /// in Azure SignalR client tokens and groups.
    pub fn user_id(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{tenant}/{}", self.subject),
            None => self.subject.clone(),
        }
    }
}

/// The request's [`Principal`], put there by [`authorize`].
pub struct Caller(pub Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<Arc<Principal>>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "Not signed in",
                    "the route is not behind authentication",
                )
            })
    }
}
/// Why a request is not let in.
#[derive(Debug)]
pub enum Refusal {
    Unauthenticated(String),
    Unavailable(String),
}

/// Checks credentials as the settings say.
pub enum Authenticator {
    Anyone,
    ApiKeys(Vec<ApiKeySetting>),
    Jwt(Box<jwt::JwtVerifier>),
}

impl Authenticator {
    /// Refuses settings that cannot work, and a gateway without
    /// authentication on a non-loopback address unless explicitly allowed.
    pub fn new(settings: &AuthSettings, host: &str, section: &str) -> Result<Self, String> {
        match settings.mode {
            AuthMode::None => {
                let loopback = host
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(host == "localhost");
                if !loopback && !settings.allow_anonymous_remote {
                    return Err(format!(
                        "{section}.mode is none but the service listens on {host}: set \
                         {section}.mode to api_key or jwt, or \
                         {section}.allow_anonymous_remote = true for a private network"
                    ));
                }
                Ok(Self::Anyone)
            }
            AuthMode::ApiKey => {
                if settings.api_keys.is_empty() {
                    return Err(format!("{section}.api_keys is empty in api_key mode"));
                }
                for key in &settings.api_keys {
                    let hex =
                        key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit());
                    if !hex {
                        return Err(format!(
                            "{section}.api_keys {:?}: sha256 must be 64 hex digits",
                            key.id
                        ));
                    }
                }
                Ok(Self::ApiKeys(settings.api_keys.clone()))
            }
            AuthMode::Jwt => Ok(Self::Jwt(Box::new(jwt::JwtVerifier::new(
                settings.jwt.clone(),
                section,
            )?))),
        }
    }

    /// False for `none`: everyone is let in, as an administrator.
    pub fn asks_for_credentials(&self) -> bool {
        !matches!(self, Self::Anyone)
    }

    /// The caller a request's `Authorization` header names.
    pub async fn principal(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        let bearer = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match self {
            Self::Anyone => Ok(Principal {
                subject: "anonymous".into(),
                tenant: None,
                roles: vec![Role::Admin],
                agents: None,
            }),
            Self::ApiKeys(keys) => {
                let key = bearer.ok_or_else(|| {
                    Refusal::Unauthenticated("no Authorization: Bearer <api key>".into())
                })?;
                let hash = Sha256::digest(key.as_bytes());
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                keys.iter()
                    .find(|k| same(k.sha256.to_ascii_lowercase().as_bytes(), hex.as_bytes()))
                    .map(|k| Principal {
                        subject: k.id.clone(),
                        tenant: k.tenant.clone(),
                        roles: k.roles.clone(),
                        agents: k.agents.clone(),
                    })
                    .ok_or_else(|| Refusal::Unauthenticated("unknown API key".into()))
            }
            Self::Jwt(verifier) => {
                let token = bearer.ok_or_else(|| {
                    Refusal::Unauthenticated("no Authorization: Bearer <token>".into())
                })?;
                verifier.verify(token).await
            }
        }
    }
}

/// Equal without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What guards a set of routes: who checks credentials, the role each
/// route needs, and whether a token may come as `?access_token=` (the
/// SignalR client and `EventSource` cannot set headers on WebSockets and
/// event streams).
#[derive(Clone)]
pub struct Guard {
    pub auth: Arc<Authenticator>,
    pub role_of: fn(&Method, &str) -> Role,
    pub query_token: bool,
}

/// Lets a request through with its [`Principal`] as an extension, or
/// answers 401/403/503.
pub async fn authorize(
    State(guard): State<Guard>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    // Preflights carry no credentials; CORS answers them.
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let mut authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if authorization.is_none() && guard.query_token {
        authorization = Query::<HashMap<String, String>>::try_from_uri(request.uri())
            .ok()
            .and_then(|Query(mut q)| q.remove("access_token"))
            .map(|token| format!("Bearer {token}"));
    }
    let principal = match guard.auth.principal(authorization.as_deref()).await {
        Ok(principal) => principal,
        Err(Refusal::Unauthenticated(why)) => {
            let mut response =
                Problem::new(StatusCode::UNAUTHORIZED, "Not signed in", why).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        Err(Refusal::Unavailable(why)) => {
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot check credentials now",
                why,
            )
            .retry_after(std::time::Duration::from_secs(5))
            .into_response();
        }
    };
    let path = matched.as_ref().map_or("", MatchedPath::as_str);
    let role = (guard.role_of)(request.method(), path);
    if !principal.may(role) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "Not allowed",
            format!(
                "{} may not {} {path}: it needs the {role:?} role",
                principal.subject,
                request.method()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(Arc::new(principal));
    next.run(request).await
}
