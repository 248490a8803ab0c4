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

    /// Whether the lane carries state rather than history: presence and voice states come
    /// anew in `Resumed`, a typing indicator expires on its own. A resume never waits on
    /// such a lane's replay (PROTOCOL.md §5b): where the buffer no longer reaches its
    /// position, it goes on from the oldest event still buffered.
    pub fn carries_state(self) -> bool {
        matches!(self, Lane::Presence | Lane::Typing | Lane::Voice)
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

/// The last channel seq a client has seen in one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ChannelSeq {
    /// The channel.
    pub channel_id: u64,
    /// The channel's last seq the client processed.
    pub seq: u64,
}

/// Request to resume an earlier session.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResumeRequest {
    /// The session to resume (from its `Ready`).
    pub session_id: SessionId,
    /// The last event seq the client processed, per lane (omitted lanes: none).
    pub lanes: Vec<LaneSeq>,
    /// Where the client stands in each channel it follows: if the session cannot be
    /// resumed exactly, the server catches these channels up from the event log.
    pub channels: Vec<ChannelSeq>,
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
    /// Your guilds with the channels you can see (members listed for small guilds).
    pub guilds: Vec<GuildSnapshot>,
    /// Your DM and group DM channels.
    pub private_channels: Vec<Channel>,
    /// Your read states (channels you have read or been mentioned in).
    pub read_states: Vec<ReadState>,
    /// Presences you can see that are not offline (guild members and friends).
    pub presences: Vec<Presence>,
    /// Friends, requests and blocks.
    pub relationships: Vec<Relationship>,
    /// Muted guilds and channels.
    pub mutes: Vec<MuteTarget>,
    /// Unread notifications.
    pub notifications_unread: u32,
    /// The newest notifications (up to 20; page older ones with `FetchRequest::Notifications`).
    pub notifications: Vec<Notification>,
    /// Voice states in the voice channels you can see.
    pub voice_states: Vec<VoiceState>,
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
    /// The session is open (boxed: it is much larger than the other variants).
    Ready(Box<Ready>),
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
    /// The session named in `Hello.resume` continues: a fresh snapshot (presence, typing
    /// and voice state are state, not history); each lane, when reopened, first replays
    /// exactly the events after the position given in `Hello.resume.lanes`.
    Resumed(Box<Ready>),
}

/// First frame on every client-opened bidirectional stream after the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum StreamOpen {
    /// Open a long-lived lane (once per lane per session).
    Lane(Lane),
    /// A one-shot bulk read: the server answers with one [`FetchReply`] and finishes.
    Fetch(FetchRequest),
}

