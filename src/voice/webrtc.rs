//! WebRTC participants in voice channels (issue 14): a session joins with an SDP offer on
//! its voice lane (`JoinVoiceWebRtc`); the answer names one ICE-lite host candidate, the
//! node's WebRTC UDP port (`--webrtc-listen`). Each participant is a `quaver_rtc::Peer`
//! owned by one task that also owns the port's socket — no lock on the media path, like the
//! engine — and is joined to the channel's SFU through a [`VoicePort`] of its own:
//!
//! - its microphone's frames (Opus RTP with the RFC 6464 level) become uplink datagrams
//!   handed to [`Voice::datagram`], so top-N selection, speaking, mute and deafen treat it
//!   like a datagram participant;
//! - what the SFU forwards to it (downlink datagrams, the speaker's slot in the header)
//!   goes out on one of the peer's receiving tracks: a speaker keeps its track while it is
//!   forwarded, a new speaker takes a free track or the one idle longest ([`Tracks`]), and
//!   the track's timestamps stay continuous across the change (`quaver_rtc::Peer::send`).
//!
//! The port is its own (`--webrtc-listen`) or the QUIC port itself (`--webrtc-shared-port`,
//! RFC 9443): then the engine's loops hand this task every datagram whose first byte is not
//! QUIC's ([`engine::Engine::set_foreign`](crate::engine::Engine::set_foreign)) and the task
//! sends through a duplicate of the port's socket, so ICE, DTLS and SRTP share QUIC's one
//! UDP port and its firewall rule.
//!
//! A peer ends with its signalling session ([`WebRtc::session_ended`]), with `LeaveVoice`
//! or a later join, or when ICE gives up on it (no binding request for 15 s); its user then
//! leaves the channel.
//! On loss nothing is repaired (no NACK, no RED): a lost frame is a gap the browser's
//! jitter buffer conceals, as with datagrams.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::datagram::{AudioLevel, Downlink, FLAG_TALKSPURT_START, Uplink};
use quaver_proto::{ErrorBody, ErrorCode, EventBody, SessionId, VoiceDownlinkStats};
use quaver_rtc::{Frame, Output, Peer};
use tokio::sync::mpsc;

use super::{DatagramSink, Voice, VoicePort};
use crate::gateway::SessionHandle;

/// Commands and downlink frames waiting for the WebRTC task before new ones are dropped.
const QUEUE: usize = 8192;

/// Counters of the WebRTC port, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebRtcMetrics {
    /// Peers alive (answered, not yet gone).
    pub peers: AtomicU64,
    /// RTP packets received from the peers' microphones.
    pub uplink_packets: AtomicU64,
    /// RTP packets sent on the peers' forwarding tracks.
    pub downlink_packets: AtomicU64,
    /// Of those, lost as the peers' RTCP receiver reports say.
    pub downlink_lost: AtomicU64,
    /// RTP packets refused before the WebRTC stack saw them (not a microphone's payload
    /// type or announced SSRC: corrupted or spoofed copies).
    pub uplink_refused: AtomicU64,
}

impl WebRtcMetrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        format!(
            "# TYPE quaver_webrtc_peers gauge\nquaver_webrtc_peers {}\n\
             # TYPE quaver_webrtc_uplink_packets_total counter\nquaver_webrtc_uplink_packets_total {}\n\
             # TYPE quaver_webrtc_downlink_packets_total counter\nquaver_webrtc_downlink_packets_total {}\n\
             # HELP quaver_webrtc_downlink_lost_total Packets to WebRTC peers lost on the way (their RTCP receiver reports).\n\
             # TYPE quaver_webrtc_downlink_lost_total counter\nquaver_webrtc_downlink_lost_total {}\n\
             # HELP quaver_webrtc_uplink_refused_total RTP packets refused before the WebRTC stack saw them (not a microphone's payload type or announced SSRC).\n\
             # TYPE quaver_webrtc_uplink_refused_total counter\nquaver_webrtc_uplink_refused_total {}\n",
            self.peers.load(Relaxed),
            self.uplink_packets.load(Relaxed),
            self.downlink_packets.load(Relaxed),
            self.downlink_lost.load(Relaxed),
            self.uplink_refused.load(Relaxed),
        )
    }

    /// Adds what `now` counts beyond `before` (a peer's counters only grow).
    fn add(&self, before: &quaver_rtc::Stats, now: &quaver_rtc::Stats) {
        self.uplink_packets
            .fetch_add(now.uplink_packets.saturating_sub(before.uplink_packets), Relaxed);
        self.downlink_packets
            .fetch_add(now.downlink_packets.saturating_sub(before.downlink_packets), Relaxed);
        self.downlink_lost
            .fetch_add(now.downlink_lost.saturating_sub(before.downlink_lost), Relaxed);
        self.uplink_refused
            .fetch_add(now.uplink_refused.saturating_sub(before.uplink_refused), Relaxed);
    }
}

