//! For a bus that forgets on restart (the in-process bus of `legato up`):
//! re-send what was in flight when the process stopped. Pending starts are
//! sent again from their record; running attempts are re-sent as they were,
//! which agents treat as redeliveries, never as new attempts.

use legato_bus::Bus;
use legato_contracts::{Envelope, InstanceId, RuntimeStatus, StartInstance, TerminateInstance};
use legato_engine::{Command, InstanceState};
use legato_service::definitions::Definitions;
use legato_service::records::state_of;
use legato_store::{InstanceQuery, Store};
use time::OffsetDateTime;

use crate::children;
use crate::effects::SOURCE;

/// Pages read per status, so recovery always ends.
const MAX_PAGES: usize = 10_000;

pub(crate) async fn redispatch(store: &dyn Store, bus: &dyn Bus) -> anyhow::Result<()> {
    let mut resent = 0usize;
    // Each definition children run is parsed once for the whole recovery.
    let definitions = Definitions::default();
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
                resent += resend(store, bus, &definitions, &summary.id).await?;
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

async fn resend(
    store: &dyn Store,
    bus: &dyn Bus,
    definitions: &Definitions,
    id: &InstanceId,
) -> anyhow::Result<usize> {
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
            parent: None,
            budget: state.budget.clone(),
            entity_operation: None,
        };
        vec![Envelope::new(SOURCE, id.clone(), now, start)]
    } else {
        let mut envelopes: Vec<Envelope> = state
            .running_tasks()
            .into_iter()
            .map(|task| Envelope::new(SOURCE, id.clone(), now, task))
            .collect();
        envelopes.extend(
            state
                .running_entity_calls()
                .into_iter()
                .map(|operation| Envelope::new(SOURCE, id.clone(), now, operation)),
        );
        envelopes.extend(children_in_flight(store, definitions, &state, now).await?);
        envelopes
    };
    for envelope in &envelopes {
        bus.publish_envelope(envelope).await?;
    }
    Ok(envelopes.len())
}

/// The child runs the instance waits for, asked for again (each starts
/// once, or tells again how it ended), and, for a child whose parent no
/// longer waits for it (the stop was lost with the bus), its termination.
async fn children_in_flight(
    store: &dyn Store,
    definitions: &Definitions,
    state: &InstanceState,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<Envelope>> {
    let mut envelopes = Vec::new();
    for mut start in state.running_children() {
        if children::resolve(store, definitions, &mut start)
            .await?
            .is_err()
        {
            // Unresolvable now: the attempt's timeout, if any, ends it.
            continue;
        }
        if let Some((subject, payload)) = children::message(&Command::StartChild(start))? {
            envelopes.push(Envelope::new(SOURCE, subject, now, payload));
        }
    }
    if let Some(parent) = &state.parent
        && !state.status.is_terminal()
    {
        let waits = match store.load(&parent.instance).await? {
            Some(stored) => state_of(&stored.record)?.runs_attempt(&parent.key, parent.attempt),
            None => false,
        };
        if !waits {
            let stop = TerminateInstance {
                reason: Some(format!(
                    "its parent {} no longer waits for it",
                    parent.instance
                )),
            };
            envelopes.push(Envelope::new(SOURCE, state.id.clone(), now, stop));
        }
    }
    Ok(envelopes)
}
