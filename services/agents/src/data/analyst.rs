//! The data agent's answer to a question: a model-and-tool loop. The model
//! (the configured chat model, else a deterministic stand-in for it, so
//! dev mode works offline) may call two tools, `list_tables` and
//! `run_sql`, and answers in words once it has what it needs. Each model
//! turn is a journaled `chat N` step whose text watchers see as it is
//! written, and each tool call a journaled `tool <id>` step: a crash in the
//! middle resumes where it stopped, with no query and no model call done
//! twice.

use legato_agent::TaskContext;
use legato_agent::llm::{ChatClient, ChatReply, ToolCall, arguments};
use legato_contracts::TaskError;
use serde_json::{Value, json};
use time::{Date, Month, OffsetDateTime};

use super::{DataAgent, Rows};
use crate::input;

/// Model turns at most; the last must answer.
const MAX_TURNS: usize = 8;

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "list_tables",
            "description": "The database's tables.",
            "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "run_sql",
            "description": "Runs one read-only SQL statement and answers its rows.",
            "parameters": {"type": "object", "properties": {"sql": {"type": "string"}},
                "required": ["sql"]}}}
    ])
}

/// What the loop found: the last query that ran and the answer in words.
pub(super) struct Finding {
    pub sql: Option<String>,
    pub rows: Option<Rows>,
    pub answer: String,
    pub turns: usize,
}

pub(super) async fn answer(
    agent: &DataAgent,
    ctx: &TaskContext,
    model: Option<&ChatClient>,
    question: &str,
) -> Result<Finding, TaskError> {
    let mut messages = vec![
        json!({"role": "system", "content": "Answer the question about the database. Use list_tables and run_sql (read-only SQL); answer in one or two sentences once you know."}),
        json!({"role": "user", "content": question}),
    ];
    let mut finding = Finding {
        sql: None,
        rows: None,
        answer: String::new(),
        turns: 0,
    };
    for turn in 1..=MAX_TURNS {
        finding.turns = turn;
        let reply = match model {
            Some(model) => ctx.chat(model, &messages, Some(&tools())).await?,
            None => scripted(ctx, turn, question, &messages).await?,
        };
        if reply.tool_calls.is_empty() {
            finding.answer = reply.content;
            return Ok(finding);
        }
        messages.push(reply.to_message());
        for call in &reply.tool_calls {
            let result = ctx.tool(call, || run_tool(agent, call)).await?;
            if call.name == "run_sql" && result.get("error").is_none() {
                finding.sql = arguments(call)
                    .ok()
                    .and_then(|a| a["sql"].as_str().map(String::from));
                finding.rows = serde_json::from_value(result.clone()).ok();
            }
            messages.push(
                json!({"role": "tool", "tool_call_id": call.id, "content": result.to_string()}),
            );
        }
    }
    Err(input::retryable(format!(
        "data: no answer after {MAX_TURNS} model turns"
    )))
}

/// Runs one tool; a query the database refuses is the tool's answer (the
/// model can try another), a database that is away fails the attempt.
async fn run_tool(agent: &DataAgent, call: &ToolCall) -> Result<Value, TaskError> {
    let sql = match call.name.as_str() {
        "list_tables" => agent.database.catalog_query().to_owned(),
        "run_sql" => match arguments(call) {
            Ok(args) => args["sql"].as_str().unwrap_or_default().to_owned(),
            Err(why) => return Ok(json!({"error": why})),
        },
        other => return Ok(json!({"error": format!("no tool {other:?}")})),
    };
    match agent.query(&sql).await {
        Ok(rows) => Ok(serde_json::to_value(rows).unwrap_or(Value::Null)),
        Err(e @ super::QueryError::Unavailable(_)) => Err(e.into()),
        Err(e) => Ok(json!({"error": e.to_string()})),
    }
}

/// The deterministic stand-in for a model, offline: lists the tables, runs
/// the query the question implies, then says what it found. Its turns are
/// journaled and its words relayed like a model's.
async fn scripted(
    ctx: &TaskContext,
    turn: usize,
    question: &str,
    messages: &[Value],
) -> Result<ChatReply, TaskError> {
    let results: Vec<Value> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .filter_map(|m| serde_json::from_str(m["content"].as_str()?).ok())
        .collect();
    let call = |name: &str, args: Value| ToolCall {
        id: format!("call_{turn}"),
        name: name.into(),
        arguments: args.to_string(),
    };
    let reply = match (turn, results.last()) {
        (1, _) => ChatReply {
            tool_calls: vec![call("list_tables", json!({}))],
            ..ChatReply::default()
        },
        (2, Some(tables)) => ChatReply {
            tool_calls: vec![call("run_sql", json!({"sql": query_for(question, tables)}))],
            ..ChatReply::default()
        },
        (_, found) => ChatReply {
            content: summary(question, found),
            ..ChatReply::default()
        },
    };
    let name = format!("chat {turn}");
    ctx.step(&name, || async {
        let output = ctx.output(&name);
        for word in reply.content.split_inclusive(' ') {
            output.push(word);
        }
        output.finish().await;
        Ok(reply)
    })
    .await
}

/// The month a question names: `YYYY-MM`, "last month" or this one.
fn month_of(question: &str, today: Date) -> String {
    if let Some(found) = question
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .find(|w| w.len() == 7 && w.as_bytes()[4] == b'-')
    {
        return found.to_owned();
    }
    let (year, month) = if question.to_ascii_lowercase().contains("last month") {
        match today.month() {
            Month::January => (today.year() - 1, Month::December),
            m => (today.year(), m.previous()),
        }
    } else {
        (today.year(), today.month())
    };
    format!("{year:04}-{:02}", month as u8)
}

fn query_for(question: &str, tables: &Value) -> String {
    let names: Vec<&str> = tables["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["table_name"].as_str())
        .collect();
    if names.contains(&"invoices") {
        let month = month_of(question, OffsetDateTime::now_utc().date());
        return format!(
            "SELECT customer, count(*) AS invoices, sum(amount_cents) AS total_cents \
             FROM invoices WHERE substr(CAST(issued_on AS TEXT), 1, 7) = '{month}' \
             GROUP BY customer ORDER BY total_cents DESC"
        );
    }
    match names.first() {
        Some(table) => format!("SELECT * FROM {table} LIMIT 20"),
        None => "SELECT 1 AS nothing_to_read".into(),
    }
}

fn summary(question: &str, found: Option<&Value>) -> String {
    let rows = found
        .and_then(|f| f["rows"].as_array())
        .cloned()
        .unwrap_or_default();
    let Some(first) = rows.first() else {
        return format!("I found no rows that answer {question:?}.");
    };
    if let (Some(customer), Some(total)) =
        (first["customer"].as_str(), first["total_cents"].as_i64())
    {
        let all: i64 = rows.iter().filter_map(|r| r["total_cents"].as_i64()).sum();
        return format!(
            "Across {} customers the invoices total {:.2}; {customer} leads with {:.2}.",
            rows.len(),
            all as f64 / 100.0,
            total as f64 / 100.0
        );
    }
    format!("I read {} rows; the first is {first}.", rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_names_its_month() {
        let today = Date::from_calendar_date(2026, Month::January, 15).unwrap();
        assert_eq!(month_of("totals for 2025-11 please", today), "2025-11");
        assert_eq!(month_of("check last month's totals", today), "2025-12");
        assert_eq!(month_of("totals so far", today), "2026-01");
    }
}
