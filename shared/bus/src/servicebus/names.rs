//! What legato's topics, consumer groups and routing keys are called in a
//! Service Bus namespace, and how a group's routing-key patterns become
//! subscription rules.
//!
//! - Topic `<prefix><topic>` for each of `commands`, `agent-tasks`,
//!   `agent-results`, `progress`, and `<prefix>dead-letters`.
//! - A consumer group is a subscription of its topic. Service Bus allows 50
//!   characters (letters, digits, `.`, `-`, `_`); a longer or other name is
//!   shortened to its first 33 allowed characters, `-` and 16 hex digits of
//!   its hash, so it stays recognisable and distinct.
//! - The routing key travels as the message's `Label` (`Subject` in newer
//!   SDKs). A binding becomes one rule: an exact key a correlation filter
//!   on `Label`; `#` the true filter `1=1`; `prefix.#` the SQL filter
//!   `sys.Label = 'prefix' OR sys.Label LIKE 'prefix.%' ESCAPE '!'`. Other
//!   AMQP patterns (`*`, `#` inside a key) have no exact Service Bus
//!   equivalent and are refused when subscribing.

use legato_contracts::Topic;

use crate::BusError;

/// The topic the adapter's own dead-lettering writes to.
pub(super) const DEAD_LETTERS: &str = "dead-letters";
const MAX_SUBSCRIPTION_NAME: usize = 50;

/// 64-bit FNV-1a: stable across builds and platforms, which a name that
/// must be found again by the next process needs.
pub(super) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(super) fn topic_name(prefix: &str, topic: Topic) -> String {
    format!("{prefix}{}", topic.as_str())
}

pub(super) fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}{DEAD_LETTERS}")
}

/// Every topic the adapter uses: legato's four and the dead letters.
pub(super) fn all_topics(prefix: &str) -> Vec<String> {
    Topic::ALL
        .iter()
        .map(|t| topic_name(prefix, *t))
        .chain([dead_letter_topic(prefix)])
        .collect()
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

pub(super) fn subscription_name(group: &str) -> String {
    if !group.is_empty() && group.len() <= MAX_SUBSCRIPTION_NAME && group.chars().all(allowed) {
        return group.to_owned();
    }
    let head: String = group.chars().filter(|c| allowed(*c)).take(33).collect();
    format!("{head}-{:016x}", fnv(group))
}

/// The dead-letter topic's subscription holding one group's dead letters,
/// and the `Label` its filter selects.
pub(super) fn dead_letter_subscription(topic: Topic, group: &str) -> (String, String) {
    let label = format!("{}/{group}", topic.as_str());
    (
        subscription_name(&format!("{}.{group}", topic.as_str())),
        label,
    )
}

/// A subscription rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleFilter {
    /// Every message (`1=1`).
    All,
    /// No message (`1=0`): a group bound to nothing.
    Nothing,
    /// `Label` equal to this key (a correlation filter).
    Label(String),
    /// `Label` equal to this prefix or starting with `prefix.` (SQL).
    LabelPrefix(String),
}

impl RuleFilter {
    pub(super) fn from_binding(pattern: &str) -> Result<Self, BusError> {
        if pattern == "#" {
            return Ok(Self::All);
        }
        let (base, prefix) = match pattern.strip_suffix(".#") {
            Some(base) => (base, true),
            None => (pattern, false),
        };
        if base.is_empty()
            || base
                .split('.')
                .any(|w| w == "*" || w == "#" || w.is_empty())
        {
            return Err(BusError::Rejected(format!(
                "routing pattern {pattern:?}: Service Bus rules express exact keys, `#` and \
                 `prefix.#`; `*` and inner `#` have no exact equivalent"
            )));
        }
        Ok(if prefix {
            Self::LabelPrefix(base.to_owned())
        } else {
            Self::Label(base.to_owned())
        })
    }

