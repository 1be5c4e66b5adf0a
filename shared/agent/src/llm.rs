//! A client for the OpenAI-compatible chat-completions API, which OpenAI,
//! Azure OpenAI and local servers (llama.cpp, vLLM, Ollama) all speak.
//! Agents that use it fall back to a deterministic offline backend when
//! [`LlmSettings::endpoint`] is empty, so the stack runs with no network.

mod stream;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use stream::{ChatReply, StreamReader, ToolCall, arguments};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// `openai` (also local servers) or `azure`.
    pub provider: Provider,
    /// OpenAI: the API base, e.g. `https://api.openai.com/v1`.
    /// Azure: the resource, e.g. `https://my-res.openai.azure.com`.
    /// Empty: use the offline backend.
    pub endpoint: String,
    /// Secret; from the environment (`LEGATO__LLM__API_KEY`), never logged.
    pub api_key: String,
    /// The model (OpenAI) or deployment name (Azure).
    pub model: String,
    /// Azure only.
    pub api_version: String,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for LlmSettings {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .field("model", &self.model)
            .field("api_version", &self.api_version)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            provider: Provider::OpenAi,
            endpoint: String::new(),
            api_key: String::new(),
            model: "gpt-4o-mini".into(),
            api_version: "2024-10-21".into(),
            timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    Azure,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Network trouble, 429 or 5xx: worth another attempt.
    #[error("chat endpoint unavailable: {0}")]
    Transient(String),
    /// 4xx or an answer that is not a chat completion.
    #[error("chat endpoint refused the request: {0}")]
    Refused(String),
}

impl LlmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    settings: LlmSettings,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in logs.
        f.debug_struct("ChatClient")
            .field("endpoint", &self.settings.endpoint)
            .field("model", &self.settings.model)
            .finish()
    }
}

