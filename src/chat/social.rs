//! Relationships, mutes and notifications: the requests, and the notifications chat events
//! cause (decided by [`crate::notify`]).

use std::collections::HashSet;

use quaver_proto::{
    ChannelKind, ErrorBody, ErrorCode, EventBody, Lane, Message, MuteTarget, Notification, NotificationKind,
    Relationship, RelationshipKind, RequestBody, ResponseBody,
};

use super::{Access, Chat, Refusal, ev, store_err};
use crate::cluster::{BusEvent, Viewers};
use crate::ids::now_ms;
use crate::limits::Kind;
use crate::notify::{self, Facts};
use crate::perms::Perms;

use RelationshipKind::*;

fn no_relationship() -> ErrorBody {
    ErrorBody::new(ErrorCode::NO_RELATIONSHIP, "no such friend request or friendship")
}

fn blocked() -> ErrorBody {
    ErrorBody::new(ErrorCode::BLOCKED, "blocked")
}

impl Chat {
    pub(super) fn publish_user_lane(&self, user_id: u64, lane: Lane, body: &EventBody) {
        self.bus.publish(BusEvent::User {
            user_id,
            lane,
            event: ev(body),
        });
    }

    fn tell(&self, user: u64, other: u64, kind: Option<RelationshipKind>) {
        let body = match kind {
            Some(kind) => EventBody::RelationshipUpdated {
                relationship: Relationship { user_id: other, kind },
            },
            None => EventBody::RelationshipRemoved { user_id: other },
        };
        self.publish_user_lane(user, Lane::Chat, &body);
    }

    /// Whether either of two users blocked the other.
    pub(super) async fn blocked_between(&self, a: u64, b: u64) -> Result<bool, ErrorBody> {
        Ok(self.store.relationship(a, b).await.map_err(store_err)? == Some(Blocked)
            || self.store.relationship(b, a).await.map_err(store_err)? == Some(Blocked))
    }

    /// Relationship and mute requests, and notification acks.
    pub(super) async fn handle_social(&self, user: u64, body: RequestBody) -> Result<ResponseBody, Refusal> {
        use RequestBody as R;
        let now = now_ms();
        let other = match &body {
            R::SendFriendRequest { user_id }
            | R::AcceptFriendRequest { user_id }
            | R::DeclineFriendRequest { user_id }
            | R::CancelFriendRequest { user_id }
            | R::RemoveFriend { user_id }
            | R::BlockUser { user_id }
            | R::UnblockUser { user_id } => Some(*user_id),
            _ => None,
        };
        if let Some(o) = other
            && (o == user || o == 0)
        {
            return Err(ErrorBody::new(ErrorCode::BAD_REQUEST, "that is you").into());
        }
        self.limit(user, Kind::Manage)?;
        let mine = match other {
            Some(o) => self.store.relationship(user, o).await.map_err(store_err)?,
            None => None,
        };
        let theirs = match other {
            Some(o) => self.store.relationship(o, user).await.map_err(store_err)?,
            None => None,
        };
        let set = |a_to_b: Option<RelationshipKind>, b_to_a: Option<RelationshipKind>| {
            let o = other.unwrap_or_default();
            async move {
                self.store
                    .set_relationship(user, a_to_b, o, b_to_a, now)
                    .await
                    .map_err(store_err)?;
                self.tell(user, o, a_to_b);
                self.tell(o, user, b_to_a);
                Ok::<_, ErrorBody>(())
            }
        };
        let reply = |kind: Option<RelationshipKind>| match kind {
            Some(kind) => ResponseBody::Relationship(Relationship {
                user_id: other.unwrap_or_default(),
                kind,
            }),
            None => ResponseBody::Done,
        };
        match body {
            R::SendFriendRequest { user_id } => {
                if mine == Some(Blocked) || theirs == Some(Blocked) {
                    return Err(blocked().into());
                }
                match mine {
                    Some(Friend) | Some(OutgoingRequest) => Ok(reply(mine)),
                    Some(IncomingRequest) => {
                        set(Some(Friend), Some(Friend)).await?;
                        self.friends_now(user, user_id);
                        self.notify_user(user_id, user, NotificationKind::FriendAccepted, now)
                            .await?;
                        Ok(reply(Some(Friend)))
                    }
                    _ => {
                        set(Some(OutgoingRequest), Some(IncomingRequest)).await?;
                        self.notify_user(user_id, user, NotificationKind::FriendRequest, now)
                            .await?;
                        Ok(reply(Some(OutgoingRequest)))
                    }
                }
            }
            R::AcceptFriendRequest { user_id } => {
                if mine != Some(IncomingRequest) {
                    return Err(no_relationship().into());
                }
                set(Some(Friend), Some(Friend)).await?;
                self.friends_now(user, user_id);
                self.notify_user(user_id, user, NotificationKind::FriendAccepted, now)
                    .await?;
                Ok(reply(Some(Friend)))
            }
            R::DeclineFriendRequest { .. } => {
                if mine != Some(IncomingRequest) {
                    return Err(no_relationship().into());
                }
                set(None, None).await?;
                Ok(ResponseBody::Done)
            }
            R::CancelFriendRequest { .. } => {
                if mine != Some(OutgoingRequest) {
                    return Err(no_relationship().into());
                }
                set(None, None).await?;
                Ok(ResponseBody::Done)
            }
            R::RemoveFriend { .. } => {
                if mine != Some(Friend) {
                    return Err(no_relationship().into());
                }
                set(None, None).await?;
                Ok(ResponseBody::Done)
            }
            R::BlockUser { .. } => {
                // Their side survives only if it is their own block of us.
                let keep = (theirs == Some(Blocked)).then_some(Blocked);
                set(Some(Blocked), keep).await?;
                Ok(reply(Some(Blocked)))
            }
            R::UnblockUser { .. } => {
                if mine != Some(Blocked) {
                    return Err(no_relationship().into());
                }
                set(None, theirs).await?;
                Ok(ResponseBody::Done)
            }
            R::SetMute { target, muted } => {
                match target {
                    MuteTarget::Guild(g) => {
                        self.guild_perms(user, g).await?;
                    }
                    MuteTarget::Channel(c) => {
                        self.access(user, c).await?;
                    }
                }
                self.store.set_mute(user, target, muted).await.map_err(store_err)?;
                self.publish_user_lane(user, Lane::Notifications, &EventBody::MuteUpdated { target, muted });
                Ok(ResponseBody::Done)
            }
            R::AckNotifications { up_to } => {
                self.store
                    .ack_notifications(user, up_to, now)
                    .await
                    .map_err(store_err)?;
                Ok(ResponseBody::Done)
            }
            R::MarkNotificationsRead { ids, all } => {
                if ids.len() > 1000 {
                    return Err(ErrorBody::new(ErrorCode::TOO_LARGE, "at most 1000 ids").into());
                }
                self.store
                    .read_notifications(user, &ids, all, now)
                    .await
                    .map_err(store_err)?;
                let ids = if all { Vec::new() } else { ids };
                self.publish_user_lane(user, Lane::Notifications, &EventBody::NotificationsRead { ids, all });
                Ok(ResponseBody::Done)
            }
            _ => Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a social request").into()),
        }
    }

