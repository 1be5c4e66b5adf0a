//! Where pull workers' long polls meet the agents' task queues.
//!
//! Each agent a worker polls for gets a *feeder* in this gateway replica: a
//! consumer on the agent's queue that takes a delivery only while a poll
//! is waiting for one, and hands it to the oldest waiting poll. A poll may
//! wait on several agents' feeders at once; the first task to arrive ends
//! the wait, and it takes whatever else is ready up to its limit.
//!
//! Deliveries stay unsettled until the poll answering them has told the
//! orchestrator that a worker took them (the claim heartbeat that starts
//! the lease) and acks them: a replica that dies before that leaves them
//! to the broker, which delivers them again to another replica. A delivery
//! taken for a poll that gave up meanwhile waits here for the next poll;
//! a feeder nobody polls for a while closes its consumer, returning what it
//! holds to the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use legato_bus::{Bus, Delivery, Subscription};
use legato_contracts::AgentName;
use legato_service::Shutdown;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Deliveries a feeder's consumer may hold unsettled (its prefetch).
const PREFETCH: usize = 16;
/// A feeder no poll has waited on for this long closes its consumer.
const IDLE: Duration = Duration::from_secs(30);
/// After a consumer fails, the pause before it is opened again.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a few queue operations that leave no
    // half-updated state behind, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One long poll: how many tasks it takes, and those it got.
struct Waiter {
    want: usize,
    inner: Mutex<WaiterInner>,
    ready: Notify,
}

struct WaiterInner {
    open: bool,
    got: Vec<Delivery>,
}

impl Waiter {
    fn new(want: usize) -> Self {
        Self {
            want: want.max(1),
            inner: Mutex::new(WaiterInner {
                open: true,
                got: Vec::new(),
            }),
            ready: Notify::new(),
        }
    }

    /// Takes `delivery` if the poll still waits and has room; gives it back
    /// otherwise.
    fn offer(&self, delivery: Delivery) -> Option<Delivery> {
        let mut inner = lock(&self.inner);
        if !inner.open || inner.got.len() >= self.want {
            return Some(delivery);
        }
        inner.got.push(delivery);
        drop(inner);
        self.ready.notify_one();
        None
    }

    fn room(&self) -> usize {
        let inner = lock(&self.inner);
        if inner.open {
            self.want.saturating_sub(inner.got.len())
        } else {
            0
        }
    }

    fn has_any(&self) -> bool {
        !lock(&self.inner).got.is_empty()
    }

    /// Ends the wait: nothing is offered to it from here on.
    fn close(&self) -> Vec<Delivery> {
        let mut inner = lock(&self.inner);
        inner.open = false;
        std::mem::take(&mut inner.got)
    }
}

/// Ends a poll's wait when the poll is dropped before it answered.
struct ClosedOnDrop(Arc<Waiter>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        drop(self.0.close());
    }
}

/// One agent's queue in this replica.
struct Feeder {
    agent: AgentName,
    state: Mutex<FeedState>,
    /// A poll arrived (the consumer may take a delivery).
    demand: Notify,
}

#[derive(Default)]
struct FeedState {
    waiters: VecDeque<Arc<Waiter>>,
    /// Taken for a poll that had gone: the next poll gets them first.
    held: VecDeque<Delivery>,
    consuming: bool,
}

impl Feeder {
    /// Open room among the waiting polls, forgetting the ones that ended.
    fn room(state: &mut FeedState) -> usize {
        state.waiters.retain(|w| w.room() > 0);
        state.waiters.iter().map(|w| w.room()).sum()
    }

    /// Gives a delivery to the oldest poll with room, or holds it.
    fn hand(&self, mut delivery: Delivery) {
        let mut state = lock(&self.state);
        while let Some(waiter) = state.waiters.front().cloned() {
            match waiter.offer(delivery) {
                None => {
                    if waiter.room() == 0 {
                        state.waiters.pop_front();
                    }
                    return;
                }
                Some(back) => {
                    delivery = back;
                    state.waiters.pop_front();
                }
            }
        }
        state.held.push_back(delivery);
    }

    /// Adds a poll: held deliveries first, then it waits its turn. True
    /// when the consumer must be started.
    fn add(&self, waiter: &Arc<Waiter>) -> bool {
        let mut state = lock(&self.state);
        while waiter.room() > 0 {
            let Some(delivery) = state.held.pop_front() else {
                break;
            };
            if let Some(back) = waiter.offer(delivery) {
                state.held.push_front(back);
                break;
            }
        }
        if waiter.room() > 0 {
            state.waiters.push_back(waiter.clone());
        }
        let start = !state.consuming;
        state.consuming = true;
        drop(state);
        self.demand.notify_one();
        start
    }
}

