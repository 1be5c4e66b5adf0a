//! The Azure Service Bus adapter, over the Service Bus REST API with
//! `azure_messaging_servicebus` 0.21 (and the management API for
//! entities, which the crate lacks).
//!
//! The port's semantics (see the crate root), and where Service Bus
//! differs:
//! - Topics `<prefix>commands`, `<prefix>agent-tasks`,
//!   `<prefix>agent-results`, `<prefix>progress`, with duplicate detection
//!   on `MessageId` (the CloudEvents id), so an outbox that republishes
//!   after a crash does not enqueue twice within the window.
//! - A consumer group is a subscription; its bindings are rules on the
//!   message `Label`, which carries the routing key ([`names`]). Service
//!   Bus drops a message no rule matches without telling the sender, so
//!   the adapter checks a work message's key against the topic's
//!   subscriptions and rules (listed through the management API, cached
//!   for [`ROUTES_FRESH`], listed again on a miss) and answers
//!   [`BusError::Unroutable`] when nobody would get it.
//! - Delivery is peek-lock; `delivery_count` is Service Bus's
//!   `DeliveryCount`; nack unlocks (abandons). A consumer that crashed
//!   leaves its lock to expire: the message returns after at most
//!   `lock_duration` (10 s by default), with the count raised.
//! - Dead letters: REST cannot move a message to `$DeadLetterQueue`, so the
//!   adapter sends a copy, reason included, to `<prefix>dead-letters`,
//!   labelled `<topic>/<group>` (one subscription there per group), then
//!   completes the original. The copy's id is derived from the subscription
//!   and the sequence number, so duplicate detection keeps one copy even
//!   if the adapter crashes between the two steps. The subscription's own
//!   `MaxDeliveryCount` is set above the adapter's limits as a backstop;
//!   what Service Bus dead-letters itself is read back from
//!   `$DeadLetterQueue` by [`Bus::dead_letters`] too.
//! - Ephemeral groups are subscriptions with `AutoDeleteOnIdle` (five
//!   minutes, Service Bus's minimum) that the adapter also deletes when
//!   the subscription is dropped; their dead letters share the
//!   `ephemeral` group's, as with RabbitMQ.
//! - With `manage_entities` off (identities with Manage on a few topics
//!   only) the adapter creates no topic and no durable subscription and
//!   lists no routes, so it cannot tell an unroutable message from a
//!   routed one: every durable entity of `legato topology --bus
//!   servicebus` must exist beforehand. Ephemeral subscriptions are still
//!   created and deleted by their replica (nothing else can), and an
//!   agent's task subscription by whoever subscribes to it first (an agent
//!   registered at run time has none beforehand), which needs Manage on
//!   their topics (`agent-tasks`, `progress`).

mod batch;
mod connection;
mod errors;
mod http;
mod management;
mod message;
mod names;
mod receiver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_messaging_servicebus::service_bus::TopicClient;
use legato_contracts::Topic;

pub use connection::{ServiceBusAuth, ServiceBusConnection};
pub use http::DEFAULT_REQUEST_TIMEOUT as DEFAULT_SERVICEBUS_REQUEST_TIMEOUT;
pub use http::Operations as ServiceBusOperations;
pub use management::SubscriptionSettings;
pub use names::RuleFilter;

use crate::{
    Bus, BusError, EPHEMERAL_DEAD_LETTERS, OutgoingMessage, Routed, Subscription, SubscriptionSpec,
    UNSETTLED_DELIVERY_FACTOR,
};
use management::Management;
use receiver::{DeadLetterTarget, Reader, ReaderSettings, Source};
use serde_json::Value;

/// A topic's routes are listed again when older than this.
pub const ROUTES_FRESH: Duration = Duration::from_secs(30);
/// After a miss, the routes are listed again at most this often.
const ROUTES_RECHECK: Duration = Duration::from_millis(500);
/// Service Bus's minimum for `AutoDeleteOnIdle`.
const EPHEMERAL_IDLE: Duration = Duration::from_secs(300);

