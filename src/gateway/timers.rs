//! The session's clock-driven decisions, sans-IO: heartbeat timeout, the token-refresh
//! reminder and deadline, and the drain deadline after `Goaway`. The session task calls
//! [`Timers::poll`] with the current time whenever [`Timers::next_deadline`] passes.

use std::time::{Duration, Instant};

use quaver_proto::CloseCode;

/// What the session must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Tell the client its token expires soon.
    SendRefreshNeeded,
    /// Close the session with this code.
    Close(CloseCode),
}

/// Deadlines of one session.
#[derive(Debug, Clone)]
pub struct Timers {
    /// Close if nothing arrives on the control stream for this long.
    heartbeat_timeout: Duration,
    /// Added to the first deadline only: a client sends its first heartbeat one interval
    /// after `Ready` *arrives*, and a large `Ready` over a slow link (or out of a node that
    /// thousands of clients reconnect to at once) can take seconds to arrive. Without it,
    /// a `Ready` that took longer than timeout − interval (10 s by default) to arrive
    /// doomed its session. Zero once the client has been heard.
    first_grace: Duration,
    /// Last control frame received.
    last_heard: Instant,
    /// Close at this instant unless a refresh arrives (token expiry + leeway).
    token_deadline: Instant,
    /// Remind this long before `token_deadline`.
    refresh_warning: Duration,
    /// The reminder for the current token was sent.
    warned: bool,
    /// Close at this instant (set by a drain).
    drain_deadline: Option<Instant>,
}

impl Timers {
    /// Timers for a session that just became ready at `now`, whose client heartbeats every
    /// `interval`.
    pub fn new(
        now: Instant,
        heartbeat_timeout: Duration,
        interval: Duration,
        token_deadline: Instant,
        refresh_warning: Duration,
    ) -> Self {
        Self {
            heartbeat_timeout,
            first_grace: interval,
            last_heard: now,
            token_deadline,
            refresh_warning,
            warned: false,
            drain_deadline: None,
        }
    }

    /// A control frame arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.first_grace = Duration::ZERO;
    }

    fn silence_deadline(&self) -> Instant {
        self.last_heard + self.heartbeat_timeout + self.first_grace
    }

    /// A refreshed token moved the expiry.
    pub fn token_refreshed(&mut self, token_deadline: Instant) {
        self.token_deadline = token_deadline;
        self.warned = false;
    }

    /// The server is draining: close at `deadline` at the latest.
    pub fn drain(&mut self, deadline: Instant) {
        self.drain_deadline = Some(self.drain_deadline.map_or(deadline, |d| d.min(deadline)));
    }

    fn warn_at(&self) -> Instant {
        self.token_deadline
            .checked_sub(self.refresh_warning)
            .unwrap_or(self.token_deadline)
    }

    /// The earliest instant at which [`Timers::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.silence_deadline().min(self.token_deadline);
        if !self.warned {
            d = d.min(self.warn_at());
        }
        if let Some(drain) = self.drain_deadline {
            d = d.min(drain);
        }
        d
    }

    /// What is due at `now`, most severe first; call again until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<TimerAction> {
        if self.drain_deadline.is_some_and(|d| now >= d) {
            return Some(TimerAction::Close(CloseCode::GOING_AWAY));
        }
        if now >= self.silence_deadline() {
            return Some(TimerAction::Close(CloseCode::HEARTBEAT_TIMEOUT));
        }
        if now >= self.token_deadline {
            return Some(TimerAction::Close(CloseCode::TOKEN_REFRESH_MISSED));
        }
        if !self.warned && now >= self.warn_at() {
            self.warned = true;
            return Some(TimerAction::SendRefreshNeeded);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn heartbeats_keep_the_session_alive_and_silence_closes_it() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, 20 * S, 10 * S, t0 + 3600 * S, 60 * S);
        for i in 1..=10 {
            let now = t0 + i * 10 * S;
            assert_eq!(t.poll(now), None);
            t.heard(now);
        }
        assert_eq!(t.next_deadline(), t0 + 120 * S);
        assert_eq!(t.poll(t0 + 119 * S), None);
        assert_eq!(
            t.poll(t0 + 120 * S),
            Some(TimerAction::Close(CloseCode::HEARTBEAT_TIMEOUT))
        );
    }

    #[test]
    fn the_first_heartbeat_has_an_interval_more_for_ready_to_arrive() {
        let t0 = Instant::now();
        // Timeout 20 s, interval 10 s: a client silent since Ready is closed at 30 s (its
        // Ready may have taken up to 20 s to arrive), and after its first heartbeat at the
        // usual 20 s.
        let mut t = Timers::new(t0, 20 * S, 10 * S, t0 + 3600 * S, 60 * S);
        assert_eq!(t.next_deadline(), t0 + 30 * S);
        assert_eq!(t.poll(t0 + 29 * S), None);
        t.heard(t0 + 29 * S);
        assert_eq!(t.next_deadline(), t0 + 49 * S);
        assert_eq!(t.poll(t0 + 48 * S), None);
        assert_eq!(
            t.poll(t0 + 49 * S),
            Some(TimerAction::Close(CloseCode::HEARTBEAT_TIMEOUT))
        );
        let mut silent = Timers::new(t0, 20 * S, 10 * S, t0 + 3600 * S, 60 * S);
        assert_eq!(
            silent.poll(t0 + 30 * S),
            Some(TimerAction::Close(CloseCode::HEARTBEAT_TIMEOUT))
        );
    }

    #[test]
    fn token_reminder_once_then_close_unless_refreshed() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, 1000 * S, 10 * S, t0 + 100 * S, 60 * S);
        assert_eq!(t.next_deadline(), t0 + 40 * S);
        assert_eq!(t.poll(t0 + 40 * S), Some(TimerAction::SendRefreshNeeded));
        assert_eq!(t.poll(t0 + 41 * S), None, "reminder is sent once");
        assert_eq!(t.next_deadline(), t0 + 100 * S);
        // Refresh: new reminder cycle, no close at the old deadline.
        t.token_refreshed(t0 + 400 * S);
        assert_eq!(t.poll(t0 + 100 * S), None);
        assert_eq!(t.poll(t0 + 340 * S), Some(TimerAction::SendRefreshNeeded));
        assert_eq!(
            t.poll(t0 + 400 * S),
            Some(TimerAction::Close(CloseCode::TOKEN_REFRESH_MISSED))
        );
    }

    #[test]
    fn short_lived_token_is_reminded_immediately() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, 1000 * S, 10 * S, t0 + 10 * S, 60 * S);
        assert_eq!(t.poll(t0), Some(TimerAction::SendRefreshNeeded));
    }

    #[test]
    fn drain_deadline_wins() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, 20 * S, 10 * S, t0 + 3600 * S, 60 * S);
        t.drain(t0 + 5 * S);
        t.drain(t0 + 9 * S);
        assert_eq!(t.next_deadline(), t0 + 5 * S);
        assert_eq!(t.poll(t0 + 5 * S), Some(TimerAction::Close(CloseCode::GOING_AWAY)));
    }
}
