//! Azure mode: every progress event goes to the Azure SignalR group named
//! by its instance id, in publication order. A send that keeps failing is
//! logged and skipped (watchers can read the history for it); it never
//! stops the relay.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use legato_service::Shutdown;
use legato_signalr::PROGRESS_TARGET;
use legato_signalr::azure::{AzureError, AzureSignalR};
use tokio::sync::broadcast::error::RecvError;

use crate::ProgressHub;

pub async fn relay_to_azure(
    hub: ProgressHub,
    azure: AzureSignalR,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut updates = hub.subscribe();
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
        .with_jitter();
    loop {
        let update = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            update = updates.recv() => update,
        };
        match update {
            Ok(update) => {
                let group = update.instance.to_string();
                let send =
                    || azure.send_to_group(&group, PROGRESS_TARGET, vec![update.to_client_json()]);
                let sent = send
                    .retry(retry)
                    .when(|e| matches!(e, AzureError::Transient(_)))
                    .await;
                if let Err(e) = sent {
                    tracing::error!(instance = %group, seq = update.event.seq, "progress not relayed to Azure SignalR: {e}");
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "the Azure SignalR relay fell behind; watchers can read the history"
                );
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
