//! How to reach a namespace: its host and how to authenticate. A shared
//! access key comes from a connection string (what the portal shows:
//! `Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…`);
//! a Microsoft Entra ID credential (a managed identity) needs only the
//! host. `Debug` shows no key.

use std::sync::Arc;

use azure_core::auth::TokenCredential;

use crate::BusError;

/// The Entra ID resource Service Bus tokens are issued for.
pub const ENTRA_SCOPE: &str = "https://servicebus.azure.net/.default";

#[derive(Clone)]
pub enum ServiceBusAuth {
    /// A shared access policy's name and key: every request carries a
    /// signature made with the key.
    SharedKey { policy: String, key: String },
    /// Bearer tokens for `https://servicebus.azure.net` from this
    /// credential (cached and refreshed by it).
    Entra(Arc<dyn TokenCredential>),
}

#[derive(Clone)]
pub struct ServiceBusConnection {
    /// `<name>.servicebus.windows.net`.
    pub host: String,
    pub auth: ServiceBusAuth,
}

impl std::fmt::Debug for ServiceBusConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            ServiceBusAuth::SharedKey { policy, .. } => format!("shared key of policy {policy}"),
            ServiceBusAuth::Entra(_) => "Microsoft Entra ID".to_owned(),
        };
        f.debug_struct("ServiceBusConnection")
            .field("host", &self.host)
            .field("auth", &auth)
            .finish()
    }
}

impl ServiceBusConnection {
    /// Parses a namespace connection string. One scoped to an entity
    /// (`EntityPath=`) is refused: legato uses several topics.
    pub fn from_connection_string(text: &str) -> Result<Self, BusError> {
        let invalid =
            |why: &str| BusError::Unavailable(format!("Service Bus connection string: {why}"));
        let mut endpoint = None;
        let mut policy = None;
        let mut key = None;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| invalid("every part must be Name=value"))?;
            match name.to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value),
                "sharedaccesskeyname" => policy = Some(value),
                // The key is base64 and may end in '=': take the rest.
                "sharedaccesskey" => key = Some(part[name.len() + 1..].to_owned()),
                "entitypath" => {
                    return Err(invalid(
                        "EntityPath scopes it to one entity; use the namespace's connection string",
                    ));
                }
                "usedevelopmentemulator" => {
                    return Err(invalid(
                        "the Service Bus emulator speaks AMQP only; legato speaks the REST API",
                    ));
                }
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or_else(|| invalid("Endpoint is missing"))?;
        let host = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_owned();
        if host.is_empty() || host.contains('/') {
            return Err(invalid(
                "Endpoint must be sb://<namespace>.servicebus.windows.net/",
            ));
        }
        let (Some(policy), Some(key)) = (policy, key) else {
            return Err(invalid(
                "SharedAccessKeyName and SharedAccessKey are both needed",
            ));
        };
        Ok(Self {
            host,
            auth: ServiceBusAuth::SharedKey {
                policy: policy.to_owned(),
                key,
            },
        })
    }

    /// Keyless: tokens from `credential` (e.g. a managed identity).
    pub fn entra(host: &str, credential: Arc<dyn TokenCredential>) -> Self {
        Self {
            host: host.trim_end_matches('/').to_owned(),
            auth: ServiceBusAuth::Entra(credential),
        }
    }

    /// The namespace's name, the first label of its host (the crate builds
    /// `https://{name}.servicebus.windows.net` from it).
    pub(super) fn name(&self) -> &str {
        self.host.split('.').next().unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_portal_connection_string_parses_and_debug_hides_the_key() {
        let c = ServiceBusConnection::from_connection_string(
            "Endpoint=sb://legato-prod.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc+def/ghi==",
        )
        .unwrap();
        assert_eq!(c.host, "legato-prod.servicebus.windows.net");
        assert_eq!(c.name(), "legato-prod");
        match &c.auth {
            ServiceBusAuth::SharedKey { policy, key } => {
                assert_eq!(policy, "RootManageSharedAccessKey");
                assert_eq!(key, "abc+def/ghi==");
            }
            ServiceBusAuth::Entra(_) => panic!("shared key expected"),
        }
        assert!(!format!("{c:?}").contains("abc+def"));
    }

    #[test]
    fn entity_scoped_and_incomplete_strings_are_refused_with_a_reason() {
        for (text, why) in [
            (
                "Endpoint=sb://a.servicebus.windows.net/;SharedAccessKeyName=p;SharedAccessKey=k;EntityPath=t",
                "EntityPath",
            ),
            ("SharedAccessKeyName=p;SharedAccessKey=k", "Endpoint"),
            (
                "Endpoint=sb://a.servicebus.windows.net/;SharedAccessKey=k",
                "SharedAccessKeyName",
            ),
            (
                "Endpoint=sb://localhost;SharedAccessKeyName=p;SharedAccessKey=k;UseDevelopmentEmulator=true",
                "AMQP",
            ),
        ] {
            let err = ServiceBusConnection::from_connection_string(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
