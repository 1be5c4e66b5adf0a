//! Turns a YAML or JSON document into a [`Workflow`], collecting every
//! problem instead of stopping at the first, so an author fixes a definition
//! in one round trip.

use std::collections::{BTreeMap, BTreeSet};

use legato_contracts::{AgentName, EventName, StepId, WorkflowName};
use serde::Deserialize;
use serde_json::Value;

use crate::definition::{
    Action, AgentRef, ChildWorkflow, Compensation, LoopSpec, OnMaxIterations, OnTimeout, RaceSpec,
    RetryPolicy, Step, StepIndex, TimerSpec, WaitForEvent, Work, Workflow,
};
use crate::entity_step::LockSpec;
use crate::expr::{Expr, Template, Variables};
use crate::{ValidationError, ValidationErrors};

/// Parses YAML (a superset of JSON, so JSON documents parse too).
pub fn parse(text: &str) -> Result<Workflow, ValidationErrors> {
    let value: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ValidationErrors::one("", format!("not a YAML or JSON document: {e}")))?;
    from_value(value)
}

pub fn from_value(value: Value) -> Result<Workflow, ValidationErrors> {
    let mut problems = Problems::default();
    let Value::Object(mut doc) = value else {
        return Err(ValidationErrors::one("", "a definition must be an object"));
    };
    const KNOWN: [&str; 7] = [
        "name",
        "version",
        "description",
        "input_schema",
        "steps",
        "output",
        "budget",
    ];
    for key in doc.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        problems.add(
            key,
            format!("unknown field (expected one of {})", KNOWN.join(", ")),
        );
    }

    let name = match doc.remove("name") {
        Some(Value::String(s)) => WorkflowName::parse(s)
            .map_err(|e| problems.add("name", e.to_string()))
            .ok(),
        Some(_) => problems.none("name", "must be a string"),
        None => problems.none("name", "is required"),
    };
    let version = match doc.remove("version") {
        Some(v) => match v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v >= 1)
        {
            Some(v) => Some(v),
            None => problems.none("version", format!("must be a positive integer, got {v}")),
        },
        None => problems.none("version", "is required"),
    };
    let description = match doc.remove("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => problems.none("description", "must be a string"),
    };
    let input_schema = doc.remove("input_schema").filter(|v| !v.is_null());
    if let Some(schema) = &input_schema
        && let Err(e) = jsonschema::validator_for(schema)
    {
        problems.add("input_schema", format!("not a valid JSON Schema: {e}"));
    }

    let budget = doc.remove("budget").filter(|v| !v.is_null()).and_then(|v| {
        match serde_json::from_value::<legato_contracts::Budget>(v) {
            Ok(budget) => match budget.check() {
                Ok(()) => Some(budget),
                Err((field, why)) => {
                    let at = if field.is_empty() {
                        "budget".to_owned()
                    } else {
                        format!("budget.{field}")
                    };
                    problems.none(&at, why)
                }
            },
            Err(e) => problems.none("budget", format!("must be {{tokens, cost}}: {e}")),
        }
    });

    let raw_steps = match doc.remove("steps") {
        Some(Value::Array(steps)) if !steps.is_empty() => steps,
        Some(Value::Array(_)) => problems
            .none("steps", "must list at least one step")
            .unwrap_or_default(),
        Some(_) => problems.none("steps", "must be a list").unwrap_or_default(),
        None => problems.none("steps", "is required").unwrap_or_default(),
    };
    let steps = parse_steps("", raw_steps, Block::Top, &mut problems);

    let output = doc.remove("output").filter(|v| !v.is_null()).and_then(|v| {
        Template::parse(v, Variables::Instance)
            .map_err(|errs| errs.into_iter().for_each(|e| problems.add("output", e.0)))
            .ok()
    });

    check_graph(&steps, &mut problems);
    if let Some(output) = &output {
        let all: BTreeSet<String> = steps.iter().map(|s| s.id.to_string()).collect();
        let places = Places::of(&steps);
        for missing in output.step_references().difference(&all) {
            problems.add(
                "output",
                format!("reads steps.{missing}, {}", places.why_unreadable(missing)),
            );
        }
    }

    match (name, version, problems.into_result()) {
        (Some(name), Some(version), Ok(())) => Ok(Workflow {
            name,
            version,
            description,
            input_schema,
            index: StepIndex::new(&steps),
            steps,
            output,
            budget,
        }),
        (_, _, Err(errors)) => Err(errors),
        // Both are reported as problems when missing, so this is unreachable;
        // answer with an error anyway rather than panic.
        _ => Err(ValidationErrors::one("", "name and version are required")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(rename = "if")]
    condition: Option<String>,
    agent: Option<String>,
    workflow: Option<RawChild>,
    input: Option<Value>,
    for_each: Option<String>,
    max_parallel: Option<u32>,
    wait_for_event: Option<RawWait>,
    timer: Option<TimerSpec>,
    retry: Option<RetryPolicy>,
    timeout_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    compensate: Option<RawCompensate>,
    #[serde(rename = "loop")]
    repeat: Option<RawLoop>,
    race: Option<RawRace>,
    entity: Option<Value>,
    lock: Option<RawLock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    #[serde(default)]
    entities: Vec<Value>,
    capacity: Option<u32>,
    #[serde(default)]
    steps: Vec<Value>,
    output: Option<Value>,
}

