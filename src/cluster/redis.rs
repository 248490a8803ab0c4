//! The cluster bus on Redis (crate `redis` 1.x), on one Redis or a Redis Cluster.
//!
//! Connections by purpose, never one per client: one RESP3 push connection for
//! subscriptions and one multiplexed connection for publishing. On a Redis Cluster the bus
//! uses sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`: a message travels only to the shard that
//! owns its topic, not to every node of the cluster); on a single Redis, plain
//! `SUBSCRIBE`/`PUBLISH` (there is one shard, and `redis`' connection manager resubscribes
//! those by itself after a reconnect).
//!
//! Failure handling — the bus must degrade, never stop a node:
//! - `publish` never blocks: messages wait in a bounded buffer (default 10,000) while Redis
//!   is unreachable, then are dropped and counted. The publisher retries the oldest with
//!   jittered exponential backoff (100 ms … 5 s): a circuit breaker whose half-open probe is
//!   the next publish; every attempt is counted.
//! - Subscriptions are wanted state (reference-counted topics), not a log of commands: after
//!   a disconnection, or when the liveness probe fails, every wanted topic is subscribed
//!   again, one command per topic — a command naming several sharded channels of different
//!   slots would fail with CROSSSLOT, and a resubscription the library batches per cluster
//!   node can do exactly that.
//! - A liveness probe publishes a token on the node's own topic and expects it back: it
//!   catches a subscriber that went silent while the publishing connection looks healthy.
//!   Until a probe comes back the bus reports [`Health::Degraded`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use super::pubsub::{Counters, Health, PubSub, Received, RefCounts, Topic};

/// How to reach Redis, from `REDIS_URL` / `--redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis://host:port[/db]`.
    Single(String),
    /// A Redis Cluster: `redis+cluster://host:port[,host:port…]` (seed nodes).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis` or `redis-cluster` (for logs: never the URL, which may hold a password).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "redis",
            Self::Cluster(_) => "redis-cluster",
        }
    }

    /// Parses a URL; a Redis Cluster is `redis+cluster://` with comma-separated seeds.
    pub fn parse(url: &str) -> Result<Self, BusError> {
        if let Some(seeds) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = seeds
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| format!("redis://{s}"))
                .collect();
            if nodes.is_empty() {
                return Err(BusError::Config("redis+cluster:// needs at least one host:port".into()));
            }
            Ok(Self::Cluster(nodes))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(Self::Single(url.to_string()))
        } else {
            Err(BusError::Config(format!(
                "not a Redis URL: use redis://host:port or redis+cluster://host:port,host:port (got {})",
                url.split("://").next().unwrap_or("")
            )))
        }
    }
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL or options are wrong.
    #[error("redis configuration: {0}")]
    Config(String),
    /// Redis refused or did not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Tuning of the Redis bus (defaults documented with their reasons).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Messages buffered while Redis is unreachable before new ones are dropped. Default
    /// 10,000: seconds of a busy node's cross-node traffic; the store keeps every message and
    /// receivers catch up by seq, so what overflows is late, not lost.
    pub buffer: usize,
    /// Liveness probe period. Default 2 s.
    pub probe_every: Duration,
    /// A probe not back within this is a failure. Default 2 s.
    pub probe_timeout: Duration,
    /// Prepended to every channel and key name (`--redis-prefix`): several clusters (or
    /// test runs) can share one Redis. Default empty.
    pub prefix: String,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            buffer: 10_000,
            probe_every: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
            prefix: String::new(),
        }
    }
}

/// The push (subscription) side: one connection, on one Redis or the cluster.
#[derive(Clone)]
enum SubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl SubConn {
    async fn subscribe(&mut self, name: &str) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => c.subscribe(name).await,
            SubConn::Cluster(c) => c.ssubscribe(name).await,
        }
    }

    async fn unsubscribe(&mut self, name: &str) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => c.unsubscribe(name).await,
            SubConn::Cluster(c) => c.sunsubscribe(name).await,
        }
    }
}

