//! PostgreSQL: a READ ONLY transaction with `statement_timeout`, streaming
//! at most `limit` rows, always rolled back.

use std::time::Duration;

use futures::{StreamExt, pin_mut};
use serde_json::{Map, Value, json};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{NoTls, Row};

use super::{QueryError, Rows};

pub(super) async fn query(
    url: &str,
    sql: &str,
    timeout: Duration,
    limit: usize,
) -> Result<Rows, QueryError> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let driver = tokio::spawn(connection);
    // The client-side timeout backs up the server's, in case the server
    // never answers at all.
    let result = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            timeout.as_millis()
        ))
        .await
        .map_err(failed)?;
        // The stream borrows the transaction; it ends with this block, before
        // the rollback.
        let (columns, rows, truncated) = {
            let stream = tx
                .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
                .await
                .map_err(failed)?;
            pin_mut!(stream);
            let mut rows = Vec::new();
            let mut columns = None;
            let mut truncated = false;
            while let Some(row) = stream.next().await {
                let row = row.map_err(failed)?;
                if columns.is_none() {
                    columns = Some(
                        row.columns()
                            .iter()
                            .map(|c| c.name().to_owned())
                            .collect::<Vec<_>>(),
                    );
                }
                if rows.len() == limit {
                    truncated = true;
                    break;
                }
                rows.push(to_json(&row)?);
            }
            (columns, rows, truncated)
        };
        let _ = tx.rollback().await;
        Ok(Rows {
            columns: columns.unwrap_or_default(),
            rows,
            truncated,
        })
    })
    .await
    .unwrap_or(Err(QueryError::Timeout(timeout.as_millis() as u64)));
    drop(client);
    driver.abort();
    result
}

fn failed(e: tokio_postgres::Error) -> QueryError {
    match e.as_db_error() {
        // 25006: read_only_sql_transaction; 57014: query_canceled (timeout).
        Some(db) if db.code().code() == "25006" => QueryError::NotARead(db.message().to_owned()),
        Some(db) if db.code().code() == "57014" => QueryError::Timeout(0),
        Some(db) => QueryError::Failed(db.message().to_owned()),
        None => QueryError::Unavailable(e.to_string()),
    }
}

fn to_json(row: &Row) -> Result<Map<String, Value>, QueryError> {
    let mut object = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let t = column.type_();
        let get = |e: Box<dyn std::error::Error + Sync + Send>| {
            QueryError::Failed(format!("{}: {e}", column.name()))
        };
        let value = match *t {
            Type::BOOL => json!(
                row.try_get::<_, Option<bool>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::INT2 => json!(
                row.try_get::<_, Option<i16>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::INT4 => json!(
                row.try_get::<_, Option<i32>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::INT8 => json!(
                row.try_get::<_, Option<i64>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::OID => json!(
                row.try_get::<_, Option<u32>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::FLOAT4 => json!(
                row.try_get::<_, Option<f32>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::FLOAT8 => json!(
                row.try_get::<_, Option<f64>>(i)
                    .map_err(|e| get(e.into()))?
            ),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                json!(
                    row.try_get::<_, Option<String>>(i)
                        .map_err(|e| get(e.into()))?
                )
            }
            Type::JSON | Type::JSONB => row
                .try_get::<_, Option<Value>>(i)
                .map_err(|e| get(e.into()))?
                .unwrap_or(Value::Null),
            Type::NUMERIC => json!(
                row.try_get::<_, Option<Numeric>>(i)
                    .map_err(|e| get(e.into()))?
                    .map(|n| n.0)
            ),
            Type::TIMESTAMPTZ => json!(
                row.try_get::<_, Option<time::OffsetDateTime>>(i)
                    .map_err(|e| get(e.into()))?
                    .and_then(|t| t
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok())
            ),
            Type::TIMESTAMP => json!(
                row.try_get::<_, Option<time::PrimitiveDateTime>>(i)
                    .map_err(|e| get(e.into()))?
                    .map(|t| t.to_string())
            ),
            Type::DATE => json!(
                row.try_get::<_, Option<time::Date>>(i)
                    .map_err(|e| get(e.into()))?
                    .map(|d| d.to_string())
            ),
            _ => {
                return Err(QueryError::Failed(format!(
                    "column {:?} has type {t}, which the data agent does not convert; cast it, e.g. `{}::text`",
                    column.name(),
                    column.name()
                )));
            }
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(object)
}

/// PostgreSQL NUMERIC as an exact decimal string (JSON numbers would round).
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // Binary format: ndigits, weight, sign, dscale (i16/u16 each), then
        // ndigits base-10000 digits.
        let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated numeric".into())
        };
        let ndigits = word(0)? as usize;
        let weight = word(1)? as i16 as i32;
        let sign = word(2)?;
        let dscale = word(3)? as usize;
        if sign == 0xC000 {
            return Ok(Self("NaN".into()));
        }
        let digits: Vec<u16> = (0..ndigits)
            .map(|i| word(4 + i))
            .collect::<Result<_, _>>()?;
        let mut int_part = String::new();
        for w in 0..=weight.max(-1) {
            let d = digits.get(w as usize).copied().unwrap_or(0);
            if int_part.is_empty() {
                int_part = d.to_string();
            } else {
                int_part.push_str(&format!("{d:04}"));
            }
        }
        if int_part.is_empty() {
            int_part.push('0');
        }
        let mut frac = String::new();
        let mut w = weight + 1;
        while frac.len() < dscale {
            let d = if w < 0 {
                0
            } else {
                digits.get(w as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            w += 1;
        }
        frac.truncate(dscale);
        let mut text = if sign == 0x4000 {
            format!("-{int_part}")
        } else {
            int_part
        };
        if dscale > 0 {
            text.push('.');
            text.push_str(&frac);
        }
        Ok(Self(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}
