//! The HTTP transport the Azure SDK sends through: the workspace's own
//! `reqwest` 0.13, so the legacy SDK does not bring a second HTTP stack.
//!
//! It trusts the system's certificate roots plus, when
//! [`EXTRA_CA_VARIABLE`] names a PEM file, the certificates in it: an
//! endpoint behind a private CA (a TLS-inspecting proxy, Azure Stack, or
//! Azurite over HTTPS in the tests).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use azure_core::error::{Error, ErrorKind, ResultExt};
use azure_core::headers::{HeaderName, HeaderValue, Headers};
use azure_core::{Body, HttpClient, Request, Response, StatusCode};
use futures::TryStreamExt;

/// Names a PEM file of extra trusted certificate authorities.
pub const EXTRA_CA_VARIABLE: &str = "LEGATO_TLS_CA_FILE";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{EXTRA_CA_VARIABLE}={path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    /// Requests sent, for `legato bench` (Azure bills by them).
    counter: Option<&'static AtomicU64>,
}

impl Transport {
    /// `timeout` bounds every request (`None`: the caller bounds each one,
    /// as a long poll needs longer than a send).
    pub fn new(
        timeout: Option<Duration>,
        counter: Option<&'static AtomicU64>,
    ) -> Result<Self, TransportError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Requests are small and latency matters more than packets.
            .tcp_nodelay(true);
        if let Some(path) = std::env::var_os(EXTRA_CA_VARIABLE) {
            builder = builder.tls_certs_merge(extra_roots(&path.to_string_lossy())?);
        }
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        Ok(Self {
            client: builder.build()?,
            counter,
        })
    }
}

fn extra_roots(path: &str) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let refuse = |reason: String| TransportError::ExtraCa {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refuse(e.to_string()))?;
    if certs.is_empty() {
        return Err(refuse("holds no PEM certificate".into()));
    }
    Ok(certs)
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        if let Some(counter) = self.counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // Which requests an operation costs (`RUST_LOG=legato_azure=trace`).
        tracing::trace!(method = %request.method(), path = request.url().path(), "azure request");
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
                    "streamed request bodies are not used by legato",
                ));
            }
        };
        let host = request.url().host_str().unwrap_or_default().to_owned();
        let response = builder
            .body(body)
            .send()
            .await
            .with_context(ErrorKind::Io, || format!("request to {host} failed"))?;
        let status = StatusCode::try_from(response.status().as_u16()).map_err(|_| {
            Error::message(
                ErrorKind::DataConversion,
                format!("invalid HTTP status from {host}"),
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
                .map_err(move |e| Error::full(ErrorKind::Io, e, "reading a response")),
        );
        Ok(Response::new(status, headers, body))
    }
}
