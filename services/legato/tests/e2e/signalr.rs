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

use crate::support::{Legato, temp_dir};

fn signalr_test_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

#[tokio::test]
async fn the_stock_signalr_client_sees_a_feature_request_live_in_order() {
    let dir = temp_dir();
    let legato = Legato::start(dir.path());
    let script = signalr_test_dir();
    assert!(
        script.join("node_modules/@microsoft/signalr").is_dir(),
        "@microsoft/signalr is not installed: run `npm ci` in tests/node (./scripts/test does)"
    );
    let run = tokio::process::Command::new("node")
        .arg("progress.mjs")
        .arg(&legato.base)
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
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert!(summary["events"].as_u64().unwrap() >= 15, "{summary}");
}

type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

/// Azure SignalR's data plane as far as legato uses it.
async fn azure_stand_in() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let status = if method == Method::POST {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                record
                    .lock()
                    .unwrap()
                    .push((method, uri.to_string(), headers, body));
                status
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{}", addr.port()), seen)
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
    let (endpoint, seen) = azure_stand_in().await;
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
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message as Ws;

    use crate::support::{Legato, temp_dir};

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    const RS: char = '\u{1e}';

    async fn open(
        legato: &Legato,
        query: &str,
    ) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
        let url = format!(
            "{}/hubs/progress{query}",
            legato.base.replace("http://", "ws://")
        );
        tokio_tungstenite::connect_async(url)
            .await
            .map(|(socket, _)| socket)
    }

    /// The next hub record that is not a ping.
    async fn next(socket: &mut Socket) -> Value {
        loop {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
                .await
                .expect("a frame within 10 s")
                .expect("the socket is open")
                .unwrap();
            let Ws::Text(text) = frame else {
                panic!("expected a text frame, got {frame:?}")
            };
            assert!(text.ends_with(RS), "every record ends with 0x1E: {text:?}");
            for record in text.split(RS).filter(|r| !r.is_empty()) {
                let value: Value = serde_json::from_str(record).unwrap();
                if value["type"] != 6 {
                    return value;
                }
            }
        }
    }

    async fn send(socket: &mut Socket, value: Value) {
        socket.send(Ws::text(format!("{value}{RS}"))).await.unwrap();
    }

    async fn invoke(socket: &mut Socket, id: &str, target: &str, arguments: Value) -> Value {
        send(
            socket,
            json!({"type": 1, "invocationId": id, "target": target, "arguments": arguments}),
        )
        .await;
        loop {
            let message = next(socket).await;
            if message["type"] == 3 && message["invocationId"] == id {
                return message;
            }
        }
    }

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
}
