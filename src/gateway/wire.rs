//! Sessions on the engine (issue 12): the gateway as an [`engine::App`]. A loop owns
//! every connection it accepted, its control stream, its lanes and its fetch streams — no task, channel
//! or mutex per connection or per lane. What needs the store runs as a task and comes back
//! through the loop's one queue ([`Command`]): the opening of a session (its snapshot), each
//! request (one at a time per lane, in order) and each fetch. The fan-out writes into lanes
//! through the same queue (each connection's `LoopOutlet`), and so do the SFU's datagrams.
//!
//! What a connection does past its framing is [`super::machine::Session`], a sans-IO
//! machine this module feeds: engine events become its inputs, and `Io` is its [`Port`]. This
//! module only moves bytes and time, and keeps the framing: raw QUIC as it is, WebTransport's
//! HTTP/3 in front.
//!
//! Both protocols on one port: raw QUIC (ALPN `quaver/1`) and WebTransport (`h3`), whose
//! HTTP/3 layer is [`super::wt`] — the CONNECT, stream headers and datagram prefixes; past
//! them a WebTransport session is served exactly as a raw QUIC one.
//!
//! Before the engine, quinn's high-level API served each connection with its own tasks (a
//! driver, a session task, a writer per lane); the engine replaced that path (issue 12;
//! bench/RESULTS.md "Engine sessions" has the two side by side).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::CloseCode;
use quaver_proto::session::Transport;
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamId};

use super::machine::{self, Input, Outlet, Port, Session};
use super::wt::{self, ConnectStep, H3, Head, Uni};
use crate::Ctx;
use crate::engine::{self, AppEvent, Conns, Io, Read};

/// A connection as commands name it: its handle (reused by quinn-proto after it is gone)
/// and a number of our own that is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    ch: ConnectionHandle,
    id: u64,
}

/// What the rest of the server sends the loop.
// Not boxed: the common one is a lane's event for a connection, which would pay an
// allocation per delivery; `Drain` comes once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    /// Something for one connection's session machine.
    To(ConnRef, Input),
    /// Graceful shutdown: `Goaway` to every session, accept nothing new.
    Drain,
}

/// The way back to a connection on the loop: its queue, and its name.
#[derive(Debug, Clone)]
struct LoopOutlet {
    tx: engine::Sender<Command>,
    conn: ConnRef,
}

impl Outlet for LoopOutlet {
    fn send(&self, input: Input) -> bool {
        self.tx.send(Command::To(self.conn, input)).is_ok()
    }
}

/// quinn-proto's streams, as the session machine uses them.
impl Port for Io<'_> {
    fn read(&mut self, stream: StreamId) -> Read {
        Io::read(self, stream)
    }
    fn try_write(&mut self, stream: StreamId, data: &mut Bytes) -> Option<usize> {
        Io::try_write_bytes(self, stream, data)
    }
    fn finish(&mut self, stream: StreamId) {
        Io::finish(self, stream)
    }
    fn reset(&mut self, stream: StreamId, code: u32) {
        Io::reset(self, stream, code)
    }
    fn send_datagram(&mut self, data: Bytes) {
        // A full queue drops it: voice is better lost than late.
        let _ = Io::send_datagram(self, data);
    }
    fn max_datagram_size(&mut self) -> usize {
        Io::max_datagram_size(self)
    }
    fn close(&mut self, code: u32, reason: &[u8]) {
        Io::close(self, code, reason)
    }
}

/// A connection on the loop: its session machine, and HTTP/3 for WebTransport.
#[derive(Debug)]
struct Conn {
    id: u64,
    session: Session<LoopOutlet>,
    /// The HTTP/3 layer of a WebTransport connection.
    h3: Option<Box<H3>>,
    /// The earliest instant queued in the timer heap for this connection.
    armed: Option<Instant>,
    /// Counted in [`Gateway::setting_up`].
    setting_up: bool,
}

/// The gateway on the engine.
pub struct Gateway {
    ctx: Arc<Ctx>,
    tx: engine::Sender<Command>,
    conns: HashMap<ConnectionHandle, Box<Conn>>,
    timers: BinaryHeap<Reverse<(Instant, ConnRef)>>,
    next_id: u64,
    draining: bool,
    /// Handshakes in flight on this loop, as last added to the node's gauge.
    handshakes: usize,
    /// Connections of this loop past their handshake and not yet `Ready` (each `Conn`'s
    /// `setting_up`, summed), for the engine's shedding; the node's sum is `Ctx::door`.
    setting_up: usize,
    /// Loops on the node: this one counts its share of the WebSocket set-ups.
    loops: usize,
}

