//! Sessions on the engine's loop in memory, on a virtual clock (issue 12 item 1): the
//! gateway (`gateway::wire::Gateway`) in an `engine::Core` and quinn-proto client
//! connections (raw QUIC, or WebTransport with the CONNECT and stream headers written by
//! hand), their packets handed over in memory — no socket, no sleeping through
//! timeouts. Time moves only when a test advances it, so a 20-second heartbeat timeout or a
//! 10-second drain takes milliseconds; the store (SQLite, for `Ready`'s snapshot) is real.
//!
//! The same cases exist over real QUIC in `tests/gateway.rs`; these pin the timing rules
//! exactly (before the deadline: open; after it: the code), which real time cannot.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use quaver::engine::{Core, Wire, mailbox};
use quaver::gateway::wire::{Command, Gateway};
use quaver_proto::codec::{FrameReader, decode, encode_frame};
use quaver_proto::{
    ALPN_H3, ALPN_QUAVER, ClientControl, CloseCode, Compression, DeviceKind, ErrorCode, Heartbeat, Hello, Lane,
    PROTOCOL_VERSION, Ready, Request, RequestBody, ResponseBody, ResumeRequest, ServerControl, ServerLane, StreamOpen,
};
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Event, StreamId};

const SERVER: &str = "10.0.0.1:4433";

/// Datagrams a side sent, for the other side.
#[derive(Default)]
struct Net(VecDeque<(SocketAddr, Vec<u8>)>);

impl Wire for Net {
    fn full(&self) -> bool {
        false
    }
    fn max_segments(&self) -> usize {
        1
    }
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) {
        self.0.push_back((t.destination, contents.to_vec()));
    }
}

/// One client connection (its own endpoint and address) and what it read.
struct Client {
    addr: SocketAddr,
    endpoint: quinn_proto::Endpoint,
    conn: quinn_proto::Connection,
    ch: ConnectionHandle,
    /// The control stream, once opened.
    control: Option<StreamId>,
    /// Every stream the client opened, with what arrived on it.
    streams: HashMap<StreamId, Incoming>,
    /// Control frames received, oldest first.
    received: VecDeque<ServerControl>,
    /// Streams the client does not read (a slow consumer).
    unread: std::collections::HashSet<StreamId>,
    /// WebTransport: the CONNECT stream and the raw bytes read on it; every other stream
    /// then starts with the session's stream header.
    wt: Option<(StreamId, Vec<u8>)>,
    /// How the connection ended, once it has.
    lost: Option<quinn_proto::ConnectionError>,
}

/// What arrived on one stream.
struct Incoming {
    reader: FrameReader,
    frames: Vec<Bytes>,
    finished: bool,
}

impl Client {
    /// Reads every stream it opened; control frames are decoded into `received`, the
    /// CONNECT stream's bytes kept raw.
    fn read(&mut self) {
        let connect = self.wt.as_ref().map(|(id, _)| *id);
        for (id, inc) in self.streams.iter_mut() {
            if self.unread.contains(id) {
                continue;
            }
            let mut recv = self.conn.recv_stream(*id);
            let Ok(mut chunks) = recv.read(true) else { continue };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(c)) if Some(*id) == connect => {
                        if let Some((_, raw)) = &mut self.wt {
                            raw.extend_from_slice(&c.bytes);
                        }
                    }
                    Ok(Some(c)) => inc.reader.push(&c.bytes),
                    Ok(None) => {
                        inc.finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
            while let Ok(Some(f)) = inc.reader.next_frame() {
                if Some(*id) == self.control {
                    self.received
                        .push_back(decode::<ServerControl>(&f).expect("a control frame"));
                } else {
                    inc.frames.push(f);
                }
            }
        }
    }

    /// The application close code the server closed the connection with, if it did.
    fn closed_with(&self) -> Option<u32> {
        match &self.lost {
            Some(quinn_proto::ConnectionError::ApplicationClosed(a)) => u32::try_from(a.error_code.into_inner()).ok(),
            _ => None,
        }
    }

    /// Whether a control frame like `f` has arrived.
    fn got(&self, f: impl Fn(&ServerControl) -> bool) -> bool {
        self.received.iter().any(f)
    }

