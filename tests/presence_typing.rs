//! Presence and typing over real QUIC on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::*;

struct P {
    client: Client,
    chat: LaneStream,
    presence: LaneStream,
    typing: LaneStream,
}

async fn session(server: &quaver::Server, user: u64, device: DeviceKind) -> P {
    let mut cfg = client_config(server, Transport::Quic, Some(token(user)));
    cfg.device = device;
    session_with(cfg).await
}

async fn session_with(cfg: quaver_client::Config) -> P {
    let client = connect(&cfg).await.unwrap();
    let mut chat = client.open_lane(Lane::Chat).await.unwrap();
    let mut presence = client.open_lane(Lane::Presence).await.unwrap();
    let mut typing = client.open_lane(Lane::Typing).await.unwrap();
    for l in [&mut chat, &mut presence, &mut typing] {
        l.request(RequestBody::Ping { data: vec![] }).await.unwrap().unwrap();
    }
    P {
        client,
        chat,
        presence,
        typing,
    }
}

async fn req(l: &mut LaneStream, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .unwrap()
        .unwrap()
}

async fn next_event(l: &mut LaneStream, wait: Duration) -> Option<EventBody> {
    match tokio::time::timeout(wait, l.next()).await {
        Err(_) => None,
        Ok(Ok(ServerLane::Event { body, .. })) => Some(body),
        Ok(other) => panic!("{other:?}"),
    }
}

/// The next presence update about `user`.
async fn presence_of(l: &mut LaneStream, user: u64) -> Presence {
    loop {
        match next_event(l, Duration::from_secs(10))
            .await
            .expect("presence update in time")
        {
            EventBody::PresenceUpdated { presence } if presence.user_id == user => return presence,
            _ => {}
        }
    }
}

/// Guild owned by `owner` with `others` joined; returns its general channel.
async fn guild(owner: &mut P, others: &mut [&mut P]) -> u64 {
    shared_guild(
        &owner.client,
        &mut owner.chat,
        others.iter_mut().map(|o| &mut o.chat).collect(),
    )
    .await
    .1
}

