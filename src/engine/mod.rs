//! The QUIC engine: an event loop owns a `quinn_proto::Endpoint` and every
//! connection on it — no task, channel or mutex per connection. Each turn it receives
//! datagrams in batches (`quinn-udp`: `recvmmsg`, GRO), feeds them to the endpoint and the
//! connections, fires due timers from one heap, lets the application react to each dirty
//! connection's events (streams readable, connected, lost), and sends what every dirty
//! connection has to send, in `sendmsg` batches with GSO. Work per connection per turn is
//! bounded ([`MAX_DATAGRAMS_PER_TURN`]), so a flood on one cannot stall the others.
//!
//! Several loops may share one port ([`Shards`]: SO_REUSEPORT sockets, connection IDs that
//! name their loop, datagrams handed to their loop after a migration); loops share nothing
//! else. The server runs one per core: measured with sessions on this 2-core machine
//! (bench/RESULTS.md "Two loops"), two loops hold 40k deliveries/s where one holds under
//! 30k, at the same cost per delivery at F0's rate. (For the bare transport, before sessions
//! ran on the engine, one loop had been the cheaper at F0's rate: "One loop or two shards".)
//!
//! The application side is the [`App`] trait; `gateway::wire` implements it with the
//! sessions (raw QUIC and WebTransport). The server runs each loop on a thread of its own
//! (`gateway::wire::spawn`); [`Engine::spawn_app_tasks_on`] sends what the application
//! spawns to the main runtime.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, ServerConfig, StreamEvent, StreamId,
    VarInt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

pub mod mailbox;

pub use mailbox::{Batch, Sender};

/// Most datagrams one connection may send in one turn; the rest waits for the next turn.
pub const MAX_DATAGRAMS_PER_TURN: usize = 64;
/// Datagrams read per `recvmmsg`.
const RECV_BATCH: usize = 32;

/// What happened on a connection, for the application.
#[derive(Debug)]
pub enum AppEvent {
    /// The handshake completed.
    Connected,
    /// The peer opened a stream (bidirectional or not); take it with [`Io::accept`] and read
    /// it at once: what arrived with the opening brings no [`AppEvent::Readable`].
    StreamOpened,
    /// A stream has data (or its end, or a reset) to read with [`Io::read`].
    Readable(StreamId),
    /// A stream that was blocked by flow control can take more.
    Writable(StreamId),
    /// The peer asked us to stop sending on a stream (its writes fail from now on).
    Stopped(StreamId),
    /// Datagrams arrived; take them with [`Io::recv_datagram`].
    Datagrams,
    /// The connection is gone; nothing more will be delivered for it.
    Lost(ConnectionError),
}

/// The application on top of the engine, called on the loop for each connection's events
/// and for the commands other threads send it (through [`Engine::sender`]).
pub trait App {
    /// What other threads send the application (e.g. an event to fan out).
    type Command: Send + 'static;
    /// `event` happened on connection `ch`; `io` acts on that connection.
    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>);
    /// A command arrived; `conns` reaches every connection (what is written is sent this turn).
    fn on_command(&mut self, cmd: Self::Command, conns: &mut Conns<'_>);
    /// The loop refused a connection (over the cap) or sent it a stateless retry.
    fn on_admission(&mut self, admission: Admission) {
        let _ = admission;
    }
    /// The number of connections still in their handshake changed (for metrics).
    fn on_handshakes(&mut self, in_flight: usize) {
        let _ = in_flight;
    }
    /// Connections past their handshake that the application is still setting up (a
    /// session between the handshake and `Ready`): counted with the handshakes in flight
    /// against [`Limits::shed_above`].
    fn setting_up(&self) -> usize {
        0
    }
    /// When the application next wants [`App::on_timeout`] (its own timers: heartbeats,
    /// deadlines), if ever.
    fn next_timeout(&self) -> Option<Instant> {
        None
    }
    /// The instant from [`App::next_timeout`] (or later) has come.
    fn on_timeout(&mut self, now: Instant, conns: &mut Conns<'_>) {
        let _ = (now, conns);
    }
}

/// What admission control did with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Refused: the loop holds its most connections.
    Refused,
    /// Refused at the door: the loop is still setting up as many connections as it takes
    /// on at once ([`Limits::shed_above`]).
    Shed,
    /// Sent a stateless retry: many handshakes are in flight.
    Retried,
}

/// Every connection of the loop, for a command.
pub struct Conns<'a> {
    endpoint: &'a mut quinn_proto::Endpoint,
    map: &'a mut HashMap<ConnectionHandle, Box<Conn>>,
    dirty: &'a mut HashSet<ConnectionHandle>,
    now: Instant,
}

impl Conns<'_> {
    /// The time of this turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Starts a connection to `addr` (a client [`Core`]); its handshake leaves this turn,
    /// and [`AppEvent::Connected`] or [`AppEvent::Lost`] follows for the handle returned.
    pub fn connect(
        &mut self,
        config: quinn_proto::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ConnectionHandle, quinn_proto::ConnectError> {
        let (ch, conn) = self.endpoint.connect(self.now, config, addr, server_name)?;
        self.map.insert(
            ch,
            Box::new(Conn {
                conn,
                timer: None,
                armed: None,
                // Admission counts the handshakes peers start, not ours.
                handshaking: false,
                lost: false,
            }),
        );
        self.dirty.insert(ch);
        Ok(ch)
    }

    /// Connection `ch`, if it is alive; it will transmit this turn.
    pub fn io(&mut self, ch: ConnectionHandle) -> Option<Io<'_>> {
        let c = self.map.get_mut(&ch)?;
        self.dirty.insert(ch);
        Some(Io {
            conn: &mut c.conn,
            now: self.now,
        })
    }

    /// Connection `ch`, if it is alive, without transmitting for it this turn: for an
    /// application that may write nothing and says so afterwards ([`Conns::transmit`]).
    /// What it does write leaves with the connection's next transmit.
    pub fn io_held(&mut self, ch: ConnectionHandle) -> Option<Io<'_>> {
        let c = self.map.get_mut(&ch)?;
        Some(Io {
            conn: &mut c.conn,
            now: self.now,
        })
    }

    /// Connection `ch` transmits this turn (after an [`Conns::io_held`] that wrote).
    pub fn transmit(&mut self, ch: ConnectionHandle) {
        // A handle that is gone (or reused) costs one empty drive at most.
        self.dirty.insert(ch);
    }
}

