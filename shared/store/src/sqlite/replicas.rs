//! What replicas of a service coordinate through: leases for work one
//! replica at a time must do, and the figures each replica reports.

use super::*;
use crate::stored::expiry;
use crate::{MAX_REPORTS_LISTED, ReplicaReport};

impl SqliteStore {
    pub(super) async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let (now, expires) = expiry(ttl);
        self.write(move |conn| {
            // One statement: the row is taken only when free, expired or ours.
            let taken = conn
                .execute(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
                    params![name, holder, expires, now],
                )
                .map_err(unavailable)?;
            Ok(taken == 1)
        })
        .await
    }

    pub(super) async fn put_report_row(
        &self,
        subject: &str,
        replica: &str,
        body: &Value,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (subject, replica, body) = (subject.to_owned(), replica.to_owned(), json_text(body)?);
        let (now, expires) = expiry(ttl);
        self.write(move |conn| {
            // Reports of replicas that stopped go with the next write.
            conn.execute("DELETE FROM reports WHERE expires_at <= ?1", params![now])
                .map_err(unavailable)?;
            conn.execute(
                "INSERT INTO reports (subject, replica, body, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (subject, replica) DO UPDATE SET body = excluded.body,
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                params![subject, replica, body, now, expires],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn report_rows(&self) -> Result<Vec<ReplicaReport>, StoreError> {
        let now = millis(OffsetDateTime::now_utc());
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT subject, replica, body, updated_at FROM reports
                     WHERE expires_at > ?1 ORDER BY subject, replica LIMIT ?2",
                )
                .map_err(unavailable)?;
            let limit = i64::try_from(MAX_REPORTS_LISTED).unwrap_or(i64::MAX);
            let mut rows = stmt.query(params![now, limit]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let text = |i: usize| row.get::<_, String>(i).map_err(unavailable);
                out.push(ReplicaReport {
                    subject: text(0)?,
                    replica: text(1)?,
                    body: parse_json(&text(2)?)?,
                    updated_at: from_millis(row.get(3).map_err(unavailable)?)?,
                });
            }
            Ok(out)
        })
        .await
    }
}
