//! Reading through the index: pages of instances, due timers.

use super::index_repair::Findings;
use super::*;

impl AzureTableStore {
    pub(super) async fn list_page(
        &self,
        query: &InstanceQuery,
    ) -> Result<InstancePage, StoreError> {
        let top = if query.top == 0 { 100 } else { query.top };
        let position = query
            .continuation
            .as_deref()
            .map(token::decode)
            .transpose()?;
        let mut filter = format!("PartitionKey eq {}", odata(keys::LIST_PARTITION));
        let mut key_bound = |op: &str, key: String| {
            filter.push_str(&format!(" and RowKey {op} {}", odata(&key)));
        };
        if let Some(p) = &position {
            key_bound("gt", keys::list_entry(p.c, &p.i));
        }
        if let Some(to) = query.created_to {
            key_bound("ge", keys::list_created_before(millis(to)));
        }
        if let Some(from) = query.created_from {
            key_bound("lt", keys::list_created_before(millis(from)));
        }
        if let Some(workflow) = &query.workflow {
            filter.push_str(&format!(" and Workflow eq {}", odata(workflow.as_str())));
        }
        if let TenantFilter::Only(Some(tenant)) = &query.tenant {
            filter.push_str(&format!(" and Tenant eq {}", odata(tenant)));
        }
        // Entries without a tenant have no Tenant property, which OData
        // cannot ask for: those are filtered after reading, like status.
        let filtered_after = query.status.is_some() || query.tenant == TenantFilter::Only(None);
        // Without such a filter almost every entry is a match (only
        // entries of lost races are not): read little more than a page.
        let scan_limit = if filtered_after {
            LIST_SCAN_LIMIT
        } else {
            (top + 16).min(LIST_SCAN_LIMIT)
        };
        let candidates = self.query(&self.index, filter, scan_limit + 1).await?;
        let more_candidates = candidates.len() > scan_limit;
        let mut items = Vec::new();
        let mut examined = 0;
        let mut last_examined = None;
        let mut findings = Findings::default();
        for chunk in candidates[..candidates.len().min(scan_limit)].chunks(top + 1) {
            let reads: Vec<_> = chunk.iter().map(|entry| self.listed(entry)).collect();
            let found: Vec<_> = stream::iter(reads)
                .buffered(PARALLEL_READS)
                .try_collect()
                .await?;
            for (entry, summary) in found {
                examined += 1;
                last_examined = Some(entry);
                let created: i64 = text(entry, "CreatedMs")?.parse().unwrap_or(-1);
                match summary {
                    Some(s) if millis(s.created_at) == created => {
                        findings.matched(entry);
                        if query.status.is_none_or(|status| s.status == status)
                            && query.tenant.admits(s.tenant.as_deref())
                        {
                            items.push(s)
                        }
                    }
                    Some(_) => findings.stale(entry),
                    None => findings.absent(entry),
                }
                if items.len() > top {
                    break;
                }
            }
            if items.len() > top {
                break;
            }
        }
        self.repair_index(&self.index, findings).await;
        let continuation = if items.len() > top {
            items.truncate(top);
            items.last().map(|last| ListPosition {
                c: millis(last.created_at),
                i: last.id.to_string(),
            })
        } else if more_candidates && examined == scan_limit {
            // A sparse match: hand back a partial page and where to go on.
            last_examined
                .map(|entry| -> Result<ListPosition, StoreError> {
                    Ok(ListPosition {
                        c: text(entry, "CreatedMs")?.parse().unwrap_or(0),
                        i: text(entry, "Instance")?.to_owned(),
                    })
                })
                .transpose()?
        } else {
            None
        };
        Ok(InstancePage {
            items,
            continuation: continuation.as_ref().map(token::encode),
        })
    }

    pub(super) async fn due_timer_rows(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError> {
        let filter = format!(
            "PartitionKey eq {} and RowKey lt {}",
            odata(keys::TIMER_PARTITION),
            odata(&keys::timers_due_before(millis(now)))
        );
        let entries = self
            .query(&self.index, filter, limit.saturating_mul(2).max(64))
            .await?;
        let instances: HashSet<&str> = entries
            .iter()
            .filter_map(|e| e.get("Instance").and_then(Value::as_str))
            .collect();
        let reads: Vec<_> = instances
            .into_iter()
            .map(|instance| self.timers_by_instance(instance))
            .collect();
        let timers: HashMap<&str, BTreeMap<String, TimerDoc>> = stream::iter(reads)
            .buffer_unordered(PARALLEL_READS)
            .try_collect()
            .await?;
        let mut due = Vec::new();
        let mut findings = Findings::default();
        for entry in &entries {
            let instance = text(entry, "Instance")?;
            let timer = text(entry, "Timer")?;
            let due_ms: i64 = text(entry, "DueMs")?.parse().unwrap_or(-1);
            match timers.get(instance).and_then(|t| t.get(timer)) {
                Some(doc) if doc.due_ms == due_ms && due.len() < limit => {
                    findings.matched(entry);
                    due.push(TimerRow {
                        instance: InstanceId::parse(instance)
                            .map_err(|e| corrupt("instance id", e))?,
                        id: timer.to_owned(),
                        due_at: from_millis(due_ms)?,
                        payload: doc.payload.clone(),
                    });
                }
                Some(doc) if doc.due_ms == due_ms => findings.matched(entry),
                Some(_) => findings.stale(entry),
                None => findings.absent(entry),
            }
        }
        self.repair_index(&self.index, findings).await;
        Ok(due)
    }

    /// A listing entry with the summary of the instance it names, if any.
    pub(super) async fn listed<'e>(
        &self,
        entry: &'e Entity,
    ) -> Result<(&'e Entity, Option<InstanceSummary>), StoreError> {
        let instance = text(entry, "Instance")?;
        Ok((entry, self.summary_of(instance).await?))
    }

    pub(super) async fn timers_by_instance<'i>(
        &self,
        instance: &'i str,
    ) -> Result<(&'i str, BTreeMap<String, TimerDoc>), StoreError> {
        Ok((instance, self.timers_of(instance).await?))
    }

    /// An outbox marker with the groups its instance holds.
    pub(super) async fn marked<'m>(
        &self,
        marker: &'m Entity,
    ) -> Result<(&'m Entity, &'m str, Vec<Entity>), StoreError> {
        let instance = text(marker, "RowKey")?;
        Ok((marker, instance, self.outbox_groups(instance).await?))
    }
}
