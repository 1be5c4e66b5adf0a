//! Consuming `commands` and `agent-results`: each delivery becomes an engine
//! event, is applied, and is acked only after its
//! effects are committed. Undecodable and impossible messages are
//! dead-lettered with the reason. While the store does not answer, a
//! message is held and tried again with backoff (consumption pauses, as
//! every slot is taken), and returned to its queue only after
//! `store_outage_hold_ms` or when the service drains.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use legato_bus::{Delivery, Subscription};
use legato_contracts::{Envelope, HeartbeatKind, Payload};
use legato_engine::{AgentNews, Event};
use legato_service::Shutdown;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::apply::{Applied, Applier, ApplyError, Input, Pending};
use crate::entities::Entities;

/// Where a message's effect is applied.
#[derive(Clone)]
pub(crate) struct Appliers {
    pub(crate) instances: Arc<Applier>,
    pub(crate) entities: Arc<Entities>,
}

pub(crate) async fn consume(
    mut subscription: Box<dyn Subscription>,
    applier: Appliers,
    concurrency: usize,
    outage_hold: Duration,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            p = slots.clone().acquire_owned() => p?,
        };
        let delivery = tokio::select! {
            _ = shutdown.wait() => break,
            d = subscription.next() => d?,
        };
        // Posted here, in the order the broker delivered them, so one
        // instance's (or entity's) messages are applied in that order
        // however the tasks below are scheduled.
        let taken = take(&applier, delivery);
        let applier = applier.clone();
        let shutdown = shutdown.clone();
        running.spawn(async move {
            handle(&applier, taken, outage_hold, &shutdown).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    // Drain: what was taken is finished (each is one short commit).
    while running.join_next().await.is_some() {}
    Ok(())
}

/// A delivery as the consume loop takes it.
enum Taken {
    Undecodable(Delivery, String),
    Routed(Box<RoutedDelivery>),
}

struct RoutedDelivery {
    delivery: Delivery,
    envelope: Envelope,
    span: tracing::Span,
    traceparent: Option<legato_contracts::TraceParent>,
    routed: Routed,
    /// Its place in a mailbox, taken as it came; `None` for what is not
    /// queued (reads, refusals) and for a post that failed at once.
    posted: Option<Pending>,
}

/// Decodes and routes a delivery, and posts what a mailbox applies.
fn take(applier: &Appliers, delivery: Delivery) -> Taken {
    let envelope = match delivery.decode() {
        Ok(e) => e,
        Err(e) => return Taken::Undecodable(delivery, e.to_string()),
    };
    legato_service::metrics::received("orchestrator", envelope.time);
    let span = tracing::info_span!("message", instance = %envelope.subject, r#type = envelope.type_name(), id = %envelope.id);
    legato_service::telemetry::continue_trace(&span, envelope.traceparent.as_ref());
    let traceparent = span
        .in_scope(legato_service::telemetry::current_traceparent)
        .or(envelope.traceparent.clone());
    let routed = to_input(&envelope);
    let posted = match &routed {
        Routed::Apply(input) => Some(applier.instances.submit(
            &envelope.subject,
            input,
            traceparent.as_ref(),
        )),
        Routed::Entity(operation, at) => {
            applier
                .entities
                .submit(&envelope.subject, (**operation).clone(), *at)
        }
        Routed::Ignore | Routed::Reject(_) => None,
    };
    Taken::Routed(Box::new(RoutedDelivery {
        delivery,
        envelope,
        span,
        traceparent,
        routed,
        posted,
    }))
}

async fn handle(applier: &Appliers, taken: Taken, outage_hold: Duration, shutdown: &Shutdown) {
    let taken = match taken {
        Taken::Undecodable(delivery, why) => return settle(dead_letter(delivery, &why).await),
        Taken::Routed(taken) => *taken,
    };
    let RoutedDelivery {
        delivery,
        envelope,
        span,
        traceparent,
        routed,
        posted,
    } = taken;
    async move {
        match &routed {
            // Bare beats of tasks without a lease prove only that the agent
            // lives, which the broker's lease on the delivery already does.
            Routed::Ignore => return settle(delivery.ack().await),
            Routed::Reject(reason) => return settle(dead_letter(delivery, reason).await),
            Routed::Apply(_) | Routed::Entity(..) => {}
        }
        // The first try is the post made as the message came; a try again
        // (after the store was away) posts anew.
        let posted = std::sync::Mutex::new(posted);
        let applied = || async {
            let first = posted.lock().ok().and_then(|mut p| p.take());
            if let Some(first) = first {
                return first.answer().await;
            }
            match &routed {
                Routed::Apply(input) => {
                    applier
                        .instances
                        .apply(&envelope.subject, input, traceparent.as_ref())
                        .await
                }
                Routed::Entity(operation, at) => {
                    applier
                        .entities
                        .apply(&envelope.subject, (**operation).clone(), *at)
                        .await
                }
                Routed::Ignore => Ok(Applied::Ignored("a bare heartbeat".into())),
                Routed::Reject(reason) => Err(ApplyError::Rejected(reason.clone())),
            }
        };
        let applied = applied
            .retry(outage_backoff(outage_hold))
            .when(ApplyError::store_unavailable)
            .notify(|e, wait| {
                tracing::debug!(?wait, "store unavailable, holding the message: {e}")
            });
        let applied = tokio::select! {
            applied = applied => applied,
            // Draining: what is held goes back to the queue.
            _ = shutdown.wait() => return settle(delivery.nack().await),
        };
        match applied {
            Ok(Applied::Accepted) => settle(delivery.ack().await),
            Ok(Applied::Ignored(reason)) => {
                tracing::debug!(%reason, "ignored");
                settle(delivery.ack().await)
            }
            Err(ApplyError::Rejected(reason)) => {
                tracing::warn!(%reason, "dead-lettering");
                settle(dead_letter(delivery, &reason).await)
            }
            Err(ApplyError::Transient(e)) => {
                tracing::warn!("store trouble, returning the message: {e}");
                settle(delivery.nack().await)
            }
        }
    }
    .instrument(span)
    .await
}

/// Waits for a store that does not answer: the message is held (it would
/// only fail again elsewhere) and tried again, backing off with jitter, for
/// `hold` in all; then it goes back to its queue.
fn outage_backoff(hold: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(hold))
}

async fn dead_letter(delivery: Delivery, reason: &str) -> Result<(), legato_bus::BusError> {
    legato_service::metrics::dead_letter(delivery, "orchestrator", reason).await
}

fn settle(result: Result<(), legato_bus::BusError>) {
    if let Err(e) = result {
        tracing::warn!("could not settle a delivery (it will be redelivered): {e}");
    }
}

enum Routed {
    /// Boxed: an input is far larger than the other answers.
    Apply(Box<Input>),
    /// An operation on the entity it names, received at that time.
    Entity(Box<legato_contracts::EntityOperation>, OffsetDateTime),
    /// Nothing to apply: a heartbeat that renews no lease and has no news.
    Ignore,
    Reject(String),
}

/// The engine event a message stands for. Time is stamped here: the engine
/// never reads a clock. Control messages carry their message id so a
/// redelivery counts once.
fn to_input(envelope: &Envelope) -> Routed {
    let at = OffsetDateTime::now_utc();
    let id = envelope.id.clone();
    let event = match &envelope.payload {
        Payload::Start(start) => {
            return Routed::Apply(Box::new(Input::Start {
                at,
                start: start.clone(),
            }));
        }
        Payload::EntityOperation(operation) => {
            return Routed::Entity(Box::new(operation.clone()), at);
        }
        Payload::RaiseEvent(e) => Event::EventRaised {
            at,
            id,
            name: e.name.clone(),
            data: e.data.clone(),
        },
        Payload::Terminate(t) => Event::TerminateRequested {
            at,
            id,
            reason: t.reason.clone(),
        },
        Payload::Suspend(s) => Event::SuspendRequested {
            at,
            id,
            reason: s.reason.clone(),
        },
        Payload::Resume(r) => Event::ResumeRequested {
            at,
            id,
            reason: r.reason.clone(),
            budget: r.budget.clone(),
        },
        Payload::Redrive(r) => match r.version {
            Some(version) => {
                return Routed::Apply(Box::new(Input::RedriveOnto { at, id, version }));
            }
            None => Event::RedriveRequested {
                at,
                id,
                workflow: None,
            },
        },
        Payload::Restart(r) => Event::RestartRequested {
            at,
            id,
            input: r.input.clone(),
        },
        Payload::TaskCompleted(c) => Event::TaskCompleted {
            at,
            key: c.key.clone(),
            attempt: c.attempt,
            output: c.output.clone(),
            custom_status: c.custom_status.clone(),
            usage: c.usage.clone(),
        },
        Payload::TaskFailed(f) => Event::TaskFailed {
            at,
            key: f.key.clone(),
            attempt: f.attempt,
            error: f.error.clone(),
            usage: f.usage.clone(),
        },
        Payload::TaskAsked(asked) => Event::TaskAsked {
            at,
            key: asked.key.clone(),
            attempt: asked.attempt,
            name: asked.name.clone(),
            question: asked.question.clone(),
            schema: asked.schema.clone(),
            timeout_ms: asked.timeout_ms,
        },
        Payload::TaskHeartbeat(beat) => {
            let news = (beat.progress.is_some() || beat.message.is_some()).then(|| AgentNews {
                id: id.clone(),
                kind: beat.kind.unwrap_or(HeartbeatKind::AgentProgress),
                message: beat.message.clone(),
                data: beat.progress.clone(),
            });
            if !beat.leased && beat.lease_ms.is_none() && news.is_none() {
                return Routed::Ignore;
            }
            Event::TaskHeartbeat {
                at,
                key: beat.key.clone(),
                attempt: beat.attempt,
                news,
                lease_ms: beat.lease_ms,
            }
        }
        other => {
            return Routed::Reject(format!("{} is not for the orchestrator", other.type_name()));
        }
    };
    Routed::Apply(Box::new(Input::Event(event)))
}
