//! Guilds, channels, permissions and messages: request handling on the chat lane, fetches
//! and the `Ready` snapshot. Delivery is the fan-out's ([`crate::fanout`]); chat publishes.
//!
//! Guarantees: a message is acknowledged only after the store committed it; every channel
//! event has the channel's next seq; a per-channel lock held from the store transaction to
//! the bus publish makes this node publish each channel's events in seq order (across
//! nodes the receiving fan-out restores the order); a retried nonce returns the original
//! message. Permission state per guild is cached and dropped on any change (`GuildChanged`).
//!
//! By concern: `view` the cached permission state, `messages` and `guilds` the chat-lane
//! requests on messages and on guilds (with members, roles, channels, DMs), [`social`]
//! friends, blocks, mutes and notifications, `log` the event log as sessions see it.

mod guilds;
mod log;
mod messages;
mod view;

pub use guilds::MAX_TIMEOUT_SECS;
use view::{Access, GuildView, Private};
pub mod social;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{
    Channel, ChannelKind, ErrorBody, ErrorCode, EventBody, FetchReply, FetchRequest, FetchResponse, GuildSnapshot,
    Lane, OverwriteTarget, ReadState, RequestBody, ResponseBody,
};

use crate::cluster::{Bus, BusEvent, Viewers};
use crate::ids::{Snowflakes, now_ms};
use crate::limits::{Kind, Limiter};
use crate::perms::{self, Perms, Subject};
use crate::store::{GuildState, NewMessage, Store, StoreError};

/// The parts of `Ready` that chat provides.
#[derive(Debug)]
pub struct ReadyParts {
    /// Guilds with visible channels.
    pub guilds: Vec<GuildSnapshot>,
    /// DMs and group DMs.
    pub private_channels: Vec<Channel>,
    /// Read states.
    pub read_states: Vec<ReadState>,
    /// Relationships.
    pub relationships: Vec<quaver_proto::Relationship>,
    /// Mutes.
    pub mutes: Vec<quaver_proto::MuteTarget>,
    /// Unread notifications.
    pub notifications_unread: u32,
    /// Newest notifications.
    pub notifications: Vec<quaver_proto::Notification>,
}

/// Newest notifications carried in `Ready`.
pub const READY_NOTIFICATIONS: u32 = 20;

/// Guilds up to this size get their member list in `Ready`/`Guilds`.
pub const SMALL_GUILD: u32 = 100;
/// Most people in a group DM, the creator included.
pub const MAX_GROUP_DM: usize = 10;

pub use crate::limits::Refusal;

/// A store failure as a request error (also the server API's).
pub fn store_error(e: StoreError) -> ErrorBody {
    store_err(e)
}

fn store_err(e: StoreError) -> ErrorBody {
    match e {
        StoreError::NotFound => ErrorBody::new(ErrorCode::NOT_FOUND, "not found"),
        StoreError::InvalidInvite => ErrorBody::new(ErrorCode::INVALID_INVITE, "invite unknown, used up or expired"),
        StoreError::Banned => ErrorBody::new(ErrorCode::BANNED, "banned from this guild"),
        StoreError::InvalidReply => ErrorBody::new(
            ErrorCode::INVALID_REPLY,
            "reply target is not a message of this channel",
        ),
        StoreError::TooManyReactions => ErrorBody::new(ErrorCode::TOO_MANY_REACTIONS, "at most 20 distinct reactions"),
        StoreError::Timeout(t) => {
            tracing::warn!(deadline = ?t, "store call missed its deadline");
            ErrorBody {
                code: ErrorCode::UNAVAILABLE,
                message: "storage did not answer in time; retry".into(),
                retry_after_ms: Some(1000),
            }
        }
        other => {
            tracing::error!(error = %other, "store failure");
            ErrorBody::new(ErrorCode::INTERNAL, "storage failure; retry")
        }
    }
}

fn not_found() -> ErrorBody {
    ErrorBody::new(ErrorCode::NOT_FOUND, "not found")
}

fn forbidden(what: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::FORBIDDEN, format!("missing permission: {what}"))
}

fn ev(body: &EventBody) -> Bytes {
    Bytes::from(encode_payload(body))
}

