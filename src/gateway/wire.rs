//! Sessions on the engine (issue 12): the gateway as an [`engine::App`]. A loop owns
//! every connection it accepted, its control stream, its lanes and its fetch streams — no task, channel
//! or mutex per connection or per lane. What needs the store runs as a task and comes back
//! through the loop's one queue ([`Command`]): the opening of a session (its snapshot), each
//! request (one at a time per lane, in order) and each fetch. The fan-out writes into lanes
//! through the same queue (`LoopLane`); the SFU's datagrams too (`LoopDatagrams`).
//!
//! The decisions are transport-free and live elsewhere: `control::accept_hello`,
//! `session::open`, `control::Control` (heartbeats, token refresh, Goaway),
//! `SessionHandle::attach_lane` (replay), `dispatch::request`/`fetch`. This module only moves
//! bytes and time.
//!
//! Both protocols on one port: raw QUIC (ALPN `quaver/1`) and WebTransport (`h3`), whose
//! HTTP/3 layer is [`super::wt`] — the CONNECT, stream headers and datagram prefixes; past
//! them a WebTransport session is served exactly as a raw QUIC one.
//!
//! Before the engine, quinn's high-level API served each connection with its own tasks (a
//! driver, a session task, a writer per lane); the engine replaced that path (issue 12;
//! bench/RESULTS.md "Engine sessions" has the two side by side).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use quaver_proto::codec::{FrameReader, decode};
use quaver_proto::session::Transport;
use quaver_proto::{
    ClientControl, CloseCode, Closing, Compression, ErrorBody, ErrorCode, FetchReply, FetchRequest, FrameError, Hello,
    Lane, Request, ServerControl, ServerLane, StreamOpen,
};
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamId};

use super::control::{self, Control, ControlConfig};
use super::session::{FETCH_CONCURRENCY, Opened, connect_hook, open};
use super::wt::{self, ConnectStep, H3, Head, Uni};
use super::{AttachError, LANE_QUEUE, LaneOut, LaneSink, Link, SessionHandle, SinkError, dispatch};
use crate::auth::Identity;
use crate::engine::{self, AppEvent, Conns, Io, Read};
use crate::limits::Refusal;
use crate::metrics::{CONTROL, FETCH};
use crate::{Ctx, SessionTask};

/// How long a closing connection waits for the peer to close after our `Closing`: closing
/// first would let a browser discard the frame unread (Chrome aborts streams, buffered data
/// included, when the connection closes under them).
const CLOSING_GRACE: Duration = Duration::from_millis(1000);
/// Control frames held (unsent for flow control) before the client counts as not reading.
const CONTROL_QUEUE: usize = 32;
/// Requests read ahead of the one being served on a lane; past it the lane is not read
/// (QUIC flow control then holds the client back).
const READ_AHEAD: usize = 16;

/// A connection as commands name it: its handle (reused by quinn-proto after it is gone)
/// and a number of our own that is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    ch: ConnectionHandle,
    id: u64,
}

/// What the rest of the server sends the loop.
#[derive(Debug)]
pub enum Command {
    /// A session was opened for the connection's Hello (or refused).
    Opened(ConnRef, Result<Box<(Opened, Identity)>, (CloseCode, String)>),
    /// A frame for an open lane (an event from the fan-out).
    Lane(ConnRef, Lane, LaneOut),
    /// The request being served on a lane has its reply; `flood` closes the session after.
    Replied(ConnRef, Lane, ServerLane, bool),
    /// A fetch reply, encoded; `flood` closes the session after.
    Fetched(ConnRef, StreamId, Vec<u8>, bool),
    /// Close the session (in-band `Closing` first).
    Close(ConnRef, CloseCode, String),
    /// Close the connection now.
    CloseNow(ConnRef, CloseCode, String),
    /// A voice datagram for the connection, already prefixed (WebTransport: the session's
    /// quarter stream id; raw QUIC: nothing).
    Datagram(ConnRef, Bytes),
    /// Graceful shutdown: `Goaway` to every session, accept nothing new.
    Drain,
}

/// The link of a session hosted on the loop.
#[derive(Debug)]
struct LoopLink {
    tx: engine::Sender<Command>,
    conn: ConnRef,
}

impl Link for LoopLink {
    fn ask_close(&self, code: CloseCode, reason: String) -> bool {
        self.tx.send(Command::Close(self.conn, code, reason)).is_ok()
    }
    fn close_now(&self, code: CloseCode, reason: &str) {
        let _ = self.tx.send(Command::CloseNow(self.conn, code, reason.into()));
    }
}

/// A lane of a session hosted on the loop: frames go to the loop's queue (which bounds
/// what a lane may hold unsent, see [`Outbox`]).
#[derive(Debug)]
struct LoopLane {
    tx: engine::Sender<Command>,
    conn: ConnRef,
    lane: Lane,
}

impl LaneSink for LoopLane {
    fn push(&self, out: LaneOut) -> Result<(), SinkError> {
        self.tx
            .send(Command::Lane(self.conn, self.lane, out))
            .map_err(|_| SinkError::Closed)
    }
}

/// The SFU's way to a listener on the loop.
#[derive(Debug)]
struct LoopDatagrams {
    tx: engine::Sender<Command>,
    conn: ConnRef,
    prefix: Vec<u8>,
}

impl crate::voice::DatagramSink for LoopDatagrams {
    fn prefix(&self) -> &[u8] {
        &self.prefix
    }
    fn send(&self, data: Bytes) -> bool {
        self.tx.send(Command::Datagram(self.conn, data)).is_ok()
    }
}

/// What a stream has been given to send and flow control has not yet taken.
#[derive(Debug, Default)]
struct Outbox {
    pending: VecDeque<Bytes>,
    /// Finish the stream once everything pending is written.
    finish: bool,
    /// The stream cannot be written any more (stopped, reset): drop everything.
    dead: bool,
}