/// A child workflow: its name, or its name and a pinned version.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawChild {
    Name(String),
    Pinned(RawPinned),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinned {
    name: String,
    version: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRace {
    #[serde(default)]
    steps: Vec<Value>,
}

/// Where a step is: at the top level, in a loop's body, a race's branch,
/// or a lock's critical section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Top,
    Loop,
    Race,
    Lock,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoop {
    #[serde(default)]
    steps: Vec<Value>,
    until: Option<String>,
    max_iterations: Option<u32>,
    #[serde(default)]
    on_max_iterations: OnMaxIterations,
    output: Option<Value>,
    #[serde(default)]
    keep_iterations: bool,
}

/// The most iterations a loop may allow: enough for any agent loop, and a
/// bound on what one instance can be made to do.
pub const MAX_ITERATIONS: u32 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWait {
    name: String,
    timeout_ms: Option<u64>,
    on_timeout: Option<RawOnTimeout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnTimeout {
    output: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompensate {
    agent: String,
    #[serde(default)]
    input: Value,
}

/// The steps of one block: the definition's, a loop's body or a race's
/// branches (`prefix` names the loop or race).
fn parse_steps(prefix: &str, raw: Vec<Value>, block: Block, problems: &mut Problems) -> Vec<Step> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, raw)| parse_step(prefix, i, raw, block, problems))
        .collect()
}

