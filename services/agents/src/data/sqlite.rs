//! SQLite (dev mode): a read-only connection, a statement SQLite itself
//! reports as read-only, interrupted when the timeout passes.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value, json};

use super::{QueryError, Rows};

pub(super) async fn query(
    path: PathBuf,
    sql: String,
    timeout: Duration,
    limit: usize,
) -> Result<Rows, QueryError> {
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
    let job = tokio::task::spawn_blocking(move || {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| QueryError::Unavailable(format!("{}: {e}", path.display())))?;
        let _ = handle_tx.send(conn.get_interrupt_handle());
        run(&conn, &sql, limit)
    });
    let interrupt = handle_rx.await.ok();
    match tokio::time::timeout(timeout, job).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(QueryError::Failed(join.to_string())),
        Err(_) => {
            if let Some(handle) = interrupt {
                handle.interrupt();
            }
            Err(QueryError::Timeout(timeout.as_millis() as u64))
        }
    }
}

fn run(conn: &Connection, sql: &str, limit: usize) -> Result<Rows, QueryError> {
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    if !stmt.readonly() {
        return Err(QueryError::NotARead(
            "SQLite reports the statement writes".into(),
        ));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = Vec::new();
    let mut cursor = stmt
        .query([])
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let mut truncated = false;
    while let Some(row) = cursor
        .next()
        .map_err(|e| QueryError::Failed(e.to_string()))?
    {
        if rows.len() == limit {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (i, name) in columns.iter().enumerate() {
            let value = match row
                .get_ref(i)
                .map_err(|e| QueryError::Failed(e.to_string()))?
            {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => json!(n),
                ValueRef::Real(x) => json!(x),
                ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                ValueRef::Blob(b) => json!(format!("<{} bytes>", b.len())),
            };
            object.insert(name.clone(), value);
        }
        rows.push(object);
    }
    Ok(Rows {
        columns,
        rows,
        truncated,
    })
}
