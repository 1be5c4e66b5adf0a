//! Task attempts as the gateway hands them to agents outside the binary
//! (pull workers, push endpoints) and hears back about them: taking a task
//! off its queue with a lease, the token that names the attempt, where an
//! attempt stands now (read from the store, so every replica answers the
//! same), and the reports (heartbeat, completion, failure) sent on to the
//! orchestrator.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt;
use legato_bus::Delivery;
use legato_contracts::{
    Envelope, HeartbeatKind, InstanceId, Payload, RuntimeStatus, TaskCompleted, TaskDispatched,
    TaskError, TaskFailed, TaskHeartbeat, TraceParent, Usage,
};
use legato_engine::{InstanceState, SlotStatus};
use legato_service::agent_figures::Outcome;
use legato_service::problem::Problem;
use legato_service::progress_pace::Turn;
use serde_json::Value;
use time::OffsetDateTime;

use crate::GatewayState;
use crate::registry::Agent;

pub(crate) mod journal;
pub(crate) mod output;
mod token;

pub(crate) use token::Token;

/// Every message the gateway sends says it came from here.
const SOURCE: &str = "/legato/gateway";

/// Counts the attempt's end into this replica's figures; progress still
/// waiting for its turn is no longer news.
fn count_end(state: &GatewayState, token: &Token, outcome: Outcome) {
    let now = OffsetDateTime::now_utc();
    let attempt = token.idempotency_key();
    state.pace.forget(&attempt);
    let took = token.held_for(now);
    state
        .figures
        .ended(token.agent.as_str(), &attempt, outcome, took, now);
}

/// When a lease of `lease_ms` taken now runs out.
fn lease_end(lease_ms: u64) -> OffsetDateTime {
    let lease = Duration::from_millis(lease_ms);
    OffsetDateTime::now_utc() + lease
}

/// A task taken off its agent's queue and leased: what to send to the
/// agent.
pub(crate) struct Taken {
    pub token: Token,
    pub task: TaskDispatched,
    pub lease_ms: u64,
    /// What the task's journal holds, by entry name.
    pub journal: serde_json::Map<String, Value>,
}

/// Takes deliveries of `agents`' queues: the orchestrator is told an agent
/// holds each attempt (its lease starts; the claims of one take go out
/// together), then the deliveries are settled. A delivery that is not a
/// task to hand out is settled here and left out: a malformed one
/// dead-lettered, a stale one dropped, another tenant's failed as if the
/// agent did not exist.
pub(crate) async fn take(
    state: &GatewayState,
    agents: &[Agent],
    deliveries: Vec<Delivery>,
) -> Result<Vec<Taken>, Problem> {
    let mut claims = Vec::with_capacity(deliveries.len());
    let mut held = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        if let Some((claim, taken, delivery)) = claim_of(state, agents, delivery).await? {
            claims.push(claim);
            held.push((delivery, taken));
        }
    }
    if held.is_empty() {
        return Ok(Vec::new());
    }
    if let Err(e) = state.bus.publish_all(routed(&claims)?).await {
        // Not leased: back to the queue for the next taker.
        for (delivery, _) in held {
            settle(delivery.nack().await);
        }
        return Err(unavailable(e));
    }
    let mut taken = Vec::with_capacity(held.len());
    for (delivery, task) in held {
        settle(delivery.ack().await);
        let attempt = task.token.idempotency_key();
        let until = Some(lease_end(task.lease_ms));
        state
            .figures
            .started(task.token.agent.as_str(), &attempt, until);
        taken.push(task);
    }
    Ok(taken)
}

