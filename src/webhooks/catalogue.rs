//! The event catalogue: every webhook event type, what its `data` holds, and which ordering
//! key sequences it. PROTOCOL.md ("Webhooks") and the OpenAPI document (schemas
//! `Webhook*`) describe the same.

use quaver_proto::EventBody;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::types::{Id, Message};
use crate::store::HookEvent;

/// Every event type, with the key that orders it.
pub const TYPES: &[(&str, &str)] = &[
    ("message.created", "channel"),
    ("message.updated", "channel"),
    ("message.deleted", "channel"),
    ("reaction.added", "channel"),
    ("reaction.removed", "channel"),
    ("member.joined", "guild"),
    ("member.left", "guild"),
    ("member.banned", "guild"),
    ("member.unbanned", "guild"),
    ("role.created", "guild"),
    ("role.updated", "guild"),
    ("role.deleted", "guild"),
    ("member.roles_updated", "guild"),
    ("member.timed_out", "guild"),
    ("guild.created", "guild"),
    ("guild.updated", "guild"),
    ("guild.deleted", "guild"),
    ("channel.created", "guild"),
    ("channel.updated", "guild"),
    ("channel.deleted", "guild"),
    ("voice.joined", "voice"),
    ("voice.left", "voice"),
    ("voice.state_updated", "voice"),
    ("session.opened", "user"),
    ("session.closed", "user"),
    ("rate_limited", "user"),
    ("typing.started", "typing"),
    ("user.online", "user"),
    ("user.offline", "user"),
    ("notification.undelivered", "user"),
    ("endpoint.disabled", "endpoint"),
    ("webhook.test", "endpoint"),
];

/// High-volume types that `*` does not include: an endpoint names them (or their family).
pub const OPT_IN: &[&str] = &["typing.started"];

/// Whether an endpoint with these patterns wants events of `kind`: `*` (every type but the
/// opt-in ones), a family (`message.*`) or one type (`message.created`). `webhook.test`
/// goes only to the endpoint it tests, whatever its patterns.
pub fn matches(patterns: &[String], kind: &str) -> bool {
    if kind == "webhook.test" {
        return false;
    }
    patterns.iter().any(|p| {
        (p == "*" && !OPT_IN.contains(&kind))
            || p == kind
            || p.strip_suffix(".*")
                .is_some_and(|family| kind.strip_prefix(family).is_some_and(|rest| rest.starts_with('.')))
    })
}

/// Whether a pattern can match something in the catalogue (a typo is refused, not kept).
pub fn valid_pattern(p: &str) -> bool {
    p == "*"
        || TYPES.iter().any(|(t, _)| {
            *t == p
                || p.strip_suffix(".*")
                    .is_some_and(|family| t.strip_prefix(family).is_some_and(|rest| rest.starts_with('.')))
        })
}

/// `message.created`: a message was posted (by a client or the server API).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMessageCreated {
    /// The guild (`null` in a DM).
    pub guild_id: Option<Id>,
    /// The channel.
    pub channel_id: Id,
    /// The message (its `seq` is the channel's).
    pub message: Message,
}

/// `message.updated`: a message's content was edited.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMessageUpdated {
    /// The guild (`null` in a DM).
    pub guild_id: Option<Id>,
    /// The channel.
    pub channel_id: Id,
    /// The message.
    pub message_id: Id,
    /// The channel seq of the edit.
    pub seq: u64,
    /// The new content.
    pub content: String,
    /// Unix ms.
    pub edited_at_ms: u64,
}

/// `message.deleted`: a message was deleted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMessageDeleted {
    /// The guild (`null` in a DM).
    pub guild_id: Option<Id>,
    /// The channel.
    pub channel_id: Id,
    /// The message.
    pub message_id: Id,
    /// The channel seq of the deletion.
    pub seq: u64,
}

/// `reaction.added` / `reaction.removed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookReaction {
    /// The guild (`null` in a DM).
    pub guild_id: Option<Id>,
    /// The channel.
    pub channel_id: Id,
    /// The message.
    pub message_id: Id,
    /// The channel seq of the change.
    pub seq: u64,
    /// Who reacted.
    pub user_id: Id,
    /// The emoji.
    pub emoji: String,
}

