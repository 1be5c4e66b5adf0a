//! The validated form of a workflow definition. Values of these types exist
//! only after [`crate::parse`] accepted the whole document, so the engine can
//! rely on ids being unique, `needs` forming a DAG and expressions compiling.

use std::collections::{BTreeMap, BTreeSet};

use legato_contracts::{AgentName, Budget, EventName, StepId, WorkflowName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr::{Expr, ExprError, Scope, Template};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct Workflow {
    pub name: WorkflowName,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema the start input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    pub steps: Vec<Step>,
    /// The instance output; defaults to every step's output by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Template>,
    /// The most an instance may spend (tokens, cost), and the ceiling of
    /// what a start request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Derived from `steps` when the definition is read, not part of it.
    #[serde(skip)]
    pub(crate) index: StepIndex,
}

/// Where each step sits, worked out once per definition: the engine walks
/// every step on each event (which are ready, which changed), and looking
/// each up by id made that walk cost far more than the event for a
/// definition of thousands of steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepIndex {
    by_id: Vec<usize>,
    needs: Vec<Vec<usize>>,
    /// Where each step is: the position in `steps` of the loop or race it
    /// is inside (if any), and its position there (or in `steps`).
    places: BTreeMap<StepId, (Option<usize>, usize)>,
}

impl StepIndex {
    /// Validation has made the ids unique and every `needs` name a step.
    /// Positions are into the definition's steps flattened (see
    /// [`Workflow::all_steps`]); `needs` is kept for the top level.
    pub(crate) fn new(top: &[Step]) -> Self {
        let steps = flatten(top);
        let mut by_id: Vec<usize> = (0..steps.len()).collect();
        by_id.sort_by(|&a, &b| steps[a].id.cmp(&steps[b].id));
        let position = |id: &StepId| {
            by_id
                .binary_search_by(|&p| steps[p].id.cmp(id))
                .ok()
                .map(|i| by_id[i])
        };
        let needs = top
            .iter()
            .map(|s| s.needs.iter().filter_map(&position).collect())
            .collect();
        let mut places = BTreeMap::new();
        for (i, step) in top.iter().enumerate() {
            places.insert(step.id.clone(), (None, i));
            for (j, inner) in step.body().into_iter().flatten().enumerate() {
                places.insert(inner.id.clone(), (Some(i), j));
            }
        }
        Self {
            by_id,
            needs,
            places,
        }
    }
}

impl Workflow {
    /// Every agent the definition names literally, with where (a JSON
    /// pointer into the definition): what must be registered for it to
    /// run. Agents chosen by an expression are known only at run time.
    pub fn named_agents(&self) -> Vec<(String, &AgentName)> {
        let mut named = Vec::new();
        named_agents_in(&self.steps, "", &mut named);
        named
    }

    /// Every workflow the definition starts children of, with where (a
    /// JSON pointer into the definition).
    pub fn named_workflows(&self) -> Vec<(String, &ChildWorkflow)> {
        let mut named = Vec::new();
        for (step, at) in self.all_steps().into_iter().zip(self.step_pointers()) {
            match &step.action {
                Action::Workflow { workflow, .. }
                | Action::ForEach {
                    work: Work::Workflow(workflow),
                    ..
                } => named.push((format!("{at}/workflow"), workflow)),
                _ => {}
            }
        }
        named
    }

