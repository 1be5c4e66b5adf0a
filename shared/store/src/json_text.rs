//! JSON kept as its text between the engine and the store.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::StoreError;

/// A JSON document as its text. An instance's state and its history's
/// events are written and read this way, so neither a commit nor a load
/// builds a tree of values on the way (with its allocations, its copy and
/// its drop, much of their cost). Inside another document it is written as
/// the JSON it holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// `value`, written as JSON.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Self, StoreError> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(|e| StoreError::Corrupt(format!("value as JSON: {e}")))
    }

    /// Stored text, checked to be one JSON document.
    pub fn parse(text: String) -> Result<Self, StoreError> {
        RawValue::from_string(text)
            .map(Self)
            .map_err(|e| StoreError::Corrupt(format!("stored JSON: {e}")))
    }

    /// Stored bytes, checked to be one JSON document.
    pub fn parse_bytes(bytes: Vec<u8>) -> Result<Self, StoreError> {
        let text = String::from_utf8(bytes)
            .map_err(|e| StoreError::Corrupt(format!("stored JSON is not UTF-8: {e}")))?;
        Self::parse(text)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The document read as a `T`.
    pub fn read<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }
}

/// The same text: a document read back is the one written.
impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_goes_in_and_out_unchanged_and_reads_as_values() {
        let doc = JsonText::of(&serde_json::json!({"a": [1, "ż"], "b": null})).unwrap();
        assert_eq!(doc.as_str(), r#"{"a":[1,"ż"],"b":null}"#);
        let again = JsonText::parse_bytes(doc.as_str().as_bytes().to_vec()).unwrap();
        assert_eq!(again, doc);
        let value: serde_json::Value = again.read().unwrap();
        assert_eq!(value["a"][1], "ż");
    }

    #[test]
    fn stored_text_that_is_not_one_document_is_corrupt() {
        for text in ["", "{", "[1] [2]", "nul"] {
            let err = JsonText::parse(text.to_owned()).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{text:?}: {err:?}");
        }
        assert!(JsonText::parse_bytes(vec![b'"', 0xff, b'"']).is_err());
    }
}
