//! Push agents: legato POSTs each of the agent's tasks to its HTTPS
//! endpoint as a CloudEvent (HTTP binding, binary mode) signed per Standard
//! Webhooks, and takes the answer as the task's outcome (see `deliver`).
//!
//! Every gateway replica runs a consumer for each registered push agent
//! (the registry is read again every few seconds, so an agent registered
//! on any replica is served everywhere, and one removed stops), at most
//! the agent's `concurrency` requests at once per replica. A task is taken
//! off its queue with a lease, as a pull worker takes it: a replica that
//! dies mid-request leaves the attempt to its lease, and it is retried.

mod deliver;
pub(crate) mod guard;
pub(crate) mod sign;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use legato_bus::topology;
use legato_service::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;
use crate::registry::{self, Agent, AgentKind, PushTarget};

pub(crate) use sign::Signer;

/// How often each replica reads the registry for push agents.
const REGISTRY_LOOK: Duration = Duration::from_secs(3);

/// `gateway.push`: where push agents may be, and what legato sends them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// Hosts (names or addresses, exactly) push URLs may name; none by
    /// default, so registering a push agent needs an operator's consent.
    pub allowed_hosts: Vec<String>,
    /// Audiences a push agent may ask a managed-identity token for
    /// (`api://…`, an application id): the token legato's identity gets.
    pub allowed_audiences: Vec<String>,
    /// Plain `http://` to hosts other than loopback.
    pub allow_http: bool,
    /// The Standard Webhooks secret (`whsec_<base64 of 24+ bytes>`) every
    /// push is signed with, and callback URLs are keyed by. Empty: push
    /// agents cannot be registered.
    pub signing_secret: String,
    /// Named secrets a push agent's `auth.secret` may name, sent as its
    /// header (`LEGATO__GATEWAY__PUSH__SECRETS__<NAME>`); never shown.
    pub secrets: BTreeMap<String, String>,
    /// How long one request may take before it counts as a timeout.
    pub timeout_ms: u64,
    /// The user-assigned identity's client id for audience tokens (the
    /// system-assigned identity without one).
    pub client_id: String,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allowed_audiences: Vec::new(),
            allow_http: false,
            signing_secret: String::new(),
            secrets: BTreeMap::new(),
            timeout_ms: 30_000,
            client_id: String::new(),
        }
    }
}

impl std::fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSettings")
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allowed_audiences", &self.allowed_audiences)
            .field("allow_http", &self.allow_http)
            .field(
                "signing_secret",
                &if self.signing_secret.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// What every delivery of this replica shares.
pub(crate) struct Pusher {
    pub state: GatewayState,
    pub http: reqwest::Client,
    pub signer: Signer,
    /// Where callbacks reach this deployment's gateway.
    pub base_url: String,
    pub identity: Option<Arc<legato_azure::ManagedIdentityCredential>>,
}

/// Runs the push consumers of this replica until shutdown. Push endpoints
/// call back at the gateway's `public_url`, or where it listens
/// (`listening`) when none is set.
pub async fn run(state: GatewayState, listening: std::net::SocketAddr, shutdown: Shutdown) {
    let base_url = match state.settings.public_url.as_str() {
        "" => format!("http://{listening}"),
        url => url.to_owned(),
    };
    let settings = state.settings.push.clone();
    let signer = match Signer::new(&settings.signing_secret) {
        Ok(signer) => signer,
        Err(why) if settings.signing_secret.is_empty() => {
            tracing::debug!("no push agents: {why}");
            return;
        }
        Err(why) => {
            tracing::error!("push agents are not served: {why}");
            return;
        }
    };
    let http = match guard::client() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!("push agents are not served: HTTP client: {e}");
            return;
        }
    };
    let client_id = Some(settings.client_id.clone()).filter(|id| !id.is_empty());
    let identity = legato_azure::ManagedIdentityCredential::from_environment(client_id)
        .ok()
        .map(Arc::new);
    let pusher = Arc::new(Pusher {
        state,
        http,
        signer,
        base_url: base_url.trim_end_matches('/').to_owned(),
        identity,
    });
    let mut running: HashMap<String, (PushTarget, CancellationToken)> = HashMap::new();
    loop {
        match registry::all(&*pusher.state.store).await {
            Ok(agents) => reconcile(&pusher, &mut running, agents, &shutdown),
            Err(e) => tracing::warn!("push agents not read (their consumers keep running): {e}"),
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(REGISTRY_LOOK) => {}
        }
    }
    for (_, (_, stop)) in running {
        stop.cancel();
    }
}

/// Starts consumers for push agents new (or changed) in the registry and
/// stops those removed.
fn reconcile(
    pusher: &Arc<Pusher>,
    running: &mut HashMap<String, (PushTarget, CancellationToken)>,
    agents: Vec<Agent>,
    shutdown: &Shutdown,
) {
    let mut wanted: HashMap<String, Agent> = agents
        .into_iter()
        .filter(|a| a.doc.kind == AgentKind::Push && a.doc.push.is_some())
        .map(|a| (a.name.to_string(), a))
        .collect();
    running.retain(|name, (target, stop)| {
        let keep = wanted
            .get(name)
            .is_some_and(|a| a.doc.push.as_ref() == Some(target));
        if !keep {
            stop.cancel();
        }
        keep
    });
    for (name, agent) in wanted.drain() {
        if running.contains_key(&name) {
            continue;
        }
        let Some(target) = agent.doc.push.clone() else {
            continue;
        };
        let stop = CancellationToken::new();
        running.insert(name, (target.clone(), stop.clone()));
        tokio::spawn(consume(
            pusher.clone(),
            agent,
            target,
            stop,
            shutdown.clone(),
        ));
    }
}

/// One push agent's consumer: takes its tasks, at most `concurrency` at
/// once, and delivers each.
async fn consume(
    pusher: Arc<Pusher>,
    agent: Agent,
    target: PushTarget,
    stop: CancellationToken,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(target.concurrency as usize));
    let spec = topology::agent_tasks(agent.name.as_str()).prefetch(target.concurrency as usize);
    let mut subscription = None;
    let agent = Arc::new(agent);
    loop {
        if stop.is_cancelled() || shutdown.is_triggered() {
            break;
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.wait() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let tasks = match subscription.as_mut() {
            Some(tasks) => tasks,
            None => match pusher.state.bus.subscribe(spec.clone()).await {
                Ok(opened) => subscription.insert(opened),
                Err(e) => {
                    tracing::warn!(agent = %agent.name, "cannot consume the push agent's tasks: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shutdown.wait() => break,
            delivery = tasks.next() => delivery,
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::warn!(agent = %agent.name, "the push agent's consumer failed: {e}");
                subscription = None;
                continue;
            }
        };
        let pusher = pusher.clone();
        let agent = agent.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let agents = std::slice::from_ref(&*agent);
            match crate::attempts::take(&pusher.state, agents, vec![delivery]).await {
                Ok(taken) => {
                    for taken in taken {
                        deliver::deliver(&pusher, &agent, &target, taken).await;
                    }
                }
                Err(problem) => {
                    tracing::warn!(agent = %agent.name, "a push task was not taken: {}", problem.detail)
                }
            }
            drop(permit);
        });
    }
}
