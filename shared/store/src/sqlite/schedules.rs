//! Schedules: one row each, versioned by a counter so that writes made with
//! a stale read fail as conflicts.

use super::*;
use crate::MAX_SCHEDULES_LISTED;

const COLUMNS: &str = "name, tenant, next_due, body, version";

fn schedule(row: &Row<'_>) -> Result<StoredSchedule, StoreError> {
    let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
    let name = ScheduleName::parse(text(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let next_due: Option<i64> = row.get(2).map_err(unavailable)?;
    let version: i64 = row.get(4).map_err(unavailable)?;
    Ok(StoredSchedule {
        record: ScheduleRecord {
            name,
            tenant: row.get(1).map_err(unavailable)?,
            next_due: next_due.map(from_millis).transpose()?,
            body: parse_json(&text(3)?)?,
        },
        version: Version(version.to_string()),
    })
}

pub(super) fn version_number(version: &Version) -> Result<i64, StoreError> {
    version
        .0
        .parse()
        .map_err(|_| StoreError::Conflict(format!("version {:?} is not this store's", version.0)))
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<StoredSchedule>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(schedule(row)?);
    }
    Ok(out)
}

impl SqliteStore {
    pub(super) async fn put_schedule_row(
        &self,
        record: &ScheduleRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        let record = record.clone();
        let body = json_text(&record.body)?;
        let expected = match expected {
            Expected::New => None,
            Expected::Version(v) => Some(version_number(v)?),
        };
        let next_due = record.next_due.map(millis);
        self.write(move |conn| {
            let name = record.name.as_str();
            let written = match expected {
                None => conn
                    .execute(
                        "INSERT OR IGNORE INTO schedules (name, tenant, next_due, body, version) \
                         VALUES (?1, ?2, ?3, ?4, 1)",
                        params![name, record.tenant, next_due, body],
                    )
                    .map_err(unavailable)?,
                Some(at) => conn
                    .execute(
                        "UPDATE schedules SET tenant = ?2, next_due = ?3, body = ?4, \
                         version = version + 1 WHERE name = ?1 AND version = ?5",
                        params![name, record.tenant, next_due, body, at],
                    )
                    .map_err(unavailable)?,
            };
            if written == 0 {
                return Err(StoreError::Conflict(match expected {
                    None => format!("schedule {name} exists"),
                    Some(_) => format!("schedule {name} changed since it was read"),
                }));
            }
            Ok(Version(expected.map_or(1, |v| v + 1).to_string()))
        })
        .await
    }

    pub(super) async fn schedule_row(
        &self,
        name: &ScheduleName,
    ) -> Result<Option<StoredSchedule>, StoreError> {
        let name = name.as_str().to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM schedules WHERE name = ?1"),
                params![name],
                |row| Ok(schedule(row)),
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    pub(super) async fn schedule_rows(
        &self,
        tenant: &TenantFilter,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        let (any, tenant) = match tenant {
            TenantFilter::All => (true, None),
            TenantFilter::Only(tenant) => (false, tenant.clone()),
        };
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM schedules WHERE (?1 OR tenant IS ?2) \
                     ORDER BY name LIMIT ?3"
                ))
                .map_err(unavailable)?;
            let limit = i64::try_from(MAX_SCHEDULES_LISTED).unwrap_or(i64::MAX);
            collect(
                stmt.query(params![any, tenant, limit])
                    .map_err(unavailable)?,
            )
        })
        .await
    }

    pub(super) async fn due_schedule_rows(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        let now = millis(now);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM schedules WHERE next_due IS NOT NULL \
                     AND next_due <= ?1 ORDER BY next_due LIMIT ?2"
                ))
                .map_err(unavailable)?;
            collect(stmt.query(params![now, limit]).map_err(unavailable)?)
        })
        .await
    }

    pub(super) async fn delete_schedule_row(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        let name = name.as_str().to_owned();
        let expected = expected.map(version_number).transpose()?;
        self.write(move |conn| {
            let deleted = conn
                .execute(
                    "DELETE FROM schedules WHERE name = ?1 AND (?2 IS NULL OR version = ?2)",
                    params![name, expected],
                )
                .map_err(unavailable)?;
            if deleted == 0 && expected.is_some() {
                let exists = conn
                    .query_row(
                        "SELECT 1 FROM schedules WHERE name = ?1",
                        params![name],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(unavailable)?
                    .is_some();
                if exists {
                    return Err(StoreError::Conflict(format!(
                        "schedule {name} changed since it was read"
                    )));
                }
            }
            Ok(deleted > 0)
        })
        .await
    }
}
