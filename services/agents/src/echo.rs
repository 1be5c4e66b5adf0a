//! The diagnostic agent: answers `{"value": <input.value>, "attempt": n}`.
//! `sleep_ms` delays the answer, `fail_attempts: k` fails attempts 1..k
//! with a retryable error, `fatal: true` fails without retry, and
//! `hang_attempts: k` makes attempts 1..k hang without heartbeats (a
//! wedged agent, for heartbeat leases) until they are cancelled;
//! `fail_executions: k` fails (without retry) every attempt of the
//! instance's first k executions, so a redrive (a new execution) passes.
//! `journal: [names]` records a journaled step of each name first (its
//! value: the attempt that ran it), answered as `journal` in the output,
//! so a retried task shows which attempt did the work. `usage` (tokens,
//! cost, model) is reported as what the attempt spent; `ask: {name,
//! question, schema?, timeout_ms?}` asks a person after the journaled
//! steps and answers with `answer`; `output: [pieces]` relays the pieces
//! to watchers as the output `echo` before answering; `output_clock:
//! {pieces, every_ms}` pushes that many pieces that far apart, each the
//! time it was pushed (microseconds since the Unix epoch, then a space),
//! for `legato bench --output-pieces`. Tests,
//! benchmarks and operators use it to exercise the engine without models.

use std::time::Duration;

use async_trait::async_trait;
use legato_agent::{Agent, Task, TaskContext};
use legato_contracts::{AgentName, TaskError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::input;

pub struct Echo {
    name: AgentName,
}

impl Echo {
    pub fn new(name: AgentName) -> Self {
        Self { name }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EchoInput {
    value: Value,
    sleep_ms: u64,
    fail_attempts: u32,
    fatal: bool,
    hang_attempts: u32,
    fail_executions: u32,
    journal: Vec<String>,
    usage: Option<legato_contracts::Usage>,
    ask: Option<EchoAsk>,
    output: Vec<String>,
    output_clock: Option<OutputClock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputClock {
    pieces: u32,
    every_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoAsk {
    name: String,
    question: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[async_trait]
impl Agent for Echo {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let request: EchoInput = match &task.input {
            Value::Null => EchoInput::default(),
            other => input::parse("echo", other)?,
        };
        if let Some(usage) = &request.usage {
            ctx.add_usage(usage);
        }
        let mut journal = serde_json::Map::new();
        for name in &request.journal {
            let attempt = task.attempt;
            let value: Value = ctx
                .step(name, || async move { Ok(json!({ "attempt": attempt })) })
                .await?;
            journal.insert(name.clone(), value);
        }
        let answer = match &request.ask {
            Some(ask) => {
                let timeout = ask.timeout_ms.map(Duration::from_millis);
                Some(
                    ctx.ask(&ask.name, &ask.question, ask.schema.clone(), timeout)
                        .await?,
                )
            }
            None => None,
        };
        if !request.output.is_empty() {
            let output = ctx.output("echo");
            for piece in &request.output {
                output.push(piece);
            }
            output.finish().await;
        }
        if let Some(clock) = &request.output_clock {
            let output = ctx.output("clock");
            // Bounded like any diagnostic: the step's timeout ends it too.
            for _ in 0..clock.pieces.min(100_000) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                output.push(&format!("{now} "));
                tokio::time::sleep(Duration::from_millis(clock.every_ms)).await;
            }
            output.finish().await;
        }
        if task.attempt <= request.hang_attempts {
            ctx.stop_heartbeats();
            // Until the orchestrator gives up on the attempt and cancels it.
            ctx.cancelled().await;
            return Err(input::retryable("echo: hung on purpose, then cancelled"));
        }
        if request.sleep_ms > 0 {
            // The worker stops waiting for this future when the task is
            // cancelled, so the sleep needs no cancellation of its own.
            tokio::time::sleep(Duration::from_millis(request.sleep_ms)).await;
        }
        if task.key.execution < request.fail_executions {
            return Err(input::fatal(format!(
                "echo: execution {} of the first {} fails on purpose",
                task.key.execution, request.fail_executions
            )));
        }
        if request.fatal {
            return Err(input::fatal("echo: asked to fail (fatal: true)"));
        }
        if task.attempt <= request.fail_attempts {
            return Err(input::retryable(format!(
                "echo: attempt {} of the first {} fails on purpose",
                task.attempt, request.fail_attempts
            )));
        }
        let mut output = json!({"value": request.value, "attempt": task.attempt});
        if !journal.is_empty() {
            output["journal"] = Value::Object(journal);
        }
        if let Some(answer) = answer {
            output["answer"] = answer;
        }
        Ok(output)
    }
}
