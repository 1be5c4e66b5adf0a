//! The agent registry: which agents exist, of what kind, and who owns them.
//! Registrations live in the store (so every gateway and orchestrator
//! replica agrees) as a small document the store keeps whole.
//!
//! Ownership follows tenants: an agent registered by a caller with a tenant
//! is that tenant's: only its instances' tasks reach it, and only its
//! workers may take them. One registered without a tenant (the built-in
//! agents, the catalogue, a platform team) is shared by every tenant, and
//! only workers without a tenant serve it. Names are one namespace, so a
//! name another tenant holds is refused as taken.

use std::path::Path;

use axum::http::StatusCode;
use legato_bus::Bus;
use legato_contracts::{AgentName, TenantId};
use legato_service::problem::Problem;
use legato_store::{AgentRecord, Expected, Store, StoreError, StoredAgent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// How long a worker holds a task between heartbeats when its
/// registration does not say.
pub const DEFAULT_LEASE_MS: u64 = 60_000;
pub const MIN_LEASE_MS: u64 = 1_000;
pub const MAX_LEASE_MS: u64 = 3_600_000;
const MAX_DESCRIPTION_CHARS: usize = 1_024;

/// How an agent gets its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Runs inside legato's services on the agent runtime (`shared/agent`);
    /// registered by the services themselves.
    Builtin,
    /// Workers anywhere long-poll the gateway for tasks over HTTP.
    Pull,
    /// legato POSTs each task to the agent's HTTPS endpoint.
    Push,
}

/// Where and how a push agent's tasks are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushTarget {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PushAuth>,
    /// Requests at once per gateway replica.
    pub concurrency: u32,
}

/// How legato proves itself to a push endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushAuth {
    /// Send this header (`Authorization`, `x-api-key`, …) …
    pub header: Option<String>,
    /// … with the value of this named secret (`gateway.push.secrets`).
    pub secret: Option<String>,
    /// Or: `Authorization: Bearer <token>`, a managed-identity token for
    /// this audience (one of `gateway.push.allowed_audiences`).
    pub audience: Option<String>,
}

/// A registration as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDoc {
    pub kind: AgentKind,
    pub lease_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A push agent's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTarget>,
}

/// A registered agent, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: AgentName,
    pub tenant: Option<String>,
    pub doc: AgentDoc,
    pub updated_at: OffsetDateTime,
}

impl Agent {
    fn of(stored: StoredAgent) -> Result<Self, StoreError> {
        let doc = serde_json::from_value(stored.record.body)
            .map_err(|e| StoreError::Corrupt(format!("agent {}: {e}", stored.record.name)))?;
        Ok(Self {
            name: stored.record.name,
            tenant: stored.record.tenant,
            doc,
            updated_at: stored.record.updated_at,
        })
    }

    /// Whether a caller (or an instance) of `tenant` may use it.
    pub fn serves(&self, tenant: Option<&TenantId>) -> bool {
        self.tenant.is_none() || self.taken_by(tenant)
    }

    /// Whether a worker of `tenant` takes its tasks: a tenant's worker
    /// serves only its tenant's agents, so it never sees another's tasks.
    pub fn taken_by(&self, tenant: Option<&TenantId>) -> bool {
        self.tenant.as_deref() == tenant.map(TenantId::as_str)
    }
}

/// The kinds of agent callers register (built-in agents are registered
/// by the services that run them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegisteredKind {
    /// Workers long-poll the gateway for the agent's tasks.
    #[default]
    Pull,
    /// legato POSTs each task to `url` (role `admin` to register).
    Push,
}

/// The registration callers send (`PUT /api/v1/agents/{name}`).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    pub kind: RegisteredKind,
    /// How long a worker holds a task without a heartbeat before it is
    /// presumed gone and the attempt is retried under the step's policy
    /// (default 60,000).
    #[schema(minimum = 1000, maximum = 3600000)]
    pub lease_ms: Option<u64>,
    /// What the agent does (at most 1,024 characters).
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// A push agent's endpoint: https (http only to loopback), on a host of
    /// `gateway.push.allowed_hosts`.
    pub url: Option<String>,
    /// How legato authenticates to a push endpoint.
    pub auth: Option<PushAuth>,
    /// A push agent's requests at once, per gateway replica (default 16).
    #[schema(minimum = 1, maximum = 1024)]
    pub concurrency: Option<u32>,
}

