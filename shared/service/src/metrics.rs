//! What legato counts and measures, as OpenTelemetry metrics exported over
//! OTLP/HTTP with the traces (`telemetry.otlp_endpoint`; without one they
//! cost nothing). Names follow the OpenTelemetry conventions; a collector
//! turns them into Prometheus' `legato_instances_started_total`, … .
//!
//! | instrument | kind | attributes |
//! | --- | --- | --- |
//! | `legato.instances.started` | counter | `workflow` |
//! | `legato.instances.finished` | counter | `workflow`, `status` |
//! | `legato.step.duration` | histogram, s | `workflow`, `step`, `outcome` |
//! | `legato.outbox.backlog` | gauge | |
//! | `legato.dead_letters` | counter | `consumer` |
//! | `legato.bus.lag` | histogram, s | `consumer` |
//! | `legato.usage.tokens` | counter | `workflow`, `direction` (`input`, `output`) |
//! | `legato.usage.cost` | counter | `workflow` |
//! | `legato.budget.exceeded` | counter | `workflow` |

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use time::OffsetDateTime;

struct Instruments {
    started: Counter<u64>,
    finished: Counter<u64>,
    step_duration: Histogram<f64>,
    outbox_backlog: Gauge<u64>,
    dead_letters: Counter<u64>,
    bus_lag: Histogram<f64>,
    tokens: Counter<u64>,
    cost: Counter<f64>,
    budget_exceeded: Counter<u64>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Created at first use, after `telemetry::init` installed the exporter.
fn instruments() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("legato");
        Instruments {
            started: meter
                .u64_counter("legato.instances.started")
                .with_description("Instances that started running")
                .build(),
            finished: meter
                .u64_counter("legato.instances.finished")
                .with_description("Instances that ended: Completed, Failed or Terminated")
                .build(),
            step_duration: meter
                .f64_histogram("legato.step.duration")
                .with_unit("s")
                .with_description("From a step's start to its end, retries included")
                .with_boundaries(vec![
                    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
                ])
                .build(),
            outbox_backlog: meter
                .u64_gauge("legato.outbox.backlog")
                .with_description("Committed messages not yet published, as the last sweep saw")
                .build(),
            dead_letters: meter
                .u64_counter("legato.dead_letters")
                .with_description("Messages a consumer dead-lettered")
                .build(),
            bus_lag: meter
                .f64_histogram("legato.bus.lag")
                .with_unit("s")
                .with_description("From a message's sending to its receipt")
                .with_boundaries(vec![0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0])
                .build(),
            tokens: meter
                .u64_counter("legato.usage.tokens")
                .with_description("Model tokens agents reported spending")
                .build(),
            cost: meter
                .f64_counter("legato.usage.cost")
                .with_description("Cost agents reported, in their currency")
                .build(),
            budget_exceeded: meter
                .u64_counter("legato.budget.exceeded")
                .with_description("Instances suspended for crossing their budget")
                .build(),
        }
    })
}

/// What an instance's agents spent since it was last counted.
pub fn spent(workflow: &str, input_tokens: u64, output_tokens: u64, cost: f64) {
    let m = instruments();
    for (direction, tokens) in [("input", input_tokens), ("output", output_tokens)] {
        if tokens > 0 {
            m.tokens.add(
                tokens,
                &[
                    KeyValue::new("workflow", workflow.to_owned()),
                    KeyValue::new("direction", direction),
                ],
            );
        }
    }
    if cost > 0.0 {
        m.cost
            .add(cost, &[KeyValue::new("workflow", workflow.to_owned())]);
    }
}

pub fn budget_exceeded(workflow: &str) {
    instruments()
        .budget_exceeded
        .add(1, &[KeyValue::new("workflow", workflow.to_owned())]);
}

pub fn instance_started(workflow: &str) {
    instruments()
        .started
        .add(1, &[KeyValue::new("workflow", workflow.to_owned())]);
}

pub fn instance_finished(workflow: &str, status: &str) {
    instruments().finished.add(
        1,
        &[
            KeyValue::new("workflow", workflow.to_owned()),
            KeyValue::new("status", status.to_owned()),
        ],
    );
}

pub fn step_finished(workflow: &str, step: &str, outcome: &str, seconds: f64) {
    instruments().step_duration.record(
        seconds,
        &[
            KeyValue::new("workflow", workflow.to_owned()),
            KeyValue::new("step", step.to_owned()),
            KeyValue::new("outcome", outcome.to_owned()),
        ],
    );
}

pub fn outbox_backlog(messages: usize) {
    instruments()
        .outbox_backlog
        .record(u64::try_from(messages).unwrap_or(u64::MAX), &[]);
}

/// Dead-letters `delivery` with `reason`, counting it for `consumer`.
pub async fn dead_letter(
    delivery: legato_bus::Delivery,
    consumer: &str,
    reason: &str,
) -> Result<(), legato_bus::BusError> {
    instruments()
        .dead_letters
        .add(1, &[KeyValue::new("consumer", consumer.to_owned())]);
    delivery.dead_letter(reason).await
}

/// A message sent at `sent` arrived at `consumer` now.
pub fn received(consumer: &str, sent: OffsetDateTime) {
    let lag = (OffsetDateTime::now_utc() - sent).as_seconds_f64().max(0.0);
    instruments()
        .bus_lag
        .record(lag, &[KeyValue::new("consumer", consumer.to_owned())]);
}
