//! One trace per request: every service runs as its own process over
//! RabbitMQ and Azurite and exports spans and metrics over OTLP/HTTP to a
//! receiver this test serves (decoding the protobuf with
//! opentelemetry-proto). One instance's start at the gateway, the
//! orchestrator's handling and commits, the agents' tasks and the
//! notifier's relays must be one trace, with every parent link pointing at
//! a span of that trace; the instance shows in the metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message;
use serde_json::json;
use support::{Legato, temp_dir};

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
}

fn strings(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            any_value::Value::IntValue(i) => Some((kv.key.clone(), i.to_string())),
            _ => None,
        })
        .collect()
}

/// One metric data point: service, name, attributes.
type Point = (String, String, HashMap<String, String>);

fn service_of(resource: Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .map(|r| strings(&r.attributes))
        .and_then(|a| a.get("service.name").cloned())
        .unwrap_or_default()
}

/// An OTLP/HTTP receiver; returns its base URL and the spans and metric
/// points it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<Point>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let points: Arc<Mutex<Vec<Point>>> = Arc::default();
    let got = spans.clone();
    let got_points = points.clone();
    let metrics = axum::routing::post(move |body: Bytes| {
        let got = got_points.clone();
        async move {
            let request = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
            let mut got = got.lock().unwrap();
            for resource in request.resource_metrics {
                let service = service_of(resource.resource);
                for m in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                    let attributes: Vec<HashMap<String, String>> = match m.data {
                        Some(metric::Data::Sum(sum)) => sum
                            .data_points
                            .iter()
                            .map(|p| strings(&p.attributes))
                            .collect(),
                        Some(metric::Data::Gauge(gauge)) => gauge
                            .data_points
                            .iter()
                            .map(|p| strings(&p.attributes))
                            .collect(),
                        Some(metric::Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .map(|p| strings(&p.attributes))
                            .collect(),
                        _ => Vec::new(),
                    };
                    for a in attributes {
                        got.push((service.clone(), m.name.clone(), a));
                    }
                }
            }
            (
                [("content-type", "application/x-protobuf")],
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
    });
    let app = axum::Router::new().route("/v1/metrics", metrics).route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let got = got.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut got = got.lock().unwrap();
                for resource in request.resource_spans {
                    let service = service_of(resource.resource);
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        got.push(Span {
                            service: service.clone(),
                            name: span.name,
                            trace: span.trace_id,
                            id: span.span_id,
                            parent: span.parent_span_id,
                            attributes: strings(&span.attributes),
                        });
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans, points)
}

#[tokio::test]
async fn one_instance_is_one_trace_across_every_service() {
    let (otlp, spans, points) = receiver().await;
    let dir = temp_dir();
    let legato = Legato::start_services_with_env(
        dir.path(),
        &[
            ("LEGATO__TELEMETRY__OTLP_ENDPOINT", otlp.as_str()),
            // Export every 100 ms instead of every 5 s (spans) and 60 s
            // (metrics).
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    let id = "traced-1";
    legato
        .start_instance(
            "fan-out-fan-in",
            json!({"instanceId": id, "input": {"value": 2}}),
        )
        .await;
    legato.wait_status(id, "Completed").await;

    // Spans arrive in batches: wait (bounded) for the last hop's.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected: BTreeSet<&str> = ["gateway", "orchestrator", "agent-echo", "notifier"].into();
    let (trace, in_trace) = loop {
        let all = spans.lock().unwrap().clone();
        let of_instance: Vec<&Span> = all
            .iter()
            .filter(|s| s.attributes.get("instance").map(String::as_str) == Some(id))
            .collect();
        let traces: HashSet<&Vec<u8>> = of_instance.iter().map(|s| &s.trace).collect();
        let relayed_final = of_instance.iter().any(|s| {
            s.name == "relay"
                && s.attributes
                    .get("kind")
                    .is_some_and(|k| k.contains("InstanceCompleted"))
        });
        if traces.len() == 1 && relayed_final {
            let trace = (*traces.iter().next().unwrap()).clone();
            let in_trace: Vec<Span> = all.iter().filter(|s| s.trace == trace).cloned().collect();
            let services: BTreeSet<&str> = in_trace.iter().map(|s| s.service.as_str()).collect();
            // A span is exported when it ends, so a child can arrive before
            // its parent: wait until every parent has arrived too.
            let ids: HashSet<&Vec<u8>> = in_trace.iter().map(|s| &s.id).collect();
            let orphans = in_trace
                .iter()
                .filter(|s| !s.parent.is_empty() && !ids.contains(&s.parent))
                .count();
            if expected.is_subset(&services) && orphans == 0 {
                break (trace, in_trace);
            }
        }
        assert!(
            traces.len() <= 1,
            "the instance's spans are in {} traces",
            traces.len()
        );
        assert!(
            Instant::now() < deadline,
            "not every service's spans (or a parent) arrived within 30 s: {:?}",
            of_instance
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The root is the gateway's start request; every other span's parent
    // is a span of this trace.
    let ids: HashSet<&Vec<u8>> = in_trace.iter().map(|s| &s.id).collect();
    let roots: Vec<&Span> = in_trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    assert_eq!(roots[0].service, "gateway");
    assert_eq!(roots[0].name, "request");
    assert!(
        roots[0].attributes["path"].ends_with("/instances"),
        "{:?}",
        roots[0].attributes
    );
    for span in &in_trace {
        assert!(
            span.parent.is_empty() || ids.contains(&span.parent),
            "{} {} has a parent outside the trace",
            span.service,
            span.name
        );
    }
    // The shape: the start's message is handled by the orchestrator, its
    // commits dispatch tasks that the agent runs, whose results come back.
    let by_id: HashMap<&Vec<u8>, &Span> = in_trace.iter().map(|s| (&s.id, s)).collect();
    let parent_of = |s: &Span| {
        by_id
            .get(&s.parent)
            .map(|p| (p.service.as_str(), p.name.as_str()))
    };
    let tasks: Vec<&Span> = in_trace.iter().filter(|s| s.name == "task").collect();
    assert_eq!(tasks.len(), 5, "four fan-out tasks and the join");
    for task in &tasks {
        assert_eq!(
            parent_of(task),
            Some(("orchestrator", "commit")),
            "a task follows its dispatch"
        );
    }
    let messages_after_tasks = in_trace
        .iter()
        .filter(|s| s.name == "message" && parent_of(s) == Some(("agent-echo", "task")))
        .count();
    assert_eq!(
        messages_after_tasks, 5,
        "every result is handled in its task's trace"
    );
    for relay in in_trace.iter().filter(|s| s.name == "relay") {
        assert_eq!(parent_of(relay), Some(("orchestrator", "commit")));
    }
    // The metrics saw it too (bounded wait for the next export).
    let wanted = [
        (
            "orchestrator",
            "legato.instances.started",
            ("workflow", "fan-out-fan-in"),
        ),
        (
            "orchestrator",
            "legato.instances.finished",
            ("status", "Completed"),
        ),
        ("orchestrator", "legato.step.duration", ("step", "join")),
        (
            "orchestrator",
            "legato.bus.lag",
            ("consumer", "orchestrator"),
        ),
        ("agent-echo", "legato.bus.lag", ("consumer", "echo")),
        ("notifier", "legato.bus.lag", ("consumer", "notifier")),
        ("orchestrator", "legato.outbox.backlog", ("", "")),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = points.lock().unwrap().clone();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(service, name, (key, value))| {
                !got.iter().any(|(s, n, a)| {
                    s == service
                        && n == name
                        && (key.is_empty() || a.get(*key).map(String::as_str) == Some(*value))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics missing after 30 s: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "trace {}: {} spans from {:?}",
        trace.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        in_trace.len(),
        in_trace
            .iter()
            .map(|s| s.service.as_str())
            .collect::<BTreeSet<_>>()
    );
}
