//! `legato chaos --upgrade-from <earlier legato>`: a rolling upgrade under
//! load. The stack starts on the earlier build; while instances run (of
//! the soak workflow, and of one that waits for an approval beside a
//! durable timer) its replicas are replaced by this build one at a time,
//! in the order `docs/operations.md` gives (consumers before producers),
//! each stopped as a platform stops it (SIGTERM, then a grace period).
//! Half the approvals go in while the old build runs, the rest once the new
//! one does; timers set by the old build fire under the new one.
//!
//! On the way, a message of a type the old build does not know (a custom
//! entity operation) is published while old orchestrators consume: it must
//! be dead-lettered with its reason, and once the fleet is upgraded,
//! replayed and applied by the new build. The soak's checks follow as
//! after faults: every instance completed, each result recorded once,
//! nothing left dead-lettered, no replica exited on its own.

use std::time::{Duration, Instant};

use anyhow::Context;
use legato_contracts::{
    CustomOperation, EntityId, EntityOperation, EntityRef, EntityType, Envelope, InstanceId,
    Operation,
};
use legato_service::settings::BusSettings;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::verdict::Expected;
use super::{BusKind, ChaosOptions, Rng, Soak, echo};

pub(super) const APPROVAL_WORKFLOW: &str = "soak-approval";

/// The replicas in the order a release rolls out: the consumers of what
/// is new before its producers.
const ROLL_OUT: [(&str, usize); 6] = [
    ("notifier", 0),
    ("orchestrator", 0),
    ("orchestrator", 1),
    ("agent-echo", 0),
    ("agent-echo", 1),
    ("gateway", 0),
];

/// How long a replica being replaced may take to drain (Container Apps
/// gives 30 s by default).
const GRACE: Duration = Duration::from_secs(30);

/// How long the probe's dead letter and its replay's effect are waited
/// for.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// Waits for event `approval` and a 20 s timer side by side, with a task
/// before and after.
fn approval_workflow() -> Value {
    json!({"name": APPROVAL_WORKFLOW, "version": 1, "steps": [
        echo("before", &[], json!({"value": 1, "sleep_ms": "${{ input.ms }}"})),
        {"id": "approve", "needs": ["before"], "wait_for_event": {"name": "approval"}},
        {"id": "pause", "needs": ["before"], "timer": {"delay_ms": 20000}},
        echo("after", &["approve", "pause"],
             json!({"value": "${{ steps.before.output.value + steps.approve.output.add }}"})),
    ], "output": "${{ steps.after.output.value }}"})
}

/// The workflow applying the probe entity's custom operation `bump`.
fn bump_workflow() -> Value {
    json!({"name": "probe-bump", "version": 1, "steps": [
        echo("count", &[], json!({"value": 1})),
    ], "output": {
        "state": {"bumps": "${{ steps.count.output.value }}"},
        "answer": "${{ steps.count.output.value }}"
    }})
}