/// One connection, as the application sees it during an event.
pub struct Io<'a> {
    conn: &'a mut quinn_proto::Connection,
    now: Instant,
}

/// What reading a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Data (possibly empty when nothing is buffered now).
    Data(Vec<Bytes>),
    /// Data, then the stream's end.
    Finished(Vec<Bytes>),
    /// The peer reset the stream with this code.
    Reset(u64),
}

impl Io<'_> {
    /// The next stream the peer opened in `dir`, if any.
    pub fn accept(&mut self, dir: Dir) -> Option<StreamId> {
        self.conn.streams().accept(dir)
    }

    /// Opens a stream of ours in `dir`; `None` when the peer's stream limit allows none now.
    pub fn open(&mut self, dir: Dir) -> Option<StreamId> {
        self.conn.streams().open(dir)
    }

    /// Everything readable on `stream` now (ordered).
    pub fn read(&mut self, stream: StreamId) -> Read {
        let mut recv = self.conn.recv_stream(stream);
        let Ok(mut chunks) = recv.read(true) else {
            return Read::Finished(Vec::new());
        };
        let mut out = Vec::new();
        let end = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(c)) => out.push(c.bytes),
                Ok(None) => break Some(Read::Finished(std::mem::take(&mut out))),
                Err(quinn_proto::ReadError::Blocked) => break None,
                Err(quinn_proto::ReadError::Reset(code)) => break Some(Read::Reset(code.into_inner())),
            }
        };
        // Releases flow-control credit; the transmit pass sends the MAX_STREAM_DATA.
        let _ = chunks.finalize();
        end.unwrap_or(Read::Data(out))
    }

    /// Writes as much of `data` as flow control allows; returns how much.
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> usize {
        self.try_write(stream, data).unwrap_or(0)
    }

    /// Like [`Io::write`], but `None` when the stream cannot be written any more (stopped
    /// by the peer, finished or reset), so the caller can drop what it holds for it.
    pub fn try_write(&mut self, stream: StreamId, data: &[u8]) -> Option<usize> {
        match self.conn.send_stream(stream).write(data) {
            Ok(n) => Some(n),
            Err(quinn_proto::WriteError::Blocked) => Some(0),
            Err(_) => None,
        }
    }

    /// Like [`Io::try_write`], but the stream takes `data` over instead of copying it (one
    /// allocation fewer and no copy per frame); what it does not take stays in `data`.
    pub fn try_write_bytes(&mut self, stream: StreamId, data: &mut Bytes) -> Option<usize> {
        let mut chunks = [std::mem::take(data)];
        let r = self.conn.send_stream(stream).write_chunks(&mut chunks);
        let [rest] = chunks;
        *data = rest;
        match r {
            Ok(w) => Some(w.bytes),
            Err(quinn_proto::WriteError::Blocked) => Some(0),
            Err(_) => None,
        }
    }

    /// Ends `stream` after what was written.
    pub fn finish(&mut self, stream: StreamId) {
        let _ = self.conn.send_stream(stream).finish();
    }

    /// Abandons what is unsent on `stream`, telling the peer `code`.
    pub fn reset(&mut self, stream: StreamId, code: u32) {
        let _ = self.conn.send_stream(stream).reset(VarInt::from_u32(code));
    }

    /// Tells the peer to stop sending on `stream`, discarding what it sent.
    pub fn stop(&mut self, stream: StreamId, code: u32) {
        let _ = self.conn.recv_stream(stream).stop(VarInt::from_u32(code));
    }

    /// Sets the send priority of `stream` (higher goes first).
    pub fn set_priority(&mut self, stream: StreamId, priority: i32) {
        let _ = self.conn.send_stream(stream).set_priority(priority);
    }

    /// The next datagram received, if any.
    pub fn recv_datagram(&mut self) -> Option<Bytes> {
        self.conn.datagrams().recv()
    }

    /// Queues a datagram, dropping the oldest queued ones when the send buffer is full
    /// (stale audio is worth less than fresh). False when the peer takes no datagrams or
    /// `data` is larger than it accepts.
    pub fn send_datagram(&mut self, data: Bytes) -> bool {
        self.conn.datagrams().send(data, true).is_ok()
    }

    /// Largest datagram the peer accepts now (0 if none).
    pub fn max_datagram_size(&mut self) -> usize {
        self.conn.datagrams().max_size().unwrap_or(0)
    }

    /// The application protocol negotiated in the handshake.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.conn
            .crypto_session()
            .handshake_data()?
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .ok()?
            .protocol
    }

    /// The peer's address now.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The time of this turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The connection's counters (packets, frames by type, path).
    pub fn stats(&mut self) -> quinn_proto::ConnectionStats {
        self.conn.stats()
    }

    /// Closes the connection with an application `code`.
    pub fn close(&mut self, code: u32, reason: &[u8]) {
        self.conn
            .close(self.now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
    }
}