impl Outbox {
    /// Writes `data` after anything pending; what flow control does not take now waits.
    fn write(&mut self, io: &mut Io<'_>, stream: StreamId, data: Bytes) {
        if self.dead {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.push_back(data);
            return;
        }
        match io.try_write(stream, &data) {
            Some(n) if n == data.len() => {}
            Some(n) => self.pending.push_back(data.slice(n..)),
            None => self.dead = true,
        }
    }

    /// Writes what is pending (after `Writable`); finishes the stream if asked and done.
    fn flush(&mut self, io: &mut Io<'_>, stream: StreamId) {
        while let Some(front) = self.pending.front_mut() {
            if self.dead {
                self.pending.clear();
                break;
            }
            match io.try_write(stream, front) {
                Some(n) if n == front.len() => {
                    self.pending.pop_front();
                }
                Some(n) => {
                    *front = front.slice(n..);
                    return;
                }
                None => self.dead = true,
            }
        }
        if self.finish && !self.dead {
            io.finish(stream);
            self.finish = false;
        }
    }

    fn done(&self) -> bool {
        self.pending.is_empty()
    }
}

fn control_frame(msg: &ServerControl) -> Bytes {
    let mut buf = Vec::new();
    quaver_proto::encode_frame(msg, &mut buf);
    Bytes::from(buf)
}

fn lane_frame(msg: &ServerLane) -> Bytes {
    let mut buf = Vec::new();
    quaver_proto::encode_frame(msg, &mut buf);
    Bytes::from(buf)
}

fn read_error(e: &FrameError) -> CloseCode {
    match e {
        FrameError::TooLarge { .. } => CloseCode::FRAME_TOO_LARGE,
        FrameError::Truncated => CloseCode::PROTOCOL_ERROR,
    }
}

/// A client stream after the control stream.
#[derive(Debug)]
enum Stream {
    /// Waiting for its `StreamOpen`.
    Opening(FrameReader),
    /// A lane: requests in, replies and events out.
    Lane(Box<LaneStream>),
    /// A fetch: one request, one reply.
    Fetch(Box<FetchStream>),
}

#[derive(Debug)]
struct LaneStream {
    lane: Lane,
    reader: FrameReader,
    /// Requests read and not yet served (the first is being served when `busy`).
    queued: VecDeque<Request>,
    busy: bool,
    /// The client finished or reset its side: nothing more to read.
    read_done: bool,
    out: Outbox,
}

#[derive(Debug)]
struct FetchStream {
    /// The request, until it is started (at most `FETCH_CONCURRENCY` at once).
    waiting: Option<FetchRequest>,
    out: Outbox,
    /// The reply must be taken by then, or the stream is reset (`slow_consumer`).
    deadline: Option<Instant>,
}

/// A live session on this connection.
#[derive(Debug)]
struct Live {
    handle: Arc<SessionHandle>,
    generation: u64,
    user: u64,
    machine: Control,
    voice: Arc<crate::voice::VoicePort>,
    zstd: bool,
    lanes: [Option<StreamId>; 5],
    /// Fetches being built or written.
    fetches: usize,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the control stream and its `Hello` (until the deadline).
    Hello,
    /// The session is being built (a task); its first frame follows.
    Opening(Box<Hello>),
    /// Serving.
    Live(Box<Live>),
    /// `Closing` was sent; the connection closes when the peer does or at the deadline.
    Closing(CloseCode, String),
}

#[derive(Debug)]
struct Conn {
    id: u64,
    transport: Transport,
    /// The HTTP/3 layer of a WebTransport connection.
    h3: Option<Box<H3>>,
    /// A token from the WebTransport request (`Authorization` or `?token=`).
    pre_token: Option<String>,
    stage: Stage,
    ctl: Option<StreamId>,
    ctl_reader: FrameReader,
    ctl_out: Outbox,
    /// Control frames read while the session was being built, handled once it is live.
    early: VecDeque<ClientControl>,
    streams: HashMap<StreamId, Stream>,
    /// Streams opened before the session was live, with what was read of them (a
    /// WebTransport stream's first bytes after its header).
    parked: Vec<(StreamId, Vec<Bytes>)>,
    /// Hello deadline, or the end of the closing grace.
    deadline: Option<Instant>,
    /// The earliest instant queued in the timer heap for this connection.
    armed: Option<Instant>,
    /// The server's close, once decided.
    close: Option<(CloseCode, String)>,
    /// Counts the session for the graceful drain.
    _task: SessionTask,
}

