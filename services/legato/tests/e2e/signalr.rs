//! Real-time progress at the edges: the stock `@microsoft/signalr` client
//! against the local hub, and the Azure SignalR REST contract against a
//! local stand-in that checks what Microsoft documents (paths, bearer
//! JWTs signed with the access key, `aud`, `exp`, `nameid`, bodies).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support::{ApiKey, Legato, Service, client_for, services_env, temp_dir};

fn signalr_test_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

#[tokio::test]
async fn the_stock_signalr_client_sees_a_feature_request_live_in_order() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    run_stock_client(&legato, None).await;
}

/// The same with API keys: the client authenticates through the gateway's
/// negotiate, the hub's negotiate and the WebSocket with its
/// `accessTokenFactory`, as the dashboard does, and sees its tenant's
/// instance (by the id it chose).
#[tokio::test]
async fn the_stock_signalr_client_authenticates_with_an_api_key() {
    let dir = temp_dir();
    let key = "node-client-key";
    let legato = Legato::start_with_api_keys(
        dir.path(),
        &[ApiKey {
            id: "node",
            key,
            tenant: Some("acme"),
            roles: &["read", "start", "signal"],
        }],
    );
    run_stock_client(&legato, Some(key)).await;
}

#[tokio::test]
async fn the_stock_signalr_client_sees_an_agents_output_as_it_is_written() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let summary = run_node(&legato, "output.mjs", None).await;
    assert!(summary["pieces"].as_u64().unwrap() >= 1, "{summary}");
}

/// Runs tests/node/progress.mjs against `legato`, with an API key if given.
async fn run_stock_client(legato: &Legato, key: Option<&str>) {
    let summary = run_node(legato, "progress.mjs", key).await;
    assert!(summary["events"].as_u64().unwrap() >= 15, "{summary}");
}

