//! Writes a replica's [`Tally`] to the store every few seconds, one report
//! per agent, so the gateway can add every replica's up.

use std::sync::Arc;
use std::time::Duration;

use legato_store::Store;
use time::OffsetDateTime;

use super::Tally;
use crate::Shutdown;

/// How often a replica writes its reports.
pub fn report_every() -> Duration {
    Duration::from_secs(5)
}

/// How long a report counts unless written again: a few missed writes
/// are forgiven, a replica gone for longer drops out.
const KEPT: Duration = Duration::from_secs(20);

/// `service-<random>`: one replica of one service, whatever host it runs on.
pub fn replica_name(service: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{service}-{}", &id[..12])
}

/// Reports `tally` as `replica` until shutdown.
pub fn spawn(store: Arc<dyn Store>, tally: Arc<Tally>, replica: String, shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(report_every()) => {}
            }
            let mut failed = None;
            for (agent, report) in tally.reports(OffsetDateTime::now_utc()) {
                let written = match serde_json::to_value(&report) {
                    Ok(body) => store.put_report(&agent, &replica, &body, KEPT).await,
                    Err(e) => Err(legato_store::StoreError::Corrupt(e.to_string())),
                };
                if let Err(e) = written {
                    failed = Some(e);
                }
            }
            // Said once per run of failures: the figures are only figures.
            match failed {
                Some(e) if !failing => {
                    tracing::warn!("agent figures not reported: {e}");
                    failing = true;
                }
                Some(_) => {}
                None => failing = false,
            }
        }
    });
}
