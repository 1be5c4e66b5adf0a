//! Secrets stay out of the logs: a `legato up` run at debug level that
//! uses an API key, an Azure SignalR access key, a Table Storage account
//! key and a chat model API key (reaching a model that is not there), with
//! requests that succeed and fail, logs none of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::temp_dir;

const API_KEY: &str = "lk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const SIGNALR_KEY: &str = "c2lnbmFsci1rZXktdGhhdC1tdXN0LW5vdC1sZWFr";
const LLM_KEY: &str = "sk-proj-secret-model-key-0123456789abcdef";
/// Azurite's published account key, standing in for a real one.
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[tokio::test]
async fn a_run_that_uses_every_secret_logs_none_of_them() {
    // Azure SignalR that accepts everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let signalr_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::ACCEPTED });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = temp_dir();
    let config = dir.path().join("conf");
    std::fs::create_dir_all(&config).unwrap();
    let hash = support::sha256_hex(API_KEY);
    let prefix = format!(
        "secrets{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    std::fs::write(
        config.join("legato.toml"),
        format!(
            "[gateway.auth]\nmode = \"api_key\"\n[[gateway.auth.api_keys]]\nid = \"ops\"\n\
             sha256 = \"{hash}\"\nroles = [\"admin\"]\n\
             [store]\nkind = \"azure_table\"\ntable_prefix = \"{prefix}\"\n\
             connection_string = \"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
             AccountKey={ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("legato.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_legato"))
        .args(["up", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .arg("--workflows")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows"))
        .env("LEGATO_CONFIG_DIR", &config)
        .env("LEGATO__TELEMETRY__LOG", "debug")
        .env(
            "LEGATO__SIGNALR__CONNECTION_STRING",
            format!(
                "Endpoint=http://127.0.0.1;Port={signalr_port};AccessKey={SIGNALR_KEY};Version=1.0;"
            ),
        )
        .env("LEGATO__LLM__ENDPOINT", "http://127.0.0.1:9/v1")
        .env("LEGATO__LLM__API_KEY", LLM_KEY)
        .env("LEGATO__LLM__TIMEOUT_MS", "2000")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text
            .lines()
            .find_map(|l| l.split("legato up: listening on ").nth(1))
        {
            break url.split_whitespace().next().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "legato up did not start:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let client = reqwest::Client::new();
    let start = |workflow: &str, input: Value| {
        client
            .post(format!("{base}/api/v1/workflows/{workflow}/instances"))
            .bearer_auth(API_KEY)
            .json(&json!({ "input": input }))
            .send()
    };
    let fanned: Value = start("fan-out-fan-in", json!({"value": 2}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The planner asks the (absent) model, with the key, and fails.
    let planned: Value = start(
        "feature-request",
        json!({"request": "add CSV export to billing"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refused = client
        .get(format!("{base}/api/v1/instances"))
        .bearer_auth(format!("{API_KEY}-wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    // An authenticated caller subscribes itself (the key's id), not others.
    let subscribe = |user: &'static str| {
        client
            .post(format!(
                "{base}/api/v1/instances/{}/subscriptions",
                fanned["id"].as_str().unwrap()
            ))
            .bearer_auth(API_KEY)
            .json(&json!({ "userId": user }))
            .send()
    };
    let subscribed = subscribe("ops").await.unwrap();
    assert_eq!(subscribed.status(), reqwest::StatusCode::NO_CONTENT);
    let someone_else = subscribe("ana").await.unwrap();
    assert_eq!(someone_else.status(), reqwest::StatusCode::BAD_REQUEST);
    // Until the planner has tried the model (it fails or retries).
    let planned = format!(
        "{base}/api/v1/instances/{}",
        planned["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = client
            .get(&planned)
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tried = status["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["attempts"].as_u64().unwrap_or(0) >= 1 && s["status"] != "Running");
        if tried || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let logs = format!(
        "{}\n{}",
        std::fs::read_to_string(&log).unwrap(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        logs.lines().count() > 20,
        "too little logged to mean anything:\n{logs}"
    );
    for (what, secret) in [
        ("the API key", API_KEY),
        ("the Azure SignalR access key", SIGNALR_KEY),
        ("the model API key", LLM_KEY),
        ("the storage account key", ACCOUNT_KEY),
        // Signed requests are credentials too, for their lifetime.
        ("a shared key signature", "SharedKey devstoreaccount1:"),
        ("a bearer token", "Bearer ey"),
    ] {
        assert!(!logs.contains(secret), "{what} is in the logs");
    }
}

/// Settings printed with `{:?}` (as a careless log line would) show no key,
/// connection string or password.
#[test]
fn settings_debug_output_shows_no_secret() {
    use legato_service::{BusSettings, StoreSettings};
    let mut config = legato::LegatoConfig {
        store: Some(StoreSettings::AzureTable {
            connection_string: Some(format!("AccountName=a;AccountKey={ACCOUNT_KEY}")),
            account: None,
            access_key: Some(ACCOUNT_KEY.into()),
            endpoint: None,
            client_id: None,
            table_prefix: "legato".into(),
            request_timeout_ms: 10_000,
        }),
        bus: BusSettings::Rabbitmq {
            url: "amqp://legato:rabbit-password-123@broker:5672/%2f".into(),
            prefix: "legato.".into(),
            queue_expiry_ms: 0,
            timeout_ms: 15_000,
        },
        ..legato::LegatoConfig::default()
    };
    config.signalr.connection_string =
        format!("Endpoint=https://x.service.signalr.net;AccessKey={SIGNALR_KEY};Version=1.0;");
    config.llm.api_key = LLM_KEY.into();
    config.data.url = "postgres://reader:pg-password-456@db:5432/shop".into();
    let servicebus = BusSettings::Servicebus {
        connection_string: Some(format!(
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey={SIGNALR_KEY}"
        )),
        namespace: None,
        client_id: None,
        endpoint: None,
        prefix: String::new(),
        lock_duration_ms: 10_000,
        auto_delete_on_idle_ms: 0,
        manage_entities: true,
        request_timeout_ms: 30_000,
    };
    let shown = format!("{config:?} {servicebus:?}");
    for secret in [
        ACCOUNT_KEY,
        "rabbit-password-123",
        SIGNALR_KEY,
        LLM_KEY,
        "pg-password-456",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    // What is not secret stays readable.
    assert!(
        shown.contains("x.service.signalr.net") && shown.contains("broker:5672"),
        "{shown}"
    );
}
