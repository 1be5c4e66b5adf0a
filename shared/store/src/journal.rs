//! Task journals: the entries an agent's loop recorded with `step(name,
//! fn)`, kept per instance and per [`JournalKey`] beside the instance's
//! record (never inside it, so a long loop does not grow the row every
//! commit rewrites), and purged with it. An entry, once recorded, is never
//! replaced: whoever records a name second gets the first value back, so
//! two copies of one attempt racing agree on what happened.

use serde_json::Value;
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub name: String,
    pub value: Value,
    /// The attempt that recorded it.
    pub attempt: u32,
    pub recorded_at: OffsetDateTime,
}

/// What recording an entry came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Journaled {
    Recorded,
    /// An entry of that name was there: its value stands.
    RecordedBefore(Value),
    /// The journal has no room for it (see `legato_contracts::journal`).
    Full(String),
}