    /// The `Closing` the server sent, if any.
    fn closing(&self) -> Option<u32> {
        self.received.iter().find_map(|f| match f {
            ServerControl::Closing(c) => Some(c.code),
            _ => None,
        })
    }

    /// The lane frames that arrived on `stream`, decoded.
    fn lane_frames(&self, stream: StreamId) -> Vec<ServerLane> {
        self.streams[&stream]
            .frames
            .iter()
            .map(|f| decode::<ServerLane>(f).expect("a lane frame"))
            .collect()
    }
}

/// One server loop and its clients, in memory.
struct Pair {
    now: Instant,
    server: Core<Gateway>,
    commands: mailbox::Receiver<Command>,
    tx: mailbox::Sender<Command>,
    to_clients: Net,
    clients: Vec<Client>,
    client_config: quinn_proto::ClientConfig,
    /// The same, offering `h3` (WebTransport).
    h3_config: quinn_proto::ClientConfig,
    real: quaver::Server,
}

impl Pair {
    /// A server from `cfg` (its store and tasks real, its loop here) and one connected
    /// client (`clients[0]`).
    async fn new(cfg: quaver::config::Config) -> Pair {
        let real = start(cfg).await;
        let ctx = real.ctx.clone();
        let config = quaver::transport::server_config(
            &ctx.cfg,
            ctx.certs.clone(),
            &[ALPN_H3, ALPN_QUAVER],
            ctx.keys.tickets.clone(),
        )
        .unwrap();
        let (tx, commands) = mailbox::channel();
        let mut core = Core::new(Arc::new(config), Gateway::new(ctx, tx.clone()));
        core.set_limits(quaver::engine::Limits {
            max_connections: 16,
            retry_above_handshakes: 16,
            ..Default::default()
        });
        let config_for = |alpn: &[u8]| {
            let tls = quaver_client::tls_config(&quaver_client::Trust::Hashes(vec![real.cert_hash()]), alpn).unwrap();
            quinn_proto::ClientConfig::new(Arc::new(
                quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
            ))
        };
        let (client_config, h3_config) = (config_for(ALPN_QUAVER), config_for(ALPN_H3));
        let mut p = Pair {
            now: Instant::now(),
            server: core,
            commands,
            tx,
            to_clients: Net::default(),
            clients: Vec::new(),
            client_config,
            h3_config,
            real,
        };
        p.connect();
        p
    }

    /// A new client connection (raw QUIC), handshake done; returns its index.
    fn connect(&mut self) -> usize {
        let config = self.client_config.clone();
        self.connect_with(config)
    }

