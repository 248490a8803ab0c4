//! Persistent state: users, guilds, roles, members, invites, channels, overwrites, DMs,
//! messages, reactions, the channel event log and read states.
//!
//! One implementation serves both backends through `sqlx::Any`: SQLite (default: a file
//! under `data/`, WAL) and PostgreSQL (`--database postgres://…`). The schemas differ only in
//! column types (`migrations/sqlite`, `migrations/postgres`); every query is the same text on
//! both, with ids and times as `i64` — so there is one store to test, not two that drift. The
//! conformance suite (`tests/store.rs`) runs it against both backends.
//!
//! Ordering guarantee: every channel event takes the channel's next `seq` in the same
//! transaction that stores it (`UPDATE channels SET last_seq = last_seq + 1 … RETURNING`,
//! which locks the channel row on PostgreSQL and takes SQLite's write lock first thing).
//!
//! Layout: this file holds the pool, its options and deadlines; one file per aggregate
//! holds its queries — `guilds` (users, guilds, members, invites, roles), `channels`
//! (channels, overwrites, DMs), `messages` (messages, reactions, history, the event log,
//! read states), `social` (relationships, mutes, notifications), `hooks` (the webhook
//! event log, endpoints, deliveries, leases), `keys` (the secrets nodes share: TLS ticket
//! and stateless-reset keys) — and `tx` the write transaction every
//! multi-statement change runs in.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use quaver_proto::codec::encode_payload;
use quaver_proto::{
    Channel, ChannelKind, EventBody, Guild, Invite, Member, Mentions, Message, MuteTarget, Notification,
    NotificationKind, Overwrite, OverwriteTarget, Reaction, ReadState, Relationship, RelationshipKind, Role,
};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod api;
mod channels;
mod guilds;
mod hooks;
mod keys;
mod lend;
mod messages;
mod social;
mod tx;

use tx::Tx;

pub use api::{IdempotencyBegin, Revocation};
pub use hooks::{
    Attempted, Delivery, Due, Endpoint, EndpointFilter, EndpointSecret, HookEvent, HookSink, LoggedEvent, PARTITIONS,
    partition, state as delivery_state,
};

/// Store failures. Domain refusals are distinct variants so the chat layer can map each to
/// its request error code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist.
    #[error("not found")]
    NotFound,
    /// The invite is unknown, used up or expired.
    #[error("invalid invite")]
    InvalidInvite,
    /// The user is banned from the guild.
    #[error("banned")]
    Banned,
    /// The reply target is not in the channel.
    #[error("invalid reply target")]
    InvalidReply,
    /// Too many distinct reactions on the message.
    #[error("too many reactions")]
    TooManyReactions,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer within the store's deadline. The operation may or may
    /// not have taken effect (a commit can land just after the deadline): callers answer
    /// "unavailable, retry", and a retried send is deduplicated by its nonce.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Most distinct reactions on one message.
pub const MAX_REACTIONS: i64 = 20;

/// How SQLite makes a commit durable (`PRAGMA synchronous`, WAL mode).
///
/// The default is `Normal`, measured: with `Full` the WAL fsync (0.34 ms alone here, far
/// more under load) lands inside each channel's publish lock, so one busy channel serializes
/// on it — at F1 (200 sends/s into one channel) p50 send→receive went from 0.1 s to 4–7 s and
/// server CPU per delivery doubled (events stopped sharing packets; bench/RESULTS.md). Group
/// commit (many sends, one fsync) would make `Full` affordable; until then it is opt-in.
/// PostgreSQL (the cluster store) commits durably by its own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged message survives a power loss or an
    /// OS crash too.
    Full,
    /// fsync at checkpoints: a crash of the process (SIGKILL, panic, OOM) loses nothing
    /// acknowledged; a power loss or OS crash may lose the commits since the last checkpoint
    /// (a checkpoint runs every ~1,000 WAL pages, 4 MB of writes).
    Normal,
}

/// Store settings (TOML `[store]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Deadline of every store call (and of getting a connection from the pool). Default
    /// 5 s: far above a healthy query, short enough that a client hears `UNAVAILABLE`
    /// instead of waiting on a database that holds locks or does not answer.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub timeout: Duration,
    /// SQLite durability. Default `normal` (see [`Synchronous`] for why and what it risks).
    pub sqlite_synchronous: Synchronous,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            sqlite_synchronous: Synchronous::Normal,
        }
    }
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// SQLite: connections kept out of the pool between calls ([`lend`]).
    lender: Option<std::sync::Arc<lend::Lender>>,
    backend: Backend,
    timeout: Duration,
    /// Unix ms of the last call that missed its deadline (0: none), for readiness.
    last_timeout_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Which webhook events are recorded, and the delivery task's wake-up.
    hooks: std::sync::Arc<HookSink>,
}

