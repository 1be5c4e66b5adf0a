//! RFC 9457 problem details: every HTTP error legato answers is
//! `application/problem+json`, and when one field is at fault the body
//! names it (`errors[].field`, a JSON pointer into the request).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Problem details (RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Sent as `Retry-After` (seconds), not in the body.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// A JSON pointer (`/input/request`) or parameter name (`top`).
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// When to try again, as a `Retry-After` header (whole seconds, at
    /// least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait.as_secs().max(1));
        self
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            format!("{field}: {message}"),
        )
        .with_errors(vec![FieldError { field, message }])
    }

    /// A 400 listing every field at fault, each as `field: message` in
    /// the detail too.
    pub fn fields(title: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::new(StatusCode::BAD_REQUEST, title, detail).with_errors(errors)
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self).unwrap_or_else(|_| "{}".into());
        let mut response =
            (self.status(), [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// What a client is told to wait when the store is away.
pub const STORE_RETRY_AFTER_S: u64 = 5;

impl From<legato_store::StoreError> for Problem {
    fn from(e: legato_store::StoreError) -> Self {
        use legato_store::StoreError::*;
        match &e {
            Conflict(_) | Claimed(_) => Self::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            NotFound(_) => Self::not_found(e.to_string()),
            TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "Too large", e.to_string()),
            InvalidToken => Self::field("continuationToken", "is not a token this service issued"),
            // Nothing was changed: the same request may simply be sent again.
            Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                e.to_string(),
            )
            .retry_after(std::time::Duration::from_secs(STORE_RETRY_AFTER_S)),
            Corrupt(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Stored data unreadable",
                e.to_string(),
            ),
        }
    }
}