/// Admission control: a cap on connections, and a stateless retry (address validation) once
/// many handshakes are in flight.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections beyond this are refused (`CONNECTION_REFUSED`).
    pub max_connections: usize,
    /// With this many handshakes in flight, a client must first prove its address.
    pub retry_above_handshakes: usize,
    /// With this many connections between their first packet and the end of their set-up
    /// (handshakes in flight + [`App::setting_up`]), a new one is refused at once
    /// (`CONNECTION_REFUSED`, before any handshake work). In a reconnect storm this keeps
    /// what is taken on finishable within the clients' patience: work accepted beyond it
    /// would finish after the client gave up, and its next attempt would be more work.
    pub shed_above: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            retry_above_handshakes: 256,
            shed_above: usize::MAX,
        }
    }
}

/// Counters of the loop (for tests and, later, metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Loop turns.
    pub turns: u64,
    /// Datagrams received.
    pub received: u64,
    /// `sendmsg` calls (each may carry several datagrams with GSO).
    pub sends: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Sends that found the socket buffer full and waited for it (none is dropped).
    pub would_block: u64,
    /// Connection attempts refused by the cap.
    pub refused: u64,
    /// Connection attempts refused while the loop was setting up its most at once.
    pub shed: u64,
    /// Connection attempts sent a stateless retry.
    pub retried: u64,
    /// Datagrams handed to another loop of the port (their client's address changed).
    pub forwarded: u64,
}

/// Where a turn's datagrams go: the engine's UDP socket, or a test's memory.
pub trait Wire {
    /// True while the wire takes nothing more (a send waits for it to drain): connections
    /// then transmit nothing new, and their packets stay in quinn-proto, which paces and
    /// recovers.
    fn full(&self) -> bool;
    /// Most datagrams one send may carry (GSO segments; 1 without GSO).
    fn max_segments(&self) -> usize;
    /// Sends `contents` (`t.size` bytes, `t.segment_size` apart) as `t` addresses them.
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]);
}

/// Which of several loops on one port a loop is, and the rule that finds a datagram's loop.
///
/// The loops share the port with SO_REUSEPORT, so the kernel picks a loop by the client's
/// address: a connection stays where its first packet landed as long as its address does.
/// After a migration its packets may land on another loop, which hands them to the right
/// one. The right one is in the packet: the connection IDs a loop issues carry its number
/// (first byte modulo the number of loops, the rest random), and every packet but a
/// client's Initial (whose destination ID the client chose) is addressed to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// This loop's number.
    pub this: u8,
    /// How many loops share the port (`config::Config::loops`: 1–64).
    pub count: u8,
}

/// Length of the connection IDs the loops issue.
const CID_LEN: usize = 8;

impl Shards {
    /// The loop a datagram belongs to, when its packet says (`None`: this loop, e.g. a
    /// client's Initial, or something that is not QUIC).
    pub fn route(&self, datagram: &[u8]) -> Option<u8> {
        let first = *datagram.first()?;
        let cid = if first & 0x80 == 0 {
            // Short header: the destination ID follows the first byte, at our length.
            datagram.get(1..1 + CID_LEN)?
        } else {
            // Long header: version (4 bytes), then the length-prefixed destination ID.
            // An Initial (type 0) may carry the client's own choice: it stays here.
            if (first >> 4) & 0x03 == 0 {
                return None;
            }
            let len = *datagram.get(5)? as usize;
            if len != CID_LEN {
                return None;
            }
            datagram.get(6..6 + CID_LEN)?
        };
        Some(cid[0] % self.count.max(1))
    }
}

impl quinn_proto::ConnectionIdGenerator for Shards {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        let mut b = [0u8; CID_LEN];
        // Without an OS RNG TLS could not work either; the IDs still differ by the clock.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b.copy_from_slice(&(t as u64).to_le_bytes());
        }
        // The first byte, modulo the count, is this loop (uniform over the byte's values
        // that are: the largest multiple of the count below 256 bounds it).
        let n = u16::from(self.count.max(1));
        let span = (256 / n) * n;
        let r = u16::from(b[0]) % span;
        b[0] = (r - r % n + u16::from(self.this)) as u8;
        quinn_proto::ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The loop without its I/O: the endpoint, every connection, their timers and the
/// application. Time is a parameter and datagrams go to a [`Wire`], so the same turns that
/// serve a socket run in memory on a virtual clock (see `tests/sessions.rs`).
pub struct Core<A: App> {
    endpoint: quinn_proto::Endpoint,
    /// Boxed: a `quinn_proto::Connection` is ~9 KB inline, and a map of them holds up to
    /// twice as many slots as connections (measured: 6 KB per session wasted at 10,000).
    conns: HashMap<ConnectionHandle, Box<Conn>>,
    /// Connections still handshaking.
    handshakes: usize,
    limits: Limits,
    timers: BinaryHeap<Reverse<(Instant, ConnectionHandle)>>,
    dirty: HashSet<ConnectionHandle>,
    app: A,
    send_buf: Vec<u8>,
    /// Counters (the socket's own are the engine's).
    pub stats: Stats,
}

/// `config` with connection IDs that name loop `shards` of several, when given ([`Shards`]).
fn with_shards(mut config: EndpointConfig, shards: Option<Shards>) -> EndpointConfig {
    if let Some(shards) = shards {
        config.cid_generator(move || Box::new(shards));
    }
    config
}