/// Requests a client can make on a lane. Everything but `Ping` goes on the chat lane.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RequestBody {
    /// Answered with `Pong` carrying the same data, on any lane: a lane-level round-trip probe.
    Ping {
        /// Echoed back (at most 1 KiB).
        data: Vec<u8>,
    },
    /// Create a guild owned by the caller (with an `@everyone` role and a `general` channel).
    CreateGuild {
        /// 1–100 characters.
        name: String,
    },
    /// Rename a guild (manage-guild).
    RenameGuild {
        /// The guild.
        guild_id: u64,
        /// 1–100 characters.
        name: String,
    },
    /// Delete a guild (owner only).
    DeleteGuild {
        /// The guild.
        guild_id: u64,
    },
    /// Create an invite code (create-invite).
    CreateInvite {
        /// The guild.
        guild_id: u64,
        /// 0 = unlimited.
        max_uses: u32,
        /// 0 = never expires.
        max_age_secs: u32,
    },
    /// Join a guild by invite code.
    JoinGuild {
        /// The invite code.
        code: String,
    },
    /// Leave a guild (the owner cannot).
    LeaveGuild {
        /// The guild.
        guild_id: u64,
    },
    /// Remove a member (kick-members).
    KickMember {
        /// The guild.
        guild_id: u64,
        /// Who.
        user_id: u64,
    },
    /// Remove and ban a member (ban-members).
    BanMember {
        /// The guild.
        guild_id: u64,
        /// Who.
        user_id: u64,
        /// Why (≤ 512 characters).
        reason: String,
    },
    /// Create a role (manage-roles).
    CreateRole {
        /// The guild.
        guild_id: u64,
        /// 1–100 characters.
        name: String,
        /// Permission bits.
        permissions: u64,
    },
    /// Change a role's name and permissions (manage-roles; the `@everyone` role has the
    /// guild's id).
    UpdateRole {
        /// The guild.
        guild_id: u64,
        /// The role.
        role_id: u64,
        /// 1–100 characters.
        name: String,
        /// Permission bits.
        permissions: u64,
    },
    /// Give or take a role (manage-roles).
    SetMemberRole {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: u64,
        /// The role.
        role_id: u64,
        /// Give (true) or take (false).
        add: bool,
    },
    /// Create a channel (manage-channels).
    CreateChannel {
        /// The guild.
        guild_id: u64,
        /// `Text` or `Voice`.
        kind: ChannelKind,
        /// 1–100 characters.
        name: String,
        /// ≤ 1024 characters.
        topic: String,
        /// Voice channels: most participants (0 = no limit).
        user_limit: u32,
    },
    /// Delete a channel (manage-channels).
    DeleteChannel {
        /// The channel.
        channel_id: u64,
    },
    /// Set a permission overwrite on a channel (manage-roles).
    SetOverwrite {
        /// The channel.
        channel_id: u64,
        /// A role or a member.
        target: OverwriteTarget,
        /// Bits allowed.
        allow: u64,
        /// Bits denied.
        deny: u64,
    },
    /// Remove a permission overwrite (manage-roles).
    DeleteOverwrite {
        /// The channel.
        channel_id: u64,
        /// A role or a member.
        target: OverwriteTarget,
    },
    /// Open (or get) the DM channel with another user.
    OpenDm {
        /// The other user.
        user_id: u64,
    },
    /// Create a group DM with up to 9 others.
    CreateGroupDm {
        /// The others.
        user_ids: Vec<u64>,
        /// 0–100 characters.
        name: String,
    },
    /// Send a message. Acked only once stored; a retry with the same nonce returns the
    /// original message instead of a duplicate.
    SendMessage {
        /// The channel.
        channel_id: u64,
        /// Chosen by the client, unique per author (random u64).
        nonce: u64,
        /// 1–4,000 characters.
        content: String,
        /// A message in the same channel this replies to.
        reply_to: Option<u64>,
    },
    /// Edit your message.
    EditMessage {
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// 1–4,000 characters.
        content: String,
    },
    /// Delete a message (yours, or any with manage-messages).
    DeleteMessage {
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
    },
    /// React with a Unicode emoji (add-reactions; ≤ 20 distinct per message).
    AddReaction {
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// The emoji.
        emoji: String,
    },
    /// Remove your reaction.
    RemoveReaction {
        /// The channel.
        channel_id: u64,
        /// The message.
        message_id: u64,
        /// The emoji.
        emoji: String,
    },
    /// Mark a channel read up to `seq`; synced to your other sessions.
    MarkRead {
        /// The channel.
        channel_id: u64,
        /// The last seq read.
        seq: u64,
    },
    /// Presence lane: set this session's status and the user's custom status / activity.
    SetPresence {
        /// Online, idle, dnd or invisible.
        status: PresenceStatus,
        /// Custom status text (≤ 128 characters).
        custom_status: Option<String>,
        /// What the user is doing (≤ 128 characters).
        activity: Option<String>,
    },
    /// Typing lane: you are typing in a channel (send again every few seconds while typing).
    TypingStart {
        /// The channel.
        channel_id: u64,
    },
    /// Typing lane: you stopped typing.
    TypingStop {
        /// The channel.
        channel_id: u64,
    },
    /// Typing lane: who is typing in a channel now (answered `Typers`).
    WatchTyping {
        /// The channel.
        channel_id: u64,
    },
    /// Ask to be friends (accepts theirs if they already asked you).
    SendFriendRequest {
        /// The other user.
        user_id: u64,
    },
    /// Accept their friend request.
    AcceptFriendRequest {
        /// The other user.
        user_id: u64,
    },
    /// Decline their friend request.
    DeclineFriendRequest {
        /// The other user.
        user_id: u64,
    },
    /// Withdraw your friend request.
    CancelFriendRequest {
        /// The other user.
        user_id: u64,
    },
    /// Stop being friends.
    RemoveFriend {
        /// The other user.
        user_id: u64,
    },
    /// Block a user: no DMs, friend requests or notifications from them.
    BlockUser {
        /// The other user.
        user_id: u64,
    },
    /// Unblock a user.
    UnblockUser {
        /// The other user.
        user_id: u64,
    },
    /// Mute or unmute a guild or channel (no notifications from it).
    SetMute {
        /// What.
        target: MuteTarget,
        /// Mute (true) or unmute.
        muted: bool,
    },
    /// Notifications lane: you received every notification up to this id.
    AckNotifications {
        /// The newest notification id received.
        up_to: u64,
    },
    /// Notifications lane: mark notifications read (synced to your other sessions).
    MarkNotificationsRead {
        /// These ids (ignored when `all`).
        ids: Vec<u64>,
        /// Every notification.
        all: bool,
    },
    /// Voice lane: join a voice channel with this session (connect permission, user limit);
    /// leaves any other voice channel the user is in. Answered `VoiceJoined`.
    JoinVoice {
        /// The voice channel.
        channel_id: u64,
        /// Start muted.
        self_mute: bool,
        /// Start deafened.
        self_deaf: bool,
    },
    /// Voice lane: leave the voice channel.
    LeaveVoice,
    /// Voice lane: mute or deafen yourself.
    SetVoiceState {
        /// Muted.
        self_mute: bool,
        /// Deafened.
        self_deaf: bool,
    },
    /// Voice lane: server-mute or unmute a member (mute members).
    ServerMute {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: u64,
        /// Mute (true) or unmute.
        mute: bool,
    },
    /// Voice lane: server-deafen or undeafen a member (deafen members).
    ServerDeafen {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: u64,
        /// Deafen (true) or undeafen.
        deaf: bool,
    },
    /// Voice lane: move a member to another voice channel of the guild (move members).
    MoveMember {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: u64,
        /// The target voice channel.
        channel_id: u64,
    },
    /// Voice lane: the SFU's counters for everyone in your voice channel.
    VoiceStats,
    /// Voice lane: join a voice channel as a WebRTC participant (issue 14): `offer` is an SDP
    /// offer whose first audio section the peer sends (its microphone) and whose receiving
    /// audio sections are the forwarding slots. Answered `VoiceJoinedWebRtc`.
    JoinVoiceWebRtc {
        /// The voice channel.
        channel_id: u64,
        /// Start muted.
        self_mute: bool,
        /// Start deafened.
        self_deaf: bool,
        /// The SDP offer.
        offer: String,
    },
    /// Delete a role (manage-roles; a role below your highest, not `@everyone`): members
    /// lose it and the channel overwrites naming it go. Since protocol 2.
    DeleteRole {
        /// The guild.
        guild_id: u64,
        /// The role.
        role_id: u64,
    },
    /// Move a role to another place in the hierarchy (manage-roles): `position` 1 is just
    /// above `@everyone`; a position past the top means the top. The role and its new place
    /// must both be below your highest role. Since protocol 2.
    MoveRole {
        /// The guild.
        guild_id: u64,
        /// The role.
        role_id: u64,
        /// Its new position (≥ 1).
        position: u32,
    },
    /// Time a member out (moderate-members; a member whose highest role is below yours):
    /// for `duration_secs` (at most 28 days; 0 lifts a timeout) they may read but not send,
    /// react, or join or stay in voice. Since protocol 2.
    TimeoutMember {
        /// The guild.
        guild_id: u64,
        /// The member.
        user_id: u64,
        /// How long (0 lifts it).
        duration_secs: u32,
        /// Why (≤ 512 characters; for the audit trail and webhooks).
        reason: String,
    },
    /// Voice lane: how this session wants its voice datagrams. `redundancy`: each datagram
    /// may carry the speaker's previous frame again (`FLAG_REDUNDANT`, PROTOCOL.md §8), so
    /// one lost datagram is repaired by the next; without it such frames arrive stripped to
    /// their own payload. Holds for the session (every channel it joins) until changed.
    SetVoiceOptions {
        /// Accept datagrams with a redundancy block.
        redundancy: bool,
    },
    /// Chat lane: which guild channels this session is looking at. `Some(ids)`: only those
    /// channels' events (messages, edits, deletions, reactions; typing on the typing lane)
    /// come as they happen; for the session's other guild channels it gets a coalesced
    /// [`EventBody::ChannelActivity`] at most every couple of seconds, and mentions as
    /// notifications at once. DMs and group DMs always come whole. `None` (the default of
    /// every new session): every channel. At most 100 ids. Holds for the session (an exact
    /// resume keeps it; a new session starts from `None`). Since protocol 2.
    ViewChannels {
        /// The channels viewed, or `None` for all.
        channel_ids: Option<Vec<u64>>,
    },
}

