//! For a bus that forgets on restart (the in-process bus of `legato up`):
//! re-send what was in flight when the process stopped. Pending starts are
//! sent again from their record; running attempts are re-sent as they were,
//! which agents treat as redeliveries, never as new attempts.

use legato_bus::Bus;
use legato_contracts::{Envelope, InstanceId, RuntimeStatus, StartInstance};
use legato_service::records::state_of;
use legato_store::{InstanceQuery, Store};
use time::OffsetDateTime;

use crate::effects::SOURCE;

/// Pages read per status, so recovery always ends.
const MAX_PAGES: usize = 10_000;

pub(crate) async fn redispatch(store: &dyn Store, bus: &dyn Bus) -> anyhow::Result<()> {
    let mut resent = 0usize;
    for status in [
        RuntimeStatus::Pending,
        RuntimeStatus::Running,
        RuntimeStatus::Suspended,
    ] {
        let mut query = InstanceQuery {
            status: Some(status),
            top: 500,
            ..InstanceQuery::default()
        };
        for _ in 0..MAX_PAGES {
            let page = store.list(&query).await?;
            for summary in &page.items {
                resent += resend(store, bus, &summary.id).await?;
            }
            match page.continuation {
                Some(token) => query.continuation = Some(token),
                None => break,
            }
        }
    }
    if resent > 0 {
        tracing::info!(messages = resent, "re-sent in-flight work after restart");
    }
    Ok(())
}

async fn resend(store: &dyn Store, bus: &dyn Bus, id: &InstanceId) -> anyhow::Result<usize> {
    let Some(stored) = store.load(id).await? else {
        return Ok(0);
    };
    let state = state_of(&stored.record)?;
    let now = OffsetDateTime::now_utc();
    let summary = &stored.record.summary;
    let envelopes: Vec<Envelope> = if state.status == RuntimeStatus::Pending {
        let start = StartInstance {
            workflow: summary.workflow.clone(),
            version: summary.workflow_version,
            input: state.input.clone(),
            tenant: state.tenant.clone(),
        };
        vec![Envelope::new(SOURCE, id.clone(), now, start)]
    } else {
        state
            .running_tasks()
            .into_iter()
            .map(|task| Envelope::new(SOURCE, id.clone(), now, task))
            .collect()
    };
    for envelope in &envelopes {
        bus.publish_envelope(envelope).await?;
    }
    Ok(envelopes.len())
}
