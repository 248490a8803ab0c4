//! The presence registry on Redis. Keys (single-key commands only, so a Redis Cluster
//! needs no hash tags):
//!
//! - `q:pr:<user>` — hash: node name → that node's [`Part`], plus `#v`, the user's version
//!   (every write sets it to one more than before or to Redis's clock in µs, whichever is
//!   greater, so it keeps increasing after the key expired — a day after its last part is
//!   gone — or Redis restarted empty: webhook receivers compare versions across both);
//! - `q:pn:<node>` — set: users the node has a part for (what to remove when it dies);
//! - `q:alive:<node>` — the node's liveness key, renewed every second, expiring after 5 s;
//! - `q:nodes` — set of node names.
//!
//! A write runs as one script that returns the hash before and after it, so the writer sees
//! exactly the change it made to the merge and publishes it — once, with the version.
//! Liveness is polled (`EXISTS`), not taken from keyspace notifications, which Redis
//! delivers at most once and not at all while a subscriber is reconnecting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use quaver_proto::Presence;
use redis::{Script, Value};

use super::{Part, merge};
use crate::cluster::redis::Commands;

/// A node whose liveness key is older than this is dead.
pub const ALIVE_TTL: Duration = Duration::from_secs(5);
/// How often a node renews its liveness key (and looks for dead ones).
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

const NODES: &str = "q:nodes";
const VERSION: &str = "#v";

const WRITE: &str = r"
local before = redis.call('HGETALL', KEYS[1])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local t = redis.call('TIME')
local v = math.max((tonumber(redis.call('HGET', KEYS[1], '#v')) or 0) + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('HSET', KEYS[1], '#v', string.format('%d', v))
if redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 86400000)
else
  redis.call('PERSIST', KEYS[1])
end
return {v, before, redis.call('HGETALL', KEYS[1])}
";

impl RedisRegistry {
    fn user_key(&self, user: u64) -> String {
        self.cmds.key(&format!("q:pr:{user}"))
    }
    fn node_users_key(&self, node: &str) -> String {
        self.cmds.key(&format!("q:pn:{node}"))
    }
    fn alive_key(&self, node: &str) -> String {
        self.cmds.key(&format!("q:alive:{node}"))
    }
    fn nodes_key(&self) -> String {
        self.cmds.key(NODES)
    }
}

/// A change to a user's merged presence, to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The user's version after the write.
    pub version: u64,
    /// What others see now.
    pub presence: Presence,
    /// Whether that differs from before the write (otherwise nothing to publish).
    pub changed: bool,
    /// Whether others saw the user as not offline before the write.
    pub was_online: bool,
}

/// The registry of one node.
#[derive(Debug)]
pub struct RedisRegistry {
    cmds: Commands,
    node: String,
    up: AtomicBool,
    write: Script,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The field/value pairs of a hash as a flat list or a map (RESP2 scripts, RESP3 replies).
fn fields(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Array(items) => items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

/// The parts in a user's hash.
fn parts_of(v: &Value) -> Vec<Part> {
    fields(v)
        .into_iter()
        .filter(|(k, _)| bytes(k).is_some_and(|k| k != VERSION.as_bytes()))
        .filter_map(|(_, v)| {
            let p = bytes(v).and_then(Part::decode);
            if p.is_none() {
                tracing::warn!("ignored an unreadable presence part in Redis");
            }
            p
        })
        .collect()
}

/// The `#v` field of a user's hash (0 when absent or unreadable).
fn version_of(v: &Value) -> u64 {
    fields(v)
        .into_iter()
        .find(|(k, _)| bytes(k) == Some(VERSION.as_bytes()))
        .and_then(|(_, v)| match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            other => bytes(other).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
        })
        .unwrap_or(0)
}

impl RedisRegistry {
    /// The registry for node `node` over its command connection.
    pub fn new(cmds: Commands, node: &str) -> Self {
        Self {
            cmds,
            node: node.to_string(),
            up: AtomicBool::new(true),
            write: Script::new(WRITE),
        }
    }

    /// Whether the last call worked (while not, presence falls back to this node's view).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    fn result<T>(&self, r: redis::RedisResult<T>) -> redis::RedisResult<T> {
        self.up.store(r.is_ok(), Relaxed);
        r
    }

