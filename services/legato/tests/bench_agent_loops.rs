//! `legato bench --journal-steps`, `--output-pieces` and
//! `--entity-operations` run end to end
//! and print their figures (the figures themselves are for people:
//! docs/performance.md; nothing here times anything).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

async fn bench(args: &[&str]) -> String {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_legato"))
        .arg("bench")
        .args(args)
        .env("LEGATO__TELEMETRY__LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the bench ended within 180 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_journal_bench_prints_what_a_step_adds() {
    let out = bench(&["--journal-steps", "2", "--instances", "5"]).await;
    assert!(out.contains("15 runs each"), "{out}");
    assert!(out.contains("a journaled step adds"), "{out}");
}

#[tokio::test]
async fn the_output_bench_times_every_piece_to_the_stream() {
    let out = bench(&["--output-pieces", "30"]).await;
    assert!(out.contains("live output: 30 pieces"), "{out}");
    assert!(out.contains("push to stream client: p50"), "{out}");
}

#[tokio::test]
async fn the_entity_bench_applies_every_operation_on_one_entity_and_on_many() {
    let out = bench(&["--entity-operations", "300", "--concurrency", "16"]).await;
    assert!(out.contains("300 increments through the API"), "{out}");
    assert!(out.contains("one entity:"), "{out}");
    assert!(out.contains("100 entities:"), "{out}");
}
