//! A connection's session as a machine (issue 27): everything a connection does past its
//! framing — the control stream and its `Hello`, the session's opening, lanes (requests in
//! order, events out, replay on attach), fetch streams, voice datagrams, timers, the
//! slow-consumer and flood rules, and the close — with no socket, no clock and no engine
//! in it. The way [`super::control::Control`] is for the control stream alone, and the way
//! quinn-proto's `Connection` or str0m's `Rtc` are.
//!
//! Inputs are method calls with `now` as a parameter: a stream opened, a stream readable or
//! writable, a datagram, an [`Input`] from the rest of the server (a session opened, a
//! lane's event, a request's reply, a fetch's bytes, a close), a timeout. What it does to
//! the connection goes through a [`Port`] — the framing's streams as QUIC shapes them
//! (read, write what flow control takes, finish, reset, stop, datagrams, close) — and what
//! it asks of the rest of the server (a session opened, requests and fetches served) runs as
//! tasks whose answers come back as [`Input`]s through its [`Outlet`].
//!
//! A framing maps its transport onto these: `wire` does it for raw QUIC and WebTransport on
//! the engine (HTTP/3 — CONNECT, stream headers, datagram prefixes — stays there), and a
//! WebSocket framing maps its multiplexed frames (PROTOCOL.md §11) onto the same streams.
//! The unit tests at the end drive the machine through a recording [`Port`] on a virtual
//! clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use quaver_proto::codec::{FrameReader, decode};
use quaver_proto::session::Transport;
use quaver_proto::{
    ClientControl, CloseCode, Closing, Compression, ErrorBody, ErrorCode, FetchReply, FetchRequest, FrameError, Hello,
    Lane, Request, ServerControl, ServerLane, StreamOpen,
};
use quinn_proto::StreamId;

use super::control::{self, Control, ControlConfig};
use super::pace::{self, Pace};
use super::session::{FETCH_CONCURRENCY, Opened, connect_hook, open};
use super::{AttachError, LANE_QUEUE, LaneOut, LaneSink, Link, SessionHandle, SinkError, dispatch};
use crate::auth::Identity;
use crate::engine::Read;
use crate::limits::Refusal;
use crate::metrics::{CONTROL, FETCH};
use crate::{Ctx, SessionTask};

/// The connection as the machine sees it: client-opened bidirectional streams carrying
/// bytes in order under flow control, datagrams, and a close. Raw QUIC and WebTransport
/// give it from quinn-proto (after HTTP/3's headers), the WebSocket framing from its
/// multiplexed frames.
pub(crate) trait Port {
    /// What the client sent on `stream` since the last read (and whether it ended).
    fn read(&mut self, stream: StreamId) -> Read;
    /// Writes what flow control takes of `data` — taking it over, not copying it, where the
    /// transport can — and leaves the rest in `data`; returns how much was taken (`None`:
    /// the stream cannot be written).
    fn try_write(&mut self, stream: StreamId, data: &mut Bytes) -> Option<usize>;
    /// Ends our direction of `stream` after what was written.
    fn finish(&mut self, stream: StreamId);
    /// Abandons our direction of `stream`.
    fn reset(&mut self, stream: StreamId, code: u32);
    /// Sends a voice datagram (already prefixed); it may be dropped.
    fn send_datagram(&mut self, data: Bytes);
    /// The largest datagram the connection can send now (prefix included).
    fn max_datagram_size(&mut self) -> usize;
    /// Closes the connection with `code`.
    fn close(&mut self, code: u32, reason: &[u8]);
}

/// The way back to a connection's machine from the tasks and parts of the server that
/// serve it (its session's link and lanes, the SFU, the tasks it starts).
pub(crate) trait Outlet: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Queues `input` for the machine; false when the connection is gone.
    fn send(&self, input: Input) -> bool;
}

/// A connection served by a task of its own (the WebSocket framing, tests): its inputs
/// queue for that task.
impl Outlet for tokio::sync::mpsc::UnboundedSender<Input> {
    fn send(&self, input: Input) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, input).is_ok()
    }
}

/// Whether what [`Session::input`] was given leaves with this turn's transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written (or nothing to write): the connection transmits as usual.
    Now,
    /// A presence or typing event held for the connection's window ([`Pace`]).
    Held,
}

/// What the rest of the server tells a connection's machine.
#[derive(Debug)]
pub enum Input {
    /// A session was opened for the connection's Hello (or refused).
    Opened(Result<Box<(Opened, Identity)>, (CloseCode, String)>),
    /// A frame for an open lane (an event from the fan-out).
    Lane(Lane, LaneOut),
    /// The request being served on a lane has its reply, framed (encoded in the request's
    /// own task, off the connection's loop); `flood` closes the session after.
    Replied(Lane, Bytes, bool),
    /// A fetch reply, encoded; `flood` closes the session after.
    Fetched(StreamId, Vec<u8>, bool),
    /// Close the session (in-band `Closing` first).
    Close(CloseCode, String),
    /// Close the connection now.
    CloseNow(CloseCode, String),
    /// A voice datagram for the connection, already prefixed.
    Datagram(Bytes),
}

/// The link of a session: closes go back through the outlet.
#[derive(Debug)]
struct OutletLink<O>(O);

impl<O: Outlet> Link for OutletLink<O> {
    fn ask_close(&self, code: CloseCode, reason: String) -> bool {
        self.0.send(Input::Close(code, reason))
    }
    fn close_now(&self, code: CloseCode, reason: &str) {
        self.0.send(Input::CloseNow(code, reason.into()));
    }
}

/// A lane of a session: frames go through the outlet (what a lane may hold unsent is
/// bounded by its [`Outbox`]).
#[derive(Debug)]
struct OutletLane<O> {
    outlet: O,
    lane: Lane,
}

impl<O: Outlet> LaneSink for OutletLane<O> {
    fn push(&self, out: LaneOut) -> Result<(), SinkError> {
        if self.outlet.send(Input::Lane(self.lane, out)) {
            Ok(())
        } else {
            Err(SinkError::Closed)
        }
    }
}

/// The SFU's way to a listener.
#[derive(Debug)]
struct OutletDatagrams<O> {
    outlet: O,
    prefix: Vec<u8>,
}

