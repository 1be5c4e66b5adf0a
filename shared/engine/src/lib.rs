//! The pure workflow engine.
//!
//! [`decide`] takes an instance's state and one [`Event`] and returns the new
//! state plus the [`Command`]s the caller must carry out (dispatch a task,
//! schedule a timer, publish progress, ...). It does no I/O, reads no clock
//! and draws no random numbers: time and ids arrive inside events. That is
//! what makes an instance durable: its history of accepted events, replayed
//! through `decide` from [`InstanceState::new`], rebuilds the same state.
//!
//! Delivery to the engine is at-least-once, so `decide` recognises duplicate
//! and stale events (a second result for the same task attempt, a result
//! after termination, a timer that was cancelled) and ignores them: the
//! [`Decision`] says [`Outcome::Ignored`] and the state is unchanged.

mod children;
mod command;
mod decide;
pub mod entities;
mod entity_steps;
mod event;
mod iterations;
mod lifecycle;
mod locks;
mod questions;
mod races;
pub use lifecycle::{redrive_onto_refused, redrive_refused};
mod scheduler;
mod spending;
mod state;
mod tasks;

pub use children::{MAX_DEPTH, result_of};
pub use command::{ChildResult, ChildStart, Command};
pub use decide::{Decision, Outcome, decide, replay};
pub use entity_steps::EntitySlot;
pub use event::{AgentNews, Event, TimerKey};
pub use locks::LockHold;
pub use spending::BUDGET_EXCEEDED;
pub use state::{
    ChildSlot, CompensationState, InstanceState, PendingEvent, Question, SlotStatus, StepState,
    StepStatus, TaskSlot,
};