/// Everything permission checks and fan-out need about one guild.
#[derive(Debug, Clone)]
pub struct GuildState {
    /// The guild.
    pub guild: Guild,
    /// Roles, `@everyone` (id = guild id) included.
    pub roles: Vec<Role>,
    /// Member → role ids.
    pub members: HashMap<u64, Vec<u64>>,
    /// Channels with their overwrites.
    pub channels: Vec<Channel>,
    /// Member → end of their timeout (Unix ms), for timeouts that had not ended when loaded.
    pub timeouts: HashMap<u64, u64>,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Snowflake id to use if it is new.
    pub id: u64,
    /// Channel.
    pub channel_id: u64,
    /// Author.
    pub author_id: u64,
    /// Author's nonce.
    pub nonce: u64,
    /// Validated content.
    pub content: String,
    /// Reply target.
    pub reply_to: Option<u64>,
    /// Parsed mentions.
    pub mentions: Mentions,
    /// Now (Unix ms).
    pub now_ms: u64,
}

/// A guild channel to create.
#[derive(Debug, Clone, Copy)]
pub struct NewChannel<'a> {
    /// Snowflake id.
    pub id: u64,
    /// Guild.
    pub guild: u64,
    /// Text or voice.
    pub kind: ChannelKind,
    /// Name.
    pub name: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Voice: most participants (0 = no limit).
    pub user_limit: u32,
}

/// A stored channel event: its seq and its encoded `EventBody` (what fan-out sends).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The channel's seq for it.
    pub seq: u64,
    /// `codec::encode_payload(&EventBody)`.
    pub event: Vec<u8>,
}

fn i(v: u64) -> i64 {
    v as i64
}
fn u(v: i64) -> u64 {
    v as u64
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || d.code().is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}

/// Whether the database gave up waiting (pool exhausted, SQLite busy, a PostgreSQL lock
/// or statement timeout): to the caller the same as a missed deadline.
fn is_lock_wait(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED (and their extended codes, low byte);
        // PostgreSQL: 55P03 lock_not_available, 57014 query_canceled (statement_timeout).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c == "55P03" || c == "57014" || c.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))),
        _ => false,
    }
}