    /// Stores and delivers notifications to `items` (already filtered).
    async fn deliver(&self, items: Vec<(u64, Notification)>) -> Result<(), ErrorBody> {
        // Recipients with no live session anywhere: the backend hears of it (to push).
        let mut undelivered = std::collections::HashSet::new();
        if let Some(p) = self.presence.get()
            && !items.is_empty()
            && self.store.hooks().wants("notification.undelivered")
        {
            let users: Vec<u64> = items.iter().map(|(u, _)| *u).collect();
            let live: std::collections::HashSet<u64> = p.live(users.clone()).await.into_iter().collect();
            undelivered.extend(users.into_iter().filter(|u| !live.contains(u)));
        }
        self.store
            .create_notifications(&items, &undelivered)
            .await
            .map_err(store_err)?;
        for (user, n) in items {
            self.publish_user_lane(
                user,
                Lane::Notifications,
                &EventBody::NotificationCreated { notification: n },
            );
        }
        Ok(())
    }

    /// A notification between two users (friend requests), unless blocked.
    async fn notify_user(&self, to: u64, actor: u64, kind: NotificationKind, now: u64) -> Result<(), ErrorBody> {
        if self.blocked_between(to, actor).await? {
            return Ok(());
        }
        let n = Notification {
            id: self.id(),
            kind,
            actor_id: actor,
            guild_id: None,
            channel_id: None,
            message_id: None,
            preview: String::new(),
            created_at_ms: now,
            read: false,
        };
        self.deliver(vec![(to, n)]).await
    }

    async fn facts(&self, actor: u64, guild: Option<u64>, channel: u64) -> Result<Facts, ErrorBody> {
        Ok(Facts {
            blocked_actor: self
                .store
                .blockers_of(actor)
                .await
                .map_err(store_err)?
                .into_iter()
                .collect(),
            muted: self
                .store
                .muters(guild, channel)
                .await
                .map_err(store_err)?
                .into_iter()
                .collect(),
        })
    }

