//! Guilds through the API, with the guild's authority (its owner's: every permission, above
//! every member): create one for an owner, rename or delete it, add members without an
//! invite, kick, ban and unban, create and delete channels and roles, assign roles, make
//! invites. Each is the chat request the owner's client would send — the same checks of
//! what is valid, the same events to everyone who sees the guild.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quaver_proto::{ChannelKind, ErrorCode, RequestBody, ResponseBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::types::{Bits, Id};
use crate::limits::as_server;

/// A guild.
#[derive(Debug, Serialize, ToSchema)]
pub struct Guild {
    /// Its id.
    pub id: Id,
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner_id: Id,
}

impl From<quaver_proto::Guild> for Guild {
    fn from(g: quaver_proto::Guild) -> Self {
        Guild {
            id: Id(g.id),
            name: g.name,
            owner_id: Id(g.owner_id),
        }
    }
}

/// A channel's kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Messages.
    Text,
    /// Talk.
    Voice,
    /// A DM.
    Dm,
    /// A group DM.
    GroupDm,
}

impl From<ChannelKind> for Kind {
    fn from(k: ChannelKind) -> Self {
        match k {
            ChannelKind::Text => Kind::Text,
            ChannelKind::Voice => Kind::Voice,
            ChannelKind::Dm => Kind::Dm,
            ChannelKind::GroupDm => Kind::GroupDm,
        }
    }
}

/// A channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Channel {
    /// Its id.
    pub id: Id,
    /// Its guild (none for DMs).
    pub guild_id: Option<Id>,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its topic.
    pub topic: String,
    /// Where its events stand (the seq of the latest).
    pub last_seq: u64,
    /// Voice: most participants (0: no limit).
    pub user_limit: u32,
}

impl From<quaver_proto::Channel> for Channel {
    fn from(c: quaver_proto::Channel) -> Self {
        Channel {
            id: Id(c.id),
            guild_id: c.guild_id.map(Id),
            kind: c.kind.into(),
            name: c.name,
            topic: c.topic,
            last_seq: c.last_seq,
            user_limit: c.user_limit,
        }
    }
}

/// A role.
#[derive(Debug, Serialize, ToSchema)]
pub struct Role {
    /// Its id (`@everyone`'s is the guild's).
    pub id: Id,
    /// Its name.
    pub name: String,
    /// Its permission bits, as a decimal string.
    pub permissions: String,
    /// Its place in the hierarchy (`@everyone` is 0).
    pub position: u32,
}

impl From<quaver_proto::Role> for Role {
    fn from(r: quaver_proto::Role) -> Self {
        Role {
            id: Id(r.id),
            name: r.name,
            permissions: r.permissions.to_string(),
            position: r.position,
        }
    }
}

/// A guild with its channels and roles.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuildDetails {
    /// The guild.
    pub guild: Guild,
    /// Every channel.
    pub channels: Vec<Channel>,
    /// Every role.
    pub roles: Vec<Role>,
    /// How many members.
    pub member_count: usize,
}

/// A member.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// The user.
    pub user_id: Id,
    /// Their name.
    pub name: String,
    /// Their roles.
    pub roles: Vec<Id>,
    /// Their avatar (`https://`), or null.
    pub avatar_url: Option<String>,
    /// While they are timed out: when it ends (Unix ms); null otherwise.
    pub timed_out_until_ms: Option<u64>,
}

/// A page of members (by user id).
#[derive(Debug, Serialize, ToSchema)]
pub struct Members {
    /// The members.
    pub members: Vec<Member>,
}

/// A new guild.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGuild {
    /// 1–100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Who owns it (its first member).
    pub owner_id: Id,
}

/// A guild's new name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// 1–100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
}

/// The kind of a guild channel.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuildKind {
    /// Messages.
    Text,
    /// Talk.
    Voice,
}

/// A new channel.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    /// `text` or `voice`.
    pub kind: GuildKind,
    /// 1–100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Up to 1,024 characters.
    #[serde(default)]
    #[schema(max_length = 1024, pattern = r"^[^\x00-\x09\x0b-\x1f\x7f-\x9f]*$")]
    pub topic: String,
    /// Voice: most participants (0–99; 0: no limit).
    #[serde(default)]
    #[schema(maximum = 99)]
    pub user_limit: u32,
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    /// 1–100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Permission bits, as a decimal string (default none: what `@everyone` allows).
    #[serde(default)]
    pub permissions: Bits,
}