    fn connect_with(&mut self, config: quinn_proto::ClientConfig) -> usize {
        let mut endpoint =
            quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, true, None);
        let (ch, conn) = endpoint
            .connect(self.now, config, SERVER.parse().unwrap(), "localhost")
            .unwrap();
        self.clients.push(Client {
            addr: SocketAddr::from(([10, 0, 0, 2], 50_000 + self.clients.len() as u16)),
            endpoint,
            conn,
            ch,
            control: None,
            streams: HashMap::new(),
            received: VecDeque::new(),
            unread: Default::default(),
            wt: None,
            lost: None,
        });
        self.exchange();
        let i = self.clients.len() - 1;
        assert!(
            !self.clients[i].conn.is_handshaking(),
            "the handshake completes in memory"
        );
        i
    }

    /// Moves packets every way, fires what is due at `now`, hands queued commands to the
    /// loop, until nothing moves.
    fn exchange(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let mut cmds = Vec::new();
            self.commands.take(&mut cmds);
            for c in cmds {
                moved = true;
                self.server.command(c, self.now);
            }
            // Clients → server.
            for c in &mut self.clients {
                if c.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                    c.conn.handle_timeout(self.now);
                }
                let mut buf = Vec::new();
                while let Some(t) = c.conn.poll_transmit(self.now, 1, &mut buf) {
                    moved = true;
                    let data = BytesMut::from(&buf[..t.size]);
                    buf.clear();
                    self.server
                        .handle_datagram(self.now, c.addr, None, None, data, &mut self.to_clients);
                }
            }
            self.server.finish_turn(self.now, &mut self.to_clients);
            // Server → clients.
            while let Some((to, data)) = self.to_clients.0.pop_front() {
                moved = true;
                let Some(c) = self.clients.iter_mut().find(|c| c.addr == to) else {
                    continue;
                };
                let mut out = Vec::new();
                if let Some(DatagramEvent::ConnectionEvent(ch, ev)) = c.endpoint.handle(
                    self.now,
                    SERVER.parse().unwrap(),
                    None,
                    None,
                    BytesMut::from(&data[..]),
                    &mut out,
                ) && ch == c.ch
                {
                    c.conn.handle_event(ev);
                }
            }
            for c in &mut self.clients {
                while let Some(ev) = c.conn.poll_endpoint_events() {
                    if let Some(back) = c.endpoint.handle_event(c.ch, ev) {
                        c.conn.handle_event(back);
                    }
                }
                while let Some(ev) = c.conn.poll() {
                    moved = true;
                    if let Event::ConnectionLost { reason } = ev {
                        c.lost = Some(reason);
                    }
                }
                c.read();
            }
            if !moved {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Exchanges until `done` holds, letting the store's tasks run (real time, bounded).
    async fn until(&mut self, what: &str, mut done: impl FnMut(&Pair) -> bool) {
        let limit = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < limit, "{what}: not within 10 s of real time");
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.exchange();
        }
    }

    /// Moves the virtual clock on by `d`, in steps of `step`, exchanging at each.
    fn advance(&mut self, d: Duration, step: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + step).min(end);
            self.exchange();
        }
    }

    /// Opens a stream on client `i` and writes `first` on it; returns the stream.
    fn open(&mut self, i: usize, first: &[u8]) -> StreamId {
        let id = self.new_stream(i);
        self.write(i, id, first);
        id
    }

    /// Opens a stream on client `i` (nothing written yet).
    fn new_stream(&mut self, i: usize) -> StreamId {
        let c = &mut self.clients[i];
        let id = c.conn.streams().open(Dir::Bi).expect("a stream");
        c.streams.insert(
            id,
            Incoming {
                reader: FrameReader::new(quaver_proto::HARD_MAX_FRAME),
                frames: Vec::new(),
                finished: false,
            },
        );
        // On a WebTransport session a stream first says whose it is: the signal, then the
        // session (its CONNECT stream's id).
        if let Some((connect, _)) = c.wt {
            let mut head = Vec::new();
            quaver_proto::varint::write(0x41, &mut head);
            quaver_proto::varint::write(connect.into(), &mut head);
            let n = c.conn.send_stream(id).write(&head).unwrap();
            assert_eq!(n, head.len());
        }
        id
    }

    /// A new WebTransport client: `h3` connection, then an extended CONNECT to `path`;
    /// returns its index and the response's status once it has come (`None`: no answer).
    fn connect_wt(&mut self, path: &str) -> (usize, Option<String>) {
        let config = self.h3_config.clone();
        let i = self.connect_with(config);
        let request = wtransport_proto::session::SessionRequest::new(format!("https://localhost:4433{path}")).unwrap();
        let mut buf = Vec::new();
        request.headers().generate_frame().write(&mut buf).unwrap();
        let id = self.new_stream(i);
        self.clients[i].wt = Some((id, Vec::new()));
        self.write(i, id, &buf);
        (i, self.status(i))
    }

    /// The `:status` of the response on client `i`'s CONNECT stream, once complete.
    fn status(&self, i: usize) -> Option<String> {
        let (_, raw) = self.clients[i].wt.as_ref()?;
        let (kind, a) = quaver_proto::varint::read(raw)?;
        let (len, b) = quaver_proto::varint::read(&raw[a..])?;
        let payload = raw.get(a + b..a + b + len as usize)?;
        assert_eq!(kind, 0x01, "a HEADERS frame");
        let frame = wtransport_proto::frame::Frame::new_headers(payload.to_vec().into());
        let headers = wtransport_proto::headers::Headers::with_frame(&frame).unwrap();
        headers.get(":status").map(str::to_string)
    }

    fn write(&mut self, i: usize, id: StreamId, bytes: &[u8]) {
        let c = &mut self.clients[i];
        let n = c
            .conn
            .send_stream(id)
            .write(bytes)
            .unwrap_or_else(|e| panic!("write on {id:?}: {e:?}; the connection: {:?}", c.lost));
        assert_eq!(n, bytes.len());
        self.exchange();
    }

    fn send_control(&mut self, i: usize, msg: &ClientControl) {
        let mut buf = Vec::new();
        encode_frame(msg, &mut buf);
        match self.clients[i].control {
            Some(id) => self.write(i, id, &buf),
            None => {
                let id = self.new_stream(i);
                self.clients[i].control = Some(id);
                self.write(i, id, &buf);
            }
        }
    }

    /// Says `hello` on client `i` and waits for its first control frame.
    async fn hello(&mut self, i: usize, hello: Hello) -> ServerControl {
        self.send_control(i, &ClientControl::Hello(hello));
        self.until("an answer to Hello", |p| !p.clients[i].received.is_empty())
            .await;
        self.clients[i].received.pop_front().expect("a frame")
    }

    /// Says Hello with `token` on client `i` and waits for Ready.
    async fn ready(&mut self, i: usize, token: String) -> Ready {
        match self.hello(i, hello(token, None)).await {
            ServerControl::Ready(r) => *r,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    /// Opens `lane` on client `i`; returns its stream.
    fn lane(&mut self, i: usize, lane: Lane) -> StreamId {
        let mut buf = Vec::new();
        encode_frame(&StreamOpen::Lane(lane), &mut buf);
        self.open(i, &buf)
    }

    fn request(&mut self, i: usize, stream: StreamId, id: u32, body: RequestBody) {
        let mut buf = Vec::new();
        encode_frame(&Request { id, body }, &mut buf);
        self.write(i, stream, &buf);
    }
}

/// A resume of `session_id` with nothing processed on any lane.
fn resume_of(session_id: quaver_proto::SessionId) -> ResumeRequest {
    ResumeRequest {
        session_id,
        lanes: Vec::new(),
        channels: Vec::new(),
    }
}

fn hello(token: String, resume: Option<ResumeRequest>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        token: Some(token),
        device: DeviceKind::Desktop,
        resume,
        compression: Compression::None,
    }
}