/// Permissions a DM participant has.
const DM_PERMS: Perms =
    Perms(Perms::VIEW_CHANNEL.0 | Perms::SEND_MESSAGES.0 | Perms::READ_MESSAGE_HISTORY.0 | Perms::ADD_REACTIONS.0);

/// The chat service of one node.
#[derive(Debug)]
pub struct Chat {
    store: Store,
    bus: Arc<dyn Bus>,
    ids: Mutex<Snowflakes>,
    guilds: RwLock<HashMap<u64, Arc<GuildView>>>,
    /// Per guild, how many times its cached state was dropped or changed in place: a view
    /// read from the store is cached only if none happened while it was being read (else it
    /// could be older than the change, and stay cached — a member just added not a member,
    /// a permission just changed not changed — until the guild's next change).
    guild_epochs: Mutex<HashMap<u64, u64>>,
    /// Which guild a channel belongs to (`None`: DM), learned on first use.
    channel_guild: RwLock<HashMap<u64, Option<u64>>>,
    /// DMs and group DMs seen so far.
    private: RwLock<HashMap<u64, Arc<Private>>>,
    /// Serializes store-commit → publish per channel, so publish order is seq order.
    channel_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    limiter: Arc<Limiter>,
    /// Who has a live session (set once the presence task runs): a notification for
    /// someone without one is also a `notification.undelivered` webhook event.
    presence: std::sync::OnceLock<crate::presence::task::PresenceHandle>,
    /// The application's hooks (`message.before_create`), set once at start.
    hooks: std::sync::OnceLock<Arc<crate::webhooks::hooks::Hooks>>,
    /// Members above which a guild is large (its presence reaches only the sessions that
    /// look at it: [`Chat::is_large`]).
    large_guild: std::sync::atomic::AtomicU32,
}

impl Chat {
    /// The chat service over `store`, publishing on `bus`, minting ids as node `node`,
    /// rate-limited by `limiter`.
    pub fn new(store: Store, bus: Arc<dyn Bus>, node: u16, limiter: Arc<Limiter>) -> Self {
        Self {
            store,
            bus,
            ids: Mutex::new(Snowflakes::new(node)),
            guilds: RwLock::new(HashMap::new()),
            guild_epochs: Mutex::new(HashMap::new()),
            channel_guild: RwLock::new(HashMap::new()),
            private: RwLock::new(HashMap::new()),
            channel_locks: Mutex::new(HashMap::new()),
            limiter,
            presence: std::sync::OnceLock::new(),
            hooks: std::sync::OnceLock::new(),
            large_guild: std::sync::atomic::AtomicU32::new(1000),
        }
    }

