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

        // Ord compares the inner string, so maps keyed by the id can be
        // searched with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
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

/// Between a tenant and the name it owns in a scoped id (`acme~order-42`);
/// no local id or name may contain it, so the split is unambiguous.
pub const TENANT_SEPARATOR: char = '~';

fn tenant_rule(v: &str) -> bool {
    bounded(v, 64)
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A child workflow's id extends its parent's (`<parent>::<step>...`,
/// see [`InstanceId::child`]), so it may be longer than one a caller picks.
fn local_instance_rule(v: &str) -> bool {
    let most = if v.contains(CHILD_SEPARATOR) {
        MAX_CHILD_ID
    } else {
        128
    };
    bounded(v, most)
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn local_workflow_rule(v: &str) -> bool {
    bounded(v, 64)
        && v.as_bytes()[0].is_ascii_lowercase()
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

/// `local`, or `tenant~local` with both parts valid.
fn scoped_rule(v: &str, local: fn(&str) -> bool) -> bool {
    match v.split_once(TENANT_SEPARATOR) {
        Some((tenant, rest)) => tenant_rule(tenant) && local(rest),
        None => local(v),
    }
}

identifier!(
    /// The tenant a caller acts for (a Microsoft Entra `tid`, an API key's
    /// tenant). Definitions and instances belong to one; ids of theirs are
    /// scoped by it.
    TenantId,
    "tenant",
    "1-64 characters of A-Z a-z 0-9 - _ .",
    tenant_rule
);

identifier!(
    /// Identifies one workflow instance: the id the caller chose (or a UUID),
    /// prefixed with its tenant (`acme~order-42`) when it has one, so two
    /// tenants' ids never meet.
    InstanceId,
    "instance id",
    "1-128 characters of A-Z a-z 0-9 - _ . :, after an optional <tenant>~",
    |v| scoped_rule(v, local_instance_rule)
);

identifier!(
    /// The registered name of a workflow definition, prefixed with its
    /// tenant (`acme~billing`) when a tenant registered it; unprefixed names
    /// are shared by every tenant.
    WorkflowName,
    "workflow name",
    "1-64 characters of a-z 0-9 - _, starting with a letter, after an optional <tenant>~",
    |v| scoped_rule(v, local_workflow_rule)
);

identifier!(
    /// The name of a schedule, prefixed with its tenant (`acme~nightly`)
    /// when it has one.
    ScheduleName,
    "schedule name",
    "1-64 characters of a-z 0-9 - _, starting with a letter, after an optional <tenant>~",
    |v| scoped_rule(v, local_workflow_rule)
);

/// The part of a scoped id that names the tenant, and the rest.
fn split_scoped(v: &str) -> (Option<&str>, &str) {
    match v.split_once(TENANT_SEPARATOR) {
        Some((tenant, local)) => (Some(tenant), local),
        None => (None, v),
    }
}

fn scoped(
    tenant: Option<&TenantId>,
    local: String,
    kind: &'static str,
    rule: &'static str,
    check: fn(&str) -> bool,
) -> Result<String, IdError> {
    if !check(&local) {
        return Err(IdError {
            kind,
            value: local,
            rule,
        });
    }
    Ok(match tenant {
        Some(tenant) => format!("{tenant}{TENANT_SEPARATOR}{local}"),
        None => local,
    })
}

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

identifier!(
    /// The name of an entity type (`customer-memory`, `repo-lock`), as its
    /// tenant knows it: an entity's tenant is always that of whoever
    /// operates it, so the name itself carries none.
    EntityType,
    "entity type",
    "1-64 characters of a-z 0-9 - _, starting with a letter",
    local_workflow_rule
);

identifier!(
    /// The key of one entity within its type (a customer's id, a
    /// repository's name).
    EntityId,
    "entity id",
    "1-128 characters of A-Z a-z 0-9 - _ . : @",
    |v| bounded(v, 128)
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
);

/// Joins a parent instance's id and the part that names one of its
/// children; a caller's own ids never contain it.
pub const CHILD_SEPARATOR: &str = "::";
/// The longest child id (local part): room for a few levels of nesting.
const MAX_CHILD_ID: usize = 512;

impl InstanceId {
    /// A fresh random id, for callers that did not choose one.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id of the child run `name` names under this instance:
    /// `<this id>::<name>`, in this instance's tenant. Every descendant's
    /// id starts with `<this id>::`.
    pub fn child(&self, name: &str) -> Result<Self, IdError> {
        Self::parse(format!("{}{CHILD_SEPARATOR}{name}", self.0))
    }

    /// Whether this is a child run's id (see [`InstanceId::child`]).
    pub fn is_child(&self) -> bool {
        self.0.contains(CHILD_SEPARATOR)
    }
}

/// `scoped`, `tenant` and `local` for an identifier that a tenant prefix
/// scopes: `local` follows the rule callers see, without a prefix of its own.
macro_rules! scoped_by_tenant {
    ($($name:ident: $kind:literal, $rule:literal, $check:expr;)*) => {$(
        impl $name {
            /// The one `local` names within `tenant`'s (or, with no tenant,
            /// among the unscoped ones).
            pub fn scoped(
                tenant: Option<&TenantId>,
                local: impl Into<String>,
            ) -> Result<Self, IdError> {
                scoped(tenant, local.into(), $kind, $rule, $check).map(Self)
            }

            /// The tenant it belongs to; none for unscoped (shared) ones.
            pub fn tenant(&self) -> Option<TenantId> {
                split_scoped(&self.0).0.map(|t| TenantId(t.to_owned()))
            }

            /// As its tenant knows it.
            pub fn local(&self) -> &str {
                split_scoped(&self.0).1
            }
        }
    )*};
}

scoped_by_tenant! {
    InstanceId: "instance id", "1-128 characters of A-Z a-z 0-9 - _ . :", local_instance_rule;
    WorkflowName: "workflow name", "1-64 characters of a-z 0-9 - _, starting with a letter", local_workflow_rule;
    ScheduleName: "schedule name", "1-64 characters of a-z 0-9 - _, starting with a letter", local_workflow_rule;
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
        assert!(EntityType::parse("customer-memory").is_ok());
        assert!(EntityType::parse("acme~memory").is_err());
        assert!(EntityId::parse("jane@example.com").is_ok());
        assert!(EntityId::parse("acme/billing").is_err());
        assert!(EntityId::parse("a~b").is_err());
    }

    #[test]
    fn scoped_ids_keep_tenants_apart() {
        let acme = TenantId::parse("acme").unwrap();
        let id = InstanceId::scoped(Some(&acme), "order-42").unwrap();
        assert_eq!(id.as_str(), "acme~order-42");
        assert_eq!(id.tenant(), Some(acme.clone()));
        assert_eq!(id.local(), "order-42");
        assert_eq!(InstanceId::parse("acme~order-42").unwrap(), id);
        let bare = InstanceId::scoped(None, "order-42").unwrap();
        assert_eq!((bare.tenant(), bare.local()), (None, "order-42"));
        // A caller cannot name another tenant's instance through its own id.
        let err = InstanceId::scoped(None, "acme~order-42").unwrap_err();
        assert_eq!(err.rule, "1-128 characters of A-Z a-z 0-9 - _ . :");
        assert!(InstanceId::scoped(Some(&acme), "beta~x").is_err());
        assert!(InstanceId::parse("a~b~c").is_err());
        assert!(InstanceId::parse("~x").is_err());
        assert!(InstanceId::parse("x~").is_err());
        let name = WorkflowName::scoped(Some(&acme), "billing").unwrap();
        assert_eq!((name.as_str(), name.local()), ("acme~billing", "billing"));
        assert!(WorkflowName::parse("Acme~billing").is_ok());
        assert!(WorkflowName::scoped(None, "a~billing").is_err());
        assert!(TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
        assert!(TenantId::parse("a~b").is_err());
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
