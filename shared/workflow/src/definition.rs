//! The validated form of a workflow definition. Values of these types exist
//! only after [`crate::parse`] accepted the whole document, so the engine can
//! rely on ids being unique, `needs` forming a DAG and expressions compiling.

use std::collections::BTreeSet;

use legato_contracts::{AgentName, EventName, StepId, WorkflowName};
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
}

impl StepIndex {
    /// Validation has made the ids unique and every `needs` name a step.
    pub(crate) fn new(steps: &[Step]) -> Self {
        let mut by_id: Vec<usize> = (0..steps.len()).collect();
        by_id.sort_by(|&a, &b| steps[a].id.cmp(&steps[b].id));
        let position = |id: &StepId| {
            by_id
                .binary_search_by(|&p| steps[p].id.cmp(id))
                .ok()
                .map(|i| by_id[i])
        };
        let needs = steps
            .iter()
            .map(|s| s.needs.iter().filter_map(&position).collect())
            .collect();
        Self { by_id, needs }
    }
}

impl Workflow {
    /// Every agent the definition names literally, with where (a JSON
    /// pointer into the definition): what must be registered for it to
    /// run. Agents chosen by an expression are known only at run time.
    pub fn named_agents(&self) -> Vec<(String, &AgentName)> {
        let mut named = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if let Action::Agent {
                agent: AgentRef::Named(agent),
                ..
            }
            | Action::ForEach {
                agent: AgentRef::Named(agent),
                ..
            } = &step.action
            {
                named.push((format!("/steps/{i}/agent"), agent));
            }
            if let Some(compensate) = &step.compensate {
                named.push((format!("/steps/{i}/compensate/agent"), &compensate.agent));
            }
        }
        named
    }

    /// The position in `steps` of each step, in the order of their ids:
    /// the order a map keyed by step id yields them in, so such a map is
    /// read by position without a lookup per step.
    pub fn positions_by_id(&self) -> &[usize] {
        &self.index.by_id
    }

    /// The positions in `steps` of the steps the step at `position` needs.
    pub fn needs_at(&self, position: usize) -> &[usize] {
        self.index.needs.get(position).map_or(&[], Vec::as_slice)
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
                agent,
                input,
                ..
            } => {
                exprs.push(for_each);
                exprs.extend(agent.expr());
                templates.push(input);
            }
            Action::Agent { agent, input } => {
                exprs.extend(agent.expr());
                templates.push(input);
            }
            Action::WaitForEvent { .. } | Action::Timer { .. } => {}
        }
        if exprs.iter().any(|e| e.reads_all_steps())
            || templates.iter().any(|t| t.reads_all_steps())
        {
            return None;
        }
        let mut read: BTreeSet<String> = exprs.iter().flat_map(|e| e.step_references()).collect();
        read.extend(templates.iter().flat_map(|t| t.step_references()));
        Some(read)
    }
}

/// What a step does. Exactly one per step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Action {
    ForEach {
        for_each: Expr,
        agent: AgentRef,
        input: Template,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_parallel: Option<u32>,
    },
    Agent {
        agent: AgentRef,
        input: Template,
    },
    WaitForEvent {
        wait_for_event: WaitForEvent,
    },
    Timer {
        timer: TimerSpec,
    },
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
