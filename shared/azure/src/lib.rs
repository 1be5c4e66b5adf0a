//! What legato's Azure adapters (the Table store, the Service Bus bus)
//! share: the HTTP transport the legacy Azure SDK sends through, and
//! Microsoft Entra ID tokens from a managed identity, for keyless access.

mod managed_identity;
mod transport;

pub use managed_identity::{ManagedIdentityCredential, ManagedIdentityError};
pub use transport::{EXTRA_CA_VARIABLE, Transport, TransportError};
