//! How the Azure SignalR client reads the service's failures: what is
//! worth another try (408, 429, 5xx, with `Retry-After`) and what is
//! refused for good (400, 401, 404, 413), each with its status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use legato_signalr::azure::{AzureError, AzureSignalR};
use serde_json::json;

/// A data plane that answers every request with `status` (and
/// `Retry-After: 3` on 429).
async fn answering(status: StatusCode) -> AzureSignalR {
    let app = axum::Router::new().fallback(move || async move {
        let mut response = status.into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert("retry-after", 3.into());
        }
        response
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let connection = format!("Endpoint=http://127.0.0.1;Port={port};AccessKey=a2V5;Version=1.0;")
        .parse()
        .unwrap();
    AzureSignalR::new(connection, "progress", Duration::from_secs(60)).unwrap()
}

#[tokio::test]
async fn failures_are_transient_or_refused_as_the_service_means_them() {
    for (status, transient) in [
        (StatusCode::REQUEST_TIMEOUT, true),
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::INTERNAL_SERVER_ERROR, true),
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::BAD_REQUEST, false),
        (StatusCode::UNAUTHORIZED, false),
        (StatusCode::NOT_FOUND, false),
        (StatusCode::PAYLOAD_TOO_LARGE, false),
    ] {
        let azure = answering(status).await;
        let error = azure
            .send_to_group("i-1", "progress", vec![json!({"seq": 1})])
            .await
            .unwrap_err();
        assert_eq!(error.is_transient(), transient, "{status}: {error}");
        match &error {
            AzureError::Refused { status: got, .. } => assert_eq!(*got, status.as_u16()),
            AzureError::Transient { retry_after, .. } => assert_eq!(
                *retry_after,
                (status == StatusCode::TOO_MANY_REQUESTS).then(|| Duration::from_secs(3))
            ),
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_service_that_does_not_answer_is_transient() {
    let connection = "Endpoint=http://127.0.0.1;Port=1;AccessKey=a2V5;Version=1.0;"
        .parse()
        .unwrap();
    let azure = AzureSignalR::new(connection, "progress", Duration::from_secs(60)).unwrap();
    let error = azure.add_user_to_group("i-1", "ana").await.unwrap_err();
    assert!(error.is_transient(), "{error}");
}

/// A service that accepts the connection and then never answers (a hung
/// link, through the fault proxy): each call ends at the deadline set by
/// `signalr.request_timeout_ms`, transient, and once the link answers again
/// the next call goes through.
#[tokio::test]
async fn a_service_that_stops_answering_fails_each_call_at_its_deadline() {
    let upstream = {
        let app = axum::Router::new().fallback(|| async { StatusCode::ACCEPTED });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    };
    let proxy = legato_fault_proxy::FaultProxy::start(upstream)
        .await
        .unwrap();
    let settings = legato_signalr::SignalRSettings {
        connection_string: format!(
            "Endpoint=http://127.0.0.1;Port={};AccessKey=a2V5;Version=1.0;",
            proxy.addr().port()
        ),
        request_timeout_ms: 500,
        ..Default::default()
    };
    let azure = settings.azure().unwrap().unwrap();
    azure.add_user_to_group("i-1", "ana").await.unwrap();
    proxy.set_link(legato_fault_proxy::Link::Hung);
    let began = std::time::Instant::now();
    let error = azure.add_user_to_group("i-1", "bo").await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "ended at its deadline, not never: {:?}",
        began.elapsed()
    );
    proxy.set_link(legato_fault_proxy::Link::Up);
    azure.add_user_to_group("i-1", "cy").await.unwrap();
}
