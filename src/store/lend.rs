//! Lending SQLite connections without sqlx's round trip on their return.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own: every statement is a
//! message to that thread and a wake-up back (two thread switches, ~30 µs of CPU on the
//! machines we measure on). Its pool adds one more such round trip each time a connection
//! comes back — a `ping`, to flush whatever an abandoned call left queued — and a spawned
//! task to run it. A store call that runs one statement thus cost two round trips; a
//! session's `Ready` (a dozen reads) twice as many as it needs.
//!
//! Here connections taken from the pool stay out of it between calls, in [`Lender`]'s
//! idle list, and go back there when a [`Conn`] drops: no ping, no task. That is safe for
//! SQLite because its worker runs one command after another: a call abandoned mid-way
//! (its future dropped) leaves at most a statement the worker finishes or stops on its
//! own before the next caller's, and a transaction left open is ended by [`super::tx`]'s
//! `Tx` before its connection is lent again. A connection whose worker died answers every
//! statement with an error instead of a result: when a call fails that way
//! ([`Lender::failed`]) every connection lent before it is closed instead of kept.
//!
//! PostgreSQL connections are not kept: over a network an idle connection can be cut, and
//! the pool's test on lending finds that out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::pool::PoolConnection;

/// The connections out of the pool and not in use.
#[derive(Debug)]
pub(super) struct Lender {
    idle: std::sync::Mutex<Vec<PoolConnection<sqlx::Any>>>,
    /// One permit per connection the pool may open: a caller waits here, not in the pool
    /// (a connection coming back to `idle` would never wake a caller waiting in the pool).
    permits: Arc<tokio::sync::Semaphore>,
    /// Bumped when a call failed in a way that may mean a dead connection: connections
    /// lent under an older generation are closed when they come back.
    generation: AtomicU64,
    /// Set by [`Lender::close`]: nothing is kept from then on.
    closed: AtomicBool,
}

impl Lender {
    /// Lends at most `connections` at once (the pool's size).
    pub(super) fn new(connections: u32) -> Lender {
        Lender {
            idle: Default::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(connections as usize)),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// A connection: a kept one, or a new one from `pool` (waits while all are lent).
    pub(super) async fn lend(self: &Arc<Self>, pool: &sqlx::AnyPool) -> sqlx::Result<Conn> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // Read before the connection is taken: a failure after this bumps it, and the
        // connection is then closed on its return.
        let generation = self.generation.load(Ordering::Acquire);
        let kept = self.idle().pop();
        let conn = match kept {
            Some(c) => c,
            None => pool.acquire().await?,
        };
        Ok(Conn {
            conn: Some(conn),
            home: Some((self.clone(), generation)),
            _permit: Some(permit),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PoolConnection<sqlx::Any>>> {
        // A panic while holding this lock leaves only a list of connections behind.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call failed in a way a dead connection would fail (not a database's answer such
    /// as a constraint, and not a timeout): close every kept connection, and every lent one
    /// when it comes back. The pool opens new ones as they are needed.
    pub(super) fn failed(&self, e: &sqlx::Error) {
        if !matches!(
            e,
            sqlx::Error::WorkerCrashed | sqlx::Error::Io(_) | sqlx::Error::Protocol(_)
        ) {
            return;
        }
        tracing::warn!(error = %e, "a store connection failed: its connections are opened again");
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped: Vec<_> = std::mem::take(&mut *self.idle());
        for mut c in dropped {
            c.close_on_drop();
        }
    }

    /// Keeps nothing from now on; the kept connections go back to the pool (which is then
    /// closed by the caller, and waits for them).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        drop(std::mem::take(&mut *self.idle()));
    }

    /// How many connections are kept (tests).
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.idle().len()
    }
}

/// A connection lent for one store call or one transaction.
#[derive(Debug)]
pub(super) struct Conn {
    /// `None` only once taken by [`Conn::close`] or on drop.
    conn: Option<PoolConnection<sqlx::Any>>,
    /// Where it goes back, and the generation it was lent under (`None`: the pool's).
    home: Option<(Arc<Lender>, u64)>,
    /// Released after the connection is back (fields drop after `Drop::drop`).
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Conn {
    /// A connection of the pool's own (returned to the pool when dropped).
    pub(super) fn pooled(conn: PoolConnection<sqlx::Any>) -> Conn {
        Conn {
            conn: Some(conn),
            home: None,
            _permit: None,
        }
    }

    /// Closes the connection instead of keeping it (its state is unknown).
    pub(super) fn close(mut self) {
        if let Some(mut c) = self.conn.take() {
            c.close_on_drop();
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        // Invariant: `conn` is taken only by `close` and `drop`, which consume the `Conn`.
        self.conn.as_ref().expect("connection still lent")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // Invariant: as in `deref`.
        self.conn.as_mut().expect("connection still lent")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let Some((home, generation)) = &self.home else { return };
        if home.closed.load(Ordering::Acquire) {
            return;
        }
        if home.generation.load(Ordering::Acquire) != *generation {
            conn.close_on_drop();
            return;
        }
        home.idle().push(conn);
    }
}
