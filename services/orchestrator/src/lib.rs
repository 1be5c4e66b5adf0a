//! The orchestrator: the only writer of instance state.
//!
//! For every command (from the gateway) and agent result it loads the
//! instance, asks the pure engine what follows ([`legato_engine::decide`]),
//! commits the new state with its history row, outbox messages and timer
//! changes in one atomic write guarded by the record's version, and then
//! publishes the outbox. A conflicting writer (another replica, or the timer
//! loop) loses the version check, reloads and decides again; no locks are
//! held across processes. Messages are acked only after the commit, so a
//! crash at any point means redelivery, and the engine recognises what it
//! has already applied.

mod agents;
mod apply;
mod children;
mod effects;
mod entities;
mod inbound;
mod mailboxes;
mod metrics;
mod recovery;
mod schedules;
mod settings;
mod standalone;
mod timers;

use std::sync::Arc;
use std::time::Duration;

use legato_bus::Bus;
use legato_service::{OutboxRelay, Readiness, Shutdown};
use legato_store::Store;
use tokio::task::JoinSet;

pub use settings::{OrchestratorConfig, OrchestratorSettings};
pub use standalone::run;

use crate::apply::Applier;

/// The consumer group every orchestrator replica joins.
pub const GROUP: &str = legato_bus::topology::ORCHESTRATOR_GROUP;

/// A running orchestrator; [`Orchestrator::wait`] returns once it drained.
pub struct Orchestrator {
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: Shutdown,
}

impl Orchestrator {
    /// Subscribes and starts every loop: commands, agent results, timers,
    /// schedules, the outbox sweeper and (for buses that forget on restart) recovery.
    pub async fn start(
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        settings: OrchestratorSettings,
        shutdown: Shutdown,
        readiness: Readiness,
    ) -> anyhow::Result<Self> {
        let relay = Arc::new(OutboxRelay::new(bus.clone(), store.clone()));
        let applier = Arc::new(Applier::new(store.clone(), relay.clone(), settings.clone()));
        let appliers = inbound::Appliers {
            instances: applier.clone(),
            entities: Arc::new(entities::Entities::new(store.clone(), relay.clone())),
        };
        let prefetch = settings.concurrency.max(1);
        let commands = bus
            .subscribe(legato_bus::topology::orchestrator_commands().prefetch(prefetch))
            .await?;
        let results = bus
            .subscribe(legato_bus::topology::orchestrator_results().prefetch(prefetch))
            .await?;
        let mut tasks = JoinSet::new();
        if settings.redispatch_on_start {
            // Before taking new messages: what this bus lost in the restart.
            recovery::redispatch(&*store, &*bus).await?;
        }
        tasks.spawn(
            relay
                .clone()
                .run(
                    shutdown.clone(),
                    Duration::from_millis(settings.outbox_tick_ms),
                    Duration::from_millis(settings.outbox_safety_sweep_ms),
                )
                .map_ok(),
        );
        tasks.spawn(inbound::consume(
            commands,
            appliers.clone(),
            settings.concurrency,
            std::time::Duration::from_millis(settings.store_outage_hold_ms),
            shutdown.clone(),
        ));
        tasks.spawn(inbound::consume(
            results,
            appliers,
            settings.concurrency,
            std::time::Duration::from_millis(settings.store_outage_hold_ms),
            shutdown.clone(),
        ));
        tasks.spawn(timers::run(applier, settings.clone(), shutdown.clone()));
        let scheduler = Arc::new(schedules::Scheduler {
            store: store.clone(),
            bus: bus.clone(),
            relay: relay.clone(),
        });
        tasks.spawn(schedules::run(
            scheduler,
            settings.clone(),
            shutdown.clone(),
        ));
        readiness.set_ready(true);
        tracing::info!("orchestrator started");
        Ok(Self { tasks, shutdown })
    }

    /// Waits for every loop to end: after shutdown, or after one loop
    /// failed (a lost subscription), which stops the others, so the process
    /// exits and its supervisor restarts it instead of it idling half-alive.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        legato_service::shutdown::join_all(
            &mut self.tasks,
            "orchestrator loop",
            Some(&self.shutdown),
        )
        .await
    }
}

/// Lets a `()` future sit in a set of fallible loops.
trait MapOk: std::future::Future<Output = ()> + Sized {
    fn map_ok(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: std::future::Future<Output = ()>> MapOk for F {}
