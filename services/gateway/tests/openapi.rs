//! The OpenAPI document in `contracts/` is the one the gateway serves, and
//! the router answers without a socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use legato_bus::InProcessBus;
use legato_gateway::{GatewaySettings, GatewayState, router};
use legato_service::auth::Authenticator;
use legato_store::SqliteStore;
use serde_json::Value;
use tower::ServiceExt;

fn contract_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contracts/openapi.json")
}

#[test]
fn contracts_openapi_json_is_the_served_document() {
    let generated =
        serde_json::to_string_pretty(&legato_gateway::openapi::document()).unwrap() + "\n";
    let path = contract_path();
    if std::env::var_os("LEGATO_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "contracts/openapi.json is out of date; run `LEGATO_BLESS=1 cargo test -p legato-gateway --test openapi` and commit it"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/v1/agents",
            "/api/v1/agents/{name}",
            "/api/v1/callbacks/{capability}/ask",
            "/api/v1/callbacks/{capability}/complete",
            "/api/v1/callbacks/{capability}/entities/{type}/{id}",
            "/api/v1/callbacks/{capability}/fail",
            "/api/v1/callbacks/{capability}/heartbeat",
            "/api/v1/callbacks/{capability}/journal/{name}",
            "/api/v1/callbacks/{capability}/output",
            "/api/v1/dead-letters",
            "/api/v1/dead-letters/{id}",
            "/api/v1/dead-letters/{id}/replay",
            "/api/v1/entities",
            "/api/v1/entities/{type}/{id}",
            "/api/v1/entities/{type}/{id}/operations",
            "/api/v1/entity-types",
            "/api/v1/entity-types/{type}",
            "/api/v1/instances",
            "/api/v1/instances/{id}",
            "/api/v1/instances/{id}/events/{name}",
            "/api/v1/instances/{id}/redrive",
            "/api/v1/instances/{id}/restart",
            "/api/v1/instances/{id}/resume",
            "/api/v1/instances/{id}/stream",
            "/api/v1/instances/{id}/subscriptions",
            "/api/v1/instances/{id}/suspend",
            "/api/v1/instances/{id}/terminate",
            "/api/v1/negotiate",
            "/api/v1/schedules",
            "/api/v1/schedules/{name}",
            "/api/v1/schedules/{name}/backfill",
            "/api/v1/schedules/{name}/pause",
            "/api/v1/schedules/{name}/resume",
            "/api/v1/schedules/{name}/trigger",
            "/api/v1/tasks/complete",
            "/api/v1/tasks/poll",
            "/api/v1/tasks/{token}/ask",
            "/api/v1/tasks/{token}/complete",
            "/api/v1/tasks/{token}/entities/{type}/{id}",
            "/api/v1/tasks/{token}/fail",
            "/api/v1/tasks/{token}/heartbeat",
            "/api/v1/tasks/{token}/journal/{name}",
            "/api/v1/tasks/{token}/output",
            "/api/v1/workflows",
            "/api/v1/workflows/{name}",
            "/api/v1/workflows/{name}/instances",
            "/api/v1/workflows/{name}/versions",
        ]
    );
}

fn app(max_body_bytes: usize) -> axum::Router {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let settings = GatewaySettings {
        max_body_bytes,
        ..GatewaySettings::default()
    };
    router(GatewayState::new(
        store,
        Arc::new(InProcessBus::default()),
        settings,
    ))
}

#[tokio::test]
async fn errors_are_problem_details_naming_the_field() {
    let response = app(1024)
        .oneshot(
            Request::get("/api/v1/instances?createdFrom=yesterday")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["errors"][0]["field"], "createdFrom");

    let big = "x".repeat(2048);
    let response = app(1024)
        .oneshot(
            Request::put("/api/v1/workflows/w")
                .body(Body::from(big))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    let response = app(1024)
        .oneshot(
            Request::get("/api/v1/instances/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A body that is JSON but not an object is refused, not read into the
    // request's fields by position.
    for body in ["[]", "[null, null]", "0.0", "\"text\""] {
        let response = app(1024)
            .oneshot(
                Request::post("/api/v1/instances/x/restart")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
}

async fn served(state: GatewayState) -> Value {
    let response = router(state)
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Whether any operation of `doc` documents a 401.
fn answers_401(doc: &Value) -> bool {
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .any(|operation| operation["responses"].get("401").is_some())
}

#[tokio::test]
async fn the_served_document_asks_for_what_the_auth_mode_enforces() {
    let state = || {
        GatewayState::new(
            Arc::new(SqliteStore::in_memory().unwrap()),
            Arc::new(InProcessBus::default()),
            GatewaySettings::default(),
        )
    };
    let open = served(state()).await;
    assert!(open.get("security").is_none(), "mode none asks for nothing");
    assert!(open["components"].get("securitySchemes").is_none());
    assert!(!answers_401(&open), "mode none never answers 401");

    let keyed = served(state().with_auth(Authenticator::ApiKeys(Vec::new()))).await;
    assert_eq!(keyed["security"], serde_json::json!([{"bearer": []}]));
    let scheme = &keyed["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["scheme"], "bearer");
    assert!(
        scheme["description"].as_str().unwrap().contains("API key"),
        "{scheme}"
    );
    assert!(answers_401(&keyed));
    // The contract is the authenticated modes' document.
    let contract = legato_gateway::openapi::document();
    assert_eq!(contract["security"], keyed["security"]);
    assert_eq!(contract["paths"], keyed["paths"]);
}
