//! With an OTLP endpoint configured, spans leave the process as OTLP/HTTP
//! protobuf posts to `<endpoint>/v1/traces` (a local receiver stands in for
//! the collector), and the `traceparent` of the current span is the one
//! messages carry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use legato_service::TelemetrySettings;
use legato_service::telemetry::{continue_trace, current_traceparent, init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_and_traceparent_follows_the_span() {
    let received: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let record = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                record.lock().unwrap().push((ct, body.len()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let settings = TelemetrySettings {
        otlp_endpoint: format!("http://{addr}"),
        ..TelemetrySettings::default()
    };
    let guard = init("telemetry-test", &settings).unwrap();
    let incoming = legato_contracts::TraceParent::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    {
        let span = tracing::info_span!("handle-message");
        continue_trace(&span, Some(&incoming));
        let _entered = span.enter();
        let outgoing = current_traceparent().expect("a span with a trace has a traceparent");
        assert!(
            outgoing
                .as_str()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{}",
            outgoing.as_str()
        );
        assert_ne!(outgoing, incoming, "a child span has its own span id");
    }
    // Dropping the guard flushes the batch.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "no spans reached the receiver");
    assert_eq!(got[0].0, "application/x-protobuf");
    assert!(got[0].1 > 0);
}
