//! API keys: `Authorization: Bearer qk_<id>_<secret>`. A key's id says which configured key
//! it claims to be; the whole key's SHA-256 is compared in constant time with the one
//! configured (the secret itself is stored nowhere: 256 random bits need no slow hash). Each
//! key has scopes and its own rate limit. Keys never reach a log line: only their id does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

use super::error::{Problem, SCOPE_MISSING, UNAUTHORIZED};
use crate::config::ApiKeyConfig;
use crate::limits::{Bucket, Rate};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read history.
    MessagesRead,
    /// Post, edit, delete messages and reactions.
    MessagesWrite,
    /// Read guilds, channels, members, permissions.
    GuildsRead,
    /// Guilds, channels, roles, members, invites, DMs.
    GuildsWrite,
    /// Kick, ban, delete others' messages.
    Moderation,
    /// List sessions.
    SessionsRead,
    /// Disconnect sessions, revoke tokens.
    SessionsWrite,
    /// Query presence.
    PresenceRead,
    /// Voice: participants, disconnect, mute, deafen, move.
    VoiceAdmin,
    /// Deliver application events.
    EventsWrite,
    /// Read user profiles.
    UsersRead,
    /// Upsert user profiles, relationships.
    UsersWrite,
    /// Webhook endpoints: create, change, delete, rotate secrets, delivery logs, redeliver.
    Webhooks,
    /// The retained event log (`GET /events`).
    EventsRead,
    /// Everything.
    Admin,
}

impl Scope {
    /// Every scope with its name.
    pub const ALL: [(Scope, &'static str); 15] = [
        (Scope::MessagesRead, "messages:read"),
        (Scope::MessagesWrite, "messages:write"),
        (Scope::GuildsRead, "guilds:read"),
        (Scope::GuildsWrite, "guilds:write"),
        (Scope::Moderation, "moderation"),
        (Scope::SessionsRead, "sessions:read"),
        (Scope::SessionsWrite, "sessions:write"),
        (Scope::PresenceRead, "presence:read"),
        (Scope::VoiceAdmin, "voice:admin"),
        (Scope::EventsWrite, "events:write"),
        (Scope::UsersRead, "users:read"),
        (Scope::UsersWrite, "users:write"),
        (Scope::Webhooks, "webhooks"),
        (Scope::EventsRead, "events:read"),
        (Scope::Admin, "admin"),
    ];

    /// The scope named `s`.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.iter().find(|(_, n)| *n == s).map(|(sc, _)| *sc)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Scope::ALL
            .iter()
            .find(|(sc, _)| *sc == self)
            .map_or("admin", |(_, n)| n)
    }
}

/// The key a request came with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    scopes: Vec<Scope>,
}

impl Caller {
    /// Refuses (403 `SCOPE_MISSING`) unless the key has `scope`, `admin`, or — for a read
    /// scope — the write scope of the same things.
    pub fn need(&self, scope: Scope) -> Result<(), Problem> {
        let writer = match scope {
            Scope::MessagesRead => Some(Scope::MessagesWrite),
            Scope::GuildsRead => Some(Scope::GuildsWrite),
            Scope::SessionsRead => Some(Scope::SessionsWrite),
            Scope::UsersRead => Some(Scope::UsersWrite),
            Scope::EventsRead => Some(Scope::Webhooks),
            _ => None,
        };
        if self.scopes.contains(&scope)
            || self.scopes.contains(&Scope::Admin)
            || writer.is_some_and(|w| self.scopes.contains(&w))
        {
            Ok(())
        } else {
            Err(Problem::new(
                SCOPE_MISSING,
                format!("this key lacks the scope {}", scope.name()),
            ))
        }
    }

    /// Its scopes' names.
    pub fn scope_names(&self) -> Vec<&'static str> {
        self.scopes.iter().map(|s| s.name()).collect()
    }
}