impl RequestBody {
    /// The lane a request belongs on; `None` for requests valid on every lane.
    pub fn lane(&self) -> Option<Lane> {
        match self {
            RequestBody::Ping { .. } => None,
            RequestBody::SetPresence { .. } => Some(Lane::Presence),
            RequestBody::TypingStart { .. } | RequestBody::TypingStop { .. } | RequestBody::WatchTyping { .. } => {
                Some(Lane::Typing)
            }
            RequestBody::AckNotifications { .. } | RequestBody::MarkNotificationsRead { .. } => {
                Some(Lane::Notifications)
            }
            RequestBody::JoinVoice { .. }
            | RequestBody::JoinVoiceWebRtc { .. }
            | RequestBody::LeaveVoice
            | RequestBody::SetVoiceState { .. }
            | RequestBody::ServerMute { .. }
            | RequestBody::ServerDeafen { .. }
            | RequestBody::MoveMember { .. }
            | RequestBody::VoiceStats
            | RequestBody::SetVoiceOptions { .. } => Some(Lane::Voice),
            _ => Some(Lane::Chat),
        }
    }
}

/// Kinds of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ChannelKind {
    /// A guild text channel.
    Text,
    /// A guild voice channel.
    Voice,
    /// A direct message between two users.
    Dm,
    /// A group DM (up to 10 people).
    GroupDm,
}

