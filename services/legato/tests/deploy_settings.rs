//! Configuration parity for the Azure deployment: the environment
//! `infra/resources.bicep` gives each container app is accepted by that
//! service (`legato check <service>`, the same loading and checks as
//! `legato run`, without connecting), selects the cloud adapters (Service
//! Bus, Table Storage, Azure SignalR), and is the list `docs/deploy.md`
//! documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One service of the deployment: its name, port and own variables.
struct App {
    name: String,
    port: u16,
    env: Vec<(String, String)>,
}

/// What the Bicep passes: the variables every app gets and the apps.
struct Deployment {
    common: Vec<(String, String)>,
    apps: Vec<App>,
    /// Variables set per app from the app's own fields (its port).
    per_app: Vec<String>,
}

/// A value a Bicep expression stands for at deployment time, shaped as
/// Azure would produce it.
fn sample(expression: &str) -> String {
    match expression {
        "servicebus.outputs.host" => "sb-legato-abc123.servicebus.windows.net".into(),
        "clientId" => "2f0c3d8e-6a55-4c8e-9d1e-0123456789ab".into(),
        "storage.outputs.name" => "stlegatoabc123".into(),
        "signalr.outputs.endpoint" => "https://sigr-legato-abc123.service.signalr.net".into(),
        "appSuffix" => "abc123def4".into(),
        "authTenantId" => "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        "authAudience" => "api://legato-gateway".into(),
        "environment.outputs.defaultDomain" => {
            "happy-river-1a2b3c4d.westeurope.azurecontainerapps.io".into()
        }
        other => panic!("no sample for the Bicep expression {other:?}: add one"),
    }
}

/// A Bicep value: a string literal (with `${…}` interpolations sampled),
/// or an expression.
fn resolve(value: &str) -> String {
    let value = value.trim();
    let Some(literal) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
        return sample(value);
    };
    let mut out = String::new();
    let mut rest = literal;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&sample(&rest[start + 2..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Reads `name: 'LEGATO__…'` / `value: …` pairs out of resources.bicep,
/// by the block they are in (`var common`, an entry of `var services`,
/// or the app module).
fn deployment() -> Deployment {
    let text = std::fs::read_to_string(repo().join("infra/resources.bicep")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut deployment = Deployment {
        common: Vec::new(),
        apps: Vec::new(),
        per_app: Vec::new(),
    };
    let mut block = "";
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("var common = [") {
            block = "common";
        } else if line.starts_with("var services = [") {
            block = "services";
        } else if line.starts_with("module apps ") {
            block = "apps";
        } else if line.starts_with(']') || line.starts_with("}]") {
            block = "";
        }
        let trimmed = line.trim();
        if block == "services" && line.starts_with("    name: '") {
            let name = trimmed.trim_start_matches("name: '").trim_end_matches('\'');
            deployment.apps.push(App {
                name: name.to_owned(),
                port: 0,
                env: Vec::new(),
            });
        }
        if block == "services" && line.starts_with("    port: ") {
            deployment.apps.last_mut().unwrap().port =
                trimmed.trim_start_matches("port: ").parse().unwrap();
        }
        let Some(name) = trimmed
            .strip_prefix("name: '")
            .and_then(|n| n.strip_suffix('\''))
            .filter(|n| n.starts_with("LEGATO__"))
        else {
            continue;
        };
        let value = lines[i + 1].trim().strip_prefix("value: ").unwrap();
        match block {
            "common" => deployment.common.push((name.to_owned(), resolve(value))),
            "services" => {
                let app = deployment.apps.last_mut().unwrap();
                app.env.push((name.to_owned(), resolve(value)));
            }
            "apps" => {
                assert_eq!(
                    value, "string(svc.port)",
                    "{name}: only the port is per app"
                );
                deployment.per_app.push(name.to_owned());
            }
            other => panic!("{name} set outside a known block ({other:?})"),
        }
    }
    deployment
}

#[test]
fn every_app_accepts_its_environment_and_runs_on_the_cloud_adapters() {
    let deployment = deployment();
    let names: Vec<&str> = deployment.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gateway",
            "orchestrator",
            "notifier",
            "agent-echo",
            "agent-planner",
            "agent-coder",
            "agent-data",
            "agent-approval"
        ]
    );
    assert_eq!(deployment.per_app, ["LEGATO__HTTP__PORT"]);
    let empty = tempfile::tempdir().unwrap();
    for app in &deployment.apps {
        let mut command = Command::new(env!("CARGO_BIN_EXE_legato"));
        command
            .args(["check", &app.name])
            // Only what Container Apps gives the container.
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LEGATO_CONFIG_DIR", empty.path())
            .env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")
            .env("IDENTITY_HEADER", "rotated-by-the-platform")
            .env("LEGATO__HTTP__PORT", app.port.to_string())
            .envs(deployment.common.iter().cloned())
            .envs(app.env.iter().cloned());
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} refuses the deployment's settings: {}",
            app.name,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("bus servicebus"), "{stdout}");
        if !app.name.starts_with("agent-") {
            assert!(stdout.contains("store azure_table"), "{stdout}");
        }
        if app.name == "gateway" || app.name == "notifier" {
            assert!(stdout.contains("signalr azure"), "{stdout}");
        }
    }
}

#[test]
fn docs_deploy_lists_exactly_the_variables_the_bicep_passes() {
    let deployment = deployment();
    let passed: BTreeSet<String> = deployment
        .common
        .iter()
        .map(|(k, _)| k.clone())
        .chain(deployment.per_app.iter().cloned())
        .chain(
            deployment
                .apps
                .iter()
                .flat_map(|a| a.env.iter().map(|(k, _)| k.clone())),
        )
        .collect();
    let doc = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `LEGATO__"))
        .map(|l| format!("LEGATO__{}", l.split('`').next().unwrap()))
        .collect();
    assert_eq!(passed, documented);
}

/// A setting the services do not know is refused, not ignored, so the
/// first test would catch a misspelt variable in the Bicep.
#[test]
fn a_misspelt_setting_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_legato"))
        .args(["check", "agent-echo"])
        .env_clear()
        .env("LEGATO_CONFIG_DIR", "/nonexistent")
        .env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")
        .env("IDENTITY_HEADER", "x")
        .env("LEGATO__BUS__KIND", "servicebus")
        .env("LEGATO__BUS__NAMESPACE", "sb.servicebus.windows.net")
        .env("LEGATO__BUS__MANAGE_ENTITES", "false")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("manage_entites"));
}
