//! The API's JSON shapes (camelCase), each with its OpenAPI schema.

use legato_contracts::ProgressEvent;
use legato_engine::{InstanceState, SlotStatus, StepStatus, TaskSlot};
use legato_store::{DefinitionRecord, HistoryRow, InstanceSummary, JsonText};
use legato_workflow::{Action, Work};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

mod spending;

pub(crate) use spending::{BudgetView, UsageView, checked_budget};

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `POST /api/v1/workflows/{name}/instances`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// Checked against the definition's `input_schema`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Your id for the instance; a random one when absent. Reusing the id
    /// of a finished instance replaces it; of a live one is a conflict.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The definition version to run; the latest when absent.
    #[serde(default)]
    pub version: Option<u32>,
    /// What the instance may spend (`tokens`, `cost`), in place of the
    /// definition's budget and within it: crossing it suspends the
    /// instance.
    #[serde(default)]
    #[schema(value_type = Option<BudgetView>)]
    pub budget: Option<legato_contracts::Budget>,
}

/// Where to follow and steer a started instance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StartResponse {
    pub id: String,
    pub status_query_uri: String,
    /// Replace `{eventName}`.
    pub send_event_uri: String,
    pub terminate_uri: String,
    pub suspend_uri: String,
    pub resume_uri: String,
    pub restart_uri: String,
    pub purge_uri: String,
    pub stream_uri: String,
}

