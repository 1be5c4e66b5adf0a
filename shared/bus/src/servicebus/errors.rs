//! Service Bus answers as `BusError`s that say what happened. The crate
//! turns most non-2xx statuses into `ErrorKind::HttpResponse`, but hands a
//! peek-lock's status back as `Ok`, so both paths come through here.

use azure_core::error::ErrorKind;

use crate::BusError;

/// The HTTP status of a failed call, if it got that far.
pub(super) fn status_of(e: &azure_core::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

/// A lock that is gone (settled by someone, expired, or its subscription
/// deleted): the message will be delivered again, nothing is lost.
pub(super) fn lock_lost(status: Option<u16>) -> bool {
    status.is_some_and(gone)
}

/// What Service Bus answers for a lock, entity or collection that is not
/// there (404, or 410 as the runtime API documents it).
pub(super) fn gone(status: u16) -> bool {
    matches!(status, 404 | 410)
}

pub(super) fn from_status(status: u16, doing: &str, detail: &str) -> BusError {
    let detail = detail.trim();
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {}", detail.chars().take(300).collect::<String>())
    };
    match status {
        400 => BusError::Rejected(format!(
            "{doing}: Service Bus refused the request (400){detail}"
        )),
        401 => BusError::Unavailable(format!(
            "{doing}: Service Bus refused the credentials (401): check the key or the identity's role{detail}"
        )),
        403 if detail.to_ascii_lowercase().contains("size") => {
            BusError::Rejected(format!("{doing}: the message is too large (403){detail}"))
        }
        403 => BusError::Unavailable(format!(
            "{doing}: quota exceeded or forbidden (403){detail}"
        )),
        404 | 410 => BusError::Unavailable(format!(
            "{doing}: the topic or subscription does not exist ({status}){detail}"
        )),
        413 => BusError::Rejected(format!(
            "{doing}: the message is over the namespace's size limit (413; 256 KB on Standard){detail}"
        )),
        408 | 429 | 500..=599 => BusError::Unavailable(format!(
            "{doing}: Service Bus is busy or failing ({status}){detail}"
        )),
        other => BusError::Unavailable(format!("{doing}: unexpected status {other}{detail}")),
    }
}

pub(super) fn from_azure(e: azure_core::Error, doing: &str) -> BusError {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => from_status(
            u16::from(*status),
            doing,
            error_code.as_deref().unwrap_or_default(),
        ),
        ErrorKind::Credential => {
            BusError::Unavailable(format!("{doing}: no Microsoft Entra ID token: {e}"))
        }
        _ => BusError::Unavailable(format!("{doing}: {e}")),
    }
}
