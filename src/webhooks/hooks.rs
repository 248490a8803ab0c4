//! Synchronous hooks: decisions that belong to the application's backend, asked over HTTP
//! at the moment they are needed — may this user connect (and under which name), may this
//! message be posted (or posted rewritten), may this user join that voice channel.
//!
//! Each hook is signed like a webhook (Standard Webhooks headers, its own secret), has its
//! own deadline (1 s by default) and a policy for when the backend cannot answer in time —
//! `open` (allow) or `closed` (refuse) — and a circuit breaker: after `breaker_failures`
//! failures in a row the hook is not called for `breaker_cooldown` (the policy answers at
//! once, so a dead backend costs nothing per request); then one trial call decides whether
//! it closes again. A hook runs in the request's own task: it holds no lock, no lane and no
//! other session (a slow backend delays only the request that asked).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::client::Client;
use crate::config::de_duration;

/// Which decision a hook makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum HookKind {
    /// A session's `Hello` (and a resume): allow, refuse with a reason, or rename.
    #[serde(rename = "connect")]
    Connect,
    /// A message about to be stored: allow, refuse with a reason, or rewrite its content.
    #[serde(rename = "message.before_create")]
    MessageBeforeCreate,
    /// A voice channel join asked for by the user: allow or refuse with a reason.
    #[serde(rename = "voice.before_join")]
    VoiceBeforeJoin,
}

impl HookKind {
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::MessageBeforeCreate => "message.before_create",
            HookKind::VoiceBeforeJoin => "voice.before_join",
        }
    }
}

/// What a hook answers when the backend does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// Allow (the default: the backend's outage does not become the users' outage).
    #[default]
    Open,
    /// Refuse, saying the application could not be asked.
    Closed,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn five() -> u32 {
    5
}

/// A hook in the config file (`[[webhooks.hooks]]`; its `Debug` does not show the secret).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// `connect`, `message.before_create` or `voice.before_join`.
    pub kind: HookKind,
    /// Where it is POSTed.
    pub url: String,
    /// `whsec_…`: the signing secret.
    pub secret: String,
    /// The deadline of one call. Default 1 s.
    #[serde(default = "one_second", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// `open` (default: allow) or `closed` (refuse) when the backend fails to answer.
    #[serde(default)]
    pub on_failure: FailPolicy,
    /// Failures in a row that open the breaker. Default 5.
    #[serde(default = "five")]
    pub breaker_failures: u32,
    /// How long an open breaker skips the backend. Default 10 s.
    #[serde(default = "ten_seconds", deserialize_with = "de_duration")]
    pub breaker_cooldown: Duration,
}

impl std::fmt::Debug for HookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookConfig")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("secret", &"whsec_…")
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

/// A hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead — with `content` instead of the message's (message hook) or `name` as the
    /// display name (connect hook), when given.
    Allow {
        /// Rewritten content.
        content: Option<String>,
        /// Display name.
        name: Option<String>,
    },
    /// Refuse, saying `reason` to the user.
    Deny {
        /// Shown to the user.
        reason: String,
    },
}

impl Verdict {
    fn allow() -> Self {
        Verdict::Allow {
            content: None,
            name: None,
        }
    }
}

/// What the backend answers (2xx, JSON).
#[derive(Debug, Deserialize)]
struct Reply {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out.
    HalfOpen,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
    denied: AtomicU64,
    latency_us: AtomicU64,
}

#[derive(Debug)]
struct Hook {
    cfg: HookConfig,
    url: url::Url,
    breaker: Mutex<Breaker>,
    n: Counters,
}

/// Every configured hook.
#[derive(Debug)]
pub struct Hooks {
    hooks: Vec<Hook>,
    client: Option<Client>,
}

