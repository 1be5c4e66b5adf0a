//! An instance record's version as this store hands it out: what the next
//! commit must know of the record it replaces.

use crate::Version;

/// The ETag (the condition of the next commit), the state's blob reference
/// (so that commit can remove a superseded claim-checked state) and whether
/// the record keeps parts (so the instance row can say so, and a load of a
/// record without parts is one point read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordVersion {
    pub etag: String,
    pub state_ref: Option<String>,
    pub parts: bool,
}

impl RecordVersion {
    pub fn encode(&self) -> Version {
        Version(format!(
            "{}|{}|{}",
            self.etag,
            self.state_ref.as_deref().unwrap_or_default(),
            if self.parts { "p" } else { "" }
        ))
    }

    /// The version's parts; a version this store did not make is taken as
    /// an ETag alone (its commit is refused as a conflict, or lands on a
    /// record whose parts the flag then conservatively keeps).
    pub fn decode(version: &Version) -> Self {
        let mut fields = version.0.rsplitn(3, '|');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(parts), Some(state_ref), Some(etag)) => Self {
                etag: etag.to_owned(),
                state_ref: Some(state_ref.to_owned()).filter(|r| !r.is_empty()),
                parts: parts == "p",
            },
            _ => Self {
                etag: version.0.clone(),
                state_ref: None,
                parts: true,
            },
        }
    }
}
