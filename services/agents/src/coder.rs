//! The coder: proposes a change for a task, finalizes the approved changes,
//! or reverts them during saga rollback. With a chat model configured it
//! asks the model for the change; offline it produces a deterministic
//! change record, so workflows run end to end without a network.
//!
//! A change is identified by a hash of its task, so a redelivered attempt
//! proposes the same change id (idempotent by construction).

use async_trait::async_trait;
use legato_agent::llm::ChatClient;
use legato_agent::{Agent, Task, TaskContext};
use legato_contracts::{AgentName, TaskError};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::input;

const SYSTEM_PROMPT: &str = "You are a senior engineer. Describe the change that does the task: \
answer with a JSON object {\"summary\": \"...\", \"files\": [\"path\", ...], \"steps\": [\"...\"]} only.";

pub struct Coder {
    name: AgentName,
    model: Option<ChatClient>,
}

impl Coder {
    pub fn new(name: AgentName, model: Option<ChatClient>) -> Self {
        Self { name, model }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum CoderRequest {
    Change {
        task: String,
    },
    Finalize {
        #[serde(default)]
        results: Value,
    },
    Revert {
        #[serde(default)]
        changes: Value,
    },
}

pub fn change_id(task: &str) -> String {
    let digest = Sha256::digest(task.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Change ids found anywhere in a results value.
fn change_ids(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(id)) = map.get("change_id") {
                into.push(id.clone());
            }
            map.values().for_each(|v| change_ids(v, into));
        }
        Value::Array(items) => items.iter().for_each(|v| change_ids(v, into)),
        _ => {}
    }
}

#[async_trait]
impl Agent for Coder {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        match input::parse::<CoderRequest>("coder", &task.input)? {
            CoderRequest::Change { task: what } => {
                let id = change_id(&what);
                let proposal = match &self.model {
                    Some(model) => {
                        ctx.progress("asking the model for a change", None).await;
                        let answer =
                            model
                                .complete(SYSTEM_PROMPT, &what, true)
                                .await
                                .map_err(|e| TaskError {
                                    message: format!("coder: {e}"),
                                    retryable: e.is_retryable(),
                                })?;
                        serde_json::from_str::<Value>(&answer).map_err(|e| {
                            input::retryable(format!("coder: the model's answer is not JSON: {e}"))
                        })?
                    }
                    None => offline_proposal(&what),
                };
                Ok(json!({"change_id": id, "task": what, "proposal": proposal}))
            }
            CoderRequest::Finalize { results } => {
                let mut ids = Vec::new();
                change_ids(&results, &mut ids);
                Ok(json!({"finalized": ids}))
            }
            CoderRequest::Revert { changes } => {
                let mut ids = Vec::new();
                change_ids(&changes, &mut ids);
                Ok(json!({"reverted": ids}))
            }
        }
    }
}

/// A deterministic stand-in for a model's proposal.
fn offline_proposal(task: &str) -> Value {
    let slug: String = task
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() > 2)
        .take(3)
        .collect::<Vec<_>>()
        .join("_");
    json!({
        "summary": format!("offline proposal: {task}"),
        "files": [format!("src/{slug}.rs"), format!("tests/{slug}.rs")],
        "steps": ["write a failing test", "implement the change", "run the suite"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_ids_are_stable_and_collected_from_nested_results() {
        assert_eq!(change_id("x"), change_id("x"));
        let mut ids = Vec::new();
        change_ids(
            &json!([{"change_id": "a"}, {"rows": [], "nested": {"change_id": "b"}}]),
            &mut ids,
        );
        assert_eq!(ids, vec!["a", "b"]);
    }
}
