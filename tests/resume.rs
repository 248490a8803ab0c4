//! Resume and the resilient native client over real QUIC: killed connections, replay,
//! catch-up from the log, gaps, zombies, migration, and refusal of another user's session.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_client::{LaneStream, Transport, connect};
use quaver_proto::*;

fn fast(mut cfg: quaver::config::Config) -> quaver::config::Config {
    cfg.session.ping_interval = Duration::from_millis(100);
    cfg.session.ping_timeout = Duration::from_secs(5);
    cfg.limits.send = quaver::limits::Rate {
        burst: 1000.0,
        per_sec: 1000.0,
    };
    cfg
}

const BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(20),
    max: Duration::from_millis(200),
};

async fn req(l: &mut LaneStream, body: RequestBody) -> ResponseBody {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// A sender (user 1) owning a guild that user 2 joined; returns (sender's chat lane, channel).
async fn setup(server: &quaver::Server) -> (quaver_client::Client, LaneStream, u64) {
    let a = connect(&client_config(server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut chat = a.open_lane(Lane::Chat).await.unwrap();
    let ResponseBody::Guild(g) = req(&mut chat, RequestBody::CreateGuild { name: "g".into() }).await else {
        panic!()
    };
    let ResponseBody::Invite(inv) = req(
        &mut chat,
        RequestBody::CreateInvite {
            guild_id: g.id,
            max_uses: 0,
            max_age_secs: 0,
        },
    )
    .await
    else {
        panic!()
    };
    let b = connect(&client_config(server, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let mut bl = b.open_lane(Lane::Chat).await.unwrap();
    req(&mut bl, RequestBody::JoinGuild { code: inv.code }).await;
    b.close();
    let Ok(Ok(FetchResponse::Channels { channels })) = a.fetch(FetchRequest::Channels { guild_id: g.id }).await else {
        panic!()
    };
    (a, chat, channels[0].id)
}

fn resilient_via(server: &quaver::Server, relay: &Relay, user: u64) -> Resilient {
    let mut cfg = client_config(server, Transport::Quic, Some(token(user)));
    cfg.addr = relay.addr;
    cfg.keep_alive = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_secs(1);
    Resilient::start(cfg, BACKOFF)
}

/// Collects the channel's message seqs from `r` until `n` arrived or `limit` passed.
async fn collect(
    r: &mut Resilient,
    channel: u64,
    n: usize,
    limit: Duration,
    mut seen: Vec<u64>,
    stats: &mut (u32, u32, u32),
) -> Vec<u64> {
    let end = tokio::time::Instant::now() + limit;
    while seen.len() < n {
        match tokio::time::timeout_at(end, r.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Update::Event(EventBody::MessageCreated { seq, message }))) if message.channel_id == channel => {
                seen.push(seq)
            }
            Ok(Some(Update::Event(EventBody::Gap { .. }))) => stats.2 += 1,
            Ok(Some(Update::Connected { resumed, .. })) => {
                if resumed {
                    stats.0 += 1
                } else {
                    stats.1 += 1
                }
            }
            Ok(Some(_)) => {}
        }
    }
    seen
}

#[tokio::test]
async fn killed_twenty_times_during_a_stream_every_message_exactly_once() {
    let mut cfg = fast(config());
    cfg.session.resume_window = Duration::from_secs(30);
    let server = start(cfg).await;
    let (_a, mut a_chat, ch) = setup(&server).await;
    let relay = Relay::start(server.quic_addr).await;
    let mut r = resilient_via(&server, &relay, 2);
    assert!(matches!(r.next().await, Some(Update::Connected { resumed: false, .. })));
    // Another user streams 200 messages.
    let sender = tokio::spawn(async move {
        for k in 1..=200u64 {
            let body = RequestBody::SendMessage {
                channel_id: ch,
                nonce: k,
                content: format!("m{k}"),
                reply_to: None,
            };
            assert!(matches!(req(&mut a_chat, body).await, ResponseBody::MessageSent { .. }));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    // The receiver sends 10 of its own meanwhile: each must land exactly once.
    let requester = r.handle();
    let own = tokio::spawn(async move {
        let mut ids = Vec::new();
        for k in 0..10u64 {
            let body = RequestBody::SendMessage {
                channel_id: ch,
                nonce: 9000 + k,
                content: format!("r{k}"),
                reply_to: None,
            };
            match tokio::time::timeout(Duration::from_secs(30), requester.request(body))
                .await
                .expect("send completes")
            {
                Ok(ResponseBody::MessageSent { message_id, .. }) => ids.push(message_id),
                other => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ids
    });
    // Kill the live connection 20 times, each time after the client is back.
    let mut seen = Vec::new();
    let (mut resumed, mut fresh, mut gaps) = (0, 0, 0);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay.kill();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), r.next())
                .await
                .expect("recovers")
                .unwrap()
            {
                Update::Event(EventBody::MessageCreated { seq, message }) if message.channel_id == ch => seen.push(seq),
                Update::Event(EventBody::Gap { .. }) => gaps += 1,
                Update::Connected { resumed: true, .. } => {
                    resumed += 1;
                    break;
                }
                Update::Connected { resumed: false, .. } => {
                    fresh += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    sender.await.unwrap();
    let ids: std::collections::HashSet<u64> = own.await.unwrap().into_iter().collect();
    let mut stats = (0, 0, 0);
    let seen = collect(&mut r, ch, 210, Duration::from_secs(20), seen, &mut stats).await;
    assert_eq!(
        seen,
        (1..=210).collect::<Vec<_>>(),
        "every message exactly once, in seq order"
    );
    assert_eq!(resumed + fresh, 20);
    assert_eq!(fresh + stats.1, 0, "every reconnect resumed exactly");
    assert_eq!(gaps + stats.2, 0, "no gaps");
    assert_eq!(ids.len(), 10, "10 distinct acknowledged messages");
    let mut all = Vec::new();
    let mut anchor = HistoryAnchor::Latest;
    loop {
        let (page, more, _) = server.ctx.chat.store().history(ch, anchor, 100).await.unwrap();
        anchor = HistoryAnchor::Before(page[0].seq);
        all.extend(page);
        if !more {
            break;
        }
    }
    assert_eq!(all.len(), 210);
    assert_eq!(
        all.iter().filter(|m| m.author_id == 2).count(),
        10,
        "no duplicate from retried sends"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn past_the_window_the_client_is_caught_up_from_the_log_or_told_of_a_gap() {
    let mut cfg = fast(config());
    // The server notices the dead connection after 600 ms, then keeps it 300 ms.
    cfg.session.ping_timeout = Duration::from_millis(600);
    cfg.session.resume_window = Duration::from_millis(300);
    let server = start(cfg).await;
    let (_a, mut a_chat, ch) = setup(&server).await;
    let relay = Relay::start(server.quic_addr).await;
    let mut r = resilient_via(&server, &relay, 2);
    let mut stats = (0, 0, 0);
    assert!(matches!(r.next().await, Some(Update::Connected { resumed: false, .. })));
    for k in 1..=3u64 {
        req(
            &mut a_chat,
            RequestBody::SendMessage {
                channel_id: ch,
                nonce: k,
                content: "before".into(),
                reply_to: None,
            },
        )
        .await;
    }
    let seen = collect(&mut r, ch, 3, Duration::from_secs(5), Vec::new(), &mut stats).await;
    assert_eq!(seen, vec![1, 2, 3]);
    // Cut the relay entirely so the client cannot come back until the window has passed.
    relay.cut();
    for k in 4..=8u64 {
        req(
            &mut a_chat,
            RequestBody::SendMessage {
                channel_id: ch,
                nonce: k,
                content: "missed".into(),
                reply_to: None,
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let relay2 = Relay::start(server.quic_addr).await;
    // Point a fresh resilient client's memory? No: the same client must reconnect. Use the
    // server's side: the old session is gone; reconnecting through a new relay address.
    drop(r);
    // Reconnect with the old session id and positions, as the resilient client would.
    let mut cfg = client_config(&server, Transport::Quic, Some(token(2)));
    cfg.addr = relay2.addr;
    let gone = server.ctx.sessions.of_user(2);
    assert!(gone.is_empty(), "the detached session was forgotten after the window");
    cfg.resume = Some(ResumeRequest {
        session_id: SessionId([7; 16]),
        lanes: vec![LaneSeq {
            lane: Lane::Chat,
            seq: 3,
        }],
        channels: vec![ChannelSeq { channel_id: ch, seq: 3 }],
    });
    let c = connect(&cfg).await.unwrap();
    assert!(!c.resumed, "unknown session: a new one");
    let mut lane = c.open_lane(Lane::Chat).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(5), lane.next())
            .await
            .unwrap()
            .unwrap()
        {
            ServerLane::Event {
                body: EventBody::MessageCreated { seq, .. },
                ..
            } => got.push(seq),
            ServerLane::Event { body, .. } => panic!("unexpected {body:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, vec![4, 5, 6, 7, 8], "caught up from the event log");
    // Now the log is pruned (retention passed): catching up says Gap instead of a hole.
    let pruned = server
        .ctx
        .chat
        .store()
        .prune_events(quaver::ids::now_ms() + 1)
        .await
        .unwrap();
    assert!(pruned >= 8);
    req(
        &mut a_chat,
        RequestBody::SendMessage {
            channel_id: ch,
            nonce: 9,
            content: "after prune".into(),
            reply_to: None,
        },
    )
    .await;
    let mut cfg2 = client_config(&server, Transport::Quic, Some(token(2)));
    cfg2.resume = Some(ResumeRequest {
        session_id: SessionId([8; 16]),
        lanes: vec![],
        channels: vec![ChannelSeq { channel_id: ch, seq: 3 }],
    });
    let c2 = connect(&cfg2).await.unwrap();
    let mut lane2 = c2.open_lane(Lane::Chat).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), lane2.next())
        .await
        .unwrap()
        .unwrap()
    {
        ServerLane::Event {
            body:
                EventBody::Gap {
                    channel_id,
                    after_seq,
                    resumes_at,
                },
            ..
        } => {
            assert_eq!((channel_id, after_seq), (ch, 3));
            assert_eq!(resumes_at, 9, "the pruned events 4..=8 are named as the gap");
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    let _ = stats;
    server.shutdown().await;
}

#[tokio::test]
async fn a_zombie_connection_is_detected_and_replaced_quickly() {
    let mut cfg = fast(config());
    cfg.session.ping_timeout = Duration::from_secs(20);
    let server = start(cfg).await;
    let (_a, mut a_chat, ch) = setup(&server).await;
    let relay = Relay::start(server.quic_addr).await;
    let mut r = resilient_via(&server, &relay, 2);
    assert!(matches!(r.next().await, Some(Update::Connected { .. })));
    let t0 = Instant::now();
    relay.kill();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.next()).await.unwrap() {
            Some(Update::Disconnected { reason }) => {
                assert!(reason.contains("zombie"), "{reason}");
                break;
            }
            Some(_) => {}
            None => panic!("client stopped"),
        }
    }
    let detected = t0.elapsed();
    assert!(
        detected < Duration::from_secs(2),
        "detected in {detected:?}, long before the 20 s idle timeout"
    );
    match tokio::time::timeout(Duration::from_secs(5), r.next()).await.unwrap() {
        Some(Update::Connected { resumed, .. }) => assert!(resumed, "the replacement resumed the session"),
        other => panic!("{other:?}"),
    }
    req(
        &mut a_chat,
        RequestBody::SendMessage {
            channel_id: ch,
            nonce: 1,
            content: "still there?".into(),
            reply_to: None,
        },
    )
    .await;
    let mut stats = (0, 0, 0);
    assert_eq!(
        collect(&mut r, ch, 1, Duration::from_secs(5), Vec::new(), &mut stats).await,
        vec![1]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn migration_keeps_the_session_and_loses_nothing() {
    let server = start(fast(config())).await;
    let (_a, mut a_chat, ch) = setup(&server).await;
    let cfg = client_config(&server, Transport::Quic, Some(token(2)));
    let mut r = Resilient::start(cfg, BACKOFF);
    let Some(Update::Connected { ready, .. }) = r.next().await else {
        panic!()
    };
    let mut stats = (0, 0, 0);
    for k in 1..=10u64 {
        req(
            &mut a_chat,
            RequestBody::SendMessage {
                channel_id: ch,
                nonce: k,
                content: "x".into(),
                reply_to: None,
            },
        )
        .await;
        if k == 5 {
            r.rebind().await.unwrap();
        }
    }
    let seen = collect(&mut r, ch, 10, Duration::from_secs(5), Vec::new(), &mut stats).await;
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(stats, (0, 0, 0), "no reconnect: the same connection moved");
    let h = server.ctx.sessions.get(&ready.session_id).expect("same session");
    assert!(h.attached());
    server.shutdown().await;
}

/// A connect begun while the network is dark (every packet dropped) answers soon after it
/// returns: fresh handshakes go out after `probe_every` and twice that again while the
/// server is silent (three at most), whose retransmissions interleave, where a single
/// attempt would wait for its next retransmission (1 s, 3 s, 7 s after its start).
#[tokio::test]
async fn a_connect_begun_during_an_outage_answers_soon_after_it() {
    let server = start(config()).await;
    let relay = quaver_client::relay::Relay::start(server.quic_addr).await;
    relay.cut();
    let mut cfg = client_config(&server, Transport::Quic, Some(token(1)));
    cfg.addr = relay.addr;
    let connecting = tokio::spawn(async move { (connect(&cfg).await, Instant::now()) });
    // Past the single attempt's second retransmission (3 s): its next is at 7 s.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert!(
        !connecting.is_finished(),
        "nothing can answer while the network is dark"
    );
    let back = Instant::now();
    relay.restore();
    let (client, ready_at) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("connected")
        .unwrap();
    let client = client.expect("connected once the network is back");
    let took = ready_at - back;
    assert!(
        took < Duration::from_millis(1500),
        "Ready {took:?} after the network returned (probes at 0.5 s and 1.5 s)"
    );
    // One session, one Hello: the losing attempts never reached the server's sessions.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.ctx.sessions.of_user(1).len(), 1);
    assert!(server.ctx.sessions.get(&client.ready.session_id).is_some());
    server.shutdown().await;
}

/// `Resilient::network_changed` while waiting out a long backoff: the wait ends at once.
#[tokio::test]
async fn a_network_change_ends_the_wait_to_reconnect() {
    let server = start(config()).await;
    let relay = quaver_client::relay::Relay::start(server.quic_addr).await;
    relay.cut();
    let mut cfg = client_config(&server, Transport::Quic, Some(token(1)));
    cfg.addr = relay.addr;
    cfg.connect_timeout = Duration::from_millis(600);
    let slow = Backoff {
        min: Duration::from_secs(30),
        max: Duration::from_secs(30),
    };
    let mut r = Resilient::start(cfg, slow);
    // Wait for a failure that schedules a retry far enough away to tell apart.
    loop {
        match tokio::time::timeout(Duration::from_secs(60), r.next()).await {
            Ok(Some(Update::Unreachable { retry_in, .. })) if retry_in > Duration::from_secs(5) => break,
            Ok(Some(Update::Unreachable { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    relay.restore();
    let told = Instant::now();
    r.network_changed();
    match tokio::time::timeout(Duration::from_secs(5), r.next()).await {
        Ok(Some(Update::Connected { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(told.elapsed() < Duration::from_secs(3), "{:?}", told.elapsed());
    server.shutdown().await;
}

#[tokio::test]
async fn resuming_another_users_session_is_refused() {
    let server = start(config()).await;
    let a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut cfg = client_config(&server, Transport::WebTransport, Some(token(2)));
    cfg.resume = Some(ResumeRequest {
        session_id: a.ready.session_id,
        lanes: vec![],
        channels: vec![],
    });
    let e = connect(&cfg).await.unwrap_err();
    assert_eq!(e.close_code(), Some(CloseCode::RESUME_REFUSED));
    // The owner can.
    a.session().close(CloseCode::GOING_AWAY.0, "lost");
    let mut own = client_config(&server, Transport::Quic, Some(token(1)));
    own.resume = Some(ResumeRequest {
        session_id: a.ready.session_id,
        lanes: vec![],
        channels: vec![],
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = connect(&own).await.unwrap();
    assert!(again.resumed);
    assert_eq!(again.ready.session_id, a.ready.session_id);
    server.shutdown().await;
}

/// The event-log retention is a rule, not a pruning schedule: events older than it are a
/// `Gap` on catch-up even if the pruner has not run yet.
#[tokio::test]
async fn events_past_the_retention_are_a_gap_before_any_pruning() {
    let mut cfg = fast(config());
    cfg.session.event_log_retention = Duration::from_secs(2);
    let server = start(cfg).await;
    let (_a, mut a_chat, ch) = setup(&server).await;
    let send = |nonce: u64| RequestBody::SendMessage {
        channel_id: ch,
        nonce,
        content: "m".into(),
        reply_to: None,
    };
    for k in 1..=3 {
        req(&mut a_chat, send(k)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    req(&mut a_chat, send(4)).await;
    let mut cfg = client_config(&server, Transport::Quic, Some(token(2)));
    cfg.resume = Some(ResumeRequest {
        session_id: SessionId([9; 16]),
        lanes: vec![],
        channels: vec![ChannelSeq { channel_id: ch, seq: 1 }],
    });
    let c = connect(&cfg).await.unwrap();
    let mut lane = c.open_lane(Lane::Chat).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), lane.next())
            .await
            .unwrap()
            .unwrap()
        {
            ServerLane::Event { body, .. } => got.push(body),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(
            got[0],
            EventBody::Gap {
                after_seq: 1,
                resumes_at: 4,
                ..
            }
        ),
        "{:?}",
        got[0]
    );
    assert!(
        matches!(got[1], EventBody::MessageCreated { seq: 4, .. }),
        "{:?}",
        got[1]
    );
    server.shutdown().await;
}

/// What ends a session and what leaves it resumable, as a client closes: over WebTransport
/// a close with code 0 (what a browser page sends when it unloads — a reload included)
/// leaves it resumable; finishing the control stream ends it on either transport; over raw
/// QUIC a close with code 0 ends it too.
#[tokio::test]
async fn a_webtransport_close_with_code_0_stays_resumable_and_a_finished_control_stream_ends_it() {
    let server = start(config()).await;
    let resumes = |transport, user, session_id| {
        let mut cfg = client_config(&server, transport, Some(token(user)));
        cfg.resume = Some(ResumeRequest {
            session_id,
            lanes: vec![],
            channels: vec![],
        });
        cfg
    };
    for (transport, user, how, expect) in [
        (Transport::WebTransport, 61, "close 0", true),
        (Transport::WebTransport, 62, "end", false),
        (Transport::Quic, 63, "close 0", false),
        (Transport::Quic, 64, "end", false),
    ] {
        let c = connect(&client_config(&server, transport, Some(token(user))))
            .await
            .unwrap();
        let id = c.ready.session_id;
        match how {
            "end" => c.end().await,
            _ => {
                c.close();
                let _ = tokio::time::timeout(Duration::from_secs(2), c.closed()).await;
            }
        }
        // The server has noticed once no connection is open.
        assert!(eventually(Duration::from_secs(3), || server.ctx.metrics.open_sessions() == 0).await);
        let again = connect(&resumes(transport, user, id)).await.unwrap();
        assert_eq!(again.resumed, expect, "{transport:?} after {how}");
        assert_eq!(again.ready.session_id == id, expect);
        again.end().await;
    }
    server.shutdown().await;
}

/// A server that cannot be reached (its packets vanish, as on a network that drops UDP) is
/// reported at once — `Update::Unreachable` after the connect timeout, not 20 s of silence —
/// a request can be given a deadline, and a request given up on before it went out is never
/// sent once the client does connect (here: to the cluster's other node).
#[tokio::test]
async fn an_unreachable_server_is_reported_and_requests_have_deadlines() {
    let server = start(fast(config())).await;
    let (_a, a_chat, ch) = setup(&server).await;
    // A UDP socket that reads nothing and answers nothing.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = client_config(&server, Transport::Quic, Some(token(2)));
    cfg.alternates = vec![cfg.addr];
    cfg.addr = hole.local_addr().unwrap();
    cfg.connect_timeout = Duration::from_millis(800);
    let started = Instant::now();
    // A long first backoff: the request below times out before the next attempt.
    let mut r = Resilient::start(
        cfg,
        Backoff {
            min: Duration::from_millis(1500),
            max: Duration::from_millis(1500),
        },
    );
    let given_up = r.request_within(
        RequestBody::SendMessage {
            channel_id: ch,
            nonce: 77,
            content: "given up".into(),
            reply_to: None,
        },
        Duration::from_millis(400),
    );
    let refused = given_up.await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::UNAVAILABLE, "{refused:?}");
    match tokio::time::timeout(Duration::from_secs(5), r.next()).await {
        Ok(Some(Update::Unreachable { attempts, error, .. })) => {
            assert_eq!(attempts, 1);
            assert!(error.contains("timed out"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Then the other node answers: connected, and the given-up message was never sent.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.next()).await {
            Ok(Some(Update::Connected { .. })) => break,
            Ok(Some(Update::Unreachable { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    let sent = r.send_message(ch, "after").await.unwrap();
    assert!(matches!(sent, ResponseBody::MessageSent { .. }));
    let Ok(Ok(FetchResponse::History { messages, .. })) = _a
        .fetch(FetchRequest::History {
            channel_id: ch,
            anchor: HistoryAnchor::Latest,
            limit: 50,
        })
        .await
    else {
        panic!("history")
    };
    let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert!(texts.contains(&"after") && !texts.contains(&"given up"), "{texts:?}");
    drop(a_chat);
}

/// A session's channel view (`ViewChannels`) is session state: an exact resume keeps it; a
/// new session of the same user starts with every channel again.
#[tokio::test]
async fn a_channel_view_holds_through_an_exact_resume_and_a_new_session_gets_everything() {
    let server = start(fast(config())).await;
    let a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut a_chat = a.open_lane(Lane::Chat).await.unwrap();
    let b = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let mut b_chat = b.open_lane(Lane::Chat).await.unwrap();
    let (gid, general) = shared_guild(&a, &mut a_chat, vec![&mut b_chat]).await;
    let busy = text_channel(&mut a_chat, gid, "busy").await;
    let view = RequestBody::ViewChannels {
        channel_ids: Some(vec![general]),
    };
    assert_eq!(req(&mut b_chat, view).await, ResponseBody::Done);
    // The connection is lost (not ended): the session waits for a resume.
    b.session().close(CloseCode::GOING_AWAY.0, "lost");
    assert!(eventually(Duration::from_secs(3), || server.ctx.metrics.open_sessions() == 1).await);
    let mut cfg = client_config(&server, Transport::Quic, Some(token(2)));
    cfg.resume = Some(ResumeRequest {
        session_id: b.ready.session_id,
        lanes: vec![],
        channels: vec![],
    });
    let again = connect(&cfg).await.unwrap();
    assert!(again.resumed, "an exact resume");
    let mut again_chat = again.open_lane(Lane::Chat).await.unwrap();
    let send = |nonce: u64| RequestBody::SendMessage {
        channel_id: busy,
        nonce,
        content: "busy".into(),
        reply_to: None,
    };
    req(&mut a_chat, send(1)).await;
    // The resumed session still views only general: the busy channel's message comes as
    // activity (the replayed events before it are the set-up's).
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), again_chat.next())
            .await
            .expect("an event in time")
            .unwrap();
        match e {
            ServerLane::Event {
                body: EventBody::ChannelActivity { channels },
                ..
            } => {
                assert_eq!(
                    channels,
                    vec![ChannelSeq {
                        channel_id: busy,
                        seq: 1
                    }]
                );
                break;
            }
            ServerLane::Event {
                body: EventBody::MessageCreated { message, .. },
                ..
            } => assert_ne!(message.channel_id, busy, "a message of a channel not viewed"),
            _ => {}
        }
    }
    // A new session of the same user: every channel, until it says otherwise.
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let mut fresh_chat = fresh.open_lane(Lane::Chat).await.unwrap();
    req(&mut fresh_chat, RequestBody::Ping { data: vec![] }).await;
    req(&mut a_chat, send(2)).await;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), fresh_chat.next())
            .await
            .expect("the message in time")
            .unwrap();
        if let ServerLane::Event {
            body: EventBody::MessageCreated { message, .. },
            ..
        } = e
        {
            assert_eq!(message.channel_id, busy);
            break;
        }
    }
    server.shutdown().await;
}

/// The native client's view (`Resilient::view`) is said again to a new session: after the
/// window passed and the server forgot the session, a channel outside the view still
/// arrives as activity, not as messages.
#[tokio::test]
async fn the_native_client_says_its_view_again_to_a_new_session() {
    let mut cfg = fast(config());
    cfg.session.ping_timeout = Duration::from_millis(600);
    cfg.session.resume_window = Duration::from_millis(300);
    let server = start(cfg).await;
    let (a, mut a_chat, ch) = setup(&server).await;
    let Ok(Ok(FetchResponse::Guilds { guilds })) = a.fetch(FetchRequest::Guilds).await else {
        panic!("guilds")
    };
    let busy = text_channel(&mut a_chat, guilds[0].guild.id, "busy").await;
    let relay = Relay::start(server.quic_addr).await;
    let mut r = resilient_via(&server, &relay, 2);
    assert!(matches!(r.next().await, Some(Update::Connected { resumed: false, .. })));
    assert_eq!(r.view(Some(vec![ch])).await, Ok(ResponseBody::Done));
    // Cut until the server has forgotten the session: the next one is new.
    relay.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.ctx.sessions.of_user(2).is_empty(), "forgotten after the window");
    relay.restore();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.next())
            .await
            .expect("reconnected in time")
        {
            Some(Update::Connected { resumed, .. }) => {
                assert!(!resumed, "a new session");
                break;
            }
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
    // Requests on the lane are answered in order: once this is, the view said first applies.
    r.request(RequestBody::Ping { data: vec![] }).await.unwrap();
    let send = |channel_id: u64, nonce: u64| RequestBody::SendMessage {
        channel_id,
        nonce,
        content: "after".into(),
        reply_to: None,
    };
    req(&mut a_chat, send(busy, 1)).await;
    req(&mut a_chat, send(ch, 100)).await;
    let mut activity = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.next())
            .await
            .expect("events in time")
        {
            Some(Update::Event(EventBody::ChannelActivity { channels })) => {
                assert!(channels.iter().any(|c| c.channel_id == busy));
                activity = true;
            }
            Some(Update::Event(EventBody::MessageCreated { message, .. })) => {
                assert_ne!(message.channel_id, busy, "the view was said again");
                if message.channel_id == ch && message.content == "after" {
                    break;
                }
            }
            Some(_) => {}
            None => panic!("the client stopped"),
        }
    }
    assert!(activity, "the busy channel's message came as activity first");
    server.shutdown().await;
}