/// The claim to send for one delivery and what the agent gets, or `None`
/// (the delivery settled here) when it is not a task to hand out.
async fn claim_of(
    state: &GatewayState,
    agents: &[Agent],
    delivery: Delivery,
) -> Result<Option<(Envelope, Taken, Delivery)>, Problem> {
    let envelope = match delivery.decode() {
        Ok(envelope) => envelope,
        Err(e) => {
            dead_letter(delivery, &e.to_string()).await;
            return Ok(None);
        }
    };
    let Payload::TaskDispatched(task) = envelope.payload else {
        let reason = format!("{} does not belong on an agent queue", envelope.type_name());
        dead_letter(delivery, &reason).await;
        return Ok(None);
    };
    let Some(agent) = agents.iter().find(|a| a.name == task.agent) else {
        let reason = format!(
            "a task for agent {} reached another agent's queue",
            task.agent
        );
        dead_letter(delivery, &reason).await;
        return Ok(None);
    };
    let instance = envelope.subject;
    if !agent.serves(instance.tenant().as_ref()) {
        // The orchestrator refuses such a dispatch; one that slipped by (a
        // registry it read a moment too early) is failed here, unseen.
        let failure = TaskFailed {
            key: task.key.clone(),
            attempt: task.attempt,
            error: TaskError {
                message: format!("no agent {} is registered", task.agent),
                retryable: false,
            },
            usage: None,
        };
        publish(state, &instance, envelope.traceparent, failure.into()).await?;
        settle(delivery.ack().await);
        return Ok(None);
    }
    if task
        .deadline
        .is_some_and(|d| d <= OffsetDateTime::now_utc())
    {
        // The orchestrator gave up on this attempt already.
        settle(delivery.ack().await);
        return Ok(None);
    }
    let lease_ms = task.heartbeat_timeout_ms.unwrap_or(agent.doc.lease_ms);
    let journal = match journal::of_task(state, &instance, &task, delivery.delivery_count).await {
        Ok(journal) => journal,
        Err(problem) => {
            // Handed out without its journal, the task would do recorded
            // work again: it waits on its queue for the store instead.
            settle(delivery.nack().await);
            return Err(problem);
        }
    };
    let claim = TaskHeartbeat {
        key: task.key.clone(),
        attempt: task.attempt,
        progress: None,
        kind: None,
        message: None,
        leased: false,
        lease_ms: Some(lease_ms),
    };
    let claim = Envelope::new(SOURCE, instance.clone(), OffsetDateTime::now_utc(), claim)
        .with_traceparent(envelope.traceparent);
    let token = Token {
        instance,
        key: task.key.clone(),
        attempt: task.attempt,
        agent: task.agent.clone(),
        taken_ms: Some(token::unix_ms(OffsetDateTime::now_utc())),
    };
    Ok(Some((
        claim,
        Taken {
            token,
            task,
            lease_ms,
            journal,
        },
        delivery,
    )))
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Bus unavailable",
        format!("could not reach the orchestrator: {e}"),
    )
    .retry_after(Duration::from_secs(1))
}

async fn dead_letter(delivery: Delivery, reason: &str) {
    tracing::warn!(reason, "dead-lettering a message from an agent queue");
    settle(delivery.dead_letter(reason).await);
}

fn settle(result: Result<(), legato_bus::BusError>) {
    if let Err(e) = result {
        // The broker delivers an unsettled message again; nothing is lost.
        tracing::warn!("could not settle a delivery: {e}");
    }
}

/// The envelopes as messages, each to its topic with its routing key.
fn routed(envelopes: &[Envelope]) -> Result<Vec<legato_bus::Routed>, Problem> {
    envelopes
        .iter()
        .map(|envelope| {
            legato_bus::OutgoingMessage::from_envelope(envelope).map(|message| legato_bus::Routed {
                topic: envelope.payload.topic(),
                routing_key: envelope
                    .payload
                    .routing_key(envelope.subject.as_str())
                    .into_owned(),
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)
}

fn bus_unavailable(e: legato_bus::BusError) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Bus unavailable",
        format!("could not reach the orchestrator: {e}"),
    )
    .retry_after(Duration::from_secs(1))
}

async fn publish(
    state: &GatewayState,
    instance: &InstanceId,
    traceparent: Option<TraceParent>,
    payload: Payload,
) -> Result<(), Problem> {
    let envelope = Envelope::new(SOURCE, instance.clone(), OffsetDateTime::now_utc(), payload)
        .with_traceparent(traceparent);
    state
        .bus
        .publish_envelope(&envelope)
        .await
        .map_err(bus_unavailable)
}

/// Where the attempt a token names stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// The attempt is the running one: its agent's word counts.
    Running,
    /// Its result is recorded: a repeat of it is answered, not sent.
    Completed,
}

fn missing() -> Problem {
    Problem::not_found("no such task")
}

/// The instance a token names, read now; `None` when there is none (a
/// store that does not answer is an error, not a missing task).
async fn instance_of(
    state: &GatewayState,
    token: &Token,
) -> Result<Option<InstanceState>, Problem> {
    match crate::api::load(state, &token.instance).await {
        Ok((_, engine)) => Ok(Some(engine)),
        Err(problem) if problem.status == 404 => Ok(None),
        Err(problem) => Err(problem),
    }
}

