//! Where a voice channel lives in a cluster: on one node at a time, through a lease in
//! Redis (`q:vl:{<channel>}` = the owner's name, endpoint and certificate hashes; taken when
//! free, renewed every few seconds while the owner has participants, deleted when the last
//! one leaves). A join arriving on another node is answered `VoiceServer` with the owner's
//! endpoint; when the owner dies its lease expires and the next join, wherever it arrives,
//! takes the channel.
//!
//! Beside each lease, the owner keeps the channel's voice states (`q:vs:{<channel>}`: its
//! bus origin tag and the encoded states, with the lease's TTL), so a session opening on any
//! node sees who is in every voice channel in its `Ready`, and nodes whose sessions saw a
//! dead owner's participants can tell they are gone (see `Voice::reconcile`). Both keys
//! share a hash tag, so one script can touch both on a Redis Cluster.
//!
//! The lease value is written afresh on every renewal, so a renewed development
//! certificate's hash reaches the `VoiceServer` answers within [`RENEW_EVERY`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quaver_proto::VoiceState;
use redis::Script;

use crate::cluster::redis::Commands;
use crate::transport::tls::CertStore;

/// A lease not renewed for this long is free.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the owner renews its leases (and releases emptied channels).
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Takes the lease when it is free, renews it (with this node's current value) when it is
/// ours; returns the holder's value. ARGV: value, ttl ms, this node's name + "\n".
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return ARGV[1]
end
return v
";

/// Deletes the lease and the states when the lease is ours. ARGV: this node's name + "\n".
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Writes the states when the lease is ours (else the write is stale: the channel moved).
/// ARGV: this node's name + "\n", states (empty: delete), ttl ms.
const PUT_STATES: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  if ARGV[2] == '' then
    return redis.call('DEL', KEYS[2])
  end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
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
        /// Its WebSocket framing's URL (none in a lease written by a node before it was
        /// announced).
        ws_url: Option<String>,
    },
}

/// Where clients reach a node: what its leases announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// QUIC and WebTransport: `host:port`.
    pub quic: String,
    /// The WebSocket framing: `ws://…/quaver/ws` or `wss://…`.
    pub ws_url: String,
}

/// A voice channel's states as its owner last wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStates {
    /// The owner's bus origin tag.
    pub origin: u64,
    /// Everyone in the channel.
    pub states: Vec<VoiceState>,
}

impl ChannelStates {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.origin.to_be_bytes().to_vec();
        out.extend(quaver_proto::codec::encode_payload(&self.states));
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (origin, rest) = b.split_first_chunk::<8>()?;
        Some(Self {
            origin: u64::from_be_bytes(*origin),
            states: quaver_proto::codec::decode(rest).ok()?,
        })
    }
}

/// This node's voice leases.
pub struct VoiceLeases {
    cmds: Commands,
    /// `name \n`: the start of every lease value of this node.
    me: String,
    at: Endpoints,
    /// This node's bus origin tag (written with the states).
    origin: u64,
    certs: Arc<CertStore>,
    /// Channels whose lease this node holds.
    held: Mutex<HashSet<u64>>,
    claim: Script,
    release: Script,
    put_states: Script,
}

impl std::fmt::Debug for VoiceLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceLeases")
            .field("node", &self.me.trim_end())
            .finish()
    }
}

/// A lease value's endpoint, certificate hashes and WebSocket URL (a value written by an
/// older node has no fourth line).
fn parse(v: &str) -> Option<(String, Vec<Vec<u8>>, Option<String>)> {
    let mut parts = v.splitn(4, '\n');
    let _node = parts.next()?;
    let endpoint = parts.next()?.to_string();
    let hashes = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|h| !h.is_empty())
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    let ws_url = parts.next().filter(|u| !u.is_empty()).map(str::to_string);
    Some((endpoint, hashes, ws_url))
}

/// A lease value: `name \n endpoint \n hex,hex \n ws_url` (the hashes of the development
/// certificates still accepted, newest first).
fn lease_value(me: &str, at: &Endpoints, hashes: &[[u8; 32]]) -> String {
    let hashes: Vec<String> = hashes.iter().map(hex::encode).collect();
    format!("{me}{}\n{}\n{}", at.quic, hashes.join(","), at.ws_url)
}

impl VoiceLeases {
    /// Leases for node `node` (bus origin tag `origin`), reachable `at` with the
    /// development certificates of `certs`, if any.
    pub fn new(cmds: Commands, node: &str, at: Endpoints, origin: u64, certs: Arc<CertStore>) -> Self {
        Self {
            cmds,
            me: format!("{node}\n"),
            at,
            origin,
            certs,
            held: Mutex::new(HashSet::new()),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            put_states: Script::new(PUT_STATES),
        }
    }

    fn keys(&self, channel: u64) -> (String, String) {
        (
            self.cmds.key(&format!("q:vl:{{{channel}}}")),
            self.cmds.key(&format!("q:vs:{{{channel}}}")),
        )
    }