impl<A: App> Core<A> {
    /// A server core for `server`, hosting `app`.
    pub fn new(server: Arc<ServerConfig>, app: A) -> Self {
        Self::with_endpoint(EndpointConfig::default(), server, app)
    }

    /// Loop `shard` of `shards` on one port: its connection IDs name it ([`Shards`]).
    pub fn sharded(shards: Shards, server: Arc<ServerConfig>, app: A) -> Self {
        Self::with_endpoint(with_shards(EndpointConfig::default(), Some(shards)), server, app)
    }

    /// A server core whose endpoint answers stateless resets with `reset_key` (the same
    /// across restarts and on every node: `transport::keys`), loop `shards` of several
    /// when given.
    pub fn with_reset_key(
        reset_key: Arc<dyn quinn_proto::crypto::HmacKey>,
        shards: Option<Shards>,
        server: Arc<ServerConfig>,
        app: A,
    ) -> Self {
        let mut config = EndpointConfig::new(reset_key);
        // quinn sends at most one stateless reset per 20 ms by default: after a restart
        // 10,000 clients' next packets would be answered 50 a second, and the rest wait
        // for their next heartbeat (measured: 200 clients took up to 14 s instead of one
        // 10 s heartbeat). A reset is always smaller than the packet that incited it (no
        // amplification, no reset loop: RFC 9000 §10.3.3), so the limit only bounds cost:
        // 10,000 a second per loop, a few µs each.
        config.min_reset_interval(Duration::from_micros(100));
        Self::with_endpoint(with_shards(config, shards), server, app)
    }

    /// A client core: it accepts nothing and connects out with [`Conns::connect`] (the load
    /// generator's sessions, bench/src/swarm.rs).
    pub fn client(app: A) -> Self {
        Self::with_endpoint(EndpointConfig::default(), None, app)
    }

    fn with_endpoint(mut config: EndpointConfig, server: impl Into<Option<Arc<ServerConfig>>>, app: A) -> Self {
        // Peers must keep QUIC's fixed bit set (RFC 9287 greasing not offered), so a first
        // byte with it clear is never QUIC: what shares the port (WebRTC, RFC 9443) is told
        // apart by it ([`Engine::set_foreign`]).
        config.grease_quic_bit(false);
        Self {
            endpoint: quinn_proto::Endpoint::new(Arc::new(config), server.into(), true, None),
            conns: HashMap::new(),
            handshakes: 0,
            limits: Limits::default(),
            timers: BinaryHeap::new(),
            dirty: HashSet::new(),
            app,
            send_buf: Vec::with_capacity(64 * 1024),
            stats: Stats::default(),
        }
    }

