//! Webhooks: what happens in Quaver, told to the application's backend — durably.
//!
//! - **Recorded with the change.** An event about a stored change is written to the event
//!   log (`hook_events`) in the change's own transaction, with one delivery row per endpoint
//!   that wants it (`store::hooks`). Either both commit or neither does: a node killed right
//!   after the commit leaves the deliveries in the database for any node to send.
//! - **Delivered by any node** ([`deliver`]): each endpoint's ordering keys are spread over
//!   [`crate::store::PARTITIONS`] partitions, each leased (in the database) to one node at a
//!   time; a dead node's leases run out and another takes its backlog. A node that
//!   commits deliveries tells the cluster (`HooksWritten` on the bus), so the holder of
//!   their partition looks at once rather than at its next poll; endpoint changes are told
//!   the same way (`EndpointsChanged`), so every node records for a new endpoint at once.
//! - **At least once, in order per key.** A key's next event waits until the one before it
//!   was answered with 2xx (or given up after the retry period), so a receiver sees each
//!   key's events in `key_seq` order; different keys go out in parallel, up to
//!   `concurrency` at once per endpoint — fewer while it answers as an overloaded receiver
//!   does (a window halved on 429, 502–504 or a timeout, grown back on 2xx). Retries back off exponentially with jitter
//!   (honouring `Retry-After`) for `retry_for` (3 days by default). A receiver deduplicates
//!   on `webhook-id`.
//! - **Signed** the Standard Webhooks way (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one signature per
//!   live secret while a secret rotates), with the reference crate `standardwebhooks`.
//! - **A `410 Gone` disables** the endpoint (an `endpoint.disabled` event and a metric say so).
//!
//! The catalogue of event types is [`catalogue`].

pub mod catalogue;
mod client;
pub mod deliver;
pub mod hooks;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::de_duration;
use crate::store::{EndpointSecret, LoggedEvent};

/// Webhook settings (TOML `[webhooks]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Keep every event in the log (`GET /api/v1/events`), even those no endpoint wants:
    /// `true`, `false` (only what an endpoint wants is written), or unset (the default):
    /// on while at least one endpoint exists — a server without webhooks writes nothing.
    pub log: Option<bool>,
    /// How long logged events (and finished deliveries) are kept. Default 7 days.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// How long a delivery is retried before it is given up. Default 3 days.
    #[serde(deserialize_with = "de_duration")]
    pub retry_for: Duration,
    /// The first retry's delay; each next one doubles, with jitter. Default 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub retry_min: Duration,
    /// The longest delay between retries. Default 1 h.
    #[serde(deserialize_with = "de_duration")]
    pub retry_max: Duration,
    /// Each attempt's deadline (connect, send, answer). Default 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// The most deliveries in flight at once per endpoint (each to a different key).
    /// Default 64. An endpoint answering 429, 502–504 or not in time gets fewer at once
    /// (halved, then grown back by one per window of 2xx answers).
    pub concurrency: usize,
    /// How long a node's lease on an endpoint partition lasts without renewal (renewed at
    /// a third of it): how soon another node takes over a dead node's deliveries.
    /// Default 15 s.
    #[serde(deserialize_with = "de_duration")]
    pub lease: Duration,
    /// How long the secret replaced by a rotation keeps signing beside the new one.
    /// Default 24 h.
    #[serde(deserialize_with = "de_duration")]
    pub rotation_overlap: Duration,
    /// A PEM file of certificates to trust for HTTPS endpoints, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Endpoints configured here (changed only here; the API adds others).
    pub endpoints: Vec<EndpointConfig>,
    /// Synchronous hooks (at most one of each kind).
    pub hooks: Vec<hooks::HookConfig>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            log: None,
            retention: Duration::from_secs(7 * 86_400),
            retry_for: Duration::from_secs(3 * 86_400),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency: 64,
            lease: Duration::from_secs(15),
            rotation_overlap: Duration::from_secs(86_400),
            ca_file: None,
            endpoints: Vec::new(),
            hooks: Vec::new(),
        }
    }
}

/// An endpoint in the config file (its `Debug` does not show the secret).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Letters, digits, `-` and `_`; up to 64.
    pub id: String,
    /// `https://…` (or `http://…`).
    pub url: String,
    /// `whsec_<base64 of 24 to 64 bytes>` (`quaver webhook-secret` makes one).
    pub secret: String,
    /// Event type patterns (`*`, `message.*`, `member.joined`). Default `["*"]`.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"whsec_…")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// Why an endpoint's settings are refused.