struct Key {
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured keys and their rate limits.
pub struct Keys {
    keys: HashMap<String, Key>,
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The rate-limit state after a request was counted: limit, remaining, seconds to full.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Requests at once.
    pub limit: u64,
    /// Left now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// Whether two digests are equal, in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Keys {
    /// The keys of the configuration (validated there), each limited to `rate`.
    pub fn new(cfg: &[ApiKeyConfig], rate: Rate) -> Self {
        let keys = cfg
            .iter()
            .filter_map(|k| {
                let mut sha = [0u8; 32];
                hex::decode_to_slice(&k.secret_sha256, &mut sha).ok()?;
                Some((
                    k.id.clone(),
                    Key {
                        sha256: sha,
                        scopes: k.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                    },
                ))
            })
            .collect();
        Self {
            keys,
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The caller of a request whose `Authorization` header is `header`.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, Problem> {
        let refuse = |why: &str| Problem::new(UNAUTHORIZED, why.to_string());
        let Some(h) = header else {
            return Err(refuse("no Authorization: Bearer key"));
        };
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| refuse("Authorization is not a Bearer key"))?
            .trim();
        // qk_<id>_<64 hex digits>: the id may hold `_` itself, the secret never does.
        let id = token
            .strip_prefix("qk_")
            .filter(|rest| rest.len() > SECRET_HEX + 1 && rest.is_char_boundary(rest.len() - SECRET_HEX - 1))
            .and_then(|rest| rest[..rest.len() - SECRET_HEX].strip_suffix('_'))
            .ok_or_else(|| refuse("not a Quaver API key (qk_<id>_<secret>)"))?;
        let key = self.keys.get(id).ok_or_else(|| refuse("unknown or revoked key"))?;
        if !same(&sha256(token.as_bytes()), &key.sha256) {
            return Err(refuse("unknown or revoked key"));
        }
        Ok(Caller {
            key_id: id.to_string(),
            scopes: key.scopes.clone(),
        })
    }

    /// Counts one request of `key_id` at `now`: the quota left, and — when the key is over
    /// its rate — the 429 problem saying when to retry.
    pub fn take(&self, key_id: &str, now: Instant) -> (Quota, Option<Box<Problem>>) {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = b
            .entry(key_id.to_string())
            .or_insert_with(|| Bucket::new(self.rate, now));
        let taken = bucket.take(now);
        let remaining = bucket.remaining(now);
        let quota = Quota {
            limit: self.rate.burst as u64,
            remaining,
            reset_secs: ((self.rate.burst - remaining as f64) / self.rate.per_sec.max(f64::MIN_POSITIVE)).ceil() as u64,
        };
        let refused = taken.err().map(|wait| {
            let mut p = Problem::new(
                quaver_proto::ErrorCode::RATE_LIMITED.0,
                format!("key {key_id}: over {} requests a second", self.rate.per_sec),
            );
            p.retry_after_ms = Some(wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
            Box::new(p)
        });
        (quota, refused)
    }
}

/// Hex digits of a key's secret (256 bits).
const SECRET_HEX: usize = 64;

/// A new key for id `id`: (the key to hand the backend, the hex SHA-256 to configure).
pub fn mint(id: &str) -> anyhow::Result<(String, String)> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no system randomness to make a key from"))?;
    let key = format!("qk_{id}_{}", hex::encode(secret));
    let hash = hex::encode(sha256(key.as_bytes()));
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, String) {
        let (key, hash) = mint("ops_1").unwrap();
        let cfg = vec![ApiKeyConfig {
            id: "ops_1".into(),
            secret_sha256: hash,
            scopes: vec!["messages:write".into()],
        }];
        (
            Keys::new(
                &cfg,
                Rate {
                    burst: 2.0,
                    per_sec: 1.0,
                },
            ),
            key,
        )
    }

    #[test]
    fn a_minted_key_authenticates_and_nothing_else_does() {
        let (k, key) = keys();
        let c = k.authenticate(Some(&format!("Bearer {key}"))).unwrap();
        assert_eq!(c.key_id, "ops_1", "an id may hold an underscore");
        assert!(c.need(Scope::MessagesWrite).is_ok());
        assert!(c.need(Scope::MessagesRead).is_ok(), "who may write may read");
        assert_eq!(c.need(Scope::Moderation).unwrap_err().code, SCOPE_MISSING);
        assert_eq!(c.need(Scope::GuildsRead).unwrap_err().code, SCOPE_MISSING);
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('a') { 'b' } else { 'a' });
        for bad in [
            None,
            Some("Basic abc".to_string()),
            Some("Bearer qk_ops".to_string()),
            Some(format!("Bearer {wrong}")),
            Some(format!("Bearer {}", key.replacen("qk_ops_1_", "qk_dev_", 1))),
            Some("Bearer qk__".to_string()),
            Some("Bearer qk_é".to_string()),
        ] {
            let r = k.authenticate(bad.as_deref());
            assert_eq!(r.unwrap_err().code, UNAUTHORIZED, "{bad:?}");
        }
    }

    #[test]
    fn a_key_over_its_rate_is_told_when_to_retry() {
        let (k, _) = keys();
        let t0 = Instant::now();
        assert_eq!(k.take("ops_1", t0).0.remaining, 1);
        assert_eq!(k.take("ops_1", t0).0.remaining, 0);
        let (q, p) = k.take("ops_1", t0);
        let p = p.expect("a third request within the burst of 2 is refused");
        assert_eq!((p.status, q.remaining), (429, 0));
        assert!(p.retry_after_ms.unwrap() > 900);
        assert!(k.take("ops_1", t0 + std::time::Duration::from_secs(1)).1.is_none());
    }
}
