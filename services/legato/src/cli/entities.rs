//! `legato entities …`: durable entities of the caller's tenant.

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Gateway, Output, segment};

#[derive(Debug, clap::Subcommand)]
pub enum EntitiesCommand {
    /// List entities, by type then id.
    Ls {
        /// Only entities of this type.
        #[arg(long = "type", value_name = "TYPE")]
        entity_type: Option<String>,
    },
    /// Show an entity: its state and its latest operations.
    Show {
        #[arg(value_name = "TYPE")]
        entity_type: String,
        id: String,
        /// How many of the latest operations to list (0-100).
        #[arg(long, default_value_t = 10)]
        operations: usize,
    },
    /// Send an operation (`{"op": "increment", "by": 5}`), applied once
    /// per idempotency key.
    Signal {
        #[arg(value_name = "TYPE")]
        entity_type: String,
        id: String,
        /// The operation, as JSON.
        operation: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Delete an entity with its operations.
    Rm {
        #[arg(value_name = "TYPE")]
        entity_type: String,
        id: String,
    },
}

pub async fn run(
    gateway: &Gateway,
    output: Output,
    command: EntitiesCommand,
) -> anyhow::Result<()> {
    let path = |t: &str, id: &str| format!("/api/v1/entities/{}/{}", segment(t), segment(id));
    let (text, value) = match command {
        EntitiesCommand::Ls { entity_type } => {
            let query = entity_type
                .map(|t| format!("?type={}", segment(&t)))
                .unwrap_or_default();
            let list = gateway
                .call(Method::GET, &format!("/api/v1/entities{query}"), None)
                .await?;
            let mut text = format!("{:<24} {:<40} {:>10}  UPDATED", "TYPE", "ID", "OPERATIONS");
            for item in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
                text.push_str(&format!(
                    "\n{:<24} {:<40} {:>10}  {}",
                    item["type"].as_str().unwrap_or_default(),
                    item["id"].as_str().unwrap_or_default(),
                    item["operations"].as_u64().unwrap_or_default(),
                    item["updatedAt"].as_str().unwrap_or_default(),
                ));
            }
            if list["continuationToken"].is_string() {
                text.push_str("\n(more: narrow with --type)");
            }
            (text, list)
        }
        EntitiesCommand::Show {
            entity_type,
            id,
            operations,
        } => {
            let view = gateway
                .call(
                    Method::GET,
                    &format!("{}?operations={operations}", path(&entity_type, &id)),
                    None,
                )
                .await?;
            (describe(&view), view)
        }
        EntitiesCommand::Signal {
            entity_type,
            id,
            operation,
            idempotency_key,
        } => {
            let operation: Value = serde_json::from_str(&operation)
                .map_err(|e| anyhow::anyhow!("the operation is not JSON: {e}"))?;
            let accepted = gateway
                .call_once(
                    Method::POST,
                    &format!("{}/operations", path(&entity_type, &id)),
                    Some(&operation),
                    idempotency_key.as_deref(),
                )
                .await?;
            (
                format!(
                    "sent {} to {entity_type}/{id}",
                    accepted["operationId"].as_str().unwrap_or_default()
                ),
                accepted,
            )
        }
        EntitiesCommand::Rm { entity_type, id } => {
            gateway
                .call(Method::DELETE, &path(&entity_type, &id), None)
                .await?;
            (
                format!("deleted {entity_type}/{id}"),
                json!({"type": entity_type, "id": id, "deleted": true}),
            )
        }
    };
    output.print(&text, &value);
    Ok(())
}

fn describe(view: &Value) -> String {
    let mut text = format!(
        "{}/{}: {} operations, updated {}\nstate: {}",
        view["type"].as_str().unwrap_or_default(),
        view["id"].as_str().unwrap_or_default(),
        view["operations"].as_u64().unwrap_or_default(),
        view["updatedAt"].as_str().unwrap_or_default(),
        view["state"],
    );
    for op in view["recent"].as_array().map_or(&[][..], Vec::as_slice) {
        let outcome = match op.get("error").and_then(Value::as_str) {
            Some(error) => format!("failed: {error}"),
            None => format!("-> {}", op["answer"]),
        };
        text.push_str(&format!(
            "\n#{:<6} {} {} {} {outcome}",
            op["seq"].as_u64().unwrap_or_default(),
            op["at"].as_str().unwrap_or_default(),
            op["sender"].as_str().unwrap_or("-"),
            op["operation"],
        ));
    }
    text
}
