//! Who may call the gateway: API keys and OpenID Connect JWTs checked
//! against a JWKS stand-in that serves real RS256 and ES256 keys, roles per
//! route, and a gateway that will not serve the network unauthenticated.
//! Each refusal is tried as an attacker would: expired, wrong audience,
//! wrong issuer, unknown key, `alg: none`, HS256 signed with the public
//! key, a tampered payload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ApiKey, Legato, temp_dir};

const ISSUER: &str = "https://login.example.test/tenant-a/v2.0";
const AUDIENCE: &str = "api://legato-gateway";

fn rsa(file: &str) -> EncodingKey {
    let der = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(file),
    )
    .unwrap();
    EncodingKey::from_rsa_der(&der)
}

fn ec() -> EncodingKey {
    let der =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt-ec-1.der"))
            .unwrap();
    EncodingKey::from_ec_der(&der)
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

/// An issuer's JWKS endpoint; keys can be added (rotation) while it runs.
async fn jwks(keys: Vec<Jwk>) -> (String, Arc<Mutex<Vec<Jwk>>>) {
    let served = Arc::new(Mutex::new(keys));
    let shared = served.clone();
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move {
                axum::Json(JwkSet {
                    keys: shared.lock().unwrap().clone(),
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, served)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(roles: &[&str]) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ana", "tid": "tenant-a",
        "roles": roles, "iat": now(), "nbf": now() - 5, "exp": now() + 600})
}

fn sign(claims: &Value, key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// `legato up` with `gateway.auth` from a config file.
fn start_with_auth(dir: &Path, auth_toml: &str) -> Legato {
    let config = dir.join("conf");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("legato.toml"), auth_toml).unwrap();
    Legato::start_with_env(dir, &[("LEGATO_CONFIG_DIR", config.to_str().unwrap())])
}

async fn call(legato: &Legato, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = legato
        .client
        .request(method.parse().unwrap(), legato.url(path))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == "POST" {
        // A start's body; events and control requests take any JSON.
        request = request.body(json!({"input": {"value": 1}}).to_string());
        if path.contains("/events/") {
            request = request.body(json!({"approved": true}).to_string());
        } else if path.ends_with("/terminate") {
            request = request.body("{}");
        }
    }
    request.send().await.unwrap()
}

async fn status_of(legato: &Legato, method: &str, path: &str, token: Option<&str>) -> StatusCode {
    call(legato, method, path, token).await.status()
}

#[tokio::test]
async fn jwt_mode_lets_in_only_valid_tokens_with_the_role() {
    let rsa1 = rsa("jwt-rsa-1.der");
    let (jwks_url, served) = jwks(vec![
        jwk(&rsa1, Algorithm::RS256, "rsa-1"),
        jwk(&ec(), Algorithm::ES256, "ec-1"),
    ])
    .await;
    let dir = temp_dir();
    let legato = start_with_auth(
        dir.path(),
        &format!(
            "[gateway.auth]\nmode = \"jwt\"\n[gateway.auth.jwt]\nissuer = \"{ISSUER}\"\n\
             audience = \"{AUDIENCE}\"\njwks_url = \"{jwks_url}\"\nleeway_s = 5\njwks_refresh_s = 1\n"
        ),
    );
    let list = "/api/v1/instances";
    let start = "/api/v1/workflows/fan-out-fan-in/instances";

    // Open: health and the API description.
    assert_eq!(
        status_of(&legato, "GET", "/healthz", None).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&legato, "GET", "/api/v1/openapi.json", None).await,
        StatusCode::OK
    );
    // No token: 401, a problem, and how to authenticate.
    let anonymous = call(&legato, "GET", list, None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );

    // A reader reads and may not start; ES256 works as RS256 does.
    let reader = sign(&claims(&["read"]), &rsa1, Algorithm::RS256, "rsa-1");
    assert_eq!(
        status_of(&legato, "GET", list, Some(&reader)).await,
        StatusCode::OK
    );
    let refused = call(&legato, "POST", start, Some(&reader)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("Start"),
        "{problem}"
    );
    let starter = sign(&claims(&["Legato.Start"]), &ec(), Algorithm::ES256, "ec-1");
    assert_eq!(
        status_of(&legato, "POST", start, Some(&starter)).await,
        StatusCode::ACCEPTED
    );

    // Every forgery and mistake is 401.
    let mut expired = claims(&["admin"]);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims(&["admin"]);
    wrong_audience["aud"] = json!("api://someone-else");
    let mut wrong_issuer = claims(&["admin"]);
    wrong_issuer["iss"] = json!("https://login.example.test/tenant-b/v2.0");
    let mut not_yet = claims(&["admin"]);
    not_yet["nbf"] = json!(now() + 3600);
    let header_none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let body_admin = URL_SAFE_NO_PAD.encode(claims(&["admin"]).to_string());
    let public = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt-rsa-1.pub.der"),
    )
    .unwrap();
    let valid = sign(&claims(&["read"]), &rsa1, Algorithm::RS256, "rsa-1");
    let parts: Vec<&str> = valid.split('.').collect();
    let forged = [
        ("expired", sign(&expired, &rsa1, Algorithm::RS256, "rsa-1")),
        (
            "wrong audience",
            sign(&wrong_audience, &rsa1, Algorithm::RS256, "rsa-1"),
        ),
        (
            "wrong issuer",
            sign(&wrong_issuer, &rsa1, Algorithm::RS256, "rsa-1"),
        ),
        (
            "not yet valid",
            sign(&not_yet, &rsa1, Algorithm::RS256, "rsa-1"),
        ),
        (
            "unknown key",
            sign(
                &claims(&["admin"]),
                &rsa("jwt-rsa-2.der"),
                Algorithm::RS256,
                "rsa-9",
            ),
        ),
        (
            "signed by another key under a known kid",
            sign(
                &claims(&["admin"]),
                &rsa("jwt-rsa-2.der"),
                Algorithm::RS256,
                "rsa-1",
            ),
        ),
        ("alg none", format!("{header_none}.{body_admin}.")),
        (
            "HS256 with the public key",
            sign(
                &claims(&["admin"]),
                &EncodingKey::from_secret(&public),
                Algorithm::HS256,
                "rsa-1",
            ),
        ),
        (
            "tampered payload",
            format!("{}.{body_admin}.{}", parts[0], parts[2]),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in &forged {
        assert_eq!(
            status_of(&legato, "GET", list, Some(token)).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }

    // A rotated-in key is accepted once the issuer publishes it.
    let rsa2 = rsa("jwt-rsa-2.der");
    let rotated = sign(&claims(&["read"]), &rsa2, Algorithm::RS256, "rsa-2");
    assert_eq!(
        status_of(&legato, "GET", list, Some(&rotated)).await,
        StatusCode::UNAUTHORIZED
    );
    served
        .lock()
        .unwrap()
        .push(jwk(&rsa2, Algorithm::RS256, "rsa-2"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        status_of(&legato, "GET", list, Some(&rotated)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn api_keys_carry_their_roles() {
    let dir = temp_dir();
    let key = |id, key, roles| ApiKey {
        id,
        key,
        tenant: None,
        roles,
    };
    let legato = Legato::start_with_api_keys(
        dir.path(),
        &[
            key("viewer", "viewer-key", &["read"]),
            key("ops", "ops-key", &["read", "start", "operate"]),
            key("owner", "owner-key", &["admin"]),
        ],
    );
    let start = "/api/v1/workflows/fan-out-fan-in/instances";
    assert_eq!(
        status_of(&legato, "GET", "/api/v1/instances", Some("wrong-key")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&legato, "GET", "/api/v1/instances", Some("viewer-key")).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&legato, "POST", start, Some("viewer-key")).await,
        StatusCode::FORBIDDEN
    );
    let started: Value = call(&legato, "POST", start, Some("ops-key"))
        .await
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap();
    let signal = format!("/api/v1/instances/{id}/events/approval");
    // Operating is not signalling, and signalling is not managing.
    assert_eq!(
        status_of(&legato, "POST", &signal, Some("ops-key")).await,
        StatusCode::FORBIDDEN
    );
    let register = legato
        .client
        .put(legato.url("/api/v1/workflows/mine"))
        .bearer_auth("ops-key")
        .json(&json!({"name": "mine", "version": 1, "steps": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), StatusCode::FORBIDDEN);
    // Allowed: sent (202), or refused only because the quick instance has
    // already finished (410), never for the role.
    let allowed = [StatusCode::ACCEPTED, StatusCode::GONE];
    let signalled = status_of(&legato, "POST", &signal, Some("owner-key")).await;
    assert!(allowed.contains(&signalled), "{signalled}");
    let terminated = status_of(
        &legato,
        "POST",
        &format!("/api/v1/instances/{id}/terminate"),
        Some("ops-key"),
    )
    .await;
    assert!(allowed.contains(&terminated), "{terminated}");
}

#[test]
fn an_unauthenticated_gateway_refuses_to_serve_the_network_unless_allowed() {
    let dir = temp_dir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_legato"))
        .args(["up", "--host", "0.0.0.0", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("LEGATO_CONFIG_DIR", dir.path().join("no-config"))
        .env("LEGATO__TELEMETRY__LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.auth.mode"), "{stderr}");
}
