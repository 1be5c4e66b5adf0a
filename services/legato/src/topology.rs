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
    /// `text` for people, `json` for tools and tests, `infra` for the
    /// Bicep templates (`infra/servicebus-entities.json`: flat lists of
    /// what infrastructure creates, which Bicep loops over).
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
    Infra,
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

/// What the templates create, flattened for Bicep resource loops (which
/// cannot nest): topics, the durable subscriptions and every rule of
/// them, and the topics replicas make their own subscriptions on (their
/// identity needs Manage there).
pub fn infra_json(prefix: &str) -> anyhow::Result<Value> {
    let entities = entities_json(prefix)?;
    let all = |key: &str| entities[key].as_array().cloned().unwrap_or_default();
    let (durable, ephemeral): (Vec<Value>, Vec<Value>) = all("subscriptions")
        .into_iter()
        .partition(|s| s["createdBy"] == "infrastructure");
    let subscriptions: Vec<Value> = durable
        .iter()
        .map(|s| {
            json!({"topic": s["topic"], "name": s["name"], "lockDuration": s["lockDuration"],
                "maxDeliveryCount": s["maxDeliveryCount"]})
        })
        .collect();
    let rules: Vec<Value> = durable
        .iter()
        .flat_map(|s| {
            let rules = s["rules"].as_array().cloned().unwrap_or_default();
            rules.into_iter().enumerate().map(|(i, r)| {
                // ARM gives every new subscription a `$Default` rule that
                // takes everything; declaring the first rule under that
                // name replaces it instead of adding to it.
                let name = if i == 0 {
                    json!("$Default")
                } else {
                    r["name"].clone()
                };
                let mut rule = json!({"topic": s["topic"], "subscription": s["name"],
                    "name": name, "codeName": r["name"], "filterType": r["filterType"]});
                for filter in ["correlationFilter", "sqlFilter"] {
                    if let Some(f) = r.get(filter) {
                        rule[filter] = f.clone();
                    }
                }
                rule
            })
        })
        .collect();
    let replica_topics: std::collections::BTreeSet<&str> = ephemeral
        .iter()
        .filter_map(|s| s["topic"].as_str())
        .collect();
    Ok(json!({
        "topics": all("topics"),
        "subscriptions": subscriptions,
        "rules": rules,
        "replicaSubscriptionTopics": replica_topics,
    }))
}

pub fn run(options: TopologyOptions) -> anyhow::Result<()> {
    let TopologyBus::Servicebus = options.bus;
    let entities = entities_json(&options.prefix)?;
    match options.output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&entities)?);
            return Ok(());
        }
        Output::Infra => {
            println!(
                "{}",
                serde_json::to_string_pretty(&infra_json(&options.prefix)?)?
            );
            return Ok(());
        }
        Output::Text => {}
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The templates declare what the code uses: `infra/servicebus-entities.json`
    /// is this command's output, regenerated whenever the topology changes.
    #[test]
    fn the_templates_entity_list_is_the_codes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/servicebus-entities.json"
        );
        let checked_in: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            checked_in,
            infra_json("").unwrap(),
            "infra/servicebus-entities.json is stale: run \
             `cargo run -p legato -- topology --output infra > infra/servicebus-entities.json`"
        );
    }

    #[test]
    fn every_rule_belongs_to_a_listed_subscription_of_a_listed_topic() {
        let infra = infra_json("").unwrap();
        let topics: Vec<&Value> = infra["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| &t["name"])
            .collect();
        let subscriptions = infra["subscriptions"].as_array().unwrap();
        for s in subscriptions {
            assert!(topics.contains(&&s["topic"]), "{s}");
        }
        for rule in infra["rules"].as_array().unwrap() {
            assert!(
                subscriptions
                    .iter()
                    .any(|s| s["topic"] == rule["topic"] && s["name"] == rule["subscription"]),
                "{rule}"
            );
        }
        // The templates replace each subscription's default rule (which
        // takes everything) with the code's: none may be left without one.
        for s in subscriptions {
            assert!(
                infra["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["topic"] == s["topic"] && r["subscription"] == s["name"]),
                "{s} has no rule"
            );
        }
    }
}