    /// Sets how many members make a guild large (`session.large_guild_members`).
    pub fn set_large_guild_members(&self, n: u32) {
        self.large_guild.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn large(&self, g: &GuildView) -> bool {
        self.is_large_count(g.state.members.len().try_into().unwrap_or(u32::MAX))
    }

    /// Whether a guild of `members` members is large.
    pub fn is_large_count(&self, members: u32) -> bool {
        members > self.large_guild.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `guild` is large: its members' presence goes only to the sessions that look
    /// at one of its channels (or declared no view). A guild that cannot be read is not
    /// (its presence then goes to every member's sessions, as before the rule).
    pub async fn is_large(&self, guild: u64) -> bool {
        match self.guild(guild).await {
            Ok(g) => self.large(&g),
            Err(_) => false,
        }
    }

    /// The large guilds `user` is in, sorted.
    pub async fn large_guilds_of(&self, user: u64) -> Result<Vec<u64>, ErrorBody> {
        let mut out = Vec::new();
        for gid in self.store.guild_ids_of(user).await.map_err(store_err)? {
            if self.large(&*self.guild(gid).await?) {
                out.push(gid);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The members of `guild` but `except`.
    pub async fn member_ids(&self, guild: u64, except: u64) -> Result<Vec<u64>, ErrorBody> {
        let g = self.guild(guild).await?;
        Ok(g.state.members.keys().copied().filter(|u| *u != except).collect())
    }

    /// The application's hooks, asked before a message is stored.
    pub fn set_hooks(&self, h: Arc<crate::webhooks::hooks::Hooks>) {
        if self.hooks.set(h).is_err() {
            tracing::warn!("the chat service's hooks were set twice; the first stay");
        }
    }

    /// The presence task, asked who is live before notifying.
    pub fn set_presence(&self, p: crate::presence::task::PresenceHandle) {
        if self.presence.set(p).is_err() {
            tracing::warn!("the chat service's presence was set twice; the first stays");
        }
    }

    /// Makes every later id greater than `last_id` (the highest one stored); returns how
    /// many ms the clock is behind it.
    pub fn resume_ids_after(&self, last_id: u64) -> u64 {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resume_after(last_id, now_ms())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A new snowflake id, unique across the cluster (also the API's fresh nonces).
    pub fn id(&self) -> u64 {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).next(now_ms())
    }

    fn limit(&self, user: u64, kind: Kind) -> Result<(), Refusal> {
        self.limiter.check(user, kind)
    }

    /// Forgets per-channel publish locks nobody holds or waits for (they are re-created on
    /// demand); returns how many.
    pub fn sweep(&self) -> usize {
        let mut locks = self.channel_locks.lock().unwrap_or_else(|p| p.into_inner());
        let before = locks.len();
        // Only this map holds an idle lock: a holder or waiter has its own clone.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        before - locks.len()
    }

    async fn guild(&self, id: u64) -> Result<Arc<GuildView>, ErrorBody> {
        // A read overtaken by a change is read again (a few times at most: then it is used
        // for this request, uncached).
        let mut attempts = 0;
        loop {
            if let Some(g) = self.guilds.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
                return Ok(g.clone());
            }
            let before = self.guild_epoch(id);
            let state = self.store.guild_state(id).await.map_err(store_err)?;
            let view = Arc::new(GuildView {
                state,
                viewers: Mutex::new(HashMap::new()),
            });
            {
                let mut cg = self.channel_guild.write().unwrap_or_else(|p| p.into_inner());
                for c in &view.state.channels {
                    cg.insert(c.id, Some(id));
                }
            }
            let mut guilds = self.guilds.write().unwrap_or_else(|p| p.into_inner());
            // Under the cache's lock: a change takes that lock to bump the epoch.
            let current = self.guild_epoch(id) == before;
            if current {
                guilds.insert(id, view.clone());
            }
            attempts += 1;
            if current || attempts == 3 {
                return Ok(view);
            }
        }
    }

    fn guild_epoch(&self, id: u64) -> u64 {
        self.guild_epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// A change of `guild`'s cached state (with the cache's write lock held).
    fn bump_epoch(&self, guild: u64) {
        *self
            .guild_epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(guild)
            .or_insert(0) += 1;
    }

    /// Adds a role-less member to the cached state of `guild`, if cached; returns the new
    /// member count (`None` when not cached).
    pub(crate) fn member_added(&self, guild: u64, user: u64) -> Option<usize> {
        let mut guilds = self.guilds.write().unwrap_or_else(|p| p.into_inner());
        // A read of the guild in flight may predate the member: it must not be cached.
        self.bump_epoch(guild);
        let g = guilds.get(&guild)?;
        if g.state.members.contains_key(&user) {
            return Some(g.state.members.len());
        }
        let mut state = g.state.clone();
        state.members.insert(user, Vec::new());
        let n = state.members.len();
        guilds.insert(
            guild,
            Arc::new(GuildView {
                state,
                viewers: Mutex::new(HashMap::new()),
            }),
        );
        Some(n)
    }

    pub(crate) fn invalidate(&self, guild: u64) {
        let mut guilds = self.guilds.write().unwrap_or_else(|p| p.into_inner());
        guilds.remove(&guild);
        self.bump_epoch(guild);
    }

    /// Publishes that a guild changed (every node drops its cache) and drops ours now, so
    /// this node's next request sees the change at once.
    fn changed(&self, guild: u64) {
        self.invalidate(guild);
        self.bus.publish(BusEvent::GuildChanged { guild_id: guild });
    }

    /// The guild of `channel` (`None`: a DM), from the cache or the store.
    async fn channel_guild(&self, channel: u64) -> Result<Option<u64>, ErrorBody> {
        let known = self
            .channel_guild
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel)
            .copied();
        Ok(match known {
            Some(g) => g,
            None => {
                let c = self.store.channel(channel).await.map_err(store_err)?;
                self.remember(&c);
                c.guild_id
            }
        })
    }

    async fn access(&self, user: u64, channel: u64) -> Result<Access, ErrorBody> {
        match self.channel_guild(channel).await? {
            Some(gid) => {
                let g = self.guild(gid).await?;
                let c = g.channel(channel).cloned().ok_or_else(not_found)?;
                let p = g.perms(user, Some(&c)).unwrap_or(Perms(0));
                if !p.has(Perms::VIEW_CHANNEL) {
                    // Not visible: indistinguishable from not existing.
                    return Err(not_found());
                }
                Ok(Access::Guild(g, c, p))
            }
            None => {
                let p = self.private_channel(channel).await?;
                if !p.recipients.contains(&user) {
                    return Err(not_found());
                }
                Ok(Access::Private(p))
            }
        }
    }

    /// Records where a channel lives (and a private channel's members).
    fn remember(&self, c: &Channel) {
        self.channel_guild
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id, c.guild_id);
        if c.guild_id.is_none() {
            let p = Private {
                kind: c.kind,
                recipients: Arc::new(c.recipients.clone()),
            };
            self.private
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.id, Arc::new(p));
        }
    }

    /// A DM or group DM, from the cache or the store.
    async fn private_channel(&self, channel: u64) -> Result<Arc<Private>, ErrorBody> {
        if let Some(p) = self.private.read().unwrap_or_else(|p| p.into_inner()).get(&channel) {
            return Ok(p.clone());
        }
        let c = self.store.channel(channel).await.map_err(store_err)?;
        if c.guild_id.is_some() {
            return Err(not_found());
        }
        self.remember(&c);
        self.private
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel)
            .cloned()
            .ok_or_else(not_found)
    }

    /// Who receives a channel's events: the viewers of a guild channel, or a private
    /// channel's members.
    pub(crate) async fn channel_viewers(&self, guild: Option<u64>, channel: u64) -> Option<Arc<Vec<u64>>> {
        match guild {
            Some(g) => self.guild(g).await.ok().map(|g| g.viewers(channel)),
            None => self.private_channel(channel).await.ok().map(|p| p.recipients.clone()),
        }
    }

    /// Runs a store change that takes the channel's next seq, holding the channel's publish
    /// lock until its event is on the bus (so this node publishes in seq order).
    async fn sequenced<F>(&self, guild: Option<u64>, channel: u64, change: F) -> Result<Option<u64>, ErrorBody>
    where
        F: std::future::Future<Output = Result<Option<crate::store::Stored>, StoreError>>,
    {
        let lock = self.lock(channel);
        let _guard = lock.lock().await;
        let stored = change.await.map_err(store_err)?;
        Ok(stored.map(|s| {
            self.publish_channel(guild, channel, s.seq, s.event);
            s.seq
        }))
    }

    async fn guild_perms(&self, user: u64, guild: u64) -> Result<(Arc<GuildView>, Perms), ErrorBody> {
        let g = self.guild(guild).await?;
        let p = g.perms(user, None).ok_or_else(not_found)?;
        Ok((g, p))
    }

    fn lock(&self, channel: u64) -> Arc<tokio::sync::Mutex<()>> {
        self.channel_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(channel)
            .or_default()
            .clone()
    }

    fn publish_channel(&self, guild_id: Option<u64>, channel_id: u64, seq: u64, event: Vec<u8>) {
        self.bus.publish(BusEvent::Channel {
            guild_id,
            channel_id,
            seq,
            event: Bytes::from(event),
        });
    }

    fn publish_guild(&self, guild_id: u64, body: &EventBody) {
        self.bus.publish(BusEvent::Guild {
            guild_id,
            event: ev(body),
        });
    }

    fn publish_user(&self, user_id: u64, body: &EventBody) {
        self.publish_user_lane(user_id, Lane::Chat, body);
    }

    /// After a permission change: tell users who lost sight of a channel that it is gone,
    /// and everyone who can see it its new state.
    async fn announce_visibility(&self, old: &GuildView, guild: u64) -> Result<(), ErrorBody> {
        let new = self.guild(guild).await?;
        for c in &new.state.channels {
            let before = old.viewers(c.id);
            let after = new.viewers(c.id);
            for u in before.iter().filter(|u| !after.contains(u)) {
                self.publish_user(*u, &EventBody::ChannelRemoved { channel_id: c.id });
            }
            for u in after.iter() {
                self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
            }
            // Who can newly see a voice channel is told who is in it.
            if c.kind == ChannelKind::Voice {
                for u in after.iter().filter(|u| !before.contains(u)) {
                    self.bus.publish(BusEvent::ShowVoiceStates {
                        user_id: *u,
                        channels: vec![c.id],
                    });
                }
            }
        }
        Ok(())
    }

    /// Handles a chat-lane request from `user`.
    pub async fn handle(&self, user: u64, body: RequestBody) -> Result<ResponseBody, Refusal> {
        use RequestBody as R;
        let now = now_ms();
        match body {
            social @ (R::SendFriendRequest { .. }
            | R::AcceptFriendRequest { .. }
            | R::DeclineFriendRequest { .. }
            | R::CancelFriendRequest { .. }
            | R::RemoveFriend { .. }
            | R::BlockUser { .. }
            | R::UnblockUser { .. }
            | R::SetMute { .. }
            | R::AckNotifications { .. }
            | R::MarkNotificationsRead { .. }) => self.handle_social(user, social).await,
            R::Ping { .. }
            | R::SetPresence { .. }
            | R::TypingStart { .. }
            | R::TypingStop { .. }
            | R::WatchTyping { .. }
            | R::JoinVoice { .. }
            | R::JoinVoiceWebRtc { .. }
            | R::LeaveVoice
            | R::SetVoiceState { .. }
            | R::ServerMute { .. }
            | R::ServerDeafen { .. }
            | R::MoveMember { .. }
            | R::VoiceStats
            | R::SetVoiceOptions { .. }
            | R::ViewChannels { .. } => {
                Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a request chat handles (the session's own)").into())
            }
            m @ (R::SendMessage { .. }
            | R::EditMessage { .. }
            | R::DeleteMessage { .. }
            | R::AddReaction { .. }
            | R::RemoveReaction { .. }
            | R::MarkRead { .. }) => self.handle_message(user, m, now).await,
            g @ (R::BanMember { .. }
            | R::CreateChannel { .. }
            | R::CreateGroupDm { .. }
            | R::CreateGuild { .. }
            | R::CreateInvite { .. }
            | R::CreateRole { .. }
            | R::DeleteChannel { .. }
            | R::DeleteGuild { .. }
            | R::DeleteOverwrite { .. }
            | R::JoinGuild { .. }
            | R::KickMember { .. }
            | R::LeaveGuild { .. }
            | R::OpenDm { .. }
            | R::RenameGuild { .. }
            | R::SetMemberRole { .. }
            | R::SetOverwrite { .. }
            | R::UpdateRole { .. }
            | R::DeleteRole { .. }
            | R::MoveRole { .. }
            | R::TimeoutMember { .. }) => self.handle_guild(user, g, now).await,
        }
    }

    /// Handles a fetch for `user`.
    pub async fn fetch(&self, user: u64, req: FetchRequest) -> Result<FetchReply, Refusal> {
        self.limit(user, Kind::Fetch)?;
        let resp = match req {
            FetchRequest::ServerInfo => {
                return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "handled by the gateway").into());
            }
            FetchRequest::History {
                channel_id,
                anchor,
                limit,
            } => {
                let access = self.access(user, channel_id).await?;
                if !access.perms().has(Perms::READ_MESSAGE_HISTORY) {
                    return Err(forbidden("read message history").into());
                }
                let (messages, more_before, more_after) = self
                    .store
                    .history(channel_id, anchor, limit.min(100))
                    .await
                    .map_err(store_err)?;
                FetchResponse::History {
                    messages,
                    more_before,
                    more_after,
                }
            }
            FetchRequest::Guilds => FetchResponse::Guilds {
                guilds: self.guild_snapshots(user).await?,
            },
            FetchRequest::Channels { guild_id } => {
                let g = self.guild(guild_id).await?;
                if !g.state.members.contains_key(&user) {
                    return Err(not_found().into());
                }
                FetchResponse::Channels {
                    channels: self.visible_channels(&g, user).await?,
                }
            }
            FetchRequest::Members { guild_id, after, limit } => {
                let g = self.guild(guild_id).await?;
                if !g.state.members.contains_key(&user) {
                    return Err(not_found().into());
                }
                let members = self
                    .store
                    .members(guild_id, after, limit.clamp(1, 1000))
                    .await
                    .map_err(store_err)?;
                FetchResponse::Members { members }
            }
            FetchRequest::Notifications { before, limit } => FetchResponse::Notifications {
                notifications: self
                    .store
                    .notifications(user, before, limit.clamp(1, 100))
                    .await
                    .map_err(store_err)?,
                unread: self.store.unread_notifications(user).await.map_err(store_err)?,
            },
            FetchRequest::Relationships => FetchResponse::Relationships {
                relationships: self.store.relationships(user).await.map_err(store_err)?,
            },
            FetchRequest::Invite { code } => {
                let invalid = || ErrorBody::new(ErrorCode::INVALID_INVITE, "invite unknown, used up or expired");
                if code.is_empty() || code.len() > 64 {
                    return Err(invalid().into());
                }
                let invite = self
                    .store
                    .invite(&code, now_ms())
                    .await
                    .map_err(store_err)?
                    .ok_or_else(invalid)?;
                let g = self.guild(invite.guild_id).await?;
                FetchResponse::Invite {
                    guild: g.state.guild.clone(),
                    member_count: g.state.members.len() as u32,
                    member: g.state.members.contains_key(&user),
                    invite,
                }
            }
        };
        Ok(FetchReply::Ok(resp))
    }

    /// The channels of `g` that `user` can view, with their current seqs (the cached
    /// state's are from when it was loaded).
    async fn visible_channels(&self, g: &GuildView, user: u64) -> Result<Vec<Channel>, ErrorBody> {
        let mut channels = g.visible_channels(user);
        let seqs = self.store.channel_seqs(g.state.guild.id).await.map_err(store_err)?;
        for c in &mut channels {
            if let Some(seq) = seqs.get(&c.id) {
                c.last_seq = *seq;
            }
        }
        Ok(channels)
    }

    /// The guilds of `user` as they see them.
    pub async fn guild_snapshots(&self, user: u64) -> Result<Vec<GuildSnapshot>, ErrorBody> {
        let mut out = Vec::new();
        for gid in self.store.guild_ids_of(user).await.map_err(store_err)? {
            let g = self.guild(gid).await?;
            let count = g.state.members.len() as u32;
            let members = if count <= SMALL_GUILD {
                self.store.members(gid, 0, SMALL_GUILD).await.map_err(store_err)?
            } else {
                Vec::new()
            };
            let channels = self.visible_channels(&g, user).await?;
            out.push(GuildSnapshot {
                guild: g.state.guild.clone(),
                roles: g.state.roles.clone(),
                channels,
                member_count: count,
                members,
            });
        }
        Ok(out)
    }

    /// What `Ready` carries (besides presences). Also records the user from the claims.
    pub async fn ready(&self, user: u64, name: &str) -> Result<ReadyParts, ErrorBody> {
        self.store.upsert_user(user, name, now_ms()).await.map_err(store_err)?;
        Ok(ReadyParts {
            guilds: self.guild_snapshots(user).await?,
            private_channels: self.store.private_channels(user).await.map_err(store_err)?,
            read_states: self.store.read_states(user).await.map_err(store_err)?,
            relationships: self.store.relationships(user).await.map_err(store_err)?,
            mutes: self.store.mutes(user).await.map_err(store_err)?,
            notifications_unread: self.store.unread_notifications(user).await.map_err(store_err)?,
            notifications: self
                .store
                .notifications(user, 0, READY_NOTIFICATIONS)
                .await
                .map_err(store_err)?,
        })
    }

    /// Whose presence `Ready` carries for `user`: the members of the guilds they share that
    /// are not large, friends, DM partners met in a large guild, and the members of the
    /// large guilds in `large` (those the session is kept current on: an exact resume).
    /// Excludes `user`. The other members of large guilds come when the session looks at
    /// them ([`crate::gateway::view`]).
    ///
    /// Taken from the user's `Ready` (`parts`: their guilds, relationships and DMs as just
    /// read), so a connecting session reads none of them twice.
    pub async fn observers(&self, user: u64, large: &[u64], parts: &ReadyParts) -> Result<Vec<u64>, ErrorBody> {
        let mut out = Vec::new();
        let mut large_views = Vec::new();
        for snapshot in &parts.guilds {
            let gid = snapshot.guild.id;
            let g = self.guild(gid).await?;
            if self.large(&g) {
                let kept = large.binary_search(&gid).is_ok();
                large_views.push(g.clone());
                if !kept {
                    continue;
                }
            }
            out.extend(g.state.members.keys().copied().filter(|u| *u != user));
        }
        out.extend(social::friends_among(&parts.relationships));
        out.extend(partners_in(user, &large_views, &parts.private_channels));
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The people `user` has a DM or group DM with who are in one of `user`'s large guilds
    /// (their presence reaches each other on their own topics: through the guild alone, a
    /// partner not looking at it would not be kept current).
    async fn dm_partners_in_large_guilds(&self, user: u64, gids: &[u64]) -> Result<Vec<u64>, ErrorBody> {
        let mut large = Vec::new();
        for gid in gids {
            let g = self.guild(*gid).await?;
            if self.large(&g) {
                large.push(g);
            }
        }
        if large.is_empty() {
            return Ok(Vec::new());
        }
        let channels = self.store.private_channels(user).await.map_err(store_err)?;
        Ok(partners_in(user, &large, &channels))
    }

    /// The topics a presence change of `user` goes to: each guild they are in, each
    /// friend's own topic, and the own topic of each DM partner met in a large guild.
    pub async fn observer_topics(&self, user: u64) -> Result<Vec<crate::cluster::pubsub::Topic>, ErrorBody> {
        use crate::cluster::pubsub::Topic;
        let gids = self.store.guild_ids_of(user).await.map_err(store_err)?;
        let mut out: Vec<Topic> = gids.iter().copied().map(Topic::guild).collect();
        let mut people = self.friends(user).await?;
        people.extend(self.dm_partners_in_large_guilds(user, &gids).await?);
        people.sort_unstable();
        people.dedup();
        out.extend(people.into_iter().map(Topic::user));
        Ok(out)
    }

    /// `user`'s guild-level permissions (`NOT_FOUND` if not a member).
    pub async fn guild_permissions(&self, user: u64, guild: u64) -> Result<Perms, ErrorBody> {
        Ok(self.guild_perms(user, guild).await?.1)
    }

    /// A voice channel as `user` sees it: (guild, user limit, permissions there).
    pub async fn voice_access(&self, user: u64, channel: u64) -> Result<(u64, u32, Perms), ErrorBody> {
        match self.access(user, channel).await? {
            Access::Guild(g, c, p) if c.kind == ChannelKind::Voice => {
                if g.timed_out(user).is_some() {
                    return Err(g.refuse(user, "connect"));
                }
                Ok((g.state.guild.id, c.user_limit, p))
            }
            _ => Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "not a voice channel")),
        }
    }

