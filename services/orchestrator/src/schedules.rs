//! Schedules: each poll ticks the schedules that are due. A tick reads the
//! schedule and the status of its running runs, lets the pure planner
//! ([`legato_schedule::plan`]) decide, carries the actions out, and only
//! then writes the schedule back at the version it read. A run's instance
//! is created only if no instance has its id (schedule name + nominal
//! time), so replicas ticking the same schedule, or a tick repeated after a
//! crash, start each run once; the loser of the write plans again on the
//! next poll.
//!
//! Only the replica holding the store lease [`LEASE`] polls, so the store's
//! work for schedules does not grow with the number of replicas; when it
//! dies, another takes over within `schedule_lease_ms`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use legato_bus::Bus;
use legato_contracts::{Envelope, InstanceId, StartInstance, TerminateInstance};
use legato_schedule::{Action, ScheduleDoc, Statuses, plan};
use legato_service::leadership::Leadership;
use legato_service::{OutboxRelay, Shutdown, records};
use legato_store::{Expected, ScheduleRecord, Store, StoreError, StoredSchedule};
use time::OffsetDateTime;

use crate::effects::SOURCE;
use crate::settings::OrchestratorSettings;

/// Schedules ticked at once.
const TICK_CONCURRENCY: usize = 8;
/// Schedules read per poll.
const DUE_BATCH: usize = 256;
/// The longest wait between polls while the store does not answer.
const OUTAGE_POLL: Duration = Duration::from_secs(5);
/// The store lease of the replica that ticks schedules.
pub(crate) const LEASE: &str = "schedules";

pub(crate) struct Scheduler {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub relay: Arc<OutboxRelay>,
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Bus(String),
    #[error("unreadable schedule document: {0}")]
    Corrupt(String),
}

pub(crate) async fn run(
    scheduler: Arc<Scheduler>,
    settings: OrchestratorSettings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let poll = Duration::from_millis(settings.schedule_poll_ms.max(10));
    let mut leadership = Leadership::follow_for(
        LEASE,
        Duration::from_millis(settings.schedule_lease_ms.max(300)),
        scheduler.store.clone(),
        shutdown.clone(),
    );
    let mut wait = poll;
    loop {
        if !leadership.holds() {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                _ = leadership.changed() => {}
            }
            continue;
        }
        match scheduler
            .store
            .due_schedules(OffsetDateTime::now_utc(), DUE_BATCH)
            .await
        {
            Ok(due) => {
                if wait > poll {
                    tracing::info!("schedule poll: the store answers again");
                    wait = poll;
                }
                futures::stream::iter(due)
                    .for_each_concurrent(TICK_CONCURRENCY, |schedule| {
                        let scheduler = scheduler.clone();
                        async move {
                            let name = schedule.record.name.clone();
                            if let Err(e) = scheduler.tick(schedule).await {
                                tracing::warn!(schedule = %name, "schedule tick put off to the next poll: {e}");
                            }
                        }
                    })
                    .await;
            }
            Err(e) => {
                if wait == poll {
                    tracing::warn!(
                        "schedule poll failed, backing off until the store answers: {e}"
                    );
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

impl Scheduler {
    async fn tick(&self, stored: StoredSchedule) -> Result<(), TickError> {
        let mut doc: ScheduleDoc = serde_json::from_value(stored.record.body.clone())
            .map_err(|e| TickError::Corrupt(e.to_string()))?;
        let name = stored.record.name.clone();
        let timetable = doc
            .spec
            .timetable()
            .map_err(|e| TickError::Corrupt(e.to_string()))?;
        let mut statuses = Statuses::new();
        for id in &doc.state.running {
            let status = self.store.load(id).await?.map(|s| s.record.summary.status);
            statuses.insert(id.clone(), status);
        }
        let now = OffsetDateTime::now_utc();
        let tick = plan(&name, &doc.spec, &timetable, &doc.state, now, &statuses);
        for action in &tick.actions {
            match action {
                Action::Start { id, nominal } => {
                    self.start(&doc, &stored.record, id, *nominal).await?
                }
                Action::Terminate { id, reason } => self.terminate(id, reason).await?,
            }
        }
        doc.state = tick.state;
        if !tick.actions.is_empty() {
            doc.updated_at = now;
        }
        let body = serde_json::to_value(&doc).map_err(|e| TickError::Corrupt(e.to_string()))?;
        let record = ScheduleRecord {
            next_due: tick.next_due,
            body,
            ..stored.record
        };
        match self
            .store
            .put_schedule(&record, &Expected::Version(stored.version))
            .await
        {
            // Edited, deleted or ticked by another replica meanwhile: the
            // runs started are theirs too (same ids); plan again next poll.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Accepts the run's start unless an instance with its id exists (the
    /// run was started before: by another replica, or before a crash).
    async fn start(
        &self,
        doc: &ScheduleDoc,
        schedule: &ScheduleRecord,
        id: &InstanceId,
        nominal: OffsetDateTime,
    ) -> Result<(), TickError> {
        let definition = self
            .store
            .get_definition(&doc.workflow, doc.spec.version)
            .await?
            .ok_or_else(|| {
                TickError::Corrupt(format!(
                    "workflow {} version {:?} is not registered",
                    doc.workflow, doc.spec.version
                ))
            })?;
        let start = StartInstance {
            workflow: definition.name,
            version: definition.version,
            input: doc.spec.input.clone(),
            tenant: schedule.tenant.clone(),
            parent: None,
            budget: None,
            entity_operation: None,
        };
        let commit = records::accept_start(SOURCE, id.clone(), start, OffsetDateTime::now_utc())?;
        match self.relay.commit(commit).await {
            Ok(_) => {
                tracing::info!(schedule = %schedule.name, instance = %id, %nominal, "scheduled run started");
                Ok(())
            }
            Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn terminate(&self, id: &InstanceId, reason: &str) -> Result<(), TickError> {
        let command = TerminateInstance {
            reason: Some(reason.to_owned()),
        };
        let envelope = Envelope::new(SOURCE, id.clone(), OffsetDateTime::now_utc(), command)
            .with_traceparent(legato_service::telemetry::current_traceparent());
        self.bus
            .publish_envelope(&envelope)
            .await
            .map_err(|e| TickError::Bus(e.to_string()))
    }
}
