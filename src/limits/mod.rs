//! Rate limits: token buckets, sans-IO (time is a parameter), one per user and kind of
//! request, and a flood detector that tells the session to close after persistent abuse.
//! [`Limiter`] holds them for every user and forgets a user's state once it carries no
//! information (every bucket refilled, no refusal within the flood window).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quaver_proto::{ErrorBody, ErrorCode};

/// Kinds of rate-limited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Sending messages.
    Send,
    /// Editing and deleting messages.
    Edit,
    /// Adding and removing reactions.
    React,
    /// Guild, channel, role and membership changes.
    Manage,
    /// Fetch streams.
    Fetch,
    /// Marking channels read.
    Read,
    /// Presence changes.
    Presence,
    /// Typing starts, stops and watches.
    Typing,
    /// Voice joins, leaves, state changes and moderation.
    Voice,
}

impl Kind {
    /// Every kind, in the order of a user's bucket array.
    pub const ALL: [Kind; 9] = [
        Kind::Send,
        Kind::Edit,
        Kind::React,
        Kind::Manage,
        Kind::Fetch,
        Kind::Read,
        Kind::Presence,
        Kind::Typing,
        Kind::Voice,
    ];
}

tokio::task_local! {
    /// Set while the server API acts (its key has a rate limit of its own).
    static SERVER: ();
}

/// Runs `f` as the server API: the per-user limits do not apply to what it does on a user's
/// behalf or with a guild's authority (the API key's own limit does, before the call).
pub async fn as_server<F: std::future::Future>(f: F) -> F::Output {
    SERVER.scope((), f).await
}

fn acting_as_server() -> bool {
    SERVER.try_with(|_| ()).is_ok()
}

/// Capacity (burst) and refill rate of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens when full.
    pub burst: f64,
    /// Tokens added per second.
    pub per_sec: f64,
}

impl Kind {
    /// Default limits: generous for people, tight for scripts.
    pub fn default_rate(self) -> Rate {
        match self {
            Kind::Send => Rate {
                burst: 10.0,
                per_sec: 5.0,
            },
            Kind::Edit => Rate {
                burst: 10.0,
                per_sec: 2.0,
            },
            Kind::React => Rate {
                burst: 20.0,
                per_sec: 5.0,
            },
            Kind::Manage => Rate {
                burst: 10.0,
                per_sec: 1.0,
            },
            Kind::Fetch => Rate {
                burst: 20.0,
                per_sec: 10.0,
            },
            Kind::Read => Rate {
                burst: 20.0,
                per_sec: 10.0,
            },
            // A person changes status a few times an hour; clients re-send on reconnect.
            Kind::Presence => Rate {
                burst: 5.0,
                per_sec: 1.0,
            },
            // One start every few seconds per channel typed in, plus stops and watches.
            Kind::Typing => Rate {
                burst: 20.0,
                per_sec: 5.0,
            },
            Kind::Voice => Rate {
                burst: 10.0,
                per_sec: 2.0,
            },
        }
    }
}

/// Rate-limit settings (TOML `[limits]`); every field defaults to [`Kind::default_rate`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sending messages.
    pub send: Rate,
    /// Editing and deleting messages.
    pub edit: Rate,
    /// Reactions.
    pub react: Rate,
    /// Guild, channel, role and membership changes.
    pub manage: Rate,
    /// Fetch streams.
    pub fetch: Rate,
    /// Marking channels read.
    pub read: Rate,
    /// Presence changes.
    pub presence: Rate,
    /// Typing requests.
    pub typing: Rate,
    /// Voice-lane requests.
    pub voice: Rate,
    /// Refusals within `flood_window_secs` past which the session is closed. Default 50.
    pub flood_max: u32,
    /// The flood window. Default 10 s.
    pub flood_window_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            send: Kind::Send.default_rate(),
            edit: Kind::Edit.default_rate(),
            react: Kind::React.default_rate(),
            manage: Kind::Manage.default_rate(),
            fetch: Kind::Fetch.default_rate(),
            read: Kind::Read.default_rate(),
            presence: Kind::Presence.default_rate(),
            typing: Kind::Typing.default_rate(),
            voice: Kind::Voice.default_rate(),
            flood_max: 50,
            flood_window_secs: 10,
        }
    }
}