    /// Sets the admission limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The application.
    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }

    /// Connections alive.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether some connection has more to do at once (it hit its per-turn bound).
    pub fn busy(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The earliest instant a connection's or the application's timer wants a turn.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.timers.peek().map(|Reverse((t, _))| *t), self.app.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands `cmd` to the application at `now` (what it writes leaves with the next
    /// [`Core::finish_turn`]).
    pub fn command(&mut self, cmd: A::Command, now: Instant) {
        let mut conns = Conns {
            endpoint: &mut self.endpoint,
            map: &mut self.conns,
            dirty: &mut self.dirty,
            now,
        };
        self.app.on_command(cmd, &mut conns);
    }

    /// One datagram from `addr`, at `now`: to its connection, or a new one (admitted,
    /// retried or refused); the endpoint's own answers go to `wire` at once.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        dst_ip: Option<std::net::IpAddr>,
        ecn: Option<quinn_proto::EcnCodepoint>,
        data: BytesMut,
        wire: &mut impl Wire,
    ) {
        self.stats.received += 1;
        let mut out = Vec::new();
        match self.endpoint.handle(now, addr, dst_ip, ecn, data, &mut out) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(ev);
                    self.dirty.insert(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) if self.conns.len() >= self.limits.max_connections => {
                self.stats.refused += 1;
                self.app.on_admission(Admission::Refused);
                let t = self.endpoint.refuse(incoming, &mut out);
                wire.send(&t, &out[..t.size]);
            }
            Some(DatagramEvent::NewConnection(incoming))
                if self.handshakes.saturating_add(self.app.setting_up()) >= self.limits.shed_above =>
            {
                self.stats.shed += 1;
                self.app.on_admission(Admission::Shed);
                let t = self.endpoint.refuse(incoming, &mut out);
                wire.send(&t, &out[..t.size]);
            }
            Some(DatagramEvent::NewConnection(incoming))
                if !incoming.remote_address_validated() && self.handshakes >= self.limits.retry_above_handshakes =>
            {
                // `may_retry` holds whenever the address is not validated.
                match self.endpoint.retry(incoming, &mut out) {
                    Ok(t) => {
                        self.stats.retried += 1;
                        self.app.on_admission(Admission::Retried);
                        wire.send(&t, &out[..t.size]);
                    }
                    Err(e) => self.endpoint.ignore(e.into_incoming()),
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => match self.endpoint.accept(incoming, now, &mut out, None) {
                Ok((ch, conn)) => {
                    self.stats.accepted += 1;
                    self.handshakes += 1;
                    self.app.on_handshakes(self.handshakes);
                    self.conns.insert(
                        ch,
                        Box::new(Conn {
                            conn,
                            timer: None,
                            armed: None,
                            handshaking: true,
                            lost: false,
                        }),
                    );
                    self.dirty.insert(ch);
                }
                Err(e) => {
                    if let Some(t) = e.response {
                        wire.send(&t, &out[..t.size]);
                    }
                }
            },
            Some(DatagramEvent::Response(t)) => wire.send(&t, &out[..t.size]),
            None => {}
        }
    }

    /// The rest of a turn at `now`, after what was received: due timers, the application's
    /// own, then every dirty connection — its events to the application, its packets
    /// (bounded per turn) to `wire`, its next timer.
    pub fn finish_turn(&mut self, now: Instant, wire: &mut impl Wire) {
        self.stats.turns += 1;
        while let Some(Reverse((t, ch))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&ch) else { continue };
            if c.armed == Some(t) {
                c.armed = None;
            }
            match c.timer {
                Some(due) if due <= now => {
                    c.timer = None;
                    c.conn.handle_timeout(now);
                    self.dirty.insert(ch);
                }
                // The timer moved later since this entry was queued: queue it again.
                Some(due) if c.armed.is_none() => {
                    c.armed = Some(due);
                    self.timers.push(Reverse((due, ch)));
                }
                _ => {}
            }
        }
        if self.app.next_timeout().is_some_and(|t| t <= now) {
            let mut conns = Conns {
                endpoint: &mut self.endpoint,
                map: &mut self.conns,
                dirty: &mut self.dirty,
                now,
            };
            self.app.on_timeout(now, &mut conns);
        }
        let dirty: Vec<ConnectionHandle> = self.dirty.drain().collect();
        for ch in dirty {
            self.drive(ch, now, wire);
        }
    }

    /// Closes every connection with `code` and sends the closes (e.g. at shutdown).
    pub fn close_all(&mut self, code: u32, reason: &[u8], now: Instant, wire: &mut impl Wire) {
        for (ch, c) in self.conns.iter_mut() {
            c.conn
                .close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
            self.dirty.insert(*ch);
        }
        self.finish_turn(now, wire);
    }

    /// Everything a connection has to do now: endpoint bookkeeping, the application's
    /// reactions to its events, its packets (bounded), its next timer.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant, wire: &mut impl Wire) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        loop {
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            let Some(ev) = c.conn.poll() else { break };
            let app_event = match ev {
                Event::Connected => AppEvent::Connected,
                Event::ConnectionLost { reason } => {
                    c.lost = true;
                    AppEvent::Lost(reason)
                }
                Event::Stream(StreamEvent::Opened { .. }) => AppEvent::StreamOpened,
                Event::Stream(StreamEvent::Readable { id }) => AppEvent::Readable(id),
                Event::Stream(StreamEvent::Writable { id }) => AppEvent::Writable(id),
                Event::Stream(StreamEvent::Stopped { id, .. }) => AppEvent::Stopped(id),
                Event::DatagramReceived => AppEvent::Datagrams,
                _ => continue,
            };
            let mut io = Io { conn: &mut c.conn, now };
            self.app.on_event(ch, app_event, &mut io);
        }
        let max_gso = wire.max_segments().max(1);
        let mut sent = 0;
        while sent < MAX_DATAGRAMS_PER_TURN && !wire.full() {
            self.send_buf.clear();
            let Some(t) = c
                .conn
                .poll_transmit(now, max_gso.min(MAX_DATAGRAMS_PER_TURN - sent), &mut self.send_buf)
            else {
                break;
            };
            sent += t.size.div_ceil(t.segment_size.unwrap_or(t.size).max(1));
            wire.send(&t, &self.send_buf[..t.size]);
        }
        if sent >= MAX_DATAGRAMS_PER_TURN || wire.full() {
            // More to send: next turn, after the other connections had theirs.
            self.dirty.insert(ch);
        }
        if c.handshaking && (!c.conn.is_handshaking() || c.conn.is_drained()) {
            c.handshaking = false;
            self.handshakes -= 1;
            self.app.on_handshakes(self.handshakes);
        }
        if c.conn.is_drained() {
            // quinn-proto reports no loss for a connection closed on our side: the
            // application still hears of its end exactly once (it held a session's state and
            // counted it for the drain — a Chromium page that ended its WebTransport session
            // left both behind for the life of the process).
            if !c.lost {
                c.lost = true;
                let mut io = Io { conn: &mut c.conn, now };
                self.app
                    .on_event(ch, AppEvent::Lost(quinn_proto::ConnectionError::LocallyClosed), &mut io);
            }
            self.conns.remove(&ch);
            return;
        }
        // A timer that moves later (every packet pushes the idle timer on) keeps the entry
        // already queued: it is re-queued for the new instant when it comes up. Only an
        // earlier timer is queued now — one heap push per delivery instead of one per change.
        c.timer = c.conn.poll_timeout();
        if let Some(t) = c.timer
            && c.armed.is_none_or(|a| t < a)
        {
            c.armed = Some(t);
            self.timers.push(Reverse((t, ch)));
        }
    }
}

/// A datagram (or GSO batch) that found the socket full, kept until it is writable.
struct Held {
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
    contents: Vec<u8>,
}

/// The engine's UDP socket as a [`Wire`]: sends at once, or holds what finds the socket
/// full, oldest first, until it drains (none is dropped). A full send buffer does not
/// happen on loopback (the kernel frees a datagram's send accounting as it hands it to the
/// receiver), so the tests do not reach this path; on a real interface a burst can fill the
/// queue, and dropping there would cost a retransmission round trip per datagram.
struct Socket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    held: std::collections::VecDeque<Held>,
    /// `sendmsg` calls.
    sends: u64,
    /// Sends that found the socket full.
    would_block: u64,
}