/// How the adapter names and keeps its entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBusOptions {
    /// Prepended to every topic name (tests and tenants of a shared
    /// namespace use their own).
    pub prefix: String,
    /// Send requests here instead of `https://<namespace host>` (a local
    /// stand-in); signatures still name the namespace's URL.
    pub endpoint: Option<String>,
    /// How long a received message stays locked without renewal; also
    /// how soon a crashed consumer's message is delivered again.
    pub lock_duration: Duration,
    /// How long a receive waits for a message before asking again.
    pub receive_wait: Duration,
    /// Duplicate detection window of the topics.
    pub duplicate_window: Duration,
    /// Delete durable subscriptions unused this long (tests); `None` keeps
    /// them.
    pub auto_delete_on_idle: Option<Duration>,
    /// Create topics, subscriptions and rules (needs the Manage right).
    pub manage_entities: bool,
    /// The longest a request other than a receive's long poll may take,
    /// its connection included: one that goes unanswered fails after it
    /// (and its connection is dropped) instead of waiting forever.
    pub request_timeout: Duration,
}

impl Default for ServiceBusOptions {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            endpoint: None,
            lock_duration: Duration::from_secs(10),
            receive_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(600),
            auto_delete_on_idle: None,
            manage_entities: true,
            request_timeout: http::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

#[derive(Clone)]
pub struct ServiceBusBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: ServiceBusOptions,
    connection: ServiceBusConnection,
    management: Management,
    clients: HashMap<String, TopicClient>,
    routes: Mutex<HashMap<Topic, RouteCache>>,
}

/// What a topic's subscriptions take, as last listed.
struct RouteCache {
    listed: Instant,
    subscriptions: Vec<Vec<Option<RuleFilter>>>,
}

impl RouteCache {
    fn takes(&self, key: &str) -> bool {
        self.subscriptions.iter().any(|rules| {
            rules
                .iter()
                .any(|r| r.as_ref().is_none_or(|r| r.matches(key)))
        })
    }
}

/// The entities a deployment needs, for `legato topology` and templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBusEntities {
    pub topics: Vec<String>,
    pub subscriptions: Vec<PlannedSubscription>,
    pub duplicate_window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSubscription {
    pub topic: String,
    pub name: String,
    /// The consumer group it serves (`<replica>` stands in for the id of
    /// an ephemeral group's replica).
    pub group: String,
    pub settings: SubscriptionSettings,
    pub rules: Vec<RuleFilter>,
    /// Created and deleted by each replica, not by the infrastructure.
    pub ephemeral: bool,
}

impl ServiceBusEntities {
    /// Every entity for these groups (durable and ephemeral ones).
    pub fn plan(
        options: &ServiceBusOptions,
        groups: &[SubscriptionSpec],
    ) -> Result<Self, BusError> {
        let topics = names::all_topics(&options.prefix);
        let mut subscriptions = Vec::new();
        for spec in groups {
            subscriptions.push(PlannedSubscription {
                topic: names::topic_name(&options.prefix, spec.topic),
                name: names::subscription_name(&spec.group),
                group: spec.group.clone(),
                settings: settings_for(options, spec),
                rules: rules_for(spec)?,
                ephemeral: spec.ephemeral,
            });
            let dead = dead_letter_subscription(options, spec.topic, dead_group(spec));
            if !subscriptions.contains(&dead) {
                subscriptions.push(dead);
            }
        }
        Ok(Self {
            topics,
            subscriptions,
            duplicate_window: options.duplicate_window,
        })
    }
}

fn dead_group(spec: &SubscriptionSpec) -> &str {
    if spec.ephemeral {
        EPHEMERAL_DEAD_LETTERS
    } else {
        &spec.group
    }
}

fn rules_for(spec: &SubscriptionSpec) -> Result<Vec<RuleFilter>, BusError> {
    let mut rules = spec
        .bindings
        .iter()
        .map(|b| RuleFilter::from_binding(b))
        .collect::<Result<Vec<_>, _>>()?;
    rules.dedup();
    if rules.is_empty() {
        rules.push(RuleFilter::Nothing);
    }
    Ok(rules)
}

