//! How applying a message went, as its consumer settles it.

use legato_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    Accepted,
    Ignored(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// Worth retrying later (conflicts kept losing, store unavailable).
    #[error("transient: {0}")]
    Transient(StoreError),
    /// The message can never be applied; dead-letter it with this reason.
    #[error("{0}")]
    Rejected(String),
}

impl ApplyError {
    /// The same error for another message of the batch it failed.
    pub(crate) fn again(&self) -> Self {
        match self {
            Self::Rejected(reason) => Self::Rejected(reason.clone()),
            Self::Transient(e) => Self::Transient(match e {
                StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Unavailable(other.to_string()),
            }),
        }
    }

    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Self::Transient(StoreError::Conflict(_)))
    }

    /// The store did not answer (as against losing races).
    pub(crate) fn store_unavailable(&self) -> bool {
        matches!(self, Self::Transient(StoreError::Unavailable(_)))
    }
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) | StoreError::Unavailable(_) => Self::Transient(e),
            other => Self::Rejected(other.to_string()),
        }
    }
}

/// A message posted to a mailbox: its answer comes once the batch it went
/// into is committed.
pub(crate) struct Pending(pub(crate) tokio::sync::oneshot::Receiver<Result<Applied, ApplyError>>);

impl Pending {
    pub(crate) async fn answer(self) -> Result<Applied, ApplyError> {
        self.0.await.map_err(|_| {
            ApplyError::Transient(StoreError::Unavailable(
                "the mailbox's runner stopped".into(),
            ))
        })?
    }
}
