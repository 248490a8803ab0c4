//! The load generator's chat sessions on the engine (issue 12 item 6): raw-QUIC sessions
//! driven by a client-side `quaver::engine` loop — one loop owns hundreds of connections,
//! with no task, channel or mutex per session — instead of `quaver-client`'s async API (a
//! quinn driver task per connection plus a reader task per lane), which cost the bench
//! about as much CPU per delivery as the server it measured, on the same two cores.
//!
//! Each session: handshake (at most [`HANDSHAKES`] in flight per loop), `Hello` on the
//! control stream, `Ready`, the chat lane, `JoinGuild` (and, for the voice scenario, the
//! voice lane and `JoinVoice`); then heartbeats at the interval `Ready` gives, and the
//! counting of every `MessageCreated` by channel seq (first copies, duplicates, latency
//! from the send time written in the content) and of every voice datagram (latency from
//! the send time in its payload). Senders and speakers send on the loop's own timers.
//!
//! The protocol is written here from PROTOCOL.md (§4 streams, §5 messages) with
//! `quaver_proto`'s codec, the way any independent client would.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quaver::engine::{self, App, AppEvent, Conns, Io, Read};
use quaver_proto::codec::{FrameReader, decode, encode_frame};
use quaver_proto::datagram::{AudioLevel, Downlink, REDUNDANCY_HEADER, Redundant, UPLINK_HEADER, Uplink};
use quaver_proto::{
    ClientControl, Compression, DeviceKind, EventBody, Heartbeat, Hello, Lane, PROTOCOL_VERSION, Request, RequestBody,
    ServerControl, ServerLane, StreamOpen,
};
use quinn_proto::{ConnectionHandle, Dir, StreamId};

/// Handshakes one loop keeps in flight (the task-based bench joins 32 at a time).
const HANDSHAKES: usize = 32;
/// Request id of the `JoinGuild` on each chat lane; sends count up from the next.
const JOIN_ID: u32 = 1;
/// How long every session has to join the guild: an everyone-subscribed 10,000-member
/// guild took longer than two minutes on this machine (2026-12-07).
const JOIN_WITHIN: Duration = Duration::from_secs(600);
/// Refusals at the door a session takes before it counts as failed.
const MAX_REFUSALS: u32 = 10;
/// Request id of the `ViewChannels` a session sends before joining, when the run has a view.
const VIEW_ID: u32 = u32::MAX;
/// Largest frame taken from the server (a `Ready` can be large).
const MAX_FRAME: usize = 16 << 20;

/// One session to open.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Its token (which names its user).
    pub(crate) token: String,
    /// The server node it connects to.
    pub(crate) addr: SocketAddr,
    /// The QUIC client configuration for that node (its certificate hash).
    pub(crate) config: quinn_proto::ClientConfig,
    /// Its place among all the run's sessions (the first `senders` send).
    pub(crate) index: usize,
    /// The channels it says it views right after `Ready`, before joining (`ViewChannels`);
    /// `None`: it says nothing and gets every channel.
    pub(crate) view: Option<Vec<u64>>,
}

/// Which sessions of a run view the busy channel (passive sessions, issue 28 item 4): the
/// first `viewers` say they view `channel`, the others that they view no channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Viewing {
    /// The busy channel.
    pub(crate) channel: u64,
    /// How many sessions view it (the first, by index).
    pub(crate) viewers: usize,
}

/// What every loop's sessions have reached, read by the bench while it waits.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Sessions whose `JoinGuild` was acknowledged.
    pub(crate) joined: AtomicUsize,
    /// Sessions that ended before that (refused past [`MAX_REFUSALS`], lost, closed).
    pub(crate) failed: AtomicUsize,
    /// Handshakes refused at the door (the server sheds set-ups past its limit) and tried
    /// again after the native client's backoff.
    pub(crate) shed: AtomicUsize,
    /// Sessions that received the warm-up message (channel seq 1), or word of it in a
    /// `ChannelActivity` (a session that does not view the channel).
    pub(crate) warmed: AtomicUsize,
    /// `ChannelActivity` events received after the warm-up, over all sessions.
    pub(crate) activity: AtomicU64,
    /// First copies received after the warm-up, over all sessions.
    pub(crate) delivered: AtomicU64,
    /// Messages sent.
    pub(crate) sent: AtomicU64,
    /// Messages acknowledged (`Ack` for a `SendMessage`).
    pub(crate) acked: AtomicU64,
    /// Sends refused (`Error` for a `SendMessage`).
    pub(crate) refused: AtomicU64,
    /// Sessions lost after they had joined.
    pub(crate) lost: AtomicUsize,
    /// Voice frames sent by the speakers.
    pub(crate) frames_sent: AtomicU64,
    /// Voice frames received, over all sessions.
    pub(crate) frames_received: AtomicU64,
}

