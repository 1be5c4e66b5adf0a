//! The journal of a task: what the agent's own loop recorded with
//! `step(name, fn)` (a model call, a tool call), so that a later attempt or
//! a redelivery of the same task returns each recorded value instead of
//! doing the work again. Whoever hands a task to an agent (the built-in
//! runtime, the gateway for pull and push agents) loads the journal when
//! one may exist and records entries as the agent reports them; the
//! bounds here are what every one of them enforces.

use std::fmt;

use crate::{TaskDispatched, TaskKey, TaskRole};

/// Largest value of one entry, as JSON.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Largest journal of one task, all its values together.
pub const MAX_TASK_BYTES: usize = 4 * 1024 * 1024;
/// Most entries of one task.
pub const MAX_ENTRIES: usize = 1_000;
/// Longest entry name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Names the work a journal belongs to: the task key without its
/// execution, so every attempt and every redrive of the same task (same
/// run, step, item, loop iteration and role) shares it. A restart starts
/// over: its journal is cleared when it is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JournalKey(String);

impl JournalKey {
    pub fn of(key: &TaskKey) -> Self {
        let mut text = format!("{:016x}/{}", key.run, key.step);
        if let Some(iteration) = key.iteration {
            text.push_str(&format!("@{iteration}"));
        }
        if let Some(item) = key.item {
            text.push_str(&format!("[{item}]"));
        }
        if key.role == TaskRole::Compensation {
            text.push_str("~compensation");
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JournalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a task handed out may find entries in its journal: anything but
/// the first delivery of the first attempt of the task's first execution,
/// or a copy the orchestrator sent again after a restart. Only then is the
/// journal read, so a task that was never tried before costs no read.
pub fn may_exist(task: &TaskDispatched, delivery_count: u32) -> bool {
    task.attempt > 1 || task.key.execution > 0 || task.resent || delivery_count > 1
}

/// Why an entry is refused before it is recorded.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Why a value of `bytes` bytes is refused as one entry.
pub fn check_value_size(bytes: usize) -> Result<(), String> {
    if bytes > MAX_ENTRY_BYTES {
        return Err(format!(
            "is {bytes} bytes as JSON; a journal entry holds at most {MAX_ENTRY_BYTES}"
        ));
    }
    Ok(())
}

/// Why one more entry of `bytes` is refused in a journal that holds
/// `entries` entries of `total` bytes.
pub fn check_room(entries: usize, total: usize, bytes: usize) -> Result<(), String> {
    if entries >= MAX_ENTRIES {
        return Err(format!(
            "the task's journal is full: it holds {MAX_ENTRIES} entries"
        ));
    }
    if total + bytes > MAX_TASK_BYTES {
        return Err(format!(
            "the task's journal is full: {total} bytes recorded, {bytes} more would pass {MAX_TASK_BYTES}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentName, StepId, WorkflowName};

    fn key(execution: u32) -> TaskKey {
        TaskKey {
            run: 0xab,
            execution,
            step: StepId::parse("write").unwrap(),
            item: Some(3),
            iteration: Some(2),
            role: TaskRole::Action,
        }
    }

    fn task(attempt: u32, execution: u32) -> TaskDispatched {
        TaskDispatched {
            key: key(execution),
            attempt,
            agent: AgentName::parse("coder").unwrap(),
            workflow: WorkflowName::parse("w").unwrap(),
            input: serde_json::Value::Null,
            deadline: None,
            heartbeat_timeout_ms: None,
            resent: false,
            answers: Default::default(),
        }
    }

    #[test]
    fn every_execution_and_attempt_of_a_task_shares_its_journal() {
        assert_eq!(JournalKey::of(&key(0)), JournalKey::of(&key(4)));
        assert_eq!(
            JournalKey::of(&key(0)).as_str(),
            "00000000000000ab/write@2[3]"
        );
        let mut compensation = key(0);
        compensation.role = TaskRole::Compensation;
        assert_ne!(JournalKey::of(&compensation), JournalKey::of(&key(0)));
    }

    #[test]
    fn only_a_first_try_skips_the_read() {
        assert!(!may_exist(&task(1, 0), 1));
        assert!(may_exist(&task(2, 0), 1));
        assert!(may_exist(&task(1, 1), 1));
        assert!(may_exist(&task(1, 0), 2));
        let mut resent = task(1, 0);
        resent.resent = true;
        assert!(may_exist(&resent, 1));
    }

    #[test]
    fn names_and_sizes_are_bounded() {
        assert!(check_name("model-turn-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(check_value_size(MAX_ENTRY_BYTES).is_ok());
        assert!(check_value_size(MAX_ENTRY_BYTES + 1).is_err());
        assert!(check_room(MAX_ENTRIES - 1, 0, 10).is_ok());
        assert!(check_room(MAX_ENTRIES, 0, 10).is_err());
        assert!(check_room(1, MAX_TASK_BYTES - 10, 11).is_err());
    }
}