/// `member.joined` / `member.unbanned`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMember {
    /// The guild.
    pub guild_id: Id,
    /// The member.
    pub user_id: Id,
}

/// How a member left.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LeftHow {
    /// On their own.
    Left,
    /// Removed by someone (a member with the permission, or the server API).
    Kicked,
    /// Banned (a `member.banned` event precedes this one).
    Banned,
}

/// `member.left`: a member is no longer in the guild.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMemberLeft {
    /// The guild.
    pub guild_id: Id,
    /// The former member.
    pub user_id: Id,
    /// How.
    pub how: LeftHow,
    /// Who removed them (`null` when they left).
    pub by: Option<Id>,
}

/// `member.banned`: a user was banned from a guild.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMemberBanned {
    /// The guild.
    pub guild_id: Id,
    /// The banned user.
    pub user_id: Id,
    /// Who banned them.
    pub by: Id,
    /// The reason given.
    pub reason: String,
}

/// `role.created` / `role.updated`: a guild's role made or changed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookRole {
    /// The guild.
    pub guild_id: Id,
    /// The role.
    pub role_id: Id,
    /// Its name.
    pub name: String,
    /// Its permission bits (decimal string).
    pub permissions: String,
}

/// `role.deleted`: a role was deleted (members lost it; overwrites naming it went).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookRoleDeleted {
    /// The guild.
    pub guild_id: Id,
    /// The role.
    pub role_id: Id,
}

/// `member.timed_out`: a member was timed out (`until_ms` set) or their timeout lifted
/// (`until_ms` null).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMemberTimeout {
    /// The guild.
    pub guild_id: Id,
    /// The member.
    pub user_id: Id,
    /// When the timeout ends (Unix ms), or null when it was lifted.
    pub until_ms: Option<u64>,
    /// Who did it (a user, or the server API's acting user).
    pub by: Id,
    /// The reason given.
    pub reason: String,
}

/// `member.roles_updated`: a member was given (`added`) or lost a role.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookMemberRole {
    /// The guild.
    pub guild_id: Id,
    /// The member.
    pub user_id: Id,
    /// The role.
    pub role_id: Id,
    /// Given (true) or taken (false).
    pub added: bool,
}

/// `guild.created` / `guild.updated` / `guild.deleted`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookGuild {
    /// The guild.
    pub guild_id: Id,
    /// Its name (`null` for `guild.deleted`).
    pub name: Option<String>,
    /// Its owner (`guild.created` only).
    pub owner_id: Option<Id>,
}

/// `channel.created` / `channel.updated` (its permission overwrites changed) /
/// `channel.deleted`: a guild's channel. Ordered by the guild (`guild:<id>`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookChannel {
    /// The guild.
    pub guild_id: Id,
    /// The channel.
    pub channel_id: Id,
    /// Its name (`channel.created`).
    pub name: Option<String>,
    /// `text` or `voice` (`channel.created`).
    pub kind: Option<String>,
}

/// The `typing.started` event.
pub fn typing(guild: Option<u64>, channel: u64, user: u64) -> HookEvent {
    HookEvent {
        kind: "typing.started",
        okey: format!("typing:{channel}"),
        kseq: None,
        data: json(&WebhookTyping {
            guild_id: guild.map(Id),
            channel_id: Id(channel),
            user_id: Id(user),
        }),
    }
}

/// `voice.joined` / `voice.left` / `voice.state_updated`: someone in a voice channel.
/// Ordered by the channel (`voice:<id>`). In `voice.state_updated` the states given are the
/// new ones; `null`: unchanged.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookVoice {
    /// The guild.
    pub guild_id: Id,
    /// The voice channel.
    pub channel_id: Id,
    /// Who.
    pub user_id: Id,
    /// Muted themselves.
    pub self_mute: Option<bool>,
    /// Deafened themselves.
    pub self_deaf: Option<bool>,
    /// Muted by a moderator.
    pub server_mute: Option<bool>,
    /// Deafened by a moderator.
    pub server_deaf: Option<bool>,
}

