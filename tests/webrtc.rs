//! WebRTC participants in a voice channel, end to end over loopback: a str0m peer (full
//! ICE, as a browser) joins with `JoinVoiceWebRtc` on a real session's voice lane and
//! connects to the node's WebRTC port; a native participant on QUIC datagrams is in the
//! same channel. Each hears the other, the WebRTC participant's speaking is announced, and
//! its mute stops its frames at the SFU.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use browser::Browser;
use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::datagram::{AudioLevel, Uplink};
use quaver_proto::*;

async fn req(l: &mut LaneStream, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .unwrap()
        .unwrap()
}

struct Native {
    client: Client,
    chat: LaneStream,
    voice: LaneStream,
}

async fn native(server: &quaver::Server, id: u64) -> Native {
    let client = connect(&client_config(server, Transport::Quic, Some(token(id))))
        .await
        .unwrap();
    let chat = client.open_lane(Lane::Chat).await.unwrap();
    let voice = client.open_lane(Lane::Voice).await.unwrap();
    Native { client, chat, voice }
}

fn webrtc_config() -> quaver::config::Config {
    let mut cfg = config();
    cfg.webrtc_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

#[tokio::test]
async fn a_webrtc_peer_and_a_datagram_participant_hear_each_other() {
    let server = start(webrtc_config()).await;
    let port = server.ctx.webrtc.as_ref().unwrap().local_addr();
    assert_ne!(port, server.quic_addr);
    hear_each_other(server, port).await;
}

#[tokio::test]
async fn webrtc_on_the_quic_port_is_told_apart_by_its_first_byte() {
    let mut cfg = config();
    cfg.webrtc_shared_port = true;
    let server = start(cfg).await;
    let port = server.ctx.webrtc.as_ref().unwrap().local_addr();
    assert_eq!(port, server.quic_addr, "the answers name the QUIC port");
    hear_each_other(server, port).await;
}

/// The whole exchange against `server`, whose WebRTC port is `port`.
async fn hear_each_other(server: quaver::Server, port: SocketAddr) {
    let mut a = native(&server, 1).await; // native, on datagrams
    let mut b = native(&server, 2).await; // signals for the WebRTC peer
    let vc = voice_channel(&mut a, &mut b).await;
    let Ok(ResponseBody::VoiceJoined { slot: a_slot, .. }) = req(
        &mut a.voice,
        RequestBody::JoinVoice {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
        },
    )
    .await
    else {
        panic!("native join")
    };
    let (offer, start_browser) = Browser::offer();
    let joined = req(
        &mut b.voice,
        RequestBody::JoinVoiceWebRtc {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
            offer,
        },
    )
    .await;
    let Ok(ResponseBody::VoiceJoinedWebRtc {
        slot: b_slot,
        participants,
        answer,
        ..
    }) = joined
    else {
        panic!("WebRTC join: {joined:?}")
    };
    assert_ne!(a_slot, b_slot);
    assert!(participants.iter().any(|p| p.user_id == 1) && participants.iter().any(|p| p.user_id == 2));
    assert!(
        answer.contains(&format!("{} {} typ host", port.ip(), port.port())),
        "the answer's candidate is the WebRTC port: {answer}"
    );
    let browser = start_browser(answer);
    assert!(
        eventually(Duration::from_secs(10), || browser.connected.load(Ordering::SeqCst)).await,
        "ICE and DTLS up"
    );
    // A stranger sprays the port with garbage of every first byte (STUN, DTLS, RTP and, on
    // the shared port, QUIC-looking too): nothing breaks, the exchange below still works.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u32 = 0x1234_5678;
    for i in 0..2000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let mut d: Vec<u8> = (0..(x % 1200) as usize + 1).map(|k| (x >> (k % 24)) as u8).collect();
        d[0] = i as u8;
        let _ = stranger.send_to(&d, port);
    }

    // (a) The browser hears the native participant: its frames on one receiving track,
    // with their level and payload.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for n in 0..50u16 {
        tick.tick().await;
        let h = Uplink {
            flags: 0,
            level: AudioLevel::new(20, true),
            seq: n,
            timestamp: u32::from(n) * 960,
        };
        a.client.send_voice(&h, &[0xA5, n as u8, 1, 2, 3]).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(3), || browser.heard.lock().unwrap().len() >= 45).await,
        "the browser heard {} of 50 frames",
        browser.heard.lock().unwrap().len()
    );
    {
        let heard = browser.heard.lock().unwrap();
        let mid = &heard[0].0;
        for (i, (m, f)) in heard.iter().enumerate() {
            assert_eq!(m, mid, "one speaker stays on one track");
            assert_eq!((f.level, f.voice), (20, true), "its level");
            assert_eq!(f.payload[0], 0xA5, "its payload, untouched (frame {i})");
            assert_eq!(&f.payload[2..], &[1, 2, 3]);
        }
    }
    // Its session is told that this track carries the native participant's slot.
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut told = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout_at(end, b.voice.next()).await {
        if let ServerLane::Event {
            body: EventBody::VoiceTrack { channel_id, mid, slot },
            ..
        } = m
        {
            told.push((channel_id, mid, slot));
        }
        if !told.is_empty() {
            break;
        }
    }
    let heard_on = browser.heard.lock().unwrap()[0].0.clone();
    assert_eq!(
        told,
        vec![(vc, heard_on, a_slot)],
        "VoiceTrack for the track the browser heard A on"
    );

    // (b) The native participant hears the browser, from the WebRTC participant's slot.
    browser.speak.store(true, Ordering::SeqCst);
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while got.len() < 40 {
        match tokio::time::timeout_at(end, a.client.recv_voice()).await {
            Ok(Ok((h, payload))) => got.push((h, payload)),
            _ => break,
        }
    }
    assert!(got.len() >= 40, "the native participant heard {} frames", got.len());
    for (h, payload) in &got {
        assert_eq!(h.slot, b_slot);
        assert_eq!(h.level.neg_dbov(), 25);
        assert!(h.level.voice());
        assert_eq!(payload[0], 0x5A);
        assert_eq!(&payload[2..], &[0x11; 38]);
    }
    for w in got.windows(2) {
        assert_eq!(
            w[1].0.seq,
            w[0].0.seq.wrapping_add(1),
            "in order, none lost on loopback"
        );
        assert_eq!(w[1].0.timestamp, w[0].0.timestamp.wrapping_add(960));
    }

    // (c) Speaking is announced for it like for anyone.
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut speaking = false;
    while !speaking {
        match tokio::time::timeout_at(end, a.voice.next()).await {
            Ok(Ok(ServerLane::Event {
                body:
                    EventBody::VoiceSpeaking {
                        user_id: 2,
                        speaking: true,
                        ..
                    },
                ..
            })) => speaking = true,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(speaking, "VoiceSpeaking for the WebRTC participant");

    // Mute: its frames stop at the SFU while it keeps sending.
    let r = req(
        &mut b.voice,
        RequestBody::SetVoiceState {
            self_mute: true,
            self_deaf: false,
        },
    )
    .await;
    assert!(matches!(r, Ok(ResponseBody::Done)), "{r:?}");
    // What was in flight arrives; then nothing.
    tokio::time::sleep(Duration::from_millis(150)).await;
    while tokio::time::timeout(Duration::from_millis(10), a.client.recv_voice())
        .await
        .is_ok()
    {}
    let quiet = tokio::time::timeout(Duration::from_millis(500), a.client.recv_voice()).await;
    assert!(quiet.is_err(), "a muted WebRTC participant is not forwarded");
    assert!(browser.speak.load(Ordering::SeqCst), "it was still sending");

    // /metrics counts the peer and its packets.
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    let (_, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(metric(&text, "quaver_webrtc_peers"), 1, "{text}");
    // The peer's counters are snapshots taken every second (quaver_rtc::STATS_INTERVAL).
    assert!(metric(&text, "quaver_webrtc_uplink_packets_total") >= 20, "{text}");
    assert!(metric(&text, "quaver_webrtc_downlink_packets_total") >= 45, "{text}");
    assert_eq!(
        metric(&text, "quaver_webrtc_downlink_lost_total"),
        0,
        "none lost on loopback"
    );
    // VoiceStats: the WebRTC participant's downlink as its peer counts and reports it; none
    // for the datagram participant.
    let Ok(ResponseBody::VoiceStats { participants }) = req(&mut a.voice, RequestBody::VoiceStats).await else {
        panic!("VoiceStats")
    };
    let of = |user| participants.iter().find(|p| p.user_id == user).expect("a participant");
    assert_eq!(of(1).downlink, None, "a datagram participant reports nothing");
    let down = of(2).downlink.clone().expect("the WebRTC participant's downlink");
    assert!(down.packets >= 45 && down.lost == 0, "{down:?}");
    assert!(of(2).received >= 20, "its uplink counted by the SFU like anyone's");
    // The signalling session ends: so does the peer, and its user leaves the channel.
    b.client.close();
    let mut gone = false;
    for _ in 0..100 {
        let (_, text) = http_get(server.http_addr, "/metrics").await;
        if metric(&text, "quaver_webrtc_peers") == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the peer ended with its session");
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut removed = false;
    while !removed {
        match tokio::time::timeout_at(end, a.voice.next()).await {
            Ok(Ok(ServerLane::Event {
                body: EventBody::VoiceStateRemoved { user_id: 2, .. },
                ..
            })) => removed = true,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(removed, "VoiceStateRemoved for the WebRTC participant");
    drop(browser);
}

/// A WebRTC join of channel 1 with `offer`.
fn join_with(offer: &str) -> RequestBody {
    RequestBody::JoinVoiceWebRtc {
        channel_id: 1,
        self_mute: false,
        self_deaf: false,
        offer: offer.into(),
    }
}

#[tokio::test]
async fn webrtc_joins_are_refused_clearly_when_off_or_malformed() {
    // Off: a node without --webrtc-listen.
    let server = start(config()).await;
    let mut a = native(&server, 1).await;
    let r = req(&mut a.voice, join_with("v=0")).await;
    assert!(
        matches!(&r, Err(e) if e.code == ErrorCode::BAD_REQUEST && e.message.contains("not enabled")),
        "{r:?}"
    );
    // On, with an offer that is not SDP: refused, the session goes on.
    let server = start(webrtc_config()).await;
    let mut a = native(&server, 1).await;
    let r = req(&mut a.voice, join_with("not sdp")).await;
    assert!(matches!(&r, Err(e) if e.code == ErrorCode::BAD_REQUEST), "{r:?}");
    let pong = req(&mut a.voice, RequestBody::Ping { data: vec![1] }).await;
    assert!(matches!(pong, Ok(ResponseBody::Pong { .. })));
}

/// A voice channel in a fresh guild of `a`'s, joined by `b`: its id.
async fn voice_channel(a: &mut Native, b: &mut Native) -> u64 {
    let (gid, _) = shared_guild(&a.client, &mut a.chat, vec![&mut b.chat]).await;
    let Ok(ResponseBody::Channel(vc)) = req(
        &mut a.chat,
        RequestBody::CreateChannel {
            guild_id: gid,
            kind: ChannelKind::Voice,
            name: "talk".into(),
            topic: String::new(),
            user_limit: 0,
        },
    )
    .await
    else {
        panic!("voice channel")
    };
    vc.id
}

/// `offer` with its Opus replaced by PCMU on every audio section (what a client without
/// Opus would offer).
fn pcmu_only(offer: &str) -> String {
    let mut out = Vec::new();
    for line in offer.lines() {
        if let Some(m) = line.strip_prefix("m=audio ") {
            let head: Vec<&str> = m.split(' ').take(2).collect();
            out.push(format!("m=audio {} 0", head.join(" ")));
        } else if line.starts_with("a=rtpmap:") && line.to_lowercase().contains("opus") {
            out.push("a=rtpmap:0 PCMU/8000".to_string());
        } else if line.starts_with("a=fmtp:") || line.starts_with("a=rtcp-fb:") || line.starts_with("a=rtpmap:") {
            continue;
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\r\n") + "\r\n"
}

/// Events on `lane` for `d`: whether any says user `user` left voice.
async fn removed_within(lane: &mut LaneStream, user: u64, d: Duration) -> bool {
    let end = tokio::time::Instant::now() + d;
    while let Ok(Ok(m)) = tokio::time::timeout_at(end, lane.next()).await {
        if let ServerLane::Event {
            body: EventBody::VoiceStateRemoved { user_id, .. },
            ..
        } = m
            && user_id == user
        {
            return true;
        }
    }
    false
}

fn webrtc_peers(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("quaver_webrtc_peers ")?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_refused_webrtc_join_changes_nothing_and_says_why_in_words() {
    let server = start(webrtc_config()).await;
    let mut a = native(&server, 1).await;
    let mut b = native(&server, 2).await;
    let vc = voice_channel(&mut a, &mut b).await;
    let join = |offer: String| RequestBody::JoinVoiceWebRtc {
        channel_id: vc,
        self_mute: false,
        self_deaf: false,
        offer,
    };
    let r = req(
        &mut a.voice,
        RequestBody::JoinVoice {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
        },
    )
    .await;
    assert!(matches!(r, Ok(ResponseBody::VoiceJoined { .. })), "{r:?}");
    let (offer, start_browser) = Browser::offer();
    let Ok(ResponseBody::VoiceJoinedWebRtc { answer, .. }) = req(&mut b.voice, join(offer.clone())).await else {
        panic!("WebRTC join")
    };
    let browser = start_browser(answer);
    assert!(eventually(Duration::from_secs(10), || browser.connected.load(Ordering::SeqCst)).await);
    // Whatever a has heard so far (b's join) is not what this test is about.
    while tokio::time::timeout(Duration::from_millis(200), a.voice.next())
        .await
        .is_ok()
    {}

    // Each refusal: its code, a message for people, and nothing changes.
    let huge = format!("{offer}{}", "a=x-padding:0123456789abcdef\r\n".repeat(700));
    let cases = [
        ("no Opus", join(pcmu_only(&offer)), ErrorCode::BAD_REQUEST, "Opus"),
        (
            "not SDP",
            join("v=0\r\nthis is not sdp".into()),
            ErrorCode::BAD_REQUEST,
            "SDP",
        ),
        ("over 16 KiB", join(huge), ErrorCode::TOO_LARGE, "16 KiB"),
        (
            "a channel that does not exist",
            RequestBody::JoinVoiceWebRtc {
                channel_id: 12345,
                self_mute: false,
                self_deaf: false,
                offer: offer.clone(),
            },
            ErrorCode::NOT_FOUND,
            "",
        ),
        (
            "the same datagram join again",
            RequestBody::JoinVoice {
                channel_id: vc,
                self_mute: false,
                self_deaf: false,
            },
            ErrorCode::BAD_REQUEST,
            "already",
        ),
    ];
    for (what, body, code, says) in cases {
        let on_a = matches!(body, RequestBody::JoinVoice { .. });
        let r = req(if on_a { &mut a.voice } else { &mut b.voice }, body).await;
        let Err(e) = r else { panic!("{what}: accepted: {r:?}") };
        assert_eq!(e.code, code, "{what}: {e:?}");
        assert!(e.message.contains(says), "{what}: {:?}", e.message);
        assert!(
            !e.message.contains('\n') && !e.message.contains("0x") && e.message.len() < 200,
            "{what}: a message for people: {:?}",
            e.message
        );
    }
    assert!(
        !removed_within(&mut a.voice, 2, Duration::from_millis(500)).await,
        "a refused join took the WebRTC participant out of the channel"
    );
    assert!(!removed_within(&mut b.voice, 1, Duration::from_millis(100)).await);
    let Ok(ResponseBody::VoiceStats { participants }) = req(&mut a.voice, RequestBody::VoiceStats).await else {
        panic!("VoiceStats")
    };
    assert_eq!(participants.len(), 2, "both still in: {participants:?}");
    // The WebRTC participant still speaks and is heard.
    browser.speak.store(true, Ordering::SeqCst);
    let heard = tokio::time::timeout(Duration::from_secs(3), a.client.recv_voice()).await;
    assert!(matches!(heard, Ok(Ok(_))), "b is still heard after the refusals");
    browser.speak.store(false, Ordering::SeqCst);

    // Joining again with a fresh offer (PROTOCOL.md's remedy for a misread microphone)
    // replaces the participant: the new peer connects and is heard, the old one is gone.
    let (offer2, start2) = Browser::offer();
    let r = req(&mut b.voice, join(offer2)).await;
    let Ok(ResponseBody::VoiceJoinedWebRtc { answer, .. }) = r else {
        panic!("a second WebRTC join: {r:?}")
    };
    let browser2 = start2(answer);
    assert!(eventually(Duration::from_secs(10), || browser2.connected.load(Ordering::SeqCst)).await);
    let mut one = false;
    for _ in 0..100 {
        let (_, text) = http_get(server.http_addr, "/metrics").await;
        if webrtc_peers(&text) == 1 {
            one = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(one, "the replaced peer is gone");
    while tokio::time::timeout(Duration::from_millis(20), a.client.recv_voice())
        .await
        .is_ok()
    {}
    browser2.speak.store(true, Ordering::SeqCst);
    let heard = tokio::time::timeout(Duration::from_secs(3), a.client.recv_voice()).await;
    assert!(matches!(heard, Ok(Ok(_))), "the new peer is heard");
    drop((browser, browser2));
}

#[tokio::test]
async fn a_webrtc_participant_that_never_connects_leaves_after_15_s() {
    let server = start(webrtc_config()).await;
    let mut a = native(&server, 1).await;
    let mut b = native(&server, 2).await;
    let vc = voice_channel(&mut a, &mut b).await;
    // An offer without candidates (a browser that trickles them and never sends any), and
    // no binding request ever: str0m alone kept such a peer for the life of its session.
    let (offer, _never_started) = Browser::offer();
    let offer: String = offer
        .lines()
        .filter(|l| !l.starts_with("a=candidate"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let t0 = tokio::time::Instant::now();
    let r = req(
        &mut b.voice,
        RequestBody::JoinVoiceWebRtc {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
            offer,
        },
    )
    .await;
    assert!(matches!(r, Ok(ResponseBody::VoiceJoinedWebRtc { .. })), "{r:?}");
    // No binding request ever reaches the port: the participant goes 15 s after its answer.
    assert!(
        removed_within(&mut b.voice, 2, Duration::from_secs(20)).await,
        "still in the channel 20 s later"
    );
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_secs(14) && after < Duration::from_secs(18),
        "left after {after:?}"
    );
    let (_, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(webrtc_peers(&text), 0, "{text}");
}
