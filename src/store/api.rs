//! What the server API keeps: idempotency keys with their answers, and token revocations.

use super::*;

/// What an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// New: the request goes ahead (finish it with [`Store::idempotency_finish`], or give the
    /// key back with [`Store::idempotency_abandon`]).
    New,
    /// Answered before, with this status and body.
    Replay(u16, String),
    /// The first request with this key is still being answered.
    InFlight,
    /// The key was used with another request.
    Mismatch,
}

/// A token revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Whose tokens (0: by `jti` alone).
    pub user_id: u64,
    /// Tokens issued before this Unix ms are refused (0: none by time).
    pub before_ms: u64,
    /// Or the token with this `jti` ("" when by time).
    pub jti: String,
}

/// How long a request that never finished holds its idempotency key.
pub(super) const IN_FLIGHT_MS: u64 = 60_000;

impl Store {
    /// Takes `key` (of API key `key_id`) for a request whose hash is `hash`, at `now_ms`;
    /// keys older than `ttl_ms` are gone (a new request may take them).
    pub async fn idempotency_begin(
        &self,
        key_id: &str,
        key: &str,
        hash: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<IdempotencyBegin> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let found = sqlx::query(
                "SELECT request_hash, status, response, created_at FROM api_idempotency WHERE key_id = $1 AND idem_key = $2",
            )
            .bind(key_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = found {
                let created: i64 = row.try_get("created_at")?;
                let status: i64 = row.try_get("status")?;
                // An answer is kept for `ttl_ms`; a request that never finished (its node
                // died, or its caller went away mid-answer) holds the key for a minute.
                let held = if status == 0 { IN_FLIGHT_MS.min(ttl_ms) } else { ttl_ms };
                if u(created).saturating_add(held) > now_ms {
                    let same = row.try_get::<String, _>("request_hash")? == hash;
                    let answer = match (same, status) {
                        (false, _) => IdempotencyBegin::Mismatch,
                        (true, 0) => IdempotencyBegin::InFlight,
                        (true, s) => IdempotencyBegin::Replay(
                            u16::try_from(s).unwrap_or(500),
                            row.try_get::<Option<String>, _>("response")?.unwrap_or_default(),
                        ),
                    };
                    tx.rollback().await?;
                    return Ok(answer);
                }
                sqlx::query("DELETE FROM api_idempotency WHERE key_id = $1 AND idem_key = $2")
                    .bind(key_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO api_idempotency (key_id, idem_key, request_hash, status, response, created_at) VALUES ($1, $2, $3, 0, NULL, $4)",
            )
            .bind(key_id)
            .bind(key)
            .bind(hash)
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(IdempotencyBegin::New)
        })
        .await
    }

    /// Keeps the answer to the request that took `key`.
    pub async fn idempotency_finish(&self, key_id: &str, key: &str, status: u16, response: &str) -> Result<()> {
        self.deadline(async move {
            sqlx::query("UPDATE api_idempotency SET status = $3, response = $4 WHERE key_id = $1 AND idem_key = $2")
                .bind(key_id)
                .bind(key)
                .bind(i64::from(status))
                .bind(response)
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        })
        .await
    }

    /// Gives `key` back (the request failed in a way a retry may fix).
    pub async fn idempotency_abandon(&self, key_id: &str, key: &str) -> Result<()> {
        self.deadline(async move {
            sqlx::query("DELETE FROM api_idempotency WHERE key_id = $1 AND idem_key = $2")
                .bind(key_id)
                .bind(key)
                .execute(&mut *self.conn().await?)
                .await?;
            Ok(())
        })
        .await
    }

    /// Forgets idempotency keys created before `before_ms`; how many.
    pub async fn prune_idempotency(&self, before_ms: u64) -> Result<u64> {
        self.deadline(async move {
            Ok(sqlx::query("DELETE FROM api_idempotency WHERE created_at < $1")
                .bind(i(before_ms))
                .execute(&mut *self.conn().await?)
                .await?
                .rows_affected())
        })
        .await
    }

    /// Records a revocation (by time: the later instant of this and any earlier one wins).
    pub async fn revoke(&self, r: &Revocation, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO token_revocations (user_id, before_ms, jti, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, jti) DO UPDATE SET before_ms = CASE WHEN excluded.before_ms > token_revocations.before_ms \
                 THEN excluded.before_ms ELSE token_revocations.before_ms END",
            )
            .bind(i(r.user_id))
            .bind(i(r.before_ms))
            .bind(&r.jti)
            .bind(i(now_ms))
            .execute(&mut *self.conn().await?)
            .await?;
            Ok(())
        })
        .await
    }

    /// Every revocation (a node loads them at start and keeps them current from the bus).
    pub async fn revocations(&self) -> Result<Vec<Revocation>> {
        self.deadline(async move {
            sqlx::query("SELECT user_id, before_ms, jti FROM token_revocations")
                .fetch_all(&mut *self.conn().await?)
                .await?
                .iter()
                .map(|r| {
                    Ok(Revocation {
                        user_id: u(r.try_get("user_id")?),
                        before_ms: u(r.try_get("before_ms")?),
                        jti: r.try_get("jti")?,
                    })
                })
                .collect()
        })
        .await
    }
}
