//! Live figures about agents, added up from every replica that runs or
//! hands out their tasks (the built-in agents' processes, the gateway for
//! pull and push agents): tasks running, completed and failed in the last
//! five minutes, the median duration, and the workers seen polling.
//!
//! Each replica keeps a [`Tally`] of what it saw (pure, in memory), and a
//! [`reporter`] writes it to the store every few seconds as one report per
//! agent; [`Figures::sum`] adds the replicas' reports up. A replica that
//! stops takes its figures with it once its reports run out.

mod durations;
mod figures;
pub mod reporter;
mod tally;

pub use durations::Durations;
pub use figures::{AgentReport, Figures, WorkerSeen};
pub use reporter::report_every;
pub use tally::{Outcome, Tally};

/// The window completions, failures and durations are counted over.
pub const WINDOW: time::Duration = time::Duration::minutes(5);
