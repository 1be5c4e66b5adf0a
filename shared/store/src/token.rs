//! Continuation tokens: an opaque, URL-safe encoding of the last key seen.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListPosition {
    /// created_at in unix milliseconds.
    pub c: i64,
    pub i: String,
}

pub(crate) fn encode(position: &ListPosition) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).unwrap_or_default())
}

pub(crate) fn decode(token: &str) -> Result<ListPosition, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::InvalidToken)?;
    serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidToken)
}

/// Any position a listing keeps, as a token.
pub(crate) fn encode_value<T: Serialize + ?Sized>(position: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).unwrap_or_default())
}

pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(token: &str) -> Result<T, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::InvalidToken)?;
    serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidToken)
}
