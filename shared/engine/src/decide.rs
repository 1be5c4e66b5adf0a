use std::sync::Arc;

use legato_contracts::{InstanceId, ProgressEvent, ProgressKind, RuntimeStatus, StepId};
use legato_workflow::Workflow;
use serde_json::Value;
use time::OffsetDateTime;

use crate::{Command, Event, InstanceState, TimerKey, lifecycle, spending, tasks};

/// Whether the event changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Append the event to history and commit the new state and commands.
    Applied,
    /// A duplicate, stale or out-of-place event; the reason is for logs and
    /// API answers. Nothing is to be written.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: InstanceState,
    pub commands: Vec<Command>,
    pub outcome: Outcome,
    /// Ids of the control messages and external events this decision
    /// accepts. The state does not keep them (it would grow with every
    /// message an instance is sent): the store does, and refuses a commit
    /// claiming an id an earlier commit claimed, so a redelivery counts
    /// once however late it comes. A decision whose claim was taken is
    /// ignored as a whole.
    pub claims: Vec<String>,
}

impl Decision {
    pub fn applied(&self) -> bool {
        self.outcome == Outcome::Applied
    }

    /// The first of this decision's claims among `claimed`: a decision
    /// that must be ignored, its message having been accepted before.
    pub fn claimed_before<'a>(
        &'a self,
        claimed: &std::collections::BTreeSet<String>,
    ) -> Option<&'a str> {
        self.claims
            .iter()
            .find(|id| claimed.contains(*id))
            .map(String::as_str)
    }
}

/// The engine: the next state and the commands to carry out. Pure and
/// deterministic; see the crate documentation.
pub fn decide(state: &InstanceState, event: &Event) -> Decision {
    let mut ctx = Ctx::new(state.clone(), event.at());
    ctx.state.sequence += 1;
    ctx.state.updated_at = Some(event.at());
    match apply(&mut ctx, event) {
        Ok(()) => Decision {
            state: ctx.state,
            commands: ctx.commands,
            outcome: Outcome::Applied,
            claims: ctx.claims,
        },
        Err(Ignored(reason)) => Decision {
            state: state.clone(),
            commands: Vec::new(),
            outcome: Outcome::Ignored(reason),
            claims: Vec::new(),
        },
    }
}

/// Rebuilds an instance's state from its history.
pub fn replay<'a>(id: InstanceId, history: impl IntoIterator<Item = &'a Event>) -> InstanceState {
    history
        .into_iter()
        .fold(InstanceState::new(id), |state, event| {
            decide(&state, event).state
        })
}

/// Why an event is ignored; returned with `?` from anywhere in a handler,
/// which is safe because [`decide`] then discards every partial change.
#[derive(Debug)]
pub(crate) struct Ignored(pub String);

pub(crate) fn ignore<T>(reason: impl Into<String>) -> Result<T, Ignored> {
    Err(Ignored(reason.into()))
}

fn apply(ctx: &mut Ctx, event: &Event) -> Result<(), Ignored> {
    match event {
        Event::Started {
            instance,
            workflow,
            input,
            tenant,
            run,
            created_at,
            parent,
            budget,
            serves,
            ..
        } => {
            // The start's budget, or else its definition's.
            ctx.state.budget = budget.clone().or_else(|| workflow.budget.clone());
            ctx.state.serves = serves.clone();
            lifecycle::start(
                ctx,
                instance,
                workflow,
                input,
                tenant.as_ref(),
                *run,
                parent.as_ref(),
            )?;
            // The instance was created when its start was accepted (the
            // Azure store lists it by that time).
            if let Some(created_at) = created_at {
                ctx.state.created_at = Some(*created_at);
            }
            Ok(())
        }
        Event::TerminateRequested { id, reason, .. } => {
            lifecycle::first_delivery(ctx, id)?;
            lifecycle::terminate(ctx, reason.as_deref())
        }
        Event::SuspendRequested { id, reason, .. } => {
            lifecycle::first_delivery(ctx, id)?;
            lifecycle::suspend(ctx, reason.as_deref())
        }
        Event::ResumeRequested {
            id, reason, budget, ..
        } => {
            lifecycle::first_delivery(ctx, id)?;
            spending::rebudget(ctx, budget.as_ref())?;
            lifecycle::resume(ctx, reason.as_deref())
        }
        Event::RestartRequested { id, input, .. } => {
            lifecycle::first_delivery(ctx, id)?;
            lifecycle::restart(ctx, input.as_ref())
        }
        Event::RedriveRequested { id, workflow, .. } => {
            lifecycle::first_delivery(ctx, id)?;
            lifecycle::redrive(ctx, workflow.as_ref())
        }
        // Not held back while suspended: a live agent keeps its lease, and
        // its news (an approval request) is news now.
        Event::TaskHeartbeat {
            key,
            attempt,
            at,
            news,
            lease_ms,
        } => match ctx.state.status {
            RuntimeStatus::Running | RuntimeStatus::Suspended => {
                tasks::heartbeat(ctx, key, *attempt, *at, news.as_ref(), *lease_ms)
            }
            status => ignore(format!("instance is {status}")),
        },
        Event::TaskCompleted { .. }
        | Event::TaskFailed { .. }
        | Event::TaskAsked { .. }
        | Event::TimerFired { .. }
        | Event::EventRaised { .. } => match ctx.state.status {
            RuntimeStatus::Running => apply_running(ctx, event),
            RuntimeStatus::Suspended => lifecycle::buffer_while_suspended(ctx, event),
            status => ignore(format!("instance is {status}")),
        },
    }
}

