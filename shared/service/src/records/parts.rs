//! An engine state as a small row plus parts, so a commit writes what the
//! decision changed rather than the whole instance: the definition, the
//! steps in groups, and each step's task slots in runs. A state's steps and
//! slots are shared (`Arc`) with the state it was decided from, so what a
//! decision did not touch is the same allocation, found by pointer.
//!
//! Part names: `workflow`; `steps.<group>`, a map of step id to the step
//! without its slots plus their count; `tasks.<step id>.<run>`, a run of
//! slots. Which group holds a step and how long a run is follow from the
//! definition and the slot count alone, so a part left over from an earlier
//! shape (a redrive onto a shorter definition) is never read.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use legato_engine::{InstanceState, StepState, TaskSlot};
use legato_store::{JsonText, StateParts, StoreError};
use legato_workflow::Workflow;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const WORKFLOW: &str = "workflow";

/// Steps per group: at least 64, and at most 16 groups.
fn steps_per_group(steps: usize) -> usize {
    steps.div_ceil(16).max(64)
}

/// Slots per run: at least 256, and at most 32 runs per step.
fn slots_per_run(slots: usize) -> usize {
    slots.div_ceil(32).max(256)
}

/// How many runs hold a step's slots.
fn run_count(slots: usize) -> usize {
    slots.div_ceil(slots_per_run(slots))
}

fn group_name(group: usize) -> String {
    format!("steps.{group}")
}

fn run_name(step: &str, run: usize) -> String {
    format!("tasks.{step}.{run}")
}

/// A step as its group keeps it.
#[derive(Serialize, Deserialize)]
struct StoredStep {
    #[serde(flatten)]
    step: StepState,
    #[serde(default)]
    slots: usize,
}

fn corrupt(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| corrupt("state part", e))
}

/// Whether a state is small enough to keep whole in its row: one group of
/// steps, one run of slots per step. Writing one row is cheaper than a row
/// and two parts, and such a state costs little to write whole.
fn fits_in_row(state: &InstanceState) -> bool {
    state.steps.len() <= steps_per_group(0)
        && state
            .steps
            .values()
            .all(|s| s.tasks.len() <= slots_per_run(0))
}

/// The row's state and the parts to write or remove for `after`, given
/// `before`, the state whose parts the store holds now. `None`: it holds
/// none, and the state stays whole in the row while it is small, or every
/// part is written. A state once in parts stays in parts.
pub fn split(
    before: Option<&InstanceState>,
    after: &InstanceState,
) -> Result<(JsonText, StateParts), StoreError> {
    let Some(workflow) = &after.workflow else {
        // Not started: no definition yet and no steps; one row holds it.
        return Ok((JsonText::of(after)?, StateParts::new()));
    };
    if before.is_none() && fits_in_row(after) {
        return Ok((JsonText::of(after)?, StateParts::new()));
    }
    let core = JsonText::of(&after.without_steps())?;
    let mut parts = StateParts::new();
    // Another definition (a redrive onto a later version) reshapes every
    // group: all are written, and the names only the old shape used go.
    let same_definition = |b: &&InstanceState| {
        b.workflow
            .as_ref()
            .is_some_and(|w| Arc::ptr_eq(w, workflow))
    };
    if let Some(old) = before.filter(|b| b.workflow.is_some() && !same_definition(b)) {
        for gone in names(old).difference(&names(after)) {
            parts.insert(gone.clone(), None);
        }
    }
    let before = before.filter(same_definition);
    if before.is_none() {
        parts.insert(WORKFLOW.into(), Some(to_value(&**workflow)?));
    }
    // By position, so finding what changed costs a pointer comparison per
    // step rather than two lookups by id.
    let now = after.steps_by_position(workflow);
    let was = before.map(|b| b.steps_by_position(workflow));
    let was_at = |position: usize| {
        was.as_ref()
            .and_then(|w| w.get(position).copied().flatten())
    };
    // Every step (loops' bodies after the top level), by the positions
    // `steps_by_position` reads them in.
    let all = workflow.all_steps();
    let per_group = steps_per_group(all.len());
    for (group, steps) in all.chunks(per_group).enumerate() {
        let first = group * per_group;
        let positions = first..first + steps.len();
        let changed =
            |position: usize| match (was_at(position), now.get(position).copied().flatten()) {
                (Some(old), Some(new)) => !Arc::ptr_eq(old, new),
                (None, None) => false,
                _ => true,
            };
        if !positions.clone().any(changed) {
            continue;
        }
        let mut entries = Map::new();
        for (position, step) in positions.zip(steps) {
            let Some(state) = now.get(position).copied().flatten() else {
                continue;
            };
            let stored = StoredStep {
                step: state.without_tasks(),
                slots: state.tasks.len(),
            };
            entries.insert(step.id.to_string(), to_value(&stored)?);
            let old = was_at(position).map_or(&[][..], |s| &s.tasks[..]);
            runs(&mut parts, step.id.as_str(), old, &state.tasks)?;
        }
        parts.insert(group_name(group), Some(Value::Object(entries)));
    }
    Ok((core, parts))
}

