//! SignalR for legato's progress stream, both ways the stock
//! `@microsoft/signalr` client can reach it:
//!
//! - [`protocol`]: the JSON hub protocol (records ended by 0x1E, handshake,
//!   invocation, completion, ping, close) that the notifier's local hub
//!   speaks over WebSockets;
//! - [`azure`]: Azure SignalR Service in serverless mode: the notifier sends
//!   to a group per instance through the REST API, the gateway hands
//!   clients a negotiate answer that redirects them to the service; both
//!   sign HS256 tokens with the connection string's access key.
//!
//! The wire facts follow Microsoft's documentation of the SignalR hub
//! protocol and of the Azure SignalR REST API (v1 paths).

pub mod azure;
pub mod protocol;

/// The hub clients connect to: `/hubs/progress` locally, `hub=progress` in Azure.
pub const HUB: &str = "progress";
/// The client method progress events invoke.
pub const PROGRESS_TARGET: &str = "progress";
/// The client method a piece of a model's output invokes.
pub const OUTPUT_TARGET: &str = "output";

use serde::{Deserialize, Serialize};

/// The `signalr` settings section, shared by gateway, notifier and
/// `legato up`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalRSettings {
    /// Azure SignalR Service (`Endpoint=...;AccessKey=...;Version=1.0;`).
    /// Empty: the notifier's own hub at `/hubs/progress` serves clients.
    /// A secret: set it through `LEGATO__SIGNALR__CONNECTION_STRING`.
    pub connection_string: String,
    /// Lifetime of the tokens signed for the service and its clients.
    pub token_lifetime_s: u64,
    /// How long a user added to an instance's group stays in it (Azure
    /// keeps only a user's 100 newest memberships without one).
    pub membership_ttl_s: u64,
    /// Browser origins allowed to call negotiate, subscribe, the stream
    /// and the hub (`https://app.example.com`); empty: any origin.
    pub allowed_origins: Vec<String>,
    /// How often the gateway removes the users it added to groups of
    /// instances that have since finished.
    pub membership_sweep_ms: u64,
    /// The deadline of each call to Azure SignalR's REST API: a link that
    /// stops answering fails the call then, and the next goes out on a new
    /// connection.
    pub request_timeout_ms: u64,
}

impl std::fmt::Debug for SignalRSettings {
    /// The connection string shows its endpoint only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoint = self
            .connection_string
            .split(';')
            .find(|p| p.trim().to_ascii_lowercase().starts_with("endpoint="))
            .unwrap_or_default();
        f.debug_struct("SignalRSettings")
            .field("connection_string", &endpoint)
            .field("token_lifetime_s", &self.token_lifetime_s)
            .field("membership_ttl_s", &self.membership_ttl_s)
            .field("allowed_origins", &self.allowed_origins)
            .field("membership_sweep_ms", &self.membership_sweep_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

impl Default for SignalRSettings {
    fn default() -> Self {
        Self {
            connection_string: String::new(),
            token_lifetime_s: 3_600,
            membership_ttl_s: 86_400,
            allowed_origins: Vec::new(),
            membership_sweep_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl SignalRSettings {
    /// The Azure client when a connection string is configured.
    pub fn azure(&self) -> Result<Option<azure::AzureSignalR>, azure::AzureError> {
        if self.connection_string.trim().is_empty() {
            return Ok(None);
        }
        let connection = self.connection_string.parse()?;
        azure::AzureSignalR::new(
            connection,
            HUB,
            std::time::Duration::from_secs(self.token_lifetime_s.max(60)),
        )
        .and_then(|azure| {
            azure.with_request_timeout(std::time::Duration::from_millis(
                self.request_timeout_ms.max(1),
            ))
        })
        .map(|azure| {
            Some(
                azure.with_membership_ttl(std::time::Duration::from_secs(
                    self.membership_ttl_s.max(1),
                )),
            )
        })
    }
}
