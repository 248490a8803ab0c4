//! The cluster bus: how an event reaches every session that should see it, on this node
//! and on the others. Publishers speak [`BusEvent`]s through the [`Bus`] trait; the
//! fan-out ([`crate::fanout`]) turns them into messages on topics of a [`pubsub::PubSub`]:
//! the in-process [`pubsub::MemoryHub`] (one node, no services) or [`redis`] (one Redis or a
//! Redis Cluster), held to one conformance suite (`tests/pubsub.rs`).

pub mod pubsub;
pub mod redis;

use bytes::Bytes;

/// What travels on the bus. Event payloads are encoded once (`EventBody` bytes) and shared,
/// never re-encoded per receiver.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A channel event: deliver to every user who can view the channel.
    Channel {
        /// The channel's guild (`None` for DMs).
        guild_id: Option<u64>,
        /// The channel.
        channel_id: u64,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Deliver to every member of a guild.
    Guild {
        /// The guild.
        guild_id: u64,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Deliver to every session of one user, on `lane`.
    User {
        /// The user.
        user_id: u64,
        /// The lane.
        lane: quaver_proto::Lane,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Typing lane: deliver to the channel's viewers except `user_id`'s own sessions.
    Typing {
        /// The channel's guild (`None` for DMs).
        guild_id: Option<u64>,
        /// The channel.
        channel_id: u64,
        /// The typer (excluded).
        user_id: u64,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Presence lane: deliver to everyone who can see `user_id` (shared guilds, friends).
    Presence {
        /// Whose presence.
        user_id: u64,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Voice lane: deliver to everyone who can see a voice channel.
    Voice {
        /// The guild.
        guild_id: u64,
        /// The voice channel.
        channel_id: u64,
        /// Encoded `EventBody`.
        event: Bytes,
    },
    /// Someone joined a guild (no roles yet): add them to cached permission state, and
    /// they follow the guild's events.
    MemberAdded {
        /// The guild.
        guild_id: u64,
        /// The new member.
        user_id: u64,
    },
    /// Someone left, was removed from, or lost a guild (it was deleted): they stop
    /// following its events.
    MemberLeft {
        /// The guild.
        guild_id: u64,
        /// The former member.
        user_id: u64,
    },
    /// A DM or group DM was created: its members follow it.
    DmOpened {
        /// The channel.
        channel_id: u64,
        /// Its members.
        recipients: Vec<u64>,
    },
    /// A guild's roles, members or overwrites changed: drop cached permission state.
    GuildChanged {
        /// The guild.
        guild_id: u64,
    },
}

/// Publishes events to every node (this one included). Implemented by
/// [`crate::fanout::Fanout`], which maps each event to its topics and audience.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes; never blocks. Order is preserved per publisher.
    fn publish(&self, ev: BusEvent);
}
