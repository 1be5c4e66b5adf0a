//! `legato schedule …`: create, inspect and steer schedules.

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Gateway, Output, segment};
use super::json_arg;

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create or replace a schedule (a cron expression or an interval).
    Put {
        name: String,
        workflow: String,
        /// Five fields (minute first) or six (seconds first).
        #[arg(long, conflicts_with = "every")]
        cron: Option<String>,
        /// The IANA time zone the cron expression is read in (UTC otherwise).
        #[arg(long, requires = "cron")]
        time_zone: Option<String>,
        /// Run every this many seconds instead.
        #[arg(long, value_name = "SECONDS")]
        every: Option<u64>,
        /// skip, buffer_one, allow_all, cancel_other or terminate_other.
        #[arg(long, default_value = "skip")]
        overlap: String,
        /// Each run's input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Runs this late after downtime still start.
        #[arg(long, value_name = "SECONDS")]
        catchup_window: Option<u64>,
        #[arg(long, value_name = "SECONDS")]
        jitter: Option<u64>,
        /// A pinned definition version (the latest at each run otherwise).
        #[arg(long)]
        version: Option<u32>,
    },
    /// List schedules.
    Ls,
    /// Show a schedule: next runs, recent runs and their instances.
    Show { name: String },
    /// Start nothing on the timetable until resumed.
    Pause {
        name: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Resume from now on (paused times are not caught up).
    Resume {
        name: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Start a run now.
    Trigger { name: String },
    /// Run every time of a past range (RFC 3339, `to` exclusive).
    Backfill {
        name: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Delete a schedule (its runs stay).
    Rm { name: String },
}

pub async fn run(
    gateway: &Gateway,
    output: Output,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/schedules/{}", segment(name));
    let (text, value) = match command {
        ScheduleCommand::Put {
            name,
            workflow,
            cron,
            time_zone,
            every,
            overlap,
            input,
            catchup_window,
            jitter,
            version,
        } => {
            let mut spec = json!({
                "workflow": workflow,
                "overlap": overlap,
                "input": json_arg("--input", &input)?,
            });
            let optional = [
                ("cron", cron.map(Value::from)),
                ("timeZone", time_zone.map(Value::from)),
                ("intervalSeconds", every.map(Value::from)),
                ("catchupWindowSeconds", catchup_window.map(Value::from)),
                ("jitterSeconds", jitter.map(Value::from)),
                ("version", version.map(Value::from)),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    spec[key] = value;
                }
            }
            let view = gateway.call(Method::PUT, &path(&name), Some(&spec)).await?;
            (describe(&view), view)
        }
        ScheduleCommand::Ls => {
            let list = gateway.call(Method::GET, "/api/v1/schedules", None).await?;
            let mut text = format!("{:<24} {:<20} {:<8} NEXT RUN", "NAME", "WORKFLOW", "PAUSED");
            for item in list["items"].as_array().map_or(&[][..], Vec::as_slice) {
                text.push_str(&format!(
                    "\n{:<24} {:<20} {:<8} {}",
                    item["name"].as_str().unwrap_or_default(),
                    item["spec"]["workflow"].as_str().unwrap_or_default(),
                    if item["spec"]["paused"] == true {
                        "yes"
                    } else {
                        "no"
                    },
                    item["nextRuns"][0].as_str().unwrap_or("-")
                ));
            }
            (text, list)
        }
        ScheduleCommand::Show { name } => {
            let view = gateway.call(Method::GET, &path(&name), None).await?;
            (describe(&view), view)
        }
        ScheduleCommand::Pause { name, note } => {
            let body = json!({"note": note});
            let view = gateway
                .call(Method::POST, &format!("{}/pause", path(&name)), Some(&body))
                .await?;
            (format!("paused {name}"), view)
        }
        ScheduleCommand::Resume { name, note } => {
            let body = json!({"note": note});
            let view = gateway
                .call(
                    Method::POST,
                    &format!("{}/resume", path(&name)),
                    Some(&body),
                )
                .await?;
            (describe(&view), view)
        }
        ScheduleCommand::Trigger { name } => {
            let runs = gateway
                .call(
                    Method::POST,
                    &format!("{}/trigger", path(&name)),
                    Some(&json!({})),
                )
                .await?;
            (format!("triggered {}", runs["instanceIds"][0]), runs)
        }
        ScheduleCommand::Backfill { name, from, to } => {
            let body = json!({"from": from, "to": to});
            let runs = gateway
                .call(
                    Method::POST,
                    &format!("{}/backfill", path(&name)),
                    Some(&body),
                )
                .await?;
            let count = runs["instanceIds"].as_array().map_or(0, Vec::len);
            (format!("backfilling {count} runs of {name}"), runs)
        }
        ScheduleCommand::Rm { name } => {
            gateway.call(Method::DELETE, &path(&name), None).await?;
            (
                format!("deleted {name}"),
                json!({"name": name, "deleted": true}),
            )
        }
    };
    output.print(&text, &value);
    Ok(())
}

/// A schedule as text: what, when, and its recent runs.
fn describe(view: &Value) -> String {
    let spec = &view["spec"];
    let when = match (spec["cron"].as_str(), spec["intervalSeconds"].as_u64()) {
        (Some(cron), _) => format!(
            "cron {cron:?} in {}",
            spec["timeZone"].as_str().unwrap_or("UTC")
        ),
        (None, Some(seconds)) => format!("every {seconds} s"),
        _ => String::new(),
    };
    let mut text = format!(
        "{}: {} {when}, overlap {}{}",
        view["name"].as_str().unwrap_or_default(),
        spec["workflow"].as_str().unwrap_or_default(),
        spec["overlap"].as_str().unwrap_or_default(),
        if spec["paused"] == true {
            " (paused)"
        } else {
            ""
        }
    );
    if let Some(note) = spec["note"].as_str() {
        text.push_str(&format!("\nnote: {note}"));
    }
    for next in view["nextRuns"].as_array().map_or(&[][..], Vec::as_slice) {
        text.push_str(&format!("\n  next  {}", next.as_str().unwrap_or_default()));
    }
    for run in view["recentRuns"].as_array().map_or(&[][..], Vec::as_slice) {
        text.push_str(&format!(
            "\n  {:<10} {} {}",
            run["outcome"].as_str().unwrap_or_default(),
            run["nominalTime"].as_str().unwrap_or_default(),
            run["instanceId"].as_str().unwrap_or_default()
        ));
    }
    text
}
