//! The dead-letter keeper: moves what each consumer group dead-lettered off
//! the broker into the store, where an operator can list it, look at it,
//! send it back or discard it (`/api/v1/dead-letters`), the same way on
//! every bus. A letter leaves the broker only once it is parked; parking the
//! same message again (a crash before the ack) keeps one.

use std::sync::Arc;
use std::time::Duration;

use legato_bus::{Bus, DEAD_LETTER_DELIVERIES, DEAD_LETTER_REASON, Delivery, topology};
use legato_contracts::Topic;
use legato_service::Shutdown;
use legato_store::{DeadLetter, Store};
use time::OffsetDateTime;

/// How long a group's keeper waits after the broker or the store failed.
const PAUSE: Duration = Duration::from_secs(2);

/// The consumer groups whose dead letters are kept: the orchestrator's and
/// each agent's task queue.
pub fn kept_groups(agents: &[String]) -> Vec<(Topic, String)> {
    let agents: Vec<&str> = agents.iter().map(String::as_str).collect();
    topology::durable_groups(&agents)
        .into_iter()
        .map(|spec| (spec.topic, spec.group))
        .collect()
}

/// Keeps every group's dead letters until shutdown.
pub async fn keep(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    groups: Vec<(Topic, String)>,
    shutdown: Shutdown,
) {
    let keepers = groups.into_iter().map(|(topic, group)| {
        keep_group(bus.clone(), store.clone(), topic, group, shutdown.clone())
    });
    futures::future::join_all(keepers).await;
}

/// How often the keeper looks for agents registered since it last looked.
const REGISTRY_LOOK: Duration = Duration::from_secs(30);

/// Keeps the dead letters of every registered agent's task queue too, not
/// only of the groups named at start: an agent registered through the API
/// (on any replica) has its queue's dead letters kept here within
/// [`REGISTRY_LOOK`].
pub async fn keep_registered(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    already: Vec<(Topic, String)>,
    shutdown: Shutdown,
) {
    let mut kept: std::collections::HashSet<(Topic, String)> = already.into_iter().collect();
    let mut keepers = tokio::task::JoinSet::new();
    loop {
        match crate::registry::all(&*store).await {
            Ok(agents) => {
                for agent in agents {
                    let spec = topology::agent_tasks(agent.name.as_str());
                    if kept.insert((spec.topic, spec.group.clone())) {
                        keepers.spawn(keep_group(
                            bus.clone(),
                            store.clone(),
                            spec.topic,
                            spec.group,
                            shutdown.clone(),
                        ));
                    }
                }
            }
            Err(e) => tracing::warn!("registered agents not read (their dead letters wait): {e}"),
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(REGISTRY_LOOK) => {}
        }
    }
    while keepers.join_next().await.is_some() {}
}

async fn keep_group(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    topic: Topic,
    group: String,
    shutdown: Shutdown,
) {
    loop {
        let mut letters = match bus.dead_letters(topic, &group).await {
            Ok(letters) => letters,
            Err(e) => {
                tracing::warn!(topic = topic.as_str(), %group, "dead letters not read: {e}");
                if pause(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let delivery = tokio::select! {
                _ = shutdown.wait() => return,
                delivery = letters.next() => delivery,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) => {
                    tracing::warn!(topic = topic.as_str(), %group, "dead-letter queue lost, opening it again: {e}");
                    break;
                }
            };
            let letter = letter_of(topic, &group, &delivery);
            let settled = match store.park_dead_letter(&letter).await {
                Ok(()) => {
                    tracing::info!(topic = topic.as_str(), %group, message = %letter.message_id, reason = %letter.reason, "dead letter parked");
                    delivery.ack().await
                }
                Err(e) => {
                    tracing::warn!(
                        "dead letter left on the broker (the store did not take it): {e}"
                    );
                    let returned = delivery.nack().await;
                    if pause(&shutdown).await {
                        return;
                    }
                    returned
                }
            };
            if let Err(e) = settled {
                tracing::warn!("dead letter not settled (it comes back and is parked once): {e}");
            }
        }
        if pause(&shutdown).await {
            return;
        }
    }
}

/// Waits a little; true when the service is stopping instead.
async fn pause(shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.wait() => true,
        _ = tokio::time::sleep(PAUSE) => false,
    }
}

/// The parked form of a dead-lettered delivery, with what it says about
/// itself when it is a legato message.
pub(crate) fn letter_of(topic: Topic, group: &str, delivery: &Delivery) -> DeadLetter {
    let envelope = delivery.decode().ok();
    let reason = delivery
        .headers
        .get(DEAD_LETTER_REASON)
        .cloned()
        .unwrap_or_else(|| "dead-lettered by the broker (no reason given)".into());
    let delivery_count = delivery
        .headers
        .get(DEAD_LETTER_DELIVERIES)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    DeadLetter {
        id: DeadLetter::id_of(topic, group, &delivery.message_id),
        topic,
        group: group.to_owned(),
        message_id: delivery.message_id.clone(),
        routing_key: delivery.routing_key.clone(),
        reason,
        delivery_count,
        instance: envelope.as_ref().map(|e| e.subject.to_string()),
        type_name: envelope.as_ref().map(|e| e.type_name().to_owned()),
        tenant: envelope
            .as_ref()
            .and_then(|e| e.subject.tenant().map(String::from)),
        body: delivery.body.to_vec(),
        parked_at: OffsetDateTime::now_utc(),
    }
}
