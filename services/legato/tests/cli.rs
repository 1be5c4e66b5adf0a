//! The `legato` client commands end to end against `legato up` with API
//! keys: start and watch to the end (the exit code says how it ended),
//! approve and reject, raise, list, show, terminate, purge, `--output
//! json` for scripts, and refusals as one line on stderr with exit 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ApiKey, Legato, temp_dir};

const KEY: &str = "cli-test-key";

fn start_legato(dir: &Path) -> Legato {
    Legato::start_with_api_keys(
        dir,
        &[ApiKey {
            id: "cli",
            key: KEY,
            tenant: Some("team-cli"),
            roles: &["admin"],
        }],
    )
}

fn legato(base: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_legato"));
    command
        .args(args)
        .env("LEGATO_URL", base)
        .env("LEGATO_TOKEN", KEY)
        .env_remove("LEGATO_STREAM_URL")
        .stdin(Stdio::null());
    command
}

/// Runs a client command to its end (bounded).
fn run(base: &str, args: &[&str]) -> Output {
    let child = legato(base, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, args)
}

fn finish(mut child: Child, what: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("legato {what:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Waits until the instance's approval step waits.
async fn wait_for_approval(legato: &Legato, id: &str) {
    for _ in 0..400 {
        let status: Value = legato
            .client
            .get(legato.url(&format!("/api/v1/instances/{id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let waiting = status["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "approve" && s["status"] == "Waiting");
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never waited for approval");
}

#[tokio::test]
async fn the_cli_drives_instances_and_its_exit_code_says_how_they_ended() {
    let dir = temp_dir();
    let up = start_legato(dir.path());
    let base = up.base.as_str();
    let request = r#"{"request": "add CSV export to billing and check last month totals"}"#;

    // start --watch: every step, the output, exit 0.
    let watched = run(
        base,
        &[
            "start",
            "fan-out-fan-in",
            "--input",
            r#"{"value": 3}"#,
            "--watch",
        ],
    );
    let text = stdout(&watched);
    assert_eq!(watched.status.code(), Some(0), "{text}");
    for line in ["started ", "join ", "Completed", "output: [3,3,3,3]"] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }

    // watch in the background, approve from another command: exit 0.
    run(
        base,
        &[
            "start",
            "feature-request",
            "--input",
            request,
            "--id",
            "yes",
        ],
    );
    let watcher = legato(base, &["watch", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_approval(&up, "yes").await;
    let approved = run(base, &["approve", "yes"]);
    assert!(stdout(&approved).contains("approved yes"));
    let watched = finish(watcher, &["watch", "yes"]);
    let text = stdout(&watched);
    assert_eq!(watched.status.code(), Some(0), "{text}");
    assert!(
        text.contains("work") && text.contains("2/2 items"),
        "{text}"
    );
    assert!(text.contains("instance yes: Completed"), "{text}");

    // A rejection rolls back and the watch exits 2, with the reason.
    run(
        base,
        &["start", "feature-request", "--input", request, "--id", "no"],
    );
    wait_for_approval(&up, "no").await;
    run(base, &["approve", "no", "--reject", "not this quarter"]);
    let watched = run(base, &["watch", "no"]);
    assert_eq!(watched.status.code(), Some(2), "{}", stdout(&watched));
    assert!(stdout(&watched).contains("not this quarter"));

    // Terminated: exit 3; with --output json every line is JSON.
    run(
        base,
        &[
            "start",
            "feature-request",
            "--input",
            request,
            "--id",
            "stop",
        ],
    );
    wait_for_approval(&up, "stop").await;
    let raised = run(
        base,
        &["raise", "stop", "nudge", r#"{"n": 1}"#, "--output", "json"],
    );
    assert_eq!(json_lines(&raised)[0]["id"], "stop");
    run(base, &["terminate", "stop", "--reason", "enough"]);
    let watched = run(base, &["watch", "stop", "--output", "json"]);
    assert_eq!(watched.status.code(), Some(3));
    let events = json_lines(&watched);
    assert_eq!(events[0]["event"], "status");
    assert!(events.iter().all(|e| e["data"].is_object()));

    // ls and show, for people and for scripts.
    let listed = run(base, &["ls", "--output", "json"]);
    let page = json_lines(&listed).remove(0);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in ["yes", "no", "stop"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let failed = run(base, &["ls", "--status", "Failed"]);
    let text = stdout(&failed);
    assert!(text.contains("no ") && !text.contains("yes "), "{text}");
    let shown = run(base, &["show", "yes", "--history", "--output", "json"]);
    let shown = &json_lines(&shown)[0];
    assert_eq!(shown["runtimeStatus"], "Completed");
    assert!(shown["history"].as_array().unwrap().len() > 5);
    let shown = run(base, &["show", "no"]);
    assert!(stdout(&shown).contains("verdict"), "{}", stdout(&shown));

    // A parent lists its child runs; a child names its parent.
    let parts = r#"{"request": "add CSV export to billing"}"#;
    run(
        base,
        &["start", "feature-by-parts", "--input", parts, "--id", "kin"],
    );
    assert!(run(base, &["watch", "kin"]).status.success());
    let text = stdout(&run(base, &["show", "kin"]));
    assert!(
        text.contains("runs pattern-evaluator-optimizer") && text.contains("child kin::parts.0.a1"),
        "{text}"
    );
    let text = stdout(&run(base, &["show", "kin::parts.0.a1"]));
    assert!(
        text.contains("child run of kin (step parts, attempt 1)"),
        "{text}"
    );

    // purge, then it is gone: one line on stderr, exit 1.
    assert!(run(base, &["purge", "yes"]).status.success());
    let gone = run(base, &["show", "yes"]);
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&gone.stderr).trim(),
        "error: Not found: no instance yes (404 Not Found)"
    );

    // A wrong key is refused the same way.
    let refused = legato(base, &["ls"])
        .env("LEGATO_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Not signed in"));
}

#[tokio::test]
async fn the_cli_creates_steers_and_deletes_a_schedule() {
    let dir = temp_dir();
    let up = start_legato(dir.path());
    let base = up.base.as_str();
    let bad = run(
        base,
        &[
            "schedule",
            "put",
            "hourly",
            "fan-out-fan-in",
            "--cron",
            "61 * * * *",
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/cron"),
        "{bad:?}"
    );

    let put = run(
        base,
        &[
            "schedule",
            "put",
            "hourly",
            "fan-out-fan-in",
            "--cron",
            "0 * * * *",
            "--time-zone",
            "Europe/Paris",
            "--input",
            r#"{"value": 2}"#,
        ],
    );
    let text = stdout(&put);
    assert_eq!(
        put.status.code(),
        Some(0),
        "{text} {}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert!(
        text.contains("cron \"0 * * * *\" in Europe/Paris"),
        "{text}"
    );
    assert_eq!(text.matches("next ").count(), 5, "{text}");
    assert!(stdout(&run(base, &["schedule", "ls"])).contains("hourly"));

    let triggered = run(base, &["schedule", "trigger", "hourly", "--output", "json"]);
    let runs: Value = serde_json::from_str(stdout(&triggered).trim()).unwrap();
    let id = runs["instanceIds"][0].as_str().unwrap().to_owned();
    assert!(id.starts_with("hourly:"), "{id}");
    // The scheduler starts it at its next poll (202 said so); watching it
    // at once waits for it instead of answering 404.
    let watched = run(base, &["watch", &id]);
    assert_eq!(watched.status.code(), Some(0), "{watched:?}");
    // An id of no run of the schedule is not waited for.
    let never = format!("hourly:{}", "20000101T000000Z");
    let unknown = run(base, &["watch", &never]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("404"),
        "{unknown:?}"
    );

    let paused = run(base, &["schedule", "pause", "hourly", "--note", "freeze"]);
    assert_eq!(paused.status.code(), Some(0));
    let shown = stdout(&run(base, &["schedule", "show", "hourly"]));
    assert!(
        shown.contains("(paused)") && shown.contains("note: freeze"),
        "{shown}"
    );
    assert!(
        shown.contains("triggered ") && shown.contains(&id),
        "{shown}"
    );

    assert_eq!(
        run(base, &["schedule", "rm", "hourly"]).status.code(),
        Some(0)
    );
    let gone = run(base, &["schedule", "show", "hourly"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("404"),
        "{gone:?}"
    );
}

#[tokio::test]
async fn the_cli_registers_lists_shows_and_removes_agents() {
    let dir = temp_dir();
    let up = start_legato(dir.path());
    let base = up.base.as_str();
    let put = run(
        base,
        &[
            "agents",
            "put",
            "reviewer",
            "--lease-ms",
            "30000",
            "--description",
            "reviews drafts",
        ],
    );
    let text = stdout(&put);
    assert_eq!(put.status.code(), Some(0), "{text} {put:?}");
    assert!(
        text.contains("reviewer: pull agent of this tenant, lease 30000 ms"),
        "{text}"
    );
    let listed = stdout(&run(base, &["agents", "ls"]));
    for line in ["reviewer", "echo     ", "builtin", "RUNNING", "P50 MS"] {
        assert!(listed.contains(line), "{listed}");
    }
    let text = stdout(&run(base, &["agents", "show", "reviewer"]));
    assert!(
        text.contains("now: 0 waiting, 0 running; last 5 minutes: 0 completed, 0 failed, p50 - ms"),
        "{text}"
    );
    let shown = run(base, &["agents", "show", "reviewer", "--output", "json"]);
    let view: Value = serde_json::from_str(stdout(&shown).trim()).unwrap();
    assert_eq!(view["description"], "reviews drafts");
    let bad = run(base, &["agents", "put", "reviewer", "--lease-ms", "5"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/leaseMs"),
        "{bad:?}"
    );
    assert_eq!(
        run(base, &["agents", "rm", "reviewer"]).status.code(),
        Some(0)
    );
    let gone = run(base, &["agents", "show", "reviewer"]);
    assert_eq!(gone.status.code(), Some(1));
}

#[tokio::test]
async fn the_cli_signals_lists_shows_and_deletes_entities() {
    let dir = temp_dir();
    let up = start_legato(dir.path());
    let base = up.base.as_str();
    let signal = |key: &str| {
        run(
            base,
            &[
                "entities",
                "signal",
                "counter",
                "visits",
                r#"{"op": "increment", "by": 5}"#,
                "--idempotency-key",
                key,
            ],
        )
    };
    for key in ["one", "one", "two"] {
        let sent = signal(key);
        assert_eq!(sent.status.code(), Some(0), "{sent:?}");
        assert!(stdout(&sent).contains(&format!("sent api/{key} to counter/visits")));
    }
    let mut shown = String::new();
    for _ in 0..200 {
        shown = stdout(&run(base, &["entities", "show", "counter", "visits"]));
        if shown.contains("2 operations") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(shown.contains("counter/visits: 2 operations"), "{shown}");
    assert!(shown.contains("state: 10"), "{shown}");
    assert!(
        shown.contains(r#"#2"#) && shown.contains("-> 10"),
        "{shown}"
    );
    let listed = stdout(&run(base, &["entities", "ls", "--type", "counter"]));
    assert!(
        listed.contains("visits") && listed.contains("OPERATIONS"),
        "{listed}"
    );
    let bad = run(
        base,
        &[
            "entities",
            "signal",
            "counter",
            "visits",
            r#"{"op": "teleport"}"#,
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/op"),
        "{bad:?}"
    );
    assert_eq!(
        run(base, &["entities", "rm", "counter", "visits"])
            .status
            .code(),
        Some(0)
    );
    let gone = run(base, &["entities", "show", "counter", "visits"]);
    assert_eq!(gone.status.code(), Some(1));

    // Entity types: checked offline, registered, listed, shown, removed.
    let file = dir.path().join("tally.entity.yaml");
    std::fs::write(
        &file,
        "name: tally\ndescription: A bounded count.\nstate_schema: { type: integer, maximum: 3 }\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let valid = run(base, &["validate", file]);
    assert!(
        stdout(&valid).contains("entity type tally: valid, a state schema"),
        "{valid:?}"
    );
    let put = run(base, &["entity-types", "put", file]);
    assert_eq!(put.status.code(), Some(0), "{put:?}");
    assert!(
        stdout(&put).contains("registered entity type tally"),
        "{put:?}"
    );
    let listed = stdout(&run(base, &["entity-types", "ls"]));
    assert!(
        listed.contains("tally") && listed.contains("A bounded count."),
        "{listed}"
    );
    let shown = stdout(&run(base, &["entity-types", "show", "tally"]));
    assert!(shown.contains(r#""maximum":3"#), "{shown}");
    let over = run(
        base,
        &[
            "entities",
            "signal",
            "tally",
            "t1",
            r#"{"op": "set", "value": 4}"#,
        ],
    );
    assert_eq!(over.status.code(), Some(0), "{over:?}");
    let mut refused = String::new();
    for _ in 0..200 {
        refused = stdout(&run(base, &["entities", "show", "tally", "t1"]));
        if refused.contains("failed:") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        refused.contains("state_schema") && refused.contains("state: null"),
        "the schema refused it, nothing changed: {refused}"
    );
    assert_eq!(
        run(base, &["entity-types", "rm", "tally"]).status.code(),
        Some(0)
    );
    assert_eq!(
        run(base, &["entity-types", "show", "tally"]).status.code(),
        Some(1)
    );
}

/// A budget through the CLI: `start --budget-tokens`, `show` says what was
/// spent of it, `resume --budget-tokens` raises it.
#[tokio::test]
async fn the_cli_sets_shows_and_raises_a_budget() {
    let dir = temp_dir();
    let up = start_legato(dir.path());
    let base = up.base.as_str();
    let spend = |id: &str, needs: &[&str]| {
        serde_json::json!({"id": id, "needs": needs, "agent": "echo",
            "input": {"value": id, "usage": {"input_tokens": 40, "output_tokens": 20}}})
    };
    let registered = up
        .client
        .put(format!("{base}/api/v1/workflows/cli-spender"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({
            "name": "cli-spender", "version": 1,
            "steps": [spend("a", &[]), spend("b", &["a"]), spend("c", &["b"])],
        }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");
    let status_of = |wanted: &'static str| async move {
        for _ in 0..300 {
            let shown = run(base, &["show", "thrifty", "--output", "json"]);
            let view: Value = serde_json::from_str(stdout(&shown).trim()).unwrap_or_default();
            if view["runtimeStatus"] == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("thrifty was not {wanted} within 30 s");
    };
    let started = run(
        base,
        &[
            "start",
            "cli-spender",
            "--id",
            "thrifty",
            "--budget-tokens",
            "100",
        ],
    );
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    status_of("Suspended").await;
    let text = stdout(&run(base, &["show", "thrifty"]));
    assert!(
        text.contains("spent: 120 tokens (80 in, 40 out) of a budget of tokens 100"),
        "{text}"
    );
    assert!(text.contains("spent 60 tokens (40 in, 20 out)"), "{text}");
    let refused = run(base, &["resume", "thrifty"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("budget exceeded"),
        "{refused:?}"
    );
    let raised = run(base, &["resume", "thrifty", "--budget-tokens", "1000"]);
    assert_eq!(raised.status.code(), Some(0), "{raised:?}");
    status_of("Completed").await;
}

/// `legato validate` checks files offline with registration's own
/// messages: the shipped patterns pass; a broken loop fails with exactly
/// the problems the gateway lists when it is registered.
#[tokio::test]
async fn validate_checks_definitions_offline_with_the_messages_of_registration() {
    let patterns = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows/patterns");
    let mut files: Vec<String> = std::fs::read_dir(&patterns)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let valid = run("http://127.0.0.1:9", &args);
    assert!(valid.status.success(), "{valid:?}");
    let lines = stdout(&valid);
    assert_eq!(lines.lines().count(), 5, "{lines}");
    assert!(
        lines.contains(
            "pattern-evaluator-optimizer v1: valid, 4 steps (1 loop); names agents coder, echo"
        ),
        "{lines}"
    );
    let guarded = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows/guarded-change.yaml");
    let locked = run(
        "http://127.0.0.1:9",
        &["validate", guarded.to_str().unwrap()],
    );
    assert!(
        stdout(&locked).contains("guarded-change v1: valid, 3 steps (1 lock); names agents coder"),
        "{locked:?}"
    );

    let dir = temp_dir();
    let broken = r#"{"name": "broken", "version": 1, "steps": [
        {"id": "draft", "loop": {"until": "${{ steps.review.output }}", "steps": [
            {"id": "review", "agent": "echo", "needs": ["later"]}]}},
        {"id": "later", "agent": "echo", "input": "${{ steps.review.output }}"}]}"#;
    let file = dir.path().join("broken.json");
    std::fs::write(&file, broken).unwrap();
    let refused = run("http://127.0.0.1:9", &["validate", file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let printed: Vec<String> = String::from_utf8_lossy(&refused.stderr)
        .lines()
        .map(|l| {
            l.strip_prefix(&format!("{}: ", file.display()))
                .unwrap()
                .to_owned()
        })
        .collect();

    let legato = start_legato(dir.path());
    let response = legato
        .client
        .put(legato.url("/api/v1/workflows/broken"))
        .header("content-type", "application/json")
        .bearer_auth(KEY)
        .body(broken)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    let listed: Vec<String> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["field"].as_str().unwrap(),
                e["message"].as_str().unwrap()
            )
        })
        .collect();
    assert!(listed.len() >= 2, "{problem:#}");
    assert_eq!(printed, listed);
}
