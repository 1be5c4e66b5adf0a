//! An OpenAI-compatible chat completions endpoint for tests of agents'
//! model loops (the real endpoints are cloud services), written from
//! OpenAI's API reference: `POST /v1/chat/completions` with a bearer key,
//! answered whole or, with `stream: true`, as `text/event-stream` chunks
//! (`chat.completion.chunk`, text in `delta.content` pieces, tool calls in
//! `delta.tool_calls` pieces, `finish_reason`, a last `usage` chunk with
//! `stream_options.include_usage`, then `data: [DONE]`).
//!
//! What it answers is scripted by the conversation's first user message:
//! one holding `loop:N` is a tool loop of N turns (turn = 1 + the
//! assistant messages sent back): turns 1 to N-1 ask for the first tool the
//! request offers with `{"n": turn}`, turn N answers `done after N turns: ` and the tool
//! results it was sent, in order. Anything else is answered
//! `you said: <last user message>`.
//!
//! It counts model calls per conversation and turn (`GET /calls`) and the
//! tool side effects agents report to it (`POST /effects {key}`,
//! `GET /effects`), so a test can check that a loop resumed after a crash
//! called nothing twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Calls per conversation (its first user message), per turn.
pub type Calls = BTreeMap<String, BTreeMap<u32, u32>>;

#[derive(Default)]
struct Seen {
    calls: Calls,
    effects: BTreeMap<String, u32>,
}

#[derive(Clone)]
struct Shared {
    api_key: Arc<str>,
    seen: Arc<Mutex<Seen>>,
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stand-in; it stops with the runtime that started it.
pub struct ModelStandIn {
    addr: SocketAddr,
    shared: Shared,
}

impl ModelStandIn {
    /// Listens on 127.0.0.1 (`port` 0: any free port), taking `api_key`.
    pub async fn start(port: u16, api_key: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            api_key: api_key.into(),
            seen: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/calls", get(calls))
            .route("/effects", get(effects).post(effect))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ended = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The base URL an OpenAI client takes (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn calls(&self) -> Calls {
        self.shared.seen().calls.clone()
    }

    pub fn effects(&self) -> BTreeMap<String, u32> {
        self.shared.seen().effects.clone()
    }
}

/// OpenAI's error body.
fn error(status: StatusCode, kind: &str, param: Option<&str>, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": null}});
    (status, Json(body)).into_response()
}

/// What one request asks, once checked.
struct Request {
    conversation: String,
    turn: u32,
    stream: bool,
    usage_chunk: bool,
    model: String,
    /// The first tool the request offers.
    tool: Option<String>,
    last_user: String,
    tool_results: Vec<String>,
    prompt_chars: usize,
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        // Content parts: the text ones.
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The request, or the parameter at fault and why.
fn parse(body: &Value) -> Result<Request, (String, String)> {
    let bad = |param: &str, message: &str| (param.to_owned(), message.to_owned());
    let model = body["model"]
        .as_str()
        .ok_or_else(|| bad("model", "you must provide a model parameter"))?;
    let messages = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages", "messages must be a non-empty array"))?;
    for (n, message) in messages.iter().enumerate() {
        match message["role"].as_str() {
            Some("system" | "developer" | "user" | "assistant") => {}
            Some("tool") if message["tool_call_id"].is_string() => {}
            Some("tool") => {
                return Err(bad(
                    &format!("messages.[{n}].tool_call_id"),
                    "a tool message needs tool_call_id",
                ));
            }
            _ => return Err(bad(&format!("messages.[{n}].role"), "unknown role")),
        }
    }
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    let first_user = users
        .first()
        .ok_or_else(|| bad("messages", "no user message"))?;
    let assistants = messages.iter().filter(|m| m["role"] == "assistant").count();
    Ok(Request {
        conversation: text_of(first_user),
        turn: u32::try_from(assistants)
            .unwrap_or(u32::MAX)
            .saturating_add(1),
        stream: body["stream"] == true,
        usage_chunk: body["stream_options"]["include_usage"] == true,
        model: model.to_owned(),
        tool: body["tools"][0]["function"]["name"]
            .as_str()
            .map(String::from),
        last_user: users.last().map(|m| text_of(m)).unwrap_or_default(),
        tool_results: messages
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(text_of)
            .collect(),
        prompt_chars: messages.iter().map(|m| text_of(m).len()).sum(),
    })
}

/// The turns of a `loop:N` conversation.
fn loop_turns(conversation: &str) -> Option<u32> {
    let rest = &conversation[conversation.find("loop:")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The scripted answer: text, or a tool call `(id, name, arguments)`.
enum Answer {
    Text(String),
    Tool(String, String, String),
}

fn answer(request: &Request) -> Answer {
    match loop_turns(&request.conversation) {
        Some(turns) if request.turn < turns && request.tool.is_some() => Answer::Tool(
            format!("call_{}", request.turn),
            request.tool.clone().unwrap_or_default(),
            json!({"n": request.turn}).to_string(),
        ),
        Some(turns) => Answer::Text(format!(
            "done after {turns} turns: {}",
            request.tool_results.join(", ")
        )),
        None => Answer::Text(format!("you said: {}", request.last_user)),
    }
}

async fn complete(State(shared): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let expected = format!("Bearer {}", shared.api_key);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Incorrect API key provided.",
        );
    }
    let body: Value = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &format!("the body is not JSON: {e}"),
            );
        }
    };
    let request = match parse(&body) {
        Ok(request) => request,
        Err((param, why)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(&param),
                &why,
            );
        }
    };
    *shared
        .seen()
        .calls
        .entry(request.conversation.clone())
        .or_default()
        .entry(request.turn)
        .or_default() += 1;
    let answer = answer(&request);
    let completion_tokens = match &answer {
        Answer::Text(text) => text.split_whitespace().count(),
        Answer::Tool(_, _, arguments) => arguments.len() / 4 + 1,
    };
    let usage = json!({
        "prompt_tokens": request.prompt_chars / 4 + 1,
        "completion_tokens": completion_tokens,
        "total_tokens": request.prompt_chars / 4 + 1 + completion_tokens,
    });
    if request.stream {
        streamed(&request, &answer, usage)
    } else {
        whole(&request, &answer, usage)
    }
}

