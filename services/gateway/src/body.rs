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
    let parsed = serde_path_to_error::deserialize(&mut de);
    let value = match parsed {
        Ok(value) => value,
        Err(e) => {
            let problem = problem_of(e);
            // JSON (and JSON Schema) count `3.0` as the integer 3, which
            // serde refuses for an integer field: read such numbers as
            // integers and try once more.
            return match integral_floats_as_integers(bytes) {
                Some(normalised) => {
                    serde_path_to_error::deserialize(normalised).map_err(problem_of)
                }
                None => Err(problem),
            };
        }
    };
    de.end()
        .map_err(|e| Problem::field("body", format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn problem_of<E: std::fmt::Display + Into<serde_json::Error>>(
    e: serde_path_to_error::Error<E>,
) -> Problem {
    let path = e.path().to_string();
    let inner: serde_json::Error = e.into_inner().into();
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
}

/// The document with every float that has no fraction (`3.0`) as an
/// integer; `None` when it is not JSON or has none.
fn integral_floats_as_integers(bytes: &[u8]) -> Option<serde_json::Value> {
    fn walk(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let integral = f.fract() == 0.0 && f.abs() < 9.0e15;
                if integral {
                    *value = serde_json::Value::from(f as i64);
                }
                integral
            }
            // Every element is walked: no short-circuit.
            serde_json::Value::Array(items) => {
                items.iter_mut().map(walk).filter(|c| *c).count() > 0
            }
            serde_json::Value::Object(map) => map.values_mut().map(walk).filter(|c| *c).count() > 0,
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    walk(&mut value).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::parse_json;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Versioned {
        version: u32,
        #[serde(default)]
        rest: serde_json::Value,
    }

    #[test]
    fn an_integer_written_with_a_zero_fraction_is_an_integer() {
        let read: Versioned =
            parse_json(br#"{"version": 612017853.0, "rest": [1.5, 2.0]}"#).unwrap();
        assert_eq!(read.version, 612017853);
        let refused = parse_json::<Versioned>(br#"{"version": 3.5}"#).unwrap_err();
        assert_eq!(refused.errors[0].field, "/version");
        let refused = parse_json::<Versioned>(br#"{"version": -1.0}"#).unwrap_err();
        assert_eq!(refused.errors[0].field, "/version");
    }
}
