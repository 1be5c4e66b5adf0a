//! `legato chaos`: a soak anyone can run. It starts the process-per-service
//! stack over RabbitMQ with state in an Azurite of its own, runs instances
//! of a workflow with parallel steps, a `for_each` and a heartbeat lease,
//! and between starts injects faults picked at random from a seed: kill -9
//! of every service kind, broker restarts, store restarts and agents that
//! hang. At the end it checks that every instance completed, that every
//! task's result was recorded exactly once and that nothing is left
//! dead-lettered, and prints the tally; it exits 1 when any check fails.

mod stack;
mod verdict;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

pub use stack::Azurite;
use stack::Process;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOptions {
    /// Instances to run.
    #[arg(long, default_value_t = 100)]
    pub instances: usize,
    /// Faults to inject while they run.
    #[arg(long, default_value_t = 40)]
    pub faults: usize,
    /// Picks the faults and their moments; printed, so a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Azurite's Table service (`npm install azurite@3.35.0`; `scripts/test`
    /// installs it here).
    #[arg(long, default_value = "tests/node/node_modules/.bin/azurite-table")]
    pub azurite: PathBuf,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Restarts the broker (`stop_app`, `start_app`).
    #[arg(long, default_value = "rabbitmqctl")]
    pub rabbitmqctl: String,
    /// Leave the broker alone (one shared with other work).
    #[arg(long)]
    pub no_broker_restarts: bool,
    /// Give up when the run takes longer (seconds).
    #[arg(long, default_value_t = 7200)]
    pub limit_s: u64,
}

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
        }
    }
}

/// SplitMix64: a small deterministic generator, so a run's choices are
/// repeated from its seed (timing still differs between runs).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn echo(id: &str, needs: &[&str], input: Value) -> Value {
    json!({"id": id, "needs": needs, "agent": "echo", "input": input})
}

/// What each soak instance runs as a child workflow.
fn child_workflow() -> Value {
    json!({"name": "soak-child", "version": 1, "steps": [
        echo("inner", &[], json!({"value": "${{ input.value }}", "sleep_ms": "${{ input.ms }}"})),
    ], "output": "${{ steps.inner.output.value }}"})
}

fn workflow() -> Value {
    json!({"name": "soak", "version": 1, "steps": [
        echo("a", &[], json!({"value": 1, "sleep_ms": "${{ input.ms }}"})),
        echo("b", &[], json!({"value": 2, "sleep_ms": "${{ input.ms }}"})),
        {"id": "each", "needs": ["a", "b"], "for_each": "${{ [1, 2, 3] }}", "agent": "echo",
         // Each item records two journaled steps first: an attempt that
         // hangs and loses its lease leaves them for the next one.
         "input": {"value": "${{ item }}", "sleep_ms": "${{ input.ms }}", "hang_attempts": "${{ input.hang }}",
                   "journal": ["plan", "draft"]},
         "max_parallel": 2, "heartbeat_timeout_ms": 1500,
         "retry": {"max_attempts": 4, "initial_interval_ms": 200, "backoff": 2.0}},
        // Two rounds of a loop, each its own work under the faults.
        {"id": "rounds", "needs": ["each"], "loop": {
            "max_iterations": 3,
            "until": "${{ iteration == 2 }}",
            "steps": [
                echo("draft", &[], json!({"value": "${{ iteration }}", "sleep_ms": "${{ input.ms }}"})),
                echo("check", &["draft"], json!({"value": "${{ steps.draft.output.value }}"})),
            ]
        }},
        // A race: the quick branch wins as a rule, the slow one is
        // cancelled; whichever wins, one result is recorded.
        {"id": "pick", "needs": ["rounds"], "race": {"steps": [
            echo("quick", &[], json!({"value": "quick", "sleep_ms": "${{ input.ms }}"})),
            echo("slow", &[], json!({"value": "slow", "sleep_ms": "${{ input.ms * 4 + 500 }}"})),
        ]}},
        // A child workflow run, its own instance under the faults.
        {"id": "kid", "needs": ["a"], "workflow": "soak-child",
         "input": {"value": 3, "ms": "${{ input.ms }}"}},
        echo("join", &["pick", "kid"], json!({"value": "${{ steps.a.output.value + steps.b.output.value + steps.kid.output - 3 }}"})),
    ], "output": "${{ steps.join.output.value }}"})
}

/// The running stack and how to reach it.
struct Soak {
    dir: PathBuf,
    env: Vec<(String, String)>,
    gateway_env: Vec<(String, String)>,
    base: String,
    azurite: Azurite,
    orchestrators: Vec<Process>,
    agents: Vec<Process>,
    gateway: Process,
    notifier: Process,
    client: reqwest::Client,
}

