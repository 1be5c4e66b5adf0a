//! The data agent against real databases: PostgreSQL on 127.0.0.1:5432
//! (database `test`, or `LEGATO_TEST_POSTGRES_URL`) and a SQLite file.
//! Each test works in a table of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use legato_agents::data::{DataAgent, DataSettings, QueryError};
use legato_contracts::AgentName;
use serde_json::json;

fn postgres_url() -> String {
    std::env::var("LEGATO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn agent(url: String, timeout_ms: u64, row_limit: usize) -> DataAgent {
    let settings = DataSettings {
        url,
        statement_timeout_ms: timeout_ms,
        row_limit,
    };
    DataAgent::new(AgentName::parse("data").unwrap(), settings, None).unwrap()
}

async fn postgres_table(test: &str) -> String {
    let table = format!("invoices_{test}_{}", std::process::id());
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (database test)");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id serial PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL, issued timestamptz NOT NULL DEFAULT now());
             INSERT INTO {table} (customer, amount) SELECT 'c' || (n % 3), n * 1.25 FROM generate_series(1, 50) AS n;"
        ))
        .await
        .unwrap();
    table
}

#[tokio::test]
async fn postgres_reads_with_exact_numerics_and_a_row_limit() {
    let table = postgres_table("reads").await;
    let data = agent(postgres_url(), 5_000, 10);
    let totals = data
        .query(&format!("SELECT customer, sum(amount) AS total, count(*) AS n FROM {table} GROUP BY customer ORDER BY customer"))
        .await
        .unwrap();
    assert_eq!(totals.columns, ["customer", "total", "n"]);
    assert_eq!(totals.rows[0]["customer"], json!("c0"));
    // 3+6+...+48 = 408 units of 1.25.
    assert_eq!(totals.rows[0]["total"], json!("510.00"));
    assert_eq!(totals.rows[0]["n"], json!(16));
    assert!(!totals.truncated);
    let many = data
        .query(&format!("SELECT id, issued FROM {table}"))
        .await
        .unwrap();
    assert_eq!(many.rows.len(), 10);
    assert!(many.truncated);
}

#[tokio::test]
async fn postgres_refuses_writes_even_when_they_look_like_reads() {
    let table = postgres_table("writes").await;
    let data = agent(postgres_url(), 5_000, 10);
    let plain = data
        .query(&format!("DELETE FROM {table}"))
        .await
        .unwrap_err();
    assert!(matches!(plain, QueryError::NotARead(_)), "{plain}");
    // Passes the early check (it starts with WITH); the READ ONLY
    // transaction refuses it.
    let hidden = data
        .query(&format!(
            "WITH gone AS (DELETE FROM {table} RETURNING id) SELECT count(*) FROM gone"
        ))
        .await
        .unwrap_err();
    assert!(matches!(hidden, QueryError::NotARead(_)), "{hidden}");
    let left = data
        .query(&format!("SELECT count(*) AS n FROM {table}"))
        .await
        .unwrap();
    assert_eq!(left.rows[0]["n"], json!(50));
}

#[tokio::test]
async fn postgres_statements_time_out() {
    let data = agent(postgres_url(), 200, 10);
    let err = data.query("SELECT pg_sleep(5)").await.unwrap_err();
    assert!(matches!(err, QueryError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn sqlite_reads_read_only_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
         INSERT INTO t (name, score) SELECT 'n' || i, i / 2.0 FROM n;",
    )
    .unwrap();
    drop(conn);
    let data = agent(format!("sqlite://{}", path.display()), 2_000, 5);
    let rows = data
        .query("SELECT id, name, score FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 5);
    assert!(rows.truncated);
    assert_eq!(
        rows.rows[1],
        serde_json::from_value(json!({"id": 2, "name": "n2", "score": 1.0})).unwrap()
    );
    let err = data.query("DELETE FROM t").await.unwrap_err();
    assert!(matches!(err, QueryError::NotARead(_)), "{err}");
    // A runaway query is interrupted.
    let slow = agent(format!("sqlite://{}", path.display()), 100, 5);
    let err = slow
        .query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Timeout(_)), "{err}");
}