    /// The JSON pointer of each step in [`Workflow::all_steps`], in order.
    fn step_pointers(&self) -> Vec<String> {
        let mut pointers: Vec<String> = (0..self.steps.len())
            .map(|i| format!("/steps/{i}"))
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            let block = match &step.action {
                Action::Loop { repeat } => Some(("loop", repeat.steps.len())),
                Action::Race { race } => Some(("race", race.steps.len())),
                Action::Lock { lock } => Some(("lock", lock.steps.len())),
                _ => None,
            };
            if let Some((field, count)) = block {
                pointers.extend((0..count).map(|j| format!("/steps/{i}/{field}/steps/{j}")));
            }
        }
        pointers
    }

    /// Every step: the top level's in definition order (so a top-level
    /// step's position is the same here as in `steps`), then each loop's
    /// body and race's branches, in the order the loops and races come.
    pub fn all_steps(&self) -> Vec<&Step> {
        flatten(&self.steps)
    }

    /// Whether some step is a loop or race (so the state holds more steps
    /// than the top level).
    pub fn has_blocks(&self) -> bool {
        self.steps.iter().any(|s| s.body().is_some())
    }

    /// The loop step whose body holds the step `id`, if any.
    pub fn enclosing_loop(&self, id: &str) -> Option<&Step> {
        self.enclosing(id)
            .filter(|s| matches!(s.action, Action::Loop { .. }))
    }

    /// The loop or race step whose body holds the step `id`, if any.
    pub fn enclosing(&self, id: &str) -> Option<&Step> {
        let (parent, _) = self.index.places.get(id)?;
        self.steps.get((*parent)?)
    }

    /// The step `id`, wherever it is (a loop's body too).
    pub fn step(&self, id: &str) -> Option<&Step> {
        match self.index.places.get(id)? {
            (None, i) => self.steps.get(*i),
            (Some(parent), i) => self.steps.get(*parent)?.body()?.get(*i),
        }
    }

    /// The position in [`Workflow::all_steps`] of each step, in the order
    /// of their ids: the order a map keyed by step id yields them in, so
    /// such a map is read by position without a lookup per step.
    pub fn positions_by_id(&self) -> &[usize] {
        &self.index.by_id
    }

    /// The positions in `steps` of the steps the step at `position` needs.
    pub fn needs_at(&self, position: usize) -> &[usize] {
        self.index.needs.get(position).map_or(&[], Vec::as_slice)
    }
}

/// See [`Workflow::all_steps`].
pub(crate) fn flatten(steps: &[Step]) -> Vec<&Step> {
    let mut flat: Vec<&Step> = steps.iter().collect();
    let mut next = 0;
    while let Some(step) = flat.get(next) {
        if let Some(body) = step.body() {
            flat.extend(body.iter());
        }
        next += 1;
    }
    flat
}

/// The agents `steps` name literally, with JSON pointers under `at`.
fn named_agents_in<'a>(steps: &'a [Step], at: &str, named: &mut Vec<(String, &'a AgentName)>) {
    for (i, step) in steps.iter().enumerate() {
        match &step.action {
            Action::Agent {
                agent: AgentRef::Named(agent),
                ..
            }
            | Action::ForEach {
                work: Work::Agent(AgentRef::Named(agent)),
                ..
            } => named.push((format!("{at}/steps/{i}/agent"), agent)),
            Action::Loop { repeat } => {
                named_agents_in(&repeat.steps, &format!("{at}/steps/{i}/loop"), named);
            }
            Action::Race { race } => {
                named_agents_in(&race.steps, &format!("{at}/steps/{i}/race"), named);
            }
            Action::Lock { lock } => {
                named_agents_in(&lock.steps, &format!("{at}/steps/{i}/lock"), named);
            }
            _ => {}
        }
        if let Some(compensate) = &step.compensate {
            named.push((
                format!("{at}/steps/{i}/compensate/agent"),
                &compensate.agent,
            ));
        }
    }
}

impl TryFrom<Value> for Workflow {
    type Error = crate::ValidationErrors;
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        crate::parse::from_value(value)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub id: StepId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<StepId>,
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Expr>,
    #[serde(flatten)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Per-attempt limit for agent work (start to close), like Temporal's
    /// start-to-close timeout. A timed-out attempt is a retryable failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Heartbeat lease for agent work: an attempt whose agent has not
    /// heartbeated for this long is failed as retryable (a hung agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensation>,
}

