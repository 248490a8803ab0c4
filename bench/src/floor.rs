//! `transport --serve floor`: the floor the engine is measured against (issue 28, item 1).
//! The same fan-out as the engine's side of `transport` — one record at a time written into
//! one stream of every connection — on a bare loop over quinn-proto and quinn-udp, on one
//! thread: mio readiness (epoll) for the socket, batched receives (recvmmsg, GRO), one timer
//! heap, the records written straight into each stream in the loop. No tokio, no mailbox,
//! no application trait, no Quaver code. Whatever the engine costs above this per delivered
//! record is the engine's own; what this costs is quinn-proto's, quinn-udp's and the
//! kernel's. Same transport settings as the engine's `server_config` (30 s idle, 32 + 8
//! streams), same socket buffers (4 MiB).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, StreamEvent, StreamId};

use crate::transport::{Params, record};

struct Conn {
    conn: quinn_proto::Connection,
    /// The client's stream (the records go into it).
    stream: Option<StreamId>,
    /// The timer this connection last asked for (heap entries for other instants are stale).
    timer: Option<Instant>,
}

/// The socket and what sending through it counted.
struct Wire {
    socket: std::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// Sends that found the socket full (dropped: QUIC recovers; none on loopback).
    would_block: u64,
}

impl Wire {
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        if self.state.try_send((&self.socket).into(), &transmit).is_err() {
            self.would_block += 1;
        }
    }
}

/// The loop's state.
struct Floor {
    endpoint: quinn_proto::Endpoint,
    conns: HashMap<ConnectionHandle, Conn>,
    timers: BinaryHeap<Reverse<(Instant, ConnectionHandle)>>,
    dirty: Vec<ConnectionHandle>,
    wire: Wire,
    send_buf: Vec<u8>,
    registered: usize,
}

impl Floor {
    fn datagram(&mut self, now: Instant, m: &quinn_udp::RecvMeta, data: &[u8]) {
        let ecn = m.ecn.and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        let mut out = Vec::new();
        match self
            .endpoint
            .handle(now, m.addr, m.dst_ip, ecn, BytesMut::from(data), &mut out)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(ev);
                    self.dirty.push(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => match self.endpoint.accept(incoming, now, &mut out, None) {
                Ok((ch, conn)) => {
                    self.conns.insert(
                        ch,
                        Conn {
                            conn,
                            stream: None,
                            timer: None,
                        },
                    );
                    self.dirty.push(ch);
                }
                Err(e) => {
                    if let Some(t) = e.response {
                        self.wire.send(&t, &out[..t.size]);
                    }
                }
            },
            Some(DatagramEvent::Response(t)) => self.wire.send(&t, &out[..t.size]),
            None => {}
        }
    }

    /// A connection's events, packets and next timer.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        loop {
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            let Some(ev) = c.conn.poll() else { break };
            match ev {
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = c.conn.streams().accept(Dir::Bi) {
                        drain(&mut c.conn, id);
                        if c.stream.is_none() {
                            self.registered += 1;
                        }
                        c.stream = Some(id);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => drain(&mut c.conn, id),
                _ => {}
            }
        }
        let max = self.wire.state.max_gso_segments().max(1);
        loop {
            self.send_buf.clear();
            let Some(t) = c.conn.poll_transmit(now, max, &mut self.send_buf) else {
                break;
            };
            self.wire.send(&t, &self.send_buf[..t.size]);
        }
        if c.conn.is_drained() {
            self.conns.remove(&ch);
            return;
        }
        let next = c.conn.poll_timeout();
        if next != c.timer {
            c.timer = next;
            if let Some(t) = next {
                self.timers.push(Reverse((t, ch)));
            }
        }
    }

    fn finish_turn(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for ch in dirty.drain(..) {
            self.drive(ch, now);
        }
        // Keep the allocation for the next turn.
        self.dirty = dirty;
    }
}

/// Reads (and drops) what a stream has.
fn drain(conn: &mut quinn_proto::Connection, id: StreamId) {
    let mut recv = conn.recv_stream(id);
    if let Ok(mut chunks) = recv.read(true) {
        while let Ok(Some(_)) = chunks.next(usize::MAX) {}
        let _ = chunks.finalize();
    }
}