/// Reads the attempt a token names. An unknown one answers 404; one that is
/// no longer wanted answers 409 with why.
pub(crate) async fn standing(state: &GatewayState, token: &Token) -> Result<Standing, Problem> {
    let engine = instance_of(state, token).await?.ok_or_else(missing)?;
    standing_in(state, &engine, token)
}

/// Where the attempt stands in `engine`, its instance as read.
fn standing_in(
    state: &GatewayState,
    engine: &InstanceState,
    token: &Token,
) -> Result<Standing, Problem> {
    let slot = engine
        .task_slot(&token.key)
        .filter(|s| s.agent.as_ref() == Some(&token.agent))
        .ok_or_else(missing)?;
    let gone = |why: String| {
        // Not running anywhere any more, whatever its lease says.
        let attempt = token.idempotency_key();
        state.figures.dropped(token.agent.as_str(), &attempt);
        Problem::new(
            StatusCode::CONFLICT,
            "Task no longer wanted",
            format!(
                "attempt {} of task {} is no longer wanted: {why}",
                token.attempt, token.key
            ),
        )
    };
    if !engine.is_current(&token.key) {
        return Err(gone("the instance was restarted or started again".into()));
    }
    if slot.attempt != token.attempt {
        return Err(gone(format!("attempt {} replaced it", slot.attempt)));
    }
    match (slot.status, engine.status) {
        (SlotStatus::Completed, _) => Ok(Standing::Completed),
        (SlotStatus::Running, RuntimeStatus::Running | RuntimeStatus::Suspended) => {
            Ok(Standing::Running)
        }
        (status, RuntimeStatus::Running | RuntimeStatus::Suspended) => {
            Err(gone(match &slot.error {
                Some(error) => format!("it ended {status:?}: {error}"),
                None => format!("it ended {status:?}"),
            }))
        }
        (_, status) => Err(gone(format!("the instance is {status}"))),
    }
}

/// What a report came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
    /// Sent on to the instance.
    Recorded,
    /// A repeat of a completion already recorded: nothing sent.
    RecordedBefore,
}

impl Reported {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::RecordedBefore => "recorded_before",
        }
    }
}

/// Nothing, when the attempt a token names is the one running; else the
/// 404 or 409 of [`standing`], or a 409 for one whose result is recorded
/// (its worker's word no longer counts).
pub(crate) async fn running(state: &GatewayState, token: &Token) -> Result<(), Problem> {
    if standing(state, token).await? == Standing::Completed {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Task no longer wanted",
            format!("task {} attempt {} is completed", token.key, token.attempt),
        ));
    }
    Ok(())
}

/// Renews the attempt's lease (for `lease_ms` from now) and tells the
/// watchers `message`/`data`, if any.
pub(crate) async fn heartbeat(
    state: &GatewayState,
    token: &Token,
    lease_ms: u64,
    message: Option<String>,
    data: Option<Value>,
) -> Result<(), Problem> {
    running(state, token).await?;
    let news = message.is_some() || data.is_some();
    let beat = TaskHeartbeat {
        key: token.key.clone(),
        attempt: token.attempt,
        progress: data,
        kind: news.then_some(HeartbeatKind::AgentProgress),
        message,
        leased: false,
        lease_ms: Some(lease_ms),
    };
    let attempt = token.idempotency_key();
    // Progress waits for its turn; a plain renewal always goes now.
    let now = tokio::time::Instant::now();
    let turn = if news {
        let pace = &state.pace;
        pace.offer(&attempt, &token.instance, beat, lease_ms, now)
    } else {
        Turn::Now(beat)
    };
    match turn {
        Turn::Now(beat) => publish(state, &token.instance, None, beat.into()).await?,
        Turn::Later { wait, first: true } => send_in_turn(state.clone(), attempt.clone(), wait),
        Turn::Later { first: false, .. } => {}
    }
    state
        .figures
        .renewed(token.agent.as_str(), &attempt, lease_end(lease_ms));
    Ok(())
}

/// Sends the progress report of `attempt` that waits for its turn, after
/// `wait`. A report that cannot be sent is left: progress is news, not
/// state, and the attempt's next report carries the lease on.
fn send_in_turn(state: GatewayState, attempt: String, wait: std::time::Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let now = tokio::time::Instant::now();
        if let Some((instance, beat)) = state.pace.due(&attempt, now)
            && let Err(problem) = publish(&state, &instance, None, beat.into()).await
        {
            tracing::warn!(attempt = %attempt, "progress not sent: {}", problem.detail);
        }
    });
}