impl Store {
    /// Opens with default options (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Store> {
        Self::open_with(url, &StoreOptions::default()).await
    }

    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open_with(url: &str, opt: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        if backend == Backend::Sqlite
            && let Some(path) = url.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p))
            && let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        }
        let opts = AnyConnectOptions::from_str(url)?;
        let synchronous = opt.sqlite_synchronous;
        let timeout_ms = opt.timeout.as_millis().max(1) as u64;
        let connections = if backend == Backend::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time; a few connections serve concurrent reads.
            .max_connections(connections)
            // sqlx pings a connection before lending it (one round trip to SQLite's worker
            // thread: two thread wake-ups, ~30 µs of CPU on this machine, for every store
            // call). A SQLite connection is a file handle in this process — nothing can sever
            // it between uses — and a failing statement ends its transaction or connection
            // anyway (`Tx`). A PostgreSQL connection can be cut by the network while idle:
            // it is still tested.
            .test_before_acquire(backend != Backend::Sqlite)
            .acquire_timeout(opt.timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    match backend {
                        Backend::Sqlite => {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute(match synchronous {
                                Synchronous::Full => "PRAGMA synchronous = FULL",
                                Synchronous::Normal => "PRAGMA synchronous = NORMAL",
                            })
                            .await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            // A writer waits for the lock a little longer than the caller
                            // does: the caller's deadline is what fires (and is reported).
                            let ms = timeout_ms + 1000;
                            conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {ms}")))
                                .await?;
                        }
                        Backend::Postgres => {
                            // The server gives up shortly after the client did, so a
                            // statement stuck behind a lock does not hold its backend on.
                            let ms = timeout_ms + 1000;
                            conn.execute(sqlx::AssertSqlSafe(format!("SET statement_timeout = {ms}")))
                                .await?;
                            conn.execute(sqlx::AssertSqlSafe(format!("SET lock_timeout = {ms}")))
                                .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        let store = Store {
            pool,
            lender: (backend == Backend::Sqlite).then(|| std::sync::Arc::new(lend::Lender::new(connections))),
            backend,
            timeout: opt.timeout,
            last_timeout_ms: Default::default(),
            hooks: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("migrations/sqlite")
                    .run(&mut *self.conn().await?)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("migrations/postgres")
                    .run(&mut *self.conn().await?)
                    .await?
            }
        }
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads and then writes would otherwise fail
    /// with `SQLITE_BUSY_SNAPSHOT` when another writer committed in between — the busy
    /// timeout cannot help it, the snapshot is simply stale.
    async fn begin(&self) -> Result<Tx> {
        use sqlx::Executor;
        let conn = self.conn().await?;
        // Owned by the `Tx` before BEGIN runs: if BEGIN fails or is cancelled, its drop
        // rolls back whatever state the connection is in.
        let mut tx = Tx {
            conn: Some(conn),
            wake: None,
        };
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        tx.conn().execute(begin).await?;
        Ok(tx)
    }

    /// A connection for one call: a kept one (SQLite), or one from the pool.
    async fn conn(&self) -> Result<lend::Conn> {
        match &self.lender {
            Some(l) => Ok(l.lend(&self.pool).await?),
            None => Ok(lend::Conn::pooled(self.pool.acquire().await?)),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The deadline of every store call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        if let Some(l) = &self.lender {
            l.close();
        }
        self.pool.close().await;
    }

    /// Whether the database answers within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        let call = async {
            let mut c = self.conn().await?;
            sqlx::query("SELECT 1").execute(&mut *c).await?;
            Ok::<_, StoreError>(())
        };
        matches!(tokio::time::timeout(limit, call).await, Ok(Ok(())))
    }

    /// Unix ms of the last store call that missed its deadline, if any.
    pub fn last_timeout_ms(&self) -> Option<u64> {
        match self.last_timeout_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Runs one store call under the store's deadline. Dropping a call mid-way is safe:
    /// an open [`Tx`] rolls back in the background, and a connection is never reused
    /// inside a transaction.
    async fn deadline<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let r = tokio::time::timeout(self.timeout, call).await;
        if let (Ok(Err(StoreError::Db(e))), Some(l)) = (&r, &self.lender) {
            l.failed(e);
        }
        match r {
            Ok(Err(StoreError::Db(e))) if is_lock_wait(&e) => {
                self.timed_out();
                Err(StoreError::Timeout(self.timeout))
            }
            Ok(r) => r,
            Err(_) => {
                self.timed_out();
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn timed_out(&self) {
        self.last_timeout_ms
            .store(crate::ids::now_ms().max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The highest snowflake stored in any table that holds them (0 when empty): a node
    /// restarting never issues an id at or below it, whatever its clock says.
    pub async fn max_snowflake(&self) -> Result<u64> {
        self.deadline(async move {
            let mut max = 0u64;
            for table in ["messages", "guilds", "channels", "roles", "notifications"] {
                let q = format!("SELECT COALESCE(MAX(id), 0) AS m FROM {table}");
                let m: i64 = sqlx::query(sqlx::AssertSqlSafe(q))
                    .fetch_one(&mut *self.conn().await?)
                    .await?
                    .try_get("m")?;
                max = max.max(u(m));
            }
            Ok(max)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite store in a directory of its own (removed at the end).
    async fn sqlite() -> (std::path::PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("quaver-lend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = format!("sqlite://{}/q.db?mode=rwc", dir.display());
        let store = Store::open(&url).await.expect("the store opens");
        (dir, store)
    }

    #[tokio::test]
    async fn sqlite_connections_are_kept_between_calls_and_dropped_after_a_dead_one() {
        let (dir, store) = sqlite().await;
        let lender = store.lender.clone().expect("SQLite keeps its connections");
        // One call after another needs one connection, kept between them.
        for n in 0..50u64 {
            store.upsert_user(n + 1, "someone", n).await.expect("a write");
            assert_eq!(store.guild_ids_of(n + 1).await.expect("a read"), Vec::<u64>::new());
        }
        assert_eq!(lender.kept(), 1);
        // Calls at once take more (those beyond the pool's size wait for one to come
        // back), and all come back.
        let calls: Vec<_> = (0..16u64).map(|n| store.guild_ids_of(n)).collect();
        for r in futures_util::future::join_all(calls).await {
            r.expect("a read");
        }
        let at_once = lender.kept();
        assert!((1..=4).contains(&at_once), "{at_once} kept");
        // A transaction abandoned by an error leaves no transaction on the kept connection:
        // a reply to a message that does not exist fails inside the send's transaction.
        let bad = store
            .send_message(NewMessage {
                id: 10,
                channel_id: 999,
                author_id: 1,
                nonce: 1,
                content: "x".into(),
                reply_to: Some(12345),
                mentions: Mentions::default(),
                now_ms: 1,
            })
            .await;
        assert!(bad.is_err());
        store
            .upsert_user(7, "after", 9)
            .await
            .expect("a write after the failed transaction");
        // A failure that may mean a dead connection: nothing lent before it is kept.
        lender.failed(&sqlx::Error::WorkerCrashed);
        assert_eq!(lender.kept(), 0);
        store
            .upsert_user(8, "again", 10)
            .await
            .expect("a write on a new connection");
        assert_eq!(lender.kept(), 1);
        // A database's own answer (a constraint, say) is not such a failure.
        lender.failed(&sqlx::Error::RowNotFound);
        assert_eq!(lender.kept(), 1);
        store.close().await;
        assert_eq!(lender.kept(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
