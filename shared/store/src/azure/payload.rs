//! Values of any size in Table Storage, whose limits are 64 KiB per
//! property, 1 MiB per entity and 4 MiB per batch. A value is split into
//! binary properties of one entity when it fits comfortably (so that the
//! few entities of one commit stay far below the batch limit); beyond that
//! it is claim-checked into blob rows of the same partition, written before
//! the entity that points at them. Nothing is ever truncated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::keys;
use crate::StoreError;

/// Below the 64 KiB property limit.
const CHUNK_BYTES: usize = 64_000;
/// Up to 512,000 bytes inline: four such values are one batch's worst case.
const INLINE_CHUNKS: usize = 8;
/// Up to 640,000 bytes per blob row: below the 1 MiB entity limit even as
/// base64 on the wire, which is what Azurite measures.
const BLOB_CHUNKS: usize = 10;
const BLOB_VALUE: &str = "D";

pub(crate) type Entity = Map<String, Value>;

/// A value ready to be written: properties of the owning entity, and the
/// blob rows to write first when it is claim-checked.
pub(crate) struct Encoded {
    pub props: Entity,
    pub blob: Option<Blob>,
}

pub(crate) struct Blob {
    pub id: String,
    pub rows: Vec<(String, Entity)>,
}

impl Blob {
    /// The reference the owning entity keeps: `<id>:<rows>`.
    pub(crate) fn reference(&self) -> String {
        format!("{}:{}", self.id, self.rows.len())
    }
}

pub(crate) fn encode(name: &str, bytes: &[u8]) -> Encoded {
    encode_within(name, bytes, INLINE_BYTES)
}

/// The most a value is kept inline.
pub(crate) const INLINE_BYTES: usize = INLINE_CHUNKS * CHUNK_BYTES;

/// As [`encode`], claim-checking anything over `inline` bytes: a commit of
/// many values keeps its transaction under the 4 MiB limit this way.
pub(crate) fn encode_within(name: &str, bytes: &[u8], inline: usize) -> Encoded {
    let mut props = Entity::new();
    if bytes.len() <= inline.min(INLINE_BYTES) {
        put_chunks(&mut props, name, bytes);
        return Encoded { props, blob: None };
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let rows = bytes
        .chunks(BLOB_CHUNKS * CHUNK_BYTES)
        .enumerate()
        .map(|(part, chunk)| {
            let mut row = Entity::new();
            put_chunks(&mut row, BLOB_VALUE, chunk);
            (keys::blob_row(&id, part), row)
        })
        .collect();
    let blob = Blob { id, rows };
    props.insert(format!("{name}Ref"), Value::String(blob.reference()));
    Encoded {
        props,
        blob: Some(blob),
    }
}

/// Where a stored value is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Held {
    Inline(Vec<u8>),
    Blob { id: String, parts: usize },
}

impl Held {
    /// The blob's reference, if the value is claim-checked.
    pub(crate) fn reference(&self) -> Option<String> {
        match self {
            Held::Inline(_) => None,
            Held::Blob { id, parts } => Some(format!("{id}:{parts}")),
        }
    }
}

/// The blob reference of a claim-checked value, if it is one.
pub(crate) fn reference<'a>(entity: &'a Entity, name: &str) -> Option<&'a str> {
    entity.get(&format!("{name}Ref")).and_then(Value::as_str)
}

pub(crate) fn held(entity: &Entity, name: &str) -> Result<Held, StoreError> {
    if let Some(reference) = reference(entity, name) {
        return parse_reference(reference);
    }
    take_chunks(entity, name).map(Held::Inline)
}

pub(crate) fn parse_reference(reference: &str) -> Result<Held, StoreError> {
    let (id, parts) = reference
        .split_once(':')
        .ok_or_else(|| StoreError::Corrupt(format!("blob reference {reference}")))?;
    let parts = parts
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("blob reference {reference}")))?;
    Ok(Held::Blob {
        id: id.to_owned(),
        parts,
    })
}

/// Reassembles a blob from its rows, in key order.
pub(crate) fn join_blob(rows: &[Entity], parts: usize) -> Result<Vec<u8>, StoreError> {
    if rows.len() != parts {
        // NotFound, not Corrupt: the parts of a value its owner has just
        // superseded and removed; the caller reads the owner again.
        return Err(StoreError::NotFound(format!(
            "claim-checked value has {} of its {parts} parts",
            rows.len()
        )));
    }
    let mut bytes = Vec::new();
    for row in rows {
        bytes.extend(take_chunks(row, BLOB_VALUE)?);
    }
    Ok(bytes)
}

fn put_chunks(entity: &mut Entity, name: &str, bytes: &[u8]) {
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
    entity.insert(format!("{name}N"), Value::String(chunks.len().to_string()));
    for (i, chunk) in chunks.into_iter().enumerate() {
        entity.insert(format!("{name}{i}@odata.type"), "Edm.Binary".into());
        entity.insert(format!("{name}{i}"), Value::String(STANDARD.encode(chunk)));
    }
}

fn take_chunks(entity: &Entity, name: &str) -> Result<Vec<u8>, StoreError> {
    let count: usize = text(entity, &format!("{name}N"))?
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("chunk count of {name}")))?;
    let mut bytes = Vec::new();
    for i in 0..count {
        let chunk = text(entity, &format!("{name}{i}"))?;
        bytes.extend(
            STANDARD
                .decode(chunk)
                .map_err(|e| StoreError::Corrupt(format!("chunk {i} of {name}: {e}")))?,
        );
    }
    Ok(bytes)
}

/// A string property, or a corrupt-data error naming it.
pub(crate) fn text<'a>(entity: &'a Entity, name: &str) -> Result<&'a str, StoreError> {
    entity
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("property {name} is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_stay_inline_and_round_trip() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let encoded = encode("S", &bytes);
        assert!(encoded.blob.is_none());
        assert_eq!(held(&encoded.props, "S").unwrap(), Held::Inline(bytes));
        let empty = encode("S", b"");
        assert_eq!(held(&empty.props, "S").unwrap(), Held::Inline(Vec::new()));
    }

    #[test]
    fn large_values_are_claim_checked_in_parts_below_the_entity_limit() {
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let encoded = encode("S", &bytes);
        let blob = encoded.blob.expect("claim-checked");
        assert_eq!(blob.rows.len(), 4);
        let Held::Blob { id, parts } = held(&encoded.props, "S").unwrap() else {
            panic!("expected a blob reference");
        };
        assert_eq!((id.as_str(), parts), (blob.id.as_str(), 4));
        let rows: Vec<Entity> = blob.rows.into_iter().map(|(_, row)| row).collect();
        assert_eq!(join_blob(&rows, parts).unwrap(), bytes);
        assert!(
            join_blob(&rows[..3], parts).is_err(),
            "a missing part is an error"
        );
    }
}
