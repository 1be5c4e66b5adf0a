//! Push agents against a real `legato up`: an HTTPS-style endpoint this
//! test serves on loopback receives each task as a CloudEvent (binary
//! mode) signed per Standard Webhooks (checked here from the specification:
//! HMAC-SHA256 over `id.timestamp.body` with the secret's bytes), with the
//! agent's auth header, and answers in each way the protocol allows: `200`
//! with the output, `202` with a status URL polled to its result, `202`
//! that calls back later, a `4xx` that fails the step, a `503` with
//! `Retry-After` sent again. Registration refuses each address a push may
//! never reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Legato, echo_step, step_of, temp_dir};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Default)]
struct Endpoint {
    /// What each path was sent, in order.
    seen: Arc<Mutex<Vec<(String, HeaderMap, Value)>>>,
    /// Sends per path (for the flaky one and the status URL).
    count: Arc<Mutex<HashMap<String, u32>>>,
}

impl Endpoint {
    fn bump(&self, key: &str) -> u32 {
        let mut count = self.count.lock().unwrap();
        let n = count.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
}

/// The Standard Webhooks check a receiver makes.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {name}"))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let ts: i64 = timestamp.parse().map_err(|_| "timestamp")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - ts).abs() > 300 {
        return Err("timestamp too far off".into());
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signatures = header("webhook-signature")?;
    if signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    {
        Ok(())
    } else {
        Err(format!("bad signature {signatures}"))
    }
}

async fn receive(
    State(endpoint): State<Endpoint>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Err(why) = verify(&headers, &body) {
        return (AxumStatus::UNAUTHORIZED, why).into_response();
    }
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some("s3cret") {
        return (AxumStatus::UNAUTHORIZED, "no key").into_response();
    }
    let task: Value = serde_json::from_slice(&body).unwrap();
    endpoint
        .seen
        .lock()
        .unwrap()
        .push((kind.clone(), headers, task.clone()));
    let n = endpoint.bump(&kind);
    match kind.as_str() {
        "sync" => axum::Json(json!({"reviewed": task["input"], "attempt": task["attempt"]}))
            .into_response(),
        "async" => (
            AxumStatus::ACCEPTED,
            [("location", "/status/job-1"), ("retry-after", "0")],
        )
            .into_response(),
        "callback" => AxumStatus::ACCEPTED.into_response(),
        "refuse" => (AxumStatus::UNPROCESSABLE_ENTITY, "the draft is empty").into_response(),
        "flaky" if n == 1 => (
            AxumStatus::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        "flaky" => axum::Json(json!({"after": n})).into_response(),
        _ => AxumStatus::NOT_FOUND.into_response(),
    }
}

async fn status(
    State(endpoint): State<Endpoint>,
    Path(job): Path<String>,
) -> axum::response::Response {
    if endpoint.bump(&job) < 2 {
        return (AxumStatus::ACCEPTED, [("retry-after", "0")]).into_response();
    }
    axum::Json(json!({"job": job, "done": true})).into_response()
}

async fn serve_endpoint() -> (String, Endpoint) {
    let endpoint = Endpoint::default();
    let app = axum::Router::new()
        .route("/agent/{kind}", post(receive))
        .route("/status/{job}", get(status))
        .with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, endpoint)
}

fn start(dir: &std::path::Path) -> Legato {
    start_with(dir, &[])
}

fn start_with(dir: &std::path::Path, extra: &[(&str, &str)]) -> Legato {
    let config = dir.join("conf");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("legato.toml"),
        format!(
            "[gateway.push]\nallowed_hosts = [\"127.0.0.1\", \"127.0.0.2\", \"169.254.169.254\"]\n\
             allowed_audiences = [\"api://legato-test-agent\"]\nsigning_secret = \"{SECRET}\"\n\
             [gateway.push.secrets]\nagent_key = \"s3cret\"\n"
        ),
    )
    .unwrap();
    let mut env = vec![
        ("LEGATO_CONFIG_DIR", config.to_str().unwrap()),
        // Where a managed-identity token would be asked for: never a
        // push target, whatever the allow-list says.
        ("IDENTITY_ENDPOINT", "http://127.0.0.2:42356/msi/token"),
    ];
    env.extend_from_slice(extra);
    Legato::start_with_env(dir, &env)
}

