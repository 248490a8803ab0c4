//! Where a voice channel lives in a cluster: on one node at a time, through a lease in
//! Redis (`q:vl:<channel>` = the owner's name, endpoint and certificate hashes; `SET NX PX`,
//! renewed every few seconds while the owner has participants, deleted when the last one
//! leaves). A join arriving on another node is answered `VoiceServer` with the owner's
//! endpoint; when the owner dies its lease expires and the next join, wherever it arrives,
//! takes the channel.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;

use crate::cluster::redis::Commands;

/// A lease not renewed for this long is free.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the owner renews its leases (and releases emptied channels).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Takes the lease when it is free, renews it when it is ours; returns the holder.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Who holds a voice channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This node: join here.
    Here,
    /// Another node: the client goes there.
    Elsewhere {
        /// Its endpoint (`host:port`).
        endpoint: String,
        /// Its development certificate hashes (empty with a real certificate).
        cert_hashes: Vec<Vec<u8>>,
    },
}

/// This node's voice leases.
#[derive(Debug)]
pub struct VoiceLeases {
    cmds: Commands,
    /// The lease value naming this node: `name \n endpoint \n hex,hex`.
    me: String,
    /// Channels whose lease this node holds.
    held: Mutex<HashSet<u64>>,
    claim: Script,
    release: Script,
}

fn parse(v: &str) -> Option<(String, Vec<Vec<u8>>)> {
    let mut parts = v.splitn(3, '\n');
    let _node = parts.next()?;
    let endpoint = parts.next()?.to_string();
    let hashes = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|h| !h.is_empty())
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    Some((endpoint, hashes))
}

impl VoiceLeases {
    /// Leases for node `node`, reachable at `endpoint` with these certificate hashes.
    pub fn new(cmds: Commands, node: &str, endpoint: &str, cert_hashes: &[[u8; 32]]) -> Self {
        let hashes: Vec<String> = cert_hashes.iter().map(hex::encode).collect();
        Self {
            cmds,
            me: format!("{node}\n{endpoint}\n{}", hashes.join(",")),
            held: Mutex::new(HashSet::new()),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, channel: u64) -> String {
        self.cmds.key(&format!("q:vl:{channel}"))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who holds `channel` — this node takes it when it is free.
    pub async fn claim(&self, channel: u64) -> redis::RedisResult<Holder> {
        let ttl = LEASE_TTL.as_millis() as u64;
        let v: String = self
            .cmds
            .script(self.claim.key(self.key(channel)).arg(&self.me).arg(ttl))
            .await?;
        if v == self.me {
            self.held().insert(channel);
            return Ok(Holder::Here);
        }
        match parse(&v) {
            Some((endpoint, cert_hashes)) => Ok(Holder::Elsewhere { endpoint, cert_hashes }),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unreadable voice lease",
            ))),
        }
    }

    /// Renews the leases of channels that still have participants here (`active`) and
    /// releases the others. A lease found taken by another node (after an outage longer
    /// than the TTL) is logged: that channel has split until its participants rejoin.
    pub async fn renew(&self, active: &HashSet<u64>) {
        let held: Vec<u64> = self.held().iter().copied().collect();
        let ttl = LEASE_TTL.as_millis() as u64;
        for c in held {
            if active.contains(&c) {
                match self
                    .cmds
                    .script::<String>(self.claim.key(self.key(c)).arg(&self.me).arg(ttl))
                    .await
                {
                    Ok(v) if v != self.me => {
                        tracing::error!(channel = c, "this node's voice lease was taken by another node");
                        self.held().remove(&c);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(channel = c, error = %e, "renewing a voice lease failed; retrying"),
                }
            } else if self
                .cmds
                .script::<i64>(self.release.key(self.key(c)).arg(&self.me))
                .await
                .is_ok()
            {
                self.held().remove(&c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_parse() {
        assert_eq!(
            parse("n1\n10.0.0.1:4433\nabab,cdcd"),
            Some(("10.0.0.1:4433".into(), vec![vec![0xab, 0xab], vec![0xcd, 0xcd]]))
        );
        assert_eq!(parse("n1\nh:1\n"), Some(("h:1".into(), vec![])));
        assert_eq!(parse("garbage"), None);
    }
}