/// The speakers' schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Speaking {
    /// Sessions `0..speakers` speak.
    pub(crate) speakers: usize,
    /// Between one speaker's frames.
    pub(crate) every: Duration,
    /// Frames per speaker.
    pub(crate) frames: u64,
    /// When the first frames leave.
    pub(crate) start: Instant,
    /// Speakers send each frame with the previous one in front (`FLAG_REDUNDANT`; the
    /// listeners asked for such datagrams when they joined).
    pub(crate) redundancy: bool,
    /// The listeners' playout buffer, for [`Playout`].
    pub(crate) buffer: Duration,
}

/// The senders' schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sending {
    /// The channel.
    pub(crate) channel: u64,
    /// Sessions `0..senders` send.
    pub(crate) senders: usize,
    /// Between one sender's messages.
    pub(crate) every: Duration,
    /// Messages per sender.
    pub(crate) per_sender: u64,
    /// First nonce (each sender's n-th message has `nonce_base + n + 1`).
    pub(crate) nonce_base: u64,
    /// When sender 0 sends its first message.
    pub(crate) start: Instant,
}

/// What one loop's sessions measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// First copies.
    pub(crate) first: u64,
    /// Copies of a seq already seen.
    pub(crate) duplicates: u64,
    /// Send → receive latency of every first copy, µs.
    pub(crate) latency: Vec<u64>,
    /// UDP datagrams the sessions received.
    pub(crate) datagrams: u64,
    /// ACK frames they sent.
    pub(crate) acks: u64,
    /// `ChannelActivity` events received after the warm-up.
    pub(crate) activity: u64,
    /// Voice, per listener and speaker heard: what a playout buffer of
    /// [`Speaking::buffer`] made of the speaker's frames.
    pub(crate) streams: Vec<Playout>,
}

/// One listener's account of one speaker's frames against a fixed playout buffer: a frame
/// plays if it (or its copy in the next datagram) arrived by the first frame's latency plus
/// the buffer — a listener starts playing when its first frame has waited the buffer out.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Playout {
    /// Arrived in time in its own datagram.
    pub(crate) played: u64,
    /// Its own datagram lost or late; its copy in the next one arrived in time.
    pub(crate) recovered: u64,
    /// Arrived, but after its playout time.
    pub(crate) late: u64,
    /// Never arrived.
    pub(crate) lost: u64,
}

impl Playout {
    /// Frames played (directly or from a copy) of all.
    pub(crate) fn played_share(&self) -> f64 {
        (self.played + self.recovered) as f64 / (self.played + self.recovered + self.late + self.lost).max(1) as f64
    }
}

/// What a listener saw of one speaker: per frame seq, the latency of its own datagram and of
/// the copy the next one carried (µs; `u32::MAX` = never), and the first arrival's latency.
#[derive(Debug, Clone)]
struct Heard {
    first: u64,
    direct: Vec<u32>,
    copy: Vec<u32>,
}

impl Heard {
    fn playout(&self, buffer: Duration) -> Playout {
        let deadline = self.first + buffer.as_micros() as u64;
        let mut p = Playout::default();
        for (d, c) in self.direct.iter().zip(&self.copy) {
            let (d, c) = (u64::from(*d), u64::from(*c));
            if d <= deadline {
                p.played += 1;
            } else if c <= deadline {
                p.recovered += 1;
            } else if d != u64::from(u32::MAX) || c != u64::from(u32::MAX) {
                p.late += 1;
            } else {
                p.lost += 1;
            }
        }
        p
    }
}

enum Cmd {
    Join(Vec<Member>),
    Send(Sending),
    Speak(Speaking),
    Report(std::sync::mpsc::Sender<Report>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshaking.
    Connecting,
    /// `Hello` sent.
    Hello,
    /// `Ready` came; the lane is open and `JoinGuild` sent.
    Joining,
    /// In the guild; the voice lane is open and `JoinVoice` sent.
    JoiningVoice,
    /// Joined: heartbeating and counting.
    Joined,
    /// Ended.
    Done,
}

/// One stream's direction toward the server: bytes flow control has not taken yet.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    /// Appends what `encode` writes (a frame) and sends what flow control takes.
    fn push(&mut self, io: &mut Io<'_>, id: StreamId, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.0);
        self.flush(io, id);
    }

    fn flush(&mut self, io: &mut Io<'_>, id: StreamId) {
        if !self.0.is_empty() {
            let n = io.write(id, &self.0);
            self.0.drain(..n);
        }
    }
}

