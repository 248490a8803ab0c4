//! Every message of the protocol. PROTOCOL.md gives the byte layout of each; the golden
//! vectors in `vectors/` pin it. Enum variants are encoded by their index, so new variants
//! are only ever appended.

use bincode::{Decode, Encode};

use crate::error::ErrorBody;

/// A user id (a snowflake: the token's `sub` claim, a decimal `u64`).
pub type UserId = u64;

/// Identifier of a session, chosen by the server at random; needed to resume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct SessionId(pub [u8; 16]);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The kind of device a session runs on (presence shows one status per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum DeviceKind {
    /// A native desktop client.
    Desktop,
    /// A phone or tablet.
    Mobile,
    /// A browser.
    Web,
}

/// Payload compression of large frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Compression {
    /// Never compressed.
    None,
    /// Large frames may be zstd-compressed.
    Zstd,
}

/// The traffic classes, one long-lived bidirectional stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub enum Lane {
    /// Messages, edits, reactions, read states.
    Chat,
    /// Presence updates.
    Presence,
    /// Typing indicators.
    Typing,
    /// Voice signalling (media goes in datagrams).
    Voice,
    /// Notifications.
    Notifications,
}

impl Lane {
    /// Every lane, in index order.
    pub const ALL: [Lane; 5] = [
        Lane::Chat,
        Lane::Presence,
        Lane::Typing,
        Lane::Voice,
        Lane::Notifications,
    ];

    /// Stable lowercase name (metrics, logs).
    pub fn name(self) -> &'static str {
        match self {
            Lane::Chat => "chat",
            Lane::Presence => "presence",
            Lane::Typing => "typing",
            Lane::Voice => "voice",
            Lane::Notifications => "notifications",
        }
    }

    /// Index of the lane (its encoded discriminant).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The last event sequence number seen (client) or sent (server) on one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct LaneSeq {
    /// The lane.
    pub lane: Lane,
    /// The highest event seq on it.
    pub seq: u64,
}

/// Request to resume an earlier session.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResumeRequest {
    /// The session to resume (from its `Ready`).
    pub session_id: SessionId,
    /// The last event seq the client processed, per lane.
    pub lanes: Vec<LaneSeq>,
}

/// First frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// Protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// The JWT, for raw QUIC (WebTransport sessions may instead pass it in the URL or an
    /// `Authorization` header; when several are present `Hello.token` wins).
    pub token: Option<String>,
    /// What the client runs on.
    pub device: DeviceKind,
    /// Resume an earlier session instead of starting a new one.
    pub resume: Option<ResumeRequest>,
    /// Compression the client accepts for large frames.
    pub compression: Compression,
}

/// Session limits the server enforces, told to the client in `Ready`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Limits {
    /// Largest frame payload accepted, in bytes.
    pub max_frame_bytes: u32,
    /// Largest datagram the connection can carry now (0 when datagrams are unavailable).
    pub max_datagram_bytes: u32,
    /// A session that sends nothing on its control stream for this long is closed.
    pub heartbeat_timeout_ms: u32,
}

/// The authenticated user, from the token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Display name.
    pub name: String,
}

/// The server's answer to a successful `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Ready {
    /// The new session's id (keep it to resume).
    pub session_id: SessionId,
    /// Who the session belongs to.
    pub user: User,
    /// How often the client should send `Heartbeat`.
    pub heartbeat_interval_ms: u32,
    /// Limits in force on this session.
    pub limits: Limits,
    /// Compression chosen for this session.
    pub compression: Compression,
    /// When the session's token expires (Unix ms); refresh before then.
    pub token_expires_at_ms: u64,
    /// Which server node the session is on (for diagnostics).
    pub node: String,
}

/// A heartbeat; the client sends one every `heartbeat_interval_ms`, the server acks it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Heartbeat {
    /// Echoed in the ack, so the client can measure round trips and spot a dead connection.
    pub nonce: u32,
    /// Client → server: the last event seq processed per lane; server → client: the last
    /// event seq sent per lane. Lanes with no events may be omitted.
    pub lanes: Vec<LaneSeq>,
}

