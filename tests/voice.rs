//! Voice over real QUIC datagrams: the SFU forwarding between raw-QUIC and WebTransport
//! participants, mute/deafen/permissions, top-N selection, leaving on a killed connection,
//! and bad datagrams dropped and counted.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use quaver::voice::DropReason;
use quaver_client::{Client, LaneStream, Transport, VoiceRx, connect};
use quaver_proto::datagram::{AudioLevel, Downlink, FLAG_REDUNDANT, Redundant, Uplink};
use quaver_proto::*;

struct P {
    id: u64,
    client: Client,
    chat: LaneStream,
    voice: LaneStream,
    slot: u16,
}

async fn req(l: &mut LaneStream, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .unwrap()
        .unwrap()
}

async fn participant(server: &quaver::Server, id: u64, transport: Transport) -> P {
    participant_with(client_config(server, transport, Some(token(id))), id).await
}

async fn participant_with(cfg: quaver_client::Config, id: u64) -> P {
    let client = connect(&cfg).await.unwrap();
    let chat = client.open_lane(Lane::Chat).await.unwrap();
    let voice = client.open_lane(Lane::Voice).await.unwrap();
    P {
        id,
        client,
        chat,
        voice,
        slot: 0,
    }
}

/// Owner 1's guild with a voice channel; others join the guild. Returns (guild, voice channel).
async fn voice_guild(owner: &mut P, others: &mut [&mut P]) -> (u64, u64) {
    voice_guild_limited(owner, others, 0).await
}

/// As [`voice_guild`], the voice channel holding at most `user_limit` (0 = no limit).
async fn voice_guild_limited(owner: &mut P, others: &mut [&mut P], user_limit: u32) -> (u64, u64) {
    let (gid, _) = shared_guild(
        &owner.client,
        &mut owner.chat,
        others.iter_mut().map(|o| &mut o.chat).collect(),
    )
    .await;
    let body = RequestBody::CreateChannel {
        guild_id: gid,
        kind: ChannelKind::Voice,
        name: "talk".into(),
        topic: String::new(),
        user_limit,
    };
    let Ok(ResponseBody::Channel(vc)) = req(&mut owner.chat, body).await else {
        panic!()
    };
    (gid, vc.id)
}

async fn join(p: &mut P, channel_id: u64) -> Vec<VoiceState> {
    match req(
        &mut p.voice,
        RequestBody::JoinVoice {
            channel_id,
            self_mute: false,
            self_deaf: false,
        },
    )
    .await
    {
        Ok(ResponseBody::VoiceJoined { slot, participants, .. }) => {
            p.slot = slot;
            participants
        }
        other => panic!("join failed: {other:?}"),
    }
}

fn frame(seq: u16, neg_dbov: u8) -> Uplink {
    Uplink {
        flags: 0,
        level: AudioLevel::new(neg_dbov, true),
        seq,
        timestamp: u32::from(seq) * 960,
    }
}

/// Collects voice frames for `wait`.
async fn receive(c: &Client, wait: Duration) -> VoiceRx {
    let mut rx = VoiceRx::default();
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Ok((h, payload))) = tokio::time::timeout_at(end, c.recv_voice()).await {
        assert_eq!(
            &payload[..],
            &[h.slot as u8, h.seq as u8, 0xAB][..],
            "payload passes through unchanged"
        );
        rx.record(&h);
    }
    rx
}

fn send_frames(p: &P, n: u16, level: u8) {
    for seq in 0..n {
        p.client
            .send_voice(&frame(seq, level), &[p.slot as u8, seq as u8, 0xAB])
            .unwrap();
    }
}

async fn paced(p: &P, n: u16, level: u8, every: Duration) {
    for seq in 0..n {
        p.client
            .send_voice(&frame(seq, level), &[p.slot as u8, seq as u8, 0xAB])
            .unwrap();
        tokio::time::sleep(every).await;
    }
}

