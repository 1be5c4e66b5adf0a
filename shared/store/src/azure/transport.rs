//! The HTTP transport the Azure SDK sends through: the workspace's own
//! `reqwest` 0.13, so the legacy SDK does not bring a second HTTP stack.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use azure_core::error::{Error, ErrorKind, ResultExt};
use azure_core::headers::{HeaderName, HeaderValue, Headers};
use azure_core::{Body, HttpClient, Request, Response, StatusCode};
use futures::TryStreamExt;

/// Requests sent by every table store of this process, for `legato bench`.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn requests() -> u64 {
    REQUESTS.load(Ordering::Relaxed)
}

#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
}

impl Transport {
    /// `timeout` bounds every request, so a commit is known to have landed
    /// or failed well within the index grace period (see `index.rs`).
    pub(crate) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { client })
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        let method = reqwest::Method::from_str(request.method().as_ref())
            .with_context(ErrorKind::DataConversion, || {
                format!("unsupported method {}", request.method())
            })?;
        let mut builder = self.client.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match request.body() {
            Body::Bytes(bytes) => bytes.clone(),
            Body::SeekableStream(_) => {
                return Err(Error::message(
                    ErrorKind::Other,
                    "streamed request bodies are not used by the table store",
                ));
            }
        };
        let response = builder
            .body(body)
            .send()
            .await
            .context(ErrorKind::Io, "table storage request failed")?;
        let status = StatusCode::try_from(response.status().as_u16()).map_err(|_| {
            Error::message(
                ErrorKind::DataConversion,
                "invalid HTTP status from table storage",
            )
        })?;
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                headers.insert(
                    HeaderName::from(name.as_str().to_owned()),
                    HeaderValue::from(value.to_owned()),
                );
            }
        }
        let body = Box::pin(
            response
                .bytes_stream()
                .map_err(|e| Error::full(ErrorKind::Io, e, "reading a table storage response")),
        );
        Ok(Response::new(status, headers, body))
    }
}
