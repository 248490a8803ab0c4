//! Session lifecycle: `Hello` → authentication → `Ready`, heartbeats, token refresh, lanes,
//! fetch streams, `Goaway` and closing with a code.
//!
//! The decisions are transport-free ([`control`], `session::open`, [`dispatch`]); the
//! engine's loop ([`wire`], with the HTTP/3 layer in [`wt`]) owns every connection and moves
//! the bytes. Other parts of the server reach a session through its [`SessionHandle`], which
//! outlives its connection for the resume window: it reaches the connection through a
//! [`Link`] and its lanes through [`LaneSink`]s.

pub mod control;
pub mod dispatch;
pub mod door;
pub mod machine;
pub(crate) mod pace;
pub mod replay;
pub mod session;
pub mod timers;
pub mod view;
pub mod wire;
pub mod ws;
pub mod wt;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quaver_proto::session::Transport;
use quaver_proto::{CloseCode, DeviceKind, Lane, LaneSeq, SessionId, UserId};

use self::replay::{Missing, ReplayBuffer, ReplayLimits};
pub use crate::cluster::order::{Order, SessionSummary, VoiceAction};

/// The sessions' indexes by user and by channel: looked up for every receiver of an event
/// (ten thousand per message in a large guild), so hashed fast. Their keys are ids this
/// server or its backend assigns, and the hasher is seeded per process.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Frames a lane may hold unsent before the session counts as a slow consumer.
pub const LANE_QUEUE: usize = 1024;

/// Events kept for a state lane ([`Lane::carries_state`]) no connection of the session has
/// opened yet. A chat-only client in a busy guild would otherwise hold its buffer's whole
/// allowance (2,000 events) of typing and presence it never reads.
pub const UNOPENED_STATE_TAIL: usize = 64;

/// What a lane is sent from elsewhere in the server. (A reply to a request does not come
/// this way: the machine's `Input::Replied` carries it framed, so this stays small — a
/// lane's queue and a WebSocket session's inputs hold many of them.)
#[derive(Debug)]
pub enum LaneOut {
    /// An event with its lane seq, its body pre-encoded once for all receivers.
    Event(u64, Bytes),
}

/// Why a lane sink did not take a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum SinkError {
    /// Its queue is full: the client does not read the lane (slow consumer).
    Full,
    /// The lane's writer is gone.
    Closed,
}

/// Where a lane's frames go (the engine's loop; a queue in tests).
pub trait LaneSink: Send + Sync + std::fmt::Debug {
    /// Queues `out` without waiting.
    fn push(&self, out: LaneOut) -> Result<(), SinkError>;
}

/// How the session state reaches the connection it is attached to.
pub trait Link: Send + Sync + std::fmt::Debug {
    /// Asks the connection's owner to close it, in-band `Closing` first. False when the
    /// owner is gone (a full queue means closes are pending: true).
    fn ask_close(&self, code: CloseCode, reason: String) -> bool;
    /// Closes the connection at once.
    fn close_now(&self, code: CloseCode, reason: &str);
}

/// The connection a session is attached to (none while detached, awaiting a resume).
#[derive(Debug)]
struct Attachment {
    /// Counts attachments, so a superseded connection's cleanup cannot detach its successor.
    generation: u64,
    link: Arc<dyn Link>,
    lanes: [Option<Box<dyn LaneSink>>; 5],
    /// Per lane, the position the client resumed from (replay starts after it).
    resume_from: [u64; 5],
}

#[derive(Debug)]
struct Inner {
    attachment: Option<Attachment>,
    next_generation: u64,
    /// Last event seq assigned per lane.
    sent: [u64; 5],
    /// Per lane: whether any connection of the session has opened it.
    opened: [bool; 5],
    replay: ReplayBuffer,
    /// While detached: when the session is forgotten.
    detached_until: Option<Instant>,
    /// The channels it views (`ViewChannels`) and the activity held back elsewhere; `None`
    /// until it first says (every channel): an idle session that never does pays 8 bytes.
    view: Option<Box<view::View>>,
}

/// A session: its identity, event numbering and replay buffer, and the connection it is
/// attached to. It outlives a lost connection for the resume window.
#[derive(Debug)]
pub struct SessionHandle {
    /// Session id (resume key).
    pub id: SessionId,
    /// Owner.
    pub user: UserId,
    inner: Mutex<Inner>,
    /// Last event seq the client reported processed per lane (from heartbeats).
    acked: [AtomicU64; 5],
    /// What the session set with `SetPresence`: a resume shows it again, not `Online`.
    chosen: Mutex<Option<crate::presence::Chosen>>,
    /// The token it authenticated with last (`Hello` or `RefreshToken`): its `iat` and
    /// `jti`, checked against revocations.
    token: Mutex<(Option<u64>, Option<String>)>,
    /// How its latest connection came (transport, device) and when (Unix ms).
    via: Mutex<Option<(Transport, DeviceKind, u64)>>,
}

/// Why a lane could not be attached.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    /// Already open on this connection.
    AlreadyOpen,
    /// The session is not attached to this connection any more.
    Detached,
    /// The replay needed fell out of the buffer.
    Lost(Missing),
}

impl SessionHandle {
    fn new(id: SessionId, user: UserId, limits: ReplayLimits) -> Self {
        Self {
            id,
            user,
            inner: Mutex::new(Inner {
                attachment: None,
                next_generation: 1,
                sent: [0; 5],
                opened: [false; 5],
                replay: ReplayBuffer::new(limits),
                detached_until: None,
                view: None,
            }),
            acked: Default::default(),
            chosen: Mutex::new(None),
            token: Mutex::new((None, None)),
            via: Mutex::new(None),
        }
    }

    /// Remembers how its latest connection came, and when.
    pub fn set_via(&self, transport: Transport, device: DeviceKind, at_ms: u64) {
        *self.via.lock().unwrap_or_else(|p| p.into_inner()) = Some((transport, device, at_ms));
    }

    /// The transport of its latest connection (none before its first one opened).
    pub fn transport(&self) -> Option<Transport> {
        self.via.lock().unwrap_or_else(|p| p.into_inner()).map(|(t, _, _)| t)
    }

    /// What the server API lists of it (none before its first connection opened).
    pub fn summary(&self) -> Option<SessionSummary> {
        let via = *self.via.lock().unwrap_or_else(|p| p.into_inner());
        via.map(|(transport, device, connected_at_ms)| SessionSummary {
            id: self.id,
            transport,
            device,
            connected_at_ms,
            attached: self.attached(),
        })
    }

