//! Request bodies parsed with errors that name the field, as problem+json:
//! malformed JSON (with line and column), a wrong type or unknown field
//! (with its path), and a body over the size limit (413).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use legato_service::problem::Problem;
use serde::de::DeserializeOwned;

/// The raw body, or a 413 problem when it is over the limit.
pub(crate) struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(status, "Request body too large", rejection.body_text())
                } else {
                    Problem::new(status, "Unreadable request body", rejection.body_text())
                }
            })
    }
}

/// A JSON object body; an empty (zero-byte) body reads as `T::default()` when
/// `EMPTY_OK`. Anything but an object is refused, also the arrays serde
/// would otherwise read into a struct's fields by position.
pub(crate) struct JsonBody<T, const EMPTY_OK: bool = false>(pub T);

impl<S, T, const EMPTY_OK: bool> FromRequest<S> for JsonBody<T, EMPTY_OK>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if EMPTY_OK && bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(Problem::field("body", "must be a JSON object"));
        }
        parse_json(&bytes).map(Self)
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::field("body", format!("malformed JSON: {inner}"))
        } else {
            let pointer = if path == "." {
                "body".to_owned()
            } else {
                format!("/{}", path.replace('.', "/"))
            };
            Problem::field(pointer, inner.to_string())
        }
    })?;
    de.end()
        .map_err(|e| Problem::field("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}
