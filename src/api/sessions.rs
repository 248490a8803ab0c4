//! Sessions through the API: revoke a user's tokens (all issued before an instant, or one by
//! its `jti`) and end the sessions they opened, or end a user's sessions outright — on
//! every node of the cluster. A revocation is stored first (nodes read them at start and
//! every 30 s) and then carried on the bus, so the user's live sessions close within
//! moments wherever they are, and their next `Hello` with such a token is refused
//! (`TOKEN_REVOKED`, 4019).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, Problem};
use super::extract::{ApiJson, ApiPath};
use super::types::Id;
use crate::cluster::BusEvent;
use crate::gateway::Order;
use crate::store::Revocation;

/// Which of a user's tokens to revoke. Without either field: every token issued until now.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRevocation {
    /// Every token issued (`iat`) before this instant, Unix milliseconds (a token without
    /// `iat` counts as issued at the beginning of time). Default: now, unless `jti` is given.
    #[serde(default)]
    pub issued_before: Option<u64>,
    /// The one token with this `jti` claim (1–255 characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub jti: Option<String>,
}

/// A revocation made.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationMade {
    /// Whose tokens.
    pub user_id: Id,
    /// Tokens issued before this Unix ms are refused (0: none by time).
    pub issued_before: u64,
    /// The token refused by `jti`, if one was named.
    pub jti: Option<String>,
    /// Sessions this node ended at once (others end theirs as the order reaches them).
    pub sessions_ended_here: usize,
}

/// How to end a user's sessions.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// `true` (default): the client may reconnect at once (close code 1008 `disconnected`),
    /// e.g. to pick up changed permissions. `false`: it must not until the person acts (4031
    /// `removed`) — pair it with a revocation to keep them out.
    #[serde(default)]
    pub reconnect: Option<bool>,
    /// Said to the client in `Closing` (at most 120 bytes).
    #[serde(default)]
    #[schema(max_length = 120, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub reason: Option<String>,
}

/// What a disconnect did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Disconnected {
    /// The user.
    pub user_id: Id,
    /// The close code their sessions get.
    pub close_code: u16,
    /// Sessions this node ended at once (others end theirs as the order reaches them).
    pub sessions_ended_here: usize,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserPath {
    user_id: Id,
}

/// Carries `order` out here at once, and to every other node on the bus.
pub(super) fn order(api: &Services, order: Order) -> usize {
    if let Order::Revoke(r) = &order {
        api.revocations.add(r);
    }
    let (forgotten, n) = api.sessions.apply(&order, &api.revocations);
    for user in forgotten {
        api.fanout.close(user);
    }
    api.bus.publish(BusEvent::Order(order));
    n
}

