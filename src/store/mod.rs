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
    backend: Backend,
    timeout: Duration,
    /// Unix ms of the last call that missed its deadline (0: none), for readiness.
    last_timeout_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
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

fn kind_code(k: ChannelKind) -> i64 {
    match k {
        ChannelKind::Text => 0,
        ChannelKind::Voice => 1,
        ChannelKind::Dm => 2,
        ChannelKind::GroupDm => 3,
    }
}
fn kind_of(c: i64) -> ChannelKind {
    match c {
        1 => ChannelKind::Voice,
        2 => ChannelKind::Dm,
        3 => ChannelKind::GroupDm,
        _ => ChannelKind::Text,
    }
}

fn mentions_text(m: &Mentions) -> String {
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    format!("{}|{}|{}", join(&m.users), join(&m.roles), u8::from(m.everyone))
}
fn mentions_parse(s: &str) -> Mentions {
    let mut parts = s.split('|');
    let ids = |p: Option<&str>| -> Vec<u64> {
        p.unwrap_or_default()
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let users = ids(parts.next());
    let roles = ids(parts.next());
    let everyone = parts.next() == Some("1");
    Mentions { users, roles, everyone }
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

fn message_of(r: &AnyRow) -> Result<Message> {
    Ok(Message {
        id: u(r.try_get("id")?),
        channel_id: u(r.try_get("channel_id")?),
        author_id: u(r.try_get("author_id")?),
        nonce: u(r.try_get("nonce")?),
        content: r.try_get("content")?,
        reply_to: r.try_get::<Option<i64>, _>("reply_to")?.map(u),
        mentions: mentions_parse(&r.try_get::<String, _>("mentions")?),
        seq: u(r.try_get("seq")?),
        created_at_ms: u(r.try_get("created_at")?),
        edited_at_ms: r.try_get::<Option<i64>, _>("edited_at")?.map(u),
        deleted: r.try_get::<i64, _>("deleted")? != 0,
        reactions: Vec::new(),
    })
}

fn channel_of(r: &AnyRow) -> Result<Channel> {
    Ok(Channel {
        id: u(r.try_get("id")?),
        guild_id: r.try_get::<Option<i64>, _>("guild_id")?.map(u),
        kind: kind_of(r.try_get("kind")?),
        name: r.try_get("name")?,
        topic: r.try_get("topic")?,
        last_seq: u(r.try_get("last_seq")?),
        overwrites: Vec::new(),
        recipients: Vec::new(),
        user_limit: r.try_get::<i64, _>("user_limit")? as u32,
    })
}

fn role_of(r: &AnyRow) -> Result<Role> {
    Ok(Role {
        id: u(r.try_get("id")?),
        guild_id: u(r.try_get("guild_id")?),
        name: r.try_get("name")?,
        permissions: u(r.try_get("permissions")?),
        position: r.try_get::<i64, _>("position")? as u32,
    })
}

const MSG_COLS: &str =
    "id, channel_id, author_id, nonce, content, reply_to, mentions, seq, created_at, edited_at, deleted";

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
struct Tx {
    /// `None` only after the transaction ended.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl Tx {
    fn conn(&mut self) -> &mut sqlx::pool::PoolConnection<sqlx::Any> {
        // Invariant: `conn` is taken only by `commit`/`rollback`, which consume `self`.
        self.conn.as_mut().expect("transaction still open")
    }

    /// Commits; on failure the transaction is rolled back (or its connection closed).
    async fn commit(mut self) -> Result<()> {
        use sqlx::Executor;
        let mut conn = self.conn.take().expect("transaction still open");
        match conn.execute("COMMIT").await {
            Ok(_) => Ok(()),
            Err(e) => {
                end_abandoned(conn).await;
                Err(e.into())
            }
        }
    }

    /// Rolls back (or closes the connection if that fails).
    async fn rollback(mut self) -> Result<()> {
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
        let Some(mut conn) = self.conn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(end_abandoned(conn));
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

/// Rolls back a transaction whose outcome is unknown; a connection that cannot confirm it
/// is out of the transaction is closed (the database rolls back a closed connection's work).
async fn end_abandoned(mut conn: sqlx::pool::PoolConnection<sqlx::Any>) {
    use sqlx::Executor;
    match tokio::time::timeout(ROLLBACK_DEADLINE, conn.execute("ROLLBACK")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "ROLLBACK failed; closing the connection");
            conn.close_on_drop();
        }
        Err(_) => {
            tracing::warn!("ROLLBACK did not finish in time; closing the connection");
            conn.close_on_drop();
        }
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
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time; a few connections serve concurrent reads.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
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
            backend,
            timeout: opt.timeout,
            last_timeout_ms: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await?,
        }
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads and then writes would otherwise fail
    /// with `SQLITE_BUSY_SNAPSHOT` when another writer committed in between — the busy
    /// timeout cannot help it, the snapshot is simply stale.
    async fn begin(&self) -> Result<Tx> {
        use sqlx::Executor;
        let conn = self.pool.acquire().await?;
        // Owned by the `Tx` before BEGIN runs: if BEGIN fails or is cancelled, its drop
        // rolls back whatever state the connection is in.
        let mut tx = Tx { conn: Some(conn) };
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        tx.conn().execute(begin).await?;
        Ok(tx)
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers within `limit`.
    pub async fn ping(&self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        )
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
        match tokio::time::timeout(self.timeout, call).await {
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

    // ----- users ---------------------------------------------------------------------

    /// Creates or renames a user from token claims.
    pub async fn upsert_user(&self, id: u64, name: &str, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO users (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at",
            )
            .bind(i(id))
            .bind(name)
            .bind(i(now_ms))
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    /// A user's name, if known.
    pub async fn user_name(&self, id: u64) -> Result<Option<String>> {
        self.deadline(async move {
            Ok(sqlx::query("SELECT name FROM users WHERE id = $1")
                .bind(i(id))
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<String, _>("name"))
                .transpose()?)
        })
        .await
    }

    // ----- guilds --------------------------------------------------------------------

    /// Creates a guild with its `@everyone` role (id = guild id), the owner as member and a
    /// `general` text channel (id `general_id`).
    pub async fn create_guild(
        &self,
        id: u64,
        general_id: u64,
        name: &str,
        owner: u64,
        everyone: u64,
        now_ms: u64,
    ) -> Result<Guild> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query("INSERT INTO guilds (id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)")
                .bind(i(id))
                .bind(name)
                .bind(i(owner))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)",
            )
            .bind(i(id))
            .bind(i(everyone))
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3)")
                .bind(i(id))
                .bind(i(owner))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, $2, 0, 'general', '', 0, 0, 0, 0, $3)",
            )
            .bind(i(general_id))
            .bind(i(id))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Guild {
                id,
                name: name.to_string(),
                owner_id: owner,
            })
        })
        .await
    }

    /// A guild.
    pub async fn guild(&self, id: u64) -> Result<Guild> {
        self.deadline(async move {
            let r = sqlx::query("SELECT id, name, owner_id FROM guilds WHERE id = $1")
                .bind(i(id))
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
            Ok(Guild {
                id: u(r.try_get("id")?),
                name: r.try_get("name")?,
                owner_id: u(r.try_get("owner_id")?),
            })
        })
        .await
    }

    /// Renames a guild.
    pub async fn rename_guild(&self, id: u64, name: &str) -> Result<Guild> {
        self.deadline(async move {
            let n = sqlx::query("UPDATE guilds SET name = $2 WHERE id = $1")
                .bind(i(id))
                .bind(name)
                .execute(&self.pool)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            self.guild(id).await
        })
        .await
    }

    /// Deletes a guild and everything in it.
    pub async fn delete_guild(&self, id: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Explicit, in dependency order: SQLite only cascades with foreign_keys on, and
            // being explicit keeps both backends identical.
            for q in [
                "DELETE FROM channel_events WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM reactions WHERE message_id IN (SELECT m.id FROM messages m JOIN channels c ON m.channel_id = c.id WHERE c.guild_id = $1)",
                "DELETE FROM messages WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM read_states WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM overwrites WHERE channel_id IN (SELECT id FROM channels WHERE guild_id = $1)",
                "DELETE FROM channels WHERE guild_id = $1",
                "DELETE FROM member_roles WHERE guild_id = $1",
                "DELETE FROM members WHERE guild_id = $1",
                "DELETE FROM roles WHERE guild_id = $1",
                "DELETE FROM bans WHERE guild_id = $1",
                "DELETE FROM invites WHERE guild_id = $1",
                "DELETE FROM guilds WHERE id = $1",
            ] {
                sqlx::query(q).bind(i(id)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Ids of the guilds `user` is in.
    pub async fn guild_ids_of(&self, user: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            let rows = sqlx::query("SELECT guild_id FROM members WHERE user_id = $1 ORDER BY guild_id")
                .bind(i(user))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(|r| Ok(u(r.try_get("guild_id")?))).collect()
        })
        .await
    }

    /// Everything about a guild that permission checks need.
    pub async fn guild_state(&self, id: u64) -> Result<GuildState> {
        self.deadline(async move {
            let guild = self.guild(id).await?;
            let roles = sqlx::query(
                "SELECT id, guild_id, name, permissions, position FROM roles WHERE guild_id = $1 ORDER BY position, id",
            )
            .bind(i(id))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(role_of)
            .collect::<Result<Vec<_>>>()?;
            let mut members: HashMap<u64, Vec<u64>> = HashMap::new();
            for r in sqlx::query("SELECT user_id FROM members WHERE guild_id = $1")
                .bind(i(id))
                .fetch_all(&self.pool)
                .await?
            {
                members.insert(u(r.try_get("user_id")?), Vec::new());
            }
            for r in sqlx::query("SELECT user_id, role_id FROM member_roles WHERE guild_id = $1")
                .bind(i(id))
                .fetch_all(&self.pool)
                .await?
            {
                if let Some(v) = members.get_mut(&u(r.try_get("user_id")?)) {
                    v.push(u(r.try_get("role_id")?));
                }
            }
            let channels = self.guild_channels(id).await?;
            Ok(GuildState {
                guild,
                roles,
                members,
                channels,
            })
        })
        .await
    }

    // ----- members, bans, invites ----------------------------------------------------

    /// Creates an invite.
    pub async fn create_invite(
        &self,
        code: &str,
        guild: u64,
        inviter: u64,
        max_uses: u32,
        expires_at: Option<u64>,
        now_ms: u64,
    ) -> Result<Invite> {
        self.deadline(async move {
            sqlx::query(
                "INSERT INTO invites (code, guild_id, inviter_id, max_uses, uses, expires_at, created_at) VALUES ($1, $2, $3, $4, 0, $5, $6)",
            )
            .bind(code)
            .bind(i(guild))
            .bind(i(inviter))
            .bind(i64::from(max_uses))
            .bind(expires_at.map(i))
            .bind(i(now_ms))
            .execute(&self.pool)
            .await?;
            Ok(Invite {
                code: code.to_string(),
                guild_id: guild,
                max_uses,
                expires_at_ms: expires_at,
            })
        })
        .await
    }

    /// Joins `user` to the invite's guild; returns the guild id and whether they were
    /// already a member (then the invite is not used up).
    pub async fn use_invite(&self, code: &str, user: u64, now_ms: u64) -> Result<(u64, bool)> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Take the use first (the write lock), then check it was valid.
            let n = sqlx::query(
                "UPDATE invites SET uses = uses + 1 WHERE code = $1 AND (max_uses = 0 OR uses < max_uses) \
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(code)
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::InvalidInvite);
            }
            let guild: i64 = sqlx::query("SELECT guild_id FROM invites WHERE code = $1")
                .bind(code)
                .fetch_one(&mut *tx)
                .await?
                .try_get("guild_id")?;
            let banned = sqlx::query("SELECT 1 FROM bans WHERE guild_id = $1 AND user_id = $2")
                .bind(guild)
                .bind(i(user))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if banned {
                return Err(StoreError::Banned);
            }
            let inserted = sqlx::query(
                "INSERT INTO members (guild_id, user_id, joined_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(guild)
            .bind(i(user))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Already a member: leave the invite's use count as it was.
                tx.rollback().await?;
                return Ok((u(guild), true));
            }
            tx.commit().await?;
            Ok((u(guild), false))
        })
        .await
    }

    /// Removes a member (leave or kick); with `ban`, also bans them.
    pub async fn remove_member(&self, guild: u64, user: u64, ban: Option<&str>, now_ms: u64) -> Result<bool> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            if let Some(reason) = ban {
                sqlx::query("INSERT INTO bans (guild_id, user_id, reason, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(i(guild))
                    .bind(i(user))
                    .bind(reason)
                    .bind(i(now_ms))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM member_roles WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM members WHERE guild_id = $1 AND user_id = $2")
                .bind(i(guild))
                .bind(i(user))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    /// Members of a guild with names, by user id after `after`.
    pub async fn members(&self, guild: u64, after: u64, limit: u32) -> Result<Vec<Member>> {
        self.deadline(async move {
            let rows = sqlx::query(
                "SELECT m.user_id, COALESCE(u.name, '') AS name FROM members m LEFT JOIN users u ON u.id = m.user_id \
                 WHERE m.guild_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
            )
            .bind(i(guild))
            .bind(i(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            let state = self.guild_state(guild).await?;
            rows.iter()
                .map(|r| {
                    let user_id = u(r.try_get("user_id")?);
                    Ok(Member {
                        user_id,
                        name: r.try_get("name")?,
                        roles: state.members.get(&user_id).cloned().unwrap_or_default(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Number of members.
    pub async fn member_count(&self, guild: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM members WHERE guild_id = $1")
                .bind(i(guild))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    // ----- roles ---------------------------------------------------------------------

    /// Creates a role at the bottom of the hierarchy (position 1, just above `@everyone`),
    /// moving every other role up one: whoever may manage roles can then manage the new
    /// one (Discord's rule; a role created on top would outrank its creator).
    pub async fn create_role(&self, id: u64, guild: u64, name: &str, permissions: u64) -> Result<Role> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query("UPDATE roles SET position = position + 1 WHERE guild_id = $1 AND id <> $1")
                .bind(i(guild))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO roles (id, guild_id, name, permissions, position) VALUES ($1, $2, $3, $4, 1)")
                .bind(i(id))
                .bind(i(guild))
                .bind(name)
                .bind(i(permissions))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Role {
                id,
                guild_id: guild,
                name: name.to_string(),
                permissions,
                position: 1,
            })
        })
        .await
    }

    /// Changes a role.
    pub async fn update_role(&self, guild: u64, id: u64, name: &str, permissions: u64) -> Result<Role> {
        self.deadline(async move {
            let r = sqlx::query(
                "UPDATE roles SET name = $3, permissions = $4 WHERE guild_id = $1 AND id = $2 \
                 RETURNING id, guild_id, name, permissions, position",
            )
            .bind(i(guild))
            .bind(i(id))
            .bind(name)
            .bind(i(permissions))
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
            role_of(&r)
        })
        .await
    }

    /// Gives or takes a role; the member and role must be in the guild.
    pub async fn set_member_role(&self, guild: u64, user: u64, role: u64, add: bool) -> Result<()> {
        self.deadline(async move {
            let ok = sqlx::query("SELECT 1 FROM members m JOIN roles r ON r.guild_id = m.guild_id WHERE m.guild_id = $1 AND m.user_id = $2 AND r.id = $3 AND r.id <> $1")
                .bind(i(guild))
                .bind(i(user))
                .bind(i(role))
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if !ok {
                return Err(StoreError::NotFound);
            }
            let q = if add {
                "INSERT INTO member_roles (guild_id, user_id, role_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM member_roles WHERE guild_id = $1 AND user_id = $2 AND role_id = $3"
            };
            sqlx::query(q)
                .bind(i(guild))
                .bind(i(user))
                .bind(i(role))
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    // ----- channels ------------------------------------------------------------------

    /// Creates a guild channel.
    pub async fn create_channel(&self, c: NewChannel<'_>, now_ms: u64) -> Result<Channel> {
        self.deadline(async move {
            let NewChannel {
                id,
                guild,
                kind,
                name,
                topic,
                user_limit,
            } = c;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, $7, 0, 0, $6)",
            )
            .bind(i(id))
            .bind(i(guild))
            .bind(kind_code(kind))
            .bind(name)
            .bind(topic)
            .bind(i(now_ms))
            .bind(i64::from(user_limit))
            .execute(&self.pool)
            .await?;
            self.channel(id).await
        })
        .await
    }

    /// A channel with its overwrites and recipients.
    pub async fn channel(&self, id: u64) -> Result<Channel> {
        self.deadline(async move {
            let r =
                sqlx::query("SELECT id, guild_id, kind, name, topic, last_seq, user_limit FROM channels WHERE id = $1")
                    .bind(i(id))
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let mut c = channel_of(&r)?;
            c.overwrites = self.overwrites(id).await?;
            if c.guild_id.is_none() {
                c.recipients =
                    sqlx::query("SELECT user_id FROM channel_recipients WHERE channel_id = $1 ORDER BY user_id")
                        .bind(i(id))
                        .fetch_all(&self.pool)
                        .await?
                        .iter()
                        .map(|r| Ok(u(r.try_get("user_id")?)))
                        .collect::<Result<_>>()?;
            }
            Ok(c)
        })
        .await
    }

    /// The current `last_seq` of each channel of a guild.
    pub async fn channel_seqs(&self, guild: u64) -> Result<HashMap<u64, u64>> {
        self.deadline(async move {
            sqlx::query("SELECT id, last_seq FROM channels WHERE guild_id = $1")
                .bind(i(guild))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok((u(r.try_get("id")?), u(r.try_get("last_seq")?))))
                .collect()
        })
        .await
    }

    /// A guild's channels with their overwrites.
    pub async fn guild_channels(&self, guild: u64) -> Result<Vec<Channel>> {
        self.deadline(async move {
            let rows = sqlx::query(
                "SELECT id, guild_id, kind, name, topic, last_seq, user_limit FROM channels WHERE guild_id = $1 ORDER BY position, id",
            )
            .bind(i(guild))
            .fetch_all(&self.pool)
            .await?;
            let mut out: Vec<Channel> = rows.iter().map(channel_of).collect::<Result<_>>()?;
            let ows = sqlx::query(
                "SELECT o.channel_id, o.target_kind, o.target_id, o.allow_bits, o.deny_bits FROM overwrites o \
                 JOIN channels c ON c.id = o.channel_id WHERE c.guild_id = $1",
            )
            .bind(i(guild))
            .fetch_all(&self.pool)
            .await?;
            for r in ows {
                let cid = u(r.try_get("channel_id")?);
                if let Some(c) = out.iter_mut().find(|c| c.id == cid) {
                    c.overwrites.push(overwrite_of(&r)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn overwrites(&self, channel: u64) -> Result<Vec<Overwrite>> {
        sqlx::query("SELECT target_kind, target_id, allow_bits, deny_bits FROM overwrites WHERE channel_id = $1 ORDER BY target_kind, target_id")
            .bind(i(channel))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(overwrite_of)
            .collect()
    }

    /// Deletes a channel and its messages.
    pub async fn delete_channel(&self, id: u64) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for q in [
                "DELETE FROM channel_events WHERE channel_id = $1",
                "DELETE FROM reactions WHERE message_id IN (SELECT id FROM messages WHERE channel_id = $1)",
                "DELETE FROM messages WHERE channel_id = $1",
                "DELETE FROM read_states WHERE channel_id = $1",
                "DELETE FROM overwrites WHERE channel_id = $1",
                "DELETE FROM channel_recipients WHERE channel_id = $1",
                "DELETE FROM dm_pairs WHERE channel_id = $1",
                "DELETE FROM channels WHERE id = $1",
            ] {
                sqlx::query(q).bind(i(id)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Sets (or with `None`, removes) an overwrite.
    pub async fn set_overwrite(&self, channel: u64, target: OverwriteTarget, bits: Option<(u64, u64)>) -> Result<()> {
        self.deadline(async move {
            let (kind, id) = match target {
                OverwriteTarget::Role(id) => (0i64, id),
                OverwriteTarget::Member(id) => (1i64, id),
            };
            match bits {
                Some((allow, deny)) => {
                    sqlx::query(
                        "INSERT INTO overwrites (channel_id, target_kind, target_id, allow_bits, deny_bits) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (channel_id, target_kind, target_id) DO UPDATE SET allow_bits = excluded.allow_bits, deny_bits = excluded.deny_bits",
                    )
                    .bind(i(channel))
                    .bind(kind)
                    .bind(i(id))
                    .bind(i(allow))
                    .bind(i(deny))
                    .execute(&self.pool)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM overwrites WHERE channel_id = $1 AND target_kind = $2 AND target_id = $3")
                        .bind(i(channel))
                        .bind(kind)
                        .bind(i(id))
                        .execute(&self.pool)
                        .await?;
                }
            }
            Ok(())
        })
        .await
    }

    // ----- DMs -----------------------------------------------------------------------

    /// The DM channel of two users, created with id `new_id` if there is none.
    pub async fn open_dm(&self, new_id: u64, a: u64, b: u64, now_ms: u64) -> Result<Channel> {
        self.deadline(async move {
            let (lo, hi) = (a.min(b), a.max(b));
            if let Some(r) = sqlx::query("SELECT channel_id FROM dm_pairs WHERE user_low = $1 AND user_high = $2")
                .bind(i(lo))
                .bind(i(hi))
                .fetch_optional(&self.pool)
                .await?
            {
                return self.channel(u(r.try_get("channel_id")?)).await;
            }
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, NULL, 2, '', '', 0, 0, 0, 0, $2)",
            )
            .bind(i(new_id))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            let paired = sqlx::query("INSERT INTO dm_pairs (user_low, user_high, channel_id) VALUES ($1, $2, $3)")
                .bind(i(lo))
                .bind(i(hi))
                .bind(i(new_id))
                .execute(&mut *tx)
                .await;
            match paired {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    // Opened concurrently by the other side: use theirs.
                    tx.rollback().await?;
                    return Box::pin(self.open_dm(new_id, a, b, now_ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
            for user in [lo, hi] {
                sqlx::query("INSERT INTO channel_recipients (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(i(new_id))
                    .bind(i(user))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.channel(new_id).await
        })
        .await
    }

    /// Creates a group DM of `owner` and `others`.
    pub async fn create_group_dm(
        &self,
        id: u64,
        owner: u64,
        others: &[u64],
        name: &str,
        now_ms: u64,
    ) -> Result<Channel> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, guild_id, kind, name, topic, position, user_limit, owner_id, last_seq, created_at) \
                 VALUES ($1, NULL, 3, $2, '', 0, 10, $3, 0, $4)",
            )
            .bind(i(id))
            .bind(name)
            .bind(i(owner))
            .bind(i(now_ms))
            .execute(&mut *tx)
            .await?;
            for user in std::iter::once(&owner).chain(others) {
                sqlx::query("INSERT INTO channel_recipients (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(i(id))
                    .bind(i(*user))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.channel(id).await
        })
        .await
    }

    /// DM and group DM channels of a user.
    pub async fn private_channels(&self, user: u64) -> Result<Vec<Channel>> {
        self.deadline(async move {
            let ids: Vec<u64> =
                sqlx::query("SELECT channel_id FROM channel_recipients WHERE user_id = $1 ORDER BY channel_id")
                    .bind(i(user))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| Ok(u(r.try_get("channel_id")?)))
                    .collect::<Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.channel(id).await?);
            }
            Ok(out)
        })
        .await
    }

    // ----- messages and the event log ------------------------------------------------

    /// Takes the channel's next seq and appends `event(seq)` to the log, in `tx`.
    async fn sequence(tx: &mut Tx, channel: u64, now_ms: u64, event: impl FnOnce(u64) -> EventBody) -> Result<Stored> {
        let seq: i64 = sqlx::query("UPDATE channels SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind(i(channel))
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_get("last_seq")?;
        let seq = u(seq);
        let bytes = encode_payload(&event(seq));
        sqlx::query("INSERT INTO channel_events (channel_id, seq, body, created_at) VALUES ($1, $2, $3, $4)")
            .bind(i(channel))
            .bind(i(seq))
            .bind(bytes.clone())
            .bind(i(now_ms))
            .execute(&mut **tx)
            .await?;
        Ok(Stored { seq, event: bytes })
    }

    /// The message an author sent with `nonce`, if any.
    pub async fn message_by_nonce(&self, author: u64, nonce: u64) -> Result<Option<Message>> {
        self.deadline(async move {
            let q = format!("SELECT {MSG_COLS} FROM messages WHERE author_id = $1 AND nonce = $2");
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(i(author))
                .bind(i(nonce))
                .fetch_optional(&self.pool)
                .await?
                .map(|r| message_of(&r))
                .transpose()
        })
        .await
    }

    /// Stores a message, its seq and its event in one transaction. If the author already
    /// sent this nonce, returns that message and `None` (nothing new was stored).
    pub async fn send_message(&self, m: NewMessage) -> Result<(Message, Option<Stored>)> {
        self.deadline(async move {
            if let Some(existing) = self.message_by_nonce(m.author_id, m.nonce).await? {
                return Ok((existing, None));
            }
            let mut tx = self.begin().await?;
            // Reply target must be in the same channel. (Read before the seq UPDATE is fine:
            // messages are never moved between channels.)
            if let Some(target) = m.reply_to {
                let ok = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2")
                    .bind(i(target))
                    .bind(i(m.channel_id))
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !ok {
                    return Err(StoreError::InvalidReply);
                }
            }
            let mut message = Message {
                id: m.id,
                channel_id: m.channel_id,
                author_id: m.author_id,
                nonce: m.nonce,
                content: m.content.clone(),
                reply_to: m.reply_to,
                mentions: m.mentions.clone(),
                seq: 0,
                created_at_ms: m.now_ms,
                edited_at_ms: None,
                deleted: false,
                reactions: Vec::new(),
            };
            let stored = Self::sequence(&mut tx, m.channel_id, m.now_ms, |seq| {
                message.seq = seq;
                EventBody::MessageCreated {
                    seq,
                    message: message.clone(),
                }
            })
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO messages (id, channel_id, author_id, nonce, content, reply_to, mentions, seq, created_at, edited_at, deleted) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, 0)",
            )
            .bind(i(m.id))
            .bind(i(m.channel_id))
            .bind(i(m.author_id))
            .bind(i(m.nonce))
            .bind(&m.content)
            .bind(m.reply_to.map(i))
            .bind(mentions_text(&m.mentions))
            .bind(i(stored.seq))
            .bind(i(m.now_ms))
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    // The same nonce raced in from another connection: that one won. (Any
                    // other conflict — a repeated id — is a failure, never "not found".)
                    tx.rollback().await?;
                    return match self.message_by_nonce(m.author_id, m.nonce).await? {
                        Some(existing) => Ok((existing, None)),
                        None => Err(e.into()),
                    };
                }
                Err(e) => return Err(e.into()),
            }
            for user in &m.mentions.users {
                if *user == m.author_id {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO read_states (user_id, channel_id, last_read_seq, mention_count) VALUES ($1, $2, 0, 1) \
                     ON CONFLICT (user_id, channel_id) DO UPDATE SET mention_count = read_states.mention_count + 1",
                )
                .bind(i(*user))
                .bind(i(m.channel_id))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            message.seq = stored.seq;
            Ok((message, Some(stored)))
        })
        .await
    }

    /// A message in a channel.
    pub async fn message(&self, channel: u64, id: u64) -> Result<Message> {
        self.deadline(async move {
            let q = format!("SELECT {MSG_COLS} FROM messages WHERE id = $1 AND channel_id = $2");
            let r = sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(i(id))
                .bind(i(channel))
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
            message_of(&r)
        })
        .await
    }

    /// Edits a message's content.
    pub async fn edit_message(
        &self,
        channel: u64,
        id: u64,
        content: &str,
        mentions: &Mentions,
        now_ms: u64,
    ) -> Result<Stored> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = Self::sequence(&mut tx, channel, now_ms, |seq| EventBody::MessageEdited {
                seq,
                channel_id: channel,
                message_id: id,
                content: content.to_string(),
                mentions: mentions.clone(),
                edited_at_ms: now_ms,
            })
            .await?;
            let n = sqlx::query("UPDATE messages SET content = $3, mentions = $4, edited_at = $5 WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(id))
                .bind(i(channel))
                .bind(content)
                .bind(mentions_text(mentions))
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Deletes a message (keeps a tombstone so history pages stay gap-free by seq).
    pub async fn delete_message(&self, channel: u64, id: u64, now_ms: u64) -> Result<Stored> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = Self::sequence(&mut tx, channel, now_ms, |seq| EventBody::MessageDeleted {
                seq,
                channel_id: channel,
                message_id: id,
            })
            .await?;
            let n = sqlx::query("UPDATE messages SET content = '', mentions = '||0', deleted = 1 WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(id))
                .bind(i(channel))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                .bind(i(id))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }

    /// Adds a reaction; `None` if the user had already reacted with it.
    pub async fn add_reaction(
        &self,
        channel: u64,
        message: u64,
        user: u64,
        emoji: &str,
        now_ms: u64,
    ) -> Result<Option<Stored>> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            // Seq first: it takes the write lock, so the checks below cannot race.
            let stored = Self::sequence(&mut tx, channel, now_ms, |seq| EventBody::ReactionAdded {
                seq,
                channel_id: channel,
                message_id: message,
                user_id: user,
                emoji: emoji.to_string(),
            })
            .await?;
            let exists = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND channel_id = $2 AND deleted = 0")
                .bind(i(message))
                .bind(i(channel))
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
            let r = sqlx::query(
                "SELECT COUNT(DISTINCT emoji) AS n, SUM(CASE WHEN emoji = $2 THEN 1 ELSE 0 END) AS have, \
                 SUM(CASE WHEN emoji = $2 AND user_id = $3 THEN 1 ELSE 0 END) AS mine FROM reactions WHERE message_id = $1",
            )
            .bind(i(message))
            .bind(emoji)
            .bind(i(user))
            .fetch_one(&mut *tx)
            .await?;
            let distinct: i64 = r.try_get("n")?;
            let have: i64 = r.try_get::<Option<i64>, _>("have")?.unwrap_or(0);
            let mine: i64 = r.try_get::<Option<i64>, _>("mine")?.unwrap_or(0);
            if mine > 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            if have == 0 && distinct >= MAX_REACTIONS {
                return Err(StoreError::TooManyReactions);
            }
            sqlx::query("INSERT INTO reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, $4)")
                .bind(i(message))
                .bind(i(user))
                .bind(emoji)
                .bind(i(now_ms))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(stored))
        })
        .await
    }

    /// Removes a reaction; `None` if there was none.
    pub async fn remove_reaction(
        &self,
        channel: u64,
        message: u64,
        user: u64,
        emoji: &str,
        now_ms: u64,
    ) -> Result<Option<Stored>> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            let stored = Self::sequence(&mut tx, channel, now_ms, |seq| EventBody::ReactionRemoved {
                seq,
                channel_id: channel,
                message_id: message,
                user_id: user,
                emoji: emoji.to_string(),
            })
            .await?;
            let n = sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3 AND message_id IN (SELECT id FROM messages WHERE channel_id = $4)")
                .bind(i(message))
                .bind(i(user))
                .bind(emoji)
                .bind(i(channel))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok(Some(stored))
        })
        .await
    }

    /// A page of messages by creation seq, ascending; plus whether more exist before/after.
    pub async fn history(
        &self,
        channel: u64,
        anchor: quaver_proto::HistoryAnchor,
        limit: u32,
    ) -> Result<(Vec<Message>, bool, bool)> {
        self.deadline(async move {
            use quaver_proto::HistoryAnchor as A;
            let limit = limit.clamp(1, 100) as i64;
            let older = |below: i64, n: i64| {
                let q = format!(
                    "SELECT {MSG_COLS} FROM messages WHERE channel_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                );
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(i(channel))
                    .bind(below)
                    .bind(n + 1)
            };
            let newer = |from: i64, n: i64| {
                let q = format!(
                    "SELECT {MSG_COLS} FROM messages WHERE channel_id = $1 AND seq >= $2 ORDER BY seq ASC LIMIT $3"
                );
                sqlx::query(sqlx::AssertSqlSafe(q))
                    .bind(i(channel))
                    .bind(from)
                    .bind(n + 1)
            };
            let (mut before, mut after) = (Vec::new(), Vec::new());
            let (mut more_before, mut more_after) = (false, false);
            let take_older = |rows: Vec<AnyRow>, n: i64, more: &mut bool| -> Result<Vec<Message>> {
                *more = rows.len() as i64 > n;
                let mut v: Vec<Message> = rows.iter().take(n as usize).map(message_of).collect::<Result<_>>()?;
                v.reverse();
                Ok(v)
            };
            match anchor {
                A::Latest => {
                    before = take_older(
                        older(i64::MAX, limit).fetch_all(&self.pool).await?,
                        limit,
                        &mut more_before,
                    )?
                }
                A::Before(s) => {
                    before = take_older(older(i(s), limit).fetch_all(&self.pool).await?, limit, &mut more_before)?
                }
                A::After(s) | A::Around(s) => {
                    let (from, n_after) = match anchor {
                        A::After(_) => (i(s) + 1, limit),
                        _ => (i(s), limit - limit / 2),
                    };
                    if let A::Around(_) = anchor {
                        let n = limit / 2;
                        if n > 0 {
                            before = take_older(older(from, n).fetch_all(&self.pool).await?, n, &mut more_before)?;
                        } else {
                            more_before = !older(from, 0).fetch_all(&self.pool).await?.is_empty();
                        }
                    } else {
                        more_before = !older(from, 0).fetch_all(&self.pool).await?.is_empty();
                    }
                    let rows = newer(from, n_after).fetch_all(&self.pool).await?;
                    more_after = rows.len() as i64 > n_after;
                    after = rows
                        .iter()
                        .take(n_after as usize)
                        .map(message_of)
                        .collect::<Result<_>>()?;
                }
            }
            if let A::Before(s) = anchor {
                more_after = !newer(i(s), 0).fetch_all(&self.pool).await?.is_empty();
            }
            before.append(&mut after);
            self.attach_reactions(channel, &mut before).await?;
            Ok((before, more_before, more_after))
        })
        .await
    }

    async fn attach_reactions(&self, channel: u64, msgs: &mut [Message]) -> Result<()> {
        let (Some(first), Some(last)) = (msgs.first(), msgs.last()) else {
            return Ok(());
        };
        let rows = sqlx::query(
            "SELECT r.message_id, r.emoji, COUNT(*) AS n, MIN(r.created_at) AS t FROM reactions r JOIN messages m ON m.id = r.message_id \
             WHERE m.channel_id = $1 AND m.seq >= $2 AND m.seq <= $3 GROUP BY r.message_id, r.emoji ORDER BY t",
        )
        .bind(i(channel))
        .bind(i(first.seq))
        .bind(i(last.seq))
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let id = u(r.try_get("message_id")?);
            if let Some(m) = msgs.iter_mut().find(|m| m.id == id) {
                m.reactions.push(Reaction {
                    emoji: r.try_get("emoji")?,
                    count: r.try_get::<i64, _>("n")? as u32,
                });
            }
        }
        Ok(())
    }

    /// Deletes logged events created before `before_ms`; returns how many.
    pub async fn prune_events(&self, before_ms: u64) -> Result<u64> {
        // In batches, each under its own deadline: one DELETE over a large log would hold
        // SQLite's write lock (and miss the deadline) for as long as it takes.
        const BATCH: i64 = 5_000;
        let mut total = 0;
        loop {
            let n = self
                .deadline(async move {
                    Ok(sqlx::query(
                        "DELETE FROM channel_events WHERE (channel_id, seq) IN \
                         (SELECT channel_id, seq FROM channel_events WHERE created_at < $1 LIMIT $2)",
                    )
                    .bind(i(before_ms))
                    .bind(BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
                })
                .await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Logged events of a channel with seq > `after`, ascending, at most `limit`, created
    /// at or after `since_ms` (older ones count as pruned even before the pruner ran).
    pub async fn events_after(
        &self,
        channel: u64,
        after: u64,
        limit: u32,
        since_ms: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT seq, body FROM channel_events WHERE channel_id = $1 AND seq > $2 AND created_at >= $4 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(i(channel))
            .bind(i(after))
            .bind(i64::from(limit))
            .bind(i(since_ms))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((u(r.try_get("seq")?), r.try_get("body")?)))
            .collect()
        })
        .await
    }

    // ----- read states ---------------------------------------------------------------

    /// Marks a channel read up to `seq` (never backwards); clears the mention count.
    pub async fn mark_read(&self, user: u64, channel: u64, seq: u64) -> Result<ReadState> {
        self.deadline(async move {
            let r = sqlx::query(
                "INSERT INTO read_states (user_id, channel_id, last_read_seq, mention_count) VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (user_id, channel_id) DO UPDATE SET \
                   last_read_seq = CASE WHEN excluded.last_read_seq > read_states.last_read_seq THEN excluded.last_read_seq ELSE read_states.last_read_seq END, \
                   mention_count = 0 \
                 RETURNING last_read_seq, mention_count",
            )
            .bind(i(user))
            .bind(i(channel))
            .bind(i(seq))
            .fetch_one(&self.pool)
            .await?;
            Ok(ReadState {
                channel_id: channel,
                last_read_seq: u(r.try_get("last_read_seq")?),
                mention_count: r.try_get::<i64, _>("mention_count")? as u32,
            })
        })
        .await
    }

    /// All read states of a user.
    pub async fn read_states(&self, user: u64) -> Result<Vec<ReadState>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT channel_id, last_read_seq, mention_count FROM read_states WHERE user_id = $1 ORDER BY channel_id",
            )
            .bind(i(user))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ReadState {
                    channel_id: u(r.try_get("channel_id")?),
                    last_read_seq: u(r.try_get("last_read_seq")?),
                    mention_count: r.try_get::<i64, _>("mention_count")? as u32,
                })
            })
            .collect()
        })
        .await
    }
}