pub fn check_endpoint(id: &str, url: &str, secret: Option<&str>, events: &[String]) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err("id: 1 to 64 letters, digits, '-' or '_'".into());
    }
    let u = url::Url::parse(url).map_err(|e| format!("url: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("url: an http:// or https:// URL with a host".into());
    }
    if url.len() > 2048 {
        return Err("url: over 2048 characters".into());
    }
    if let Some(s) = secret {
        check_secret(s)?;
    }
    if events.is_empty() || events.len() > 64 {
        return Err("events: 1 to 64 patterns".into());
    }
    if let Some(bad) = events.iter().find(|p| !catalogue::valid_pattern(p)) {
        return Err(format!("events: {bad:?} matches no event type"));
    }
    Ok(())
}

/// Whether `s` is a usable signing secret.
pub fn check_secret(s: &str) -> Result<(), String> {
    use base64::Engine;
    let raw = s.strip_prefix("whsec_").ok_or("secret: whsec_ followed by base64")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| "secret: whsec_ followed by base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err("secret: 24 to 64 bytes".into());
    }
    Ok(())
}

/// A new random signing secret, `whsec_<base64 of 32 bytes>`.
pub fn new_secret() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    // Invariant: the system's random source works (ring fails only without one).
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .expect("the system random source works");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// `webhook-signature`: one `v1,<signature>` per secret still signing at `now_ms`.
pub fn sign(secrets: &[EndpointSecret], msg_id: &str, timestamp: i64, body: &[u8], now_ms: u64) -> String {
    secrets
        .iter()
        .filter(|s| s.expires_at.is_none_or(|t| t > now_ms))
        .filter_map(|s| {
            let w = standardwebhooks::Webhook::new(&s.secret)
                .map_err(|e| tracing::warn!(error = %e, "an endpoint's secret does not parse"))
                .ok()?;
            w.sign(msg_id, timestamp, body)
                .map_err(|e| tracing::warn!(error = %e, "signing a webhook failed"))
                .ok()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `evt_<id>`.
pub fn event_id(id: u64) -> String {
    format!("evt_{id}")
}

/// RFC 3339 (UTC, milliseconds) of Unix ms.
pub fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::format_description::well_known::Rfc3339;
    t.format(&f).unwrap_or_default()
}

/// The body delivered for `e` (and served by `GET /api/v1/events`).
pub fn envelope(e: &LoggedEvent) -> catalogue::WebhookEnvelope {
    catalogue::WebhookEnvelope {
        id: event_id(e.id),
        kind: e.kind.clone(),
        timestamp: rfc3339(e.created_at_ms),
        key: e.okey.clone(),
        key_seq: e.kseq,
        // Written by the catalogue from typed values: it is JSON.
        data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_standard_one_and_covers_every_live_secret() {
        // The Standard Webhooks specification's example.
        let s = EndpointSecret {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            expires_at: None,
        };
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(
                std::slice::from_ref(&s),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body,
                0
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let old = EndpointSecret {
            secret: new_secret(),
            expires_at: Some(1000),
        };
        let both = [s.clone(), old];
        assert_eq!(sign(&both, "m", 1, b"{}", 999).split(' ').count(), 2);
        assert_eq!(sign(&both, "m", 1, b"{}", 1000).split(' ').count(), 1);
    }

    #[test]
    fn secrets_and_endpoints_are_checked() {
        assert!(check_secret(&new_secret()).is_ok());
        assert!(check_secret("whsec_c2hvcnQ=").is_err());
        assert!(check_secret("nope").is_err());
        let all = vec!["*".to_string()];
        assert!(check_endpoint("a-1", "https://example.com/hook", None, &all).is_ok());
        assert!(check_endpoint("a 1", "https://example.com/hook", None, &all).is_err());
        assert!(check_endpoint("a", "ftp://example.com/hook", None, &all).is_err());
        assert!(check_endpoint("a", "https://example.com/hook", None, &["messages.*".into()]).is_err());
        assert!(check_endpoint("a", "https://example.com/hook", None, &[]).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret = super::new_secret();
        let e = super::EndpointConfig {
            id: "a".into(),
            url: "https://x/".into(),
            secret: secret.clone(),
            events: vec!["*".into()],
            description: String::new(),
        };
        let s = crate::store::EndpointSecret {
            secret: secret.clone(),
            expires_at: None,
        };
        let h: super::hooks::HookConfig = toml::from_str(&format!(
            "kind = \"connect\"\nurl = \"https://x/\"\nsecret = {secret:?}\n"
        ))
        .unwrap();
        for text in [format!("{e:?}"), format!("{s:?}"), format!("{h:?}")] {
            assert!(!text.contains(&secret[6..]), "{text}");
        }
    }
}
