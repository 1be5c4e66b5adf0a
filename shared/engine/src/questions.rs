//! Questions a task asks a person from inside its work (`ask`): the
//! attempt ends without holding a worker, the task waits (hours or days,
//! or until its optional timeout), and the event that answers it sends the
//! task again with every answer so far, so the agent replays its journal
//! to the question and goes on. Asking does not count against the step's
//! retry policy.

use legato_contracts::{EventName, ProgressKind, TaskError, TaskKey, TaskRole};
use serde_json::{Value, json};

use crate::TimerKey;
use crate::decide::{Ctx, Ignored, ignore};
use crate::state::{Question, SlotStatus, StepStatus};
use crate::tasks::{self, slot_mut};

/// What a task attempt asked.
pub(crate) struct Asked<'a> {
    pub name: &'a EventName,
    pub question: &'a str,
    pub schema: Option<&'a Value>,
    pub timeout_ms: Option<u64>,
}

pub(crate) fn asked(
    ctx: &mut Ctx,
    key: &TaskKey,
    attempt: u32,
    asked: &Asked<'_>,
) -> Result<(), Ignored> {
    if key.role != TaskRole::Action {
        return ignore(format!("compensation {key} cannot ask a person"));
    }
    tasks::end_attempt(ctx, key, attempt)?;
    let Some(slot) = slot_mut(ctx, key) else {
        return ignore(format!("unknown task {key}"));
    };
    slot.status = SlotStatus::Backoff;
    slot.asks += 1;
    slot.question = Some(Question {
        name: asked.name.clone(),
        text: asked.question.to_owned(),
        schema: asked.schema.cloned(),
        attempt,
    });
    if let Some(ms) = asked.timeout_ms {
        let due = ctx.at_plus(ms);
        ctx.schedule(
            TimerKey::AskTimeout {
                key: key.clone(),
                attempt,
            },
            due,
        );
    }
    // A plain agent step waits as a wait_for_event step does; a for_each
    // item waits within its running step.
    if key.item.is_none()
        && let Some(step) = ctx.state.step_mut(&key.step)
    {
        step.status = StepStatus::Waiting;
    }
    ctx.progress(ProgressKind::InputRequested)
        .step(&key.step)
        .item(key.item)
        .attempt(attempt)
        .message(asked.question)
        .data(json!({ "name": asked.name, "schema": asked.schema }));
    // As for a step that waits: an event raised before anyone asked is
    // kept, and answers the first question of its name.
    if let Some(i) = ctx
        .state
        .pending_events
        .iter()
        .position(|e| &e.name == asked.name)
    {
        let early = ctx.state.pending_events.remove(i);
        answer(ctx, &early.name, &early.data);
    }
    Ok(())
}

/// Every task waiting on a question named `name`.
fn asking(ctx: &Ctx, name: &EventName) -> Vec<(TaskKey, u32)> {
    ctx.state
        .action_slots()
        .into_iter()
        .filter_map(|(key, slot)| {
            let question = slot.question.as_ref()?;
            (slot.status == SlotStatus::Backoff && &question.name == name)
                .then_some((key, question.attempt))
        })
        .collect()
}

/// Answers every task waiting on `name`, each sent again with the answer;
/// false when none waits.
pub(crate) fn answer(ctx: &mut Ctx, name: &EventName, data: &Value) -> bool {
    let waiting = asking(ctx, name);
    for (key, attempt) in &waiting {
        ctx.cancel_timer(TimerKey::AskTimeout {
            key: key.clone(),
            attempt: *attempt,
        });
        if let Some(slot) = slot_mut(ctx, key) {
            slot.question = None;
            slot.answers.insert(name.to_string(), data.clone());
        }
        if key.item.is_none()
            && let Some(step) = ctx.state.step_mut(&key.step)
        {
            step.status = StepStatus::Running;
        }
        ctx.progress(ProgressKind::EventReceived)
            .step(&key.step)
            .item(key.item)
            .data(json!({ "event": name, "question": true }));
        tasks::dispatch(ctx, key);
    }
    !waiting.is_empty()
}

/// A question unanswered for its timeout fails its step.
pub(crate) fn timed_out(ctx: &mut Ctx, key: &TaskKey, attempt: u32) {
    let still = tasks::slot_of(&ctx.state, key).is_some_and(|s| {
        s.status == SlotStatus::Backoff && s.question.as_ref().is_some_and(|q| q.attempt == attempt)
    });
    if !still {
        return;
    }
    let name = tasks::slot_of(&ctx.state, key)
        .and_then(|s| s.question.as_ref())
        .map(|q| q.name.to_string())
        .unwrap_or_default();
    if let Some(slot) = slot_mut(ctx, key) {
        slot.question = None;
    }
    let error = TaskError {
        message: format!("no answer to question {name}"),
        retryable: false,
    };
    tasks::fail_attempt(ctx, key, attempt, &error);
}