impl AgentSpec {
    /// The document to keep, or a 400 naming the field. `push` is the
    /// gateway's push policy, which a push agent's endpoint must meet.
    pub fn doc(self, push: &crate::push::PushSettings) -> Result<AgentDoc, Problem> {
        let kind = match self.kind {
            RegisteredKind::Pull => AgentKind::Pull,
            RegisteredKind::Push => AgentKind::Push,
        };
        let push_target = match kind {
            AgentKind::Push => Some(push_target(self.url, self.auth, self.concurrency, push)?),
            _ => {
                for (field, given) in [
                    ("/url", self.url.is_some()),
                    ("/auth", self.auth.is_some()),
                    ("/concurrency", self.concurrency.is_some()),
                ] {
                    if given {
                        return Err(Problem::field(field, "is for push agents only"));
                    }
                }
                None
            }
        };
        let lease_ms = self.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
            return Err(Problem::field(
                "/leaseMs",
                format!("must be from {MIN_LEASE_MS} to {MAX_LEASE_MS}"),
            ));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
        {
            return Err(Problem::field(
                "/description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        Ok(AgentDoc {
            kind,
            lease_ms,
            description: self.description,
            push: push_target,
        })
    }
}

/// A push agent's endpoint, held to the gateway's push policy.
fn push_target(
    url: Option<String>,
    auth: Option<PushAuth>,
    concurrency: Option<u32>,
    policy: &crate::push::PushSettings,
) -> Result<PushTarget, Problem> {
    if crate::push::Signer::new(&policy.signing_secret).is_err() {
        return Err(Problem::field(
            "/kind",
            "push agents need gateway.push.signing_secret (whsec_…) to be set",
        ));
    }
    let url = url.ok_or_else(|| Problem::field("/url", "is required for a push agent"))?;
    let url =
        crate::push::guard::check_url(&url, policy).map_err(|why| Problem::field("/url", why))?;
    if let Some(auth) = &auth {
        match (&auth.header, &auth.secret, &auth.audience) {
            (Some(header), Some(secret), None) => {
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(Problem::field("/auth/header", "is not a header name"));
                }
                if !policy.secrets.contains_key(secret) {
                    return Err(Problem::field(
                        "/auth/secret",
                        format!("no secret {secret} in gateway.push.secrets"),
                    ));
                }
            }
            (None, None, Some(audience)) => {
                if !policy.allowed_audiences.iter().any(|a| a == audience) {
                    return Err(Problem::field(
                        "/auth/audience",
                        format!("{audience} is not in gateway.push.allowed_audiences"),
                    ));
                }
            }
            _ => {
                return Err(Problem::field("/auth", "is {header, secret} or {audience}"));
            }
        }
    }
    let concurrency = concurrency.unwrap_or(16);
    if !(1..=1024).contains(&concurrency) {
        return Err(Problem::field("/concurrency", "must be from 1 to 1024"));
    }
    Ok(PushTarget {
        url: url.to_string(),
        auth,
        concurrency,
    })
}

/// The agents `workflow` names literally that no registration lets
/// `tenant`'s instances use, each with its place in the definition.
pub async fn unregistered_agents(
    store: &dyn Store,
    workflow: &legato_workflow::Workflow,
    tenant: Option<&TenantId>,
) -> Result<Vec<legato_service::problem::FieldError>, StoreError> {
    let named = workflow.named_agents();
    if named.is_empty() {
        return Ok(Vec::new());
    }
    let agents = all(store).await?;
    Ok(named
        .into_iter()
        .filter(|(_, name)| !agents.iter().any(|a| a.name == **name && a.serves(tenant)))
        .map(|(field, name)| legato_service::problem::FieldError {
            field,
            message: format!("no agent {name} is registered"),
        })
        .collect())
}

