//! What the fan-out reaches, and through what: three small interfaces, so that it stands
//! *below* the parts that publish and hold sessions (the way centrifuge's hub is handed a
//! broker) and imports none of them — only the bus ([`crate::cluster`]) it runs on.
//!
//! - [`Deliver`]: this node's sessions (implemented by the gateway's `Sessions`). Each
//!   call hands one encoded event to every listed user at once, so the implementation
//!   wakes the engine's loop once per event, not once per receiver.
//! - [`Audience`]: who may see what, and the event log (implemented by chat's `Chat`): a
//!   channel's viewers from its cached permission state, the topics a presence change goes
//!   to, and the reads that catch a channel up.
//! - [`Node`]: the rest of the node the bus speaks to besides deliveries (implemented in
//!   `lib.rs` over voice, typing, presence and the webhooks' store): what another node's
//!   voice and typing events imply here, the backend's voice orders, the snapshots an
//!   audience change shows, and the webhook workers' wake-ups.
//!
//! A session opening here is handed over as an [`Opening`], so the fan-out can attach it
//! in line with delivery without knowing its type.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quaver_proto::{Lane, Presence, VoiceState};

use crate::auth::Revocations;
use crate::cluster::order::{Order, SessionSummary, VoiceAction};
use crate::cluster::pubsub::Topic;

/// This node's sessions, as the fan-out reaches them.
pub trait Deliver: Send + Sync + std::fmt::Debug {
    /// Queues `event` on `lane` of every session of each of `users` (sorted or not; each
    /// once).
    fn to_users(&self, users: &[u64], lane: Lane, event: &Bytes);
    /// Queues an event about guild channel `channel` (`seq`: a chat-lane channel event's;
    /// typing has none) for every session of each of `users`: sessions that do not view
    /// the channel are told later in a coalesced `ChannelActivity` instead. Returns how
    /// many sessions it was held back from.
    fn to_channel(&self, users: &[u64], lane: Lane, channel: u64, seq: Option<u64>, event: &Bytes, now: Instant)
    -> u64;
    /// Queues a presence event for each session of a user that looks at one of the large
    /// guilds it reached them through: `looking` is (user, guild), sorted by user. Returns
    /// how many users it reached.
    fn to_lookers(&self, looking: &[(u64, u64)], event: &Bytes) -> u64;
    /// Of the users for whom `wanted` holds, those with a session here that looks at
    /// `guild` (or at everything), sorted.
    fn looking_at(&self, guild: u64, wanted: &mut dyn FnMut(u64) -> bool) -> Vec<u64>;
    /// Whether a session of `user` here looks at `guild` (or at everything).
    fn looks_at(&self, user: u64, guild: u64) -> bool;
    /// Carries out the backend's order on the sessions here: returns the users left with
    /// no session here, and how many sessions it ended.
    fn carry_out(&self, order: &Order, revocations: &Revocations) -> (Vec<u64>, usize);
    /// The sessions `user` has here, as the server API lists them.
    fn summaries(&self, user: u64) -> Vec<SessionSummary>;
}

/// A session opening on this node ([`super::Fanout::open`]).
pub trait Opening: Send + Sync {
    /// Its user.
    fn user(&self) -> u64;
    /// From now on [`Deliver`] reaches it.
    fn attach(&self);
    /// Queues an event of its catch-up (before any live one of its channels).
    fn push(&self, lane: Lane, event: Bytes);
}

/// Who may see what, and the event log.
pub trait Audience: Send + Sync + 'static {
    /// Whether `guild` is large (its presence reaches only the sessions that look at it).
    fn is_large(&self, guild: u64) -> impl Future<Output = bool> + Send;
    /// Who may view `channel` (of `guild`, or a private channel's recipients); `None`
    /// when it cannot be read.
    fn channel_viewers(&self, guild: Option<u64>, channel: u64) -> impl Future<Output = Option<Arc<Vec<u64>>>> + Send;
    /// The topics a presence change of `user` goes to (their guilds, their friends').
    fn observer_topics(&self, user: u64) -> impl Future<Output = anyhow::Result<Vec<Topic>>> + Send;
    /// The members of `guild` but `except`.
    fn member_ids(&self, guild: u64, except: u64) -> impl Future<Output = anyhow::Result<Vec<u64>>> + Send;
    /// Up to `limit` logged events of `channel` after seq `after`: (seq, event).
    fn channel_log(
        &self,
        channel: u64,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = anyhow::Result<Vec<(u64, Bytes)>>> + Send;
    /// The logged events of `channel` after `from` (up to `until`), not older than
    /// `since_ms`: (ordering key, event) with a `Gap` where the log does not reach, and the
    /// seq they reach.
    fn log_since(
        &self,
        channel: u64,
        from: u64,
        until: Option<u64>,
        since_ms: u64,
    ) -> impl Future<Output = anyhow::Result<(Vec<(u64, Bytes)>, u64)>> + Send;
    /// Where the channels of `guild` (or private channel `channel`) stand: (channel, seq).
    fn current_seqs(
        &self,
        guild: Option<u64>,
        channel: u64,
    ) -> impl Future<Output = anyhow::Result<Vec<(u64, u64)>>> + Send;
    /// `guild` changed: its cached state is stale.
    fn guild_changed(&self, guild: u64);
    /// `user` joined `guild`.
    fn member_added(&self, guild: u64, user: u64);
}

/// The rest of the node the bus speaks to.
pub trait Node: Send + Sync + 'static {
    /// Another node (`origin`) published this voice event: its participants are
    /// remembered here, to notice that node's death.
    fn voice_elsewhere(&self, origin: u64, event: &Bytes);
    /// Another node published this typing event: its typer is known here.
    fn typing_elsewhere(&self, event: &Bytes);
    /// `user` joined voice channel `channel` on another node (one voice channel per user,
    /// cluster-wide).
    fn joined_voice_elsewhere(&self, user: u64, channel: u64) -> impl Future<Output = ()> + Send;
    /// The backend's order about `user`'s voice in `guild`, carried out here if their voice
    /// channel is served here (it logs what it did).
    fn voice_order(&self, guild: u64, user: u64, action: VoiceAction) -> impl Future<Output = ()> + Send;
    /// The presence of `users` with their versions; the offline ones too with `offline`.
    fn presences(&self, users: Vec<u64>, offline: bool) -> impl Future<Output = Vec<(Presence, Option<u64>)>> + Send;
    /// The voice states of those of `channels` served here, and the others.
    fn voice_states_here(&self, channels: &[u64]) -> (Vec<VoiceState>, Vec<u64>);
    /// The voice states of `channels` served by other nodes.
    fn voice_states_elsewhere(&self, channels: &[u64]) -> impl Future<Output = Vec<VoiceState>> + Send;
    /// A node committed webhook deliveries: the delivery workers look.
    fn hooks_written(&self);
    /// A node changed the webhook endpoints: they are read again.
    fn endpoints_changed(&self);
}
