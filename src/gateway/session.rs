//! Opening a session for an accepted `Hello`: the user's snapshot, the resume decision, the
//! attachment to its connection, the fan-out registration and catch-up, and the `Ready` /
//! `Resumed` frame. What runs the session after it is the engine's (`gateway::wire`).

use std::sync::Arc;

use quaver_proto::{
    CloseCode, Compression, ErrorBody, ErrorCode, Hello, Limits, Ready, ServerControl, SessionId, User,
};

use super::SessionHandle;
use super::control::{self, unix_ms};
use crate::Ctx;
use crate::auth::Identity;

/// Fetch replies one connection may have in progress at once: enough for a client's
/// parallel page loads, few enough that unread replies hold little (a history page is at
/// most ~1.6 MB).
pub const FETCH_CONCURRENCY: usize = 4;

fn random_session_id() -> SessionId {
    let mut b = [0u8; 16];
    // SystemRandom fails only without an OS RNG, where TLS could not work either.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    SessionId(b)
}

/// A session opened from its `Hello`: attached to its connection, with its first frame.
#[derive(Debug)]
pub struct Opened {
    /// The session (new, or the one resumed).
    pub handle: Arc<SessionHandle>,
    /// The connection's attachment generation.
    pub generation: u64,
    /// `Ready` or `Resumed`, to write first.
    pub first: ServerControl,
    /// Whether it resumed a session exactly.
    pub resumed: bool,
}

/// Builds a session for an accepted `Hello`: the user's snapshot, the resume decision, the
/// attachment of the connection (`link`), the fan-out registration and catch-up, and the
/// `Ready`/`Resumed` frame. `Err` is the close to refuse the connection with.
pub(crate) async fn open(
    ctx: &Ctx,
    identity: &Identity,
    hello: &Hello,
    link: Arc<dyn super::Link>,
    max_datagram_bytes: usize,
) -> Result<Opened, (CloseCode, String)> {
    let failed = |e: ErrorBody| {
        tracing::error!(error = %e.message, "building Ready failed");
        let reason = if e.code == ErrorCode::UNAVAILABLE {
            "storage unavailable; retry"
        } else {
            "server failure; retry"
        };
        (CloseCode::INTERNAL_ERROR, reason.to_string())
    };
    // Boxed, like the catch-up below: the store queries' state would otherwise stay in the
    // caller's future for the whole session.
    let mut parts = Box::pin(ctx.chat.ready(identity.user_id, &identity.name))
        .await
        .map_err(failed)?;
    let zstd = hello.compression == Compression::Zstd;
    // Resume: the same user's session, still in its window, whose buffer covers every lane.
    let resumed: Option<(Arc<SessionHandle>, [u64; 5])> = match &hello.resume {
        Some(r) => {
            let mut positions = [0u64; 5];
            for l in &r.lanes {
                positions[l.lane.index()] = l.seq;
            }
            let known = ctx.sessions.get(&r.session_id);
            let facts = known.as_ref().map(|h| control::Known {
                user: h.user,
                can_replay: h.can_replay(&positions).is_ok(),
            });
            match control::decide_resume(identity.user_id, positions, facts)? {
                control::Resume::Exact(from) => known.map(|h| (h, from)),
                control::Resume::Fresh => None,
            }
        }
        None => None,
    };
    let (resumed, resume_from) = match resumed {
        Some((h, from)) => (Some(h), from),
        None => (None, [0u64; 5]),
    };
    let is_resume = resumed.is_some();
    let handle = resumed.unwrap_or_else(|| {
        Arc::new(SessionHandle::new(
            random_session_id(),
            identity.user_id,
            ctx.replay_limits(),
        ))
    });
    // Presence: of the large guilds' members only those of the guilds an exactly resumed
    // session is kept current on; a new one is told the others when it looks at them
    // (`gateway::view`), or soon if it declares no view.
    let kept = handle.kept_guilds();
    let observers = Box::pin(ctx.chat.observers(identity.user_id, &kept, &parts))
        .await
        .map_err(failed)?;
    let presences = ctx.presence.snapshot(observers).await;
    if !is_resume && parts.guilds.iter().any(|g| ctx.chat.is_large_count(g.member_count)) {
        keep_later(ctx, &handle);
    }
    let generation = handle.attach_link(link, resume_from);
    let voice_states = ctx.voice.visible_states(&parts.guilds).await;
    if !is_resume {
        // Not resumable exactly: catch the client's channels up from the event log. Read
        // here; the fan-out hands it over in line with live delivery, and sets each
        // channel's `last_seq` in Ready to where this node's delivery stands.
        let caught = match &hello.resume {
            Some(r) if !r.channels.is_empty() => {
                Box::pin(
                    ctx.chat
                        .catch_up(identity.user_id, &r.channels, ctx.cfg.session.event_log_retention),
                )
                .await
            }
            _ => Vec::new(),
        };
        ctx.fanout
            .open(
                Box::new(super::Joining {
                    handle: handle.clone(),
                    sessions: ctx.sessions.clone(),
                }),
                &mut parts.guilds,
                &mut parts.private_channels,
                caught,
            )
            .await;
    }
    let sc = &ctx.cfg.session;
    let ready = Ready {
        session_id: handle.id,
        user: User {
            id: identity.user_id,
            name: identity.name.clone(),
        },
        heartbeat_interval_ms: sc.ping_interval.as_millis() as u32,
        limits: Limits {
            max_frame_bytes: sc.max_frame_bytes as u32,
            max_datagram_bytes: max_datagram_bytes as u32,
            heartbeat_timeout_ms: sc.ping_timeout.as_millis() as u32,
        },
        compression: if zstd { Compression::Zstd } else { Compression::None },
        token_expires_at_ms: unix_ms(identity.expires_at),
        node: ctx.cfg.node_name.clone(),
        guilds: parts.guilds,
        private_channels: parts.private_channels,
        read_states: parts.read_states,
        presences,
        relationships: parts.relationships,
        mutes: parts.mutes,
        notifications_unread: parts.notifications_unread,
        notifications: parts.notifications,
        voice_states,
    };
    let first = if is_resume {
        ServerControl::Resumed(Box::new(ready))
    } else {
        ServerControl::Ready(Box::new(ready))
    };
    Ok(Opened {
        handle,
        generation,
        first,
        resumed: is_resume,
    })
}

