//! Purging an instance: every row of its partition and its index entries.

use super::*;

impl AzureTableStore {
    /// Instance rows of the partitions in the descendants' key range: a
    /// range scan over partition keys, reading only the keys.
    pub(super) async fn descendant_ids(
        &self,
        parent: &InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        let (from, to) = crate::descendant_range(parent);
        let filter = format!(
            "PartitionKey ge {} and PartitionKey lt {} and RowKey eq {}",
            odata(&from),
            odata(&to),
            odata(keys::INSTANCE_ROW)
        );
        let page = u32::try_from(limit.clamp(1, 1_000)).unwrap_or(1_000);
        let mut pages = self
            .instances
            .query()
            .filter(filter)
            .select("PartitionKey")
            .top(page)
            .into_stream::<Entity>();
        let mut ids = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            for entity in &page.entities {
                let id = text(entity, "PartitionKey")?;
                ids.push(InstanceId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
            if ids.len() >= limit {
                ids.truncate(limit);
                break;
            }
        }
        Ok(ids)
    }

    pub(super) async fn purge_rows(&self, id: &InstanceId) -> Result<bool, StoreError> {
        self.published.forget(id.as_str());
        // A transaction fails whole when one of its rows is already gone
        // (the outbox relay deleting what it published, a moment before):
        // then nothing of it was deleted, so read the rows again and go on.
        let mut found = false;
        let mut index_entries = vec![(keys::OUTBOX_PARTITION.to_owned(), id.to_string())];
        for _ in 0..PURGE_ROUNDS {
            let rows = self
                .query(
                    &self.instances,
                    format!("PartitionKey eq {}", odata(id.as_str())),
                    usize::MAX,
                )
                .await?;
            if rows.is_empty() {
                self.delete_quietly(&self.index, index_entries).await;
                return Ok(found);
            }
            found = true;
            index_entries.extend(self.index_entries_of(id, &rows).await?);
            for chunk in rows.chunks(MAX_BATCH) {
                let mut batch = self
                    .instances
                    .partition_key_client(id.as_str())
                    .transaction();
                for row in chunk {
                    batch = batch.delete(text(row, "RowKey")?, None).map_err(failure)?;
                }
                let response = batch.await.map_err(failure)?;
                if let Some(failed) = response
                    .operation_responses
                    .iter()
                    .find(|r| !r.status_code.is_success() && r.status_code as u16 != 404)
                {
                    return Err(StoreError::Unavailable(format!(
                        "purge of instance {id}: status {}",
                        failed.status_code
                    )));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "purge of instance {id}: its rows kept changing"
        )))
    }

    /// The index entries that point at an instance's rows.
    pub(super) async fn index_entries_of(
        &self,
        id: &InstanceId,
        rows: &[Entity],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut entries = Vec::new();
        for row in rows {
            match row.get("RowKey").and_then(Value::as_str) {
                Some(keys::INSTANCE_ROW) => {
                    let s = summary_from(row)?;
                    entries.push((
                        keys::LIST_PARTITION.to_owned(),
                        keys::list_entry(millis(s.created_at), id.as_str()),
                    ));
                }
                Some(keys::TIMERS_ROW) => {
                    let timers: BTreeMap<String, TimerDoc> =
                        self.value(&self.instances, id.as_str(), row, "T").await?;
                    entries.extend(timers.iter().map(|(timer, doc)| {
                        (
                            keys::TIMER_PARTITION.to_owned(),
                            keys::timer_entry(doc.due_ms, id.as_str(), timer),
                        )
                    }));
                }
                _ => {}
            }
        }
        Ok(entries)
    }
}