impl StartResponse {
    /// `base` is the gateway's, `stream_base` the notifier's.
    pub(crate) fn new(base: &str, stream_base: &str, id: &str) -> Self {
        let status = format!("{base}/api/v1/instances/{id}");
        Self {
            id: id.to_owned(),
            send_event_uri: format!("{status}/events/{{eventName}}"),
            terminate_uri: format!("{status}/terminate"),
            suspend_uri: format!("{status}/suspend"),
            resume_uri: format!("{status}/resume"),
            restart_uri: format!("{status}/restart"),
            purge_uri: status.clone(),
            stream_uri: format!("{stream_base}/api/v1/instances/{id}/stream"),
            status_query_uri: status,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepView {
    pub id: String,
    /// The steps this one runs after (the workflow's graph).
    pub needs: Vec<String>,
    /// What the step does: `agent`, `workflow`, `for_each`,
    /// `wait_for_event`, `timer`, `loop` or `race`.
    pub kind: String,
    /// The loop or race step this one is inside (its body's steps or
    /// branches follow it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A loop step's current (or last) iteration, 1 for the first; a step
    /// inside a loop, the iteration its status and output are of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    /// A loop step's ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    /// The event a `wait_for_event` step waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The workflow a `workflow` step (or a `for_each` of child runs)
    /// starts child runs of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The ids of the child runs the step's tasks started, the latest
    /// attempt's of each (a `for_each`: in item order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<String>>,
    /// Pending, Running, Waiting, Completed, Skipped, Failed or Cancelled.
    pub status: String,
    /// Attempts dispatched over all of the step's tasks.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A `for_each` step's items and how far they got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// What the step's tasks reported spending (absent: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// A question one of the step's tasks asks a person and waits on:
    /// answer it with the event `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<QuestionView>,
}

/// A question a task asks a person.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QuestionView {
    /// The event that answers it.
    pub name: String,
    pub question: String,
    /// The JSON Schema the answer must fit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// The `for_each` item that asks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
}

/// How far a `for_each` step's items got.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ItemCounts {
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    /// Dispatched and not finished (running or waiting to retry).
    pub running: usize,
}

impl ItemCounts {
    fn of(tasks: &[std::sync::Arc<TaskSlot>]) -> Self {
        let count =
            |wanted: &[SlotStatus]| tasks.iter().filter(|t| wanted.contains(&t.status)).count();
        Self {
            total: tasks.len(),
            completed: count(&[SlotStatus::Completed]),
            failed: count(&[SlotStatus::Failed]),
            running: count(&[SlotStatus::Running, SlotStatus::Backoff]),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HistoryEntry {
    pub seq: u64,
    pub at: String,
    #[schema(value_type = Object)]
    pub event: JsonText,
    /// The instance's last progress position once this event was applied.
    pub position: u64,
    /// The progress events this event caused (as the stream and hub sent
    /// them), after the position the read asked for.
    #[schema(value_type = Vec<Object>)]
    pub progress: Vec<ProgressEvent>,
}

impl HistoryEntry {
    /// The row as a watcher that saw everything up to progress position
    /// `after` reads it.
    pub(crate) fn after(row: HistoryRow, after: u64) -> Self {
        Self {
            seq: row.seq,
            at: rfc3339(row.at),
            event: row.event,
            position: row.position,
            progress: row
                .progress
                .into_iter()
                .filter(|p| p.position > after)
                .collect(),
        }
    }
}

/// An instance as the status query shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceView {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    /// Pending, Running, Suspended, Completed, Failed or Terminated.
    pub runtime_status: String,
    #[schema(value_type = Value)]
    pub input: Value,
    #[schema(value_type = Option<Value>)]
    pub output: Option<Value>,
    #[schema(value_type = Option<Value>)]
    pub custom_status: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The history sequence number of the last accepted event.
    pub seq: u64,
    /// The position of the last progress event: a watcher that read this
    /// view resumes the stream or history after it.
    pub position: u64,
    /// Set when the instance is a child workflow run: the instance and
    /// step it runs for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentView>,
    pub steps: Vec<StepView>,
    /// What the instance's agents reported spending (absent: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// The most it may spend: crossing it suspends the instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BudgetView>)]
    pub budget: Option<legato_contracts::Budget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

/// The parent of a child workflow run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParentView {
    /// The parent instance's id.
    pub id: String,
    /// The parent's step this run does (one attempt of it).
    pub step: String,
    /// The item of a `for_each` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// The loop iteration of a step inside a loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    pub attempt: u32,
}

impl InstanceView {
    pub(crate) fn new(summary: &InstanceSummary, state: &InstanceState) -> Self {
        // Steps in definition order, which is how people read a workflow,
        // each loop's body right after the loop.
        let mut steps = Vec::new();
        if let Some(workflow) = &state.workflow {
            step_views(state, &workflow.steps, None, &mut steps);
        }
        Self {
            id: summary.id.local().to_owned(),
            workflow: summary.workflow.local().to_owned(),
            version: summary.workflow_version,
            runtime_status: summary.status.as_str().to_owned(),
            input: state.input.clone(),
            output: state.output.clone(),
            custom_status: state.custom_status.clone(),
            error: state.error.clone(),
            tenant: summary.tenant.clone(),
            created_at: rfc3339(summary.created_at),
            updated_at: rfc3339(summary.updated_at),
            seq: state.sequence,
            position: state.position,
            parent: state.parent.as_ref().map(|p| ParentView {
                id: p.instance.local().to_owned(),
                step: p.key.step.to_string(),
                item: p.key.item,
                iteration: p.key.iteration,
                attempt: p.attempt,
            }),
            steps,
            usage: (!state.usage.is_empty()).then(|| UsageView::from(&state.usage)),
            budget: state.budget.clone(),
            history: None,
        }
    }
}

fn step_views(
    state: &InstanceState,
    steps: &[legato_workflow::Step],
    parent: Option<&str>,
    views: &mut Vec<StepView>,
) {
    for step in steps {
        let s = state.steps.get(&step.id);
        views.push(StepView {
            id: step.id.to_string(),
            needs: step.needs.iter().map(ToString::to_string).collect(),
            kind: match &step.action {
                Action::ForEach { .. } => "for_each",
                Action::Agent { .. } => "agent",
                Action::Workflow { .. } => "workflow",
                Action::WaitForEvent { .. } => "wait_for_event",
                Action::Timer { .. } => "timer",
                Action::Loop { .. } => "loop",
                Action::Race { .. } => "race",
                Action::Entity { .. } => "entity",
                Action::Lock { .. } => "lock",
            }
            .to_owned(),
            parent: parent.map(str::to_owned),
            iteration: s.map(|s| s.iteration).filter(|i| *i > 0),
            max_iterations: match &step.action {
                Action::Loop { repeat } => Some(repeat.max_iterations),
                _ => None,
            },
            event: match &step.action {
                Action::WaitForEvent { wait_for_event } => Some(wait_for_event.name.to_string()),
                _ => None,
            },
            workflow: match &step.action {
                Action::Workflow { workflow, .. }
                | Action::ForEach {
                    work: Work::Workflow(workflow),
                    ..
                } => Some(workflow.name.to_string()),
                _ => None,
            },
            children: s
                .map(|s| {
                    s.tasks
                        .iter()
                        .filter_map(|t| t.child.as_ref()?.instance.as_ref())
                        .map(|id| id.local().to_owned())
                        .collect::<Vec<_>>()
                })
                .filter(|children| !children.is_empty()),
            status: s
                .map_or(StepStatus::Pending, |s| s.status)
                .as_str()
                .to_owned(),
            attempts: s.map_or(0, |s| s.attempts()),
            output: s.and_then(|s| s.output.clone()),
            error: s.and_then(|s| s.error.clone()),
            items: matches!(step.action, Action::ForEach { .. })
                .then(|| ItemCounts::of(s.map_or(&[][..], |s| &s.tasks))),
            started_at: s.and_then(|s| s.started_at).map(rfc3339),
            completed_at: s.and_then(|s| s.completed_at).map(rfc3339),
            usage: s
                .filter(|s| !s.usage.is_empty())
                .map(|s| UsageView::from(&s.usage)),
            question: s.and_then(|s| {
                let (index, slot) = s.tasks.iter().enumerate().find(|(_, t)| {
                    t.status == legato_engine::SlotStatus::Backoff && t.question.is_some()
                })?;
                let question = slot.question.as_ref()?;
                Some(QuestionView {
                    name: question.name.to_string(),
                    question: question.text.clone(),
                    schema: question.schema.clone(),
                    item: matches!(step.action, Action::ForEach { .. })
                        .then(|| u32::try_from(index).unwrap_or(u32::MAX)),
                })
            }),
        });
        if let Some(body) = step.body() {
            step_views(state, body, Some(step.id.as_str()), views);
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceListItem {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub runtime_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&InstanceSummary> for InstanceListItem {
    fn from(s: &InstanceSummary) -> Self {
        Self {
            id: s.id.local().to_owned(),
            workflow: s.workflow.local().to_owned(),
            version: s.workflow_version,
            runtime_status: s.status.as_str().to_owned(),
            tenant: s.tenant.clone(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

/// One page of instances, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstancePage {
    pub items: Vec<InstanceListItem>,
    /// Pass as `continuationToken` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DefinitionView {
    pub name: String,
    pub version: u32,
    /// sha256 of the definition's content; instances pin it.
    pub hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub registered_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
}

impl DefinitionView {
    pub(crate) fn new(record: &DefinitionRecord, with_body: bool) -> Self {
        Self {
            name: record.name.local().to_owned(),
            version: record.version,
            hash: record.hash.clone(),
            description: record
                .body
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            registered_at: rfc3339(record.registered_at),
            definition: with_body.then(|| record.body.clone()),
        }
    }
}

/// A definition's registered versions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionList {
    pub name: String,
    /// Newest first.
    pub versions: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DefinitionList {
    pub items: Vec<DefinitionView>,
}

/// Body of terminate, suspend and resume (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReasonBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of resume (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ResumeBody {
    #[serde(default)]
    pub reason: Option<String>,
    /// Replaces the instance's budget first: an instance suspended for its
    /// budget resumes only with one above what it spent.
    #[serde(default)]
    #[schema(value_type = Option<BudgetView>)]
    pub budget: Option<legato_contracts::Budget>,
}

/// Body of redrive (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RedriveBody {
    /// Move the instance onto this later version of its definition first.
    pub version: Option<u32>,
    /// Clear the tasks' journals, so the steps their agents recorded run
    /// again (default: kept, and not run again).
    #[serde(default)]
    pub reset_journal: bool,
}

/// Body of restart (optional): a new input replaces the original.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RestartBody {
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub input: Option<Value>,
}

/// What an accepted signal returns.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Accepted {
    pub id: String,
    /// The message id of the command sent.
    pub command_id: String,
}

/// Where a SignalR client connects.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NegotiateResponse {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// Exactly one of the two.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SubscriptionRequest {
    #[serde(default)]
    pub connection_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
}
