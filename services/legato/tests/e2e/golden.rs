//! Golden stores: what `legato up` of each release kept mid-run
//! (`contracts/golden/<release>/store.sql`, written by
//! `scripts/golden-store`) is read and carried on by this build, its
//! tables and records as that release left them: a completed run with its
//! history, a run waiting for its approval with its timer set, an entity
//! with its operations, a registered workflow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Legato, events, temp_dir};

fn golden_stores() -> Vec<PathBuf> {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/golden");
    let mut stores: Vec<PathBuf> = std::fs::read_dir(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}", golden.display()))
        .map(|entry| entry.unwrap().path().join("store.sql"))
        .filter(|path| path.exists())
        .collect();
    stores.sort();
    stores
}

#[tokio::test]
async fn the_stores_of_earlier_releases_are_read_and_carried_on() {
    let stores = golden_stores();
    assert!(
        stores.len() >= 2,
        "an earlier release's store and this one's: {stores:?}"
    );
    for sql in stores {
        let release = sql.parent().unwrap().display().to_string();
        let dir = temp_dir();
        rusqlite::Connection::open(dir.path().join("legato.db"))
            .unwrap()
            .execute_batch(&std::fs::read_to_string(&sql).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", sql.display()));
        let legato = Legato::start(dir.path());

        let done = legato.status("golden-done").await;
        assert_eq!(done["runtimeStatus"], "Completed", "{release}: {done:#}");
        assert_eq!(done["output"], 3, "{release}");
        assert_eq!(events(&done, "task_completed").len(), 2, "{release}");

        // Its timer, set by that release, is overdue and fires; its
        // approval is taken; it ends as that release would have ended it.
        let (status, _) = legato
            .post(
                "/api/v1/instances/golden-waiting/events/approval",
                json!({"add": 2}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{release}");
        let waited = legato.wait_status("golden-waiting", "Completed").await;
        assert_eq!(waited["output"], 3, "{release}: {waited:#}");
        assert_eq!(events(&waited, "timer_fired").len(), 1, "{release}");

        // The entity goes on from its state and count.
        let (status, counter) = legato.get_json("/api/v1/entities/counter/golden").await;
        assert_eq!(status, StatusCode::OK, "{release}");
        assert_eq!(
            (&counter["state"], &counter["operations"]),
            (&json!(6), &json!(2)),
            "{release}"
        );
        let (status, _) = legato
            .post(
                "/api/v1/entities/counter/golden/operations",
                json!({"op": "increment", "by": 3}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{release}");
        legato
            .wait_for_json(
                "/api/v1/entities/counter/golden",
                Duration::from_secs(30),
                |e| e["state"] == 9 && e["operations"] == 3,
            )
            .await;

        // The workflow it registered runs again.
        let id = legato
            .start_instance("golden", json!({"instanceId": "golden-again"}))
            .await;
        legato
            .post(
                &format!("/api/v1/instances/{id}/events/approval"),
                json!({"add": 2}),
            )
            .await;
        let again = legato.wait_status(&id, "Completed").await;
        assert_eq!(again["output"], 3, "{release}");
    }
}