    /// Remembers the token the session authenticated with (at `Hello`, at each refresh).
    pub fn set_token(&self, identity: &crate::auth::Identity) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = (identity.issued_at, identity.jti.clone());
    }

    /// Whether `revocations` cover the token the session authenticated with.
    pub fn revoked(&self, revocations: &crate::auth::Revocations) -> bool {
        let t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        revocations.covers_parts(self.user, t.0, t.1.as_deref())
    }

    /// Remembers what the session chose with `SetPresence`.
    pub fn set_chosen(&self, chosen: crate::presence::Chosen) {
        *self.chosen.lock().unwrap_or_else(|p| p.into_inner()) = Some(chosen);
    }

    /// What the session chose with `SetPresence`, if it did.
    pub fn chosen(&self) -> Option<crate::presence::Chosen> {
        self.chosen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning only follows a panic elsewhere; the state is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a connection reached through `link`; returns its generation. The previous
    /// connection, if any, is told to close (`session_replaced`).
    pub(crate) fn attach_link(&self, link: Arc<dyn Link>, resume_from: [u64; 5]) -> u64 {
        let mut g = self.lock();
        let generation = g.next_generation;
        g.next_generation += 1;
        if let Some(old) = g.attachment.take() {
            let _ = old
                .link
                .ask_close(CloseCode::SESSION_REPLACED, "resumed on another connection".into());
        }
        g.detached_until = None;
        g.attachment = Some(Attachment {
            generation,
            link,
            lanes: Default::default(),
            resume_from,
        });
        generation
    }

    /// Detaches connection `generation` (if it is still the current one); events keep
    /// being buffered until `until`. Returns false if a newer connection took over.
    pub(crate) fn detach(&self, generation: u64, until: Instant) -> bool {
        let mut g = self.lock();
        if g.attachment.as_ref().is_some_and(|a| a.generation == generation) {
            g.attachment = None;
            g.detached_until = Some(until);
            true
        } else {
            false
        }
    }

    /// Whether the session is detached and its window has passed at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.lock().detached_until.is_some_and(|t| now >= t)
    }

    /// Whether a connection is attached.
    pub fn attached(&self) -> bool {
        self.lock().attachment.is_some()
    }

    /// Whether the buffer can replay every lane after the given positions.
    fn can_replay(&self, positions: &[u64; 5]) -> Result<(), Missing> {
        let g = self.lock();
        for lane in Lane::ALL {
            g.replay.since(lane, positions[lane.index()], g.sent[lane.index()])?;
        }
        Ok(())
    }

    /// Opens `lane` on connection `generation`: returns the backlog to write first (events
    /// after the resume position, or every buffered event for a new session), atomically
    /// with registering the writer, so nothing is lost or doubled between the two.
    pub(crate) fn attach_lane(
        &self,
        generation: u64,
        lane: Lane,
        tx: impl LaneSink + 'static,
    ) -> Result<Vec<(u64, Bytes)>, AttachError> {
        let mut g = self.lock();
        let sent = g.sent[lane.index()];
        let Some(a) = g.attachment.as_ref().filter(|a| a.generation == generation) else {
            return Err(AttachError::Detached);
        };
        if a.lanes[lane.index()].is_some() {
            return Err(AttachError::AlreadyOpen);
        }
        let from = a.resume_from[lane.index()];
        let backlog = g.replay.since(lane, from, sent).map_err(AttachError::Lost)?;
        if let Some(a) = g.attachment.as_mut() {
            a.lanes[lane.index()] = Some(Box::new(tx));
        }
        g.opened[lane.index()] = true;
        Ok(backlog)
    }

    /// Queues an event (body encoded with `codec::encode_payload`) on `lane`: numbered,
    /// kept for replay, and written now if the lane is open. A full writer queue closes the
    /// session as a slow consumer (it can resume and get the rest from the buffer).
    pub fn push_event(&self, lane: Lane, body: Bytes) {
        Self::push_locked(&mut self.lock(), lane, body);
    }

    /// Queues an event about guild channel `channel` (`seq`: a chat-lane channel event's
    /// seq; typing has none): as [`push_event`](Self::push_event) if the session views the
    /// channel; else a chat event is held back for a coalesced `ChannelActivity` (noted in
    /// the node's `holds`) and anything else is dropped. Returns whether it was queued, and
    /// when to call [`report_activity`](Self::report_activity) if a report must wait.
    fn take_channel_event(
        &self,
        lane: Lane,
        channel: u64,
        seq: Option<u64>,
        body: &Bytes,
        now: Instant,
        holds: &mut view::Holds,
    ) -> (bool, Option<Instant>) {
        let mut g = self.lock();
        let Some(v) = g.view.as_mut().filter(|v| !v.views(channel)) else {
            Self::push_locked(&mut g, lane, body.clone());
            return (true, None);
        };
        let Some(seq) = seq.filter(|_| lane == Lane::Chat) else {
            return (false, None);
        };
        let held = v.hold(channel, seq, now);
        if held.new {
            holds.add(channel, self.user, seq);
        } else {
            holds.saw(channel, seq);
        }
        match held.report {
            view::Report::Now => {
                self.report_locked(&mut g, holds, now);
                (false, None)
            }
            view::Report::At(at) => (false, Some(at)),
            view::Report::Scheduled => (false, None),
        }
    }

    /// Sends the `ChannelActivity` held back, if any: its time `at` has come (unless an
    /// earlier report superseded it).
    fn report_activity(&self, holds: &mut view::Holds, at: Instant, now: Instant) {
        let mut g = self.lock();
        if g.view.as_ref().is_some_and(|v| v.is_due(at)) {
            self.report_locked(&mut g, holds, now);
        }
    }

    /// Takes the session's report: each channel with the newest seq held back on this node
    /// (the session was passed over for the events after the one it first held).
    fn report_locked(&self, g: &mut Inner, holds: &mut view::Holds, now: Instant) {
        let Some(v) = g.view.as_mut() else { return };
        let mut channels = v.take_report(now);
        if channels.is_empty() {
            return;
        }
        for c in &mut channels {
            c.seq = c.seq.max(holds.newest(c.channel_id).unwrap_or(0));
            holds.release(c.channel_id, self.user);
        }
        let body = quaver_proto::codec::encode_payload(&quaver_proto::EventBody::ChannelActivity { channels });
        Self::push_locked(g, Lane::Chat, body.into());
    }

    /// Forgets the activity held back (the session ends), and its share of `holds`.
    fn forget_held(&self, holds: &mut view::Holds) {
        if let Some(v) = self.lock().view.as_mut() {
            for c in v.forget_held() {
                holds.release(c, self.user);
            }
        }
    }

    /// Sets the guild channels the session views (`None`: all) and their guilds; of
    /// `large` (the user's large guilds, sorted), returns those it is now to be sent the
    /// members' presence of ([`view::View::newly_kept`]).
    fn set_view(
        &self,
        channels: Option<Vec<u64>>,
        guilds: Option<Vec<u64>>,
        large: &[u64],
        holds: &mut view::Holds,
    ) -> Vec<view::Keep> {
        let mut g = self.lock();
        if g.view.is_none() && channels.is_none() && large.is_empty() {
            // Never said, still every channel, and no large guild: nothing to keep.
            return Vec::new();
        }
        let v = self.view_mut(&mut g);
        for c in v.set_with_guilds(channels, guilds) {
            holds.release(c, self.user);
        }
        v.newly_kept(large)
    }

    /// Of `large` (the user's large guilds, sorted), those the session views and was not
    /// yet sent the members' presence of: it is now to be (a new session that declared no
    /// view soon after `Ready`, [`view::View::newly_kept`]).
    pub fn keep_viewed(&self, large: &[u64]) -> Vec<view::Keep> {
        if large.is_empty() {
            return Vec::new();
        }
        let mut g = self.lock();
        self.view_mut(&mut g).newly_kept(large)
    }

    /// The large guilds whose members' presence the session is kept current on.
    pub fn kept_guilds(&self) -> Vec<u64> {
        self.lock().view.as_ref().map(|v| v.kept().to_vec()).unwrap_or_default()
    }

    /// The guilds and the channels the session looks at (`None`: every channel).
    fn view_index(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        let g = self.lock();
        let v = g.view.as_ref()?;
        Some((v.guilds()?.to_vec(), v.channels()?.to_vec()))
    }

    /// Whether the session looks at a channel of one of `guilds` (or at every channel).
    pub fn views_any_guild(&self, guilds: &[u64]) -> bool {
        self.lock()
            .view
            .as_ref()
            .is_none_or(|v| guilds.iter().any(|g| v.views_guild(*g)))
    }

    fn view_mut<'a>(&self, g: &'a mut Inner) -> &'a mut view::View {
        g.view.get_or_insert_with(|| {
            // Its later reports' share of the spread: from its id, which is random.
            let spread = std::time::Duration::from_millis(u64::from(self.id.0[0]) * 2);
            Box::new(view::View::new(spread))
        })
    }

    fn push_locked(g: &mut Inner, lane: Lane, body: Bytes) {
        let seq = g.sent[lane.index()] + 1;
        g.sent[lane.index()] = seq;
        g.replay.push(lane, seq, body.clone(), Instant::now());
        if lane.carries_state() && !g.opened[lane.index()] {
            // A state lane no connection of this session has opened: what it needs when it
            // opens is the last few events (before the client's first open, the moment
            // between `Ready` and the lane's stream), not a history it never asked for.
            g.replay.keep_last(lane, UNOPENED_STATE_TAIL);
        }
        let Some(a) = g.attachment.as_ref() else { return };
        let Some(tx) = a.lanes[lane.index()].as_ref() else {
            return;
        };
        if let Err(SinkError::Full) = tx.push(LaneOut::Event(seq, body)) {
            let _ = a.link.ask_close(CloseCode::SLOW_CONSUMER, "lane queue overflow".into());
        }
    }

    /// Asks the attached connection's task to close it (with its in-band `Closing`). The
    /// first close asked for wins; later ones change nothing. False if no connection was
    /// attached.
    pub fn close(&self, code: CloseCode, reason: &str) -> bool {
        let g = self.lock();
        let Some(a) = g.attachment.as_ref() else {
            return false;
        };
        if !a.link.ask_close(code, reason.to_string()) {
            // The owner is gone: close the connection directly. (A full queue means closes
            // are already pending: the owner will close, sending `Closing` first.)
            a.link.close_now(code, reason);
        }
        true
    }

    /// Last event seq sent on each lane that has had events.
    pub fn sent_seqs(&self) -> Vec<LaneSeq> {
        let sent = self.lock().sent;
        Lane::ALL
            .iter()
            .filter(|l| sent[l.index()] > 0)
            .map(|&lane| LaneSeq {
                lane,
                seq: sent[lane.index()],
            })
            .collect()
    }

    /// Last event seq the client acknowledged on each lane.
    pub fn acked_seqs(&self) -> Vec<LaneSeq> {
        Lane::ALL
            .iter()
            .filter_map(|&lane| {
                let seq = self.acked[lane.index()].load(Ordering::Relaxed);
                (seq > 0).then_some(LaneSeq { lane, seq })
            })
            .collect()
    }

    /// What the client said it processed (a heartbeat): remembered, and released from the
    /// replay buffer — a resume starts after what the client processed.
    fn record_acks(&self, lanes: &[LaneSeq]) {
        let mut g = self.lock();
        for l in lanes {
            // Never past what was sent (a client claiming more is not trusted with it).
            let seq = l.seq.min(g.sent[l.lane.index()]);
            self.acked[l.lane.index()].fetch_max(seq, Ordering::Relaxed);
            g.replay.release(l.lane, seq);
        }
    }
}

