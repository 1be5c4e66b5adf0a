//! `legato chaos`: a soak anyone can run. It starts the process-per-service
//! stack over RabbitMQ with state in an Azurite of its own, runs instances
//! of a workflow with parallel steps, a `for_each` and a heartbeat lease,
//! and between starts injects faults picked at random from a seed: kill -9
//! of every service kind, broker restarts, store restarts and agents that
//! hang. At the end it checks that every instance completed, that every
//! task's result was recorded exactly once and that nothing is left
//! dead-lettered, and prints the tally; it exits 1 when any check fails.
//! With `--network`, every service reaches the broker and the store through
//! fault proxies of its own (latency with jitter throughout, partitions of
//! one replica from one dependency, hung links, dropped connections), and
//! no service may exit on its own: each recovers without a restart. With
//! `--bus servicebus` it runs over a Service Bus (the stand-in) instead.
//! With `--upgrade-from <earlier legato>`, it is a rolling upgrade instead
//! of faults (see `upgrade`).

mod faults;
mod network;
mod stack;
mod upgrade;
mod verdict;

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
    /// `rabbitmq` (`--amqp-url`) or `servicebus` (`--servicebus` and
    /// `--servicebus-endpoint`, such as the stand-in's: `cargo run -p
    /// legato-servicebus-standin -- --port 5380`).
    #[arg(long, default_value = "rabbitmq")]
    pub bus: String,
    /// A Service Bus connection string (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…`).
    #[arg(long)]
    pub servicebus: Option<String>,
    /// Where the Service Bus REST API is served (the stand-in's URL).
    #[arg(long)]
    pub servicebus_endpoint: Option<String>,
    /// Network faults too: each service reaches the broker and the store
    /// through proxies of its own.
    #[arg(long)]
    pub network: bool,
    /// With `--network`: latency added each way on every link.
    #[arg(long, default_value_t = 200)]
    pub latency_ms: u64,
    /// With `--network`: each chunk's latency is within this much of it.
    #[arg(long, default_value_t = 100)]
    pub jitter_ms: u64,
    /// With `--network`: how long a partition lasts (seconds).
    #[arg(long, default_value_t = 30)]
    pub partition_s: u64,
    /// With `--network`: how long a hung link lasts (seconds).
    #[arg(long, default_value_t = 15)]
    pub hang_s: u64,
    /// A rolling upgrade instead of faults: the stack starts on this
    /// earlier `legato` binary (`scripts/earlier-build`), and its replicas
    /// are replaced one at a time by this one's while the instances run.
    #[arg(long)]
    pub upgrade_from: Option<PathBuf>,
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

