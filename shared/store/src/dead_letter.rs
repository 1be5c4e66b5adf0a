//! Dead letters parked for an operator: messages a consumer group gave up
//! on, moved off the broker's dead-letter queue into the store, where they
//! can be listed, looked at, sent back or discarded whatever the broker.

use legato_contracts::Topic;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{StoreError, TenantFilter};

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// [`DeadLetter::id_of`] its topic, group and message id: parking the
    /// same message twice keeps one.
    pub id: String,
    pub topic: Topic,
    /// The consumer group that gave up on it.
    pub group: String,
    pub message_id: String,
    pub routing_key: String,
    pub reason: String,
    /// Deliveries it had before it was dead-lettered.
    pub delivery_count: u32,
    /// What it says about itself, when it is a legato message.
    pub instance: Option<String>,
    pub type_name: Option<String>,
    pub tenant: Option<String>,
    pub body: Vec<u8>,
    pub parked_at: OffsetDateTime,
}

impl DeadLetter {
    pub fn id_of(topic: Topic, group: &str, message_id: &str) -> String {
        let mut hash = Sha256::new();
        for part in [topic.as_str(), group, message_id] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Where it sorts in a listing: newest first, then by id. Also the
    /// continuation token of a page that ends with it.
    pub fn sort_key(&self) -> String {
        let millis = crate::stored::millis(self.parked_at);
        let inverted = i64::MAX - millis.max(0);
        format!("{inverted:020}-{}", self.id)
    }
}

/// A page of dead letters, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    pub topic: Option<Topic>,
    pub group: Option<String>,
    pub tenant: TenantFilter,
    /// Page size; 0 means the default of 100.
    pub top: usize,
    pub continuation: Option<String>,
}

impl DeadLetterQuery {
    pub fn page_size(&self) -> usize {
        match self.top {
            0 => 100,
            n => n.min(1_000),
        }
    }

    /// The sort key to continue after, checked to be one this store made.
    pub fn after(&self) -> Result<Option<&str>, StoreError> {
        let Some(token) = self.continuation.as_deref() else {
            return Ok(None);
        };
        let valid = token.len() == 53
            && token.as_bytes()[20] == b'-'
            && token[..20].bytes().all(|b| b.is_ascii_digit())
            && token[21..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Some(token))
        } else {
            Err(StoreError::InvalidToken)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub continuation: Option<String>,
}

impl DeadLetterPage {
    /// A page of `size` from letters in sort order that all come after the
    /// query's token (one more than `size` says there is a next page).
    pub fn of(mut letters: Vec<DeadLetter>, size: usize) -> Self {
        let more = letters.len() > size;
        letters.truncate(size);
        let continuation = if more {
            letters.last().map(DeadLetter::sort_key)
        } else {
            None
        };
        Self {
            items: letters,
            continuation,
        }
    }
}
