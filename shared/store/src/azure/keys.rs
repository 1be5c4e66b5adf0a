//! Row keys. Table Storage sorts keys as strings and returns them in order,
//! so every key that is read as a range is fixed-width or order-preserving.
//! Keys never contain `/ \ # ?` or control characters: instance ids are
//! restricted to `A-Z a-z 0-9 - _ . :` and anything else is hex-encoded.

use std::fmt::Write as _;

/// Unix milliseconds as 13 digits sort correctly until the year 2286.
pub(crate) const MAX_MS: i64 = 9_999_999_999_999;

/// Instance partition: the record, its timers, history pages, outbox
/// groups and claim-checked payloads.
pub(crate) const INSTANCE_ROW: &str = "i";
pub(crate) const TIMERS_ROW: &str = "t";

/// A history page is keyed by the last sequence it holds, so the pages
/// holding `seq > after` start at `history_from(after + 1)`.
pub(crate) fn history_page(last_seq: u64) -> String {
    format!("h{last_seq:020}")
}

/// A progress position as a property that compares like the number.
pub(crate) fn position(position: u64) -> String {
    format!("{position:020}")
}

pub(crate) fn history_from(seq: u64) -> String {
    history_page(seq)
}

pub(crate) const HISTORY_END: &str = "i";
pub(crate) const OUTBOX_START: &str = "o";
pub(crate) const OUTBOX_END: &str = "p";

/// Outbox groups sort by the time they were committed.
pub(crate) fn outbox_group(committed_ms: i64, nonce: &str) -> String {
    format!("o{:013}{nonce}", committed_ms.clamp(0, MAX_MS))
}

/// A part of an instance's state: `s` and its name when the name is
/// key-safe (the engine's are), `s~` and the name's hex bytes otherwise.
pub(crate) fn part_row(name: &str) -> String {
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if safe {
        format!("s{name}")
    } else {
        let mut key = String::from("s~");
        for byte in name.bytes() {
            let _ = write!(key, "{byte:02x}");
        }
        key
    }
}

