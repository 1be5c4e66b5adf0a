//! Opens the adapters the settings name. Services depend on the `Bus` and
//! `Store` traits only; this is the one place that knows the adapters.

use std::sync::Arc;

use legato_bus::Bus;
use legato_store::{SqliteStore, Store};

use crate::settings::{BusSettings, SettingsError, StoreSettings};

pub fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    match settings {
        StoreSettings::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("store.path: cannot create {}: {e}", dir.display())
                })?;
            }
            Ok(Arc::new(SqliteStore::open(path)?))
        }
    }
}

/// The bus for a standalone service process.
pub fn open_bus(settings: &BusSettings) -> Result<Arc<dyn Bus>, SettingsError> {
    match settings {
        BusSettings::InProcess => Err(SettingsError::invalid(
            "bus.kind",
            "is in_process, which only connects services inside one process: run them all \
             with `legato up`, or choose a broker bus",
        )),
    }
}
