//! People through the API: the key in use, user profiles, presence (merged across devices
//! and nodes), and effective permissions computed by Quaver's own rules — so a backend
//! never reimplements them.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::types::{Id, Presence, Status};
use crate::perms::Perms;

/// The key in use.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's id.
    pub key_id: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

/// Says which key this is and what it may do.
#[utoipa::path(
    get, path = "/whoami", tag = "meta",
    responses(
        (status = 200, description = "The key", body = WhoAmI),
        (status = 401, description = "No valid key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn whoami(caller: Caller) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        key_id: caller.key_id.clone(),
        scopes: caller.scope_names().into_iter().map(str::to_string).collect(),
    })
}

/// A user's profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    /// Their id (the `sub` of their tokens).
    pub id: Id,
    /// Their display name.
    pub name: String,
    /// Their avatar (`https://`), or null.
    pub avatar_url: Option<String>,
}

/// What a profile is set to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// 1–64 printable characters. A session's token, when it carries a `name`, sets it
    /// again when the session opens: the later of the two wins.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// An `https://` URL of their picture (at most 512 characters), shown by clients beside
    /// their name; `""` removes it; absent leaves it as it is.
    #[serde(default)]
    #[schema(
        max_length = 512,
        pattern = r"^(https://[!#-&(-.0-;=?-\[\]_a-z~][!#-&(-;=?-\[\]_a-z~]*)?$"
    )]
    pub avatar_url: Option<String>,
}

/// Checks an avatar URL: empty, or `https://` and a host, in visible ASCII that needs no
/// escaping in HTML attributes, at most 512 characters.
fn check_avatar(url: &str) -> ApiResult<()> {
    if url.is_empty() {
        return Ok(());
    }
    let ok = url.len() <= 512
        && url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && url.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'`' | b'\'' | b'^' | b'{' | b'|' | b'}')
        });
    if ok {
        Ok(())
    } else {
        Err(Problem::bad(
            "avatar_url",
            "an avatar is an https:// URL of at most 512 visible ASCII characters (or \"\" for none)",
        ))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct UserPath {
    user_id: Id,
}

/// Creates or updates a user (a bot, or someone who has not connected yet).
#[utoipa::path(
    put, path = "/users/{user_id}", tag = "people",
    params(("user_id" = Id, Path, description = "The user")),
    request_body = UserUpdate,
    responses(
        (status = 200, description = "The profile", body = User),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn put_user(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(u): ApiJson<UserUpdate>,
) -> ApiResult<axum::Json<User>> {
    caller.need(Scope::UsersWrite)?;
    let name = u.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Problem::new(
            quaver_proto::ErrorCode::INVALID_NAME.0,
            "a name is 1–64 printable characters",
        )
        .field("name"));
    }
    if let Some(url) = &u.avatar_url {
        check_avatar(url)?;
    }
    let now = crate::ids::now_ms();
    let store = api.chat.store();
    store.upsert_user(p.user_id.0, name, now).await?;
    if let Some(url) = &u.avatar_url {
        store.set_avatar(p.user_id.0, url, now).await?;
    }
    let (name, avatar) = store
        .live_profile(p.user_id.0)
        .await?
        .ok_or_else(|| Problem::not_found("user"))?;
    api.chat.profile_changed(p.user_id.0).await?;
    Ok(axum::Json(User {
        id: p.user_id,
        name,
        avatar_url: (!avatar.is_empty()).then_some(avatar),
    }))
}

/// A user's profile.
#[utoipa::path(
    get, path = "/users/{user_id}", tag = "people",
    params(("user_id" = Id, Path, description = "The user")),
    responses(
        (status = 200, description = "The profile", body = User),
        (status = 404, description = "Never seen, or deleted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_user(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<axum::Json<User>> {
    caller.need(Scope::UsersRead)?;
    let (name, avatar) = api
        .chat
        .store()
        .live_profile(p.user_id.0)
        .await?
        .ok_or_else(|| Problem::not_found("user"))?;
    Ok(axum::Json(User {
        id: p.user_id,
        name,
        avatar_url: (!avatar.is_empty()).then_some(avatar),
    }))
}

/// Whose presence.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// 1–1,000 users.
    #[schema(min_items = 1, max_items = 1000)]
    pub user_ids: Vec<Id>,
}