#[tokio::test]
async fn four_participants_mixed_transports_hear_each_other_and_never_themselves() {
    let mut cfg = config();
    cfg.voice.top_n = 4;
    let server = start(cfg).await;
    let mut ps = [
        participant(&server, 1, Transport::Quic).await,
        participant(&server, 2, Transport::WebTransport).await,
        participant(&server, 3, Transport::Quic).await,
        participant(&server, 4, Transport::WebTransport).await,
    ];
    let (_, vc) = {
        let (owner, rest) = ps.split_at_mut(1);
        let mut refs: Vec<&mut P> = rest.iter_mut().collect();
        voice_guild(&mut owner[0], &mut refs).await
    };
    for p in ps.iter_mut() {
        join(p, vc).await;
    }
    let slots: BTreeMap<u64, u16> = ps.iter().map(|p| (p.id, p.slot)).collect();
    let receivers: Vec<_> = ps.iter().map(|p| receive(&p.client, Duration::from_secs(3))).collect();
    let senders = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        futures_util::future::join_all(ps.iter().map(|p| paced(p, 50, 30, Duration::from_millis(5)))).await;
    };
    let (rxs, ()) = tokio::join!(futures_util::future::join_all(receivers), senders);
    for (p, rx) in ps.iter().zip(&rxs) {
        assert!(!rx.slots.contains_key(&p.slot), "user {} heard itself", p.id);
        for (other, slot) in &slots {
            if *other == p.id {
                continue;
            }
            let (got, lost, _) = rx.slots.get(slot).copied().unwrap_or_default();
            assert_eq!((got, lost), (50, 0), "user {} from user {other}", p.id);
        }
    }
    let stats = match req(&mut ps[0].voice, RequestBody::VoiceStats).await.unwrap() {
        ResponseBody::VoiceStats { participants } => participants,
        other => panic!("{other:?}"),
    };
    assert_eq!(stats.len(), 4);
    assert!(
        stats
            .iter()
            .all(|s| s.received == 50 && s.forwarded == 150 && s.lost == 0),
        "{stats:?}"
    );
    let m = server.ctx.voice.metrics.render();
    assert!(m.contains("quaver_voice_frames_forwarded_total 600"), "{m}");
    server.shutdown().await;
}

