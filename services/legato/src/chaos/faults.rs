//! The soak's faults: what it makes go wrong between starts, drawn from
//! the seed, and the run that injects them while the instances start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::stack::Process;
use super::{ChaosOptions, Rng, Soak, stack, verdict};

/// What can go wrong, as the soak makes it happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillOrchestrator,
    KillAgent,
    KillGateway,
    KillNotifier,
    RestartBroker,
    RestartStore,
    /// An instance whose `for_each` items hang on their first attempt
    /// without heartbeats: the lease fails them and the retry runs.
    HungAgent,
    /// One replica cut off from the broker or the store for a while.
    Partition,
    /// One replica's link to the broker or the store stops answering for a
    /// while, without closing.
    HangLink,
    /// One replica's connections to the broker or the store closed once.
    DropConnections,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Self::KillOrchestrator => "kill -9 orchestrator (one of 2)",
            Self::KillAgent => "kill -9 echo agent (one of 2)",
            Self::KillGateway => "kill -9 gateway",
            Self::KillNotifier => "kill -9 notifier",
            Self::RestartBroker => "broker restart",
            Self::RestartStore => "store restart (Azurite)",
            Self::HungAgent => "hung agent (lease lost, retried)",
            Self::Partition => "partition: one replica cut off",
            Self::HangLink => "hung link of one replica",
            Self::DropConnections => "dropped connections of a replica",
        }
    }
}

impl Soak {
    fn inject(&mut self, fault: Fault, rng: &mut Rng, rabbitmqctl: &str) -> anyhow::Result<()> {
        match fault {
            Fault::KillOrchestrator => {
                let n = rng.below(self.orchestrators.len() as u64) as usize;
                self.relaunch("orchestrator", n, Process::crash)?;
            }
            Fault::KillAgent => {
                let n = rng.below(self.agents.len() as u64) as usize;
                self.relaunch("agent-echo", n, Process::crash)?;
            }
            Fault::KillGateway => self.relaunch("gateway", 0, Process::crash)?,
            Fault::KillNotifier => self.relaunch("notifier", 0, Process::crash)?,
            Fault::RestartBroker => stack::restart_broker(rabbitmqctl)?,
            Fault::RestartStore => {
                self.azurite.stop();
                std::thread::sleep(Duration::from_millis(500 + rng.below(2_500)));
                self.azurite.resume()?;
            }
            // Made by the instance started next (see `start_instance`).
            Fault::HungAgent => {}
            Fault::Partition | Fault::HangLink | Fault::DropConnections => {
                let Some(network) = &self.network else {
                    return Ok(());
                };
                let links = network.links();
                let (slot, dependency) = &links[rng.below(links.len() as u64) as usize];
                match fault {
                    Fault::Partition => {
                        network.cut(slot, *dependency, legato_fault_proxy::Link::Partitioned)
                    }
                    Fault::HangLink => {
                        network.cut(slot, *dependency, legato_fault_proxy::Link::Hung)
                    }
                    _ => network.drop_connections(slot, *dependency),
                }
            }
        }
        Ok(())
    }
}

/// Starts the instances of the soak workflow while it injects the faults
/// between starts, and prints its tally.
pub(super) async fn run(
    soak: &mut Soak,
    options: &ChaosOptions,
    seed: u64,
    rng: &mut Rng,
    began: Instant,
) -> anyhow::Result<Vec<verdict::Expected>> {
    let limit = Duration::from_secs(options.limit_s);
    let kinds: Vec<Fault> = [
        Fault::KillOrchestrator,
        Fault::KillOrchestrator,
        Fault::KillAgent,
        Fault::KillAgent,
        Fault::KillGateway,
        Fault::KillNotifier,
        Fault::HungAgent,
        Fault::HungAgent,
        Fault::RestartStore,
    ]
    .into_iter()
    .chain(
        (!options.no_broker_restarts && options.bus == "rabbitmq").then_some(Fault::RestartBroker),
    )
    .chain(
        options
            .network
            .then_some([
                Fault::Partition,
                Fault::Partition,
                Fault::HangLink,
                Fault::DropConnections,
            ])
            .into_iter()
            .flatten(),
    )
    .collect();
    let mut tally: BTreeMap<Fault, usize> = BTreeMap::new();
    let ids: Vec<String> = (0..options.instances)
        .map(|i| format!("soak-{seed}-{i}"))
        .collect();
    let mut next = 0;
    let mut faults = 0;
    while next < ids.len() || faults < options.faults {
        anyhow::ensure!(
            began.elapsed() < limit,
            "the run took longer than {limit:?}"
        );
        let mut hang = false;
        if faults < options.faults {
            let fault = kinds[rng.below(kinds.len() as u64) as usize];
            soak.inject(fault, rng, &options.rabbitmqctl)
                .with_context(|| format!("injecting {}", fault.describe()))?;
            hang = fault == Fault::HungAgent;
            *tally.entry(fault).or_default() += 1;
            faults += 1;
            if faults % 100 == 0 {
                println!(
                    "chaos: {faults} faults, {next} instances started, {:.0?}",
                    began.elapsed()
                );
            }
        }
        // Starts spread over the faults, so both end together.
        let left = (options.faults - faults).max(1);
        let starts = (ids.len() - next).div_ceil(left).max(usize::from(hang));
        for _ in 0..starts {
            let Some(id) = ids.get(next) else { break };
            soak.start_instance("soak", id, rng, hang).await?;
            hang = false;
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
    }
    println!(
        "chaos: seed {seed}: {} faults over {} instances in {:.0?}",
        faults,
        ids.len(),
        began.elapsed()
    );
    for (fault, n) in &tally {
        println!("  {:<36} {n:>6}", fault.describe());
    }
    if soak.network.is_some() {
        println!(
            "  {:<36} {:>6}",
            "starts cut off, tried again", soak.failed_starts
        );
    }
    Ok(ids.into_iter().map(verdict::Expected::soak).collect())
}
