//! The gateway scenarios again, with every service its own process
//! (`legato run <service>`), talking over RabbitMQ and keeping state in
//! Azure Table Storage (Azurite), as `docker compose up` runs them, with two
//! orchestrator replicas and two echo agent replicas sharing the work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "e2e/entities.rs"]
mod entities;
#[path = "e2e/scenarios.rs"]
mod scenarios;
#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use support::Legato;

/// The topology `scenarios` runs on here.
pub fn launch(data_dir: &Path) -> Legato {
    Legato::start_services(data_dir)
}