fn parse_step(
    prefix: &str,
    index: usize,
    raw: Value,
    block: Block,
    problems: &mut Problems,
) -> Option<Step> {
    let in_loop = block == Block::Loop;
    // Inside a loop, expressions also see `iteration` and `previous`.
    let base = Variables::Instance.in_loop_if(in_loop);
    let fallback = format!("{prefix}steps[{index}]");
    let label = raw
        .get("id")
        .and_then(Value::as_str)
        .map(|id| format!("{fallback} ({id})"))
        .unwrap_or(fallback);
    let raw: RawStep = match serde_json::from_value(raw) {
        Ok(raw) => raw,
        Err(e) => return problems.none(&label, e.to_string()),
    };
    let at = |field: &str| format!("{label}.{field}");
    let before = problems.len();

    let id = StepId::parse(raw.id)
        .map_err(|e| problems.add(&at("id"), e.to_string()))
        .ok();
    let needs: Vec<StepId> = raw
        .needs
        .into_iter()
        .filter_map(|n| {
            StepId::parse(n)
                .map_err(|e| problems.add(&at("needs"), e.to_string()))
                .ok()
        })
        .collect();
    let condition = raw.condition.and_then(|c| {
        Expr::parse_wrapped(&c, base)
            .map_err(|e| problems.add(&at("if"), e.0))
            .ok()
    });

    let chosen: Vec<&str> = [
        (raw.for_each.is_some(), "for_each"),
        (raw.for_each.is_none() && raw.agent.is_some(), "agent"),
        (raw.for_each.is_none() && raw.workflow.is_some(), "workflow"),
        (raw.wait_for_event.is_some(), "wait_for_event"),
        (raw.timer.is_some(), "timer"),
        (raw.repeat.is_some(), "loop"),
        (raw.race.is_some(), "race"),
        (raw.entity.is_some(), "entity"),
        (raw.lock.is_some(), "lock"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    if chosen.len() != 1 {
        let found = if chosen.is_empty() {
            "none".to_owned()
        } else {
            chosen.join(" and ")
        };
        problems.add(
            &label,
            format!(
                "needs exactly one action of agent, workflow, for_each, wait_for_event, timer, loop, race, entity, lock; found {found}"
            ),
        );
    }
    let is_work = matches!(chosen.as_slice(), ["agent" | "workflow" | "for_each"]);
    if !is_work && raw.input.is_some() {
        problems.add(
            &at("input"),
            "only agent, workflow and for_each steps take an input",
        );
    }
    if !is_work && !matches!(chosen.as_slice(), ["entity" | "lock"]) && raw.retry.is_some() {
        problems.add(
            &at("retry"),
            "only agent, workflow, for_each, entity and lock steps are retried (a lock's: waiting for the entities)",
        );
    }
    if raw.max_parallel.is_some() && raw.for_each.is_none() {
        problems.add(&at("max_parallel"), "only applies to a for_each step");
    }
    if raw.max_parallel == Some(0) {
        problems.add(&at("max_parallel"), "must be at least 1");
    }
    if raw.for_each.is_some() && raw.agent.is_some() == raw.workflow.is_some() {
        problems.add(
            &at("agent"),
            "a for_each step names either the agent each item goes to or the workflow each item runs",
        );
    }
    if let Some(retry) = &raw.retry {
        check_retry(retry, &at("retry"), problems);
    }
    if raw.timeout_ms == Some(0) {
        problems.add(&at("timeout_ms"), "must be at least 1");
    }
    if let Some(lease) = raw.heartbeat_timeout_ms {
        if lease < 100 {
            problems.add(&at("heartbeat_timeout_ms"), "must be at least 100");
        }
        if raw.agent.is_none() {
            problems.add(
                &at("heartbeat_timeout_ms"),
                "only agent steps (and a for_each's agents) run agent work to heartbeat; a child workflow's steps carry their own",
            );
        }
    }

    if raw.repeat.is_some() && raw.timeout_ms.is_some() {
        problems.add(
            &at("timeout_ms"),
            "a loop's time is its body's: put timeout_ms on the steps inside it",
        );
    }
    if block != Block::Top {
        for (present, field) in [
            (raw.repeat.is_some(), "loop"),
            (raw.race.is_some(), "race"),
            (raw.lock.is_some(), "lock"),
        ] {
            if present {
                problems.add(
                    &at(field),
                    "loops, races and locks do not nest: one cannot be inside a loop's body, a race's branches or a lock's steps",
                );
            }
        }
    }
    if block != Block::Top && raw.compensate.is_some() {
        problems.add(
            &at("compensate"),
            "a step inside a loop, race or lock is not compensated on its own (a loop's iterations would each need undoing): compensate the loop, race or lock step",
        );
    }
    if block == Block::Race && !needs.is_empty() {
        problems.add(
            &at("needs"),
            "a race's branches start together: a branch has no needs",
        );
    }
    if raw.race.is_some() && raw.timeout_ms.is_some() {
        problems.add(
            &at("timeout_ms"),
            "a race's time is its branches': race a timer step to bound it",
        );
    }
    let item_vars = if raw.for_each.is_some() {
        Variables::ForEachItem.in_loop_if(in_loop)
    } else {
        base
    };
    let agent = raw
        .agent
        .and_then(|a| parse_agent_ref(&a, item_vars, &at("agent"), problems));
    let input = template(
        raw.input.unwrap_or(Value::Null),
        item_vars,
        &at("input"),
        problems,
    );
    let child = raw
        .workflow
        .and_then(|w| parse_child(w, &at("workflow"), problems));
    let items = raw.for_each.and_then(|f| {
        Expr::parse_wrapped(&f, base)
            .map_err(|e| problems.add(&at("for_each"), e.0))
            .ok()
    });
    let wait = raw.wait_for_event.and_then(|w| {
        let name = EventName::parse(w.name)
            .map_err(|e| problems.add(&at("wait_for_event.name"), e.to_string()))
            .ok();
        if w.timeout_ms == Some(0) {
            problems.add(&at("wait_for_event.timeout_ms"), "must be at least 1");
        }
        if w.on_timeout.is_some() && w.timeout_ms.is_none() {
            problems.add(&at("wait_for_event.on_timeout"), "needs timeout_ms");
        }
        let on_timeout = w.on_timeout.map(|o| OnTimeout {
            output: template(
                o.output,
                base,
                &at("wait_for_event.on_timeout.output"),
                problems,
            ),
        });
        name.map(|name| WaitForEvent {
            name,
            timeout_ms: w.timeout_ms,
            on_timeout,
        })
    });
    let compensate = raw.compensate.and_then(|c| {
        let agent = AgentName::parse(c.agent)
            .map_err(|e| problems.add(&at("compensate.agent"), e.to_string()))
            .ok();
        let input = template(
            c.input,
            Variables::Instance,
            &at("compensate.input"),
            problems,
        );
        agent.map(|agent| Compensation { agent, input })
    });
    let repeat = raw
        .repeat
        .and_then(|r| parse_loop(r, &at("loop"), problems));
    let race = raw.race.and_then(|r| {
        let at = at("race");
        if r.steps.len() < 2 {
            problems.add(&format!("{at}.steps"), "must list at least two branches");
        }
        let before = problems.len();
        let steps = parse_steps(&format!("{at}."), r.steps, Block::Race, problems);
        (problems.len() == before).then_some(RaceSpec { steps })
    });

    let lock = raw
        .lock
        .and_then(|l| parse_lock(l, base, &at("lock"), problems));
    let entity = raw.entity.and_then(|e| {
        crate::entity_step::parse(e, base, &at("entity"), &mut |path, message| {
            problems.add(&path, message)
        })
    });

    let action = match chosen.as_slice() {
        ["for_each"] => Action::ForEach {
            for_each: items?,
            work: match (agent, child) {
                (Some(agent), None) => Work::Agent(agent),
                (None, Some(child)) => Work::Workflow(child),
                _ => return None,
            },
            input,
            max_parallel: raw.max_parallel,
        },
        ["agent"] => Action::Agent {
            agent: agent?,
            input,
        },
        ["workflow"] => Action::Workflow {
            workflow: child?,
            input,
        },
        ["wait_for_event"] => Action::WaitForEvent {
            wait_for_event: wait?,
        },
        ["timer"] => Action::Timer { timer: raw.timer? },
        ["loop"] => Action::Loop { repeat: repeat? },
        ["race"] => Action::Race { race: race? },
        ["entity"] => Action::Entity { entity: entity? },
        ["lock"] => Action::Lock { lock: lock? },
        _ => return None,
    };
    if problems.len() > before {
        return None;
    }
    Some(Step {
        id: id?,
        needs,
        condition,
        action,
        retry: raw.retry,
        timeout_ms: raw.timeout_ms,
        heartbeat_timeout_ms: raw.heartbeat_timeout_ms,
        compensate,
    })
}

fn parse_lock(
    raw: RawLock,
    vars: Variables,
    at: &str,
    problems: &mut Problems,
) -> Option<LockSpec> {
    let before = problems.len();
    let entities =
        crate::entity_step::parse_lock_targets(raw.entities, vars, at, &mut |path, message| {
            problems.add(&path, message)
        });
    if raw.capacity == Some(0) {
        problems.add(&format!("{at}.capacity"), "must be at least 1");
    }
    if raw.steps.is_empty() {
        problems.add(&format!("{at}.steps"), "must list at least one step");
    }
    let steps = parse_steps(&format!("{at}."), raw.steps, Block::Lock, problems);
    let output = raw
        .output
        .map(|o| template(o, vars, &format!("{at}.output"), problems));
    if problems.len() > before {
        return None;
    }
    Some(LockSpec {
        entities: entities?,
        capacity: raw.capacity.unwrap_or(1),
        steps,
        output,
    })
}

fn parse_loop(raw: RawLoop, at: &str, problems: &mut Problems) -> Option<LoopSpec> {
    let before = problems.len();
    if raw.steps.is_empty() {
        problems.add(&format!("{at}.steps"), "must list at least one step");
    }
    let steps = parse_steps(&format!("{at}."), raw.steps, Block::Loop, problems);
    let max_iterations = match raw.max_iterations {
        Some(n) if (1..=MAX_ITERATIONS).contains(&n) => n,
        Some(n) => problems.none(
            &format!("{at}.max_iterations"),
            format!("must be between 1 and {MAX_ITERATIONS}, got {n}"),
        )?,
        None => problems.none(
            &format!("{at}.max_iterations"),
            "is required: every loop has a ceiling",
        )?,
    };
    let until = raw.until.and_then(|u| {
        Expr::parse_wrapped(&u, Variables::Loop)
            .map_err(|e| problems.add(&format!("{at}.until"), e.0))
            .ok()
    });
    let output = raw
        .output
        .map(|o| template(o, Variables::Loop, &format!("{at}.output"), problems));
    if problems.len() > before {
        return None;
    }
    Some(LoopSpec {
        steps,
        until,
        max_iterations,
        on_max_iterations: raw.on_max_iterations,
        output,
        keep_iterations: raw.keep_iterations,
    })
}

/// A child workflow's name is one its instance's tenant sees (its own or
/// a shared one), so it never names a tenant itself.
fn parse_child(raw: RawChild, at: &str, problems: &mut Problems) -> Option<ChildWorkflow> {
    let (name, version) = match raw {
        RawChild::Name(name) => (name, None),
        RawChild::Pinned(RawPinned { name, version }) => (name, version),
    };
    if version == Some(0) {
        problems.add(&format!("{at}.version"), "versions count from 1");
    }
    let name = WorkflowName::scoped(None, name)
        .map_err(|e| problems.add(&format!("{at}.name"), e.to_string()))
        .ok()?;
    Some(ChildWorkflow { name, version })
}

fn parse_agent_ref(
    text: &str,
    vars: Variables,
    at: &str,
    problems: &mut Problems,
) -> Option<AgentRef> {
    if text.contains("${{") {
        return Expr::parse_wrapped(text, vars)
            .map(AgentRef::Dynamic)
            .map_err(|e| problems.add(at, e.0))
            .ok();
    }
    AgentName::parse(text)
        .map(AgentRef::Named)
        .map_err(|e| problems.add(at, e.to_string()))
        .ok()
}

fn template(value: Value, vars: Variables, at: &str, problems: &mut Problems) -> Template {
    Template::parse(value, vars).unwrap_or_else(|errors| {
        errors.into_iter().for_each(|e| problems.add(at, e.0));
        Template::default()
    })
}

fn check_retry(retry: &RetryPolicy, at: &str, problems: &mut Problems) {
    if retry.max_attempts == 0 {
        problems.add(&format!("{at}.max_attempts"), "must be at least 1");
    }
    if retry.initial_interval_ms == 0 {
        problems.add(&format!("{at}.initial_interval_ms"), "must be at least 1");
    }
    if !retry.backoff.is_finite() || retry.backoff < 1.0 {
        problems.add(
            &format!("{at}.backoff"),
            format!("must be a number >= 1, got {}", retry.backoff),
        );
    }
    if retry
        .max_interval_ms
        .is_some_and(|max| max < retry.initial_interval_ms)
    {
        problems.add(
            &format!("{at}.max_interval_ms"),
            "must not be below initial_interval_ms",
        );
    }
}

/// Unique ids (across the whole definition, loop bodies too), known
/// `needs`, no cycles, and expressions that read only what exists when they
/// run: the step's ancestors, and inside a loop also the loop's.
fn check_graph(steps: &[Step], problems: &mut Problems) {
    let places = Places::of(steps);
    let mut seen = BTreeSet::new();
    for step in crate::definition::flatten(steps) {
        if !seen.insert(step.id.as_str()) {
            problems.add(&format!("steps ({})", step.id), "duplicate step id");
        }
    }
    check_block(steps, "steps", &BTreeSet::new(), &places, problems);
}

/// Where each step id is: in which loop's body or race's branches (and
/// which of the two), if any.
type Place<'a> = Option<(&'a str, &'static str)>;

struct Places<'a>(BTreeMap<&'a str, Place<'a>>);

impl<'a> Places<'a> {
    fn of(steps: &'a [Step]) -> Self {
        fn add<'a>(steps: &'a [Step], parent: Place<'a>, map: &mut BTreeMap<&'a str, Place<'a>>) {
            for step in steps {
                map.entry(step.id.as_str()).or_insert(parent);
                if let Some(body) = step.body() {
                    let kind = match step.action {
                        Action::Race { .. } => "race",
                        Action::Lock { .. } => "lock",
                        _ => "loop",
                    };
                    add(body, Some((step.id.as_str(), kind)), map);
                }
            }
        }
        let mut map = BTreeMap::new();
        add(steps, None, &mut map);
        Self(map)
    }

    /// Why a step that is not readable from somewhere is not.
    fn why_unreadable(&self, id: &str) -> String {
        match self.0.get(id) {
            None => "which is not a step".to_owned(),
            Some(Some((parent, kind))) => format!(
                "which is inside {kind} {parent}: read the {kind}'s output (steps.{parent}.output) instead"
            ),
            Some(None) => "which is not among its needs (directly or transitively)".to_owned(),
        }
    }
}

/// One block: the top level (`outer` empty) or a loop's body, whose steps
/// may also read what the loop step may (`outer`).
fn check_block(
    steps: &[Step],
    path: &str,
    outer: &BTreeSet<&str>,
    places: &Places<'_>,
    problems: &mut Problems,
) {
    let mut by_id: BTreeMap<&str, &Step> = BTreeMap::new();
    for step in steps {
        by_id.entry(step.id.as_str()).or_insert(step);
    }
    for step in steps {
        for need in &step.needs {
            if need == &step.id {
                problems.add(
                    &format!("{path} ({}).needs", step.id),
                    "a step cannot need itself",
                );
            } else if !by_id.contains_key(need.as_str()) {
                let why = if places.0.contains_key(need.as_str()) {
                    format!(
                        "step \"{need}\" is not beside it (a loop's body or a race's branches and the steps around them cannot need each other)"
                    )
                } else {
                    format!("unknown step \"{need}\"")
                };
                problems.add(&format!("{path} ({}).needs", step.id), why);
            }
        }
    }
    let cyclic = steps_on_cycles(&by_id);
    if !cyclic.is_empty() {
        problems.add(
            path,
            format!("needs form a cycle through: {}", cyclic.join(", ")),
        );
        return;
    }
    for step in steps {
        let references = step_expression_references(step);
        // Most steps read only what they directly need; the whole set of
        // ancestors (a walk as long as the chain before the step) is
        // worked out only for a step that reads further back, or a loop
        // (its body may read them).
        let direct = |r: &str| step.needs.iter().any(|n| n.as_str() == r) || outer.contains(r);
        let ancestors = if step.body().is_none()
            && references
                .iter()
                .all(|(_, refs)| refs.iter().all(|r| direct(r)))
        {
            BTreeSet::new()
        } else {
            ancestors(step, &by_id)
        };
        for (field, refs) in references {
            for r in refs
                .iter()
                .filter(|r| !direct(r) && !ancestors.contains(r.as_str()))
            {
                problems.add(
                    &format!("{path} ({}).{field}", step.id),
                    format!("reads steps.{r}, {}", places.why_unreadable(r)),
                );
            }
        }
        if let Action::Race { race } = &step.action {
            let mut visible = ancestors.clone();
            visible.extend(outer.iter().copied());
            let inside = format!("{path} ({}).race.steps", step.id);
            check_block(&race.steps, &inside, &visible, places, problems);
        }
        if let Action::Lock { lock } = &step.action {
            let mut visible = ancestors.clone();
            visible.extend(outer.iter().copied());
            let inside = format!("{path} ({}).lock.steps", step.id);
            check_block(&lock.steps, &inside, &visible, places, problems);
            // `output` is rendered once the block is done.
            visible.extend(lock.steps.iter().map(|s| s.id.as_str()));
            for r in lock
                .output
                .iter()
                .flat_map(Template::step_references)
                .filter(|r| !visible.contains(r.as_str()))
            {
                problems.add(
                    &format!("{path} ({}).lock.output", step.id),
                    format!("reads steps.{r}, {}", places.why_unreadable(&r)),
                );
            }
        }
        if let Action::Loop { repeat } = &step.action {
            let mut visible = ancestors;
            visible.extend(outer.iter().copied());
            let inside = format!("{path} ({}).loop.steps", step.id);
            check_block(&repeat.steps, &inside, &visible, places, problems);
            // `until` and `output` run once an iteration's body is done.
            visible.extend(repeat.steps.iter().map(|s| s.id.as_str()));
            let fields = [
                ("until", repeat.until.as_ref().map(Expr::step_references)),
                (
                    "output",
                    repeat.output.as_ref().map(Template::step_references),
                ),
            ];
            for (field, refs) in fields {
                for r in refs
                    .iter()
                    .flatten()
                    .filter(|r| !visible.contains(r.as_str()))
                {
                    problems.add(
                        &format!("{path} ({}).loop.{field}", step.id),
                        format!("reads steps.{r}, {}", places.why_unreadable(r)),
                    );
                }
            }
        }
    }
}

fn step_expression_references(step: &Step) -> Vec<(&'static str, BTreeSet<String>)> {
    let mut refs = Vec::new();
    if let Some(c) = &step.condition {
        refs.push(("if", c.step_references()));
    }
    match &step.action {
        Action::ForEach {
            for_each,
            work,
            input,
            ..
        } => {
            refs.push(("for_each", for_each.step_references()));
            refs.push(("input", input.step_references()));
            if let Work::Agent(AgentRef::Dynamic(e)) = work {
                refs.push(("agent", e.step_references()));
            }
        }
        Action::Agent { agent, input } => {
            refs.push(("input", input.step_references()));
            if let AgentRef::Dynamic(e) = agent {
                refs.push(("agent", e.step_references()));
            }
        }
        Action::Workflow { input, .. } => refs.push(("input", input.step_references())),
        Action::WaitForEvent { wait_for_event } => {
            if let Some(o) = &wait_for_event.on_timeout {
                refs.push(("wait_for_event.on_timeout", o.output.step_references()));
            }
        }
        Action::Entity { entity } => refs.push(("entity", entity.step_references())),
        Action::Lock { lock } => refs.push(("lock.entities", lock.step_references())),
        Action::Timer { .. } | Action::Loop { .. } | Action::Race { .. } => {}
    }
    if let Some(c) = &step.compensate {
        // A compensation runs after its own step completed, so it may read it.
        let mut own = c.input.step_references();
        own.remove(step.id.as_str());
        refs.push(("compensate.input", own));
    }
    refs
}

fn ancestors<'a>(step: &'a Step, by_id: &BTreeMap<&'a str, &'a Step>) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    let mut stack: Vec<&StepId> = step.needs.iter().collect();
    while let Some(id) = stack.pop() {
        if found.insert(id.as_str())
            && let Some(s) = by_id.get(id.as_str())
        {
            stack.extend(s.needs.iter());
        }
    }
    found
}

/// Kahn's algorithm: whatever cannot be ordered lies on or behind a cycle.
fn steps_on_cycles(by_id: &BTreeMap<&str, &Step>) -> Vec<String> {
    let mut pending: BTreeMap<&str, usize> = by_id
        .iter()
        .map(|(id, s)| {
            (
                *id,
                s.needs
                    .iter()
                    .filter(|n| by_id.contains_key(n.as_str()))
                    .count(),
            )
        })
        .collect();
    let mut ready: Vec<&str> = pending
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, step) in by_id {
        for need in &step.needs {
            dependents.entry(need.as_str()).or_default().push(id);
        }
    }
    while let Some(done) = ready.pop() {
        pending.remove(done);
        for id in dependents.get(done).into_iter().flatten() {
            if let Some(count) = pending.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    ready.push(id);
                }
            }
        }
    }
    pending.into_keys().map(str::to_owned).collect()
}

#[derive(Default)]
struct Problems(Vec<ValidationError>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn none<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.add(path, message);
        None
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}