impl Gateway {
    /// The gateway; `tx` is the engine's command queue ([`engine::Engine::sender`]).
    pub fn new(ctx: Arc<Ctx>, tx: engine::Sender<Command>) -> Self {
        Self {
            ctx,
            tx,
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            next_id: 1,
            draining: false,
            handshakes: 0,
            setting_up: 0,
            loops: 1,
        }
    }

    /// Tells the gateway how many loops the node runs (1 unless told).
    pub fn set_loops(&mut self, loops: usize) {
        self.loops = loops.max(1);
    }

    /// Sets the command queue (the engine is built after the gateway it hosts).
    pub fn set_sender(&mut self, tx: engine::Sender<Command>) {
        self.tx = tx;
    }
}

/// The engine's threads, serving the gateway.
#[derive(Debug)]
pub struct Running {
    loops: Vec<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    )>,
}

impl Running {
    /// Stops the loops (every connection closed `going_away`) and waits up to `grace` for
    /// their threads to finish.
    pub async fn stop(self, grace: Duration) -> std::io::Result<()> {
        let mut waits = Vec::new();
        for (stop, done) in self.loops {
            let _ = stop.send(());
            waits.push(done);
        }
        let mut result = Ok(());
        let until = tokio::time::Instant::now() + grace;
        for done in waits {
            // Stopped, or ended without a word (it cannot: `serve` always answers), or still
            // closing: nothing more to wait for. Only a loop's own error is reported.
            if let Ok(Ok(Err(e))) = tokio::time::timeout_at(until, done).await {
                result = Err(e);
            }
        }
        result
    }
}

/// Starts the gateway's loops, one per socket of [`engine::bind`], each on a thread of its
/// own with a single-threaded runtime that only turns the loop: its wake-ups (the socket,
/// the command queue, its timers) go straight to it, with no other task on its runtime to
/// wake or steal it. What the sessions start
/// (opening, requests, fetches) runs on the runtime of the caller.
///
/// Measured against the loop as a task among the server's others (bench/RESULTS.md "The
/// loop on its own thread").
pub fn spawn(
    ctx: Arc<Ctx>,
    sockets: Vec<std::net::UdpSocket>,
    server: Arc<quinn_proto::ServerConfig>,
    webrtc: Option<crate::voice::webrtc::Inlet>,
) -> std::io::Result<Running> {
    let main = tokio::runtime::Handle::current();
    let count = sockets.len();
    // `config::validate` bounds the count to 64.
    let mut shardings = engine::Sharding::for_loops(count as u8).into_iter();
    let mut loops = Vec::with_capacity(count);
    for (n, socket) in sockets.into_iter().enumerate() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        socket.set_nonblocking(true)?;
        let sharding = shardings.next();
        let (ctx, server, main, webrtc) = (ctx.clone(), server.clone(), main.clone(), webrtc.clone());
        std::thread::Builder::new()
            .name(if count > 1 {
                format!("quaver-engine-{n}")
            } else {
                "quaver-engine".into()
            })
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let socket = tokio::net::UdpSocket::from_std(socket)?;
                            serve(ctx, socket, server, main, sharding, webrtc, async move {
                                let _ = stopped.await;
                            })
                            .await
                        })
                    });
                if let Err(e) = &served {
                    tracing::error!(error = %e, "the engine's loop stopped");
                }
                let _ = done_tx.send(served);
            })?;
        loops.push((stop, done));
    }
    Ok(Running { loops })
}

