//! What the cluster carries besides events: the application backend's orders about
//! sessions (server API), to every node, and what a node answers about its sessions. They
//! live here, with the bus, because every node reads them off it: the gateway carries
//! them out on its sessions, the fan-out encodes them (`fanout::envelope`).

use quaver_proto::session::Transport;
use quaver_proto::{DeviceKind, SessionId, UserId};

/// A session as the server API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its id.
    pub id: SessionId,
    /// Its latest connection's transport.
    pub transport: Transport,
    /// The device it said it is.
    pub device: DeviceKind,
    /// When its latest connection opened (Unix ms).
    pub connected_at_ms: u64,
    /// Whether a connection is attached now (else it waits for a resume).
    pub attached: bool,
}

/// An order of the application's backend (server API) about sessions, carried to every
/// node ([`crate::cluster::BusEvent::Order`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Tokens revoked: refused from now on, and the sessions they authenticated end
    /// (`TOKEN_REVOKED`).
    Revoke(crate::store::Revocation),
    /// Every session of `user_id` ends: `DISCONNECTED` (the client may reconnect at once) or,
    /// with `reconnect` false, `REMOVED` (it must not until the person acts).
    Disconnect {
        /// The user.
        user_id: UserId,
        /// Only this one of their sessions (else every one).
        session: Option<SessionId>,
        /// Whether the client may reconnect.
        reconnect: bool,
        /// Said in `Closing` (at most 120 bytes).
        reason: String,
    },
    /// Which sessions `user_id` has: every node that holds some answers with
    /// `SessionsOf { request }` (the server API collects them).
    ListSessions {
        /// The asking node's number for the question.
        request: u64,
        /// The user.
        user_id: UserId,
    },
    /// `user_id`'s voice in `guild_id`: carried out, with the guild's authority, by the node
    /// whose voice channel they are in.
    Voice {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: UserId,
        /// What to do.
        action: VoiceAction,
    },
}

/// What the backend does to a member's voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceAction {
    /// Server-mute (true) or unmute.
    Mute(bool),
    /// Server-deafen (true) or undeafen.
    Deafen(bool),
    /// Move to this voice channel of the guild.
    Move(u64),
    /// Out of voice.
    Disconnect,
}