#[tokio::test]
async fn multi_device_presence_reaches_guild_members_only() {
    let mut cfg = config();
    cfg.session.presence_grace = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut b = session(&server, 2, DeviceKind::Web).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut stranger = session(&server, 3, DeviceKind::Desktop).await;
    guild(&mut a, &mut [&mut b]).await;

    // a adds a mobile session: b sees both platforms.
    let mut a_mobile = session(&server, 1, DeviceKind::Mobile).await;
    let p = presence_of(&mut b.presence, 1).await;
    assert_eq!(p.status, PresenceStatus::Online);
    assert_eq!(
        (p.client_status.desktop, p.client_status.mobile),
        (PresenceStatus::Online, PresenceStatus::Online)
    );
    req(
        &mut a_mobile.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Idle,
            custom_status: None,
            activity: None,
        },
    )
    .await
    .unwrap();
    let p = presence_of(&mut b.presence, 1).await;
    assert_eq!(
        (p.status, p.client_status.mobile),
        (PresenceStatus::Online, PresenceStatus::Idle)
    );
    req(
        &mut a.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Dnd,
            custom_status: Some("deep work".into()),
            activity: Some("coding".into()),
        },
    )
    .await
    .unwrap();
    let p = presence_of(&mut b.presence, 1).await;
    assert_eq!(
        (p.status, p.custom_status.as_deref(), p.activity.as_deref()),
        (PresenceStatus::Dnd, Some("deep work"), Some("coding"))
    );
    // A new session of b sees a's presence in Ready.
    let b2 = connect(&client_config(&server, Transport::WebTransport, Some(token(2))))
        .await
        .unwrap();
    let seen = b2
        .ready
        .presences
        .iter()
        .find(|p| p.user_id == 1)
        .expect("a in Ready presences");
    assert_eq!(seen.status, PresenceStatus::Dnd);
    // Invisible: offline to others.
    req(
        &mut a.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Invisible,
            custom_status: None,
            activity: None,
        },
    )
    .await
    .unwrap();
    let p = presence_of(&mut b.presence, 1).await;
    assert_eq!(p.status, PresenceStatus::Offline);
    // The stranger shares no guild: nothing about a ever reached them.
    assert!(stranger.client.ready.presences.is_empty());
    while let Some(e) = next_event(&mut stranger.presence, Duration::from_millis(300)).await {
        assert!(
            !matches!(e, EventBody::PresenceUpdated { presence } if presence.user_id == 1),
            "stranger saw a's presence"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn killed_connection_leaves_presence_and_quick_reconnect_does_not_flap() {
    let mut cfg = config();
    cfg.session.ping_interval = Duration::from_millis(200);
    cfg.session.ping_timeout = Duration::from_millis(800);
    cfg.session.presence_grace = Duration::from_millis(1500);
    let server = start(cfg).await;
    let mut b = session(&server, 2, DeviceKind::Desktop).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    guild(&mut a, &mut [&mut b]).await;
    // A quick reconnect (close, then a new session within the grace): no offline in between.
    a.client.close();
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _a2 = session(&server, 1, DeviceKind::Desktop).await;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        if let Some(EventBody::PresenceUpdated { presence }) =
            next_event(&mut b.presence, Duration::from_millis(100)).await
        {
            assert_ne!(
                presence.status,
                PresenceStatus::Offline,
                "flapped offline during a reconnect"
            );
        }
    }
    // A killed connection (packets stop, nobody closes): offline after timeout + grace.
    let relay = Relay::start(server.quic_addr).await;
    let mut cfg = client_config(&server, Transport::Quic, Some(token(3)));
    cfg.addr = relay.addr;
    cfg.keep_alive = Duration::from_millis(200);
    let mut c = session_with(cfg).await;
    let Ok(ResponseBody::Guild(_)) = req(&mut c.chat, RequestBody::CreateGuild { name: "c".into() }).await else {
        panic!()
    };
    // b joins c's guild so it can see c.
    let Ok(Ok(FetchResponse::Guilds { guilds })) = c.client.fetch(FetchRequest::Guilds).await else {
        panic!()
    };
    let Ok(ResponseBody::Invite(inv)) = req(
        &mut c.chat,
        RequestBody::CreateInvite {
            guild_id: guilds[0].guild.id,
            max_uses: 0,
            max_age_secs: 0,
        },
    )
    .await
    else {
        panic!()
    };
    req(&mut b.chat, RequestBody::JoinGuild { code: inv.code })
        .await
        .unwrap();
    let killed_at = Instant::now();
    relay.cut();
    let p = presence_of(&mut b.presence, 3).await;
    assert_eq!(p.status, PresenceStatus::Offline);
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "went offline only after the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    // The session is detached (resumable for the window), no longer attached.
    assert!(server.ctx.sessions.of_user(3).iter().all(|h| !h.attached()));
    server.shutdown().await;
}

#[tokio::test]
async fn typing_start_debounce_stop_and_stop_on_send() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut a_other = session(&server, 1, DeviceKind::Mobile).await;
    let mut b = session(&server, 2, DeviceKind::Web).await;
    let ch = guild(&mut a, &mut [&mut b]).await;

    req(&mut a.typing, RequestBody::TypingStart { channel_id: ch })
        .await
        .unwrap();
    let started = Instant::now();
    match next_event(&mut b.typing, Duration::from_secs(5)).await {
        Some(EventBody::TypingStarted {
            channel_id,
            user_id,
            expires_in_ms,
        }) => {
            assert_eq!((channel_id, user_id, expires_in_ms), (ch, 1, 10_000))
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    // Not echoed to the typer's own sessions.
    assert_eq!(next_event(&mut a_other.typing, Duration::from_millis(200)).await, None);
    // A repeat within the debounce window is not re-broadcast.
    req(&mut a.typing, RequestBody::TypingStart { channel_id: ch })
        .await
        .unwrap();
    assert_eq!(next_event(&mut b.typing, Duration::from_millis(300)).await, None);
    // Someone watching the channel learns who is typing now.
    assert_eq!(
        req(&mut b.typing, RequestBody::WatchTyping { channel_id: ch }).await,
        Ok(ResponseBody::Typers {
            channel_id: ch,
            user_ids: vec![1]
        })
    );
    // Explicit stop.
    req(&mut a.typing, RequestBody::TypingStop { channel_id: ch })
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut b.typing, Duration::from_secs(5)).await,
        Some(EventBody::TypingStopped {
            channel_id: ch,
            user_id: 1
        })
    );
    // Stop on send.
    req(&mut b.typing, RequestBody::TypingStart { channel_id: ch })
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut a.typing, Duration::from_secs(5)).await,
        Some(EventBody::TypingStarted { user_id: 2, .. })
    ));
    req(
        &mut b.chat,
        RequestBody::SendMessage {
            channel_id: ch,
            nonce: 1,
            content: "done".into(),
            reply_to: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        next_event(&mut a.typing, Duration::from_secs(5)).await,
        Some(EventBody::TypingStopped {
            channel_id: ch,
            user_id: 2
        })
    );
    // Typing needs send permission; a stranger's start is refused.
    let mut c = session(&server, 3, DeviceKind::Web).await;
    assert_eq!(
        req(&mut c.typing, RequestBody::TypingStart { channel_id: ch })
            .await
            .unwrap_err()
            .code,
        ErrorCode::NOT_FOUND
    );
    server.shutdown().await;
}