    async fn write_for(&self, node: &str, user: u64, part: Option<&Part>) -> redis::RedisResult<Change> {
        let encoded = part.map(Part::encode).unwrap_or_default();
        let v: Value = self
            .cmds
            .script(self.write.key(self.user_key(user)).arg(node).arg(encoded))
            .await?;
        let Value::Array(items) = &v else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected script reply",
            )));
        };
        let version = match items.first() {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let before = items.get(1).map(parts_of).unwrap_or_default();
        let after = items.get(2).map(parts_of).unwrap_or_default();
        let (was, now) = (merge(user, &before), merge(user, &after));
        Ok(Change {
            version,
            changed: was != now,
            was_online: was.status != quaver_proto::PresenceStatus::Offline,
            presence: now,
        })
    }

    /// Writes this node's part of `user` (an empty part removes it).
    pub async fn write(&self, user: u64, part: &Part) -> redis::RedisResult<Change> {
        let r = async {
            let set = self.node_users_key(&self.node);
            if part.is_empty() {
                let c = self.write_for(&self.node, user, None).await?;
                self.cmds.query::<i64>(redis::cmd("SREM").arg(&set).arg(user)).await?;
                Ok(c)
            } else {
                // Listed first: a part the node's death must remove is never unlisted.
                self.cmds.query::<i64>(redis::cmd("SADD").arg(&set).arg(user)).await?;
                self.write_for(&self.node, user, Some(part)).await
            }
        }
        .await;
        self.result(r)
    }

    /// What others see of each of `users` (offline ones left out).
    pub async fn read(&self, users: &[u64]) -> redis::RedisResult<Vec<Presence>> {
        Ok(self
            .read_versioned(users, false)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The same (with `offline`, offline ones kept), each with the user's version (the one
    /// its last change was published with; 0 for a user never written).
    pub async fn read_versioned(&self, users: &[u64], offline: bool) -> redis::RedisResult<Vec<(Presence, u64)>> {
        let reads = users.iter().map(|u| async move {
            let v: Value = self.cmds.query(redis::cmd("HGETALL").arg(self.user_key(*u))).await?;
            Ok::<_, redis::RedisError>((merge(*u, &parts_of(&v)), version_of(&v)))
        });
        let all = futures_util::future::join_all(reads).await;
        let r: redis::RedisResult<Vec<(Presence, u64)>> = all.into_iter().collect();
        self.result(r.map(|v| {
            v.into_iter()
                .filter(|(p, _)| offline || p.status != quaver_proto::PresenceStatus::Offline)
                .collect()
        }))
    }

    /// Which of `users` have a session on some node (invisible ones too), or lost their
    /// last one less than the reconnect grace ago: a node keeps its part until then.
    pub async fn live(&self, users: &[u64]) -> redis::RedisResult<Vec<u64>> {
        let reads = users.iter().map(|u| async move {
            let v: Value = self.cmds.query(redis::cmd("HGETALL").arg(self.user_key(*u))).await?;
            let live = parts_of(&v).iter().any(|p| {
                let c = &p.client_status;
                [c.desktop, c.mobile, c.web]
                    .iter()
                    .any(|s| *s != quaver_proto::PresenceStatus::Offline)
            });
            Ok::<_, redis::RedisError>(live.then_some(*u))
        });
        let all = futures_util::future::join_all(reads).await;
        let r: redis::RedisResult<Vec<Option<u64>>> = all.into_iter().collect();
        self.result(r.map(|v| v.into_iter().flatten().collect()))
    }

    /// Renews this node's liveness key; whether Redis answered.
    pub async fn renew(&self) -> bool {
        let r = async {
            self.cmds
                .query::<()>(
                    redis::cmd("SET")
                        .arg(self.alive_key(&self.node))
                        .arg(1)
                        .arg("PX")
                        .arg(ALIVE_TTL.as_millis() as u64),
                )
                .await?;
            self.cmds
                .query::<i64>(redis::cmd("SADD").arg(self.nodes_key()).arg(&self.node))
                .await
        }
        .await;
        self.result(r).is_ok()
    }

    /// The nodes whose liveness key is current (this one included).
    pub async fn live_nodes(&self) -> redis::RedisResult<Vec<String>> {
        let r = async {
            let nodes: Vec<String> = self.cmds.query(redis::cmd("SMEMBERS").arg(self.nodes_key())).await?;
            let mut live = Vec::with_capacity(nodes.len());
            for n in nodes {
                let alive: bool = self.cmds.query(redis::cmd("EXISTS").arg(self.alive_key(&n))).await?;
                if alive {
                    live.push(n);
                }
            }
            Ok(live)
        }
        .await;
        self.result(r)
    }

    /// Removes the parts of nodes whose liveness key expired (one surviving node does it,
    /// under a short lock), returning the changes to publish and, per dead node, the users
    /// who had sessions there.
    pub async fn reap(&self) -> redis::RedisResult<(Vec<Change>, Vec<(String, Vec<u64>)>)> {
        let nodes: Vec<String> = self.cmds.query(redis::cmd("SMEMBERS").arg(self.nodes_key())).await?;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for n in nodes.iter().filter(|n| **n != self.node) {
            let alive: bool = self.cmds.query(redis::cmd("EXISTS").arg(self.alive_key(n))).await?;
            if alive {
                continue;
            }
            let lock: Option<String> = self
                .cmds
                .query(
                    redis::cmd("SET")
                        .arg(self.cmds.key(&format!("q:reap:{n}")))
                        .arg(&self.node)
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000),
                )
                .await?;
            if lock.is_none() {
                continue; // another node is on it
            }
            let users: Vec<u64> = self
                .cmds
                .query(redis::cmd("SMEMBERS").arg(self.node_users_key(n)))
                .await?;
            tracing::warn!(node = %n, users = users.len(), "a node's liveness key expired: removing its presence");
            let mut by_user: HashMap<u64, Change> = HashMap::new();
            for u in &users {
                let c = self.write_for(n, *u, None).await?;
                by_user.insert(*u, c);
            }
            dead.push((n.clone(), users));
            self.cmds
                .query::<i64>(redis::cmd("DEL").arg(self.node_users_key(n)))
                .await?;
            self.cmds
                .query::<i64>(redis::cmd("SREM").arg(self.nodes_key()).arg(n))
                .await?;
            out.extend(by_user.into_values().filter(|c| c.changed));
        }
        Ok((out, dead))
    }
}
