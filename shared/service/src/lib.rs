//! The service kit: what every legato binary needs around its own work.
//!
//! - [`agent_figures`]: live figures on agents, reported by every replica;
//! - [`progress_pace`]: agent progress sent on at most once a turn;
//! - [`settings`]: one typed settings struct per service, layered from
//!   built-in defaults, `config/*.toml` and `LEGATO__SECTION__KEY`
//!   environment variables, validated at start with the bad key named;
//! - [`telemetry`]: tracing, with an OpenTelemetry OTLP exporter when an
//!   endpoint is configured;
//! - [`shutdown`]: one drain signal passed down to every loop;
//! - [`health`]: `/healthz` and `/readyz`;
//! - [`wiring`]: opens the bus and store the settings name;
//! - [`outbox`]: publishes committed outbox rows and deletes them.

pub mod agent_figures;
pub mod auth;
pub mod cors;
pub mod definitions;
pub mod entities;
pub mod health;
pub mod leadership;
pub mod metrics;
pub mod outbox;
pub mod problem;
pub mod progress_pace;
pub mod records;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod wiring;

pub use health::{Readiness, health_router, listen, serve};
pub use outbox::OutboxRelay;
pub use settings::{
    BusSettings, HttpSettings, StoreSettings, TelemetrySettings, load, load_from, load_with,
};
pub use shutdown::Shutdown;
