//! Keyless, as in Azure Container Apps: every service authenticates to
//! Service Bus, Table Storage and Azure SignalR with Microsoft Entra ID
//! tokens from its managed identity, with no key or connection secret in
//! its settings. The same binaries as everywhere else, switched by
//! settings alone, against stand-ins that check the tokens: the
//! Container Apps identity endpoint, the Service Bus stand-in trusting
//! Entra ID, Azurite in OAuth mode over HTTPS (started by `scripts/test`),
//! and an Azure SignalR data plane written below from Microsoft's REST
//! documentation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use legato_servicebus_standin::{Config, Identity, IdentityEndpoint, Rights, StandIn, TestIssuer};
use serde_json::{Value, json};
use support::{Legato, Service, echo_step, temp_dir};

const CLIENT_ID: &str = "legato-identity";
const OBJECT_ID: &str = "legato-app";
const SIGNALR_AUDIENCE: &str = "https://signalr.azure.com";

/// One call the SignalR stand-in accepted: method, path and query, body.
type Calls = Arc<Mutex<Vec<(Method, String, Value)>>>;

/// Azure SignalR Service's data plane in serverless mode, as legato uses
/// it, with local auth disabled: every request needs an Entra ID bearer
/// token for `https://signalr.azure.com` naming an identity that holds
/// SignalR REST API Owner. Group sends answer 202, memberships 200, and
/// `:generateToken` (api-version 2022-11-01) a client token for the user.
async fn signalr_with_entra(issuer: Arc<TestIssuer>) -> (String, Calls) {
    let calls: Calls = Arc::default();
    let record = calls.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (issuer, record) = (issuer.clone(), record.clone());
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                let claims = match token.map(|t| issuer.verify(t, SIGNALR_AUDIENCE)) {
                    Some(Ok(claims)) => claims,
                    Some(Err(why)) => return (StatusCode::UNAUTHORIZED, why).into_response(),
                    None => return StatusCode::UNAUTHORIZED.into_response(),
                };
                if claims["oid"] != OBJECT_ID {
                    return StatusCode::FORBIDDEN.into_response();
                }
                let path = uri.path().to_owned();
                let query: HashMap<String, String> = uri
                    .query()
                    .map(|q| {
                        url::form_urlencoded::parse(q.as_bytes())
                            .into_owned()
                            .collect()
                    })
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                record
                    .lock()
                    .unwrap()
                    .push((method.clone(), uri.to_string(), body.clone()));
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                match (method, parts.as_slice()) {
                    (Method::POST, ["api", "hubs", _, ":generateToken"]) => {
                        if query.get("api-version").map(String::as_str) != Some("2022-11-01") {
                            return StatusCode::BAD_REQUEST.into_response();
                        }
                        let user = query.get("userId").cloned().unwrap_or_default();
                        axum::Json(json!({"token": format!("client-token-for-{user}")}))
                            .into_response()
                    }
                    (Method::POST, ["api", "v1", "hubs", _, "groups", _])
                        if body["target"].is_string() && body["arguments"].is_array() =>
                    {
                        StatusCode::ACCEPTED.into_response()
                    }
                    (Method::PUT, ["api", "v1", "hubs", _, "groups", _, "connections", _]) => {
                        StatusCode::OK.into_response()
                    }
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_runs_on_managed_identity_tokens_alone() {
    let issuer = Arc::new(TestIssuer::new());
    let identity = IdentityEndpoint::start(
        issuer.clone(),
        Identity {
            secret: "platform-rotated-secret".into(),
            client_id: Some(CLIENT_ID.into()),
            object_id: OBJECT_ID.into(),
        },
    )
    .await
    .unwrap();
    let principals = HashMap::from([(OBJECT_ID.to_owned(), Rights::ALL)]);
    // No policy is usable: a namespace with local auth disabled.
    let servicebus = StandIn::start(Config::new("keyless-e2e").entra(issuer.entra(principals)))
        .await
        .unwrap();
    let (signalr, calls) = signalr_with_entra(issuer.clone()).await;
    let signalr_port = signalr.rsplit(':').next().unwrap();
    let tables = std::env::var("LEGATO_TEST_TABLES_OAUTH")
        .unwrap_or_else(|_| "https://127.0.0.1:10012/devstoreaccount1".to_owned());
    let unique = uuid::Uuid::new_v4().simple().to_string();

    let dir = temp_dir();
    let env: Vec<(String, String)> = [
        ("IDENTITY_ENDPOINT", identity.url()),
        ("IDENTITY_HEADER", "platform-rotated-secret".to_owned()),
        ("LEGATO__BUS__KIND", "servicebus".to_owned()),
        ("LEGATO__BUS__NAMESPACE", servicebus.host().to_owned()),
        ("LEGATO__BUS__CLIENT_ID", CLIENT_ID.to_owned()),
        ("LEGATO__BUS__ENDPOINT", servicebus.url()),
        ("LEGATO__BUS__PREFIX", format!("k{}-", &unique[..10])),
        ("LEGATO__STORE__KIND", "azure_table".to_owned()),
        ("LEGATO__STORE__ACCOUNT", "devstoreaccount1".to_owned()),
        ("LEGATO__STORE__ENDPOINT", tables),
        ("LEGATO__STORE__CLIENT_ID", CLIENT_ID.to_owned()),
        (
            "LEGATO__STORE__TABLE_PREFIX",
            format!("keyless{}", &unique[..10]),
        ),
        (
            "LEGATO__SIGNALR__CONNECTION_STRING",
            format!(
                "Endpoint=http://127.0.0.1;Port={signalr_port};AuthType=azure.msi;\
                 ClientId={CLIENT_ID};Version=1.0;"
            ),
        ),
        ("LEGATO__HTTP__PORT", "0".to_owned()),
        ("LEGATO__TELEMETRY__LOG", "warn".to_owned()),
        (
            "LEGATO_CONFIG_DIR",
            dir.path().join("no-config").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let _services: Vec<Service> = ["orchestrator", "notifier", "agent-echo"]
        .iter()
        .map(|name| Service::start(name, dir.path(), &env))
        .collect();
    let gateway = Service::start("gateway", dir.path(), &env);
    let legato = Legato::attach(gateway.base.clone(), dir.path());

    legato
        .register(json!({"name": "keyless", "version": 1,
            "steps": [echo_step("only", &[], json!({"value": "${{ input.x }}"}))],
            "output": "${{ steps.only.output.value }}"}))
        .await;
    let id = legato
        .start_instance("keyless", json!({"input": {"x": 7}}))
        .await;
    let status = legato.wait_status(&id, "Completed").await;
    assert_eq!(status["output"], json!(7));

    // Progress reached the instance's group in Azure SignalR.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = calls.lock().unwrap().iter().any(|(m, uri, body)| {
            *m == Method::POST
                && uri == &format!("/api/v1/hubs/progress/groups/{id}")
                && body.to_string().contains("instance_completed")
        });
        if sent {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress reached Azure SignalR: {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Negotiate hands out the client token the service generated.
    let negotiated = legato.negotiate("ana").await;
    assert_eq!(negotiated["accessToken"], "client-token-for-ana");
    assert_eq!(
        negotiated["url"],
        format!("{signalr}/client/?hub=progress").as_str()
    );

    // Every token came from the identity, for the three services' resources.
    let mut resources = identity.issued();
    resources.sort();
    resources.dedup();
    assert_eq!(
        resources,
        [
            "https://servicebus.azure.net",
            "https://signalr.azure.com",
            "https://storage.azure.com"
        ]
    );
}
