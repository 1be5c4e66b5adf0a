//! The SQLite store behind a smaller transaction: a commit recording more
//! history rows than the limit is refused as too large, as Table Storage
//! refuses a transaction of more than 100 operations. Neither real store
//! refuses a batch of messages that it takes one by one at the sizes a
//! test can reach, so this one stands in for that store to test the
//! applier's fallback.
#![allow(clippy::unwrap_used)]
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use legato_contracts::{InstanceId, ScheduleName, WorkflowName};
use legato_store::{
    Commit, DeadLetter, DeadLetterPage, DeadLetterQuery, DefinitionRecord, Expected, HistoryFrom,
    HistoryRow, InstancePage, InstanceQuery, OutboxEntry, ScheduleRecord, SqliteStore, Store,
    StoreError, StoredInstance, StoredSchedule, TenantFilter, TimerRow, Version,
};
use time::OffsetDateTime;

pub(super) struct LimitedStore {
    inner: SqliteStore,
    /// History rows one commit may record.
    limit: AtomicUsize,
    /// Commits refused so far.
    pub refused: AtomicUsize,
}

impl LimitedStore {
    pub fn new(limit: usize) -> Self {
        Self {
            inner: SqliteStore::in_memory().unwrap(),
            limit: AtomicUsize::new(limit),
            refused: AtomicUsize::new(0),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for LimitedStore {
    async fn load(&self, id: &InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        self.inner.load(id).await
    }

    async fn commit(&self, commit: Commit) -> Result<Version, StoreError> {
        let limit = self.limit.load(Ordering::SeqCst);
        if commit.history.len() > limit {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::TooLarge(format!(
                "{} history rows, and a transaction holds {limit}",
                commit.history.len()
            )));
        }
        self.inner.commit(commit).await
    }

    async fn history(
        &self,
        id: &InstanceId,
        from: HistoryFrom,
        limit: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        self.inner.history(id, from, limit).await
    }

    async fn list(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.inner.list(query).await
    }

    async fn purge(&self, id: &InstanceId) -> Result<bool, StoreError> {
        self.inner.purge(id).await
    }

    async fn descendants(
        &self,
        parent: &InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceId>, StoreError> {
        self.inner.descendants(parent, limit).await
    }

    async fn due_timers(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<TimerRow>, StoreError> {
        self.inner.due_timers(now, limit).await
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.pending_outbox(limit).await
    }

    async fn delete_outbox(&self, instance: &InstanceId, ids: &[String]) -> Result<(), StoreError> {
        self.inner.delete_outbox(instance, ids).await
    }

    async fn put_definition(&self, definition: &DefinitionRecord) -> Result<(), StoreError> {
        self.inner.put_definition(definition).await
    }

    async fn get_definition(
        &self,
        name: &WorkflowName,
        version: Option<u32>,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        self.inner.get_definition(name, version).await
    }

    async fn list_definitions(&self) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.inner.list_definitions().await
    }

    async fn definition_versions(&self, name: &WorkflowName) -> Result<Vec<u32>, StoreError> {
        self.inner.definition_versions(name).await
    }

    async fn park_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.inner.park_dead_letter(letter).await
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<DeadLetterPage, StoreError> {
        self.inner.dead_letters(query).await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.dead_letter(id).await
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.remove_dead_letter(id).await
    }

    async fn put_agent(
        &self,
        record: &legato_store::AgentRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.inner.put_agent(record, expected).await
    }

    async fn get_agent(
        &self,
        name: &legato_contracts::AgentName,
    ) -> Result<Option<legato_store::StoredAgent>, StoreError> {
        self.inner.get_agent(name).await
    }

    async fn list_agents(&self) -> Result<Vec<legato_store::StoredAgent>, StoreError> {
        self.inner.list_agents().await
    }

    async fn delete_agent(&self, name: &legato_contracts::AgentName) -> Result<bool, StoreError> {
        self.inner.delete_agent(name).await
    }

    async fn put_entity_type(
        &self,
        record: &legato_store::EntityTypeRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.inner.put_entity_type(record, expected).await
    }

    async fn get_entity_type(
        &self,
        tenant: Option<&legato_contracts::TenantId>,
        name: &legato_contracts::EntityType,
    ) -> Result<Option<legato_store::StoredEntityType>, StoreError> {
        self.inner.get_entity_type(tenant, name).await
    }

    async fn list_entity_types(&self) -> Result<Vec<legato_store::StoredEntityType>, StoreError> {
        self.inner.list_entity_types().await
    }

    async fn delete_entity_type(
        &self,
        tenant: Option<&legato_contracts::TenantId>,
        name: &legato_contracts::EntityType,
    ) -> Result<bool, StoreError> {
        self.inner.delete_entity_type(tenant, name).await
    }

    async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: &Expected,
    ) -> Result<Version, StoreError> {
        self.inner.put_schedule(record, expected).await
    }

    async fn get_schedule(
        &self,
        name: &ScheduleName,
    ) -> Result<Option<StoredSchedule>, StoreError> {
        self.inner.get_schedule(name).await
    }

    async fn list_schedules(
        &self,
        tenant: &TenantFilter,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        self.inner.list_schedules(tenant).await
    }

    async fn due_schedules(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        self.inner.due_schedules(now, limit).await
    }

    async fn delete_schedule(
        &self,
        name: &ScheduleName,
        expected: Option<&Version>,
    ) -> Result<bool, StoreError> {
        self.inner.delete_schedule(name, expected).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.inner.acquire_lease(name, holder, ttl).await
    }

    async fn put_report(
        &self,
        subject: &str,
        replica: &str,
        body: &serde_json::Value,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.inner.put_report(subject, replica, body, ttl).await
    }

    async fn reports(&self) -> Result<Vec<legato_store::ReplicaReport>, StoreError> {
        self.inner.reports().await
    }

    async fn record_journal(
        &self,
        instance: &InstanceId,
        task: &legato_contracts::journal::JournalKey,
        entry: &legato_store::JournalEntry,
    ) -> Result<legato_store::Journaled, StoreError> {
        self.inner.record_journal(instance, task, entry).await
    }

    async fn journal(
        &self,
        instance: &InstanceId,
        task: &legato_contracts::journal::JournalKey,
    ) -> Result<Vec<legato_store::JournalEntry>, StoreError> {
        self.inner.journal(instance, task).await
    }

    async fn clear_journal(&self, instance: &InstanceId) -> Result<u64, StoreError> {
        self.inner.clear_journal(instance).await
    }

    async fn load_entity(
        &self,
        key: &legato_store::EntityKey,
    ) -> Result<Option<legato_store::StoredEntity>, StoreError> {
        self.inner.load_entity(key).await
    }

    async fn commit_entity(
        &self,
        commit: legato_store::EntityCommit,
    ) -> Result<Version, StoreError> {
        self.inner.commit_entity(commit).await
    }

    async fn entity_answer(
        &self,
        key: &legato_store::EntityKey,
        id: &str,
    ) -> Result<Option<(u64, legato_store::EntityAnswer)>, StoreError> {
        self.inner.entity_answer(key, id).await
    }

    async fn entity_operations(
        &self,
        key: &legato_store::EntityKey,
        limit: usize,
    ) -> Result<Vec<legato_store::EntityOperationRow>, StoreError> {
        self.inner.entity_operations(key, limit).await
    }

    async fn list_entities(
        &self,
        query: &legato_store::EntityQuery,
    ) -> Result<legato_store::EntityPage, StoreError> {
        self.inner.list_entities(query).await
    }

    async fn delete_entity(&self, key: &legato_store::EntityKey) -> Result<bool, StoreError> {
        self.inner.delete_entity(key).await
    }
}
