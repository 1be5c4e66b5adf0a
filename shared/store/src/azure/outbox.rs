//! Outbox groups: reading what is pending, deleting what was published.

use super::index_repair::Findings;
use super::*;

impl AzureTableStore {
    pub(super) async fn pending_outbox_rows(
        &self,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut markers = self
            .query(
                &self.index,
                format!("PartitionKey eq {}", odata(keys::OUTBOX_PARTITION)),
                MARKER_SCAN_LIMIT,
            )
            .await?;
        markers.sort_by_key(|m| {
            m.get("WrittenMs")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        });
        let mut out = Vec::new();
        let mut findings = Findings::default();
        for chunk in markers.chunks(PARALLEL_READS) {
            let reads: Vec<_> = chunk.iter().map(|marker| self.marked(marker)).collect();
            let groups: Vec<_> = stream::iter(reads)
                .buffered(PARALLEL_READS)
                .try_collect()
                .await?;
            for (marker, instance, groups) in groups {
                if groups.is_empty() {
                    // Every finished instance leaves its marker so: kept
                    // for the long confirmation of a missing truth, they
                    // would crowd the sweep. Removed past the grace, as a
                    // stale entry; the relay publishes each commit's
                    // groups itself, so only a crash of it together with
                    // a store hiding the groups could leave some to wait
                    // for the instance's next commit.
                    findings.stale(marker);
                    continue;
                }
                findings.matched(marker);
                let id = InstanceId::parse(instance).map_err(|e| corrupt("instance id", e))?;
                for group in &groups {
                    // Published by this process, its delete waiting.
                    if self.published.holds(instance, text(group, "RowKey")?) {
                        continue;
                    }
                    for message in self.group_messages(instance, group).await? {
                        out.push(OutboxEntry {
                            instance: id.clone(),
                            row: message.into_row()?,
                        });
                    }
                }
            }
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        self.repair_index(&self.index, findings).await;
        Ok(out)
    }

    pub(super) async fn delete_outbox_rows(
        &self,
        instance: &InstanceId,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let partition = instance.as_str();
        if let Some(group) = self.recent_group(partition, ids) {
            // The relay deletes what one commit wrote: no lookup needed,
            // and no request of its own unless it waits too long for the
            // instance's next commit (see `published`).
            if group.blob.is_none()
                && self
                    .published
                    .defer(partition, group.row.clone(), group.etag.clone())
            {
                return Ok(());
            }
            match self
                .delete(&self.instances, partition, &group.row, Some(&group.etag))
                .await
            {
                Ok(()) => {
                    if let Some(blob) = &group.blob {
                        self.delete_blob(&self.instances, partition, blob).await;
                    }
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        // A group changes only here, so a conflict means another relay is
        // deleting the same rows: read again and finish what is left.
        for _ in 0..5 {
            let mut conflicted = false;
            for group in self.outbox_groups(partition).await? {
                let messages = self.group_messages(partition, &group).await?;
                if !messages.iter().any(|m| ids.contains(m.id.as_str())) {
                    continue;
                }
                let row = text(&group, "RowKey")?;
                let etag = etag_of(&group);
                let old_blob = payload::held(&group, "O")?.reference();
                let remaining: Vec<MessageDoc> = messages
                    .into_iter()
                    .filter(|m| !ids.contains(m.id.as_str()))
                    .collect();
                let result = if remaining.is_empty() {
                    self.delete(&self.instances, partition, row, etag.as_deref())
                        .await
                } else {
                    let (entity, blob) =
                        entity(partition, row, payload::encode("O", &to_json(&remaining)?));
                    if let Some(blob) = &blob {
                        self.write_blob(&self.instances, partition, blob).await?;
                    }
                    let condition = if_match(etag.as_deref());
                    self.instances
                        .partition_key_client(partition)
                        .entity_client(row)
                        .update(entity, condition)
                        .map_err(failure)?
                        .await
                        .map(|_| ())
                        .map_err(failure)
                };
                match result {
                    Ok(()) => {
                        if let Some(old) = old_blob {
                            self.delete_blob(&self.instances, partition, &old).await;
                        }
                    }
                    Err(StoreError::Conflict(_)) => conflicted = true,
                    Err(e) => return Err(e),
                }
            }
            if !conflicted {
                return Ok(());
            }
        }
        Err(StoreError::Conflict(format!(
            "outbox of instance {instance} keeps changing"
        )))
    }

    pub(super) async fn outbox_groups(&self, instance: &str) -> Result<Vec<Entity>, StoreError> {
        self.query(
            &self.instances,
            format!(
                "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
                odata(instance),
                odata(keys::OUTBOX_START),
                odata(keys::OUTBOX_END)
            ),
            usize::MAX,
        )
        .await
    }

    /// The messages of an outbox group; none if the group was deleted (with
    /// its claim-checked parts) while it was being read.
    pub(super) async fn group_messages(
        &self,
        instance: &str,
        group: &Entity,
    ) -> Result<Vec<MessageDoc>, StoreError> {
        match self.value(&self.instances, instance, group, "O").await {
            Err(StoreError::NotFound(missing)) => {
                let row = text(group, "RowKey")?;
                match self.get(&self.instances, instance, row).await? {
                    None => Ok(Vec::new()),
                    Some(_) => Err(StoreError::Corrupt(missing)),
                }
            }
            other => other,
        }
    }
}
