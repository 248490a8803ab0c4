//! Typing indicators, sans-IO: who is typing where, with server-side expiry so no indicator
//! can stick, and debouncing so a typer's repeats do not flood the channel.
//!
//! `TypingStart` from a user in a channel: if they were not typing there (or the last
//! broadcast is older than the debounce window), broadcast `Started` with the expiry; a
//! repeat within the window only moves the server-side expiry. `TypingStop`, sending a
//! message, or the expiry passing with no refresh ends it with a `Stopped` broadcast — the
//! server sends the stop itself, so a client without timers never shows a stuck indicator.

pub mod task;

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an indicator lives without a refresh.
pub const EXPIRY: Duration = Duration::from_secs(10);
/// Repeats within this window of the last broadcast are not re-broadcast.
pub const DEBOUNCE: Duration = Duration::from_secs(3);

/// What the driver must broadcast to the channel's viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `user` started typing in `channel`; show it for `EXPIRY`.
    Started {
        /// Channel.
        channel: u64,
        /// Typer.
        user: u64,
    },
    /// `user` stopped typing in `channel`.
    Stopped {
        /// Channel.
        channel: u64,
        /// Typer.
        user: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    broadcast_at: Instant,
}

/// Remote typers remembered at most (beyond it, expired ones are dropped first).
const MAX_REMOTE: usize = 10_000;

/// All typing state of a node: its own typers (it broadcasts their starts and stops), and
/// those of other nodes as their broadcasts told it (so `WatchTyping` answers for the
/// whole cluster).
#[derive(Debug, Default)]
pub struct Typing {
    entries: HashMap<(u64, u64), Entry>,
    /// (channel, user) → when the indicator expires, typed on another node.
    remote: HashMap<(u64, u64), Instant>,
}

impl Typing {
    /// A keystroke-driven start (or refresh).
    pub fn start(&mut self, channel: u64, user: u64, now: Instant) -> Option<Output> {
        let expires = now + EXPIRY;
        match self.entries.get_mut(&(channel, user)) {
            Some(e) if now < e.broadcast_at + DEBOUNCE => {
                e.expires = expires;
                None
            }
            Some(e) => {
                e.expires = expires;
                e.broadcast_at = now;
                Some(Output::Started { channel, user })
            }
            None => {
                self.entries.insert(
                    (channel, user),
                    Entry {
                        expires,
                        broadcast_at: now,
                    },
                );
                Some(Output::Started { channel, user })
            }
        }
    }

    /// An explicit stop, or a message sent: ends the indicator at once.
    pub fn stop(&mut self, channel: u64, user: u64) -> Option<Output> {
        self.entries
            .remove(&(channel, user))
            .map(|_| Output::Stopped { channel, user })
    }

    /// Who is typing in `channel` now, on any node.
    pub fn typers(&self, channel: u64, now: Instant) -> Vec<u64> {
        let local = self
            .entries
            .iter()
            .filter(|((c, _), e)| *c == channel && e.expires > now)
            .map(|((_, u), _)| *u);
        let remote = self
            .remote
            .iter()
            .filter(|((c, _), e)| *c == channel && **e > now)
            .map(|((_, u), _)| *u);
        let mut v: Vec<u64> = local.chain(remote).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Another node broadcast that `user` started typing in `channel`, for `expires_in`.
    pub fn remote_start(&mut self, channel: u64, user: u64, expires_in: Duration, now: Instant) {
        if self.remote.len() >= MAX_REMOTE {
            self.remote.retain(|_, e| *e > now);
        }
        if self.remote.len() < MAX_REMOTE {
            self.remote.insert((channel, user), now + expires_in.min(EXPIRY));
        }
    }

    /// Another node broadcast that `user` stopped typing in `channel`.
    pub fn remote_stop(&mut self, channel: u64, user: u64) {
        self.remote.remove(&(channel, user));
    }

    /// The next expiry, if anyone is typing.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.expires).min()
    }

