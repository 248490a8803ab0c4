//! The cluster bus: how an event reaches every session that should see it, on this node
//! and on the others. Publishers speak [`BusEvent`]s through the [`Bus`] trait; the
//! fan-out ([`crate::fanout`]) turns them into messages on topics of a [`pubsub::PubSub`]:
//! the in-process [`pubsub::MemoryHub`] (one node, no services) or [`redis`] (one Redis or a
//! Redis Cluster), held to one conformance suite (`tests/pubsub.rs`).

pub mod identity;
pub mod order;
pub mod pubsub;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use self::pubsub::{PubSub, Received};

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
        /// The event's channel seq (channel events are delivered in seq order).
        seq: u64,
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
        /// The user's presence version in the cluster registry (receivers drop one older
        /// than what they delivered); `None` on one node or while the registry is away.
        version: Option<u64>,
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
        /// Where the guild's channels stood when they joined (channel, seq): the new
        /// member's node delivers every later event.
        channels: Vec<(u64, u64)>,
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
        /// Where it stood when it was opened.
        last_seq: u64,
    },
    /// `user_id` joined `channel_id` (voice) on this node: every other node drops them
    /// from any voice channel it serves (a user is in one voice channel, cluster-wide).
    VoiceJoined {
        /// The user.
        user_id: u64,
        /// The voice channel.
        channel_id: u64,
    },
    /// A guild's roles, members or overwrites changed: drop cached permission state.
    GuildChanged {
        /// The guild.
        guild_id: u64,
    },
    /// An audience changed: `to` can now see the presence of `users` (a guild joined, a
    /// friendship begun) and is told it (`PresenceSnapshot`), on every node, read after `to`
    /// follows what brings later changes.
    ShowPresences {
        /// Who is told.
        to: Viewers,
        /// Whose presence.
        users: Vec<u64>,
    },
    /// `user_id`'s sessions that look at large guild `guild_id` are told its members'
    /// presence (`PresenceSnapshot`; with `again`, the offline ones too): a session's view
    /// brought the guild in (`gateway::view`).
    ShowGuildMembers {
        /// Whose sessions.
        user_id: u64,
        /// The large guild.
        guild_id: u64,
        /// Its offline members too (the sessions may hold older statuses of them).
        again: bool,
    },
    /// `user_id` can now see voice channels `channels` (their guild joined, or view granted)
    /// and is told who is in them (`VoiceStatesSnapshot`).
    ShowVoiceStates {
        /// Who is told.
        user_id: u64,
        /// The voice channels.
        channels: Vec<u64>,
    },
    /// The backend's order about sessions (server API): carried out on every node.
    Order(order::Order),
    /// An application event (server API) on the notifications lane: to the viewers of
    /// `channel_id` (a guild channel, or a DM's members), or to every member of `guild_id`.
    App {
        /// The guild (of the channel, or the guild itself).
        guild_id: Option<u64>,
        /// The channel, when it is for a channel's viewers.
        channel_id: Option<u64>,
        /// Encoded `EventBody`.
        event: Bytes,
    },
}

/// Who a [`BusEvent::ShowPresences`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewers {
    /// Every session of this user.
    User(u64),
    /// Every member of this guild but this user (the one who just joined).
    GuildExcept(u64, u64),
}

/// Publishes events to every node (this one included). Implemented by
/// [`crate::fanout::Fanout`], which maps each event to its topics and audience.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes; never blocks. Order is preserved per publisher.
    fn publish(&self, ev: BusEvent);
    /// Delivers an event to this node's sessions only (what this node concluded on its own,
    /// e.g. that another node's voice participant is gone). Control events (membership,
    /// presence, guild changes) are handled as [`Bus::publish`] handles them.
    fn deliver_here(&self, ev: BusEvent);
    /// This node's tag on the bus (the origin of what it publishes).
    fn origin(&self) -> u64;
}

/// The bus `cfg` asks for: Redis when `redis` is set (it must answer at start: a node that
/// cannot reach the cluster at boot cannot know it is part of one), else one node in
/// process.
/// With `hub`, the node joins that in-process bus instead (several nodes in one process, in
/// tests).
pub async fn connect(cfg: &crate::config::Config, hub: Option<&pubsub::MemoryHub>) -> anyhow::Result<Connected> {
    let memory = |hub: &pubsub::MemoryHub| {
        let (p, rx) = hub.node();
        Connected {
            pubsub: Arc::new(p),
            rx,
            commands: None,
        }
    };
    if let Some(hub) = hub {
        return Ok(memory(hub));
    }
    let Some(url) = &cfg.redis else {
        return Ok(memory(&pubsub::MemoryHub::new()));
    };
    // The URL may hold a password: it is never logged, nor is it in these errors.
    let target = redis::RedisTarget::parse(url).map_err(|e| anyhow::anyhow!("redis: {e}"))?;
    let opt = redis::RedisOptions {
        prefix: cfg.redis_prefix.clone(),
        ..Default::default()
    };
    let (p, rx) = redis::RedisPubSub::connect(&target, &cfg.node_name, opt)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to Redis: {e}"))?;
    if !p.ready(Duration::from_secs(5)).await {
        tracing::warn!("Redis answers but its pub/sub probe did not come back; starting degraded");
    }
    tracing::info!(kind = target.kind(), "cluster bus on Redis");
    Ok(Connected {
        commands: Some(p.commands()),
        pubsub: Arc::new(p),
        rx,
    })
}

/// A node's way into the cluster.
#[derive(Debug)]
pub struct Connected {
    /// The bus.
    pub pubsub: Arc<dyn PubSub>,
    /// What arrives on the node's topics.
    pub rx: mpsc::UnboundedReceiver<Received>,
    /// Redis commands (presence registry), on Redis only.
    pub commands: Option<redis::Commands>,
}
