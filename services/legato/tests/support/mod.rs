//! Runs `legato up` as a real process on a free port and talks to it over
//! HTTP, the way a user does. Every test gets its own data directory, so
//! tests never share state and can run in any order.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod hub;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct Legato {
    /// `None` when attached to a gateway started separately.
    child: Option<Child>,
    /// The processes of a process-per-service run, stopped on drop.
    services: Vec<Service>,
    pub base: String,
    /// Where the progress stream is served: the notifier's address when
    /// it runs apart from the gateway.
    pub stream_base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    /// The Service Bus stand-in of a run over Service Bus.
    servicebus: Option<ServiceBusStandIn>,
}

/// Spawns a legato process and waits (bounded) for its
/// `<what>: listening on <url>` line; returns the process and the URL.
fn spawn_listening(mut command: Command, what: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = format!("{what}: listening on ");
    // LEGATO_TEST_LOG_DIR keeps every process's log there, to read after a
    // failure (they are dropped otherwise).
    let mut log = std::env::var_os("LEGATO_TEST_LOG_DIR").and_then(|dir| {
        let path = Path::new(&dir).join(format!("{what}-{}.log", child.id()));
        std::fs::File::create(path).ok()
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(file) = log.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if let Some(rest) = line.strip_prefix(&prefix) {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(url);
            }
        }
    });
    // A service reports its address once its queues exist. Late in the
    // suite the broker is busy creating and expiring hundreds of quorum
    // queues of earlier tests, and one declaration has been seen to take
    // over a minute: a liveness bound, not a speed goal.
    let url = rx
        .recv_timeout(Duration::from_secs(240))
        .unwrap_or_else(|_| panic!("{what} did not report its address within 240 s"));
    (child, url)
}

fn workflows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows")
}

/// An API key `legato up` accepts (see [`Legato::start_with_api_keys`]).
pub struct ApiKey<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub tenant: Option<&'a str>,
    pub roles: &'a [&'a str],
}