impl WebhookVoice {
    /// The event of `kind` about `user` in `channel`.
    pub fn event(kind: &'static str, guild: u64, channel: u64, user: u64, states: [Option<bool>; 4]) -> HookEvent {
        let [self_mute, self_deaf, server_mute, server_deaf] = states;
        HookEvent {
            kind,
            okey: format!("voice:{channel}"),
            kseq: None,
            data: json(&WebhookVoice {
                guild_id: Id(guild),
                channel_id: Id(channel),
                user_id: Id(user),
                self_mute,
                self_deaf,
                server_mute,
                server_deaf,
            }),
        }
    }
}

/// `session.opened`: a connection of the user went live on a node (a new session, or one
/// resumed). Ordered by `user:<id>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookSessionOpened {
    /// The user.
    pub user_id: Id,
    /// The session (32 hex digits, as `GET /users/{id}/sessions` lists it).
    pub session_id: String,
    /// The node.
    pub node: String,
    /// `quic` or `webtransport`.
    pub transport: String,
    /// `desktop`, `mobile` or `web`.
    pub device: String,
    /// Whether it resumed an earlier connection's session.
    pub resumed: bool,
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// Its connection ended (see `close_code` and `resumable`).
    Closed,
    /// The node holding it died (its liveness lapsed): every session of the user there.
    NodeLost,
}

/// `session.closed`: a connection of the user ended — for good, or leaving the session
/// resumable for the resume window (`resumable`). Ordered by `user:<id>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookSessionClosed {
    /// The user.
    pub user_id: Id,
    /// The session (`null` for `node_lost`: all of the user's sessions on that node).
    pub session_id: Option<String>,
    /// The node.
    pub node: String,
    /// The close code (PROTOCOL.md §7) when the server or client gave one.
    pub close_code: Option<u32>,
    /// Whether it may still be resumed (the connection dropped without a deliberate close).
    pub resumable: bool,
    /// Why.
    pub reason: SessionEnd,
}

/// `rate_limited`: a user's request was refused by a rate limit (at most one event per
/// user per 10 s, and one for each flood that closes a session). Ordered by `user:<id>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookRateLimited {
    /// The user.
    pub user_id: Id,
    /// Which limit (`send`, `edit`, `react`, `manage`, `fetch`, `read`, `presence`,
    /// `typing`, `voice`).
    pub limit: String,
    /// Whether they kept going past refusals until the session was closed (1004).
    pub flood: bool,
    /// The node.
    pub node: String,
}

/// An event ordered by its user.
pub fn user_event<T: Serialize>(kind: &'static str, user: u64, data: &T) -> HookEvent {
    HookEvent {
        kind,
        okey: format!("user:{user}"),
        kseq: None,
        data: json(data),
    }
}

/// `typing.started` (opt-in: `*` does not include it): someone started typing in a
/// channel. Ordered by `typing:<channel id>` (typing is not stored, so not in the channel's
/// seq). Recorded by the batch writer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookTyping {
    /// The guild (`null` in a DM).
    pub guild_id: Option<Id>,
    /// The channel.
    pub channel_id: Id,
    /// Who.
    pub user_id: Id,
}

/// A status as webhooks name it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Online.
    Online,
    /// Idle.
    Idle,
    /// Do not disturb.
    Dnd,
    /// Offline (or invisible: others see them offline).
    Offline,
}

impl From<quaver_proto::PresenceStatus> for UserStatus {
    fn from(s: quaver_proto::PresenceStatus) -> Self {
        use quaver_proto::PresenceStatus as P;
        match s {
            P::Online => UserStatus::Online,
            P::Idle => UserStatus::Idle,
            P::Dnd => UserStatus::Dnd,
            P::Offline | P::Invisible => UserStatus::Offline,
        }
    }
}

/// Why a user went offline.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OfflineWhy {
    /// Their last session ended (or went invisible) and the reconnect grace passed.
    Disconnected,
    /// The node holding their sessions died (its liveness lapsed).
    NodeLost,
}

/// `user.online` / `user.offline`: a user's aggregate status crossed between offline and
/// anything else, merged over every device and node, after the reconnect grace (a reconnect
/// within it sends nothing). Ordered by `user:<id>` with the user's other events; `version`
/// is the user's presence version — apply an event only if its `version` is above the last
/// you applied for that user. (Two nodes that change one user's presence within the same
/// few ms may record their events in the other order than the registry decided them; the
/// version is the registry's order.)
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookUserPresence {
    /// The user.
    pub user_id: Id,
    /// The user's presence version: greater for every later change, across every node and
    /// restart (one more than the last, or the clock in µs when that is greater).
    pub version: u64,
    /// What others see now (`offline` for `user.offline`).
    pub status: UserStatus,
    /// Per platform.
    pub desktop: UserStatus,
    /// Per platform.
    pub mobile: UserStatus,
    /// Per platform.
    pub web: UserStatus,
    /// Why they went offline (`null` for `user.online`).
    pub reason: Option<OfflineWhy>,
}

