//! `legato agents …`: the agent registry (built-in and pull agents).

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Gateway, Output, segment};

#[derive(Debug, clap::Subcommand)]
pub enum AgentsCommand {
    /// List the agents (the built-in ones too).
    Ls,
    /// Show one agent.
    Show { name: String },
    /// Register (or replace) an agent whose workers poll for its tasks.
    Put {
        name: String,
        /// pull: workers long-poll the gateway for its tasks.
        #[arg(long, default_value = "pull")]
        kind: String,
        /// How long a worker holds a task between heartbeats.
        #[arg(long, value_name = "MS")]
        lease_ms: Option<u64>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Remove an agent from the registry (its queued tasks stay).
    Rm { name: String },
}

pub async fn run(gateway: &Gateway, output: Output, command: AgentsCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/agents/{}", segment(name));
    let (text, value) = match command {
        AgentsCommand::Ls => {
            let list = gateway.call(Method::GET, "/api/v1/agents", None).await?;
            let mut text = format!(
                "{:<24} {:<8} {:>7} {:>7} {:>9} {:>6} {:>9}  DESCRIPTION",
                "NAME", "KIND", "WAITING", "RUNNING", "COMPLETED", "FAILED", "P50 MS"
            );
            for item in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
                text.push_str(&format!(
                    "\n{:<24} {:<8} {:>7} {:>7} {:>9} {:>6} {:>9}  {}",
                    item["name"].as_str().unwrap_or_default(),
                    item["kind"].as_str().unwrap_or_default(),
                    figure(&item["waiting"]),
                    figure(&item["running"]),
                    figure(&item["completed"]),
                    figure(&item["failed"]),
                    figure(&item["p50Ms"]),
                    item["description"].as_str().unwrap_or_default(),
                ));
            }
            (text, list)
        }
        AgentsCommand::Show { name } => {
            let view = gateway.call(Method::GET, &path(&name), None).await?;
            (describe(&view), view)
        }
        AgentsCommand::Put {
            name,
            kind,
            lease_ms,
            description,
        } => {
            let mut spec = json!({"kind": kind});
            if let Some(lease_ms) = lease_ms {
                spec["leaseMs"] = json!(lease_ms);
            }
            if let Some(description) = description {
                spec["description"] = json!(description);
            }
            let view = gateway.call(Method::PUT, &path(&name), Some(&spec)).await?;
            (describe(&view), view)
        }
        AgentsCommand::Rm { name } => {
            gateway.call(Method::DELETE, &path(&name), None).await?;
            (
                format!("removed {name}"),
                json!({"name": name, "removed": true}),
            )
        }
    };
    output.print(&text, &value);
    Ok(())
}

fn describe(view: &Value) -> String {
    let mut text = format!(
        "{}: {} agent{}, lease {} ms, updated {}",
        view["name"].as_str().unwrap_or_default(),
        view["kind"].as_str().unwrap_or_default(),
        if view["owned"] == true {
            " of this tenant"
        } else {
            ""
        },
        view["leaseMs"].as_u64().unwrap_or_default(),
        view["updatedAt"].as_str().unwrap_or_default(),
    );
    if let Some(description) = view["description"].as_str() {
        text.push_str(&format!("\n{description}"));
    }
    text.push_str(&format!(
        "\nnow: {} waiting, {} running; last 5 minutes: {} completed, {} failed, p50 {} ms",
        figure(&view["waiting"]),
        figure(&view["running"]),
        figure(&view["completed"]),
        figure(&view["failed"]),
        figure(&view["p50Ms"]),
    ));
    for worker in view["workers"].as_array().map_or(&[][..], Vec::as_slice) {
        text.push_str(&format!(
            "\nworker {} last polled {}",
            worker["id"].as_str().unwrap_or_default(),
            worker["lastPoll"].as_str().unwrap_or_default(),
        ));
    }
    text
}

/// A figure as the tables show it: `-` when the registry cannot tell.
fn figure(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        _ => "-".to_owned(),
    }
}
