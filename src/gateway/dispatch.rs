//! Request dispatch: the seam where each capability (chat, presence, typing, voice,
//! notifications) plugs in. A lane's requests are handled in order, one at a time, so a
//! client sees its own requests take effect in the order it sent them.

use quaver_proto::{ErrorBody, ErrorCode, FetchReply, FetchRequest, FetchResponse, Lane, RequestBody, ResponseBody};

use quaver_proto::CloseCode;

use super::SessionHandle;
use crate::Ctx;
use crate::chat::Refusal;
use crate::perms::Perms;

/// Largest `Ping` payload echoed.
pub const MAX_PING_BYTES: usize = 1024;

/// Handles one lane request.
pub async fn request(
    ctx: &Ctx,
    session: &SessionHandle,
    voice_port: &std::sync::Arc<crate::voice::VoicePort>,
    lane: Lane,
    body: RequestBody,
) -> Result<ResponseBody, ErrorBody> {
    if let Some(home) = body.lane()
        && home != lane
    {
        return Err(ErrorBody::new(
            ErrorCode::WRONG_LANE,
            format!("this request belongs on the {} lane", home.name()),
        ));
    }
    match body {
        RequestBody::Ping { data } => {
            if data.len() > MAX_PING_BYTES {
                return Err(ErrorBody::new(
                    ErrorCode::TOO_LARGE,
                    format!("ping data over {MAX_PING_BYTES} bytes"),
                ));
            }
            Ok(ResponseBody::Pong { data })
        }
        RequestBody::SetPresence {
            status,
            custom_status,
            activity,
        } => {
            for text in [&custom_status, &activity].into_iter().flatten() {
                if text.chars().count() > 128 || text.chars().any(char::is_control) {
                    return Err(ErrorBody::new(
                        ErrorCode::INVALID_NAME,
                        "status texts are up to 128 printable characters",
                    ));
                }
            }
            ctx.presence
                .set(session.user, session.id, status, custom_status, activity);
            Ok(ResponseBody::Done)
        }
        RequestBody::JoinVoice {
            channel_id,
            self_mute,
            self_deaf,
        } => {
            ctx.voice
                .join(session.user, session.id, voice_port, channel_id, self_mute, self_deaf)
                .await
        }
        RequestBody::LeaveVoice => {
            ctx.voice.leave(session.user).await;
            Ok(ResponseBody::Done)
        }
        RequestBody::SetVoiceState { self_mute, self_deaf } => {
            ctx.voice.set_self(session.user, self_mute, self_deaf).await
        }
        RequestBody::ServerMute {
            guild_id,
            user_id,
            mute,
        } => {
            ctx.voice
                .set_server(session.user, guild_id, user_id, Some(mute), None)
                .await
        }
        RequestBody::ServerDeafen {
            guild_id,
            user_id,
            deaf,
        } => {
            ctx.voice
                .set_server(session.user, guild_id, user_id, None, Some(deaf))
                .await
        }
        RequestBody::MoveMember {
            guild_id,
            user_id,
            channel_id,
        } => ctx.voice.move_member(session.user, guild_id, user_id, channel_id).await,
        RequestBody::VoiceStats => ctx.voice.stats(session.user).await,
        RequestBody::TypingStart { channel_id } => {
            let guild = ctx.chat.check(session.user, channel_id, Perms::SEND_MESSAGES).await?;
            ctx.typing.start(channel_id, guild, session.user);
            Ok(ResponseBody::Done)
        }
        RequestBody::TypingStop { channel_id } => {
            ctx.typing.stop(channel_id, session.user);
            Ok(ResponseBody::Done)
        }
        RequestBody::WatchTyping { channel_id } => {
            ctx.chat.check(session.user, channel_id, Perms::VIEW_CHANNEL).await?;
            let user_ids = ctx.typing.typers(channel_id).await;
            Ok(ResponseBody::Typers { channel_id, user_ids })
        }
        chat => {
            let sent_in = match &chat {
                RequestBody::SendMessage { channel_id, .. } => Some(*channel_id),
                _ => None,
            };
            let r = ctx
                .chat
                .handle(session.user, chat)
                .await
                .map_err(|r| refusal(session, r));
            // Sending a message ends the sender's typing indicator at once.
            if let (Some(channel), Ok(_)) = (sent_in, &r) {
                ctx.typing.stop(channel, session.user);
            }
            r
        }
    }
}

/// A chat refusal as a reply; a flood also closes the session.
fn refusal(session: &SessionHandle, r: Refusal) -> ErrorBody {
    match r {
        Refusal::Error(e) => e,
        Refusal::Flood(e) => {
            session.close(CloseCode::RATE_LIMITED, "kept flooding past rate limits");
            e
        }
    }
}

/// Handles one fetch.
pub async fn fetch(ctx: &Ctx, session: &SessionHandle, req: FetchRequest) -> FetchReply {
    match req {
        FetchRequest::ServerInfo => FetchReply::Ok(FetchResponse::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: ctx.cfg.node_name.clone(),
            protocols: vec![quaver_proto::PROTOCOL_VERSION],
            max_frame_bytes: ctx.cfg.session.max_frame_bytes as u32,
        }),
        other => match ctx.chat.fetch(session.user, other).await {
            Ok(reply) => reply,
            Err(r) => FetchReply::Err(refusal(session, r)),
        },
    }
}