/// A ban.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// Why (kept with the ban; up to 512 characters).
    #[serde(default)]
    #[schema(max_length = 512)]
    pub reason: String,
}

/// A new invite.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// Uses before it is spent (0: no limit).
    #[serde(default)]
    pub max_uses: u32,
    /// Seconds it works (0: forever; at most a year).
    #[serde(default)]
    #[schema(maximum = 31_536_000)]
    pub max_age_secs: u32,
}

/// An invite.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invite {
    /// The code (the web app's link is `/#invite=<code>`).
    pub code: String,
    /// Its guild.
    pub guild_id: Id,
    /// Uses before it is spent (0: no limit).
    pub max_uses: u32,
    /// When it stops working, Unix ms.
    pub expires_at_ms: Option<u64>,
}

/// Where a page of members starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// Members with a user id above this.
    pub after: Option<Id>,
    /// At most 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct GuildPath {
    guild_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct GuildUserPath {
    guild_id: Id,
    user_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct MemberRolePath {
    guild_id: Id,
    user_id: Id,
    role_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelPath {
    channel_id: Id,
}

/// Runs a chat request with `guild`'s authority (its owner's), under the API's limits.
async fn as_owner(api: &Services, guild: u64, body: RequestBody) -> ApiResult<ResponseBody> {
    let owner = api.chat.guild_state(guild).await?.guild.owner_id;
    as_server(api.chat.handle(owner, body)).await.map_err(Problem::from)
}

/// Refuses (409 `OWNER`) an action that would remove `user` if they own `guild`.
async fn not_the_owner(api: &Services, guild: u64, user: u64, what: &str) -> ApiResult<()> {
    if api.chat.guild_state(guild).await?.guild.owner_id == user {
        return Err(Problem::new(
            ErrorCode::OWNER.0,
            format!("the owner cannot be {what}; delete the guild or give it another owner first"),
        ));
    }
    Ok(())
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

/// Creates a guild for `owner_id` (with `@everyone` and a `general` channel).
#[utoipa::path(
    post, path = "/guilds", tag = "guilds",
    request_body = NewGuild,
    responses(
        (status = 201, description = "Created", body = Guild),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_guild(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(g): ApiJson<NewGuild>,
) -> ApiResult<Response> {
    caller.need(Scope::GuildsWrite)?;
    let r = as_server(api.chat.handle(g.owner_id.0, RequestBody::CreateGuild { name: g.name })).await;
    match r.map_err(Problem::from)? {
        ResponseBody::Guild(g) => Ok(created(Guild::from(g))),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

/// A guild with every channel and role.
#[utoipa::path(
    get, path = "/guilds/{guild_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    responses(
        (status = 200, description = "The guild", body = GuildDetails),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get_guild(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
) -> ApiResult<axum::Json<GuildDetails>> {
    caller.need(Scope::GuildsRead)?;
    let s = api.chat.guild_state(p.guild_id.0).await?;
    Ok(axum::Json(GuildDetails {
        guild: s.guild.into(),
        channels: s.channels.into_iter().map(Channel::from).collect(),
        roles: s.roles.into_iter().map(Role::from).collect(),
        member_count: s.members.len(),
    }))
}

/// Renames a guild.
#[utoipa::path(
    patch, path = "/guilds/{guild_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    request_body = Rename,
    responses(
        (status = 200, description = "Renamed", body = Guild),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn rename_guild(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
    ApiJson(r): ApiJson<Rename>,
) -> ApiResult<axum::Json<Guild>> {
    caller.need(Scope::GuildsWrite)?;
    let body = RequestBody::RenameGuild {
        guild_id: p.guild_id.0,
        name: r.name,
    };
    match as_owner(&api, p.guild_id.0, body).await? {
        ResponseBody::Guild(g) => Ok(axum::Json(g.into())),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

/// Deletes a guild with everything in it.
#[utoipa::path(
    delete, path = "/guilds/{guild_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_guild(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    as_owner(&api, p.guild_id.0, RequestBody::DeleteGuild { guild_id: p.guild_id.0 }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A page of a guild's members.
#[utoipa::path(
    get, path = "/guilds/{guild_id}/members", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), MembersQuery),
    responses(
        (status = 200, description = "The members", body = Members),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn members(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
    ApiQuery(q): ApiQuery<MembersQuery>,
) -> ApiResult<axum::Json<Members>> {
    caller.need(Scope::GuildsRead)?;
    api.chat.guild_state(p.guild_id.0).await?;
    let members = api
        .chat
        .store()
        .members(
            p.guild_id.0,
            q.after.map_or(0, |a| a.0),
            super::types::page_limit(q.limit, 100, 1000)?,
        )
        .await?;
    Ok(axum::Json(Members {
        members: members
            .into_iter()
            .map(|m| Member {
                user_id: Id(m.user_id),
                name: m.name,
                roles: m.roles.into_iter().map(Id).collect(),
                avatar_url: (!m.avatar_url.is_empty()).then_some(m.avatar_url),
                timed_out_until_ms: (m.timed_out_until_ms > 0).then_some(m.timed_out_until_ms),
            })
            .collect(),
    }))
}

/// Adds a user to a guild, without an invite (they are told, and see it at once).
#[utoipa::path(
    put, path = "/guilds/{guild_id}/members/{user_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The user")),
    responses(
        (status = 201, description = "Added"),
        (status = 204, description = "A member already"),
        (status = 403, description = "Banned there", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn add_member(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    let added = api.chat.add_member(p.guild_id.0, p.user_id.0).await?;
    Ok(if added {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// Removes a member (a kick).
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/members/{user_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such guild or member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The owner cannot be removed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn kick(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::Moderation)?;
    not_the_owner(&api, p.guild_id.0, p.user_id.0, "kicked").await?;
    let body = RequestBody::KickMember {
        guild_id: p.guild_id.0,
        user_id: p.user_id.0,
    };
    as_owner(&api, p.guild_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bans a user from a guild (removed if a member; no invite brings them back).
#[utoipa::path(
    put, path = "/guilds/{guild_id}/bans/{user_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The user")),
    request_body = Ban,
    responses(
        (status = 204, description = "Banned"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The owner cannot be banned", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn ban(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
    ApiJson(b): ApiJson<Ban>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::Moderation)?;
    if b.reason.chars().count() > 512 {
        return Err(Problem::bad("reason", "a ban's reason is at most 512 characters"));
    }
    not_the_owner(&api, p.guild_id.0, p.user_id.0, "banned").await?;
    let body = RequestBody::BanMember {
        guild_id: p.guild_id.0,
        user_id: p.user_id.0,
        reason: b.reason,
    };
    as_owner(&api, p.guild_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban.
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/bans/{user_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The user")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "No such guild, or no ban", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn unban(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::Moderation)?;
    if api.chat.unban(p.guild_id.0, p.user_id.0).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("ban"))
    }
}

/// Creates a channel.
#[utoipa::path(
    post, path = "/guilds/{guild_id}/channels", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    request_body = NewChannel,
    responses(
        (status = 201, description = "Created (everyone who can see it is told)", body = Channel),
        (status = 400, description = "Invalid name, topic, kind or limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_channel(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
    ApiJson(c): ApiJson<NewChannel>,
) -> ApiResult<Response> {
    caller.need(Scope::GuildsWrite)?;
    let kind = match c.kind {
        GuildKind::Text => ChannelKind::Text,
        GuildKind::Voice => ChannelKind::Voice,
    };
    let body = RequestBody::CreateChannel {
        guild_id: p.guild_id.0,
        kind,
        name: c.name,
        topic: c.topic,
        user_limit: c.user_limit,
    };
    match as_owner(&api, p.guild_id.0, body).await? {
        ResponseBody::Channel(c) => Ok(created(Channel::from(c))),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

/// Deletes a channel (and its messages).
#[utoipa::path(
    delete, path = "/channels/{channel_id}", tag = "guilds",
    params(("channel_id" = Id, Path, description = "The channel")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such guild channel", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_channel(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ChannelPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    let Some(guild) = api.chat.channel_guild_of(p.channel_id.0).await? else {
        return Err(Problem::not_found("guild channel"));
    };
    as_owner(
        &api,
        guild,
        RequestBody::DeleteChannel {
            channel_id: p.channel_id.0,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a role (just above `@everyone`).
#[utoipa::path(
    post, path = "/guilds/{guild_id}/roles", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    request_body = NewRole,
    responses(
        (status = 201, description = "Created", body = Role),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_role(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
    ApiJson(r): ApiJson<NewRole>,
) -> ApiResult<Response> {
    caller.need(Scope::GuildsWrite)?;
    let body = RequestBody::CreateRole {
        guild_id: p.guild_id.0,
        name: r.name,
        permissions: r.permissions.0,
    };
    match as_owner(&api, p.guild_id.0, body).await? {
        ResponseBody::Role(r) => Ok(created(Role::from(r))),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

async fn set_role(api: &Services, p: MemberRolePath, add: bool) -> ApiResult<StatusCode> {
    let body = RequestBody::SetMemberRole {
        guild_id: p.guild_id.0,
        user_id: p.user_id.0,
        role_id: p.role_id.0,
        add,
    };
    as_owner(api, p.guild_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a member a role.
#[utoipa::path(
    put, path = "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member"), ("role_id" = Id, Path, description = "The role")),
    responses(
        (status = 204, description = "Given"),
        (status = 404, description = "No such guild, member or role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn add_role(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MemberRolePath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    set_role(&api, p, true).await
}

/// Takes a role from a member.
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member"), ("role_id" = Id, Path, description = "The role")),
    responses(
        (status = 204, description = "Taken"),
        (status = 404, description = "No such guild, member or role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn remove_role(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MemberRolePath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    set_role(&api, p, false).await
}

/// Makes an invite.
#[utoipa::path(
    post, path = "/guilds/{guild_id}/invites", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild")),
    request_body = NewInvite,
    responses(
        (status = 201, description = "Made", body = Invite),
        (status = 404, description = "No such guild", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create_invite(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildPath>,
    ApiJson(i): ApiJson<NewInvite>,
) -> ApiResult<Response> {
    caller.need(Scope::GuildsWrite)?;
    if i.max_age_secs > 31_536_000 {
        return Err(Problem::bad(
            "max_age_secs",
            "at most a year (31,536,000 seconds); 0 for forever",
        ));
    }
    let body = RequestBody::CreateInvite {
        guild_id: p.guild_id.0,
        max_uses: i.max_uses,
        max_age_secs: i.max_age_secs,
    };
    match as_owner(&api, p.guild_id.0, body).await? {
        ResponseBody::Invite(i) => Ok(created(Invite {
            code: i.code,
            guild_id: Id(i.guild_id),
            max_uses: i.max_uses,
            expires_at_ms: i.expires_at_ms,
        })),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

/// A role's new name and permissions (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    /// 1–100 characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    /// Permission bits.
    #[serde(default)]
    pub permissions: Option<Bits>,
    /// Its place in the hierarchy: 1 is just above `@everyone`, higher is more senior; past
    /// the top means the top. The roles in between shift by one (each is reported to
    /// clients and webhooks as updated).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub position: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RolePath {
    guild_id: Id,
    role_id: Id,
}

/// Renames a role or sets its permissions (every member's are recomputed; clients are told).
#[utoipa::path(
    patch, path = "/guilds/{guild_id}/roles/{role_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("role_id" = Id, Path, description = "The role")),
    request_body = RoleUpdate,
    responses(
        (status = 200, description = "The role now", body = Role),
        (status = 404, description = "No such guild or role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn update_role(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<RolePath>,
    ApiJson(u): ApiJson<RoleUpdate>,
) -> ApiResult<Response> {
    caller.need(Scope::GuildsWrite)?;
    if u.name.is_none() && u.permissions.is_none() && u.position.is_none() {
        return Err(Problem::bad("name", "give name, permissions, position, or several"));
    }
    if u.position == Some(0) {
        return Err(Problem::bad("position", "position 0 is @everyone's; roles start at 1"));
    }
    if u.position.is_some() && p.role_id == p.guild_id {
        return Err(Problem::bad("position", "@everyone stays at the bottom"));
    }
    let state = api.chat.guild_state(p.guild_id.0).await?;
    let role = state
        .roles
        .iter()
        .find(|r| r.id == p.role_id.0)
        .ok_or_else(|| Problem::not_found("role"))?;
    let mut now = role.clone();
    if u.name.is_some() || u.permissions.is_some() {
        let body = RequestBody::UpdateRole {
            guild_id: p.guild_id.0,
            role_id: p.role_id.0,
            name: u.name.unwrap_or_else(|| role.name.clone()),
            permissions: u.permissions.map_or(role.permissions, |b| b.0),
        };
        now = role_of(as_owner(&api, p.guild_id.0, body).await?)?;
    }
    if let Some(position) = u.position {
        let body = RequestBody::MoveRole {
            guild_id: p.guild_id.0,
            role_id: p.role_id.0,
            position,
        };
        now = role_of(as_owner(&api, p.guild_id.0, body).await?)?;
    }
    Ok(axum::Json(Role::from(now)).into_response())
}

fn role_of(answer: ResponseBody) -> ApiResult<quaver_proto::Role> {
    match answer {
        ResponseBody::Role(r) => Ok(r),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}

/// Deletes a role: members lose it, and the channel overwrites naming it go.
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/roles/{role_id}", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("role_id" = Id, Path, description = "The role")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`@everyone` cannot be deleted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild or role", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_role(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<RolePath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    if p.role_id == p.guild_id {
        return Err(Problem::bad("role_id", "@everyone cannot be deleted"));
    }
    let body = RequestBody::DeleteRole {
        guild_id: p.guild_id.0,
        role_id: p.role_id.0,
    };
    as_owner(&api, p.guild_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How long a member is timed out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// 1 second to 28 days.
    #[schema(minimum = 1, maximum = 2419200)]
    pub seconds: u32,
    /// Why (up to 512 characters; in the `member.timed_out` webhook).
    #[serde(default)]
    #[schema(max_length = 512)]
    pub reason: String,
}

/// Times a member out: until it ends they may read but not send, react, or be in voice
/// (they are taken out of voice at once). A timeout outlives leaving and rejoining.
#[utoipa::path(
    put, path = "/guilds/{guild_id}/members/{user_id}/timeout", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member")),
    request_body = Timeout,
    responses(
        (status = 204, description = "Timed out (a timeout already running is replaced)"),
        (status = 400, description = "Bad duration or reason", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An administrator cannot be timed out", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild or member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The owner cannot be timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn timeout(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
    ApiJson(t): ApiJson<Timeout>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::Moderation)?;
    if t.seconds == 0 || t.seconds > crate::chat::MAX_TIMEOUT_SECS {
        return Err(Problem::bad("seconds", "a timeout lasts 1 second to 28 days (2419200)"));
    }
    if t.reason.chars().count() > 512 {
        return Err(Problem::bad("reason", "a timeout's reason is at most 512 characters"));
    }
    set_timeout(&api, &p, t.seconds, t.reason).await
}

/// Lifts a member's timeout (whether or not one was running).
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/members/{user_id}/timeout", tag = "guilds",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member")),
    responses(
        (status = 204, description = "No timeout now"),
        (status = 404, description = "No such guild or member", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn lift_timeout(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<GuildUserPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::Moderation)?;
    set_timeout(&api, &p, 0, String::new()).await
}

async fn set_timeout(api: &Services, p: &GuildUserPath, seconds: u32, reason: String) -> ApiResult<StatusCode> {
    not_the_owner(api, p.guild_id.0, p.user_id.0, "timed out").await?;
    let body = RequestBody::TimeoutMember {
        guild_id: p.guild_id.0,
        user_id: p.user_id.0,
        duration_secs: seconds,
        reason,
    };
    as_owner(api, p.guild_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whom an overwrite applies to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum TargetKind {
    Role,
    Member,
}

#[derive(Debug, Deserialize)]
pub(super) struct OverwritePath {
    channel_id: Id,
    kind: TargetKind,
    target_id: Id,
}

/// A channel's permission overwrite for a role or a member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverwriteBits {
    /// Bits allowed there.
    #[serde(default)]
    pub allow: Bits,
    /// Bits denied there.
    #[serde(default)]
    pub deny: Bits,
}

fn overwrite_target(p: &OverwritePath) -> quaver_proto::OverwriteTarget {
    match p.kind {
        TargetKind::Role => quaver_proto::OverwriteTarget::Role(p.target_id.0),
        TargetKind::Member => quaver_proto::OverwriteTarget::Member(p.target_id.0),
    }
}

async fn guild_of_channel(api: &Services, channel: u64) -> ApiResult<u64> {
    api.chat
        .channel_guild_of(channel)
        .await?
        .ok_or_else(|| Problem::not_found("guild channel"))
}

/// Sets a channel's permission overwrite for a role (`@everyone` is the guild's id) or a
/// member: who can see and do what there.
#[utoipa::path(
    put, path = "/channels/{channel_id}/overwrites/{kind}/{target_id}", tag = "guilds",
    params(
        ("channel_id" = Id, Path, description = "The guild channel"),
        ("kind" = String, Path, description = "`role` or `member`", pattern = "^(role|member)$"),
        ("target_id" = Id, Path, description = "The role or the member"),
    ),
    request_body = OverwriteBits,
    responses(
        (status = 204, description = "Set (those who gain or lose the channel are told)"),
        (status = 404, description = "No such guild channel, role or member", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn set_overwrite(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<OverwritePath>,
    ApiJson(b): ApiJson<OverwriteBits>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    let guild = guild_of_channel(&api, p.channel_id.0).await?;
    let body = RequestBody::SetOverwrite {
        channel_id: p.channel_id.0,
        target: overwrite_target(&p),
        allow: b.allow.0,
        deny: b.deny.0,
    };
    as_owner(&api, guild, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a channel's permission overwrite.
#[utoipa::path(
    delete, path = "/channels/{channel_id}/overwrites/{kind}/{target_id}", tag = "guilds",
    params(
        ("channel_id" = Id, Path, description = "The guild channel"),
        ("kind" = String, Path, description = "`role` or `member`", pattern = "^(role|member)$"),
        ("target_id" = Id, Path, description = "The role or the member"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such guild channel or overwrite", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete_overwrite(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<OverwritePath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::GuildsWrite)?;
    let guild = guild_of_channel(&api, p.channel_id.0).await?;
    let body = RequestBody::DeleteOverwrite {
        channel_id: p.channel_id.0,
        target: overwrite_target(&p),
    };
    as_owner(&api, guild, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A DM or a group DM to open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDm {
    /// 2–10 users: two open (or find) their DM; more make a group DM, opened by the first.
    #[schema(min_items = 2, max_items = 10)]
    pub user_ids: Vec<Id>,
    /// A group DM's name (0–100 characters).
    #[serde(default)]
    #[schema(max_length = 100)]
    pub name: String,
}

/// Opens the DM of two users (the same one again if it exists), or makes a group DM — as the
/// first user, with the rules their client would meet (no DM with someone who blocked them).
#[utoipa::path(
    post, path = "/dms", tag = "guilds",
    request_body = NewDm,
    responses(
        (status = 200, description = "The channel", body = Channel),
        (status = 400, description = "Fewer than 2 or more than 10 users, or twice the same", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Blocked", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn open_dm(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(d): ApiJson<NewDm>,
) -> ApiResult<axum::Json<Channel>> {
    caller.need(Scope::GuildsWrite)?;
    let users: Vec<u64> = d.user_ids.iter().map(|u| u.0).collect();
    let mut unique = users.clone();
    unique.sort_unstable();
    unique.dedup();
    if users.len() < 2 || users.len() > 10 || unique.len() != users.len() {
        return Err(Problem::bad("user_ids", "2 to 10 different users"));
    }
    let body = if users.len() == 2 {
        RequestBody::OpenDm { user_id: users[1] }
    } else {
        RequestBody::CreateGroupDm {
            user_ids: users[1..].to_vec(),
            name: d.name,
        }
    };
    match as_server(api.chat.handle(users[0], body))
        .await
        .map_err(Problem::from)?
    {
        ResponseBody::Channel(c) => Ok(axum::Json(Channel::from(c))),
        _ => Err(Problem::new(ErrorCode::INTERNAL.0, "unexpected answer")),
    }
}