/// The server: prints `addr=`, then `start` once every connection opened its stream, then
/// `end …` after the last record — the protocol of `transport::serve`.
pub(crate) fn run(tls: rustls::ServerConfig, p: Params) -> anyhow::Result<()> {
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    transport.max_concurrent_bidi_streams(32u32.into());
    transport.max_concurrent_uni_streams(8u32.into());
    server.transport_config(Arc::new(transport));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    {
        let s = socket2::SockRef::from(&socket);
        s.set_recv_buffer_size(4 << 20)?;
        s.set_send_buffer_size(4 << 20)?;
    }
    let state = quinn_udp::UdpSocketState::new((&socket).into())?;
    println!("addr={}", socket.local_addr()?);
    let mut poll = mio::Poll::new()?;
    let fd = socket.as_raw_fd();
    poll.registry()
        .register(&mut mio::unix::SourceFd(&fd), mio::Token(0), mio::Interest::READABLE)?;
    let mut events = mio::Events::with_capacity(4);
    let mut f = Floor {
        endpoint: quinn_proto::Endpoint::new(Arc::new(EndpointConfig::default()), Some(Arc::new(server)), true, None),
        conns: HashMap::new(),
        timers: BinaryHeap::new(),
        dirty: Vec::new(),
        wire: Wire {
            socket,
            state,
            would_block: 0,
        },
        send_buf: Vec::new(),
        registered: 0,
    };
    let batch = quinn_udp::BATCH_SIZE;
    let stride = 64 * 1024;
    let mut recv_buf = vec![0u8; batch * stride];
    let total = (p.rate * p.seconds).round() as u32;
    let every = Duration::from_secs_f64(1.0 / p.rate);
    let connect_by = Instant::now() + Duration::from_secs(120);
    let (mut next_record, mut seq) = (None::<Instant>, 0u32);
    let (mut end_at, mut quit_at) = (None::<Instant>, None::<Instant>);
    let mut acks = 0u64;
    loop {
        let now = Instant::now();
        while let Some(&Reverse((t, ch))) = f.timers.peek() {
            if t > now {
                break;
            }
            f.timers.pop();
            if let Some(c) = f.conns.get_mut(&ch)
                && c.timer == Some(t)
            {
                c.timer = None;
                c.conn.handle_timeout(now);
                f.dirty.push(ch);
            }
        }
        if let Some(due) = next_record
            && now >= due
        {
            if seq + 1 == total {
                // The ACK frames received, while every connection is up.
                acks = f.conns.values().map(|c| c.conn.stats().frame_rx.acks).sum();
            }
            let r = record(seq, p.bytes);
            for (ch, c) in f.conns.iter_mut() {
                if let Some(id) = c.stream {
                    let _ = c.conn.send_stream(id).write(&r);
                    f.dirty.push(*ch);
                }
            }
            seq += 1;
            next_record = (seq < total).then(|| due + every);
            if seq == total {
                end_at = Some(now + Duration::from_millis(200));
            }
        }
        f.finish_turn(now);
        if next_record.is_none() && seq == 0 && f.registered >= p.connections {
            println!("start");
            next_record = Some(Instant::now());
        }
        anyhow::ensure!(
            seq > 0 || next_record.is_some() || now < connect_by,
            "clients did not all connect"
        );
        if end_at.is_some_and(|t| now >= t) {
            end_at = None;
            println!("end short_writes=0 acks={acks} would_block={}", f.wire.would_block);
            quit_at = Some(now + Duration::from_secs(2));
        }
        if quit_at.is_some_and(|t| now >= t) {
            return Ok(());
        }
        let wake = [f.timers.peek().map(|r| r.0.0), next_record, end_at, quit_at]
            .into_iter()
            .flatten()
            .min();
        let timeout = wake.map(|w| w.saturating_duration_since(Instant::now()));
        if timeout != Some(Duration::ZERO) {
            poll.poll(&mut events, timeout.or(Some(Duration::from_millis(100))))?;
        }
        let now = Instant::now();
        loop {
            let mut meta = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
            let n = {
                let mut slices: Vec<IoSliceMut<'_>> = recv_buf.chunks_mut(stride).map(IoSliceMut::new).collect();
                match f.wire.state.recv((&f.wire.socket).into(), &mut slices, &mut meta) {
                    Ok(n) => n,
                    Err(_) => break, // WouldBlock: nothing more now
                }
            };
            for (i, m) in meta.iter().enumerate().take(n) {
                let buf = &recv_buf[i * stride..i * stride + m.len];
                for d in buf.chunks(m.stride.max(1)) {
                    f.datagram(now, m, d);
                }
            }
        }
    }
}
