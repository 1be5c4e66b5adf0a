//! One commit as one entity-group transaction: the rows it writes, the
//! index entries written before it, and what the process remembers of it.

use super::*;

impl AzureTableStore {
    pub(super) async fn commit_batch(&self, commit: Commit) -> Result<Version, StoreError> {
        let id = commit.record.summary.id.as_str().to_owned();
        let now = now_ms();
        let replaced = match &commit.expected {
            Expected::New => None,
            Expected::Version(v) => Some(RecordVersion::decode(v)),
        };
        let expected_etag = replaced.as_ref().map(|r| r.etag.clone());
        let old_state_ref = replaced.as_ref().and_then(|r| r.state_ref.clone());
        // A state once in parts stays in parts (`records::parts`), and a
        // commit names only the parts it changes.
        let keeps_parts = replaced.as_ref().is_some_and(|r| r.parts)
            || commit.record.parts.values().any(Option::is_some);
        let mut blobs = Vec::new();
        let mut ops: Vec<Entity> = Vec::new();

        let (mut record_row, state_blob) = entity(
            &id,
            keys::INSTANCE_ROW,
            payload::encode("S", commit.record.state.as_str().as_bytes()),
        );
        let state_ref = state_blob.as_ref().map(payload::Blob::reference);
        blobs.extend(state_blob);
        let summary = serde_json::to_string(&summary_doc(&commit.record.summary))
            .map_err(|e| corrupt("summary", e))?;
        record_row.insert("Summary".into(), summary.into());
        record_row.insert(PARTS_FLAG.into(), keeps_parts.into());
        ops.push(record_row);
        ops.extend(commit.claims.iter().map(|message| {
            let mut claim = Entity::new();
            claim.insert("PartitionKey".into(), id.as_str().into());
            claim.insert("RowKey".into(), keys::claim_row(message).into());
            claim
        }));
        let part_rows = parts::rows_of(&id, &commit.record.parts)?;
        ops.extend(part_rows.rows);
        blobs.extend(part_rows.blobs);

        let mut removed_timers = Vec::new();
        if !commit.add_timers.is_empty() || !commit.remove_timers.is_empty() {
            let mut timers = match commit.expected {
                Expected::New => BTreeMap::new(),
                Expected::Version(_) => self.timers_of(&id).await?,
            };
            for timer in &commit.remove_timers {
                if let Some(doc) = timers.remove(timer) {
                    removed_timers.push((timer.clone(), doc.due_ms));
                }
            }
            for timer in &commit.add_timers {
                timers.insert(
                    timer.id.clone(),
                    TimerDoc {
                        due_ms: millis(timer.due_at),
                        payload: timer.payload.clone(),
                    },
                );
            }
            removed_timers
                .retain(|(timer, due)| timers.get(timer).is_none_or(|kept| kept.due_ms != *due));
            let (row, blob) = entity(
                &id,
                keys::TIMERS_ROW,
                payload::encode("T", &to_json(&timers)?),
            );
            blobs.extend(blob);
            ops.push(row);
        }

        if let (Some(first), Some(last)) = (commit.history.first(), commit.history.last()) {
            let events: Vec<EventDoc> = commit
                .history
                .iter()
                .map(|h| EventDoc {
                    seq: h.seq,
                    at_ms: millis(h.at),
                    event: h.event.clone(),
                    position: h.position,
                    progress: h.progress.clone(),
                })
                .collect();
            let (mut row, blob) = entity(
                &id,
                &keys::history_page(last.seq),
                payload::encode("H", &to_json(&events)?),
            );
            row.insert("First".into(), first.seq.to_string().into());
            // The page's last position, so a resuming watcher's read skips
            // the pages it saw.
            row.insert("Position".into(), keys::position(last.position).into());
            blobs.extend(blob);
            ops.push(row);
        }

        let mut outbox_group = None;
        if !commit.outbox.is_empty() {
            let messages: Vec<MessageDoc> =
                commit.outbox.iter().map(MessageDoc::from_row).collect();
            let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
            let key = keys::outbox_group(now, nonce);
            let (row, blob) = entity(&id, &key, payload::encode("O", &to_json(&messages)?));
            outbox_group = Some((
                ops.len(),
                RecentGroup {
                    row: key,
                    etag: String::new(),
                    ids: commit.outbox.iter().map(|m| m.id.clone()).collect(),
                    blob: blob.as_ref().map(payload::Blob::reference),
                },
            ));
            blobs.extend(blob);
            ops.push(row);
        }

        if ops.len() > MAX_BATCH {
            return Err(StoreError::TooLarge(format!(
                "commit of instance {id}: {} rows, and a transaction holds {MAX_BATCH}",
                ops.len()
            )));
        }
        // Everything the batch points at, and every index entry that makes
        // it findable, exists before the batch can land.
        let (blob_writes, index_writes) = tokio::join!(
            futures::future::try_join_all(blobs.iter().map(|blob| self.write_blob(
                &self.instances,
                &id,
                blob
            ))),
            self.write_index_before(&commit, now)
        );
        blob_writes?;
        index_writes?;

        // The groups this instance's earlier commits published go in this
        // transaction (see `published`). Should the batch fail, it may be
        // for one of them (already swept): the flush deletes them instead,
        // and a refused batch is tried again without them.
        let piggyback = self
            .published
            .take(&id, MAX_BATCH.saturating_sub(ops.len()));
        let (mut outcome, mut refused) = self
            .send_batch(&id, &ops, expected_etag.as_deref(), &piggyback)
            .await;
        if outcome.is_err() && !piggyback.is_empty() {
            self.published.put_back(&id, piggyback);
            if refused {
                (outcome, refused) = self
                    .send_batch(&id, &ops, expected_etag.as_deref(), &[])
                    .await;
            }
        }
        let etags = match outcome {
            Ok(etags) => etags,
            Err(e) => {
                if refused {
                    // The claim-checked values of a commit that did not land.
                    for blob in &blobs {
                        self.delete_blob(&self.instances, &id, &blob.reference())
                            .await;
                    }
                }
                if matches!(e, StoreError::Conflict(_))
                    && let Some(message) = self.claimed_before(&id, &commit.claims).await?
                {
                    return Err(StoreError::Claimed(message));
                }
                return Err(e);
            }
        };
        let etag = match etags.first().cloned().flatten() {
            Some(etag) => etag,
            None => self
                .get(&self.instances, &id, keys::INSTANCE_ROW)
                .await?
                .map(|(_, etag)| etag)
                .ok_or_else(|| StoreError::Unavailable(format!("instance {id} vanished")))?,
        };

        if let Some((op, mut group)) = outbox_group
            && let Some(etag) = etags.get(op).cloned().flatten()
        {
            group.etag = etag;
            self.remember_group(&id, group);
        }
        if let Some(old) = old_state_ref.filter(|old| Some(old) != state_ref.as_ref()) {
            self.delete_blob(&self.instances, &id, &old).await;
        }
        let stale: Vec<_> = removed_timers
            .iter()
            .map(|(timer, due)| {
                (
                    keys::TIMER_PARTITION.to_owned(),
                    keys::timer_entry(*due, &id, timer),
                )
            })
            .collect();
        self.delete_quietly(&self.index, stale).await;
        // Parts no state reads any more (see `legato_service::records::parts`):
        // garbage, so a failed delete costs nothing but space until purge.
        let removed_parts = part_rows
            .removed
            .into_iter()
            .map(|row| (id.clone(), row))
            .collect();
        self.delete_quietly(&self.instances, removed_parts).await;
        self.settle_part_blobs(&id, &part_rows.written).await;
        Ok(RecordVersion {
            etag,
            state_ref,
            parts: keeps_parts,
        }
        .encode())
    }

