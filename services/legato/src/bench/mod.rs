//! `legato bench`: throughput and latency of the whole stack for a
//! fan-out-4-then-1 echo workflow, next to the cost of the same number of
//! raw store commits made in the same run, so the engine's overhead reads
//! as a ratio rather than an absolute that depends on the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use legato_bus::{
    Bus, BusError, InProcessBus, OutgoingMessage, RabbitMqBus, RabbitMqOptions, Routed,
    ServiceBusBus, ServiceBusConnection, ServiceBusOperations, ServiceBusOptions, Subscription,
    SubscriptionSpec,
};
use legato_contracts::Topic;
use legato_contracts::{InstanceId, RuntimeStatus, WorkflowName};
use legato_service::{Shutdown, StoreSettings};
use legato_store::{
    AzureTableConnection, AzureTableStore, Commit, Durability, Expected, HistoryRow,
    InstanceRecord, InstanceSummary, JsonText, OutboxRow, SqliteStore, Store,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{LegatoConfig, Stack};

mod agent_loops;
mod agents;
mod client;
mod entities;
mod scale;
mod schedules;

use client::{Follow, POLLED_INSTANCES, drive, drive_with};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Instances to run.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Instances in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// A running stack to measure; by default an embedded one is started
    /// on a free port with its state in a temporary directory.
    #[arg(long)]
    pub url: Option<String>,
    /// The embedded stack's bus: `in-process`, `rabbitmq` (every message
    /// through the broker, persistent and confirmed) or `servicebus` (Azure
    /// Service Bus topics at `--servicebus`, counting billed operations).
    #[arg(long, default_value = "in-process")]
    pub bus: BusChoice,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// A Service Bus connection string (a shared access policy with
    /// Manage) for `--bus servicebus`; the run's topics carry a prefix of
    /// its own and its subscriptions delete themselves after 5 idle minutes.
    #[arg(long, env = "LEGATO_BENCH_SERVICEBUS")]
    pub servicebus: Option<String>,
    /// Send Service Bus requests here instead of the namespace's URL (the
    /// stand-in: `cargo run -p legato-servicebus-standin -- --port 5380`).
    #[arg(long)]
    pub servicebus_endpoint: Option<String>,
    /// The embedded stack's store: `sqlite`, or `azure-table` (Azure Table
    /// Storage at `--tables`, in tables of the run's own, deleted after).
    #[arg(long, default_value = "sqlite")]
    pub store: StoreChoice,
    /// Table Storage connection string for `--store azure-table`.
    #[arg(long, default_value = "UseDevelopmentStorage=true")]
    pub tables: String,
    /// The SQLite store's durability: `normal` (a commit survives a process
    /// crash) or `fsync` (it survives power loss too); the raw commits are
    /// measured with the same.
    #[arg(long, default_value = "normal")]
    pub durability: DurabilityChoice,
    /// Instead of the throughput run: one instance of a `for_each` over N
    /// echo items (`max_parallel` 100), reporting time, per-event cost early
    /// and late in the run, and peak memory.
    #[arg(long, conflicts_with = "sequence")]
    pub fan_out: Option<usize>,
    /// Instead of the throughput run: one instance of N sequential echo
    /// steps, reported the same way.
    #[arg(long, conflicts_with = "iterations")]
    pub sequence: Option<usize>,
    /// Instead of the throughput run: one instance of a loop that runs N
    /// iterations of two echo steps, reported the same way (an iteration
    /// late in the run should cost what one early does).
    #[arg(long, conflicts_with = "fan_out", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub iterations: Option<usize>,
    /// Instead of the throughput run: one instance of a `for_each` over N
    /// items, each run as a child workflow of one echo step (100 at a
    /// time), reported the same way with the time per child run.
    #[arg(long, conflicts_with_all = ["fan_out", "sequence", "iterations"])]
    pub children: Option<usize>,
    /// Instead of the throughput run: write N schedules to the store
    /// (`--store`), a few of them due, and report what a poll for the due
    /// ones costs (store requests and milliseconds per poll).
    #[arg(long, conflicts_with_all = ["fan_out", "sequence", "iterations", "children"])]
    pub schedules: Option<usize>,
    /// Instead of the throughput run: runs of one echo step with and
    /// without N journaled steps (`--instances` of each, one at a time, in
    /// three interleaved rounds), reporting what a journaled step adds.
    #[arg(long, conflicts_with_all = ["fan_out", "sequence", "iterations", "children", "schedules"])]
    pub journal_steps: Option<usize>,
    /// Instead of the throughput run: the echo agent writes N pieces of
    /// output 5 ms apart; reports how long each took from its push to a
    /// client of the instance's stream (p50, p99).
    #[arg(long, conflicts_with_all = ["fan_out", "sequence", "iterations", "children", "schedules", "journal_steps"])]
    pub output_pieces: Option<usize>,
    /// Instead of the throughput run: N increments of durable entities
    /// through the API (`--concurrency` in flight), all to one entity, then
    /// spread over 100; reports operations applied per second.
    #[arg(long, conflicts_with_all = ["fan_out", "sequence", "iterations", "children", "schedules", "journal_steps", "output_pieces"])]
    pub entity_operations: Option<usize>,
    /// Also run the workflow on a `pull` agent (workers over HTTP) or a
    /// `push` agent (an endpoint legato POSTs to) after the built-in run,
    /// in the same stack, and print both.
    #[arg(long, default_value = "builtin")]
    pub agent: AgentChoice,
    /// Pull worker processes for `--agent pull` (default: one per two
    /// cores, at least one; the rest of the machine runs the stack).
    #[arg(long)]
    pub agent_workers: Option<usize>,
    /// The pull worker script (default: the TypeScript SDK's build,
    /// sdk/typescript/dist/bench/echo-worker.js).
    #[arg(long)]
    pub agent_worker: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentChoice {
    /// The built-in echo agent only.
    Builtin,
    /// The built-in run, then the same on a pull agent.
    Pull,
    /// The built-in run, then the same on a push agent (the bench's own
    /// stack only: it sets the signing secret).
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Sqlite,
    AzureTable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityChoice {
    Normal,
    Fsync,
}

impl From<DurabilityChoice> for Durability {
    fn from(choice: DurabilityChoice) -> Self {
        match choice {
            DurabilityChoice::Normal => Durability::Normal,
            DurabilityChoice::Fsync => Durability::Fsync,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusChoice {
    InProcess,
    Rabbitmq,
    Servicebus,
}

/// Counts what the stack publishes, so the bus cost per instance is known.
struct CountingBus {
    inner: Arc<dyn Bus>,
    published: AtomicU64,
}

#[async_trait::async_trait]
impl Bus for CountingBus {
    async fn publish(
        &self,
        topic: Topic,
        key: &str,
        message: OutgoingMessage,
    ) -> Result<(), BusError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.inner.publish(topic, key, message).await
    }

    async fn publish_all(&self, messages: Vec<Routed>) -> Result<(), BusError> {
        self.published
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        self.inner.publish_all(messages).await
    }

    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(spec).await
    }

    async fn dead_letters(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.dead_letters(topic, group).await
    }
}

const WORKFLOW: &str = "bench-fan-out";
/// The bench stack's push signing secret (`--agent push`): a throwaway.
const PUSH_SECRET: &str = "whsec_bGVnYXRvIGJlbmNoIHB1c2ggc2lnbmluZyBrZXk=";

/// The bench workflow `name`: four tasks of `agent` in parallel, then one
/// that needs them all.
fn definition(name: &str, agent: &str) -> Value {
    let leaf =
        |id: &str| json!({"id": id, "agent": agent, "input": {"value": "${{ input.value }}"}});
    json!({
        "name": name,
        "version": 1,
        "description": format!("legato bench: four {agent} steps in parallel, then one that needs them all"),
        "steps": [leaf("a"), leaf("b"), leaf("c"), leaf("d"), {
            "id": "join", "needs": ["a", "b", "c", "d"], "agent": agent,
            "input": {"value": "${{ [steps.a.output.value, steps.b.output.value, steps.c.output.value, steps.d.output.value] }}"}
        }],
        "output": "${{ steps.join.output.value }}"
    })
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(options.agent == AgentChoice::Push && options.url.is_some()),
        "--agent push runs on the bench's own stack (it sets the signing secret), not with --url"
    );
    let scratch = std::env::temp_dir().join(format!("legato-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    if let Some(n) = options.schedules {
        return bench_schedules(&options, &scratch, n).await;
    }
    let shutdown = Shutdown::new();
    let mut servicebus = None;
    let raw_bus: Arc<dyn Bus> = match options.bus {
        BusChoice::InProcess => Arc::new(InProcessBus::default()),
        BusChoice::Rabbitmq => {
            let rabbit = RabbitMqOptions {
                prefix: format!("bench-{}.", std::process::id()),
                queue_expiry: Some(Duration::from_secs(60)),
                ..RabbitMqOptions::default()
            };
            Arc::new(RabbitMqBus::connect(&options.amqp_url, rabbit).await?)
        }
        BusChoice::Servicebus => {
            let bus = connect_servicebus(&options).await?;
            servicebus = Some(bus.clone());
            Arc::new(bus)
        }
    };
    let counting = Arc::new(CountingBus {
        inner: raw_bus.clone(),
        published: AtomicU64::new(0),
    });
    let (base, stack) = match &options.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let mut config = LegatoConfig::default();
            config.http.port = 0;
            config.data_dir = scratch.join("stack");
            config.workflows_dir = scratch.join("no-catalogue");
            config.durability = options.durability.into();
            // The bench measures the engine, not the per-tenant rate limit
            // that protects a shared gateway.
            config.gateway.limits.starts_per_second = 0;
            config.gateway.limits.signals_per_second = 0;
            // `--agent push`: the endpoint listens on loopback.
            config.gateway.push.allowed_hosts = vec!["127.0.0.1".into()];
            config.gateway.push.signing_secret = PUSH_SECRET.into();
            if options.store == StoreChoice::AzureTable {
                config.store = Some(StoreSettings::AzureTable {
                    connection_string: Some(options.tables.clone()),
                    account: None,
                    access_key: None,
                    endpoint: None,
                    client_id: None,
                    table_prefix: bench_tables("stack"),
                    request_timeout_ms: legato_store::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
                });
            }
            let forgetful = options.bus == BusChoice::InProcess;
            let stack =
                Stack::start_on(config, counting.clone(), forgetful, shutdown.clone()).await?;
            (format!("http://{}", stack.addr), Some(stack))
        }
    };
    let client = reqwest::Client::new();
    let shape = scale::Shape::of(
        options.fan_out,
        options.sequence,
        options.iterations,
        options.children,
    );
    // The runs of one shape each, instead of the throughput run.
    let special = match (
        options.entity_operations,
        options.journal_steps,
        options.output_pieces,
        shape,
    ) {
        (Some(n), _, _, _) => {
            Some(entities::run(&client, &base, n.max(1), options.concurrency).await)
        }
        (_, Some(steps), _, _) => {
            Some(agent_loops::journal(&client, &base, steps.max(1), options.instances.max(1)).await)
        }
        (_, _, Some(pieces), _) => Some(agent_loops::output(&client, &base, pieces.max(1)).await),
        (_, _, _, Some(shape)) => Some(scale::run(&client, &base, shape).await),
        _ => None,
    };
    if let Some(result) = special {
        if let Some(stack) = stack {
            stack.shutdown().trigger();
            stack.wait().await?;
        }
        let _ = std::fs::remove_dir_all(&scratch);
        return result;
    }
    let put = client
        .put(format!("{base}/api/v1/workflows/{WORKFLOW}"))
        .header("content-type", "application/json")
        .body(definition(WORKFLOW, "echo").to_string())
        .send()
        .await?;
    anyhow::ensure!(
        put.status().is_success(),
        "registering the bench workflow: {}",
        put.status()
    );

    // Warm up (connections, caches), then measure.
    let warmup = options.concurrency.min(options.instances).max(1);
    drive(&client, &base, WORKFLOW, warmup, options.concurrency).await?;
    let published_before = counting.published.load(Ordering::Relaxed);
    let requests_before = legato_store::table_requests();
    let commits_before = legato_store::instance_commits();
    let operations_before = match &servicebus {
        Some(bus) => Some(settled_operations(bus).await),
        None => None,
    };
    let started = Instant::now();
    let outcome = drive(
        &client,
        &base,
        WORKFLOW,
        options.instances,
        options.concurrency,
    )
    .await?;
    let elapsed = started.elapsed();
    let messages = counting.published.load(Ordering::Relaxed) - published_before;
    let table_requests = legato_store::table_requests() - requests_before;
    let commits = legato_store::instance_commits() - commits_before;
    let operations = match (&servicebus, operations_before) {
        (Some(bus), Some(before)) => Some(settled_operations(bus).await.since(&before)),
        _ => None,
    };

    // The same start-to-complete, learnt by polling the status instead of
    // following the stream: what the engine takes without the stream's
    // delivery path.
    let polled = drive_with(
        &client,
        &base,
        WORKFLOW,
        options.instances.min(POLLED_INSTANCES),
        options.concurrency,
        Follow::Poll,
    )
    .await?;
    let commits_per_instance = if options.url.is_none() {
        // The commits the stack made (the orchestrator commits the
        // messages that arrive together for an instance at once).
        commits as f64 / outcome.completed.max(1) as f64
    } else {
        // Another process's commits are not counted here: one for the
        // accepted start plus one per accepted event, at most.
        let sample = outcome
            .sample
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no instance completed"))?;
        let status: Value = client
            .get(format!("{base}/api/v1/instances/{sample}?history=true"))
            .send()
            .await?
            .json()
            .await?;
        (status["history"].as_array().map_or(0, Vec::len) + 1) as f64
    };
    let measured_commits = commits_per_instance;
    // The raw run makes whole commits per instance, at least one.
    let commits_per_instance = (commits_per_instance.round() as usize).max(1);
    let (raw, raw_label) = match options.store {
        StoreChoice::Sqlite => {
            let raw = raw_commits(
                &scratch.join("raw.db"),
                options.durability.into(),
                options.instances,
                commits_per_instance,
                options.concurrency,
            )
            .await?;
            (raw, "raw SQLite commits")
        }
        StoreChoice::AzureTable => {
            let tables = tables(&options.tables, "raw").await?;
            let raw = tables
                .raw_entity_group_commits(
                    options.instances,
                    commits_per_instance,
                    options.concurrency,
                    RAW_STATE_BYTES,
                )
                .await?;
            tables.delete_tables().await?;
            (
                raw,
                "raw Table Storage entity-group commits (+ outbox deletes)",
            )
        }
    };

    let rate = outcome.completed as f64 / elapsed.as_secs_f64();
    let ms = |v: u64| v as f64 / 1000.0;
    let raw_rate = (options.instances * commits_per_instance) as f64 / raw.as_secs_f64();
    let ceiling = raw_rate / commits_per_instance as f64;
    println!(
        "legato bench: {} instances of {WORKFLOW} (4 parallel echo tasks, then 1), concurrency {}",
        options.instances, options.concurrency
    );
    if options.store == StoreChoice::Sqlite {
        println!(
            "  durability: SQLite {} ({})",
            Durability::from(options.durability).as_str(),
            match options.durability {
                DurabilityChoice::Normal =>
                    "WAL, synchronous NORMAL: commits survive a process crash, not a power loss",
                DurabilityChoice::Fsync =>
                    "WAL, synchronous FULL: every commit fsynced, survives power loss",
            }
        );
    }
    println!(
        "  stack:    {} completed, {} failed in {:.2} s = {:.1} instances/s",
        outcome.completed,
        outcome.failed,
        elapsed.as_secs_f64(),
        rate
    );
    if outcome.throttled > 0 {
        println!(
            "  throttled: the gateway's rate limit answered {} starts 429; each was sent again \
             after its Retry-After, so the rate above is the limit's (`[gateway.limits] \
             starts_per_second` on the gateway), not the stack's",
            outcome.throttled
        );
    }
    println!(
        "  latency:  start-to-complete p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (following the stream)",
        ms(outcome.latency_us.value_at_quantile(0.50)),
        ms(outcome.latency_us.value_at_quantile(0.99)),
        ms(outcome.latency_us.max())
    );
    println!(
        "            start-to-complete p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (polling the status, {} instances)",
        ms(polled.latency_us.value_at_quantile(0.50)),
        ms(polled.latency_us.value_at_quantile(0.99)),
        ms(polled.latency_us.max()),
        polled.completed
    );
    println!(
        "  store:    the stack made {measured_commits:.2} commits per instance; {} {raw_label} ({} per instance) in {:.2} s = {:.0} commits/s, a ceiling of {:.1} instances/s",
        options.instances * commits_per_instance,
        commits_per_instance,
        raw.as_secs_f64(),
        raw_rate,
        ceiling
    );
    println!(
        "  overhead: an instance costs {:.2}x its raw store commits",
        ceiling / rate.max(f64::MIN_POSITIVE)
    );
    if options.store == StoreChoice::AzureTable && options.url.is_none() {
        println!(
            "  tables:   {:.1} Table Storage requests per instance (the raw run: 2 per commit, {})",
            table_requests as f64 / outcome.completed.max(1) as f64,
            2 * commits_per_instance
        );
    }
    if let Some(operations) = operations {
        print_operations(&operations, outcome.completed, elapsed);
    }
    if options.url.is_none() {
        let per_instance = messages as f64 / outcome.completed.max(1) as f64;
        let n = messages.max(1) as usize;
        let raw = raw_round_trips(&*raw_bus, n, options.concurrency).await?;
        let bus_rate = n as f64 / raw.as_secs_f64();
        println!(
            "  bus ({:?}): {:.1} messages per instance; {} raw publish-confirm-consume round trips in {:.2} s = {:.0} msg/s, a ceiling of {:.1} instances/s ({:.2}x)",
            options.bus,
            per_instance,
            n,
            raw.as_secs_f64(),
            bus_rate,
            bus_rate / per_instance,
            (bus_rate / per_instance) / rate.max(f64::MIN_POSITIVE)
        );
    }
    let script = agents::worker_script(options.agent_worker.as_ref());
    let outside = match options.agent {
        AgentChoice::Builtin => None,
        AgentChoice::Pull => Some(agents::Outside::Pull {
            script: &script,
            workers: options
                .agent_workers
                .unwrap_or_else(agents::default_workers),
        }),
        AgentChoice::Push => Some(agents::Outside::Push {
            secret: PUSH_SECRET,
        }),
    };
    if let Some(outside) = outside {
        let builtin = agents::Builtin {
            outcome: &outcome,
            elapsed,
        };
        let (instances, concurrency) = (options.instances, options.concurrency);
        agents::compare(&client, &base, outside, instances, concurrency, builtin).await?;
    }
    if let Some(stack) = stack {
        stack.shutdown().trigger();
        stack.wait().await?;
        if options.store == StoreChoice::AzureTable {
            tables(&options.tables, "stack")
                .await?
                .delete_tables()
                .await?;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(
        outcome.failed == 0,
        "{} instances did not complete",
        outcome.failed
    );
    Ok(())
}

/// `--schedules N` on the chosen store, in tables or a file of the run's
/// own, removed after.
async fn bench_schedules(
    options: &BenchOptions,
    scratch: &std::path::Path,
    n: usize,
) -> anyhow::Result<()> {
    match options.store {
        StoreChoice::Sqlite => {
            let store =
                SqliteStore::open_with(scratch.join("schedules.db"), options.durability.into())?;
            let result = schedules::run(&store, n, None).await;
            let _ = std::fs::remove_dir_all(scratch);
            result
        }
        StoreChoice::AzureTable => {
            let store = tables(&options.tables, "sched").await?;
            let probe = schedules::Probe {
                requests: legato_store::table_requests,
                tables: &store,
            };
            let result = schedules::run(&store, n, Some(probe)).await;
            store.delete_tables().await?;
            result
        }
    }
}

async fn connect_servicebus(options: &BenchOptions) -> anyhow::Result<ServiceBusBus> {
    let text = options.servicebus.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "--bus servicebus needs --servicebus <connection string> (or \
             LEGATO_BENCH_SERVICEBUS); for the local stand-in run \
             `cargo run -p legato-servicebus-standin -- --port 5380` and pass the \
             connection string it prints with --servicebus-endpoint http://127.0.0.1:5380"
        )
    })?;
    let connection = ServiceBusConnection::from_connection_string(text)?;
    let options = ServiceBusOptions {
        prefix: format!("bench-{}-", std::process::id()),
        endpoint: options.servicebus_endpoint.clone(),
        auto_delete_on_idle: Some(Duration::from_secs(300)),
        ..ServiceBusOptions::default()
    };
    Ok(ServiceBusBus::connect(connection, options).await?)
}

