//! The planner: breaks a request into tasks for specialist agents, as
//! `{"tasks": [{"agent": "coder"|"data", "input": {...}}, ...]}`, the shape
//! a `for_each` step fans out over. With a chat model configured it asks
//! the model; otherwise a deterministic offline backend splits the request
//! into clauses and routes each by what it asks for.

use async_trait::async_trait;
use legato_agent::llm::ChatClient;
use legato_agent::{Agent, Task, TaskContext};
use legato_contracts::{AgentName, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::input;

/// The agents a plan may name.
pub const SPECIALISTS: [&str; 2] = ["coder", "data"];
/// Longest plan accepted, from a model or offline.
const MAX_TASKS: usize = 20;

const SYSTEM_PROMPT: &str = "You split a software team's request into independent tasks. \
Answer with a JSON object {\"tasks\": [...]} only. Each task is {\"agent\": \"coder\", \
\"input\": {\"action\": \"change\", \"task\": \"<what to change>\"}} for code changes, or \
{\"agent\": \"data\", \"input\": {\"question\": \"<what to find out>\"}} for questions about \
data. At most 20 tasks.";

pub struct Planner {
    name: AgentName,
    model: Option<ChatClient>,
}

impl Planner {
    pub fn new(name: AgentName, model: Option<ChatClient>) -> Self {
        Self { name, model }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRequest {
    request: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedTask {
    pub agent: String,
    pub input: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub tasks: Vec<PlannedTask>,
}

#[async_trait]
impl Agent for Planner {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let request: PlanRequest = input::parse("planner", &task.input)?;
        let plan = match &self.model {
            Some(model) => {
                ctx.progress("asking the model for a plan", None).await;
                let answer = model
                    .complete(SYSTEM_PROMPT, &request.request, true)
                    .await
                    .map_err(|e| TaskError {
                        message: format!("planner: {e}"),
                        retryable: e.is_retryable(),
                    })?;
                // A model that answers off-format may do better next time.
                let plan: Plan = serde_json::from_str(&answer).map_err(|e| {
                    input::retryable(format!("planner: the model's plan is not valid: {e}"))
                })?;
                check(plan).map_err(input::retryable)?
            }
            None => check(offline_plan(&request.request)).map_err(input::fatal)?,
        };
        serde_json::to_value(&plan).map_err(|e| input::fatal(e.to_string()))
    }
}

fn check(plan: Plan) -> Result<Plan, String> {
    if plan.tasks.is_empty() {
        return Err("planner: the plan has no tasks".into());
    }
    if plan.tasks.len() > MAX_TASKS {
        return Err(format!(
            "planner: the plan has {} tasks (at most {MAX_TASKS})",
            plan.tasks.len()
        ));
    }
    for (i, t) in plan.tasks.iter().enumerate() {
        if !SPECIALISTS.contains(&t.agent.as_str()) {
            return Err(format!(
                "planner: tasks[{i}].agent {:?} is not one of {SPECIALISTS:?}",
                t.agent
            ));
        }
        if !t.input.is_object() {
            return Err(format!("planner: tasks[{i}].input is not an object"));
        }
    }
    Ok(plan)
}

/// Words that make a clause a question about data rather than a change.
const DATA_WORDS: [&str; 12] = [
    "total", "totals", "sum", "count", "how many", "report", "revenue", "figures", "numbers",
    "average", "query", "check",
];

/// Splits on "and", commas and semicolons; one task per clause.
pub fn offline_plan(request: &str) -> Plan {
    let normalized = request.replace(';', ",").replace(" and ", ",");
    let tasks = normalized
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .take(MAX_TASKS)
        .map(|clause| {
            let lower = clause.to_lowercase();
            if DATA_WORDS.iter().any(|w| lower.contains(w)) {
                PlannedTask {
                    agent: "data".into(),
                    input: json!({"question": clause}),
                }
            } else {
                PlannedTask {
                    agent: "coder".into(),
                    input: json!({"action": "change", "task": clause}),
                }
            }
        })
        .collect();
    Plan { tasks }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn offline_plan_routes_changes_to_coder_and_questions_to_data() {
        let plan = offline_plan("add CSV export to billing and check last month's totals");
        assert_eq!(
            plan.tasks,
            vec![
                PlannedTask {
                    agent: "coder".into(),
                    input: json!({"action": "change", "task": "add CSV export to billing"})
                },
                PlannedTask {
                    agent: "data".into(),
                    input: json!({"question": "check last month's totals"})
                },
            ]
        );
        assert_eq!(offline_plan("a, b; c and d").tasks.len(), 4);
    }

    #[test]
    fn plans_naming_unknown_agents_or_nothing_are_refused() {
        assert!(check(Plan { tasks: vec![] }).is_err());
        let bad = Plan {
            tasks: vec![PlannedTask {
                agent: "rm-rf".into(),
                input: json!({}),
            }],
        };
        assert!(check(bad).unwrap_err().contains("rm-rf"));
    }
}
