use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an instance is in its life, as Durable Functions names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuntimeStatus {
    /// Accepted but the orchestrator has not run it yet.
    Pending,
    Running,
    /// Paused by a caller: results are kept but nothing new is dispatched.
    Suspended,
    Completed,
    Failed,
    Terminated,
}

impl RuntimeStatus {
    pub const ALL: [RuntimeStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Suspended,
        Self::Completed,
        Self::Failed,
        Self::Terminated,
    ];

    /// A finished instance only changes again through a restart or a purge.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Terminated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Suspended => "Suspended",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Terminated => "Terminated",
        }
    }

    /// Parses the exact name used on the wire and in the store.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
