//! Close codes: the QUIC application error code a session is closed with (also sent in-band
//! as `ServerControl::Closing` just before, because browsers do not expose QUIC close codes).
//!
//! Two ranges, so a client that does not know a code still behaves: 1000–1999 means
//! "reconnect (with backoff)", 4000–4999 means "do not reconnect until something changes".
//! `0` is a normal, intentional close.

/// A session close code. Unknown values are kept, so a newer server's codes survive an
/// older client; [`CloseCode::reconnect`] classifies them by range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u32);

macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $label:expr;)*) => {
        impl CloseCode {
            $($(#[$doc])* pub const $name: CloseCode = CloseCode($value);)*

            /// Every code defined by this version of the protocol.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$name),*];

            /// Stable snake_case name (used in metrics and logs).
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => $label,)*
                    1000..=1999 => "unknown_reconnect",
                    _ => "unknown_terminal",
                }
            }
        }
    };
}

close_codes! {
    /// Closed on purpose by either side; nothing went wrong.
    NORMAL = 0, "normal";
    /// The server is shutting down or draining; reconnect (after `Goaway.reconnect_after_ms`).
    GOING_AWAY = 1000, "going_away";
    /// The server has no room for another session; reconnect later, with backoff.
    OVERLOADED = 1001, "overloaded";
    /// No heartbeat arrived in time.
    HEARTBEAT_TIMEOUT = 1002, "heartbeat_timeout";
    /// The server failed internally; reconnect with backoff.
    INTERNAL_ERROR = 1003, "internal_error";
    /// The session kept flooding past its rate limits; reconnect after a pause.
    RATE_LIMITED = 1004, "rate_limited";
    /// The same session was resumed on another connection.
    SESSION_REPLACED = 1005, "session_replaced";
    /// The token expired during the session and no refresh came: reconnect with a new token.
    TOKEN_REFRESH_MISSED = 1006, "token_refresh_missed";
    /// The client read too slowly and its outgoing queue overflowed; reconnect and resume.
    SLOW_CONSUMER = 1007, "slow_consumer";
    /// The application's backend disconnected the session (server API); it may reconnect.
    DISCONNECTED = 1008, "disconnected";
    /// A frame or message broke the protocol (garbage, unknown message, wrong stream use).
    PROTOCOL_ERROR = 4000, "protocol_error";
    /// A frame exceeded the negotiated size limit.
    FRAME_TOO_LARGE = 4001, "frame_too_large";
    /// The client speaks a protocol version this server does not.
    UNSUPPORTED_VERSION = 4002, "unsupported_version";
    /// No `Hello` arrived within the handshake timeout.
    HELLO_TIMEOUT = 4003, "hello_timeout";
    /// A WebTransport request came from an Origin not in `ALLOWED_ORIGINS` (refused with
    /// HTTP 403 before the session exists; the code names the reason in metrics).
    ORIGIN_NOT_ALLOWED = 4004, "origin_not_allowed";
    /// No token was presented by any of the three sources.
    TOKEN_MISSING = 4010, "token_missing";
    /// The token is not a well-formed JWT.
    TOKEN_MALFORMED = 4011, "token_malformed";
    /// The token's `exp` has passed.
    TOKEN_EXPIRED = 4012, "token_expired";
    /// The token's `nbf` is still in the future.
    TOKEN_NOT_YET_VALID = 4013, "token_not_yet_valid";
    /// The token's signature does not verify with the configured key.
    TOKEN_BAD_SIGNATURE = 4014, "token_bad_signature";
    /// The token is signed with an algorithm this server does not accept.
    TOKEN_WRONG_ALGORITHM = 4015, "token_wrong_algorithm";
    /// The token is unsigned (`alg: none`).
    TOKEN_UNSIGNED = 4016, "token_unsigned";
    /// The token's claims are unacceptable (`sub`, `aud`, `iss`, `name`).
    TOKEN_INVALID_CLAIMS = 4017, "token_invalid_claims";
    /// A resume named a session of another user.
    RESUME_REFUSED = 4018, "resume_refused";
    /// The token was revoked (server API): reconnect only with a new one.
    TOKEN_REVOKED = 4019, "token_revoked";
    /// The user is banned from this server.
    BANNED = 4030, "banned";
    /// The application's backend removed the session and asked it not to come back (server
    /// API): do not reconnect until the person acts.
    REMOVED = 4031, "removed";
    /// The application's backend refused the connection (its connect hook); the reason
    /// says why: do not reconnect until the person acts.
    REFUSED = 4032, "refused";
}

impl CloseCode {
    /// Whether a client should reconnect automatically after this close.
    pub fn reconnect(self) -> bool {
        (1000..2000).contains(&self.0)
    }

    /// Whether this code is one of the terminal codes (4000–4999).
    pub fn terminal(self) -> bool {
        (4000..5000).contains(&self.0)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.0), "duplicate close code {}", c.0);
            assert!(!c.name().starts_with("unknown"));
            // Every code is in exactly one class, NORMAL in neither.
            if *c == CloseCode::NORMAL {
                assert!(!c.reconnect() && !c.terminal());
            } else {
                assert!(c.reconnect() ^ c.terminal(), "{c}");
            }
        }
        assert!(CloseCode(1500).reconnect());
        assert!(CloseCode(4500).terminal());
        assert_eq!(CloseCode(4500).name(), "unknown_terminal");
    }
}