#[tokio::test]
async fn mute_deafen_server_mute_and_permissions() {
    let server = start(config()).await;
    let mut a = participant(&server, 1, Transport::Quic).await;
    let mut b = participant(&server, 2, Transport::WebTransport).await;
    let mut c = participant(&server, 3, Transport::Quic).await;
    let mut d = participant(&server, 4, Transport::Quic).await;
    let (gid, vc) = voice_guild(&mut a, &mut [&mut b, &mut c, &mut d]).await;
    // d may not connect: a member overwrite denies it.
    const CONNECT: u64 = 1 << 20;
    req(
        &mut a.chat,
        RequestBody::SetOverwrite {
            channel_id: vc,
            target: OverwriteTarget::Member(4),
            allow: 0,
            deny: CONNECT,
        },
    )
    .await
    .unwrap();
    let e = req(
        &mut d.voice,
        RequestBody::JoinVoice {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::FORBIDDEN);
    join(&mut a, vc).await;
    join(&mut b, vc).await;
    let everyone = join(&mut c, vc).await;
    assert_eq!(everyone.len(), 3);
    // Voice states reach guild members who can see the channel (d too: it can view).
    let mut seen_c = false;
    while let Ok(Ok(ServerLane::Event { body, .. })) =
        tokio::time::timeout(Duration::from_millis(500), d.voice.next()).await
    {
        if matches!(body, EventBody::VoiceStateUpdated { ref state } if state.user_id == 3 && state.channel_id == vc) {
            seen_c = true;
        }
    }
    assert!(seen_c, "d saw c join");

    // Self-mute: nobody hears a.
    req(
        &mut a.voice,
        RequestBody::SetVoiceState {
            self_mute: true,
            self_deaf: false,
        },
    )
    .await
    .unwrap();
    send_frames(&a, 10, 20);
    let heard = receive(&b.client, Duration::from_millis(400)).await;
    assert!(!heard.slots.contains_key(&a.slot), "muted a was heard");
    req(
        &mut a.voice,
        RequestBody::SetVoiceState {
            self_mute: false,
            self_deaf: false,
        },
    )
    .await
    .unwrap();
    // b deafens: c still hears a, b does not.
    req(
        &mut b.voice,
        RequestBody::SetVoiceState {
            self_mute: false,
            self_deaf: true,
        },
    )
    .await
    .unwrap();
    let (hb, hc, ()) = tokio::join!(
        receive(&b.client, Duration::from_millis(600)),
        receive(&c.client, Duration::from_millis(600)),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            paced(&a, 10, 20, Duration::from_millis(5)).await
        }
    );
    assert!(hb.slots.is_empty(), "deafened b heard something");
    assert_eq!(hc.slots.get(&a.slot).map(|s| s.0), Some(10));
    // Server mute needs the permission; the owner has it.
    assert_eq!(
        req(
            &mut b.voice,
            RequestBody::ServerMute {
                guild_id: gid,
                user_id: 3,
                mute: true
            }
        )
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    req(
        &mut a.voice,
        RequestBody::ServerMute {
            guild_id: gid,
            user_id: 3,
            mute: true,
        },
    )
    .await
    .unwrap();
    let (ha, ()) = tokio::join!(receive(&a.client, Duration::from_millis(500)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        paced(&c, 10, 20, Duration::from_millis(5)).await
    });
    assert!(!ha.slots.contains_key(&c.slot), "server-muted c was heard");
    assert!(server.ctx.voice.metrics.dropped(DropReason::Muted) >= 20);
    // Moving needs move members; the owner moves b to a second channel.
    let body = RequestBody::CreateChannel {
        guild_id: gid,
        kind: ChannelKind::Voice,
        name: "side".into(),
        topic: String::new(),
        user_limit: 1,
    };
    let Ok(ResponseBody::Channel(side)) = req(&mut a.chat, body).await else {
        panic!()
    };
    assert_eq!(
        req(
            &mut c.voice,
            RequestBody::MoveMember {
                guild_id: gid,
                user_id: 2,
                channel_id: side.id
            }
        )
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    req(
        &mut a.voice,
        RequestBody::MoveMember {
            guild_id: gid,
            user_id: 2,
            channel_id: side.id,
        },
    )
    .await
    .unwrap();
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let states = &fresh.ready.voice_states;
    assert_eq!(
        states.iter().find(|s| s.user_id == 2).map(|s| s.channel_id),
        Some(side.id)
    );
    // The side channel holds one: c cannot join it too.
    assert_eq!(
        req(
            &mut c.voice,
            RequestBody::JoinVoice {
                channel_id: side.id,
                self_mute: false,
                self_deaf: false
            }
        )
        .await
        .unwrap_err()
        .code,
        ErrorCode::CHANNEL_FULL
    );
    // A new session of a sees the voice states in Ready.
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert_eq!(fresh.ready.voice_states.len(), 3);
    assert!(fresh.ready.voice_states.iter().any(|s| s.user_id == 3 && s.server_mute));
    server.shutdown().await;
}

#[tokio::test]
async fn top_three_of_six_speakers_are_forwarded() {
    let server = start(config()).await;
    let mut ps = Vec::new();
    for id in 1..=7u64 {
        ps.push(
            participant(
                &server,
                id,
                if id % 2 == 0 {
                    Transport::WebTransport
                } else {
                    Transport::Quic
                },
            )
            .await,
        );
    }
    let (_, vc) = {
        let (owner, rest) = ps.split_at_mut(1);
        let mut refs: Vec<&mut P> = rest.iter_mut().collect();
        voice_guild(&mut owner[0], &mut refs).await
    };
    for p in ps.iter_mut() {
        join(p, vc).await;
    }
    // Speakers 1–6; 7 listens. 1–3 are quiet (−60 dBov), 4–6 loud (−10 dBov). The quiet
    // ones start first and take the places; after the hold the loud ones push them out.
    let listener = &ps[6];
    let loud: HashSet<u16> = ps[3..6].iter().map(|p| p.slot).collect();
    let start = tokio::time::Instant::now();
    let window = async {
        // Read all along (datagrams queue up otherwise); keep what arrives in the last
        // 300 ms of the 1.6 s run.
        let mut late = VoiceRx::default();
        let end = start + Duration::from_millis(1700);
        while let Ok(Ok((h, _))) = tokio::time::timeout_at(end, listener.client.recv_voice()).await {
            if start.elapsed() >= Duration::from_millis(1300) {
                late.record(&h);
            }
        }
        late
    };
    let speak = async {
        let quiet = futures_util::future::join_all(ps[..3].iter().map(|p| paced(p, 80, 60, Duration::from_millis(20))));
        let loud = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            futures_util::future::join_all(ps[3..6].iter().map(|p| paced(p, 75, 10, Duration::from_millis(20)))).await
        };
        tokio::join!(quiet, loud)
    };
    let (late, _) = tokio::join!(window, speak);
    let heard: HashSet<u16> = late.slots.keys().copied().collect();
    assert_eq!(heard, loud, "at the end only the three loudest are forwarded");
    assert!(server.ctx.voice.metrics.dropped(DropReason::NotSelected) > 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_killed_participant_leaves_the_channel_and_the_states() {
    let mut cfg = config();
    cfg.session.ping_interval = Duration::from_millis(100);
    cfg.session.ping_timeout = Duration::from_millis(600);
    let server = start(cfg).await;
    let mut a = participant(&server, 1, Transport::Quic).await;
    let relay = Relay::start(server.quic_addr).await;
    let mut bcfg = client_config(&server, Transport::Quic, Some(token(2)));
    bcfg.addr = relay.addr;
    let mut b = participant_with(bcfg, 2).await;
    let (_, vc) = voice_guild(&mut a, &mut [&mut b]).await;
    join(&mut a, vc).await;
    join(&mut b, vc).await;
    relay.kill();
    let t0 = std::time::Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), a.voice.next())
            .await
            .expect("removal announced")
            .unwrap();
        if let ServerLane::Event {
            body: EventBody::VoiceStateRemoved {
                user_id: 2, channel_id, ..
            },
            ..
        } = next
        {
            assert_eq!(channel_id, vc);
            break;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    let ResponseBody::VoiceStats { participants } = req(&mut a.voice, RequestBody::VoiceStats).await.unwrap() else {
        panic!()
    };
    assert_eq!(participants.iter().map(|p| p.user_id).collect::<Vec<_>>(), vec![1]);
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(fresh.ready.voice_states.iter().all(|s| s.user_id != 2));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_datagrams_are_dropped_and_counted_and_the_channel_keeps_working() {
    let server = start(config()).await;
    let mut a = participant(&server, 1, Transport::Quic).await;
    let mut b = participant(&server, 2, Transport::WebTransport).await;
    let mut outsider = participant(&server, 3, Transport::Quic).await;
    let (_, vc) = voice_guild(&mut a, &mut [&mut b, &mut outsider]).await;
    join(&mut a, vc).await;
    join(&mut b, vc).await;
    let s = a.client.session();
    s.send_datagram(bytes::Bytes::from_static(&[1, 2, 3])).unwrap(); // truncated header
    s.send_datagram(bytes::Bytes::from(vec![0x40, 0, 0, 0, 0, 0, 0, 0, 1]))
        .unwrap(); // unknown version
    s.send_datagram(bytes::Bytes::from(vec![0u8; 1100])).unwrap(); // oversized
    // A redundancy block that claims 9 bytes of a payload of 2.
    s.send_datagram(bytes::Bytes::from(vec![
        FLAG_REDUNDANT,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        9,
        1,
        2,
    ]))
    .unwrap();
    outsider.client.send_voice(&frame(0, 10), &[3, 0, 0xAB]).unwrap(); // not in a voice channel
    let (heard, ()) = tokio::join!(receive(&b.client, Duration::from_millis(800)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        paced(&a, 5, 20, Duration::from_millis(5)).await
    });
    assert_eq!(
        heard.slots.get(&a.slot).map(|s| s.0),
        Some(5),
        "the channel keeps working"
    );
    let m = &server.ctx.voice.metrics;
    assert_eq!(m.dropped(DropReason::Malformed), 3);
    assert_eq!(m.dropped(DropReason::Oversized), 1);
    assert_eq!(m.dropped(DropReason::Foreign), 1);
    let (_, text) = http_get(server.http_addr, "/metrics").await;
    assert!(
        text.contains("quaver_voice_frames_dropped_total{reason=\"malformed\"} 3"),
        "{text}"
    );
    let _ = req(&mut outsider.voice, RequestBody::Ping { data: vec![] })
        .await
        .unwrap();
    server.shutdown().await;
}

/// Redundancy (PROTOCOL.md §8): a listener that asked with `SetVoiceOptions` gets each frame
/// with the previous one in front and plays a lost frame from the next datagram; one that
/// did not gets every frame stripped to its own payload, as before.
#[tokio::test]
async fn a_lost_frame_is_repaired_by_the_next_datagram_for_a_listener_that_asked() {
    let server = start(config()).await;
    let mut a = participant(&server, 1, Transport::Quic).await;
    let mut b = participant(&server, 2, Transport::WebTransport).await;
    let mut c = participant(&server, 3, Transport::Quic).await;
    let mut d = participant(&server, 4, Transport::Quic).await;
    let (_, vc) = voice_guild(&mut a, &mut [&mut b, &mut c, &mut d]).await;
    for p in [&mut b, &mut d] {
        let on = req(&mut p.voice, RequestBody::SetVoiceOptions { redundancy: true }).await;
        assert_eq!(on, Ok(ResponseBody::Done));
    }
    for p in [&mut a, &mut b, &mut c, &mut d] {
        join(p, vc).await;
    }
    // Frames 0..6 from a, the datagram of frame 2 late on the way up: it arrives after
    // frame 3, whose copy of it the server has already sent on.
    let mut tx = quaver_client::redundancy::Sender::default();
    let datagrams: Vec<Vec<u8>> = (0..6u16)
        .map(|n| tx.datagram(&frame(n, 20), &[a.slot as u8, n as u8, 0xAB], 1016))
        .collect();
    let raw = async {
        // d reads the datagrams themselves.
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Ok(Ok(x)) = tokio::time::timeout_at(end, d.client.session().read_datagram()).await {
            got.push(x);
        }
        got
    };
    let (rb, rc, rd, ()) = tokio::join!(
        receive(&b.client, Duration::from_millis(800)),
        receive(&c.client, Duration::from_millis(800)),
        raw,
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for n in [0, 1, 3, 2, 4, 5] {
                let x = &datagrams[n];
                a.client.session().send_datagram(bytes::Bytes::from(x.clone())).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    );
    assert_eq!(
        rb.slots.get(&a.slot).map(|s| (s.0, s.1)),
        Some((6, 0)),
        "b plays all six"
    );
    assert_eq!(b.client.voice_repair().0, 1, "one of them from a copy");
    // c takes no copies: the server sent frame 2 on from frame 3's copy, as a frame of its
    // own, and dropped the late original; b repaired it itself and got nothing twice.
    assert_eq!(
        rc.slots.get(&a.slot).map(|s| (s.0, s.1)),
        Some((6, 0)),
        "c gets it from the server"
    );
    assert_eq!(c.client.voice_repair(), (0, 0));
    assert_eq!(b.client.voice_repair(), (1, 0));
    assert_eq!(
        server
            .ctx
            .voice
            .metrics
            .repaired
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // What went to d: frame 3 carries frame 2; frame 0 had nothing before it.
    let seen: Vec<(u16, Option<u16>, Vec<u8>)> = rd
        .iter()
        .map(|x| {
            let (h, p) = Downlink::parse(x).unwrap();
            let (prev, own) = Redundant::split(h.flags, p).unwrap();
            (h.seq, prev.map(|p| p.timestamp_offset), own.to_vec())
        })
        .collect();
    let expect: Vec<(u16, Option<u16>, Vec<u8>)> = [0u16, 1, 3, 4, 5]
        .iter()
        .map(|n| (*n, (*n > 0).then_some(960), vec![a.slot as u8, *n as u8, 0xAB]))
        .collect();
    assert_eq!(seen, expect);
    let (h, p) = Downlink::parse(&rd[2]).unwrap();
    assert_eq!(
        Redundant::split(h.flags, p).unwrap().0.unwrap().payload,
        &[a.slot as u8, 2, 0xAB]
    );
    // A speaker that sends no copies (as a WebRTC participant's frames come): the server
    // puts the frame it forwarded just before in front, for the listeners that asked.
    let raw = async {
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_millis(600);
        while let Ok(Ok(x)) = tokio::time::timeout_at(end, d.client.session().read_datagram()).await {
            got.push(x);
        }
        got
    };
    let (rd, ()) = tokio::join!(raw, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 0..3u16 {
            let mut x = Vec::new();
            frame(n, 20).write(&[c.slot as u8, n as u8, 0xAB], &mut x);
            c.client.session().send_datagram(bytes::Bytes::from(x)).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let seen: Vec<(u16, Option<Vec<u8>>, Vec<u8>)> = rd
        .iter()
        .map(|x| {
            let (h, p) = Downlink::parse(x).unwrap();
            assert_eq!(h.slot, c.slot);
            let (prev, own) = Redundant::split(h.flags, p).unwrap();
            (h.seq, prev.map(|p| p.payload.to_vec()), own.to_vec())
        })
        .collect();
    let s = c.slot as u8;
    assert_eq!(
        seen,
        vec![
            (0, None, vec![s, 0, 0xAB]),
            (1, Some(vec![s, 0, 0xAB]), vec![s, 1, 0xAB]),
            (2, Some(vec![s, 1, 0xAB]), vec![s, 2, 0xAB]),
        ]
    );
    server.shutdown().await;
}

/// Six people join a channel limited to 2 at the same instant: exactly two get in, the
/// others hear `CHANNEL_FULL` — the limit is decided where the membership lives.
#[tokio::test]
async fn simultaneous_joins_never_exceed_the_user_limit() {
    let server = start(config()).await;
    let mut owner = participant(&server, 1, Transport::Quic).await;
    let mut others = Vec::new();
    for id in 2..=6 {
        others.push(participant(&server, id, Transport::Quic).await);
    }
    let (_, vc) = voice_guild_limited(&mut owner, &mut others.iter_mut().collect::<Vec<_>>(), 2).await;
    let mut people = others;
    people.insert(0, owner);
    for round in 0..3 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(people.len()));
        let mut tasks = Vec::new();
        for mut p in people.drain(..) {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let join = RequestBody::JoinVoice {
                    channel_id: vc,
                    self_mute: false,
                    self_deaf: false,
                };
                let r = req(&mut p.voice, join).await;
                (p, r)
            }));
        }
        let (mut joined, mut full) = (0, 0);
        for t in tasks {
            let (p, r) = t.await.unwrap();
            match r {
                Ok(ResponseBody::VoiceJoined { .. }) => joined += 1,
                Err(e) if e.code == ErrorCode::CHANNEL_FULL => full += 1,
                other => panic!("round {round}: {other:?}"),
            }
            people.push(p);
        }
        assert_eq!((joined, full), (2, 4), "round {round}");
        for p in &mut people {
            req(&mut p.voice, RequestBody::LeaveVoice).await.unwrap();
        }
    }
    server.shutdown().await;
}

/// The next `VoiceStatesSnapshot` on `lane` within `limit`: (channels, (user, channel) pairs).
async fn states_snapshot(lane: &mut LaneStream, limit: Duration) -> Option<(Vec<u64>, Vec<(u64, u64)>)> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let Ok(Ok(f)) = tokio::time::timeout_at(end, lane.next()).await else {
            return None;
        };
        if let ServerLane::Event {
            body: EventBody::VoiceStatesSnapshot { channel_ids, states },
            ..
        } = f
        {
            return Some((channel_ids, states.iter().map(|s| (s.user_id, s.channel_id)).collect()));
        }
    }
}