/// The problems of [`unregistered_agents`] as one line.
pub fn describe(missing: &[legato_service::problem::FieldError]) -> String {
    missing
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn agent_name(raw: impl Into<String>) -> Result<AgentName, Problem> {
    AgentName::parse(raw).map_err(|e| Problem::field("name", e.to_string()))
}

/// How long a replica trusts what it read of one agent on the task paths
/// (polls and reports), where a read per request would cost more than the
/// request: a change made on another replica shows within this.
const CACHED_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Agents remembered at most (a bound, not a goal).
const CACHED_AT_MOST: usize = 10_000;

/// Registrations read lately, for the task paths.
#[derive(Default)]
pub struct AgentCache {
    entries:
        std::sync::Mutex<std::collections::HashMap<AgentName, (std::time::Instant, Option<Agent>)>>,
}

impl AgentCache {
    pub async fn find(
        &self,
        store: &dyn Store,
        name: &AgentName,
    ) -> Result<Option<Agent>, StoreError> {
        if let Ok(entries) = self.entries.lock()
            && let Some((at, agent)) = entries.get(name)
            && at.elapsed() < CACHED_FOR
        {
            return Ok(agent.clone());
        }
        let agent = find(store, name).await?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHED_AT_MOST {
                entries.clear();
            }
            entries.insert(name.clone(), (std::time::Instant::now(), agent.clone()));
        }
        Ok(agent)
    }

    /// Forgets `name`, changed by this replica.
    pub fn forget(&self, name: &AgentName) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(name);
        }
    }
}

pub async fn find(store: &dyn Store, name: &AgentName) -> Result<Option<Agent>, StoreError> {
    store.get_agent(name).await?.map(Agent::of).transpose()
}

pub async fn all(store: &dyn Store) -> Result<Vec<Agent>, StoreError> {
    store
        .list_agents()
        .await?
        .into_iter()
        .map(Agent::of)
        .collect()
}

/// Whether the registration changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Replaced,
    Unchanged,
}

/// Registers (or replaces) `name` for `tenant`, creating its task queue
/// first so that tasks sent from the moment it is registered wait for its
/// workers. A name held by another tenant, or by a built-in agent for a
/// caller, is refused as taken.
pub async fn register(
    store: &dyn Store,
    bus: &dyn Bus,
    name: &AgentName,
    tenant: Option<&TenantId>,
    doc: AgentDoc,
) -> Result<Registered, Problem> {
    let body = serde_json::to_value(&doc)
        .map_err(|e| Problem::from(StoreError::Corrupt(format!("agent {name}: {e}"))))?;
    // Two registrations racing: the loser reads again and decides again.
    for _ in 0..4 {
        let existing = store.get_agent(name).await?;
        let expected = match &existing {
            None => Expected::New,
            Some(stored) => {
                let current = Agent::of(stored.clone())?;
                if !current.taken_by(tenant) || current.doc.kind == AgentKind::Builtin {
                    return Err(taken(name));
                }
                if current.doc == doc {
                    return Ok(Registered::Unchanged);
                }
                Expected::Version(stored.version.clone())
            }
        };
        provision(bus, name).await?;
        let record = AgentRecord {
            name: name.clone(),
            tenant: tenant.map(|t| t.as_str().to_owned()),
            body: body.clone(),
            updated_at: OffsetDateTime::now_utc(),
        };
        match store.put_agent(&record, &expected).await {
            Ok(_) if existing.is_none() => return Ok(Registered::Created),
            Ok(_) => return Ok(Registered::Replaced),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Problem::new(
        StatusCode::CONFLICT,
        "Conflict",
        format!("agent {name} kept changing while it was registered; try again"),
    ))
}

fn taken(name: &AgentName) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "Name taken",
        format!("the agent name {name} is taken; choose another"),
    )
    .with_errors(vec![legato_service::problem::FieldError {
        field: "name".into(),
        message: "is taken".into(),
    }])
}

