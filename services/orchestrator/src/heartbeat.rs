//! Agent heartbeats are not engine events (they change nothing durable):
//! one that carries progress is relayed to the instance's watchers with the
//! instance's current sequence number and status; a bare one only proves
//! the agent is alive.

use legato_bus::Bus;
use legato_contracts::{Envelope, HeartbeatKind, Payload, ProgressEvent};
use legato_service::records::state_of;
use time::OffsetDateTime;

use crate::apply::Applier;
use crate::effects::SOURCE;

pub(crate) async fn relay(applier: &Applier, bus: &dyn Bus, envelope: &Envelope) {
    let Payload::TaskHeartbeat(beat) = &envelope.payload else {
        return;
    };
    if beat.progress.is_none() && beat.message.is_none() {
        return;
    }
    // Under the instance's lock, so the relayed event takes its place among
    // the instance's other progress (published under the same lock) and
    // carries the sequence number current at that point.
    let _guard = applier.lock_for(&envelope.subject).lock().await;
    let state = match applier.store.load(&envelope.subject).await {
        Ok(Some(stored)) => match state_of(&stored.record) {
            Ok(state) => state,
            Err(e) => return tracing::warn!("heartbeat for an unreadable instance: {e}"),
        },
        Ok(None) => return,
        Err(e) => return tracing::warn!("heartbeat not relayed: {e}"),
    };
    // News from an earlier run or an earlier attempt is stale. The current
    // attempt's news is relayed even if its result was applied first (the
    // two travel separately and may be taken in either order): an approval
    // request must not be lost to that race.
    let current = state.is_current(&beat.key)
        && state
            .task_slot(&beat.key)
            .is_some_and(|slot| slot.attempt == beat.attempt);
    if !current {
        return;
    }
    let progress = ProgressEvent {
        seq: state.sequence,
        kind: beat.kind.unwrap_or(HeartbeatKind::AgentProgress).into(),
        status: state.status,
        step: Some(beat.key.step.clone()),
        item: beat.key.item,
        attempt: Some(beat.attempt),
        message: beat.message.clone(),
        data: beat.progress.clone(),
    };
    let out = Envelope::new(
        SOURCE,
        envelope.subject.clone(),
        OffsetDateTime::now_utc(),
        progress,
    )
    .with_traceparent(envelope.traceparent.clone());
    if let Err(e) = bus.publish_envelope(&out).await {
        tracing::warn!("progress not relayed: {e}");
    }
}
