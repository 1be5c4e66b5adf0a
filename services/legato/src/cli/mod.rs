//! The client commands of the `legato` binary: start, watch, signal and
//! operate instances on a gateway (`--url` or `LEGATO_URL`), authenticated
//! as the gateway requires (`--token` or `LEGATO_TOKEN`: an API key or an
//! access token). `--output json` prints JSON for scripts. `start --watch`
//! and `watch` exit 0 when the instance completed, 2 when it failed, 3
//! when it was terminated; 1 is an error of the command itself.

mod agents;
mod client;
mod entities;
mod entity_types;
mod schedule;
mod watch;

use std::process::ExitCode;

use legato_contracts::RuntimeStatus;
use reqwest::Method;
use serde_json::{Value, json};

use client::segment;
pub use client::{Gateway, Output, Target};

/// The client commands with the options they share.
#[derive(Debug, clap::Parser)]
#[command(name = "legato", version)]
pub struct ClientCli {
    #[command(subcommand)]
    pub command: ClientCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Start an instance of a registered workflow.
    Start {
        workflow: String,
        /// The input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Choose the instance id (a UUID otherwise).
        #[arg(long)]
        id: Option<String>,
        /// A definition version (the latest otherwise).
        #[arg(long)]
        version: Option<u32>,
        /// Follow it until it ends, as `watch` does.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Follow an instance live until it ends.
    Watch { id: String },
    /// Approve (or reject) what an instance waits for.
    Approve {
        id: String,
        /// Reject, with this reason.
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
        /// The event the approval step waits for.
        #[arg(long, default_value = "approval")]
        event: String,
    },
    /// Raise a named event with JSON data.
    Raise {
        id: String,
        event: String,
        #[arg(default_value = "null")]
        data: String,
    },
    /// List instances, newest first.
    Ls {
        /// Pending, Running, Suspended, Completed, Failed or Terminated.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        /// How many (1-1000).
        #[arg(long, default_value_t = 50)]
        top: u32,
    },
    /// Show an instance: status, steps, output (and its history).
    Show {
        id: String,
        #[arg(long)]
        history: bool,
    },
    /// Stop an instance: no more steps, running tasks cancelled.
    Terminate {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause an instance; results and events wait for resume.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended instance (one held for its budget with a
    /// higher budget).
    Resume {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        budget: BudgetArgs,
    },
    /// Run an instance again from the start (optionally with a new input).
    Restart {
        id: String,
        #[arg(long)]
        input: Option<String>,
    },
    /// Resume a Failed or Terminated instance from what did not complete
    /// (completed steps keep their outputs, and the tasks that run again
    /// their journals).
    Redrive {
        id: String,
        /// Move it onto this later version of its definition first.
        #[arg(long)]
        version: Option<u32>,
        /// Clear the tasks' journals: the steps their agents recorded run
        /// again.
        #[arg(long)]
        reset_journal: bool,
    },
    /// Runs on a timetable.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// The agent registry: built-in and pull agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Durable entities: state shared across runs.
    #[command(subcommand)]
    Entities(entities::EntitiesCommand),
    /// Entity types: a state schema and custom operations.
    #[command(subcommand, name = "entity-types")]
    EntityTypes(entity_types::EntityTypesCommand),
    /// Delete a finished instance and its history.
    Purge { id: String },
}

/// The exit code that says how an instance ended.
pub fn exit_code(status: RuntimeStatus) -> ExitCode {
    match status {
        RuntimeStatus::Completed => ExitCode::SUCCESS,
        RuntimeStatus::Failed => ExitCode::from(2),
        RuntimeStatus::Terminated => ExitCode::from(3),
        _ => ExitCode::from(4),
    }
}

fn json_arg(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{what} is not JSON: {e}"))
}

pub async fn run(command: ClientCommand, target: Target) -> anyhow::Result<ExitCode> {
    let gateway = Gateway::new(&target)?;
    let output = target.output;
    let instance = |id: &str| format!("/api/v1/instances/{}", segment(id));
    let print = |text: String, value: &Value| output.print(&text, value);
    match command {
        ClientCommand::Start {
            workflow,
            input,
            id,
            version,
            watch,
            budget,
        } => {
            let mut body = json!({"input": json_arg("--input", &input)?});
            if let Some(id) = id {
                body["instanceId"] = json!(id);
            }
            if let Some(budget) = budget.body() {
                body["budget"] = budget;
            }
            if let Some(version) = version {
                body["version"] = json!(version);
            }
            let path = format!("/api/v1/workflows/{}/instances", segment(&workflow));
            let started = gateway.call(Method::POST, &path, Some(&body)).await?;
            let id = started["id"].as_str().unwrap_or_default().to_owned();
            print(format!("started {id}"), &started);
            if watch {
                return Ok(exit_code(watch::watch(&gateway, &id, output).await?));
            }
        }
        ClientCommand::Watch { id } => {
            return Ok(exit_code(watch::watch(&gateway, &id, output).await?));
        }
        ClientCommand::Approve { id, reject, event } => {
            let data = match reject {
                Some(reason) => json!({"approved": false, "reason": reason}),
                None => json!({"approved": true}),
            };
            let path = format!("{}/events/{}", instance(&id), segment(&event));
            let accepted = gateway.call(Method::POST, &path, Some(&data)).await?;
            let verdict = if data["approved"] == true {
                "approved"
            } else {
                "rejected"
            };
            print(format!("{verdict} {id}"), &accepted);
        }
        ClientCommand::Raise { id, event, data } => {
            let data = json_arg("the event data", &data)?;
            let path = format!("{}/events/{}", instance(&id), segment(&event));
            let accepted = gateway.call(Method::POST, &path, Some(&data)).await?;
            print(format!("raised {event} on {id}"), &accepted);
        }
        ClientCommand::Ls {
            status,
            workflow,
            top,
        } => {
            let mut query = format!("?top={top}");
            if let Some(status) = status {
                query.push_str(&format!("&status={}", segment(&status)));
            }
            if let Some(workflow) = workflow {
                query.push_str(&format!("&workflow={}", segment(&workflow)));
            }
            let page = gateway
                .call(Method::GET, &format!("/api/v1/instances{query}"), None)
                .await?;
            let items = page["items"].as_array().map_or(&[][..], Vec::as_slice);
            let mut text = format!("{:<38} {:<20} {:<11} CREATED", "ID", "WORKFLOW", "STATUS");
            for item in items {
                let field = |k: &str| item[k].as_str().unwrap_or_default().to_owned();
                text.push_str(&format!(
                    "\n{:<38} {:<20} {:<11} {}",
                    field("id"),
                    field("workflow"),
                    field("runtimeStatus"),
                    field("createdAt")
                ));
            }
            print(text, &page);
        }
        ClientCommand::Show { id, history } => {
            let path = format!("{}?history={history}", instance(&id));
            let shown = gateway.call(Method::GET, &path, None).await?;
            print(describe(&shown), &shown);
        }
        ClientCommand::Terminate { id, reason } => {
            operate(
                &gateway,
                output,
                &id,
                "terminate",
                json!({"reason": reason}),
            )
            .await?;
        }
        ClientCommand::Suspend { id, reason } => {
            operate(&gateway, output, &id, "suspend", json!({"reason": reason})).await?;
        }
        ClientCommand::Resume { id, reason, budget } => {
            let mut body = json!({"reason": reason});
            if let Some(budget) = budget.body() {
                body["budget"] = budget;
            }
            operate(&gateway, output, &id, "resume", body).await?;
        }
        ClientCommand::Restart { id, input } => {
            let input = input.map(|i| json_arg("--input", &i)).transpose()?;
            operate(&gateway, output, &id, "restart", json!({"input": input})).await?;
        }
        ClientCommand::Redrive {
            id,
            version,
            reset_journal,
        } => {
            operate(
                &gateway,
                output,
                &id,
                "redrive",
                json!({"version": version, "resetJournal": reset_journal}),
            )
            .await?;
        }
        ClientCommand::Schedule(command) => schedule::run(&gateway, output, command).await?,
        ClientCommand::Agents(command) => agents::run(&gateway, output, command).await?,
        ClientCommand::Entities(command) => entities::run(&gateway, output, command).await?,
        ClientCommand::EntityTypes(command) => entity_types::run(&gateway, output, command).await?,
        ClientCommand::Purge { id } => {
            gateway.call(Method::DELETE, &instance(&id), None).await?;
            print(format!("purged {id}"), &json!({"id": id, "purged": true}));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn operate(
    gateway: &Gateway,
    output: Output,
    id: &str,
    operation: &str,
    body: Value,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/instances/{}/{operation}", segment(id));
    let accepted = gateway.call(Method::POST, &path, Some(&body)).await?;
    output.print(&format!("{operation} sent to {id}"), &accepted);
    Ok(())
}

/// An instance as text: its status, steps and output, then its history.
/// What an instance may spend, as `start` and `resume` take it.
#[derive(Debug, clap::Args)]
pub struct BudgetArgs {
    /// At most this many model tokens (input and output together).
    #[arg(long)]
    budget_tokens: Option<u64>,
    /// At most this cost, in the currency the agents report.
    #[arg(long)]
    budget_cost: Option<f64>,
}

impl BudgetArgs {
    fn body(&self) -> Option<Value> {
        if self.budget_tokens.is_none() && self.budget_cost.is_none() {
            return None;
        }
        let mut budget = json!({});
        if let Some(tokens) = self.budget_tokens {
            budget["tokens"] = json!(tokens);
        }
        if let Some(cost) = self.budget_cost {
            budget["cost"] = json!(cost);
        }
        Some(budget)
    }
}

/// "1,234 tokens (1,000 in, 234 out), cost 0.42".
fn spent(usage: &Value) -> String {
    let count = |k: &str| usage[k].as_u64().unwrap_or(0);
    let mut text = format!(
        "{} tokens ({} in, {} out)",
        count("inputTokens") + count("outputTokens"),
        count("inputTokens"),
        count("outputTokens")
    );
    if let Some(cost) = usage["cost"].as_f64().filter(|c| *c > 0.0) {
        text.push_str(&format!(", cost {cost}"));
    }
    text
}

fn describe(instance: &Value) -> String {
    let field = |k: &str| instance[k].as_str().unwrap_or_default();
    let mut text = format!(
        "{} ({} v{}): {}\ncreated {}, updated {}",
        field("id"),
        field("workflow"),
        instance["version"],
        field("runtimeStatus"),
        field("createdAt"),
        field("updatedAt")
    );
    if let Some(error) = instance["error"].as_str() {
        text.push_str(&format!("\nerror: {error}"));
    }
    if instance["usage"].is_object() || instance["budget"].is_object() {
        let used = if instance["usage"].is_object() {
            spent(&instance["usage"])
        } else {
            "nothing yet".to_owned()
        };
        text.push_str(&format!("\nspent: {used}"));
        if let Some(budget) = instance["budget"].as_object() {
            let bound: Vec<String> = [("tokens", "tokens"), ("cost", "cost")]
                .iter()
                .filter_map(|(k, label)| budget.get(*k).map(|v| format!("{label} {v}")))
                .collect();
            text.push_str(&format!(" of a budget of {}", bound.join(", ")));
        }
    }
    if let Some(parent) = instance["parent"].as_object() {
        let of = |k: &str| parent.get(k).and_then(Value::as_str).unwrap_or_default();
        text.push_str(&format!(
            "\nchild run of {} (step {}, attempt {})",
            of("id"),
            of("step"),
            parent.get("attempt").unwrap_or(&Value::Null)
        ));
    }
    for step in instance["steps"].as_array().map_or(&[][..], Vec::as_slice) {
        // A loop's body is listed under it, indented.
        let indent = if step["parent"].is_string() {
            "    "
        } else {
            "  "
        };
        let mut line = format!(
            "\n{indent}{:<20} {:<10} attempts {}",
            step["id"].as_str().unwrap_or_default(),
            step["status"].as_str().unwrap_or_default(),
            step["attempts"]
        );
        if let Some(max) = step.get("maxIterations") {
            let iteration = step.get("iteration").and_then(Value::as_u64).unwrap_or(0);
            line.push_str(&format!(", iteration {iteration} of at most {max}"));
        }
        if let Some(items) = step.get("items") {
            line.push_str(&format!(
                ", items {}/{} ({} failed)",
                items["completed"], items["total"], items["failed"]
            ));
        }
        if let Some(workflow) = step["workflow"].as_str() {
            line.push_str(&format!(", runs {workflow}"));
        }
        if step["usage"].is_object() {
            line.push_str(&format!(", spent {}", spent(&step["usage"])));
        }
        // Child runs, each by the id `legato show` takes.
        for child in step["children"].as_array().map_or(&[][..], Vec::as_slice) {
            line.push_str(&format!(
                "\n{indent}  child {}",
                child.as_str().unwrap_or_default()
            ));
        }
        text.push_str(&line);
    }
    for (label, key) in [("custom status", "customStatus"), ("output", "output")] {
        if let Some(value) = instance.get(key).filter(|v| !v.is_null()) {
            text.push_str(&format!("\n{label}: {value}"));
        }
    }
    if let Some(history) = instance["history"].as_array() {
        text.push_str("\nhistory:");
        for entry in history {
            text.push_str(&format!(
                "\n  {:>4} {} {}",
                entry["seq"],
                entry["at"].as_str().unwrap_or_default(),
                entry["event"]["type"].as_str().unwrap_or_default()
            ));
        }
    }
    text
}
