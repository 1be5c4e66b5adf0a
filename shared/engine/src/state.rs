use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use legato_contracts::{
    AgentName, Budget, EventName, InstanceId, ParentLink, RuntimeStatus, StepId, TaskKey, TaskRole,
    Usage,
};
use legato_workflow::{ChildWorkflow, Workflow};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{Event, TimerKey};

/// Everything the engine knows about one instance. It is a fold of the
/// instance's history, stored as a snapshot so nothing needs replaying on the
/// hot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    pub id: InstanceId,
    pub status: RuntimeStatus,
    /// `None` only while Pending, before the Started event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Arc<Workflow>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub definition_hash: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_status: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub updated_at: Option<OffsetDateTime>,
    /// Which run of this id the instance is (see [`TaskKey::run`]).
    #[serde(default)]
    pub run: u64,
    /// Bumped by every restart; part of every task key and timer.
    pub execution: u32,
    /// Number of accepted events: the last history row's sequence number.
    pub sequence: u64,
    /// The position of the last progress event (see
    /// [`legato_contracts::ProgressEvent::position`]); never reset, so
    /// positions keep rising across restarts.
    #[serde(default)]
    pub position: u64,
    /// The position before the current run's first progress event (its
    /// start, or its latest restart): what a new watcher is shown from.
    #[serde(default)]
    pub run_position: u64,
    /// Shared, so a decision's copy of the state costs a pointer per step
    /// and what it did not touch is recognisably the same (see
    /// [`InstanceState::step_mut`]).
    pub steps: BTreeMap<StepId, Arc<StepState>>,
    /// How many steps have completed, never reset: each completed step
    /// keeps its number ([`StepState::completed_nth`]), so compensation can
    /// walk them backwards while the row keeps a constant size however
    /// long the instance runs.
    #[serde(default)]
    pub completions: u64,
    /// Completed steps in completion order, as states written before
    /// [`InstanceState::completions`] kept them: they completed before any
    /// numbered step. Nothing is added any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completion_order: Vec<StepId>,
    /// Timers scheduled and not yet fired or cancelled.
    #[serde(default)]
    pub timers: BTreeSet<TimerKey>,
    /// External events raised before any step waited for them.
    #[serde(default)]
    pub pending_events: Vec<PendingEvent>,
    /// Ids of external events and control messages accepted before the
    /// store kept them (see [`crate::Decision::claims`]): still honoured,
    /// never added to.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub seen_message_ids: BTreeSet<String>,
    /// Events that arrived while Suspended, applied in order on resume.
    #[serde(default)]
    pub backlog: Vec<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationState>,
    /// The parent task this instance runs as a child workflow for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The entity's custom operation this instance applies: its end is
    /// told to the entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<legato_contracts::EntityLink>,
    /// What the instance's agents reported spending, summed.
    #[serde(default, skip_serializing_if = "Usage::is_empty")]
    pub usage: Usage,
    /// The most it may spend: crossing it suspends the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub id: String,
    pub name: EventName,
    pub data: Value,
}

/// Saga rollback in progress: `remaining` runs after `current`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationState {
    /// Why the instance failed; the final error once rollback is done.
    pub failure: String,
    pub current: Option<StepId>,
    pub remaining: Vec<StepId>,
    /// Compensations that failed; rollback continues past them.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    Running,
    /// A `wait_for_event` step waiting for its event.
    Waiting,
    Completed,
    Skipped,
    Failed,
    /// Stopped because the instance failed, terminated or restarted.
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Waiting => "Waiting",
            Self::Completed => "Completed",
            Self::Skipped => "Skipped",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    /// Satisfies the `needs` of later steps.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One slot for an agent step, one per item for `for_each`; shared
    /// like the steps, so a change to one item copies one item.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Arc<TaskSlot>>,
    /// The compensation task, once rollback reaches this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<TaskSlot>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_at: Option<OffsetDateTime>,
    /// When the step completed, counted in completions of its instance
    /// (see [`InstanceState::completions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_nth: Option<u64>,
    /// A loop step's current (or last) iteration, 1 for the first; a step
    /// inside a loop, the iteration its state is of. 0 elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iteration: u32,
    /// Every finished iteration's output, for a loop that keeps them
    /// (`keep_iterations`); otherwise only the last is kept, as `output`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iterations: Vec<Value>,
    /// What the step's tasks reported spending, summed.
    #[serde(default, skip_serializing_if = "Usage::is_empty")]
    pub usage: Usage,
}

