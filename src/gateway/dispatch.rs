//! Request dispatch: the seam where each capability (chat, presence, typing, voice,
//! notifications) plugs in. A lane's requests are handled in order, one at a time, so a
//! client sees its own requests take effect in the order it sent them.

use quaver_proto::{ErrorBody, ErrorCode, FetchReply, FetchRequest, FetchResponse, Lane, RequestBody, ResponseBody};

use super::SessionHandle;
use crate::Ctx;
use crate::limits::{Kind, Refusal};
use crate::perms::Perms;

/// Largest `Ping` payload echoed.
pub const MAX_PING_BYTES: usize = 1024;

/// Handles one lane request. A `Refusal::Flood` tells the caller to close the session
/// once the reply is queued.
pub async fn request(
    ctx: &Ctx,
    session: &std::sync::Arc<SessionHandle>,
    voice_port: &std::sync::Arc<crate::voice::VoicePort>,
    lane: Lane,
    body: RequestBody,
) -> Result<ResponseBody, Refusal> {
    if let Some(home) = body.lane()
        && home != lane
    {
        return Err(ErrorBody::new(
            ErrorCode::WRONG_LANE,
            format!("this request belongs on the {} lane", home.name()),
        )
        .into());
    }
    let user = session.user;
    match body {
        RequestBody::Ping { data } => {
            if data.len() > MAX_PING_BYTES {
                return Err(
                    ErrorBody::new(ErrorCode::TOO_LARGE, format!("ping data over {MAX_PING_BYTES} bytes")).into(),
                );
            }
            Ok(ResponseBody::Pong { data })
        }
        RequestBody::SetPresence {
            status,
            custom_status,
            activity,
        } => {
            ctx.limiter.check(user, Kind::Presence)?;
            for text in [&custom_status, &activity].into_iter().flatten() {
                if text.chars().count() > 128 || text.chars().any(char::is_control) {
                    return Err(ErrorBody::new(
                        ErrorCode::INVALID_NAME,
                        "status texts are up to 128 printable characters",
                    )
                    .into());
                }
            }
            session.set_chosen(crate::presence::Chosen {
                status,
                custom_status: custom_status.clone(),
                activity: activity.clone(),
            });
            ctx.presence.set(user, session.id, status, custom_status, activity);
            Ok(ResponseBody::Done)
        }
        voice @ (RequestBody::JoinVoice { .. }
        | RequestBody::JoinVoiceWebRtc { .. }
        | RequestBody::LeaveVoice
        | RequestBody::SetVoiceState { .. }
        | RequestBody::ServerMute { .. }
        | RequestBody::ServerDeafen { .. }
        | RequestBody::MoveMember { .. }
        | RequestBody::VoiceStats
        | RequestBody::SetVoiceOptions { .. }) => {
            ctx.limiter.check(user, Kind::Voice)?;
            Ok(voice_request(ctx, session, voice_port, voice).await?)
        }
        RequestBody::ViewChannels { channel_ids } => {
            if let Some(ids) = &channel_ids
                && ids.len() > super::view::MAX_VIEWED
            {
                return Err(ErrorBody::new(
                    ErrorCode::TOO_LARGE,
                    format!("at most {} channels in a view", super::view::MAX_VIEWED),
                )
                .into());
            }
            // Channels the user cannot see are harmless here: a view only narrows what the
            // session is sent. Their guilds decide whose presence it is told in large ones.
            let guilds = match &channel_ids {
                Some(ids) => {
                    let mut guilds = Vec::new();
                    for c in ids {
                        if let Ok(Some(g)) = ctx.chat.channel_guild_of(*c).await {
                            guilds.push(g);
                        }
                    }
                    Some(guilds)
                }
                None => None,
            };
            let large = ctx.chat.large_guilds_of(user).await?;
            let keep = ctx.sessions.set_view(session, channel_ids, guilds, &large);
            super::session::show_kept(ctx.fanout.as_ref(), user, keep);
            Ok(ResponseBody::Done)
        }
        RequestBody::TypingStart { channel_id } => {
            ctx.limiter.check(user, Kind::Typing)?;
            let guild = ctx.chat.check(user, channel_id, Perms::SEND_MESSAGES).await?;
            ctx.typing.start(channel_id, guild, user);
            if ctx.hook_writer.wants("typing.started") {
                let ev = crate::webhooks::catalogue::typing(guild, channel_id, user);
                ctx.hook_writer.record(ev, crate::ids::now_ms());
            }
            Ok(ResponseBody::Done)
        }
        RequestBody::TypingStop { channel_id } => {
            ctx.limiter.check(user, Kind::Typing)?;
            ctx.typing.stop(channel_id, user);
            Ok(ResponseBody::Done)
        }
        RequestBody::WatchTyping { channel_id } => {
            ctx.limiter.check(user, Kind::Typing)?;
            ctx.chat.check(user, channel_id, Perms::VIEW_CHANNEL).await?;
            let user_ids = ctx.typing.typers(channel_id).await;
            Ok(ResponseBody::Typers { channel_id, user_ids })
        }
        chat => {
            let sent_in = match &chat {
                RequestBody::SendMessage { channel_id, .. } => Some(*channel_id),
                _ => None,
            };
            let r = ctx.chat.handle(user, chat).await;
            // Sending a message ends the sender's typing indicator at once.
            if let (Some(channel), Ok(_)) = (sent_in, &r) {
                ctx.typing.stop(channel, user);
            }
            r
        }
    }
}