/// The presence event of a change to what others see of a user, when it crosses between
/// offline and online.
pub fn user_presence(p: &quaver_proto::Presence, version: u64, was_online: bool, why: OfflineWhy) -> Option<HookEvent> {
    let online = p.status != quaver_proto::PresenceStatus::Offline;
    if online == was_online {
        return None;
    }
    let kind = if online { "user.online" } else { "user.offline" };
    Some(HookEvent {
        kind,
        okey: format!("user:{}", p.user_id),
        kseq: None,
        data: json(&WebhookUserPresence {
            user_id: Id(p.user_id),
            version,
            status: p.status.into(),
            desktop: p.client_status.desktop.into(),
            mobile: p.client_status.mobile.into(),
            web: p.client_status.web.into(),
            reason: (!online).then_some(why),
        }),
    })
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotificationWhy {
    /// They were mentioned (`<@id>`, a role they hold, `@everyone`).
    Mention,
    /// Someone replied to their message.
    Reply,
    /// A direct message (or group DM) to them.
    DirectMessage,
    /// A friend request to them.
    FriendRequest,
    /// Their friend request was accepted.
    FriendAccepted,
}

/// `notification.undelivered`: a notification for a user with no live session anywhere
/// (none on any node, and not within the reconnect grace of their last): send them a push.
/// Reactions are not pushed. Ordered by `user:<id>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookNotification {
    /// Who it is for.
    pub user_id: Id,
    /// The notification's id (as `GET` of their notifications and `NotificationCreated` name it).
    pub notification_id: Id,
    /// Why.
    pub kind: NotificationWhy,
    /// Who caused it.
    pub actor_id: Id,
    /// The guild, if any.
    pub guild_id: Option<Id>,
    /// The channel, if any.
    pub channel_id: Option<Id>,
    /// The message, if any.
    pub message_id: Option<Id>,
    /// The start of the message (up to 100 characters).
    pub preview: String,
    /// Unix ms.
    pub created_at_ms: u64,
}

/// The `notification.undelivered` event of `n` for `user`, if its kind is pushed.
pub fn undelivered(user: u64, n: &quaver_proto::Notification) -> Option<HookEvent> {
    use quaver_proto::NotificationKind as K;
    let kind = match n.kind {
        K::Mention => NotificationWhy::Mention,
        K::Reply => NotificationWhy::Reply,
        K::DirectMessage => NotificationWhy::DirectMessage,
        K::FriendRequest => NotificationWhy::FriendRequest,
        K::FriendAccepted => NotificationWhy::FriendAccepted,
        K::Reaction => return None,
    };
    Some(HookEvent {
        kind: "notification.undelivered",
        okey: format!("user:{user}"),
        kseq: None,
        data: json(&WebhookNotification {
            user_id: Id(user),
            notification_id: Id(n.id),
            kind,
            actor_id: Id(n.actor_id),
            guild_id: n.guild_id.map(Id),
            channel_id: n.channel_id.map(Id),
            message_id: n.message_id.map(Id),
            preview: n.preview.clone(),
            created_at_ms: n.created_at_ms,
        }),
    })
}

/// `endpoint.disabled`: an endpoint answered `410 Gone` (or was disabled through the API);
/// nothing more is delivered to it until it is enabled again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpointDisabled {
    /// The endpoint.
    pub endpoint_id: String,
    /// Why.
    pub reason: String,
}

/// `webhook.test`: a ping asked for through the API (`POST /api/v1/webhooks/{id}/test`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookTest {
    /// The endpoint.
    pub endpoint_id: String,
}