/// Applies a task result, timer or external event to a running instance,
/// then starts whatever became ready.
pub(crate) fn apply_running(ctx: &mut Ctx, event: &Event) -> Result<(), Ignored> {
    let over_budget = match event {
        Event::TaskCompleted {
            key,
            attempt,
            output,
            custom_status,
            usage,
            ..
        } => {
            let over = spending::account(ctx, key, usage.as_ref());
            tasks::completed(ctx, key, *attempt, output, custom_status.as_ref())?;
            over
        }
        Event::TaskFailed {
            key,
            attempt,
            error,
            usage,
            ..
        } => {
            let over = spending::account(ctx, key, usage.as_ref());
            tasks::failed(ctx, key, *attempt, error)?;
            over
        }
        Event::TaskAsked {
            key,
            attempt,
            name,
            question,
            schema,
            timeout_ms,
            ..
        } => {
            let asked = crate::questions::Asked {
                name,
                question,
                schema: schema.as_ref(),
                timeout_ms: *timeout_ms,
            };
            crate::questions::asked(ctx, key, *attempt, &asked)?;
            None
        }
        Event::TimerFired { timer, .. } => {
            tasks::timer_fired(ctx, timer)?;
            None
        }
        Event::EventRaised { id, name, data, .. } => {
            lifecycle::event_raised(ctx, id, name, data)?;
            None
        }
        _ => return ignore("not a running-instance event"),
    };
    match over_budget {
        Some(why) => spending::settle(ctx, why),
        None => crate::scheduler::advance(ctx),
    }
    Ok(())
}

/// The state being built for one event plus the commands it produces.
pub(crate) struct Ctx {
    pub state: InstanceState,
    pub commands: Vec<Command>,
    pub at: OffsetDateTime,
    /// See [`Decision::claims`].
    pub claims: Vec<String>,
    /// Ids already claimed: by this decision, or (events waiting in the
    /// backlog) by the decision that buffered them.
    pub claimed: std::collections::BTreeSet<String>,
}

impl Ctx {
    fn new(state: InstanceState, at: OffsetDateTime) -> Self {
        Self {
            state,
            commands: Vec::new(),
            at,
            claims: Vec::new(),
            claimed: std::collections::BTreeSet::new(),
        }
    }

    /// Claims a message id (see [`Decision::claims`]).
    pub fn claim(&mut self, id: &str) {
        if self.claimed.insert(id.to_owned()) {
            self.claims.push(id.to_owned());
        }
    }

    pub fn workflow(&self) -> Result<Arc<Workflow>, Ignored> {
        match &self.state.workflow {
            Some(wf) => Ok(wf.clone()),
            None => ignore("instance has not started"),
        }
    }

    pub fn at_plus(&self, ms: u64) -> OffsetDateTime {
        self.at + time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    pub fn schedule(&mut self, timer: TimerKey, fire_at: OffsetDateTime) {
        self.state.timers.insert(timer.clone());
        self.commands
            .push(Command::ScheduleTimer { timer, fire_at });
    }

    /// Cancels a pending timer; a no-op for one already fired or cancelled.
    pub fn cancel_timer(&mut self, timer: TimerKey) {
        if self.state.timers.remove(&timer) {
            self.commands.push(Command::CancelTimer { timer });
        }
    }

    pub fn progress(&mut self, kind: ProgressKind) -> ProgressBuilder<'_> {
        ProgressBuilder {
            ctx: self,
            event: blank_progress(kind),
        }
    }
}

fn blank_progress(kind: ProgressKind) -> ProgressEvent {
    ProgressEvent {
        position: 0,
        seq: 0,
        kind,
        status: RuntimeStatus::Pending,
        step: None,
        item: None,
        iteration: None,
        attempt: None,
        message: None,
        data: None,
    }
}

/// Fills in a progress event; it is emitted when dropped, stamped with the
/// instance's status and sequence number at that moment and the next
/// progress position.
pub(crate) struct ProgressBuilder<'a> {
    ctx: &'a mut Ctx,
    event: ProgressEvent,
}

impl ProgressBuilder<'_> {
    /// The step the event is about, and its loop iteration if it has one.
    pub fn step(mut self, step: &StepId) -> Self {
        self.event.iteration = self.ctx.state.iteration_of(step);
        self.event.step = Some(step.clone());
        self
    }
    pub fn item(mut self, item: Option<u32>) -> Self {
        self.event.item = item;
        self
    }
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.event.attempt = Some(attempt);
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.event.message = Some(message.into());
        self
    }
    pub fn message_opt(mut self, message: Option<&str>) -> Self {
        self.event.message = message.map(str::to_owned);
        self
    }
    pub fn data(mut self, data: Value) -> Self {
        self.event.data = Some(data);
        self
    }
}

impl Drop for ProgressBuilder<'_> {
    fn drop(&mut self) {
        // Taken, not cloned: `data` may hold a whole step output.
        let blank = blank_progress(self.event.kind);
        let mut event = std::mem::replace(&mut self.event, blank);
        self.ctx.state.position += 1;
        event.position = self.ctx.state.position;
        event.seq = self.ctx.state.sequence;
        event.status = self.ctx.state.status;
        self.ctx.commands.push(Command::PublishProgress(event));
    }
}
