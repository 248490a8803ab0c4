//! Request dispatch: the seam where each capability (chat, presence, typing, voice,
//! notifications) plugs in. A lane's requests are handled in order, one at a time, so a
//! client sees its own requests take effect in the order it sent them.

use quaver_proto::{ErrorBody, ErrorCode, FetchReply, FetchRequest, FetchResponse, Lane, RequestBody, ResponseBody};

use quaver_proto::CloseCode;

use super::SessionHandle;
use crate::Ctx;
use crate::chat::Refusal;

/// Largest `Ping` payload echoed.
pub const MAX_PING_BYTES: usize = 1024;

/// Handles one lane request.
pub async fn request(
    ctx: &Ctx,
    session: &SessionHandle,
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
        chat => ctx
            .chat
            .handle(session.user, chat)
            .await
            .map_err(|r| refusal(session, r)),
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