/// The publishing side.
#[derive(Clone)]
enum PubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl PubConn {
    async fn publish(&mut self, name: &str, payload: &[u8]) -> redis::RedisResult<()> {
        let verb = match self {
            PubConn::Single(_) => "PUBLISH",
            PubConn::Cluster(_) => "SPUBLISH",
        };
        let mut cmd = redis::cmd(verb);
        cmd.arg(name).arg(payload);
        match self {
            PubConn::Single(c) => cmd.query_async::<i64>(c).await?,
            PubConn::Cluster(c) => cmd.query_async::<i64>(c).await?,
        };
        Ok(())
    }
}

/// The node's multiplexed command connection (shared with publishing: never one per
/// client), for the presence registry and leases.
#[derive(Clone)]
pub struct Commands(PubConn, Arc<str>);

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Commands")
    }
}

impl Commands {
    /// A key's name on Redis (with the cluster's prefix).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.1)
    }

    /// Runs one command.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self.0.clone() {
            PubConn::Single(mut c) => cmd.query_async(&mut c).await,
            PubConn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Runs a Lua script (EVALSHA, loading it when the server does not have it).
    pub async fn script<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> redis::RedisResult<T> {
        match self.0.clone() {
            PubConn::Single(mut c) => inv.invoke_async(&mut c).await,
            PubConn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }
}

enum SubCmd {
    Subscribe(Topic),
    Unsubscribe(Topic),
    /// Send every wanted subscription again.
    Resync,
}

#[derive(Debug)]
struct Inner {
    /// Prepended to every channel name on Redis (several clusters on one Redis).
    prefix: String,
    /// The node's own topic (liveness probes).
    own: Topic,
    subs: Mutex<RefCounts>,
    sub_cmds: mpsc::UnboundedSender<SubCmd>,
    out: mpsc::Sender<(Topic, Bytes)>,
    /// Publisher connection healthy (last command succeeded).
    publishing: AtomicBool,
    /// Last probe came back (and no disconnection since).
    probed: AtomicBool,
    counters: Counters,
    /// Probe tokens: the last sent and the last received.
    probe_sent: AtomicU64,
    probe_seen: watch::Sender<u64>,
}

impl Inner {
    /// A topic's channel name on Redis.
    fn wire(&self, t: &Topic) -> String {
        format!("{}{}", self.prefix, t.name())
    }
}

impl std::fmt::Debug for SubCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubCmd::Subscribe(t) => write!(f, "Subscribe({t:?})"),
            SubCmd::Unsubscribe(t) => write!(f, "Unsubscribe({t:?})"),
            SubCmd::Resync => f.write_str("Resync"),
        }
    }
}