/// The name a part row holds (see [`part_row`]).
pub(crate) fn part_name(row: &str) -> Option<String> {
    let rest = row.strip_prefix('s')?;
    let Some(hex) = rest.strip_prefix('~') else {
        return Some(rest.to_owned());
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A message id a commit claimed (see `Commit::claims`): `c` and the id's
/// hex bytes, so any id makes a valid key, outside every range read; an id
/// too long for a key (1 KiB) is named by its SHA-256 instead.
pub(crate) fn claim_row(message: &str) -> String {
    if message.len() <= MAX_CLAIM_TEXT {
        format!("c{}", hex(message))
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(message.as_bytes());
        let mut key = String::from("c~");
        for byte in digest {
            let _ = write!(key, "{byte:02x}");
        }
        key
    }
}

/// The longest id a claim key spells out (twice its length in hex).
const MAX_CLAIM_TEXT: usize = 256;

/// A journal entry of an instance's task: `j`, the task's hex bytes, `-`
/// and the name's hex bytes (its SHA-256 when that is too long for a key),
/// so one task's entries are one range.
pub(crate) fn journal_row(task: &str, name: &str) -> String {
    let name = if name.len() <= MAX_CLAIM_TEXT {
        hex(name)
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(name.as_bytes());
        let mut key = String::from("~");
        for byte in digest {
            let _ = write!(key, "{byte:02x}");
        }
        key
    };
    format!("j{}-{name}", hex(task))
}

/// The range holding every journal entry of one task: `-` sorts before
/// `.` and both before any hex digit.
pub(crate) fn journal_range(task: &str) -> (String, String) {
    let task = hex(task);
    (format!("j{task}-"), format!("j{task}."))
}

/// Every journal entry of an instance.
pub(crate) const JOURNAL_START: &str = "j";
pub(crate) const JOURNAL_END: &str = "k";

pub(crate) const PARTS_START: &str = "s";
pub(crate) const PARTS_END: &str = "t";

pub(crate) fn blob_row(blob: &str, part: usize) -> String {
    format!("b{blob}-{part:04}")
}

/// The range holding every part of one blob: `-` sorts before `.`.
pub(crate) fn blob_range(blob: &str) -> (String, String) {
    (format!("b{blob}-"), format!("b{blob}."))
}

/// Index table partitions.
pub(crate) const LIST_PARTITION: &str = "list";
pub(crate) const TIMER_PARTITION: &str = "timer";
pub(crate) const OUTBOX_PARTITION: &str = "outbox";

/// Newest first, ties by id descending, as the listing promises: the time
/// is inverted, and the id's bytes are inverted and hex-encoded with an
/// inverted terminator so that a longer id sorts before its prefix.
pub(crate) fn list_entry(created_ms: i64, id: &str) -> String {
    let mut key = format!("{:013}-", MAX_MS - created_ms.clamp(0, MAX_MS));
    for byte in id.bytes() {
        let _ = write!(key, "{:02x}", 255 - byte);
    }
    key.push_str("ff");
    key
}

/// Entries of instances created before `ms` sort at or after this key,
/// those created at `ms` or later sort before it.
pub(crate) fn list_created_before(ms: i64) -> String {
    format!("{:013}", MAX_MS - ms.clamp(1, MAX_MS) + 1)
}

pub(crate) fn timer_entry(due_ms: i64, instance: &str, timer: &str) -> String {
    format!("{:013}-{instance}-{}", due_ms.clamp(0, MAX_MS), hex(timer))
}

/// Every timer entry due at `now_ms` or earlier sorts before this key.
pub(crate) fn timers_due_before(now_ms: i64) -> String {
    format!("{:013}", now_ms.clamp(-1, MAX_MS - 1) + 1)
}

pub(crate) fn definition_version(version: u32) -> String {
    format!("v{version:010}")
}

/// The version a definition row's key names.
pub(crate) fn version_of_definition(key: &str) -> Option<u32> {
    key.strip_prefix('v')?.parse().ok()
}

/// A replica's report on a subject: both hex-coded, as either may hold
/// characters a key may not.
pub(crate) fn report_row(subject: &str, replica: &str) -> String {
    format!("{}-{}", hex(subject), hex(replica))
}

fn hex(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A string literal inside an OData `$filter`.
pub(crate) fn odata(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keys_sort_newest_first_then_by_id_descending() {
        let mut keys = vec![
            (list_entry(1_000, "ab"), "1000 ab"),
            (list_entry(1_000, "abc"), "1000 abc"),
            (list_entry(1_000, "b"), "1000 b"),
            (list_entry(2_000, "a"), "2000 a"),
            (list_entry(0, "z"), "0 z"),
        ];
        keys.sort();
        let order: Vec<_> = keys.into_iter().map(|(_, label)| label).collect();
        assert_eq!(order, ["2000 a", "1000 b", "1000 abc", "1000 ab", "0 z"]);
        assert!(list_entry(1_000, "zzz") < list_created_before(1_000));
        assert!(list_entry(999, "a") >= list_created_before(1_000));
    }

    #[test]
    fn timer_keys_sort_by_due_time_and_bound_by_now() {
        assert!(timer_entry(5, "i", "t/#?") < timer_entry(6, "a", "a"));
        assert!(timer_entry(5, "i", "x") < timers_due_before(5));
        assert!(timer_entry(6, "i", "x") > timers_due_before(5));
        assert!(!timer_entry(1, "i", "a/b#c?d\\e").contains(['/', '#', '?', '\\']));
    }

    #[test]
    fn part_rows_sit_between_the_outbox_and_the_timers_and_give_their_names_back() {
        for name in ["workflow", "tasks.fan-out.3", "steps.0", "odd/name#?", "s~"] {
            let row = part_row(name);
            assert!(
                row.as_str() >= PARTS_START && row.as_str() < PARTS_END,
                "{row}"
            );
            assert!(
                row.as_str() > OUTBOX_END && row.as_str() < TIMERS_ROW,
                "{row}"
            );
            assert!(!row.contains(['/', '#', '?', '\\']), "{row}");
            assert_eq!(part_name(&row).as_deref(), Some(name));
        }
    }

    #[test]
    fn claim_rows_sit_outside_the_ranges_read() {
        let long = "x".repeat(4_000);
        for message in ["3f2a-uuid", "odd/id#?\\", "", &long] {
            let row = claim_row(message);
            assert!(row.len() <= 1 + 2 * MAX_CLAIM_TEXT, "{row}");
            assert!(!row.contains(['/', '#', '?', '\\']), "{row}");
            assert!(row.as_str() < history_from(0).as_str(), "{row}");
            assert!(!row.starts_with('b'), "{row}");
        }
        assert_ne!(claim_row(&long), claim_row(&long[1..]));
    }

    #[test]
    fn history_pages_cover_the_sequences_after_a_point() {
        assert!(history_page(3) < history_from(4));
        assert!(history_page(4) >= history_from(4));
        assert!(history_page(u64::MAX).as_str() < HISTORY_END);
    }
}
