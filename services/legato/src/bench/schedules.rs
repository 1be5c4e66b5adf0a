//! `legato bench --schedules N`: what the scheduler's poll costs the store
//! with N schedules of which a few are due. Writes N schedules (all but
//! [`DUE`] due in a day), then times [`POLLS`] polls for the due ones and
//! prints the store requests and milliseconds per poll. The schedules live
//! in tables (or a database) of the run's own.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use legato_contracts::ScheduleName;
use legato_store::{AzureTableStore, Expected, ScheduleRecord, Store};
use serde_json::json;
use time::OffsetDateTime;

/// Schedules due at each poll.
const DUE: usize = 5;
const POLLS: usize = 20;
const WRITERS: usize = 16;

/// How the store is measured besides its port: its request counter and
/// the scan it did before due times were indexed (Table Storage).
pub struct Probe<'a> {
    pub requests: fn() -> u64,
    pub tables: &'a AzureTableStore,
}

/// Writes the schedules, polls, prints.
pub async fn run(
    store: &dyn Store,
    schedules: usize,
    probe: Option<Probe<'_>>,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let prefix = format!("bench{}", std::process::id());
    let written = Instant::now();
    let records = (0..schedules).map(|i| {
        let due = if i < DUE {
            now - time::Duration::minutes(1)
        } else {
            now + time::Duration::days(1)
        };
        let record = ScheduleName::parse(format!("{prefix}-{i}")).map(|name| ScheduleRecord {
            name,
            tenant: None,
            next_due: Some(due),
            body: json!({"bench": i}),
        });
        async move {
            store.put_schedule(&record?, &Expected::New).await?;
            anyhow::Ok(())
        }
    });
    stream::iter(records)
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "{schedules} schedules written in {:.1} s ({DUE} due)",
        written.elapsed().as_secs_f64()
    );
    // The first poll may index schedules written before the index existed
    // (none here); it is measured apart.
    let first = Instant::now();
    store.due_schedules(OffsetDateTime::now_utc(), 256).await?;
    let first = first.elapsed();
    let requests = probe.as_ref().map(|p| p.requests);
    let polls = measure(requests, || async {
        let due = store.due_schedules(OffsetDateTime::now_utc(), 256).await?;
        anyhow::ensure!(
            due.len() == DUE,
            "a poll found {} due schedules, not {DUE}",
            due.len()
        );
        Ok(())
    })
    .await?;
    println!(
        "poll for due schedules among {schedules}: {polls} (the first {:.1} ms)",
        ms(first)
    );
    if let Some(probe) = &probe {
        let scans = measure(requests, || async {
            let due = probe
                .tables
                .scan_due_schedules(OffsetDateTime::now_utc())
                .await?;
            anyhow::ensure!(due == DUE, "a scan found {due} due schedules, not {DUE}");
            Ok(())
        })
        .await?;
        println!("  the partition scan used before the index:  {scans}");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Runs `poll` [`POLLS`] times: store requests per poll (when counted)
/// and times, as a line.
async fn measure<F, Fut>(requests: Option<fn() -> u64>, poll: F) -> anyhow::Result<String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let before = requests.map(|count| count());
    let mut times = Vec::with_capacity(POLLS);
    for _ in 0..POLLS {
        let started = Instant::now();
        poll().await?;
        times.push(started.elapsed());
    }
    times.sort();
    let per_poll = match (requests, before) {
        (Some(count), Some(before)) => {
            format!(
                "{:.1} store requests, ",
                (count() - before) as f64 / POLLS as f64
            )
        }
        _ => String::new(),
    };
    Ok(format!(
        "{per_poll}p50 {:.1} ms, max {:.1} ms per poll",
        ms(times[POLLS / 2]),
        ms(times[POLLS - 1])
    ))
}
