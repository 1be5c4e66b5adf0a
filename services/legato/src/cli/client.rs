//! The gateway as the CLI talks to it: one base URL, one credential (an
//! API key or a JWT, sent as a bearer token), and errors read from the
//! problem details the gateway answers with.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the CLI sends its requests, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "LEGATO_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Where the progress stream is served, when not at the gateway (the
    /// notifier's URL in a deployment).
    #[arg(long, env = "LEGATO_STREAM_URL", global = true)]
    pub stream_url: Option<String>,
    /// An API key or an OpenID Connect access token, sent as a bearer token.
    #[arg(long, env = "LEGATO_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// `text` for people, `json` for scripts (one JSON document per line).
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints what a command came to: `text` for people, `value` (the
    /// gateway's answer) for scripts.
    pub fn print(self, text: &str, value: &serde_json::Value) {
        match self {
            Output::Json => println!("{value}"),
            Output::Text => println!("{text}"),
        }
    }
}

pub struct Gateway {
    base: String,
    stream_base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Gateway {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let base = target.url.trim_end_matches('/').to_owned();
        let stream_base = target
            .stream_url
            .as_deref()
            .map_or_else(|| base.clone(), |s| s.trim_end_matches('/').to_owned());
        Ok(Self {
            base,
            stream_base,
            token: target.token.clone(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    fn request(&self, method: Method, url: String) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// One API call; the body of a 2xx answer (null when empty), or the
    /// gateway's problem as the error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        self.call_once(method, path, body, None).await
    }

    /// Like [`Gateway::call`], sending an `Idempotency-Key` when given.
    pub async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .request(method.clone(), format!("{}{path}", self.base))
            .timeout(std::time::Duration::from_secs(60));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            anyhow::bail!("{}", problem(status, &text));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`Gateway::call`] for a GET, with `None` for a 404.
    pub async fn get_if_found(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let response = self
            .request(Method::GET, url.clone())
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = response.text().await?;
        if !status.is_success() {
            anyhow::bail!("{}", problem(status, &text));
        }
        Ok(Some(serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The instance's progress stream; `after` resumes it after that
    /// progress position.
    pub async fn stream(&self, id: &str, after: Option<u64>) -> anyhow::Result<reqwest::Response> {
        let url = format!(
            "{}/api/v1/instances/{}/stream",
            self.stream_base,
            segment(id)
        );
        let mut request = self.request(Method::GET, url.clone());
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after.to_string());
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("{}", problem(status, &text));
        }
        Ok(response)
    }
}

/// An id or name as one path segment. Ids are restricted to characters
/// that need no escaping; anything else is sent escaped for the gateway
/// to refuse by name.
pub fn segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A problem+json answer as one line: `title: detail (status)`.
fn problem(status: StatusCode, body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(problem) if problem.get("title").is_some() => {
            let title = problem["title"].as_str().unwrap_or_default();
            match problem["detail"].as_str() {
                Some(detail) if !detail.is_empty() => format!("{title}: {detail} ({status})"),
                _ => format!("{title} ({status})"),
            }
        }
        _ if body.is_empty() => status.to_string(),
        _ => format!("{status}: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_as_one_line() {
        let body =
            r#"{"type":"about:blank","title":"Not found","status":404,"detail":"no instance x"}"#;
        assert_eq!(
            problem(StatusCode::NOT_FOUND, body),
            "Not found: no instance x (404 Not Found)"
        );
        assert_eq!(problem(StatusCode::BAD_GATEWAY, ""), "502 Bad Gateway");
        assert_eq!(segment("order-42:a.b"), "order-42:a.b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
