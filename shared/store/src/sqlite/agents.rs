//! Registered agents: one row each, versioned by a counter so that a write
//! made with a stale read fails as a conflict.

use super::*;
use crate::{AgentRecord, MAX_AGENTS_LISTED, StoredAgent};
use legato_contracts::AgentName;

const COLUMNS: &str = "name, tenant, body, updated_at, version";

fn agent(row: &Row<'_>) -> Result<StoredAgent, StoreError> {
    let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
    let name = AgentName::parse(text(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let version: i64 = row.get(4).map_err(unavailable)?;
    Ok(StoredAgent {
        record: AgentRecord {
            name,
            tenant: row.get(1).map_err(unavailable)?,
            body: parse_json(&text(2)?)?,
            updated_at: from_millis(row.get(3).map_err(unavailable)?)?,
        },
        version: Version(version.to_string()),
    })
}

impl SqliteStore {
    pub(super) async fn put_agent_row(
        &self,
        record: &AgentRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let record = record.clone();
        let body = json_text(&record.body)?;
        let expected = match expected {
            Expected::New => None,
            Expected::Version(v) => Some(schedules::version_number(v)?),
        };
        let updated_at = millis(record.updated_at);
        self.write(move |conn| {
            let name = record.name.as_str();
            let written = match expected {
                None => conn.execute(
                    "INSERT OR IGNORE INTO agents (name, tenant, body, updated_at, version) \
                     VALUES (?1, ?2, ?3, ?4, 1)",
                    params![name, record.tenant, body, updated_at],
                ),
                Some(at) => conn.execute(
                    "UPDATE agents SET tenant = ?2, body = ?3, updated_at = ?4, \
                     version = version + 1 WHERE name = ?1 AND version = ?5",
                    params![name, record.tenant, body, updated_at, at],
                ),
            }
            .map_err(unavailable)?;
            if written == 0 {
                return Err(StoreError::Conflict(match expected {
                    None => format!("agent {name} is registered already"),
                    Some(_) => format!("agent {name} changed since it was read"),
                }));
            }
            Ok(Version(expected.map_or(1, |v| v + 1).to_string()))
        })
        .await
    }

    pub(super) async fn agent_row(
        &self,
        name: &AgentName,
    ) -> Result<Option<StoredAgent>, StoreError> {
        let name = name.as_str().to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM agents WHERE name = ?1"),
                params![name],
                |row| Ok(agent(row)),
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    pub(super) async fn agent_rows(&self) -> Result<Vec<StoredAgent>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM agents ORDER BY name LIMIT ?1"
                ))
                .map_err(unavailable)?;
            let limit = i64::try_from(MAX_AGENTS_LISTED).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                out.push(agent(row)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn delete_agent_row(&self, name: &AgentName) -> Result<bool, StoreError> {
        let name = name.as_str().to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM agents WHERE name = ?1", params![name])
                .map(|n| n > 0)
                .map_err(unavailable)
        })
        .await
    }
}
