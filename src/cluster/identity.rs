//! A node's identity in a cluster: its name must be unique among live nodes (its liveness
//! key, presence parts and probe topic are named after it) and its snowflake node number
//! must be unique (two nodes with one number could mint the same id in the same
//! millisecond). Both are checked in Redis before the node serves:
//!
//! - the name: a live node renews `q:alive:<name>` every second; a start that finds it
//!   waits for it to expire (a restart after a crash finds its own, gone within 5 s) and
//!   refuses to start if it is still being renewed;
//! - the number: `q:nid:<n>` holds the node name (10 minutes, renewed every 10 s, so an
//!   outage of Redis shorter than that keeps it). A configured `--node-id` held by another
//!   node refuses the start; without one, the number derived from the name is taken if
//!   free, else the next free one.

use std::time::Duration;

use redis::Script;

use super::redis::Commands;
use crate::presence::registry::redis::ALIVE_TTL;

/// How long a claimed node number stays claimed without renewal.
pub const NUMBER_TTL: Duration = Duration::from_secs(600);
/// How often a node renews its number.
pub const RENEW_NUMBER_EVERY: Duration = Duration::from_secs(10);

const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return v
";

fn number_key(cmds: &Commands, n: u16) -> String {
    cmds.key(&format!("q:nid:{n}"))
}

/// Waits out a liveness key of `name` left by a previous run; refuses a name another live
/// node uses.
pub async fn check_name(cmds: &Commands, name: &str) -> anyhow::Result<()> {
    let key = cmds.key(&format!("q:alive:{name}"));
    let end = tokio::time::Instant::now() + ALIVE_TTL + Duration::from_secs(1);
    loop {
        let ttl: i64 = cmds.query(redis::cmd("PTTL").arg(&key)).await?;
        if ttl < 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            anyhow::bail!(
                "another live node is named {name:?} (its liveness key keeps being renewed); \
                 give each node its own --node-name"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Claims a snowflake node number for `name`: `wanted` if configured, else `derived` or
/// the next free one.
pub async fn claim_number(cmds: &Commands, name: &str, wanted: Option<u16>, derived: u16) -> anyhow::Result<u16> {
    let script = Script::new(CLAIM);
    let ttl = NUMBER_TTL.as_millis() as u64;
    let candidates: Vec<u16> = match wanted {
        Some(n) => vec![n & 0x3ff],
        None => (0..1024u16).map(|i| (derived + i) & 0x3ff).collect(),
    };
    for n in candidates {
        let r: redis::Value = cmds.script(script.key(number_key(cmds, n)).arg(name).arg(ttl)).await?;
        match r {
            redis::Value::Int(1) => return Ok(n),
            other if wanted.is_some() => {
                let holder = match other {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    _ => "another node".into(),
                };
                anyhow::bail!(
                    "node number {n} is held by node {holder:?}: two nodes with one number could mint the same ids; \
                     give each node its own --node-id (or none, to take a free one)"
                );
            }
            _ => continue,
        }
    }
    anyhow::bail!("every node number (0–1023) is held")
}

/// Keeps the claim on `n` while the node runs (taking it again if it expired during an
/// outage); a claim found held by another node is logged as an error every time.
pub async fn renew_number(cmds: Commands, name: String, n: u16) {
    let script = Script::new(CLAIM);
    let ttl = NUMBER_TTL.as_millis() as u64;
    loop {
        tokio::time::sleep(RENEW_NUMBER_EVERY).await;
        match cmds
            .script::<redis::Value>(script.key(number_key(&cmds, n)).arg(&name).arg(ttl))
            .await
        {
            Ok(redis::Value::Int(1)) => {}
            Ok(_) => {
                tracing::error!(
                    number = n,
                    "this node's snowflake number is held by another node; restart this node"
                )
            }
            Err(e) => tracing::warn!(error = %e, "renewing the node number failed; retrying"),
        }
    }
}