/// The node's WebRTC port and its participants.
#[derive(Debug)]
pub struct WebRtc {
    /// Its counters.
    pub metrics: Arc<WebRtcMetrics>,
    tx: mpsc::Sender<Cmd>,
    local: SocketAddr,
    /// The addresses every answer names as host candidates (the bound one, or on an
    /// unspecified bind each address this machine is reached at).
    announced: Vec<SocketAddr>,
    next: AtomicU64,
    /// Each signalling session's peers (to end them with it).
    by_session: Mutex<HashMap<SessionId, Vec<u64>>>,
}

/// A datagram the engine's loops received for WebRTC on the shared port: its source, the
/// local address it was sent to (when the kernel says), its bytes.
pub type Inlet = mpsc::Sender<(SocketAddr, Option<IpAddr>, Vec<u8>)>;

/// How the task reaches the network.
enum Port {
    /// A socket of its own, read with quinn-udp (batched, and with each datagram's
    /// destination: on an unspecified bind, the candidate it was sent to).
    Own(tokio::net::UdpSocket, quinn_udp::UdpSocketState),
    /// The QUIC port: a duplicate of its socket to send with (non-blocking, never read), and
    /// what the loops hand over.
    Shared(
        std::net::UdpSocket,
        mpsc::Receiver<(SocketAddr, Option<IpAddr>, Vec<u8>)>,
    ),
}

/// A datagram (or a batch of equal-sized ones from one source, `stride` bytes each) that
/// arrived: where from, and at which local IP.
struct Arrived {
    from: SocketAddr,
    to: Option<IpAddr>,
    stride: usize,
}

impl Port {
    /// Sends one datagram; a full buffer drops it (ICE and DTLS retransmit, audio is
    /// better lost than late).
    fn send(&self, data: &[u8], to: SocketAddr) {
        let _ = match self {
            Port::Own(s, _) => s.try_send_to(data, to),
            Port::Shared(s, _) => s.send_to(data, to),
        };
    }

    /// The next datagram, or batch of them, into `buf`.
    async fn recv(&mut self, buf: &mut Vec<u8>) -> Option<Arrived> {
        match self {
            Port::Own(s, state) => loop {
                buf.resize(64 * 1024, 0);
                if s.readable().await.is_err() {
                    return None;
                }
                let mut meta = [quinn_udp::RecvMeta::default()];
                let r = s.try_io(tokio::io::Interest::READABLE, || {
                    state.recv((&*s).into(), &mut [std::io::IoSliceMut::new(buf)], &mut meta)
                });
                // WouldBlock (a spurious wake-up), or an ICMP report about an earlier send:
                // the next one may be fine.
                if let Ok(1) = r {
                    let m = meta[0];
                    buf.truncate(m.len);
                    return Some(Arrived {
                        from: m.addr,
                        to: m.dst_ip,
                        stride: m.stride.max(1),
                    });
                }
            },
            Port::Shared(_, rx) => {
                let (from, to, d) = rx.recv().await?;
                *buf = d;
                Some(Arrived {
                    from,
                    to,
                    stride: buf.len().max(1),
                })
            }
        }
    }
}