#[tokio::test]
async fn typing_expires_on_the_server_after_ten_seconds() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut b = session(&server, 2, DeviceKind::Web).await;
    let ch = guild(&mut a, &mut [&mut b]).await;
    req(&mut a.typing, RequestBody::TypingStart { channel_id: ch })
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut b.typing, Duration::from_secs(5)).await,
        Some(EventBody::TypingStarted { .. })
    ));
    let t0 = Instant::now();
    // No stop is sent; the server sends it itself.
    let e = next_event(&mut b.typing, Duration::from_secs(12)).await;
    let took = t0.elapsed();
    assert_eq!(
        e,
        Some(EventBody::TypingStopped {
            channel_id: ch,
            user_id: 1
        })
    );
    assert!(
        took >= Duration::from_millis(9_500) && took <= Duration::from_millis(10_500),
        "{took:?}"
    );
    server.shutdown().await;
}

/// Presence, typing and voice requests have rate limits of their own (they had none).
#[tokio::test]
async fn presence_typing_and_voice_requests_are_rate_limited() {
    let server = start(config()).await;
    let mut p = session(&server, 1, DeviceKind::Desktop).await;
    let mut voice = p.client.open_lane(Lane::Voice).await.unwrap();
    let limited = |r: Result<ResponseBody, ErrorBody>| match r {
        Err(e) if e.code == ErrorCode::RATE_LIMITED => {
            assert!(e.retry_after_ms.is_some_and(|ms| ms > 0));
            true
        }
        _ => false,
    };
    let limits = quaver::limits::LimitsConfig::default();
    let count = |n: f64| n as usize;
    for _ in 0..count(limits.presence.burst) {
        let r = req(
            &mut p.presence,
            RequestBody::SetPresence {
                status: PresenceStatus::Idle,
                custom_status: None,
                activity: None,
            },
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
    }
    let r = req(
        &mut p.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Online,
            custom_status: None,
            activity: None,
        },
    )
    .await;
    assert!(limited(r), "presence past its burst");
    for _ in 0..count(limits.typing.burst) {
        assert!(
            req(&mut p.typing, RequestBody::TypingStop { channel_id: 5 })
                .await
                .is_ok()
        );
    }
    assert!(limited(
        req(&mut p.typing, RequestBody::TypingStop { channel_id: 5 }).await
    ));
    for _ in 0..count(limits.voice.burst) {
        assert!(req(&mut voice, RequestBody::LeaveVoice).await.is_ok());
    }
    assert!(limited(req(&mut voice, RequestBody::LeaveVoice).await));
    // Chat is a bucket of its own: still fine.
    assert!(req(&mut p.chat, RequestBody::Ping { data: vec![] }).await.is_ok());
    server.shutdown().await;
}