impl<O: Outlet> crate::voice::DatagramSink for OutletDatagrams<O> {
    fn prefix(&self) -> &[u8] {
        &self.prefix
    }
    fn send(&self, data: Bytes) -> bool {
        self.outlet.send(Input::Datagram(data))
    }
}

/// A connection's session machine.
#[derive(Debug)]
pub(crate) struct Session<O: Outlet> {
    ctx: Arc<Ctx>,
    outlet: O,
    c: Conn,
}

impl<O: Outlet> Session<O> {
    /// A connection that has just been established over `transport`: it waits for its
    /// control stream and `Hello` until the Hello timeout. A draining or full server
    /// refuses it in band (once its control stream opens) — `draining` says which.
    pub(crate) fn new(ctx: Arc<Ctx>, outlet: O, transport: Transport, draining: bool, now: Instant) -> Self {
        let mut c = Conn {
            transport,
            prefix: Vec::new(),
            pre_token: None,
            stage: Stage::Hello,
            ctl: None,
            ctl_reader: FrameReader::new(ctx.cfg.session.max_frame_bytes),
            ctl_out: Outbox::default(),
            heads: Heads::default(),
            pace: Pace::default(),
            quiet_window: ctx.cfg.session.quiet_window,
            early: VecDeque::new(),
            streams: HashMap::new(),
            parked: Vec::new(),
            deadline: Some(now + ctx.cfg.session.hello_timeout),
            close: None,
            _task: ctx.session_task(),
        };
        if draining {
            c.refuse(&ctx, CloseCode::GOING_AWAY, "server shutting down", now);
        } else if ctx.metrics.open_sessions() as usize >= ctx.cfg.session.max_connections {
            // Refused in band once the client opens its control stream (browsers cannot
            // read QUIC close codes), bounded by the grace.
            c.refuse(&ctx, CloseCode::OVERLOADED, "server full", now);
        }
        Session { ctx, outlet, c }
    }

    fn here<'a>(&'a mut self, port: &'a mut dyn Port, now: Instant) -> Here<'a, O> {
        Here {
            ctx: &self.ctx,
            tx: &self.outlet,
            c: &mut self.c,
            io: port,
            now,
        }
    }

    /// Sets what the connection's voice datagrams start with (before its `Hello`).
    pub(crate) fn set_datagram_prefix(&mut self, prefix: Vec<u8>) {
        self.c.prefix = prefix;
    }

    /// A token the framing's request carried (before its `Hello`).
    pub(crate) fn set_pre_token(&mut self, token: Option<String>) {
        self.c.pre_token = token;
    }

    /// Whether a session is being served.
    pub(crate) fn live(&self) -> bool {
        matches!(self.c.stage, Stage::Live(_))
    }

    /// Whether the connection is still on its way to `Ready` (waiting for its `Hello`, or
    /// its session being built), neither serving nor closing.
    pub(crate) fn setting_up(&self) -> bool {
        matches!(self.c.stage, Stage::Hello | Stage::Opening(_)) && self.c.close.is_none()
    }

    /// Refuses the connection before any session (the framing's own refusal: an Origin not
    /// allowed, a request off our path): counted, told in band if its control stream comes,
    /// closed at the end of the grace.
    pub(crate) fn refuse(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.c.close.is_none() {
            self.c.refuse(&self.ctx, code, reason, now);
        }
    }

    /// The framing failed before any session (a malformed HTTP/3 request): counted; the
    /// framing closes the connection itself.
    pub(crate) fn failed(&mut self, code: CloseCode, reason: &str) {
        self.ctx.metrics.handshake_failed(code);
        self.c.close = Some((code, reason.into()));
        self.c.stage = Stage::Closing(code, reason.into());
    }

    /// The client ended the session with `code` in the framing's own way (a WebTransport
    /// close capsule): as a close from it would; the framing closes the connection.
    pub(crate) fn peer_ended(&mut self, code: u32, reason: &str) {
        if self.c.close.is_none() {
            if !self.live() {
                self.ctx.metrics.handshake_failed(CloseCode(u32::MAX));
            }
            end_session(&self.ctx, &mut self.c, Some(code));
            self.c.close = Some((CloseCode(code), reason.into()));
            self.c.stage = Stage::Closing(CloseCode(code), reason.into());
        }
    }

    /// The connection is gone (closed by either side, timed out); `peer_code` is the code
    /// the client closed with, if it did.
    pub(crate) fn lost(&mut self, peer_code: Option<u32>) {
        if matches!(self.c.stage, Stage::Hello | Stage::Opening(_)) && self.c.close.is_none() {
            self.ctx.metrics.handshake_failed(CloseCode(u32::MAX));
        }
        end_session(&self.ctx, &mut self.c, peer_code);
    }

    /// The client opened a stream carrying Quaver (`early`: what the framing read of it
    /// already): the control stream if it is the first, else a lane or fetch.
    pub(crate) fn stream_opened(&mut self, port: &mut dyn Port, now: Instant, id: StreamId, early: Vec<Bytes>) {
        self.here(port, now).quaver_stream(id, early);
    }

    /// Stream `id` has bytes (or its end) to read.
    pub(crate) fn readable(&mut self, port: &mut dyn Port, now: Instant, id: StreamId) {
        let mut h = self.here(port, now);
        if Some(id) == h.c.ctl {
            h.read_control();
        } else if h.c.streams.contains_key(&id) {
            h.read_stream(id);
        } else if !h.c.parked.iter().any(|(p, _)| *p == id) {
            // A stream we are done with (a fetch whose reply went out): drain and forget.
            let _ = h.io.read(id);
        }
    }

    /// Stream `id` can take more (or the client stopped it: `stopped`).
    pub(crate) fn writable(&mut self, port: &mut dyn Port, now: Instant, id: StreamId, stopped: bool) {
        self.here(port, now).writable(id, stopped);
    }

    /// A voice datagram from the client (its framing's prefix removed).
    pub(crate) fn datagram(&mut self, d: Bytes) {
        if let Stage::Live(l) = &self.c.stage {
            self.ctx.voice.datagram(&l.voice, d);
        }
    }