/// Records the attempt's result, once however often it is sent.
pub(crate) async fn complete(
    state: &GatewayState,
    token: &Token,
    output: Value,
    custom_status: Option<Value>,
    usage: Option<Usage>,
) -> Result<Reported, Problem> {
    let completion = Completion {
        token: token.clone(),
        output,
        custom_status,
        usage,
    };
    let mut answers = complete_all(state, vec![completion]).await?;
    answers.pop().unwrap_or_else(|| Err(missing()))
}

/// One completion of a batch.
pub(crate) struct Completion {
    pub token: Token,
    pub output: Value,
    pub custom_status: Option<Value>,
    pub usage: Option<Usage>,
}

/// Instances read at once while a batch is checked.
const PARALLEL_READS: usize = 16;

/// Records a batch of completions: each instance read once, every result
/// sent in one publish, each completion answered as [`complete`] would. A
/// store or bus that does not answer fails the whole batch; sending it
/// again records each result once.
pub(crate) async fn complete_all(
    state: &GatewayState,
    completions: Vec<Completion>,
) -> Result<Vec<Result<Reported, Problem>>, Problem> {
    let mut instances: Vec<Token> = Vec::new();
    for completion in &completions {
        if !instances
            .iter()
            .any(|t| t.instance == completion.token.instance)
        {
            instances.push(completion.token.clone());
        }
    }
    let reads: Vec<_> = futures::stream::iter(instances)
        .map(|token| async move {
            let engine = instance_of(state, &token).await;
            engine.map(|engine| (token.instance, engine))
        })
        .buffer_unordered(PARALLEL_READS)
        .collect()
        .await;
    let mut engines = HashMap::with_capacity(reads.len());
    for read in reads {
        let (instance, engine) = read?;
        engines.insert(instance, engine);
    }
    let mut answers = Vec::with_capacity(completions.len());
    let mut results = Vec::new();
    for completion in completions {
        let engine = engines
            .get(&completion.token.instance)
            .and_then(Option::as_ref);
        let standing = engine
            .ok_or_else(missing)
            .and_then(|engine| standing_in(state, engine, &completion.token));
        answers.push(match standing {
            Ok(Standing::Completed) => Ok(Reported::RecordedBefore),
            Ok(Standing::Running) => {
                results.push(completion);
                Ok(Reported::Recorded)
            }
            Err(problem) => Err(problem),
        });
    }
    let now = OffsetDateTime::now_utc();
    let envelopes: Vec<Envelope> = results
        .iter()
        .map(|c| {
            let completed = TaskCompleted {
                key: c.token.key.clone(),
                attempt: c.token.attempt,
                output: c.output.clone(),
                custom_status: c.custom_status.clone(),
                usage: c.usage.clone(),
            };
            Envelope::new(SOURCE, c.token.instance.clone(), now, completed)
        })
        .collect();
    if !envelopes.is_empty() {
        state
            .bus
            .publish_all(routed(&envelopes)?)
            .await
            .map_err(bus_unavailable)?;
    }
    for completion in &results {
        count_end(state, &completion.token, Outcome::Completed);
    }
    Ok(answers)
}

/// Sends the attempt's question on: the attempt ends here.
pub(crate) async fn ask(
    state: &GatewayState,
    token: &Token,
    asked: legato_contracts::TaskAsked,
) -> Result<(), Problem> {
    publish(state, &token.instance, None, asked.into()).await?;
    let attempt = token.idempotency_key();
    state.pace.forget(&attempt);
    state.figures.dropped(token.agent.as_str(), &attempt);
    Ok(())
}

/// Records the attempt's failure: retried under the step's policy when
/// `retryable`, else the step fails.
pub(crate) async fn fail(
    state: &GatewayState,
    token: &Token,
    message: String,
    retryable: bool,
    usage: Option<Usage>,
) -> Result<Reported, Problem> {
    if standing(state, token).await? == Standing::Completed {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Task completed",
            format!(
                "task {} attempt {} is completed; its result stands",
                token.key, token.attempt
            ),
        ));
    }
    let failed = TaskFailed {
        key: token.key.clone(),
        attempt: token.attempt,
        error: TaskError { message, retryable },
        usage,
    };
    publish(state, &token.instance, None, failed.into()).await?;
    count_end(state, token, Outcome::Failed);
    Ok(Reported::Recorded)
}
