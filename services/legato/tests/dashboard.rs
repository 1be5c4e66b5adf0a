//! The dashboard in a real browser: tests/node/dashboard.mjs drives
//! Debian's chromium (playwright-core, nothing downloaded) against `legato
//! up` with API keys; screenshots of every page land in
//! `<target>/tmp/dashboard-screenshots`. The files themselves: served from
//! the binary with a content security policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::{ApiKey, Legato, temp_dir};

const KEY: &str = "dashboard-admin-key";
const READER: &str = "dashboard-reader-key";

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

fn start(dir: &std::path::Path) -> Legato {
    Legato::start_with_api_keys(
        dir,
        &[
            ApiKey {
                id: "ops",
                key: KEY,
                tenant: Some("acme"),
                roles: &["admin"],
            },
            ApiKey {
                id: "viewer",
                key: READER,
                tenant: Some("acme"),
                roles: &["read"],
            },
        ],
    )
}

#[tokio::test]
async fn the_dashboard_follows_runs_live_and_steers_them_in_a_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (./scripts/test does)"
    );
    assert!(
        node_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/node (./scripts/test does)"
    );
    let dir = temp_dir();
    let legato = start(dir.path());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let run = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .arg(&legato.base)
        .arg(KEY)
        .arg(&out)
        .arg(READER)
        .env("CHROMIUM", &chromium)
        .current_dir(node_dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run finished within 180 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser run failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let summary: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    let shots = summary["screenshots"].as_array().unwrap();
    assert_eq!(shots.len(), 20, "{summary}");
    for shot in shots {
        let size = std::fs::metadata(shot.as_str().unwrap()).unwrap().len();
        assert!(size > 10_000, "{shot} is {size} bytes");
    }
    println!("screenshots in {}", out.display());
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_under_a_content_security_policy() {
    let dir = temp_dir();
    let legato = start(dir.path());
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/signalr.min.js", "text/javascript"),
    ] {
        // No credentials needed: the files hold no data.
        let response = legato.client.get(legato.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let missing = legato
        .client
        .get(legato.url("/dashboard/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The API itself still needs the key.
    let api = legato
        .client
        .get(legato.url("/api/v1/instances"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
}
