//! Removing index entries that point at nothing, without trusting one
//! answer. An entry is written before the commit it describes, so a reader
//! may find one whose truth is not there (yet, or any more). Two cases:
//!
//! - **stale**: the truth was read and says something else (an instance of
//!   the same id created at another time, a timer due at another time, a
//!   schedule that moved): the entry goes once it is past [`INDEX_GRACE`].
//! - **absent**: the truth read as missing. A store that answers 404 for a
//!   while for rows it has (an emulator starting, a failover) must not cost
//!   an entry, so the entry is first marked suspect (`SuspectMs`, under its
//!   ETag) and removed only by a read [`ABSENCE_CONFIRMATION`] later that
//!   finds it still absent and still marked. A read that finds its truth again
//!   clears the mark, as does a commit that writes the entry again (it
//!   replaces the entity whole).
//!
//! Every removal is conditional on the ETag the reader saw, so an entry
//! rewritten meanwhile stays.
//!
//! [`INDEX_GRACE`]: super::INDEX_GRACE
//! [`ABSENCE_CONFIRMATION`]: super::ABSENCE_CONFIRMATION

use super::*;

/// Set on an entry whose truth read as absent: when it was first seen so.
const SUSPECT: &str = "SuspectMs";

/// What reading each entry's truth found.
#[derive(Default)]
pub(super) struct Findings<'e> {
    stale: Vec<&'e Entity>,
    absent: Vec<&'e Entity>,
    found_again: Vec<&'e Entity>,
}

impl<'e> Findings<'e> {
    /// The entry's truth is there: a mark it carries is lifted.
    pub(super) fn matched(&mut self, entry: &'e Entity) {
        if suspect_since(entry).is_some() {
            self.found_again.push(entry);
        }
    }

    pub(super) fn stale(&mut self, entry: &'e Entity) {
        self.stale.push(entry);
    }

    pub(super) fn absent(&mut self, entry: &'e Entity) {
        self.absent.push(entry);
    }
}

impl AzureTableStore {
    /// Removes the stale entries past grace and the absent ones marked
    /// long enough ago; marks the other absent ones past grace; lifts the marks
    /// of entries found again. Failures are left to the next reader.
    pub(super) async fn repair_index(&self, table: &TableClient, findings: Findings<'_>) {
        let now = now_ms();
        let confirmation = i64::try_from(self.absence_confirmation.as_millis()).unwrap_or(i64::MAX);
        let mut removals = Vec::new();
        let mut marks = Vec::new();
        for entry in findings.stale {
            if self.past_grace(entry) {
                removals.push(entry);
            }
        }
        for entry in findings.absent {
            if !self.past_grace(entry) {
                continue;
            }
            match suspect_since(entry) {
                Some(since) if now.saturating_sub(since) > confirmation => removals.push(entry),
                Some(_) => {}
                None => marks.push((entry, now.to_string())),
            }
        }
        // An empty mark reads as none.
        marks.extend(findings.found_again.into_iter().map(|e| (e, String::new())));
        let owned = |entry: &Entity| -> Option<(String, String, Option<String>)> {
            let (partition, row) = keys_of(entry).ok()?;
            Some((partition.to_owned(), row.to_owned(), etag_of(entry)))
        };
        let removals: Vec<_> = removals
            .into_iter()
            .filter_map(owned)
            .map(|(partition, row, etag)| self.remove_entry(table, partition, row, etag))
            .collect();
        let marks: Vec<_> = marks
            .into_iter()
            .filter_map(|(entry, since)| Some((owned(entry)?, since)))
            .map(|((partition, row, etag), since)| {
                self.mark_entry(table, partition, row, etag, since)
            })
            .collect();
        let results: Vec<Result<(), StoreError>> = stream::iter(removals)
            .buffer_unordered(PARALLEL_READS)
            .chain(stream::iter(marks).buffer_unordered(PARALLEL_READS))
            .collect()
            .await;
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("index entry left for the next repair: {e}");
        }
    }
}

impl AzureTableStore {
    async fn remove_entry(
        &self,
        table: &TableClient,
        partition: String,
        row: String,
        etag: Option<String>,
    ) -> Result<(), StoreError> {
        self.delete(table, &partition, &row, etag.as_deref()).await
    }

    /// Sets the entry's mark (`since` empty lifts it), only while it is at
    /// `etag`.
    async fn mark_entry(
        &self,
        table: &TableClient,
        partition: String,
        row: String,
        etag: Option<String>,
        since: String,
    ) -> Result<(), StoreError> {
        let mut mark = Entity::new();
        mark.insert("PartitionKey".into(), partition.as_str().into());
        mark.insert("RowKey".into(), row.as_str().into());
        mark.insert(SUSPECT.into(), since.into());
        table
            .partition_key_client(partition)
            .entity_client(row)
            .merge(mark, if_match(etag.as_deref()))
            .map_err(failure)?
            .await
            .map(|_| ())
            .map_err(failure)
    }
}

fn suspect_since(entry: &Entity) -> Option<i64> {
    entry
        .get(SUSPECT)
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
}

fn keys_of(entry: &Entity) -> Result<(&str, &str), StoreError> {
    Ok((text(entry, "PartitionKey")?, text(entry, "RowKey")?))
}
