//! Two tenants on one gateway, each with its own API key: for every
//! endpoint, neither can read, list, stream, subscribe to, signal, operate
//! or purge the other's instance, and each refusal is the answer a missing
//! instance gets (no existence leak, not even through `409` on a chosen
//! `instanceId`). Definitions a tenant registers are its own; the shared
//! catalogue is everyone's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::hub::{connect, invoke, next};
use support::{ApiKey, Legato, echo_step, temp_dir};

const ACME: &str = "acme-key";
const BETA: &str = "beta-key";
/// The id both tenants choose.
const ID: &str = "order-42";

fn start(dir: &Path) -> Legato {
    let admin = |id, key, tenant| ApiKey {
        id,
        key,
        tenant: Some(tenant),
        roles: &["admin"],
    };
    Legato::start_with_api_keys(
        dir,
        &[
            admin("acme-admin", ACME, "acme"),
            admin("beta-admin", BETA, "beta"),
        ],
    )
}

/// One call as a tenant: status and body (JSON, or the text).
async fn call(
    legato: &Legato,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = legato
        .client
        .request(method.parse().unwrap(), legato.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn waiting_workflow(name: &str) -> Value {
    json!({
        "name": name, "version": 1,
        "steps": [
            echo_step("prepare", &[], json!({"value": "draft"})),
            {"id": "approve", "needs": ["prepare"], "wait_for_event": {"name": "approval", "timeout_ms": 600_000}},
        ],
        "output": "${{ steps.approve.output }}"
    })
}

async fn register(legato: &Legato, key: &str, definition: Value) -> (StatusCode, Value) {
    let name = definition["name"].as_str().unwrap().to_owned();
    call(
        legato,
        key,
        "PUT",
        &format!("/api/v1/workflows/{name}"),
        Some(definition),
    )
    .await
}

async fn wait_until_waiting(legato: &Legato, key: &str, id: &str) {
    for _ in 0..200 {
        let (_, status) = call(legato, key, "GET", &format!("/api/v1/instances/{id}"), None).await;
        let waiting = status["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "Waiting"));
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never waited for its approval");
}

/// The shared id's instance as the tenant with `key` sees it.
async fn instance(legato: &Legato, key: &str) -> (StatusCode, Value) {
    call(legato, key, "GET", &format!("/api/v1/instances/{ID}"), None).await
}

/// A problem body with the instance id replaced, to compare the answer
/// about another tenant's instance with the one about a missing instance.
fn anonymised(body: &Value, id: &str) -> String {
    body.to_string().replace(id, "<id>")
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_others_instances() {
    let dir = temp_dir();
    let legato = start(dir.path());

    // Each tenant registers a definition of its own under the same name.
    assert_eq!(
        register(&legato, ACME, waiting_workflow("hold")).await.0,
        StatusCode::CREATED
    );
    let (status, _) = call(&legato, BETA, "GET", "/api/v1/workflows/hold", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "acme's definition is acme's");
    let (_, listed) = call(&legato, BETA, "GET", "/api/v1/workflows", None).await;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"hold"), "{names:?}");
    assert!(
        names.contains(&"feature-request"),
        "the catalogue is shared"
    );
    assert_eq!(
        register(&legato, BETA, waiting_workflow("hold")).await.0,
        StatusCode::CREATED,
        "beta's own 'hold' does not collide with acme's"
    );

    // acme starts order-42 and it waits; beta's view of it is a missing one.
    let (status, started) = call(
        &legato,
        ACME,
        "POST",
        "/api/v1/workflows/hold/instances",
        Some(json!({"instanceId": ID, "input": {}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["id"], ID, "ids are shown as the tenant chose them");
    wait_until_waiting(&legato, ACME, ID).await;

    let missing = "never-started";
    let mut endpoints: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/api/v1/instances/{id}".into(), None),
        ("GET", "/api/v1/instances/{id}?history=true".into(), None),
        ("GET", "/api/v1/instances/{id}/stream".into(), None),
        (
            "POST",
            "/api/v1/instances/{id}/events/approval".into(),
            Some(json!({"approved": true})),
        ),
        ("DELETE", "/api/v1/instances/{id}".into(), None),
        (
            "POST",
            "/api/v1/instances/{id}/subscriptions".into(),
            Some(json!({"connectionId": "c1"})),
        ),
    ];
    for operation in ["terminate", "suspend", "resume", "restart"] {
        let path = format!("/api/v1/instances/{{id}}/{operation}");
        endpoints.push(("POST", path, Some(json!({}))));
    }
    for (method, path, body) in &endpoints {
        let as_beta = |id: &str| {
            let path = path.replace("{id}", id);
            let body = body.clone();
            let legato = &legato;
            async move { call(legato, BETA, method, &path, body).await }
        };
        let theirs = as_beta(ID).await;
        let absent = as_beta(missing).await;
        assert_eq!(theirs.0, absent.0, "{method} {path}: {theirs:?}");
        assert!(
            theirs.0 == StatusCode::NOT_FOUND || theirs.0 == StatusCode::CONFLICT,
            "{method} {path}: {theirs:?}"
        );
        assert_eq!(
            anonymised(&theirs.1, ID),
            anonymised(&absent.1, missing),
            "{method} {path}: the same answer as for a missing instance"
        );
    }

    // Listing: each tenant sees its own only, whatever the filter.
    let (_, beta_list) = call(&legato, BETA, "GET", "/api/v1/instances", None).await;
    assert_eq!(beta_list["items"], json!([]), "{beta_list}");
    let (_, filtered) = call(
        &legato,
        BETA,
        "GET",
        "/api/v1/instances?workflow=hold",
        None,
    )
    .await;
    assert_eq!(filtered["items"], json!([]));

    // The hub: beta's connection cannot subscribe to acme's instance, and
    // the refusal reads as for a missing one.
    let mut beta_hub = connect(&legato, &format!("?access_token={BETA}")).await;
    let refused = invoke(&mut beta_hub, "1", "Subscribe", json!([ID])).await;
    let absent = invoke(&mut beta_hub, "2", "Subscribe", json!([missing])).await;
    assert!(
        refused["error"].as_str().unwrap().contains("not found"),
        "{refused}"
    );
    assert_eq!(
        anonymised(&refused["error"], ID),
        anonymised(&absent["error"], missing)
    );
    // Nor can a connection without a credential be opened.
    assert!(support::hub::open(&legato, "").await.is_err());

    // beta chooses the same id: no 409, a separate instance of its own.
    let (status, body) = call(
        &legato,
        BETA,
        "POST",
        "/api/v1/workflows/hold/instances",
        Some(json!({"instanceId": ID, "input": {"who": "beta"}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_until_waiting(&legato, BETA, ID).await;
    let (_, acme_view) = instance(&legato, ACME).await;
    let (_, beta_view) = instance(&legato, BETA).await;
    assert_eq!(acme_view["input"], json!({}));
    assert_eq!(acme_view["tenant"], "acme");
    assert_eq!(beta_view["input"], json!({"who": "beta"}));
    assert_eq!(beta_view["tenant"], "beta");
    for (key, tenant) in [(ACME, "acme"), (BETA, "beta")] {
        let (_, list) = call(&legato, key, "GET", "/api/v1/instances", None).await;
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["tenant"], tenant);
    }

    // beta's own hub subscription sees beta's instance, with the id as
    // beta knows it; acme approving its own touches only acme's.
    let subscribed = invoke(&mut beta_hub, "3", "Subscribe", json!([ID])).await;
    assert_eq!(subscribed["result"]["instanceId"], ID, "{subscribed}");
    let (status, _) = call(
        &legato,
        ACME,
        "POST",
        &format!("/api/v1/instances/{ID}/events/approval"),
        Some(json!({"approved": true})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut acme_done = false;
    for _ in 0..200 {
        let (_, view) = instance(&legato, ACME).await;
        if view["runtimeStatus"] == "Completed" {
            acme_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(acme_done, "acme's instance completes on acme's approval");
    let (_, beta_view) = instance(&legato, BETA).await;
    assert_eq!(beta_view["runtimeStatus"], "Running", "{beta_view}");
    // Nothing of acme's reached beta's hub connection: every progress
    // event it got is about beta's instance, which has not finished.
    let mut received = 0;
    while let Ok(message) =
        tokio::time::timeout(Duration::from_millis(500), next(&mut beta_hub)).await
    {
        received += 1;
        assert!(received < 100, "a bounded number of events");
        if message["target"] == "progress" {
            let event = &message["arguments"][0];
            assert_eq!(event["instanceId"], ID);
            assert_ne!(event["kind"], "instance_completed", "{event}");
        }
    }

    // Purge: acme purges its finished instance; beta's stays.
    let (status, _) = call(
        &legato,
        ACME,
        "DELETE",
        &format!("/api/v1/instances/{ID}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = instance(&legato, BETA).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tenants_cannot_see_or_steer_each_others_schedules_or_their_runs() {
    let dir = temp_dir();
    let legato = start(dir.path());
    // Both register a private workflow under one name and schedule it
    // under one name: two schedules, each running its own tenant's
    // definition.
    for (key, value) in [(ACME, "acme"), (BETA, "beta")] {
        let (status, body) = register(
            &legato,
            key,
            json!({"name": "own", "version": 1, "steps": [echo_step("a", &[], json!({"value": value}))],
                   "output": "${{ steps.a.output.value }}"}),
        )
        .await;
        assert!(status.is_success(), "{body}");
    }
    let spec = json!({"workflow": "own", "intervalSeconds": 3600});
    let (status, body) = call(
        &legato,
        ACME,
        "PUT",
        "/api/v1/schedules/nightly",
        Some(spec.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, missing) = call(&legato, ACME, "GET", "/api/v1/schedules/absent", None).await;
    for (method, path, body) in [
        ("GET", "/api/v1/schedules/nightly", None),
        ("POST", "/api/v1/schedules/nightly/pause", Some(json!({}))),
        ("POST", "/api/v1/schedules/nightly/resume", Some(json!({}))),
        ("POST", "/api/v1/schedules/nightly/trigger", Some(json!({}))),
        ("DELETE", "/api/v1/schedules/nightly", None),
    ] {
        let (status, answer) = call(&legato, BETA, method, path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        assert_eq!(
            answer["title"], missing["title"],
            "{method} {path} answers as a missing schedule does"
        );
    }
    let (_, listed) = call(&legato, BETA, "GET", "/api/v1/schedules", None).await;
    assert_eq!(listed["items"], json!([]));
    let (status, _) = call(
        &legato,
        BETA,
        "PUT",
        "/api/v1/schedules/nightly",
        Some(spec),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the same name is free in another tenant"
    );

    // Each tenant's trigger runs its own definition, as its own instance.
    for (key, value) in [(ACME, "acme"), (BETA, "beta")] {
        let (status, runs) = call(
            &legato,
            key,
            "POST",
            "/api/v1/schedules/nightly/trigger",
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{runs}");
        let id = runs["instanceIds"][0].as_str().unwrap().to_owned();
        let path = format!("/api/v1/instances/{id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let done = loop {
            let (_, status) = call(&legato, key, "GET", &path, None).await;
            if status["runtimeStatus"] == "Completed" {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{id}: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(done["output"], json!(value));
        assert_eq!(done["tenant"], json!(value));
        let other = if key == ACME { BETA } else { ACME };
        let (status, _) = call(&legato, other, "GET", &path, None).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{id} is not the other tenant's"
        );
    }
}

/// A tenant's child workflow runs the tenant's own definition of its name
/// (shadowing a shared one), as an instance of the tenant that the other
/// tenant cannot see; a definition may name only children its tenant sees.
#[tokio::test]
async fn a_tenants_child_runs_its_own_definition_and_stays_in_its_tenant() {
    let dir = temp_dir();
    let legato = start(dir.path());
    let part = |value: &str| {
        json!({"name": "part", "version": 1,
            "steps": [echo_step("work", &[], json!({"value": value}))],
            "output": "${{ steps.work.output.value }}"})
    };
    let family = json!({"name": "family", "version": 1,
        "steps": [{"id": "kid", "workflow": "part"}],
        "output": "${{ steps.kid.output }}"});
    // beta sees no workflow `part`: its parent is refused.
    let (status, problem) = register(&legato, BETA, family.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem:#}");
    assert_eq!(problem["errors"][0]["field"], "/steps/0/workflow");
    for (key, value) in [(ACME, "acme's own"), (BETA, "beta's own")] {
        assert!(register(&legato, key, part(value)).await.0.is_success());
        assert!(register(&legato, key, family.clone()).await.0.is_success());
    }
    let (status, started) = call(
        &legato,
        ACME,
        "POST",
        "/api/v1/workflows/family/instances",
        Some(json!({"instanceId": "fam-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started:#}");
    let mut done = Value::Null;
    for _ in 0..400 {
        done = call(&legato, ACME, "GET", "/api/v1/instances/fam-1", None)
            .await
            .1;
        if done["runtimeStatus"] == "Completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(done["output"], "acme's own", "{done:#}");
    let (status, child) = call(
        &legato,
        ACME,
        "GET",
        "/api/v1/instances/fam-1::kid.a1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&child["tenant"], &child["parent"]["id"]),
        (&json!("acme"), &json!("fam-1"))
    );
    let (status, _) = call(
        &legato,
        BETA,
        "GET",
        "/api/v1/instances/fam-1::kid.a1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "beta sees acme's child");
}