impl Step {
    /// A loop's body or a race's branches; `None` for every other kind
    /// of step.
    pub fn body(&self) -> Option<&[Step]> {
        match &self.action {
            Action::Loop { repeat } => Some(&repeat.steps),
            Action::Race { race } => Some(&race.steps),
            Action::Lock { lock } => Some(&lock.steps),
            _ => None,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }

    /// The steps this step's `if`, `for_each`, `agent` and `input` read, so
    /// starting it needs only those in scope (validation holds them to its
    /// ancestors); `None` when one reads `steps` as a whole.
    pub fn steps_read(&self) -> Option<BTreeSet<String>> {
        let mut exprs: Vec<&Expr> = self.condition.iter().collect();
        let mut templates: Vec<&Template> = Vec::new();
        match &self.action {
            Action::ForEach {
                for_each,
                work,
                input,
                ..
            } => {
                exprs.push(for_each);
                exprs.extend(work.agent_expr());
                templates.push(input);
            }
            Action::Agent { agent, input } => {
                exprs.extend(agent.expr());
                templates.push(input);
            }
            Action::Workflow { input, .. } => templates.push(input),
            Action::Entity { entity } => templates.extend(entity.templates()),
            Action::Lock { lock } => templates.extend(lock.entities.iter().map(|t| &t.id)),
            // A loop's own fields are evaluated with its body's outputs,
            // when an iteration ends, not when the loop starts.
            Action::WaitForEvent { .. }
            | Action::Timer { .. }
            | Action::Loop { .. }
            | Action::Race { .. } => {}
        }
        steps_read_by(&exprs, &templates)
    }
}

/// The steps `exprs` and `templates` read as `steps.<id>`; `None` when one
/// reads `steps` as a whole.
pub(crate) fn steps_read_by(exprs: &[&Expr], templates: &[&Template]) -> Option<BTreeSet<String>> {
    if exprs.iter().any(|e| e.reads_all_steps()) || templates.iter().any(|t| t.reads_all_steps()) {
        return None;
    }
    let mut read: BTreeSet<String> = exprs.iter().flat_map(|e| e.step_references()).collect();
    read.extend(templates.iter().flat_map(|t| t.step_references()));
    Some(read)
}

impl LoopSpec {
    /// The steps `until` and `output` read (see [`Step::steps_read`]), so
    /// ending an iteration costs what they read.
    pub fn steps_read(&self) -> Option<BTreeSet<String>> {
        let exprs: Vec<&Expr> = self.until.iter().collect();
        let templates: Vec<&Template> = self.output.iter().collect();
        steps_read_by(&exprs, &templates)
    }
}

/// What a step does. Exactly one per step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Action {
    ForEach {
        for_each: Expr,
        /// Each item's work: an agent's task, or a child workflow's run.
        #[serde(flatten)]
        work: Work,
        input: Template,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_parallel: Option<u32>,
    },
    Agent {
        agent: AgentRef,
        input: Template,
    },
    /// A run of another registered workflow (a child), whose output is
    /// the step's.
    Workflow {
        workflow: ChildWorkflow,
        input: Template,
    },
    WaitForEvent {
        wait_for_event: WaitForEvent,
    },
    Timer {
        timer: TimerSpec,
    },
    Loop {
        #[serde(rename = "loop")]
        repeat: LoopSpec,
    },
    Race {
        race: RaceSpec,
    },
    /// An operation on a durable entity (`docs/entities.md`).
    Entity {
        entity: crate::EntityStep,
    },
    /// A block of steps run while holding entities (`docs/entities.md`).
    Lock {
        lock: crate::LockSpec,
    },
}

/// Branches started together; the first to complete wins and the others
/// are cancelled (two models asked the same question, an agent racing a
/// timer). The race fails only when every branch failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RaceSpec {
    /// One step per branch, with ids of their own (unique in the whole
    /// definition) and no `needs`.
    pub steps: Vec<Step>,
}