    fn value(&self) -> String {
        let dev: Vec<[u8; 32]> = self.certs.all().iter().filter(|c| c.dev).map(|c| c.sha256).collect();
        lease_value(&self.me, &self.at, &dev)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&self, channel: u64) -> redis::RedisResult<String> {
        let (lease, states) = self.keys(channel);
        let ttl = LEASE_TTL.as_millis() as u64;
        self.cmds
            .script(
                self.claim
                    .key(lease)
                    .key(states)
                    .arg(self.value())
                    .arg(ttl)
                    .arg(&self.me),
            )
            .await
    }

    /// Who holds `channel` — this node takes it when it is free.
    pub async fn claim(&self, channel: u64) -> redis::RedisResult<Holder> {
        let v = self.take(channel).await?;
        if v.starts_with(&self.me) {
            self.held().insert(channel);
            return Ok(Holder::Here);
        }
        match parse(&v) {
            Some((endpoint, cert_hashes, ws_url)) => Ok(Holder::Elsewhere {
                endpoint,
                cert_hashes,
                ws_url,
            }),
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
        for c in held {
            if active.contains(&c) {
                match self.take(c).await {
                    Ok(v) if !v.starts_with(&self.me) => {
                        tracing::error!(channel = c, "this node's voice lease was taken by another node");
                        self.held().remove(&c);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(channel = c, error = %e, "renewing a voice lease failed; retrying"),
                }
            } else {
                let (lease, states) = self.keys(c);
                if self
                    .cmds
                    .script::<i64>(self.release.key(lease).key(states).arg(&self.me))
                    .await
                    .is_ok()
                {
                    self.held().remove(&c);
                }
            }
        }
    }

    /// Writes `channel`'s states (everyone in it here; empty: nobody), if this node holds
    /// its lease.
    pub async fn put_states(&self, channel: u64, states: Vec<VoiceState>) -> redis::RedisResult<()> {
        let (lease, key) = self.keys(channel);
        let value = if states.is_empty() {
            Vec::new()
        } else {
            ChannelStates {
                origin: self.origin,
                states,
            }
            .encode()
        };
        let ttl = LEASE_TTL.as_millis() as u64;
        self.cmds
            .script::<i64>(self.put_states.key(lease).key(key).arg(&self.me).arg(value).arg(ttl))
            .await
            .map(drop)
    }

    /// The states of `channels` as their owners last wrote them (`None`: nobody there, or
    /// the owner is gone). Unreadable values read as `None` and are logged.
    pub async fn states_of(&self, channels: &[u64]) -> redis::RedisResult<Vec<(u64, Option<ChannelStates>)>> {
        let reads = channels.iter().map(|c| async move {
            let v: Option<Vec<u8>> = self.cmds.query(redis::cmd("GET").arg(self.keys(*c).1)).await?;
            let states = v.and_then(|b| {
                let s = ChannelStates::decode(&b);
                if s.is_none() {
                    tracing::warn!(channel = c, "ignored unreadable voice states in Redis");
                }
                s
            });
            Ok::<_, redis::RedisError>((*c, states))
        });
        futures_util::future::join_all(reads).await.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_parse() {
        // Written by a node from before the WebSocket URL was announced: three lines.
        assert_eq!(
            parse("n1\n10.0.0.1:4433\nabab,cdcd"),
            Some(("10.0.0.1:4433".into(), vec![vec![0xab, 0xab], vec![0xcd, 0xcd]], None))
        );
        assert_eq!(parse("n1\nh:1\n"), Some(("h:1".into(), vec![], None)));
        assert_eq!(parse("n1\nh:1\n\n"), Some(("h:1".into(), vec![], None)));
        assert_eq!(parse("garbage"), None);
        let at = Endpoints {
            quic: "h:1".into(),
            ws_url: "wss://h/quaver/ws".into(),
        };
        let v = lease_value("n1\n", &at, &[[0xab; 32]]);
        assert!(v.starts_with("n1\n"));
        assert_eq!(
            parse(&v),
            Some(("h:1".into(), vec![vec![0xab; 32]], Some("wss://h/quaver/ws".into())))
        );
        // No development certificate: an empty hash line, the URL after it.
        let v = lease_value("n1\n", &at, &[]);
        assert_eq!(
            parse(&v),
            Some(("h:1".into(), vec![], Some("wss://h/quaver/ws".into())))
        );
    }

    #[test]
    fn channel_states_round_trip_and_reject_garbage() {
        let s = ChannelStates {
            origin: 0x0102_0304_0506_0708,
            states: vec![VoiceState {
                guild_id: 1,
                channel_id: 2,
                user_id: 3,
                slot: 4,
                self_mute: true,
                self_deaf: false,
                server_mute: false,
                server_deaf: true,
                speaking: false,
            }],
        };
        assert_eq!(ChannelStates::decode(&s.encode()), Some(s));
        assert_eq!(ChannelStates::decode(&[1, 2, 3]), None);
        assert_eq!(
            ChannelStates::decode(&[0; 8].iter().chain(&[0xff; 5]).copied().collect::<Vec<_>>()),
            None
        );
    }
}