    /// What the rest of the server sent. [`Sent::Held`] when it was a presence or typing
    /// event held for the connection's window: nothing was written, and the connection
    /// need not transmit for it (the framing's timer comes at [`Session::next_deadline`]).
    pub(crate) fn input(&mut self, port: &mut dyn Port, now: Instant, input: Input) -> Sent {
        let quiet = matches!(&input, Input::Lane(lane, _) if pace::is_quiet(*lane));
        if quiet && !self.c.pace.quiet(now, self.c.quiet_window) {
            let Input::Lane(lane, out) = input else {
                unreachable!("a quiet input is a lane event")
            };
            self.ctx.metrics.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut h = self.here(port, now);
            h.lane_out(lane, out, true);
            if h.queued(lane) < HELD_MAX {
                return Sent::Held;
            }
            // Enough for several packets already: nothing gained by waiting longer, and a
            // lane's queue is bounded (past `LANE_QUEUE` the session is a slow consumer).
            h.release_held();
            return Sent::Now;
        }
        let mut h = self.here(port, now);
        if !quiet {
            // Whatever leaves now takes what is held along, in the same packet.
            h.release_held();
        }
        match input {
            Input::Opened(r) => h.opened(r),
            Input::Lane(lane, out) => h.lane_out(lane, out, false),
            Input::Replied(lane, reply, flood) => h.replied(lane, reply, flood),
            Input::Fetched(stream, bytes, flood) => h.fetched(stream, bytes, flood),
            Input::Close(code, reason) => h.begin_close(code, reason),
            Input::CloseNow(code, reason) => h.close_now(code, &reason),
            Input::Datagram(data) => h.io.send_datagram(data),
        }
        Sent::Now
    }

    /// Fires what is due at `now`.
    pub(crate) fn timeout(&mut self, port: &mut dyn Port, now: Instant) {
        self.here(port, now).timer(now);
    }

    /// When [`Session::timeout`] is next due (the end of a window of held presence and
    /// typing included).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.deadline_of_session(), self.c.pace.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn deadline_of_session(&self) -> Option<Instant> {
        let c = &self.c;
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
        match (next, fetch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The server is draining: a live session is told `Goaway`.
    pub(crate) fn drain(&mut self, port: &mut dyn Port, now: Instant) {
        let mut h = self.here(port, now);
        if let Stage::Live(l) = &mut h.c.stage
            && let Some(goaway) = l.machine.drain(now)
        {
            h.control(&goaway);
        }
    }
}

/// An input for a connection that is gone: a session opened for it meanwhile is left
/// resumable.
pub(crate) fn abandon(ctx: &Ctx, input: Input) {
    if let Input::Opened(Ok(o)) = input {
        o.0.handle
            .detach(o.0.generation, Instant::now() + ctx.cfg.session.resume_window);
    }
}

/// How long a closing connection waits for the peer to close after our `Closing`: closing
/// first would let a browser discard the frame unread (Chrome aborts streams, buffered data
/// included, when the connection closes under them).
const CLOSING_GRACE: Duration = Duration::from_millis(1000);
/// Control frames held (unsent for flow control) before the client counts as not reading.
const CONTROL_QUEUE: usize = 32;
/// Requests read ahead of the one being served on a lane; past it the lane is not read
/// (flow control then holds the client back).
const READ_AHEAD: usize = 16;

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
    fn write(&mut self, io: &mut dyn Port, stream: StreamId, data: Bytes) {
        if self.dead {
            return;
        }
        if !self.pending.is_empty() {
            self.pending.push_back(data);
            return;
        }
        let mut data = data;
        match io.try_write(stream, &mut data) {
            Some(_) if data.is_empty() => {}
            Some(_) => self.pending.push_back(data),
            None => self.dead = true,
        }
    }

    /// Writes the frame `head` + `body` after anything pending. The two parts go to the
    /// stream as they are (the body is shared by every receiver of an event); a frame that
    /// has to wait is joined into one pending entry, so the queue counts frames.
    fn write_frame(&mut self, io: &mut dyn Port, stream: StreamId, head: Bytes, body: Bytes) {
        if self.dead {
            return;
        }
        let mut head = head;
        if self.pending.is_empty() {
            match io.try_write(stream, &mut head) {
                Some(_) if head.is_empty() => return self.write(io, stream, body),
                Some(_) => {}
                None => {
                    self.dead = true;
                    return;
                }
            }
        }
        // What is left of the head, then the body: one entry.
        self.hold_frame(head, body);
    }

    /// Queues the frame `head` + `body` behind anything pending without writing it (a
    /// frame held for its window: [`Outbox::flush`] writes it).
    fn hold_frame(&mut self, head: Bytes, body: Bytes) {
        if !self.dead {
            self.pending.push_back([&head[..], &body[..]].concat().into());
        }
    }