/// Whom a permission overwrite applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum OverwriteTarget {
    /// A role (the `@everyone` role has the guild's id).
    Role(u64),
    /// One member.
    Member(u64),
}

/// A permission overwrite on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Overwrite {
    /// Whom it applies to.
    pub target: OverwriteTarget,
    /// Bits allowed.
    pub allow: u64,
    /// Bits denied.
    pub deny: u64,
}

/// A guild.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Guild {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Owner.
    pub owner_id: u64,
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Role {
    /// Id (the guild's id for `@everyone`).
    pub id: u64,
    /// Guild.
    pub guild_id: u64,
    /// Name.
    pub name: String,
    /// Permission bits.
    pub permissions: u64,
    /// Order (higher is more senior).
    pub position: u32,
}

/// A channel.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Channel {
    /// Id.
    pub id: u64,
    /// Guild (none for DMs).
    pub guild_id: Option<u64>,
    /// Kind.
    pub kind: ChannelKind,
    /// Name (empty for DMs).
    pub name: String,
    /// Topic.
    pub topic: String,
    /// The channel's last event seq.
    pub last_seq: u64,
    /// Permission overwrites.
    pub overwrites: Vec<Overwrite>,
    /// DM / group DM members (empty for guild channels).
    pub recipients: Vec<u64>,
    /// Voice channels: most participants (0 = no limit).
    pub user_limit: u32,
}

/// A guild member.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Member {
    /// The user.
    pub user_id: u64,
    /// The user's name.
    pub name: String,
    /// Role ids (besides `@everyone`).
    pub roles: Vec<u64>,
    /// The user's avatar: an `https://` URL set by the application's backend, or empty
    /// (clients draw initials). Since protocol 2.
    pub avatar_url: String,
    /// Timed out until this time (Unix ms; 0 = not timed out): until then the member may
    /// read but not send, react, or join voice ([`RequestBody::TimeoutMember`]). Since
    /// protocol 2.
    pub timed_out_until_ms: u64,
}

/// What a message mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Mentions {
    /// `<@id>` users.
    pub users: Vec<u64>,
    /// `<@&id>` roles.
    pub roles: Vec<u64>,
    /// `@everyone` or `@here` (only with mention-everyone).
    pub everyone: bool,
}

/// A reaction count on a message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted.
    pub count: u32,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Message {
    /// Snowflake id.
    pub id: u64,
    /// Channel.
    pub channel_id: u64,
    /// Author.
    pub author_id: u64,
    /// The author's nonce.
    pub nonce: u64,
    /// Text (empty once deleted).
    pub content: String,
    /// The message this replies to.
    pub reply_to: Option<u64>,
    /// Mentions parsed from the content.
    pub mentions: Mentions,
    /// The channel seq of its creation.
    pub seq: u64,
    /// Creation time (Unix ms).
    pub created_at_ms: u64,
    /// Last edit (Unix ms).
    pub edited_at_ms: Option<u64>,
    /// Deleted (content removed).
    pub deleted: bool,
    /// Reactions.
    pub reactions: Vec<Reaction>,
}

/// Per-channel read position of the user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReadState {
    /// Channel.
    pub channel_id: u64,
    /// Last seq read.
    pub last_read_seq: u64,
    /// Mentions of the user since then.
    pub mention_count: u32,
}

/// What a user is to you.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum RelationshipKind {
    /// Friends.
    Friend,
    /// They asked to be friends.
    IncomingRequest,
    /// You asked to be friends.
    OutgoingRequest,
    /// You blocked them.
    Blocked,
}

/// A relationship with another user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Relationship {
    /// The other user.
    pub user_id: u64,
    /// What they are to you.
    pub kind: RelationshipKind,
}

