//! Newtypes for the identifiers that cross service boundaries.
//!
//! Their rules are chosen so that every id is safe everywhere it travels:
//! as an Azure Table partition key (no `/ \ # ?` or control characters), in a
//! URL path segment, as an AMQP routing key, and (for step ids) as a CEL
//! identifier in `steps.<id>.output`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(IdError { kind: $kind, value, rule: $rule })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn bounded(value: &str, max: usize) -> bool {
    !value.is_empty() && value.len() <= max
}

identifier!(
    /// Identifies one workflow instance; chosen by the caller or a UUID.
    InstanceId,
    "instance id",
    "1-128 characters of A-Z a-z 0-9 - _ . :",
    |v| bounded(v, 128)
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
);

identifier!(
    /// The registered name of a workflow definition.
    WorkflowName,
    "workflow name",
    "1-64 characters of a-z 0-9 - _, starting with a letter",
    |v| bounded(v, 64)
        && v.as_bytes()[0].is_ascii_lowercase()
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
);

identifier!(
    /// A step's id inside one definition. It must be a CEL identifier because
    /// expressions address outputs as `steps.<id>.output`.
    StepId,
    "step id",
    "1-64 characters of A-Z a-z 0-9 _, not starting with a digit",
    |v| bounded(v, 64)
        && !v.as_bytes()[0].is_ascii_digit()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
);

identifier!(
    /// The capability an agent service offers; also its routing key on the
    /// `agent-tasks` topic.
    AgentName,
    "agent name",
    "1-63 characters of a-z 0-9 -, starting with a letter",
    |v| bounded(v, 63)
        && v.as_bytes()[0].is_ascii_lowercase()
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);

identifier!(
    /// The name of an external event an instance can wait for (an approval).
    EventName,
    "event name",
    "1-128 characters of A-Z a-z 0-9 - _ .",
    |v| bounded(v, 128)
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
);

impl InstanceId {
    /// A fresh random id, for callers that did not choose one.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_by_rule() {
        assert!(InstanceId::parse("order-42:retry.1").is_ok());
        assert!(InstanceId::parse("a/b").is_err());
        assert!(InstanceId::parse("").is_err());
        assert!(InstanceId::parse("x".repeat(129)).is_err());
        assert!(StepId::parse("fetch_data").is_ok());
        assert!(
            StepId::parse("fetch-data").is_err(),
            "hyphen would read as minus in CEL"
        );
        assert!(StepId::parse("1st").is_err());
        assert!(AgentName::parse("agent-echo").is_ok());
        assert!(AgentName::parse("Echo").is_err());
        assert!(WorkflowName::parse("feature-request").is_ok());
        assert!(WorkflowName::parse("-x").is_err());
        assert!(EventName::parse("approval.granted").is_ok());
        assert!(EventName::parse("a b").is_err());
    }

    #[test]
    fn error_names_the_kind_and_rule() {
        let err = StepId::parse("a-b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid step id \"a-b\": 1-64 characters of A-Z a-z 0-9 _, not starting with a digit"
        );
    }

    #[test]
    fn serde_rejects_invalid_ids() {
        let err = serde_json::from_str::<AgentName>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("invalid agent name"));
    }
}
