//! Presence and typing to one connection, coalesced (issue 28, item 5): what reaches a
//! connection on its quiet lanes within a short window leaves in one packet.
//!
//! At light load every event written to a connection is its own QUIC packet — encrypted,
//! sent, acknowledged by the client and that acknowledgement received and decrypted — and
//! that per-packet work is most of a delivery's cost (bench/RESULTS.md, "The floor, the
//! engine and F0"). Presence and typing are the events whose few tens of milliseconds no
//! person notices, and they come in bursts in a busy guild (a hundred members changing
//! status, several typing). So the first quiet-lane event after a quiet interval still leaves
//! at once (an isolated change is as fast as before), and what follows within the window
//! waits for its end and leaves with everything else that came meanwhile: at most one
//! packet per window for these lanes, however many changes there were. Chat, voice
//! signalling, notifications, replies and datagrams are never held, and they carry along
//! whatever is held when they leave. The WebSocket framing holds the same way: there a
//! held frame spares its writer a wake-up and a TCP write (P2 over WebSocket: 20.5 → 13.9 µs
//! of server CPU per update, bench/RESULTS.md).
//!
//! A held frame waits in its lane's queue in the session machine, not in QUIC's stream: a
//! frame handed to quinn-proto leaves with the connection's next packet of any kind, and
//! the client's acknowledgement of the first event arrives within milliseconds and draws
//! one. The order within a lane is kept (held frames queue behind what is pending, and
//! anything later queues behind them); nothing is dropped or merged — a client sees the same
//! events, some of them up to one window later.
//!
//! A lane holds 64 frames at most (`machine::HELD_MAX`): a flood fills packets without
//! waiting, and never nears the lane's bound on unread frames (`LANE_QUEUE`), past which a
//! session is closed as a slow consumer.
//!
//! The policy is a plain state machine the session machine asks ([`Pace::quiet`]) and tells
//! ([`Pace::sent`]: at the window's end, or earlier when something else leaves); the
//! framing learns from [`super::machine::Sent`] whether to transmit, and its timer comes at
//! the window's end through the machine's next deadline.

use std::time::{Duration, Instant};

use quaver_proto::Lane;

/// The lanes whose events may wait for a window.
pub(crate) fn is_quiet(lane: Lane) -> bool {
    matches!(lane, Lane::Presence | Lane::Typing)
}

/// One connection's pacing of its quiet lanes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// When a quiet-lane event last left at once (or with a held transmit).
    last: Option<Instant>,
    /// When what is held now must leave.
    due: Option<Instant>,
}

impl Pace {
    /// A quiet-lane event for the connection at `now`, with the window `window`: true when
    /// it leaves at once (the connection transmits this turn), false when it waits for
    /// [`Pace::due`]. A zero window sends everything at once.
    pub(crate) fn quiet(&mut self, now: Instant, window: Duration) -> bool {
        if self.due.is_some() {
            return false;
        }
        match self.last {
            Some(last) if now < last + window => {
                self.due = Some(last + window);
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// The connection transmits at `now` for another reason (an event that is not held, a
    /// reply, a timer): what was held leaves with it.
    pub(crate) fn sent(&mut self, now: Instant) {
        if self.due.take().is_some() {
            self.last = Some(now);
        }
    }

    /// When what is held must leave, if anything is held.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_isolated_event_leaves_at_once_and_a_burst_after_it_waits_for_the_window() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.quiet(t0, W), "the first leaves at once");
        assert_eq!(p.due(), None);
        assert!(!p.quiet(t0 + ms(10), W), "within the window: held");
        assert_eq!(p.due(), Some(t0 + W), "until the window's end");
        assert!(!p.quiet(t0 + ms(30), W), "held with the one before");
        assert_eq!(p.due(), Some(t0 + W), "the same due, not pushed later");
        p.sent(t0 + W);
        assert_eq!(p.due(), None, "left at its due time");
        // The window starts again where the held ones left.
        assert!(!p.quiet(t0 + ms(60), W));
        assert_eq!(p.due(), Some(t0 + ms(100)));
        p.sent(t0 + ms(100));
        // A quiet interval: the next leaves at once again.
        assert!(p.quiet(t0 + ms(151), W));
    }

    #[test]
    fn a_transmit_for_another_reason_carries_what_is_held() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.quiet(t0, W));
        assert!(!p.quiet(t0 + ms(5), W));
        p.sent(t0 + ms(20));
        assert_eq!(p.due(), None, "nothing held any more");
        assert!(!p.quiet(t0 + ms(40), W), "the window runs from what left at 20 ms");
        assert_eq!(p.due(), Some(t0 + ms(70)));
        // A transmit with nothing held changes nothing.
        let mut q = Pace::default();
        assert!(q.quiet(t0, W));
        q.sent(t0 + ms(10));
        assert!(!q.quiet(t0 + ms(20), W));
        assert_eq!(q.due(), Some(t0 + W));
    }

    #[test]
    fn a_zero_window_holds_nothing() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        for i in 0..5 {
            assert!(p.quiet(t0 + Duration::from_micros(i), Duration::ZERO));
        }
        assert_eq!(p.due(), None);
    }

    #[test]
    fn at_most_one_transmit_per_window_whatever_the_burst() {
        // Random bursts over two seconds: every event either leaves at once or is held at most
        // one window, and transmits for these lanes are at least a window apart.
        let t0 = Instant::now();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut p = Pace::default();
        let (mut now, mut sends, mut held_since): (Duration, Vec<Duration>, Option<Duration>) =
            (ms(0), Vec::new(), None);
        while now < ms(2000) {
            now += Duration::from_micros(next(20_000));
            if let Some(due) = p.due()
                && t0 + now >= due
            {
                let at = due - t0;
                p.sent(due);
                assert!(
                    at - held_since.take().expect("something held") <= W,
                    "held at most one window"
                );
                sends.push(at);
            }
            if p.quiet(t0 + now, W) {
                sends.push(now);
            } else {
                held_since.get_or_insert(now);
            }
        }
        assert!(sends.len() > 10, "{}", sends.len());
        for w in sends.windows(2) {
            assert!(w[1] - w[0] >= W, "{:?} then {:?}", w[0], w[1]);
        }
        // Two seconds of events every 10 ms on average: ~200 events in at most ~40 packets.
        assert!(sends.len() <= 41, "{}", sends.len());
    }
}
