//! Guilds, channels, permissions and messages: request handling on the chat lane, fetches,
//! the `Ready` snapshot and fan-out.
//!
//! Guarantees: a message is acknowledged only after the store committed it; every channel
//! event has the channel's next seq; a per-channel lock held from the store transaction to
//! the bus publish makes this node publish each channel's events in seq order, and the one
//! fan-out task delivers them in that order; a retried nonce returns the original message.
//! Permission state per guild is cached and dropped on any change (`GuildChanged`).

pub mod social;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{
    Channel, ChannelKind, ErrorBody, ErrorCode, EventBody, FetchReply, FetchRequest, FetchResponse, GuildSnapshot,
    Lane, Member, OverwriteTarget, ReadState, RequestBody, ResponseBody,
};

use crate::cluster::{Bus, BusEvent};
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

/// The `Gap` event: events of `channel` after `after_seq` and before `resumes_at` are gone.
pub(crate) fn gap(channel: u64, after_seq: u64, resumes_at: u64) -> Bytes {
    ev(&EventBody::Gap {
        channel_id: channel,
        after_seq,
        resumes_at,
    })
}

/// A resuming session's catch-up for one channel ([`Chat::catch_up`]).
#[derive(Debug)]
pub struct Caught {
    /// The channel.
    pub channel: u64,
    /// Its guild (`None` for DMs).
    pub guild: Option<u64>,
    /// The client's position.
    pub from: u64,
    /// The seq the items reach.
    pub reached: u64,
    /// The retention cut-off the items were read with.
    pub since_ms: u64,
    /// (ordering key, event) in order; a `Gap` where the log does not reach.
    pub items: Vec<(u64, Bytes)>,
}

/// Permissions a DM participant has.
const DM_PERMS: Perms =
    Perms(Perms::VIEW_CHANNEL.0 | Perms::SEND_MESSAGES.0 | Perms::READ_MESSAGE_HISTORY.0 | Perms::ADD_REACTIONS.0);

/// A cached guild with memoized viewer lists.
#[derive(Debug)]
struct GuildView {
    state: GuildState,
    viewers: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl GuildView {
    fn perms(&self, user: u64, channel: Option<&Channel>) -> Option<Perms> {
        let role_ids = self.state.members.get(&user)?;
        let roles: Vec<(u64, u64)> = role_ids
            .iter()
            .filter_map(|id| {
                self.state
                    .roles
                    .iter()
                    .find(|r| r.id == *id)
                    .map(|r| (r.id, r.permissions))
            })
            .collect();
        let everyone = self
            .state
            .roles
            .iter()
            .find(|r| r.id == self.state.guild.id)
            .map_or(0, |r| r.permissions);
        let s = Subject {
            user_id: user,
            is_owner: self.state.guild.owner_id == user,
            everyone,
            roles: &roles,
        };
        Some(match channel {
            Some(c) => perms::in_channel(&s, self.state.guild.id, &c.overwrites),
            None => perms::base(&s),
        })
    }

    fn channel(&self, id: u64) -> Option<&Channel> {
        self.state.channels.iter().find(|c| c.id == id)
    }

    /// The position of `user`'s highest role (`@everyone`, position 0, if none).
    fn top_position(&self, user: u64) -> u32 {
        self.state
            .members
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.state.roles.iter().find(|r| r.id == *id))
            .map(|r| r.position)
            .max()
            .unwrap_or(0)
    }

    /// Discord's hierarchy: the owner outranks everything; anyone else only what sits
    /// strictly below their highest role. `position` is a role's, or a member's top one.
    fn outranks(&self, actor: u64, position: u32) -> bool {
        self.state.guild.owner_id == actor || self.top_position(actor) > position
    }

    /// Checks that `actor` (holding `actor_perms`) may act on member `target` with a
    /// hierarchy-bound permission (kick, ban, change their roles).
    fn check_outranks_member(&self, actor: u64, target: u64) -> Result<(), ErrorBody> {
        if actor != target && !self.outranks(actor, self.top_position(target)) {
            return Err(forbidden("a member whose highest role is not below yours"));
        }
        Ok(())
    }