impl Conn {
    /// Refuses the connection before any session: counted, and closed at the end of the
    /// grace (or when the client closes), after what it is told in band.
    fn refuse(&mut self, ctx: &Ctx, code: CloseCode, reason: &str, now: Instant) {
        ctx.metrics.handshake_failed(code);
        self.close = Some((code, reason.into()));
        self.stage = Stage::Closing(code, reason.into());
        self.deadline = Some(now + CLOSING_GRACE);
    }
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
        }
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
    let (placeholder, _) = engine::mailbox::channel();
    let gateway = Gateway::new(ctx.clone(), placeholder);
    let mut engine = match sharding {
        Some(s) => engine::Engine::sharded(socket, server, gateway, s)?,
        None => engine::Engine::new(socket, server, gateway)?,
    };
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
                let mut h = Here {
                    ctx: &self.ctx,
                    tx: &self.tx,
                    conn: ConnRef { ch, id: c.id },
                    c,
                    io,
                };
                match event {
                    AppEvent::StreamOpened => h.streams_opened(),
                    AppEvent::Readable(id) => h.readable(id),
                    AppEvent::Writable(id) | AppEvent::Stopped(id) => {
                        h.writable(id, matches!(event, AppEvent::Stopped(_)))
                    }
                    AppEvent::Datagrams => h.datagrams(),
                    AppEvent::Connected | AppEvent::Lost(_) => {}
                }
                self.arm(ch);
            }
        }
    }

    fn on_command(&mut self, cmd: Command, conns: &mut Conns<'_>) {
        let (conn, rest) = match cmd {
            Command::Drain => return self.drain(conns),
            Command::Opened(conn, r) => (conn, Rest::Opened(r)),
            Command::Lane(conn, lane, out) => (conn, Rest::Lane(lane, out)),
            Command::Replied(conn, lane, reply, flood) => (conn, Rest::Replied(lane, reply, flood)),
            Command::Fetched(conn, stream, bytes, flood) => (conn, Rest::Fetched(stream, bytes, flood)),
            Command::Close(conn, code, reason) => (conn, Rest::Close(code, reason)),
            Command::CloseNow(conn, code, reason) => (conn, Rest::CloseNow(code, reason)),
            Command::Datagram(conn, data) => (conn, Rest::Datagram(data)),
        };
        let c = self.conns.get_mut(&conn.ch).filter(|c| c.id == conn.id);
        let (Some(c), Some(mut io)) = (c, conns.io(conn.ch)) else {
            // The connection is gone. A session opened for it meanwhile is left resumable.
            if let Rest::Opened(Ok(o)) = rest {
                o.0.handle
                    .detach(o.0.generation, Instant::now() + self.ctx.cfg.session.resume_window);
            }
            return;
        };
        let mut h = Here {
            ctx: &self.ctx,
            tx: &self.tx,
            conn,
            c,
            io: &mut io,
        };
        match rest {
            Rest::Opened(r) => h.opened(r),
            Rest::Lane(lane, out) => h.lane_out(lane, out),
            Rest::Replied(lane, reply, flood) => h.replied(lane, reply, flood),
            Rest::Fetched(stream, bytes, flood) => h.fetched(stream, bytes, flood),
            Rest::Close(code, reason) => h.begin_close(code, reason),
            Rest::CloseNow(code, reason) => h.close_now(code, &reason),
            Rest::Datagram(data) => {
                let _ = h.io.send_datagram(data);
            }
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
        }
    }

    fn on_handshakes(&mut self, in_flight: usize) {
        // The node's gauge is the sum over its loops: each adds its own change.
        use std::sync::atomic::Ordering::Relaxed;
        let gauge = &self.ctx.handshakes_in_flight;
        if in_flight > self.handshakes {
            gauge.fetch_add(in_flight - self.handshakes, Relaxed);
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
            let mut h = Here {
                ctx: &self.ctx,
                tx: &self.tx,
                conn,
                c,
                io: &mut io,
            };
            h.timer(now);
            self.arm(conn.ch);
        }
    }
}

/// A command's part after its connection.
enum Rest {
    Opened(Result<Box<(Opened, Identity)>, (CloseCode, String)>),
    Lane(Lane, LaneOut),
    Replied(Lane, ServerLane, bool),
    Fetched(StreamId, Vec<u8>, bool),
    Close(CloseCode, String),
    CloseNow(CloseCode, String),
    Datagram(Bytes),
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
                io.write(s, &crate::transport::webtransport::control_stream_bytes());
            }
            Box::new(H3::new())
        });
        let id = self.next_id;
        self.next_id += 1;
        let mut c = Conn {
            id,
            transport,
            h3,
            pre_token: None,
            stage: Stage::Hello,
            ctl: None,
            ctl_reader: FrameReader::new(ctx.cfg.session.max_frame_bytes),
            ctl_out: Outbox::default(),
            early: VecDeque::new(),
            streams: HashMap::new(),
            parked: Vec::new(),
            deadline: Some(io.now() + ctx.cfg.session.hello_timeout),
            armed: None,
            close: None,
            _task: ctx.session_task(),
        };
        if self.draining {
            c.refuse(ctx, CloseCode::GOING_AWAY, "server shutting down", io.now());
        } else if ctx.metrics.open_sessions() as usize >= ctx.cfg.session.max_connections {
            // Refused in band once the client opens its control stream (browsers cannot
            // read QUIC close codes), bounded by the grace.
            c.refuse(ctx, CloseCode::OVERLOADED, "server full", io.now());
        }
        self.conns.insert(ch, Box::new(c));
        self.arm(ch);
    }

    fn lost(&mut self, ch: ConnectionHandle, e: ConnectionError) {
        let Some(mut c) = self.conns.remove(&ch) else { return };
        let peer = match &e {
            ConnectionError::ApplicationClosed(a) => Some(u32::try_from(a.error_code.into_inner()).unwrap_or(u32::MAX)),
            _ => None,
        };
        if matches!(c.stage, Stage::Hello | Stage::Opening(_)) && c.close.is_none() {
            self.ctx.metrics.handshake_failed(CloseCode(u32::MAX));
        }
        end_session(&self.ctx, &mut c, peer);
    }

    /// Puts connection `ch`'s next deadline in the heap if it is earlier than what is
    /// there (a later one is found when the earlier entry fires).
    fn arm(&mut self, ch: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let next = match (&c.stage, c.deadline) {
            (Stage::Live(l), d) => Some(d.map_or(l.machine.next_deadline(), |d| d.min(l.machine.next_deadline()))),
            (_, d) => d,
        };
        let fetch = c
            .streams
            .values()
            .filter_map(|s| match s {
                Stream::Fetch(f) => f.deadline,
                _ => None,
            })
            .min();
        let next = match (next, fetch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = next
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
            let conn = ConnRef { ch, id: c.id };
            let mut h = Here {
                ctx: &self.ctx,
                tx: &self.tx,
                conn,
                c,
                io: &mut io,
            };
            if let Stage::Live(l) = &mut h.c.stage
                && let Some(goaway) = l.machine.drain(now)
            {
                h.control(&goaway);
            }
            self.arm(ch);
        }
    }
}

