//! Voice channels: an SFU inside the server. Each voice channel with participants is one
//! task owning its [`sfu::Channel`] (no lock on the media path); each connection has a
//! datagram intake that parses uplink frames and hands them to its channel's task, which
//! decides and fans out one shared downlink buffer per frame (no per-listener copy on raw
//! QUIC). Queues are short and full ones drop: late audio is worse than lost audio.
//! Voice state (joins, leaves, mutes, speaking) goes to everyone who can see the channel.

pub mod cluster;
pub mod lease;
pub mod sfu;
pub mod webrtc;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::datagram::{
    Downlink, FLAG_REDUNDANT, FLAG_TALKSPURT_START, REDUNDANCY_HEADER, Redundant, UPLINK_HEADER, Uplink,
};
use quaver_proto::session::Transport;
use quaver_proto::{ErrorBody, ErrorCode, EventBody, Lane, ResponseBody, SessionId, VoiceParticipantStats, VoiceState};
use tokio::sync::{mpsc, oneshot};

use self::sfu::{Channel, Dropped, SfuConfig};
use crate::chat::Chat;
use crate::cluster::{Bus, BusEvent};
use crate::perms::Perms;

/// Frames waiting for a channel task before new ones are dropped (≈ 60 ms of 20 ms frames
/// from 50 speakers: short on purpose).
const CHANNEL_QUEUE: usize = 256;
/// Largest uplink datagram accepted: an Opus frame is a few hundred bytes (20 ms at
/// 128 kbit/s is 320); anything much larger is not voice.
pub const MAX_UPLINK: usize = 1024;

/// Reasons frames were dropped, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Unparseable header.
    Malformed,
    /// Over `MAX_UPLINK`.
    Oversized,
    /// Sender is in no voice channel.
    Foreign,
    /// Sender muted.
    Muted,
    /// Silence.
    Dtx,
    /// Not among the loudest.
    NotSelected,
    /// A queue was full (the SFU drops rather than queues).
    Congested,
}

const DROP_NAMES: [&str; 7] = [
    "malformed",
    "oversized",
    "foreign",
    "muted",
    "dtx",
    "not_selected",
    "congested",
];

/// Voice counters for `/metrics`.
#[derive(Debug, Default)]
pub struct VoiceMetrics {
    /// Uplink frames received.
    pub received: AtomicU64,
    /// Downlink frames sent.
    pub forwarded: AtomicU64,
    /// Frames lost on the way up, sent on from the copy the next datagram carried (to
    /// listeners that take no copies themselves).
    pub repaired: AtomicU64,
    /// Frames dropped, by [`DropReason`].
    pub dropped: [AtomicU64; 7],
    /// Frames lost in transit (seq gaps), summed over participants that left.
    pub lost: AtomicU64,
    /// SFU residence (datagram read → last listener's copy handed to QUIC), histogram
    /// over `RESIDENCE_BUCKETS_US` (the last slot counts the rest).
    pub residence_us: [AtomicU64; 10],
}

/// Upper bounds (µs) of the residence histogram buckets.
pub const RESIDENCE_BUCKETS_US: [u64; 9] = [50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000];

impl VoiceMetrics {
    fn count_drop(&self, r: DropReason) {
        self.dropped[r as usize].fetch_add(1, Relaxed);
    }

    fn residence(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = RESIDENCE_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(RESIDENCE_BUCKETS_US.len());
        self.residence_us[i].fetch_add(1, Relaxed);
    }

