//! The approval agent. `request` asks a person: it publishes an
//! `approval_requested` progress event naming the question and the event
//! to raise through the gateway (`POST /api/v1/instances/{id}/events/{event}`).
//! The waiting itself is the workflow's `wait_for_event` step, a durable
//! timer and not a running task. `verdict` turns the answer into the
//! saga's outcome: a rejection fails the step (not retryable), which rolls
//! back the completed steps through their compensations.

use async_trait::async_trait;
use legato_agent::{Agent, Task, TaskContext};
use legato_contracts::{AgentName, EventName, TaskError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::input;

pub struct Approval {
    name: AgentName,
}

impl Approval {
    pub fn new(name: AgentName) -> Self {
        Self { name }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum ApprovalRequest {
    Request {
        question: String,
        #[serde(default = "default_event")]
        event: String,
        #[serde(default)]
        details: Value,
    },
    Verdict {
        decision: Decision,
    },
}

fn default_event() -> String {
    "approval".into()
}

#[derive(Debug, Deserialize)]
struct Decision {
    approved: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[async_trait]
impl Agent for Approval {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        match input::parse::<ApprovalRequest>("approval", &task.input)? {
            ApprovalRequest::Request {
                question,
                event,
                details,
            } => {
                let event =
                    EventName::parse(event).map_err(|e| input::fatal(format!("approval: {e}")))?;
                let raise = format!("/api/v1/instances/{}/events/{}", task.instance, event);
                ctx.request_approval(
                    question.clone(),
                    json!({"event": event.as_str(), "raiseUri": raise, "details": details}),
                )
                .await;
                Ok(json!({"requested": true, "event": event.as_str(), "question": question}))
            }
            ApprovalRequest::Verdict { decision } if decision.approved => {
                Ok(json!({"approved": true}))
            }
            ApprovalRequest::Verdict { decision } => Err(input::fatal(format!(
                "rejected: {}",
                decision.reason.as_deref().unwrap_or("no reason given")
            ))),
        }
    }
}