impl Socket {
    fn try_send(&self, transmit: &quinn_udp::Transmit<'_>) -> bool {
        !matches!(
            self.socket
                .try_io(Interest::WRITABLE, || self.state.try_send((&self.socket).into(), transmit)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends what was held, oldest first, until the socket is full again.
    fn flush_held(&mut self) {
        while let Some(h) = self.held.front() {
            let transmit = quinn_udp::Transmit {
                destination: h.destination,
                ecn: h.ecn,
                contents: &h.contents,
                segment_size: h.segment_size,
                src_ip: h.src_ip,
            };
            if !self.try_send(&transmit) {
                return;
            }
            self.sends += 1;
            self.held.pop_front();
        }
    }
}

impl Wire for Socket {
    fn full(&self) -> bool {
        !self.held.is_empty()
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Other errors than a full socket (an unreachable destination, say) drop the
    /// datagram: QUIC recovers.
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) {
        let ecn = t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8));
        if self.held.is_empty() {
            let transmit = quinn_udp::Transmit {
                destination: t.destination,
                ecn,
                contents,
                segment_size: t.segment_size,
                src_ip: t.src_ip,
            };
            if self.try_send(&transmit) {
                self.sends += 1;
                return;
            }
        }
        self.would_block += 1;
        self.held.push_back(Held {
            destination: t.destination,
            ecn,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
            contents: contents.to_vec(),
        });
    }
}

struct Conn {
    conn: quinn_proto::Connection,
    /// Still in its handshake (counted in `Core::handshakes`).
    handshaking: bool,
    /// The timer this connection last asked for.
    timer: Option<Instant>,
    /// Its earliest entry in the timer heap, at or before `timer` whenever both are set
    /// (entries for other instants are stale, or early: an early one re-queues `timer`).
    armed: Option<Instant>,
    /// [`AppEvent::Lost`] was delivered for it.
    lost: bool,
}

/// The socket buffers the engine asks for, each way. One socket carries every connection of
/// its loop, so a fan-out's burst of ACKs (a thousand sessions answer within a millisecond)
/// or a client loop's burst of events lands in one receive buffer; at Linux's default
/// (208 KiB, about 150 datagrams of a 1,500-byte MTU as the kernel counts them) such a
/// burst overflows it while the loop is busy sending, and every dropped ACK costs a
/// retransmission of data that had arrived. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max` ([`SocketBuffers`] says what was granted).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The buffers a socket of [`bind`] got (Linux reports twice what is usable, its own
/// bookkeeping included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer, bytes.
    pub recv: usize,
    /// Send buffer, bytes.
    pub send: usize,
}

impl SocketBuffers {
    /// Whether the kernel granted less than [`SOCKET_BUFFER`] (raise `net.core.rmem_max`
    /// and `wmem_max` to get it).
    pub fn short(&self) -> bool {
        let usable = |reported: usize| {
            if cfg!(target_os = "linux") {
                reported / 2
            } else {
                reported
            }
        };
        usable(self.recv) < SOCKET_BUFFER || usable(self.send) < SOCKET_BUFFER
    }

    /// What `socket` has.
    pub fn of(socket: &std::net::UdpSocket) -> std::io::Result<Self> {
        let s = socket2::SockRef::from(socket);
        Ok(Self {
            recv: s.recv_buffer_size()?,
            send: s.send_buffer_size()?,
        })
    }
}

/// Binds the engine's port for `loops` loops: one socket, or one SO_REUSEPORT socket per
/// loop, all on the address the first one got; each asks for [`SOCKET_BUFFER`] both ways.
pub fn bind(listen: std::net::SocketAddr, loops: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(loops.max(1));
    for _ in 0..loops.max(1) {
        let addr = sockets.first().map_or(Ok(listen), |s| s.local_addr())?;
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if loops > 1 {
            s.set_reuse_port(true)?;
        }
        // Refused or capped by the kernel: the socket works with what it has.
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        s.bind(&addr.into())?;
        sockets.push(s.into());
    }
    Ok(sockets)
}

/// A datagram one loop received for another ([`Shards`]).
#[derive(Debug)]
pub struct Forwarded {
    addr: SocketAddr,
    dst_ip: Option<std::net::IpAddr>,
    ecn: Option<quinn_proto::EcnCodepoint>,
    data: BytesMut,
}

/// A loop's place among the loops of one port: its number, the way to the others, and
/// its own queue of what they hand it.
pub struct Sharding {
    /// This loop among them.
    pub shards: Shards,
    /// Every loop's queue, by number (this loop's own included, unused).
    pub peers: Vec<mailbox::Sender<Forwarded>>,
    /// This loop's queue.
    pub inbox: mailbox::Receiver<Forwarded>,
}

impl Sharding {
    /// The places of `count` loops on one port, loop 0 first; none for a single loop.
    pub fn for_loops(count: u8) -> Vec<Sharding> {
        if count <= 1 {
            return Vec::new();
        }
        let (peers, inboxes): (Vec<_>, Vec<_>) = (0..count).map(|_| mailbox::channel()).unzip();
        inboxes
            .into_iter()
            .zip(0..count)
            .map(|(inbox, this)| Sharding {
                shards: Shards { this, count },
                peers: peers.clone(),
                inbox,
            })
            .collect()
    }
}

/// What takes the datagrams of the port that are not QUIC ([`Engine::set_foreign`]).
type Foreign = dyn FnMut(SocketAddr, Option<std::net::IpAddr>, &[u8]) + Send;