/// Creates the agent's task queue (idempotently): a task sent before any
/// worker polls waits on it instead of being refused as unroutable.
pub async fn provision(bus: &dyn Bus, name: &AgentName) -> Result<(), Problem> {
    bus.subscribe(legato_bus::topology::agent_tasks(name.as_str()))
        .await
        .map(drop)
        .map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Bus unavailable",
                format!("the task queue of agent {name} could not be created: {e}"),
            )
            .retry_after(std::time::Duration::from_secs(5))
        })
}

/// Records the built-in agents a process runs, shared by every tenant. A
/// name a tenant registered first keeps its registration (and the
/// collision is logged): built-in names are the services' to choose.
pub async fn register_builtin(store: &dyn Store, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let name =
            &AgentName::parse(name.as_str()).map_err(|e| anyhow::anyhow!("gateway.agents: {e}"))?;
        let doc = AgentDoc {
            kind: AgentKind::Builtin,
            lease_ms: DEFAULT_LEASE_MS,
            description: builtin_description(name.as_str()).map(str::to_owned),
            push: None,
        };
        let record = AgentRecord {
            name: name.clone(),
            tenant: None,
            body: serde_json::to_value(&doc)?,
            updated_at: OffsetDateTime::now_utc(),
        };
        match store.get_agent(name).await? {
            None => match store.put_agent(&record, &Expected::New).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Some(stored) => {
                let current = Agent::of(stored.clone())?;
                if current.doc.kind != AgentKind::Builtin {
                    tracing::warn!(agent = %name, "a registered agent has a built-in agent's name; it keeps its registration");
                } else if current.doc != doc {
                    match store
                        .put_agent(&record, &Expected::Version(stored.version))
                        .await
                    {
                        Ok(_) | Err(StoreError::Conflict(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    Ok(())
}

/// What legato's own agents do, for the registry's listing.
fn builtin_description(name: &str) -> Option<&'static str> {
    Some(match name {
        "planner" => "Breaks a request into tasks for the other agents (chat model or offline)",
        "coder" => "Proposes, finalizes and reverts code changes (chat model or offline)",
        "data" => "Answers questions with SQL over the configured database",
        "approval" => "Asks a person for a decision and reads their verdict",
        "echo" => "Returns its input; diagnostics (sleep, fail, hang on demand)",
        _ => return None,
    })
}

/// One file of the agent catalogue (`agents/*.yaml` beside `workflows/`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CatalogueEntry {
    name: String,
    kind: RegisteredKind,
    lease_ms: Option<u64>,
    description: Option<String>,
    url: Option<String>,
    auth: Option<PushAuth>,
    concurrency: Option<u32>,
}

/// Registers every agent declared in `dir` (`*.yaml`, `*.yml`, `*.json`,
/// one agent a file) as a shared agent, so the stack starts with them. A
/// file that does not parse stops the start, naming the file and field.
pub async fn register_catalogue(
    store: &dyn Store,
    bus: &dyn Bus,
    dir: &Path,
    push: &crate::push::PushSettings,
) -> anyhow::Result<usize> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut registered = 0;
    for path in crate::catalogue::files(dir)? {
        let text = std::fs::read_to_string(&path)?;
        let entry: CatalogueEntry = serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let fail = |p: Problem| anyhow::anyhow!("{}: {}", path.display(), p.detail);
        let name = agent_name(entry.name).map_err(fail)?;
        let doc = AgentSpec {
            kind: entry.kind,
            lease_ms: entry.lease_ms,
            description: entry.description,
            url: entry.url,
            auth: entry.auth,
            concurrency: entry.concurrency,
        }
        .doc(push)
        .map_err(fail)?;
        match register(store, bus, &name, None, doc).await {
            Ok(Registered::Unchanged) => {}
            Ok(_) => {
                registered += 1;
                tracing::info!(agent = %name, "registered");
            }
            Err(p) => return Err(fail(p)),
        }
    }
    Ok(registered)
}
