//! How the store reaches its storage account: a connection string (Azurite,
//! or an account's keys), an account key, or Microsoft Entra ID tokens.

use std::sync::Arc;

use azure_core::auth::TokenCredential;
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};

use crate::StoreError;

/// How to reach the storage account. Its `Debug` shows no key.
#[derive(Clone)]
pub enum AzureTableConnection {
    /// `UseDevelopmentStorage=true` (Azurite on 127.0.0.1:10002), or
    /// `AccountName=..;AccountKey=..` with optional `TableEndpoint` or
    /// `EndpointSuffix`.
    ConnectionString(String),
    /// Shared-key access; `endpoint` overrides the public cloud's
    /// `https://<account>.table.core.windows.net`.
    AccountKey {
        account: String,
        key: String,
        endpoint: Option<String>,
    },
    /// Microsoft Entra ID: bearer tokens for `https://storage.azure.com`
    /// from `credential` (a managed identity in Container Apps); the
    /// identity needs Storage Table Data Contributor. `endpoint` as above.
    Entra {
        account: String,
        endpoint: Option<String>,
        credential: Arc<dyn TokenCredential>,
    },
}

impl std::fmt::Debug for AzureTableConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectionString(_) => f.write_str("ConnectionString(***)"),
            Self::AccountKey {
                account, endpoint, ..
            } => f
                .debug_struct("AccountKey")
                .field("account", account)
                .field("key", &"***")
                .field("endpoint", endpoint)
                .finish(),
            Self::Entra {
                account, endpoint, ..
            } => f
                .debug_struct("Entra")
                .field("account", account)
                .field("endpoint", endpoint)
                .finish_non_exhaustive(),
        }
    }
}

pub(super) fn location(
    connection: &AzureTableConnection,
) -> Result<(CloudLocation, StorageCredentials), StoreError> {
    let invalid = |what: String| StoreError::Unavailable(format!("table storage settings: {what}"));
    match connection {
        AzureTableConnection::AccountKey {
            account,
            key,
            endpoint,
        } => {
            let credentials = StorageCredentials::access_key(account.clone(), key.clone());
            Ok((account_location(account, endpoint.as_deref()), credentials))
        }
        AzureTableConnection::Entra {
            account,
            endpoint,
            credential,
        } => {
            let credentials = StorageCredentials::token_credential(credential.clone());
            Ok((account_location(account, endpoint.as_deref()), credentials))
        }
        AzureTableConnection::ConnectionString(text) => {
            let parsed = ConnectionString::new(text)
                .map_err(|e| invalid(format!("connection string: {e}")))?;
            if parsed.use_development_storage == Some(true) {
                return Ok((
                    CloudLocation::Emulator {
                        address: "127.0.0.1".into(),
                        port: 10002,
                    },
                    StorageCredentials::emulator(),
                ));
            }
            let account = parsed
                .account_name
                .ok_or_else(|| invalid("the connection string has no AccountName".into()))?;
            let credentials = parsed
                .storage_credentials()
                .map_err(|e| invalid(format!("connection string: {e}")))?;
            let protocol = match parsed.default_endpoints_protocol {
                Some(azure_storage::EndpointProtocol::Http) => "http",
                _ => "https",
            };
            let location = match (parsed.table_endpoint, parsed.endpoint_suffix) {
                (Some(uri), _) => CloudLocation::Custom {
                    account: account.to_owned(),
                    uri: uri.trim_end_matches('/').to_owned(),
                },
                (None, Some(suffix)) => CloudLocation::Custom {
                    account: account.to_owned(),
                    uri: format!("{protocol}://{account}.table.{suffix}"),
                },
                (None, None) => CloudLocation::Public {
                    account: account.to_owned(),
                },
            };
            Ok((location, credentials))
        }
    }
}

/// `endpoint`, or the public cloud's `https://<account>.table.core.windows.net`.
fn account_location(account: &str, endpoint: Option<&str>) -> CloudLocation {
    match endpoint {
        Some(uri) => CloudLocation::Custom {
            account: account.to_owned(),
            uri: uri.trim_end_matches('/').to_owned(),
        },
        None => CloudLocation::Public {
            account: account.to_owned(),
        },
    }
}
