//! The agent side of legato: an agent implements [`Agent`] (one async
//! method); the [`Worker`] runtime does everything around it that must be
//! right for at-least-once delivery: consuming the agent's queue with a
//! concurrency cap, recognising redelivered attempts, heartbeats and
//! progress, cancellation, and draining on shutdown.

mod entities;
mod journal;
pub mod llm;
mod output;
mod task;
mod worker;

pub use entities::Entity;
pub use output::Output;
pub use task::{Agent, Task, TaskContext};
pub use worker::{Worker, WorkerSettings};
