//! Registrations (agents, entity types): one row each in their kind's
//! table, versioned by a counter so that a write made with a stale read
//! fails as a conflict.

use super::*;
use crate::registry::{MAX_REGISTERED_LISTED, Registered, Registry, StoredRegistered};

const COLUMNS: &str = "name, tenant, body, updated_at, version";

fn registered(row: &Row<'_>) -> Result<StoredRegistered, StoreError> {
    let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
    let version: i64 = row.get(4).map_err(unavailable)?;
    Ok(StoredRegistered {
        registered: Registered {
            key: text(0)?,
            tenant: row.get(1).map_err(unavailable)?,
            body: parse_json(&text(2)?)?,
            updated_at: from_millis(row.get(3).map_err(unavailable)?)?,
        },
        version: Version(version.to_string()),
    })
}

impl SqliteStore {
    pub(super) async fn put_registered(
        &self,
        registry: Registry,
        record: &Registered,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let record = record.clone();
        let body = json_text(&record.body)?;
        let expected = match expected {
            Expected::New => None,
            Expected::Version(v) => Some(schedules::version_number(v)?),
        };
        let updated_at = millis(record.updated_at);
        let table = registry.table;
        self.write(move |conn| {
            let name = record.key.as_str();
            let written = match expected {
                None => conn.execute(
                    &format!(
                        "INSERT OR IGNORE INTO {table} (name, tenant, body, updated_at, version) \
                         VALUES (?1, ?2, ?3, ?4, 1)"
                    ),
                    params![name, record.tenant, body, updated_at],
                ),
                Some(at) => conn.execute(
                    &format!(
                        "UPDATE {table} SET tenant = ?2, body = ?3, updated_at = ?4, \
                         version = version + 1 WHERE name = ?1 AND version = ?5"
                    ),
                    params![name, record.tenant, body, updated_at, at],
                ),
            }
            .map_err(unavailable)?;
            if written == 0 {
                return Err(StoreError::Conflict(match expected {
                    None => format!("{} {name} is registered already", registry.what),
                    Some(_) => format!("{} {name} changed since it was read", registry.what),
                }));
            }
            Ok(Version(expected.map_or(1, |v| v + 1).to_string()))
        })
        .await
    }

    pub(super) async fn registered(
        &self,
        registry: Registry,
        key: &str,
    ) -> Result<Option<StoredRegistered>, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM {} WHERE name = ?1", registry.table),
                params![key],
                |row| Ok(registered(row)),
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    pub(super) async fn all_registered(
        &self,
        registry: Registry,
    ) -> Result<Vec<StoredRegistered>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM {} ORDER BY name LIMIT ?1",
                    registry.table
                ))
                .map_err(unavailable)?;
            let limit = i64::try_from(MAX_REGISTERED_LISTED).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                out.push(registered(row)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn delete_registered(
        &self,
        registry: Registry,
        key: &str,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.write(move |conn| {
            conn.execute(
                &format!("DELETE FROM {} WHERE name = ?1", registry.table),
                params![key],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }
}
