//! `legato topology --bus servicebus`: every Service Bus entity the
//! services use, from the same list they subscribe with
//! (`legato_bus::topology`), for infrastructure templates to be written
//! from or checked against, and for namespaces whose entities are created
//! ahead of time.

use legato_bus::{RuleFilter, ServiceBusEntities, ServiceBusOptions, topology};
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct TopologyOptions {
    /// The broker whose entities to print.
    #[arg(long, default_value = "servicebus")]
    pub bus: TopologyBus,
    /// The topic prefix the services are configured with (`bus.prefix`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// `text` for people, `json` for templates and tests.
    #[arg(long, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyBus {
    Servicebus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

fn rule_json(rule: &RuleFilter) -> Value {
    match rule {
        RuleFilter::Label(label) => {
            json!({"name": rule.rule_name(), "filterType": "CorrelationFilter", "correlationFilter": {"label": label}})
        }
        other => {
            json!({"name": other.rule_name(), "filterType": "SqlFilter", "sqlFilter": {"sqlExpression": other.sql()}})
        }
    }
}

/// The entities as JSON: what the Bicep templates must declare.
pub fn entities_json(prefix: &str) -> anyhow::Result<Value> {
    let options = ServiceBusOptions {
        prefix: prefix.to_owned(),
        ..ServiceBusOptions::default()
    };
    let agents: Vec<&str> = legato_agents::AgentKind::ALL
        .iter()
        .map(|k| k.name())
        .collect();
    let mut groups = topology::durable_groups(&agents);
    groups.extend(topology::ephemeral_groups(&agents));
    let plan = ServiceBusEntities::plan(&options, &groups)?;
    let subscriptions: Vec<Value> = plan
        .subscriptions
        .iter()
        .map(|s| {
            json!({
                "topic": s.topic,
                // An ephemeral subscription's name is made by its replica.
                "name": if s.ephemeral { &s.group } else { &s.name },
                "group": s.group,
                "createdBy": if s.ephemeral { "each replica, at start (AutoDeleteOnIdle)" } else { "infrastructure" },
                "lockDuration": format!("PT{}S", s.settings.lock_duration.as_secs()),
                "maxDeliveryCount": s.settings.max_delivery_count,
                "autoDeleteOnIdle": s.settings.auto_delete_on_idle.map(|d| format!("PT{}S", d.as_secs())),
                "deadLetteringOnMessageExpiration": true,
                "rules": s.rules.iter().map(rule_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "topics": plan.topics.iter().map(|t| json!({
            "name": t,
            "requiresDuplicateDetection": true,
            "duplicateDetectionHistoryTimeWindow": format!("PT{}S", plan.duplicate_window.as_secs()),
        })).collect::<Vec<_>>(),
        "subscriptions": subscriptions,
    }))
}

pub fn run(options: TopologyOptions) -> anyhow::Result<()> {
    let TopologyBus::Servicebus = options.bus;
    let entities = entities_json(&options.prefix)?;
    if options.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&entities)?);
        return Ok(());
    }
    println!("Service Bus entities (duplicate detection on every topic):");
    for topic in entities["topics"].as_array().into_iter().flatten() {
        println!("topic {}", topic["name"].as_str().unwrap_or_default());
        for sub in entities["subscriptions"].as_array().into_iter().flatten() {
            if sub["topic"] != topic["name"] {
                continue;
            }
            println!(
                "  subscription {}  lock {}, max deliveries {}, created by {}",
                sub["name"].as_str().unwrap_or_default(),
                sub["lockDuration"].as_str().unwrap_or_default(),
                sub["maxDeliveryCount"],
                sub["createdBy"].as_str().unwrap_or_default(),
            );
            for rule in sub["rules"].as_array().into_iter().flatten() {
                let filter = match rule["filterType"].as_str() {
                    Some("CorrelationFilter") => {
                        format!("Label = {}", rule["correlationFilter"]["label"])
                    }
                    _ => rule["sqlFilter"]["sqlExpression"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                };
                println!(
                    "    rule {}: {filter}",
                    rule["name"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