/// The presence a client holds of others, kept as PROTOCOL.md says: `Ready.presences`,
/// then `PresenceUpdated` and `PresenceSnapshot` as they come.
#[derive(Default)]
struct Seen(std::collections::HashMap<u64, PresenceStatus>);

impl Seen {
    fn of(ready: &Ready) -> Seen {
        Seen(ready.presences.iter().map(|p| (p.user_id, p.status)).collect())
    }

    fn status(&self, user: u64) -> PresenceStatus {
        self.0.get(&user).copied().unwrap_or(PresenceStatus::Offline)
    }

    /// Takes events from `lane` until `user` shows `want` (true) or `within` passes.
    async fn until(&mut self, lane: &mut LaneStream, user: u64, want: PresenceStatus, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        while self.status(user) != want {
            let Ok(next) = tokio::time::timeout_at(end, lane.next()).await else {
                return false;
            };
            match next.expect("lane works") {
                ServerLane::Event {
                    body: EventBody::PresenceUpdated { presence },
                    ..
                } => {
                    self.0.insert(presence.user_id, presence.status);
                }
                ServerLane::Event {
                    body: EventBody::PresenceSnapshot { presences },
                    ..
                } => {
                    for p in presences {
                        self.0.insert(p.user_id, p.status);
                    }
                }
                _ => {}
            }
        }
        true
    }
}

/// How long a connected user may show offline to someone who can see them (PROTOCOL.md:
/// the presence propagation bound). Generous for a loaded CI machine; on loopback it takes
/// milliseconds.
const PROPAGATION: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_new_guild_member_and_the_members_see_each_other_online_at_once() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut c = session(&server, 3, DeviceKind::Mobile).await;
    let mut b = session(&server, 2, DeviceKind::Web).await;
    // a and c share a guild; b is a stranger to both.
    let (gid, _) = shared_guild(&a.client, &mut a.chat, vec![&mut c.chat]).await;
    req(
        &mut c.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Dnd,
            custom_status: None,
            activity: None,
        },
    )
    .await
    .unwrap();
    let mut b_sees = Seen::of(&b.client.ready);
    let mut a_sees = Seen::of(&a.client.ready);
    assert_eq!(b_sees.status(1), PresenceStatus::Offline, "strangers see nothing");
    // b joins by invite: b sees both members at once, and they see b — without anyone
    // reconnecting or changing status.
    join_guild(&mut a.chat, gid, &mut b.chat).await;
    assert!(
        b_sees
            .until(&mut b.presence, 1, PresenceStatus::Online, PROPAGATION)
            .await,
        "the new member sees the owner offline"
    );
    assert!(
        b_sees.until(&mut b.presence, 3, PresenceStatus::Dnd, PROPAGATION).await,
        "the new member sees the other member's status"
    );
    assert!(
        a_sees
            .until(&mut a.presence, 2, PresenceStatus::Online, PROPAGATION)
            .await,
        "the owner sees the new member offline"
    );
    let mut c_sees = Seen::default();
    assert!(
        c_sees
            .until(&mut c.presence, 2, PresenceStatus::Online, PROPAGATION)
            .await
    );
    // Nothing for the joiner about themself.
    assert_eq!(b_sees.status(2), PresenceStatus::Offline);
}

#[tokio::test]
async fn new_friends_see_each_other_online_at_once() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut b = session(&server, 2, DeviceKind::Desktop).await;
    let (mut a_sees, mut b_sees) = (Seen::of(&a.client.ready), Seen::of(&b.client.ready));
    req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 })
        .await
        .unwrap();
    // A request alone shares nothing.
    assert!(
        !a_sees
            .until(&mut a.presence, 2, PresenceStatus::Online, Duration::from_millis(300))
            .await
    );
    req(&mut b.chat, RequestBody::AcceptFriendRequest { user_id: 1 })
        .await
        .unwrap();
    assert!(
        a_sees
            .until(&mut a.presence, 2, PresenceStatus::Online, PROPAGATION)
            .await
    );
    assert!(
        b_sees
            .until(&mut b.presence, 1, PresenceStatus::Online, PROPAGATION)
            .await
    );
}

