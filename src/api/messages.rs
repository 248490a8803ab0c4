//! Messages and reactions through the API: posted, edited and reacted to as a user (a bot is
//! a user too — give it a name with `PUT /users/{id}` and add it to guilds), permission-
//! checked as that user; deleted with moderation (the guild's authority) or as their
//! author; history read with the server's authority. Each change is the chat request a
//! client would send, so it is stored, sequenced and delivered the same way.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use quaver_proto::{ErrorCode, HistoryAnchor, RequestBody, ResponseBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::types::{Id, Message};
use crate::limits::as_server;

/// A new message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Who writes it: any user (a bot is a user), who must be able to send in the channel.
    pub author_id: Id,
    /// 1–4,000 characters; mention with `<@user id>`.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"
    )]
    pub content: String,
    /// The author's nonce: the same nonce again gets the first message back (with
    /// `Idempotency-Key` or without). Default: a fresh one.
    #[serde(default)]
    pub nonce: Option<Id>,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<Id>,
}

/// A new text for a message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// 1–4,000 characters.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"
    )]
    pub content: String,
}

/// A page of history.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Messages in seq order (deleted ones as tombstones).
    pub messages: Vec<Message>,
    /// Older messages exist.
    pub more_before: bool,
    /// Newer messages exist.
    pub more_after: bool,
}

/// Where a page of history starts (at most one; none: the latest).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Messages with seq below this.
    pub before: Option<u64>,
    /// Messages with seq above this.
    pub after: Option<u64>,
    /// Messages around this seq.
    pub around: Option<u64>,
    /// At most 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelPath {
    channel_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct MessagePath {
    channel_id: Id,
    message_id: Id,
}

#[derive(Debug, Deserialize)]
pub(super) struct ReactionPath {
    channel_id: Id,
    message_id: Id,
    emoji: String,
    user_id: Id,
}

/// Runs a chat request as `user`, with the API's limits (its key's), not the user's.
async fn as_user(api: &Services, user: u64, body: RequestBody) -> ApiResult<ResponseBody> {
    as_server(api.chat.handle(user, body)).await.map_err(Problem::from)
}

/// Posts a message as `author_id`.
#[utoipa::path(
    post, path = "/channels/{channel_id}/messages", tag = "messages",
    params(("channel_id" = Id, Path, description = "The channel")),
    request_body = NewMessage,
    responses(
        (status = 201, description = "Stored, sequenced and delivered", body = Message),
        (status = 200, description = "This author's nonce was used before: the first message", body = Message),
        (status = 400, description = "Invalid content or field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The author may not send here", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such channel (or the author cannot see it)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ChannelPath>,
    ApiJson(m): ApiJson<NewMessage>,
) -> ApiResult<Response> {
    caller.need(Scope::MessagesWrite)?;
    let nonce = m.nonce.map_or_else(|| api.chat.id(), |n| n.0);
    let sent = api.chat.send_message(
        m.author_id.0,
        p.channel_id.0,
        nonce,
        m.content,
        m.reply_to.map(|r| r.0),
        crate::ids::now_ms(),
    );
    // The message as stored comes back with the send: no second read.
    let (message, duplicate) = as_server(sent).await.map_err(Problem::from)?;
    let status = if duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, axum::Json(Message::from(message))).into_response())
}