/// Ends the session of a connection that is closing or gone (once).
fn end_session(ctx: &Arc<Ctx>, c: &mut Conn, peer_code: Option<u32>) {
    let Stage::Live(live) = std::mem::replace(&mut c.stage, Stage::Hello) else {
        return;
    };
    let deliberate = control::ends_session(c.close.as_ref(), peer_code, c.transport == Transport::WebTransport);
    let handle = &live.handle;
    if deliberate {
        if handle.detach(live.generation, Instant::now()) && ctx.sessions.remove(&handle.id) {
            ctx.fanout.close(live.user);
        }
    } else {
        handle.detach(live.generation, Instant::now() + ctx.cfg.session.resume_window);
    }
    ctx.presence.disconnect(live.user, handle.id);
    if ctx.hook_writer.wants("session.closed") {
        let data = crate::webhooks::catalogue::WebhookSessionClosed {
            user_id: crate::api::types::Id(live.user),
            session_id: Some(handle.id.to_string()),
            node: ctx.cfg.node_name.clone(),
            close_code: c.close.as_ref().map(|(code, _)| code.0).or(peer_code),
            resumable: !deliberate,
            reason: crate::webhooks::catalogue::SessionEnd::Closed,
        };
        let ev = crate::webhooks::catalogue::user_event("session.closed", live.user, &data);
        ctx.hook_writer.record(ev, crate::ids::now_ms());
    }
    ctx.metrics.session_closed(c.transport);
    if let Some(w) = &ctx.webrtc {
        w.session_ended(handle.id);
    }
    let (ctx, user, id, voice) = (ctx.clone(), live.user, handle.id, live.voice.clone());
    tokio::spawn(async move { ctx.voice.session_ended(user, id, &voice).await });
    tracing::debug!(session = %live.handle.id, "session ended");
}

/// One connection, during one event or command.
struct Here<'a, 'b> {
    ctx: &'a Arc<Ctx>,
    tx: &'a engine::Sender<Command>,
    conn: ConnRef,
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

    /// A stream carrying Quaver (after its WebTransport header, whose followers are `early`):
    /// the control stream if it is the first, else a lane or fetch.
    fn quaver_stream(&mut self, id: StreamId, early: Vec<Bytes>) {
        if self.c.ctl.is_none() {
            self.c.ctl = Some(id);
            if let Stage::Closing(code, reason) = &self.c.stage {
                // A refused connection (overloaded, draining) learns why in band.
                let f = control_frame(&closing(*code, reason));
                self.c.ctl_out.write(self.io, id, f);
                self.c.ctl_out.finish = true;
                self.c.ctl_out.flush(self.io, id);
                return;
            }
            for chunk in &early {
                self.c.ctl_reader.push(chunk);
            }
            self.read_control();
        } else if matches!(self.c.stage, Stage::Live(_)) {
            let mut reader = FrameReader::new(self.ctx.cfg.session.max_frame_bytes);
            for chunk in &early {
                reader.push(chunk);
            }
            self.c.streams.insert(id, Stream::Opening(reader));
            self.read_stream(id);
        } else {
            self.c.parked.push((id, early));
        }
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
                self.ctx.metrics.handshake_failed(CloseCode::PROTOCOL_ERROR);
                tracing::debug!(error = %e, "WebTransport handshake failed");
                self.c.close = Some((CloseCode::PROTOCOL_ERROR, "not a WebTransport request".into()));
                self.c.stage = Stage::Closing(CloseCode::PROTOCOL_ERROR, "not a WebTransport request".into());
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
        use crate::transport::webtransport::response_bytes;
        use wtransport_proto::session::SessionResponse;
        let verdict = crate::transport::judge(&self.ctx.cfg.session.allowed_origins, request);
        let Some(h3) = self.c.h3.as_mut() else { return };
        let (response, refused) = match verdict {
            Verdict::Accept(token) => {
                h3.accept();
                self.c.pre_token = token;
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
                if self.c.close.is_none() {
                    self.c.refuse(self.ctx, code, "request refused", self.io.now());
                }
            }
        }
    }

    /// The client ended its WebTransport session (capsule or CONNECT stream end): the
    /// session ends with its code, as a QUIC close from it would, and the connection goes.
    fn peer_ended(&mut self, code: u32, reason: &str) {
        if self.c.close.is_none() {
            if !matches!(self.c.stage, Stage::Live(_)) {
                self.ctx.metrics.handshake_failed(CloseCode(u32::MAX));
            }
            end_session(self.ctx, self.c, Some(code));
            self.c.close = Some((CloseCode(code), reason.into()));
            self.c.stage = Stage::Closing(CloseCode(code), reason.into());
        }
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
        if Some(id) == self.c.ctl {
            self.read_control();
        } else if self.c.streams.contains_key(&id) {
            self.read_stream(id);
        } else if !self.c.parked.iter().any(|(p, _)| *p == id) {
            // A stream we are done with (a fetch whose reply went out): drain and forget.
            let _ = self.io.read(id);
        }
    }