/// The operations once the run's last messages are settled: a client
/// learns of the end from the stream before the notifier has completed
/// the message that told it. Waits until the counts hold still for a
/// moment, at most a few seconds.
async fn settled_operations(bus: &ServiceBusBus) -> ServiceBusOperations {
    let mut last = bus.operations();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = bus.operations();
        if now.sends == last.sends && now.settlements == last.settlements {
            return now;
        }
        last = now;
    }
    last
}

/// Billed Service Bus operations of the measured run, per instance and
/// by kind, with the idle polling the run's length adds.
fn print_operations(operations: &ServiceBusOperations, completed: usize, elapsed: Duration) {
    let n = completed.max(1) as f64;
    let each = |v: u64| v as f64 / n;
    println!(
        "  service bus: {:.1} billed operations per instance: {:.1} sends, {:.1} receives, \
         {:.1} settlements, {:.1} lock renewals, {:.2} empty long polls, {:.2} management \
         ({} in {:.2} s)",
        each(operations.total()),
        each(operations.sends),
        each(operations.receives),
        each(operations.settlements),
        each(operations.renewals),
        each(operations.empty_receives),
        each(operations.management),
        operations.total(),
        elapsed.as_secs_f64()
    );
    println!(
        "               a million instances: {:.0} million operations (Standard includes 13 \
         million a month; idle polling adds about 1 per subscription per 30 s)",
        each(operations.total())
    );
}

