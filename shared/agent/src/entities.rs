//! `TaskContext::entity`: durable entities from inside an agent, in the
//! task's tenant. A read answers the state as committed now; a call (or
//! a signal) is applied once per task under its name, however often the
//! task is tried, and its answer is a step of the task's journal, so a
//! later attempt or a redrive carries on with the first answer.

use std::sync::LazyLock;
use std::time::Duration;

use legato_contracts::{EntityId, EntityRef, EntityType, Envelope, Operation, TaskError};
use legato_service::definitions::Definitions;
use legato_service::entities::{
    Applying, EntityTypes, agent_call, agent_journal_name, check_agent_operation_name,
};
use legato_store::{Store, StoreError};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::TaskContext;

/// The worker's entity types and workflows, as its tasks' operations
/// read them.
static TYPES: LazyLock<EntityTypes> = LazyLock::new(EntityTypes::default);
static DEFINITIONS: LazyLock<Definitions> = LazyLock::new(Definitions::default);

/// How long a call waits for an entity busy with a custom operation
/// before its attempt fails (retryable: a later attempt waits on, and the
/// operation is applied once).
const WAIT_BEHIND_CUSTOM: Duration = Duration::from_secs(60);

/// One entity, as an agent's task sees it (see [`TaskContext::entity`]).
pub struct Entity<'a> {
    ctx: &'a TaskContext,
    entity: EntityRef,
}

fn fatal(message: String) -> TaskError {
    TaskError {
        message,
        retryable: false,
    }
}

fn unavailable(e: StoreError) -> TaskError {
    TaskError {
        message: format!("entities: {e}"),
        retryable: matches!(e, StoreError::Unavailable(_) | StoreError::Conflict(_)),
    }
}

impl TaskContext {
    /// The durable entity `entity_type/id` of the task's tenant
    /// (docs/entities.md).
    pub fn entity(&self, entity_type: &str, id: &str) -> Result<Entity<'_>, TaskError> {
        let entity = EntityRef {
            entity_type: EntityType::parse(entity_type).map_err(|e| fatal(e.to_string()))?,
            id: EntityId::parse(id).map_err(|e| fatal(e.to_string()))?,
        };
        Ok(Entity { ctx: self, entity })
    }
}

impl Entity<'_> {
    fn store(&self) -> Result<&dyn Store, TaskError> {
        self.ctx
            .journal
            .kept_in()
            .map(|s| &**s)
            .ok_or_else(|| fatal("entities need the worker's store".into()))
    }

    /// The value at `path` (a JSON Pointer; empty: the whole state) as last
    /// committed, `null` when absent. Not journaled: wrap it in
    /// [`TaskContext::step`] to keep what the first attempt read.
    pub async fn read(&self, path: &str) -> Result<Value, TaskError> {
        let operation = Operation::Read {
            path: path.to_owned(),
        };
        self.apply(&format!("read {path}"), operation)
            .await?
            .map_err(fatal)
    }

    /// Applies `operation` (`{"op": "increment", "by": 2}`, as in a
    /// workflow's entity step) once per task under `name`, and answers
    /// what it answered. An operation that fails (an increment past its
    /// bounds) is an error no retry mends.
    pub async fn call(&self, name: &str, operation: Value) -> Result<Value, TaskError> {
        self.recorded(name, operation).await?.map_err(fatal)
    }

    /// As [`Entity::call`], for an operation whose answer (or failure)
    /// does not matter to the agent.
    pub async fn signal(&self, name: &str, operation: Value) -> Result<(), TaskError> {
        self.recorded(name, operation).await.map(|_| ())
    }

    /// The operation's answer, from the task's journal when an earlier
    /// attempt recorded it, else applied now and recorded.
    async fn recorded(
        &self,
        name: &str,
        operation: Value,
    ) -> Result<Result<Value, String>, TaskError> {
        check_agent_operation_name(name)
            .map_err(|why| fatal(format!("entity call {name:?}: {why}")))?;
        let operation = Operation::from_json(operation)
            .map_err(|e| fatal(format!("entity call {name:?}: {} {}", e.pointer, e.message)))?;
        if operation.is_internal() || operation.is_read() {
            return Err(fatal(format!(
                "entity call {name:?}: {} is not for a call (read with `read`)",
                operation.name()
            )));
        }
        let kept = self
            .ctx
            .step(&agent_journal_name(name), || async {
                let answer = self.apply(name, operation).await?;
                Ok(match answer {
                    Ok(value) => json!({ "ok": value }),
                    Err(why) => json!({ "error": why }),
                })
            })
            .await?;
        match kept.get("error").and_then(Value::as_str) {
            Some(why) => Ok(Err(why.to_owned())),
            None => Ok(Ok(kept.get("ok").cloned().unwrap_or_default())),
        }
    }

    async fn apply(
        &self,
        name: &str,
        operation: Operation,
    ) -> Result<Result<Value, String>, TaskError> {
        let applying = Applying {
            store: self.store()?,
            types: &TYPES,
            definitions: &DEFINITIONS,
            within: WAIT_BEHIND_CUSTOM,
        };
        let ctx = self.ctx;
        let answer = agent_call(
            &applying,
            &ctx.instance,
            &ctx.key,
            name,
            self.entity.clone(),
            operation,
            async |subject, payload| {
                let envelope = Envelope::new(
                    ctx.source.clone(),
                    subject,
                    OffsetDateTime::now_utc(),
                    payload,
                )
                .with_traceparent(ctx.traceparent.clone());
                ctx.bus
                    .publish_envelope(&envelope)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            },
        )
        .await
        .map_err(unavailable)?;
        answer.ok_or_else(|| TaskError {
            message: format!(
                "entity {}: operation {name:?} still waits behind a custom operation after {} s",
                self.entity,
                WAIT_BEHIND_CUSTOM.as_secs()
            ),
            retryable: true,
        })
    }
}
