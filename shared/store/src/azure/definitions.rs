//! Workflow definitions: one partition per name, one row per version.

use super::*;

impl AzureTableStore {
    /// A definition's version rows, oldest first (row keys sort by version).
    async fn version_rows(&self, name: &WorkflowName) -> Result<Vec<Entity>, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey ge 'v' and RowKey lt 'w'",
            odata(name.as_str())
        );
        self.query(&self.definitions, filter, usize::MAX).await
    }

    pub(super) async fn put_definition_row(
        &self,
        definition: &DefinitionRecord,
    ) -> Result<(), StoreError> {
        let name = definition.name.as_str();
        let (mut row, blob) = entity(
            name,
            &keys::definition_version(definition.version),
            payload::encode("B", &to_json(&definition.body)?),
        );
        row.insert("Hash".into(), definition.hash.as_str().into());
        row.insert(
            "RegisteredMs".into(),
            millis(definition.registered_at).to_string().into(),
        );
        if let Some(blob) = &blob {
            self.write_blob(&self.definitions, name, blob).await?;
        }
        let inserted = self
            .definitions
            .insert::<_, Entity>(row)
            .map_err(failure)?
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => {
                let existing = self
                    .get_definition(&definition.name, Some(definition.version))
                    .await?;
                match existing {
                    Some(d) if d.hash == definition.hash => Ok(()),
                    _ => Err(StoreError::Conflict(format!(
                        "{name} version {} is already registered with different content",
                        definition.version
                    ))),
                }
            }
            Err(e) => Err(failure(e)),
        }
    }

    pub(super) async fn get_definition_row(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        let row = match version {
            Some(v) => self
                .get(
                    &self.definitions,
                    name.as_str(),
                    &keys::definition_version(v),
                )
                .await?
                .map(|(row, _)| row),
            None => self.version_rows(name).await?.pop(),
        };
        match row {
            Some(row) => Ok(Some(self.definition(&row).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn definition_version_list(
        &self,
        name: &WorkflowName,
    ) -> Result<Vec<u32>, StoreError> {
        let rows = self.version_rows(name).await?;
        let mut versions = rows
            .iter()
            .map(|row| {
                let key = text(row, "RowKey")?;
                keys::version_of_definition(key)
                    .ok_or_else(|| StoreError::Corrupt(format!("definition row key {key:?}")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        versions.reverse();
        Ok(versions)
    }

    pub(super) async fn latest_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        let rows = self
            .query(
                &self.definitions,
                "RowKey ge 'v' and RowKey lt 'w'".to_owned(),
                usize::MAX,
            )
            .await?;
        // Rows come by name, then by version: the last of each name wins.
        let mut latest: BTreeMap<String, Entity> = BTreeMap::new();
        for row in rows {
            latest.insert(text(&row, "PartitionKey")?.to_owned(), row);
        }
        let reads: Vec<_> = latest.values().map(|row| self.definition(row)).collect();
        stream::iter(reads)
            .buffered(PARALLEL_READS)
            .try_collect()
            .await
    }

    pub(super) async fn definition(&self, row: &Entity) -> Result<DefinitionRecord, StoreError> {
        let name = text(row, "PartitionKey")?;
        let version = text(row, "RowKey")?
            .trim_start_matches('v')
            .parse()
            .map_err(|e| corrupt("definition version", e))?;
        Ok(DefinitionRecord {
            name: WorkflowName::parse(name).map_err(|e| corrupt("workflow", e))?,
            version,
            hash: text(row, "Hash")?.to_owned(),
            body: self.value(&self.definitions, name, row, "B").await?,
            registered_at: from_millis(
                text(row, "RegisteredMs")?
                    .parse()
                    .map_err(|e| corrupt("registered_at", e))?,
            )?,
        })
    }
}