fn heartbeat(nonce: u32) -> ClientControl {
    ClientControl::Heartbeat(Heartbeat {
        nonce,
        lanes: Vec::new(),
    })
}

/// The heartbeat interval a `Ready` gives.
fn interval(r: &Ready) -> Duration {
    Duration::from_millis(r.heartbeat_interval_ms.into())
}

#[tokio::test]
async fn a_session_without_heartbeats_is_closed_exactly_at_its_timeout() {
    let mut p = Pair::new(config()).await;
    let every = interval(&p.ready(0, token(1)).await);
    // A client silent since `Ready` has one interval more (time for `Ready` to arrive).
    let timeout = p.real.ctx.cfg.session.ping_timeout + every;
    // Just before the deadline (counted from `Ready`): still open.
    p.advance(timeout - Duration::from_millis(200), Duration::from_millis(500));
    assert_eq!(p.clients[0].lost, None, "open before the heartbeat timeout");
    assert_eq!(p.clients[0].closing(), None);
    p.advance(Duration::from_millis(400), Duration::from_millis(100));
    assert_eq!(
        p.clients[0].closing(),
        Some(CloseCode::HEARTBEAT_TIMEOUT.0),
        "Closing in band first"
    );
    // The client has read it; after the grace the connection goes with the same code.
    p.advance(Duration::from_secs(2), Duration::from_millis(100));
    assert_eq!(p.clients[0].closed_with(), Some(CloseCode::HEARTBEAT_TIMEOUT.0));
}

