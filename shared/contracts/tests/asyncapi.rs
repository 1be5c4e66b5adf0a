//! `contracts/asyncapi.yaml`, the bus's AsyncAPI 3 document, is generated
//! from the payload types this version knows (each on its topic) and
//! refers to `contracts/messages.schema.json` for every message's schema:
//! this test regenerates it and fails when the committed file differs
//! (`LEGATO_BLESS=1` rewrites it), and checks that every schema it names
//! exists. The test command also validates it with the AsyncAPI parser
//! (`tests/node/asyncapi.mjs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use legato_contracts::{Payload, Topic};
use serde_json::{Map, Value, json};

fn contracts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
}

/// Who sends and who receives on each topic.
fn parties(topic: Topic) -> (&'static str, &'static str, &'static str) {
    match topic {
        Topic::Commands => (
            "Start, raise-event, terminate, suspend, resume, restart and redrive requests for one instance, keyed by its id; and operations on durable entities, keyed by their sender.",
            "the gateway, the orchestrator's scheduler, and the orchestrator (entity operations of workflow steps)",
            "the orchestrator",
        ),
        Topic::AgentTasks => (
            "Task attempts for one agent (routing key: the agent's name) and cancellations (routing key `cancel.<instance>`, heard by every agent replica).",
            "the orchestrator",
            "the agents (built-in workers; the gateway for pull agents)",
        ),
        Topic::AgentResults => (
            "Task results and heartbeats (progress, leases), keyed by instance id.",
            "the agents (and the gateway for pull workers)",
            "the orchestrator",
        ),
        Topic::Progress => (
            "What watchers of an instance see, keyed by instance id; dropped when nobody listens: progress in position order, and the pieces of a model's output as an agent writes them (outside the positions, never recorded).",
            "the orchestrator (progress); the agents and the gateway (output pieces)",
            "the notifier",
        ),
    }
}

fn message_name(type_name: &str) -> String {
    // AsyncAPI component keys allow letters, digits, `.`, `_` and `-`.
    type_name.to_owned()
}

fn generate() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for topic in Topic::ALL {
        let (description, sender, receiver) = parties(topic);
        let mut channel_messages = Map::new();
        for (type_name, _) in Payload::TYPES_BY_TOPIC.iter().filter(|(_, t)| *t == topic) {
            let name = message_name(type_name);
            channel_messages.insert(
                name.clone(),
                json!({"$ref": format!("#/components/messages/{name}")}),
            );
            messages.insert(
                name.clone(),
                json!({
                    "name": type_name,
                    "title": type_name,
                    "contentType": "application/cloudevents+json",
                    "summary": format!("A CloudEvents 1.0 envelope of type {type_name} (structured mode); its schema is the envelope's, with `data` as this type's."),
                    "payload": {
                        "allOf": [
                            {"$ref": "messages.schema.json#/$defs/envelope"},
                            {
                                "type": "object",
                                "properties": {
                                    "type": {"const": type_name},
                                    "data": {"$ref": format!("messages.schema.json#/$defs/{type_name}")}
                                }
                            }
                        ]
                    }
                }),
            );
        }
        let channel = topic.as_str();
        channels.insert(
            channel.to_owned(),
            json!({
                "address": channel,
                "description": format!("{description} A RabbitMQ topic exchange, or a Service Bus topic."),
                "messages": channel_messages,
            }),
        );
        let refs: Vec<Value> = channels[channel]["messages"]
            .as_object()
            .unwrap()
            .keys()
            .map(|name| json!({"$ref": format!("#/channels/{channel}/messages/{name}")}))
            .collect();
        operations.insert(
            format!("send-{channel}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": format!("Sent by {sender}."),
                "messages": refs,
            }),
        );
        operations.insert(
            format!("receive-{channel}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": format!("Received by {receiver}, at least once: consumers are idempotent by message id and (instance, task, attempt)."),
                "messages": refs,
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "legato bus",
            "version": "1.0.0",
            "description": "The topics legato's services talk over (RabbitMQ locally, Azure Service Bus in the cloud). Generated by shared/contracts/tests/asyncapi.rs from the message types; the schemas are contracts/messages.schema.json's."
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages}
    })
}

#[test]
fn contracts_asyncapi_yaml_is_generated_from_the_message_types() {
    let path = contracts_dir().join("asyncapi.yaml");
    let generated = format!(
        "# Generated by shared/contracts/tests/asyncapi.rs (LEGATO_BLESS=1 cargo test -p legato-contracts --test asyncapi); do not edit.\n{}",
        serde_yaml_ng::to_string(&generate()).unwrap()
    );
    if std::env::var_os("LEGATO_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "contracts/asyncapi.yaml is out of date; run `LEGATO_BLESS=1 cargo test -p legato-contracts --test asyncapi` and commit it"
    );

    // Every schema it names is in messages.schema.json, and every type
    // has a message.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(contracts_dir().join("messages.schema.json")).unwrap(),
    )
    .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&committed).unwrap();
    let messages = doc["components"]["messages"].as_object().unwrap();
    assert_eq!(messages.len(), Payload::TYPES.len());
    for type_name in Payload::TYPES {
        let data_ref = &messages[*type_name]["payload"]["allOf"][1]["properties"]["data"]["$ref"];
        let def = data_ref
            .as_str()
            .unwrap()
            .trim_start_matches("messages.schema.json#/$defs/");
        assert!(
            schema["$defs"].get(def).is_some(),
            "{type_name}: no schema {def}"
        );
    }
}
