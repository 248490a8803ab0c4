//! The cluster bus: how an event reaches every session that should see it, on this node
//! and on the others. Chat publishes; each node's fan-out task (`chat::Chat::run_fanout`)
//! receives and delivers to its local sessions. The in-process [`MemoryBus`] here is what
//! the server runs on today (single node).
//!
//! Beside it, the topic bus the cluster is being built on (issue 11): [`pubsub`] (topics,
//! reference-counted subscriptions per node, the in-process [`pubsub::MemoryHub`]) and
//! [`redis`] (the same on one Redis or a Redis Cluster), held to one conformance suite
//! (`tests/pubsub.rs`). The switch of the fan-out onto it comes next.

pub mod pubsub;
pub mod redis;

use bytes::Bytes;
use tokio::sync::mpsc;

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
    /// Someone joined a guild (no roles yet): add them to cached permission state.
    MemberAdded {
        /// The guild.
        guild_id: u64,
        /// The new member.
        user_id: u64,
    },
    /// A guild's roles, members or overwrites changed: drop cached permission state.
    GuildChanged {
        /// The guild.
        guild_id: u64,
    },
}

/// Publishes events to every node (this one included).
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes; never blocks. Order is preserved per publisher.
    fn publish(&self, ev: BusEvent);
}

/// The single-node bus: a queue into this node's fan-out task.
#[derive(Debug)]
pub struct MemoryBus {
    tx: mpsc::UnboundedSender<BusEvent>,
}

impl MemoryBus {
    /// The bus and the receiving end for the fan-out task.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<BusEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, rx)
    }
}

impl Bus for MemoryBus {
    fn publish(&self, ev: BusEvent) {
        // Fails only when the fan-out task is gone, i.e. during shutdown.
        let _ = self.tx.send(ev);
    }
}