impl StepState {
    pub(crate) fn pending() -> Self {
        Self {
            status: StepStatus::Pending,
            output: None,
            error: None,
            tasks: Vec::new(),
            compensation: None,
            started_at: None,
            completed_at: None,
            completed_nth: None,
            iteration: 0,
            iterations: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// A step inside a loop, pending for the loop's `iteration`.
    pub(crate) fn pending_in(iteration: u32) -> Self {
        Self {
            iteration,
            ..Self::pending()
        }
    }

    /// The step without its task slots (kept apart, see
    /// [`InstanceState::without_steps`]).
    pub fn without_tasks(&self) -> StepState {
        StepState {
            status: self.status,
            output: self.output.clone(),
            error: self.error.clone(),
            tasks: Vec::new(),
            compensation: self.compensation.clone(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            completed_nth: self.completed_nth,
            iteration: self.iteration,
            iterations: self.iterations.clone(),
            usage: self.usage.clone(),
        }
    }

    /// What expressions see of the step: `{ output, status }`, and for a
    /// loop `iteration` and (if kept) `iterations`.
    fn scope_entry(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("output".into(), self.output.clone().unwrap_or(Value::Null));
        entry.insert("status".into(), Value::String(self.status.as_str().into()));
        if self.iteration > 0 {
            entry.insert("iteration".into(), Value::from(self.iteration));
        }
        if !self.iterations.is_empty() {
            entry.insert("iterations".into(), Value::Array(self.iterations.clone()));
        }
        Value::Object(entry)
    }

    /// Attempts dispatched over all of the step's tasks.
    pub fn attempts(&self) -> u32 {
        self.tasks.iter().map(|t| t.attempt).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SlotStatus {
    /// Not dispatched yet (a `for_each` item beyond `max_parallel`).
    Queued,
    Running,
    /// Failed with a retryable error; a retry timer is pending.
    Backoff,
    Completed,
    Failed,
    Cancelled,
}

/// One task: who does it (an agent, or a child workflow run), its
/// rendered input, and how far its attempts got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSlot {
    /// The agent that does the work; `None` when a child run does it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildSlot>,
    /// The entity its attempts operate on (the input is the operation);
    /// `None` unless it is an entity step's task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<crate::entity_steps::EntitySlot>,
    pub input: Value,
    pub status: SlotStatus,
    /// The current (or last) attempt; 0 before the first dispatch.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the current attempt last showed life (its dispatch or a
    /// heartbeat), for a step with a heartbeat lease.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_at: Option<OffsetDateTime>,
    /// Lease checks scheduled for the current attempt; the last one is
    /// the pending one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_checks: u32,
    /// The lease a worker took the current attempt with (a pull or push
    /// agent), for a step without a heartbeat lease of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Message ids of the latest news the agent sent through heartbeats
    /// (at most [`TaskSlot::NEWS_REMEMBERED`]), so a redelivered one is
    /// told once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub news: Vec<String>,
    /// The question the task asked a person and waits on (its slot is in
    /// `Backoff` meanwhile, no worker held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<Question>,
    /// Answers so far, by question name: every later attempt gets them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub answers: BTreeMap<String, Value>,
    /// Attempts that ended by asking: they do not count against the
    /// step's retry policy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub asks: u32,
}

/// A question a task attempt asked a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The event that answers it.
    pub name: EventName,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The attempt that asked.
    pub attempt: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The child workflow a task's attempts each run afresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildSlot {
    pub workflow: ChildWorkflow,
    /// The current (or last) attempt's child instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

impl TaskSlot {
    pub(crate) fn for_agent(agent: AgentName, input: Value) -> Self {
        Self::queued(Some(agent), None, input)
    }

    pub(crate) fn for_child(workflow: ChildWorkflow, input: Value) -> Self {
        let child = ChildSlot {
            workflow,
            instance: None,
        };
        Self::queued(None, Some(child), input)
    }

    pub(crate) fn for_entity(entity: crate::entity_steps::EntitySlot, operation: Value) -> Self {
        Self {
            entity: Some(entity),
            ..Self::queued(None, None, operation)
        }
    }

    /// The same work with its attempts not begun (a redriven item).
    pub(crate) fn again(&self) -> Self {
        let child = self.child.as_ref().map(|c| ChildSlot {
            workflow: c.workflow.clone(),
            instance: None,
        });
        Self {
            entity: self.entity.clone(),
            ..Self::queued(self.agent.clone(), child, self.input.clone())
        }
    }

    fn queued(agent: Option<AgentName>, child: Option<ChildSlot>, input: Value) -> Self {
        Self {
            agent,
            child,
            entity: None,
            input,
            status: SlotStatus::Queued,
            attempt: 0,
            output: None,
            error: None,
            heartbeat_at: None,
            lease_checks: 0,
            lease_ms: None,
            news: Vec::new(),
            question: None,
            answers: BTreeMap::new(),
            asks: 0,
        }
    }

    /// Enough for the redeliveries a broker makes (a message returned
    /// while the agent's next few beats are taken), bounded per task.
    pub const NEWS_REMEMBERED: usize = 8;
}

impl InstanceState {
    /// The state before any event: what replay starts from.
    pub fn new(id: InstanceId) -> Self {
        Self {
            id,
            status: RuntimeStatus::Pending,
            workflow: None,
            definition_hash: String::new(),
            input: Value::Null,
            output: None,
            error: None,
            custom_status: None,
            tenant: None,
            created_at: None,
            updated_at: None,
            run: 0,
            execution: 0,
            sequence: 0,
            position: 0,
            run_position: 0,
            steps: BTreeMap::new(),
            completions: 0,
            completion_order: Vec::new(),
            timers: BTreeSet::new(),
            pending_events: Vec::new(),
            seen_message_ids: BTreeSet::new(),
            backlog: Vec::new(),
            compensation: None,
            parent: None,
            serves: None,
            usage: Usage::default(),
            budget: None,
        }
    }

    /// Everything but the definition and the steps: what a store keeps in
    /// the instance's row when those are kept as parts of their own.
    pub fn without_steps(&self) -> InstanceState {
        InstanceState {
            id: self.id.clone(),
            status: self.status,
            workflow: None,
            definition_hash: self.definition_hash.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            error: self.error.clone(),
            custom_status: self.custom_status.clone(),
            tenant: self.tenant.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            run: self.run,
            execution: self.execution,
            sequence: self.sequence,
            position: self.position,
            run_position: self.run_position,
            steps: BTreeMap::new(),
            completions: self.completions,
            completion_order: self.completion_order.clone(),
            timers: self.timers.clone(),
            pending_events: self.pending_events.clone(),
            seen_message_ids: self.seen_message_ids.clone(),
            backlog: self.backlog.clone(),
            compensation: self.compensation.clone(),
            parent: self.parent.clone(),
            serves: self.serves.clone(),
            usage: self.usage.clone(),
            budget: self.budget.clone(),
        }
    }

    /// What expressions see as `steps`: `{ id: { output, status } }`.
    pub fn steps_scope(&self) -> Map<String, Value> {
        self.steps
            .iter()
            .map(|(id, s)| (id.to_string(), s.scope_entry()))
            .collect()
    }

    /// What expressions see of the steps `ids` (those that exist).
    pub fn steps_scope_of<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Map<String, Value> {
        ids.filter_map(|id| Some((id.to_owned(), self.steps.get(id)?.scope_entry())))
            .collect()
    }

    /// The scope expressions are evaluated in: the input and `steps`.
    pub fn scope(&self) -> Result<legato_workflow::Scope, legato_workflow::ExprError> {
        legato_workflow::Scope::new(&self.input, self.steps_scope())
    }

    /// The scope of one step's expressions: the input and the steps they
    /// read (every step when one reads `steps` whole), so starting a step
    /// costs what it reads rather than the size of the instance; inside a
    /// loop, also `iteration` and `previous`.
    pub fn scope_for(
        &self,
        step: &legato_workflow::Step,
    ) -> Result<legato_workflow::Scope, legato_workflow::ExprError> {
        self.in_loop_of(&step.id, self.scope_reading(step.steps_read())?)
    }

    /// The input and the steps `read` names (every step when `None`: an
    /// expression reads `steps` whole).
    pub fn scope_reading(
        &self,
        read: Option<BTreeSet<String>>,
    ) -> Result<legato_workflow::Scope, legato_workflow::ExprError> {
        match read {
            None => self.scope(),
            Some(read) => legato_workflow::Scope::new(
                &self.input,
                self.steps_scope_of(read.iter().map(String::as_str)),
            ),
        }
    }

    /// `scope` for step `id`: inside a loop, with the loop's `iteration`
    /// and `previous` (the output of the iteration before).
    pub fn in_loop_of(
        &self,
        id: &StepId,
        scope: legato_workflow::Scope,
    ) -> Result<legato_workflow::Scope, legato_workflow::ExprError> {
        let repeat = self
            .workflow
            .as_ref()
            .and_then(|w| w.enclosing_loop(id.as_str()))
            .and_then(|l| self.steps.get(&l.id));
        match repeat {
            Some(repeat) => scope.in_iteration(
                repeat.iteration,
                repeat.output.as_ref().unwrap_or(&Value::Null),
            ),
            None => Ok(scope),
        }
    }

    /// The key of a task of this run and execution (and the iteration its
    /// step is in).
    pub fn task_key(&self, step: StepId, item: Option<u32>, role: TaskRole) -> TaskKey {
        let iteration = self.iteration_of(&step);
        TaskKey {
            run: self.run,
            execution: self.execution,
            step,
            item,
            iteration,
            role,
        }
    }

    /// The iteration step `id`'s state is of, if it is inside a loop.
    pub fn iteration_of(&self, id: &StepId) -> Option<u32> {
        self.steps.get(id).map(|s| s.iteration).filter(|i| *i > 0)
    }

    /// Whether a key belongs to this run and execution, and to the
    /// iteration its step is in (a late result of an earlier one does
    /// not).
    pub fn is_current(&self, key: &TaskKey) -> bool {
        key.run == self.run
            && key.execution == self.execution
            && key.iteration == self.iteration_of(&key.step)
    }

    /// The state of each of `workflow`'s steps, by position in
    /// [`Workflow::all_steps`] (the top level's first, in the positions of
    /// `steps`), without a lookup per step: a started state holds exactly
    /// the definition's steps, so both run in id order together (any other
    /// state is read by lookup).
    pub fn steps_by_position(&self, workflow: &Workflow) -> Vec<Option<&Arc<StepState>>> {
        let all = workflow.all_steps();
        let mut out = vec![None; all.len()];
        let positions = workflow.positions_by_id();
        if self.steps.len() == positions.len() {
            let mut aligned = true;
            for ((id, state), &position) in self.steps.iter().zip(positions) {
                match (all.get(position), out.get_mut(position)) {
                    (Some(step), Some(slot)) if step.id == *id => *slot = Some(state),
                    _ => {
                        aligned = false;
                        break;
                    }
                }
            }
            if aligned {
                return out;
            }
        }
        all.iter().map(|step| self.steps.get(&step.id)).collect()
    }

    /// Completed steps, the latest to complete first: the order
    /// compensation undoes them in.
    pub fn completed_latest_first(&self) -> Vec<StepId> {
        let mut numbered: Vec<(u64, &StepId)> = self
            .steps
            .iter()
            .filter_map(|(id, s)| s.completed_nth.map(|n| (n, id)))
            .collect();
        numbered.sort_unstable_by_key(|(nth, _)| std::cmp::Reverse(*nth));
        let mut order: Vec<StepId> = numbered.into_iter().map(|(_, id)| id.clone()).collect();
        let unnumbered = self.completion_order.iter().rev().filter(|id| {
            self.steps
                .get(*id)
                .is_none_or(|s| s.completed_nth.is_none())
        });
        order.extend(unnumbered.cloned());
        order
    }

    /// A step to change: copied first if an earlier state shares it.
    pub fn step_mut(&mut self, id: &StepId) -> Option<&mut StepState> {
        self.steps.get_mut(id).map(Arc::make_mut)
    }

    /// The task slot a key names (whatever its run and execution; ask
    /// [`InstanceState::is_current`] whether it belongs to this one).
    pub fn task_slot(&self, key: &legato_contracts::TaskKey) -> Option<&TaskSlot> {
        let step = self.steps.get(&key.step)?;
        match key.role {
            legato_contracts::TaskRole::Action => step
                .tasks
                .get(key.item.unwrap_or(0) as usize)
                .map(|slot| &**slot),
            legato_contracts::TaskRole::Compensation => step.compensation.as_ref(),
        }
    }

    /// Every running attempt: its step, task key and slot (action tasks
    /// and compensations).
    /// The questions tasks ask and wait on.
    pub fn questions(&self) -> Vec<&Question> {
        self.action_slots()
            .into_iter()
            .filter(|(_, slot)| slot.status == SlotStatus::Backoff)
            .filter_map(|(_, slot)| slot.question.as_ref())
            .collect()
    }

    /// Every action task's key and slot.
    pub(crate) fn action_slots(&self) -> Vec<(TaskKey, &TaskSlot)> {
        let Some(workflow) = self.workflow.as_ref() else {
            return Vec::new();
        };
        let mut slots = Vec::new();
        for step in workflow.all_steps() {
            let Some(state) = self.steps.get(&step.id) else {
                continue;
            };
            for (i, slot) in state.tasks.iter().enumerate() {
                let item = crate::tasks::item_of(step, i);
                slots.push((
                    self.task_key(step.id.clone(), item, TaskRole::Action),
                    &**slot,
                ));
            }
        }
        slots
    }

    pub(crate) fn running_slots(&self) -> Vec<(&legato_workflow::Step, TaskKey, &TaskSlot)> {
        let Some(workflow) = self.workflow.as_ref() else {
            return Vec::new();
        };
        let mut running = Vec::new();
        for step in workflow.all_steps() {
            let Some(state) = self.steps.get(&step.id) else {
                continue;
            };
            let actions = state
                .tasks
                .iter()
                .enumerate()
                .map(|(i, slot)| (&**slot, crate::tasks::item_of(step, i), TaskRole::Action));
            let compensation = state
                .compensation
                .iter()
                .map(|slot| (slot, None, TaskRole::Compensation));
            for (slot, item, role) in actions.chain(compensation) {
                if slot.status == SlotStatus::Running {
                    running.push((step, self.task_key(step.id.clone(), item, role), slot));
                }
            }
        }
        running
    }

    /// The attempts dispatched and not yet answered, as they were sent.
    /// After a restart on a bus that does not keep messages (`legato up`),
    /// sending them again is a redelivery of the same attempts, never new
    /// ones. The deadline is left out: the attempt's timeout timer is
    /// durable and still pending. Each is marked `resent`: it may have
    /// begun already.
    pub fn running_tasks(&self) -> Vec<legato_contracts::TaskDispatched> {
        let Some(workflow) = self.workflow.as_ref() else {
            return Vec::new();
        };
        self.running_slots()
            .into_iter()
            .filter_map(|(step, key, slot)| {
                let heartbeat_timeout_ms = (key.role == TaskRole::Action)
                    .then_some(step.heartbeat_timeout_ms)
                    .flatten();
                Some(legato_contracts::TaskDispatched {
                    key,
                    attempt: slot.attempt,
                    agent: slot.agent.clone()?,
                    workflow: workflow.name.clone(),
                    input: slot.input.clone(),
                    deadline: None,
                    heartbeat_timeout_ms,
                    resent: true,
                    answers: slot.answers.clone(),
                })
            })
            .collect()
    }

    /// Whether `attempt` is the current, running attempt of the task `key`
    /// names: what a result for it must be to count.
    pub fn runs_attempt(&self, key: &TaskKey, attempt: u32) -> bool {
        crate::tasks::check_running(self, key, attempt).is_ok()
    }

    /// The operations of entity calls waiting for their answer (see
    /// `running_tasks`).
    pub fn running_entity_calls(&self) -> Vec<legato_contracts::EntityOperation> {
        crate::entity_steps::running_calls(self)
    }

    /// The child runs of the attempts running as child workflows, as
    /// they were asked for: for a bus that forgets on restart, asking
    /// again starts each once (or has its end reported again).
    pub fn running_children(&self) -> Vec<crate::ChildStart> {
        self.running_slots()
            .into_iter()
            .filter_map(|(_, key, slot)| crate::children::start_of(self, &key, Some(slot)))
            .collect()
    }

    /// Steps currently waiting for the named external event.
    pub fn waiting_for(&self, name: &EventName) -> Option<&StepId> {
        self.awaited_events()
            .find_map(|(step, event)| (event == name).then_some(step))
    }

    /// The events waiting steps wait for, as (step, event name).
    pub fn awaited_events(&self) -> impl Iterator<Item = (&StepId, &EventName)> {
        let steps = self.workflow.iter().flat_map(|w| w.all_steps());
        steps.filter_map(|step| {
            let waiting = self
                .steps
                .get(&step.id)
                .is_some_and(|s| s.status == StepStatus::Waiting);
            match &step.action {
                legato_workflow::Action::WaitForEvent { wait_for_event } if waiting => {
                    Some((&step.id, &wait_for_event.name))
                }
                _ => None,
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn steps_by_position_reads_any_state_the_same_as_lookups_do() {
        // Ids out of definition order, so id order and position differ.
        let workflow = legato_workflow::parse(
            "name: p\nversion: 1\nsteps: [{ id: c, agent: echo }, { id: a, agent: echo, needs: [c] }, { id: b, agent: echo, needs: [a, c] }]\n",
        )
        .unwrap();
        assert_eq!(workflow.positions_by_id(), &[1, 2, 0]);
        assert_eq!(workflow.needs_at(2), &[1, 0]);
        let mut state = InstanceState::new(InstanceId::parse("i").unwrap());
        for (n, step) in workflow.steps.iter().enumerate() {
            let mut s = StepState::pending();
            s.error = Some(n.to_string());
            state.steps.insert(step.id.clone(), Arc::new(s));
        }
        let by_lookup = |state: &InstanceState| -> Vec<Option<String>> {
            workflow
                .steps
                .iter()
                .map(|s| state.steps.get(&s.id).and_then(|s| s.error.clone()))
                .collect()
        };
        let read = |state: &InstanceState| -> Vec<Option<String>> {
            state
                .steps_by_position(&workflow)
                .into_iter()
                .map(|s| s.and_then(|s| s.error.clone()))
                .collect()
        };
        assert_eq!(read(&state), ["0", "1", "2"].map(|n| Some(n.to_owned())));
        // A state that does not hold exactly the definition's steps (one
        // missing, one foreign) is read by lookup.
        state.steps.remove(&StepId::parse("a").unwrap());
        state
            .steps
            .insert(StepId::parse("z").unwrap(), Arc::new(StepState::pending()));
        assert_eq!(read(&state), by_lookup(&state));
        assert_eq!(read(&state)[1], None);
    }

    #[test]
    fn compensation_order_reads_numbered_steps_then_an_older_state_s_list() {
        let mut state: InstanceState = serde_json::from_value(serde_json::json!({
            "id": "i",
            "status": "Running",
            "execution": 0,
            "sequence": 4,
            "steps": {},
            "completion_order": ["a", "b"],
        }))
        .unwrap();
        for (id, nth) in [("a", None), ("b", None), ("c", Some(1)), ("d", Some(2))] {
            let mut s = StepState::pending();
            s.status = StepStatus::Completed;
            s.completed_nth = nth;
            state.steps.insert(StepId::parse(id).unwrap(), Arc::new(s));
        }
        let order: Vec<String> = state
            .completed_latest_first()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(order, ["d", "c", "b", "a"]);
        // What new instances write has no list that grows with each step.
        state.completion_order.clear();
        let row = serde_json::to_value(state.without_steps()).unwrap();
        assert!(row.get("completion_order").is_none(), "{row}");
    }
}