/// What every delivery's body is (Standard Webhooks' `{type, timestamp, data}`, with the
/// id and the ordering key beside them).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEnvelope {
    /// `evt_<n>`: the same as the `webhook-id` header, the same on every retry — dedupe on it.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened, RFC 3339 (UTC, milliseconds).
    pub timestamp: String,
    /// The ordering key: `channel:<id>`, `guild:<id>`, `voice:<id>`, `user:<id>` or
    /// `endpoint:<id>`.
    /// Events of one key are delivered one at a time, in `key_seq` order.
    pub key: String,
    /// The key's sequence (for a channel, its seq: the order clients see).
    pub key_seq: u64,
    /// The event's data (see the `Webhook*` schemas).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

fn json<T: Serialize>(v: &T) -> String {
    // Invariant: these types hold only strings, numbers, booleans and options of them.
    serde_json::to_string(v).expect("webhook data serializes")
}

/// The webhook type of a stored channel event, if it has one.
pub fn channel_event_type(body: &EventBody) -> Option<&'static str> {
    Some(match body {
        EventBody::MessageCreated { .. } => "message.created",
        EventBody::MessageEdited { .. } => "message.updated",
        EventBody::MessageDeleted { .. } => "message.deleted",
        EventBody::ReactionAdded { .. } => "reaction.added",
        EventBody::ReactionRemoved { .. } => "reaction.removed",
        _ => return None,
    })
}

/// The webhook event of a stored channel event (its type from [`channel_event_type`]).
pub fn channel_event(kind: &'static str, guild: Option<u64>, channel: u64, seq: u64, body: &EventBody) -> HookEvent {
    let guild_id = guild.map(Id);
    let channel_id = Id(channel);
    let data = match body {
        EventBody::MessageCreated { message, .. } => json(&WebhookMessageCreated {
            guild_id,
            channel_id,
            message: message.clone().into(),
        }),
        EventBody::MessageEdited {
            message_id,
            content,
            edited_at_ms,
            ..
        } => json(&WebhookMessageUpdated {
            guild_id,
            channel_id,
            message_id: Id(*message_id),
            seq,
            content: content.clone(),
            edited_at_ms: *edited_at_ms,
        }),
        EventBody::MessageDeleted { message_id, .. } => json(&WebhookMessageDeleted {
            guild_id,
            channel_id,
            message_id: Id(*message_id),
            seq,
        }),
        EventBody::ReactionAdded {
            message_id,
            user_id,
            emoji,
            ..
        }
        | EventBody::ReactionRemoved {
            message_id,
            user_id,
            emoji,
            ..
        } => json(&WebhookReaction {
            guild_id,
            channel_id,
            message_id: Id(*message_id),
            seq,
            user_id: Id(*user_id),
            emoji: emoji.clone(),
        }),
        // Invariant: callers pass only events `channel_event_type` names.
        _ => "{}".to_string(),
    };
    HookEvent {
        kind,
        okey: format!("channel:{channel}"),
        kseq: Some(seq),
        data,
    }
}

/// An event ordered by its guild.
pub fn guild_event<T: Serialize>(kind: &'static str, guild: u64, data: &T) -> HookEvent {
    HookEvent {
        kind,
        okey: format!("guild:{guild}"),
        kseq: None,
        data: json(data),
    }
}

/// An event ordered by its endpoint.
pub fn endpoint_event<T: Serialize>(kind: &'static str, endpoint: &str, data: &T) -> HookEvent {
    HookEvent {
        kind,
        okey: format!("endpoint:{endpoint}"),
        kseq: None,
        data: json(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_match_a_type_a_family_or_everything() {
        assert!(matches(&p(&["*"]), "message.created"));
        assert!(matches(&p(&["message.*"]), "message.deleted"));
        assert!(!matches(&p(&["message.*"]), "member.joined"));
        assert!(!matches(&p(&["mess.*"]), "message.created"));
        assert!(matches(&p(&["member.left", "reaction.added"]), "reaction.added"));
        assert!(!matches(&p(&[]), "message.created"));
        assert!(!matches(&p(&["*"]), "webhook.test"));
        assert!(!matches(&p(&["*"]), "typing.started"), "opt-in");
        assert!(matches(&p(&["*", "typing.*"]), "typing.started"));
    }

    #[test]
    fn only_patterns_that_can_match_are_valid() {
        for ok in ["*", "message.*", "member.joined", "endpoint.disabled"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in ["", "message", "messages.*", "message.create", "*.created", "mess.*"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }
}
