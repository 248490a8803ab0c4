//! The replay buffer, sans-IO: the events a session was sent, per lane, kept for a while so
//! a client that reconnects can be given exactly what it missed. Bounded by count, bytes and
//! age; whatever falls out moves the lane's "oldest available" mark, so a resume that needs
//! it is known to be impossible instead of silently skipping events.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::Lane;

/// Limits of one session's buffer.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Most events kept (all lanes together).
    pub max_events: usize,
    /// Most payload bytes kept.
    pub max_bytes: usize,
    /// Events older than this are dropped.
    pub window: Duration,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        Self {
            max_events: 2_000,
            max_bytes: 2 * 1024 * 1024,
            window: Duration::from_secs(120),
        }
    }
}

#[derive(Debug)]
struct Entry {
    lane: Lane,
    seq: u64,
    at: Instant,
    body: Bytes,
}

/// Events sent on a session's lanes, oldest first.
#[derive(Debug)]
pub struct ReplayBuffer {
    limits: ReplayLimits,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Per lane: the lowest seq that may still be in the buffer (1 until something drops).
    oldest: [u64; 5],
}

/// A resume that cannot be served from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// The lane.
    pub lane: Lane,
    /// The oldest seq still available.
    pub oldest: u64,
}

impl ReplayBuffer {
    /// An empty buffer.
    pub fn new(limits: ReplayLimits) -> Self {
        Self {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            oldest: [1; 5],
        }
    }

    fn drop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.body.len();
            let o = &mut self.oldest[e.lane.index()];
            *o = (*o).max(e.seq + 1);
        }
    }

    /// Records event `seq` of `lane` sent at `now`.
    pub fn push(&mut self, lane: Lane, seq: u64, body: Bytes, now: Instant) {
        self.bytes += body.len();
        self.entries.push_back(Entry {
            lane,
            seq,
            at: now,
            body,
        });
        self.expire(now);
        while self.entries.len() > self.limits.max_events || self.bytes > self.limits.max_bytes {
            self.drop_front();
        }
    }

    /// Drops events older than the window.
    pub fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > self.limits.window)
        {
            self.drop_front();
        }
    }

    /// The events of `lane` after `after`, in order — or what is missing. `sent` is the last
    /// seq sent on the lane (a client claiming more is refused as `Missing` too).
    pub fn since(&self, lane: Lane, after: u64, sent: u64) -> Result<Vec<(u64, Bytes)>, Missing> {
        let oldest = self.oldest[lane.index()];
        if after + 1 < oldest || after > sent {
            return Err(Missing { lane, oldest });
        }
        Ok(self
            .entries
            .iter()
            .filter(|e| e.lane == lane && e.seq > after)
            .map(|e| (e.seq, e.body.clone()))
            .collect())
    }

    /// Events buffered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn exact_replay_per_lane() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits::default());
        for seq in 1..=5 {
            r.push(Lane::Chat, seq, b(10), t0);
        }
        r.push(Lane::Presence, 1, b(10), t0);
        let got: Vec<u64> = r.since(Lane::Chat, 2, 5).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert!(r.since(Lane::Chat, 5, 5).unwrap().is_empty());
        assert_eq!(r.since(Lane::Presence, 0, 1).unwrap().len(), 1);
        assert_eq!(r.since(Lane::Typing, 0, 0).unwrap().len(), 0);
        // A client claiming events never sent is not served.
        assert!(r.since(Lane::Chat, 9, 5).is_err());
    }

    #[test]
    fn bounds_move_the_oldest_mark_and_refuse_what_fell_out() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits {
            max_events: 3,
            max_bytes: 1000,
            window: Duration::from_secs(60),
        });
        for seq in 1..=5 {
            r.push(Lane::Chat, seq, b(10), t0);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.since(Lane::Chat, 1, 5),
            Err(Missing {
                lane: Lane::Chat,
                oldest: 3
            })
        );
        assert_eq!(r.since(Lane::Chat, 2, 5).unwrap().len(), 3, "exactly covered");
        // Bytes bound.
        r.push(Lane::Chat, 6, b(995), t0);
        assert_eq!(r.len(), 1);
        assert!(r.since(Lane::Chat, 4, 6).is_err());
        assert_eq!(r.since(Lane::Chat, 5, 6).unwrap().len(), 1);
    }

    #[test]
    fn the_window_expires_old_events() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits {
            window: Duration::from_secs(120),
            ..Default::default()
        });
        r.push(Lane::Chat, 1, b(1), t0);
        r.push(Lane::Chat, 2, b(1), t0 + Duration::from_secs(100));
        r.expire(t0 + Duration::from_secs(121));
        assert_eq!(
            r.since(Lane::Chat, 0, 2),
            Err(Missing {
                lane: Lane::Chat,
                oldest: 2
            })
        );
        assert_eq!(r.since(Lane::Chat, 1, 2).unwrap().len(), 1);
    }
}
