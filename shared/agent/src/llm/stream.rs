//! Reading a streamed chat completion (`stream: true`): server-sent events
//! whose `data:` lines are chunks with `choices[0].delta` pieces (text, or
//! tool-call fragments to concatenate), a last chunk with `usage` when
//! `stream_options.include_usage` asked for it, and `data: [DONE]`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tool call the model asked for, assembled from its fragments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// A whole answer, as the chunks built it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
}

impl ChatReply {
    /// The reply as the assistant's message of the conversation sent back
    /// with the tools' results: its text (none when empty) and the tool
    /// calls it asked for.
    pub fn to_message(&self) -> serde_json::Value {
        let content = (!self.content.is_empty()).then_some(self.content.as_str());
        let calls: Vec<serde_json::Value> = self
            .tool_calls
            .iter()
            .map(|c| {
                serde_json::json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls})
    }
}

/// Builds a reply from the bytes of an event stream as they come; each
/// text piece is handed to the caller as it is read.
#[derive(Debug, Default)]
pub struct StreamReader {
    pending: Vec<u8>,
    reply: ChatReply,
    done: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallPiece>,
}

#[derive(Deserialize)]
struct ToolCallPiece {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionPiece>,
}

#[derive(Deserialize)]
struct FunctionPiece {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl StreamReader {
    /// Reads `bytes` (any split of the stream); `on_text` gets each text
    /// piece. An unreadable chunk is an error naming it.
    pub fn feed(&mut self, bytes: &[u8], on_text: &mut dyn FnMut(&str)) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let Some(data) = line.strip_prefix("data:") else {
                // Comments, event names, blank separators.
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                self.done = true;
                continue;
            }
            self.chunk(data, on_text)?;
        }
        Ok(())
    }

    fn chunk(&mut self, data: &str, on_text: &mut dyn FnMut(&str)) -> Result<(), String> {
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            format!(
                "a stream chunk is not JSON ({e}): {}",
                super::truncate(data, 200)
            )
        })?;
        if chunk.model.is_some() {
            self.reply.model = chunk.model;
        }
        if let Some(usage) = chunk.usage {
            self.reply.input_tokens = usage.prompt_tokens;
            self.reply.output_tokens = usage.completion_tokens;
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(());
        };
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            on_text(&text);
            self.reply.content.push_str(&text);
        }
        for piece in choice.delta.tool_calls {
            while self.reply.tool_calls.len() <= piece.index {
                self.reply.tool_calls.push(ToolCall::default());
            }
            let call = &mut self.reply.tool_calls[piece.index];
            if let Some(id) = piece.id {
                call.id = id;
            }
            if let Some(function) = piece.function {
                if let Some(name) = function.name {
                    call.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.arguments.push_str(&arguments);
                }
            }
        }
        if choice.finish_reason.is_some() {
            self.reply.finish_reason = choice.finish_reason;
        }
        Ok(())
    }

    /// The reply, once the stream said `[DONE]`.
    pub fn finish(self) -> Result<ChatReply, String> {
        if !self.done {
            return Err("the stream ended before [DONE]".into());
        }
        Ok(self.reply)
    }
}

/// What a tool call's arguments say, as JSON (`{}` for none).
pub fn arguments(call: &ToolCall) -> Result<Value, String> {
    if call.arguments.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(&call.arguments).map_err(|e| {
        format!(
            "tool call {} has arguments that are not JSON: {e}",
            call.name
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"open_pr\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"title\\\":\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"csv\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn a_stream_split_anywhere_builds_the_same_reply_and_hands_out_its_text() {
        for split in [1, 7, 64, STREAM.len()] {
            let mut reader = StreamReader::default();
            let mut pieces = Vec::new();
            for bytes in STREAM.as_bytes().chunks(split) {
                reader
                    .feed(bytes, &mut |text| pieces.push(text.to_owned()))
                    .unwrap();
            }
            let reply = reader.finish().unwrap();
            assert_eq!(pieces.concat(), "Hello", "split {split}");
            assert_eq!(reply.content, "Hello");
            assert_eq!(reply.model.as_deref(), Some("gpt-test"));
            assert_eq!((reply.input_tokens, reply.output_tokens), (12, 7));
            assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
            assert_eq!(reply.tool_calls.len(), 1);
            assert_eq!(reply.tool_calls[0].id, "call_1");
            assert_eq!(reply.tool_calls[0].name, "open_pr");
            assert_eq!(
                arguments(&reply.tool_calls[0]).unwrap(),
                serde_json::json!({"title": "csv"})
            );
        }
    }

    #[test]
    fn a_cut_stream_and_a_bad_chunk_are_errors() {
        let mut reader = StreamReader::default();
        reader
            .feed(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n",
                &mut |_| {},
            )
            .unwrap();
        assert!(reader.finish().unwrap_err().contains("[DONE]"));
        let mut reader = StreamReader::default();
        let err = reader.feed(b"data: {not json\n", &mut |_| {}).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