/// Runs the instances through the rolling upgrade; what it found wrong
/// on the way comes back beside them.
pub(super) async fn roll(
    soak: &mut Soak,
    options: &ChaosOptions,
    seed: u64,
    rng: &mut Rng,
) -> anyhow::Result<(Vec<Expected>, Vec<String>)> {
    anyhow::ensure!(
        options.bus == "rabbitmq",
        "--upgrade-from runs over RabbitMQ"
    );
    let began = Instant::now();
    soak.send(
        reqwest::Method::PUT,
        &format!("/api/v1/workflows/{APPROVAL_WORKFLOW}"),
        &approval_workflow(),
    )
    .await?;
    let runs: Vec<Expected> = (0..options.instances)
        .map(|i| {
            let id = format!("upgrade-{seed}-{i}");
            if i % 2 == 0 {
                Expected::soak(id)
            } else {
                Expected::approval(id)
            }
        })
        .collect();
    let phases = ROLL_OUT.len() + 1;
    let per_phase = runs.len().div_ceil(phases);
    let probe = Probe::new(seed)?;
    let mut problems = Vec::new();
    let (mut started, mut approved) = (0, 0);
    for phase in 0..phases {
        let batch = &runs[started..(started + per_phase).min(runs.len())];
        for run in batch {
            soak.start_instance(run.workflow, &run.id, rng, false)
                .await?;
        }
        started += batch.len();
        // Half of those started so far are approved while this phase's
        // mix runs; the rest after the upgrade.
        approve(soak, &runs[approved..started / 2]).await?;
        approved = started / 2;
        // The notifier is new, the orchestrators still old.
        if phase == 1 {
            probe.publish(soak).await?;
            match probe.dead_letter(soak).await {
                Ok(letter) => println!(
                    "chaos: the earlier build dead-lettered the probe: {}",
                    letter["reason"]
                ),
                Err(problem) => problems.push(format!("under the earlier build: {problem}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(2_000 + rng.below(3_000))).await;
        if let Some((name, n)) = ROLL_OUT.get(phase) {
            soak.replace(name, *n)
                .with_context(|| format!("replacing {name}-{n}"))?;
            println!(
                "chaos: {name}-{n} replaced by this build ({:.0?}, {started} instances started)",
                began.elapsed()
            );
        }
    }
    approve(soak, &runs[approved..]).await?;
    if let Err(problem) = probe.replayed(soak).await {
        problems.push(format!("after the upgrade: {problem}"));
    }
    Ok((runs, problems))
}

/// Raises the approvals of those of `runs` that wait for one (an event
/// raised before its step waits is kept for it).
async fn approve(soak: &Soak, runs: &[Expected]) -> anyhow::Result<()> {
    for run in runs.iter().filter(|run| run.workflow == APPROVAL_WORKFLOW) {
        soak.send(
            reqwest::Method::POST,
            &format!("/api/v1/instances/{}/events/approval", run.id),
            &json!({"add": 2}),
        )
        .await?;
    }
    Ok(())
}

impl Soak {
    /// Replica `n` of service `name` stopped as a platform stops it, and
    /// started again from this build.
    fn replace(&mut self, name: &str, n: usize) -> anyhow::Result<()> {
        self.exe = std::env::current_exe()?;
        self.relaunch(name, n, |process| process.stop(GRACE))
    }
}

/// A custom entity operation, which the earlier build does not know.
struct Probe {
    envelope: Envelope,
    entity: String,
}

impl Probe {
    fn new(seed: u64) -> anyhow::Result<Self> {
        let entity = EntityRef {
            entity_type: EntityType::parse("probe")?,
            id: EntityId::parse(format!("upgrade-{seed}"))?,
        };
        let operation = EntityOperation {
            entity: entity.clone(),
            id: format!("upgrade/{seed}/bump"),
            operation: Operation::Custom(CustomOperation {
                name: "bump".into(),
                input: json!({}),
            }),
            caller: None,
        };
        Ok(Self {
            envelope: Envelope::new(
                "legato-chaos",
                InstanceId::parse("api")?,
                OffsetDateTime::now_utc(),
                operation,
            ),
            entity: format!("/api/v1/entities/{}/{}", entity.entity_type, entity.id),
        })
    }

    /// Published straight onto the soak's broker, as a new gateway would.
    async fn publish(&self, soak: &Soak) -> anyhow::Result<()> {
        let BusKind::RabbitMq { url } = &soak.bus else {
            anyhow::bail!("the probe is published over RabbitMQ");
        };
        let prefix = soak
            .env
            .iter()
            .find(|(key, _)| key == "LEGATO__BUS__PREFIX")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let bus = legato_service::wiring::open_bus(&BusSettings::Rabbitmq {
            url: url.clone(),
            prefix,
            queue_expiry_ms: 600_000,
            timeout_ms: 10_000,
        })
        .await?;
        bus.publish_envelope(&self.envelope)
            .await
            .context("publishing the probe")
    }

    /// Its dead letter, with a reason, as the earlier orchestrators left it.
    async fn dead_letter(&self, soak: &Soak) -> Result<Value, String> {
        let deadline = Instant::now() + PROBE_LIMIT;
        loop {
            let page = soak
                .send(
                    reqwest::Method::GET,
                    "/api/v1/dead-letters?top=1000",
                    &Value::Null,
                )
                .await
                .map_err(|e| format!("dead letters not read: {e}"))?;
            let letter = page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|letter| letter["messageId"] == self.envelope.id.as_str());
            if let Some(letter) = letter {
                let reason = letter["reason"].as_str().unwrap_or_default();
                if reason.is_empty() {
                    return Err(format!(
                        "the probe was dead-lettered without a reason: {letter}"
                    ));
                }
                return Ok(letter.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the probe ({}) was not dead-lettered within {PROBE_LIMIT:?}",
                    self.envelope.type_name()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// With the operation's type registered, its dead letter replayed and
    /// applied by this build.
    async fn replayed(&self, soak: &Soak) -> Result<(), String> {
        let letter = self.dead_letter(soak).await?;
        let fail = |what: &str, e: anyhow::Error| format!("{what}: {e:#}");
        soak.send(
            reqwest::Method::PUT,
            "/api/v1/workflows/probe-bump",
            &bump_workflow(),
        )
        .await
        .map_err(|e| fail("registering probe-bump", e))?;
        soak.send(
            reqwest::Method::PUT,
            "/api/v1/entity-types/probe",
            &json!({"operations": {"bump": {"workflow": "probe-bump"}}}),
        )
        .await
        .map_err(|e| fail("registering entity type probe", e))?;
        let id = letter["id"].as_str().unwrap_or_default();
        soak.send(
            reqwest::Method::POST,
            &format!("/api/v1/dead-letters/{id}/replay"),
            &Value::Null,
        )
        .await
        .map_err(|e| fail("replaying the probe", e))?;
        let deadline = Instant::now() + PROBE_LIMIT;
        let url = format!("{}{}", soak.base, self.entity);
        loop {
            // Not there (404) until the operation begins.
            let entity: Value = match soak.client.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
                _ => Value::Null,
            };
            if entity["state"] == json!({"bumps": 1}) {
                println!("chaos: replayed, this build applied the probe");
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the replayed probe was not applied within {PROBE_LIMIT:?}: {entity}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