/// Presences, one per user asked about, in that order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Presences {
    /// The presences (offline users included, as `offline`).
    pub presences: Vec<Presence>,
    /// How many of them are not offline.
    pub online: usize,
}

/// What many users show, merged across their devices and the cluster's nodes.
#[utoipa::path(
    post, path = "/presence/query", tag = "people",
    request_body = PresenceQuery,
    responses(
        (status = 200, description = "Their presences", body = Presences),
        (status = 400, description = "None, or over 1,000", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn query_presence(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(q): ApiJson<PresenceQuery>,
) -> ApiResult<axum::Json<Presences>> {
    caller.need(Scope::PresenceRead)?;
    if q.user_ids.is_empty() || q.user_ids.len() > 1000 {
        return Err(Problem::bad("user_ids", "ask about 1 to 1,000 users"));
    }
    let users: Vec<u64> = q.user_ids.iter().map(|u| u.0).collect();
    let seen = api.presence.snapshot(users.clone()).await;
    let presences: Vec<Presence> = users
        .iter()
        .map(|u| {
            seen.iter()
                .find(|p| p.user_id == *u)
                .cloned()
                .unwrap_or_else(|| crate::presence::registry::offline(*u))
                .into()
        })
        .collect();
    let online = presences.iter().filter(|p| p.status != Status::Offline).count();
    Ok(axum::Json(Presences { presences, online }))
}

/// Where permissions are computed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PermissionsQuery {
    /// In this channel (its overwrites applied); without it, the guild's.
    pub channel_id: Option<Id>,
}

/// A member's effective permissions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Permissions {
    /// The bits (PROTOCOL.md "Permissions"), as a decimal string.
    pub bits: String,
    /// The names of the bits set.
    pub names: Vec<String>,
    /// Where: the channel, if one was given.
    pub channel_id: Option<Id>,
}

#[derive(Debug, Deserialize)]
pub(super) struct MemberPath {
    guild_id: Id,
    user_id: Id,
}