/// The cluster bus on Redis. Dropping it stops its tasks.
#[derive(Debug)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
    commands: Commands,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for RedisPubSub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Adds `protocol=resp3` (push messages need it) unless the URL says otherwise.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl RedisPubSub {
    /// Connects for node `node` (its name is its probe topic) and starts the bus.
    pub async fn connect(
        target: &RedisTarget,
        node: &str,
        opt: RedisOptions,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Received>), BusError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let (sub, publ) = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(resp3(url))?;
                // Short timeouts and few quick retries: our own loops retry, with backoff.
                let base = || {
                    ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(2)))
                        .set_response_timeout(Some(Duration::from_secs(2)))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_millis(500))
                };
                let sub_cfg = base().set_push_sender(push_tx).set_automatic_resubscription();
                let sub = client.get_connection_manager_with_config(sub_cfg).await?;
                let publ = client.get_connection_manager_with_config(base()).await?;
                (SubConn::Single(sub), PubConn::Single(publ))
            }
            RedisTarget::Cluster(nodes) => {
                let seeds: Vec<String> = nodes.iter().map(|n| resp3(n)).collect();
                let base = || {
                    redis::cluster::ClusterClientBuilder::new(seeds.clone())
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .connection_timeout(Duration::from_secs(2))
                        .response_timeout(Duration::from_secs(2))
                        .retries(2)
                };
                let sub = base().push_sender(push_tx).build()?.get_async_connection().await?;
                let publ = base().build()?.get_async_connection().await?;
                (SubConn::Cluster(sub), PubConn::Cluster(publ))
            }
        };
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(opt.buffer.max(1));
        let (recv_tx, recv_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            prefix: opt.prefix.clone(),
            own: Topic::node(node),
            subs: Mutex::new(RefCounts::default()),
            sub_cmds: sub_tx,
            out: out_tx,
            publishing: AtomicBool::new(true),
            probed: AtomicBool::new(false),
            counters: Counters::default(),
            probe_sent: AtomicU64::new(0),
            probe_seen: watch::channel(0).0,
        });
        let bus = Self {
            commands: Commands(publ.clone(), opt.prefix.clone().into()),
            tasks: vec![
                tokio::spawn(subscriber(inner.clone(), sub, sub_rx, recv_tx.clone())).abort_handle(),
                tokio::spawn(pushes(inner.clone(), push_rx, recv_tx)).abort_handle(),
                tokio::spawn(publisher(inner.clone(), publ, out_rx)).abort_handle(),
                tokio::spawn(prober(inner.clone(), opt)).abort_handle(),
            ],
            inner,
        };
        bus.subscribe(&bus.inner.own.clone());
        Ok((bus, recv_rx))
    }

    /// A handle on the command connection.
    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    /// Waits until the bus reports [`Health::Up`] (a probe came back), at most `limit`.
    pub async fn ready(&self, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < end {
            if self.health() == Health::Up {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.health() == Health::Up
    }
}

impl PubSub for RedisPubSub {
    fn publish(&self, topic: &Topic, payload: Bytes) {
        self.inner.counters.published.fetch_add(1, Relaxed);
        if self.inner.out.try_send((topic.clone(), payload)).is_err() {
            self.inner.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    fn subscribe(&self, topic: &Topic) {
        if self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).add(topic) {
            let _ = self.inner.sub_cmds.send(SubCmd::Subscribe(topic.clone()));
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        if self.inner.subs.lock().unwrap_or_else(|p| p.into_inner()).remove(topic) {
            let _ = self.inner.sub_cmds.send(SubCmd::Unsubscribe(topic.clone()));
        }
    }

    fn health(&self) -> Health {
        if self.inner.publishing.load(Relaxed) && self.inner.probed.load(Relaxed) {
            Health::Up
        } else {
            Health::Degraded
        }
    }

    fn counters(&self) -> &Counters {
        &self.inner.counters
    }
}

/// Applies subscription changes in order; on `Resync`, subscribes every wanted topic again,
/// one command per topic. A failed command is left to the next resync (the prober asks
/// for one while the bus is degraded).
async fn subscriber(
    inner: Arc<Inner>,
    mut conn: SubConn,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
    recv: mpsc::UnboundedSender<Received>,
) {
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            SubCmd::Subscribe(t) => match conn.subscribe(&inner.wire(&t)).await {
                // Redis answered: the subscription is in effect.
                Ok(()) => {
                    let _ = recv.send(Received::confirmation(t));
                }
                Err(_) => inner.probed.store(false, Relaxed),
            },
            SubCmd::Unsubscribe(t) => {
                // Still unwanted when it runs? (A subscribe may have followed.)
                let wanted = inner.subs.lock().unwrap_or_else(|p| p.into_inner()).contains(&t);
                if !wanted {
                    let _ = conn.unsubscribe(&inner.wire(&t)).await;
                }
            }
            SubCmd::Resync => {
                // Coalesce a burst of resync requests into one pass.
                while let Ok(SubCmd::Resync) = cmds.try_recv() {}
                inner.counters.resubscribes.fetch_add(1, Relaxed);
                let topics: Vec<Topic> = inner
                    .subs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .topics()
                    .cloned()
                    .collect();
                for t in topics {
                    if conn.subscribe(&inner.wire(&t)).await.is_err() {
                        break;
                    }
                    let _ = recv.send(Received::confirmation(t));
                }
            }
        }
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Reads the push connection: messages go to the node; a disconnection marks the bus
/// degraded and asks for a resync; probe tokens go to the prober.
async fn pushes(
    inner: Arc<Inner>,
    mut push_rx: mpsc::UnboundedReceiver<PushInfo>,
    recv: mpsc::UnboundedSender<Received>,
) {
    while let Some(p) = push_rx.recv().await {
        match p.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(name), Some(payload)) = (p.data.first().and_then(bytes_of), p.data.get(1).and_then(bytes_of))
                else {
                    inner.counters.foreign.fetch_add(1, Relaxed);
                    continue;
                };
                let Some(topic) = name.strip_prefix(inner.prefix.as_bytes()).and_then(Topic::parse) else {
                    inner.counters.foreign.fetch_add(1, Relaxed);
                    continue;
                };
                if topic == inner.own
                    && let Some(token) = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|s| s.strip_prefix("probe:"))
                        .and_then(|s| s.parse::<u64>().ok())
                {
                    inner.probe_seen.send_replace(token);
                    continue;
                }
                inner.counters.received.fetch_add(1, Relaxed);
                let _ = recv.send(Received {
                    topic,
                    payload: Bytes::copy_from_slice(payload),
                });
            }
            PushKind::Disconnection => {
                inner.probed.store(false, Relaxed);
                let _ = inner.sub_cmds.send(SubCmd::Resync);
            }
            _ => {}
        }
    }
}