    /// Removes expired indicators, returning their stops.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        let mut out: Vec<Output> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|((channel, user), _)| Output::Stopped {
                channel: *channel,
                user: *user,
            })
            .collect();
        self.entries.retain(|_, e| e.expires > now);
        self.remote.retain(|_, e| *e > now);
        out.sort_by_key(|o| match o {
            Output::Started { channel, user } | Output::Stopped { channel, user } => (*channel, *user),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn start_broadcasts_once_then_debounces_and_extends() {
        let t0 = Instant::now();
        let mut t = Typing::default();
        assert_eq!(t.start(1, 7, t0), Some(Output::Started { channel: 1, user: 7 }));
        assert_eq!(t.start(1, 7, t0 + 2000 * MS), None, "within the debounce window");
        assert_eq!(t.next_deadline(), Some(t0 + 12_000 * MS), "expiry moved");
        assert_eq!(
            t.start(1, 7, t0 + 3500 * MS),
            Some(Output::Started { channel: 1, user: 7 }),
            "after it"
        );
        assert_eq!(t.typers(1, t0 + 4000 * MS), vec![7]);
    }

    #[test]
    fn server_expires_an_unrefreshed_indicator_at_ten_seconds() {
        let t0 = Instant::now();
        let mut t = Typing::default();
        t.start(1, 7, t0);
        t.start(2, 8, t0 + 5000 * MS);
        assert!(t.poll(t0 + 9999 * MS).is_empty());
        assert_eq!(t.poll(t0 + 10_000 * MS), vec![Output::Stopped { channel: 1, user: 7 }]);
        assert_eq!(t.typers(1, t0 + 10_000 * MS), Vec::<u64>::new());
        assert_eq!(t.next_deadline(), Some(t0 + 15_000 * MS));
        assert_eq!(t.poll(t0 + 15_000 * MS), vec![Output::Stopped { channel: 2, user: 8 }]);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn explicit_stop_and_send_end_it_at_once() {
        let t0 = Instant::now();
        let mut t = Typing::default();
        t.start(1, 7, t0);
        assert_eq!(t.stop(1, 7), Some(Output::Stopped { channel: 1, user: 7 }));
        assert_eq!(t.stop(1, 7), None, "nothing to stop twice");
        assert!(
            t.poll(t0 + 20_000 * MS).is_empty(),
            "no late stop after an explicit one"
        );
        // Typing again after a stop broadcasts at once, debounce or not.
        assert_eq!(
            t.start(1, 7, t0 + 100 * MS),
            Some(Output::Started { channel: 1, user: 7 })
        );
    }

    #[test]
    fn typers_on_other_nodes_are_known_until_they_stop_or_expire() {
        let t0 = Instant::now();
        let mut t = Typing::default();
        t.start(9, 1, t0);
        t.remote_start(9, 2, EXPIRY, t0);
        t.remote_start(9, 1, EXPIRY, t0);
        assert_eq!(t.typers(9, t0), vec![1, 2], "once each");
        t.remote_stop(9, 2);
        assert_eq!(t.typers(9, t0), vec![1]);
        t.remote_start(9, 3, Duration::from_secs(60), t0);
        assert_eq!(
            t.typers(9, t0 + EXPIRY),
            Vec::<u64>::new(),
            "capped at the expiry; remote ones expire too"
        );
        assert!(
            t.poll(t0 + EXPIRY)
                .iter()
                .all(|o| matches!(o, Output::Stopped { user: 1, .. })),
            "stops are the typer's node's to send"
        );
    }

    #[test]
    fn several_typers_in_one_channel() {
        let t0 = Instant::now();
        let mut t = Typing::default();
        for u in [3, 1, 2] {
            t.start(9, u, t0);
        }
        t.start(10, 4, t0);
        assert_eq!(t.typers(9, t0), vec![1, 2, 3]);
        t.stop(9, 2);
        assert_eq!(t.typers(9, t0), vec![1, 3]);
    }
}
