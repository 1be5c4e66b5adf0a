//! Tracing for every service: a fmt layer (text or JSON) filtered by the
//! settings or `RUST_LOG`, and an OpenTelemetry layer exporting spans (and
//! the [`crate::metrics`]) over OTLP/HTTP when an endpoint is configured. The W3C `traceparent` of the
//! current span is what services put into the messages they send, so one
//! request stays one trace across the bus.

use legato_contracts::TraceParent;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{LogFormat, TelemetrySettings};

/// Libraries whose spans describe connections and frames, not work.
const TRANSPORT_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "tower",
    "reqwest",
    "rustls",
    "lapin",
    "amq_protocol",
    "azure_",
    "tokio",
    "opentelemetry",
    "tungstenite",
    "tokio_tungstenite",
];

/// Flushes exported spans when dropped at the end of `main`.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(e) = meters.shutdown()
        {
            eprintln!("telemetry: flushing metrics failed: {e}");
        }
    }
}

/// Installs the global subscriber. Calling it twice (tests, `legato up`
/// after a library already did) keeps the first one.
pub fn init(service: &str, settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log))
        .map_err(|e| anyhow::anyhow!("settings: `telemetry.log` is not a filter: {e}"))?
        // The Azure SDK dumps whole requests at debug, signed
        // `Authorization` headers (bearer tokens, SAS) included: never.
        .add_directive(
            "azure_core::policies::transport=info"
                .parse()
                .map_err(|e| anyhow::anyhow!("log filter: {e}"))?,
        );
    // Colour codes only for a person at a terminal: container logs and
    // log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    let (otel, provider, meters) = if settings.otlp_endpoint.is_empty() {
        (None, None, None)
    } else {
        let endpoint = settings.otlp_endpoint.trim_end_matches('/');
        let resource = || {
            Resource::builder()
                .with_service_name(service.to_owned())
                .build()
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        // Metrics go the same way, every OTEL_METRIC_EXPORT_INTERVAL
        // (60 s by default).
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{endpoint}/v1/metrics"))
            .build()?;
        let meters = SdkMeterProvider::builder()
            .with_periodic_exporter(metric_exporter)
            .with_resource(resource())
            .build();
        opentelemetry::global::set_meter_provider(meters.clone());
        let tracer = provider.tracer(service.to_owned());
        // Spans at info and above, whatever the log level (`telemetry.log
        // = "warn"` quiets the logs, not the traces), except the transport
        // libraries' own: legato's and an agent author's spans are the
        // story of a request.
        let ours = tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span()
                && *meta.level() <= tracing::Level::INFO
                && !TRANSPORT_TARGETS
                    .iter()
                    .any(|quiet| meta.target().starts_with(quiet))
        });
        (
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(ours),
            ),
            Some(provider),
            Some(meters),
        )
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // `try_init` fails only when a subscriber is already installed.
    let _already_installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_err();
    Ok(TelemetryGuard { provider, meters })
}

/// The current span's trace context as a `traceparent`, when it has one.
pub fn current_traceparent() -> Option<TraceParent> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    TraceParent::parse(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
    .ok()
}

/// Makes `span` a child of the trace a received message belongs to.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&TraceParent>) {
    let Some(tp) = traceparent else { return };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), tp.as_str().to_owned());
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    // Fails only when no OpenTelemetry layer is installed: nothing to link.
    let _ = span.set_parent(parent);
}