/// Something that can be muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum MuteTarget {
    /// A whole guild.
    Guild(u64),
    /// One channel (DMs included).
    Channel(u64),
}

/// Why you were notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum NotificationKind {
    /// You (or a role of yours, or everyone) were mentioned.
    Mention,
    /// Someone replied to your message.
    Reply,
    /// Someone reacted to your message.
    Reaction,
    /// A direct or group message.
    DirectMessage,
    /// Someone asked to be friends.
    FriendRequest,
    /// Someone accepted your friend request.
    FriendAccepted,
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Notification {
    /// Snowflake id (newer is larger).
    pub id: u64,
    /// Why.
    pub kind: NotificationKind,
    /// Who caused it.
    pub actor_id: u64,
    /// Guild, if any.
    pub guild_id: Option<u64>,
    /// Channel, if any.
    pub channel_id: Option<u64>,
    /// Message, if any.
    pub message_id: Option<u64>,
    /// A preview: the start of the message, or the emoji.
    pub preview: String,
    /// When (Unix ms).
    pub created_at_ms: u64,
    /// Marked read.
    pub read: bool,
}

/// Who is in which voice channel, in what state.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VoiceState {
    /// The guild.
    pub guild_id: u64,
    /// The voice channel.
    pub channel_id: u64,
    /// The user.
    pub user_id: u64,
    /// Their slot: downlink datagrams from them carry it.
    pub slot: u16,
    /// Muted by themself.
    pub self_mute: bool,
    /// Deafened by themself.
    pub self_deaf: bool,
    /// Muted by a moderator (or lacking the speak permission).
    pub server_mute: bool,
    /// Deafened by a moderator.
    pub server_deaf: bool,
    /// Speaking now.
    pub speaking: bool,
}

/// The SFU's counters for one participant.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VoiceParticipantStats {
    /// The user.
    pub user_id: u64,
    /// Their slot.
    pub slot: u16,
    /// Frames received from them.
    pub received: u64,
    /// Frame copies sent to listeners.
    pub forwarded: u64,
    /// Frames not forwarded (muted, silence, not among the loudest).
    pub dropped: u64,
    /// Frames missing from their seq sequence.
    pub lost: u64,
    /// Interarrival jitter in microseconds.
    pub jitter_us: u32,
    /// What their own receiver reports say of what the node sent them: a WebRTC
    /// participant's RTCP; `None` for datagram participants, who send no reports.
    pub downlink: Option<VoiceDownlinkStats>,
}

/// A WebRTC participant's downlink, as the node counts it and its RTCP receiver reports
/// tell it (brought up to date every second; reports come every 5 s for audio).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VoiceDownlinkStats {
    /// RTP packets the node sent it.
    pub packets: u64,
    /// Of those, lost on the way, as reported.
    pub lost: u64,
    /// The largest interarrival jitter reported, µs.
    pub jitter_us: u32,
    /// Round-trip time from the latest report, µs (`None` before the first).
    pub rtt_us: Option<u32>,
}

/// A presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum PresenceStatus {
    /// Active.
    Online,
    /// Away.
    Idle,
    /// Do not disturb.
    Dnd,
    /// Connected but shown offline (only ever seen by the user themself).
    Invisible,
    /// Not connected (or invisible, as others see it).
    Offline,
}

/// Status per platform.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClientStatus {
    /// Desktop sessions.
    pub desktop: PresenceStatus,
    /// Mobile sessions.
    pub mobile: PresenceStatus,
    /// Browser sessions.
    pub web: PresenceStatus,
}

/// A user's presence as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Presence {
    /// The user.
    pub user_id: u64,
    /// Aggregate status.
    pub status: PresenceStatus,
    /// Per platform.
    pub client_status: ClientStatus,
    /// Custom status text.
    pub custom_status: Option<String>,
    /// Activity.
    pub activity: Option<String>,
}