impl ChatClient {
    /// `None` when no endpoint is configured (use the offline backend).
    pub fn from_settings(settings: &LlmSettings) -> Result<Option<Self>, LlmError> {
        if settings.endpoint.trim().is_empty() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| LlmError::Refused(e.to_string()))?;
        Ok(Some(Self {
            http,
            settings: settings.clone(),
        }))
    }

    fn url(&self) -> String {
        let base = self.settings.endpoint.trim_end_matches('/');
        match self.settings.provider {
            Provider::OpenAi => format!("{base}/chat/completions"),
            Provider::Azure => format!(
                "{base}/openai/deployments/{}/chat/completions?api-version={}",
                self.settings.model, self.settings.api_version
            ),
        }
    }

    /// A request of `body` to the endpoint, authenticated as configured.
    fn request(&self, mut body: Value) -> reqwest::RequestBuilder {
        if self.settings.provider == Provider::OpenAi {
            body["model"] = json!(self.settings.model);
        }
        let request = self.http.post(self.url()).json(&body);
        if self.settings.api_key.is_empty() {
            return request;
        }
        match self.settings.provider {
            Provider::OpenAi => request.bearer_auth(&self.settings.api_key),
            Provider::Azure => request.header("api-key", &self.settings.api_key),
        }
    }

    /// Sends `request`; throttling, 5xx and network trouble are transient,
    /// any other refusal is not.
    async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
        let response = request
            .send()
            .await
            .map_err(|e| LlmError::Transient(e.to_string()))?;
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(LlmError::Transient(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(LlmError::Refused(format!(
                "HTTP {status}: {}",
                truncate(&text, 500)
            )));
        }
        Ok(response)
    }

    /// One system + user exchange; returns the assistant's text. `json_mode`
    /// asks for a JSON object answer.
    pub async fn complete(
        &self,
        system: &str,
        user: &str,
        json_mode: bool,
    ) -> Result<String, LlmError> {
        let mut body = json!({
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "temperature": 0,
        });
        if json_mode {
            body["response_format"] = json!({"type": "json_object"});
        }
        let response = Self::send(self.request(body)).await?;
        let answer: ChatResponse = response
            .json()
            .await
            .map_err(|e| LlmError::Refused(format!("not a chat completion: {e}")))?;
        answer
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::Refused("the completion has no message content".into()))
    }

    /// A streamed completion of `messages` (chat-completions messages),
    /// offering `tools` (function tools) when given: each piece of text
    /// goes to `on_text` as it arrives; the reply holds the whole text, the
    /// tool calls the model asked for and the tokens it spent.
    pub async fn stream(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatReply, LlmError> {
        let mut body = json!({
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(tools) = tools {
            body["tools"] = tools.clone();
        }
        let mut response = Self::send(self.request(body)).await?;
        let mut reader = StreamReader::default();
        while let Some(bytes) = response
            .chunk()
            .await
            .map_err(|e| LlmError::Transient(format!("the stream broke off: {e}")))?
        {
            reader.feed(&bytes, on_text).map_err(LlmError::Refused)?;
        }
        let mut reply = reader.finish().map_err(LlmError::Transient)?;
        if reply.model.is_none() {
            reply.model = Some(self.settings.model.clone());
        }
        Ok(reply)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::routing::post;
    use serde_json::Value;

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

    /// A local chat endpoint that records what it was sent.
    async fn serve(status: StatusCode) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(post(move |uri: Uri, headers: HeaderMap, Json(body): Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((uri.to_string(), headers, body));
                (status, Json(json!({"choices": [{"message": {"role": "assistant", "content": "{\"ok\":true}"}}]})))
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn openai_shape_model_bearer_and_json_mode() {
        let (endpoint, seen) = serve(StatusCode::OK).await;
        let settings = LlmSettings {
            endpoint: format!("{endpoint}/v1"),
            api_key: "sk-test".into(),
            ..LlmSettings::default()
        };
        let client = ChatClient::from_settings(&settings).unwrap().unwrap();
        let text = client.complete("sys", "hello", true).await.unwrap();
        assert_eq!(text, "{\"ok\":true}");
        let seen = seen.lock().unwrap();
        let (uri, headers, body) = &seen[0];
        assert_eq!(uri, "/v1/chat/completions");
        assert_eq!(headers["authorization"], "Bearer sk-test");
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["messages"][1]["content"], "hello");
        assert_eq!(body["response_format"]["type"], "json_object");
    }

    #[tokio::test]
    async fn azure_shape_deployment_path_and_api_key_header() {
        let (endpoint, seen) = serve(StatusCode::OK).await;
        let settings = LlmSettings {
            provider: Provider::Azure,
            endpoint,
            api_key: "azkey".into(),
            model: "planner-deploy".into(),
            ..LlmSettings::default()
        };
        let client = ChatClient::from_settings(&settings).unwrap().unwrap();
        client.complete("sys", "hi", false).await.unwrap();
        let seen = seen.lock().unwrap();
        let (uri, headers, body) = &seen[0];
        assert_eq!(
            uri,
            "/openai/deployments/planner-deploy/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(headers["api-key"], "azkey");
        assert!(body.get("model").is_none());
        assert!(body.get("response_format").is_none());
    }

    #[tokio::test]
    async fn throttling_is_retryable_and_a_bad_request_is_not() {
        let (endpoint, _) = serve(StatusCode::TOO_MANY_REQUESTS).await;
        let settings = LlmSettings {
            endpoint,
            ..LlmSettings::default()
        };
        let err = ChatClient::from_settings(&settings)
            .unwrap()
            .unwrap()
            .complete("s", "u", false)
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let (endpoint, _) = serve(StatusCode::BAD_REQUEST).await;
        let settings = LlmSettings {
            endpoint,
            ..LlmSettings::default()
        };
        let err = ChatClient::from_settings(&settings)
            .unwrap()
            .unwrap()
            .complete("s", "u", false)
            .await
            .unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }

    /// A local endpoint that answers every request with an event stream,
    /// recording the request's body.
    async fn serve_stream(events: &'static str) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(post(
            move |uri: Uri, headers: HeaderMap, Json(body): Json<Value>| {
                let record = record.clone();
                async move {
                    record
                        .lock()
                        .unwrap()
                        .push((uri.to_string(), headers, body));
                    ([("content-type", "text/event-stream")], events)
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_streamed_completion_hands_out_its_text_and_counts_its_tokens() {
        let (endpoint, seen) = serve_stream(concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Ship \"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"it\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        ))
        .await;
        let settings = LlmSettings {
            endpoint: format!("{endpoint}/v1"),
            ..LlmSettings::default()
        };
        let client = ChatClient::from_settings(&settings).unwrap().unwrap();
        let mut pieces = Vec::new();
        let messages = [json!({"role": "user", "content": "ship?"})];
        let tools = json!([{"type": "function", "function": {"name": "open_pr", "parameters": {"type": "object"}}}]);
        let reply = client
            .stream(&messages, Some(&tools), &mut |text| {
                pieces.push(text.to_owned())
            })
            .await
            .unwrap();
        assert_eq!(pieces, ["Ship ", "it"]);
        assert_eq!(reply.content, "Ship it");
        assert_eq!((reply.input_tokens, reply.output_tokens), (9, 2));
        assert_eq!(reply.model.as_deref(), Some("gpt-4o-mini"));
        let seen = seen.lock().unwrap();
        let body = &seen[0].2;
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["tools"][0]["function"]["name"], "open_pr");
        assert_eq!(body["model"], "gpt-4o-mini");
    }

    #[test]
    fn no_endpoint_means_offline() {
        assert!(
            ChatClient::from_settings(&LlmSettings::default())
                .unwrap()
                .is_none()
        );
    }
}