    /// The first of `claims` an earlier commit made. A refused transaction
    /// tells only the failing operation's status, not which one failed, so
    /// a conflict of a commit that claims ids asks for them (rarely: a
    /// redelivery).
    async fn claimed_before(
        &self,
        id: &str,
        claims: &[String],
    ) -> Result<Option<String>, StoreError> {
        for message in claims {
            if self
                .get(&self.instances, id, &keys::claim_row(message))
                .await?
                .is_some()
            {
                return Ok(Some(message.clone()));
            }
        }
        Ok(None)
    }

    /// Sends one commit's rows (the instance row first, conditional on
    /// `expected_etag`) and deletes `published` groups, as one
    /// transaction, answering each operation's ETag. The flag tells whether
    /// the batch surely did not land: an answer says so; a timeout or a
    /// dropped connection leaves it open.
    async fn send_batch(
        &self,
        id: &str,
        ops: &[Entity],
        expected_etag: Option<&str>,
        published: &[published::PublishedGroup],
    ) -> (Result<Vec<Option<String>>, StoreError>, bool) {
        let mut batch = self.instances.partition_key_client(id).transaction();
        for (n, row) in ops.iter().enumerate() {
            let key = match text(row, "RowKey") {
                Ok(key) => key.to_owned(),
                Err(e) => return (Err(e), true),
            };
            let added = match (n, expected_etag) {
                (0, Some(etag)) => batch.update(key, row, Some(if_match(Some(etag)))),
                (0, None) => batch.insert(row),
                (_, _) if key.starts_with(['s', 't']) => batch.insert_or_replace(key, row),
                _ => batch.insert(row),
            };
            batch = match added {
                Ok(batch) => batch,
                Err(e) => return (Err(failure(e)), true),
            };
        }
        for group in published {
            batch = match batch.delete(group.row.clone(), Some(if_match(Some(&group.etag)))) {
                Ok(batch) => batch,
                Err(e) => return (Err(failure(e)), true),
            };
        }
        match batch.await {
            Err(e) => {
                let refused = e.as_http_error().is_some();
                (Err(failure(e)), refused)
            }
            Ok(response) => match response
                .operation_responses
                .iter()
                .find(|r| !r.status_code.is_success())
            {
                // Each operation's ETag, in order.
                None => (
                    Ok(response
                        .operation_responses
                        .iter()
                        .map(|r| r.etag.as_ref().map(ToString::to_string))
                        .collect()),
                    false,
                ),
                Some(failed) => (
                    Err(match failed.status_code as u16 {
                        409 | 412 => StoreError::Conflict(format!(
                            "instance {id} changed since it was loaded ({})",
                            failed.status_code
                        )),
                        404 => StoreError::NotFound(format!("instance {id}")),
                        413 => StoreError::TooLarge(format!("commit of instance {id}")),
                        other => StoreError::Unavailable(format!(
                            "commit of instance {id}: status {other}"
                        )),
                    }),
                    true,
                ),
            },
        }
    }