/// A block of steps run again and again until `until` holds, at most
/// `max_iterations` times (the evaluator–optimizer shape: write, review,
/// revise). The body's steps have ids of their own, unique in the whole
/// definition; within an iteration they form a DAG like the top level,
/// and each iteration starts them afresh.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopSpec {
    pub steps: Vec<Step>,
    /// Checked after each iteration; without it the loop runs
    /// `max_iterations` times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Expr>,
    pub max_iterations: u32,
    /// What the ceiling means: reached without `until` holding.
    #[serde(skip_serializing_if = "OnMaxIterations::is_fail")]
    pub on_max_iterations: OnMaxIterations,
    /// Each iteration's output (what `previous` holds in the next one);
    /// defaults to every body step's output by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Template>,
    /// Keep every iteration's output (`steps.<loop>.iterations`), not
    /// only the last one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_iterations: bool,
}

/// What a loop does when its last allowed iteration ends and `until` does
/// not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMaxIterations {
    /// The loop step fails (and the instance with it).
    #[default]
    Fail,
    /// The loop step completes with the last iteration's output.
    Complete,
}

impl OnMaxIterations {
    fn is_fail(&self) -> bool {
        *self == Self::Fail
    }
}

/// Who does a task's work.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    Agent(AgentRef),
    Workflow(ChildWorkflow),
}

impl Work {
    fn agent_expr(&self) -> Option<&Expr> {
        match self {
            Self::Agent(agent) => agent.expr(),
            Self::Workflow(_) => None,
        }
    }
}

/// The registered workflow a child run is of: the caller's own (its
/// tenant's) by that name, else the shared one; the latest version when
/// the child starts unless `version` pins one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildWorkflow {
    pub name: WorkflowName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Which agent runs a task: fixed, or chosen per item by an expression (how a
/// planner's output picks coder or data agents at run time).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AgentRef {
    Named(AgentName),
    Dynamic(Expr),
}

impl AgentRef {
    fn expr(&self) -> Option<&Expr> {
        match self {
            Self::Named(_) => None,
            Self::Dynamic(expr) => Some(expr),
        }
    }

    pub fn resolve(&self, scope: &Scope) -> Result<AgentName, ExprError> {
        match self {
            Self::Named(name) => Ok(name.clone()),
            Self::Dynamic(expr) => match expr.evaluate(scope)? {
                Value::String(s) => AgentName::parse(s).map_err(|e| ExprError(e.to_string())),
                other => Err(ExprError(format!(
                    "agent expression `{}` must give a name, got {other}",
                    expr.source()
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitForEvent {
    pub name: EventName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Output to complete with on timeout; without it a timeout fails the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnTimeout {
    pub output: Template,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSpec {
    pub delay_ms: u64,
}

/// Saga rollback: run when the instance fails after this step completed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compensation {
    pub agent: AgentName,
    pub input: Template,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 means no retry.
    #[serde(default = "one")]
    pub max_attempts: u32,
    #[serde(default = "one_second")]
    pub initial_interval_ms: u64,
    /// Multiplier applied to the interval after each failed attempt.
    #[serde(default = "two")]
    pub backoff: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval_ms: Option<u64>,
}

fn one() -> u32 {
    1
}
fn one_second() -> u64 {
    1_000
}
fn two() -> f64 {
    2.0
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_interval_ms: one_second(),
            backoff: two(),
            max_interval_ms: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `failed_attempt + 1`, or `None` when the
    /// attempts are used up.
    pub fn delay_after(&self, failed_attempt: u32) -> Option<u64> {
        if failed_attempt >= self.max_attempts {
            return None;
        }
        let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let delay = self.initial_interval_ms as f64 * self.backoff.powi(exponent);
        let capped = match self.max_interval_ms {
            Some(max) => delay.min(max as f64),
            None => delay,
        };
        // `as` saturates for floats out of range, which is the cap we want.
        Some(capped as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_interval_ms: 100,
            backoff: 2.0,
            max_interval_ms: Some(300),
        };
        assert_eq!(p.delay_after(1), Some(100));
        assert_eq!(p.delay_after(2), Some(200));
        assert_eq!(p.delay_after(3), Some(300));
        assert_eq!(p.delay_after(4), Some(300));
        assert_eq!(p.delay_after(5), None);
        assert_eq!(RetryPolicy::default().delay_after(1), None);
    }
}