/// The runs of one step's slots that changed.
fn runs(
    parts: &mut StateParts,
    step: &str,
    old: &[Arc<TaskSlot>],
    new: &[Arc<TaskSlot>],
) -> Result<(), StoreError> {
    let per_run = slots_per_run(new.len());
    let reshaped = old.len() != new.len();
    for (run, slots) in new.chunks(per_run).enumerate() {
        let from = run * per_run;
        let same = !reshaped
            && slots
                .iter()
                .zip(&old[from..])
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            parts.insert(run_name(step, run), Some(to_value(slots)?));
        }
    }
    if reshaped {
        // Runs beyond the new length are never read; remove them anyway.
        for run in run_count(new.len())..run_count(old.len()) {
            parts.insert(run_name(step, run), None);
        }
    }
    Ok(())
}

/// The names of the parts a state is kept in, for removing leftovers.
fn names(state: &InstanceState) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(workflow) = &state.workflow else {
        return names;
    };
    names.insert(WORKFLOW.to_owned());
    let all = workflow.all_steps();
    let per_group = steps_per_group(all.len());
    for (group, steps) in all.chunks(per_group).enumerate() {
        names.insert(group_name(group));
        for step in steps {
            let slots = state
                .steps
                .get(step.id.as_str())
                .map_or(0, |s| s.tasks.len());
            for run in 0..run_count(slots) {
                names.insert(run_name(step.id.as_str(), run));
            }
        }
    }
    names
}

/// The state a row and its parts hold.
pub fn join(id: &str, core: &JsonText, parts: &StateParts) -> Result<InstanceState, StoreError> {
    let mut state: InstanceState = core
        .read()
        .map_err(|e| corrupt(format_args!("state of instance {id}"), e))?;
    let Some(workflow) = part(parts, WORKFLOW) else {
        // Kept whole in the row (not started, or written before parts).
        return Ok(state);
    };
    let workflow = definition(id, workflow)?;
    let all = workflow.all_steps();
    let per_group = steps_per_group(all.len());
    for (group, steps) in all.chunks(per_group).enumerate() {
        let name = group_name(group);
        let entries = part(parts, &name)
            .and_then(Value::as_object)
            .ok_or_else(|| missing(id, &name))?;
        for step in steps {
            let Some(entry) = entries.get(step.id.as_str()) else {
                continue;
            };
            let StoredStep {
                step: mut state_of_step,
                slots,
            } = StoredStep::deserialize(entry)
                .map_err(|e| corrupt(format_args!("instance {id}, step {}", step.id), e))?;
            for run in 0..run_count(slots) {
                let name = run_name(step.id.as_str(), run);
                let run_slots: Vec<TaskSlot> = part(parts, &name)
                    .map(Vec::<TaskSlot>::deserialize)
                    .transpose()
                    .map_err(|e| corrupt(format_args!("instance {id}, {name}"), e))?
                    .ok_or_else(|| missing(id, &name))?;
                state_of_step
                    .tasks
                    .extend(run_slots.into_iter().map(Arc::new));
            }
            if state_of_step.tasks.len() != slots {
                return Err(corrupt(
                    format_args!("instance {id}, step {}", step.id),
                    format!(
                        "{} task slots stored, {slots} expected",
                        state_of_step.tasks.len()
                    ),
                ));
            }
            state.steps.insert(step.id.clone(), Arc::new(state_of_step));
        }
    }
    state.workflow = Some(workflow);
    Ok(state)
}

/// Definitions read from parts, by the SHA-256 of their JSON: reading one
/// validates it again (for a definition of thousands of steps, far longer
/// than the rest of a load), and instances of one definition then share it.
static DEFINITIONS: LazyLock<Mutex<HashMap<Vec<u8>, Arc<Workflow>>>> =
    LazyLock::new(Mutex::default);
const DEFINITIONS_KEPT: usize = 256;

fn definition(id: &str, part: &Value) -> Result<Arc<Workflow>, StoreError> {
    let text = serde_json::to_vec(part).map_err(|e| corrupt("definition", e))?;
    let key = Sha256::digest(&text).to_vec();
    if let Some(known) = DEFINITIONS.lock().ok().and_then(|d| d.get(&key).cloned()) {
        return Ok(known);
    }
    let workflow = Arc::new(
        Workflow::deserialize(part)
            .map_err(|e| corrupt(format_args!("definition of instance {id}"), e))?,
    );
    if let Ok(mut known) = DEFINITIONS.lock() {
        if known.len() >= DEFINITIONS_KEPT {
            known.clear();
        }
        known.insert(key, workflow.clone());
    }
    Ok(workflow)
}

