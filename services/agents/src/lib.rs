//! legato's agents. Each implements [`legato_agent::Agent`]; the binaries
//! in `src/bin/` run one each on the shared worker runtime, and `legato up`
//! runs them all in one process.

pub mod approval;
pub mod coder;
pub mod data;
pub mod echo;
mod input;
pub mod planner;
mod service;

pub use service::{AgentConfig, AgentKind, build, run, run_standalone};