    /// The index entries a commit needs before it lands.
    pub(super) async fn write_index_before(
        &self,
        commit: &Commit,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let summary = &commit.record.summary;
        let id = summary.id.as_str();
        let mut writes: Vec<(&str, String, Entity)> = Vec::new();
        if commit.expected == Expected::New {
            let mut entry = Entity::new();
            entry.insert("Instance".into(), id.into());
            entry.insert("Workflow".into(), summary.workflow.as_str().into());
            if let Some(tenant) = &summary.tenant {
                entry.insert("Tenant".into(), tenant.as_str().into());
            }
            entry.insert(
                "CreatedMs".into(),
                millis(summary.created_at).to_string().into(),
            );
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((
                keys::LIST_PARTITION,
                keys::list_entry(millis(summary.created_at), id),
                entry,
            ));
        }
        for timer in &commit.add_timers {
            let mut entry = Entity::new();
            entry.insert("Instance".into(), id.into());
            entry.insert("Timer".into(), timer.id.as_str().into());
            entry.insert("DueMs".into(), millis(timer.due_at).to_string().into());
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((
                keys::TIMER_PARTITION,
                keys::timer_entry(millis(timer.due_at), id, &timer.id),
                entry,
            ));
        }
        let marker = !commit.outbox.is_empty() && !self.marker_is_fresh(id);
        if marker {
            let mut entry = Entity::new();
            entry.insert("WrittenMs".into(), now_ms.to_string().into());
            writes.push((keys::OUTBOX_PARTITION, id.to_owned(), entry));
        }
        let upserts: Vec<_> = writes
            .iter()
            .map(|(partition, row, entity)| {
                self.upsert(&self.index, partition, row, entity.clone())
            })
            .collect();
        stream::iter(upserts)
            .buffer_unordered(PARALLEL_READS)
            .try_collect::<Vec<()>>()
            .await?;
        if marker {
            self.remember_marker(id);
        }
        Ok(())
    }

    pub(super) fn remember_group(&self, instance: &str, group: RecentGroup) {
        if let Ok(mut groups) = self.recent_groups.lock() {
            // Groups the relay never deleted here (it crashed, or another
            // replica swept them) must not pile up.
            if groups.len() >= MARKER_CACHE_LIMIT {
                groups.clear();
            }
            groups.insert(instance.to_owned(), group);
        }
    }

    /// The group this process committed for `instance`, if `ids` are
    /// exactly its messages.
    pub(super) fn recent_group(&self, instance: &str, ids: &[String]) -> Option<RecentGroup> {
        let mut groups = self.recent_groups.lock().ok()?;
        let matches = groups
            .get(instance)
            .is_some_and(|g| g.ids.len() == ids.len() && ids.iter().all(|id| g.ids.contains(id)));
        matches.then(|| groups.remove(instance)).flatten()
    }

    pub(super) fn marker_is_fresh(&self, instance: &str) -> bool {
        self.markers
            .lock()
            .ok()
            .and_then(|m| m.get(instance).copied())
            .is_some_and(|at| at.elapsed() < MARKER_REFRESH)
    }

    pub(super) fn remember_marker(&self, instance: &str) {
        if let Ok(mut markers) = self.markers.lock() {
            if markers.len() >= MARKER_CACHE_LIMIT {
                markers.retain(|_, at| at.elapsed() < MARKER_REFRESH);
            }
            markers.insert(instance.to_owned(), Instant::now());
        }
    }
}
