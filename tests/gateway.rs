//! Gateway integration tests: a real server and real clients over QUIC on loopback.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quaver_client::{Error, TokenPlacement, Transport, connect};
use quaver_proto::*;

#[tokio::test]
async fn raw_quic_and_webtransport_share_one_port_with_all_three_token_sources() {
    let server = start(config()).await;
    // Raw QUIC: Hello.token.
    let quic = connect(&client_config(&server, Transport::Quic, Some(token(11))))
        .await
        .unwrap();
    assert_eq!(quic.ready.user.id, 11);
    assert_eq!(quic.session().transport(), Transport::Quic);
    // WebTransport: ?token=, Authorization header, and Hello.token.
    let mut sessions = vec![quic];
    for (user, placement) in [
        (12, TokenPlacement::Query),
        (13, TokenPlacement::Header),
        (14, TokenPlacement::Hello),
    ] {
        let mut cfg = client_config(&server, Transport::WebTransport, Some(token(user)));
        cfg.token_placement = placement;
        let c = connect(&cfg).await.unwrap_or_else(|e| panic!("{placement:?}: {e}"));
        assert_eq!(c.ready.user.id, user);
        assert_eq!(c.ready.user.name, format!("user{user}"));
        assert_eq!(c.session().transport(), Transport::WebTransport);
        sessions.push(c);
    }
    for c in &sessions {
        assert_eq!(c.ready.node, "test-node");
        assert!(
            c.ready.limits.max_datagram_bytes > 1000,
            "datagrams negotiated: {:?}",
            c.ready.limits
        );
        ping(c, Lane::Chat).await;
        ping(c, Lane::Voice).await;
        match c.fetch(FetchRequest::ServerInfo).await.unwrap() {
            Ok(FetchResponse::ServerInfo { protocols, .. }) => {
                assert_eq!(protocols, vec![PROTOCOL_VERSION])
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(server.ctx.sessions.len(), 4);
    let m = server.ctx.metrics.render(&[]);
    assert!(m.contains("quaver_sessions{transport=\"quic\"} 1"), "{m}");
    assert!(m.contains("quaver_sessions{transport=\"webtransport\"} 3"), "{m}");
    server.shutdown().await;
}

/// PROTOCOL.md §2: with a required audience, an `aud` that is not a string or an array of
/// strings is `token_invalid_claims`, even when one of the array's strings is the audience.
#[tokio::test]
async fn an_audience_array_with_anything_but_strings_is_refused() {
    let mut cfg = config();
    cfg.auth.audience = Some("ours".into());
    let server = start(cfg).await;
    let v = verifier();
    let exp = claims(5, 60).exp;
    let cases = [
        (serde_json::json!(["ours", 7]), Some(CloseCode::TOKEN_INVALID_CLAIMS)),
        (serde_json::json!(["ours", null]), Some(CloseCode::TOKEN_INVALID_CLAIMS)),
        (
            serde_json::json!({"aud": "ours"}),
            Some(CloseCode::TOKEN_INVALID_CLAIMS),
        ),
        (serde_json::json!(["theirs"]), Some(CloseCode::TOKEN_INVALID_CLAIMS)),
        (serde_json::json!(["theirs", "ours"]), None),
        (serde_json::json!("ours"), None),
    ];
    for (aud, refused) in cases {
        let tok = v
            .sign_json(&serde_json::json!({"sub": "5", "exp": exp, "aud": aud}))
            .unwrap();
        for transport in [Transport::Quic, Transport::WebTransport] {
            let r = connect(&client_config(&server, transport, Some(tok.clone()))).await;
            match (refused, r) {
                (Some(code), Err(e)) => assert_eq!(e.close_code(), Some(code), "aud {aud} over {transport:?}: {e}"),
                (Some(_), Ok(_)) => panic!("aud {aud} over {transport:?} was accepted"),
                (None, Ok(c)) => assert_eq!(c.ready.user.id, 5),
                (None, Err(e)) => panic!("aud {aud} over {transport:?} was refused: {e}"),
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_own_close_code() {
    let mut cfg = config();
    // Long enough that a leaked session count (refused sessions used to leave one) shows
    // as a slow shutdown below.
    cfg.session.drain_timeout = Duration::from_secs(5);
    let server = start(cfg).await;
    let v = verifier();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let mut nbf = claims(5, 3600);
    nbf.nbf = Some(nbf.exp - 60);
    let cases: Vec<(&str, Option<String>, CloseCode)> = vec![
        ("missing", None, CloseCode::TOKEN_MISSING),
        ("malformed", Some("not-a-jwt".into()), CloseCode::TOKEN_MALFORMED),
        (
            "expired",
            Some(v.sign(&claims(5, -60)).unwrap()),
            CloseCode::TOKEN_EXPIRED,
        ),
        (
            "not yet valid",
            Some(v.sign(&nbf).unwrap()),
            CloseCode::TOKEN_NOT_YET_VALID,
        ),
        (
            "bad signature",
            Some(
                quaver::auth::Verifier::hs256(b"another-secret-another-secret-12345")
                    .unwrap()
                    .sign(&claims(5, 60))
                    .unwrap(),
            ),
            CloseCode::TOKEN_BAD_SIGNATURE,
        ),
        (
            "wrong algorithm",
            Some(
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS512),
                    &claims(5, 60),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                )
                .unwrap(),
            ),
            CloseCode::TOKEN_WRONG_ALGORITHM,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(r#"{"alg":"none"}"#),
                b64(r#"{"sub":"5","exp":99999999999}"#)
            )),
            CloseCode::TOKEN_UNSIGNED,
        ),
        (
            "bad sub",
            Some(
                v.sign(&Claims {
                    sub: "bob".into(),
                    ..claims(5, 60)
                })
                .unwrap(),
            ),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
    ];
    use quaver::auth::Claims;
    let exp = claims(5, 60).exp;
    let json = |p: serde_json::Value| Some(v.sign_json(&p).unwrap());
    let mut cases = cases;
    cases.extend([
        (
            "missing exp",
            json(serde_json::json!({"sub": "5"})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "missing sub",
            json(serde_json::json!({"exp": exp})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "numeric sub",
            json(serde_json::json!({"sub": 5, "exp": exp})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "string exp",
            json(serde_json::json!({"sub": "5", "exp": "tomorrow"})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "negative exp",
            json(serde_json::json!({"sub": "5", "exp": -1})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "exp at 2^63",
            json(serde_json::json!({"sub": "5", "exp": 9_223_372_036_854_775_808u64})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
        (
            "sub at 2^63",
            json(serde_json::json!({"sub": "9223372036854775808", "exp": exp})),
            CloseCode::TOKEN_INVALID_CLAIMS,
        ),
    ]);
    for (name, tok, code) in cases {
        for transport in [Transport::Quic, Transport::WebTransport] {
            let mut cfg = client_config(&server, transport, tok.clone());
            cfg.token_placement = TokenPlacement::Query;
            match connect(&cfg).await {
                Err(e) => assert_eq!(e.close_code(), Some(code), "{name} over {transport:?}: {e}"),
                Ok(_) => panic!("{name} over {transport:?} was accepted"),
            }
            assert!(code.terminal());
        }
        assert!(server.ctx.metrics.failures_with(code) >= 2, "{name} counted by reason");
    }
    assert_eq!(server.ctx.sessions.len(), 0);
    assert!(
        eventually(Duration::from_secs(2), || server.ctx.session_tasks() == 0).await,
        "refused sessions leave no task counted"
    );
    let t0 = std::time::Instant::now();
    server.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn silent_client_is_closed_with_hello_timeout() {
    let mut cfg = config();
    cfg.session.hello_timeout = Duration::from_millis(400);
    let server = start(cfg).await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connect_alpn = |alpn: &'static [u8]| {
        let tls = quaver_client::tls_config(&quaver_client::Trust::Hashes(vec![server.cert_hash()]), alpn).unwrap();
        let qc = quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        ep.connect_with(qc, server.quic_addr, "localhost").unwrap()
    };
    let hello_timeout = |err: &quinn::ConnectionError| matches!(err, quinn::ConnectionError::ApplicationClosed(a) if a.error_code.into_inner() == u64::from(CloseCode::HELLO_TIMEOUT.0));
    // Connect at the QUIC level but never send Hello.
    let conn = connect_alpn(ALPN_QUAVER).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed by the server");
    assert!(hello_timeout(&err), "{err:?}");
    // Also: a control stream opened but with no Hello on it.
    let conn = connect_alpn(ALPN_QUAVER).await.unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    s.write_all(&[]).await.unwrap();
    let _ = s.set_priority(0);
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(hello_timeout(&err), "{err:?}");
    // And over HTTP/3: the QUIC handshake completes, the WebTransport CONNECT never comes.
    let conn = connect_alpn(ALPN_H3).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed by the server");
    assert!(hello_timeout(&err), "{err:?}");
    assert_eq!(server.ctx.metrics.failures_with(CloseCode::HELLO_TIMEOUT), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_and_garbage_frames_close_only_the_offender() {
    let mut cfg = config();
    cfg.session.max_frame_bytes = 4096;
    let server = start(cfg).await;
    let healthy = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut healthy_lane = healthy.open_lane(Lane::Chat).await.unwrap();

    // 1. A frame announcing more than the limit on a lane.
    let big = connect(&client_config(&server, Transport::WebTransport, Some(token(2))))
        .await
        .unwrap();
    let mut lane = big.open_lane(Lane::Chat).await.unwrap();
    let mut frame = Vec::new();
    varint::write(5000, &mut frame);
    frame.extend_from_slice(&[0u8; 100]);
    lane.send_raw(&frame).await.unwrap();
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), big.closed())
        .await
        .unwrap()
        .expect("close code");
    assert_eq!(code, CloseCode::FRAME_TOO_LARGE);

    // 2. Garbage that frames correctly but decodes to nothing.
    let garbage = connect(&client_config(&server, Transport::Quic, Some(token(3))))
        .await
        .unwrap();
    let mut lane = garbage.open_lane(Lane::Typing).await.unwrap();
    lane.send_raw(&[4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), garbage.closed())
        .await
        .unwrap()
        .expect("close code");
    assert_eq!(code, CloseCode::PROTOCOL_ERROR);

    // 3. An unknown control message (variant index past the end).
    let mut unknown = connect(&client_config(&server, Transport::Quic, Some(token(4))))
        .await
        .unwrap();
    unknown
        .send_control(&ClientControl::RefreshToken { token: String::new() })
        .await
        .unwrap();
    let reply = unknown.next_control().await.unwrap();
    assert!(
        matches!(reply, ServerControl::Error(ref e) if e.code == ErrorCode::TOKEN_REJECTED),
        "{reply:?}"
    );
    let stream = unknown.open_lane(Lane::Presence).await.unwrap();
    drop(stream);
    let mut raw = unknown.open_lane(Lane::Notifications).await.unwrap();
    raw.send_raw(&[1, 9]).await.unwrap(); // a Request frame of 1 byte: truncated message
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), unknown.closed())
        .await
        .unwrap()
        .expect("close code");
    assert_eq!(code, CloseCode::PROTOCOL_ERROR);

    // The healthy session never noticed.
    let r = healthy_lane
        .request(RequestBody::Ping {
            data: b"still here".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        Ok(ResponseBody::Pong {
            data: b"still here".to_vec()
        })
    );
    assert!(eventually(Duration::from_secs(2), || server.ctx.sessions.len() == 1).await);
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_origin_is_refused_and_allowed_origin_accepted() {
    let mut cfg = config();
    cfg.session.allowed_origins = vec!["https://chat.example".into()];
    let server = start(cfg).await;
    let mut bad = client_config(&server, Transport::WebTransport, Some(token(1)));
    bad.origin = Some("https://evil.example".into());
    assert!(matches!(connect(&bad).await, Err(Error::Rejected(_))));
    assert_eq!(server.ctx.metrics.failures_with(CloseCode::ORIGIN_NOT_ALLOWED), 1);
    let mut good = bad.clone();
    good.origin = Some("https://chat.example".into());
    assert_eq!(connect(&good).await.unwrap().ready.user.id, 1);
    // Native clients send no Origin and are not subject to it.
    let mut native = bad.clone();
    native.origin = None;
    assert!(connect(&native).await.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_path_is_not_found() {
    let server = start(config()).await;
    let mut cfg = client_config(&server, Transport::WebTransport, Some(token(1)));
    cfg.path = "/elsewhere".into();
    assert!(matches!(connect(&cfg).await, Err(Error::Rejected(_))));
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_sends_goaway_and_drains() {
    let server = start(config()).await;
    let mut a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut b = connect(&client_config(&server, Transport::WebTransport, Some(token(2))))
        .await
        .unwrap();
    let http = server.http_addr;
    server.begin_shutdown();
    for c in [&mut a, &mut b] {
        match tokio::time::timeout(Duration::from_secs(5), c.next_control())
            .await
            .unwrap()
            .unwrap()
        {
            ServerControl::Goaway(g) => assert_eq!(g.reconnect_after_ms, 1000),
            other => panic!("expected Goaway, got {other:?}"),
        }
    }
    assert_eq!(http_get(http, "/ready").await.0, 503, "a draining node is not ready");
    // The clients leave on their own; shutdown then completes well before the drain timeout.
    a.close();
    b.close();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown completes");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn drain_deadline_closes_lingering_sessions_with_going_away() {
    let mut cfg = config();
    cfg.session.drain_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let shut = tokio::spawn(server.shutdown());
    assert!(matches!(a.next_control().await.unwrap(), ServerControl::Goaway(_)));
    match a.next_control().await {
        Ok(ServerControl::Closing(c)) => assert_eq!(c.code, CloseCode::GOING_AWAY.0),
        other => panic!("{other:?}"),
    }
    let (code, _) = a.closed().await.unwrap();
    assert_eq!(code, CloseCode::GOING_AWAY);
    tokio::time::timeout(Duration::from_secs(5), shut)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn certificate_renews_while_a_session_stays_up() {
    let mut cfg = config();
    // Back-dated 3 s, so it expires 9 s after start and renews after 3 s, then every 3 s:
    // time enough to connect between renewals.
    cfg.tls.dev_validity = Duration::from_secs(12);
    cfg.tls.dev_renew_before = Duration::from_secs(6);
    let server = start(cfg).await;
    let first = server.cert_hash();
    let old = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(7), || server.cert_hash() != first).await,
        "renewed"
    );
    let (_, body) = http_get(server.http_addr, "/cert-hash").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["hash"], hex::encode(server.cert_hash()));
    // A client pinned to the new hash connects; one pinned to a stale hash does not.
    let new = connect(&client_config(&server, Transport::WebTransport, Some(token(2))))
        .await
        .unwrap();
    assert_eq!(new.ready.user.id, 2);
    let mut stale = client_config(&server, Transport::Quic, Some(token(3)));
    stale.trust = quaver_client::Trust::Hashes(vec![[0u8; 32]]);
    assert!(matches!(connect(&stale).await, Err(Error::Transport(_))));
    // The session opened on the old certificate is still working.
    ping(&old, Lane::Chat).await;
    server.shutdown().await;
}

#[tokio::test]
async fn http_side_port_endpoints() {
    let server = start(config()).await;
    let _c = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let (s, b) = http_get(server.http_addr, "/health").await;
    assert_eq!((s, b.trim()), (200, "ok"));
    let (s, b) = http_get(server.http_addr, "/ready").await;
    assert_eq!((s, b.trim()), (200, "ready"));
    let (s, m) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(s, 200);
    assert!(m.contains("quaver_sessions{transport=\"quic\"} 1"), "{m}");
    assert!(m.contains("quaver_handshakes_total{transport=\"quic\"} 1"), "{m}");
    assert!(m.contains("quaver_quic_handshakes_begun_total 1\n"), "{m}");
    assert!(m.contains("quaver_frames_in_total{stream=\"control\"} 1"), "{m}");
    let (s, b) = http_get(server.http_addr, "/cert-hash").await;
    assert_eq!(s, 200);
    let json: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(json["algorithm"], "sha-256");
    assert_eq!(json["hash"], hex::encode(server.cert_hash()));
    assert_eq!(json["port"], server.quic_addr.port());
    let (s, b) = http_get(server.http_addr, "/quaver.js").await;
    assert_eq!(s, 200);
    assert!(b.contains("export"));
    let (s, b) = http_get(server.http_addr, "/app.js").await;
    assert_eq!(s, 200);
    assert!(b.contains("import * as quaver"));
    // With a configured JWT secret, nobody can mint development tokens.
    let (s, b) = http_request(server.http_addr, "POST", "/dev/token", r#"{"name":"mallory"}"#).await;
    assert_eq!(s, 404, "{b}");
    assert!(b.contains("no development tokens") && !b.contains("token\":"), "{b}");
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeats_report_lane_positions_and_silence_times_out() {
    let mut cfg = config();
    cfg.session.ping_interval = Duration::from_millis(200);
    cfg.session.ping_timeout = Duration::from_millis(600);
    let server = start(cfg).await;
    let mut c = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert_eq!(c.ready.heartbeat_interval_ms, 200);
    // Events pushed by the server carry per-lane seqs, reported back in heartbeat acks.
    let mut lane = c.open_lane(Lane::Notifications).await.unwrap();
    ping(&c, Lane::Chat).await; // lanes are registered once opened; wait on a round trip
    lane.request(RequestBody::Ping { data: vec![] }).await.unwrap().unwrap();
    let h = server.ctx.sessions.of_user(1).pop().unwrap();
    let body = bytes::Bytes::from(codec::encode_payload(&EventBody::Notice { text: "hi".into() }));
    for _ in 0..3 {
        h.push_event(Lane::Notifications, body.clone());
    }
    for want in 1..=3u64 {
        match lane.next().await.unwrap() {
            ServerLane::Event {
                seq,
                body: EventBody::Notice { text },
            } => assert_eq!((seq, text.as_str()), (want, "hi")),
            other => panic!("{other:?}"),
        }
    }
    let (ack, _) = c
        .heartbeat(
            77,
            vec![LaneSeq {
                lane: Lane::Notifications,
                seq: 3,
            }],
        )
        .await
        .unwrap();
    assert_eq!(ack.nonce, 77);
    assert_eq!(
        ack.lanes,
        vec![LaneSeq {
            lane: Lane::Notifications,
            seq: 3
        }]
    );
    assert_eq!(
        h.acked_seqs(),
        vec![LaneSeq {
            lane: Lane::Notifications,
            seq: 3
        }]
    );
    // Stop heartbeating: QUIC keep-alives still flow, but the session times out.
    c.stop_heartbeats();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await.unwrap();
    assert_eq!(closed.map(|c| c.0), Some(CloseCode::HEARTBEAT_TIMEOUT));
    server.shutdown().await;
}

#[tokio::test]
async fn token_refresh_keeps_the_session_and_a_missed_one_closes_it() {
    let mut cfg = config();
    cfg.auth.refresh_warning = Duration::from_secs(60);
    let server = start(cfg).await;
    let v = verifier();
    let short = v.sign(&claims(1, 2)).unwrap();
    let mut a = connect(&client_config(&server, Transport::Quic, Some(short.clone())))
        .await
        .unwrap();
    let mut b = connect(&client_config(&server, Transport::WebTransport, Some(short)))
        .await
        .unwrap();
    for c in [&mut a, &mut b] {
        assert!(matches!(
            c.next_control().await.unwrap(),
            ServerControl::RefreshNeeded { .. }
        ));
    }
    // A token for another user is refused without ending the session.
    a.send_control(&ClientControl::RefreshToken { token: token(2) })
        .await
        .unwrap();
    assert!(matches!(a.next_control().await.unwrap(), ServerControl::Error(e) if e.code == ErrorCode::TOKEN_REJECTED));
    a.send_control(&ClientControl::RefreshToken { token: token(1) })
        .await
        .unwrap();
    assert!(matches!(
        a.next_control().await.unwrap(),
        ServerControl::TokenRefreshed { .. }
    ));
    // b never refreshes: closed when its token runs out.
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match b.next_control().await {
                Ok(ServerControl::Closing(c)) => return c.code,
                Ok(_) => continue,
                Err(e) => return e.close_code().map(|c| c.0).unwrap_or(0),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, CloseCode::TOKEN_REFRESH_MISSED.0);
    // a outlived its first token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ping(&a, Lane::Chat).await;
    server.shutdown().await;
}

#[tokio::test]
async fn connection_cap_answers_overloaded() {
    let mut cfg = config();
    cfg.session.max_connections = 1;
    let server = start(cfg).await;
    let _a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    for transport in [Transport::Quic, Transport::WebTransport] {
        // In band: the client reads `Closing` where it expected `Ready` (a browser could
        // not see the QUIC close code).
        match connect(&client_config(&server, transport, Some(token(2)))).await {
            Err(Error::Closed { code, reason }) => {
                assert_eq!(code, CloseCode::OVERLOADED, "{transport:?}");
                assert_eq!(reason, "server full");
            }
            other => panic!("{transport:?}: expected Closing(overloaded), got {other:?}"),
        }
    }
    assert_eq!(server.ctx.metrics.failures_with(CloseCode::OVERLOADED), 2);
    server.shutdown().await;
}

/// With `max_handshakes` connections on their way to `Ready` (here: two that never say
/// `Hello`), the next is refused at the door — QUIC `CONNECTION_REFUSED` at once, no
/// handshake — which the native client reads as `overloaded`; once one of them is gone a
/// client gets in, and sessions that are live do not count.
#[tokio::test]
async fn connections_past_the_set_up_limit_are_refused_at_the_door() {
    let mut cfg = config();
    cfg.loops = 1;
    cfg.session.max_handshakes = 2;
    let server = start(cfg).await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = || {
        let tls =
            quaver_client::tls_config(&quaver_client::Trust::Hashes(vec![server.cert_hash()]), ALPN_QUAVER).unwrap();
        let qc = quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        ep.connect_with(qc, server.quic_addr, "localhost").unwrap()
    };
    let a = silent().await.expect("first connection taken on");
    let _b = silent().await.expect("second connection taken on");
    let started = std::time::Instant::now();
    match connect(&client_config(&server, Transport::Quic, Some(token(1)))).await {
        Err(Error::Closed { code, .. }) => assert_eq!(code, CloseCode::OVERLOADED),
        Err(e) => panic!("expected overloaded, got {e}"),
        Ok(_) => panic!("expected overloaded, got a session"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not timed out"
    );
    assert!(
        http_get(server.http_addr, "/metrics")
            .await
            .1
            .contains("quaver_handshakes_shed_total 1\n")
    );
    // One of the silent ones goes: there is room again, and a live session does not count.
    a.close(0u32.into(), b"bye");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .expect("room once one connection is gone");
    let again = connect(&client_config(&server, Transport::Quic, Some(token(3))))
        .await
        .expect("a live session is not being set up");
    drop((live, again));
    server.shutdown().await;
}

#[tokio::test]
async fn stateless_retry_validates_addresses_under_load() {
    let mut cfg = config();
    cfg.session.retry_above_handshakes = 0; // always validate
    let server = start(cfg).await;
    let c = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert_eq!(c.ready.user.id, 1);
    assert!(server.ctx.metrics.retries.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    server.shutdown().await;
}

/// A client that stops reading its control stream (lanes still flowing) cannot keep a
/// session past its token: the session's timers do not wait on that stream's flow control.
#[tokio::test]
async fn a_blocked_control_stream_does_not_stop_token_expiry() {
    let server = start(config()).await;
    let raw = raw_quic(&server, 1024).await;
    let expires_in = Duration::from_secs(3);
    let tok = verifier().sign(&claims(1, expires_in.as_secs() as i64)).unwrap();
    let t0 = std::time::Instant::now();
    let (mut ctl, _ctl_rx, _ready) = raw.hello(tok).await.unwrap();
    let (mut lane_tx, mut lane_rx) = raw.lane(Lane::Chat).await.unwrap();
    // More acks than the 1 KiB window takes (4 bytes each), fewer than the server queues:
    // its control writer is stuck on flow control from here on. We never read them.
    for n in 0..270u32 {
        let hb = ClientControl::Heartbeat(Heartbeat {
            nonce: n % 250,
            lanes: vec![],
        });
        codec::io::write_msg(&mut ctl, &hb).await.unwrap();
    }
    // Requests on the chat lane every 200 ms; acks are read (the lane flows).
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for id in 1..=40u32 {
            let req = Request {
                id,
                body: RequestBody::Ping { data: vec![] },
            };
            if codec::io::write_msg(&mut lane_tx, &req).await.is_err() {
                break;
            }
            sent.push((id, std::time::Instant::now()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sent
    });
    let mut acked = Vec::new();
    while let Ok(Ok(Some(msg))) = tokio::time::timeout(Duration::from_secs(10), lane_rx.next::<ServerLane>()).await {
        if let ServerLane::Ack { id, .. } = msg {
            acked.push(id);
        }
    }
    let code = close_code_within(&raw.conn, Duration::from_secs(5)).await;
    assert_eq!(code, Some(CloseCode::TOKEN_REFRESH_MISSED.0));
    assert!(
        t0.elapsed() < expires_in + Duration::from_secs(3),
        "closed at {:?}",
        t0.elapsed()
    );
    let sent = sender.await.unwrap();
    let expiry = t0 + expires_in + Duration::from_millis(300);
    for id in &acked {
        let at = sent.iter().find(|(i, _)| i == id).map(|(_, t)| *t).unwrap();
        assert!(
            at < expiry,
            "request {id} sent {:?} after start was served past expiry",
            at - t0
        );
    }
    assert!(acked.len() >= 5, "the lane kept flowing before expiry: {acked:?}");
    server.shutdown().await;
}

/// Fetch replies a client never reads: at most a few are built at a time, each is reset
/// after the write deadline, and the session is untouched.
#[tokio::test]
async fn unread_fetches_are_bounded_and_reset_after_the_deadline() {
    let mut cfg = config();
    cfg.session.fetch_write_timeout = Duration::from_millis(1500);
    cfg.limits.send = quaver::limits::Rate {
        burst: 1000.0,
        per_sec: 1000.0,
    };
    cfg.limits.fetch = cfg.limits.send;
    let server = start(cfg).await;
    // Fill a channel so a history page is far larger than the reader's window.
    let owner = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut chat = owner.open_lane(Lane::Chat).await.unwrap();
    let (_, ch) = shared_guild(&owner, &mut chat, vec![]).await;
    for n in 0..60u64 {
        let r = chat
            .request(RequestBody::SendMessage {
                channel_id: ch,
                nonce: n,
                content: "x".repeat(3000),
                reply_to: None,
            })
            .await
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    let raw = raw_quic(&server, 8 * 1024).await;
    let (_ctl, _ctl_rx, _ready) = raw.hello(token(1)).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..12 {
        let history = FetchRequest::History {
            channel_id: ch,
            anchor: HistoryAnchor::Latest,
            limit: 100,
        };
        streams.push(raw.fetch_unread(history).await.unwrap());
    }
    // After one deadline only the first few were answered (and reset), not all 12 (with the
    // control stream and the lane below, within the 16 streams a client may have open).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let reset = server
        .ctx
        .metrics
        .fetch_timeouts
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(reset, quaver::gateway::session::FETCH_CONCURRENCY as u64);
    // The session itself is fine: a lane still answers.
    let (mut lane_tx, mut lane_rx) = raw.lane(Lane::Typing).await.unwrap();
    codec::io::write_msg(
        &mut lane_tx,
        &Request {
            id: 1,
            body: RequestBody::Ping { data: vec![7] },
        },
    )
    .await
    .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), lane_rx.next::<ServerLane>())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(pong, Some(ServerLane::Ack { id: 1, .. })), "{pong:?}");
    drop(streams);
    server.shutdown().await;
}

/// A flood close keeps the order a client can understand: every reply queued before it
/// arrives, then `Closing(rate_limited)` in band, then the QUIC close with the same code;
/// nothing sent after the decision is served.
#[tokio::test]
async fn a_flood_close_delivers_queued_replies_then_closing() {
    let mut cfg = config();
    cfg.limits.flood_max = 20;
    let server = start(cfg).await;
    let mut c = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let lane = c.open_lane(Lane::Chat).await.unwrap();
    let (mut tx, mut rx) = lane.split();
    // Guild changes are limited to a burst of 10: 10 succeed, then refusals until the 21st
    // refusal in the window is a flood.
    for n in 0..60 {
        tx.send(RequestBody::CreateGuild { name: format!("g{n}") })
            .await
            .unwrap();
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
        match msg {
            ServerLane::Ack { .. } => ok += 1,
            ServerLane::Error { error, .. } if error.code == ErrorCode::RATE_LIMITED => limited += 1,
            _ => {}
        }
    }
    assert_eq!((ok, limited), (10, 21), "every reply up to the flood, none after");
    let mut closing = None;
    while let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), c.next_control()).await {
        if let ServerControl::Closing(cl) = msg {
            closing = Some(cl.code);
            break;
        }
    }
    assert_eq!(closing, Some(CloseCode::RATE_LIMITED.0), "Closing in band");
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, CloseCode::RATE_LIMITED);
    server.shutdown().await;
}

#[tokio::test]
async fn a_resilient_client_told_goaway_waits_the_delay_before_it_comes_back() {
    use quaver_client::resilient::{Backoff, Resilient, Update};
    let mut cfg = config();
    cfg.session.reconnect_after = Duration::from_millis(1500);
    let server = start(cfg).await;
    let mut c = client_config(&server, Transport::Quic, Some(token(1)));
    // A failed attempt is reported quickly, so the first attempt's start can be seen.
    c.connect_timeout = Duration::from_millis(300);
    c.network_check_every = None;
    let mut r = Resilient::start(c, Backoff::default());
    let next = async |r: &mut Resilient| {
        tokio::time::timeout(Duration::from_secs(10), r.next())
            .await
            .expect("an update within 10 s")
            .expect("the client runs")
    };
    assert!(matches!(next(&mut r).await, Update::Connected { .. }));
    server.begin_shutdown();
    assert!(matches!(next(&mut r).await, Update::Disconnected { .. }));
    let left = std::time::Instant::now();
    // The node is gone once its client left; the next attempt fails — but only after the
    // Goaway's 1.5 s (plus jitter), not at once.
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown completes");
    match next(&mut r).await {
        Update::Unreachable { .. } => {}
        other => panic!("expected a failed attempt, got {other:?}"),
    }
    let waited = left.elapsed();
    assert!(waited >= Duration::from_millis(1500), "came back after {waited:?}");
    assert!(
        waited < Duration::from_millis(3000 + 300 + 1000),
        "came back after {waited:?}"
    );
}