/// The addresses to announce for a port bound at `bound`: `announce` (with the bound port)
/// when configured; else the bound address; on an unspecified bind, loopback and the
/// address this machine sends from by its default route (found by connecting a UDP socket
/// to a documentation address: no packet is sent). Browsers such as Firefox offer no
/// loopback candidate, so loopback alone would leave them unable to connect.
pub fn announced_addresses(bound: SocketAddr, announce: &[IpAddr]) -> Vec<SocketAddr> {
    if !announce.is_empty() {
        return announce.iter().map(|ip| SocketAddr::new(*ip, bound.port())).collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let (loopback, any, probe): (IpAddr, &str, &str) = if bound.is_ipv4() {
        (std::net::Ipv4Addr::LOCALHOST.into(), "0.0.0.0:0", "198.51.100.1:9")
    } else {
        (std::net::Ipv6Addr::LOCALHOST.into(), "[::]:0", "[2001:db8::1]:9")
    };
    let mut out = vec![SocketAddr::new(loopback, bound.port())];
    let routed = std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|a| a.ip());
    match routed {
        Ok(ip) if !ip.is_unspecified() && !ip.is_loopback() => out.push(SocketAddr::new(ip, bound.port())),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "no routed address found for WebRTC: answers name loopback only (set webrtc_announce)")
        }
    }
    out
}

enum Cmd {
    Add(Box<Entry>),
    Down { id: u64, data: Bytes },
    Remove(u64),
}

/// The SFU's way to a WebRTC participant: the downlink datagram goes to the task; the
/// peer's RTCP-derived counters come back for `VoiceStats`.
#[derive(Debug)]
struct Sink {
    id: u64,
    tx: mpsc::Sender<Cmd>,
    downlink: Mutex<quaver_rtc::Stats>,
}

impl DatagramSink for Sink {
    fn prefix(&self) -> &[u8] {
        &[]
    }
    fn send(&self, data: Bytes) -> bool {
        self.tx.try_send(Cmd::Down { id: self.id, data }).is_ok()
    }
    fn downlink(&self) -> Option<VoiceDownlinkStats> {
        let s = *self.downlink.lock().unwrap_or_else(|p| p.into_inner());
        Some(VoiceDownlinkStats {
            packets: s.downlink_packets,
            lost: s.downlink_lost,
            jitter_us: s.downlink_jitter_us,
            rtt_us: s.rtt.map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32),
        })
    }
}

/// Which speaker (SFU slot) each of a peer's receiving tracks carries.
#[derive(Debug)]
pub struct Tracks {
    /// Per track: the slot and when it last carried a frame.
    tracks: Vec<Option<(u16, Instant)>>,
}

impl Tracks {
    /// `n` tracks, all free.
    pub fn new(n: usize) -> Self {
        Self { tracks: vec![None; n] }
    }

    /// The track for a frame of `slot` at `now`: the one it has, else a free one, else the
    /// one idle longest; and whether the track changed speaker (then the peer's session is
    /// told, `VoiceTrack`). `None` without tracks.
    pub fn assign(&mut self, slot: u16, now: Instant) -> Option<(usize, bool)> {
        let i = match self.tracks.iter().position(|t| t.is_some_and(|(s, _)| s == slot)) {
            Some(i) => i,
            None => match self.tracks.iter().position(Option::is_none) {
                Some(i) => i,
                None => self
                    .tracks
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| t.map(|(_, at)| at))
                    .map(|(i, _)| i)?,
            },
        };
        let changed = self.tracks[i].is_none_or(|(s, _)| s != slot);
        self.tracks[i] = Some((slot, now));
        Some((i, changed))
    }
}

struct Entry {
    id: u64,
    peer: Peer,
    port: Arc<VoicePort>,
    user: u64,
    session: SessionId,
    channel_id: u64,
    /// Its port's sink, where `VoiceStats` reads the downlink counters.
    sink: Arc<Sink>,
    tracks: Tracks,
    wait: Instant,
    /// The peer's counters as last added to the metrics.
    counted: quaver_rtc::Stats,
}