#[tokio::test]
async fn heartbeats_keep_a_session_open_and_are_answered() {
    let mut p = Pair::new(config()).await;
    let every = interval(&p.ready(0, token(2)).await);
    let timeout = p.real.ctx.cfg.session.ping_timeout;
    // Three heartbeat timeouts of virtual time, a heartbeat every interval.
    let mut nonce = 0;
    while nonce < (3 * timeout.as_millis() / every.as_millis()) as u32 {
        nonce += 1;
        p.send_control(0, &heartbeat(nonce));
        p.advance(every, Duration::from_millis(500));
    }
    assert_eq!(p.clients[0].lost, None);
    let acks: Vec<u32> = p.clients[0]
        .received
        .iter()
        .filter_map(|f| match f {
            ServerControl::HeartbeatAck(h) => Some(h.nonce),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        (1..=nonce).collect::<Vec<_>>(),
        "each heartbeat answered, in order"
    );
}

#[tokio::test]
async fn a_connection_without_hello_is_closed_at_the_hello_timeout() {
    let mut p = Pair::new(config()).await;
    let limit = p.real.ctx.cfg.session.hello_timeout;
    p.advance(limit - Duration::from_millis(100), Duration::from_millis(100));
    assert_eq!(p.clients[0].lost, None, "open before the Hello timeout");
    p.advance(
        Duration::from_millis(200) + Duration::from_secs(2),
        Duration::from_millis(100),
    );
    assert_eq!(p.clients[0].closed_with(), Some(CloseCode::HELLO_TIMEOUT.0));
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_closes_the_session() {
    let mut p = Pair::new(config()).await;
    // A token valid for 30 s of wall-clock time: the session is told to refresh before it
    // expires, and closed once it has, heartbeats or not.
    let short = verifier().mint(3, Some("user3"), Duration::from_secs(30)).unwrap();
    let every = interval(&p.ready(0, short).await);
    let mut nonce = 0;
    while p.clients[0].lost.is_none() && nonce < 40_000 / every.as_millis() as u32 + 1 {
        nonce += 1;
        p.send_control(0, &heartbeat(nonce));
        p.advance(every, Duration::from_millis(500));
    }
    let c = &p.clients[0];
    assert!(
        c.got(|f| matches!(f, ServerControl::RefreshNeeded { .. })),
        "asked to refresh before the expiry: {:?}",
        c.received
    );
    assert_eq!(c.closing(), Some(CloseCode::TOKEN_REFRESH_MISSED.0));
    assert_eq!(c.closed_with(), Some(CloseCode::TOKEN_REFRESH_MISSED.0));
}

#[tokio::test]
async fn a_drain_sends_goaway_then_closes_going_away_after_the_drain_timeout() {
    let mut cfg = config();
    cfg.session.drain_timeout = Duration::from_secs(10);
    let mut p = Pair::new(cfg).await;
    let every = interval(&p.ready(0, token(4)).await);
    p.tx.send(Command::Drain).unwrap();
    p.exchange();
    assert!(
        matches!(p.clients[0].received.front(), Some(ServerControl::Goaway(_))),
        "Goaway at once: {:?}",
        p.clients[0].received
    );
    // A new connection during the drain is refused in band.
    let late = p.connect();
    p.send_control(late, &ClientControl::Hello(hello(token(5), None)));
    p.advance(Duration::from_millis(100), Duration::from_millis(50));
    assert_eq!(p.clients[late].closing(), Some(CloseCode::GOING_AWAY.0));
    // The first client stays (heartbeating) through the drain: closed when it ends.
    let mut nonce = 0;
    while p.clients[0].lost.is_none() && nonce < 100 {
        nonce += 1;
        p.send_control(0, &heartbeat(nonce));
        p.advance(every.min(Duration::from_secs(1)), Duration::from_millis(250));
    }
    assert!(nonce >= 10, "not before the drain timeout ({nonce} s)");
    assert_eq!(p.clients[0].closing(), Some(CloseCode::GOING_AWAY.0));
    assert_eq!(p.clients[0].closed_with(), Some(CloseCode::GOING_AWAY.0));
}

#[tokio::test]
async fn a_resume_on_a_new_connection_replaces_the_old_one() {
    let mut p = Pair::new(config()).await;
    let ready = p.ready(0, token(6)).await;
    // The client loses its path and comes back on a new connection, resuming.
    let b = p.connect();
    match p.hello(b, hello(token(6), Some(resume_of(ready.session_id)))).await {
        ServerControl::Resumed(r) => assert_eq!(r.session_id, ready.session_id, "the same session"),
        other => panic!("expected Resumed, got {other:?}"),
    }
    p.advance(Duration::from_secs(2), Duration::from_millis(100));
    assert_eq!(p.clients[0].closing(), Some(CloseCode::SESSION_REPLACED.0));
    assert_eq!(p.clients[0].closed_with(), Some(CloseCode::SESSION_REPLACED.0));
    assert_eq!(p.clients[b].lost, None, "the new connection carries the session");
    // Another user cannot take the session over: refused, and the session is untouched.
    let c = p.connect();
    match p.hello(c, hello(token(7), Some(resume_of(ready.session_id)))).await {
        ServerControl::Closing(cl) => assert_eq!(cl.code, CloseCode::RESUME_REFUSED.0),
        other => panic!("expected resume_refused, got {other:?}"),
    }
    p.advance(Duration::from_secs(2), Duration::from_millis(100));
    assert_eq!(p.clients[c].closed_with(), Some(CloseCode::RESUME_REFUSED.0));
    assert_eq!(p.clients[b].lost, None, "user 6's session is untouched");
}

#[tokio::test]
async fn a_lane_answers_in_order_and_opens_once() {
    let mut p = Pair::new(config()).await;
    p.ready(0, token(8)).await;
    let lane = p.lane(0, Lane::Typing);
    for id in 1..=3 {
        p.request(0, lane, id, RequestBody::Ping { data: vec![id as u8] });
    }
    p.until("three Pongs", |p| p.clients[0].streams[&lane].frames.len() >= 3)
        .await;
    let ids: Vec<u32> = p.clients[0]
        .lane_frames(lane)
        .iter()
        .map(|f| match f {
            ServerLane::Ack {
                id,
                body: ResponseBody::Pong { .. },
            } => *id,
            other => panic!("expected a Pong, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    // The same lane again: refused on its own stream, which ends; the first one stays.
    let again = p.lane(0, Lane::Typing);
    p.until("the refusal", |p| p.clients[0].streams[&again].finished).await;
    match p.clients[0].lane_frames(again).as_slice() {
        [ServerLane::Error { error, .. }] => assert_eq!(error.code, ErrorCode::LANE_ALREADY_OPEN),
        other => panic!("expected LANE_ALREADY_OPEN, got {other:?}"),
    }
    p.request(0, lane, 4, RequestBody::Ping { data: vec![4] });
    p.until("a fourth Pong", |p| p.clients[0].streams[&lane].frames.len() >= 4)
        .await;
    assert_eq!(p.clients[0].lost, None);
}

#[tokio::test]
async fn a_client_that_does_not_read_its_lane_is_closed_as_a_slow_consumer() {
    let mut p = Pair::new(config()).await;
    // A client granting 2 KB of stream credit, and not reading its lane: the server holds
    // the replies flow control does not take, up to the lane's bound.
    let mut t = quinn_proto::TransportConfig::default();
    t.stream_receive_window(2000u32.into());
    p.client_config.transport_config(Arc::new(t));
    let c = p.connect();
    p.ready(c, token(9)).await;
    let lane = p.lane(c, Lane::Typing);
    p.clients[c].unread.insert(lane);
    let mut id = 0;
    while p.clients[c].closing().is_none() && id < 5_000 {
        id += 1;
        p.request(c, lane, id, RequestBody::Ping { data: vec![0; 16] });
        // Each request is served by a task (one at a time per lane): let it run.
        tokio::task::yield_now().await;
    }
    p.until("the Closing", |p| p.clients[c].closing().is_some()).await;
    assert!(id > 1024, "not before the lane's bound ({id} requests)");
    assert_eq!(p.clients[c].closing(), Some(CloseCode::SLOW_CONSUMER.0));
    p.advance(Duration::from_secs(2), Duration::from_millis(100));
    assert_eq!(p.clients[c].closed_with(), Some(CloseCode::SLOW_CONSUMER.0));
    // The other session on the same loop is untouched.
    assert_eq!(p.clients[0].lost, None);
}

#[tokio::test]
async fn a_refreshed_token_carries_the_session_past_the_first_expiry() {
    let mut p = Pair::new(config()).await;
    let short = verifier().mint(10, Some("user10"), Duration::from_secs(30)).unwrap();
    let every = interval(&p.ready(0, short).await);
    // Another user's token is refused and changes nothing.
    p.send_control(0, &ClientControl::RefreshToken { token: token(11) });
    let mut nonce = 0;
    while nonce < 40_000 / every.as_millis() as u32 + 1 {
        nonce += 1;
        p.send_control(0, &heartbeat(nonce));
        p.advance(every, Duration::from_millis(500));
        if p.clients[0].got(|f| matches!(f, ServerControl::RefreshNeeded { .. })) {
            break;
        }
    }
    let c = &p.clients[0];
    assert!(
        c.got(|f| matches!(f, ServerControl::Error(e) if e.code == ErrorCode::TOKEN_REJECTED)),
        "the other user's token refused: {:?}",
        c.received
    );
    assert!(
        c.got(|f| matches!(f, ServerControl::RefreshNeeded { .. })),
        "still asked to refresh: {:?}",
        c.received
    );
    // The same user's fresh token (an hour): the session lives past the first expiry.
    p.send_control(0, &ClientControl::RefreshToken { token: token(10) });
    for _ in 0..(60_000 / every.as_millis() as u32) {
        nonce += 1;
        p.send_control(0, &heartbeat(nonce));
        p.advance(every, Duration::from_millis(500));
    }
    assert_eq!(p.clients[0].lost, None, "refreshed: {:?}", p.clients[0].received);
    assert_eq!(p.clients[0].closing(), None);
    assert!(
        p.clients[0].got(|f| matches!(f, ServerControl::TokenRefreshed { .. })),
        "the refresh acknowledged"
    );
}

#[tokio::test]
async fn a_webtransport_session_runs_on_the_same_loop() {
    let mut p = Pair::new(config()).await;
    // The token in the URL, as browsers pass it; the Hello carries none.
    let (w, status) = p.connect_wt(&format!("/quaver?token={}", token(12)));
    assert_eq!(status.as_deref(), Some("200"));
    let mut h = hello(String::new(), None);
    h.token = None;
    match p.hello(w, h).await {
        ServerControl::Ready(r) => assert_eq!(r.user.id, 12),
        other => panic!("expected Ready, got {other:?}"),
    }
    let lane = p.lane(w, Lane::Presence);
    p.request(w, lane, 1, RequestBody::Ping { data: vec![7] });
    p.until("a Pong", |p| !p.clients[w].streams[&lane].frames.is_empty())
        .await;
    assert!(matches!(
        p.clients[w].lane_frames(lane).as_slice(),
        [ServerLane::Ack {
            id: 1,
            body: ResponseBody::Pong { .. }
        }]
    ));
    // Its heartbeat timeout is a raw QUIC session's (silent since `Ready`: one interval more).
    let timeout = p.real.ctx.cfg.session.ping_timeout + p.real.ctx.cfg.session.ping_interval;
    p.advance(timeout + Duration::from_secs(2), Duration::from_millis(500));
    assert_eq!(p.clients[w].closing(), Some(CloseCode::HEARTBEAT_TIMEOUT.0));
    assert_eq!(p.clients[w].closed_with(), Some(CloseCode::HEARTBEAT_TIMEOUT.0));
}

#[tokio::test]
async fn webtransport_requests_are_judged_by_path_and_time() {
    let mut p = Pair::new(config()).await;
    let (_, status) = p.connect_wt("/elsewhere");
    assert_eq!(status.as_deref(), Some("404"), "not our path");
    // A client that connects over h3 and never sends its CONNECT: closed at the Hello
    // timeout like any other.
    let config = p.h3_config.clone();
    let silent = p.connect_with(config);
    let limit = p.real.ctx.cfg.session.hello_timeout;
    p.advance(limit - Duration::from_millis(100), Duration::from_millis(100));
    assert_eq!(p.clients[silent].lost, None);
    p.advance(Duration::from_secs(3), Duration::from_millis(100));
    assert_eq!(p.clients[silent].closed_with(), Some(CloseCode::HELLO_TIMEOUT.0));
}

/// A connection the server closes itself — here a WebTransport session its client ended by
/// finishing the CONNECT stream, as a browser page does — is gone from the loop once QUIC
/// has drained it, and no longer counts for the shutdown drain. (quinn-proto reports no
/// loss for a locally closed connection; the gateway kept such connections, each holding
/// its session's count, for the life of the process, and every SIGTERM after a browser had
/// left waited the whole drain timeout.)
#[tokio::test]
async fn a_connection_the_server_closed_stops_counting_once_drained() {
    let mut p = Pair::new(config()).await;
    // The pair's first client never says Hello: closed at the Hello timeout, then drained.
    let hello_timeout = p.real.ctx.cfg.session.hello_timeout;
    p.advance(hello_timeout + Duration::from_secs(5), Duration::from_millis(250));
    assert!(p.clients[0].lost.is_some());
    assert_eq!(
        p.real.ctx.session_tasks(),
        0,
        "a connection closed at its Hello timeout still counts"
    );
    let base = 0;
    let (w, status) = p.connect_wt(&format!("/quaver?token={}", token(12)));
    assert_eq!(status.as_deref(), Some("200"));
    let mut h = hello(String::new(), None);
    h.token = None;
    assert!(matches!(p.hello(w, h).await, ServerControl::Ready(_)));
    assert_eq!(p.real.ctx.session_tasks(), base + 1);
    // The client ends the WebTransport session: FIN on its CONNECT stream.
    let (connect, _) = p.clients[w].wt.clone().expect("a WebTransport client");
    p.clients[w]
        .conn
        .send_stream(connect)
        .finish()
        .expect("finish the CONNECT stream");
    p.exchange();
    p.until("the server closes the connection", |p| p.clients[w].lost.is_some())
        .await;
    // QUIC's closing period (3 PTO), then nothing is left of it.
    p.advance(Duration::from_secs(5), Duration::from_millis(100));
    assert_eq!(p.real.ctx.session_tasks(), base, "the closed connection still counts");
    // The same for a raw QUIC session the server closes (heartbeat timeout).
    let q = p.connect();
    p.ready(q, token(13)).await;
    assert_eq!(p.real.ctx.session_tasks(), base + 1);
    let timeout = p.real.ctx.cfg.session.ping_timeout + p.real.ctx.cfg.session.ping_interval;
    p.advance(timeout + Duration::from_secs(8), Duration::from_millis(250));
    assert_eq!(p.clients[q].closed_with(), Some(CloseCode::HEARTBEAT_TIMEOUT.0));
    assert_eq!(p.real.ctx.session_tasks(), base);
}

/// The engine keeps one timer-heap entry per connection and lets a timer that moves later
/// (every packet received pushes the idle timer on) wait for that entry to come up and be
/// queued again (`engine::Core::drive`). A peer that answers for half a minute and then
/// falls silent is still dropped exactly at the idle timeout counted from its last packet:
/// not earlier (a stale entry firing), not later or never (a moved timer lost).
#[tokio::test]
async fn a_silent_peer_is_dropped_at_the_idle_timeout_after_its_timer_moved_many_times() {
    let mut cfg = config();
    // No Hello is sent: only QUIC's own timers are at work.
    cfg.session.hello_timeout = Duration::from_secs(3600);
    cfg.session.ping_interval = Duration::from_secs(2);
    cfg.session.ping_timeout = Duration::from_secs(10);
    let mut p = Pair::new(cfg).await;
    // The server's keep-alives every 2 s are answered: its idle timer moves on each time.
    p.advance(Duration::from_secs(30), Duration::from_millis(500));
    assert_eq!(p.server.connections(), 1, "a peer that answers stays");
    // The peer falls silent (nothing of it reaches the server any more).
    let silent = p.clients.remove(0);
    let (quiet_since, step) = (p.now, Duration::from_millis(100));
    while p.server.connections() == 1 && p.now - quiet_since < Duration::from_secs(30) {
        p.advance(step, step);
    }
    // QUIC's idle timer restarts at the last packet received and at the first ack-eliciting
    // one sent after it (a keep-alive, within `ping_interval`).
    let gone_after = p.now - quiet_since;
    assert!(
        gone_after >= Duration::from_secs(10) && gone_after <= Duration::from_secs(12) + step,
        "dropped {gone_after:?} after the peer fell silent (idle timeout 10 s, keep-alive 2 s)"
    );
    drop(silent);
}