/// The application's `voice.before_join` hook, when one is configured, for a join the user
/// asked for (once they may join by Quaver's own rules): refused with `REFUSED_BY_APP` and
/// the hook's reason.
async fn voice_hook(ctx: &Ctx, user: u64, channel_id: u64, transport: &str) -> Result<(), ErrorBody> {
    use crate::webhooks::hooks::{HookKind, Verdict};
    if !ctx.hooks.has(HookKind::VoiceBeforeJoin) {
        return Ok(());
    }
    let (guild, _, _) = ctx.chat.voice_access(user, channel_id).await?;
    let data = serde_json::json!({
        "user_id": user.to_string(),
        "channel_id": channel_id.to_string(),
        "guild_id": guild.to_string(),
        "transport": transport,
    });
    match ctx.hooks.ask(HookKind::VoiceBeforeJoin, &data).await {
        Verdict::Deny { reason } => Err(ErrorBody::new(ErrorCode::REFUSED_BY_APP, reason)),
        Verdict::Allow { .. } => Ok(()),
    }
}

/// Largest SDP offer taken (a browser's audio offer is 2–6 KiB).
const MAX_OFFER: usize = 16 * 1024;

/// The voice lane's requests (rate-limited by the caller).
async fn voice_request(
    ctx: &Ctx,
    session: &std::sync::Arc<SessionHandle>,
    voice_port: &std::sync::Arc<crate::voice::VoicePort>,
    body: RequestBody,
) -> Result<ResponseBody, ErrorBody> {
    let user = session.user;
    // A join ends the session's WebRTC participant only once it has succeeded (or been sent
    // to the channel's node): a refused request changes nothing.
    let joined = |r: &Result<ResponseBody, ErrorBody>| {
        matches!(
            r,
            Ok(ResponseBody::VoiceJoined { .. } | ResponseBody::VoiceServer { .. })
        )
    };
    match body {
        RequestBody::JoinVoice {
            channel_id,
            self_mute,
            self_deaf,
        } => {
            voice_hook(ctx, user, channel_id, "datagrams").await?;
            let r = ctx
                .voice
                .join(user, session.id, voice_port, channel_id, self_mute, self_deaf)
                .await;
            if joined(&r)
                && let Some(w) = &ctx.webrtc
            {
                w.session_ended(session.id);
            }
            r
        }
        RequestBody::JoinVoiceWebRtc {
            channel_id,
            self_mute,
            self_deaf,
            offer,
        } => {
            let Some(w) = &ctx.webrtc else {
                return Err(ErrorBody::new(
                    ErrorCode::BAD_REQUEST,
                    "WebRTC is not enabled on this node (--webrtc-listen)",
                ));
            };
            if offer.len() > MAX_OFFER {
                return Err(ErrorBody::new(ErrorCode::TOO_LARGE, "the SDP offer is over 16 KiB"));
            }
            voice_hook(ctx, user, channel_id, "webrtc").await?;
            let (id, port, answer) = w.open(session, channel_id, &offer)?;
            let r = ctx
                .voice
                .join(user, session.id, &port, channel_id, self_mute, self_deaf)
                .await;
            match &r {
                // The new participant replaces any earlier one of this session.
                Ok(ResponseBody::VoiceJoined { .. }) => w.end_others(session.id, Some(id)),
                // Served by another node: the user goes there (and leaves here).
                Ok(ResponseBody::VoiceServer { .. }) => w.session_ended(session.id),
                // Refused: only the peer just made goes; nothing else changes.
                _ => w.discard(session.id, id),
            }
            match r {
                Ok(ResponseBody::VoiceJoined {
                    channel_id,
                    slot,
                    participants,
                }) => Ok(ResponseBody::VoiceJoinedWebRtc {
                    channel_id,
                    slot,
                    participants,
                    answer,
                }),
                other => other,
            }
        }
        RequestBody::LeaveVoice => {
            if let Some(w) = &ctx.webrtc {
                w.session_ended(session.id);
            }
            ctx.voice.leave(user).await;
            Ok(ResponseBody::Done)
        }
        RequestBody::SetVoiceState { self_mute, self_deaf } => ctx.voice.set_self(user, self_mute, self_deaf).await,
        RequestBody::ServerMute {
            guild_id,
            user_id,
            mute,
        } => ctx.voice.set_server(user, guild_id, user_id, Some(mute), None).await,
        RequestBody::ServerDeafen {
            guild_id,
            user_id,
            deaf,
        } => ctx.voice.set_server(user, guild_id, user_id, None, Some(deaf)).await,
        RequestBody::MoveMember {
            guild_id,
            user_id,
            channel_id,
        } => ctx.voice.move_member(user, guild_id, user_id, channel_id).await,
        RequestBody::VoiceStats => ctx.voice.stats(user).await,
        RequestBody::SetVoiceOptions { redundancy } => {
            voice_port.set_redundancy(redundancy);
            Ok(ResponseBody::Done)
        }
        _ => Err(ErrorBody::new(ErrorCode::WRONG_LANE, "not a voice request")),
    }
}

/// Handles one fetch. A `Refusal::Flood` tells the caller to close the session once the
/// reply is written.
pub async fn fetch(ctx: &Ctx, session: &SessionHandle, req: FetchRequest) -> Result<FetchReply, Refusal> {
    match req {
        FetchRequest::ServerInfo => Ok(FetchReply::Ok(FetchResponse::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: ctx.cfg.node_name.clone(),
            protocols: vec![quaver_proto::PROTOCOL_VERSION],
            max_frame_bytes: ctx.cfg.session.max_frame_bytes as u32,
        })),
        other => ctx.chat.fetch(session.user, other).await,
    }
}
