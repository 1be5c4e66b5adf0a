//! How an engine state is kept as a store record. The gateway writes the
//! first (Pending) record when it accepts a start; from then on only the
//! orchestrator writes.

pub mod parts;

use legato_contracts::{Envelope, InstanceId, StartInstance, WorkflowName};
use legato_engine::InstanceState;
use legato_store::{Commit, Expected, InstanceRecord, InstanceSummary, StoreError};
use serde_json::Value;
use time::OffsetDateTime;

/// The record of an accepted start, before the orchestrator takes it up.
/// The state keeps the input and tenant, so a start whose command was lost
/// can be sent again from the record alone.
pub fn pending(
    id: InstanceId,
    workflow: WorkflowName,
    version: u32,
    input: Value,
    tenant: Option<String>,
    now: OffsetDateTime,
) -> Result<InstanceRecord, StoreError> {
    record(
        &pending_state(id, input, tenant, now),
        workflow,
        version,
        now,
    )
}

fn pending_state(
    id: InstanceId,
    input: Value,
    tenant: Option<String>,
    now: OffsetDateTime,
) -> InstanceState {
    let mut state = InstanceState::new(id);
    state.input = input;
    state.tenant = tenant;
    state.created_at = Some(now);
    state.updated_at = Some(now);
    state
}

/// The commit that accepts a start: the Pending record, created only if
/// no instance has the id, with the start command in its outbox. The
/// record keeps the start's budget, so a start sent again after a restart
/// asks for the same.
pub fn accept_start(
    source: &str,
    id: InstanceId,
    start: StartInstance,
    now: OffsetDateTime,
) -> Result<Commit, StoreError> {
    let mut state = pending_state(id.clone(), start.input.clone(), start.tenant.clone(), now);
    state.budget = start.budget.clone();
    let record = record(&state, start.workflow.clone(), start.version, now)?;
    let envelope = Envelope::new(source, id, now, start)
        .with_traceparent(crate::telemetry::current_traceparent());
    let mut commit = Commit::new(record, Expected::New);
    commit
        .outbox
        .push(crate::outbox::row_of(&envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    Ok(commit)
}

/// The record of a state; `workflow`/`version` are the pinned definition.
pub fn record(
    state: &InstanceState,
    workflow: WorkflowName,
    version: u32,
    now: OffsetDateTime,
) -> Result<InstanceRecord, StoreError> {
    record_since(None, state, workflow, version, now)
}

/// The record that moves a stored instance from `before` (the state whose
/// parts the store holds; `None` when it holds none) to `state`: its row
/// and the parts that changed (see [`parts`]).
pub fn record_since(
    before: Option<&InstanceState>,
    state: &InstanceState,
    workflow: WorkflowName,
    version: u32,
    now: OffsetDateTime,
) -> Result<InstanceRecord, StoreError> {
    let summary = InstanceSummary {
        id: state.id.clone(),
        workflow,
        workflow_version: version,
        status: state.status,
        tenant: state.tenant.clone(),
        created_at: state.created_at.unwrap_or(now),
        updated_at: state.updated_at.unwrap_or(now),
    };
    let (state, parts) = parts::split(before, state)?;
    Ok(InstanceRecord {
        summary,
        state,
        parts,
    })
}

/// The engine state inside a stored record.
pub fn state_of(record: &InstanceRecord) -> Result<InstanceState, StoreError> {
    parts::join(record.summary.id.as_str(), &record.state, &record.parts)
}