fn rel_code(k: RelationshipKind) -> i64 {
    match k {
        RelationshipKind::Friend => 1,
        RelationshipKind::IncomingRequest => 2,
        RelationshipKind::OutgoingRequest => 3,
        RelationshipKind::Blocked => 4,
    }
}
fn rel_of(c: i64) -> Option<RelationshipKind> {
    Some(match c {
        1 => RelationshipKind::Friend,
        2 => RelationshipKind::IncomingRequest,
        3 => RelationshipKind::OutgoingRequest,
        4 => RelationshipKind::Blocked,
        _ => return None,
    })
}
fn notif_code(k: NotificationKind) -> i64 {
    match k {
        NotificationKind::Mention => 0,
        NotificationKind::Reply => 1,
        NotificationKind::Reaction => 2,
        NotificationKind::DirectMessage => 3,
        NotificationKind::FriendRequest => 4,
        NotificationKind::FriendAccepted => 5,
    }
}
fn notif_kind(c: i64) -> NotificationKind {
    match c {
        1 => NotificationKind::Reply,
        2 => NotificationKind::Reaction,
        3 => NotificationKind::DirectMessage,
        4 => NotificationKind::FriendRequest,
        5 => NotificationKind::FriendAccepted,
        _ => NotificationKind::Mention,
    }
}
fn notification_of(r: &AnyRow) -> Result<Notification> {
    Ok(Notification {
        id: u(r.try_get("id")?),
        kind: notif_kind(r.try_get("kind")?),
        actor_id: u(r.try_get("actor_id")?),
        guild_id: r.try_get::<Option<i64>, _>("guild_id")?.map(u),
        channel_id: r.try_get::<Option<i64>, _>("channel_id")?.map(u),
        message_id: r.try_get::<Option<i64>, _>("message_id")?.map(u),
        preview: r.try_get("preview")?,
        created_at_ms: u(r.try_get("created_at")?),
        read: r.try_get::<Option<i64>, _>("read_at")?.is_some(),
    })
}

