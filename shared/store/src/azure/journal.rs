//! Task journals: one row per entry in the instance's partition (see
//! [`keys::journal_row`]), so a purge takes them with the instance and a
//! task's journal is one range read. An entry is inserted, never
//! replaced: a second writer of a name gets 409 and reads the first value.

use super::*;
use crate::{JournalEntry, Journaled};
use legato_contracts::journal::{self, JournalKey};

const VALUE: &str = "V";

impl AzureTableStore {
    pub(super) async fn record_journal_row(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
        entry: &JournalEntry,
    ) -> Result<Journaled, StoreError> {
        let partition = instance.as_str();
        let row_key = keys::journal_row(task.as_str(), &entry.name);
        if let Some((row, _)) = self.get(&self.instances, partition, &row_key).await? {
            return Ok(Journaled::RecordedBefore(self.journal_value(&row)?));
        }
        let bytes = to_json(&entry.value)?;
        let (entries, total) = self.journal_size(partition, task).await?;
        if let Err(why) = journal::check_room(entries, total, bytes.len()) {
            return Ok(Journaled::Full(why));
        }
        let encoded = payload::encode(VALUE, &bytes);
        if encoded.blob.is_some() {
            return Err(StoreError::TooLarge(format!(
                "journal entry {} of {partition}: beyond one entity",
                entry.name
            )));
        }
        let (mut row, _) = super::entity(partition, &row_key, encoded);
        row.insert("Name".into(), entry.name.as_str().into());
        row.insert("Attempt".into(), entry.attempt.to_string().into());
        row.insert("Bytes".into(), bytes.len().to_string().into());
        row.insert(
            "RecordedMs".into(),
            millis(entry.recorded_at).to_string().into(),
        );
        let inserted = self
            .instances
            .insert::<_, Entity>(row)
            .map_err(failure)?
            .await;
        match inserted {
            Ok(_) => Ok(Journaled::Recorded),
            Err(e) if status(&e) == Some(409) => {
                match self.get(&self.instances, partition, &row_key).await? {
                    Some((row, _)) => Ok(Journaled::RecordedBefore(self.journal_value(&row)?)),
                    None => Err(StoreError::Unavailable(format!(
                        "journal entry {} of {partition}: there and gone",
                        entry.name
                    ))),
                }
            }
            Err(e) => Err(failure(e)),
        }
    }

    fn journal_value(&self, row: &Entity) -> Result<Value, StoreError> {
        match payload::held(row, VALUE)? {
            Held::Inline(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt("journal entry", e))
            }
            Held::Blob { .. } => Err(StoreError::Corrupt("a claim-checked journal entry".into())),
        }
    }

    /// Entries and bytes of a task's journal, reading only their sizes.
    async fn journal_size(
        &self,
        partition: &str,
        task: &JournalKey,
    ) -> Result<(usize, usize), StoreError> {
        let (from, to) = keys::journal_range(task.as_str());
        let filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            odata(partition),
            odata(&from),
            odata(&to)
        );
        let mut pages = self
            .instances
            .query()
            .filter(filter)
            .select("Bytes")
            .into_stream::<Entity>();
        let (mut entries, mut total) = (0usize, 0usize);
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            for row in &page.entities {
                entries += 1;
                total += text(row, "Bytes")?
                    .parse::<usize>()
                    .map_err(|e| corrupt("journal entry size", e))?;
            }
        }
        Ok((entries, total))
    }

    pub(super) async fn journal_rows(
        &self,
        instance: &InstanceId,
        task: &JournalKey,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let (from, to) = keys::journal_range(task.as_str());
        let filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            odata(instance.as_str()),
            odata(&from),
            odata(&to)
        );
        let rows = self
            .query(&self.instances, filter, journal::MAX_ENTRIES + 1)
            .await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                let number = |name: &str| {
                    text(row, name)?
                        .parse::<i64>()
                        .map_err(|e| corrupt("journal entry", e))
                };
                Ok(JournalEntry {
                    name: text(row, "Name")?.to_owned(),
                    value: self.journal_value(row)?,
                    attempt: u32::try_from(number("Attempt")?)
                        .map_err(|e| corrupt("journal entry attempt", e))?,
                    recorded_at: from_millis(number("RecordedMs")?)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub(super) async fn clear_journal_rows(
        &self,
        instance: &InstanceId,
    ) -> Result<u64, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
            odata(instance.as_str()),
            odata(keys::JOURNAL_START),
            odata(keys::JOURNAL_END)
        );
        let mut pages = self
            .instances
            .query()
            .filter(filter)
            .select("RowKey")
            .into_stream::<Entity>();
        let mut removed = 0u64;
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            for row in &page.entities {
                let key = text(row, "RowKey")?;
                self.delete(&self.instances, instance.as_str(), key, None)
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
