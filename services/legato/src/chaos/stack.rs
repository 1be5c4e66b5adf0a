//! The soak's stack: every service its own process (`legato run …`) over
//! RabbitMQ, state in an Azurite of the soak's own (on disk, so it can be
//! stopped and started again), each process killable and restartable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a service may take to report its address (a broker amid a
/// restart declares queues slowly).
const START_LIMIT: Duration = Duration::from_secs(240);

pub(crate) struct Process {
    child: Option<Child>,
    /// Which replica it is (`orchestrator-1`).
    slot: String,
}

impl Process {
    /// `<exe> run <name>`, once it reports its address.
    pub fn start(
        exe: &Path,
        name: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args(["run", name])
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = format!("{name}: listening on ");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with(&prefix) {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(START_LIMIT)
            .with_context(|| format!("{name} did not start within {START_LIMIT:?}"))?;
        Ok(Self {
            child: Some(child),
            slot: name.to_owned(),
        })
    }

    /// A place for a process not started yet.
    pub fn none() -> Self {
        Self {
            child: None,
            slot: String::new(),
        }
    }

    pub fn named(mut self, slot: String) -> Self {
        self.slot = slot;
        self
    }

    /// SIGKILL, like a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as a platform replacing it sends: it drains and exits
    /// (killed if it has not within `grace`).
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            interrupt(&mut child, "-TERM", grace);
        }
    }

    /// Its slot if it has exited (nobody killed it: a crash does not
    /// leave it here).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        matches!(child.try_wait(), Ok(Some(_))).then(|| self.slot.clone())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Azurite's Table service on a port and folder of its own (the soak's,
/// or a test's), so stopping it disturbs nobody; its data is on disk and
/// survives a restart.
pub struct Azurite {
    binary: PathBuf,
    pub port: u16,
    location: PathBuf,
    child: Option<Child>,
}

impl Azurite {
    pub fn start(binary: &Path, location: &Path) -> anyhow::Result<Self> {
        let mut azurite = Self {
            binary: binary.to_owned(),
            port: free_port()?,
            location: location.to_owned(),
            child: None,
        };
        azurite.resume()?;
        Ok(azurite)
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.binary)
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&self.location)
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start Azurite ({})", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Ctrl-C, on which Azurite writes its data out (it saves only every
    /// 5 s otherwise).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            interrupt(&mut child, "-INT", Duration::from_secs(20));
        }
    }

    pub fn connection_string(&self) -> String {
        self.connection_string_at(self.port)
    }

    /// As [`Azurite::connection_string`], reaching it at `port` (a proxy's).
    pub fn connection_string_at(&self, port: u16) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
             AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
             TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (`kill`'s spelling) and waits up to `grace` for the
/// child to exit, then kills it.
fn interrupt(child: &mut Child, signal: &str, grace: Duration) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `rabbitmqctl stop_app` then `start_app`: the broker goes away and comes
/// back with its (durable) queues.
pub(crate) fn restart_broker(rabbitmqctl: &str) -> anyhow::Result<()> {
    for command in ["stop_app", "start_app"] {
        let status = Command::new(rabbitmqctl)
            .arg(command)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("{rabbitmqctl} {command}"))?;
        anyhow::ensure!(status.success(), "{rabbitmqctl} {command} failed");
    }
    Ok(())
}