/// The size of a real instance's state (the fan-out workflow's, measured).
const RAW_STATE_BYTES: usize = 2_300;

/// Table names of this run: `bench<pid><role>`.
fn bench_tables(role: &str) -> String {
    format!("bench{}{role}", std::process::id())
}

async fn tables(connection: &str, role: &str) -> anyhow::Result<AzureTableStore> {
    Ok(AzureTableStore::connect(
        &AzureTableConnection::ConnectionString(connection.to_owned()),
        &bench_tables(role),
    )
    .await?)
}

/// The store work of `instances` instances without the engine: the same
/// number of commits of records the size of a real one, each with one
/// history row and one outbox row, the outbox then deleted.
async fn raw_commits(
    path: &std::path::Path,
    durability: Durability,
    instances: usize,
    per_instance: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(path, durability)?);
    let workflow = WorkflowName::parse(WORKFLOW)?;
    let state = JsonText::of(
        &json!({"steps": {"a": {"status": "Completed", "output": {"value": 1, "attempt": 1}}, "b": {"status": "Completed"}, "c": {"status": "Completed"}, "d": {"status": "Completed"}, "join": {"status": "Running"}}, "input": {"value": 1}, "padding": "x".repeat(RAW_STATE_BYTES - 300)}),
    )?;
    let started = Instant::now();
    let mut runs = futures::stream::iter(0..instances)
        .map(|i| {
            let store = store.clone();
            let workflow = workflow.clone();
            let state = state.clone();
            async move {
                let id = InstanceId::parse(format!("raw-{i}"))?;
                let now = OffsetDateTime::now_utc();
                let mut expected = Expected::New;
                for seq in 1..=per_instance as u64 {
                    let record = InstanceRecord {
                        summary: InstanceSummary {
                            id: id.clone(),
                            workflow: workflow.clone(),
                            workflow_version: 1,
                            status: RuntimeStatus::Running,
                            tenant: None,
                            created_at: now,
                            updated_at: now,
                        },
                        state: state.clone(),
                        parts: Default::default(),
                    };
                    let mut commit = Commit::new(record, expected);
                    commit.history.push(HistoryRow {
                        seq,
                        at: now,
                        event: JsonText::of(&json!({"type": "task_completed", "seq": seq}))?,
                        position: seq,
                        progress: Vec::new(),
                    });
                    let message = format!("m{seq}");
                    commit.outbox.push(OutboxRow {
                        id: message.clone(),
                        topic: legato_contracts::Topic::AgentTasks,
                        routing_key: "echo".into(),
                        body: vec![b'x'; 600],
                    });
                    expected = Expected::Version(store.commit(commit).await?);
                    store.delete_outbox(&id, &[message]).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = runs.next().await {
        result?;
    }
    Ok(started.elapsed())
}

/// `n` messages of a typical size published (each confirmed) with bounded
/// concurrency while one consumer acks them; the time until the last is in.
async fn raw_round_trips(bus: &dyn Bus, n: usize, concurrency: usize) -> anyhow::Result<Duration> {
    let key = format!("bench-raw-{}", std::process::id());
    let mut sub = bus
        .subscribe(
            SubscriptionSpec::new(
                Topic::AgentResults,
                format!("bench-raw-{}", std::process::id()),
            )
            .bind(&key)
            .prefetch(256),
        )
        .await?;
    let body = bytes::Bytes::from(vec![b'x'; 900]);
    let started = Instant::now();
    let consume = async {
        for _ in 0..n {
            let delivery = tokio::time::timeout(Duration::from_secs(60), sub.next())
                .await
                .map_err(|_| anyhow::anyhow!("raw round trips stalled"))??;
            delivery.ack().await?;
        }
        anyhow::Ok(())
    };
    let publish = futures::stream::iter(0..n)
        .map(|i| {
            let message = OutgoingMessage {
                id: format!("raw-{i}"),
                body: body.clone(),
                headers: Default::default(),
            };
            bus.publish(Topic::AgentResults, &key, message)
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>();
    let (consumed, published) = tokio::join!(consume, publish);
    consumed?;
    for p in published {
        p?;
    }
    Ok(started.elapsed())
}