/// An invite.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Invite {
    /// The code to join with.
    pub code: String,
    /// Guild.
    pub guild_id: u64,
    /// 0 = unlimited.
    pub max_uses: u32,
    /// Expiry (Unix ms), if any.
    pub expires_at_ms: Option<u64>,
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
    /// Done; nothing to return.
    Done,
    /// A guild (create, rename, join).
    Guild(Guild),
    /// An invite.
    Invite(Invite),
    /// A role.
    Role(Role),
    /// A channel (create, DM).
    Channel(Channel),
    /// A message was stored (or had been: `duplicate`).
    MessageSent {
        /// Its id.
        message_id: u64,
        /// Its channel seq.
        seq: u64,
        /// Creation time (Unix ms).
        created_at_ms: u64,
        /// True when this nonce had been sent before: no new message was created.
        duplicate: bool,
    },
    /// A change took the channel's next seq.
    Sequenced {
        /// The seq.
        seq: u64,
    },
    /// Who is typing in a channel.
    Typers {
        /// The channel.
        channel_id: u64,
        /// The typers.
        user_ids: Vec<u64>,
    },
    /// A relationship changed (reply to relationship requests).
    Relationship(Relationship),
    /// You joined a voice channel: your slot and who is there.
    VoiceJoined {
        /// The channel.
        channel_id: u64,
        /// Your slot.
        slot: u16,
        /// Everyone in the channel, you included.
        participants: Vec<VoiceState>,
    },
    /// Voice counters.
    VoiceStats {
        /// Per participant.
        participants: Vec<VoiceParticipantStats>,
    },
    /// The voice channel lives on another node of the cluster (answer to `JoinVoice`): open
    /// a session there with the same token and send `JoinVoice` on it.
    VoiceServer {
        /// The channel.
        channel_id: u64,
        /// `host:port` of that node's QUIC / WebTransport endpoint.
        endpoint: String,
        /// SHA-256 of that node's certificates when they are generated development ones
        /// (for pinning or `serverCertificateHashes`); empty with a real certificate.
        cert_hashes: Vec<Vec<u8>>,
    },
    /// Joined as a WebRTC participant (answer to `JoinVoiceWebRtc`).
    VoiceJoinedWebRtc {
        /// The channel.
        channel_id: u64,
        /// The participant's slot (as `VoiceJoined.slot`).
        slot: u16,
        /// Everyone in the channel, the new participant included.
        participants: Vec<VoiceState>,
        /// The SDP answer (ICE-lite, one host candidate: the server's WebRTC port).
        answer: String,
    },
}