    pub(super) fn matches(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Nothing => false,
            Self::Label(l) => l == key,
            Self::LabelPrefix(p) => {
                key == p
                    || key
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            }
        }
    }

    /// The SQL expression of a SQL filter (`None` for a correlation one).
    pub fn sql(&self) -> Option<String> {
        match self {
            Self::All => Some("1=1".into()),
            Self::Nothing => Some("1=0".into()),
            Self::Label(_) => None,
            Self::LabelPrefix(p) => {
                let literal = p.replace('\'', "''");
                let pattern: String = literal
                    .chars()
                    .flat_map(|c| match c {
                        '%' | '_' | '!' => vec!['!', c],
                        c => vec![c],
                    })
                    .collect();
                Some(format!(
                    "sys.Label = '{literal}' OR sys.Label LIKE '{pattern}.%' ESCAPE '!'"
                ))
            }
        }
    }

    /// Reads back a filter this adapter wrote; `None` for anything else
    /// (somebody else's rule), which routing then assumes may match.
    pub(super) fn recognise(kind: &str, sql: Option<&str>, label: Option<&str>) -> Option<Self> {
        match (kind, sql, label) {
            ("TrueFilter", ..) => Some(Self::All),
            ("FalseFilter", ..) => Some(Self::Nothing),
            ("CorrelationFilter", _, Some(label)) => Some(Self::Label(label.to_owned())),
            ("SqlFilter", Some("1=1"), _) => Some(Self::All),
            ("SqlFilter", Some("1=0"), _) => Some(Self::Nothing),
            ("SqlFilter", Some(sql), _) => {
                let literal = sql.strip_prefix("sys.Label = '")?.split("' OR ").next()?;
                let candidate = Self::LabelPrefix(literal.replace("''", "'"));
                (candidate.sql().as_deref() == Some(sql)).then_some(candidate)
            }
            _ => None,
        }
    }

    /// The rule's name: stable for the same binding, so subscribing again
    /// finds it instead of adding a second one.
    pub fn rule_name(&self) -> String {
        match self {
            Self::All => "all".into(),
            Self::Nothing => "nothing".into(),
            Self::Label(l) => format!("key-{:016x}", fnv(l)),
            Self::LabelPrefix(p) => format!("prefix-{:016x}", fnv(p)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn long_or_odd_group_names_become_valid_distinct_subscriptions() {
        assert_eq!(subscription_name("orchestrator"), "orchestrator");
        let a = subscription_name("agent-approval-cancel-0123456789abcdef0123456789abcdef");
        let b = subscription_name("agent-approval-cancel-0123456789abcdef0123456789abcdee");
        assert!(a.len() <= 50 && b.len() <= 50 && a != b, "{a} {b}");
        assert!(a.starts_with("agent-approval-cancel-"));
        assert!(subscription_name("a/b c").chars().all(allowed));
    }

    #[test]
    fn bindings_become_filters_that_route_like_amqp() {
        let cases = [
            ("#", &["", "a", "a.b"][..], &[][..]),
            ("echo", &["echo"], &["echo.x", "coder"]),
            (
                "cancel.#",
                &["cancel", "cancel.abc", "cancel.a.b"],
                &["cancelled", "x.cancel"],
            ),
        ];
        for (pattern, hits, misses) in cases {
            let f = RuleFilter::from_binding(pattern).unwrap();
            for key in hits {
                assert!(
                    f.matches(key) && crate::routing_key_matches(pattern, key),
                    "{pattern} {key}"
                );
            }
            for key in misses {
                assert!(
                    !f.matches(key) && !crate::routing_key_matches(pattern, key),
                    "{pattern} {key}"
                );
            }
        }
        for refused in ["a.*", "*.b", "a.#.b", ""] {
            assert!(RuleFilter::from_binding(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn sql_prefix_filters_escape_and_read_back() {
        let f = RuleFilter::LabelPrefix("it's_50%!".into());
        let sql = f.sql().unwrap();
        assert_eq!(
            sql,
            "sys.Label = 'it''s_50%!' OR sys.Label LIKE 'it''s!_50!%!!.%' ESCAPE '!'"
        );
        assert_eq!(
            RuleFilter::recognise("SqlFilter", Some(&sql), None),
            Some(f)
        );
        assert_eq!(
            RuleFilter::recognise("SqlFilter", Some("price > 3"), None),
            None
        );
    }
}
