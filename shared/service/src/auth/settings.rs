//! The `auth` settings (`gateway.auth` in the gateway and `legato up`,
//! `auth` in the notifier): who may call, and with what.

use legato_contracts::TenantId;
use serde::{Deserialize, Serialize};

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Everyone may do everything: only for a gateway on a loopback
    /// address, unless `allow_anonymous_remote` says otherwise.
    #[default]
    None,
    /// `Authorization: Bearer <key>`, keys configured as SHA-256 hashes.
    ApiKey,
    /// `Authorization: Bearer <JWT>` from an OpenID Connect issuer
    /// (Microsoft Entra ID, …), checked against its JWKS.
    Jwt,
}

/// What a caller may do; each route needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read instances and definitions, negotiate and watch progress.
    Read,
    /// Start instances.
    Start,
    /// Raise events (approvals) on instances.
    Signal,
    /// Terminate, suspend, resume, restart and purge instances.
    Operate,
    /// Register definitions and agents.
    Manage,
    /// Serve agents' tasks as a worker: poll, heartbeat, complete, fail.
    Agent,
    /// All of the above, and push agents (whose URLs legato calls).
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        // Entra app roles are often namespaced (`Legato.Read`).
        let name = text.rsplit('.').next().unwrap_or(text).to_ascii_lowercase();
        Some(match name.as_str() {
            "read" => Self::Read,
            "start" => Self::Start,
            "signal" => Self::Signal,
            "operate" => Self::Operate,
            "manage" => Self::Manage,
            "agent" => Self::Agent,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// One API key: only its SHA-256 is configured, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySetting {
    /// A name for logs (`ci`, `dashboard`).
    pub id: String,
    /// Lowercase hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The tenant the key acts for: it sees only that tenant's instances
    /// and definitions (and the shared definitions). Without one, the
    /// key acts for the instances that have no tenant.
    #[serde(default)]
    pub tenant: Option<TenantId>,
    pub roles: Vec<Role>,
    /// With the `agent` role: the agents whose tasks the key may take.
    /// Absent: any agent of its tenant (or, without a tenant, any shared
    /// agent).
    #[serde(default)]
    pub agents: Option<Vec<String>>,
}

/// An OpenID Connect issuer's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// `iss` exactly (Entra: `https://login.microsoftonline.com/<tenant>/v2.0`).
    pub issuer: String,
    /// `aud` exactly (Entra: the API's application id or id URI).
    pub audience: String,
    /// Where the signing keys are (Entra:
    /// `https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys`).
    pub jwks_url: String,
    /// The claim naming the caller's tenant (Entra: `tid`).
    pub tenant_claim: String,
    /// The claim listing the caller's roles (Entra app roles: `roles`).
    pub roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// A token naming an unknown key fetches the JWKS again at most this
    /// often (rotated keys are picked up; garbage cannot hammer the issuer).
    pub jwks_refresh_s: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            tenant_claim: "tid".into(),
            roles_claim: "roles".into(),
            leeway_s: 60,
            jwks_refresh_s: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Serve without authentication on an address other than loopback
    /// (a local container network, never the internet).
    pub allow_anonymous_remote: bool,
    pub api_keys: Vec<ApiKeySetting>,
    pub jwt: JwtSettings,
}