    fn viewers(&self, channel: u64) -> Arc<Vec<u64>> {
        let mut memo = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = memo.get(&channel) {
            return v.clone();
        }
        let v: Vec<u64> = match self.channel(channel) {
            Some(c) => self
                .state
                .members
                .keys()
                .copied()
                .filter(|u| self.perms(*u, Some(c)).is_some_and(|p| p.has(Perms::VIEW_CHANNEL)))
                .collect(),
            None => Vec::new(),
        };
        let v = Arc::new(v);
        memo.insert(channel, v.clone());
        v
    }

    fn visible_channels(&self, user: u64) -> Vec<Channel> {
        self.state
            .channels
            .iter()
            .filter(|c| self.perms(user, Some(c)).is_some_and(|p| p.has(Perms::VIEW_CHANNEL)))
            .cloned()
            .collect()
    }
}

/// A DM or group DM: its kind and its members, which never change once created (so
/// they are cached for good).
#[derive(Debug)]
struct Private {
    kind: ChannelKind,
    recipients: Arc<Vec<u64>>,
}

/// Where a channel lives, for access checks.
enum Access {
    Guild(Arc<GuildView>, Channel, Perms),
    Private(Arc<Private>),
}

impl Access {
    fn perms(&self) -> Perms {
        match self {
            Access::Guild(_, _, p) => *p,
            Access::Private(_) => DM_PERMS,
        }
    }
    fn guild_id(&self) -> Option<u64> {
        match self {
            Access::Guild(g, _, _) => Some(g.state.guild.id),
            Access::Private(_) => None,
        }
    }
}

/// The chat service of one node.
#[derive(Debug)]
pub struct Chat {
    store: Store,
    bus: Arc<dyn Bus>,
    ids: Mutex<Snowflakes>,
    guilds: RwLock<HashMap<u64, Arc<GuildView>>>,
    /// Which guild a channel belongs to (`None`: DM), learned on first use.
    channel_guild: RwLock<HashMap<u64, Option<u64>>>,
    /// DMs and group DMs seen so far.
    private: RwLock<HashMap<u64, Arc<Private>>>,
    /// Serializes store-commit → publish per channel, so publish order is seq order.
    channel_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    limiter: Arc<Limiter>,
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
            channel_guild: RwLock::new(HashMap::new()),
            private: RwLock::new(HashMap::new()),
            channel_locks: Mutex::new(HashMap::new()),
            limiter,
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