impl LimitsConfig {
    /// The rate for `kind`.
    pub fn rate(&self, kind: Kind) -> Rate {
        match kind {
            Kind::Send => self.send,
            Kind::Edit => self.edit,
            Kind::React => self.react,
            Kind::Manage => self.manage,
            Kind::Fetch => self.fetch,
            Kind::Read => self.read,
            Kind::Presence => self.presence,
            Kind::Typing => self.typing,
            Kind::Voice => self.voice,
        }
    }
}

/// A request refusal, or a signal that the session must be closed for flooding.
#[derive(Debug)]
pub enum Refusal {
    /// Answer the request with this error.
    Error(ErrorBody),
    /// The user keeps flooding: answer with this error, then close the session.
    Flood(ErrorBody),
}

impl From<ErrorBody> for Refusal {
    fn from(e: ErrorBody) -> Self {
        Refusal::Error(e)
    }
}

/// One user's rate-limit state.
#[derive(Debug)]
struct UserLimits {
    buckets: [Option<Bucket>; Kind::ALL.len()],
    flood: Flood,
    /// When a refusal of this user was last reported (see [`Limiter::on_refused`]).
    reported: Option<Instant>,
}

/// Told of refusals: (user, kind, whether it is a flood).
pub type RefusalSink = Box<dyn Fn(u64, Kind, bool) + Send + Sync>;

/// A user's refusals are reported at most this often (floods always).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Every user's buckets and flood counter on this node.
pub struct Limiter {
    cfg: LimitsConfig,
    users: Mutex<HashMap<u64, UserLimits>>,
    sink: std::sync::OnceLock<RefusalSink>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter with these rates.
    pub fn new(cfg: LimitsConfig) -> Self {
        Self {
            cfg,
            users: Mutex::new(HashMap::new()),
            sink: std::sync::OnceLock::new(),
        }
    }

    /// Tells `sink` of refusals (webhooks' `rate_limited`): each flood, and otherwise at
    /// most one refusal per user every 10 s. Called with the limiter's lock held: it must
    /// only hand the fact over.
    pub fn on_refused(&self, sink: RefusalSink) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("the limiter's refusal sink was set twice; the first stays");
        }
    }

    /// Takes a token for `user`'s `kind` now.
    pub fn check(&self, user: u64, kind: Kind) -> Result<(), Refusal> {
        if acting_as_server() {
            return Ok(());
        }
        self.check_at(user, kind, Instant::now())
    }

    /// Takes a token for `user`'s `kind` at `now`; a refusal says when to retry, and past
    /// the flood threshold that the session must close.
    pub fn check_at(&self, user: u64, kind: Kind, now: Instant) -> Result<(), Refusal> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let u = users.entry(user).or_insert_with(|| UserLimits {
            buckets: Default::default(),
            flood: Flood::new(Duration::from_secs(self.cfg.flood_window_secs), self.cfg.flood_max, now),
            reported: None,
        });
        let slot = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        let bucket = u.buckets[slot].get_or_insert_with(|| Bucket::new(self.cfg.rate(kind), now));
        let Err(wait) = bucket.take(now) else {
            return Ok(());
        };
        let body = ErrorBody {
            code: ErrorCode::RATE_LIMITED,
            message: format!("rate limited ({kind:?})"),
            retry_after_ms: Some(wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
        };
        let flood = u.flood.refused(now);
        if let Some(sink) = self.sink.get()
            && (flood
                || u.reported
                    .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY))
        {
            u.reported = Some(now);
            sink(user, kind, flood);
        }
        Err(if flood {
            Refusal::Flood(body)
        } else {
            Refusal::Error(body)
        })
    }

    /// Forgets users whose state says nothing any more: every bucket full again and no
    /// refusal within the flood window. Returns how many were forgotten.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let before = users.len();
        users.retain(|_, u| !(u.flood.idle(now) && u.buckets.iter().flatten().all(|b| b.full(now))));
        before - users.len()
    }

    /// Users with state.
    pub fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no user has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            last: now,
        }
    }

    /// Whether the bucket would be full at `now` (a fresh one is the same).
    pub fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate.per_sec >= self.rate.burst
    }

    /// Whole tokens left at `now`.
    pub fn remaining(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst).floor() as u64
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_sec))
        }
    }
}