fn missing(id: &str, name: &str) -> StoreError {
    corrupt(
        format_args!("instance {id}"),
        format!("part {name} missing"),
    )
}

fn part<'a>(parts: &'a StateParts, name: &str) -> Option<&'a Value> {
    parts.get(name).and_then(Option::as_ref)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use legato_contracts::{InstanceId, TaskKey, TaskRole};
    use legato_engine::{Event, decide};
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    const ITEMS: u32 = 600;

    fn started() -> InstanceState {
        let workflow = legato_workflow::from_value(json!({
            "name": "parts", "version": 1,
            "steps": [
                {"id": "a", "agent": "echo", "input": {"v": "${{ input.n }}"}},
                {"id": "fan", "needs": ["a"], "for_each": "${{ input.items }}", "max_parallel": 2,
                 "agent": "echo", "input": {"item": "${{ item }}"}}
            ]
        }))
        .unwrap();
        let id = InstanceId::parse("parts-1").unwrap();
        let event = Event::Started {
            at: OffsetDateTime::now_utc(),
            instance: id.clone(),
            workflow: Arc::new(workflow),
            input: json!({"n": 1, "items": (0..ITEMS).collect::<Vec<_>>()}),
            tenant: None,
            run: 7,
            created_at: None,
            parent: None,
            budget: None,
            serves: None,
        };
        decide(&InstanceState::new(id), &event).state
    }

    fn complete(state: &InstanceState, step: &str, item: Option<u32>) -> InstanceState {
        let key = TaskKey {
            run: state.run,
            execution: state.execution,
            step: step.parse().unwrap(),
            item,
            iteration: None,
            role: TaskRole::Action,
        };
        let event = Event::TaskCompleted {
            at: OffsetDateTime::now_utc(),
            key,
            attempt: 1,
            output: json!({"done": item}),
            custom_status: None,
            usage: None,
        };
        let decision = decide(state, &event);
        assert!(decision.applied(), "{:?}", decision.outcome);
        decision.state
    }

    /// The store's view after writing `changes` over `stored`.
    fn apply(stored: &mut StateParts, changes: StateParts) {
        for (name, part) in changes {
            match part {
                Some(value) => stored.insert(name, Some(value)),
                None => stored.remove(&name),
            };
        }
    }

    #[test]
    fn a_decision_writes_only_the_parts_it_changed_and_the_parts_give_the_state_back() {
        // Two steps and no slots yet: the row holds it whole.
        let first = started();
        let (core, written) = split(None, &first).unwrap();
        assert!(written.is_empty(), "{:?}", written.keys());
        assert_eq!(join("parts-1", &core, &written).unwrap(), first);

        // `a` completes and the for_each starts 600 items: too large for
        // the row, so every part is written and the row keeps the rest.
        let second = complete(&first, "a", None);
        let (core, written) = split(None, &second).unwrap();
        let row: Value = core.read().unwrap();
        assert!(row.get("steps").is_none_or(|s| s == &json!({})), "{core:?}");
        assert!(row.get("workflow").is_none(), "{core:?}");
        let names: Vec<_> = written.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "steps.0",
                "tasks.a.0",
                "tasks.fan.0",
                "tasks.fan.1",
                "tasks.fan.2",
                "workflow"
            ]
        );
        let mut stored = StateParts::new();
        apply(&mut stored, written);
        assert_eq!(join("parts-1", &core, &stored).unwrap(), second);

        // Item 0 completes and item 2 is dispatched: run 0 changes; the
        // other runs, `a` and the definition are not written again.
        let third = complete(&second, "fan", Some(0));
        let (core, written) = split(Some(&second), &third).unwrap();
        assert_eq!(
            written.keys().collect::<Vec<_>>(),
            ["steps.0", "tasks.fan.0"]
        );
        apply(&mut stored, written);
        assert_eq!(join("parts-1", &core, &stored).unwrap(), third);
    }

    #[test]
    fn a_record_written_whole_before_parts_still_reads() {
        let state = complete(&started(), "a", None);
        let whole = JsonText::of(&state).unwrap();
        assert_eq!(join("parts-1", &whole, &StateParts::new()).unwrap(), state);
    }

    #[test]
    fn a_missing_run_is_reported_not_read_as_fewer_items() {
        let state = complete(&started(), "a", None);
        let (core, mut parts) = split(None, &state).unwrap();
        parts.remove("tasks.fan.1");
        let error = join("parts-1", &core, &parts).unwrap_err().to_string();
        assert!(error.contains("tasks.fan.1"), "{error}");
    }
}