/// Whoever can newly see a voice channel is told who is in it: a new guild member, and a
/// member given view of a channel that was hidden from them (no reconnect needed).
#[tokio::test]
async fn who_newly_sees_a_voice_channel_is_told_who_is_in_it() {
    let server = start(config()).await;
    let mut a = participant(&server, 1, Transport::Quic).await;
    let mut b = participant(&server, 2, Transport::Quic).await;
    let mut c = participant(&server, 3, Transport::WebTransport).await;
    let (gid, vc) = voice_guild(&mut a, &mut [&mut b]).await;
    // A second voice channel hidden from everyone but its members' overwrites.
    let body = RequestBody::CreateChannel {
        guild_id: gid,
        kind: ChannelKind::Voice,
        name: "private".into(),
        topic: String::new(),
        user_limit: 0,
    };
    let Ok(ResponseBody::Channel(hidden)) = req(&mut a.chat, body).await else {
        panic!()
    };
    let view = 1u64 << 10;
    let r = req(
        &mut a.chat,
        RequestBody::SetOverwrite {
            channel_id: hidden.id,
            target: OverwriteTarget::Role(gid),
            allow: 0,
            deny: view,
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    join(&mut b, vc).await;
    join(&mut a, hidden.id).await;
    // c joins the guild: told who is in the channel it can see, not in the hidden one.
    join_guild(&mut a.chat, gid, &mut c.chat).await;
    let got = states_snapshot(&mut c.voice, Duration::from_secs(3)).await;
    assert_eq!(got, Some((vec![vc], vec![(2, vc)])), "the new member's view of voice");
    // b is given view of the hidden channel: told a is in it.
    let r = req(
        &mut a.chat,
        RequestBody::SetOverwrite {
            channel_id: hidden.id,
            target: OverwriteTarget::Member(2),
            allow: view,
            deny: 0,
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    let got = states_snapshot(&mut b.voice, Duration::from_secs(3)).await;
    assert_eq!(got, Some((vec![hidden.id], vec![(1, hidden.id)])));
    // c, still without view of it, is told nothing about it.
    assert_eq!(states_snapshot(&mut c.voice, Duration::from_millis(300)).await, None);
}