    /// Frames dropped for `r`.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r as usize].load(Relaxed)
    }

    /// Prometheus lines.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o += "# HELP quaver_voice_frames_received_total Uplink voice frames received.\n# TYPE quaver_voice_frames_received_total counter\n";
        o += &format!("quaver_voice_frames_received_total {}\n", self.received.load(Relaxed));
        o += "# HELP quaver_voice_frames_forwarded_total Downlink voice frames sent.\n# TYPE quaver_voice_frames_forwarded_total counter\n";
        o += &format!("quaver_voice_frames_forwarded_total {}\n", self.forwarded.load(Relaxed));
        o += "# HELP quaver_voice_frames_repaired_total Frames lost on the way up and sent on from the next datagram's copy.\n# TYPE quaver_voice_frames_repaired_total counter\n";
        o += &format!("quaver_voice_frames_repaired_total {}\n", self.repaired.load(Relaxed));
        o += "# HELP quaver_voice_frames_dropped_total Voice frames dropped, by reason.\n# TYPE quaver_voice_frames_dropped_total counter\n";
        for (i, n) in DROP_NAMES.iter().enumerate() {
            o += &format!(
                "quaver_voice_frames_dropped_total{{reason=\"{n}\"}} {}\n",
                self.dropped[i].load(Relaxed)
            );
        }
        o += "# HELP quaver_voice_frames_lost_total Frames missing from senders' sequences (participants who left).\n# TYPE quaver_voice_frames_lost_total counter\n";
        o += &format!("quaver_voice_frames_lost_total {}\n", self.lost.load(Relaxed));
        o += "# HELP quaver_voice_residence_seconds Time a forwarded frame spends in the SFU.\n# TYPE quaver_voice_residence_seconds histogram\n";
        let mut cumulative = 0;
        for (i, b) in RESIDENCE_BUCKETS_US.iter().enumerate() {
            cumulative += self.residence_us[i].load(Relaxed);
            o += &format!(
                "quaver_voice_residence_seconds_bucket{{le=\"{}\"}} {cumulative}\n",
                *b as f64 / 1e6
            );
        }
        cumulative += self.residence_us[RESIDENCE_BUCKETS_US.len()].load(Relaxed);
        o += &format!("quaver_voice_residence_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n");
        o += &format!("quaver_voice_residence_seconds_count {cumulative}\n");
        o
    }
}

/// Where a listener's datagrams leave: a connection on the engine's loop (which the SFU
/// reaches through the loop's queue), or a test's recorder.
pub trait DatagramSink: Send + Sync + std::fmt::Debug {
    /// The bytes every datagram starts with on the wire (none for raw QUIC; the quarter
    /// stream id for WebTransport): the SFU builds one buffer per prefix and shares it.
    fn prefix(&self) -> &[u8];
    /// Sends a datagram that already starts with [`DatagramSink::prefix`]. False when it
    /// cannot be queued (the frame counts as dropped).
    fn send(&self, data: Bytes) -> bool;
    /// What the participant reports of its downlink (WebRTC's RTCP); `None` by default.
    fn downlink(&self) -> Option<quaver_proto::VoiceDownlinkStats> {
        None
    }
}

/// Where one connection's datagrams go: its voice channel task and slot, if any.
#[derive(Debug)]
pub struct VoicePort {
    sink: Arc<dyn DatagramSink>,
    target: Mutex<Option<(mpsc::Sender<ChannelCmd>, u16)>>,
    /// The session whose voice this is (weak: the port does not keep it alive), for the
    /// events meant for it alone (`VoiceMoved`).
    session: std::sync::Weak<crate::gateway::SessionHandle>,
    /// The session accepts datagrams that carry the previous frame again
    /// (`SetVoiceOptions`); frames with a redundancy block reach it stripped otherwise.
    redundancy: std::sync::atomic::AtomicBool,
}