/// Revokes a user's tokens, and ends the sessions they opened, on every node.
#[utoipa::path(
    post, path = "/users/{user_id}/revocations", tag = "sessions",
    params(("user_id" = Id, Path, description = "The user")),
    request_body = NewRevocation,
    responses(
        (status = 201, description = "Stored; their sessions are ending", body = RevocationMade),
        (status = 400, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn revoke(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(r): ApiJson<NewRevocation>,
) -> ApiResult<Response> {
    caller.need(Scope::SessionsWrite)?;
    let now = crate::ids::now_ms();
    if let Some(j) = &r.jti
        && (j.is_empty() || j.len() > 255)
    {
        return Err(Problem::bad("jti", "a jti is 1–255 bytes"));
    }
    let before = match (r.issued_before, &r.jti) {
        (Some(t), _) if t > now + 60_000 => {
            return Err(Problem::bad(
                "issued_before",
                "issued_before is in the future (Unix milliseconds, at most now)",
            ));
        }
        (Some(t), _) => t,
        (None, Some(_)) => 0,
        (None, None) => now,
    };
    let revocation = Revocation {
        user_id: p.user_id.0,
        before_ms: before,
        jti: r.jti.clone().unwrap_or_default(),
    };
    api.chat.store().revoke(&revocation, now).await?;
    let n = order(&api, Order::Revoke(revocation));
    Ok((
        StatusCode::CREATED,
        axum::Json(RevocationMade {
            user_id: p.user_id,
            issued_before: before,
            jti: r.jti,
            sessions_ended_here: n,
        }),
    )
        .into_response())
}

/// Ends every session of a user, on every node.
#[utoipa::path(
    post, path = "/users/{user_id}/disconnect", tag = "sessions",
    params(("user_id" = Id, Path, description = "The user")),
    request_body = Disconnect,
    responses(
        (status = 202, description = "Their sessions are ending", body = Disconnected),
        (status = 400, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn disconnect(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(d): ApiJson<Disconnect>,
) -> ApiResult<Response> {
    end_sessions(&api, &caller, p.user_id, None, d)
}

#[derive(Debug, Deserialize)]
pub(super) struct SessionPath {
    user_id: Id,
    session_id: String,
}

/// Ends one session of a user (its id as `GET /users/{user_id}/sessions` lists it), on
/// whichever node holds it.
#[utoipa::path(
    post, path = "/users/{user_id}/sessions/{session_id}/disconnect", tag = "sessions",
    params(
        ("user_id" = Id, Path, description = "The user"),
        ("session_id" = String, Path, description = "The session (32 hex digits)", pattern = "^[0-9a-f]{32}$"),
    ),
    request_body = Disconnect,
    responses(
        (status = 202, description = "The session is ending", body = Disconnected),
        (status = 400, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn disconnect_session(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<SessionPath>,
    ApiJson(d): ApiJson<Disconnect>,
) -> ApiResult<Response> {
    let mut id = [0u8; 16];
    if p.session_id.len() != 32 || hex::decode_to_slice(&p.session_id, &mut id).is_err() {
        return Err(Problem::not_found("session").field("session_id"));
    }
    end_sessions(&api, &caller, p.user_id, Some(quaver_proto::SessionId(id)), d)
}

/// Ends `user`'s sessions (or just `session`) everywhere, as `d` says.
fn end_sessions(
    api: &Services,
    caller: &Caller,
    user: Id,
    session: Option<quaver_proto::SessionId>,
    d: Disconnect,
) -> ApiResult<Response> {
    caller.need(Scope::SessionsWrite)?;
    let reason = d.reason.unwrap_or_default();
    if reason.len() > 120 || reason.chars().any(char::is_control) {
        return Err(Problem::bad("reason", "a reason is at most 120 bytes, printable"));
    }
    let reconnect = d.reconnect.unwrap_or(true);
    let code = if reconnect {
        quaver_proto::CloseCode::DISCONNECTED
    } else {
        quaver_proto::CloseCode::REMOVED
    };
    let n = order(
        api,
        Order::Disconnect {
            user_id: user.0,
            session,
            reconnect,
            reason: if reason.is_empty() {
                "disconnected by the application".into()
            } else {
                reason
            },
        },
    );
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Disconnected {
            user_id: user,
            close_code: code.0 as u16,
            sessions_ended_here: n,
        }),
    )
        .into_response())
}

/// One of a user's sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Its id (hex), as the client's `Ready` says it.
    pub id: String,
    /// The node holding it.
    pub node: String,
    /// `quic` or `webtransport`.
    pub transport: &'static str,
    /// `desktop`, `mobile` or `web`.
    pub device: &'static str,
    /// When its latest connection opened (Unix ms).
    pub connected_at_ms: u64,
    /// Connected now (else it waits for a resume, up to the resume window).
    pub connected: bool,
}

/// A user's sessions, cluster-wide.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Oldest connection first.
    pub sessions: Vec<SessionView>,
    /// Whether every live node answered. `false`: a node did not answer within a second
    /// (it may be dying), or the cluster's registry was unreachable so the nodes could not
    /// be counted (then the answers of 300 ms are listed).
    pub complete: bool,
}

/// How long the nodes have to answer when it is known how many they are.
const ASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long answers are collected when it is not.
const ASK_WINDOW: std::time::Duration = std::time::Duration::from_millis(300);

/// A user's live sessions on every node (those waiting for a resume included): every node
/// answers on the bus; the list is complete once each live node has (within a second).
#[utoipa::path(
    get, path = "/users/{user_id}/sessions", tag = "sessions",
    params(("user_id" = Id, Path, description = "The user")),
    responses((status = 200, description = "Their sessions", body = SessionList))
)]
pub(super) async fn list(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<axum::Json<SessionList>> {
    caller.need(Scope::SessionsRead)?;
    // How many answers to wait for: the bus knows its nodes in one process; a Redis
    // cluster's live nodes are in the presence registry.
    let expected = match api.fanout.nodes() {
        Some(n) => Some(n),
        None => api.presence.live_nodes().await,
    };
    let (request, mut rx) = api.fanout.ask_sessions(p.user_id.0);
    let mut sessions = Vec::new();
    let mut answered = std::collections::HashSet::new();
    let end = tokio::time::Instant::now() + expected.map_or(ASK_WINDOW, |_| ASK_DEADLINE);
    while expected.is_none_or(|n| answered.len() < n)
        && let Ok(Some((node, here))) = tokio::time::timeout_at(end, rx.recv()).await
    {
        answered.insert(node.clone());
        sessions.extend(here.into_iter().map(|s| SessionView {
            id: s.id.to_string(),
            node: node.clone(),
            transport: s.transport.name(),
            device: match s.device {
                quaver_proto::DeviceKind::Desktop => "desktop",
                quaver_proto::DeviceKind::Mobile => "mobile",
                quaver_proto::DeviceKind::Web => "web",
            },
            connected_at_ms: s.connected_at_ms,
            connected: s.attached,
        }));
    }
    api.fanout.done_asking(request);
    sessions.sort_by_key(|s| s.connected_at_ms);
    let complete = expected.is_some_and(|n| answered.len() >= n);
    if !complete {
        tracing::warn!(
            user_id = p.user_id.0,
            answered = answered.len(),
            expected,
            "a session list is incomplete: not every node answered"
        );
    }
    Ok(axum::Json(SessionList { sessions, complete }))
}
