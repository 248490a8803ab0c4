//! Session lifecycle: `Hello` → authentication → `Ready`, heartbeats, token refresh, lanes,
//! fetch streams, `Goaway` and closing with a code. Transport-agnostic: it sees only
//! [`quaver_proto::session::Session`].
//!
//! Each session is one task (`session::run`) owning its control stream and timers; each lane
//! has a reader task (requests in) and a writer task (acks and events out, coalesced);
//! other parts of the server reach a session through its [`SessionHandle`].

pub mod control;
pub mod dispatch;
pub mod replay;
pub mod session;
pub mod timers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quaver_proto::session::Session;
use quaver_proto::{CloseCode, Lane, LaneSeq, ServerLane, SessionId, UserId};
use tokio::sync::mpsc;

use self::replay::{Missing, ReplayBuffer, ReplayLimits};

/// Frames queued to a lane writer before the session counts as a slow consumer.
pub const LANE_QUEUE: usize = 1024;

/// What a lane writer sends.
#[derive(Debug)]
pub enum LaneOut {
    /// A reply to a request (ack or error).
    Reply(ServerLane),
    /// An event with its lane seq, its body pre-encoded once for all receivers.
    Event(u64, Bytes),
    /// Signals once everything queued before it was written (the close sequence waits for
    /// it, so queued replies are not cut off).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Commands to a session's own task.
#[derive(Debug)]
pub enum Cmd {
    /// Close the session with this code (sends `Closing` first).
    Close(CloseCode, String),
}

/// The connection a session is attached to (none while detached, awaiting a resume).
#[derive(Debug)]
struct Attachment {
    /// Counts attachments, so a superseded connection's cleanup cannot detach its successor.
    generation: u64,
    session: Session,
    cmd: mpsc::Sender<Cmd>,
    lanes: [Option<mpsc::Sender<LaneOut>>; 5],
    /// Per lane, the position the client resumed from (replay starts after it).
    resume_from: [u64; 5],
}

#[derive(Debug)]
struct Inner {
    attachment: Option<Attachment>,
    next_generation: u64,
    /// Last event seq assigned per lane.
    sent: [u64; 5],
    replay: ReplayBuffer,
    /// While detached: when the session is forgotten.
    detached_until: Option<Instant>,
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
                replay: ReplayBuffer::new(limits),
                detached_until: None,
            }),
            acked: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning only follows a panic elsewhere; the state is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a connection; returns its generation. The previous connection, if any, is
    /// told to close (`session_replaced`).
    fn attach(&self, session: Session, cmd: mpsc::Sender<Cmd>, resume_from: [u64; 5]) -> u64 {
        let mut g = self.lock();
        let generation = g.next_generation;
        g.next_generation += 1;
        if let Some(old) = g.attachment.take() {
            let _ = old.cmd.try_send(Cmd::Close(
                CloseCode::SESSION_REPLACED,
                "resumed on another connection".into(),
            ));
        }
        g.detached_until = None;
        g.attachment = Some(Attachment {
            generation,
            session,
            cmd,
            lanes: Default::default(),
            resume_from,
        });
        generation
    }

    /// Detaches connection `generation` (if it is still the current one); events keep
    /// being buffered until `until`. Returns false if a newer connection took over.
    fn detach(&self, generation: u64, until: Instant) -> bool {
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
    fn attach_lane(
        &self,
        generation: u64,
        lane: Lane,
        tx: mpsc::Sender<LaneOut>,
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
            a.lanes[lane.index()] = Some(tx);
        }
        Ok(backlog)
    }

    /// Queues an event (body encoded with `codec::encode_payload`) on `lane`: numbered,
    /// kept for replay, and written now if the lane is open. A full writer queue closes the
    /// session as a slow consumer (it can resume and get the rest from the buffer).
    pub fn push_event(&self, lane: Lane, body: Bytes) {
        let mut g = self.lock();
        let seq = g.sent[lane.index()] + 1;
        g.sent[lane.index()] = seq;
        g.replay.push(lane, seq, body.clone(), Instant::now());
        let Some(a) = g.attachment.as_ref() else { return };
        let Some(tx) = a.lanes[lane.index()].as_ref() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(LaneOut::Event(seq, body)) {
            let _ = a
                .cmd
                .try_send(Cmd::Close(CloseCode::SLOW_CONSUMER, "lane queue overflow".into()));
        }
    }

    /// Asks the attached connection's task to close it (with its in-band `Closing`). The
    /// first close asked for wins; later ones change nothing.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let g = self.lock();
        if let Some(a) = g.attachment.as_ref()
            && let Err(mpsc::error::TrySendError::Closed(_)) = a.cmd.try_send(Cmd::Close(code, reason.to_string()))
        {
            // The task is gone: close the connection directly. (A full queue means closes
            // are already pending: the task will close, sending `Closing` first.)
            a.session.close(code.0, reason);
        }
    }

    /// Queues a flush marker on every lane writer of connection `generation`; each
    /// receiver resolves once what was queued before it is written.
    fn flush_lanes(&self, generation: u64) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let g = self.lock();
        let Some(a) = g.attachment.as_ref().filter(|a| a.generation == generation) else {
            return Vec::new();
        };
        a.lanes
            .iter()
            .flatten()
            .filter_map(|tx| {
                let (done, rx) = tokio::sync::oneshot::channel();
                tx.try_send(LaneOut::Flush(done)).ok().map(|_| rx)
            })
            .collect()
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

    fn record_acks(&self, lanes: &[LaneSeq]) {
        for l in lanes {
            self.acked[l.lane.index()].fetch_max(l.seq, Ordering::Relaxed);
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
}

#[derive(Debug, Default)]
struct SessionMaps {
    by_id: HashMap<SessionId, Arc<SessionHandle>>,
    by_user: HashMap<UserId, Vec<Arc<SessionHandle>>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionMaps> {
        // Poisoning only follows a panic elsewhere; the maps themselves are consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, h: Arc<SessionHandle>) {
        let mut m = self.lock();
        m.by_user.entry(h.user).or_default().push(h.clone());
        m.by_id.insert(h.id, h);
    }

    /// Forgets a session; false if it was not live.
    fn remove(&self, id: &SessionId) -> bool {
        let mut m = self.lock();
        let Some(h) = m.by_id.remove(id) else { return false };
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

    /// Queues an encoded event on `lane` of every session of `user` on this node.
    pub fn push_to_user(&self, user: UserId, lane: Lane, event: &Bytes) {
        // Under the map lock (no list copy per delivery): `push_event` never waits.
        if let Some(list) = self.lock().by_user.get(&user) {
            for h in list {
                h.push_event(lane, event.clone());
            }
        }
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