/// Counts refusals; too many in a window means a flood.
#[derive(Debug, Clone)]
pub struct Flood {
    window: Duration,
    max: u32,
    start: Instant,
    count: u32,
}

impl Flood {
    /// More than `max` refusals within `window` is a flood.
    pub fn new(window: Duration, max: u32, now: Instant) -> Self {
        Self {
            window,
            max,
            start: now,
            count: 0,
        }
    }

    /// Whether no refusal happened within the window before `now` (a fresh counter is the
    /// same).
    pub fn idle(&self, now: Instant) -> bool {
        self.count == 0 || now.saturating_duration_since(self.start) > self.window
    }

    /// Records a refusal; true when the session should be closed.
    pub fn refused(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.start) > self.window {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_forgets_users_once_their_state_is_back_to_fresh() {
        let cfg = LimitsConfig::default();
        let l = Limiter::new(cfg.clone());
        let t0 = Instant::now();
        for user in 0..1000 {
            assert!(l.check_at(user, Kind::Send, t0).is_ok());
        }
        // A refused user is kept for the flood window.
        for _ in 0..cfg.send.burst as usize {
            let _ = l.check_at(7, Kind::Send, t0);
        }
        assert!(matches!(l.check_at(7, Kind::Send, t0), Err(Refusal::Error(_))));
        assert_eq!(l.len(), 1000);
        assert_eq!(l.sweep(t0), 0, "nothing refilled yet");
        // One token refills in 1/per_sec: everyone but 7 is fresh again.
        let t1 = t0 + Duration::from_secs_f64(1.0 / cfg.send.per_sec) + Duration::from_millis(1);
        assert_eq!(l.sweep(t1), 999);
        let t2 = t0 + Duration::from_secs(cfg.flood_window_secs + 3);
        assert_eq!(l.sweep(t2), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn limiter_flood_closes_after_persistent_refusals() {
        let cfg = LimitsConfig {
            flood_max: 3,
            ..Default::default()
        };
        let l = Limiter::new(cfg.clone());
        let t0 = Instant::now();
        let mut floods = 0;
        for _ in 0..(cfg.presence.burst as usize + 4) {
            if let Err(Refusal::Flood(_)) = l.check_at(1, Kind::Presence, t0) {
                floods += 1;
            }
        }
        assert_eq!(floods, 1, "the fourth refusal within the window is a flood");
        // Other users and kinds are unaffected.
        assert!(l.check_at(2, Kind::Presence, t0).is_ok());
        assert!(l.check_at(1, Kind::Typing, t0).is_ok());
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                burst: 3.0,
                per_sec: 2.0,
            },
            t0,
        );
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(b.take(t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(t0 + Duration::from_millis(1000)).is_ok());
        // Refill caps at the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn flood_needs_persistence_within_the_window() {
        let t0 = Instant::now();
        let mut f = Flood::new(Duration::from_secs(10), 3, t0);
        assert!(!f.refused(t0) && !f.refused(t0) && !f.refused(t0));
        assert!(f.refused(t0 + Duration::from_secs(1)));
        let mut f = Flood::new(Duration::from_secs(10), 3, t0);
        for k in 0..10 {
            assert!(!f.refused(t0 + Duration::from_secs(11 * k)), "spread out is fine");
        }
    }
}