/// How long a new session in a large guild has to declare a view before it is sent the
/// presence of every large guild's members (it declared none: it looks at every channel).
/// A client that declares one does so right after `Ready`, and is told only what it views.
pub const KEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// After [`KEEP_AFTER`], sends a session that still views every channel its large guilds'
/// members' presence.
fn keep_later(ctx: &Ctx, handle: &Arc<SessionHandle>) {
    let (chat, fanout, handle) = (ctx.chat.clone(), ctx.fanout.clone(), Arc::downgrade(handle));
    tokio::spawn(async move {
        tokio::time::sleep(KEEP_AFTER).await;
        let Some(h) = handle.upgrade() else { return };
        match chat.large_guilds_of(h.user).await {
            Ok(large) => show_kept(fanout.as_ref(), h.user, h.keep_viewed(&large)),
            Err(e) => {
                tracing::warn!(user = h.user, error = %e.message, "a session's large guilds could not be read: their members' presence is not sent to it")
            }
        }
    });
}

/// Asks for the presence of the members of each large guild in `keep` to go to `user`'s
/// sessions that look at it.
pub(crate) fn show_kept(bus: &dyn crate::cluster::Bus, user: u64, keep: Vec<super::view::Keep>) {
    for k in keep {
        bus.publish(crate::cluster::BusEvent::ShowGuildMembers {
            user_id: user,
            guild_id: k.guild,
            again: k.again,
        });
    }
}

/// The application's `connect` hook, when one is configured: `Ok(Some(name))` to use that
/// display name, `Ok(None)` to go ahead as is, `Err` (4032 `refused`, the hook's reason) to
/// refuse. Asked for every `Hello`, a resume too.
pub(crate) async fn connect_hook(
    ctx: &Ctx,
    identity: &Identity,
    hello: &Hello,
) -> Result<Option<String>, (CloseCode, String)> {
    use crate::webhooks::hooks::{HookKind, Verdict};
    if !ctx.hooks.has(HookKind::Connect) {
        return Ok(None);
    }
    let device = match hello.device {
        quaver_proto::DeviceKind::Desktop => "desktop",
        quaver_proto::DeviceKind::Mobile => "mobile",
        quaver_proto::DeviceKind::Web => "web",
    };
    let data = serde_json::json!({
        "user_id": identity.user_id.to_string(),
        "name": identity.name,
        "device": device,
        "resume": hello.resume.is_some(),
        "jti": identity.jti,
        "node": ctx.cfg.node_name,
    });
    match ctx.hooks.ask(HookKind::Connect, &data).await {
        Verdict::Deny { reason } => Err((CloseCode::REFUSED, reason)),
        Verdict::Allow { name: Some(n), .. } => {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control) {
                tracing::warn!(
                    user = identity.user_id,
                    "the connect hook's name is not 1–64 printable characters: kept the token's"
                );
                Ok(None)
            } else {
                Ok(Some(n.to_string()))
            }
        }
        Verdict::Allow { .. } => Ok(None),
    }
}