/// Events pushed by the server on a lane. Channel events (`Message*`, `Reaction*`) carry
/// the channel's `seq`: every viewer sees them in that order, and gaps are detectable.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum EventBody {
    /// A notice from the operator (maintenance warnings and the like).
    Notice {
        /// Text to show.
        text: String,
    },
    /// A message was created.
    MessageCreated {
        /// Channel seq.
        seq: u64,
        /// The message.
        message: Message,
    },
    /// A message was edited.
    MessageEdited {
        /// Channel seq.
        seq: u64,
        /// Channel.
        channel_id: u64,
        /// Message.
        message_id: u64,
        /// New content.
        content: String,
        /// New mentions.
        mentions: Mentions,
        /// Edit time (Unix ms).
        edited_at_ms: u64,
    },
    /// A message was deleted.
    MessageDeleted {
        /// Channel seq.
        seq: u64,
        /// Channel.
        channel_id: u64,
        /// Message.
        message_id: u64,
    },
    /// A reaction was added.
    ReactionAdded {
        /// Channel seq.
        seq: u64,
        /// Channel.
        channel_id: u64,
        /// Message.
        message_id: u64,
        /// Who.
        user_id: u64,
        /// The emoji.
        emoji: String,
    },
    /// A reaction was removed.
    ReactionRemoved {
        /// Channel seq.
        seq: u64,
        /// Channel.
        channel_id: u64,
        /// Message.
        message_id: u64,
        /// Who.
        user_id: u64,
        /// The emoji.
        emoji: String,
    },
    /// A guild became visible to you (created, joined) or changed.
    GuildUpdated {
        /// The guild.
        guild: Guild,
    },
    /// You are no longer in the guild (left, kicked, banned, deleted).
    GuildRemoved {
        /// The guild.
        guild_id: u64,
    },
    /// A channel was created or changed, or became visible to you.
    ChannelUpdated {
        /// The channel.
        channel: Channel,
    },
    /// A channel was deleted, or is no longer visible to you.
    ChannelRemoved {
        /// The channel.
        channel_id: u64,
    },
    /// A role was created or changed.
    RoleUpdated {
        /// The role.
        role: Role,
    },
    /// Someone joined a guild, or their roles changed.
    MemberUpdated {
        /// The guild.
        guild_id: u64,
        /// The member.
        member: Member,
    },
    /// Someone left a guild.
    MemberRemoved {
        /// The guild.
        guild_id: u64,
        /// The user.
        user_id: u64,
    },
    /// Your read state changed (on another of your sessions).
    ReadStateUpdated {
        /// The new state.
        state: ReadState,
    },
    /// Presence lane: a user's presence changed.
    PresenceUpdated {
        /// The new presence.
        presence: Presence,
    },
    /// Typing lane: someone started typing; hide it after `expires_in_ms` unless refreshed.
    TypingStarted {
        /// The channel.
        channel_id: u64,
        /// The typer.
        user_id: u64,
        /// How long to show it.
        expires_in_ms: u32,
    },
    /// Typing lane: someone stopped typing (explicitly, by sending, or by expiry).
    TypingStopped {
        /// The channel.
        channel_id: u64,
        /// The typer.
        user_id: u64,
    },
    /// A relationship was created or changed.
    RelationshipUpdated {
        /// The relationship.
        relationship: Relationship,
    },
    /// A relationship ended.
    RelationshipRemoved {
        /// The other user.
        user_id: u64,
    },
    /// Notifications lane: a new notification.
    NotificationCreated {
        /// It.
        notification: Notification,
    },
    /// Notifications lane: notifications were marked read (on any of your sessions).
    NotificationsRead {
        /// Which (empty when `all`).
        ids: Vec<u64>,
        /// All of them.
        all: bool,
    },
    /// A guild or channel was muted or unmuted (on any of your sessions).
    MuteUpdated {
        /// What.
        target: MuteTarget,
        /// Muted now.
        muted: bool,
    },
    /// Catch-up could not bridge a channel: events after `after_seq` and before
    /// `resumes_at` are gone from the log. Refetch the channel's history.
    Gap {
        /// The channel.
        channel_id: u64,
        /// The client's position.
        after_seq: u64,
        /// The first seq still available (or the next to come).
        resumes_at: u64,
    },
    /// Voice lane: someone joined a voice channel or changed state (to everyone who can
    /// see the channel).
    VoiceStateUpdated {
        /// The state.
        state: VoiceState,
    },
    /// Voice lane: someone left a voice channel.
    VoiceStateRemoved {
        /// The guild.
        guild_id: u64,
        /// The channel.
        channel_id: u64,
        /// The user.
        user_id: u64,
    },
    /// Voice lane: speaking started or stopped (≤ 100 ms after the fact).
    VoiceSpeaking {
        /// The channel.
        channel_id: u64,
        /// The user.
        user_id: u64,
        /// Their slot.
        slot: u16,
        /// Speaking now.
        speaking: bool,
    },
    /// Voice lane, to a WebRTC participant's own session only: the receiving track with
    /// media id `mid` (its transceiver's `mid`) now carries the speaker in `slot` (that
    /// slot's user is in their `VoiceState`). Sent when a track's speaker changes, before
    /// that speaker's first packet on it leaves.
    VoiceTrack {
        /// The channel.
        channel_id: u64,
        /// The track's media id, as in the SDP.
        mid: String,
        /// The speaker's slot.
        slot: u16,
    },
    /// Presence lane: what you can now see of these users' presence, because what you share
    /// with them changed (you joined a guild, a friendship began, someone joined yours).
    /// Offline users are left out. Each replaces what you knew of that user, as a
    /// `PresenceUpdated` would.
    PresenceSnapshot {
        /// The presences.
        presences: Vec<Presence>,
    },
    /// Voice lane: the complete participants of these voice channels now, because you can
    /// newly see them (you joined their guild, or were given view of them). Forget what you
    /// held for the listed channels and take `states`.
    VoiceStatesSnapshot {
        /// The channels described.
        channel_ids: Vec<u64>,
        /// Everyone in them.
        states: Vec<VoiceState>,
    },
    /// Notifications lane: an event of the application's own (its backend sent it through
    /// the server API), for a feature Quaver does not model. Not stored: delivered to the
    /// sessions connected when it was sent (and replayed on a resume within the window).
    AppEvent {
        /// The application's name for it (1–64 characters: letters, digits, `.`, `_`, `-`).
        name: String,
        /// Its data: JSON text (at most 16 KiB).
        data: String,
        /// The channel it concerns, when it was sent to a channel's viewers.
        channel_id: Option<u64>,
        /// The guild it concerns, when it was sent to a guild or one of its channels.
        guild_id: Option<u64>,
    },
    /// A role was deleted: drop it from every member's roles. Since protocol 2.
    RoleDeleted {
        /// The guild.
        guild_id: u64,
        /// The role.
        role_id: u64,
    },
    /// You were moved (a moderator, or the application's backend) to a voice channel that
    /// another node serves: you are out of your channel here; join `channel_id` as usual
    /// (its answer, `VoiceServer`, takes you to that node), with the same mute and deafen.
    /// Sent on the voice lane of the session that was in voice. Since protocol 2.
    VoiceMoved {
        /// The guild.
        guild_id: u64,
        /// The channel to join.
        channel_id: u64,
    },
    /// Chat lane, to a session that declared the channels it views
    /// ([`RequestBody::ViewChannels`]): guild channels it does not view had events it was
    /// not sent; each entry is a channel and its newest seq so far (mark it unread when that
    /// is past your read position; open it to fetch its history). Coalesced: at most one
    /// every couple of seconds per session. Since protocol 2.
    ChannelActivity {
        /// The channels, each with its newest seq.
        channels: Vec<ChannelSeq>,
    },
}

