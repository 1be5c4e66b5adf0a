//! The gateway scenarios again, with every service its own process over
//! Azure Service Bus (the REST stand-in, `legato-servicebus-standin`) and
//! Azure Table Storage (Azurite), with two orchestrator replicas and two
//! echo agent replicas sharing the work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "e2e/chaos.rs"]
mod chaos;
#[path = "e2e/entities.rs"]
mod entities;
#[path = "e2e/scenarios.rs"]
mod scenarios;
#[path = "support/mod.rs"]
mod support;

use std::path::Path;

use support::Legato;

/// The topology `scenarios` runs on here.
pub fn launch(data_dir: &Path) -> Legato {
    Legato::start_services_over_servicebus(data_dir)
}

#[tokio::test]
async fn twenty_kills_during_fifty_instances_over_servicebus_lose_and_duplicate_nothing() {
    let standin = support::ServiceBusStandIn::start();
    chaos::twenty_kills_during_fifty_instances(|dir| support::servicebus_env(dir, &standin)).await;
}

#[tokio::test]
async fn entity_increments_over_servicebus_survive_orchestrator_kills_exactly() {
    let standin = support::ServiceBusStandIn::start();
    let env = |dir: &Path| support::servicebus_env(dir, &standin);
    chaos::increments_survive_orchestrator_kills(env, 100, 100).await;
}

/// `legato bench --bus servicebus` runs the stack over the stand-in and
/// prints the billed operations per instance: for this workflow each of
/// its 14-17 messages (11 work, one progress message per commit: 3-6, one
/// notifier) is received and completed exactly once, and sent in fewer
/// requests (a commit's messages for one topic go together).
#[test]
fn bench_over_servicebus_prints_billed_operations_per_instance() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let standin = support::ServiceBusStandIn::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_legato"))
        .args(["bench", "--bus", "servicebus", "--instances", "12"])
        .args(["--concurrency", "4", "--servicebus-endpoint", &standin.url])
        .env("LEGATO_BENCH_SERVICEBUS", &standin.connection_string)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("legato bench did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "legato bench failed:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains("billed operations per instance"))
        .unwrap_or_else(|| panic!("no Service Bus line in:\n{out}"));
    // Per instance: the start, 5 dispatches, 5 results and a progress
    // message per commit (3 when the four results are committed together,
    // 6 when each is alone); each message received and settled once.
    let per_instance = |what: &str| -> f64 {
        let before = line
            .split(&format!(" {what}"))
            .next()
            .unwrap_or_else(|| panic!("no {what} in {line:?}"));
        before
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no figure before {what} in {line:?}"))
    };
    let receives = per_instance("receives,");
    assert!((14.0..=17.0).contains(&receives), "{line}");
    assert_eq!(per_instance("settlements,"), receives, "{line}");
    // A commit's messages for one topic go in one request: the four
    // parallel tasks are one send.
    let sends = per_instance("sends,");
    assert!(sends <= receives - 3.0, "{line}");
    assert!(out.contains("12 completed, 0 failed"), "{out}");
}