#[tokio::test]
async fn an_invisible_member_stays_hidden_from_a_new_member() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut b = session(&server, 2, DeviceKind::Desktop).await;
    req(
        &mut a.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Invisible,
            custom_status: Some("hidden".into()),
            activity: None,
        },
    )
    .await
    .unwrap();
    shared_guild(&a.client, &mut a.chat, vec![&mut b.chat]).await;
    let mut b_sees = Seen::default();
    // b is told nothing of a (offline is left out of snapshots), in any form.
    let end = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(m)) = tokio::time::timeout_at(end, b.presence.next()).await {
        if let ServerLane::Event {
            body: EventBody::PresenceSnapshot { presences },
            ..
        } = &m
        {
            assert!(presences.iter().all(|p| p.user_id != 1), "{presences:?}");
        }
        if let ServerLane::Event {
            body: EventBody::PresenceUpdated { presence },
            ..
        } = &m
        {
            assert!(presence.user_id != 1 || presence.status == PresenceStatus::Offline);
        }
    }
    assert_eq!(b_sees.status(1), PresenceStatus::Offline);
    let _ = &mut b_sees;
}

/// A resumed session is the same session: it shows what it had set (not `Online` again),
/// and the others see no change at all.
#[tokio::test]
async fn a_resumed_session_keeps_its_status() {
    let server = start(config()).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut cfg = client_config(&server, Transport::WebTransport, Some(token(2)));
    cfg.device = DeviceKind::Web;
    let mut b = session_with(cfg.clone()).await;
    shared_guild(&a.client, &mut a.chat, vec![&mut b.chat]).await;
    req(
        &mut b.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Dnd,
            custom_status: Some("deep work".into()),
            activity: None,
        },
    )
    .await
    .unwrap();
    let mut a_sees = Seen::of(&a.client.ready);
    assert!(a_sees.until(&mut a.presence, 2, PresenceStatus::Dnd, PROPAGATION).await);
    // b's page reloads: its WebTransport session ends with code 0, and it resumes.
    let id = b.client.ready.session_id;
    b.client.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), b.client.closed()).await;
    cfg.resume = Some(ResumeRequest {
        session_id: id,
        lanes: vec![],
        channels: vec![],
    });
    let again = session_with(cfg).await;
    assert!(again.client.resumed);
    // a is told nothing (the same status throughout), and a new observer sees dnd.
    let mut changes = Vec::new();
    while let Some(e) = next_event(&mut a.presence, Duration::from_millis(700)).await {
        changes.push(e);
    }
    assert!(
        changes
            .iter()
            .all(|e| !matches!(e, EventBody::PresenceUpdated { presence } if presence.user_id == 2)),
        "a flap on resume: {changes:?}"
    );
    let c = session(&server, 1, DeviceKind::Mobile).await;
    let p = c
        .client
        .ready
        .presences
        .iter()
        .find(|p| p.user_id == 2)
        .expect("b is visible");
    assert_eq!(
        (p.status, p.custom_status.as_deref()),
        (PresenceStatus::Dnd, Some("deep work"))
    );
}

