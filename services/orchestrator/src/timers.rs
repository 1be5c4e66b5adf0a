//! Durable timers: rows in the store, found by due time. The poll is the
//! only periodic work in the orchestrator; everything else reacts to
//! messages. Several replicas may fire the same timer; the engine accepts
//! it once and the others find it gone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use legato_engine::{Event, TimerKey};
use legato_service::Shutdown;
use legato_store::TimerRow;
use time::OffsetDateTime;

use crate::apply::{Applier, ApplyError, Input};
use crate::settings::OrchestratorSettings;

/// Timers fired at once within one poll.
const FIRE_CONCURRENCY: usize = 16;
/// The longest wait between polls while the store does not answer.
const OUTAGE_POLL: Duration = Duration::from_secs(5);

pub(crate) async fn run(
    applier: Arc<Applier>,
    settings: OrchestratorSettings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let poll = Duration::from_millis(settings.timer_poll_ms.max(10));
    // While the store is away the poll backs off (to OUTAGE_POLL at most)
    // and says so once.
    let mut wait = poll;
    loop {
        let now = OffsetDateTime::now_utc();
        match applier.store.due_timers(now, settings.timer_batch).await {
            Ok(due) => {
                if wait > poll {
                    tracing::info!("timer poll: the store answers again");
                    wait = poll;
                }
                futures::stream::iter(due)
                    .for_each_concurrent(FIRE_CONCURRENCY, |row| fire(&applier, row))
                    .await
            }
            Err(e) => {
                if wait == poll {
                    tracing::warn!("timer poll failed, backing off until the store answers: {e}");
                }
                wait = (wait * 2).min(OUTAGE_POLL.max(poll));
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fire(applier: &Arc<Applier>, row: TimerRow) {
    let timer: TimerKey = match serde_json::from_value(row.payload.clone()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(instance = %row.instance, timer = %row.id, "unreadable timer row left in place: {e}");
            return;
        }
    };
    let event = Event::TimerFired {
        at: OffsetDateTime::now_utc(),
        timer,
    };
    match applier
        .apply(&row.instance, &Input::Event(event), None)
        .await
    {
        Ok(_) => {}
        Err(ApplyError::Transient(e)) => {
            tracing::warn!(instance = %row.instance, timer = %row.id, "timer will fire on a later poll: {e}")
        }
        Err(ApplyError::Rejected(reason)) => {
            tracing::error!(instance = %row.instance, timer = %row.id, "timer cannot fire: {reason}")
        }
    }
}