fn workflow(name: &str, agent: &str) -> Value {
    json!({"name": name, "version": 1, "steps": [
        echo_step("draft", &[], json!({"value": "${{ input.text }}"})),
        {"id": "push", "needs": ["draft"], "agent": agent, "input": {"text": "${{ steps.draft.output.value }}"},
         "retry": {"max_attempts": 2, "initial_interval_ms": 50}},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_tasks_are_signed_cloudevents_and_every_answer_counts() {
    let dir = temp_dir();
    let legato = start(dir.path());
    let (base, endpoint) = serve_endpoint().await;

    // Each address a push may never reach is refused at registration.
    let auth = json!({"header": "x-api-key", "secret": "agent_key"});
    for (url, why) in [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("https://168.63.129.16/machine", "link-local"),
        (
            "http://127.0.0.2:42356/msi/token",
            "managed identity endpoint",
        ),
        (
            "https://elsewhere.example.com/agent",
            "not in gateway.push.allowed_hosts",
        ),
        ("http://example.com/agent", "must be https"),
    ] {
        let (status, problem) = legato
            .put("/api/v1/agents/nope", json!({"kind": "push", "url": url}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "/url", "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(why),
            "{url}: {problem}"
        );
    }
    let (status, problem) = legato
        .put(
            "/api/v1/agents/nope",
            json!({"kind": "push", "url": format!("{base}/agent/sync"), "auth": {"audience": "api://someone-else"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "/auth/audience");
    let (status, problem) = legato
        .put(
            "/api/v1/agents/nope",
            json!({"kind": "push", "url": format!("{base}/agent/sync"), "auth": {"header": "x-api-key", "secret": "unknown"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "/auth/secret");

    for kind in ["sync", "async", "callback", "refuse", "flaky"] {
        let agent = format!("push-{kind}");
        let (status, view) = legato
            .put(
                &format!("/api/v1/agents/{agent}"),
                json!({"kind": "push", "url": format!("{base}/agent/{kind}"), "auth": auth, "leaseMs": 5000, "concurrency": 4}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert_eq!(view["url"], format!("{base}/agent/{kind}"));
        legato.register(workflow(&agent, &agent)).await;
    }

    // 200 with JSON: the output; the request is a signed CloudEvent.
    let id = legato
        .start_instance("push-sync", json!({"input": {"text": "hello"}}))
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        step_of(&done, "push")["output"],
        json!({"reviewed": {"text": "hello"}, "attempt": 1})
    );
    let (_, headers, task) = endpoint.seen.lock().unwrap()[0].clone();
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-type"], "legato.task.dispatched.v1");
    assert_eq!(headers["ce-subject"], id.as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["webhook-id"], headers["idempotency-key"]);
    assert_eq!(
        headers["webhook-id"].to_str().unwrap(),
        task["idempotencyKey"].as_str().unwrap()
    );
    assert_eq!(task["agent"], "push-sync");
    assert_eq!(task["step"], "push");

    // 202 + Location: polled until its result.
    let id = legato
        .start_instance("push-async", json!({"input": {"text": "later"}}))
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        step_of(&done, "push")["output"],
        json!({"job": "job-1", "done": true})
    );

    // 202 without Location: the endpoint calls back, with the capability
    // the task carried and nothing else.
    let id = legato
        .start_instance("push-callback", json!({"input": {"text": "call me"}}))
        .await;
    let callback = loop {
        if let Some((_, _, task)) = endpoint
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|(kind, _, _)| kind == "callback")
        {
            break task["callbackUrl"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(callback.starts_with(&legato.base), "{callback}");
    let client = reqwest::Client::new();
    let forged = format!("{}x/complete", callback);
    let refused = client
        .post(&forged)
        .json(&json!({"output": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "a forged capability"
    );
    let beat = client
        .post(format!("{callback}/heartbeat"))
        .json(&json!({"message": "working on it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), StatusCode::OK);
    // What the endpoint's model writes reaches a stream watching the run.
    let stream = legato.open_stream(&id).await;
    let piece = client
        .post(format!("{callback}/output"))
        .json(&json!({"call": "chat 1", "seq": 1, "text": "calling back"}))
        .send()
        .await
        .unwrap();
    assert_eq!(piece.status(), StatusCode::ACCEPTED);
    let completed = client
        .post(format!("{callback}/complete"))
        .json(&json!({"output": {"called": "back"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), StatusCode::OK);
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(step_of(&done, "push")["output"], json!({"called": "back"}));
    let watched = tokio::time::timeout(std::time::Duration::from_secs(30), stream.text())
        .await
        .expect("the stream ends with the instance")
        .unwrap();
    assert!(
        watched.contains("event: output") && watched.contains("\"text\":\"calling back\""),
        "{watched}"
    );

    // A 4xx fails the step for good, with the body as the message.
    let id = legato
        .start_instance("push-refuse", json!({"input": {"text": ""}}))
        .await;
    let failed = legato.wait_status(&id, "Failed").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("the draft is empty")
            && failed["error"]
                .as_str()
                .unwrap()
                .contains("after 1 attempt"),
        "{failed:#}"
    );

    // A 503 with Retry-After is sent again, after it.
    let id = legato
        .start_instance("push-flaky", json!({"input": {"text": "again"}}))
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(step_of(&done, "push")["output"], json!({"after": 2}));
    assert_eq!(step_of(&done, "push")["attempts"], 1, "within the attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_agent_needs_the_admin_role() {
    let dir = temp_dir();
    let config = dir.path().join("conf");
    std::fs::create_dir_all(&config).unwrap();
    let legato = Legato::start_with_api_keys(
        dir.path(),
        &[support::ApiKey {
            id: "manager",
            key: "manager-key",
            tenant: None,
            roles: &["manage"],
        }],
    );
    let manager = legato.with_bearer("manager-key");
    let (status, problem) = manager
        .put(
            "/api/v1/agents/pushy",
            json!({"kind": "push", "url": "http://127.0.0.1:9/agent"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("admin"));
    let (status, _) = manager
        .put("/api/v1/agents/pully", json!({"kind": "pull"}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a pull agent needs manage only"
    );
}

/// A push endpoint behind Entra ID (an Azure Function, a Container App)
/// gets `Authorization: Bearer` with a token of legato's managed identity
/// for its audience: the identity endpoint is a stand-in written from
/// Microsoft's documentation, the token checked as the endpoint's platform
/// would (issuer's key, audience).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_agent_behind_entra_id_gets_a_managed_identity_token() {
    use legato_servicebus_standin::{Identity, IdentityEndpoint, TestIssuer};

    const AUDIENCE: &str = "api://legato-test-agent";
    /// What the endpoint made of each request's bearer token.
    type Verdicts = Arc<Mutex<Vec<Result<Value, String>>>>;
    let issuer = Arc::new(TestIssuer::new());
    let identity = IdentityEndpoint::start(
        issuer.clone(),
        Identity {
            secret: "platform-rotated-secret".into(),
            client_id: None,
            object_id: "legato-gateway".into(),
        },
    )
    .await
    .unwrap();
    let checked: Verdicts = Arc::default();
    let app = axum::Router::new()
        .route(
            "/agent",
            post(
                |State((issuer, checked)): State<(Arc<TestIssuer>, Verdicts)>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let verdict = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .ok_or_else(|| "no bearer token".to_owned())
                        .and_then(|token| issuer.verify(token, AUDIENCE));
                    let allowed = verdict.is_ok() && verify(&headers, &body).is_ok();
                    checked.lock().unwrap().push(verdict);
                    if allowed {
                        axum::Json(json!({"authenticated": true})).into_response()
                    } else {
                        AxumStatus::UNAUTHORIZED.into_response()
                    }
                },
            ),
        )
        .with_state((issuer.clone(), checked.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = temp_dir();
    let config = dir.path().join("conf");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("legato.toml"),
        format!(
            "[gateway.push]\nallowed_hosts = [\"127.0.0.1\"]\nallowed_audiences = [\"{AUDIENCE}\"]\n\
             signing_secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let legato = Legato::start_with_env(
        dir.path(),
        &[
            ("LEGATO_CONFIG_DIR", config.to_str().unwrap()),
            ("IDENTITY_ENDPOINT", identity.url().as_str()),
            ("IDENTITY_HEADER", "platform-rotated-secret"),
        ],
    );
    // The identity endpoint itself is never a push target.
    let (status, problem) = legato
        .put(
            "/api/v1/agents/thief",
            json!({"kind": "push", "url": identity.url()}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("managed identity")
    );

    let (status, view) = legato
        .put(
            "/api/v1/agents/entra-agent",
            json!({"kind": "push", "url": format!("{base}/agent"), "auth": {"audience": AUDIENCE}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    legato
        .register(workflow("entra-agent", "entra-agent"))
        .await;
    let id = legato
        .start_instance("entra-agent", json!({"input": {"text": "hi"}}))
        .await;
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        step_of(&done, "push")["output"],
        json!({"authenticated": true})
    );
    let verdicts = checked.lock().unwrap().clone();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0].as_ref().unwrap()["oid"], "legato-gateway");
    assert_eq!(identity.issued(), vec![AUDIENCE.to_owned()]);
}

/// A push endpoint reached through a link that stops answering (the fault
/// proxy hangs it): each delivery ends at `gateway.push.timeout_ms` instead
/// of waiting for ever, and is tried again under the task's lease; once the
/// link answers, the task completes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_endpoint_that_stops_answering_is_given_up_at_the_deadline_and_tried_again() {
    let dir = temp_dir();
    let legato = start_with(dir.path(), &[("LEGATO__GATEWAY__PUSH__TIMEOUT_MS", "500")]);
    let (base, endpoint) = serve_endpoint().await;
    let upstream = base.trim_start_matches("http://").parse().unwrap();
    let proxy = legato_fault_proxy::FaultProxy::start(upstream)
        .await
        .unwrap();
    let auth = json!({"header": "x-api-key", "secret": "agent_key"});
    let (status, view) = legato
        .put(
            "/api/v1/agents/push-hung",
            json!({"kind": "push", "url": format!("http://{}/agent/sync", proxy.addr()),
                   "auth": auth, "leaseMs": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    legato.register(workflow("push-hung", "push-hung")).await;
    proxy.set_link(legato_fault_proxy::Link::Hung);
    let id = legato
        .start_instance("push-hung", json!({"input": {"text": "through"}}))
        .await;
    // Deliveries go out and end at their deadline while the link hangs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while proxy.connections() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a hung delivery was never given up: {} connections",
            proxy.connections()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(legato.status(&id).await["runtimeStatus"], "Running");
    proxy.set_link(legato_fault_proxy::Link::Up);
    let done = legato.wait_status(&id, "Completed").await;
    assert_eq!(
        step_of(&done, "push")["output"]["reviewed"],
        json!({"text": "through"})
    );
    assert_eq!(
        endpoint.seen.lock().unwrap().len(),
        1,
        "the hung deliveries never reached it; the one that did counts"
    );
}
