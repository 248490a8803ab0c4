//! Application events through the API: the backend sends an event of its own — a name and
//! JSON data — to some users' sessions, to the viewers of a channel, or to every member of a
//! guild, for product features Quaver does not model (a poll's tally, a deploy finished, an
//! order shipped). They ride the notifications lane as `AppEvent`; they are not stored: the
//! sessions connected when it is sent get it (a session that resumes within its window gets
//! what it missed), nobody later.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{EventBody, Lane};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::ApiJson;
use super::types::Id;
use crate::cluster::BusEvent;

/// The most data an event carries (its JSON text).
pub const MAX_DATA: usize = 16 * 1024;
/// The most users one call sends to.
pub const MAX_USERS: usize = 1000;

/// An application event and who gets it: exactly one of `user_ids`, `channel_id`,
/// `guild_id`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The application's name for it: 1–64 of letters, digits, `.`, `_`, `-`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    pub name: String,
    /// Any JSON (at most 16 KiB as text).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// To every session of these users (1–1,000).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 1000)]
    pub user_ids: Option<Vec<Id>>,
    /// To everyone who can view this channel.
    #[serde(default)]
    pub channel_id: Option<Id>,
    /// To every member of this guild.
    #[serde(default)]
    pub guild_id: Option<Id>,
}

/// An event sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventSent {
    /// `users`, `channel` or `guild`.
    pub to: &'static str,
}

/// Sends an application event (notifications lane, `AppEvent`; not stored).
#[utoipa::path(
    post, path = "/events", tag = "events",
    request_body = NewEvent,
    responses(
        (status = 202, description = "On its way to the sessions connected now", body = EventSent),
        (status = 400, description = "An invalid name or data, or not exactly one audience", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such channel or guild", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Data over 16 KiB", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn send(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(e): ApiJson<NewEvent>,
) -> ApiResult<Response> {
    caller.need(Scope::EventsWrite)?;
    let name_ok =
        (1..=64).contains(&e.name.len()) && e.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(Problem::bad("name", "a name is 1–64 of letters, digits, '.', '_', '-'"));
    }
    let data = e.data.to_string();
    if data.len() > MAX_DATA {
        return Err(Problem::new(
            quaver_proto::ErrorCode::TOO_LARGE.0,
            format!("data is {} bytes as JSON; at most {MAX_DATA}", data.len()),
        )
        .field("data"));
    }
    let body = |channel_id: Option<u64>, guild_id: Option<u64>| {
        Bytes::from(encode_payload(&EventBody::AppEvent {
            name: e.name.clone(),
            data: data.clone(),
            channel_id,
            guild_id,
        }))
    };
    let to = match (&e.user_ids, e.channel_id, e.guild_id) {
        (Some(users), None, None) => {
            if users.is_empty() || users.len() > MAX_USERS {
                return Err(Problem::bad("user_ids", "send to 1 to 1,000 users"));
            }
            let event = body(None, None);
            for u in users {
                api.bus.publish(BusEvent::User {
                    user_id: u.0,
                    lane: Lane::Notifications,
                    event: event.clone(),
                });
            }
            "users"
        }
        (None, Some(c), None) => {
            let guild = api.chat.channel_guild_of(c.0).await?;
            api.bus.publish(BusEvent::App {
                guild_id: guild,
                channel_id: Some(c.0),
                event: body(Some(c.0), guild),
            });
            "channel"
        }
        (None, None, Some(g)) => {
            // It must exist.
            api.chat.guild_state(g.0).await?;
            api.bus.publish(BusEvent::App {
                guild_id: Some(g.0),
                channel_id: None,
                event: body(None, Some(g.0)),
            });
            "guild"
        }
        _ => {
            return Err(Problem::bad(
                "user_ids",
                "give exactly one of user_ids, channel_id, guild_id",
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, axum::Json(EventSent { to })).into_response())
}