/// The event loop: a [`Core`] on a UDP socket, with the queue other threads send commands
/// through.
pub struct Engine<A: App> {
    core: Core<A>,
    /// When several loops share the port.
    sharding: Option<Sharding>,
    /// Datagrams taken from `sharding.inbox` (reused between turns).
    handed: Vec<Forwarded>,
    socket: Socket,
    recv_buf: Vec<u8>,
    commands: mailbox::Receiver<A::Command>,
    command_tx: mailbox::Sender<A::Command>,
    /// Commands taken from the queue and not yet handled (reused between turns).
    inbox: Vec<A::Command>,
    /// The runtime the application's own tasks go to (`tokio::spawn` in its callbacks), when
    /// the loop runs on a thread of its own ([`Engine::spawn_app_tasks_on`]).
    app_runtime: Option<tokio::runtime::Handle>,
    /// Where datagrams that are not QUIC go ([`Engine::set_foreign`]).
    foreign: Option<Box<Foreign>>,
}

impl<A: App> Engine<A> {
    /// An engine serving `server` on `socket` (a bound, non-blocking tokio socket).
    pub fn new(socket: UdpSocket, server: Arc<ServerConfig>, app: A) -> std::io::Result<Self> {
        Self::build(socket, Core::new(server, app), None)
    }

    /// Loop `sharding.shards.this` of several on one port (each with its own
    /// SO_REUSEPORT socket bound to it): connections it accepts get IDs naming it, and
    /// datagrams for another loop (after a client's address changed) go to that loop.
    pub fn sharded(socket: UdpSocket, server: Arc<ServerConfig>, app: A, sharding: Sharding) -> std::io::Result<Self> {
        let core = Core::sharded(sharding.shards, server, app);
        Self::build(socket, core, Some(sharding))
    }

    /// A client engine on `socket` (bound to any local port): the application connects out
    /// from its commands and timers ([`Conns::connect`]).
    pub fn client(socket: UdpSocket, app: A) -> std::io::Result<Self> {
        Self::build(socket, Core::client(app), None)
    }

    /// An engine turning `core` on `socket`, one loop of several when `sharding` is given
    /// (its core made with the same [`Shards`]).
    pub fn build(socket: UdpSocket, core: Core<A>, sharding: Option<Sharding>) -> std::io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let stride = state.gro_segments() * 1500;
        let (command_tx, commands) = mailbox::channel();
        Ok(Self {
            core,
            sharding,
            handed: Vec::new(),
            socket: Socket {
                socket,
                state,
                held: std::collections::VecDeque::new(),
                sends: 0,
                would_block: 0,
            },
            recv_buf: vec![0; RECV_BATCH * stride.max(1500)],
            commands,
            command_tx,
            inbox: Vec::new(),
            app_runtime: None,
            foreign: None,
        })
    }

    /// The address the engine listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.socket.local_addr()
    }

    /// Sets the admission limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.core.set_limits(limits);
    }

    /// Where other threads send the application commands (one queue per loop, not per
    /// connection).
    pub fn sender(&self) -> mailbox::Sender<A::Command> {
        self.command_tx.clone()
    }

    /// Makes `tokio::spawn` in the application's callbacks spawn on `runtime`. For a loop on
    /// its own thread and runtime: what the application starts (store reads, requests) then
    /// runs on the main runtime's workers, and the loop's thread only turns.
    pub fn spawn_app_tasks_on(&mut self, runtime: tokio::runtime::Handle) {
        self.app_runtime = Some(runtime);
    }

    /// The application.
    pub fn app(&mut self) -> &mut A {
        self.core.app()
    }

    /// Hands every received datagram whose first byte has QUIC's fixed bit (0x40) clear —
    /// STUN (0–3), DTLS (20–63), RTP/RTCP (128–191): RFC 9443's ranges — to `to`, with its
    /// source, instead of the endpoint (which would drop it). For WebRTC on the QUIC port.
    pub fn set_foreign(&mut self, to: impl FnMut(SocketAddr, Option<std::net::IpAddr>, &[u8]) + Send + 'static) {
        self.foreign = Some(Box::new(to));
    }

    /// Connections alive.
    pub fn connections(&self) -> usize {
        self.core.connections()
    }

    /// The loop's counters.
    pub fn stats(&self) -> Stats {
        Stats {
            sends: self.socket.sends,
            would_block: self.socket.would_block,
            ..self.core.stats
        }
    }

    /// Runs turns until `stop` resolves.
    pub async fn run(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            if self.core.busy() && !self.socket.full() {
                // Connections that hit their per-turn bound go on at once, after letting
                // the rest of the runtime in.
                tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    _ = tokio::task::yield_now() => {}
                }
                self.turn(Instant::now());
                continue;
            }
            let next = self.core.next_timeout();
            let held = self.socket.full();
            tokio::select! {
                biased;
                _ = &mut stop => return,
                r = self.socket.socket.readable() => if r.is_err() { return },
                r = self.socket.socket.writable(), if held => if r.is_err() { return },
                _ = async { match &self.sharding {
                    Some(s) => s.inbox.ready().await,
                    None => std::future::pending().await,
                } } => {
                    let now = Instant::now();
                    let mut handed = std::mem::take(&mut self.handed);
                    if let Some(s) = &self.sharding {
                        s.inbox.take(&mut handed);
                    }
                    for d in handed.drain(..) {
                        self.core.handle_datagram(now, d.addr, d.dst_ip, d.ecn, d.data, &mut self.socket);
                    }
                    self.handed = handed;
                }
                _ = self.commands.ready() => {
                    // Everything queued, in one pass: a fan-out's writes to many
                    // connections all leave in this turn's transmit pass.
                    let app_runtime = self.app_runtime.clone();
                    let _app = app_runtime.as_ref().map(|r| r.enter());
                    let now = Instant::now();
                    let mut inbox = std::mem::take(&mut self.inbox);
                    self.commands.take(&mut inbox);
                    for cmd in inbox.drain(..) {
                        self.core.command(cmd, now);
                    }
                    self.inbox = inbox;
                }
                _ = async { match next {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                } } => {}
            }
            self.turn(Instant::now());
        }
    }

    /// One turn at `now`: receive what is waiting, fire due timers, react, transmit.
    pub fn turn(&mut self, now: Instant) {
        let app_runtime = self.app_runtime.clone();
        let _app = app_runtime.as_ref().map(|r| r.enter());
        self.socket.flush_held();
        self.receive(now);
        self.core.finish_turn(now, &mut self.socket);
    }

    /// Closes every connection with `code` and sends the closes (e.g. at shutdown).
    pub fn close_all(&mut self, code: u32, reason: &[u8]) {
        let app_runtime = self.app_runtime.clone();
        let _app = app_runtime.as_ref().map(|r| r.enter());
        self.core.close_all(code, reason, Instant::now(), &mut self.socket);
    }

    fn receive(&mut self, now: Instant) {
        let stride = self.recv_buf.len() / RECV_BATCH;
        loop {
            let mut meta = [quinn_udp::RecvMeta::default(); RECV_BATCH];
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> = self.recv_buf.chunks_mut(stride).map(IoSliceMut::new).collect();
                let (socket, state) = (&self.socket.socket, &self.socket.state);
                match socket.try_io(Interest::READABLE, || state.recv(socket.into(), &mut slices, &mut meta)) {
                    Ok(n) => n,
                    Err(_) => return, // WouldBlock (nothing more now) or a transient error
                }
            };
            for (i, m) in meta.iter().enumerate().take(n) {
                let buf = &self.recv_buf[i * stride..i * stride + m.len];
                for d in buf.chunks(m.stride.max(1)) {
                    if let Some(to) = &mut self.foreign
                        && d.first().is_some_and(|b| b & 0x40 == 0)
                    {
                        to(m.addr, m.dst_ip, d);
                        continue;
                    }
                    let ecn = m.ecn.and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                    if let Some(s) = &self.sharding
                        && let Some(k) = s.shards.route(d)
                        && k != s.shards.this
                    {
                        // Another loop's connection, at a new address: hand it over.
                        self.core.stats.forwarded += 1;
                        if let Some(peer) = s.peers.get(usize::from(k)) {
                            let _ = peer.send(Forwarded {
                                addr: m.addr,
                                dst_ip: m.dst_ip,
                                ecn,
                                data: BytesMut::from(d),
                            });
                        }
                        continue;
                    }
                    self.core
                        .handle_datagram(now, m.addr, m.dst_ip, ecn, BytesMut::from(d), &mut self.socket);
                }
            }
        }
    }
}