/// A member's effective permissions, by Quaver's own rules (roles, overwrites, owner and
/// administrator): what a client of theirs would be allowed.
#[utoipa::path(
    get, path = "/guilds/{guild_id}/members/{user_id}/permissions", tag = "people",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member"), PermissionsQuery),
    responses(
        (status = 200, description = "Their permissions", body = Permissions),
        (status = 404, description = "No such guild, member, or channel in it they can see", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn permissions(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MemberPath>,
    ApiQuery(q): ApiQuery<PermissionsQuery>,
) -> ApiResult<axum::Json<Permissions>> {
    caller.need(Scope::GuildsRead)?;
    let guild_perms = api.chat.guild_permissions(p.user_id.0, p.guild_id.0).await?;
    let perms = match q.channel_id {
        None => guild_perms,
        Some(c) => {
            let in_guild = api.chat.channel_guild_of(c.0).await?;
            if in_guild != Some(p.guild_id.0) {
                return Err(Problem::not_found("channel in this guild").field("channel_id"));
            }
            match api.chat.channel_permissions(p.user_id.0, c.0).await {
                Ok(perms) => perms,
                // Cannot view it: no permission there at all.
                Err(e) if e.code == quaver_proto::ErrorCode::NOT_FOUND => Perms(0),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(axum::Json(Permissions {
        bits: perms.0.to_string(),
        names: perms.names().into_iter().map(str::to_string).collect(),
        channel_id: q.channel_id,
    }))
}

/// How many of a guild's members show each status.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuildPresence {
    /// Members.
    pub members: usize,
    /// Not offline (online, idle or do not disturb).
    pub online: usize,
    /// Of them, online.
    pub status_online: usize,
    /// Of them, idle.
    pub status_idle: usize,
    /// Of them, do not disturb.
    pub status_dnd: usize,
}

#[derive(Debug, Deserialize)]
pub(super) struct GuildPath {
    guild_id: Id,
}

/// How many of a guild's members are online, merged across devices and nodes (invisible
/// members count as offline, as everyone sees them).
#[utoipa::path(
    get, path = "/guilds/{guild_id}/presence", tag = "people",
    params(("guild_id" = Id, Path, description = "The guild")),
    responses(
        (status = 200, description = "The counts", body = GuildPresence),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn guild_presence(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
) -> ApiResult<axum::Json<GuildPresence>> {
    caller.need(Scope::PresenceRead)?;
    let members: Vec<u64> = api.chat.guild_state(p.guild_id.0).await?.members.into_keys().collect();
    let n = members.len();
    let seen = api.presence.snapshot(members).await;
    let count = |st: Status| seen.iter().filter(|p| Status::from(p.status) == st).count();
    let (status_online, status_idle, status_dnd) = (count(Status::Online), count(Status::Idle), count(Status::Dnd));
    Ok(axum::Json(GuildPresence {
        members: n,
        online: status_online + status_idle + status_dnd,
        status_online,
        status_idle,
        status_dnd,
    }))
}

/// What deleting a user did.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDeleted {
    /// The user.
    pub user_id: Id,
    /// Guilds they left.
    pub guilds_left: usize,
    /// Sessions this node ended at once (others end theirs as the order reaches them).
    pub sessions_ended_here: usize,
}

/// The name a deleted user's messages show.
pub const DELETED_NAME: &str = "Deleted user";

/// Deletes a user, by this rule: their sessions end at once (4031 `removed`, "this account
/// was deleted") and every token issued until now is refused; they leave every guild
/// (members are told); their profile is gone (`GET` answers 404 until a `PUT` or a new
/// token creates them again); their messages stay where they are, under the name "Deleted user"
/// (deleting them is a separate, explicit choice: bulk delete); DMs and friendships stay
/// as they were. Refused (409 `OWNER`, nothing changed) while they own a guild: delete it or
/// give it another owner first.
#[utoipa::path(
    delete, path = "/users/{user_id}", tag = "people",
    params(("user_id" = Id, Path, description = "The user")),
    responses(
        (status = 200, description = "Deleted", body = UserDeleted),
        (status = 404, description = "Never seen, or deleted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "They own a guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_user(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<axum::Json<UserDeleted>> {
    caller.need(Scope::UsersWrite)?;
    caller.need(Scope::SessionsWrite)?;
    let user = p.user_id.0;
    let store = api.chat.store();
    store
        .live_user_name(user)
        .await?
        .ok_or_else(|| Problem::not_found("user"))?;
    let guilds = store.guild_ids_of(user).await?;
    let mut owned = Vec::new();
    for g in &guilds {
        if api.chat.guild_state(*g).await?.guild.owner_id == user {
            owned.push(g.to_string());
        }
    }
    if !owned.is_empty() {
        return Err(Problem::new(
            quaver_proto::ErrorCode::OWNER.0,
            format!(
                "they own guilds {}: delete them or give them another owner first",
                owned.join(", ")
            ),
        ));
    }
    // Out first (so nothing they do lands after), then kept out.
    let ended = super::sessions::order(
        &api,
        crate::gateway::Order::Disconnect {
            user_id: user,
            session: None,
            reconnect: false,
            reason: "this account was deleted".into(),
        },
    );
    let now = crate::ids::now_ms();
    let revocation = crate::store::Revocation {
        user_id: user,
        before_ms: now,
        jti: String::new(),
    };
    store.revoke(&revocation, now).await?;
    super::sessions::order(&api, crate::gateway::Order::Revoke(revocation));
    for g in &guilds {
        let left = crate::limits::as_server(
            api.chat
                .handle(user, quaver_proto::RequestBody::LeaveGuild { guild_id: *g }),
        )
        .await;
        left.map_err(Problem::from)?;
    }
    store.mark_user_deleted(user, DELETED_NAME, now).await?;
    Ok(axum::Json(UserDeleted {
        user_id: p.user_id,
        guilds_left: guilds.len(),
        sessions_ended_here: ended,
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct PairPath {
    user_id: Id,
    other_id: Id,
}

async fn as_user(api: &Services, user: u64, body: quaver_proto::RequestBody) -> ApiResult<quaver_proto::ResponseBody> {
    crate::limits::as_server(api.chat.handle(user, body))
        .await
        .map_err(Problem::from)
}

/// Runs `request(other_id)` as `user_id` (needs `users:write`): 204 when it succeeds.
async fn pair_request(
    api: &Services,
    caller: &Caller,
    p: &PairPath,
    request: impl FnOnce(u64) -> quaver_proto::RequestBody,
) -> ApiResult<axum::http::StatusCode> {
    caller.need(Scope::UsersWrite)?;
    as_user(api, p.user_id.0, request(p.other_id.0)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Makes two users friends (as if one asked and the other accepted): both are told, and see
/// each other's presence from then on.
#[utoipa::path(
    put, path = "/users/{user_id}/friends/{other_id}", tag = "people",
    params(("user_id" = Id, Path, description = "One user"), ("other_id" = Id, Path, description = "The other")),
    responses(
        (status = 204, description = "Friends (or friends already)"),
        (status = 400, description = "The same user twice", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "One blocked the other", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn befriend(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<PairPath>,
) -> ApiResult<axum::http::StatusCode> {
    use quaver_proto::{RelationshipKind, RequestBody, ResponseBody};
    caller.need(Scope::UsersWrite)?;
    let (a, b) = (p.user_id.0, p.other_id.0);
    let asked = as_user(&api, a, RequestBody::SendFriendRequest { user_id: b }).await?;
    let friends = matches!(&asked, ResponseBody::Relationship(r) if r.kind == RelationshipKind::Friend);
    if !friends {
        as_user(&api, b, RequestBody::AcceptFriendRequest { user_id: a }).await?;
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Ends two users' friendship (both are told).
#[utoipa::path(
    delete, path = "/users/{user_id}/friends/{other_id}", tag = "people",
    params(("user_id" = Id, Path, description = "One user"), ("other_id" = Id, Path, description = "The other")),
    responses(
        (status = 204, description = "No longer friends"),
        (status = 409, description = "They were not friends", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn unfriend(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<PairPath>,
) -> ApiResult<axum::http::StatusCode> {
    pair_request(&api, &caller, &p, |user_id| quaver_proto::RequestBody::RemoveFriend {
        user_id,
    })
    .await
}

/// `user_id` blocks `other_id`, as if they asked (their sessions are told; a friendship or
/// request between them ends): no DMs, friend requests or notifications from them.
#[utoipa::path(
    put, path = "/users/{user_id}/blocks/{other_id}", tag = "people",
    params(("user_id" = Id, Path, description = "Who blocks"), ("other_id" = Id, Path, description = "Whom")),
    responses(
        (status = 204, description = "Blocked (or blocked already)"),
        (status = 400, description = "The same user twice", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn block(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<PairPath>,
) -> ApiResult<axum::http::StatusCode> {
    pair_request(&api, &caller, &p, |user_id| quaver_proto::RequestBody::BlockUser {
        user_id,
    })
    .await
}

/// `user_id` unblocks `other_id` (their sessions are told).
#[utoipa::path(
    delete, path = "/users/{user_id}/blocks/{other_id}", tag = "people",
    params(("user_id" = Id, Path, description = "Who blocked"), ("other_id" = Id, Path, description = "Whom")),
    responses(
        (status = 204, description = "Unblocked"),
        (status = 409, description = "They had not blocked them", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn unblock(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<PairPath>,
) -> ApiResult<axum::http::StatusCode> {
    pair_request(&api, &caller, &p, |user_id| quaver_proto::RequestBody::UnblockUser {
        user_id,
    })
    .await
}