impl WebRtc {
    /// Binds `addr` and starts the task that serves it for `voice`. The socket asks for the
    /// QUIC sockets' buffers ([`engine::SOCKET_BUFFER`](crate::engine::SOCKET_BUFFER)): a
    /// frame for hundreds of peers leaves as a burst of as many packets.
    pub async fn start(addr: SocketAddr, announce: &[IpAddr], voice: Arc<Voice>) -> std::io::Result<Arc<Self>> {
        let std = crate::engine::bind(addr, 1)?
            .pop()
            .ok_or_else(|| std::io::Error::other("no socket bound"))?;
        std.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&std).into())?;
        let socket = tokio::net::UdpSocket::from_std(std)?;
        let local = socket.local_addr()?;
        Ok(Self::serve(Port::Own(socket, state), local, announce, voice))
    }

    /// WebRTC on the QUIC port, whose socket is `quic` (reached at `local`): the task sends
    /// through a duplicate of it; the loops hand it what they receive for it through the
    /// returned [`Inlet`].
    pub fn on_quic_port(
        quic: &std::net::UdpSocket,
        local: SocketAddr,
        announce: &[IpAddr],
        voice: Arc<Voice>,
    ) -> std::io::Result<(Arc<Self>, Inlet)> {
        let send = quic.try_clone()?;
        send.set_nonblocking(true)?;
        let (inlet, rx) = mpsc::channel(QUEUE);
        Ok((Self::serve(Port::Shared(send, rx), local, announce, voice), inlet))
    }

    fn serve(port: Port, local: SocketAddr, announce: &[IpAddr], voice: Arc<Voice>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let metrics = Arc::new(WebRtcMetrics::default());
        let announced = announced_addresses(local, announce);
        tracing::info!(addresses = ?announced, "WebRTC voice: answers name these addresses");
        tokio::spawn(run(port, local, announced[0], voice, rx, metrics.clone()));
        Arc::new(Self {
            metrics,
            tx,
            local,
            announced,
            next: AtomicU64::new(1),
            by_session: Mutex::new(HashMap::new()),
        })
    }

    /// The UDP address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses answers name as host candidates.
    pub fn announced(&self) -> &[SocketAddr] {
        &self.announced
    }

    /// Answers `offer` for `session`, joining `channel_id`: the peer's id, its port (to join
    /// the channel with) and the SDP answer. The peer lives from now until it is removed or
    /// ICE gives up; which speaker each of its tracks carries goes to `session`
    /// (`VoiceTrack`).
    pub fn open(
        &self,
        session: &Arc<SessionHandle>,
        channel_id: u64,
        offer: &str,
    ) -> Result<(u64, Arc<VoicePort>, String), ErrorBody> {
        let (user, events, session) = (session.user, Arc::downgrade(session), session.id);
        let (peer, answer) = Peer::answer_on(offer, &self.announced, Instant::now()).map_err(|e| {
            tracing::debug!(user, detail = %e.detail(), "a WebRTC offer was refused");
            ErrorBody::new(ErrorCode::BAD_REQUEST, e.to_string())
        })?;
        let id = self.next.fetch_add(1, Relaxed);
        let sink = Arc::new(Sink {
            id,
            tx: self.tx.clone(),
            downlink: Mutex::new(quaver_rtc::Stats::default()),
        });
        let port = VoicePort::new(sink.clone(), events);
        let entry = Entry {
            id,
            tracks: Tracks::new(peer.slots()),
            peer,
            port: port.clone(),
            user,
            session,
            channel_id,
            sink,
            wait: Instant::now(),
            counted: quaver_rtc::Stats::default(),
        };
        if self.tx.try_send(Cmd::Add(Box::new(entry))).is_err() {
            return Err(ErrorBody::new(
                ErrorCode::INTERNAL,
                "the WebRTC port is overloaded; retry",
            ));
        }
        self.by_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session)
            .or_default()
            .push(id);
        Ok((id, port, answer))
    }

    /// Ends peer `id`.
    pub fn remove(&self, id: u64) {
        // A full queue: the peer still ends when ICE gives up on it.
        let _ = self.tx.try_send(Cmd::Remove(id));
    }

    /// `session` ended: its peers end with it.
    pub fn session_ended(&self, session: SessionId) {
        self.end_others(session, None);
    }

    /// Ends peer `id` of `session` (its join was refused).
    pub fn discard(&self, session: SessionId, id: u64) {
        if let Some(ids) = self
            .by_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&session)
        {
            ids.retain(|i| *i != id);
        }
        self.remove(id);
    }

    /// Ends `session`'s peers but `keep` (a later join replaced them).
    pub fn end_others(&self, session: SessionId, keep: Option<u64>) {
        let ids = {
            let mut by = self.by_session.lock().unwrap_or_else(|p| p.into_inner());
            let ids = by.remove(&session).unwrap_or_default();
            if let Some(k) = keep.filter(|k| ids.contains(k)) {
                by.insert(session, vec![k]);
            }
            ids
        };
        for id in ids.into_iter().filter(|id| Some(*id) != keep) {
            self.remove(id);
        }
    }
}