fn settings_for(options: &ServiceBusOptions, spec: &SubscriptionSpec) -> SubscriptionSettings {
    SubscriptionSettings {
        lock_duration: options.lock_duration,
        // Above the adapter's own limits: Service Bus parks a message only
        // if the adapter never got to.
        max_delivery_count: spec
            .max_deliveries
            .saturating_mul(UNSETTLED_DELIVERY_FACTOR)
            .saturating_add(1),
        auto_delete_on_idle: if spec.ephemeral {
            Some(EPHEMERAL_IDLE)
        } else {
            options.auto_delete_on_idle
        },
    }
}

/// The dead-letter topic's subscription that keeps `group`'s dead letters.
fn dead_letter_subscription(
    options: &ServiceBusOptions,
    topic: Topic,
    group: &str,
) -> PlannedSubscription {
    let (name, label) = names::dead_letter_subscription(topic, group);
    PlannedSubscription {
        topic: names::dead_letter_topic(&options.prefix),
        name,
        group: format!("{}/{group}", topic.as_str()),
        settings: SubscriptionSettings {
            lock_duration: options.lock_duration,
            max_delivery_count: 100,
            auto_delete_on_idle: options.auto_delete_on_idle,
        },
        rules: vec![RuleFilter::Label(label)],
        ephemeral: false,
    }
}

impl ServiceBusBus {
    /// Connects and (with `manage_entities`) creates the topics.
    pub async fn connect(
        connection: ServiceBusConnection,
        options: ServiceBusOptions,
    ) -> Result<Self, BusError> {
        let endpoint = match &options.endpoint {
            Some(text) => Some(url::Url::parse(text).map_err(|e| {
                BusError::Rejected(format!("bus.endpoint {text:?} is not a URL: {e}"))
            })?),
            None => None,
        };
        let credential = match &connection.auth {
            ServiceBusAuth::Entra(c) => Some(c.clone()),
            ServiceBusAuth::SharedKey { .. } => None,
        };
        let http = Arc::new(
            http::ServiceBusHttp::new(endpoint, credential, options.request_timeout)
                .map_err(|e| BusError::Unavailable(format!("HTTP client: {e}")))?,
        );
        // With Entra ID the crate still wants a policy and key to sign
        // with; the HTTP client replaces that signature with the token.
        let (policy, key) = match &connection.auth {
            ServiceBusAuth::SharedKey { policy, key } => (policy.clone(), key.clone()),
            ServiceBusAuth::Entra(_) => ("entra".to_owned(), "unused".to_owned()),
        };
        let names = names::all_topics(&options.prefix);
        let mut clients = HashMap::new();
        for name in &names {
            let client = TopicClient::new(
                http.clone() as Arc<dyn azure_core::HttpClient>,
                connection.name(),
                name.clone(),
                policy.clone(),
                key.clone(),
            )
            .map_err(|e| BusError::Unavailable(format!("Service Bus client: {e}")))?;
            clients.insert(name.clone(), client);
        }
        let management = Management {
            http,
            host: connection.host.clone(),
            auth: connection.auth.clone(),
        };
        let bus = Self {
            inner: Arc::new(Inner {
                options,
                connection,
                management,
                clients,
                routes: Mutex::new(HashMap::new()),
            }),
        };
        if bus.inner.options.manage_entities {
            for name in &names {
                bus.inner
                    .management
                    .ensure_topic(name, bus.inner.options.duplicate_window)
                    .await?;
            }
        }
        Ok(bus)
    }

    /// Requests sent so far, by kind: each is an operation Azure bills.
    pub fn operations(&self) -> ServiceBusOperations {
        self.inner.management.http.counters.snapshot()
    }

    pub fn host(&self) -> &str {
        &self.inner.connection.host
    }

    fn client(&self, topic: &str) -> Result<&TopicClient, BusError> {
        self.inner
            .clients
            .get(topic)
            .ok_or_else(|| BusError::Rejected(format!("no topic {topic}")))
    }

