//! Request error codes: what an `Error` reply on a lane or fetch stream carries. Unlike close
//! codes these end one request, never the session.

use bincode::{Decode, Encode};

/// A request error code. Unknown values decode fine (a newer server may add codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request was malformed or its arguments invalid.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(1);
    /// The request is not valid on the lane it was sent on.
    pub const WRONG_LANE: ErrorCode = ErrorCode(2);
    /// The caller may not do this.
    pub const FORBIDDEN: ErrorCode = ErrorCode(3);
    /// The target does not exist (or the caller cannot see it).
    pub const NOT_FOUND: ErrorCode = ErrorCode(4);
    /// Too many requests; see `retry_after_ms`.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(5);
    /// The request is known but not supported by this server.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(6);
    /// The server failed; the request may be retried.
    pub const INTERNAL: ErrorCode = ErrorCode(7);
    /// A value exceeded a size limit.
    pub const TOO_LARGE: ErrorCode = ErrorCode(8);
    /// A token refresh was refused (the session stays up until its current token expires).
    pub const TOKEN_REJECTED: ErrorCode = ErrorCode(9);
    /// The lane was already open on this session.
    pub const LANE_ALREADY_OPEN: ErrorCode = ErrorCode(10);
    /// Message content is empty, blank, too long or has control characters.
    pub const INVALID_CONTENT: ErrorCode = ErrorCode(11);
    /// A name (guild, channel, role) is empty, too long or has control characters.
    pub const INVALID_NAME: ErrorCode = ErrorCode(12);
    /// Not a single Unicode emoji.
    pub const INVALID_EMOJI: ErrorCode = ErrorCode(13);
    /// The message already has the most distinct reactions (20).
    pub const TOO_MANY_REACTIONS: ErrorCode = ErrorCode(14);
    /// The invite is unknown, used up or expired.
    pub const INVALID_INVITE: ErrorCode = ErrorCode(15);
    /// You are banned from that guild.
    pub const BANNED: ErrorCode = ErrorCode(16);
    /// The reply target is not a message of the same channel.
    pub const INVALID_REPLY: ErrorCode = ErrorCode(17);
    /// Blocked by the other user, or you blocked them.
    pub const BLOCKED: ErrorCode = ErrorCode(18);
    /// A group DM can have at most 10 people.
    pub const GROUP_FULL: ErrorCode = ErrorCode(19);
    /// The owner cannot leave or be removed; transfer or delete the guild.
    pub const OWNER: ErrorCode = ErrorCode(20);
    /// There is no such friend request or friendship.
    pub const NO_RELATIONSHIP: ErrorCode = ErrorCode(21);
    /// The server's database did not answer in time. Nothing was acknowledged; retry with
    /// backoff (a retried `SendMessage` with the same nonce is never stored twice).
    pub const UNAVAILABLE: ErrorCode = ErrorCode(22);
    /// The voice channel is at its `user_limit`.
    pub const CHANNEL_FULL: ErrorCode = ErrorCode(23);
    /// The application's backend refused it (a hook); the message says why, for the person.
    pub const REFUSED_BY_APP: ErrorCode = ErrorCode(24);
    /// You are timed out in this guild (the message says until when): reading still works.
    /// Since protocol 2.
    pub const TIMED_OUT: ErrorCode = ErrorCode(25);
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ErrorBody {
    /// What went wrong, machine-readable.
    pub code: ErrorCode,
    /// Human-readable detail; never needed to act on the error.
    pub message: String,
    /// For `RATE_LIMITED`: when to try again.
    pub retry_after_ms: Option<u32>,
}

impl ErrorBody {
    /// An error with no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}