/// Runs a script of tests/node against `legato` and answers the summary it
/// prints last.
async fn run_node(legato: &Legato, name: &str, key: Option<&str>) -> Value {
    let script = signalr_test_dir();
    assert!(
        script.join("node_modules/@microsoft/signalr").is_dir(),
        "@microsoft/signalr is not installed: run `npm ci` in tests/node (./scripts/test does)"
    );
    let run = tokio::process::Command::new("node")
        .arg(name)
        .arg(&legato.base)
        .args(key)
        .current_dir(&script)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the node client finished within 90 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node client failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

/// How the stand-in answers besides success: statuses queued for the next
/// requests (with `Retry-After` seconds), and the connections it knows.
#[derive(Default)]
struct Script {
    next: std::collections::VecDeque<(StatusCode, Option<u64>)>,
    connections: Vec<String>,
    /// Statuses queued for the next requests to one path.
    failing:
        std::collections::HashMap<String, std::collections::VecDeque<(StatusCode, Option<u64>)>>,
    /// Every answer: when, to what, with which status, and the body.
    answered: Vec<(std::time::Instant, Method, String, StatusCode, Bytes)>,
}

type Scripted = Arc<Mutex<Script>>;

/// Azure SignalR's data plane (v1 REST) as far as legato uses it, and as
/// Azure answers when things go wrong: 401 for a token the access key did
/// not sign (or for another URL), 404 for adding a connection it does not
/// know, 413 for a body over 1 MB, and whatever the script queues (429 with
/// `Retry-After`, 5xx). Every request is recorded, answered or not.
async fn azure_stand_in() -> (String, Seen, Scripted) {
    let seen: Seen = Arc::default();
    let script: Scripted = Arc::new(Mutex::new(Script {
        connections: vec!["conn-7".into()],
        ..Script::default()
    }));
    let (record, scripted) = (seen.clone(), script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", addr.port());
    let base = endpoint.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (record, scripted, base) = (record.clone(), scripted.clone(), base.clone());
            async move {
                use axum::response::IntoResponse;
                record.lock().unwrap().push((
                    method.clone(),
                    uri.to_string(),
                    headers.clone(),
                    body.clone(),
                ));
                let (status, retry_after) =
                    answer(&scripted, &base, &method, &uri, &headers, &body);
                scripted.lock().unwrap().answered.push((
                    std::time::Instant::now(),
                    method,
                    uri.to_string(),
                    status,
                    body,
                ));
                let mut response = status.into_response();
                if let Some(seconds) = retry_after {
                    response.headers_mut().insert("retry-after", seconds.into());
                }
                response
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, seen, script)
}

/// The stand-in's answer to one request, and its `Retry-After`.
fn answer(
    script: &Scripted,
    base: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (StatusCode, Option<u64>) {
    let audience = format!("{base}{}", uri.path());
    let token_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| verified(t, &audience));
    if !token_ok {
        return (StatusCode::UNAUTHORIZED, None);
    }
    let mut script = script.lock().unwrap();
    if let Some(queued) = script.next.pop_front() {
        return queued;
    }
    if let Some(queued) = script
        .failing
        .get_mut(uri.path())
        .and_then(|q| q.pop_front())
    {
        return queued;
    }
    if body.len() > 1024 * 1024 {
        return (StatusCode::PAYLOAD_TOO_LARGE, None);
    }
    let path = uri.path();
    if *method == Method::PUT && path.contains("/connections/") {
        let connection = path.rsplit('/').next().unwrap_or_default();
        if !script.connections.iter().any(|c| c == connection) {
            return (StatusCode::NOT_FOUND, None);
        }
        return (StatusCode::OK, None);
    }
    match *method {
        Method::POST | Method::PUT => (StatusCode::ACCEPTED, None),
        _ => (StatusCode::OK, None),
    }
}

/// Whether `token` is HS256 with the access key, for `audience`, unexpired.
fn verified(token: &str, audience: &str) -> bool {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(ACCESS_KEY.as_bytes()),
        &validation,
    )
    .is_ok()
}

const ACCESS_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXN0YW5kLWlu";

/// Decodes a token the way the service does: HS256 with the access key,
/// `aud` exactly as expected, `exp` required and in the future.
fn claims(authorization: Option<&str>, audience: &str) -> Value {
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("Authorization: Bearer <jwt>");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(ACCESS_KEY.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("token for {audience}: {e}"))
    .claims
}

#[tokio::test]
async fn azure_mode_follows_the_signalr_rest_contract() {
    let (endpoint, seen, _script) = azure_stand_in().await;
    let port = endpoint.rsplit(':').next().unwrap().to_owned();
    let connection_string =
        format!("Endpoint=http://127.0.0.1;Port={port};AccessKey={ACCESS_KEY};Version=1.0;");
    let dir = temp_dir();
    let legato = Legato::start_with_env(
        dir.path(),
        &[("LEGATO__SIGNALR__CONNECTION_STRING", &connection_string)],
    );

    // Progress goes to the instance's group, in order, each call signed.
    let id = legato
        .start_instance(
            "fan-out-fan-in",
            json!({"input": {"value": 3}, "instanceId": "azure-1"}),
        )
        .await;
    legato.wait_status(&id, "Completed").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let sends = loop {
        let sends: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == Method::POST)
            .cloned()
            .collect();
        let done = sends
            .iter()
            .any(|r| String::from_utf8_lossy(&r.3).contains("instance_completed"));
        if done {
            break sends;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no instance_completed send reached the stand-in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let path = "/api/v1/hubs/progress/groups/azure-1";
    let mut last_seq = 0;
    for (_, uri, headers, body) in &sends {
        assert_eq!(uri, path);
        assert_eq!(headers["content-type"], "application/json");
        let c = claims(
            headers.get("authorization").and_then(|v| v.to_str().ok()),
            &format!("{endpoint}{path}"),
        );
        assert!(c["exp"].as_i64().unwrap() > time::OffsetDateTime::now_utc().unix_timestamp());
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["target"], "progress");
        let event = &body["arguments"][0];
        assert_eq!(event["instanceId"], "azure-1");
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq >= last_seq, "out of order: {seq} after {last_seq}");
        last_seq = seq;
    }
    assert!(sends.len() >= 10, "{} sends", sends.len());

    // An agent's output goes to the same group as it is written, target
    // `output`, in its place before the step's completion.
    legato
        .register(json!({
            "name": "azure-output", "version": 1,
            "steps": [{"id": "write", "agent": "echo",
                "input": {"value": 1, "output": ["Hel", "lo"]}}]
        }))
        .await;
    let id = legato
        .start_instance("azure-output", json!({"instanceId": "azure-2"}))
        .await;
    legato.wait_status(&id, "Completed").await;
    let group = "/api/v1/hubs/progress/groups/azure-2";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let sent = loop {
        let sent: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == Method::POST && r.1 == group)
            .map(|r| serde_json::from_slice(&r.3).unwrap())
            .collect();
        if sent
            .iter()
            .any(|b| b["arguments"][0]["kind"] == "instance_completed")
        {
            break sent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no instance_completed send for azure-2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text: String = sent
        .iter()
        .filter(|b| b["target"] == "output")
        .map(|b| {
            assert_eq!(b["arguments"][0]["call"], "echo", "{b}");
            b["arguments"][0]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "Hello", "{sent:?}");
    let last_piece = sent.iter().rposition(|b| b["target"] == "output");
    let completed = sent
        .iter()
        .position(|b| b["arguments"][0]["kind"] == "step_completed");
    assert!(last_piece < completed, "{sent:?}");

    // Negotiate redirects the stock client to the service with a client token.
    let negotiated = legato.negotiate("ana").await;
    let client_url = format!("{endpoint}/client/?hub=progress");
    assert_eq!(negotiated["url"], client_url.as_str());
    let c = claims(
        Some(&format!(
            "Bearer {}",
            negotiated["accessToken"].as_str().unwrap()
        )),
        &client_url,
    );
    assert_eq!(c["nameid"], "ana");

    // Watching an instance adds the connection to its group.
    let added = legato
        .client
        .post(legato.url("/api/v1/instances/azure-1/subscriptions"))
        .json(&json!({"connectionId": "conn-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), reqwest::StatusCode::NO_CONTENT);
    let put = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.0 == Method::PUT)
        .cloned()
        .expect("a PUT reached the stand-in");
    let put_path = "/api/v1/hubs/progress/groups/azure-1/connections/conn-7";
    assert_eq!(put.1, put_path);
    claims(
        put.2.get("authorization").and_then(|v| v.to_str().ok()),
        &format!("{endpoint}{put_path}"),
    );

    let unknown = legato
        .client
        .post(legato.url("/api/v1/instances/nobody/subscriptions"))
        .json(&json!({"userId": "ana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
}

fn azure_connection_string(endpoint: &str, key: &str) -> String {
    let port = endpoint.rsplit(':').next().unwrap();
    format!("Endpoint=http://127.0.0.1;Port={port};AccessKey={key};Version=1.0;")
}

/// Process-per-service settings (RabbitMQ, Azurite) relaying to the Azure
/// SignalR stand-in at `endpoint`, the gateway registering the catalogue.
fn azure_services_env(dir: &std::path::Path, endpoint: &str) -> Vec<(String, String)> {
    let mut env = services_env(dir);
    env.push((
        "LEGATO__SIGNALR__CONNECTION_STRING".into(),
        azure_connection_string(endpoint, ACCESS_KEY),
    ));
    let catalogue = concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows");
    env.push(("LEGATO__GATEWAY__WORKFLOWS_DIR".into(), catalogue.into()));
    env
}

async fn subscribe(legato: &Legato, id: &str, body: Value) -> reqwest::Response {
    legato
        .client
        .post(legato.url(&format!("/api/v1/instances/{id}/subscriptions")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Sends to Azure that fail for a moment (429 with `Retry-After`, 503) are
/// tried again, no sooner than asked, and every event still arrives in
/// order; subscribing maps Azure's answers (404, 429/5xx) for the caller,
/// and users join a group for the configured TTL.
#[tokio::test]
async fn azure_failures_are_retried_and_mapped_for_callers() {
    let (endpoint, seen, script) = azure_stand_in().await;
    let dir = temp_dir();
    let legato = Legato::start_with_env(
        dir.path(),
        &[
            (
                "LEGATO__SIGNALR__CONNECTION_STRING",
                &azure_connection_string(&endpoint, ACCESS_KEY),
            ),
            ("LEGATO__SIGNALR__MEMBERSHIP_TTL_S", "600"),
            ("LEGATO__SIGNALR__MEMBERSHIP_SWEEP_MS", "200"),
        ],
    );
    // The instance's first two sends fail, then Azure recovers.
    script.lock().unwrap().next.extend([
        (StatusCode::TOO_MANY_REQUESTS, Some(1)),
        (StatusCode::SERVICE_UNAVAILABLE, None),
    ]);
    let id = legato
        .start_instance(
            "fan-out-fan-in",
            json!({"input": {"value": 1}, "instanceId": "retried-1"}),
        )
        .await;
    legato.wait_status(&id, "Completed").await;
    let group = format!("/api/v1/hubs/progress/groups/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let answered: Vec<_> = script
            .lock()
            .unwrap()
            .answered
            .iter()
            .filter(|a| a.1 == Method::POST && a.2 == group)
            .cloned()
            .collect();
        let bodies: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == Method::POST && r.1 == group)
            .map(|r| serde_json::from_slice(&r.3).unwrap())
            .collect();
        if bodies
            .iter()
            .any(|b| b["arguments"][0]["kind"] == "instance_completed")
        {
            // Accepted sends are in order (by the causing event's seq);
            // the two refused sends were the first event, tried again.
            let accepted: Vec<u64> = answered
                .iter()
                .zip(&bodies)
                .filter(|(a, _)| a.3 == StatusCode::ACCEPTED)
                .map(|(_, b)| b["arguments"][0]["seq"].as_u64().unwrap())
                .collect();
            assert!(accepted.windows(2).all(|w| w[0] <= w[1]), "{accepted:?}");
            assert_eq!(answered.len(), accepted.len() + 2);
            assert_eq!(bodies[0], bodies[1]);
            assert_eq!(bodies[1], bodies[2]);
            break answered;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all events reached Azure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answered[0].3, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answered[1].3, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answered[1].0 - answered[0].0 >= Duration::from_secs(1),
        "retried {:?} after a Retry-After of 1 s",
        answered[1].0 - answered[0].0
    );

    // Subscribing: an unknown connection is the caller's 404.
    let unknown = subscribe(&legato, &id, json!({"connectionId": "nobody-knows-me"})).await;
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    // A user joins for the TTL.
    let user = subscribe(&legato, &id, json!({"userId": "ana"})).await;
    assert_eq!(user.status(), reqwest::StatusCode::NO_CONTENT);
    assert!(seen.lock().unwrap().iter().any(|r| r.0 == Method::PUT
        && r.1 == format!("/api/v1/hubs/progress/groups/{id}/users/ana?ttl=600")));
    // Azure busy: 503 with when to come back.
    script.lock().unwrap().failing.insert(
        format!("/api/v1/hubs/progress/groups/{id}/users/bo"),
        [(StatusCode::TOO_MANY_REQUESTS, Some(7))].into(),
    );
    let busy = subscribe(&legato, &id, json!({"userId": "bo"})).await;
    assert_eq!(busy.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers()["retry-after"], "7");
    // The instance has finished: the gateway takes back the membership it
    // gave (and only that one).
    let removal = format!("/api/v1/hubs/progress/groups/{id}/users/ana");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.0 == Method::DELETE && r.1 == removal)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "ana was never removed from the group"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deletes: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == Method::DELETE)
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(deletes, [removal]);
}

/// Each instance's sends have their own lane: one whose sends Azure keeps
/// refusing (429, `Retry-After: 2`) holds back nobody else's events.
#[tokio::test]
async fn one_instances_failing_sends_do_not_hold_back_another() {
    let (endpoint, _seen, script) = azure_stand_in().await;
    let dir = temp_dir();
    let legato = Legato::start_with_env(
        dir.path(),
        &[(
            "LEGATO__SIGNALR__CONNECTION_STRING",
            &azure_connection_string(&endpoint, ACCESS_KEY),
        )],
    );
    let slow_group = "/api/v1/hubs/progress/groups/slow-1";
    script.lock().unwrap().failing.insert(
        slow_group.into(),
        std::iter::repeat_n((StatusCode::TOO_MANY_REQUESTS, Some(2)), 3).collect(),
    );
    for id in ["slow-1", "fast-1"] {
        legato
            .start_instance(
                "fan-out-fan-in",
                json!({"input": {"value": 1}, "instanceId": id}),
            )
            .await;
    }
    let accepted_completion = |group: &str| {
        script
            .lock()
            .unwrap()
            .answered
            .iter()
            .find(|a| {
                a.2 == group
                    && a.3 == StatusCode::ACCEPTED
                    && String::from_utf8_lossy(&a.4).contains("instance_completed")
            })
            .map(|a| a.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (fast_done, slow_done) = loop {
        match (
            accepted_completion("/api/v1/hubs/progress/groups/fast-1"),
            accepted_completion(slow_group),
        ) {
            (Some(fast), Some(slow)) => break (fast, slow),
            _ => {
                assert!(std::time::Instant::now() < deadline, "events missing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let slow_first = script
        .lock()
        .unwrap()
        .answered
        .iter()
        .find(|a| a.2 == slow_group && a.3 == StatusCode::ACCEPTED)
        .map(|a| a.0)
        .unwrap();
    assert!(
        fast_done < slow_first,
        "fast-1 finished {:?} after slow-1's first accepted send",
        fast_done - slow_first
    );
    assert!(slow_done >= slow_first);
}

/// Three notifier replicas, each with its own feed of every event (for
/// its own clients), send each event to Azure once: only the holder of the
/// relay lease sends.
#[tokio::test]
async fn three_notifier_replicas_send_each_event_to_azure_once() {
    let (endpoint, seen, _script) = azure_stand_in().await;
    let dir = temp_dir();
    let env = azure_services_env(dir.path(), &endpoint);
    let _services: Vec<Service> = [
        "orchestrator",
        "agent-echo",
        "notifier",
        "notifier",
        "notifier",
    ]
    .iter()
    .map(|name| Service::start(name, dir.path(), &env))
    .collect();
    let gateway = Service::start("gateway", dir.path(), &env);
    let legato = client_for(&gateway, dir.path());
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            legato
                .start_instance(
                    "fan-out-fan-in",
                    json!({"input": {"value": i}, "instanceId": format!("once-{i}")}),
                )
                .await,
        );
    }
    for id in &ids {
        legato.wait_status(id, "Completed").await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let group = format!("/api/v1/hubs/progress/groups/{id}");
        loop {
            let bodies: Vec<Bytes> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.0 == Method::POST && r.1 == group)
                .map(|r| r.3.clone())
                .collect();
            if bodies
                .iter()
                .any(|b| String::from_utf8_lossy(b).contains("instance_completed"))
            {
                let mut distinct = bodies.clone();
                distinct.sort();
                distinct.dedup();
                assert_eq!(
                    distinct.len(),
                    bodies.len(),
                    "{id}: {} sends for {} events",
                    bodies.len(),
                    distinct.len()
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: not all events reached Azure"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The replica holding the relay lease dies (kill -9, no goodbye): another
/// takes over once the lease lapses and sends what was published meanwhile.
#[tokio::test]
async fn a_killed_relay_holder_is_replaced_and_nothing_is_lost() {
    let (endpoint, seen, _script) = azure_stand_in().await;
    let dir = temp_dir();
    let env = azure_services_env(dir.path(), &endpoint);
    let _services: Vec<Service> = ["orchestrator", "agent-echo"]
        .iter()
        .map(|name| Service::start(name, dir.path(), &env))
        .collect();
    let first = Service::start("notifier", dir.path(), &env);
    let gateway = Service::start("gateway", dir.path(), &env);
    let legato = client_for(&gateway, dir.path());
    let reached = |id: &str| {
        let group = format!("/api/v1/hubs/progress/groups/{id}");
        seen.lock().unwrap().iter().any(|r| {
            r.0 == Method::POST
                && r.1 == group
                && String::from_utf8_lossy(&r.3).contains("instance_completed")
        })
    };
    let until = |id: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while !reached(id) {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never reached Azure"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Alone, the first replica holds the lease.
    legato
        .start_instance(
            "fan-out-fan-in",
            json!({"input": {"value": 1}, "instanceId": "before"}),
        )
        .await;
    until("before").await;
    let _second = Service::start("notifier", dir.path(), &env);
    first.kill();
    legato
        .start_instance(
            "fan-out-fan-in",
            json!({"input": {"value": 2}, "instanceId": "after"}),
        )
        .await;
    legato.wait_status("after", "Completed").await;
    until("after").await;
}

/// Credentials Azure refuses are legato's fault, not the caller's: 500 on
/// subscribe, and sends are not retried against a 401.
#[tokio::test]
async fn azure_refusing_legatos_credentials_is_a_server_error_not_retried() {
    let (endpoint, seen, script) = azure_stand_in().await;
    let dir = temp_dir();
    let legato = Legato::start_with_env(
        dir.path(),
        &[(
            "LEGATO__SIGNALR__CONNECTION_STRING",
            &azure_connection_string(&endpoint, "bm90LXRoZS1zZXJ2aWNlcy1rZXk="),
        )],
    );
    let id = legato
        .start_instance("fan-out-fan-in", json!({"input": {"value": 1}}))
        .await;
    legato.wait_status(&id, "Completed").await;
    let refused = subscribe(&legato, &id, json!({"connectionId": "conn-7"})).await;
    assert_eq!(refused.status(), reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let script = script.lock().unwrap();
    let sends: Vec<_> = script
        .answered
        .iter()
        .filter(|a| a.1 == Method::POST)
        .collect();
    assert!(sends.iter().all(|a| a.3 == StatusCode::UNAUTHORIZED));
    assert!(!sends.is_empty(), "nothing was sent");
    drop(script);
    // Each event was tried once: no body repeats.
    let bodies: Vec<Bytes> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == Method::POST)
        .map(|r| r.3.clone())
        .collect();
    let mut distinct = bodies.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), bodies.len(), "a 401 was retried");
}

/// Browser apps on the configured origins may call negotiate, subscribe,
/// the stream and the hub; other origins get no CORS grant, and the rest
/// of the API none at all.
#[tokio::test]
async fn cors_admits_the_configured_origins_on_the_browser_routes_only() {
    let dir = temp_dir();
    let legato = Legato::start_with_env(
        dir.path(),
        &[(
            "LEGATO__SIGNALR__ALLOWED_ORIGINS",
            "https://app.example.com,https://admin.example.com",
        )],
    );
    let preflight = |path: &str, origin: &str| {
        legato
            .client
            .request(reqwest::Method::OPTIONS, legato.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-legato-user",
            )
            .send()
    };
    for path in [
        "/api/v1/negotiate",
        "/api/v1/instances/any/subscriptions",
        "/hubs/progress/negotiate",
    ] {
        for origin in ["https://app.example.com", "https://admin.example.com"] {
            let allowed = preflight(path, origin).await.unwrap();
            assert_eq!(
                allowed.headers()["access-control-allow-origin"],
                origin,
                "{path} from {origin}"
            );
            assert_eq!(
                allowed.headers()["access-control-allow-credentials"],
                "true"
            );
        }
        let other = preflight(path, "https://evil.example.net").await.unwrap();
        assert!(
            other.headers().get("access-control-allow-origin").is_none(),
            "{path} admitted another origin"
        );
    }
    let api = preflight("/api/v1/workflows/x/instances", "https://app.example.com")
        .await
        .unwrap();
    assert!(api.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn local_mode_negotiate_redirects_to_the_hub_and_subscriptions_point_there() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let negotiated: Value = legato
        .client
        .post(legato.url("/api/v1/negotiate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        negotiated["url"]
            .as_str()
            .unwrap()
            .ends_with("/hubs/progress"),
        "{negotiated}"
    );
    assert!(negotiated.get("accessToken").is_none());
    let hub: Value = legato
        .client
        .post(legato.url("/hubs/progress/negotiate?negotiateVersion=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hub["negotiateVersion"], 1);
    assert_eq!(hub["availableTransports"][0]["transport"], "WebSockets");
    assert!(hub["connectionToken"].is_string());
    let refused = legato
        .client
        .post(legato.url("/api/v1/instances/x/subscriptions"))
        .json(&json!({"connectionId": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
}

mod hub_protocol {
    use futures::SinkExt;
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message as Ws;

    use crate::support::hub::{RS, connect, invoke, next, open};
    use crate::support::{Legato, temp_dir};

    #[tokio::test]
    async fn the_hub_speaks_the_json_protocol_and_refuses_what_it_does_not() {
        let dir = temp_dir();
        let legato = Legato::start(dir.path());
        legato
            .register(crate::scenarios::approval_workflow(60_000))
            .await;

        // Only the JSON protocol, version 1.
        let mut socket = open(&legato, "").await.unwrap();
        socket
            .send(Ws::text(format!(
                "{{\"protocol\":\"messagepack\",\"version\":1}}{RS}"
            )))
            .await
            .unwrap();
        assert!(
            next(&mut socket).await["error"]
                .as_str()
                .unwrap()
                .contains("messagepack")
        );

        // An unknown connection token is refused before the upgrade.
        assert!(open(&legato, "?id=never-negotiated").await.is_err());

        // The handshake may share a frame with the first message.
        let mut socket = open(&legato, "").await.unwrap();
        socket
            .send(Ws::text(format!(
                "{{\"protocol\":\"json\",\"version\":1}}{RS}{{\"type\":6}}{RS}"
            )))
            .await
            .unwrap();
        assert_eq!(next(&mut socket).await, json!({}));

        let missing = invoke(&mut socket, "1", "Subscribe", json!(["nobody"])).await;
        assert!(
            missing["error"].as_str().unwrap().contains("not found"),
            "{missing}"
        );
        let unknown = invoke(&mut socket, "2", "Frobnicate", json!([])).await;
        assert!(
            unknown["error"]
                .as_str()
                .unwrap()
                .contains("Unknown hub method"),
            "{unknown}"
        );

        let id = legato.start_instance("approve", json!({})).await;
        legato.wait_step(&id, "approve", "Waiting").await;
        let subscribed = invoke(&mut socket, "3", "subscribe", json!([id])).await;
        assert_eq!(
            subscribed["result"]["runtimeStatus"], "Running",
            "{subscribed}"
        );
        // Then the buffered events, as `progress` invocations.
        let first = next(&mut socket).await;
        assert_eq!(first["type"], 1);
        assert_eq!(first["target"], "progress");
        assert_eq!(first["arguments"][0]["kind"], "instance_started");
        assert_eq!(first["arguments"][0]["instanceId"], id.as_str());

        let unsubscribed = invoke(&mut socket, "4", "Unsubscribe", json!([id])).await;
        assert_eq!(unsubscribed["result"], Value::Null);
        assert!(unsubscribed.get("error").is_none());

        // Binary frames (MessagePack) are refused with a close message.
        socket.send(Ws::binary(vec![1, 2, 3])).await.unwrap();
        let close = next(&mut socket).await;
        assert_eq!(close["type"], 7, "{close}");
        assert!(close["error"].as_str().unwrap().contains("binary"));
    }

    /// One connection watching several instances gets each one's events,
    /// and none of one it unsubscribed from.
    #[tokio::test]
    async fn one_connection_follows_several_instances_and_stops_following_one() {
        let dir = temp_dir();
        let legato = Legato::start(dir.path());
        legato
            .register(crate::scenarios::approval_workflow(60_000))
            .await;
        let mut socket = connect(&legato, "").await;
        let mut waiting = Vec::new();
        for n in 0..3 {
            let id = legato.start_instance("approve", json!({})).await;
            let status = legato.wait_step(&id, "approve", "Waiting").await;
            // From where it is now: no replay, only what follows.
            let at = status["position"].clone();
            let subscribed =
                invoke(&mut socket, &n.to_string(), "Subscribe", json!([id, at])).await;
            assert!(subscribed.get("error").is_none(), "{subscribed}");
            waiting.push(id);
        }
        let [first, second, third] = &waiting[..] else {
            unreachable!()
        };
        let approve = |id: &str| format!("/api/v1/instances/{id}/events/approval");
        legato
            .post(&approve(second), json!({"approved": true}))
            .await;
        loop {
            let record = next(&mut socket).await;
            assert_eq!(record["target"], "progress", "{record}");
            assert_eq!(
                record["arguments"][0]["instanceId"],
                second.as_str(),
                "{record}"
            );
            if record["arguments"][0]["kind"] == "instance_completed" {
                break;
            }
        }
        let unsubscribed = invoke(&mut socket, "u", "Unsubscribe", json!([first])).await;
        assert!(unsubscribed.get("error").is_none(), "{unsubscribed}");
        // The first moves on unwatched; had its events still come, they
        // would arrive before the third's.
        legato
            .post(&approve(first), json!({"approved": true}))
            .await;
        legato.wait_status(first, "Completed").await;
        legato
            .post(&approve(third), json!({"approved": true}))
            .await;
        let record = next(&mut socket).await;
        assert_eq!(
            record["arguments"][0]["instanceId"],
            third.as_str(),
            "{record}"
        );
    }
}
