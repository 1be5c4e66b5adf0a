//! Parked dead letters, as rows of the definitions table (partition
//! `~dead-letters`, which no definition query reads): the row key is the
//! letter's sort key, so a partition scan lists them newest first; the
//! message (which may be large) is claim-checked like any payload.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::keys::odata;
use super::payload::{self, Entity, text};
use super::{AzureTableStore, entity, failure, status, to_json};
use crate::stored::{from_millis, millis, topic_from};
use crate::{DeadLetter, DeadLetterPage, DeadLetterQuery, StoreError, TenantFilter};

const PARTITION: &str = "~dead-letters";

/// The letter's fields kept in its payload (the row's properties hold what
/// queries filter on).
#[derive(Serialize, Deserialize)]
struct LetterDoc {
    message_id: String,
    routing_key: String,
    reason: String,
    delivery_count: u32,
    instance: Option<String>,
    type_name: Option<String>,
    body: String,
    parked_ms: i64,
}

/// The tenant as a property: queries cannot ask for a missing one.
fn tenant_property(tenant: Option<&str>) -> String {
    tenant.map_or_else(String::new, |t| format!("t:{t}"))
}

impl AzureTableStore {
    pub(super) async fn park_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let doc = LetterDoc {
            message_id: letter.message_id.clone(),
            routing_key: letter.routing_key.clone(),
            reason: letter.reason.clone(),
            delivery_count: letter.delivery_count,
            instance: letter.instance.clone(),
            type_name: letter.type_name.clone(),
            body: STANDARD.encode(&letter.body),
            parked_ms: millis(letter.parked_at),
        };
        let (mut row, blob) = entity(
            PARTITION,
            &letter.sort_key(),
            payload::encode("M", &to_json(&doc)?),
        );
        row.insert("Id".into(), letter.id.as_str().into());
        row.insert("Topic".into(), letter.topic.as_str().into());
        row.insert("Group".into(), letter.group.as_str().into());
        row.insert(
            "Tenant".into(),
            tenant_property(letter.tenant.as_deref()).into(),
        );
        // Parked before under another sort key (a redelivery to the keeper
        // after a crash): keep that one.
        if self.letter_row(&letter.id).await?.is_some() {
            return Ok(());
        }
        if let Some(blob) = &blob {
            self.write_blob(&self.definitions, PARTITION, blob).await?;
        }
        let inserted = self
            .definitions
            .insert::<_, Entity>(row)
            .map_err(failure)?
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(failure(e)),
        }
    }

    async fn letter_row(&self, id: &str) -> Result<Option<Entity>, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and Id eq {}",
            odata(PARTITION),
            odata(id)
        );
        Ok(self.query(&self.definitions, filter, 1).await?.pop())
    }

    async fn letter(&self, row: &Entity) -> Result<DeadLetter, StoreError> {
        let doc: LetterDoc = self.value(&self.definitions, PARTITION, row, "M").await?;
        let tenant = text(row, "Tenant")?;
        Ok(DeadLetter {
            id: text(row, "Id")?.to_owned(),
            topic: topic_from(text(row, "Topic")?)?,
            group: text(row, "Group")?.to_owned(),
            message_id: doc.message_id,
            routing_key: doc.routing_key,
            reason: doc.reason,
            delivery_count: doc.delivery_count,
            instance: doc.instance,
            type_name: doc.type_name,
            tenant: tenant.strip_prefix("t:").map(str::to_owned),
            body: STANDARD
                .decode(doc.body)
                .map_err(|e| StoreError::Corrupt(format!("dead letter body: {e}")))?,
            parked_at: from_millis(doc.parked_ms)?,
        })
    }

    pub(super) async fn letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage, StoreError> {
        let size = query.page_size();
        let mut filter = format!("PartitionKey eq {}", odata(PARTITION));
        if let Some(after) = query.after()? {
            filter.push_str(&format!(" and RowKey gt {}", odata(after)));
        }
        if let Some(topic) = query.topic {
            filter.push_str(&format!(" and Topic eq {}", odata(topic.as_str())));
        }
        if let Some(group) = &query.group {
            filter.push_str(&format!(" and Group eq {}", odata(group)));
        }
        if let TenantFilter::Only(tenant) = &query.tenant {
            filter.push_str(&format!(
                " and Tenant eq {}",
                odata(&tenant_property(tenant.as_deref()))
            ));
        }
        let rows = self.query(&self.definitions, filter, size + 1).await?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in &rows {
            letters.push(self.letter(row).await?);
        }
        Ok(DeadLetterPage::of(letters, size))
    }

    pub(super) async fn letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        match self.letter_row(id).await? {
            Some(row) => Ok(Some(self.letter(&row).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn remove_letter(&self, id: &str) -> Result<bool, StoreError> {
        let Some(row) = self.letter_row(id).await? else {
            return Ok(false);
        };
        let key = text(&row, "RowKey")?.to_owned();
        self.delete(&self.definitions, PARTITION, &key, None)
            .await?;
        if let Some(reference) = payload::held(&row, "M").ok().and_then(|h| h.reference()) {
            self.delete_blob(&self.definitions, PARTITION, &reference)
                .await;
        }
        Ok(true)
    }
}