/// Commands taken in one turn of the task beyond the one that woke it: the SFU queues one
/// downlink frame per copy, so a frame for a hundred peers is one turn (one timer, one
/// drain per peer), not a hundred.
const BATCH: usize = 512;

/// The task's state beside the socket.
struct Peers {
    peers: HashMap<u64, Entry>,
    by_addr: HashMap<SocketAddr, u64>,
    voice: Arc<Voice>,
    metrics: Arc<WebRtcMetrics>,
    /// Peers with something to drain this turn.
    touched: Vec<u64>,
}

impl Peers {
    fn command(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Add(e) => {
                self.metrics.peers.fetch_add(1, Relaxed);
                self.touched.push(e.id);
                self.peers.insert(e.id, *e);
            }
            Cmd::Down { id, data } => {
                if let Some(e) = self.peers.get_mut(&id)
                    && let Ok((h, payload)) = Downlink::parse(&data)
                    && let Some((track, changed)) = e.tracks.assign(h.slot, now)
                {
                    // `VoiceTrack` goes to the peer's session through its port.
                    if changed && let Some(mid) = e.peer.mid(track) {
                        e.port.tell(&EventBody::VoiceTrack {
                            channel_id: e.channel_id,
                            mid,
                            slot: h.slot,
                        });
                    }
                    let frame = Frame {
                        level: h.level.neg_dbov(),
                        voice: h.level.voice(),
                        seq: h.seq,
                        timestamp: h.timestamp,
                        talkspurt: h.flags & FLAG_TALKSPURT_START != 0,
                        payload: payload.to_vec(),
                    };
                    e.peer.send(track, u64::from(h.slot), frame, now);
                    self.touched.push(id);
                }
            }
            Cmd::Remove(id) => {
                if let Some(mut e) = self.peers.remove(&id) {
                    e.peer.close();
                    self.gone(e);
                }
            }
        }
    }

    fn datagram(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8], now: Instant) {
        // A new address starts with a STUN binding request (first byte 0–3, RFC 7983): only
        // that is worth asking every peer about; anything else from a stranger is dropped
        // without a scan.
        let stun = data.first().is_some_and(|b| *b < 4);
        let id = self.by_addr.get(&from).copied().or_else(|| {
            stun.then(|| {
                self.peers
                    .values()
                    .find(|e| e.peer.accepts_at(from, to, data))
                    .map(|e| e.id)
            })
            .flatten()
        });
        if let Some(id) = id
            && let Some(e) = self.peers.get_mut(&id)
        {
            self.by_addr.insert(from, id);
            e.peer.receive_at(now, from, to, data);
            self.touched.push(id);
        }
    }

    /// Drains every peer touched this turn, once each.
    fn drain(&mut self, socket: &Port, now: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for id in touched.drain(..) {
            let alive = self.peers.get_mut(&id).is_some_and(|e| {
                let alive = drain(e, socket, &self.voice, now);
                let stats = e.peer.stats();
                if stats != e.counted {
                    self.metrics.add(&e.counted, &stats);
                    *e.sink.downlink.lock().unwrap_or_else(|p| p.into_inner()) = stats;
                    e.counted = stats;
                }
                alive
            });
            if !alive && let Some(e) = self.peers.remove(&id) {
                self.gone(e);
            }
        }
        self.touched = touched;
    }

    /// `e` has been taken out: forget its address, count it, let its user leave.
    fn gone(&mut self, e: Entry) {
        self.by_addr.retain(|_, v| *v != e.id);
        self.metrics.peers.fetch_sub(1, Relaxed);
        ended(&self.voice, e);
    }
}