/// Why the configured hooks are refused.
pub fn check(hooks: &[HookConfig]) -> Result<(), String> {
    for (i, h) in hooks.iter().enumerate() {
        let name = h.kind.name();
        if hooks[..i].iter().any(|o| o.kind == h.kind) {
            return Err(format!("hook {name}: configured twice"));
        }
        let u = url::Url::parse(&h.url).map_err(|e| format!("hook {name}: url: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(format!("hook {name}: url: an http:// or https:// URL with a host"));
        }
        super::check_secret(&h.secret).map_err(|e| format!("hook {name}: {e}"))?;
        if h.timeout.is_zero() || h.timeout > Duration::from_secs(30) {
            return Err(format!("hook {name}: timeout is above 0 and at most 30 s"));
        }
        if h.breaker_failures == 0 {
            return Err(format!("hook {name}: breaker_failures is at least 1"));
        }
    }
    Ok(())
}

impl Hooks {
    /// The configured hooks (checked with [`check`]).
    pub fn new(cfg: &[HookConfig], ca_file: Option<&std::path::Path>) -> anyhow::Result<Hooks> {
        check(cfg).map_err(|e| anyhow::anyhow!("webhooks: {e}"))?;
        let hooks = cfg
            .iter()
            .map(|c| {
                Ok(Hook {
                    url: url::Url::parse(&c.url)?,
                    cfg: c.clone(),
                    breaker: Mutex::new(Breaker::Closed { failures: 0 }),
                    n: Counters::default(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client = if hooks.is_empty() {
            None
        } else {
            Some(Client::new(ca_file)?)
        };
        Ok(Hooks { hooks, client })
    }

    /// No hooks.
    pub fn none() -> Hooks {
        Hooks {
            hooks: Vec::new(),
            client: None,
        }
    }

    /// Whether a hook of `kind` is configured.
    pub fn has(&self, kind: HookKind) -> bool {
        self.hooks.iter().any(|h| h.cfg.kind == kind)
    }

    /// Asks the hook of `kind` about `data` (allows when there is none).
    pub async fn ask<T: Serialize>(&self, kind: HookKind, data: &T) -> Verdict {
        let (Some(h), Some(client)) = (self.hooks.iter().find(|h| h.cfg.kind == kind), &self.client) else {
            return Verdict::allow();
        };
        // The breaker: skip the backend while it is open; let one trial through after.
        {
            let mut b = h.breaker.lock().unwrap_or_else(|p| p.into_inner());
            match *b {
                Breaker::Open { until } if Instant::now() < until => {
                    h.n.skipped.fetch_add(1, Relaxed);
                    return self.fallback(h);
                }
                Breaker::Open { .. } => *b = Breaker::HalfOpen,
                Breaker::HalfOpen => {
                    h.n.skipped.fetch_add(1, Relaxed);
                    return self.fallback(h);
                }
                Breaker::Closed { .. } => {}
            }
        }
        h.n.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        let result = call(client, h, kind, data).await;
        h.n.latency_us.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        let mut b = h.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(v) => {
                *b = Breaker::Closed { failures: 0 };
                if matches!(v, Verdict::Deny { .. }) {
                    h.n.denied.fetch_add(1, Relaxed);
                }
                v
            }
            Err(e) => {
                h.n.failures.fetch_add(1, Relaxed);
                let failures = match *b {
                    Breaker::Closed { failures } => failures + 1,
                    _ => h.cfg.breaker_failures,
                };
                if failures >= h.cfg.breaker_failures {
                    if !matches!(*b, Breaker::Open { .. }) {
                        tracing::warn!(hook = kind.name(), error = %e, cooldown = ?h.cfg.breaker_cooldown, "hook failing: its breaker opens (the failure policy answers meanwhile)");
                    }
                    *b = Breaker::Open {
                        until: Instant::now() + h.cfg.breaker_cooldown,
                    };
                } else {
                    tracing::warn!(hook = kind.name(), error = %e, "hook failed: its failure policy answers");
                    *b = Breaker::Closed { failures };
                }
                drop(b);
                self.fallback(h)
            }
        }
    }

    fn fallback(&self, h: &Hook) -> Verdict {
        match h.cfg.on_failure {
            FailPolicy::Open => Verdict::allow(),
            FailPolicy::Closed => {
                h.n.denied.fetch_add(1, Relaxed);
                Verdict::Deny {
                    reason: "the application could not be asked; try again in a moment".into(),
                }
            }
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        if self.hooks.is_empty() {
            return o;
        }
        let series: [Series; 6] = [
            ("quaver_hook_calls_total", "Calls made to a hook.", "counter", |h| {
                h.n.calls.load(Relaxed)
            }),
            (
                "quaver_hook_failures_total",
                "Hook calls that failed (timeout, status, bad answer).",
                "counter",
                |h| h.n.failures.load(Relaxed),
            ),
            (
                "quaver_hook_skipped_total",
                "Hook calls skipped by an open breaker.",
                "counter",
                |h| h.n.skipped.load(Relaxed),
            ),
            (
                "quaver_hook_denied_total",
                "Requests a hook refused (or its closed policy did).",
                "counter",
                |h| h.n.denied.load(Relaxed),
            ),
            (
                "quaver_hook_latency_seconds_sum",
                "Time spent in hook calls.",
                "counter",
                |h| h.n.latency_us.load(Relaxed),
            ),
            (
                "quaver_hook_breaker_open",
                "1 while a hook's breaker is open or trying.",
                "gauge",
                |h| {
                    let b = *h.breaker.lock().unwrap_or_else(|p| p.into_inner());
                    u64::from(!matches!(b, Breaker::Closed { .. }))
                },
            ),
        ];
        for (name, help, kind, f) in series {
            o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for h in &self.hooks {
                let v = f(h);
                if name.ends_with("_seconds_sum") {
                    o.push_str(&format!(
                        "{name}{{hook=\"{}\"}} {}\n",
                        h.cfg.kind.name(),
                        v as f64 / 1e6
                    ));
                } else {
                    o.push_str(&format!("{name}{{hook=\"{}\"}} {v}\n", h.cfg.kind.name()));
                }
            }
        }
        o
    }
}

/// A metric: name, help, type, and its value for a hook.
type Series = (&'static str, &'static str, &'static str, fn(&Hook) -> u64);

/// One call: the backend's verdict, or why there is none.
async fn call<T: Serialize>(client: &Client, h: &Hook, kind: HookKind, data: &T) -> Result<Verdict, String> {
    let now = crate::ids::now_ms();
    let id = format!("hook_{}", hex::encode(random_bytes()));
    let body = serde_json::to_vec(&serde_json::json!({
        "id": id,
        "type": kind.name(),
        "timestamp": super::rfc3339(now),
        "data": data,
    }))
    .map_err(|e| format!("encoding: {e}"))?;
    let ts = (now / 1000) as i64;
    let secret = crate::store::EndpointSecret {
        secret: h.cfg.secret.clone(),
        expires_at: None,
    };
    let signature = super::sign(std::slice::from_ref(&secret), &id, ts, &body, now);
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature),
    ];
    let a = client.post(&h.url, &headers, Bytes::from(body), h.cfg.timeout).await?;
    if !(200..300).contains(&a.status) {
        return Err(format!("answered {}", a.status));
    }
    let r: Reply = serde_json::from_slice(&a.body).map_err(|e| format!("answer is not {{\"allow\": …}}: {e}"))?;
    Ok(if r.allow {
        Verdict::Allow {
            content: r.content,
            name: r.name,
        }
    } else {
        Verdict::Deny {
            reason: r
                .reason
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.chars().take(200).collect())
                .unwrap_or_else(|| "refused by the application".into()),
        }
    })
}

fn random_bytes() -> [u8; 12] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    // A hook id only needs to be unique; a failed draw leaves a time-based one.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b[..8].copy_from_slice(&crate::ids::now_ms().to_le_bytes());
    }
    b
}
