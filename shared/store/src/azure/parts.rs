//! The parts of an instance's state ([`crate::InstanceRecord::parts`]) as
//! rows `s<name>` of its partition: written in the commit's transaction,
//! read with the instance row in one query (a row that keeps no parts
//! says so, and is read alone).

use super::*;

/// What a commit's transaction may carry inline for its parts; beyond
/// this they are claim-checked, so the transaction stays under 4 MiB with
/// the record, timers, history page and outbox group beside them.
const PARTS_INLINE_BUDGET: usize = 2_000_000;

/// The rows a commit writes for its parts (with the blob rows of those
/// claim-checked), and the row keys of the parts it removes.
pub(super) fn rows_of(id: &str, parts: &StateParts) -> Result<PartRows, StoreError> {
    let mut out = PartRows::default();
    let mut budget = PARTS_INLINE_BUDGET;
    for (name, part) in parts {
        let key = keys::part_row(name);
        let Some(value) = part else {
            out.removed.push(key);
            out.written.push((name.clone(), None));
            continue;
        };
        let bytes = to_json(value)?;
        let (row, blob) = entity(id, &key, payload::encode_within("P", &bytes, budget));
        if blob.is_none() {
            budget = budget.saturating_sub(bytes.len());
        }
        out.written
            .push((name.clone(), blob.as_ref().map(payload::Blob::reference)));
        out.blobs.extend(blob);
        out.rows.push(row);
    }
    Ok(out)
}

/// See [`rows_of`].
#[derive(Default)]
pub(super) struct PartRows {
    pub rows: Vec<Entity>,
    pub blobs: Vec<payload::Blob>,
    /// Row keys of the parts removed.
    pub removed: Vec<String>,
    /// Every part named, with its blob reference if claim-checked.
    pub written: Vec<(String, Option<String>)>,
}

impl AzureTableStore {
    /// The instance row (with its ETag) and every part, in one query.
    pub(super) async fn instance_rows(
        &self,
        id: &str,
    ) -> Result<Option<(Entity, String, StateParts)>, StoreError> {
        let rows = self
            .query(
                &self.instances,
                format!(
                    "PartitionKey eq {} and (RowKey eq {} or (RowKey ge {} and RowKey lt {}))",
                    odata(id),
                    odata(keys::INSTANCE_ROW),
                    odata(keys::PARTS_START),
                    odata(keys::PARTS_END)
                ),
                usize::MAX,
            )
            .await?;
        let mut instance = None;
        let mut parts = StateParts::new();
        let mut blobs = HashMap::new();
        for row in rows {
            let key = text(&row, "RowKey")?;
            if key == keys::INSTANCE_ROW {
                let etag = etag_of(&row)
                    .ok_or_else(|| StoreError::Corrupt(format!("instance {id}: no ETag")))?;
                instance = Some((row, etag));
                continue;
            }
            let name = keys::part_name(key)
                .ok_or_else(|| StoreError::Corrupt(format!("instance {id}: part row {key}")))?;
            if let Some(reference) = payload::reference(&row, "P") {
                blobs.insert(name.clone(), reference.to_owned());
            }
            let value = self.value(&self.instances, id, &row, "P").await?;
            parts.insert(name, Some(value));
        }
        self.remember_part_blobs(id, |known| *known = blobs);
        Ok(instance.map(|(row, etag)| (row, etag, parts)))
    }

    /// After a commit landed: deletes the blobs of the parts it replaced or
    /// removed (those this process knows of; any other stays until purge)
    /// and remembers the ones it wrote.
    pub(super) async fn settle_part_blobs(&self, id: &str, written: &[(String, Option<String>)]) {
        let mut superseded = Vec::new();
        self.remember_part_blobs(id, |known| {
            for (name, reference) in written {
                let old = match reference {
                    Some(reference) => known.insert(name.clone(), reference.clone()),
                    None => known.remove(name),
                };
                superseded.extend(old.filter(|old| Some(old) != reference.as_ref()));
            }
        });
        for reference in superseded {
            self.delete_blob(&self.instances, id, &reference).await;
        }
    }

    pub(super) fn remember_part_blobs(
        &self,
        id: &str,
        change: impl FnOnce(&mut HashMap<String, String>),
    ) {
        if let Ok(mut all) = self.part_blobs.lock() {
            if all.len() >= MARKER_CACHE_LIMIT && !all.contains_key(id) {
                all.clear();
            }
            let known = all.entry(id.to_owned()).or_default();
            change(known);
            if known.is_empty() {
                all.remove(id);
            }
        }
    }
}
