#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The JSON Schemas in `contracts/` and the Rust types agree: every payload
//! type has a schema and a golden example; examples decode into the Rust
//! types and encode back unchanged; every Rust payload serialises into JSON
//! its schema accepts; and invalid data is refused by both.

use std::collections::BTreeSet;
use std::path::PathBuf;

use legato_contracts::*;
use serde_json::{Value, json};

fn contracts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
}

fn root_schema() -> Value {
    let text = std::fs::read_to_string(contracts_dir().join("messages.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The root document with its `$ref` pointed at one definition, so the
/// `$defs` stay resolvable.
fn schema_for(def: &str) -> jsonschema::Validator {
    let mut schema = root_schema();
    assert!(
        schema["$defs"].get(def).is_some(),
        "contracts/messages.schema.json has no $defs/{def}"
    );
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:#?}\n{value:#}"
    );
}

fn key() -> TaskKey {
    TaskKey {
        run: 9_007_199_254_740_991,
        execution: 1,
        step: StepId::parse("work").unwrap(),
        item: Some(3),
        iteration: None,
        role: TaskRole::Action,
    }
}

/// One value of every payload type, as the Rust code produces them.
fn samples() -> Vec<Payload> {
    let at = time::macros::datetime!(2026-11-26 12:00 UTC);
    vec![
        StartInstance {
            workflow: WorkflowName::parse("feature-request").unwrap(),
            version: 3,
            input: json!({"request": "x"}),
            tenant: None,
            parent: None,
            budget: None,
            entity_operation: None,
        }
        .into(),
        StartInstance {
            workflow: WorkflowName::parse("acme~coder").unwrap(),
            version: 1,
            input: json!({"task": "x"}),
            tenant: Some("acme".into()),
            parent: Some(ParentLink {
                instance: InstanceId::parse("acme~order-42").unwrap(),
                key: key(),
                attempt: 2,
                depth: 1,
            }),
            budget: None,
            entity_operation: None,
        }
        .into(),
        StartInstance {
            workflow: WorkflowName::parse("summarize-customer").unwrap(),
            version: 1,
            input: json!({"entity": {"type": "customer", "id": "jane"}, "operation": "summarize", "input": null, "state": {"requests": []}}),
            tenant: None,
            parent: None,
            budget: None,
            entity_operation: Some(EntityLink {
                entity: EntityRef {
                    entity_type: EntityType::parse("customer").unwrap(),
                    id: EntityId::parse("jane").unwrap(),
                },
                operation: "i-1/e0/summarize".into(),
            }),
        }
        .into(),
        EntityOperation {
            entity: EntityRef {
                entity_type: EntityType::parse("customer").unwrap(),
                id: EntityId::parse("jane").unwrap(),
            },
            id: "i-1/e0/summarize".into(),
            operation: Operation::Custom(CustomOperation {
                name: "summarize".into(),
                input: json!({"words": 40}),
            }),
            caller: None,
        }
        .into(),
        EntityOperation {
            entity: EntityRef {
                entity_type: EntityType::parse("customer").unwrap(),
                id: EntityId::parse("jane").unwrap(),
            },
            id: "i-1/e0/summarize/complete".into(),
            operation: Operation::Complete {
                operation: "i-1/e0/summarize".into(),
                instance: InstanceId::parse("entity.customer.0f2a").unwrap(),
                outcome: CustomOutcome::Completed(json!({"state": {"summary": "csv"}, "answer": "csv"})),
            },
            caller: None,
        }
        .into(),
        RaiseEvent {
            name: EventName::parse("approval").unwrap(),
            data: json!(true),
        }
        .into(),
        TerminateInstance {
            reason: Some("stop".into()),
        }
        .into(),
        SuspendInstance::default().into(),
        ResumeInstance {
            reason: Some("go".into()),
            budget: None,
        }
        .into(),
        RestartInstance { input: None }.into(),
        RedriveInstance { version: Some(2) }.into(),
        TaskDispatched {
            key: key(),
            attempt: 2,
            agent: AgentName::parse("coder").unwrap(),
            workflow: WorkflowName::parse("feature-request").unwrap(),
            input: json!({"task": "t"}),
            deadline: Some(at),
            heartbeat_timeout_ms: Some(30_000),
            resent: false,
            answers: Default::default(),
        }
        .into(),
        legato_contracts::TaskAsked {
            key: key(),
            attempt: 1,
            name: legato_contracts::EventName::parse("scope").unwrap(),
            question: "Which accounts?".into(),
            schema: Some(json!({"type": "object"})),
            timeout_ms: Some(60_000),
        }
        .into(),
        legato_contracts::AgentOutput {
            key: key(),
            attempt: 1,
            call: "chat 1".into(),
            seq: 3,
            text: "The export covers".into(),
        }
        .into(),
        TaskCancelled {
            key: TaskKey {
                role: TaskRole::Compensation,
                item: None,
                ..key()
            },
            attempt: 1,
            reason: "terminated".into(),
        }
        .into(),
        TaskCompleted {
            key: key(),
            attempt: 1,
            output: json!([1, 2]),
            custom_status: None,
            usage: None,
        }
        .into(),
        TaskFailed {
            key: key(),
            attempt: 1,
            error: TaskError {
                message: "boom".into(),
                retryable: false,
            },
            usage: None,
        }
        .into(),
        EntityOperation {
            entity: EntityRef {
                entity_type: EntityType::parse("counter").unwrap(),
                id: EntityId::parse("repo:acme.billing").unwrap(),
            },
            id: "i-1/e0/count".into(),
            operation: Operation::Increment {
                path: "/coders".into(),
                by: Some(1.into()),
                min: None,
                max: Some(3.into()),
            },
            caller: Some(Caller {
                instance: InstanceId::parse("i-1").unwrap(),
                key: key(),
                attempt: 1,
                signal: true,
            }),
        }
        .into(),
        EntityOperation {
            entity: EntityRef {
                entity_type: EntityType::parse("repo").unwrap(),
                id: EntityId::parse("acme.billing").unwrap(),
            },
            id: "i-1/e0/edit[0]/release".into(),
            operation: Operation::Release {
                holder: Holder {
                    instance: InstanceId::parse("i-1").unwrap(),
                    key: key(),
                },
            },
            caller: None,
        }
        .into(),
        TaskHeartbeat {
            key: key(),
            attempt: 1,
            progress: Some(json!({"event": "approval"})),
            kind: Some(HeartbeatKind::ApprovalRequested),
            message: Some("approve?".into()),
            leased: true,
            lease_ms: None,
        }
        .into(),
        ProgressEvent {
            position: 12,
            seq: 3,
            kind: ProgressKind::ApprovalRequested,
            status: RuntimeStatus::Running,
            step: None,
            item: None,
            iteration: None,
            attempt: None,
            message: Some("approve?".into()),
            data: Some(json!({"event": "approval"})),
        }
        .into(),
        ProgressBatch {
            events: vec![
                ProgressEvent {
                    position: 13,
                    seq: 4,
                    kind: ProgressKind::StepCompleted,
                    status: RuntimeStatus::Running,
                    step: Some(StepId::parse("plan").unwrap()),
                    item: None,
                    iteration: None,
                    attempt: Some(1),
                    message: None,
                    data: Some(json!({"tasks": 2})),
                },
                ProgressEvent {
                    position: 14,
                    seq: 4,
                    kind: ProgressKind::InstanceCompleted,
                    status: RuntimeStatus::Completed,
                    step: None,
                    item: None,
                    iteration: None,
                    attempt: None,
                    message: None,
                    data: None,
                },
            ],
        }
        .into(),
    ]
}

#[test]
fn every_rust_payload_serialises_to_json_its_schema_accepts() {
    let envelope_schema = schema_for("envelope");
    let samples = samples();
    let covered: BTreeSet<&str> = samples.iter().map(Payload::type_name).collect();
    let all: BTreeSet<&str> = Payload::TYPES.iter().copied().collect();
    assert_eq!(covered, all, "add a sample for every payload type");
    for payload in samples {
        let type_name = payload.type_name();
        let envelope = Envelope::new(
            "/legato/test",
            InstanceId::parse("i-1").unwrap(),
            time::OffsetDateTime::UNIX_EPOCH,
            payload,
        );
        let json = envelope.to_json().unwrap();
        assert_valid(&schema_for(type_name), &json["data"], type_name);
        assert_valid(&envelope_schema, &json, &format!("{type_name} envelope"));
    }
}

#[test]
fn golden_examples_match_schema_and_round_trip() {
    let envelope_schema = schema_for("envelope");
    for type_name in Payload::TYPES {
        let path = contracts_dir().join(format!("examples/messages/{type_name}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let example: Value = serde_json::from_str(&text).unwrap();
        assert_valid(&envelope_schema, &example, &path.display().to_string());
        let decoded =
            Envelope::decode(text.as_bytes()).unwrap_or_else(|e| panic!("{type_name}: {e}"));
        assert_eq!(decoded.type_name(), *type_name);
        assert_eq!(
            decoded.to_json().unwrap(),
            example,
            "{type_name} does not encode back unchanged"
        );
    }
}

/// The messages each earlier release sent (its examples, frozen under
/// `contracts/golden/<release>/messages` when it was superseded) are read
/// by this one: a rolling upgrade has old producers beside new consumers.
#[test]
fn messages_of_earlier_releases_are_read() {
    let golden = contracts_dir().join("golden");
    let mut read = 0;
    for release in std::fs::read_dir(&golden).unwrap() {
        let messages = release.unwrap().path().join("messages");
        let Ok(files) = std::fs::read_dir(&messages) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let decoded = Envelope::decode(text.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_string_lossy();
            assert_eq!(decoded.type_name(), stem, "{}", path.display());
            read += 1;
        }
    }
    assert!(read > 0, "no golden messages under {}", golden.display());
}

#[test]
fn schema_and_decoder_both_refuse_bad_data() {
    let envelope_schema = schema_for("envelope");
    let text = std::fs::read_to_string(
        contracts_dir().join("examples/messages/legato.task.completed.v1.json"),
    )
    .unwrap();
    let good: Value = serde_json::from_str(&text).unwrap();
    let cases = [
        ("/data/attempt", json!(0), "attempt must be at least 1"),
        (
            "/data/key/step",
            json!("not-an-identifier"),
            "step ids are CEL identifiers",
        ),
        ("/data/surprise", json!(1), "unknown fields are refused"),
        (
            "/subject",
            json!("a/b"),
            "instance ids are partition-key safe",
        ),
    ];
    for (pointer, value, why) in cases {
        let mut bad = good.clone();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        bad.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()[field] = value;
        assert!(
            !envelope_schema.is_valid(&bad),
            "schema accepted bad data: {why}"
        );
        assert!(
            Envelope::from_json(bad).is_err(),
            "decoder accepted bad data: {why}"
        );
    }
}
