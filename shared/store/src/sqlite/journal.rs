//! Task journals: one row per entry, keyed by instance, task and name.

use super::*;
use crate::{JournalEntry, Journaled};
use legato_contracts::journal::{self, JournalKey};

impl SqliteStore {
    pub(super) async fn record_journal_row(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
        entry: &JournalEntry,
    ) -> Result<Journaled, StoreError> {
        let (instance, task) = (instance.to_string(), task.to_string());
        let value = json_text(&entry.value)?;
        let (name, attempt, at) = (entry.name.clone(), entry.attempt, millis(entry.recorded_at));
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let before: Option<String> = tx
                .query_row(
                    "SELECT value FROM journal WHERE instance_id = ?1 AND task = ?2 AND name = ?3",
                    params![instance, task, name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(before) = before {
                return Ok(Journaled::RecordedBefore(parse_json(&before)?));
            }
            let (entries, total): (i64, i64) = tx
                .query_row(
                    "SELECT count(*), coalesce(sum(length(CAST(value AS BLOB))), 0) FROM journal \
                     WHERE instance_id = ?1 AND task = ?2",
                    params![instance, task],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(unavailable)?;
            let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
            if let Err(why) = journal::check_room(count(entries), count(total), value.len()) {
                return Ok(Journaled::Full(why));
            }
            tx.execute(
                "INSERT INTO journal (instance_id, task, name, value, attempt, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![instance, task, name, value, attempt, at],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Journaled::Recorded)
        })
        .await
    }

    pub(super) async fn journal_rows(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let (instance, task) = (instance.to_string(), task.to_string());
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, value, attempt, recorded_at FROM journal \
                     WHERE instance_id = ?1 AND task = ?2 ORDER BY name",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![instance, task], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, u32>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(unavailable)?;
            rows.map(|row| {
                let (name, value, attempt, at) = row.map_err(unavailable)?;
                Ok(JournalEntry {
                    name,
                    value: parse_json(&value)?,
                    attempt,
                    recorded_at: from_millis(at)?,
                })
            })
            .collect()
        })
        .await
    }

    pub(super) async fn clear_journal_rows(
        &self,
        instance: &InstanceId,
    ) -> Result<u64, StoreError> {
        let instance = instance.to_string();
        self.write(move |conn| {
            let removed = conn
                .execute(
                    "DELETE FROM journal WHERE instance_id = ?1",
                    params![instance],
                )
                .map_err(unavailable)?;
            Ok(removed as u64)
        })
        .await
    }
}
