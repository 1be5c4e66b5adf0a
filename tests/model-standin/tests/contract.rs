//! The stand-in answers as OpenAI's chat completions API does: a bearer
//! key, whole and streamed answers, tool calls on its script, and counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use legato_model_standin::ModelStandIn;
use serde_json::{Value, json};

async fn post(standin: &ModelStandIn, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", standin.base_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}])
}

#[tokio::test]
async fn a_tool_loop_streams_its_turns_and_every_call_is_counted() {
    let standin = ModelStandIn::start(0, "sk-test").await.unwrap();
    let wrong = post(&standin, "sk-other", json!({"model": "m", "messages": []})).await;
    assert_eq!(wrong.status(), 401);
    let bad = post(&standin, "sk-test", json!({"model": "m", "messages": []})).await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["param"],
        "messages"
    );

    let mut messages = vec![json!({"role": "user", "content": "loop:3 please"})];
    let first = post(
        &standin,
        "sk-test",
        json!({"model": "m", "messages": messages, "tools": tools()}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    let call = &first["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(
        (
            &call["id"],
            &call["function"]["name"],
            &call["function"]["arguments"]
        ),
        (&json!("call_1"), &json!("add"), &json!("{\"n\":1}"))
    );
    assert_eq!(first["choices"][0]["finish_reason"], "tool_calls");
    for turn in 1..=2 {
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{turn}"), "type": "function",
             "function": {"name": "add", "arguments": format!("{{\"n\":{turn}}}")}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{turn}"), "content": format!("{}", turn * 2)}));
    }
    let last = post(
        &standin,
        "sk-test",
        json!({"model": "m", "messages": messages, "tools": tools(), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(last.headers()["content-type"], "text/event-stream");
    let text = last.text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "done after 3 turns: 2, 4");
    assert!(chunks.len() > 4, "streamed in pieces: {chunks:?}");
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let calls = standin.calls();
    assert_eq!(
        calls["loop:3 please"]
            .iter()
            .map(|(t, n)| (*t, *n))
            .collect::<Vec<_>>(),
        [(1, 1), (3, 1)]
    );
}
