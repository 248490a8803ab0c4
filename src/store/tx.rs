//! The store's write transactions: plain BEGIN/COMMIT/ROLLBACK on a pooled connection that
//! is never returned to the pool in an unknown state.

use super::*;

/// How long an open transaction's background rollback may take before its connection is
/// closed instead (the database then rolls back on its own).
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(5);

/// A write transaction that never leaves a pooled connection inside a transaction.
///
/// Why not `sqlx::Transaction`: when a statement or `COMMIT` fails on SQLite (a full disk,
/// `SQLITE_FULL`), SQLite may already have rolled the transaction back, so sqlx's own
/// `ROLLBACK` fails and its transaction-depth counter stays at 1 on a connection that is
/// back in autocommit. The next "transaction" on that connection is then a `SAVEPOINT`, and
/// after another failure a `ROLLBACK TO` that leaves a real transaction open for good: every
/// later "commit" on that connection only released a savepoint — acknowledged, visible to
/// that connection, never durable, and holding SQLite's write lock ("database is locked").
/// Here `BEGIN`/`COMMIT`/`ROLLBACK` are plain statements (sqlx's counter stays 0), and a
/// connection whose `ROLLBACK` fails, or whose transaction was abandoned mid-way (an error
/// path, a deadline), is rolled back in the background or closed — never reused in an
/// unknown state.
pub(super) struct Tx {
    /// `None` only after the transaction ended.
    pub(super) conn: Option<super::lend::Conn>,
    /// Woken once the transaction committed (it wrote webhook deliveries).
    pub(super) wake: Option<super::hooks::Wake>,
}

impl Tx {
    pub(super) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        // Invariant: `conn` is taken only by `commit`/`rollback`, which consume `self`.
        self.conn.as_mut().expect("transaction still open")
    }

    /// Commits; on failure the transaction is rolled back (or its connection closed).
    pub(super) async fn commit(mut self) -> Result<()> {
        use sqlx::Executor;
        let mut conn = self.conn.take().expect("transaction still open");
        match conn.execute("COMMIT").await {
            Ok(_) => {
                if let Some(w) = self.wake.take() {
                    w.fire();
                }
                Ok(())
            }
            Err(e) => {
                end_abandoned(conn).await;
                Err(e.into())
            }
        }
    }

    /// Rolls back (or closes the connection if that fails).
    pub(super) async fn rollback(mut self) -> Result<()> {
        if let Some(conn) = self.conn.take() {
            end_abandoned(conn).await;
        }
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        // Invariant: as in `Tx::conn`.
        self.conn.as_ref().expect("transaction still open")
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn()
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Abandoned by an error path or a deadline: roll back off the caller's path.
        let Some(conn) = self.conn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(end_abandoned(conn));
            }
            Err(_) => conn.close(),
        }
    }
}

/// Rolls back a transaction whose outcome is unknown; a connection that cannot confirm it
/// is out of the transaction is closed (the database rolls back a closed connection's work).
async fn end_abandoned(mut conn: super::lend::Conn) {
    use sqlx::Executor;
    match tokio::time::timeout(ROLLBACK_DEADLINE, conn.execute("ROLLBACK")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ROLLBACK failed; closing the connection");
            conn.close();
        }
        Err(_) => {
            tracing::warn!("ROLLBACK did not finish in time; closing the connection");
            conn.close();
        }
    }
}