/// The task: the socket, every peer, their timers. `bound` is the socket's address;
/// `default_to` the destination assumed when the kernel does not say.
async fn run(
    mut socket: Port,
    bound: SocketAddr,
    default_to: SocketAddr,
    voice: Arc<Voice>,
    mut rx: mpsc::Receiver<Cmd>,
    metrics: Arc<WebRtcMetrics>,
) {
    let mut p = Peers {
        peers: HashMap::new(),
        by_addr: HashMap::new(),
        voice,
        metrics,
        touched: Vec::new(),
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let next = p.peers.values().map(|e| e.wait).min();
        let now;
        tokio::select! {
            arrived = socket.recv(&mut buf) => {
                let Some(a) = arrived else { return };
                now = Instant::now();
                let to = match a.to {
                    Some(ip) if !bound.ip().is_unspecified() || !ip.is_unspecified() => SocketAddr::new(ip, bound.port()),
                    _ => default_to,
                };
                for d in buf.chunks(a.stride) {
                    p.datagram(a.from, to, d, now);
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                now = Instant::now();
                p.command(cmd, now);
                for _ in 0..BATCH {
                    let Ok(cmd) = rx.try_recv() else { break };
                    p.command(cmd, now);
                }
            }
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            } => {
                now = Instant::now();
                for e in p.peers.values_mut().filter(|e| e.wait <= now) {
                    e.peer.timeout(now);
                    p.touched.push(e.id);
                }
            }
        }
        p.drain(&socket, now);
    }
}

/// Everything `e` has to do now; false once it is gone.
fn drain(e: &mut Entry, socket: &Port, voice: &Voice, now: Instant) -> bool {
    loop {
        match e.peer.poll() {
            Output::Transmit { to, data } => socket.send(&data, to),
            Output::Frame(f) => {
                let h = Uplink {
                    flags: if f.talkspurt { FLAG_TALKSPURT_START } else { 0 },
                    level: AudioLevel::new(f.level, f.voice),
                    seq: f.seq,
                    timestamp: f.timestamp,
                };
                let mut d = Vec::with_capacity(quaver_proto::datagram::UPLINK_HEADER + f.payload.len());
                h.write(&f.payload, &mut d);
                voice.datagram(&e.port, Bytes::from(d));
            }
            Output::Connected => tracing::debug!(user = e.user, "WebRTC participant connected"),
            Output::Closed => return false,
            Output::Wait(t) => {
                // A peer that asks to be woken now is polled again next turn, not spun on.
                e.wait = t.max(now + Duration::from_micros(100));
                return true;
            }
        }
    }
}

/// A peer is gone: its user leaves the channel if this peer was how they were in it.
fn ended(voice: &Arc<Voice>, e: Entry) {
    let voice = voice.clone();
    tokio::spawn(async move { voice.session_ended(e.user, e.session, &e.port).await });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_speaker_keeps_its_track_and_a_new_one_takes_the_idlest() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Tracks::new(2);
        assert_eq!(t.assign(5, ms(0)), Some((0, true)));
        assert_eq!(t.assign(9, ms(1)), Some((1, true)));
        assert_eq!(t.assign(5, ms(20)), Some((0, false)), "kept");
        // A third speaker: track 1 (slot 9) has been idle longest.
        assert_eq!(t.assign(3, ms(21)), Some((1, true)));
        assert_eq!(t.assign(9, ms(22)), Some((0, true)), "slot 5's track, now the idlest");
        assert_eq!(t.assign(9, ms(40)), Some((0, false)));
        assert_eq!(Tracks::new(0).assign(1, ms(0)), None);
    }
}