    fn writable(&mut self, id: StreamId, stopped: bool) {
        if Some(id) == self.c.ctl {
            if stopped {
                self.c.ctl_out.dead = true;
            }
            self.c.ctl_out.flush(self.io, id);
            // Room again for answers: read what the client sent meanwhile.
            if matches!(self.c.stage, Stage::Live(_)) {
                self.read_control();
            }
            return;
        }
        let done = match self.c.streams.get_mut(&id) {
            Some(Stream::Lane(l)) => {
                if stopped {
                    l.out.dead = true;
                }
                l.out.flush(self.io, id);
                false
            }
            Some(Stream::Fetch(f)) => {
                if stopped {
                    f.out.dead = true;
                }
                f.out.flush(self.io, id);
                f.waiting.is_none() && f.deadline.is_some() && (f.out.done() || f.out.dead)
            }
            _ => false,
        };
        if done {
            self.fetch_done(id);
        }
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
            if let Stage::Live(l) = &self.c.stage {
                self.ctx.voice.datagram(&l.voice, d);
            }
        }
    }

    /// Writes a control frame; a client that leaves too many unread is a slow consumer.
    fn control(&mut self, msg: &ServerControl) {
        let Some(ctl) = self.c.ctl else { return };
        let f = control_frame(msg);
        self.ctx.metrics.tx[CONTROL].add(f.len());
        self.c.ctl_out.write(self.io, ctl, f);
        if self.c.ctl_out.pending.len() > CONTROL_QUEUE {
            self.begin_close(CloseCode::SLOW_CONSUMER, "control stream not read".into());
        }
    }

    /// Whether the client's control frames may be read: only while their answers can be
    /// held, so a client that does not read its control stream stops being read (its
    /// heartbeat timeout and token expiry still run) instead of overflowing anything. Two
    /// places stay free for frames the server sends on its own (RefreshNeeded, Goaway).
    fn control_room(&self) -> bool {
        !matches!(self.c.stage, Stage::Live(_)) || self.c.ctl_out.pending.len() + 2 < CONTROL_QUEUE
    }

    fn read_control(&mut self) {
        let Some(ctl) = self.c.ctl else { return };
        if !self.control_room() {
            return;
        }
        // What was read and not yet handled stays bounded by one frame: past it, QUIC flow
        // control holds the client back.
        let (chunks, end) = if self.c.ctl_reader.buffered() <= self.ctx.cfg.session.max_frame_bytes {
            match self.io.read(ctl) {
                Read::Data(c) => (c, None),
                Read::Finished(c) => (c, Some(true)),
                Read::Reset(_) => (Vec::new(), Some(false)),
            }
        } else {
            (Vec::new(), None)
        };
        if matches!(self.c.stage, Stage::Closing(..)) {
            return;
        }
        for chunk in &chunks {
            self.c.ctl_reader.push(chunk);
        }
        while self.control_room() {
            let payload = match self.c.ctl_reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return self.refuse_or_close(read_error(&e), e.to_string()),
            };
            self.ctx.metrics.rx[CONTROL].add(payload.len());
            let msg: ClientControl = match decode(&payload) {
                Ok(m) => m,
                Err(e) => return self.refuse_or_close(CloseCode::PROTOCOL_ERROR, e.to_string()),
            };
            match &mut self.c.stage {
                Stage::Hello => match msg {
                    ClientControl::Hello(h) => self.hello(h),
                    _ => {
                        return self
                            .refuse_or_close(CloseCode::PROTOCOL_ERROR, "first control frame must be Hello".into());
                    }
                },
                Stage::Opening(_) => self.c.early.push_back(msg),
                Stage::Live(_) => self.control_frame(msg),
                Stage::Closing(..) => return,
            }
        }
        match end {
            Some(true) => match self.c.stage {
                Stage::Live(_) => self.begin_close(CloseCode::NORMAL, "control stream finished".into()),
                _ => self.refuse_or_close(CloseCode::PROTOCOL_ERROR, "control stream ended before Hello".into()),
            },
            // A reset control stream: the connection is going (resumable, as on a loss).
            Some(false) => self.close_now(CloseCode::PROTOCOL_ERROR, "control stream reset"),
            None => {}
        }
    }

    /// Closes with `code`, counting a refusal if the session never opened.
    fn refuse_or_close(&mut self, code: CloseCode, reason: String) {
        if !matches!(self.c.stage, Stage::Live(_)) {
            self.ctx.metrics.handshake_failed(code);
        }
        self.begin_close(code, reason);
    }

    fn hello(&mut self, hello: Hello) {
        let ctx = self.ctx;
        let pre_token = self.c.pre_token.take();
        let identity: Identity = match control::accept_hello(&hello, pre_token.as_deref(), |t| ctx.verifier.verify(t)) {
            Ok(i) => i,
            Err((code, reason)) => return self.refuse_or_close(code, reason),
        };
        let link = Arc::new(LoopLink {
            tx: self.tx.clone(),
            conn: self.conn,
        });
        let prefix = self.c.h3.as_ref().map_or(0, |h| h.prefix().len());
        let max_dgram = self.io.max_datagram_size().saturating_sub(prefix);
        let (ctx, tx, conn) = (ctx.clone(), self.tx.clone(), self.conn);
        let h = hello.clone();
        self.c.stage = Stage::Opening(Box::new(hello));
        tokio::spawn(async move {
            let mut identity = identity;
            // The application's connect hook, if any, decides first (and may rename).
            let r = match connect_hook(&ctx, &identity, &h).await {
                Err(refused) => Err(refused),
                Ok(name) => {
                    if let Some(n) = name {
                        identity.name = n;
                    }
                    Box::pin(open(&ctx, &identity, &h, link, max_dgram)).await
                }
            };
            let _ = tx.send(Command::Opened(conn, r.map(|o| Box::new((o, identity)))));
        });
    }

    fn opened(&mut self, r: Result<Box<(Opened, Identity)>, (CloseCode, String)>) {
        let (o, identity) = match r {
            Ok(o) => *o,
            Err((code, reason)) => return self.refuse_or_close(code, reason),
        };
        if !matches!(self.c.stage, Stage::Opening(_)) {
            // Closing meanwhile: the session opened for nothing stays resumable.
            o.handle
                .detach(o.generation, Instant::now() + self.ctx.cfg.session.resume_window);
            return;
        }
        let ctx = self.ctx;
        o.handle.set_token(&identity);
        if o.handle.revoked(ctx.verifier.revocations()) {
            // Revoked while the session was opening (after its token was checked).
            o.handle.detach(o.generation, Instant::now());
            if ctx.sessions.remove(&o.handle.id) {
                ctx.fanout.close(identity.user_id);
            }
            return self.refuse_or_close(CloseCode::TOKEN_REVOKED, "token revoked".into());
        }
        let Stage::Opening(hello) = std::mem::replace(&mut self.c.stage, Stage::Hello) else {
            return;
        };
        let sc = &ctx.cfg.session;
        let Opened {
            handle,
            generation,
            first,
            resumed,
        } = o;
        let user = identity.user_id;
        let voice = crate::voice::VoicePort::new(
            Arc::new(LoopDatagrams {
                tx: self.tx.clone(),
                conn: self.conn,
                prefix: self.c.h3.as_ref().map(|h| h.prefix().to_vec()).unwrap_or_default(),
            }),
            Arc::downgrade(&handle),
        );
        let machine = Control::new(
            ControlConfig {
                heartbeat_timeout: sc.ping_timeout,
                refresh_warning: ctx.cfg.auth.refresh_warning,
                leeway: ctx.cfg.auth.leeway,
                drain_timeout: sc.drain_timeout,
                reconnect_after: sc.reconnect_after,
            },
            &identity,
            self.io.now(),
            SystemTime::now(),
        );
        self.c.deadline = None;
        self.c.stage = Stage::Live(Box::new(Live {
            handle: handle.clone(),
            generation,
            user,
            machine,
            voice,
            zstd: hello.compression == Compression::Zstd,
            lanes: [None; 5],
            fetches: 0,
        }));
        self.control(&first);
        handle.set_via(self.c.transport, hello.device, crate::ids::now_ms());
        ctx.presence.connect(user, handle.id, hello.device, handle.chosen());
        if ctx.hook_writer.wants("session.opened") {
            let data = crate::webhooks::catalogue::WebhookSessionOpened {
                user_id: crate::api::types::Id(user),
                session_id: handle.id.to_string(),
                node: ctx.cfg.node_name.clone(),
                transport: self.c.transport.name().to_string(),
                device: format!("{:?}", hello.device).to_lowercase(),
                resumed,
            };
            let ev = crate::webhooks::catalogue::user_event("session.opened", user, &data);
            ctx.hook_writer.record(ev, crate::ids::now_ms());
        }
        ctx.metrics.session_opened(self.c.transport);
        tracing::debug!(session = %handle.id, user, transport = self.c.transport.name(), engine = true, resumed, "session ready");
        if ctx.shutdown.is_fired()
            && let Stage::Live(l) = &mut self.c.stage
            && let Some(goaway) = l.machine.drain(self.io.now())
        {
            self.control(&goaway);
        }
        for msg in std::mem::take(&mut self.c.early) {
            if !matches!(self.c.stage, Stage::Live(_)) {
                break;
            }
            self.control_frame(msg);
        }
        for (id, early) in std::mem::take(&mut self.c.parked) {
            if !matches!(self.c.stage, Stage::Live(_)) {
                break;
            }
            let mut reader = FrameReader::new(sc.max_frame_bytes);
            for chunk in &early {
                reader.push(chunk);
            }
            self.c.streams.insert(id, Stream::Opening(reader));
            self.read_stream(id);
        }
    }

    fn control_frame(&mut self, msg: ClientControl) {
        let ctx = self.ctx;
        let Stage::Live(l) = &mut self.c.stage else { return };
        ctx.presence.seen(l.user, l.handle.id);
        let handle = l.handle.clone();
        let reply = l.machine.on_frame(
            self.io.now(),
            SystemTime::now(),
            msg,
            |t| {
                // A refreshed token is the one revocations are checked against from now on.
                let r = ctx.verifier.verify(t);
                if let Ok(i) = &r {
                    handle.set_token(i);
                }
                r
            },
            l.handle.as_ref(),
        );
        match reply {
            Ok(reply) => self.control(&reply),
            Err((code, reason)) => self.begin_close(code, reason),
        }
    }

    fn timer(&mut self, now: Instant) {
        if let Some(d) = self.c.deadline
            && d <= now
        {
            self.c.deadline = None;
            match &self.c.stage {
                Stage::Closing(code, reason) => {
                    let (code, reason) = (*code, reason.clone());
                    self.ctx.metrics.closed_with(code);
                    self.io.close(code.0, reason.as_bytes());
                }
                Stage::Hello | Stage::Opening(_) => {
                    self.ctx.metrics.handshake_failed(CloseCode::HELLO_TIMEOUT);
                    self.begin_close(CloseCode::HELLO_TIMEOUT, "no Hello".into());
                }
                Stage::Live(_) => {}
            }
        }
        if let Stage::Live(l) = &mut self.c.stage
            && l.machine.next_deadline() <= now
        {
            let (send, close) = l.machine.poll(now);
            for msg in &send {
                self.control(msg);
            }
            if let Some((code, reason)) = close {
                self.begin_close(code, reason);
            }
        }
        let expired: Vec<StreamId> = self
            .c
            .streams
            .iter()
            .filter_map(|(id, s)| match s {
                Stream::Fetch(f) if f.deadline.is_some_and(|d| d <= now) => Some(*id),
                _ => None,
            })
            .collect();
        for id in expired {
            // A reply the client does not take in time is reset and its memory freed; the
            // session is untouched.
            self.ctx
                .metrics
                .fetch_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.io.reset(id, CloseCode::SLOW_CONSUMER.0);
            self.fetch_done(id);
        }
    }

    /// Decides the close: ends the session, sends `Closing`, and waits the grace for the
    /// peer to close (then closes). The first close decided wins.
    fn begin_close(&mut self, code: CloseCode, reason: String) {
        if self.c.close.is_some() {
            return;
        }
        self.c.close = Some((code, reason.clone()));
        end_session(self.ctx, self.c, None);
        self.c.stage = Stage::Closing(code, reason.clone());
        match self.c.ctl {
            Some(ctl) => {
                let f = control_frame(&closing(code, &reason));
                self.ctx.metrics.tx[CONTROL].add(f.len());
                self.c.ctl_out.write(self.io, ctl, f);
                self.c.ctl_out.finish = true;
                self.c.ctl_out.flush(self.io, ctl);
                self.c.deadline = Some(self.io.now() + CLOSING_GRACE);
            }
            None => {
                self.ctx.metrics.closed_with(code);
                self.io.close(code.0, reason.as_bytes());
            }
        }
    }

    fn close_now(&mut self, code: CloseCode, reason: &str) {
        if self.c.close.is_none() {
            self.c.close = Some((code, reason.into()));
            end_session(self.ctx, self.c, None);
            self.ctx.metrics.closed_with(code);
        }
        self.c.stage = Stage::Closing(code, reason.into());
        self.io.close(code.0, reason.as_bytes());
    }

    fn read_stream(&mut self, id: StreamId) {
        let (chunks, end) = self.read_all(id);
        let Some(stream) = self.c.streams.get_mut(&id) else {
            return;
        };
        match stream {
            Stream::Opening(reader) => {
                for chunk in &chunks {
                    reader.push(chunk);
                }
                let (open, len) = match reader.next_frame() {
                    Ok(Some(p)) => match decode::<StreamOpen>(&p) {
                        Ok(o) => (o, p.len()),
                        Err(e) => return self.begin_close(CloseCode::PROTOCOL_ERROR, e.to_string()),
                    },
                    Ok(None) => {
                        if end {
                            // Opened and abandoned: it costs nothing but itself.
                            self.c.streams.remove(&id);
                        }
                        return;
                    }
                    Err(e) => return self.begin_close(read_error(&e), e.to_string()),
                };
                let rest = std::mem::replace(reader, FrameReader::new(0));
                match open {
                    StreamOpen::Lane(lane) => {
                        self.ctx.metrics.rx[lane.index()].add(len);
                        self.open_lane(id, lane, rest, end)
                    }
                    StreamOpen::Fetch(req) => {
                        self.ctx.metrics.rx[FETCH].add(len);
                        self.c.streams.insert(
                            id,
                            Stream::Fetch(Box::new(FetchStream {
                                waiting: Some(req),
                                out: Outbox::default(),
                                deadline: None,
                            })),
                        );
                        self.start_fetches();
                    }
                }
            }
            Stream::Lane(l) => {
                for chunk in &chunks {
                    l.reader.push(chunk);
                }
                l.read_done |= end;
                self.lane_requests(id);
            }
            // What follows a fetch request is its end: nothing to do.
            Stream::Fetch(_) => {}
        }
    }

    fn open_lane(&mut self, id: StreamId, lane: Lane, reader: FrameReader, end: bool) {
        let Stage::Live(l) = &mut self.c.stage else { return };
        let sink = LoopLane {
            tx: self.tx.clone(),
            conn: self.conn,
            lane,
        };
        let mut out = Outbox::default();
        match l.handle.attach_lane(l.generation, lane, sink) {
            Ok(backlog) => {
                l.lanes[lane.index()] = Some(id);
                let flow = &self.ctx.metrics.tx[lane.index()];
                for chunk in backlog.chunks(256) {
                    let mut buf = Vec::new();
                    for (seq, body) in chunk {
                        quaver_proto::codec::encode_event_frame(*seq, body, &mut buf);
                    }
                    flow.add(buf.len());
                    out.write(self.io, id, Bytes::from(buf));
                }
            }
            Err(AttachError::AlreadyOpen) => {
                let err = ServerLane::Error {
                    id: 0,
                    error: ErrorBody::new(
                        ErrorCode::LANE_ALREADY_OPEN,
                        format!("{} lane already open", lane.name()),
                    ),
                };
                out.write(self.io, id, lane_frame(&err));
                out.finish = true;
                out.flush(self.io, id);
                self.c.streams.remove(&id);
                return;
            }
            Err(AttachError::Detached) => {
                self.c.streams.remove(&id);
                return;
            }
            // The events to replay fell out of the buffer since the resume was accepted:
            // the client must resume again (and will be caught up from the log).
            Err(AttachError::Lost(_)) => {
                return self.begin_close(CloseCode::SLOW_CONSUMER, "replay no longer available".into());
            }
        }
        self.c.streams.insert(
            id,
            Stream::Lane(Box::new(LaneStream {
                lane,
                reader,
                queued: VecDeque::new(),
                busy: false,
                read_done: end,
                out,
            })),
        );
        self.lane_requests(id);
    }

    /// Takes the lane's complete requests (up to the read-ahead) and serves the next one
    /// if none is being served.
    fn lane_requests(&mut self, id: StreamId) {
        let Some(Stream::Lane(l)) = self.c.streams.get_mut(&id) else {
            return;
        };
        let lane = l.lane;
        while l.queued.len() < READ_AHEAD {
            let payload = match l.reader.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return self.begin_close(read_error(&e), e.to_string()),
            };
            self.ctx.metrics.rx[lane.index()].add(payload.len());
            match decode::<Request>(&payload) {
                Ok(r) => l.queued.push_back(r),
                Err(e) => return self.begin_close(CloseCode::PROTOCOL_ERROR, e.to_string()),
            }
        }
        if l.busy || self.c.close.is_some() {
            return;
        }
        let Some(req) = l.queued.pop_front() else { return };
        l.busy = true;
        let Stage::Live(live) = &self.c.stage else { return };
        let (ctx, tx, conn) = (self.ctx.clone(), self.tx.clone(), self.conn);
        let (handle, voice) = (live.handle.clone(), live.voice.clone());
        tokio::spawn(async move {
            let (reply, flood) = match dispatch::request(&ctx, &handle, &voice, lane, req.body).await {
                Ok(body) => (ServerLane::Ack { id: req.id, body }, false),
                Err(Refusal::Error(error)) => (ServerLane::Error { id: req.id, error }, false),
                Err(Refusal::Flood(error)) => (ServerLane::Error { id: req.id, error }, true),
            };
            let _ = tx.send(Command::Replied(conn, lane, reply, flood));
        });
    }

    fn lane_out(&mut self, lane: Lane, out: LaneOut) {
        let flow = &self.ctx.metrics.tx[lane.index()];
        let io = &mut *self.io;
        let Stage::Live(l) = &self.c.stage else { return };
        let Some(id) = l.lanes[lane.index()] else { return };
        let Some(Stream::Lane(s)) = self.c.streams.get_mut(&id) else {
            return;
        };
        let mut buf = Vec::new();
        match out {
            LaneOut::Event(seq, body) => quaver_proto::codec::encode_event_frame(seq, &body, &mut buf),
            LaneOut::Reply(msg) => quaver_proto::encode_frame(&msg, &mut buf),
        }
        flow.add(buf.len());
        s.out.write(io, id, Bytes::from(buf));
        if s.out.pending.len() > LANE_QUEUE {
            // The client does not read this lane: it can resume and get the rest.
            self.begin_close(CloseCode::SLOW_CONSUMER, "lane queue overflow".into());
        }
    }

    fn replied(&mut self, lane: Lane, reply: ServerLane, flood: bool) {
        let flow = &self.ctx.metrics.tx[lane.index()];
        let io = &mut *self.io;
        let Some((id, s)) = (match &self.c.stage {
            Stage::Live(l) => l.lanes[lane.index()].and_then(|id| match self.c.streams.get_mut(&id) {
                Some(Stream::Lane(s)) => Some((id, s)),
                _ => None,
            }),
            _ => None,
        }) else {
            return;
        };
        s.busy = false;
        let f = lane_frame(&reply);
        flow.add(f.len());
        s.out.write(io, id, f);
        let overflow = s.out.pending.len() > LANE_QUEUE;
        if flood {
            // After its reply is written, so the client learns why; nothing after it is
            // served.
            return self.begin_close(CloseCode::RATE_LIMITED, "kept flooding past rate limits".into());
        }
        if overflow {
            // The client asks and does not read the answers: held replies are bounded like
            // events (found by tests/sessions.rs; without it they grew with every request).
            return self.begin_close(CloseCode::SLOW_CONSUMER, "lane queue overflow".into());
        }
        self.lane_requests(id);
    }

    /// Starts waiting fetches while fewer than `FETCH_CONCURRENCY` are in progress.
    fn start_fetches(&mut self) {
        loop {
            let Stage::Live(l) = &mut self.c.stage else { return };
            if l.fetches >= FETCH_CONCURRENCY || self.c.close.is_some() {
                return;
            }
            let next = self.c.streams.iter_mut().find_map(|(id, s)| match s {
                Stream::Fetch(f) if f.waiting.is_some() => Some((*id, f.waiting.take())),
                _ => None,
            });
            let Some((id, Some(req))) = next else { return };
            l.fetches += 1;
            let (ctx, tx, conn, handle, zstd) =
                (self.ctx.clone(), self.tx.clone(), self.conn, l.handle.clone(), l.zstd);
            tokio::spawn(async move {
                let (reply, flood) = match dispatch::fetch(&ctx, &handle, req).await {
                    Ok(reply) => (reply, false),
                    Err(Refusal::Error(e)) => (FetchReply::Err(e), false),
                    Err(Refusal::Flood(e)) => (FetchReply::Err(e), true),
                };
                let mut out = Vec::new();
                quaver_proto::codec::encode_fetch_reply(&reply, zstd, &mut out);
                let _ = tx.send(Command::Fetched(conn, id, out, flood));
            });
        }
    }

    fn fetched(&mut self, id: StreamId, bytes: Vec<u8>, flood: bool) {
        let deadline = self.io.now() + self.ctx.cfg.session.fetch_write_timeout;
        let Some(Stream::Fetch(f)) = self.c.streams.get_mut(&id) else {
            return;
        };
        self.ctx.metrics.tx[FETCH].add(bytes.len());
        f.out.write(self.io, id, Bytes::from(bytes));
        f.out.finish = true;
        f.out.flush(self.io, id);
        f.deadline = Some(deadline);
        if f.out.done() || f.out.dead {
            self.fetch_done(id);
        }
        if flood {
            self.begin_close(CloseCode::RATE_LIMITED, "kept flooding past rate limits".into());
        }
    }

    /// A fetch's reply is written (or abandoned): its slot goes to the next one.
    fn fetch_done(&mut self, id: StreamId) {
        if self.c.streams.remove(&id).is_none() {
            return;
        }
        if let Stage::Live(l) = &mut self.c.stage {
            l.fetches = l.fetches.saturating_sub(1);
        }
        self.start_fetches();
    }
}

fn closing(code: CloseCode, reason: &str) -> ServerControl {
    ServerControl::Closing(Closing {
        code: code.0,
        reason: reason.to_string(),
    })
}