/// Reads a page of a channel's history (with the server's authority: any channel).
#[utoipa::path(
    get, path = "/channels/{channel_id}/messages", tag = "messages",
    params(("channel_id" = Id, Path, description = "The channel"), HistoryQuery),
    responses(
        (status = 200, description = "The page", body = Page),
        (status = 400, description = "More than one of before, after, around", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such channel", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn history(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ChannelPath>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<axum::Json<Page>> {
    caller.need(Scope::MessagesRead)?;
    let anchor = match (q.before, q.after, q.around) {
        (None, None, None) => HistoryAnchor::Latest,
        (Some(s), None, None) => HistoryAnchor::Before(s),
        (None, Some(s), None) => HistoryAnchor::After(s),
        (None, None, Some(s)) => HistoryAnchor::Around(s),
        _ => return Err(Problem::bad("before", "give at most one of before, after, around")),
    };
    // The channel must exist (its authority is found).
    api.chat.authority(p.channel_id.0).await?;
    let (messages, more_before, more_after) = api
        .chat
        .store()
        .history(p.channel_id.0, anchor, super::types::page_limit(q.limit, 50, 100)?)
        .await?;
    Ok(axum::Json(Page {
        messages: messages.into_iter().map(Message::from).collect(),
        more_before,
        more_after,
    }))
}

/// Edits a message, as its author.
#[utoipa::path(
    patch, path = "/channels/{channel_id}/messages/{message_id}", tag = "messages",
    params(("channel_id" = Id, Path, description = "The channel"), ("message_id" = Id, Path, description = "The message")),
    request_body = Edit,
    responses(
        (status = 200, description = "Edited (a channel event with its seq)", body = Message),
        (status = 400, description = "Invalid content", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn edit(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MessagePath>,
    ApiJson(e): ApiJson<Edit>,
) -> ApiResult<axum::Json<Message>> {
    caller.need(Scope::MessagesWrite)?;
    let m = api.chat.store().message(p.channel_id.0, p.message_id.0).await?;
    if m.deleted {
        return Err(Problem::not_found("message"));
    }
    let body = RequestBody::EditMessage {
        channel_id: p.channel_id.0,
        message_id: p.message_id.0,
        content: e.content,
    };
    as_user(&api, m.author_id, body).await?;
    Ok(axum::Json(
        api.chat.store().message(p.channel_id.0, p.message_id.0).await?.into(),
    ))
}

/// Deletes a message: with `moderation`, with the guild's authority; with `messages:write`,
/// as its author.
#[utoipa::path(
    delete, path = "/channels/{channel_id}/messages/{message_id}", tag = "messages",
    params(("channel_id" = Id, Path, description = "The channel"), ("message_id" = Id, Path, description = "The message")),
    responses(
        (status = 204, description = "Deleted (a channel event with its seq)"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<MessagePath>,
) -> ApiResult<StatusCode> {
    if caller.need(Scope::Moderation).is_err() {
        caller.need(Scope::MessagesWrite)?;
    }
    let m = api.chat.store().message(p.channel_id.0, p.message_id.0).await?;
    if m.deleted {
        return Err(Problem::not_found("message"));
    }
    let actor = match api.chat.authority(p.channel_id.0).await? {
        Some(owner) if caller.need(Scope::Moderation).is_ok() => owner,
        _ => m.author_id,
    };
    let body = RequestBody::DeleteMessage {
        channel_id: p.channel_id.0,
        message_id: p.message_id.0,
    };
    as_user(&api, actor, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds `user_id`'s reaction (permission-checked as them).
#[utoipa::path(
    put, path = "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user_id}", tag = "messages",
    params(
        ("channel_id" = Id, Path, description = "The channel"), ("message_id" = Id, Path, description = "The message"),
        ("emoji" = String, Path, description = "One emoji (URL-encoded)"), ("user_id" = Id, Path, description = "Who reacts"),
    ),
    responses(
        (status = 204, description = "Added (or there already)"),
        (status = 400, description = "Not an emoji", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn add_reaction(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ReactionPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::MessagesWrite)?;
    let body = RequestBody::AddReaction {
        channel_id: p.channel_id.0,
        message_id: p.message_id.0,
        emoji: p.emoji,
    };
    as_user(&api, p.user_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes `user_id`'s reaction.
#[utoipa::path(
    delete, path = "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user_id}", tag = "messages",
    params(
        ("channel_id" = Id, Path, description = "The channel"), ("message_id" = Id, Path, description = "The message"),
        ("emoji" = String, Path, description = "One emoji (URL-encoded)"), ("user_id" = Id, Path, description = "Whose reaction"),
    ),
    responses(
        (status = 204, description = "Removed (or not there)"),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn remove_reaction(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ReactionPath>,
) -> ApiResult<StatusCode> {
    caller.need(Scope::MessagesWrite)?;
    let body = RequestBody::RemoveReaction {
        channel_id: p.channel_id.0,
        message_id: p.message_id.0,
        emoji: p.emoji,
    };
    as_user(&api, p.user_id.0, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Messages to delete at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// 1–100 messages of the channel.
    #[schema(min_items = 1, max_items = 100)]
    pub message_ids: Vec<Id>,
}

/// What a bulk delete did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDeleted {
    /// Deleted now (each a channel event with its seq).
    pub deleted: Vec<Id>,
    /// Not there (never, or deleted already).
    pub not_found: Vec<Id>,
}

/// Deletes up to 100 messages of a guild channel with the guild's authority (moderation).
#[utoipa::path(
    post, path = "/channels/{channel_id}/messages/bulk-delete", tag = "messages",
    params(("channel_id" = Id, Path, description = "The channel")),
    request_body = BulkDelete,
    responses(
        (status = 200, description = "What was deleted and what was not there", body = BulkDeleted),
        (status = 400, description = "None, over 100, or a DM", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such channel", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn bulk_delete(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<ChannelPath>,
    ApiJson(b): ApiJson<BulkDelete>,
) -> ApiResult<axum::Json<BulkDeleted>> {
    caller.need(Scope::Moderation)?;
    if b.message_ids.is_empty() || b.message_ids.len() > 100 {
        return Err(Problem::bad("message_ids", "delete 1 to 100 messages at once"));
    }
    let Some(owner) = api.chat.authority(p.channel_id.0).await? else {
        return Err(Problem::bad(
            "channel_id",
            "a DM has no moderator: delete its messages one by one as their authors",
        ));
    };
    let (mut deleted, mut not_found) = (Vec::new(), Vec::new());
    for id in b.message_ids {
        let body = RequestBody::DeleteMessage {
            channel_id: p.channel_id.0,
            message_id: id.0,
        };
        match as_user(&api, owner, body).await {
            Ok(_) => deleted.push(id),
            Err(e) if e.code == ErrorCode::NOT_FOUND.0 => not_found.push(id),
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(BulkDeleted { deleted, not_found }))
}