impl VoicePort {
    /// A port for `session`'s voice, whose datagrams leave through `sink`.
    pub fn new(sink: Arc<dyn DatagramSink>, session: std::sync::Weak<crate::gateway::SessionHandle>) -> Arc<Self> {
        Arc::new(Self {
            sink,
            target: Mutex::new(None),
            session,
            redundancy: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether datagrams with a redundancy block may reach this session as they are.
    pub fn set_redundancy(&self, on: bool) {
        self.redundancy.store(on, Relaxed);
    }

    fn redundancy(&self) -> bool {
        self.redundancy.load(Relaxed)
    }

    /// The transport of the session's latest connection (none once it is gone).
    fn transport(&self) -> Option<Transport> {
        self.session.upgrade()?.transport()
    }

    /// Tells the session on its voice lane (nothing if it is gone).
    pub(crate) fn tell(&self, body: &EventBody) {
        if let Some(s) = self.session.upgrade() {
            s.push_event(Lane::Voice, Bytes::from(encode_payload(body)));
        }
    }

    fn set(&self, t: Option<(mpsc::Sender<ChannelCmd>, u16)>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn get(&self) -> Option<(mpsc::Sender<ChannelCmd>, u16)> {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
enum ChannelCmd {
    Join {
        user: u64,
        port: Arc<VoicePort>,
        self_mute: bool,
        self_deaf: bool,
        can_speak: bool,
        /// The channel's `user_limit` (0 = none), enforced by the task itself.
        limit: u32,
        /// The slot and everyone present, or `None` when the channel is full.
        reply: oneshot::Sender<Option<(u16, Vec<VoiceState>)>>,
    },
    Leave {
        user: u64,
        reply: oneshot::Sender<bool>,
    },
    Set {
        user: u64,
        self_state: Option<(bool, bool)>,
        server_mute: Option<bool>,
        server_deaf: Option<bool>,
    },
    Frame {
        slot: u16,
        data: Bytes,
        /// When the datagram was read (SFU residence is measured from here).
        at: Instant,
    },
    Stats(oneshot::Sender<Vec<VoiceParticipantStats>>),
}

#[derive(Debug, Clone)]
struct Membership {
    guild_id: u64,
    channel_id: u64,
    session_id: SessionId,
    port: Arc<VoicePort>,
}

/// The voice service of a node.
#[derive(Debug)]
pub struct Voice {
    chat: Arc<Chat>,
    bus: Arc<dyn Bus>,
    cfg: SfuConfig,
    channels: Mutex<HashMap<u64, mpsc::Sender<ChannelCmd>>>,
    members: Mutex<HashMap<u64, Membership>>,
    /// Current voice states by user (what `Ready` shows).
    states: Arc<Mutex<HashMap<u64, VoiceState>>>,
    /// Counters.
    pub metrics: Arc<VoiceMetrics>,
    /// In a cluster: which node each voice channel lives on.
    leases: std::sync::OnceLock<Arc<lease::VoiceLeases>>,
    /// In a cluster: channels whose states must be written to Redis again.
    dirty: Mutex<HashSet<u64>>,
    /// Wakes the writer of `dirty`.
    wake: tokio::sync::Notify,
    /// In a cluster: participants of other nodes' channels shown to sessions here.
    remote: Mutex<cluster::RemoteView>,
    /// Where channel tasks run: the first engine loop's thread (set once, at start); the
    /// caller's runtime where there is no loop (unit tests).
    channel_runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

fn err(code: ErrorCode, m: &str) -> ErrorBody {
    ErrorBody::new(code, m)
}

fn full() -> ErrorBody {
    err(ErrorCode::CHANNEL_FULL, "the voice channel is full")
}

impl Voice {
    /// The service.
    pub fn new(chat: Arc<Chat>, bus: Arc<dyn Bus>, cfg: SfuConfig) -> Self {
        Self {
            chat,
            bus,
            cfg,
            channels: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            states: Arc::default(),
            metrics: Arc::default(),
            leases: std::sync::OnceLock::new(),
            dirty: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            remote: Mutex::default(),
            channel_runtime: std::sync::OnceLock::new(),
        }
    }

    /// Runs every voice channel's task on `runtime` from now on: the engine's own, so a
    /// frame goes from the loop to its channel and back to the loop on one thread, with no
    /// wake-up of another (measured: bench/RESULTS.md "The loop on its own thread").
    pub fn run_channels_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.channel_runtime.set(runtime);
    }

    /// In a cluster: voice channels live where their lease says (set once, at start).
    pub fn set_leases(&self, leases: Arc<lease::VoiceLeases>) {
        let _ = self.leases.set(leases);
    }

    fn publish(bus: &dyn Bus, guild_id: u64, channel_id: u64, body: &EventBody) {
        bus.publish(BusEvent::Voice {
            guild_id,
            channel_id,
            event: Bytes::from(encode_payload(body)),
        });
    }

    /// One datagram from `port`'s connection: checked, then handed to its channel's task.
    pub fn datagram(&self, port: &VoicePort, d: Bytes) {
        self.metrics.received.fetch_add(1, Relaxed);
        if d.len() > MAX_UPLINK {
            self.metrics.count_drop(DropReason::Oversized);
            return;
        }
        // A redundancy block past the datagram's end is as malformed as a short header.
        if !Uplink::parse(&d).is_ok_and(|(h, p)| Redundant::split(h.flags, p).is_ok()) {
            self.metrics.count_drop(DropReason::Malformed);
            return;
        }
        let Some((tx, slot)) = port.get() else {
            self.metrics.count_drop(DropReason::Foreign);
            return;
        };
        if tx
            .try_send(ChannelCmd::Frame {
                slot,
                data: d,
                at: Instant::now(),
            })
            .is_err()
        {
            self.metrics.count_drop(DropReason::Congested);
        }
    }

    fn channel_task(self: &Arc<Self>, guild_id: u64, channel_id: u64) -> mpsc::Sender<ChannelCmd> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(&channel_id)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(CHANNEL_QUEUE);
        map.insert(channel_id, tx.clone());
        let task = run_channel(self.clone(), guild_id, channel_id, rx);
        match self.channel_runtime.get() {
            Some(rt) => drop(rt.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        tx
    }

    /// Joins `user`'s connection (`port`, session `session_id`) to a voice channel.
    pub async fn join(
        self: &Arc<Self>,
        user: u64,
        session_id: SessionId,
        port: &Arc<VoicePort>,
        channel_id: u64,
        self_mute: bool,
        self_deaf: bool,
    ) -> Result<ResponseBody, ErrorBody> {
        let (guild_id, limit, perms) = self.chat.voice_access(user, channel_id).await?;
        if !perms.has(Perms::CONNECT) {
            return Err(err(ErrorCode::FORBIDDEN, "missing permission: connect"));
        }
        let current = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .cloned();
        // The same join again changes nothing; a join on another media path of the same
        // session (a new WebRTC offer, or datagrams instead of WebRTC) replaces the old one.
        if let Some(m) = &current
            && m.channel_id == channel_id
            && m.session_id == session_id
            && Arc::ptr_eq(&m.port, port)
        {
            return Err(err(ErrorCode::BAD_REQUEST, "already in this voice channel"));
        }
        if let Some(leases) = self.leases.get() {
            match leases.claim(channel_id).await {
                Ok(lease::Holder::Here) => {}
                Ok(lease::Holder::Elsewhere {
                    endpoint,
                    cert_hashes,
                    ws_url,
                }) => {
                    // A session on the WebSocket framing (its network may drop UDP) is sent
                    // to the node's WebSocket URL; QUIC and WebTransport to `host:port`.
                    let endpoint = match ws_url {
                        Some(url) if port.transport() == Some(Transport::WebSocket) => url,
                        _ => endpoint,
                    };
                    return Ok(ResponseBody::VoiceServer {
                        channel_id,
                        endpoint,
                        cert_hashes,
                    });
                }
                // Redis away: the channel is served here (it may split across nodes until
                // its participants rejoin); voice on one node keeps working.
                Err(e) => {
                    tracing::warn!(channel = channel_id, error = %e, "voice lease unavailable: joining on this node")
                }
            }
        }
        if limit > 0 {
            let here = self
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|m| m.channel_id == channel_id)
                .count();
            let moving_within = current.as_ref().is_some_and(|m| m.channel_id == channel_id);
            // A fast path only (it keeps a user moving to a full channel where they are);
            // the channel's task decides, atomically with the join.
            if here >= limit as usize && !moving_within {
                return Err(full());
            }
        }
        // One voice channel per user: leave wherever they are (this or another session).
        self.leave(user).await;
        let tx = self.channel_task(guild_id, channel_id);
        let (reply, rx) = oneshot::channel();
        let cmd = ChannelCmd::Join {
            user,
            port: port.clone(),
            self_mute,
            self_deaf,
            can_speak: perms.has(Perms::SPEAK),
            limit,
            reply,
        };
        if tx.send(cmd).await.is_err() {
            return Err(err(ErrorCode::INTERNAL, "voice channel unavailable; retry"));
        }
        let (slot, participants) = rx
            .await
            .map_err(|_| err(ErrorCode::INTERNAL, "voice channel unavailable; retry"))?
            .ok_or_else(full)?;
        port.set(Some((tx, slot)));
        self.members.lock().unwrap_or_else(|p| p.into_inner()).insert(
            user,
            Membership {
                guild_id,
                channel_id,
                session_id,
                port: port.clone(),
            },
        );
        self.bus.publish(BusEvent::VoiceJoined {
            user_id: user,
            channel_id,
        });
        self.hook(
            "voice.joined",
            guild_id,
            channel_id,
            user,
            [Some(self_mute), Some(self_deaf), None, None],
        )
        .await;
        Ok(ResponseBody::VoiceJoined {
            channel_id,
            slot,
            participants,
        })
    }

    /// Removes `user` from their voice channel, if any.
    pub async fn leave(&self, user: u64) -> bool {
        let Some(m) = self.members.lock().unwrap_or_else(|p| p.into_inner()).remove(&user) else {
            return false;
        };
        m.port.set(None);
        let tx = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.channel_id)
            .cloned();
        if let Some(tx) = tx {
            let (reply, rx) = oneshot::channel();
            if tx.send(ChannelCmd::Leave { user, reply }).await.is_ok() {
                let _ = rx.await;
            }
        }
        self.hook("voice.left", m.guild_id, m.channel_id, user, [None; 4]).await;
        true
    }

    /// Records a voice webhook event (a failure is logged; the voice change stands).
    async fn hook(&self, kind: &'static str, guild: u64, channel: u64, user: u64, states: [Option<bool>; 4]) {
        let store = self.chat.store();
        if !store.hooks().wants(kind) {
            return;
        }
        let ev = crate::webhooks::catalogue::WebhookVoice::event(kind, guild, channel, user, states);
        if let Err(e) = store.hook_record_now(ev, None, crate::ids::now_ms()).await {
            tracing::warn!(error = %e, kind, "recording a voice webhook event failed");
        }
    }

    /// `user` joined voice channel `channel` on another node: leave whatever other channel
    /// they are in here (a user is in one voice channel, cluster-wide).
    pub async fn left_elsewhere(&self, user: u64, channel: u64) {
        let here = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|m| m.channel_id);
        if here.is_some_and(|c| c != channel) {
            self.leave(user).await;
        }
    }

    /// A connection of `user` (session `session_id`) ended: leave if it was the voice one.
    pub async fn session_ended(&self, user: u64, session_id: SessionId, port: &Arc<VoicePort>) {
        let ours = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .is_some_and(|m| m.session_id == session_id && Arc::ptr_eq(&m.port, port));
        if ours {
            self.leave(user).await;
        }
    }

    fn membership(&self, user: u64) -> Option<Membership> {
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .cloned()
    }

    async fn send_set(&self, user: u64, cmd: ChannelCmd) -> Result<(), ErrorBody> {
        let m = self
            .membership(user)
            .ok_or_else(|| err(ErrorCode::NOT_FOUND, "not in a voice channel"))?;
        let tx = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.channel_id)
            .cloned();
        match tx {
            Some(tx) if tx.send(cmd).await.is_ok() => Ok(()),
            _ => Err(err(ErrorCode::INTERNAL, "voice channel unavailable")),
        }
    }

    /// Self mute / deafen.
    pub async fn set_self(&self, user: u64, self_mute: bool, self_deaf: bool) -> Result<ResponseBody, ErrorBody> {
        self.send_set(
            user,
            ChannelCmd::Set {
                user,
                self_state: Some((self_mute, self_deaf)),
                server_mute: None,
                server_deaf: None,
            },
        )
        .await?;
        if let Some(m) = self.membership(user) {
            let states = [Some(self_mute), Some(self_deaf), None, None];
            self.hook("voice.state_updated", m.guild_id, m.channel_id, user, states)
                .await;
        }
        Ok(ResponseBody::Done)
    }

    /// Server mute / deafen by `actor`.
    pub async fn set_server(
        &self,
        actor: u64,
        guild_id: u64,
        target: u64,
        mute: Option<bool>,
        deaf: Option<bool>,
    ) -> Result<ResponseBody, ErrorBody> {
        let p = self.chat.guild_permissions(actor, guild_id).await?;
        if mute.is_some() && !p.has(Perms::MUTE_MEMBERS) {
            return Err(err(ErrorCode::FORBIDDEN, "missing permission: mute members"));
        }
        if deaf.is_some() && !p.has(Perms::DEAFEN_MEMBERS) {
            return Err(err(ErrorCode::FORBIDDEN, "missing permission: deafen members"));
        }
        match self.membership(target) {
            Some(m) if m.guild_id == guild_id => {}
            _ => return Err(err(ErrorCode::NOT_FOUND, "not in a voice channel of this guild")),
        }
        self.send_set(
            target,
            ChannelCmd::Set {
                user: target,
                self_state: None,
                server_mute: mute,
                server_deaf: deaf,
            },
        )
        .await?;
        if let Some(m) = self.membership(target) {
            self.hook(
                "voice.state_updated",
                m.guild_id,
                m.channel_id,
                target,
                [None, None, mute, deaf],
            )
            .await;
        }
        Ok(ResponseBody::Done)
    }

    /// Moves `target` to another voice channel of the guild.
    pub async fn move_member(
        self: &Arc<Self>,
        actor: u64,
        guild_id: u64,
        target: u64,
        channel_id: u64,
    ) -> Result<ResponseBody, ErrorBody> {
        let p = self.chat.guild_permissions(actor, guild_id).await?;
        if !p.has(Perms::MOVE_MEMBERS) {
            return Err(err(ErrorCode::FORBIDDEN, "missing permission: move members"));
        }
        let m = match self.membership(target) {
            Some(m) if m.guild_id == guild_id => m,
            _ => return Err(err(ErrorCode::NOT_FOUND, "not in a voice channel of this guild")),
        };
        let (g, _, _) = self.chat.voice_access(actor, channel_id).await?;
        if g != guild_id {
            return Err(err(ErrorCode::BAD_REQUEST, "the target channel is in another guild"));
        }
        let st = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target)
            .cloned();
        let (mute, deaf) = st.map(|s| (s.self_mute, s.self_deaf)).unwrap_or((false, false));
        match self.join(target, m.session_id, &m.port, channel_id, mute, deaf).await? {
            // The target channel is served by another node: their voice session is here. Out
            // of their channel here at once (a move is carried out whether or not they follow),
            // and told to join the new one, which takes them to its node.
            ResponseBody::VoiceServer { .. } => {
                self.leave(target).await;
                m.port.tell(&EventBody::VoiceMoved { guild_id, channel_id });
                Ok(ResponseBody::Done)
            }
            _ => Ok(ResponseBody::Done),
        }
    }

    /// The backend's order about `user`'s voice in `guild_id` (server API), with the
    /// guild's authority (its owner's). `Ok(false)`: they are not in a voice channel of that
    /// guild on this node.
    pub async fn carry_out(
        self: &Arc<Self>,
        guild_id: u64,
        user: u64,
        action: crate::gateway::VoiceAction,
    ) -> Result<bool, ErrorBody> {
        use crate::gateway::VoiceAction as A;
        if self.membership(user).is_none_or(|m| m.guild_id != guild_id) {
            return Ok(false);
        }
        let owner = self.chat.guild_state(guild_id).await?.guild.owner_id;
        match action {
            A::Mute(on) => self.set_server(owner, guild_id, user, Some(on), None).await?,
            A::Deafen(on) => self.set_server(owner, guild_id, user, None, Some(on)).await?,
            A::Move(channel) => self.move_member(owner, guild_id, user, channel).await?,
            A::Disconnect => {
                self.leave(user).await;
                ResponseBody::Done
            }
        };
        Ok(true)
    }

    /// The SFU counters of `user`'s channel.
    pub async fn stats(&self, user: u64) -> Result<ResponseBody, ErrorBody> {
        let (reply, rx) = oneshot::channel();
        self.send_set(user, ChannelCmd::Stats(reply)).await?;
        let participants = rx
            .await
            .map_err(|_| err(ErrorCode::INTERNAL, "voice channel unavailable"))?;
        Ok(ResponseBody::VoiceStats { participants })
    }
}

fn state_of(guild_id: u64, channel_id: u64, slot: u16, p: &sfu::Participant) -> VoiceState {
    VoiceState {
        guild_id,
        channel_id,
        user_id: p.user,
        slot,
        self_mute: p.self_mute,
        self_deaf: p.self_deaf,
        server_mute: p.server_mute || !p.can_speak,
        server_deaf: p.server_deaf,
        speaking: p.speaking,
    }
}

/// One voice channel's task: owns the SFU state, decides every frame, fans out.
async fn run_channel(voice: Arc<Voice>, guild_id: u64, channel_id: u64, mut rx: mpsc::Receiver<ChannelCmd>) {
    let mut ch = Channel::new(voice.cfg, Instant::now());
    let mut ports: HashMap<u16, Arc<VoicePort>> = HashMap::new();
    // Per speaker slot, the last frame forwarded (seq, timestamp, own payload): the copy
    // for the next one when its speaker sent none;
    // and the seq of a frame forwarded from a copy (its late original is not sent again).
    let mut last: HashMap<u16, (u16, u32, Vec<u8>, Option<u16>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let bus = voice.bus.clone();
    let metrics = voice.metrics.clone();
    let states = voice.states.clone();
    let publish_state = |ch: &Channel, slot: u16| {
        if let Some(p) = ch.get(slot) {
            let st = state_of(guild_id, channel_id, slot, p);
            states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(p.user, st.clone());
            Voice::publish(
                bus.as_ref(),
                guild_id,
                channel_id,
                &EventBody::VoiceStateUpdated { state: st },
            );
        }
    };
    loop {
        let cmd = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = tick.tick() => {
                for s in ch.poll(Instant::now()) {
                    if let Some(st) = states.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&s.user) {
                        st.speaking = s.speaking;
                    }
                    let body = EventBody::VoiceSpeaking { channel_id, user_id: s.user, slot: s.slot, speaking: s.speaking };
                    Voice::publish(bus.as_ref(), guild_id, channel_id, &body);
                }
                continue;
            }
        };
        match cmd {
            ChannelCmd::Frame { slot, data, at } => {
                let Ok((h, payload)) = Uplink::parse(&data) else {
                    continue;
                };
                match ch.on_frame(slot, &h, Instant::now()) {
                    Ok(f) => {
                        // One buffer per frame, wire prefix (raw QUIC: none; WebTransport:
                        // the session's quarter stream id, nearly always 0) and form (with
                        // the previous frame in front for a listener that asked for it,
                        // without for the others), shared by every listener alike: no copy
                        // per listener.
                        let down = Downlink::from_uplink(&h, f.slot);
                        let Ok((previous, own)) = Redundant::split(h.flags, payload) else {
                            metrics.count_drop(DropReason::Malformed);
                            continue;
                        };
                        // The copy: the speaker's own, or else the frame this task forwarded
                        // just before (a WebRTC speaker's, or one that sends no copies).
                        let before = last.get(&f.slot);
                        // Already forwarded from the copy the next frame carried: a late
                        // original, nobody needs it again.
                        if before.is_some_and(|k| k.3 == Some(h.seq)) {
                            continue;
                        }
                        // The speaker's copy of a frame this task never got (its datagram
                        // lost on the way up): a listener that takes no copies gets it as a
                        // frame of its own, before this one — the uplink repaired here.
                        let lost_up = previous.filter(|_| before.is_none_or(|k| k.0 != h.seq.wrapping_sub(1)));
                        let kept = before.filter(|(seq, ts, p, _)| {
                            *seq == h.seq.wrapping_sub(1)
                                && h.timestamp.wrapping_sub(*ts) <= u32::from(u16::MAX)
                                && p.len() + REDUNDANCY_HEADER + own.len() <= MAX_UPLINK - UPLINK_HEADER
                        });
                        let block = previous.or(kept.map(|(_, ts, p, _)| Redundant {
                            timestamp_offset: h.timestamp.wrapping_sub(*ts) as u16,
                            payload: p,
                        }));
                        let mut shared: Vec<(Vec<u8>, bool, Bytes)> = Vec::with_capacity(2);
                        let mut repaired: Vec<(Vec<u8>, Bytes)> = Vec::new();
                        // Listeners on the engine: one wake-up of the loop for all of them.
                        let _batch = crate::engine::Batch::begin();
                        for l in f.listeners {
                            let Some(port) = ports.get(&l) else { continue };
                            let prefix = port.sink.prefix();
                            let copy = block.filter(|_| port.redundancy());
                            if let Some(r) = lost_up.filter(|_| copy.is_none()) {
                                let out = match repaired.iter().find(|(p, _)| p.as_slice() == prefix) {
                                    Some((_, b)) => b.clone(),
                                    None => {
                                        let header = Downlink {
                                            flags: down.flags & !(FLAG_REDUNDANT | FLAG_TALKSPURT_START),
                                            seq: h.seq.wrapping_sub(1),
                                            timestamp: h.timestamp.wrapping_sub(u32::from(r.timestamp_offset)),
                                            ..down
                                        }
                                        .to_bytes();
                                        let mut buf = Vec::with_capacity(prefix.len() + header.len() + r.payload.len());
                                        buf.extend_from_slice(prefix);
                                        buf.extend_from_slice(&header);
                                        buf.extend_from_slice(r.payload);
                                        let b = Bytes::from(buf);
                                        repaired.push((prefix.to_vec(), b.clone()));
                                        b
                                    }
                                };
                                if port.sink.send(out) {
                                    metrics.repaired.fetch_add(1, Relaxed);
                                }
                            }
                            let out = match shared
                                .iter()
                                .find(|(p, c, _)| p.as_slice() == prefix && *c == copy.is_some())
                            {
                                Some((_, _, b)) => b.clone(),
                                None => {
                                    let header = Downlink {
                                        flags: match copy {
                                            Some(_) => down.flags | FLAG_REDUNDANT,
                                            None => down.flags & !FLAG_REDUNDANT,
                                        },
                                        ..down
                                    }
                                    .to_bytes();
                                    let extra = copy.map_or(0, |c| REDUNDANCY_HEADER + c.payload.len());
                                    let mut buf = Vec::with_capacity(prefix.len() + header.len() + extra + own.len());
                                    buf.extend_from_slice(prefix);
                                    buf.extend_from_slice(&header);
                                    if let Some(c) = copy {
                                        c.write(&mut buf);
                                    }
                                    buf.extend_from_slice(own);
                                    let b = Bytes::from(buf);
                                    shared.push((prefix.to_vec(), copy.is_some(), b.clone()));
                                    b
                                }
                            };
                            match port.sink.send(out) {
                                true => metrics.forwarded.fetch_add(1, Relaxed),
                                false => metrics.dropped[DropReason::Congested as usize].fetch_add(1, Relaxed),
                            };
                        }
                        // Copied into the slot's own buffer, not kept as a slice of the
                        // datagram: that would pin the receive buffer it came in.
                        let kept = last.entry(f.slot).or_default();
                        kept.0 = h.seq;
                        kept.1 = h.timestamp;
                        kept.2.clear();
                        kept.2.extend_from_slice(own);
                        kept.3 = lost_up.map(|_| h.seq.wrapping_sub(1));
                        metrics.residence(at.elapsed());
                    }
                    Err(d) => metrics.count_drop(match d {
                        Dropped::NotParticipant => DropReason::Foreign,
                        Dropped::Muted => DropReason::Muted,
                        Dropped::Dtx => DropReason::Dtx,
                        Dropped::NotSelected => DropReason::NotSelected,
                    }),
                }
            }
            ChannelCmd::Join {
                user,
                port,
                self_mute,
                self_deaf,
                can_speak,
                limit,
                reply,
            } => {
                // (A full channel is never empty: refusing leaves the task as it was.)
                if !ch.has_room(limit) {
                    let _ = reply.send(None);
                    continue;
                }
                let slot = ch.join(user, self_mute, self_deaf, can_speak);
                ports.insert(slot, port);
                publish_state(&ch, slot);
                voice.states_changed(channel_id);
                let participants = ch
                    .participants()
                    .map(|(s, p)| state_of(guild_id, channel_id, s, p))
                    .collect();
                let _ = reply.send(Some((slot, participants)));
            }
            ChannelCmd::Leave { user, reply } => {
                let left = match ch.slot_of(user) {
                    Some(slot) => {
                        ports.remove(&slot);
                        last.remove(&slot);
                        if let Some(p) = ch.leave(slot) {
                            metrics.lost.fetch_add(p.stats.lost, Relaxed);
                        }
                        states.lock().unwrap_or_else(|p| p.into_inner()).remove(&user);
                        let body = EventBody::VoiceStateRemoved {
                            guild_id,
                            channel_id,
                            user_id: user,
                        };
                        Voice::publish(bus.as_ref(), guild_id, channel_id, &body);
                        voice.states_changed(channel_id);
                        true
                    }
                    None => false,
                };
                let _ = reply.send(left);
                if ch.is_empty() {
                    // Last one out: retire the task, unless a join raced in meanwhile.
                    let mut map = voice.channels.lock().unwrap_or_else(|p| p.into_inner());
                    if rx.is_empty() {
                        map.remove(&channel_id);
                        return;
                    }
                }
            }
            ChannelCmd::Set {
                user,
                self_state,
                server_mute,
                server_deaf,
            } => {
                if let Some(slot) = ch.slot_of(user) {
                    if let Some(p) = ch.get_mut(slot) {
                        if let Some((m, d)) = self_state {
                            p.self_mute = m;
                            p.self_deaf = d;
                        }
                        if let Some(m) = server_mute {
                            p.server_mute = m;
                        }
                        if let Some(d) = server_deaf {
                            p.server_deaf = d;
                        }
                    }
                    publish_state(&ch, slot);
                    voice.states_changed(channel_id);
                }
            }
            ChannelCmd::Stats(reply) => {
                let v = ch
                    .participants()
                    .map(|(slot, p)| VoiceParticipantStats {
                        user_id: p.user,
                        slot,
                        received: p.stats.received,
                        forwarded: p.stats.forwarded,
                        dropped: p.stats.dropped,
                        lost: p.stats.lost,
                        jitter_us: (p.stats.jitter_ms * 1000.0) as u32,
                        downlink: ports.get(&slot).and_then(|port| port.sink.downlink()),
                    })
                    .collect();
                let _ = reply.send(v);
            }
        }
    }
}
