//! Secrets the nodes share and keep across restarts (`server_keys`): what `transport::keys`
//! seals TLS session tickets and answers stateless resets with.

use sqlx::Row;

use super::{Result, Store, i, u};

impl Store {
    /// The secret of `kind` for `period`: the one stored, or else `fresh`, stored now. Two
    /// nodes racing to create it both end with the same one (the first insert wins).
    pub async fn server_key(&self, kind: &str, period: u64, fresh: &[u8], now_ms: u64) -> Result<Vec<u8>> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO server_keys (kind, period, secret, created_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, period) DO NOTHING",
            )
            .bind(kind)
            .bind(i(period))
            .bind(fresh.to_vec())
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?;
            let row = sqlx::query("SELECT secret FROM server_keys WHERE kind = $1 AND period = $2")
                .bind(kind)
                .bind(i(period))
                .fetch_one(&mut *self.conn().await?)
                .await?;
            Ok(row.try_get::<Vec<u8>, _>("secret")?)
        })
        .await
    }

    /// The secrets of `kind` for periods `from` and later, oldest first.
    pub async fn server_keys_from(&self, kind: &str, from: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.deadline(async move {
            sqlx::query("SELECT period, secret FROM server_keys WHERE kind = $1 AND period >= $2 ORDER BY period")
                .bind(kind)
                .bind(i(from))
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| Ok((u(r.try_get("period")?), r.try_get::<Vec<u8>, _>("secret")?)))
                .collect()
        })
        .await
    }

    /// Erases the secrets of `kind` for periods before `before`; how many were erased.
    pub async fn erase_server_keys_before(&self, kind: &str, before: u64) -> Result<u64> {
        self.deadline(async move {
            Ok(sqlx::query("DELETE FROM server_keys WHERE kind = $1 AND period < $2")
                .bind(kind)
                .bind(i(before))
                .execute(&mut *self.conn().await?)
                .await?
                .rows_affected())
        })
        .await
    }
}
