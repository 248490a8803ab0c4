//! Voice through the API: who is in a voice channel (cluster-wide), and a member's voice
//! moderated with the guild's authority — server mute and deafen, a move to another voice
//! channel (their client follows, as after a moderator's move), out of voice. The node
//! serving the member's voice channel carries it out: this one at once (`200`/`204`), another
//! through the bus (`202`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quaver_proto::ChannelKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath};
use super::types::Id;
use crate::cluster::BusEvent;
use crate::gateway::{Order, VoiceAction};

/// Someone in a voice channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Participant {
    /// The user.
    pub user_id: Id,
    /// The voice channel.
    pub channel_id: Id,
    /// Muted by themself.
    pub self_mute: bool,
    /// Deafened by themself.
    pub self_deaf: bool,
    /// Muted by a moderator (or lacking the speak permission).
    pub server_mute: bool,
    /// Deafened by a moderator.
    pub server_deaf: bool,
    /// Speaking now.
    pub speaking: bool,
}

impl From<quaver_proto::VoiceState> for Participant {
    fn from(s: quaver_proto::VoiceState) -> Self {
        Participant {
            user_id: Id(s.user_id),
            channel_id: Id(s.channel_id),
            self_mute: s.self_mute,
            self_deaf: s.self_deaf,
            server_mute: s.server_mute,
            server_deaf: s.server_deaf,
            speaking: s.speaking,
        }
    }
}

/// Who is in a voice channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Participants {
    /// In slot order.
    pub participants: Vec<Participant>,
}

/// What to do to a member's voice (at least one field).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoiceChange {
    /// Server-mute (true) or unmute.
    #[serde(default)]
    pub server_mute: Option<bool>,
    /// Server-deafen (true) or undeafen.
    #[serde(default)]
    pub server_deaf: Option<bool>,
    /// Move them to this voice channel of the guild.
    #[serde(default)]
    pub channel_id: Option<Id>,
}

/// Where a voice order was carried out.
#[derive(Debug, Serialize, ToSchema)]
pub struct VoiceOrder {
    /// `here` (done), or `bus` (the node serving their channel does it now).
    pub carried_out: &'static str,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelPath {
    channel_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct MemberPath {
    guild_id: Id,
    user_id: Id,
}

/// The voice channels of `guild`.
async fn voice_channels(api: &Services, guild: u64) -> ApiResult<Vec<u64>> {
    let s = api.chat.guild_state(guild).await?;
    Ok(s.channels
        .iter()
        .filter(|c| c.kind == ChannelKind::Voice)
        .map(|c| c.id)
        .collect())
}

/// Who is in a voice channel, on whichever node serves it.
#[utoipa::path(
    get, path = "/voice/channels/{channel_id}/participants", tag = "voice",
    params(("channel_id" = Id, Path, description = "The voice channel")),
    responses(
        (status = 200, description = "Its participants", body = Participants),
        (status = 404, description = "No such voice channel", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn participants(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ChannelPath>,
) -> ApiResult<axum::Json<Participants>> {
    caller.need(Scope::VoiceAdmin)?;
    let channel = p.channel_id.0;
    let guild = api
        .chat
        .channel_guild_of(channel)
        .await?
        .ok_or_else(|| Problem::not_found("voice channel"))?;
    if !voice_channels(&api, guild).await?.contains(&channel) {
        return Err(Problem::not_found("voice channel"));
    }
    let states = api.voice.states_of(&[channel]).await;
    Ok(axum::Json(Participants {
        participants: states.into_iter().map(Participant::from).collect(),
    }))
}

/// Carries `actions` out here, or sends them to the node serving the member's channel:
/// whether it was here.
async fn order(api: &Services, guild: u64, user: u64, actions: Vec<VoiceAction>) -> ApiResult<bool> {
    let mut here = true;
    for (i, action) in actions.iter().enumerate() {
        if api.voice.carry_out(guild, user, *action).await? {
            continue;
        }
        if i > 0 {
            // Moved away meanwhile (by the move just done): the rest goes by the bus too.
            here = false;
        } else {
            let channels = voice_channels(api, guild).await?;
            let states = api.voice.states_of(&channels).await;
            if !states.iter().any(|s| s.user_id == user) {
                return Err(Problem::not_found("member in a voice channel of this guild"));
            }
            here = false;
        }
        for a in &actions[i..] {
            api.bus.publish(BusEvent::Order(Order::Voice {
                guild_id: guild,
                user_id: user,
                action: *a,
            }));
        }
        break;
    }
    Ok(here)
}

fn answer(here: bool, done: StatusCode) -> Response {
    if here {
        (done, axum::Json(VoiceOrder { carried_out: "here" })).into_response()
    } else {
        (StatusCode::ACCEPTED, axum::Json(VoiceOrder { carried_out: "bus" })).into_response()
    }
}

/// Server-mutes, deafens or moves a member in voice (with the guild's authority).
#[utoipa::path(
    patch, path = "/guilds/{guild_id}/voice/{user_id}", tag = "voice",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member")),
    request_body = VoiceChange,
    responses(
        (status = 200, description = "Done", body = VoiceOrder),
        (status = 202, description = "Sent to the node serving their channel", body = VoiceOrder),
        (status = 400, description = "Nothing to change, or a channel of another guild", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guild, or they are not in its voice channels", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn change(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MemberPath>,
    ApiJson(c): ApiJson<VoiceChange>,
) -> ApiResult<Response> {
    caller.need(Scope::VoiceAdmin)?;
    let mut actions = Vec::new();
    if let Some(m) = c.server_mute {
        actions.push(VoiceAction::Mute(m));
    }
    if let Some(d) = c.server_deaf {
        actions.push(VoiceAction::Deafen(d));
    }
    if let Some(ch) = c.channel_id {
        if !voice_channels(&api, p.guild_id.0).await?.contains(&ch.0) {
            return Err(Problem::bad("channel_id", "not a voice channel of this guild"));
        }
        actions.push(VoiceAction::Move(ch.0));
    }
    if actions.is_empty() {
        return Err(Problem::bad(
            "server_mute",
            "give server_mute, server_deaf or channel_id",
        ));
    }
    let here = order(&api, p.guild_id.0, p.user_id.0, actions).await?;
    Ok(answer(here, StatusCode::OK))
}

/// Takes a member out of voice (with the guild's authority).
#[utoipa::path(
    delete, path = "/guilds/{guild_id}/voice/{user_id}", tag = "voice",
    params(("guild_id" = Id, Path, description = "The guild"), ("user_id" = Id, Path, description = "The member")),
    responses(
        (status = 200, description = "Done", body = VoiceOrder),
        (status = 202, description = "Sent to the node serving their channel", body = VoiceOrder),
        (status = 404, description = "No such guild, or they are not in its voice channels", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn disconnect(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MemberPath>,
) -> ApiResult<Response> {
    caller.need(Scope::VoiceAdmin)?;
    let here = order(&api, p.guild_id.0, p.user_id.0, vec![VoiceAction::Disconnect]).await?;
    Ok(answer(here, StatusCode::OK))
}