    fn topic(&self, topic: Topic) -> String {
        names::topic_name(&self.inner.options.prefix, topic)
    }

    fn dead_topic(&self) -> String {
        names::dead_letter_topic(&self.inner.options.prefix)
    }

    /// Whether some subscription of `topic` takes `key`, listing the
    /// routes again when the cache is old or does not know the key.
    async fn routed(&self, topic: Topic, key: &str) -> Result<bool, BusError> {
        if !self.inner.options.manage_entities {
            return Ok(true);
        }
        let cached = {
            let routes = self.inner.routes.lock().unwrap_or_else(|p| p.into_inner());
            routes
                .get(&topic)
                .map(|c| (c.takes(key), c.listed.elapsed()))
        };
        match cached {
            Some((true, age)) if age < ROUTES_FRESH => return Ok(true),
            // A miss is believed for a moment, not listed again per message.
            Some((false, age)) if age < ROUTES_RECHECK => return Ok(false),
            _ => {}
        }
        let subscriptions = self.inner.management.routes(&self.topic(topic)).await?;
        let cache = RouteCache {
            listed: Instant::now(),
            subscriptions,
        };
        let takes = cache.takes(key);
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic, cache);
        Ok(takes)
    }

    async fn send(
        &self,
        topic: &str,
        message: &OutgoingMessage,
        label: &str,
    ) -> Result<(), BusError> {
        let wire = message::outgoing(message, &message.id, label, None)?;
        self.client(topic)?
            .topic_sender()
            .send_message(wire.body, Some(wire.options))
            .await
            .map_err(|e| errors::from_azure(e, &format!("sending to {topic}")))
    }

    /// Refuses a message Service Bus would silently drop: one for a topic
    /// whose messages must reach someone, with no subscription taking its
    /// routing key.
    async fn ensure_routed(&self, topic: Topic, routing_key: &str) -> Result<(), BusError> {
        if !crate::droppable_when_unrouted(topic) && !self.routed(topic, routing_key).await? {
            return Err(BusError::Unroutable(format!(
                "{} with routing key {routing_key:?}",
                self.topic(topic)
            )));
        }
        Ok(())
    }

    /// Messages for one topic: alone as a message, together as a batch.
    async fn send_run(&self, run: Vec<(&Routed, Value)>) -> Result<(), BusError> {
        match run.as_slice() {
            [] => Ok(()),
            [(routed, _)] => {
                self.send(
                    &self.topic(routed.topic),
                    &routed.message,
                    &routed.routing_key,
                )
                .await
            }
            [(first, _), ..] => {
                let topic = self.topic(first.topic);
                let entries = run.into_iter().map(|(_, entry)| entry).collect();
                self.inner.management.send_batch(&topic, entries).await
            }
        }
    }

    fn reader_settings(&self, spec: Option<&SubscriptionSpec>) -> Result<ReaderSettings, BusError> {
        let options = &self.inner.options;
        let dead_letters = match spec {
            Some(spec) => {
                let (subscription, label) =
                    names::dead_letter_subscription(spec.topic, dead_group(spec));
                Some(DeadLetterTarget {
                    sender: self.client(&self.dead_topic())?.topic_sender(),
                    label,
                    scope: names::fnv(&format!(
                        "{}/{}/{subscription}",
                        self.topic(spec.topic),
                        names::subscription_name(&spec.group)
                    )),
                })
            }
            None => None,
        };
        Ok(ReaderSettings {
            prefetch: spec.map_or(16, |s| s.prefetch),
            max_deliveries: spec.map_or(u32::MAX, |s| s.max_deliveries),
            poll: options.receive_wait,
            dead_letters,
        })
    }

    async fn ensure(&self, subscriptions: &[PlannedSubscription]) -> Result<(), BusError> {
        for s in subscriptions {
            self.inner
                .management
                .ensure_subscription(&s.topic, &s.name, &s.settings, &s.rules)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for ServiceBusBus {
    async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError> {
        self.ensure_routed(topic, routing_key).await?;
        self.send(&self.topic(topic), &message, routing_key).await
    }

    /// Each run of messages for one topic goes in batches (one request
    /// each, see [`batch`]), in their order.
    async fn publish_all(&self, messages: Vec<Routed>) -> Result<(), BusError> {
        for routed in &messages {
            self.ensure_routed(routed.topic, &routed.routing_key)
                .await?;
        }
        let mut run: Vec<(&Routed, Value)> = Vec::new();
        let mut run_bytes = 0;
        for routed in &messages {
            let (entry, size) = batch::entry(&routed.message, &routed.routing_key)?;
            let fits = run
                .first()
                .is_none_or(|(first, _)| first.topic == routed.topic)
                && run.len() < batch::MAX_MESSAGES
                && run_bytes + size <= batch::MAX_BYTES;
            if !fits {
                self.send_run(std::mem::take(&mut run)).await?;
                run_bytes = 0;
            }
            run.push((routed, entry));
            run_bytes += size;
        }
        self.send_run(run).await
    }

    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        let plan = ServiceBusEntities::plan(&self.inner.options, std::slice::from_ref(&spec))?;
        if self.inner.options.manage_entities {
            self.ensure(&plan.subscriptions).await?;
            // What this process just created is routed from now on.
            self.inner
                .routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&spec.topic);
        } else {
            // A replica's own subscription cannot be made beforehand by the
            // infrastructure, nor can the task queue of an agent registered
            // at run time: both are created here even so, which needs
            // Manage on their topics only (`agent-tasks`, `progress`).
            let agent_tasks = self.topic(Topic::AgentTasks);
            let own: Vec<PlannedSubscription> = plan
                .subscriptions
                .into_iter()
                .filter(|s| s.ephemeral || s.topic == agent_tasks)
                .collect();
            self.ensure(&own).await?;
        }
        let topic = self.topic(spec.topic);
        let subscription = names::subscription_name(&spec.group);
        let path = format!("{topic}/subscriptions/{subscription}");
        let source = Source::new(
            self.client(&topic)?.subscription_receiver(&subscription),
            path.clone(),
        );
        let reader = Reader::start(vec![source], self.reader_settings(Some(&spec))?);
        if !spec.ephemeral {
            return Ok(Box::new(reader));
        }
        // Gone with its consumer, not only after the idle timeout.
        let bus = self.clone();
        Ok(Box::new(reader.on_drop(move || {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = bus.inner.management.delete(&path).await {
                        tracing::warn!("could not delete {path} (it goes after idling): {e}");
                    }
                });
            }
        })))
    }

    /// The subscription's active messages, from its description (which
    /// counts the ones a receiver holds locked too); `None` when the
    /// identity may not read the description.
    async fn waiting(&self, topic: Topic, group: &str) -> Result<Option<u64>, BusError> {
        let subscription = names::subscription_name(group);
        self.inner
            .management
            .active_messages(&self.topic(topic), &subscription)
            .await
    }

    /// The group's dead letters: those the adapter moved (the dead-letter
    /// topic) and those Service Bus moved itself (`$DeadLetterQueue`).
    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let dead = dead_letter_subscription(&self.inner.options, topic, group);
        if self.inner.options.manage_entities {
            self.ensure(std::slice::from_ref(&dead)).await?;
        }
        let mut sources = vec![Source::new(
            self.client(&dead.topic)?.subscription_receiver(&dead.name),
            format!("{}/subscriptions/{}", dead.topic, dead.name),
        )];
        if group != EPHEMERAL_DEAD_LETTERS {
            let topic = self.topic(topic);
            let native = format!("{}/$DeadLetterQueue", names::subscription_name(group));
            sources.push(Source::new(
                self.client(&topic)?.subscription_receiver(&native),
                format!("{topic}/subscriptions/{native}"),
            ));
        }
        Ok(Box::new(Reader::start(
            sources,
            self.reader_settings(None)?,
        )))
    }
}