impl control::LaneSeqs for SessionHandle {
    fn record_acks(&self, lanes: &[LaneSeq]) {
        SessionHandle::record_acks(self, lanes);
    }
    fn sent_seqs(&self) -> Vec<LaneSeq> {
        SessionHandle::sent_seqs(self)
    }
}

/// Live sessions by id and by user.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<SessionMaps>,
    /// `ChannelActivity` reports that wait for their time: (when, session).
    reports: Mutex<Vec<(Instant, std::sync::Weak<SessionHandle>)>>,
}

#[derive(Debug, Default)]
struct SessionMaps {
    by_id: HashMap<SessionId, Arc<SessionHandle>>,
    by_user: Map<UserId, Vec<Arc<SessionHandle>>>,
    /// Per guild, the users with sessions whose view holds one of its channels, and how
    /// many such sessions: a large guild's presence goes to these (and to `unnarrowed`)
    /// without a look at every member's sessions.
    looking: Map<u64, Map<UserId, u32>>,
    /// Users with sessions that declared no view (they look at everything), and how many.
    unnarrowed: Map<UserId, u32>,
    /// Per channel, the users with sessions whose view names it, and how many such
    /// sessions: with `unnarrowed`, whether any session of a user takes it live.
    viewing: Map<u64, Map<UserId, u32>>,
    /// The activity held back from passive sessions, per channel ([`view::Holds`]).
    holds: view::Holds,
}