impl Soak {
    fn start(options: &ChaosOptions, seed: u64) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("legato-chaos-{seed}"));
        std::fs::create_dir_all(dir.join("no-config"))?;
        let azurite = Azurite::start(&options.azurite, &dir.join("azurite"))?;
        let gateway_port = stack::free_port()?;
        let env: Vec<(String, String)> = [
            ("LEGATO__BUS__KIND", "rabbitmq".to_owned()),
            ("LEGATO__BUS__URL", options.amqp_url.clone()),
            ("LEGATO__BUS__PREFIX", format!("chaos-{seed}.")),
            ("LEGATO__BUS__QUEUE_EXPIRY_MS", "600000".to_owned()),
            ("LEGATO__STORE__KIND", "azure_table".to_owned()),
            (
                "LEGATO__STORE__CONNECTION_STRING",
                azurite.connection_string(),
            ),
            ("LEGATO__STORE__TABLE_PREFIX", format!("chaos{seed}")),
            ("LEGATO__HTTP__PORT", "0".to_owned()),
            ("LEGATO__TELEMETRY__LOG", "error".to_owned()),
            (
                "LEGATO_CONFIG_DIR",
                dir.join("no-config").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut gateway_env = env.clone();
        gateway_env.retain(|(k, _)| k != "LEGATO__HTTP__PORT");
        gateway_env.push(("LEGATO__HTTP__PORT".into(), gateway_port.to_string()));
        let start = |name: &str| Process::start(name, &dir, &env);
        let orchestrators = vec![start("orchestrator")?, start("orchestrator")?];
        let agents = vec![start("agent-echo")?, start("agent-echo")?];
        let notifier = start("notifier")?;
        let gateway = Process::start("gateway", &dir, &gateway_env)?;
        Ok(Self {
            base: format!("http://127.0.0.1:{gateway_port}"),
            dir,
            env,
            gateway_env,
            azurite,
            orchestrators,
            agents,
            gateway,
            notifier,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    fn restart(&self, name: &str) -> anyhow::Result<Process> {
        let env = if name == "gateway" {
            &self.gateway_env
        } else {
            &self.env
        };
        Process::start(name, &self.dir, env)
    }

    fn inject(&mut self, fault: Fault, rng: &mut Rng, rabbitmqctl: &str) -> anyhow::Result<()> {
        match fault {
            Fault::KillOrchestrator => {
                let n = rng.below(self.orchestrators.len() as u64) as usize;
                self.orchestrators[n].crash();
                self.orchestrators[n] = self.restart("orchestrator")?;
            }
            Fault::KillAgent => {
                let n = rng.below(self.agents.len() as u64) as usize;
                self.agents[n].crash();
                self.agents[n] = self.restart("agent-echo")?;
            }
            Fault::KillGateway => {
                self.gateway.crash();
                self.gateway = self.restart("gateway")?;
            }
            Fault::KillNotifier => {
                self.notifier.crash();
                self.notifier = self.restart("notifier")?;
            }
            Fault::RestartBroker => stack::restart_broker(rabbitmqctl)?,
            Fault::RestartStore => {
                self.azurite.stop();
                std::thread::sleep(Duration::from_millis(500 + rng.below(2_500)));
                self.azurite.resume()?;
            }
            // Made by the instance started next (see `start_instance`).
            Fault::HungAgent => {}
        }
        Ok(())
    }

    /// Sends a request until the gateway takes it (it may be down, or the
    /// store or broker away): a bounded number of tries.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        for _ in 0..600 {
            match self
                .client
                .request(method.clone(), &url)
                .json(body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    return Ok(r.json().await.unwrap_or(Value::Null));
                }
                // A start whose first answer was lost.
                Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => return Ok(Value::Null),
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::bail!("{method} {path} was never accepted: {last}")
    }

    async fn start_instance(&self, id: &str, rng: &mut Rng, hang: bool) -> anyhow::Result<()> {
        let body = json!({
            "instanceId": id,
            "input": {"ms": 100 + rng.below(400), "hang": u32::from(hang)},
        });
        self.send(
            reqwest::Method::POST,
            "/api/v1/workflows/soak/instances",
            &body,
        )
        .await
        .map(|_| ())
    }
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<std::process::ExitCode> {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    println!(
        "chaos: seed {seed}, {} instances, {} faults",
        options.instances, options.faults
    );
    let began = Instant::now();
    let limit = Duration::from_secs(options.limit_s);
    let mut rng = Rng(seed);
    let mut soak = Soak::start(&options, seed).context("starting the stack")?;
    soak.send(
        reqwest::Method::PUT,
        "/api/v1/workflows/soak-child",
        &child_workflow(),
    )
    .await?;
    soak.send(reqwest::Method::PUT, "/api/v1/workflows/soak", &workflow())
        .await?;
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
    .chain((!options.no_broker_restarts).then_some(Fault::RestartBroker))
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
            soak.inject(fault, &mut rng, &options.rabbitmqctl)
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
            soak.start_instance(id, &mut rng, hang).await?;
            hang = false;
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
    }
    let faulted = began.elapsed();
    let verdict = verdict::check(&soak, &ids, limit.saturating_sub(began.elapsed())).await;
    println!(
        "chaos: seed {seed}: {} faults over {} instances in {:.0?} (all finished after {:.0?})",
        faults,
        ids.len(),
        faulted,
        began.elapsed()
    );
    for (fault, n) in &tally {
        println!("  {:<36} {n:>6}", fault.describe());
    }
    verdict.print();
    let dir = soak.dir.clone();
    drop(soak);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::debug!("{} left behind: {e}", dir.display());
    }
    Ok(if verdict.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
