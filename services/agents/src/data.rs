//! The data agent: answers questions with read-only SQL against the
//! configured database (PostgreSQL, or SQLite in dev mode), under a
//! statement timeout and a row limit.
//!
//! "Read-only" is enforced twice: a statement must look like a read (one
//! statement starting with SELECT, WITH, VALUES, TABLE, SHOW or EXPLAIN),
//! and it runs where the database itself refuses writes (a READ ONLY
//! transaction in PostgreSQL, a read-only connection in SQLite). The first
//! gives a clear error; the second is the guarantee.
//!
//! Input: `{"sql": "..."}` runs that statement. `{"question": "..."}`
//! without SQL is answered by a model-and-tool loop ([`analyst`]): the chat
//! model, or offline a deterministic stand-in for it, lists the tables and
//! runs queries until it can answer in words.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use legato_agent::llm::ChatClient;
use legato_agent::{Agent, Task, TaskContext};
use legato_contracts::{AgentName, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::input;

mod analyst;
pub mod demo;
mod postgres;
mod sqlite;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db`.
    pub url: String,
    pub statement_timeout_ms: u64,
    pub row_limit: usize,
}

impl std::fmt::Debug for DataSettings {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSettings")
            .field("url", &legato_service::settings::redact_url(&self.url))
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("row_limit", &self.row_limit)
            .finish()
    }
}

impl DataSettings {
    /// With the default (dev-mode) URL, creates the demo database if it is
    /// missing, so the data agent has something to read out of the box.
    pub fn ensure_demo_database(&self) -> anyhow::Result<()> {
        if self.url == Self::default().url
            && let Some(path) = self.url.strip_prefix("sqlite://")
        {
            let path = std::path::Path::new(path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            demo::ensure(path)?;
        }
        Ok(())
    }
}

impl Default for DataSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://.legato/demo.db".into(),
            statement_timeout_ms: 5_000,
            row_limit: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Database {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Database {
    pub fn from_url(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "data.url {url:?} is neither postgres:// nor sqlite://"
            ))
        }
    }

    fn catalog_query(&self) -> &'static str {
        match self {
            Self::Postgres(_) => {
                "SELECT table_schema, table_name FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            }
            Self::Sqlite(_) => {
                "SELECT name AS table_name FROM sqlite_master WHERE type = 'table' ORDER BY 1"
            }
        }
    }
}

/// A result set: column names, rows as JSON objects, and whether the row
/// limit cut it short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("refused: {0}")]
    NotARead(String),
    #[error("statement timed out after {0} ms")]
    Timeout(u64),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("query failed: {0}")]
    Failed(String),
}

impl From<QueryError> for TaskError {
    fn from(e: QueryError) -> Self {
        let retryable = matches!(e, QueryError::Unavailable(_));
        TaskError {
            message: format!("data: {e}"),
            retryable,
        }
    }
}

/// The cheap, early refusal; the database's own read-only mode is the guarantee.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    let text = strip_comments(sql);
    let body = text.trim().trim_end_matches(';').trim();
    if body.is_empty() {
        return Err(QueryError::NotARead("empty statement".into()));
    }
    if body.contains(';') {
        return Err(QueryError::NotARead("one statement at a time".into()));
    }
    let first = body
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    const READS: [&str; 6] = ["select", "with", "values", "table", "show", "explain"];
    if !READS.contains(&first.as_str()) {
        return Err(QueryError::NotARead(format!(
            "{first:?} is not a read; only {READS:?} are allowed"
        )));
    }
    if first == "explain" && body.to_ascii_lowercase().contains("analyze") {
        return Err(QueryError::NotARead(
            "EXPLAIN ANALYZE executes the statement".into(),
        ));
    }
    Ok(())
}

fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
            out.push(' ');
        } else if let Some(c) = rest.chars().next() {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

pub struct DataAgent {
    name: AgentName,
    database: Database,
    settings: DataSettings,
    model: Option<ChatClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataRequest {
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    question: Option<String>,
}

impl DataAgent {
    pub fn new(
        name: AgentName,
        settings: DataSettings,
        model: Option<ChatClient>,
    ) -> Result<Self, String> {
        Ok(Self {
            name,
            database: Database::from_url(&settings.url)?,
            settings,
            model,
        })
    }

    pub async fn query(&self, sql: &str) -> Result<Rows, QueryError> {
        check_read_only(sql)?;
        let timeout = Duration::from_millis(self.settings.statement_timeout_ms);
        let limit = self.settings.row_limit;
        match &self.database {
            Database::Postgres(url) => postgres::query(url, sql, timeout, limit).await,
            Database::Sqlite(path) => {
                sqlite::query(path.clone(), sql.to_owned(), timeout, limit).await
            }
        }
    }
}

#[async_trait]
impl Agent for DataAgent {
    fn name(&self) -> &AgentName {
        &self.name
    }

    async fn run(&self, task: &Task, ctx: &TaskContext) -> Result<Value, TaskError> {
        let request: DataRequest = input::parse("data", &task.input)?;
        match (&request.sql, &request.question) {
            (Some(sql), _) => {
                let rows = self.query(sql).await?;
                Ok(json!({
                    "question": request.question,
                    "sql": sql,
                    "columns": rows.columns,
                    "rows": rows.rows,
                    "truncated": rows.truncated,
                }))
            }
            (None, Some(question)) => {
                let found = analyst::answer(self, ctx, self.model.as_ref(), question).await?;
                let rows = found.rows.unwrap_or(Rows {
                    columns: Vec::new(),
                    rows: Vec::new(),
                    truncated: false,
                });
                Ok(json!({
                    "question": question,
                    "sql": found.sql,
                    "columns": rows.columns,
                    "rows": rows.rows,
                    "truncated": rows.truncated,
                    "answer": found.answer,
                    "turns": found.turns,
                    "model": if self.model.is_some() { "configured" } else { "offline" },
                }))
            }
            (None, None) => Err(input::fatal("data: input needs `sql` or `question`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_reads_pass_the_early_check() {
        for ok in [
            "SELECT 1",
            "  with t as (select 1) select * from t;",
            "-- hi\nselect 2",
            "/* x */ VALUES (1)",
            "explain select 1",
        ] {
            assert_eq!(check_read_only(ok), Ok(()), "{ok}");
        }
        for bad in [
            "DELETE FROM t",
            "select 1; drop table t",
            "",
            "-- only a comment",
            "explain analyze delete from t",
            "insert into t values (1)",
        ] {
            assert!(
                matches!(check_read_only(bad), Err(QueryError::NotARead(_))),
                "{bad}"
            );
        }
    }
}