/// The server is going away (drain, shutdown, upgrade).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Goaway {
    /// Wait this long (plus jitter) before reconnecting.
    pub reconnect_after_ms: u32,
    /// Why, for logs.
    pub reason: String,
}

/// Sent just before the server closes the session, because a browser cannot read the QUIC
/// close code; the same code then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Closing {
    /// A [`crate::CloseCode`] value.
    pub code: u32,
    /// Why, for humans.
    pub reason: String,
}

/// Client → server frames on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ClientControl {
    /// Must be the first frame.
    Hello(Hello),
    /// Keep-alive carrying the client's position per lane.
    Heartbeat(Heartbeat),
    /// A fresh token for the same user, before the current one expires.
    RefreshToken {
        /// The new JWT.
        token: String,
    },
}

/// Server → client frames on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ServerControl {
    /// The session is open.
    Ready(Ready),
    /// Answer to a `Heartbeat`, with the server's position per lane.
    HeartbeatAck(Heartbeat),
    /// Reconnect elsewhere or later: the server is draining.
    Goaway(Goaway),
    /// The token expires soon: send `RefreshToken` or be closed.
    RefreshNeeded {
        /// When the current token expires (Unix ms).
        expires_at_ms: u64,
    },
    /// A `RefreshToken` was accepted.
    TokenRefreshed {
        /// The new expiry (Unix ms).
        expires_at_ms: u64,
    },
    /// A control request failed without ending the session.
    Error(ErrorBody),
    /// The session is about to be closed with this code.
    Closing(Closing),
}

/// First frame on every client-opened bidirectional stream after the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum StreamOpen {
    /// Open a long-lived lane (once per lane per session).
    Lane(Lane),
    /// A one-shot bulk read: the server answers with one [`FetchReply`] and finishes.
    Fetch(FetchRequest),
}

/// Requests a client can make on a lane.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RequestBody {
    /// Answered with `Pong` carrying the same data, on any lane: a lane-level round-trip probe.
    Ping {
        /// Echoed back (at most 1 KiB).
        data: Vec<u8>,
    },
}

impl RequestBody {
    /// The lane a request belongs on; `None` for requests valid on every lane.
    pub fn lane(&self) -> Option<Lane> {
        match self {
            RequestBody::Ping { .. } => None,
        }
    }
}

/// Client → server frames on a lane.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Request {
    /// Chosen by the client, echoed in the `Ack` or `Error`; unique among its requests in
    /// flight on this lane.
    pub id: u32,
    /// What is asked.
    pub body: RequestBody,
}

/// Successful replies to lane requests.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ResponseBody {
    /// Reply to `Ping`.
    Pong {
        /// The ping's data.
        data: Vec<u8>,
    },
}

/// Events pushed by the server on a lane.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum EventBody {
    /// A notice from the operator (maintenance warnings and the like).
    Notice {
        /// Text to show.
        text: String,
    },
}

/// Server → client frames on a lane.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ServerLane {
    /// The request with this id succeeded.
    Ack {
        /// The request's id.
        id: u32,
        /// The result.
        body: ResponseBody,
    },
    /// The request with this id failed.
    Error {
        /// The request's id.
        id: u32,
        /// What went wrong.
        error: ErrorBody,
    },
    /// Something happened. `seq` counts events on this lane of this session: 1, 2, 3, …
    Event {
        /// The lane's event sequence number.
        seq: u64,
        /// The event.
        body: EventBody,
    },
}

/// One-shot bulk reads on fetch streams.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FetchRequest {
    /// The server's identity, version and limits.
    ServerInfo,
}

/// Successful fetch results.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FetchResponse {
    /// Answer to `ServerInfo`.
    ServerInfo {
        /// Server software version.
        version: String,
        /// Node name.
        node: String,
        /// Protocol versions supported.
        protocols: Vec<u16>,
        /// Largest frame accepted.
        max_frame_bytes: u32,
    },
}

/// The single frame the server writes on a fetch stream before finishing it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FetchReply {
    /// The result.
    Ok(FetchResponse),
    /// The failure.
    Err(ErrorBody),
}
