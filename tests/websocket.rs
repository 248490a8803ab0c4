//! The WebSocket framing (PROTOCOL.md §11) against a real server: `GET /quaver/ws` on the
//! HTTP port, the same session as over QUIC — Hello/Ready, lanes, fetches, chat with a QUIC
//! client, resume across framings, the Origin rule, and bad input closing with the
//! framing's codes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use quaver_client::{Transport, connect};
use quaver_proto::ws::Frame;
use quaver_proto::{
    ClientControl, CloseCode, Compression, DeviceKind, EventBody, FetchReply, FetchRequest, FetchResponse, FrameReader,
    Hello, Lane, PROTOCOL_VERSION, Request, RequestBody, ResponseBody, ServerControl, ServerLane, StreamOpen, decode,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client of the framing: one socket, a reader per stream.
struct Ws {
    socket: Socket,
    readers: HashMap<u64, FrameReader>,
    /// Streams whose end (`DATA_FIN`) came.
    finished: Vec<u64>,
}

fn frame<T: bincode_free::Encodable>(msg: &T) -> Vec<u8> {
    msg.frame()
}

/// Encoding without naming bincode (the codec's bound) in this crate.
mod bincode_free {
    pub(crate) trait Encodable {
        fn frame(&self) -> Vec<u8>;
    }
    macro_rules! encodable {
        ($($t:ty),*) => {$(
            impl Encodable for $t {
                fn frame(&self) -> Vec<u8> {
                    let mut b = Vec::new();
                    quaver_proto::encode_frame(self, &mut b);
                    b
                }
            }
        )*};
    }
    encodable!(
        quaver_proto::ClientControl,
        quaver_proto::StreamOpen,
        quaver_proto::Request
    );
}

impl Ws {
    async fn open(
        http: std::net::SocketAddr,
        origin: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{http}/quaver/ws").into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "quaver".parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let (socket, resp) = tokio_tungstenite::connect_async(req).await?;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap()),
            Some("quaver"),
            "the subprotocol is answered"
        );
        Ok(Ws {
            socket,
            readers: HashMap::new(),
            finished: Vec::new(),
        })
    }

    async fn send(&mut self, f: Frame) {
        self.socket
            .send(Message::Binary(f.to_bytes().into()))
            .await
            .expect("sent");
    }

    async fn data(&mut self, stream: u64, bytes: Vec<u8>, fin: bool) {
        self.send(Frame::Data {
            stream,
            fin,
            bytes: Bytes::from(bytes),
        })
        .await;
    }

    async fn hello(&mut self, user: u64) {
        let hello = ClientControl::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: Some(token(user)),
            device: DeviceKind::Web,
            resume: None,
            compression: Compression::None,
        });
        self.data(0, frame(&hello), false).await;
    }

    /// The next frame of the framing (within 10 s); `None` when the socket closed, with
    /// its close code.
    async fn next(&mut self) -> Result<Frame, Option<u16>> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("something within 10 s");
            match m {
                Some(Ok(Message::Binary(b))) => return Ok(Frame::decode(b).expect("a frame of the framing")),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next complete message on `stream` (frames of other streams are read and kept).
    async fn message(&mut self, stream: u64) -> Vec<u8> {
        loop {
            if let Some(r) = self.readers.get_mut(&stream)
                && let Some(p) = r.next_frame().expect("whole frames")
            {
                return p.to_vec();
            }
            match self.next().await.expect("the connection stays open") {
                Frame::Data { stream: s, fin, bytes } => {
                    self.readers
                        .entry(s)
                        .or_insert_with(|| FrameReader::new(1 << 22))
                        .push(&bytes);
                    if fin {
                        self.finished.push(s);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn control(&mut self) -> ServerControl {
        decode(&self.message(0).await).expect("a control frame")
    }

    async fn lane(&mut self, stream: u64) -> ServerLane {
        decode(&self.message(stream).await).expect("a lane frame")
    }

    /// The close code the server ends with (reading past anything before it).
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }
}

#[tokio::test]
async fn a_session_over_websocket_has_ready_lanes_and_fetches() {
    let server = start(config()).await;
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.hello(1).await;
    let ServerControl::Ready(ready) = ws.control().await else {
        panic!("Ready first")
    };
    assert_eq!(ready.user.id, 1);
    assert_eq!(ready.limits.max_datagram_bytes, 1200, "voice datagrams as on QUIC");
    // A lane: open, a request, its answer (and the guild's event).
    let mut open = frame(&StreamOpen::Lane(Lane::Chat));
    open.extend(frame(&Request {
        id: 9,
        body: RequestBody::CreateGuild {
            name: "over tcp".into(),
        },
    }));
    ws.data(4, open, false).await;
    let guild = loop {
        match ws.lane(4).await {
            ServerLane::Ack {
                id: 9,
                body: ResponseBody::Guild(g),
            } => break g,
            ServerLane::Event { .. } => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(guild.name, "over tcp");
    // A fetch: one request, its reply, the stream's end.
    ws.data(8, frame(&StreamOpen::Fetch(FetchRequest::ServerInfo)), true)
        .await;
    let reply: FetchReply = decode(&ws.message(8).await).expect("a fetch reply");
    assert!(
        matches!(reply, FetchReply::Ok(FetchResponse::ServerInfo { .. })),
        "{reply:?}"
    );
    while !ws.finished.contains(&8) {
        match ws.next().await.expect("open") {
            Frame::Data {
                stream: 8, fin: true, ..
            } => ws.finished.push(8),
            other => panic!("after the reply, only its end: {other:?}"),
        }
    }
    // A heartbeat is answered.
    let hb = ClientControl::Heartbeat(quaver_proto::Heartbeat {
        nonce: 5,
        lanes: Vec::new(),
    });
    ws.data(0, frame(&hb), false).await;
    assert!(matches!(ws.control().await, ServerControl::HeartbeatAck(h) if h.nonce == 5));
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("quaver_sessions{transport=\"websocket\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_from_a_quic_client_reaches_a_websocket_client_and_back() {
    let server = start(config()).await;
    let quic = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .expect("QUIC connects");
    let mut quic_chat = quic.open_lane(Lane::Chat).await.expect("chat lane");
    let ResponseBody::Guild(g) = quic_chat
        .request(RequestBody::CreateGuild { name: "g".into() })
        .await
        .expect("answered")
        .expect("accepted")
    else {
        panic!("a guild")
    };
    let ResponseBody::Invite(inv) = quic_chat
        .request(RequestBody::CreateInvite {
            guild_id: g.id,
            max_uses: 0,
            max_age_secs: 0,
        })
        .await
        .expect("answered")
        .expect("accepted")
    else {
        panic!("an invite")
    };
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.hello(2).await;
    assert!(matches!(ws.control().await, ServerControl::Ready(_)));
    let mut open = frame(&StreamOpen::Lane(Lane::Chat));
    open.extend(frame(&Request {
        id: 1,
        body: RequestBody::JoinGuild { code: inv.code.clone() },
    }));
    ws.data(4, open, false).await;
    loop {
        match ws.lane(4).await {
            ServerLane::Ack { id: 1, .. } => break,
            ServerLane::Error { error, .. } => panic!("{error:?}"),
            _ => continue,
        }
    }
    let Ok(Ok(FetchResponse::Channels { channels })) = quic.fetch(FetchRequest::Channels { guild_id: g.id }).await
    else {
        panic!("channels")
    };
    let channel = channels[0].id;
    let r = quic_chat
        .request(RequestBody::SendMessage {
            channel_id: channel,
            content: "hello over tcp".into(),
            nonce: 1,
            reply_to: None,
        })
        .await
        .expect("answered");
    assert!(r.is_ok(), "{r:?}");
    loop {
        if let ServerLane::Event {
            body: EventBody::MessageCreated { message, .. },
            ..
        } = ws.lane(4).await
        {
            assert_eq!(message.content, "hello over tcp");
            break;
        }
    }
    // And back, with the longest message there is (4,000 three-byte characters: a frame
    // larger than the server's 8 KiB read buffer, read in several steps).
    let long = "€".repeat(4000);
    ws.data(
        4,
        frame(&Request {
            id: 2,
            body: RequestBody::SendMessage {
                channel_id: channel,
                nonce: 2,
                content: long.clone(),
                reply_to: None,
            },
        }),
        false,
    )
    .await;
    loop {
        match ws.lane(4).await {
            ServerLane::Ack { id: 2, .. } => break,
            ServerLane::Error { id: 2, error } => panic!("{error:?}"),
            _ => continue,
        }
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), quic_chat.next())
            .await
            .expect("in time")
            .expect("lane works")
        {
            ServerLane::Event {
                body: EventBody::MessageCreated { message, .. },
                ..
            } if message.content == long => break,
            _ => continue,
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_origin_not_allowed_is_refused_with_403() {
    let mut c = config();
    c.session.allowed_origins = vec!["https://app.example".into()];
    let server = start(c).await;
    let refused = Ws::open(server.http_addr, Some("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut ok = Ws::open(server.http_addr, Some("https://app.example"))
        .await
        .expect("allowed");
    ok.hello(1).await;
    assert!(matches!(ok.control().await, ServerControl::Ready(_)));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_closes_only_that_connection_with_protocol_error() {
    let server = start(config()).await;
    let mut good = Ws::open(server.http_addr, None).await.expect("upgrades");
    good.hello(1).await;
    assert!(matches!(good.control().await, ServerControl::Ready(_)));
    let protocol_error = Some(CloseCode::PROTOCOL_ERROR.0 as u16);
    // Not a frame of the framing.
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.socket.send(Message::Binary(vec![0x00, 0x09].into())).await.unwrap();
    assert_eq!(ws.close_code().await, protocol_error);
    // A text message.
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.socket.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(ws.close_code().await, protocol_error);
    // A message over the largest frame (plus the framing's 16 bytes).
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    let big = vec![0u8; server.ctx.cfg.session.max_frame_bytes + 17];
    ws.socket.send(Message::Binary(big.into())).await.unwrap();
    assert_eq!(ws.close_code().await, Some(CloseCode::FRAME_TOO_LARGE.0 as u16));
    // A first stream other than the control stream.
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.data(4, vec![1, 2, 3], false).await;
    assert_eq!(ws.close_code().await, protocol_error);
    // Garbage on the control stream: told in band, then closed.
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.data(0, vec![3, 0xff, 0xff, 0xff], false).await;
    match ws.control().await {
        ServerControl::Closing(c) => assert_eq!(c.code, CloseCode::PROTOCOL_ERROR.0),
        other => panic!("{other:?}"),
    }
    // The good session is untouched.
    let hb = ClientControl::Heartbeat(quaver_proto::Heartbeat {
        nonce: 7,
        lanes: Vec::new(),
    });
    good.data(0, frame(&hb), false).await;
    assert!(matches!(good.control().await, ServerControl::HeartbeatAck(h) if h.nonce == 7));
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_that_never_says_hello_is_closed_with_hello_timeout() {
    let mut c = config();
    c.session.hello_timeout = Duration::from_millis(300);
    let server = start(c).await;
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    // Without a control stream there is nothing to say it on: the close carries it.
    assert_eq!(ws.close_code().await, Some(CloseCode::HELLO_TIMEOUT.0 as u16));
    server.shutdown().await;
}

#[tokio::test]
async fn an_unmasked_client_frame_ends_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connects");
    let upgrade = format!(
        "GET /quaver/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: quaver\r\n\r\n",
        server.http_addr
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"),
        "upgraded"
    );
    // A binary frame without a mask (RFC 6455 §5.1: a server must close on it).
    tcp.write_all(&[0x82, 0x03, 0x00, 0x01, 0x00]).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the server ends the connection");
    server.shutdown().await;
}

#[tokio::test]
async fn a_draining_server_tells_websocket_sessions_goaway() {
    let server = start(config()).await;
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.hello(1).await;
    assert!(matches!(ws.control().await, ServerControl::Ready(_)));
    let stopping = tokio::spawn(server.shutdown());
    assert!(matches!(ws.control().await, ServerControl::Goaway(_)), "Goaway first");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_session_opened_over_websocket_resumes_over_quic_with_what_it_missed() {
    let server = start(config()).await;
    let mut ws = Ws::open(server.http_addr, None).await.expect("upgrades");
    ws.hello(5).await;
    let ServerControl::Ready(ready) = ws.control().await else {
        panic!("Ready")
    };
    let mut open = frame(&StreamOpen::Lane(Lane::Chat));
    open.extend(frame(&Request {
        id: 1,
        body: RequestBody::CreateGuild { name: "first".into() },
    }));
    ws.data(4, open, false).await;
    // The guild's event and the ack, in either order.
    let (mut acked, mut last_seq) = (false, 0);
    while !acked || last_seq == 0 {
        match ws.lane(4).await {
            ServerLane::Ack { id: 1, .. } => acked = true,
            ServerLane::Event { seq, .. } => last_seq = seq,
            other => panic!("{other:?}"),
        }
    }
    // The connection drops (no close frame): the session waits for a resume.
    drop(ws);
    // Meanwhile the same user, on another session, makes a second guild: an event the
    // detached session must get on resume.
    let other = connect(&client_config(&server, Transport::Quic, Some(token(5))))
        .await
        .expect("connects");
    let mut other_chat = other.open_lane(Lane::Chat).await.expect("lane");
    let r = other_chat
        .request(RequestBody::CreateGuild { name: "second".into() })
        .await
        .expect("answered");
    assert!(r.is_ok(), "{r:?}");
    let mut cfg = client_config(&server, Transport::Quic, Some(token(5)));
    cfg.resume = Some(quaver_proto::ResumeRequest {
        session_id: ready.session_id,
        lanes: vec![quaver_proto::LaneSeq {
            lane: Lane::Chat,
            seq: last_seq,
        }],
        channels: Vec::new(),
    });
    // The server notices the dropped TCP connection at once; the resume may still race it.
    let mut resumed = None;
    for _ in 0..20 {
        let c = connect(&cfg).await.expect("connects");
        if c.resumed {
            resumed = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = resumed.expect("the session resumes over QUIC");
    assert_eq!(resumed.ready.session_id, ready.session_id);
    let mut chat = resumed.open_lane(Lane::Chat).await.expect("lane");
    let next = tokio::time::timeout(Duration::from_secs(10), chat.next())
        .await
        .expect("replayed in time")
        .expect("lane works");
    match next {
        ServerLane::Event {
            seq,
            body: EventBody::GuildUpdated { guild },
        } => {
            assert_eq!(seq, last_seq + 1, "exactly what came after");
            assert_eq!(guild.name, "second");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

/// A native client over the WebSocket framing: named outright, or as the fallback when
/// the QUIC address never answers (a UDP socket that reads and says nothing, as a network
/// that drops UDP looks).
#[tokio::test]
async fn the_native_client_uses_websocket_outright_or_when_udp_never_answers() {
    let server = start(config()).await;
    let ws_url = format!("ws://{}/quaver/ws", server.http_addr);
    // Outright.
    let mut cfg = client_config(&server, Transport::WebSocket, Some(token(1)));
    cfg.ws_url = Some(ws_url.clone());
    let c = connect(&cfg).await.expect("connects over WebSocket");
    assert_eq!(c.transport(), Transport::WebSocket);
    let mut chat = c.open_lane(Lane::Chat).await.expect("lane");
    let r = chat
        .request(RequestBody::CreateGuild { name: "native".into() })
        .await
        .expect("answered");
    assert!(matches!(r, Ok(ResponseBody::Guild(_))), "{r:?}");
    let info = c.fetch(FetchRequest::ServerInfo).await.expect("fetched");
    assert!(info.is_ok(), "{info:?}");
    // The fallback: QUIC to a black hole, WebSocket after `fallback_after`.
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = client_config(&server, Transport::Quic, Some(token(2)));
    cfg.addr = hole.local_addr().unwrap();
    cfg.ws_url = Some(ws_url);
    cfg.fallback_after = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let c = connect(&cfg).await.expect("connects by falling back");
    let took = started.elapsed();
    assert_eq!(c.transport(), Transport::WebSocket);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let mut buf = [0u8; 2048];
    assert!(
        hole.try_recv(&mut buf).is_ok(),
        "QUIC was tried first (its Initial reached the black hole)"
    );
    let mut chat = c.open_lane(Lane::Chat).await.expect("lane");
    let r = chat
        .request(RequestBody::CreateGuild {
            name: "fell back".into(),
        })
        .await
        .expect("answered");
    assert!(matches!(r, Ok(ResponseBody::Guild(_))), "{r:?}");
    c.close();
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_trickled_slowly_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connects");
    let started = std::time::Instant::now();
    // A request head that never ends, a byte now and then (slowloris).
    tcp.write_all(b"GET /quaver/ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if tcp.write_all(b"X").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), trickle).await;
    let took = started.elapsed();
    let limit = quaver::http::HEADER_READ_TIMEOUT;
    assert!(
        took >= limit && took < limit + Duration::from_secs(5),
        "cut off after {took:?} (the limit is {limit:?})"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest)).await;
    server.shutdown().await;
}

/// `wss://`: the native client through a TLS terminator in front of the HTTP port (how the
/// framing is deployed, PROTOCOL.md §11), trusting the terminator's CA; a client that does
/// not trust it is refused by TLS — never downgraded to plain `ws://`.
#[tokio::test]
async fn the_native_client_speaks_wss_through_a_tls_terminator() {
    let server = start(config()).await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut tls =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let (backend, handshakes) = (
        server.http_addr,
        std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = front.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut outer) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut inner = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut outer, &mut inner).await;
            });
        }
    });
    let ca = std::env::temp_dir().join(format!("quaver-wss-ca-{}-{front_port}.pem", std::process::id()));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let ws_url = format!("wss://localhost:{front_port}/quaver/ws");

    let mut cfg = client_config(&server, Transport::WebSocket, Some(token(1)));
    cfg.trust = quaver_client::Trust::CaFile(ca.clone());
    cfg.ws_url = Some(ws_url.clone());
    let c = connect(&cfg).await.expect("connects over wss://");
    assert_eq!(c.transport(), Transport::WebSocket);
    let mut chat = c.open_lane(Lane::Chat).await.expect("lane");
    let r = chat
        .request(RequestBody::CreateGuild {
            name: "over tls".into(),
        })
        .await
        .expect("answered");
    assert!(matches!(r, Ok(ResponseBody::Guild(_))), "{r:?}");
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "through the terminator"
    );
    c.close();

    // Not trusted: a TLS error, and nothing reaches the server in the clear.
    let mut cfg = client_config(&server, Transport::WebSocket, Some(token(2)));
    cfg.trust = quaver_client::Trust::Hashes(vec![[7; 32]]);
    cfg.ws_url = Some(ws_url);
    let Err(err) = connect(&cfg).await else {
        panic!("an untrusted certificate is refused")
    };
    assert!(err.to_string().contains("TLS"), "{err}");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(&ca);
    server.shutdown().await;
}

/// The door (`max_handshakes`, PROTOCOL.md §1 "Refused at the door") counts WebSocket
/// connections on their way to `Ready` beside QUIC ones: past it an upgrade is answered and
/// closed at once with `overloaded` (3001), which the native client reads as `overloaded`;
/// WebSockets still setting up keep a QUIC client out too; once `Ready` they count no more.
#[tokio::test]
async fn websocket_set_ups_are_counted_and_refused_at_the_door() {
    use quaver_client::Error;
    let mut cfg = config();
    cfg.loops = 1;
    cfg.session.max_handshakes = 2;
    // The one that never says `Hello` stays set up for the whole test.
    cfg.session.hello_timeout = Duration::from_secs(60);
    let server = start(cfg).await;
    let ws_url = format!("ws://{}/quaver/ws", server.http_addr);
    let over_ws = |user| {
        let mut c = client_config(&server, Transport::WebSocket, Some(token(user)));
        c.ws_url = Some(ws_url.clone());
        c
    };
    let overloaded = |r: Result<quaver_client::Client, Error>, what: &str| match r {
        Err(Error::Closed { code, .. }) => assert_eq!(code, CloseCode::OVERLOADED, "{what}"),
        Err(e) => panic!("{what}: expected overloaded, got {e}"),
        Ok(_) => panic!("{what}: expected overloaded, got a session"),
    };
    // Two WebSockets that have not said `Hello` take both places.
    let mut a = Ws::open(server.http_addr, None).await.expect("first upgrade");
    let _b = Ws::open(server.http_addr, None).await.expect("second upgrade");
    assert!(
        http_get(server.http_addr, "/metrics")
            .await
            .1
            .contains("quaver_sessions_setting_up 2\n")
    );
    // A third is upgraded only to be told, before anything else.
    let started = std::time::Instant::now();
    let mut c = Ws::open(server.http_addr, None).await.expect("upgraded to be told");
    assert_eq!(
        c.close_code().await,
        Some(3001),
        "overloaded, as PROTOCOL.md §11 moves it"
    );
    overloaded(connect(&over_ws(1)).await, "the native client over WebSocket");
    overloaded(
        connect(&client_config(&server, Transport::Quic, Some(token(1)))).await,
        "a QUIC client while WebSockets set up",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at once, not timed out"
    );
    assert!(
        http_get(server.http_addr, "/metrics")
            .await
            .1
            .contains("quaver_handshakes_shed_total 3\n")
    );
    // One of them becomes a session: it no longer counts, and there is room again, over
    // either framing; live sessions take no place.
    a.hello(1).await;
    assert!(matches!(a.control().await, ServerControl::Ready(_)));
    let quic = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .expect("room once a WebSocket is Ready");
    let ws = connect(&over_ws(3)).await.expect("a live session takes no place");
    assert_eq!(ws.transport(), Transport::WebSocket);
    assert!(
        http_get(server.http_addr, "/metrics")
            .await
            .1
            .contains("quaver_sessions_setting_up 1\n"),
        "the one that never said Hello"
    );
    drop((quic, ws));
    server.shutdown().await;
}
