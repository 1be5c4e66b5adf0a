use legato_service::{BusSettings, HttpSettings, StoreSettings, TelemetrySettings};
use serde::{Deserialize, Serialize};

/// How the orchestrator works; the `orchestrator` section of its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorSettings {
    /// Messages handled at once (and the prefetch of each subscription).
    pub concurrency: usize,
    /// How often due timers are looked for. Timers are the only polling;
    /// results and commands are handled the moment they arrive.
    pub timer_poll_ms: u64,
    /// Timers fired per poll.
    pub timer_batch: usize,
    /// Attempts at one message when its commit keeps losing version races
    /// (another replica moved the instance on), before the message is
    /// returned to the queue.
    pub store_attempts: usize,
    /// How long a message is held, and tried again with backoff, while the
    /// store does not answer, before it is returned to its queue. Held
    /// messages fill the concurrency, so consumption pauses meanwhile.
    pub store_outage_hold_ms: u64,
    /// After a restart, re-send the attempts still running and the starts
    /// still pending. Only for a bus that forgets messages on restart (the
    /// in-process bus of `legato up`); agents treat the copies as
    /// redeliveries.
    pub redispatch_on_start: bool,
    pub outbox_tick_ms: u64,
    pub outbox_safety_sweep_ms: u64,
    /// How often due schedules are looked for: the latest a scheduled run
    /// starts after its time (plus its jitter).
    pub schedule_poll_ms: u64,
    /// Schedules are ticked by one replica at a time, the holder of a
    /// store lease of this length: when it dies, another takes over within
    /// this time. Keep it shorter than the schedules' catch-up windows.
    pub schedule_lease_ms: u64,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            timer_poll_ms: 200,
            timer_batch: 256,
            store_attempts: 20,
            store_outage_hold_ms: 300_000,
            redispatch_on_start: false,
            outbox_tick_ms: 500,
            outbox_safety_sweep_ms: 30_000,
            schedule_poll_ms: 1_000,
            schedule_lease_ms: 10_000,
        }
    }
}

/// Everything the standalone `orchestrator` binary reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub store: StoreSettings,
    pub bus: BusSettings,
    pub orchestrator: OrchestratorSettings,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            http: HttpSettings::with_port(8081),
            telemetry: TelemetrySettings::default(),
            store: StoreSettings::default(),
            bus: BusSettings::default(),
            orchestrator: OrchestratorSettings::default(),
        }
    }
}