/// A large guild (more members than `large_guild_members`): a session that declared a view
/// is told its members' presence only while it looks at one of its channels, and when it
/// looks again it is sent the members whole — the offline ones too, so nothing it held from
/// before stays. A session that declares nothing is told everything; a DM partner met in the
/// guild stays current without looking; a new session's `Ready` leaves the guild's members
/// out, and one that declares no view is sent them a moment later; a new member sees the
/// members and is seen.
#[tokio::test]
async fn a_large_guilds_presence_reaches_the_sessions_that_look_at_it() {
    let mut cfg = config();
    cfg.session.large_guild_members = 2;
    cfg.session.presence_grace = Duration::from_millis(200);
    let server = start(cfg).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    let mut b = session(&server, 2, DeviceKind::Web).await;
    let mut c = session(&server, 3, DeviceKind::Desktop).await;
    let mut d = session(&server, 4, DeviceKind::Desktop).await;
    let mut e = session(&server, 5, DeviceKind::Mobile).await;
    let mut b_sees = Seen::of(&b.client.ready);
    let (gid, general) = shared_guild(
        &a.client,
        &mut a.chat,
        vec![&mut b.chat, &mut c.chat, &mut d.chat, &mut e.chat],
    )
    .await;
    let Ok(ResponseBody::Channel(_)) = req(&mut b.chat, RequestBody::OpenDm { user_id: 5 }).await else {
        panic!("dm")
    };
    // Before anyone declares a view, everyone is told everything.
    assert!(
        b_sees
            .until(&mut b.presence, 3, PresenceStatus::Online, PROPAGATION)
            .await
    );
    // b looks at nothing of the guild; a at its general channel (d declares nothing).
    let look = |ids: Vec<u64>| RequestBody::ViewChannels { channel_ids: Some(ids) };
    assert_eq!(req(&mut b.chat, look(vec![])).await, Ok(ResponseBody::Done));
    assert_eq!(req(&mut a.chat, look(vec![general])).await, Ok(ResponseBody::Done));
    let mut a_sees = Seen::default();
    let mut d_sees = Seen::default();
    let set = |status| RequestBody::SetPresence {
        status,
        custom_status: None,
        activity: None,
    };
    req(&mut c.presence, set(PresenceStatus::Dnd)).await.unwrap();
    req(&mut e.presence, set(PresenceStatus::Idle)).await.unwrap();
    assert!(
        a_sees.until(&mut a.presence, 3, PresenceStatus::Dnd, PROPAGATION).await,
        "a looks at the guild"
    );
    assert!(
        d_sees.until(&mut d.presence, 3, PresenceStatus::Dnd, PROPAGATION).await,
        "d declared no view"
    );
    // b hears of its DM partner, and — the same lane, in order — nothing of c before it.
    assert!(
        b_sees
            .until(&mut b.presence, 5, PresenceStatus::Idle, PROPAGATION)
            .await,
        "a DM partner stays current"
    );
    assert_eq!(
        b_sees.status(3),
        PresenceStatus::Online,
        "b does not look at the guild: c's change is not sent"
    );
    assert!(
        server
            .ctx
            .fanout
            .counters
            .presence_gated
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // c leaves; b, looking away, holds c as online. Looking again, b is told the members
    // whole: c offline, a online.
    c.client.close();
    drop(c);
    assert!(
        a_sees
            .until(&mut a.presence, 3, PresenceStatus::Offline, Duration::from_secs(5))
            .await
    );
    assert_eq!(req(&mut b.chat, look(vec![general])).await, Ok(ResponseBody::Done));
    assert!(
        b_sees
            .until(&mut b.presence, 3, PresenceStatus::Offline, PROPAGATION)
            .await,
        "the stale status is corrected"
    );
    assert!(
        b_sees
            .until(&mut b.presence, 1, PresenceStatus::Online, PROPAGATION)
            .await
    );
    // A new session of b: Ready carries its DM partner, not the guild's other members; it
    // declares no view, and is sent them a moment later.
    let mut b2 = session(&server, 2, DeviceKind::Desktop).await;
    let ready: Vec<u64> = b2.client.ready.presences.iter().map(|p| p.user_id).collect();
    assert!(
        ready.contains(&5) && !ready.contains(&1) && !ready.contains(&4),
        "{ready:?}"
    );
    let mut b2_sees = Seen::of(&b2.client.ready);
    assert!(
        b2_sees
            .until(
                &mut b2.presence,
                1,
                PresenceStatus::Online,
                quaver::gateway::session::KEEP_AFTER + PROPAGATION
            )
            .await
    );
    assert_eq!(b2_sees.status(4), PresenceStatus::Online);
    // A new member: sees the members (declaring no view), and is seen by those looking.
    let mut f = session(&server, 6, DeviceKind::Desktop).await;
    join_guild(&mut a.chat, gid, &mut f.chat).await;
    let mut f_sees = Seen::default();
    assert!(
        f_sees
            .until(&mut f.presence, 4, PresenceStatus::Online, PROPAGATION)
            .await
    );
    assert!(
        a_sees
            .until(&mut a.presence, 6, PresenceStatus::Online, PROPAGATION)
            .await
    );
    assert!(
        b_sees
            .until(&mut b.presence, 6, PresenceStatus::Online, PROPAGATION)
            .await
    );
    server.shutdown().await;
}

/// A burst of presence changes reaches a member in order and complete, in fewer packets
/// than changes: the first at once, the rest at the end of the connection's window
/// (PROTOCOL.md, "Presence and typing in one packet per window").
#[tokio::test]
async fn a_burst_of_presence_changes_reaches_a_member_whole_in_fewer_packets() {
    burst_of_presence_changes(Transport::Quic).await;
}

/// The same over the WebSocket framing: held the same way (one write per window), whole and
/// in order.
#[tokio::test]
async fn a_burst_of_presence_changes_reaches_a_websocket_member_whole_and_held() {
    burst_of_presence_changes(Transport::WebSocket).await;
}

async fn burst_of_presence_changes(transport: Transport) {
    let mut cfg = config();
    let window = Duration::from_millis(400);
    cfg.session.quiet_window = window;
    cfg.limits.presence = quaver::limits::Rate {
        burst: 100.0,
        per_sec: 100.0,
    };
    let server = start(cfg).await;
    let mut b_cfg = client_config(&server, transport, Some(token(2)));
    b_cfg.ws_url = Some(format!("ws://{}/quaver/ws", server.http_addr));
    let mut b = session_with(b_cfg).await;
    let mut a = session(&server, 1, DeviceKind::Desktop).await;
    guild(&mut a, &mut [&mut b]).await;
    // What the join sent is over, and b sends nothing that could draw a packet.
    while next_event(&mut b.presence, window + Duration::from_millis(300))
        .await
        .is_some()
    {}
    b.client.stop_heartbeats();
    let received = |b: &P| b.client.session().stats().udp_rx.datagrams;
    let before = received(&b);
    let t0 = Instant::now();
    const CHANGES: usize = 10;
    for i in 0..CHANGES {
        let status = if i % 2 == 0 {
            PresenceStatus::Dnd
        } else {
            PresenceStatus::Online
        };
        let body = RequestBody::SetPresence {
            status,
            custom_status: Some(format!("s{i}")),
            activity: None,
        };
        req(&mut a.presence, body).await.unwrap();
    }
    let burst = t0.elapsed();
    let mut first = None;
    for i in 0..CHANGES {
        let p = presence_of(&mut b.presence, 1).await;
        first.get_or_insert_with(|| t0.elapsed());
        assert_eq!(
            p.custom_status.as_deref(),
            Some(format!("s{i}").as_str()),
            "in order, none lost"
        );
    }
    let last = t0.elapsed();
    if burst < window / 2 {
        // The rest waited for the window (sent all at once, they would come within the burst).
        let first = first.expect("ten arrived");
        assert!(
            last - first >= window / 2,
            "first at {first:?}, last at {last:?}, burst {burst:?}"
        );
    }
    // Nothing more (no duplicate).
    assert!(next_event(&mut b.presence, Duration::from_millis(200)).await.is_none());
    // The node counted what it held.
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quaver_events_held_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the held counter");
    assert!(held >= 1, "{held}");
    if transport == Transport::Quic {
        let packets = received(&b) - before;
        // One packet per window at most after the first, and a few the transport sends of
        // its own (acknowledgements of b's acknowledgements, flow-control credit).
        let windows = (burst.as_millis() / window.as_millis()) as u64 + 1;
        assert!(
            packets <= 1 + windows + 3 && packets < CHANGES as u64,
            "{packets} packets for {CHANGES} changes over {burst:?}"
        );
    }
    assert!(
        last <= burst + window + Duration::from_secs(2),
        "held at most a window: {last:?}"
    );
    server.shutdown().await;
}