    /// A guild as the server sees it (every channel, its current seqs), for the server API.
    pub async fn guild_state(&self, guild: u64) -> Result<crate::store::GuildState, ErrorBody> {
        let g = self.guild(guild).await?;
        let mut state = g.state.clone();
        let seqs = self.store.channel_seqs(guild).await.map_err(store_err)?;
        for c in &mut state.channels {
            if let Some(seq) = seqs.get(&c.id) {
                c.last_seq = *seq;
            }
        }
        Ok(state)
    }

    /// The guild of `channel` (`None`: a DM; `NOT_FOUND`: no such channel).
    pub async fn channel_guild_of(&self, channel: u64) -> Result<Option<u64>, ErrorBody> {
        self.channel_guild(channel).await
    }

    /// Who acts with every permission in `channel` (the server API's authority): its
    /// guild's owner; `None` for a DM. `NOT_FOUND` for a channel that does not exist.
    pub async fn authority(&self, channel: u64) -> Result<Option<u64>, ErrorBody> {
        match self.channel_guild(channel).await? {
            Some(g) => Ok(Some(self.guild(g).await?.state.guild.owner_id)),
            None => Ok(None),
        }
    }

    /// `user`'s permissions in `channel` (`NOT_FOUND` if they cannot view it).
    pub async fn channel_permissions(&self, user: u64, channel: u64) -> Result<Perms, ErrorBody> {
        Ok(self.access(user, channel).await?.perms())
    }

