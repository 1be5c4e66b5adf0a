#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! `contracts/workflow.schema.json` and the parser agree on the example
//! definitions, and the schema refuses what the parser refuses structurally.

use std::path::PathBuf;

use serde_json::{Value, json};

fn contracts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(contracts().join("workflow.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn example_and_shipped_definitions_satisfy_schema_and_parser() {
    let schema = schema();
    let dirs = [
        contracts().join("examples/workflows"),
        contracts().join("../workflows"),
        contracts().join("../workflows/patterns"),
    ];
    let mut seen = 0;
    let files = dirs
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        // Entity types live beside the workflows (`*.entity.yaml`).
        .filter(|path| !path.to_string_lossy().contains(".entity."));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
        let errors: Vec<String> = schema
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        let workflow =
            legato_workflow::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // What the parser accepted serialises back into a valid document.
        assert!(
            schema.is_valid(&serde_json::to_value(&workflow).unwrap()),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 9, "expected the example definitions in {dirs:?}");
}

#[test]
fn schema_refuses_structural_mistakes_the_parser_refuses() {
    let schema = schema();
    let cases = [
        json!({"name": "x", "version": 1, "steps": [{"id": "a", "teleport": {}}]}),
        json!({"name": "x", "version": 1, "steps": [{"id": "a", "agent": "echo", "timer": {"delay_ms": 1}}]}),
        json!({"name": "x", "version": 1, "steps": [{"id": "a-b", "agent": "echo"}]}),
        json!({"name": "x", "version": 0, "steps": [{"id": "a", "agent": "echo"}]}),
        json!({"name": "x", "version": 1, "steps": []}),
        json!({"name": "x", "version": 1, "steps": [{"id": "a", "agent": "echo", "retry": {"backoff": 0.5}}]}),
    ];
    for case in cases {
        assert!(!schema.is_valid(&case), "schema accepted {case}");
        assert!(
            legato_workflow::from_value(case.clone()).is_err(),
            "parser accepted {case}"
        );
    }
}
