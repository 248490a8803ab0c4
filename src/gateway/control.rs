//! A session's control stream as a sans-IO state machine: what to do with the `Hello`, and
//! after `Ready` with every control frame, every deadline and a drain — `&mut self`, time as
//! a parameter, what to send or whether to close as the result. The session task in
//! [`super::session`] only moves bytes and time in and out, so these rules are tested
//! deterministically on a virtual clock (the tests below) rather than over real QUIC.
//!
//! The first step of the engine's transport seam (issue 12): the lanes, fetch streams and
//! replay/attach still live in the async session code.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quaver_proto::{
    ClientControl, CloseCode, ErrorBody, ErrorCode, Goaway, Heartbeat, Hello, LaneSeq, PROTOCOL_VERSION, ServerControl,
};

use super::timers::{TimerAction, Timers};
use crate::auth::{AuthError, Identity};

/// A reason to close the session: the code and the text of `Closing`.
pub type Close = (CloseCode, String);

fn close(code: CloseCode, reason: impl Into<String>) -> Close {
    (code, reason.into())
}

/// The `Hello` decision: the protocol version, then the token — `Hello.token` wins over
/// the one from the URL or an `Authorization` header (`pre_token`), being the most
/// deliberate of the three — verified by `verify`.
pub fn accept_hello(
    hello: &Hello,
    pre_token: Option<&str>,
    verify: impl FnOnce(&str) -> Result<Identity, AuthError>,
) -> Result<Identity, Close> {
    if hello.version != PROTOCOL_VERSION {
        return Err(close(
            CloseCode::UNSUPPORTED_VERSION,
            format!(
                "protocol version {} unsupported (server speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        ));
    }
    let identity = match hello.token.as_deref().or(pre_token) {
        None => Err(AuthError::Missing),
        Some(t) => verify(t),
    };
    identity.map_err(|e| close(e.close_code(), e.to_string()))
}

/// What a `Hello.resume` asks for, against the session the server has under that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Continue that session: its buffer replays every lane after these positions.
    Exact([u64; 5]),
    /// A new session (unknown id, window passed, buffer overflowed): catch up by seq.
    Fresh,
}

/// The session the server holds under a resume's id.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Whose it is.
    pub user: u64,
    /// Whether its buffer can replay every lane after the requested positions.
    pub can_replay: bool,
}

/// Decides a resume to `positions` for `user`. Another user's session refuses the
/// connection.
pub fn decide_resume(user: u64, positions: [u64; 5], known: Option<Known>) -> Result<Resume, Close> {
    match known {
        Some(k) if k.user != user => Err(close(CloseCode::RESUME_REFUSED, "that session belongs to another user")),
        Some(k) if k.can_replay => Ok(Resume::Exact(positions)),
        _ => Ok(Resume::Fresh),
    }
}

/// What the session's lanes know about sequence numbers (the replay buffer).
pub trait LaneSeqs {
    /// The client processed these.
    fn record_acks(&self, lanes: &[LaneSeq]);
    /// The last event seq sent on each lane.
    fn sent_seqs(&self) -> Vec<LaneSeq>;
}

/// Settings of the control machine.
#[derive(Debug, Clone, Copy)]
pub struct ControlConfig {
    /// Close after this long without a control frame.
    pub heartbeat_timeout: Duration,
    /// The heartbeat interval the client is told in `Ready`.
    pub heartbeat_interval: Duration,
    /// Remind the client this long before its token expires.
    pub refresh_warning: Duration,
    /// Clock skew tolerated on token expiry.
    pub leeway: Duration,
    /// After `Goaway`, close at the latest this long later.
    pub drain_timeout: Duration,
    /// `Goaway.reconnect_after_ms`.
    pub reconnect_after: Duration,
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The monotonic instant at which a token expiring at wall-clock `expires` (plus `leeway`)
/// is past, seen at (`now`, `wall`): saturating, since the verifier caps `exp` at year 9999
/// and a far deadline must never overflow the clock.
pub fn deadline_of(expires: SystemTime, leeway: Duration, now: Instant, wall: SystemTime) -> Instant {
    let left = expires.duration_since(wall).unwrap_or(Duration::ZERO);
    now.checked_add(left.saturating_add(leeway))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// One session's control stream after `Ready`.
#[derive(Debug)]
pub struct Control {
    cfg: ControlConfig,
    user: u64,
    /// When the current token expires (for `RefreshNeeded`).
    expires_at: SystemTime,
    timers: Timers,
    draining: bool,
}

impl Control {
    /// The machine of a session that became ready at (`now`, `wall`) for `identity`.
    pub fn new(cfg: ControlConfig, identity: &Identity, now: Instant, wall: SystemTime) -> Self {
        Self {
            cfg,
            user: identity.user_id,
            expires_at: identity.expires_at,
            timers: Timers::new(
                now,
                cfg.heartbeat_timeout,
                cfg.heartbeat_interval,
                deadline_of(identity.expires_at, cfg.leeway, now, wall),
                cfg.refresh_warning,
            ),
            draining: false,
        }
    }

    /// A control frame from the client: the answer to send, or why to close. `verify`
    /// checks a refreshed token; `lanes` is the session's sequence state.
    pub fn on_frame(
        &mut self,
        now: Instant,
        wall: SystemTime,
        msg: ClientControl,
        verify: impl FnOnce(&str) -> Result<Identity, AuthError>,
        lanes: &dyn LaneSeqs,
    ) -> Result<ServerControl, Close> {
        self.timers.heard(now);
        Ok(match msg {
            ClientControl::Hello(_) => return Err(close(CloseCode::PROTOCOL_ERROR, "second Hello")),
            ClientControl::Heartbeat(hb) => {
                lanes.record_acks(&hb.lanes);
                ServerControl::HeartbeatAck(Heartbeat {
                    nonce: hb.nonce,
                    lanes: lanes.sent_seqs(),
                })
            }
            ClientControl::RefreshToken { token } => match verify(&token) {
                Ok(id) if id.user_id == self.user => {
                    self.expires_at = id.expires_at;
                    self.timers
                        .token_refreshed(deadline_of(id.expires_at, self.cfg.leeway, now, wall));
                    ServerControl::TokenRefreshed {
                        expires_at_ms: unix_ms(id.expires_at),
                    }
                }
                Ok(_) => ServerControl::Error(ErrorBody::new(ErrorCode::TOKEN_REJECTED, "token is for another user")),
                Err(e) => ServerControl::Error(ErrorBody::new(ErrorCode::TOKEN_REJECTED, e.to_string())),
            },
        })
    }

    /// When [`Control::poll`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        self.timers.next_deadline()
    }

    /// What is due at `now`: frames to send (in order), then possibly why to close.
    pub fn poll(&mut self, now: Instant) -> (Vec<ServerControl>, Option<Close>) {
        let mut send = Vec::new();
        while let Some(action) = self.timers.poll(now) {
            match action {
                TimerAction::Close(code) => return (send, Some(close(code, code.name()))),
                TimerAction::SendRefreshNeeded => send.push(ServerControl::RefreshNeeded {
                    expires_at_ms: unix_ms(self.expires_at),
                }),
            }
        }
        (send, None)
    }

    /// The server starts draining at `now`: the `Goaway` to send (once), and the session
    /// closes with `going_away` at the drain deadline unless the client leaves first.
    pub fn drain(&mut self, now: Instant) -> Option<ServerControl> {
        if self.draining {
            return None;
        }
        self.draining = true;
        self.timers.drain(now + self.cfg.drain_timeout);
        Some(ServerControl::Goaway(Goaway {
            reconnect_after_ms: self.cfg.reconnect_after.as_millis() as u32,
            reason: "server shutting down".into(),
        }))
    }

    /// Whether a drain has begun.
    pub fn draining(&self) -> bool {
        self.draining
    }
}

/// Whether a session that ended this way is over for good (else it stays resumable for the
/// window): the server closed it with `normal` (a client that finished its control stream
/// is closed so), `going_away`, `disconnected` (the backend's order) or a terminal code, or — the connection lost without a code
/// from us — a raw-QUIC client closed it with code 0. A WebTransport session its client ended
/// with code 0 stays resumable: browsers end every WebTransport session so when a page
/// unloads, a reload as much as a closed tab, and a reload must resume; a client that is done
/// says so by finishing its control stream (quaver.js `close()` does).
pub fn ends_session(close: Option<&Close>, peer_code: Option<u32>, webtransport: bool) -> bool {
    match close {
        // DISCONNECTED: the backend ended the session; the client may start a new one.
        Some((code, _)) => {
            *code == CloseCode::NORMAL
                || code.terminal()
                || *code == CloseCode::GOING_AWAY
                || *code == CloseCode::DISCONNECTED
        }
        None => !webtransport && peer_code == Some(CloseCode::NORMAL.0),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use quaver_proto::{Compression, DeviceKind, Lane};

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> ControlConfig {
        ControlConfig {
            heartbeat_timeout: 20 * S,
            heartbeat_interval: 10 * S,
            refresh_warning: 60 * S,
            leeway: 5 * S,
            drain_timeout: 30 * S,
            reconnect_after: 2 * S,
        }
    }

    fn identity(user: u64, wall: SystemTime, ttl: Duration) -> Identity {
        Identity {
            user_id: user,
            name: format!("u{user}"),
            expires_at: wall + ttl,
            issued_at: None,
            jti: None,
        }
    }

    fn hello(version: u16, token: Option<&str>) -> Hello {
        Hello {
            version,
            token: token.map(str::to_string),
            device: DeviceKind::Desktop,
            resume: None,
            compression: Compression::None,
        }
    }

    #[derive(Default)]
    struct FakeLanes {
        acked: RefCell<Vec<LaneSeq>>,
    }

    impl LaneSeqs for FakeLanes {
        fn record_acks(&self, lanes: &[LaneSeq]) {
            self.acked.borrow_mut().extend_from_slice(lanes);
        }
        fn sent_seqs(&self) -> Vec<LaneSeq> {
            vec![LaneSeq {
                lane: Lane::Chat,
                seq: 7,
            }]
        }
    }

    fn never(_: &str) -> Result<Identity, AuthError> {
        panic!("no token to verify here")
    }

    #[test]
    fn hello_checks_the_version_then_the_token_hello_first() {
        let wall = SystemTime::UNIX_EPOCH + 1000 * S;
        let ok = |t: &str| match t {
            "good" => Ok(identity(1, wall, 600 * S)),
            _ => Err(AuthError::Malformed),
        };
        let (code, _) = accept_hello(&hello(9, Some("good")), None, ok).unwrap_err();
        assert_eq!(code, CloseCode::UNSUPPORTED_VERSION);
        // Version 1's `Member` cannot carry what version 2 sends: refused, not misparsed.
        let (code, why) = accept_hello(&hello(1, Some("good")), None, ok).unwrap_err();
        assert_eq!(code, CloseCode::UNSUPPORTED_VERSION);
        assert!(why.contains("speaks 2"), "{why}");
        assert_eq!(
            accept_hello(&hello(PROTOCOL_VERSION, None), None, ok).unwrap_err().0,
            CloseCode::TOKEN_MISSING
        );
        // Hello.token wins over the URL's.
        assert_eq!(
            accept_hello(&hello(PROTOCOL_VERSION, Some("bad")), Some("good"), ok)
                .unwrap_err()
                .0,
            CloseCode::TOKEN_MALFORMED
        );
        let id = accept_hello(&hello(PROTOCOL_VERSION, None), Some("good"), ok).unwrap();
        assert_eq!(id.user_id, 1);
    }

    #[test]
    fn resume_is_exact_only_for_the_same_user_with_a_full_buffer() {
        let k = |user, can_replay| Some(Known { user, can_replay });
        let pos = [3, 0, 0, 1, 0];
        assert_eq!(decide_resume(1, pos, k(1, true)), Ok(Resume::Exact(pos)));
        assert_eq!(decide_resume(1, pos, k(1, false)), Ok(Resume::Fresh));
        assert_eq!(decide_resume(1, pos, None), Ok(Resume::Fresh));
        assert_eq!(
            decide_resume(1, pos, k(2, true)).unwrap_err().0,
            CloseCode::RESUME_REFUSED
        );
    }

    #[test]
    fn heartbeats_are_acked_with_sent_seqs_and_silence_closes() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + 1000 * S);
        let mut c = Control::new(cfg(), &identity(1, wall, 3600 * S), t0, wall);
        let lanes = FakeLanes::default();
        for i in 1..=5u32 {
            let now = t0 + 10 * i * S;
            assert_eq!(c.poll(now), (vec![], None));
            let hb = Heartbeat {
                nonce: i,
                lanes: vec![LaneSeq {
                    lane: Lane::Chat,
                    seq: u64::from(i),
                }],
            };
            let reply = c
                .on_frame(now, wall, ClientControl::Heartbeat(hb), never, &lanes)
                .unwrap();
            assert_eq!(
                reply,
                ServerControl::HeartbeatAck(Heartbeat {
                    nonce: i,
                    lanes: vec![LaneSeq {
                        lane: Lane::Chat,
                        seq: 7
                    }]
                })
            );
        }
        assert_eq!(lanes.acked.borrow().len(), 5);
        // 20 s after the last frame (t0 + 50 s).
        assert_eq!(c.next_deadline(), t0 + 70 * S);
        assert_eq!(c.poll(t0 + 69 * S), (vec![], None));
        let (_, closed) = c.poll(t0 + 70 * S);
        assert_eq!(closed.unwrap().0, CloseCode::HEARTBEAT_TIMEOUT);
    }

    #[test]
    fn a_second_hello_is_a_protocol_error() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + 1000 * S);
        let mut c = Control::new(cfg(), &identity(1, wall, 3600 * S), t0, wall);
        let r = c.on_frame(
            t0,
            wall,
            ClientControl::Hello(hello(1, None)),
            never,
            &FakeLanes::default(),
        );
        assert_eq!(r.unwrap_err().0, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn token_expiry_is_reminded_then_refreshed_or_closes() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + 1000 * S);
        // A 100 s token, 5 s leeway: reminded at 45 s, closed at 105 s.
        let mut c = Control::new(cfg(), &identity(1, wall, 100 * S), t0, wall);
        let lanes = FakeLanes::default();
        let keepalive = |c: &mut Control, at: Instant| {
            let hb = ClientControl::Heartbeat(Heartbeat {
                nonce: 0,
                lanes: vec![],
            });
            c.on_frame(at, wall, hb, never, &lanes).unwrap();
        };
        keepalive(&mut c, t0 + 15 * S);
        keepalive(&mut c, t0 + 30 * S);
        assert_eq!(c.next_deadline(), t0 + 45 * S);
        let (sent, closed) = c.poll(t0 + 45 * S);
        assert_eq!(
            sent,
            vec![ServerControl::RefreshNeeded {
                expires_at_ms: unix_ms(wall + 100 * S)
            }]
        );
        assert!(closed.is_none());
        // Another user's token is refused; the session goes on.
        let other = |_: &str| Ok(identity(2, wall, 3600 * S));
        let r = c.on_frame(
            t0 + 50 * S,
            wall,
            ClientControl::RefreshToken { token: "x".into() },
            other,
            &lanes,
        );
        assert!(matches!(r, Ok(ServerControl::Error(e)) if e.code == ErrorCode::TOKEN_REJECTED));
        // A fresh token of the same user moves the deadline.
        let fresh = |_: &str| Ok(identity(1, wall + 60 * S, 3600 * S));
        let r = c.on_frame(
            t0 + 60 * S,
            wall + 60 * S,
            ClientControl::RefreshToken { token: "y".into() },
            fresh,
            &lanes,
        );
        assert_eq!(
            r,
            Ok(ServerControl::TokenRefreshed {
                expires_at_ms: unix_ms(wall + 3660 * S)
            })
        );
        keepalive(&mut c, t0 + 75 * S);
        keepalive(&mut c, t0 + 90 * S);
        assert_eq!(
            c.poll(t0 + 105 * S),
            (vec![], None),
            "the old deadline passed harmlessly"
        );
        keepalive(&mut c, t0 + 105 * S);
        // Without another refresh: reminded, then closed at the new deadline.
        let mut now = t0 + 105 * S;
        let end = t0 + (60 + 3600 + 5) * S;
        let mut reminded = false;
        loop {
            now = (now + 15 * S).min(end);
            let (sent, closed) = c.poll(now);
            reminded |= !sent.is_empty();
            if let Some((code, _)) = closed {
                assert_eq!(code, CloseCode::TOKEN_REFRESH_MISSED);
                assert_eq!(now, end);
                break;
            }
            keepalive(&mut c, now);
        }
        assert!(reminded);
    }

    #[test]
    fn drain_sends_one_goaway_and_closes_at_the_deadline() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + 1000 * S);
        let mut c = Control::new(cfg(), &identity(1, wall, 3600 * S), t0, wall);
        let goaway = c.drain(t0 + S).expect("a Goaway");
        assert_eq!(
            goaway,
            ServerControl::Goaway(Goaway {
                reconnect_after_ms: 2000,
                reason: "server shutting down".into()
            })
        );
        assert!(c.drain(t0 + 2 * S).is_none(), "once");
        assert!(c.draining());
        // The drain deadline (31 s) comes after the heartbeat timeout only if the client
        // keeps talking; it does here.
        let hb = ClientControl::Heartbeat(Heartbeat {
            nonce: 0,
            lanes: vec![],
        });
        c.on_frame(t0 + 15 * S, wall, hb, never, &FakeLanes::default()).unwrap();
        assert_eq!(c.next_deadline(), t0 + 31 * S);
        let (_, closed) = c.poll(t0 + 31 * S);
        assert_eq!(closed.unwrap().0, CloseCode::GOING_AWAY);
    }

    #[test]
    fn what_ends_a_session_and_what_leaves_it_resumable() {
        let c = |code: CloseCode| Some((code, String::new()));
        for wt in [false, true] {
            assert!(ends_session(c(CloseCode::NORMAL).as_ref(), None, wt));
            assert!(ends_session(c(CloseCode::GOING_AWAY).as_ref(), None, wt));
            assert!(ends_session(c(CloseCode::TOKEN_EXPIRED).as_ref(), None, wt));
            assert!(ends_session(c(CloseCode::DISCONNECTED).as_ref(), None, wt));
            assert!(ends_session(c(CloseCode::TOKEN_REVOKED).as_ref(), None, wt));
            assert!(!ends_session(c(CloseCode::HEARTBEAT_TIMEOUT).as_ref(), None, wt));
            assert!(!ends_session(c(CloseCode::SLOW_CONSUMER).as_ref(), None, wt));
            assert!(
                !ends_session(None, Some(1), wt),
                "a lost or otherwise closed connection"
            );
            assert!(!ends_session(None, None, wt));
        }
        assert!(
            ends_session(None, Some(0), false),
            "a raw-QUIC client closed with code 0"
        );
        assert!(
            !ends_session(None, Some(0), true),
            "a browser page unloading ends its WebTransport session with code 0: resumable"
        );
    }

    #[test]
    fn far_token_deadlines_saturate() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + 1000 * S);
        let d = deadline_of(wall + Duration::from_secs(u64::MAX / 4), S, t0, wall);
        assert!(d > t0 + 50 * 365 * 86_400 * S);
        assert_eq!(
            deadline_of(wall - 10 * S, S, t0, wall),
            t0 + S,
            "already expired: leeway only"
        );
    }
}
