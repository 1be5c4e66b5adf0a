//! The notifier: consumes the `progress` topic and relays each event to the
//! clients watching its instance. Every notifier replica needs every event
//! (its clients may watch any instance), so each consumes through a group
//! of its own.

mod hub;
mod sse;

use std::sync::Arc;

use legato_bus::{Bus, SubscriptionSpec};
use legato_contracts::{Payload, Topic};
use legato_service::{BusSettings, HttpSettings, Shutdown, StoreSettings, TelemetrySettings};
use legato_store::Store;
use serde::{Deserialize, Serialize};

pub use hub::{ProgressHub, Update};
pub use sse::router;

/// Everything the standalone `notifier` binary reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8083),
            telemetry: TelemetrySettings::default(),
            store: StoreSettings::default(),
            bus: BusSettings::default(),
        }
    }
}

/// What the notifier's HTTP routes need.
#[derive(Clone)]
pub struct NotifierState {
    pub hub: ProgressHub,
    pub store: Arc<dyn Store>,
}

/// Subscribes to progress now and returns the loop that feeds the hub
/// until shutdown.
pub async fn relay(
    bus: Arc<dyn Bus>,
    hub: ProgressHub,
    shutdown: Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
    let group = format!("notifier-{}", uuid::Uuid::new_v4().simple());
    let progress = bus
        .subscribe(
            SubscriptionSpec::new(Topic::Progress, group)
                .bind("#")
                .prefetch(256),
        )
        .await?;
    Ok(feed(progress, hub, shutdown))
}

async fn feed(
    mut progress: Box<dyn legato_bus::Subscription>,
    hub: ProgressHub,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    loop {
        let delivery = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            d = progress.next() => d?,
        };
        let settled = match delivery.decode() {
            Ok(envelope) => match envelope.payload {
                Payload::Progress(event) => {
                    hub.publish(envelope.subject, event);
                    delivery.ack().await
                }
                other => {
                    let reason = format!(
                        "{} does not belong on the progress topic",
                        other.type_name()
                    );
                    delivery.dead_letter(&reason).await
                }
            },
            Err(e) => delivery.dead_letter(&e.to_string()).await,
        };
        if let Err(e) = settled {
            tracing::warn!("could not settle a progress delivery: {e}");
        }
    }
}