/// The soak's workflow. Under network faults its leased items get enough
/// attempts to outlast a partition: a replica cut off from the broker
/// cannot heartbeat, so its items lose their leases and run again.
fn workflow(network: bool) -> Value {
    let retry = if network {
        json!({"max_attempts": 12, "initial_interval_ms": 500, "backoff": 2.0, "max_interval_ms": 5000})
    } else {
        json!({"max_attempts": 4, "initial_interval_ms": 200, "backoff": 2.0})
    };
    json!({"name": "soak", "version": 1, "steps": [
        echo("a", &[], json!({"value": 1, "sleep_ms": "${{ input.ms }}"})),
        echo("b", &[], json!({"value": 2, "sleep_ms": "${{ input.ms }}"})),
        {"id": "each", "needs": ["a", "b"], "for_each": "${{ [1, 2, 3] }}", "agent": "echo",
         // Each item records two journaled steps first: an attempt that
         // hangs and loses its lease leaves them for the next one.
         "input": {"value": "${{ item }}", "sleep_ms": "${{ input.ms }}", "hang_attempts": "${{ input.hang }}",
                   "journal": ["plan", "draft"]},
         "max_parallel": 2, "heartbeat_timeout_ms": 1500,
         "retry": retry},
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

/// How often a replica's start is tried while its links are cut: longer
/// than any partition.
const MAX_START_TRIES: usize = 60;

/// The running stack and how to reach it.
struct Soak {
    dir: PathBuf,
    /// The `legato` binary replicas are started from.
    exe: PathBuf,
    /// What every service is given, before its own links.
    env: Vec<(String, String)>,
    gateway_port: u16,
    bus: BusKind,
    base: String,
    azurite: Azurite,
    network: Option<network::Network>,
    /// Starts of a replica that failed because its link was cut, tried
    /// again.
    failed_starts: usize,
    orchestrators: Vec<Process>,
    agents: Vec<Process>,
    gateway: Process,
    notifier: Process,
    client: reqwest::Client,
}

/// The broker the soak runs over, and how services reach it.
#[derive(Clone)]
enum BusKind {
    RabbitMq { url: String },
    ServiceBus { endpoint: String },
}

impl BusKind {
    fn of(options: &ChaosOptions) -> anyhow::Result<(Self, Vec<(&'static str, String)>)> {
        match options.bus.as_str() {
            "rabbitmq" => Ok((
                Self::RabbitMq {
                    url: options.amqp_url.clone(),
                },
                vec![
                    ("LEGATO__BUS__KIND", "rabbitmq".to_owned()),
                    ("LEGATO__BUS__QUEUE_EXPIRY_MS", "600000".to_owned()),
                ],
            )),
            "servicebus" => {
                let (Some(connection), Some(endpoint)) =
                    (&options.servicebus, &options.servicebus_endpoint)
                else {
                    anyhow::bail!("--bus servicebus needs --servicebus and --servicebus-endpoint");
                };
                Ok((
                    Self::ServiceBus {
                        endpoint: endpoint.clone(),
                    },
                    vec![
                        ("LEGATO__BUS__KIND", "servicebus".to_owned()),
                        ("LEGATO__BUS__CONNECTION_STRING", connection.clone()),
                        // A killed consumer's messages come back within 5 s.
                        ("LEGATO__BUS__LOCK_DURATION_MS", "5000".to_owned()),
                    ],
                ))
            }
            other => anyhow::bail!("--bus {other}: rabbitmq or servicebus"),
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::RabbitMq { url } => url,
            Self::ServiceBus { endpoint } => endpoint,
        }
    }

    /// The setting that says where the broker is.
    fn setting(&self) -> &'static str {
        match self {
            Self::RabbitMq { .. } => "LEGATO__BUS__URL",
            Self::ServiceBus { .. } => "LEGATO__BUS__ENDPOINT",
        }
    }
}

impl Soak {
    fn start(options: &ChaosOptions, seed: u64) -> anyhow::Result<Self> {
        // Apart per bus: soaks over RabbitMQ and Service Bus may run side
        // by side, started in the same second (the seed).
        let dir = std::env::temp_dir().join(format!("legato-chaos-{}-{seed}", options.bus));
        // A run repeated with its seed starts from nothing: a failed run
        // leaves its store behind, whose instances carry the same ids.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("no-config"))?;
        let azurite = Azurite::start(&options.azurite, &dir.join("azurite"))?;
        let gateway_port = stack::free_port()?;
        let (bus, bus_env) = BusKind::of(options)?;
        let env: Vec<(String, String)> = bus_env
            .into_iter()
            .chain([
                (
                    "LEGATO__BUS__PREFIX",
                    match bus {
                        BusKind::RabbitMq { .. } => format!("chaos-{seed}."),
                        BusKind::ServiceBus { .. } => format!("chaos{seed}-"),
                    },
                ),
                ("LEGATO__STORE__KIND", "azure_table".to_owned()),
                ("LEGATO__STORE__TABLE_PREFIX", format!("chaos{seed}")),
                ("LEGATO__TELEMETRY__LOG", "error".to_owned()),
                (
                    "LEGATO_CONFIG_DIR",
                    dir.join("no-config").display().to_string(),
                ),
            ])
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let network = if options.network {
            let upstreams = [
                (network::Dependency::Broker, network::address_of(bus.url())?),
                (
                    network::Dependency::Store,
                    std::net::SocketAddr::from(([127, 0, 0, 1], azurite.port)),
                ),
            ]
            .into_iter()
            .collect();
            Some(network::Network::new(
                upstreams,
                network::Weather {
                    latency: Duration::from_millis(options.latency_ms),
                    jitter: Duration::from_millis(options.jitter_ms),
                    partition: Duration::from_secs(options.partition_s),
                    hang: Duration::from_secs(options.hang_s),
                },
            )?)
        } else {
            None
        };
        let exe = match &options.upgrade_from {
            Some(earlier) => earlier.clone(),
            None => std::env::current_exe()?,
        };
        let mut soak = Self {
            base: format!("http://127.0.0.1:{gateway_port}"),
            dir,
            exe,
            env,
            gateway_port,
            bus,
            azurite,
            network,
            failed_starts: 0,
            orchestrators: Vec::new(),
            agents: Vec::new(),
            gateway: Process::none(),
            notifier: Process::none(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        soak.orchestrators = vec![
            soak.launch("orchestrator", 0)?,
            soak.launch("orchestrator", 1)?,
        ];
        soak.agents = vec![soak.launch("agent-echo", 0)?, soak.launch("agent-echo", 1)?];
        soak.notifier = soak.launch("notifier", 0)?;
        soak.gateway = soak.launch("gateway", 0)?;
        Ok(soak)
    }

    /// Starts service `name` as replica `n`: with `--network`, reaching
    /// the broker and the store through that replica's own proxies.
    fn launch(&mut self, name: &str, n: usize) -> anyhow::Result<Process> {
        let slot = format!("{name}-{n}");
        let mut env = self.env.clone();
        let port = if name == "gateway" {
            self.gateway_port
        } else {
            0
        };
        env.push(("LEGATO__HTTP__PORT".into(), port.to_string()));
        let (bus_url, store_port) = match &mut self.network {
            Some(network) => (
                network::url_at(
                    self.bus.url(),
                    network.address(&slot, network::Dependency::Broker)?,
                )?,
                network.address(&slot, network::Dependency::Store)?.port(),
            ),
            None => (self.bus.url().to_owned(), self.azurite.port),
        };
        env.push((self.bus.setting().into(), bus_url));
        env.push((
            "LEGATO__STORE__CONNECTION_STRING".into(),
            self.azurite.connection_string_at(store_port),
        ));
        // A replica started while its link is cut waits for it (up to
        // `wiring::STARTUP_WAIT`); one that gives up exits, and the soak
        // starts it again, as a platform would (counted: none should).
        let mut tries = 0;
        loop {
            match Process::start(&self.exe, name, &self.dir, &env) {
                Ok(process) => return Ok(process.named(slot)),
                Err(e) if self.network.is_some() && tries < MAX_START_TRIES => {
                    tries += 1;
                    self.failed_starts += 1;
                    tracing::debug!("{slot} did not start ({e:#}); starting it again");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Replica `n` of service `name` ended by `end` (a crash, or a stop as
    /// a platform stops it) and started again from `self.exe`.
    fn relaunch(
        &mut self,
        name: &str,
        n: usize,
        end: impl FnOnce(&mut Process),
    ) -> anyhow::Result<()> {
        let slot = match name {
            "orchestrator" => &mut self.orchestrators[n],
            "agent-echo" => &mut self.agents[n],
            "gateway" => &mut self.gateway,
            "notifier" => &mut self.notifier,
            other => anyhow::bail!("no replica of {other}"),
        };
        end(slot);
        // Put in its place after the launch; a failed launch leaves the
        // ended process there.
        let process = self.launch(name, n)?;
        match name {
            "orchestrator" => self.orchestrators[n] = process,
            "agent-echo" => self.agents[n] = process,
            "gateway" => self.gateway = process,
            _ => self.notifier = process,
        }
        Ok(())
    }

    /// Starts instance `id` of `workflow` with the soak's input (`hang`:
    /// its leased items hang on their first attempt).
    async fn start_instance(
        &self,
        workflow: &str,
        id: &str,
        rng: &mut Rng,
        hang: bool,
    ) -> anyhow::Result<()> {
        let body = json!({
            "instanceId": id,
            "input": {"ms": 100 + rng.below(400), "hang": u32::from(hang)},
        });
        self.send(
            reqwest::Method::POST,
            &format!("/api/v1/workflows/{workflow}/instances"),
            &body,
        )
        .await
        .map(|_| ())
    }

    /// The replicas that exited though nobody killed them.
    fn exited_on_their_own(&mut self) -> Vec<String> {
        self.orchestrators
            .iter_mut()
            .chain(self.agents.iter_mut())
            .chain([&mut self.gateway, &mut self.notifier])
            .filter_map(Process::exited)
            .collect()
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
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<std::process::ExitCode> {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    match &options.upgrade_from {
        Some(earlier) => println!(
            "chaos: seed {seed}, {} instances, a rolling upgrade from {} over {}",
            options.instances,
            earlier.display(),
            options.bus
        ),
        None => println!(
            "chaos: seed {seed}, {} instances, {} faults over {}{}",
            options.instances,
            options.faults,
            options.bus,
            if options.network {
                format!(
                    ", every link {} ms ± {} ms, partitions of {} s, hung links of {} s",
                    options.latency_ms, options.jitter_ms, options.partition_s, options.hang_s
                )
            } else {
                String::new()
            }
        ),
    }
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
    soak.send(
        reqwest::Method::PUT,
        "/api/v1/workflows/soak",
        &workflow(options.network),
    )
    .await?;
    let (runs, problems) = match options.upgrade_from {
        Some(_) => upgrade::roll(&mut soak, &options, seed, &mut rng).await?,
        None => (
            faults::run(&mut soak, &options, seed, &mut rng, began).await?,
            Vec::new(),
        ),
    };
    // The cuts heal; the latency stays while the last instances finish.
    if let Some(network) = &soak.network {
        network.heal_all();
    }
    let mut verdict = verdict::check(&soak, &runs, limit.saturating_sub(began.elapsed())).await;
    for problem in problems {
        verdict.problem(problem);
    }
    // Each service recovers from every fault but its kills on its own.
    for slot in soak.exited_on_their_own() {
        verdict.problem(format!("{slot} exited though nobody killed it"));
    }
    println!("chaos: all finished after {:.0?}", began.elapsed());
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