    fn id(&self) -> u64 {
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
        if let Some(g) = self.guilds.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(g.clone());
        }
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
        self.guilds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, view.clone());
        Ok(view)
    }

    /// Adds a role-less member to the cached state of `guild`, if cached; returns the new
    /// member count (`None` when not cached).
    pub(crate) fn member_added(&self, guild: u64, user: u64) -> Option<usize> {
        let mut guilds = self.guilds.write().unwrap_or_else(|p| p.into_inner());
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
        self.guilds.write().unwrap_or_else(|p| p.into_inner()).remove(&guild);
    }

    /// Publishes that a guild changed (every node drops its cache) and drops ours now, so
    /// this node's next request sees the change at once.
    fn changed(&self, guild: u64) {
        self.invalidate(guild);
        self.bus.publish(BusEvent::GuildChanged { guild_id: guild });
    }

    async fn access(&self, user: u64, channel: u64) -> Result<Access, ErrorBody> {
        let known = self
            .channel_guild
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel)
            .copied();
        let guild = match known {
            Some(g) => g,
            None => {
                let c = self.store.channel(channel).await.map_err(store_err)?;
                self.remember(&c);
                c.guild_id
            }
        };
        match guild {
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
            | R::LeaveVoice
            | R::SetVoiceState { .. }
            | R::ServerMute { .. }
            | R::ServerDeafen { .. }
            | R::MoveMember { .. }
            | R::VoiceStats => Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a chat request").into()),
            R::SendMessage {
                channel_id,
                nonce,
                content,
                reply_to,
            } => {
                self.limit(user, Kind::Send)?;
                validate::content(&content)?;
                let access = self.access(user, channel_id).await?;
                if !access.perms().has(Perms::SEND_MESSAGES) {
                    return Err(forbidden("send messages").into());
                }
                if let Access::Private(p) = &access {
                    self.check_dm_block(user, p.kind, &p.recipients).await?;
                }
                let mut mentions = validate::mentions(&content);
                if mentions.everyone && !access.perms().has(Perms::MENTION_EVERYONE) {
                    mentions.everyone = false;
                }
                let lock = self.lock(channel_id);
                let _guard = lock.lock().await;
                let (m, stored) = self
                    .store
                    .send_message(NewMessage {
                        id: self.id(),
                        channel_id,
                        author_id: user,
                        nonce,
                        content,
                        reply_to,
                        mentions,
                        now_ms: now,
                    })
                    .await
                    .map_err(store_err)?;
                let duplicate = stored.is_none();
                if let Some(s) = stored {
                    self.publish_channel(access.guild_id(), channel_id, s.seq, s.event);
                    drop(_guard);
                    // The message is stored and acknowledged regardless: a failure to notify
                    // is logged, never turned into a failed send (the client would resend).
                    if let Err(e) = self.notify_message(&access, &m).await {
                        tracing::warn!(error = %e.message, "notifications for a message failed");
                    }
                }
                Ok(ResponseBody::MessageSent {
                    message_id: m.id,
                    seq: m.seq,
                    created_at_ms: m.created_at_ms,
                    duplicate,
                })
            }
            R::EditMessage {
                channel_id,
                message_id,
                content,
            } => {
                self.limit(user, Kind::Edit)?;
                validate::content(&content)?;
                let access = self.access(user, channel_id).await?;
                let m = self.store.message(channel_id, message_id).await.map_err(store_err)?;
                if m.author_id != user || m.deleted {
                    return Err(forbidden("edit others' messages").into());
                }
                let mut mentions = validate::mentions(&content);
                mentions.everyone &= access.perms().has(Perms::MENTION_EVERYONE);
                let edit = self
                    .store
                    .edit_message(channel_id, message_id, &content, &mentions, now);
                let seq = self
                    .sequenced(access.guild_id(), channel_id, async { edit.await.map(Some) })
                    .await?;
                Ok(sequenced_reply(seq))
            }
            R::DeleteMessage { channel_id, message_id } => {
                self.limit(user, Kind::Edit)?;
                let access = self.access(user, channel_id).await?;
                let m = self.store.message(channel_id, message_id).await.map_err(store_err)?;
                if m.author_id != user && !access.perms().has(Perms::MANAGE_MESSAGES) {
                    return Err(forbidden("manage messages").into());
                }
                let delete = self.store.delete_message(channel_id, message_id, now);
                let seq = self
                    .sequenced(access.guild_id(), channel_id, async { delete.await.map(Some) })
                    .await?;
                Ok(sequenced_reply(seq))
            }
            R::AddReaction {
                channel_id,
                message_id,
                emoji,
            }
            | R::RemoveReaction {
                channel_id,
                message_id,
                emoji,
            } if validate::emoji(&emoji).is_err() => {
                let _ = (channel_id, message_id);
                Err(validate::emoji(&emoji).unwrap_err().into())
            }
            R::AddReaction {
                channel_id,
                message_id,
                emoji,
            } => {
                self.limit(user, Kind::React)?;
                let access = self.access(user, channel_id).await?;
                if !access.perms().has(Perms::ADD_REACTIONS) {
                    return Err(forbidden("add reactions").into());
                }
                let add = self.store.add_reaction(channel_id, message_id, user, &emoji, now);
                let seq = self.sequenced(access.guild_id(), channel_id, add).await?;
                if seq.is_some()
                    && let Err(e) = self
                        .notify_reaction(&access, user, channel_id, message_id, &emoji)
                        .await
                {
                    tracing::warn!(error = %e.message, "notification for a reaction failed");
                }
                Ok(sequenced_reply(seq))
            }
            R::RemoveReaction {
                channel_id,
                message_id,
                emoji,
            } => {
                self.limit(user, Kind::React)?;
                let access = self.access(user, channel_id).await?;
                let remove = self.store.remove_reaction(channel_id, message_id, user, &emoji, now);
                let seq = self.sequenced(access.guild_id(), channel_id, remove).await?;
                Ok(sequenced_reply(seq))
            }
            R::MarkRead { channel_id, seq } => {
                self.limit(user, Kind::Read)?;
                self.access(user, channel_id).await?;
                let state = self.store.mark_read(user, channel_id, seq).await.map_err(store_err)?;
                self.publish_user(user, &EventBody::ReadStateUpdated { state });
                Ok(ResponseBody::Done)
            }
            R::CreateGuild { name } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                let (gid, cid) = (self.id(), self.id());
                let g = self
                    .store
                    .create_guild(gid, cid, &name, user, Perms::DEFAULT_EVERYONE.0, now)
                    .await
                    .map_err(store_err)?;
                self.bus.publish(BusEvent::MemberAdded {
                    guild_id: g.id,
                    user_id: user,
                    channels: vec![(cid, 0)],
                });
                self.publish_user(user, &EventBody::GuildUpdated { guild: g.clone() });
                Ok(ResponseBody::Guild(g))
            }
            R::RenameGuild { guild_id, name } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_GUILD) {
                    return Err(forbidden("manage guild").into());
                }
                let g = self.store.rename_guild(guild_id, &name).await.map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::GuildUpdated { guild: g.clone() });
                Ok(ResponseBody::Guild(g))
            }
            R::DeleteGuild { guild_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, _) = self.guild_perms(user, guild_id).await?;
                if g.state.guild.owner_id != user {
                    return Err(forbidden("guild owner").into());
                }
                // Tell members before the membership disappears.
                for m in g.state.members.keys() {
                    self.publish_user(*m, &EventBody::GuildRemoved { guild_id });
                }
                self.store.delete_guild(guild_id).await.map_err(store_err)?;
                for m in g.state.members.keys() {
                    self.bus.publish(BusEvent::MemberLeft { guild_id, user_id: *m });
                }
                self.changed(guild_id);
                Ok(ResponseBody::Done)
            }
            R::CreateInvite {
                guild_id,
                max_uses,
                max_age_secs,
            } => {
                self.limit(user, Kind::Manage)?;
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::CREATE_INVITE) {
                    return Err(forbidden("create invite").into());
                }
                let code = invite_code();
                let expires = (max_age_secs > 0).then(|| now + u64::from(max_age_secs) * 1000);
                let inv = self
                    .store
                    .create_invite(&code, guild_id, user, max_uses, expires, now)
                    .await
                    .map_err(store_err)?;
                Ok(ResponseBody::Invite(inv))
            }
            R::JoinGuild { code } => {
                self.limit(user, Kind::Manage)?;
                if code.is_empty() || code.len() > 64 {
                    return Err(ErrorBody::new(ErrorCode::INVALID_INVITE, "invite unknown, used up or expired").into());
                }
                let (gid, already) = self.store.use_invite(&code, user, now).await.map_err(store_err)?;
                let guild = self.store.guild(gid).await.map_err(store_err)?;
                if !already {
                    // A join only adds a member with no roles: update cached permission
                    // state in place (every node, through the bus) instead of reloading it.
                    let count = self.member_added(gid, user);
                    let channels = self.store.channel_seqs(gid).await.map_err(store_err)?;
                    self.bus.publish(BusEvent::MemberAdded {
                        guild_id: gid,
                        user_id: user,
                        channels: channels.into_iter().collect(),
                    });
                    // Like the member lists in `Ready`, join announcements are for small
                    // guilds; in large ones clients page the list (`Members` fetch).
                    if count.is_none_or(|n| n <= SMALL_GUILD as usize) {
                        let name = self.store.user_name(user).await.map_err(store_err)?.unwrap_or_default();
                        let member = Member {
                            user_id: user,
                            name,
                            roles: vec![],
                        };
                        self.publish_guild(gid, &EventBody::MemberUpdated { guild_id: gid, member });
                    }
                    self.publish_user(user, &EventBody::GuildUpdated { guild: guild.clone() });
                }
                Ok(ResponseBody::Guild(guild))
            }
            R::LeaveGuild { guild_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, _) = self.guild_perms(user, guild_id).await?;
                if g.state.guild.owner_id == user {
                    return Err(
                        ErrorBody::new(ErrorCode::OWNER, "the owner cannot leave; delete the guild instead").into(),
                    );
                }
                self.remove_member(guild_id, user, None, now).await?;
                Ok(ResponseBody::Done)
            }
            R::KickMember { guild_id, user_id } | R::BanMember { guild_id, user_id, .. } if user_id == user => {
                let _ = guild_id;
                Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "use LeaveGuild to leave").into())
            }
            R::KickMember { guild_id, user_id } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::KICK_MEMBERS) {
                    return Err(forbidden("kick members").into());
                }
                if g.state.guild.owner_id == user_id {
                    return Err(ErrorBody::new(ErrorCode::OWNER, "the owner cannot be removed").into());
                }
                if !g.state.members.contains_key(&user_id) {
                    return Err(not_found().into());
                }
                g.check_outranks_member(user, user_id)?;
                self.remove_member(guild_id, user_id, None, now).await?;
                Ok(ResponseBody::Done)
            }
            R::BanMember {
                guild_id,
                user_id,
                reason,
            } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::BAN_MEMBERS) {
                    return Err(forbidden("ban members").into());
                }
                if g.state.guild.owner_id == user_id {
                    return Err(ErrorBody::new(ErrorCode::OWNER, "the owner cannot be removed").into());
                }
                g.check_outranks_member(user, user_id)?;
                if reason.chars().count() > 512 {
                    return Err(ErrorBody::new(ErrorCode::TOO_LARGE, "reason over 512 characters").into());
                }
                self.remove_member(guild_id, user_id, Some(&reason), now).await?;
                Ok(ResponseBody::Done)
            }
            R::CreateRole {
                guild_id,
                name,
                permissions,
            } => {
                let old = self.check_role_change(user, guild_id, &name, permissions).await?;
                let role = self
                    .store
                    .create_role(self.id(), guild_id, &name, permissions & Perms::ALL.0)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::RoleUpdated { role: role.clone() });
                // Every other role moved up one: members see the new positions.
                for moved in self.guild(guild_id).await?.state.roles.iter() {
                    if old
                        .state
                        .roles
                        .iter()
                        .any(|r| r.id == moved.id && r.position != moved.position)
                    {
                        self.publish_guild(guild_id, &EventBody::RoleUpdated { role: moved.clone() });
                    }
                }
                Ok(ResponseBody::Role(role))
            }
            R::UpdateRole {
                guild_id,
                role_id,
                name,
                permissions,
            } => {
                let g = self.check_role_change(user, guild_id, &name, permissions).await?;
                let Some(old) = g.state.roles.iter().find(|r| r.id == role_id) else {
                    return Err(not_found().into());
                };
                // `@everyone` (position 0) is below everyone with a role; any other role
                // must be below the editor's highest.
                if !g.outranks(user, old.position) && role_id != guild_id {
                    return Err(forbidden("a role that is not below your highest role").into());
                }
                let role = self
                    .store
                    .update_role(guild_id, role_id, &name, permissions & Perms::ALL.0)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                self.publish_guild(guild_id, &EventBody::RoleUpdated { role: role.clone() });
                self.announce_visibility(&g, guild_id).await?;
                Ok(ResponseBody::Role(role))
            }
            R::SetMemberRole {
                guild_id,
                user_id,
                role_id,
                add,
            } => {
                self.limit(user, Kind::Manage)?;
                let (g, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_ROLES) {
                    return Err(forbidden("manage roles").into());
                }
                // Nobody hands out (or takes away) a role at or above their own highest
                // one, nor one carrying a permission they lack — themselves included.
                let role = g.state.roles.iter().find(|r| r.id == role_id && r.id != guild_id);
                let Some(role) = role else {
                    return Err(not_found().into());
                };
                if !g.outranks(user, role.position) {
                    return Err(forbidden("a role that is not below your highest role").into());
                }
                if add && role.permissions & !p.0 != 0 && g.state.guild.owner_id != user {
                    return Err(forbidden("a role with a permission you do not have").into());
                }
                g.check_outranks_member(user, user_id)?;
                self.store
                    .set_member_role(guild_id, user_id, role_id, add)
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                let member = self
                    .store
                    .members(guild_id, user_id.saturating_sub(1), 1)
                    .await
                    .map_err(store_err)?;
                if let Some(member) = member.into_iter().next() {
                    self.publish_guild(guild_id, &EventBody::MemberUpdated { guild_id, member });
                }
                self.announce_visibility(&g, guild_id).await?;
                Ok(ResponseBody::Done)
            }
            R::CreateChannel {
                guild_id,
                kind,
                name,
                topic,
                user_limit,
            } => {
                self.limit(user, Kind::Manage)?;
                validate::name(&name)?;
                validate::topic(&topic)?;
                if !matches!(kind, ChannelKind::Text | ChannelKind::Voice) {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "guild channels are Text or Voice").into());
                }
                let (_, p) = self.guild_perms(user, guild_id).await?;
                if !p.has(Perms::MANAGE_CHANNELS) {
                    return Err(forbidden("manage channels").into());
                }
                let c = self
                    .store
                    .create_channel(
                        crate::store::NewChannel {
                            id: self.id(),
                            guild: guild_id,
                            kind,
                            name: &name,
                            topic: &topic,
                            user_limit: user_limit.min(99),
                        },
                        now,
                    )
                    .await
                    .map_err(store_err)?;
                self.changed(guild_id);
                let g = self.guild(guild_id).await?;
                for u in g.viewers(c.id).iter() {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
            R::DeleteChannel { channel_id } => {
                self.limit(user, Kind::Manage)?;
                let Access::Guild(g, c, p) = self.access(user, channel_id).await? else {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "DMs cannot be deleted").into());
                };
                if !p.has(Perms::MANAGE_CHANNELS) {
                    return Err(forbidden("manage channels").into());
                }
                let viewers = g.viewers(c.id);
                self.store.delete_channel(channel_id).await.map_err(store_err)?;
                self.channel_guild
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&channel_id);
                self.changed(g.state.guild.id);
                for u in viewers.iter() {
                    self.publish_user(*u, &EventBody::ChannelRemoved { channel_id });
                }
                Ok(ResponseBody::Done)
            }
            R::SetOverwrite {
                channel_id,
                target,
                allow,
                deny,
            } => {
                self.limit(user, Kind::Manage)?;
                self.set_overwrite(
                    user,
                    channel_id,
                    target,
                    Some((allow & Perms::ALL.0, deny & Perms::ALL.0)),
                )
                .await
            }
            R::DeleteOverwrite { channel_id, target } => {
                self.limit(user, Kind::Manage)?;
                self.set_overwrite(user, channel_id, target, None).await
            }
            R::OpenDm { user_id } => {
                self.limit(user, Kind::Manage)?;
                if user_id == user || user_id == 0 {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "a DM needs another user").into());
                }
                if self.blocked_between(user, user_id).await? {
                    return Err(ErrorBody::new(ErrorCode::BLOCKED, "blocked").into());
                }
                let c = self
                    .store
                    .open_dm(self.id(), user, user_id, now)
                    .await
                    .map_err(store_err)?;
                self.remember(&c);
                self.bus.publish(BusEvent::DmOpened {
                    channel_id: c.id,
                    recipients: c.recipients.clone(),
                    last_seq: c.last_seq,
                });
                for u in &c.recipients {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
            R::CreateGroupDm { user_ids, name } => {
                self.limit(user, Kind::Manage)?;
                let mut others: Vec<u64> = user_ids.into_iter().filter(|u| *u != user && *u != 0).collect();
                others.sort_unstable();
                others.dedup();
                if others.is_empty() {
                    return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "a group DM needs other users").into());
                }
                if others.len() + 1 > MAX_GROUP_DM {
                    return Err(ErrorBody::new(ErrorCode::GROUP_FULL, "at most 10 people in a group DM").into());
                }
                if !name.is_empty() {
                    validate::name(&name)?;
                }
                let c = self
                    .store
                    .create_group_dm(self.id(), user, &others, &name, now)
                    .await
                    .map_err(store_err)?;
                self.remember(&c);
                self.bus.publish(BusEvent::DmOpened {
                    channel_id: c.id,
                    recipients: c.recipients.clone(),
                    last_seq: c.last_seq,
                });
                for u in &c.recipients {
                    self.publish_user(*u, &EventBody::ChannelUpdated { channel: c.clone() });
                }
                Ok(ResponseBody::Channel(c))
            }
        }
    }

    /// Checks a role creation or change: rate, name, manage-roles, and that nobody grants
    /// a permission they lack (the owner has everything).
    async fn check_role_change(
        &self,
        user: u64,
        guild_id: u64,
        name: &str,
        permissions: u64,
    ) -> Result<Arc<GuildView>, Refusal> {
        self.limit(user, Kind::Manage)?;
        validate::name(name)?;
        let (g, p) = self.guild_perms(user, guild_id).await?;
        if !p.has(Perms::MANAGE_ROLES) {
            return Err(forbidden("manage roles").into());
        }
        if permissions & !p.0 != 0 && g.state.guild.owner_id != user {
            return Err(forbidden("a permission you do not have").into());
        }
        Ok(g)
    }

    async fn remove_member(&self, guild_id: u64, user_id: u64, ban: Option<&str>, now: u64) -> Result<(), ErrorBody> {
        self.store
            .remove_member(guild_id, user_id, ban, now)
            .await
            .map_err(store_err)?;
        self.changed(guild_id);
        self.publish_user(user_id, &EventBody::GuildRemoved { guild_id });
        self.publish_guild(guild_id, &EventBody::MemberRemoved { guild_id, user_id });
        self.bus.publish(BusEvent::MemberLeft { guild_id, user_id });
        Ok(())
    }

    async fn set_overwrite(
        &self,
        user: u64,
        channel_id: u64,
        target: OverwriteTarget,
        bits: Option<(u64, u64)>,
    ) -> Result<ResponseBody, Refusal> {
        let Access::Guild(g, _, p) = self.access(user, channel_id).await? else {
            return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "DMs have no overwrites").into());
        };
        if !p.has(Perms::MANAGE_ROLES) {
            return Err(forbidden("manage roles").into());
        }
        if let Some((allow, deny)) = bits
            && (allow | deny) & !p.0 != 0
            && g.state.guild.owner_id != user
        {
            return Err(forbidden("a permission you do not have").into());
        }
        self.store
            .set_overwrite(channel_id, target, bits)
            .await
            .map_err(store_err)?;
        let gid = g.state.guild.id;
        self.changed(gid);
        self.announce_visibility(&g, gid).await?;
        Ok(ResponseBody::Done)
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

    /// What a client resuming with channel positions missed: per channel it can still
    /// read, the logged events after its position, read now (the fan-out hands them to the
    /// session in order with live traffic, [`crate::fanout::Fanout::open`]).
    pub async fn catch_up(
        &self,
        user: u64,
        channels: &[quaver_proto::ChannelSeq],
        retention: std::time::Duration,
    ) -> Vec<Caught> {
        let since = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut out = Vec::new();
        for cs in channels.iter().take(500) {
            let Ok(access) = self.access(user, cs.channel_id).await else {
                continue;
            };
            if !access.perms().has(Perms::READ_MESSAGE_HISTORY) {
                continue;
            }
            let Ok((items, reached)) = self.log_since(cs.channel_id, cs.seq, None, since).await else {
                continue;
            };
            out.push(Caught {
                channel: cs.channel_id,
                guild: access.guild_id(),
                from: cs.seq,
                reached,
                since_ms: since,
                items,
            });
        }
        out
    }

    /// A channel's logged events after `from` (up to `until`, else up to where the channel
    /// stands now), as the session must see them: in order, with an explicit `Gap` where
    /// the log no longer reaches (pruned, older than `since_ms`, or more than 1,000 behind).
    /// Each item has its ordering key (a Gap's is the first seq it covers). Also returns
    /// the seq the items reach.
    pub(crate) async fn log_since(
        &self,
        channel: u64,
        from: u64,
        until: Option<u64>,
        since_ms: u64,
    ) -> Result<(Vec<(u64, Bytes)>, u64), StoreError> {
        const MAX_PER_CHANNEL: u32 = 1000;
        let last = match until {
            Some(u) => u,
            None => self.store.channel(channel).await?.last_seq,
        };
        let mut items = Vec::new();
        if last <= from {
            return Ok((items, from.max(last)));
        }
        let events = self
            .store
            .events_after(channel, from, MAX_PER_CHANNEL, since_ms)
            .await?;
        let mut at = from;
        for (seq, body) in events {
            if seq > last {
                break;
            }
            if seq != at + 1 {
                // Pruned (or too old): say so instead of leaving a silent hole.
                items.push((at + 1, gap(channel, at, seq)));
            }
            items.push((seq, Bytes::from(body)));
            at = seq;
        }
        if at < last {
            items.push((at + 1, gap(channel, at, last + 1)));
        }
        Ok((items, last))
    }

    /// A channel's logged events after `after`, at most `limit` (the fan-out's catch-up).
    pub(crate) async fn channel_log(
        &self,
        channel: u64,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let events = self.store.events_after(channel, after, limit, 0).await?;
        Ok(events.into_iter().map(|(s, b)| (s, Bytes::from(b))).collect())
    }

    /// Where a guild's channels (or one DM channel) stand now.
    pub(crate) async fn current_seqs(&self, guild: Option<u64>, channel: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        match guild {
            Some(g) => Ok(self.store.channel_seqs(g).await?.into_iter().collect()),
            None => Ok(vec![(channel, self.store.channel(channel).await?.last_seq)]),
        }
    }

    /// Everyone who can see `user`'s presence (and whom `user` can see): members of the
    /// guilds they share. Excludes `user`.
    pub async fn observers(&self, user: u64) -> Result<Vec<u64>, ErrorBody> {
        let mut out = Vec::new();
        for gid in self.store.guild_ids_of(user).await.map_err(store_err)? {
            let g = self.guild(gid).await?;
            out.extend(g.state.members.keys().copied().filter(|u| *u != user));
        }
        out.extend(self.friends(user).await?);
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The topics a presence change of `user` goes to: each guild they are in, and each
    /// friend's own topic.
    pub async fn observer_topics(&self, user: u64) -> Result<Vec<crate::cluster::pubsub::Topic>, ErrorBody> {
        use crate::cluster::pubsub::Topic;
        let mut out: Vec<Topic> = self
            .store
            .guild_ids_of(user)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(Topic::guild)
            .collect();
        out.extend(self.friends(user).await?.into_iter().map(Topic::user));
        Ok(out)
    }

    /// `user`'s guild-level permissions (`NOT_FOUND` if not a member).
    pub async fn guild_permissions(&self, user: u64, guild: u64) -> Result<Perms, ErrorBody> {
        Ok(self.guild_perms(user, guild).await?.1)
    }

    /// A voice channel as `user` sees it: (guild, user limit, permissions there).
    pub async fn voice_access(&self, user: u64, channel: u64) -> Result<(u64, u32, Perms), ErrorBody> {
        match self.access(user, channel).await? {
            Access::Guild(g, c, p) if c.kind == ChannelKind::Voice => Ok((g.state.guild.id, c.user_limit, p)),
            _ => Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "not a voice channel")),
        }
    }

    /// Whether `user` can view `channel`.
    pub async fn can_view(&self, user: u64, channel: u64) -> bool {
        self.access(user, channel).await.is_ok()
    }

    /// Checks that `user` has `need` in `channel`; returns the channel's guild.
    pub async fn check(&self, user: u64, channel: u64, need: Perms) -> Result<Option<u64>, ErrorBody> {
        let access = self.access(user, channel).await?;
        if !access.perms().has(need) {
            return Err(forbidden(&format!("{need:?}")));
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
        let chat = Chat::new(store, crate::fanout::Fanout::new(Arc::new(pubsub)), 1, limiter);
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
