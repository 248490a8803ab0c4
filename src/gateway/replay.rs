//! The replay buffer, sans-IO: the events a session was sent, per lane, kept for a while so
//! a client that reconnects can be given exactly what it missed. Bounded by count, bytes and
//! age; whatever falls out moves the lane's "oldest available" mark, so a resume that needs
//! it is known to be impossible instead of silently skipping events.
//!
//! History lanes (chat, notifications) and state lanes ([`Lane::carries_state`]: presence,
//! typing, voice) are kept differently. When the buffer is full, a state lane's oldest event
//! goes first: a client that never reads its typing lane must not have its chat pushed out
//! by typing indicators (the soak found exactly that — chat-only sessions lost their exact
//! resume to typing events they never asked for). And a state lane never refuses a replay:
//! where the buffer no longer reaches the position, it gives what is still there — the
//! snapshot in `Resumed` is current, and typing indicators expire on their own.

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
    seq: u64,
    /// Position in the order of arrival across lanes (the oldest goes first).
    order: u64,
    at: Instant,
    body: Bytes,
}

/// Events sent on a session's lanes, oldest first per lane.
#[derive(Debug)]
pub struct ReplayBuffer {
    limits: ReplayLimits,
    lanes: [VecDeque<Entry>; 5],
    next_order: u64,
    len: usize,
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
            lanes: Default::default(),
            next_order: 0,
            len: 0,
            bytes: 0,
            oldest: [1; 5],
        }
    }

    fn drop_front(&mut self, lane: Lane) {
        if let Some(e) = self.lanes[lane.index()].pop_front() {
            self.len -= 1;
            self.bytes -= e.body.len();
            let o = &mut self.oldest[lane.index()];
            *o = (*o).max(e.seq + 1);
        }
    }

    /// The lane whose front is the oldest event among `lanes` that have any.
    fn oldest_of(&self, lanes: impl Iterator<Item = Lane>) -> Option<Lane> {
        lanes
            .filter_map(|l| self.lanes[l.index()].front().map(|e| (e.order, l)))
            .min_by_key(|(order, _)| *order)
            .map(|(_, l)| l)
    }

    /// Records event `seq` of `lane` sent at `now`.
    pub fn push(&mut self, lane: Lane, seq: u64, body: Bytes, now: Instant) {
        self.bytes += body.len();
        self.len += 1;
        self.lanes[lane.index()].push_back(Entry {
            seq,
            order: self.next_order,
            at: now,
            body,
        });
        self.next_order += 1;
        self.expire(now);
        while self.len > self.limits.max_events || self.bytes > self.limits.max_bytes {
            // State first; history only when no state is left.
            let victim = self
                .oldest_of(Lane::ALL.into_iter().filter(|l| l.carries_state()))
                .or_else(|| self.oldest_of(Lane::ALL.into_iter()));
            let Some(victim) = victim else { break };
            self.drop_front(victim);
        }
    }

    /// Releases the events of `lane` up to `seq`: the client processed them (it said so in
    /// a heartbeat), and a resume starts after what it processed.
    pub fn release(&mut self, lane: Lane, seq: u64) {
        while self.lanes[lane.index()].front().is_some_and(|e| e.seq <= seq) {
            self.drop_front(lane);
        }
    }

    /// Keeps only the newest `n` events of `lane`.
    pub fn keep_last(&mut self, lane: Lane, n: usize) {
        while self.lanes[lane.index()].len() > n {
            self.drop_front(lane);
        }
    }

    /// Drops events older than the window.
    pub fn expire(&mut self, now: Instant) {
        for lane in Lane::ALL {
            while self.lanes[lane.index()]
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > self.limits.window)
            {
                self.drop_front(lane);
            }
        }
    }

    /// The events of `lane` after `after`, in order — or what is missing. `sent` is the last
    /// seq sent on the lane (a client claiming more is refused as `Missing` too). A state
    /// lane whose events after `after` partly fell out gives those still buffered.
    pub fn since(&self, lane: Lane, after: u64, sent: u64) -> Result<Vec<(u64, Bytes)>, Missing> {
        let oldest = self.oldest[lane.index()];
        if after > sent || (after + 1 < oldest && !lane.carries_state()) {
            return Err(Missing { lane, oldest });
        }
        Ok(self.lanes[lane.index()]
            .iter()
            .filter(|e| e.seq > after)
            .map(|e| (e.seq, e.body.clone()))
            .collect())
    }

    /// Events buffered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    fn state_lanes_make_room_first_and_never_refuse() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits {
            max_events: 4,
            max_bytes: 1000,
            window: Duration::from_secs(60),
        });
        r.push(Lane::Chat, 1, b(10), t0);
        r.push(Lane::Chat, 2, b(10), t0);
        // A flood of typing indicators the client never reads.
        for seq in 1..=10 {
            r.push(Lane::Typing, seq, b(10), t0);
        }
        // Chat, older than all of them, is still whole: typing made the room.
        assert_eq!(r.since(Lane::Chat, 0, 2).unwrap().len(), 2);
        assert_eq!(r.len(), 4);
        // Typing from 0 gives what is left (9, 10), not a refusal...
        let got: Vec<u64> = r.since(Lane::Typing, 0, 10).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![9, 10]);
        // ...but a position beyond what was sent is still refused.
        assert!(r.since(Lane::Typing, 11, 10).is_err());
        // With no state left, history goes, oldest first, and is refused once gone.
        for seq in 3..=6 {
            r.push(Lane::Chat, seq, b(10), t0);
        }
        assert!(r.since(Lane::Typing, 0, 10).unwrap().is_empty());
        assert_eq!(
            r.since(Lane::Chat, 0, 6),
            Err(Missing {
                lane: Lane::Chat,
                oldest: 3
            })
        );
        assert_eq!(r.since(Lane::Chat, 2, 6).unwrap().len(), 4);
    }

    #[test]
    fn released_and_trimmed_events_are_gone_and_known_to_be() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits::default());
        for seq in 1..=5 {
            r.push(Lane::Chat, seq, b(10), t0);
            r.push(Lane::Typing, seq, b(10), t0);
        }
        r.release(Lane::Chat, 3);
        assert_eq!(r.len(), 7);
        let got: Vec<u64> = r.since(Lane::Chat, 3, 5).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![4, 5]);
        // A resume from before what was acknowledged is refused, not served with a hole.
        assert!(r.since(Lane::Chat, 2, 5).is_err());
        // Releasing again, or past what is there, is harmless.
        r.release(Lane::Chat, 3);
        r.release(Lane::Chat, 9);
        assert!(r.since(Lane::Chat, 5, 5).unwrap().is_empty());
        r.keep_last(Lane::Typing, 2);
        let got: Vec<u64> = r.since(Lane::Typing, 0, 5).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(got, vec![4, 5]);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_oldest_state_event_goes_first_across_state_lanes() {
        let t0 = Instant::now();
        let mut r = ReplayBuffer::new(ReplayLimits {
            max_events: 3,
            max_bytes: 1000,
            window: Duration::from_secs(60),
        });
        r.push(Lane::Voice, 1, b(1), t0);
        r.push(Lane::Presence, 1, b(1), t0);
        r.push(Lane::Notifications, 1, b(1), t0);
        r.push(Lane::Presence, 2, b(1), t0);
        // Voice 1 was the oldest state event.
        assert!(r.since(Lane::Voice, 0, 1).unwrap().is_empty());
        assert_eq!(r.since(Lane::Presence, 0, 2).unwrap().len(), 2);
        assert_eq!(r.since(Lane::Notifications, 0, 1).unwrap().len(), 1);
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