/// Users a channel event goes through per hold of the registry's lock (not held across all
/// of a large guild: the engine's loop takes it too).
const USERS_PER_LOCK: usize = 64;

impl SessionMaps {
    /// Counts a session of `user` viewing `view` (guilds, channels; `None`: everything) in
    /// or out.
    fn note(&mut self, user: UserId, view: Option<&(Vec<u64>, Vec<u64>)>, add: bool) {
        fn bump(m: &mut Map<UserId, u32>, user: UserId, add: bool) {
            if add {
                *m.entry(user).or_default() += 1;
            } else if let Some(n) = m.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&user);
                }
            }
        }
        fn bump_in(index: &mut Map<u64, Map<UserId, u32>>, keys: &[u64], user: UserId, add: bool) {
            for k in keys {
                let m = index.entry(*k).or_default();
                bump(m, user, add);
                if m.is_empty() {
                    index.remove(k);
                }
            }
        }
        match view {
            None => bump(&mut self.unnarrowed, user, add),
            Some((guilds, channels)) => {
                bump_in(&mut self.looking, guilds, user, add);
                bump_in(&mut self.viewing, channels, user, add);
            }
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionMaps> {
        // Poisoning only follows a panic elsewhere; the maps themselves are consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, h: Arc<SessionHandle>) {
        let mut m = self.lock();
        m.note(h.user, h.view_index().as_ref(), true);
        m.by_user.entry(h.user).or_default().push(h.clone());
        m.by_id.insert(h.id, h);
    }

    /// Forgets a session; false if it was not live.
    fn remove(&self, id: &SessionId) -> bool {
        let mut m = self.lock();
        let Some(h) = m.by_id.remove(id) else { return false };
        m.note(h.user, h.view_index().as_ref(), false);
        h.forget_held(&mut m.holds);
        if let Some(list) = m.by_user.get_mut(&h.user) {
            list.retain(|x| x.id != *id);
            if list.is_empty() {
                m.by_user.remove(&h.user);
            }
        }
        true
    }

    /// The session with this id, if live on this node.
    pub fn get(&self, id: &SessionId) -> Option<Arc<SessionHandle>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Every live session of `user` on this node.
    pub fn of_user(&self, user: UserId) -> Vec<Arc<SessionHandle>> {
        self.lock().by_user.get(&user).cloned().unwrap_or_default()
    }

    /// Sets the guild channels `handle` views and their guilds
    /// ([`SessionHandle::set_view`]); returns the large guilds it is now to be sent the
    /// members' presence of.
    pub fn set_view(
        &self,
        handle: &SessionHandle,
        channels: Option<Vec<u64>>,
        guilds: Option<Vec<u64>>,
        large: &[u64],
    ) -> Vec<view::Keep> {
        let mut m = self.lock();
        let before = handle.view_index();
        let keep = handle.set_view(channels, guilds, large, &mut m.holds);
        let after = handle.view_index();
        if before != after && m.by_id.contains_key(&handle.id) {
            m.note(handle.user, before.as_ref(), false);
            m.note(handle.user, after.as_ref(), true);
        }
        keep
    }

    /// Of the users for whom `wanted` holds, those with a session here that looks at guild
    /// `guild` (or at everything), sorted.
    pub fn looking_at(&self, guild: u64, mut wanted: impl FnMut(UserId) -> bool) -> Vec<UserId> {
        let m = self.lock();
        let mut out: Vec<UserId> = m
            .looking
            .get(&guild)
            .into_iter()
            .flat_map(|l| l.keys())
            .chain(m.unnarrowed.keys())
            .copied()
            .filter(|u| wanted(*u))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sends the `ChannelActivity` reports whose time has come; returns how many sessions
    /// were due.
    pub fn report_due(&self, now: Instant) -> usize {
        let due: Vec<(Instant, std::sync::Weak<SessionHandle>)> = {
            let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_empty() {
                return 0;
            }
            let mut due = Vec::new();
            r.retain(|(at, h)| {
                if *at <= now {
                    due.push((*at, h.clone()));
                    false
                } else {
                    true
                }
            });
            due
        };
        for (at, h) in &due {
            if let Some(h) = h.upgrade() {
                h.report_activity(&mut self.lock().holds, *at, now);
            }
        }
        due.len()
    }

    /// Forgets detached sessions whose resume window has passed; returns their users (one
    /// entry per session).
    pub fn sweep(&self, now: Instant) -> Vec<UserId> {
        let expired: Vec<(SessionId, UserId)> = self
            .lock()
            .by_id
            .values()
            .filter(|h| h.expired(now))
            .map(|h| (h.id, h.user))
            .collect();
        expired
            .into_iter()
            .filter(|(id, _)| self.remove(id))
            .map(|(_, u)| u)
            .collect()
    }

    /// Carries out `order` on this node: attached sessions it covers are closed with its
    /// code (and end, as terminal closes do); detached ones are forgotten at once (no resume).
    /// Returns the users of the sessions forgotten (one entry per session) and how many
    /// sessions it covered.
    pub fn apply(&self, order: &Order, revocations: &crate::auth::Revocations) -> (Vec<UserId>, usize) {
        let (covered, code, reason): (Vec<Arc<SessionHandle>>, CloseCode, &str) = match order {
            Order::Revoke(r) => {
                let candidates = if r.user_id > 0 {
                    self.of_user(r.user_id)
                } else {
                    self.lock().by_id.values().cloned().collect()
                };
                let covered = candidates.into_iter().filter(|h| h.revoked(revocations)).collect();
                (covered, CloseCode::TOKEN_REVOKED, "token revoked")
            }
            Order::Disconnect {
                user_id,
                session,
                reconnect,
                reason,
            } => {
                let code = if *reconnect {
                    CloseCode::DISCONNECTED
                } else {
                    CloseCode::REMOVED
                };
                let mut of = self.of_user(*user_id);
                of.retain(|h| session.is_none_or(|s| h.id == s));
                (of, code, reason.as_str())
            }
            // Not orders to sessions: the fan-out (a list) and the voice part carry them out.
            Order::Voice { .. } | Order::ListSessions { .. } => return (Vec::new(), 0),
        };
        let n = covered.len();
        let mut forgotten = Vec::new();
        for h in covered {
            if !h.close(code, reason) && self.remove(&h.id) {
                forgotten.push(h.user);
            }
        }
        (forgotten, n)
    }

    /// `user`'s sessions here, as the server API lists them.
    pub fn summaries(&self, user: UserId) -> Vec<SessionSummary> {
        self.of_user(user).iter().filter_map(|h| h.summary()).collect()
    }

    /// Number of sessions attached to a connection.
    pub fn attached(&self) -> usize {
        self.lock().by_id.values().filter(|h| h.attached()).count()
    }

    /// Number of sessions, detached ones (awaiting a resume) included.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How one event reaches many users' sessions here ([`crate::fanout::Deliver`]): per user
/// under the map lock (never held across users: the engine's loop takes it too), and one
/// wake-up of the engine's loop for them all (an [`crate::engine::Batch`]).
impl Sessions {
    /// Queues an encoded event on `lane` of every session of `user` on this node.
    fn push_to_user(&self, user: UserId, lane: Lane, event: &Bytes) {
        // Under the map lock (no list copy per delivery): `push_event` never waits.
        if let Some(list) = self.lock().by_user.get(&user) {
            for h in list {
                h.push_event(lane, event.clone());
            }
        }
    }

    /// Queues a presence event for each session of `user` that looks at one of `guilds` —
    /// the large guilds it reached the user through ([`view`]). Returns how many got it.
    fn push_presence_to_viewers(&self, user: UserId, guilds: &[u64], event: &Bytes) -> u64 {
        let mut n = 0;
        if let Some(list) = self.lock().by_user.get(&user) {
            for h in list {
                if h.views_any_guild(guilds) {
                    h.push_event(Lane::Presence, event.clone());
                    n += 1;
                }
            }
        }
        n
    }
}

impl crate::fanout::Deliver for Sessions {
    fn to_users(&self, users: &[u64], lane: Lane, event: &Bytes) {
        let _batch = crate::engine::Batch::begin();
        for u in users {
            self.push_to_user(*u, lane, event);
        }
    }

    fn to_channel(
        &self,
        users: &[u64],
        lane: Lane,
        channel: u64,
        seq: Option<u64>,
        event: &Bytes,
        now: Instant,
    ) -> u64 {
        // A user each of whose sessions holds the channel already is passed over, unless
        // one of them views every channel (a view that names a channel holds none of it;
        // one that went back to every channel still reports what it held): their reports
        // will say the newest seq ([`view::Holds`]) — most of a large guild, most of the
        // time. A user none of whose sessions views it is passed
        // over by typing. Any other user's sessions each decide
        // ([`SessionHandle::take_channel_event`]): queued if it views the channel, else held
        // back for its coalesced report, due when it says.
        let _batch = crate::engine::Batch::begin();
        let passive_seq = seq.filter(|_| lane == Lane::Chat);
        let (mut held, mut later) = (0, Vec::new());
        if let Some(s) = passive_seq {
            // The users passed over will be told this seq (or a newer one).
            self.lock().holds.saw(channel, s);
        }
        for chunk in users.chunks(USERS_PER_LOCK) {
            let mut m = self.lock();
            let SessionMaps {
                by_user,
                unnarrowed,
                viewing,
                holds,
                ..
            } = &mut *m;
            let viewers = viewing.get(&channel);
            for u in chunk {
                let Some(list) = by_user.get(u) else { continue };
                let n = list.len() as u32;
                let passed_over = match passive_seq {
                    Some(_) => holds.count(channel, *u) >= n && !unnarrowed.contains_key(u),
                    None => !unnarrowed.contains_key(u) && !viewers.is_some_and(|v| v.contains_key(u)),
                };
                if passed_over {
                    held += u64::from(n);
                    continue;
                }
                for h in list {
                    let (queued, report_at) = h.take_channel_event(lane, channel, seq, event, now, holds);
                    held += u64::from(!queued);
                    if let Some(at) = report_at {
                        later.push((at, Arc::downgrade(h)));
                    }
                }
            }
        }
        if !later.is_empty() {
            self.reports.lock().unwrap_or_else(|p| p.into_inner()).extend(later);
        }
        held
    }

    fn to_lookers(&self, looking: &[(u64, u64)], event: &Bytes) -> u64 {
        let _batch = crate::engine::Batch::begin();
        let mut reached = 0;
        let mut guilds = Vec::new();
        for run in looking.chunk_by(|a, b| a.0 == b.0) {
            guilds.clear();
            guilds.extend(run.iter().map(|(_, g)| *g));
            if self.push_presence_to_viewers(run[0].0, &guilds, event) > 0 {
                reached += 1;
            }
        }
        reached
    }

    fn looking_at(&self, guild: u64, wanted: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
        Sessions::looking_at(self, guild, wanted)
    }

    fn looks_at(&self, user: u64, guild: u64) -> bool {
        self.lock()
            .by_user
            .get(&user)
            .is_some_and(|list| list.iter().any(|h| h.views_any_guild(&[guild])))
    }

    fn carry_out(&self, order: &Order, revocations: &crate::auth::Revocations) -> (Vec<u64>, usize) {
        self.apply(order, revocations)
    }

    fn summaries(&self, user: u64) -> Vec<SessionSummary> {
        Sessions::summaries(self, user)
    }
}

/// A session opening here, as the fan-out attaches it ([`crate::fanout::Fanout::open`]).
pub struct Joining {
    /// The session.
    pub handle: Arc<SessionHandle>,
    /// Where it is attached.
    pub sessions: Arc<Sessions>,
}

impl crate::fanout::Opening for Joining {
    fn user(&self) -> u64 {
        self.handle.user
    }

    fn attach(&self) {
        self.sessions.insert(self.handle.clone());
    }

    fn push(&self, lane: Lane, event: Bytes) {
        self.handle.push_event(lane, event);
    }
}

/// The session state without any connection: attachments and their generations, resume
/// and its races, lane rules, replay, slow consumers — in memory, deterministic.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    /// What the session asks of its connection's owner.
    #[derive(Debug)]
    enum Cmd {
        Close(CloseCode),
    }

    /// A connection's owner as the session sees it: asked closes go to `cmd` (refused once
    /// its receiver is gone, as the loop's queue is once the loop stops), direct closes are
    /// recorded.
    #[derive(Debug)]
    struct TestLink {
        cmd: mpsc::Sender<Cmd>,
        closed: Arc<Recorder>,
    }

    impl Link for TestLink {
        fn ask_close(&self, code: CloseCode, _reason: String) -> bool {
            !matches!(
                self.cmd.try_send(Cmd::Close(code)),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        }
        fn close_now(&self, code: CloseCode, reason: &str) {
            self.closed
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((code.0, reason.into()));
        }
    }

    /// A lane whose frames queue up to the channel's capacity.
    impl LaneSink for mpsc::Sender<LaneOut> {
        fn push(&self, out: LaneOut) -> Result<(), SinkError> {
            self.try_send(out).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SinkError::Full,
                mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
            })
        }
    }

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(u32, String)>>);

    fn handle(max_events: usize) -> SessionHandle {
        SessionHandle::new(
            SessionId([7; 16]),
            42,
            ReplayLimits {
                max_events,
                max_bytes: 1 << 20,
                window: Duration::from_secs(120),
            },
        )
    }

    fn conn(h: &SessionHandle, resume_from: [u64; 5]) -> (u64, mpsc::Receiver<Cmd>, Arc<Recorder>) {
        let (tx, rx) = mpsc::channel(8);
        let rec = Arc::new(Recorder::default());
        let link = Arc::new(TestLink {
            cmd: tx,
            closed: rec.clone(),
        });
        (h.attach_link(link, resume_from), rx, rec)
    }

    fn event(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn seqs(backlog: &[(u64, Bytes)]) -> Vec<u64> {
        backlog.iter().map(|(s, _)| *s).collect()
    }

    fn drain_events(rx: &mut mpsc::Receiver<LaneOut>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(LaneOut::Event(seq, _)) = rx.try_recv() {
            out.push(seq);
        }
        out
    }

    #[test]
    fn events_before_a_lane_opens_are_its_backlog_then_live() {
        let h = handle(100);
        let (g, _cmd, _) = conn(&h, [0; 5]);
        h.push_event(Lane::Chat, event(1));
        h.push_event(Lane::Chat, event(2));
        let (tx, mut rx) = mpsc::channel(16);
        let backlog = h.attach_lane(g, Lane::Chat, tx).unwrap();
        assert_eq!(seqs(&backlog), vec![1, 2]);
        h.push_event(Lane::Chat, event(3));
        assert_eq!(drain_events(&mut rx), vec![3], "live after the backlog, nothing twice");
        let (tx2, _rx2) = mpsc::channel(16);
        assert_eq!(h.attach_lane(g, Lane::Chat, tx2).unwrap_err(), AttachError::AlreadyOpen);
        assert_eq!(
            h.sent_seqs(),
            vec![LaneSeq {
                lane: Lane::Chat,
                seq: 3
            }]
        );
    }

    #[test]
    fn a_resume_replays_exactly_what_the_client_lacks() {
        let h = handle(100);
        let (g1, _cmd1, _) = conn(&h, [0; 5]);
        let (tx, _rx) = mpsc::channel(16);
        h.attach_lane(g1, Lane::Chat, tx).unwrap();
        for n in 1..=5 {
            h.push_event(Lane::Chat, event(n));
        }
        // The connection is lost; events keep coming while detached.
        assert!(h.detach(g1, Instant::now() + Duration::from_secs(120)));
        h.push_event(Lane::Chat, event(6));
        // The client processed up to 3: replay 4, 5, 6.
        let mut from = [0; 5];
        from[Lane::Chat.index()] = 3;
        assert!(h.can_replay(&from).is_ok());
        let (g2, _cmd2, _) = conn(&h, from);
        let (tx, mut rx) = mpsc::channel(16);
        assert_eq!(seqs(&h.attach_lane(g2, Lane::Chat, tx).unwrap()), vec![4, 5, 6]);
        h.push_event(Lane::Chat, event(7));
        assert_eq!(drain_events(&mut rx), vec![7]);
    }

    #[test]
    fn a_newer_connection_replaces_the_old_whose_cleanup_cannot_detach_it() {
        let h = handle(100);
        let (g1, mut cmd1, _) = conn(&h, [0; 5]);
        let (g2, _cmd2, _) = conn(&h, [0; 5]);
        // The old connection is told to close, as replaced.
        match cmd1.try_recv() {
            Ok(Cmd::Close(code)) => assert_eq!(code, CloseCode::SESSION_REPLACED),
            other => panic!("{other:?}"),
        }
        // Its late cleanup does nothing to the new one, nor can it open lanes.
        assert!(!h.detach(g1, Instant::now()));
        assert!(h.attached());
        let (tx, _rx) = mpsc::channel(16);
        assert_eq!(h.attach_lane(g1, Lane::Chat, tx).unwrap_err(), AttachError::Detached);
        let (tx, _rx) = mpsc::channel(16);
        assert!(h.attach_lane(g2, Lane::Chat, tx).is_ok());
    }

    #[test]
    fn a_replay_that_fell_out_of_the_buffer_is_refused() {
        let h = handle(3);
        let (g1, _cmd, _) = conn(&h, [0; 5]);
        for n in 1..=6 {
            h.push_event(Lane::Chat, event(n));
        }
        h.detach(g1, Instant::now() + Duration::from_secs(120));
        let mut from = [0; 5];
        from[Lane::Chat.index()] = 1;
        assert!(h.can_replay(&from).is_err(), "2 and 3 are gone");
        from[Lane::Chat.index()] = 3;
        assert!(h.can_replay(&from).is_ok());
        // Accepted at 3, but more events push 4 out before the lane reopens: refused then.
        let (g2, _cmd2, _) = conn(&h, from);
        h.push_event(Lane::Chat, event(7));
        let (tx, _rx) = mpsc::channel(16);
        assert!(matches!(h.attach_lane(g2, Lane::Chat, tx), Err(AttachError::Lost(_))));
    }

    #[test]
    fn lanes_the_client_never_reads_do_not_cost_it_an_exact_resume() {
        // A chat-only client (the soak's): the typing and presence lanes are never opened,
        // and their events outnumber the buffer while the client is away.
        let h = handle(10);
        let (g1, _cmd, _) = conn(&h, [0; 5]);
        let (tx, _rx) = mpsc::channel(64);
        h.attach_lane(g1, Lane::Chat, tx).unwrap();
        for n in 1..=3 {
            h.push_event(Lane::Chat, event(n));
        }
        h.detach(g1, Instant::now() + Duration::from_secs(120));
        for n in 4..=6 {
            h.push_event(Lane::Chat, event(n));
            for _ in 0..10 {
                h.push_event(Lane::Typing, event(n));
                h.push_event(Lane::Presence, event(n));
            }
        }
        let mut from = [0; 5];
        from[Lane::Chat.index()] = 3;
        assert!(h.can_replay(&from).is_ok(), "typing and presence must not refuse it");
        let (g2, _cmd2, _) = conn(&h, from);
        let (tx, _rx) = mpsc::channel(64);
        assert_eq!(seqs(&h.attach_lane(g2, Lane::Chat, tx).unwrap()), vec![4, 5, 6]);
        // Opening typing later gives what is left of it, newest last, no refusal.
        let (tx, _rx) = mpsc::channel(64);
        let typing = seqs(&h.attach_lane(g2, Lane::Typing, tx).unwrap());
        assert_eq!(typing.last(), Some(&30));
        assert!(typing.len() < 30);
    }

    #[test]
    fn unopened_state_lanes_keep_a_short_tail_and_acknowledged_events_are_released() {
        let h = handle(2_000);
        let (g, _cmd, _) = conn(&h, [0; 5]);
        for n in 0..200u8 {
            h.push_event(Lane::Typing, event(n));
        }
        // Never opened: only the tail is kept, and opening gives it.
        assert_eq!(h.lock().replay.len(), UNOPENED_STATE_TAIL);
        let (tx, _rx) = mpsc::channel(256);
        let typing = seqs(&h.attach_lane(g, Lane::Typing, tx).unwrap());
        assert_eq!(typing.len(), UNOPENED_STATE_TAIL);
        assert_eq!(typing.last(), Some(&200));
        // Opened: kept in full until the client acknowledges them.
        let (tx, _rx) = mpsc::channel(256);
        h.attach_lane(g, Lane::Chat, tx).unwrap();
        for n in 0..100u8 {
            h.push_event(Lane::Typing, event(n));
            h.push_event(Lane::Chat, event(n));
        }
        assert_eq!(h.lock().replay.len(), UNOPENED_STATE_TAIL + 200);
        h.record_acks(&[
            LaneSeq {
                lane: Lane::Chat,
                seq: 60,
            },
            LaneSeq {
                lane: Lane::Typing,
                seq: 999,
            },
        ]);
        assert_eq!(h.lock().replay.len(), 40, "chat 61..=100 left");
        // A claim beyond what was sent counts as what was sent.
        assert!(h.acked_seqs().contains(&LaneSeq {
            lane: Lane::Typing,
            seq: 300
        }));
        let mut from = [0; 5];
        from[Lane::Chat.index()] = 60;
        from[Lane::Typing.index()] = 300;
        assert!(h.can_replay(&from).is_ok());
        from[Lane::Chat.index()] = 59;
        assert!(h.can_replay(&from).is_err(), "60 was released");
    }

    #[test]
    fn a_full_lane_queue_closes_the_session_as_a_slow_consumer() {
        let h = handle(100);
        let (g, mut cmd, _) = conn(&h, [0; 5]);
        let (tx, _rx_never_read) = mpsc::channel(2);
        h.attach_lane(g, Lane::Typing, tx).unwrap();
        for n in 1..=3 {
            h.push_event(Lane::Typing, event(n));
        }
        match cmd.try_recv() {
            Ok(Cmd::Close(code)) => assert_eq!(code, CloseCode::SLOW_CONSUMER),
            other => panic!("{other:?}"),
        }
        // Every event is still in the buffer for a resume.
        h.detach(g, Instant::now() + Duration::from_secs(120));
        assert!(h.can_replay(&[0; 5]).is_ok());
    }

    #[test]
    fn a_close_without_a_session_task_closes_the_connection_directly() {
        let h = handle(100);
        let (_g, cmd, rec) = conn(&h, [0; 5]);
        drop(cmd);
        assert!(h.close(CloseCode::RATE_LIMITED, "flood"));
        assert_eq!(
            *rec.0.lock().unwrap_or_else(|p| p.into_inner()),
            vec![(CloseCode::RATE_LIMITED.0, "flood".to_string())]
        );
    }

    #[test]
    fn detached_sessions_expire_after_their_window() {
        let h = handle(100);
        let (g, _cmd, _) = conn(&h, [0; 5]);
        let t = Instant::now();
        h.detach(g, t + Duration::from_secs(120));
        assert!(!h.expired(t + Duration::from_secs(119)));
        assert!(h.expired(t + Duration::from_secs(120)));
        let (_g2, _cmd2, _) = conn(&h, [0; 5]);
        assert!(!h.expired(t + Duration::from_secs(500)), "resumed: no longer expiring");
    }

    /// A session of the randomized run below, as its client sees it.
    struct Client {
        h: Arc<SessionHandle>,
        chat: mpsc::Receiver<LaneOut>,
        _link: mpsc::Receiver<Cmd>,
        view: Option<Vec<u64>>,
        /// Per channel, the newest seq held back from it and not yet reported.
        owed: HashMap<u64, u64>,
        /// When it was last sent a report.
        last_report: Option<Instant>,
    }

    impl Client {
        /// What its chat lane was sent since last asked.
        fn events(&mut self) -> Vec<Bytes> {
            std::iter::from_fn(|| match self.chat.try_recv() {
                Ok(LaneOut::Event(_, b)) => Some(b),
                Err(_) => None,
            })
            .collect()
        }

        /// Takes in the `ChannelActivity` reports among `events`, sent at `now`; returns how
        /// many.
        fn reported(&mut self, events: &[Bytes], newest: &[u64], now: Instant) -> usize {
            let mut n = 0;
            for b in events {
                let Ok(quaver_proto::EventBody::ChannelActivity { channels }) = quaver_proto::codec::decode(b) else {
                    continue;
                };
                n += 1;
                if let Some(last) = self.last_report.replace(now) {
                    assert!(now >= last + view::ACTIVITY_EVERY, "at most one report per interval");
                }
                for cs in channels {
                    assert!(cs.seq <= newest[cs.channel_id as usize], "never past the newest");
                    if self.owed.get(&cs.channel_id).is_some_and(|o| *o <= cs.seq) {
                        self.owed.remove(&cs.channel_id);
                    }
                }
            }
            n
        }
    }

    #[test]
    fn passive_sessions_passed_over_are_still_told_each_channels_newest_seq() {
        for seed in [0x9E37_79B9_7F4A_7C15, 1, 0xDEAD_BEEF, 42] {
            passive_run(seed);
        }
    }

    /// One run from `seed`: sessions of six users come and go and change their views while
    /// messages arrive in three channels, each to a varying audience (permissions), and time
    /// passes. After every step the holds index says exactly what the sessions hold; a
    /// session is sent a message live exactly when it views the channel; and every message
    /// held back from a session is reported to it, at its seq or newer and never past the
    /// channel's newest, unless it came to view the channel (then it fetches).
    fn passive_run(seed: u64) {
        let sessions = Sessions::default();
        let limits = ReplayLimits {
            max_events: 100_000,
            max_bytes: 1 << 30,
            window: Duration::from_secs(120),
        };
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut clients: Vec<Client> = Vec::new();
        let mut newest = [0u64; 4];
        let mut t = Instant::now();
        let mut ids = 0u16;
        let (mut passed_over, mut reports) = (0, 0);
        for _ in 0..4_000 {
            match next(20) {
                0..=1 if clients.len() < 12 => {
                    ids += 1;
                    let mut id = [0; 16];
                    id[..2].copy_from_slice(&ids.to_le_bytes());
                    let h = Arc::new(SessionHandle::new(SessionId(id), next(6) + 1, limits));
                    let (g, link, _) = conn(&h, [0; 5]);
                    let (tx, chat) = mpsc::channel(100_000);
                    h.attach_lane(g, Lane::Chat, tx).unwrap();
                    sessions.insert(h.clone());
                    clients.push(Client {
                        h,
                        chat,
                        _link: link,
                        view: None,
                        owed: HashMap::new(),
                        last_report: None,
                    });
                }
                2 if !clients.is_empty() => {
                    let c = clients.swap_remove(next(clients.len() as u64) as usize);
                    assert!(sessions.remove(&c.h.id));
                }
                3..=5 if !clients.is_empty() => {
                    let i = next(clients.len() as u64) as usize;
                    let view = match next(4) {
                        0 => None,
                        k => Some(
                            (1..=3)
                                .filter(|c| (k + c) % 3 == 0 || next(3) == 0)
                                .collect::<Vec<u64>>(),
                        ),
                    };
                    let guilds = view.as_ref().map(|_| vec![10]);
                    sessions.set_view(&clients[i].h, view.clone(), guilds, &[]);
                    if let Some(v) = &view {
                        clients[i].owed.retain(|c, _| !v.contains(c));
                    }
                    clients[i].view = view;
                }
                6..=16 => {
                    let channel = next(3) + 1;
                    newest[channel as usize] += 1;
                    let seq = newest[channel as usize];
                    let users: Vec<u64> = (1..=6).filter(|_| next(5) != 0).collect();
                    let body = Bytes::from(seq.to_be_bytes().to_vec());
                    crate::fanout::Deliver::to_channel(&sessions, &users, Lane::Chat, channel, Some(seq), &body, t);
                    for c in clients.iter_mut().filter(|c| users.contains(&c.h.user)) {
                        let live = c.view.as_ref().is_none_or(|v| v.contains(&channel));
                        let events = c.events();
                        let got = events.iter().filter(|b| **b == body).count();
                        assert_eq!(got, usize::from(live), "live exactly when viewed");
                        if !live {
                            c.owed.insert(channel, seq);
                        }
                        // A report that went at once (the first after a quiet interval).
                        reports += c.reported(&events, &newest, t);
                    }
                }
                _ => {
                    t += Duration::from_millis(next(1_500));
                    sessions.report_due(t);
                }
            }
            for c in &mut clients {
                let events = c.events();
                reports += c.reported(&events, &newest, t);
            }
            // The index is what the sessions hold.
            let m = sessions.lock();
            for channel in 1..=3 {
                for user in 1..=6 {
                    let holding = clients
                        .iter()
                        .filter(|c| c.h.user == user)
                        .filter(|c| {
                            c.h.lock()
                                .view
                                .as_ref()
                                .is_some_and(|v| v.held().iter().any(|(h, _)| *h == channel))
                        })
                        .count();
                    assert_eq!(m.holds.count(channel, user), holding as u32);
                    passed_over += u32::from(holding > 0);
                }
            }
        }
        // Long enough for every scheduled report.
        t += view::ACTIVITY_MAX + view::ACTIVITY_SPREAD;
        sessions.report_due(t);
        for c in &mut clients {
            let events = c.events();
            c.reported(&events, &newest, t);
            assert!(c.owed.is_empty(), "{:?} never told of {:?}", c.h.id, c.owed);
        }
        assert!(
            passed_over > 100 && reports > 100,
            "the run exercised it: {passed_over} {reports}"
        );
        for c in &clients {
            assert!(sessions.remove(&c.h.id));
        }
        let m = sessions.lock();
        assert!(m.holds.is_empty() && m.viewing.is_empty(), "nothing left behind");
    }

    #[test]
    fn the_views_index_follows_each_sessions_view_and_its_end() {
        let sessions = Sessions::default();
        let limits = ReplayLimits {
            max_events: 10,
            max_bytes: 1 << 20,
            window: Duration::from_secs(120),
        };
        let a = Arc::new(SessionHandle::new(SessionId([1; 16]), 1, limits));
        let b = Arc::new(SessionHandle::new(SessionId([2; 16]), 2, limits));
        let b2 = Arc::new(SessionHandle::new(SessionId([3; 16]), 2, limits));
        for h in [&a, &b, &b2] {
            sessions.insert(h.clone());
        }
        let all = |_| true;
        // No view declared: every session looks at everything.
        assert_eq!(sessions.looking_at(10, all), [1, 2]);
        sessions.set_view(&a, Some(vec![100]), Some(vec![10]), &[10, 20]);
        sessions.set_view(&b, Some(vec![]), Some(vec![]), &[10, 20]);
        assert_eq!(
            sessions.looking_at(10, all),
            [1, 2],
            "b's other session declared nothing"
        );
        assert_eq!(sessions.looking_at(20, all), [2]);
        sessions.set_view(&b2, Some(vec![200]), Some(vec![20]), &[10, 20]);
        assert_eq!(sessions.looking_at(10, all), [1]);
        assert_eq!(sessions.looking_at(20, all), [2]);
        assert_eq!(
            sessions.looking_at(20, |u| u != 2),
            Vec::<u64>::new(),
            "filtered by the caller"
        );
        // A session that ends leaves the index.
        assert!(sessions.remove(&b2.id));
        assert!(sessions.looking_at(20, all).is_empty());
        sessions.set_view(&a, None, None, &[10, 20]);
        assert_eq!(sessions.looking_at(30, all), [1], "no view again: everything");
        assert!(sessions.remove(&a.id) && sessions.remove(&b.id));
        let m = sessions.lock();
        assert!(m.looking.is_empty() && m.unnarrowed.is_empty(), "nothing left behind");
    }
}