/// A server config for the engine from a rustls config (TLS 1.3, the ALPNs set by the
/// caller), with the given idle timeout.
pub fn server_config(tls: rustls::ServerConfig, idle: Duration) -> anyhow::Result<Arc<ServerConfig>> {
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into()?));
    transport.max_concurrent_bidi_streams(32u32.into());
    transport.max_concurrent_uni_streams(8u32.into());
    server.transport_config(Arc::new(transport));
    Ok(Arc::new(server))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::ConnectionIdGenerator;

    #[test]
    fn a_loops_connection_ids_route_to_it() {
        for count in [2u8, 3, 7] {
            for this in 0..count {
                let mut g = Shards { this, count };
                for _ in 0..200 {
                    let cid = g.generate_cid();
                    assert_eq!(cid.len(), CID_LEN);
                    // A short-header packet to it, and a Handshake (long header, type 2).
                    let mut short = vec![0x40];
                    short.extend_from_slice(&cid);
                    short.extend_from_slice(&[0; 20]);
                    assert_eq!(g.route(&short), Some(this), "count {count}");
                    let mut long = vec![0xe0, 0, 0, 0, 1, CID_LEN as u8];
                    long.extend_from_slice(&cid);
                    long.extend_from_slice(&[0; 20]);
                    assert_eq!(g.route(&long), Some(this));
                }
            }
        }
    }

    #[test]
    fn initials_and_garbage_stay_where_they_land() {
        let g = Shards { this: 1, count: 2 };
        // A client's Initial (long header, type 0) with its own destination ID.
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[0x00; 8]);
        assert_eq!(g.route(&initial), None);
        // Another ID length than ours, truncated packets, nothing.
        assert_eq!(g.route(&[0xe0, 0, 0, 0, 1, 4, 1, 2, 3, 4]), None);
        assert_eq!(g.route(&[0x40, 1, 2]), None);
        assert_eq!(g.route(&[0xe0, 0, 0]), None);
        assert_eq!(g.route(&[]), None);
    }

    #[test]
    fn connection_ids_stay_random_past_the_loop_number() {
        let mut g = Shards { this: 1, count: 2 };
        let ids: HashSet<Vec<u8>> = (0..1000).map(|_| g.generate_cid().to_vec()).collect();
        assert_eq!(ids.len(), 1000, "no repeats");
        // The first byte carries the loop in its low bit and 7 random bits above it.
        let firsts: HashSet<u8> = ids.iter().map(|c| c[0] >> 1).collect();
        assert!(firsts.len() > 100, "{}", firsts.len());
    }
}
