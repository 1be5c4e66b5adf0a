//! `legato entity-types …`: entity types (a state schema and custom
//! operations), registered like workflows.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Gateway, Output, segment};

#[derive(Debug, clap::Subcommand)]
pub enum EntityTypesCommand {
    /// List the entity types the caller's tenant sees.
    Ls,
    /// Show one type's document.
    Show { name: String },
    /// Register (or replace) the type a YAML or JSON file describes
    /// (`name`, `state_schema`, `operations`).
    Put { file: PathBuf },
    /// Remove a type (its entities keep their state).
    Rm { name: String },
}

pub async fn run(
    gateway: &Gateway,
    output: Output,
    command: EntityTypesCommand,
) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/entity-types/{}", segment(name));
    let (text, value) = match command {
        EntityTypesCommand::Ls => {
            let list = gateway
                .call(Method::GET, "/api/v1/entity-types", None)
                .await?;
            let mut text = format!(
                "{:<24} {:<7} {:<12}  DESCRIPTION",
                "NAME", "SHARED", "OPERATIONS"
            );
            for item in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
                let definition = &item["definition"];
                text.push_str(&format!(
                    "\n{:<24} {:<7} {:<12}  {}",
                    item["name"].as_str().unwrap_or_default(),
                    if item["shared"] == true { "yes" } else { "no" },
                    operations(definition).join(","),
                    definition["description"].as_str().unwrap_or_default(),
                ));
            }
            (text, list)
        }
        EntityTypesCommand::Show { name } => {
            let view = gateway.call(Method::GET, &path(&name), None).await?;
            (describe(&view), view)
        }
        EntityTypesCommand::Put { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let def = legato_workflow::EntityTypeDef::from_file_text(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let (name, document) = (def.name.to_string(), def.to_document());
            let view = gateway
                .call(Method::PUT, &path(&name), Some(&document))
                .await?;
            (format!("registered {}", describe(&view)), view)
        }
        EntityTypesCommand::Rm { name } => {
            gateway.call(Method::DELETE, &path(&name), None).await?;
            (
                format!("removed entity type {name}"),
                json!({"name": name, "removed": true}),
            )
        }
    };
    output.print(&text, &value);
    Ok(())
}

fn operations(definition: &Value) -> Vec<String> {
    definition["operations"]
        .as_object()
        .map(|ops| ops.keys().cloned().collect())
        .unwrap_or_default()
}

fn describe(view: &Value) -> String {
    let definition = &view["definition"];
    let mut text = format!(
        "entity type {}{}, updated {}",
        view["name"].as_str().unwrap_or_default(),
        if view["shared"] == true {
            " (shared)"
        } else {
            ""
        },
        view["updatedAt"].as_str().unwrap_or_default(),
    );
    if let Some(schema) = definition.get("state_schema") {
        text.push_str(&format!("\nstate_schema: {schema}"));
    }
    for (name, op) in definition["operations"].as_object().into_iter().flatten() {
        text.push_str(&format!(
            "\noperation {name}: workflow {}",
            op["workflow"].as_str().unwrap_or_default()
        ));
    }
    text
}