fn whole(request: &Request, answer: &Answer, usage: Value) -> Response {
    let (message, finish) = match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Answer::Tool(id, name, arguments) => (
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ]}),
            "tool_calls",
        ),
    };
    Json(json!({
        "id": format!("chatcmpl-{}", request.turn),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }))
    .into_response()
}

fn streamed(request: &Request, answer: &Answer, usage: Value) -> Response {
    let chunk = |choices: Value| {
        json!({
            "id": format!("chatcmpl-{}", request.turn),
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": request.model,
            "choices": choices,
        })
    };
    let delta = |delta: Value, finish: Value| {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
    };
    let mut chunks = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let finish = match answer {
        Answer::Text(text) => {
            // Word by word, keeping the spaces, as a model's tokens come.
            for piece in text.split_inclusive(' ') {
                chunks.push(delta(json!({"content": piece}), Value::Null));
            }
            "stop"
        }
        Answer::Tool(id, name, arguments) => {
            let half = arguments.len() / 2;
            let (head, tail) = arguments.split_at(
                (0..=half)
                    .rev()
                    .find(|i| arguments.is_char_boundary(*i))
                    .unwrap_or(0),
            );
            chunks.push(delta(
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for part in [head, tail] {
                chunks.push(delta(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                    Value::Null,
                ));
            }
            "tool_calls"
        }
    };
    chunks.push(delta(json!({}), json!(finish)));
    if request.usage_chunk {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        chunks.push(last);
    }
    let mut body = String::new();
    for c in chunks {
        body.push_str(&format!("data: {c}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

async fn calls(State(shared): State<Shared>) -> Json<Calls> {
    Json(shared.seen().calls.clone())
}

async fn effects(State(shared): State<Shared>) -> Json<BTreeMap<String, u32>> {
    Json(shared.seen().effects.clone())
}

/// A tool's side effect, reported by the agent that ran it: `{key}`.
async fn effect(State(shared): State<Shared>, Json(body): Json<Value>) -> Response {
    let Some(key) = body["key"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("key"),
            "key must be a string",
        );
    };
    *shared.seen().effects.entry(key.to_owned()).or_default() += 1;
    StatusCode::NO_CONTENT.into_response()
}