/// Lowercase hex SHA-256, as `gateway.auth.api_keys` take keys.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Legato {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, &[])
    }

    /// `legato up` asking callers for one of `keys` (`gateway.auth.mode =
    /// "api_key"`), configured in a file under `data_dir`.
    pub fn start_with_api_keys(data_dir: &Path, keys: &[ApiKey<'_>]) -> Self {
        let config = data_dir.join("conf");
        std::fs::create_dir_all(&config).unwrap();
        let mut toml = String::from("[gateway.auth]\nmode = \"api_key\"\n");
        for key in keys {
            toml.push_str(&format!(
                "[[gateway.auth.api_keys]]\nid = \"{}\"\nsha256 = \"{}\"\nroles = {:?}\n",
                key.id,
                sha256_hex(key.key),
                key.roles
            ));
            if let Some(tenant) = key.tenant {
                toml.push_str(&format!("tenant = \"{tenant}\"\n"));
            }
        }
        std::fs::write(config.join("legato.toml"), toml).unwrap();
        Self::start_with_env(data_dir, &[("LEGATO_CONFIG_DIR", config.to_str().unwrap())])
    }

    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_legato"));
        command
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .arg("--workflows")
            .arg(workflows_dir())
            .env("LEGATO__TELEMETRY__LOG", "warn")
            .env("LEGATO_CONFIG_DIR", data_dir.join("no-config"))
            .envs(env.iter().copied());
        let (child, base) = spawn_listening(command, "legato up");
        Self {
            child: Some(child),
            services: Vec::new(),
            stream_base: base.clone(),
            base,
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::new(),
            servicebus: None,
        }
    }

    /// Every service its own process, over RabbitMQ and Azurite
    /// ([`services_env`]), with two replicas of the orchestrator and of the
    /// echo agent; the gateway registers the catalogue.
    pub fn start_services(data_dir: &Path) -> Self {
        Self::start_services_with(data_dir, services_env(data_dir), None)
    }

    /// [`Self::start_services`] with more environment for every service.
    pub fn start_services_with_env(data_dir: &Path, extra: &[(&str, &str)]) -> Self {
        let mut env = services_env(data_dir);
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Self::start_services_with(data_dir, env, None)
    }

    /// [`Self::start_services`] over Service Bus (a stand-in this process
    /// serves) instead of RabbitMQ.
    pub fn start_services_over_servicebus(data_dir: &Path) -> Self {
        let standin = ServiceBusStandIn::start();
        let env = servicebus_env(data_dir, &standin);
        Self::start_services_with(data_dir, env, Some(standin))
    }

    fn start_services_with(
        data_dir: &Path,
        mut env: Vec<(String, String)>,
        servicebus: Option<ServiceBusStandIn>,
    ) -> Self {
        env.push((
            "LEGATO__GATEWAY__WORKFLOWS_DIR".into(),
            workflows_dir().display().to_string(),
        ));
        // Two orchestrators and two echo agents share their queues, so
        // every scenario also checks that replicas never double-process.
        let mut services: Vec<Service> = AGENTS
            .iter()
            .chain(&["agent-echo", "orchestrator", "orchestrator", "notifier"])
            .map(|name| Service::start(name, data_dir, &env))
            .collect();
        let stream_base = services
            .iter()
            .find(|s| s.name == "notifier")
            .map(|s| s.base.clone())
            .unwrap_or_default();
        // The gateway points clients at the notifier, as a deployment does.
        env.push(("LEGATO__GATEWAY__STREAM_URL".into(), stream_base.clone()));
        let gateway = Service::start("gateway", data_dir, &env);
        let mut legato = Self::attach(gateway.base.clone(), data_dir);
        legato.stream_base = stream_base;
        services.push(gateway);
        legato.services = services;
        legato.servicebus = servicebus;
        legato
    }

    /// Talks to a gateway some other process runs.
    pub fn attach(base: String, data_dir: &Path) -> Self {
        Self {
            child: None,
            services: Vec::new(),
            stream_base: base.clone(),
            base,
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::new(),
            servicebus: None,
        }
    }

    /// The same gateway, every request sent with `Authorization: Bearer
    /// <key>`.
    pub fn with_bearer(&self, key: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        let mut client = Self::attach(self.base.clone(), &self.data_dir);
        client.client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        client
    }

    /// SIGTERM, then the exit status once the process has drained.
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("a legato up process");
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "legato up did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no drain, no flush, like a crash.
    pub fn kill(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stream_url(&self, id: &str) -> String {
        format!("{}/api/v1/instances/{id}/stream", self.stream_base)
    }

    /// Opens the instance's progress stream (read it with `.text()`).
    pub async fn open_stream(&self, id: &str) -> reqwest::Response {
        self.client.get(self.stream_url(id)).send().await.unwrap()
    }

    pub async fn register(&self, definition: Value) {
        let name = definition["name"].as_str().unwrap().to_owned();
        let response = self
            .client
            .put(self.url(&format!("/api/v1/workflows/{name}")))
            .header("content-type", "application/json")
            .body(definition.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "register {name}: {status} {}",
            response.text().await.unwrap()
        );
    }

    pub async fn start_instance(&self, workflow: &str, body: Value) -> String {
        let response = self
            .client
            .post(self.url(&format!("/api/v1/workflows/{workflow}/instances")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/instances/{id}?history=true"))
            .await
            .1
    }

    /// `POST /api/v1/negotiate` as `user` (the `x-legato-user` header).
    pub async fn negotiate(&self, user: &str) -> Value {
        self.client
            .post(self.url("/api/v1/negotiate"))
            .header("x-legato-user", user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.answer(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.answer(self.client.post(self.url(path)).json(&body))
            .await
    }

    /// A POST with an `Idempotency-Key`.
    pub async fn post_once(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let request = self.client.post(self.url(path)).json(&body);
        self.answer(request.header("Idempotency-Key", key)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.answer(self.client.put(self.url(path)).json(&body))
            .await
    }

    /// The status and JSON body (null when there is none) of a request.
    async fn answer(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Polls the status until `done` holds or the deadline passes.
    pub async fn wait_for(
        &self,
        id: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(id).await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {what} within {limit:?}: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls a GET until it answers 200 with a body `done` holds of, or
    /// the deadline passes.
    pub async fn wait_for_json(
        &self,
        path: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, body) = self.get_json(path).await;
            if status == StatusCode::OK && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: not as awaited within {limit:?}: {status} {body:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The agent as the registry lists it once `shown` holds of it (its
    /// figures are reported every 5 s; waits at most 20 s).
    pub async fn agent_when(&self, agent: &str, shown: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..80 {
            let (_, list) = self.get_json("/api/v1/agents").await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            last = items
                .into_iter()
                .find(|a| a["name"] == agent)
                .unwrap_or_default();
            if shown(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{agent} never showed as expected: {last:#}");
    }

    pub async fn wait_status(&self, id: &str, runtime_status: &str) -> Value {
        self.wait_for(id, runtime_status, Duration::from_secs(30), |s| {
            s["runtimeStatus"] == runtime_status
        })
        .await
    }

    pub async fn wait_step(&self, id: &str, step: &str, step_status: &str) -> Value {
        self.wait_for(
            id,
            &format!("{step} {step_status}"),
            Duration::from_secs(30),
            |s| step_of(s, step)["status"] == step_status,
        )
        .await
    }
}

impl Drop for Legato {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn step_of<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// History events of one type, in order.
pub fn events<'a>(status: &'a Value, kind: &str) -> Vec<&'a Value> {
    status["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|row| row["event"]["type"] == kind)
                .collect()
        })
        .unwrap_or_default()
}

pub fn echo_step(id: &str, needs: &[&str], input: Value) -> Value {
    json!({"id": id, "needs": needs, "agent": "echo", "input": input})
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("legato-e2e-")
        .tempdir()
        .unwrap()
}

/// One legato service as its own process (`legato run <service>`), for
/// process-per-service runs over RabbitMQ.
pub struct Service {
    child: Child,
    pub name: String,
    pub base: String,
}

impl Service {
    /// Runs in `dir`, so relative defaults (the data agent's demo
    /// database) land there.
    pub fn start(name: &str, dir: &Path, env: &[(String, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_legato"));
        command
            .args(["run", name])
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (child, base) = spawn_listening(command, name);
        Self {
            child,
            name: name.to_owned(),
            base,
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const AGENTS: [&str; 5] = [
    "agent-echo",
    "agent-planner",
    "agent-coder",
    "agent-data",
    "agent-approval",
];

/// The store settings of a run of its own in Table Storage
/// (`legato_store::conformance::test_tables`): fresh tables.
pub fn azure_store_env() -> Vec<(String, String)> {
    let connection = legato_store::conformance::test_tables();
    let simple = uuid::Uuid::new_v4().simple().to_string();
    [
        ("LEGATO__STORE__KIND", "azure_table".to_owned()),
        ("LEGATO__STORE__CONNECTION_STRING", connection),
        (
            "LEGATO__STORE__TABLE_PREFIX",
            format!("e2e{}", &simple[..16]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The settings every process of one process-per-service run shares: its
/// own RabbitMQ names (expiring after use) and its own Azurite tables.
pub fn services_env(data_dir: &Path) -> Vec<(String, String)> {
    let prefix = format!("e2e-{}.", uuid::Uuid::new_v4().simple());
    run_env(
        data_dir,
        [
            ("LEGATO__BUS__KIND", "rabbitmq".to_owned()),
            ("LEGATO__BUS__PREFIX", prefix),
            ("LEGATO__BUS__QUEUE_EXPIRY_MS", "120000".to_owned()),
        ],
    )
}

/// `bus` plus what every process of a run shares: free ports, quiet logs,
/// no config files, its own Azurite tables.
fn run_env<const N: usize>(data_dir: &Path, bus: [(&str, String); N]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = bus
        .into_iter()
        .chain([
            ("LEGATO__HTTP__PORT", "0".to_owned()),
            ("LEGATO__TELEMETRY__LOG", "warn".to_owned()),
            (
                "LEGATO_CONFIG_DIR",
                data_dir.join("no-config").display().to_string(),
            ),
        ])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.extend(azure_store_env());
    env
}

/// A [`Legato`]-like client for a process-per-service gateway.
pub fn client_for(gateway: &Service, data_dir: &Path) -> Legato {
    Legato::attach(gateway.base.clone(), data_dir)
}

/// A Service Bus stand-in (`legato-servicebus-standin`) on a thread and
/// runtime of its own, so that it keeps serving while a test blocks; it
/// stops when dropped.
pub struct ServiceBusStandIn {
    pub url: String,
    pub connection_string: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServiceBusStandIn {
    pub fn start() -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let config = legato_servicebus_standin::Config::new("legato-e2e");
                let standin = legato_servicebus_standin::StandIn::start(config)
                    .await
                    .unwrap();
                ready_tx
                    .send((standin.url(), standin.connection_string()))
                    .unwrap();
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                drop(standin);
            });
        });
        let (url, connection_string) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the Service Bus stand-in did not start");
        Self {
            url,
            connection_string,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for ServiceBusStandIn {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The settings of a process-per-service run over the Service Bus
/// stand-in: its own topic prefix, short locks (a killed consumer's
/// message returns within 5 s), and its own Azurite tables.
pub fn servicebus_env(data_dir: &Path, standin: &ServiceBusStandIn) -> Vec<(String, String)> {
    let prefix = format!("e2e{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    run_env(
        data_dir,
        [
            ("LEGATO__BUS__KIND", "servicebus".to_owned()),
            (
                "LEGATO__BUS__CONNECTION_STRING",
                standin.connection_string.clone(),
            ),
            ("LEGATO__BUS__ENDPOINT", standin.url.clone()),
            ("LEGATO__BUS__PREFIX", prefix),
            ("LEGATO__BUS__LOCK_DURATION_MS", "5000".to_owned()),
        ],
    )
}