    /// Whether `user` can view `channel`.
    pub async fn can_view(&self, user: u64, channel: u64) -> bool {
        self.access(user, channel).await.is_ok()
    }

    /// Checks that `user` has `need` in `channel`; returns the channel's guild.
    pub async fn check(&self, user: u64, channel: u64, need: Perms) -> Result<Option<u64>, ErrorBody> {
        let access = self.access(user, channel).await?;
        if !access.perms().has(need) {
            return Err(access.refuse(user, &format!("{need:?}")));
        }
        Ok(access.guild_id())
    }
}

/// The reply to a sequenced change: its seq, or `Done` when nothing changed.
fn sequenced_reply(seq: Option<u64>) -> ResponseBody {
    match seq {
        Some(seq) => ResponseBody::Sequenced { seq },
        None => ResponseBody::Done,
    }
}

/// A random 10-character invite code (base 62, ~59 bits).
fn invite_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = [0u8; 10];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter()
        .map(|x| ALPHABET[(*x as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Of the recipients of `user`'s DMs `channels`, those in one of the guilds `large`
/// (sorted, once each).
fn partners_in(user: u64, large: &[Arc<GuildView>], channels: &[Channel]) -> Vec<u64> {
    if large.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<u64> = channels
        .iter()
        .flat_map(|c| c.recipients.iter().copied())
        .filter(|u| *u != user && large.iter().any(|g| g.state.members.contains_key(u)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Chat answers the fan-out's questions about audiences and the event log.
impl crate::fanout::Audience for Chat {
    async fn is_large(&self, guild: u64) -> bool {
        Chat::is_large(self, guild).await
    }

    async fn channel_viewers(&self, guild: Option<u64>, channel: u64) -> Option<Arc<Vec<u64>>> {
        Chat::channel_viewers(self, guild, channel).await
    }

    async fn observer_topics(&self, user: u64) -> anyhow::Result<Vec<crate::cluster::pubsub::Topic>> {
        Chat::observer_topics(self, user)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    async fn member_ids(&self, guild: u64, except: u64) -> anyhow::Result<Vec<u64>> {
        Chat::member_ids(self, guild, except)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))
    }

    async fn channel_log(&self, channel: u64, after: u64, limit: u32) -> anyhow::Result<Vec<(u64, Bytes)>> {
        Ok(Chat::channel_log(self, channel, after, limit).await?)
    }

    async fn log_since(
        &self,
        channel: u64,
        from: u64,
        until: Option<u64>,
        since_ms: u64,
    ) -> anyhow::Result<(Vec<(u64, Bytes)>, u64)> {
        Ok(Chat::log_since(self, channel, from, until, since_ms).await?)
    }

    async fn current_seqs(&self, guild: Option<u64>, channel: u64) -> anyhow::Result<Vec<(u64, u64)>> {
        Ok(Chat::current_seqs(self, guild, channel).await?)
    }

    fn guild_changed(&self, guild: u64) {
        self.invalidate(guild);
    }

    fn member_added(&self, guild: u64, user: u64) {
        Chat::member_added(self, guild, user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_channel_locks_are_forgotten_and_held_ones_kept() {
        let dir = std::env::temp_dir().join(format!("quaver-chat-sweep-{}", std::process::id()));
        let store = Store::open(&format!("sqlite://{}/q.db?mode=rwc", dir.display()))
            .await
            .unwrap();
        let (pubsub, _rx) = crate::cluster::pubsub::MemoryHub::new().node();
        let limiter = Arc::new(Limiter::new(Default::default()));
        let chat = Chat::new(
            store,
            crate::fanout::Fanout::new(Arc::new(pubsub), Arc::default(), "test"),
            1,
            limiter,
        );
        let held = chat.lock(1);
        let _guard = held.lock().await;
        for channel in 2..=100 {
            drop(chat.lock(channel).lock().await);
        }
        assert_eq!(chat.sweep(), 99, "idle locks go");
        assert_eq!(chat.sweep(), 0);
        // The held one stayed: taking it again is the same lock (still held).
        assert!(chat.lock(1).try_lock().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