impl EventBody {
    /// The channel and seq of a channel event (the ones stored in the channel event log).
    pub fn channel_seq(&self) -> Option<(u64, u64)> {
        match self {
            EventBody::MessageCreated { seq, message } => Some((message.channel_id, *seq)),
            EventBody::MessageEdited { seq, channel_id, .. }
            | EventBody::MessageDeleted { seq, channel_id, .. }
            | EventBody::ReactionAdded { seq, channel_id, .. }
            | EventBody::ReactionRemoved { seq, channel_id, .. } => Some((*channel_id, *seq)),
            _ => None,
        }
    }
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
    /// A page of a channel's messages, by seq (read-message-history).
    History {
        /// The channel.
        channel_id: u64,
        /// Where to start.
        anchor: HistoryAnchor,
        /// At most 100.
        limit: u32,
    },
    /// The guilds you are in, with the channels you can see.
    Guilds,
    /// A guild's channels that you can see.
    Channels {
        /// The guild.
        guild_id: u64,
    },
    /// A guild's members (by user id, after `after`).
    Members {
        /// The guild.
        guild_id: u64,
        /// Page after this user id (0 = from the start).
        after: u64,
        /// At most 1000.
        limit: u32,
    },
    /// Your notifications, newest first, with ids below `before` (0 = from the newest).
    Notifications {
        /// Page below this id.
        before: u64,
        /// At most 100.
        limit: u32,
    },
    /// Your relationships.
    Relationships,
    /// What an invite leads to, before joining (`INVALID_INVITE` if it is unknown, used up
    /// or expired).
    Invite {
        /// The invite's code.
        code: String,
    },
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum HistoryAnchor {
    /// The newest messages.
    Latest,
    /// Messages with a creation seq below this one (older), newest first in time order.
    Before(u64),
    /// Messages with a creation seq above this one (newer).
    After(u64),
    /// Messages around this seq (half before, half after).
    Around(u64),
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
    /// Messages in ascending seq order (deleted ones included, content removed).
    History {
        /// The messages.
        messages: Vec<Message>,
        /// Whether older messages exist before the first one returned.
        more_before: bool,
        /// Whether newer messages exist after the last one returned.
        more_after: bool,
    },
    /// Guilds with their visible channels and roles.
    Guilds {
        /// The guilds.
        guilds: Vec<GuildSnapshot>,
    },
    /// Channels.
    Channels {
        /// The channels.
        channels: Vec<Channel>,
    },
    /// Members.
    Members {
        /// The members.
        members: Vec<Member>,
    },
    /// Notifications, newest first.
    Notifications {
        /// The page.
        notifications: Vec<Notification>,
        /// Unread in total.
        unread: u32,
    },
    /// Relationships.
    Relationships {
        /// All of them.
        relationships: Vec<Relationship>,
    },
    /// An invite and its guild.
    Invite {
        /// The invite.
        invite: Invite,
        /// The guild it joins.
        guild: Guild,
        /// How many members the guild has.
        member_count: u32,
        /// Whether you are one of them already.
        member: bool,
    },
}

/// A guild as a member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GuildSnapshot {
    /// The guild.
    pub guild: Guild,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The channels you can see.
    pub channels: Vec<Channel>,
    /// Member count.
    pub member_count: u32,
    /// The members, for guilds of up to 100 members (otherwise empty: fetch `Members`).
    pub members: Vec<Member>,
}

/// The single frame the server writes on a fetch stream before finishing it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum FetchReply {
    /// The result.
    Ok(FetchResponse),
    /// The failure.
    Err(ErrorBody),
    /// A large reply, zstd-compressed (only when the session negotiated `Zstd`): `data`
    /// decompresses to the encoding of an `Ok` or `Err` reply of `raw_len` bytes.
    Compressed {
        /// Size of the decompressed encoding (at most 4 MiB).
        raw_len: u32,
        /// zstd frame.
        data: Vec<u8>,
    },
}