/// Serves the gateway with the engine on `socket` until `stop` resolves, then closes every
/// connection (`going_away`). The sessions' tasks run on `tasks`.
async fn serve(
    ctx: Arc<Ctx>,
    socket: tokio::net::UdpSocket,
    server: Arc<quinn_proto::ServerConfig>,
    tasks: tokio::runtime::Handle,
    sharding: Option<engine::Sharding>,
    webrtc: Option<crate::voice::webrtc::Inlet>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let loops = sharding.as_ref().map_or(1, |s| usize::from(s.shards.count));
    let (placeholder, _) = engine::mailbox::channel();
    let mut gateway = Gateway::new(ctx.clone(), placeholder);
    gateway.set_loops(loops);
    let core = engine::Core::with_reset_key(
        ctx.keys.reset.clone(),
        sharding.as_ref().map(|s| s.shards),
        server,
        gateway,
    );
    let mut engine = engine::Engine::build(socket, core, sharding)?;
    engine.spawn_app_tasks_on(tasks);
    if let Some(inlet) = webrtc {
        // WebRTC on this port (RFC 9443): what is not QUIC goes to the WebRTC task; a full
        // queue drops it (ICE and DTLS retransmit, audio is better lost than late).
        engine.set_foreign(move |from, to, d| drop(inlet.try_send((from, to, d.to_vec()))));
    }
    ctx.voice.run_channels_on(tokio::runtime::Handle::current());
    let tx = engine.sender();
    engine.app().set_sender(tx.clone());
    engine.set_limits(engine::Limits {
        // Sessions past `max_connections` are told `overloaded` in band; the loop refuses
        // outright only well past it.
        max_connections: ctx.cfg.session.max_connections.saturating_mul(2).max(16),
        retry_above_handshakes: ctx.cfg.session.retry_above_handshakes,
        // The node's limit shared among its loops (each sees only its own connections).
        shed_above: match ctx.cfg.session.max_handshakes {
            0 => usize::MAX,
            n => n.div_ceil(loops.max(1)),
        },
    });
    let mut shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        shutdown.wait().await;
        let _ = tx.send(Command::Drain);
    });
    engine.run(stop).await;
    engine.close_all(CloseCode::GOING_AWAY.0, b"shutdown");
    Ok(())
}
impl engine::App for Gateway {
    type Command = Command;

    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>) {
        match event {
            AppEvent::Connected => self.connected(ch, io),
            AppEvent::Lost(e) => self.lost(ch, e),
            _ => {
                let Some(c) = self.conns.get_mut(&ch) else { return };
                let mut h = Here { ctx: &self.ctx, c, io };
                match event {
                    AppEvent::StreamOpened => h.streams_opened(),
                    AppEvent::Readable(id) => h.readable(id),
                    AppEvent::Writable(id) | AppEvent::Stopped(id) => {
                        let now = h.io.now();
                        h.c.session
                            .writable(h.io, now, id, matches!(event, AppEvent::Stopped(_)))
                    }
                    AppEvent::Datagrams => h.datagrams(),
                    AppEvent::Connected | AppEvent::Lost(_) => {}
                }
                self.arm(ch);
            }
        }
    }

    fn on_command(&mut self, cmd: Command, conns: &mut Conns<'_>) {
        let (conn, input) = match cmd {
            Command::Drain => return self.drain(conns),
            Command::To(conn, input) => (conn, input),
        };
        let c = self.conns.get_mut(&conn.ch).filter(|c| c.id == conn.id);
        let (Some(c), Some(mut io)) = (c, conns.io_held(conn.ch)) else {
            return machine::abandon(&self.ctx, input);
        };
        let now = io.now();
        // A presence or typing event the session holds for its window sends nothing now.
        if c.session.input(&mut io, now, input) == machine::Sent::Now {
            conns.transmit(conn.ch);
        }
        self.arm(conn.ch);
    }

    fn on_admission(&mut self, admission: engine::Admission) {
        match admission {
            engine::Admission::Retried => {
                self.ctx
                    .metrics
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            engine::Admission::Refused => self.ctx.metrics.handshake_failed(CloseCode::OVERLOADED),
            engine::Admission::Shed => {
                self.ctx.metrics.shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn setting_up(&self) -> usize {
        self.setting_up + self.ctx.door.ws_share(self.loops)
    }

    fn on_handshakes(&mut self, in_flight: usize) {
        // The node's gauge is the sum over its loops: each adds its own change.
        use std::sync::atomic::Ordering::Relaxed;
        let gauge = &self.ctx.handshakes_in_flight;
        if in_flight > self.handshakes {
            gauge.fetch_add(in_flight - self.handshakes, Relaxed);
            // The engine reports each accepted Initial at once: a rise is handshakes begun.
            self.ctx
                .metrics
                .handshakes_begun
                .fetch_add((in_flight - self.handshakes) as u64, Relaxed);
        } else {
            gauge.fetch_sub(self.handshakes - in_flight, Relaxed);
        }
        self.handshakes = in_flight;
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn on_timeout(&mut self, now: Instant, conns: &mut Conns<'_>) {
        while let Some(Reverse((t, conn))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&conn.ch).filter(|c| c.id == conn.id) else {
                continue;
            };
            if c.armed != Some(t) {
                continue;
            }
            c.armed = None;
            let Some(mut io) = conns.io(conn.ch) else { continue };
            c.session.timeout(&mut io, now);
            self.arm(conn.ch);
        }
    }
}

impl Gateway {
    fn connected(&mut self, ch: ConnectionHandle, io: &mut Io<'_>) {
        let ctx = &self.ctx;
        let transport = match io.alpn() {
            Some(p) if p == quaver_proto::ALPN_H3 => Transport::WebTransport,
            _ => Transport::Quic,
        };
        ctx.metrics.handshake(transport);
        let h3 = (transport == Transport::WebTransport).then(|| {
            // Our HTTP/3 control stream, with SETTINGS; kept open (closing it is a
            // connection error). The client allows at least three uni streams (RFC 9114
            // §6.2), so it opens at once.
            if let Some(s) = io.open(Dir::Uni) {
                io.write(s, &wt::control_stream_bytes());
            }
            Box::new(H3::new())
        });
        let id = self.next_id;
        self.next_id += 1;
        let outlet = LoopOutlet {
            tx: self.tx.clone(),
            conn: ConnRef { ch, id },
        };
        let session = Session::new(ctx.clone(), outlet, transport, self.draining, io.now());
        let setting_up = session.setting_up();
        if setting_up {
            self.setting_up += 1;
            self.ctx.door.quic_entered();
        }
        self.conns.insert(
            ch,
            Box::new(Conn {
                id,
                session,
                h3,
                armed: None,
                setting_up,
            }),
        );
        self.arm(ch);
    }

    fn lost(&mut self, ch: ConnectionHandle, e: ConnectionError) {
        let Some(mut c) = self.conns.remove(&ch) else { return };
        if c.setting_up {
            self.setting_up -= 1;
            self.ctx.door.quic_left();
        }
        let peer = match &e {
            ConnectionError::ApplicationClosed(a) => Some(u32::try_from(a.error_code.into_inner()).unwrap_or(u32::MAX)),
            _ => None,
        };
        c.session.lost(peer);
    }

    /// Puts connection `ch`'s next deadline in the heap if it is earlier than what is
    /// there (a later one is found when the earlier entry fires).
    /// Also settles the connection's share of [`Gateway::setting_up`]: every call into a
    /// session is followed by this, so a session that became live (or began closing) stops
    /// counting at once.
    fn arm(&mut self, ch: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        if c.setting_up && !c.session.setting_up() {
            c.setting_up = false;
            self.setting_up -= 1;
            self.ctx.door.quic_left();
        }
        if let Some(t) = c.session.next_deadline()
            && c.armed.is_none_or(|a| t < a)
        {
            c.armed = Some(t);
            self.timers.push(Reverse((t, ConnRef { ch, id: c.id })));
        }
    }

    fn drain(&mut self, conns: &mut Conns<'_>) {
        self.draining = true;
        let now = conns.now();
        let chs: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in chs {
            let Some(c) = self.conns.get_mut(&ch) else { continue };
            let Some(mut io) = conns.io(ch) else { continue };
            c.session.drain(&mut io, now);
            self.arm(ch);
        }
    }
}

/// One connection, during one engine event: the framing (HTTP/3 for WebTransport) in
/// front of the session machine.
struct Here<'a, 'b> {
    ctx: &'a Arc<Ctx>,
    c: &'a mut Conn,
    io: &'a mut Io<'b>,
}

impl Here<'_, '_> {
    fn streams_opened(&mut self) {
        while let Some(id) = self.io.accept(Dir::Uni) {
            match &mut self.c.h3 {
                Some(h3) => {
                    h3.uni_opened(id);
                    self.h3_uni(id);
                }
                // Raw QUIC uses no unidirectional streams.
                None => self.io.stop(id, 0),
            }
        }
        while let Some(id) = self.io.accept(Dir::Bi) {
            match &mut self.c.h3 {
                Some(h3) if h3.connect.is_none() => {
                    h3.connect = Some(id);
                    self.h3_connect();
                }
                Some(h3) => {
                    h3.head_opened(id);
                    self.h3_head(id);
                }
                None => self.quaver_stream(id, Vec::new()),
            }
        }
    }

    /// A stream carrying Quaver (after its WebTransport header, whose followers are `early`).
    fn quaver_stream(&mut self, id: StreamId, early: Vec<Bytes>) {
        let now = self.io.now();
        self.c.session.stream_opened(self.io, now, id, early);
    }

    /// Reads what is there; the stream's end or reset is `end`.
    fn read_all(&mut self, id: StreamId) -> (Vec<Bytes>, bool) {
        match self.io.read(id) {
            Read::Data(c) => (c, false),
            Read::Finished(c) => (c, true),
            Read::Reset(_) => (Vec::new(), true),
        }
    }

    /// The CONNECT stream: the request, then (once the session is open) its end.
    fn h3_connect(&mut self) {
        let Some(id) = self.c.h3.as_ref().and_then(|h| h.connect) else {
            return;
        };
        let (chunks, end) = self.read_all(id);
        let Some(h3) = self.c.h3.as_mut() else { return };
        match h3.connect_bytes(&chunks, end) {
            ConnectStep::Pending => {}
            ConnectStep::Request(request) => self.h3_request(id, &request),
            ConnectStep::Malformed(e) => {
                tracing::debug!(error = %e, "WebTransport handshake failed");
                self.c
                    .session
                    .failed(CloseCode::PROTOCOL_ERROR, "not a WebTransport request");
                self.io
                    .close(CloseCode::PROTOCOL_ERROR.0, b"not a WebTransport request");
            }
            ConnectStep::Ended(code, reason) => self.peer_ended(code, &reason),
        }
    }

    /// Answers the CONNECT: `404` off our path, `403` for an Origin not allowed, else `200`
    /// and the session's streams may come.
    fn h3_request(&mut self, id: StreamId, request: &wtransport_proto::session::SessionRequest) {
        use crate::transport::Verdict;
        use wt::response_bytes;
        use wtransport_proto::session::SessionResponse;
        let verdict = crate::transport::judge(&self.ctx.cfg.session.allowed_origins, request);
        let Some(h3) = self.c.h3.as_mut() else { return };
        let (response, refused) = match verdict {
            Verdict::Accept(token) => {
                h3.accept();
                let prefix = h3.prefix().to_vec();
                self.c.session.set_pre_token(token);
                self.c.session.set_datagram_prefix(prefix);
                (SessionResponse::ok(), None)
            }
            Verdict::NotFound => {
                h3.refuse();
                (SessionResponse::not_found(), Some(CloseCode::PROTOCOL_ERROR))
            }
            Verdict::Forbidden => {
                tracing::debug!(origin = ?request.origin(), "WebTransport origin refused");
                h3.refuse();
                (SessionResponse::forbidden(), Some(CloseCode::ORIGIN_NOT_ALLOWED))
            }
        };
        self.io.write(id, &response_bytes(response));
        match refused {
            None => {
                for s in self.c.h3.as_ref().map(|h| h.waiting()).unwrap_or_default() {
                    self.h3_head(s);
                }
            }
            Some(code) => {
                // The client reads the status; the connection goes when it closes or at
                // the end of the grace.
                self.io.finish(id);
                let now = self.io.now();
                self.c.session.refuse(code, "request refused", now);
            }
        }
    }

    /// The client ended its WebTransport session (capsule or CONNECT stream end): the
    /// session ends with its code, as a QUIC close from it would, and the connection goes.
    fn peer_ended(&mut self, code: u32, reason: &str) {
        self.c.session.peer_ended(code, reason);
        self.io.close(code, reason.as_bytes());
    }

    /// A client bidirectional stream after the CONNECT: its WebTransport header first.
    fn h3_head(&mut self, id: StreamId) {
        let Some(h3) = self.c.h3.as_ref() else { return };
        let (chunks, end) = if h3.head_room(id) {
            self.read_all(id)
        } else {
            (Vec::new(), false)
        };
        let Some(h3) = self.c.h3.as_mut() else { return };
        match h3.head_bytes(id, &chunks, end) {
            Head::Pending | Head::Gone => {}
            Head::Rejected => {
                self.io.reset(id, wt::H3_REQUEST_REJECTED);
                self.io.stop(id, wt::H3_REQUEST_REJECTED);
            }
            Head::Ours(early) => self.quaver_stream(id, early),
        }
    }

    /// A client unidirectional stream: HTTP/3 control and QPACK are read and dropped.
    fn h3_uni(&mut self, id: StreamId) {
        let (chunks, end) = self.read_all(id);
        let Some(h3) = self.c.h3.as_mut() else { return };
        if h3.uni_bytes(id, &chunks, end) == Uni::Refuse {
            self.io.stop(id, wt::H3_STREAM_CREATION_ERROR);
        }
    }
    fn readable(&mut self, id: StreamId) {
        if let Some(h3) = &self.c.h3 {
            if h3.connect == Some(id) {
                return self.h3_connect();
            }
            if h3.is_uni(id) {
                return self.h3_uni(id);
            }
            if h3.wants_head(id) {
                return self.h3_head(id);
            }
        }
        let now = self.io.now();
        self.c.session.readable(self.io, now, id);
    }

    fn datagrams(&mut self) {
        while let Some(d) = self.io.recv_datagram() {
            let d = match &self.c.h3 {
                // Another session's (there is none) or before ours: dropped.
                Some(h3) => match h3.strip_datagram(d) {
                    Some(d) => d,
                    None => continue,
                },
                None => d,
            };
            self.c.session.datagram(d);
        }
    }
}