const NOTIF_COLS: &str = "id, kind, actor_id, guild_id, channel_id, message_id, preview, created_at, read_at";

impl Store {
    // ----- relationships -------------------------------------------------------------

    /// What `other` is to `user`.
    pub async fn relationship(&self, user: u64, other: u64) -> Result<Option<RelationshipKind>> {
        self.deadline(async move {
            Ok(
                sqlx::query("SELECT kind FROM relationships WHERE user_id = $1 AND other_id = $2")
                    .bind(i(user))
                    .bind(i(other))
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get::<i64, _>("kind"))
                    .transpose()?
                    .and_then(rel_of),
            )
        })
        .await
    }

    /// Sets both directions of a pair at once (`None` removes that direction).
    pub async fn set_relationship(
        &self,
        a: u64,
        a_to_b: Option<RelationshipKind>,
        b: u64,
        b_to_a: Option<RelationshipKind>,
        now_ms: u64,
    ) -> Result<()> {
        self.deadline(async move {
            let mut tx = self.begin().await?;
            for (x, y, k) in [(a, b, a_to_b), (b, a, b_to_a)] {
                match k {
                    Some(k) => {
                        sqlx::query(
                            "INSERT INTO relationships (user_id, other_id, kind, created_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (user_id, other_id) DO UPDATE SET kind = excluded.kind",
                        )
                        .bind(i(x))
                        .bind(i(y))
                        .bind(rel_code(k))
                        .bind(i(now_ms))
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM relationships WHERE user_id = $1 AND other_id = $2")
                            .bind(i(x))
                            .bind(i(y))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// All relationships of `user`.
    pub async fn relationships(&self, user: u64) -> Result<Vec<Relationship>> {
        self.deadline(async move {
            let rows = sqlx::query("SELECT other_id, kind FROM relationships WHERE user_id = $1 ORDER BY other_id")
                .bind(i(user))
                .fetch_all(&self.pool)
                .await?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(kind) = rel_of(r.try_get("kind")?) {
                    out.push(Relationship {
                        user_id: u(r.try_get("other_id")?),
                        kind,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Of `users`, those who blocked `actor`.
    pub async fn blockers_of(&self, actor: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            sqlx::query("SELECT user_id FROM relationships WHERE other_id = $1 AND kind = 4")
                .bind(i(actor))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| Ok(u(r.try_get("user_id")?)))
                .collect()
        })
        .await
    }

    // ----- mutes ---------------------------------------------------------------------

    /// Mutes or unmutes a guild or channel for `user`.
    pub async fn set_mute(&self, user: u64, target: MuteTarget, muted: bool) -> Result<()> {
        self.deadline(async move {
            let (kind, id) = match target {
                MuteTarget::Guild(id) => (0i64, id),
                MuteTarget::Channel(id) => (1i64, id),
            };
            let q = if muted {
                "INSERT INTO mutes (user_id, target_kind, target_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM mutes WHERE user_id = $1 AND target_kind = $2 AND target_id = $3"
            };
            sqlx::query(q)
                .bind(i(user))
                .bind(kind)
                .bind(i(id))
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Everything `user` muted.
    pub async fn mutes(&self, user: u64) -> Result<Vec<MuteTarget>> {
        self.deadline(async move {
            sqlx::query("SELECT target_kind, target_id FROM mutes WHERE user_id = $1 ORDER BY target_kind, target_id")
                .bind(i(user))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    let id = u(r.try_get("target_id")?);
                    Ok(if r.try_get::<i64, _>("target_kind")? == 0 {
                        MuteTarget::Guild(id)
                    } else {
                        MuteTarget::Channel(id)
                    })
                })
                .collect()
        })
        .await
    }

    /// Users who muted this guild or this channel.
    pub async fn muters(&self, guild: Option<u64>, channel: u64) -> Result<Vec<u64>> {
        self.deadline(async move {
            sqlx::query(
                "SELECT DISTINCT user_id FROM mutes WHERE (target_kind = 1 AND target_id = $1) OR (target_kind = 0 AND target_id = $2)",
            )
            .bind(i(channel))
            .bind(guild.map(i).unwrap_or(-1))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(u(r.try_get("user_id")?)))
            .collect()
        })
        .await
    }

    // ----- notifications -------------------------------------------------------------

    /// Stores one notification per recipient; returns them in `recipients` order.
    pub async fn create_notifications(&self, items: &[(u64, Notification)]) -> Result<()> {
        self.deadline(async move {
            if items.is_empty() {
                return Ok(());
            }
            let mut tx = self.begin().await?;
            for (user, n) in items {
                sqlx::query(
                    "INSERT INTO notifications (id, user_id, kind, actor_id, guild_id, channel_id, message_id, preview, created_at, delivered_at, read_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
                )
                .bind(i(n.id))
                .bind(i(*user))
                .bind(notif_code(n.kind))
                .bind(i(n.actor_id))
                .bind(n.guild_id.map(i))
                .bind(n.channel_id.map(i))
                .bind(n.message_id.map(i))
                .bind(&n.preview)
                .bind(i(n.created_at_ms))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// A page of `user`'s notifications, newest first, with ids below `before` (0 = all).
    pub async fn notifications(&self, user: u64, before: u64, limit: u32) -> Result<Vec<Notification>> {
        self.deadline(async move {
            let q = format!(
                "SELECT {NOTIF_COLS} FROM notifications WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            );
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(i(user))
                .bind(if before == 0 { i64::MAX } else { i(before) })
                .bind(i64::from(limit.clamp(1, 100)))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(notification_of)
                .collect()
        })
        .await
    }

    /// Unread notifications of `user`.
    pub async fn unread_notifications(&self, user: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE user_id = $1 AND read_at IS NULL")
                .bind(i(user))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    /// Records delivery of every notification up to `up_to`; returns how many were new.
    pub async fn ack_notifications(&self, user: u64, up_to: u64, now_ms: u64) -> Result<u64> {
        self.deadline(async move {
            Ok(sqlx::query(
                "UPDATE notifications SET delivered_at = $3 WHERE user_id = $1 AND id <= $2 AND delivered_at IS NULL",
            )
            .bind(i(user))
            .bind(i(up_to))
            .bind(i(now_ms))
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
        .await
    }

    /// How many of `user`'s notifications were acknowledged as delivered.
    pub async fn delivered_notifications(&self, user: u64) -> Result<u32> {
        self.deadline(async move {
            let n: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE user_id = $1 AND delivered_at IS NOT NULL")
                    .bind(i(user))
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
            Ok(n as u32)
        })
        .await
    }

    /// Marks notifications read (`ids`, or all).
    pub async fn read_notifications(&self, user: u64, ids: &[u64], all: bool, now_ms: u64) -> Result<()> {
        self.deadline(async move {
            if all {
                sqlx::query("UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL")
                    .bind(i(user))
                    .bind(i(now_ms))
                    .execute(&self.pool)
                    .await?;
                return Ok(());
            }
            let mut tx = self.begin().await?;
            for id in ids {
                sqlx::query("UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND id = $2 AND read_at IS NULL")
                    .bind(i(user))
                    .bind(i(*id))
                    .bind(i(now_ms))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The highest snowflake stored in any table that holds them (0 when empty): a node
    /// restarting never issues an id at or below it, whatever its clock says.
    pub async fn max_snowflake(&self) -> Result<u64> {
        self.deadline(async move {
            let mut max = 0u64;
            for table in ["messages", "guilds", "channels", "roles", "notifications"] {
                let q = format!("SELECT COALESCE(MAX(id), 0) AS m FROM {table}");
                let m: i64 = sqlx::query(sqlx::AssertSqlSafe(q))
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("m")?;
                max = max.max(u(m));
            }
            Ok(max)
        })
        .await
    }

    /// Users holding any of `roles` in `guild`.
    pub async fn role_holders(&self, guild: u64, roles: &[u64]) -> Result<Vec<u64>> {
        self.deadline(async move {
            let mut out = Vec::new();
            for role in roles {
                for r in sqlx::query("SELECT user_id FROM member_roles WHERE guild_id = $1 AND role_id = $2")
                    .bind(i(guild))
                    .bind(i(*role))
                    .fetch_all(&self.pool)
                    .await?
                {
                    out.push(u(r.try_get("user_id")?));
                }
            }
            out.sort_unstable();
            out.dedup();
            Ok(out)
        })
        .await
    }
}

fn overwrite_of(r: &AnyRow) -> Result<Overwrite> {
    let kind: i64 = r.try_get("target_kind")?;
    let id = u(r.try_get("target_id")?);
    Ok(Overwrite {
        target: if kind == 0 {
            OverwriteTarget::Role(id)
        } else {
            OverwriteTarget::Member(id)
        },
        allow: u(r.try_get("allow_bits")?),
        deny: u(r.try_get("deny_bits")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_round_trip_through_text() {
        for m in [
            Mentions::default(),
            Mentions {
                users: vec![1, 2],
                roles: vec![3],
                everyone: true,
            },
            Mentions {
                users: vec![],
                roles: vec![9],
                everyone: false,
            },
        ] {
            assert_eq!(mentions_parse(&mentions_text(&m)), m);
        }
    }
}
