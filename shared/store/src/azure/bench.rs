//! What `legato bench` measures of the service itself, and cleanup of
//! the tables a run made.

use super::*;

impl AzureTableStore {
    /// The service's own cost, for `legato bench`: `instances` partitions,
    /// each taking `per_instance` entity-group transactions shaped like a
    /// commit (the record replaced under its ETag, a history row and an
    /// outbox row inserted), each followed by the outbox row's delete, with
    /// none of this adapter's index, chunking or claim-check work.
    pub async fn raw_entity_group_commits(
        &self,
        instances: usize,
        per_instance: usize,
        concurrency: usize,
        state_bytes: usize,
    ) -> Result<Duration, StoreError> {
        let state = "x".repeat(state_bytes);
        let run = |i: usize| {
            let state = state.clone();
            async move {
                let partition = format!("raw-{}-{i}", uuid::Uuid::new_v4().simple());
                let mut etag: Option<String> = None;
                for seq in 1..=per_instance {
                    let row = |key: &str, props: &[(&str, &str)]| {
                        let mut e = Entity::new();
                        e.insert("PartitionKey".into(), partition.as_str().into());
                        e.insert("RowKey".into(), key.into());
                        for (k, v) in props {
                            e.insert((*k).into(), (*v).into());
                        }
                        e
                    };
                    let record = row(keys::INSTANCE_ROW, &[("State", &state)]);
                    let history_key = keys::history_page(seq as u64);
                    let outbox_key = format!("o{seq:06}");
                    let batch = self
                        .instances
                        .partition_key_client(partition.as_str())
                        .transaction();
                    let batch = match &etag {
                        None => batch.insert(record),
                        Some(e) => {
                            batch.update(keys::INSTANCE_ROW, record, Some(if_match(Some(e))))
                        }
                    }
                    .and_then(|b| {
                        b.insert(row(
                            &history_key,
                            &[("Event", "{\"type\":\"task_completed\"}")],
                        ))
                    })
                    .and_then(|b| b.insert(row(&outbox_key, &[("Body", &"x".repeat(600))])))
                    .map_err(failure)?;
                    let response = batch.await.map_err(failure)?;
                    if let Some(failed) = response
                        .operation_responses
                        .iter()
                        .find(|r| !r.status_code.is_success())
                    {
                        return Err(StoreError::Unavailable(format!(
                            "raw commit: {}",
                            failed.status_code
                        )));
                    }
                    etag = response
                        .operation_responses
                        .first()
                        .and_then(|r| r.etag.as_ref())
                        .map(|e| e.to_string());
                    self.delete(&self.instances, &partition, &outbox_key, None)
                        .await?;
                }
                Ok::<(), StoreError>(())
            }
        };
        let started = Instant::now();
        stream::iter((0..instances).map(run))
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(started.elapsed())
    }

    /// Deletes this store's tables: for throwaway runs such as `legato bench`.
    pub async fn delete_tables(&self) -> Result<(), StoreError> {
        for table in [&self.instances, &self.index, &self.definitions] {
            match table.delete().await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(failure(e)),
            }
        }
        Ok(())
    }
}