/// The feeders of this replica, by agent.
pub struct PullHub {
    bus: Arc<dyn Bus>,
    feeders: Mutex<HashMap<AgentName, Arc<Feeder>>>,
    shutdown: Shutdown,
}

impl PullHub {
    pub fn new(bus: Arc<dyn Bus>, shutdown: Shutdown) -> Self {
        Self {
            bus,
            feeders: Mutex::default(),
            shutdown,
        }
    }

    /// Waits until at least one task of `agents` is there (or `wait` ends,
    /// or the gateway stops) and returns at most `want` deliveries, each
    /// to be settled by the caller.
    pub async fn poll(&self, agents: &[AgentName], want: usize, wait: Duration) -> Vec<Delivery> {
        let waiter = Arc::new(Waiter::new(want));
        // A poll whose caller went away (the worker hung up mid-wait) takes
        // nothing more; what it had goes back to the queue.
        let _closed_on_drop = ClosedOnDrop(waiter.clone());
        for agent in agents {
            let feeder = self.feeder(agent);
            if feeder.add(&waiter) {
                self.consume(feeder);
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let ready = waiter.ready.notified();
            if waiter.has_any() {
                break;
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.shutdown.wait() => break,
            }
        }
        waiter.close()
    }

    fn feeder(&self, agent: &AgentName) -> Arc<Feeder> {
        lock(&self.feeders)
            .entry(agent.clone())
            .or_insert_with(|| {
                Arc::new(Feeder {
                    agent: agent.clone(),
                    state: Mutex::default(),
                    demand: Notify::new(),
                })
            })
            .clone()
    }

    /// Runs a feeder's consumer until no poll has waited on it for
    /// [`IDLE`], or the gateway stops.
    fn consume(&self, feeder: Arc<Feeder>) {
        let bus = self.bus.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut subscription: Option<Box<dyn Subscription>> = None;
            loop {
                if !wait_for_demand(&feeder, &shutdown).await {
                    break;
                }
                let open = match subscription.as_mut() {
                    Some(open) => open,
                    None => {
                        let spec = legato_bus::topology::agent_tasks(feeder.agent.as_str())
                            .prefetch(PREFETCH);
                        match bus.subscribe(spec).await {
                            Ok(opened) => subscription.insert(opened),
                            Err(e) => {
                                tracing::warn!(agent = %feeder.agent, "cannot consume the agent's tasks: {e}");
                                pause(&shutdown).await;
                                continue;
                            }
                        }
                    }
                };
                // Never cancelled midway, so a delivery is never lost
                // between the consumer and a poll; only shutdown ends it.
                let next = tokio::select! {
                    next = open.next() => next,
                    _ = shutdown.wait() => break,
                };
                match next {
                    Ok(delivery) => feeder.hand(delivery),
                    Err(e) => {
                        tracing::warn!(agent = %feeder.agent, "the agent's task consumer failed: {e}");
                        subscription = None;
                        pause(&shutdown).await;
                    }
                }
            }
            // Held deliveries go back to the queue when dropped.
            let held = std::mem::take(&mut lock(&feeder.state).held);
            drop(held);
            drop(subscription);
        });
    }
}

/// Waits until a poll has room on this feeder. False when the feeder
/// should stop: idle for [`IDLE`] (then it is marked stopped under the
/// lock polls take, so a poll arriving meanwhile starts a new consumer),
/// or the gateway is stopping.
async fn wait_for_demand(feeder: &Feeder, shutdown: &Shutdown) -> bool {
    let idle_until = Instant::now() + IDLE;
    loop {
        let demand = feeder.demand.notified();
        tokio::pin!(demand);
        demand.as_mut().enable();
        {
            let mut state = lock(&feeder.state);
            if Feeder::room(&mut state) > 0 {
                return true;
            }
            if Instant::now() >= idle_until || shutdown.is_triggered() {
                state.consuming = false;
                return false;
            }
        }
        tokio::select! {
            _ = demand => {}
            _ = tokio::time::sleep_until(idle_until) => {}
            _ = shutdown.wait() => {}
        }
    }
}

async fn pause(shutdown: &Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(REOPEN_PAUSE) => {}
        _ = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests;
