//! Row and claim-check access with the errors mapped: the primitives
//! every other part of the adapter is written in.

use super::*;

impl AzureTableStore {
    pub(super) async fn get(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
    ) -> Result<Option<(Entity, String)>, StoreError> {
        let response = table
            .partition_key_client(partition)
            .entity_client(row)
            .get::<Entity>()
            .await;
        match response {
            Ok(r) => Ok(Some((r.entity, r.etag.to_string()))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(failure(e)),
        }
    }

    /// Creates (`Expected::New`) or replaces at the ETag read a document
    /// row of the definitions table (a schedule, an agent). A refusal is a
    /// conflict, told by `conflict`: `exists` when the row was there
    /// already, or `changed since it was read`.
    pub(super) async fn put_document(
        &self,
        partition: &str,
        row_key: &str,
        row: Entity,
        expected: &Expected,
        exists: &str,
        conflict: impl Fn(&str) -> StoreError,
    ) -> Result<Version, StoreError> {
        let written = match expected {
            Expected::New => self
                .definitions
                .insert::<_, Entity>(row)
                .map_err(failure)?
                .await
                .map(|r| r.etag.to_string()),
            Expected::Version(Version(etag)) => self
                .definitions
                .partition_key_client(partition)
                .entity_client(row_key)
                .update(row, if_match(Some(etag)))
                .map_err(failure)?
                .await
                .map(|r| r.etag.to_string()),
        };
        match written {
            Ok(etag) => Ok(Version(etag)),
            Err(e) if status(&e) == Some(409) => Err(conflict(exists)),
            Err(e) if matches!(status(&e), Some(412 | 404)) => {
                Err(conflict("changed since it was read"))
            }
            Err(e) => Err(failure(e)),
        }
    }

    /// Every entity matching `filter`, in key order, at most `limit`.
    pub(super) async fn query(
        &self,
        table: &TableClient,
        filter: String,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError> {
        // The service returns at most 1,000 entities a page.
        let page = u32::try_from(limit.min(1_000)).unwrap_or(1_000);
        let mut pages = table
            .query()
            .filter(filter)
            .top(page)
            .into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(failure)? {
            out.extend(page.entities);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn upsert(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
        entity: Entity,
    ) -> Result<(), StoreError> {
        table
            .partition_key_client(partition)
            .entity_client(row)
            .insert_or_replace(entity)
            .map_err(failure)?
            .await
            .map_err(failure)?;
        Ok(())
    }

    /// Deletes one entity; `etag` makes it conditional. Already gone is fine.
    pub(super) async fn delete(
        &self,
        table: &TableClient,
        partition: &str,
        row: &str,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        let condition = if_match(etag);
        let result = table
            .partition_key_client(partition)
            .entity_client(row)
            .delete()
            .if_match(condition)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(failure(e)),
        }
    }

    /// Removes index entries that are allowed to fail: a leftover is found
    /// and removed by the next reader after [`INDEX_GRACE`].
    pub(super) async fn delete_quietly(&self, table: &TableClient, entries: Vec<(String, String)>) {
        let deletes: Vec<_> = entries
            .iter()
            .map(|(partition, row)| self.delete(table, partition, row, None))
            .collect();
        let results: Vec<_> = stream::iter(deletes)
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        for e in results.into_iter().filter_map(Result::err) {
            tracing::debug!("index entry left for the repair pass: {e}");
        }
    }

    pub(super) async fn write_blob(
        &self,
        table: &TableClient,
        partition: &str,
        blob: &payload::Blob,
    ) -> Result<(), StoreError> {
        let writes: Vec<_> = blob
            .rows
            .iter()
            .map(|(row, entity)| self.upsert(table, partition, row, entity.clone()))
            .collect();
        stream::iter(writes)
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub(super) async fn delete_blob(&self, table: &TableClient, partition: &str, reference: &str) {
        if let Ok(Held::Blob { id, parts }) = payload::parse_reference(reference) {
            let rows = (0..parts)
                .map(|part| (partition.to_owned(), keys::blob_row(&id, part)))
                .collect();
            self.delete_quietly(table, rows).await;
        }
    }

    /// The bytes of a stored value, fetching its blob rows if claim-checked.
    pub(super) async fn resolve(
        &self,
        table: &TableClient,
        partition: &str,
        held: Held,
    ) -> Result<Vec<u8>, StoreError> {
        match held {
            Held::Inline(bytes) => Ok(bytes),
            Held::Blob { id, parts } => {
                let (from, to) = keys::blob_range(&id);
                let rows = self
                    .query(
                        table,
                        format!(
                            "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
                            odata(partition),
                            odata(&from),
                            odata(&to)
                        ),
                        parts + 1,
                    )
                    .await?;
                payload::join_blob(&rows, parts)
            }
        }
    }

    pub(super) async fn value<T: serde::de::DeserializeOwned>(
        &self,
        table: &TableClient,
        partition: &str,
        entity: &Entity,
        name: &str,
    ) -> Result<T, StoreError> {
        let bytes = self
            .resolve(table, partition, payload::held(entity, name)?)
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(name, e))
    }

    pub(super) async fn timers_of(
        &self,
        instance: &str,
    ) -> Result<BTreeMap<String, TimerDoc>, StoreError> {
        match self
            .get(&self.instances, instance, keys::TIMERS_ROW)
            .await?
        {
            Some((entity, _)) => self.value(&self.instances, instance, &entity, "T").await,
            None => Ok(BTreeMap::new()),
        }
    }
}
