//! Rate limits: token buckets, sans-IO (time is a parameter), one per user and kind of
//! request, and a flood detector that tells the session to close after persistent abuse.

use std::time::{Duration, Instant};

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
        }
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