    /// Writes what is pending (after `Writable`, or at the end of a window of held frames);
    /// finishes the stream if asked and done.
    fn flush(&mut self, io: &mut dyn Port, stream: StreamId) {
        while let Some(front) = self.pending.front_mut() {
            if self.dead {
                self.pending.clear();
                break;
            }
            match io.try_write(stream, front) {
                Some(_) if front.is_empty() => {
                    self.pending.pop_front();
                }
                Some(_) => return,
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

/// Frames a lane holds for its window at most: at that many the window ends at once (they
/// fill several packets already).
const HELD_MAX: usize = 64;

/// Bytes of one block of event heads: some twenty heads (a head is ≈ 10–12 bytes).
const HEADS_BLOCK: usize = 256;

/// A connection's event heads (the few bytes of a `ServerLane::Event` frame before the body
/// every receiver shares), cut one after another from a small block: a delivery allocates
/// nothing of its own — a block and its shared count serve some twenty. A head keeps its
/// block alive until the client acknowledges it, and only this connection's heads share a
/// block, so a client that never acknowledges holds no more per event than a head of its
/// own would (a 256-byte block per ≈ 20 heads against a ≥ 32-byte allocation each); the
/// block being filled is let go at every heartbeat ([`Heads::release`]), so an idle
/// connection holds none. (One block per thread would pin a block per event a
/// non-acknowledging client was sent.)
#[derive(Debug, Default)]
struct Heads(bytes::BytesMut);

impl Heads {
    /// The head of an event frame for a body of `body_len` bytes with `seq`.
    fn cut(&mut self, seq: u64, body_len: usize) -> Bytes {
        let mut head = [0u8; quaver_proto::codec::EVENT_HEAD_MAX];
        let n = quaver_proto::codec::encode_event_head(seq, body_len, &mut head);
        if self.0.capacity() < n {
            self.0 = bytes::BytesMut::with_capacity(HEADS_BLOCK);
        }
        self.0.extend_from_slice(&head[..n]);
        self.0.split().freeze()
    }

    /// Lets the block being filled go (it is freed once the heads cut from it are).
    fn release(&mut self) {
        self.0 = bytes::BytesMut::new();
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

/// The stream of `lane`, if the session is live and the client opened it.
fn lane_stream<'a>(
    stage: &Stage,
    streams: &'a mut HashMap<StreamId, Stream>,
    lane: Lane,
) -> Option<(StreamId, &'a mut LaneStream)> {
    let Stage::Live(l) = stage else { return None };
    let id = l.lanes[lane.index()]?;
    match streams.get_mut(&id) {
        Some(Stream::Lane(s)) => Some((id, s)),
        _ => None,
    }
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
    transport: Transport,
    /// What each voice datagram starts with on this framing (WebTransport: the session's
    /// quarter stream id; otherwise nothing).
    prefix: Vec<u8>,
    /// A token from the framing's request (WebTransport's `Authorization` or `?token=`).
    pre_token: Option<String>,
    stage: Stage,
    ctl: Option<StreamId>,
    ctl_reader: FrameReader,
    ctl_out: Outbox,
    /// Where its events' heads are cut from ([`Heads`]).
    heads: Heads,
    /// Presence and typing held for one packet per window ([`super::pace`]).
    pace: Pace,
    /// That window (the server's `quiet_window`), on every framing: on the WebSocket one a
    /// held frame spares a wake-up of its writer and a TCP write.
    quiet_window: Duration,
    /// Control frames read while the session was being built, handled once it is live.
    early: VecDeque<ClientControl>,
    streams: HashMap<StreamId, Stream>,
    /// Streams opened before the session was live, with what was read of them (a
    /// WebTransport stream's first bytes after its header).
    parked: Vec<(StreamId, Vec<Bytes>)>,
    /// Hello deadline, or the end of the closing grace.
    deadline: Option<Instant>,
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

/// One connection, during one input.
struct Here<'a, O: Outlet> {
    ctx: &'a Arc<Ctx>,
    tx: &'a O,
    c: &'a mut Conn,
    io: &'a mut dyn Port,
    now: Instant,
}

impl<O: Outlet> Here<'_, O> {
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

    /// Writes a control frame; a client that leaves too many unread is a slow consumer.
    fn control(&mut self, msg: &ServerControl) {
        let Some(ctl) = self.c.ctl else { return };
        if matches!(msg, ServerControl::HeartbeatAck(_)) {
            // Quiet or not, a connection lets its block of heads go every heartbeat: an
            // idle session holds none.
            self.c.heads.release();
        }
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
        let link = Arc::new(OutletLink(self.tx.clone()));
        let max_dgram = self.io.max_datagram_size().saturating_sub(self.c.prefix.len());
        let (ctx, tx) = (ctx.clone(), self.tx.clone());
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
            tx.send(Input::Opened(r.map(|o| Box::new((o, identity)))));
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
            Arc::new(OutletDatagrams {
                outlet: self.tx.clone(),
                prefix: self.c.prefix.clone(),
            }),
            Arc::downgrade(&handle),
        );
        let machine = Control::new(
            ControlConfig {
                heartbeat_timeout: sc.ping_timeout,
                heartbeat_interval: sc.ping_interval,
                refresh_warning: ctx.cfg.auth.refresh_warning,
                leeway: ctx.cfg.auth.leeway,
                drain_timeout: sc.drain_timeout,
                reconnect_after: sc.reconnect_after,
            },
            &identity,
            self.now,
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
            && let Some(goaway) = l.machine.drain(self.now)
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
            self.now,
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
        if self.c.pace.due().is_some_and(|d| d <= now) {
            self.release_held();
        }
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
                Stage::Hello => {
                    self.ctx.metrics.handshake_failed(CloseCode::HELLO_TIMEOUT);
                    self.begin_close(CloseCode::HELLO_TIMEOUT, "no Hello".into());
                }
                Stage::Opening(_) => {
                    // The Hello came; the node did not build the session in time (a storm,
                    // a slow store). Not the client's failure, and not terminal: it comes
                    // back after the `overloaded` wait (measured: a WebSocket storm of
                    // 10,000 told `hello_timeout` here lost 2,192 clients for good).
                    self.ctx.metrics.handshake_failed(CloseCode::OVERLOADED);
                    self.begin_close(
                        CloseCode::OVERLOADED,
                        "the session was not set up in time; retry".into(),
                    );
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
                self.c.deadline = Some(self.now + CLOSING_GRACE);
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
        let sink = OutletLane {
            outlet: self.tx.clone(),
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
        let (ctx, tx) = (self.ctx.clone(), self.tx.clone());
        let (handle, voice) = (live.handle.clone(), live.voice.clone());
        tokio::spawn(async move {
            let (reply, flood) = match dispatch::request(&ctx, &handle, &voice, lane, req.body).await {
                Ok(body) => (ServerLane::Ack { id: req.id, body }, false),
                Err(Refusal::Error(error)) => (ServerLane::Error { id: req.id, error }, false),
                Err(Refusal::Flood(error)) => (ServerLane::Error { id: req.id, error }, true),
            };
            tx.send(Input::Replied(lane, lane_frame(&reply), flood));
        });
    }

    /// Presence and typing frames held for the window ([`Pace`]) are written now: this
    /// transmit carries them.
    fn release_held(&mut self) {
        if self.c.pace.due().is_none() {
            return;
        }
        self.c.pace.sent(self.now);
        for lane in [Lane::Presence, Lane::Typing] {
            if let Some((id, s)) = lane_stream(&self.c.stage, &mut self.c.streams, lane) {
                s.out.flush(self.io, id);
            }
        }
    }

    /// Frames waiting in `lane`'s queue (held, or not taken by flow control).
    fn queued(&mut self, lane: Lane) -> usize {
        lane_stream(&self.c.stage, &mut self.c.streams, lane).map_or(0, |(_, s)| s.out.pending.len())
    }

    /// An event for `lane`; `held`: queued for the end of the window instead of written.
    fn lane_out(&mut self, lane: Lane, out: LaneOut, held: bool) {
        let flow = &self.ctx.metrics.tx[lane.index()];
        let io = &mut *self.io;
        let Some((id, s)) = lane_stream(&self.c.stage, &mut self.c.streams, lane) else {
            return;
        };
        let LaneOut::Event(seq, body) = out;
        // The body is the event's, encoded once for all its receivers and shared, not copied;
        // only the head is this delivery's.
        let head = self.c.heads.cut(seq, body.len());
        flow.add(head.len() + body.len());
        if held {
            s.out.hold_frame(head, body);
        } else {
            s.out.write_frame(io, id, head, body);
        }
        if s.out.pending.len() > LANE_QUEUE {
            // The client does not read this lane: it can resume and get the rest.
            self.begin_close(CloseCode::SLOW_CONSUMER, "lane queue overflow".into());
        }
    }

    fn replied(&mut self, lane: Lane, f: Bytes, flood: bool) {
        let flow = &self.ctx.metrics.tx[lane.index()];
        let io = &mut *self.io;
        let Some((id, s)) = lane_stream(&self.c.stage, &mut self.c.streams, lane) else {
            return;
        };
        s.busy = false;
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
            let (ctx, tx, handle, zstd) = (self.ctx.clone(), self.tx.clone(), l.handle.clone(), l.zstd);
            tokio::spawn(async move {
                let (reply, flood) = match dispatch::fetch(&ctx, &handle, req).await {
                    Ok(reply) => (reply, false),
                    Err(Refusal::Error(e)) => (FetchReply::Err(e), false),
                    Err(Refusal::Flood(e)) => (FetchReply::Err(e), true),
                };
                let mut out = Vec::new();
                quaver_proto::codec::encode_fetch_reply(&reply, zstd, &mut out);
                tx.send(Input::Fetched(id, out, flood));
            });
        }
    }

    fn fetched(&mut self, id: StreamId, bytes: Vec<u8>, flood: bool) {
        let deadline = self.now + self.ctx.cfg.session.fetch_write_timeout;
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

#[cfg(test)]
mod tests {
    //! The machine on a virtual clock against a recording [`Port`], with a real server's
    //! context behind it (store, chat, presence): no QUIC, no socket for the session.

    use std::time::Duration;

    use quaver_proto::{DeviceKind, PROTOCOL_VERSION, RequestBody, ResponseBody};
    use quinn_proto::{Dir, Side};
    use tokio::sync::mpsc;

    use super::*;

    const SECRET: &str = "machine-test-secret-0123456789abcdef";

    /// A connection as a recording: the client's bytes wait per stream until read; what the
    /// machine writes is kept, up to each stream's flow-control credit.
    #[derive(Debug, Default)]
    struct FakePort {
        inbound: HashMap<StreamId, (Vec<Bytes>, bool)>,
        written: HashMap<StreamId, Vec<u8>>,
        /// Bytes each stream still takes; absent: as many as it is given.
        credit: HashMap<StreamId, usize>,
        finished: Vec<StreamId>,
        resets: Vec<(StreamId, u32)>,
        closed: Option<(u32, String)>,
        datagrams: Vec<Bytes>,
    }

    impl Port for FakePort {
        fn read(&mut self, stream: StreamId) -> Read {
            match self.inbound.remove(&stream) {
                Some((chunks, true)) => Read::Finished(chunks),
                Some((chunks, false)) => Read::Data(chunks),
                None => Read::Data(Vec::new()),
            }
        }
        fn try_write(&mut self, stream: StreamId, data: &mut Bytes) -> Option<usize> {
            if self.resets.iter().any(|(s, _)| *s == stream) {
                return None;
            }
            let n = self.credit.get(&stream).map_or(data.len(), |c| data.len().min(*c));
            if let Some(c) = self.credit.get_mut(&stream) {
                *c -= n;
            }
            self.written
                .entry(stream)
                .or_default()
                .extend_from_slice(&data.split_to(n));
            Some(n)
        }
        fn finish(&mut self, stream: StreamId) {
            self.finished.push(stream);
        }
        fn reset(&mut self, stream: StreamId, code: u32) {
            self.resets.push((stream, code));
        }
        fn send_datagram(&mut self, data: Bytes) {
            self.datagrams.push(data);
        }
        fn max_datagram_size(&mut self) -> usize {
            1200
        }
        fn close(&mut self, code: u32, reason: &[u8]) {
            self.closed = Some((code, String::from_utf8_lossy(reason).into_owned()));
        }
    }

    /// A frame written as head + body arrives whole and in order, however flow control
    /// splits it; a frame that waits counts once in the queue.
    #[test]
    fn frames_written_as_head_and_body_arrive_whole_and_in_order() {
        let mut port = FakePort::default();
        let mut out = Outbox::default();
        let s = stream(1);
        let mut heads = Heads::default();
        let frames: Vec<(Bytes, Bytes)> = (0..4u64)
            .map(|seq| (heads.cut(seq + 1, 5), Bytes::from(vec![b'a' + seq as u8; 5])))
            .collect();
        let mut want = Vec::new();
        for (h, b) in &frames {
            want.extend_from_slice(h);
            want.extend_from_slice(b);
        }
        // Room for the first frame and one byte of the second's head.
        port.credit.insert(s, frames[0].0.len() + 5 + 1);
        for (h, b) in frames {
            out.write_frame(&mut port, s, h, b);
        }
        assert_eq!(out.pending.len(), 3, "frames 2-4 wait, one entry each");
        port.credit.insert(s, usize::MAX);
        out.flush(&mut port, s);
        assert!(out.done());
        assert_eq!(port.written[&s], want);
    }

    /// Heads cut from one block are each their frame's head and sit side by side, some
    /// twenty to an allocation; a released block is not written into again.
    #[test]
    fn event_heads_come_from_small_shared_blocks() {
        let mut heads = Heads::default();
        let body = Bytes::from_static(b"hello");
        let cut: Vec<Bytes> = (1..=40u64).map(|seq| heads.cut(seq * 1000, body.len())).collect();
        for (i, h) in cut.iter().enumerate() {
            let mut want = Vec::new();
            quaver_proto::codec::encode_event_frame((i as u64 + 1) * 1000, &body, &mut want);
            assert_eq!([&h[..], &body[..]].concat(), want);
        }
        let end = |h: &Bytes| h.as_ptr().wrapping_add(h.len());
        let adjacent = cut.windows(2).filter(|w| end(&w[0]) == w[1].as_ptr()).count();
        assert!(adjacent >= 30, "{adjacent} of 39 neighbours share a block");
        heads.release();
        let after = heads.cut(1, 5);
        assert_ne!(end(cut.last().unwrap()), after.as_ptr(), "a new block after a release");
    }

    /// Client stream `n` (0: the control stream).
    fn stream(n: u64) -> StreamId {
        StreamId::new(Side::Client, Dir::Bi, n)
    }

    /// One frame of a message (the codec's bound is bincode's, which this crate does not
    /// name).
    macro_rules! frame {
        ($msg:expr) => {{
            let mut buf = Vec::new();
            quaver_proto::encode_frame($msg, &mut buf);
            Bytes::from(buf)
        }};
    }

    /// The frames in `bytes`, decoded as `$t`.
    macro_rules! frames {
        ($t:ty, $bytes:expr) => {{
            let mut r = FrameReader::new(1 << 20);
            r.push($bytes);
            let mut out: Vec<$t> = Vec::new();
            while let Some(p) = r.next_frame().expect("whole frames") {
                out.push(decode::<$t>(&p).expect("decodes"));
            }
            out
        }};
    }

    struct Rig {
        server: crate::Server,
        session: Session<mpsc::UnboundedSender<Input>>,
        port: FakePort,
        inputs: mpsc::UnboundedReceiver<Input>,
        now: Instant,
    }

    impl Rig {
        async fn new() -> Rig {
            Rig::on(Transport::Quic).await
        }

        async fn on(transport: Transport) -> Rig {
            let dir = std::env::temp_dir().join(format!(
                "quaver-machine-{}-{}",
                std::process::id(),
                crate::ids::now_ms()
            ));
            let mut cfg = crate::config::Config {
                listen: "127.0.0.1:0".parse().expect("an address"),
                http_listen: "127.0.0.1:0".parse().expect("an address"),
                node_name: "machine-test".into(),
                data_dir: dir.join(format!("data-{:?}", std::thread::current().id())),
                ..Default::default()
            };
            cfg.tls.cert_dir = dir.join("certs");
            cfg.api.listen = "127.0.0.1:0".parse().expect("an address");
            cfg.auth.jwt_secret = Some(SECRET.into());
            cfg.session.drain_timeout = Duration::from_millis(200);
            let server = crate::Server::start(cfg).await.expect("the server starts");
            let (tx, inputs) = mpsc::unbounded_channel();
            let now = Instant::now();
            let session = Session::new(server.ctx.clone(), tx, transport, false, now);
            Rig {
                server,
                session,
                port: FakePort::default(),
                inputs,
                now,
            }
        }

        fn token(user: u64) -> String {
            crate::auth::Verifier::hs256(SECRET.as_bytes())
                .expect("a verifier")
                .mint(user, Some("ada"), Duration::from_secs(3600))
                .expect("a token")
        }

        /// The client sends `bytes` on stream `n` (opening it if new).
        fn send(&mut self, n: u64, bytes: Bytes, fin: bool) {
            let id = stream(n);
            let new = !self.port.inbound.contains_key(&id) && !self.port.written.contains_key(&id) && !self.opened(id);
            let e = self.port.inbound.entry(id).or_default();
            e.0.push(bytes);
            e.1 |= fin;
            if new {
                self.session.stream_opened(&mut self.port, self.now, id, Vec::new());
            } else {
                self.session.readable(&mut self.port, self.now, id);
            }
        }

        fn opened(&self, id: StreamId) -> bool {
            self.session.c.ctl == Some(id)
                || self.session.c.streams.contains_key(&id)
                || self.session.c.parked.iter().any(|(p, _)| *p == id)
        }

        /// Hands the next thing the server's tasks send to the machine.
        async fn next_input(&mut self) {
            let input = tokio::time::timeout(Duration::from_secs(10), self.inputs.recv())
                .await
                .expect("an input within 10 s")
                .expect("the outlet is open");
            self.session.input(&mut self.port, self.now, input);
        }

        /// Hands inputs to the machine until `done` holds (10 s at most).
        async fn until(&mut self, mut done: impl FnMut(&Rig) -> bool) {
            for _ in 0..1000 {
                if done(self) {
                    return;
                }
                self.next_input().await;
            }
            panic!("not done after 1000 inputs");
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            if self.session.next_deadline().is_some_and(|t| t <= self.now) {
                self.session.timeout(&mut self.port, self.now);
            }
        }

        fn control(&self) -> Vec<ServerControl> {
            frames!(ServerControl, self.port.written.get(&stream(0)).map_or(&[][..], |v| v))
        }

        fn closing_code(&self) -> Option<u32> {
            self.control().into_iter().find_map(|m| match m {
                ServerControl::Closing(c) => Some(c.code),
                _ => None,
            })
        }

        /// The client's `Hello` (user 7) on the control stream.
        fn hello(&mut self) {
            let hello = ClientControl::Hello(Hello {
                version: PROTOCOL_VERSION,
                token: Some(Self::token(7)),
                device: DeviceKind::Desktop,
                resume: None,
                compression: Compression::None,
            });
            self.send(0, frame!(&hello), false);
        }

        /// Hello, the session's opening, Ready.
        async fn live(&mut self) {
            self.hello();
            assert!(!self.session.live(), "not before the session is built");
            self.next_input().await;
            assert!(self.session.live());
            assert!(
                matches!(self.control().first(), Some(ServerControl::Ready(_))),
                "{:?}",
                self.control()
            );
        }
    }

    #[tokio::test]
    async fn a_hello_opens_the_session_and_ready_is_its_first_frame() {
        let mut r = Rig::new().await;
        r.live().await;
        let ServerControl::Ready(ready) = &r.control()[0] else {
            unreachable!("checked by live()")
        };
        assert_eq!(ready.user.id, 7);
        assert_eq!(r.session.c.deadline, None, "the Hello deadline is gone");
        assert!(r.port.closed.is_none());
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn no_hello_is_told_hello_timeout_in_band_then_closed_after_the_grace() {
        let mut r = Rig::new().await;
        r.send(0, Bytes::new(), false);
        let hello_timeout = r.server.ctx.cfg.session.hello_timeout;
        r.advance(hello_timeout - Duration::from_millis(1));
        assert_eq!(r.closing_code(), None, "not before the deadline");
        r.advance(Duration::from_millis(1));
        assert_eq!(r.closing_code(), Some(CloseCode::HELLO_TIMEOUT.0));
        assert_eq!(
            r.port.finished,
            vec![stream(0)],
            "the control stream ends after Closing"
        );
        assert!(r.port.closed.is_none(), "the client gets the grace to read it");
        r.advance(CLOSING_GRACE);
        assert_eq!(r.port.closed.as_ref().map(|c| c.0), Some(CloseCode::HELLO_TIMEOUT.0));
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_hello_whose_session_is_not_built_in_time_is_told_overloaded_not_hello_timeout() {
        let mut r = Rig::new().await;
        r.hello();
        assert!(r.session.setting_up(), "opening");
        // The session's opening has not come back (a node busy with a storm) by the deadline.
        r.advance(r.server.ctx.cfg.session.hello_timeout);
        assert_eq!(
            r.closing_code(),
            Some(CloseCode::OVERLOADED.0),
            "reconnectable: the Hello came in time"
        );
        assert!(!r.session.setting_up(), "closing, no longer counted at the door");
        // The opening that comes back late changes nothing: still closing, nothing live.
        r.next_input().await;
        assert!(!r.session.live());
        assert!(!r.control().iter().any(|m| matches!(m, ServerControl::Ready(_))));
        r.advance(CLOSING_GRACE);
        assert_eq!(r.port.closed.as_ref().map(|c| c.0), Some(CloseCode::OVERLOADED.0));
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_first_frame_that_is_not_hello_or_not_a_frame_is_a_protocol_error() {
        let mut r = Rig::new().await;
        r.send(
            0,
            frame!(&ClientControl::Heartbeat(quaver_proto::Heartbeat {
                nonce: 1,
                lanes: Vec::new()
            })),
            false,
        );
        assert_eq!(r.closing_code(), Some(CloseCode::PROTOCOL_ERROR.0));
        let mut r2 = Rig::new().await;
        // A length prefix, then bytes that decode as no control frame.
        r2.send(0, Bytes::from_static(&[3, 0xff, 0xff, 0xff]), false);
        assert_eq!(r2.closing_code(), Some(CloseCode::PROTOCOL_ERROR.0));
        r.server.shutdown().await;
        r2.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_lane_answers_its_requests_in_order() {
        let mut r = Rig::new().await;
        r.live().await;
        let mut bytes = frame!(&StreamOpen::Lane(Lane::Chat)).to_vec();
        for (id, name) in [(1, "first"), (2, "second")] {
            let req = Request {
                id,
                body: RequestBody::CreateGuild { name: name.into() },
            };
            bytes.extend_from_slice(&frame!(&req));
        }
        r.send(1, Bytes::from(bytes), false);
        let acks = |r: &Rig| -> Vec<u32> {
            let lane = frames!(ServerLane, r.port.written.get(&stream(1)).map_or(&[][..], |v| v));
            lane.iter()
                .filter_map(|m| match m {
                    ServerLane::Ack {
                        id,
                        body: ResponseBody::Guild(_),
                    } => Some(*id),
                    _ => None,
                })
                .collect()
        };
        // One request at a time, in order; the guilds' events come on the lane too.
        r.until(|r| acks(r).len() == 2).await;
        assert_eq!(acks(&r), vec![1, 2]);
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_lane_the_client_does_not_read_closes_the_session_as_a_slow_consumer() {
        let mut r = Rig::new().await;
        r.live().await;
        r.port.credit.insert(stream(1), 0);
        r.send(1, frame!(&StreamOpen::Lane(Lane::Chat)), false);
        let err = || LaneOut::Event(7, Bytes::from_static(b"filler"));
        for _ in 0..LANE_QUEUE {
            r.session.input(&mut r.port, r.now, Input::Lane(Lane::Chat, err()));
        }
        assert_eq!(r.closing_code(), None, "{LANE_QUEUE} held is within bounds");
        r.session.input(&mut r.port, r.now, Input::Lane(Lane::Chat, err()));
        assert_eq!(r.closing_code(), Some(CloseCode::SLOW_CONSUMER.0));
        r.server.shutdown().await;
    }

    /// Presence and typing within a window leave together at its end, in order, behind the
    /// first, which left at once; anything else leaving takes what is held along; a quiet
    /// interval lets the next go at once again. The WebSocket framing holds the same way.
    #[tokio::test]
    async fn presence_and_typing_within_the_window_wait_for_its_end_and_other_traffic_takes_them_along() {
        let mut r = Rig::new().await;
        r.live().await;
        let (presence, typing, chat) = (stream(1), stream(2), stream(3));
        r.send(1, frame!(&StreamOpen::Lane(Lane::Presence)), false);
        r.send(2, frame!(&StreamOpen::Lane(Lane::Typing)), false);
        r.send(3, frame!(&StreamOpen::Lane(Lane::Chat)), false);
        let window = r.server.ctx.cfg.session.quiet_window;
        assert_eq!(window, Duration::from_millis(50), "the default");
        let ms = Duration::from_millis;
        let body = |seq: u64| Bytes::from(format!("event body {seq}"));
        let frame = |seq: u64| {
            let mut f = Vec::new();
            quaver_proto::codec::encode_event_frame(seq, &body(seq), &mut f);
            f
        };
        let written = |r: &Rig, s: StreamId| r.port.written.get(&s).cloned().unwrap_or_default();
        let (p0, t0, c0) = (written(&r, presence), written(&r, typing), written(&r, chat));
        let input = |r: &mut Rig, lane: Lane, seq: u64| {
            r.session
                .input(&mut r.port, r.now, Input::Lane(lane, LaneOut::Event(seq, body(seq))))
        };
        let start = r.now;
        assert_eq!(input(&mut r, Lane::Presence, 1), Sent::Now, "the first at once");
        assert_eq!(written(&r, presence), [p0.clone(), frame(1)].concat());
        r.now += ms(10);
        assert_eq!(input(&mut r, Lane::Presence, 2), Sent::Held);
        r.now += ms(10);
        assert_eq!(input(&mut r, Lane::Typing, 1), Sent::Held, "typing shares the window");
        assert_eq!(
            written(&r, presence),
            [p0.clone(), frame(1)].concat(),
            "nothing written while held"
        );
        assert_eq!(written(&r, typing), t0);
        assert_eq!(
            r.session.next_deadline(),
            Some(start + window),
            "the framing's timer: the window's end"
        );
        r.advance(start + window - ms(1) - r.now);
        assert_eq!(written(&r, typing), t0, "not before the end");
        r.advance(ms(1));
        assert_eq!(written(&r, presence), [p0.clone(), frame(1), frame(2)].concat());
        assert_eq!(written(&r, typing), [t0.clone(), frame(1)].concat());
        // The window runs again from there; a chat event takes what is held along.
        r.now += ms(10);
        assert_eq!(input(&mut r, Lane::Presence, 3), Sent::Held);
        assert_eq!(input(&mut r, Lane::Chat, 1), Sent::Now, "chat is never held");
        assert_eq!(written(&r, chat), [c0, frame(1)].concat());
        assert_eq!(
            written(&r, presence),
            [p0.clone(), frame(1), frame(2), frame(3)].concat()
        );
        // After a quiet window, at once again.
        r.now += window;
        assert_eq!(input(&mut r, Lane::Presence, 4), Sent::Now);
        let mut want = [p0, frame(1), frame(2), frame(3), frame(4)].concat();
        assert_eq!(written(&r, presence), want);
        // A flood within one window: held up to HELD_MAX frames, then all written at once.
        r.now += ms(1);
        for seq in 5..5 + HELD_MAX as u64 - 1 {
            assert_eq!(input(&mut r, Lane::Presence, seq), Sent::Held, "{seq}");
            want.extend(frame(seq));
        }
        let last = 5 + HELD_MAX as u64 - 1;
        assert_eq!(
            input(&mut r, Lane::Presence, last),
            Sent::Now,
            "the {HELD_MAX}th ends the window"
        );
        want.extend(frame(last));
        assert_eq!(written(&r, presence), want, "all of them, in order");
        assert_eq!(r.closing_code(), None);
        r.server.shutdown().await;

        let mut r = Rig::on(Transport::WebSocket).await;
        r.live().await;
        r.send(1, frame!(&StreamOpen::Lane(Lane::Presence)), false);
        let p0 = written(&r, presence);
        let start = r.now;
        assert_eq!(input(&mut r, Lane::Presence, 1), Sent::Now);
        for seq in 2..=3 {
            assert_eq!(
                input(&mut r, Lane::Presence, seq),
                Sent::Held,
                "held on the WebSocket framing too"
            );
        }
        assert_eq!(written(&r, presence), [p0.clone(), frame(1)].concat());
        r.advance(start + window - r.now);
        assert_eq!(written(&r, presence), [p0, frame(1), frame(2), frame(3)].concat());
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_sends_no_heartbeat_is_closed_at_the_heartbeat_timeout() {
        let mut r = Rig::new().await;
        r.live().await;
        let timeout = r.server.ctx.cfg.session.ping_timeout;
        r.advance(timeout - Duration::from_millis(10));
        r.send(
            0,
            frame!(&ClientControl::Heartbeat(quaver_proto::Heartbeat {
                nonce: 1,
                lanes: Vec::new()
            })),
            false,
        );
        assert!(
            r.control().iter().any(|m| matches!(m, ServerControl::HeartbeatAck(_))),
            "{:?}",
            r.control()
        );
        // A heartbeat restarts the count.
        r.advance(timeout - Duration::from_millis(10));
        assert_eq!(r.closing_code(), None);
        r.advance(Duration::from_millis(20));
        assert_eq!(r.closing_code(), Some(CloseCode::HEARTBEAT_TIMEOUT.0));
        r.server.shutdown().await;
    }

    #[tokio::test]
    async fn a_fetch_reply_not_taken_in_time_is_reset_and_the_session_goes_on() {
        let mut r = Rig::new().await;
        r.live().await;
        r.port.credit.insert(stream(1), 0);
        r.send(1, frame!(&StreamOpen::Fetch(FetchRequest::ServerInfo)), true);
        r.until(|r| {
            r.session
                .c
                .streams
                .values()
                .any(|s| matches!(s, Stream::Fetch(f) if f.deadline.is_some()))
        })
        .await;
        assert!(r.port.resets.is_empty());
        // The client stays alive meanwhile (heartbeats), only the fetch is not read.
        let (mut left, step) = (
            r.server.ctx.cfg.session.fetch_write_timeout,
            r.server.ctx.cfg.session.ping_timeout / 2,
        );
        while !left.is_zero() {
            let d = left.min(step);
            r.advance(d);
            left -= d;
            r.send(
                0,
                frame!(&ClientControl::Heartbeat(quaver_proto::Heartbeat {
                    nonce: 2,
                    lanes: Vec::new()
                })),
                false,
            );
        }
        assert_eq!(r.port.resets, vec![(stream(1), CloseCode::SLOW_CONSUMER.0)]);
        assert_eq!(r.closing_code(), None, "only the fetch is given up");
        assert!(r.session.live());
        r.server.shutdown().await;
    }
}