struct Session {
    member: Member,
    ch: Option<ConnectionHandle>,
    phase: Phase,
    control: Option<(StreamId, FrameReader, Out)>,
    lane: Option<(StreamId, FrameReader, Out)>,
    voice: Option<(StreamId, FrameReader, Out)>,
    heartbeat: Duration,
    nonce: u32,
    next_id: u32,
    /// Sent n of this sender (when it is one).
    sent: u64,
    warmed: bool,
    /// Channel seqs seen (bit `seq - 2`: seq 1 is the warm-up).
    seen: Vec<u64>,
    /// Voice heard, per speaker slot.
    heard: HashMap<u16, Heard>,
    /// The last voice payload sent (a speaker repeats it in the next datagram).
    last_frame: Vec<u8>,
    /// Times its handshake was refused at the door.
    refusals: u32,
}

impl Session {
    /// Marks `seq` seen; false if it had been.
    fn see(&mut self, seq: u64) -> bool {
        let i = seq.saturating_sub(2) as usize;
        let (w, b) = (i / 64, i % 64);
        if w >= self.seen.len() {
            self.seen.resize(w + 1, 0);
        }
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Start the handshakes that fit now.
    Connect,
    /// Queue this session's handshake again (it was refused at the door).
    Retry(usize),
    Heartbeat(usize),
    Send(usize),
    Speak(usize),
}

/// One loop's sessions: the [`App`] of a client engine.
struct Sessions {
    progress: Arc<Progress>,
    /// The clock latency is measured on (shared by every loop and the senders).
    epoch: Instant,
    sessions: Vec<Session>,
    by_handle: HashMap<ConnectionHandle, usize>,
    /// Sessions not connected yet.
    queue: VecDeque<usize>,
    handshaking: usize,
    invite: String,
    /// The voice channel every session joins after the guild, if any.
    voice_channel: Option<u64>,
    /// Sessions ask for redundant voice datagrams (`SetVoiceOptions`) before joining.
    voice_redundancy: bool,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    sending: Option<Sending>,
    speaking: Option<Speaking>,
    report: Report,
}

impl Sessions {
    /// Starts handshakes up to the bound.
    fn connect_more(&mut self, conns: &mut Conns<'_>) {
        while self.handshaking < HANDSHAKES
            && let Some(i) = self.queue.pop_front()
        {
            let s = &mut self.sessions[i];
            match conns.connect(s.member.config.clone(), s.member.addr, "localhost") {
                Ok(ch) => {
                    s.ch = Some(ch);
                    self.by_handle.insert(ch, i);
                    self.handshaking += 1;
                }
                Err(_) => {
                    s.phase = Phase::Done;
                    self.progress.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn ended(&mut self, i: usize) {
        let s = &mut self.sessions[i];
        match s.phase {
            Phase::Done => return,
            Phase::Connecting => self.handshaking -= 1,
            Phase::Joined => {
                self.progress.lost.fetch_add(1, Ordering::Relaxed);
            }
            Phase::Hello | Phase::Joining | Phase::JoiningVoice => {
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.phase = Phase::Done;
    }

    fn control(&mut self, i: usize, frame: &[u8], io: &mut Io<'_>) {
        let Ok(msg) = decode::<ServerControl>(frame) else {
            io.close(1, b"undecodable control frame");
            return;
        };
        let s = &mut self.sessions[i];
        match msg {
            ServerControl::Ready(r) if s.phase == Phase::Hello => {
                s.heartbeat = Duration::from_millis(r.heartbeat_interval_ms.max(100).into());
                self.timers.push(Reverse((io.now() + s.heartbeat, Timer::Heartbeat(i))));
                let Some(id) = io.open(Dir::Bi) else {
                    io.close(1, b"no stream for the lane");
                    return;
                };
                let mut out = Out::default();
                let join = Request {
                    id: JOIN_ID,
                    body: RequestBody::JoinGuild {
                        code: self.invite.clone(),
                    },
                };
                // The view first, as a client declares it right after `Ready`: the lane
                // serves requests in order, so it is in place when the join is.
                let view = s.member.view.clone().map(|ids| Request {
                    id: VIEW_ID,
                    body: RequestBody::ViewChannels { channel_ids: Some(ids) },
                });
                out.push(io, id, |b| {
                    encode_frame(&StreamOpen::Lane(Lane::Chat), b);
                    if let Some(view) = &view {
                        encode_frame(view, b);
                    }
                    encode_frame(&join, b);
                });
                s.lane = Some((id, FrameReader::new(MAX_FRAME), out));
                s.phase = Phase::Joining;
            }
            ServerControl::Closing(_) | ServerControl::Goaway(_) => {}
            _ => {}
        }
    }

    /// A frame on the voice lane: only `JoinVoice`'s answer matters here.
    fn voice_lane(&mut self, i: usize, frame: &[u8]) {
        let s = &mut self.sessions[i];
        match decode::<ServerLane>(frame) {
            Ok(ServerLane::Ack { id: JOIN_ID, .. }) if s.phase == Phase::JoiningVoice => {
                s.phase = Phase::Joined;
                self.progress.joined.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ServerLane::Error { id: JOIN_ID, .. }) if s.phase == Phase::JoiningVoice => {
                s.phase = Phase::Done;
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn lane(&mut self, i: usize, frame: &[u8], io: &mut Io<'_>) {
        let Ok(msg) = decode::<ServerLane>(frame) else { return };
        let now = io.now();
        let s = &mut self.sessions[i];
        match msg {
            // The view's answer: the join's follows.
            ServerLane::Ack { id: VIEW_ID, .. } if s.phase == Phase::Joining => {}
            ServerLane::Ack { id: JOIN_ID, .. } if s.phase == Phase::Joining => {
                let Some(channel_id) = self.voice_channel else {
                    s.phase = Phase::Joined;
                    self.progress.joined.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Some(id) = io.open(Dir::Bi) else {
                    io.close(1, b"no stream for the voice lane");
                    return;
                };
                let join = Request {
                    id: JOIN_ID,
                    body: RequestBody::JoinVoice {
                        channel_id,
                        self_mute: false,
                        self_deaf: false,
                    },
                };
                let options = Request {
                    id: JOIN_ID + 1,
                    body: RequestBody::SetVoiceOptions {
                        redundancy: self.voice_redundancy,
                    },
                };
                let mut out = Out::default();
                out.push(io, id, |b| {
                    encode_frame(&StreamOpen::Lane(Lane::Voice), b);
                    encode_frame(&options, b);
                    encode_frame(&join, b);
                });
                s.voice = Some((id, FrameReader::new(MAX_FRAME), out));
                s.phase = Phase::JoiningVoice;
            }
            ServerLane::Error {
                id: JOIN_ID | VIEW_ID, ..
            } if s.phase == Phase::Joining => {
                s.phase = Phase::Done;
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            ServerLane::Ack { .. } => {
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
            }
            ServerLane::Error { .. } => {
                self.progress.refused.fetch_add(1, Ordering::Relaxed);
            }
            ServerLane::Event {
                body: EventBody::MessageCreated { seq, message },
                ..
            } => {
                if seq == 1 {
                    if !s.warmed {
                        s.warmed = true;
                        self.progress.warmed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                if !s.warmed {
                    return;
                }
                if s.see(seq) {
                    let at = now.saturating_duration_since(self.epoch).as_micros() as u64;
                    let sent: u64 = message
                        .content
                        .split_once(' ')
                        .and_then(|(t, _)| t.parse().ok())
                        .unwrap_or(at);
                    self.report.first += 1;
                    self.report.latency.push(at.saturating_sub(sent));
                    self.progress.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.report.duplicates += 1;
                }
            }
            ServerLane::Event {
                body: EventBody::ChannelActivity { channels },
                ..
            } => {
                if !s.warmed {
                    if channels.iter().any(|c| c.seq >= 1) {
                        s.warmed = true;
                        self.progress.warmed.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                self.report.activity += 1;
                self.progress.activity.fetch_add(1, Ordering::Relaxed);
            }
            ServerLane::Event { .. } => {}
        }
    }

    /// Reads `id` on session `i` and handles its complete frames.
    fn readable(&mut self, i: usize, id: StreamId, io: &mut Io<'_>) {
        let s = &self.sessions[i];
        let on = |x: &Option<(StreamId, FrameReader, Out)>| x.as_ref().is_some_and(|c| c.0 == id);
        let which = if on(&s.control) {
            0
        } else if on(&s.lane) {
            1
        } else if on(&s.voice) {
            2
        } else {
            let _ = io.read(id);
            return;
        };
        let chunks = match io.read(id) {
            Read::Data(c) | Read::Finished(c) => c,
            Read::Reset(_) => Vec::new(),
        };
        let mut frames = Vec::new();
        {
            let s = &mut self.sessions[i];
            let stream = match which {
                0 => s.control.as_mut(),
                1 => s.lane.as_mut(),
                _ => s.voice.as_mut(),
            };
            let Some((_, reader, _)) = stream else { return };
            for c in &chunks {
                reader.push(c);
            }
            loop {
                match reader.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => {
                        io.close(1, b"bad frame");
                        return;
                    }
                }
            }
        }
        for f in frames {
            match which {
                0 => self.control(i, &f, io),
                1 => self.lane(i, &f, io),
                _ => self.voice_lane(i, &f),
            }
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant, conns: &mut Conns<'_>) {
        if let Timer::Retry(i) = timer {
            self.queue.push_back(i);
        }
        let (Timer::Heartbeat(i) | Timer::Send(i) | Timer::Speak(i)) = timer else {
            self.connect_more(conns);
            return;
        };
        let s = &mut self.sessions[i];
        if s.phase == Phase::Done {
            return;
        }
        let Some(mut io) = s.ch.and_then(|ch| conns.io(ch)) else {
            return;
        };
        match timer {
            Timer::Heartbeat(_) => {
                s.nonce = s.nonce.wrapping_add(1);
                if let Some((id, _, out)) = &mut s.control {
                    let hb = ClientControl::Heartbeat(Heartbeat {
                        nonce: s.nonce,
                        lanes: Vec::new(),
                    });
                    out.push(&mut io, *id, |b| encode_frame(&hb, b));
                }
                self.timers.push(Reverse((now + s.heartbeat, timer)));
            }
            Timer::Connect | Timer::Retry(_) => {}
            Timer::Speak(_) => {
                let Some(plan) = self.speaking else { return };
                let n = s.sent;
                if n >= plan.frames {
                    return;
                }
                s.sent += 1;
                let mut payload = [0x55u8; 160];
                let at = now.saturating_duration_since(self.epoch).as_micros() as u64;
                payload[..8].copy_from_slice(&at.to_le_bytes());
                let h = Uplink {
                    flags: 0,
                    level: AudioLevel::new(20 + s.member.index as u8, true),
                    seq: n as u16,
                    timestamp: (n as u32).wrapping_mul(960),
                };
                let previous = (plan.redundancy && n > 0).then_some(Redundant {
                    timestamp_offset: 960,
                    payload: &s.last_frame,
                });
                let mut d = Vec::with_capacity(UPLINK_HEADER + 2 * payload.len() + REDUNDANCY_HEADER);
                h.write_with(previous, &payload, &mut d);
                s.last_frame.clear();
                s.last_frame.extend_from_slice(&payload);
                if io.send_datagram(d.into()) {
                    self.progress.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                let due = plan.start + plan.every.mul_f64((n + 1) as f64);
                self.timers.push(Reverse((due, timer)));
            }
            Timer::Send(_) => {
                let Some(plan) = self.sending else { return };
                let n = s.sent;
                if n >= plan.per_sender {
                    return;
                }
                s.sent += 1;
                s.next_id += 1;
                let content = format!(
                    "{} sender {} message {n}",
                    now.saturating_duration_since(self.epoch).as_micros(),
                    s.member.index
                );
                let req = Request {
                    id: s.next_id,
                    body: RequestBody::SendMessage {
                        channel_id: plan.channel,
                        nonce: plan.nonce_base + n + 1,
                        content,
                        reply_to: None,
                    },
                };
                if let Some((id, _, out)) = &mut s.lane {
                    out.push(&mut io, *id, |b| encode_frame(&req, b));
                    self.progress.sent.fetch_add(1, Ordering::Relaxed);
                }
                // Catch-up after a late turn is a burst, like `MissedTickBehavior::Burst`.
                let due = send_time(&plan, s.member.index, n + 1);
                self.timers.push(Reverse((due, timer)));
            }
        }
    }
}

/// Whether a handshake ended refused at the door (QUIC `CONNECTION_REFUSED`).
fn refused(e: &quinn_proto::ConnectionError) -> bool {
    matches!(e, quinn_proto::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED)
}

/// When sender `k` sends its `n`-th message: spread evenly over one period, then steady.
fn send_time(plan: &Sending, k: usize, n: u64) -> Instant {
    let phase = plan.every.mul_f64(k as f64 / plan.senders.max(1) as f64);
    plan.start + phase + plan.every.mul_f64(n as f64)
}

impl App for Sessions {
    type Command = Cmd;

    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>) {
        let Some(&i) = self.by_handle.get(&ch) else { return };
        match event {
            AppEvent::Connected => {
                self.handshaking -= 1;
                self.timers.push(Reverse((io.now(), Timer::Connect)));
                let s = &mut self.sessions[i];
                s.phase = Phase::Hello;
                let Some(id) = io.open(Dir::Bi) else {
                    io.close(1, b"no control stream");
                    return;
                };
                let hello = ClientControl::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    token: Some(s.member.token.clone()),
                    device: DeviceKind::Desktop,
                    resume: None,
                    compression: Compression::None,
                });
                let mut out = Out::default();
                out.push(io, id, |b| encode_frame(&hello, b));
                s.control = Some((id, FrameReader::new(MAX_FRAME), out));
            }
            AppEvent::Readable(id) => self.readable(i, id, io),
            AppEvent::Writable(id) => {
                let s = &mut self.sessions[i];
                for (sid, _, out) in s.control.iter_mut().chain(s.lane.iter_mut()).chain(s.voice.iter_mut()) {
                    if *sid == id {
                        out.flush(io, id);
                    }
                }
            }
            AppEvent::StreamOpened => {
                // The server opens no streams toward a client; refuse any.
                for dir in [Dir::Bi, Dir::Uni] {
                    while let Some(id) = io.accept(dir) {
                        io.stop(id, 0);
                    }
                }
            }
            AppEvent::Lost(e) => {
                self.by_handle.remove(&ch);
                let s = &mut self.sessions[i];
                if s.phase == Phase::Connecting {
                    self.timers.push(Reverse((io.now(), Timer::Connect)));
                    if refused(&e) && s.refusals < MAX_REFUSALS {
                        // Shed at the door (PROTOCOL.md §1): wait as the native client
                        // does, then queue the handshake again.
                        s.ch = None;
                        let wait = quaver_client::resilient::Backoff::default()
                            .overloaded_delay(s.refusals, (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11);
                        s.refusals += 1;
                        self.handshaking -= 1;
                        self.progress.shed.fetch_add(1, Ordering::Relaxed);
                        self.timers.push(Reverse((io.now() + wait, Timer::Retry(i))));
                        return;
                    }
                }
                self.ended(i);
            }
            AppEvent::Datagrams => {
                let at = io.now().saturating_duration_since(self.epoch).as_micros() as u64;
                let frames = self.speaking.map_or(0, |p| p.frames) as usize;
                while let Some(d) = io.recv_datagram() {
                    let Ok((h, rest)) = Downlink::parse(&d) else { continue };
                    let Ok((previous, own)) = Redundant::split(h.flags, rest) else {
                        continue;
                    };
                    // Each payload starts with its frame's send time.
                    let latency = |p: &[u8]| {
                        let t: [u8; 8] = p.get(..8)?.try_into().ok()?;
                        Some(at.saturating_sub(u64::from_le_bytes(t)))
                    };
                    let Some(lat) = latency(own) else { continue };
                    self.report.latency.push(lat);
                    self.report.first += 1;
                    self.progress.frames_received.fetch_add(1, Ordering::Relaxed);
                    if frames == 0 || frames > 1 << 16 {
                        continue;
                    }
                    let heard = self.sessions[i].heard.entry(h.slot).or_insert_with(|| Heard {
                        first: lat,
                        direct: vec![u32::MAX; frames],
                        copy: vec![u32::MAX; frames],
                    });
                    let clamp = |l: u64| u32::try_from(l).unwrap_or(u32::MAX - 1);
                    if let Some(x) = heard.direct.get_mut(usize::from(h.seq)) {
                        *x = (*x).min(clamp(lat));
                    }
                    if let Some(p) = previous
                        && let Some(l) = latency(p.payload)
                        && let Some(x) = heard.copy.get_mut(usize::from(h.seq.wrapping_sub(1)))
                    {
                        *x = (*x).min(clamp(l));
                    }
                }
            }
            AppEvent::Stopped(_) => {}
        }
    }

    fn on_command(&mut self, cmd: Cmd, conns: &mut Conns<'_>) {
        match cmd {
            Cmd::Join(members) => {
                for member in members {
                    self.queue.push_back(self.sessions.len());
                    self.sessions.push(Session {
                        member,
                        ch: None,
                        phase: Phase::Connecting,
                        control: None,
                        lane: None,
                        voice: None,
                        heartbeat: Duration::from_secs(10),
                        nonce: 0,
                        next_id: JOIN_ID,
                        sent: 0,
                        warmed: false,
                        seen: Vec::new(),
                        heard: HashMap::new(),
                        last_frame: Vec::new(),
                        refusals: 0,
                    });
                }
                self.connect_more(conns);
            }
            Cmd::Send(plan) => {
                self.sending = Some(plan);
                for (i, s) in self.sessions.iter().enumerate() {
                    if s.member.index < plan.senders {
                        self.timers
                            .push(Reverse((send_time(&plan, s.member.index, 0), Timer::Send(i))));
                    }
                }
            }
            Cmd::Speak(plan) => {
                self.speaking = Some(plan);
                for (i, s) in self.sessions.iter().enumerate() {
                    if s.member.index < plan.speakers {
                        self.timers.push(Reverse((plan.start, Timer::Speak(i))));
                    }
                }
            }
            Cmd::Report(to) => {
                let mut r = std::mem::take(&mut self.report);
                if let Some(plan) = self.speaking {
                    for s in &self.sessions {
                        r.streams.extend(s.heard.values().map(|h| h.playout(plan.buffer)));
                    }
                }
                for s in &self.sessions {
                    if let Some(mut io) = s.ch.and_then(|ch| conns.io(ch)) {
                        let st = io.stats();
                        r.datagrams += st.udp_rx.datagrams;
                        r.acks += st.frame_tx.acks;
                    }
                }
                let _ = to.send(r);
            }
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn on_timeout(&mut self, now: Instant, conns: &mut Conns<'_>) {
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.fire(timer, now, conns);
        }
    }
}

/// The load generator's client loops, each on a thread of its own.
pub(crate) struct Swarm {
    loops: Vec<(
        engine::Sender<Cmd>,
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
    /// Shared counters.
    pub(crate) progress: Arc<Progress>,
    /// The clock the speakers' send times are written on.
    pub(crate) epoch: Instant,
}

impl Swarm {
    /// `loops` client loops, whose sessions will join the guild with `invite`, then the
    /// voice channel `voice` if there is one.
    fn start(loops: usize, invite: &str, voice: Option<(u64, bool)>) -> anyhow::Result<Self> {
        let progress = Arc::new(Progress::default());
        let epoch = Instant::now();
        let mut out = Vec::new();
        for n in 0..loops.max(1) {
            // Every session of the loop shares this socket: the engine's buffers. Unspecified,
            // so a server beyond loopback (`netem`'s namespaces) is reachable too.
            let socket = engine::bind(SocketAddr::from(([0, 0, 0, 0], 0)), 1)?.remove(0);
            socket.set_nonblocking(true)?;
            let app = Sessions {
                progress: progress.clone(),
                epoch,
                sessions: Vec::new(),
                by_handle: HashMap::new(),
                queue: VecDeque::new(),
                handshaking: 0,
                invite: invite.to_string(),
                voice_channel: voice.map(|(c, _)| c),
                voice_redundancy: voice.is_some_and(|(_, r)| r),
                timers: BinaryHeap::new(),
                sending: None,
                speaking: None,
                report: Report::default(),
            };
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (tx_tx, tx_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("bench-swarm-{n}"))
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                        return;
                    };
                    rt.block_on(async move {
                        let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else {
                            return;
                        };
                        let Ok(mut engine) = engine::Engine::client(socket, app) else {
                            return;
                        };
                        let _ = tx_tx.send(engine.sender());
                        engine
                            .run(async move {
                                let _ = stop_rx.await;
                            })
                            .await;
                        engine.close_all(0, b"done");
                    });
                })?;
            let tx = tx_rx.recv().context("a client loop did not start")?;
            out.push((tx, stop_tx, thread));
        }
        Ok(Self {
            loops: out,
            progress,
            epoch,
        })
    }

    /// `loops` client loops with sessions of users `first..first + n` of `setup`, each
    /// joined to the guild by `invite` (and to the voice channel of `voice`, asking for
    /// redundant datagrams if its flag says so), once every one has; the servers quiesced
    /// after the joins' traffic.
    pub(crate) async fn open(
        setup: &crate::setup::Setup,
        first: u64,
        n: usize,
        loops: usize,
        invite: &str,
        voice: Option<(u64, bool)>,
        viewing: Option<Viewing>,
    ) -> anyhow::Result<Self> {
        use Ordering::Relaxed;
        let started = Instant::now();
        let swarm = Swarm::start(loops, invite, voice)?;
        let mut configs: HashMap<SocketAddr, quinn_proto::ClientConfig> = HashMap::new();
        let mut members = Vec::with_capacity(n);
        for index in 0..n {
            let cfg = setup.config(first + index as u64);
            let config = match configs.get(&cfg.addr) {
                Some(c) => c.clone(),
                None => {
                    let c = client_config(&cfg)?;
                    configs.insert(cfg.addr, c.clone());
                    c
                }
            };
            members.push(Member {
                token: cfg.token.clone().context("a token for every member")?,
                addr: cfg.addr,
                config,
                index,
                view: viewing.map(|v| if index < v.viewers { vec![v.channel] } else { Vec::new() }),
            });
        }
        swarm.join(members);
        let p = swarm.progress.clone();
        // Generous: with nobody declaring a view, every joiner is told every online
        // member's presence and every member of the joiner's — quadratic in the guild.
        let within = JOIN_WITHIN;
        let limit = Instant::now() + within;
        while p.joined.load(Relaxed) + p.failed.load(Relaxed) < n {
            if Instant::now() > limit {
                swarm.stop();
                anyhow::bail!(
                    "only {} of {n} sessions joined within {} s",
                    p.joined.load(Relaxed),
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if p.failed.load(Relaxed) > 0 {
            swarm.stop();
            // Why, as the server counted it: its session closes by code.
            let mut closes = Vec::new();
            for s in setup.nodes() {
                let text = s.metrics().await.unwrap_or_default();
                closes.extend(
                    text.lines()
                        .filter(|l| l.starts_with("quaver_session_closes_total{") && !l.ends_with(" 0"))
                        .map(str::to_string),
                );
            }
            anyhow::bail!(
                "{} of {n} sessions failed to join; the server's closes: {}",
                p.failed.load(Relaxed),
                closes.join(", ")
            );
        }
        // Joining a guild of thousands costs the server minutes of presence fan-out (each
        // member coming online is sent to every member online, each joiner gets a snapshot of
        // them all): the measurement starts when that is done.
        let quiet = Duration::from_secs(60).max(Duration::from_millis(30) * n as u32);
        for s in setup.nodes() {
            s.quiesce(quiet).await;
        }
        // What the set-up cost (presence in a large guild is most of it).
        for s in setup.nodes() {
            eprintln!(
                "set-up: {n} sessions joined and quiet after {:.1} s ({} handshakes refused at the door and tried again); server CPU {:.2} s, RSS {:.0} MiB (peak {:.0} MiB)",
                started.elapsed().as_secs_f64(),
                p.shed.load(Relaxed),
                s.cpu_seconds(),
                s.rss_bytes() as f64 / (1 << 20) as f64,
                s.peak_rss_bytes() as f64 / (1 << 20) as f64,
            );
        }
        Ok(swarm)
    }

    /// Opens `members`' sessions, spread over the loops in turn.
    fn join(&self, members: Vec<Member>) {
        let n = self.loops.len();
        let mut split: Vec<Vec<Member>> = (0..n).map(|_| Vec::new()).collect();
        for (i, m) in members.into_iter().enumerate() {
            split[i % n].push(m);
        }
        for ((tx, _, _), part) in self.loops.iter().zip(split) {
            let _ = tx.send(Cmd::Join(part));
        }
    }

    /// Starts the speakers.
    pub(crate) fn speak(&self, plan: Speaking) {
        for (tx, _, _) in &self.loops {
            let _ = tx.send(Cmd::Speak(plan));
        }
    }

    /// Starts the senders.
    pub(crate) fn send(&self, plan: Sending) {
        for (tx, _, _) in &self.loops {
            let _ = tx.send(Cmd::Send(plan));
        }
    }

    /// Every loop's report (taken once: what was counted goes with it).
    pub(crate) async fn report(&self) -> anyhow::Result<Report> {
        let mut all = Report::default();
        for (tx, _, _) in &self.loops {
            let (to, from) = std::sync::mpsc::channel();
            let _ = tx.send(Cmd::Report(to));
            let r = tokio::task::spawn_blocking(move || from.recv_timeout(Duration::from_secs(30)))
                .await?
                .context("a client loop did not report")?;
            all.first += r.first;
            all.duplicates += r.duplicates;
            all.latency.extend(r.latency);
            all.datagrams += r.datagrams;
            all.acks += r.acks;
            all.activity += r.activity;
            all.streams.extend(r.streams);
        }
        Ok(all)
    }

    /// Closes every session and stops the loops.
    pub(crate) fn stop(self) {
        for (_, stop, thread) in self.loops {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// The raw-QUIC client configuration of `cfg` (its trust, ALPN `quaver/1`, its idle
/// timeout and keep-alive), for quinn-proto.
pub(crate) fn client_config(cfg: &quaver_client::Config) -> anyhow::Result<quinn_proto::ClientConfig> {
    let tls = quaver_client::tls_config(&cfg.trust, quaver_proto::ALPN_QUAVER)?;
    let mut c = quinn_proto::ClientConfig::new(Arc::new(quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)?));
    let mut t = quinn_proto::TransportConfig::default();
    t.max_idle_timeout(Some(cfg.idle_timeout.try_into()?));
    t.keep_alive_interval(Some(cfg.keep_alive));
    if let Some(delay) = cfg.ack_delay {
        t.ack_frequency_config(Some(quaver_client::ack_frequency(delay)));
    }
    c.transport_config(Arc::new(t));
    Ok(c)
}