/// Publishes the buffer in order. A failure opens the circuit: the same message is retried
/// after a jittered, growing delay (the half-open probe), every attempt counted.
async fn publisher(inner: Arc<Inner>, mut conn: PubConn, mut out: mpsc::Receiver<(Topic, Bytes)>) {
    let mut delay = Duration::from_millis(100);
    while let Some((topic, payload)) = out.recv().await {
        loop {
            match conn.publish(&inner.wire(&topic), &payload).await {
                Ok(()) => {
                    inner.publishing.store(true, Relaxed);
                    delay = Duration::from_millis(100);
                    break;
                }
                Err(_) => {
                    inner.publishing.store(false, Relaxed);
                    inner.counters.reconnect_attempts.fetch_add(1, Relaxed);
                    let jitter = rand_below(delay.as_millis() as u64 / 2 + 1);
                    tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Publishes a token on the node's own topic every period and waits for it to come back.
async fn prober(inner: Arc<Inner>, opt: RedisOptions) {
    let mut seen = inner.probe_seen.subscribe();
    loop {
        let token = inner.probe_sent.fetch_add(1, Relaxed) + 1;
        let payload = Bytes::from(format!("probe:{token}"));
        // Through the same buffer as everything else: a stuck publisher fails the probe.
        let queued = inner.out.try_send((inner.own.clone(), payload)).is_ok();
        let back = queued
            && tokio::time::timeout(opt.probe_timeout, seen.wait_for(|t| *t >= token))
                .await
                .is_ok_and(|r| r.is_ok());
        let was = inner.probed.swap(back, Relaxed);
        if !back {
            inner.counters.probe_failures.fetch_add(1, Relaxed);
            // The subscription may be gone (or never made): ask for all of them again.
            let _ = inner.sub_cmds.send(SubCmd::Resync);
        } else if !was {
            tracing::info!("cluster bus: Redis answers again");
        }
        // Degraded (the breaker is open): probe again soon — one small publish per node,
        // jittered, never a storm — so recovery is noticed within about a second.
        let pause = if back {
            opt.probe_every
        } else {
            opt.probe_every.min(Duration::from_millis(500)) + Duration::from_millis(rand_below(250))
        };
        tokio::time::sleep(pause).await;
    }
}

/// A jitter source without a dependency: the low bits of the clock.
fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").unwrap(),
            RedisTarget::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1, b:2").unwrap(),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!(RedisTarget::parse("redis+cluster://").is_err());
        assert!(RedisTarget::parse("http://x").is_err());
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(resp3("redis://h:1/?db=2"), "redis://h:1/?db=2&protocol=resp3");
    }
}