    /// Notifications caused by a new message: mentions, a reply, a DM.
    pub(super) async fn notify_message(&self, access: &Access, m: &Message) -> Result<(), ErrorBody> {
        let mut cands: Vec<(u64, NotificationKind)> = Vec::new();
        let viewers: HashSet<u64> = match access {
            Access::Guild(g, c, _) => {
                cands.extend(m.mentions.users.iter().map(|u| (*u, NotificationKind::Mention)));
                let gid = g.state.guild.id;
                let roles: Vec<u64> = m.mentions.roles.iter().copied().filter(|r| *r != gid).collect();
                let role_everyone = m.mentions.roles.contains(&gid);
                cands.extend(
                    self.store
                        .role_holders(gid, &roles)
                        .await
                        .map_err(store_err)?
                        .into_iter()
                        .map(|u| (u, NotificationKind::Mention)),
                );
                let viewers = g.viewers(c.id);
                if m.mentions.everyone || role_everyone {
                    cands.extend(viewers.iter().map(|u| (*u, NotificationKind::Mention)));
                }
                viewers.iter().copied().collect()
            }
            Access::Private(p) => {
                cands.extend(p.recipients.iter().map(|u| (*u, NotificationKind::DirectMessage)));
                cands.extend(m.mentions.users.iter().map(|u| (*u, NotificationKind::Mention)));
                p.recipients.iter().copied().collect()
            }
        };
        if let Some(target) = m.reply_to
            && let Ok(orig) = self.store.message(m.channel_id, target).await
        {
            cands.push((orig.author_id, NotificationKind::Reply));
        }
        if cands.is_empty() {
            // Most messages mention, answer and address nobody: no block or mute lookups.
            return Ok(());
        }
        let facts = self.facts(m.author_id, access.guild_id(), m.channel_id).await?;
        let items = notify::recipients(m.author_id, cands, |u| viewers.contains(&u), &facts)
            .into_iter()
            .map(|(user, kind)| {
                (
                    user,
                    Notification {
                        id: self.id(),
                        kind,
                        actor_id: m.author_id,
                        guild_id: access.guild_id(),
                        channel_id: Some(m.channel_id),
                        message_id: Some(m.id),
                        preview: notify::preview(&m.content),
                        created_at_ms: m.created_at_ms,
                        read: false,
                    },
                )
            })
            .collect();
        self.deliver(items).await
    }

    /// The notification a reaction causes for the message's author.
    pub(super) async fn notify_reaction(
        &self,
        access: &Access,
        actor: u64,
        channel: u64,
        message: u64,
        emoji: &str,
    ) -> Result<(), ErrorBody> {
        let Ok(m) = self.store.message(channel, message).await else {
            return Ok(());
        };
        let author = m.author_id;
        let can_view = match access {
            Access::Guild(g, c, _) => g.perms(author, Some(c)).is_some_and(|p| p.has(Perms::VIEW_CHANNEL)),
            Access::Private(_) => true,
        };
        let facts = self.facts(actor, access.guild_id(), channel).await?;
        let items = notify::recipients(actor, [(author, NotificationKind::Reaction)], |_| can_view, &facts)
            .into_iter()
            .map(|(user, kind)| {
                (
                    user,
                    Notification {
                        id: self.id(),
                        kind,
                        actor_id: actor,
                        guild_id: access.guild_id(),
                        channel_id: Some(channel),
                        message_id: Some(message),
                        preview: emoji.to_string(),
                        created_at_ms: now_ms(),
                        read: false,
                    },
                )
            })
            .collect();
        self.deliver(items).await
    }

    /// Refuses a DM between users where either blocked the other.
    pub(super) async fn check_dm_block(
        &self,
        user: u64,
        kind: ChannelKind,
        recipients: &[u64],
    ) -> Result<(), ErrorBody> {
        if kind == ChannelKind::Dm {
            for other in recipients.iter().filter(|u| **u != user) {
                if self.blocked_between(user, *other).await? {
                    return Err(blocked());
                }
            }
        }
        Ok(())
    }

    /// `a` and `b` just became friends: each now sees the other's presence, told at once
    /// (PROTOCOL.md: a snapshot wherever an audience changes).
    fn friends_now(&self, a: u64, b: u64) {
        for (to, whose) in [(a, b), (b, a)] {
            self.bus.publish(BusEvent::ShowPresences {
                to: Viewers::User(to),
                users: vec![whose],
            });
        }
    }

    /// Friends of `user`.
    pub(crate) async fn friends(&self, user: u64) -> Result<Vec<u64>, ErrorBody> {
        Ok(friends_among(&self.store.relationships(user).await.map_err(store_err)?).collect())
    }
}

/// The friends among a user's `relationships`.
pub(crate) fn friends_among(relationships: &[quaver_proto::Relationship]) -> impl Iterator<Item = u64> + '_ {
    relationships.iter().filter(|r| r.kind == Friend).map(|r| r.user_id)
}
