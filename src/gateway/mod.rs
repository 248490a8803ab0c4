//! Session lifecycle: `Hello` → authentication → `Ready`, heartbeats, token refresh, lanes,
//! fetch streams, `Goaway` and closing with a code. Transport-agnostic: it sees only
//! [`quaver_proto::session::Session`].
//!
//! Each session is one task (`session::run`) owning its control stream and timers; each lane
//! has a reader task (requests in) and a writer task (acks and events out, coalesced);
//! other parts of the server reach a session through its [`SessionHandle`].

pub mod dispatch;
pub mod session;
pub mod timers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use quaver_proto::session::{Session, Transport};
use quaver_proto::{CloseCode, Lane, LaneSeq, ServerLane, SessionId, UserId};
use tokio::sync::mpsc;

/// Frames queued to a lane writer before the session counts as a slow consumer.
pub const LANE_QUEUE: usize = 1024;

/// What a lane writer sends.
#[derive(Debug)]
pub enum LaneOut {
    /// A reply to a request (ack or error).
    Reply(ServerLane),
    /// An event, its body pre-encoded once for all receivers; the writer adds the seq.
    Event(Bytes),
}

/// Commands to a session's own task.
#[derive(Debug)]
pub enum Cmd {
    /// Close the session with this code (sends `Closing` first).
    Close(CloseCode, String),
}

/// The parts of a live session that other tasks may use.
#[derive(Debug)]
pub struct SessionHandle {
    /// Session id (resume key).
    pub id: SessionId,
    /// Owner.
    pub user: UserId,
    /// Transport, for metrics and diagnostics.
    pub transport: Transport,
    /// The connection (close, datagrams).
    pub session: Session,
    /// Writer queue of each lane, set once when the client opens it.
    lanes: [OnceLock<mpsc::Sender<LaneOut>>; 5],
    /// Last event seq sent per lane.
    sent: [AtomicU64; 5],
    /// Last event seq the client reported processed per lane (from heartbeats).
    acked: [AtomicU64; 5],
    /// The session task's command queue.
    cmd: mpsc::Sender<Cmd>,
    /// Large fetch replies may be zstd-compressed (negotiated in `Hello`).
    pub zstd: bool,
}

impl SessionHandle {
    fn new(id: SessionId, user: UserId, session: Session, cmd: mpsc::Sender<Cmd>, zstd: bool) -> Self {
        Self {
            id,
            user,
            transport: session.transport(),
            session,
            lanes: Default::default(),
            sent: Default::default(),
            acked: Default::default(),
            cmd,
            zstd,
        }
    }

    /// Queues an event (body encoded with `codec::encode_payload`) on `lane`. Returns
    /// false if the lane is not open. A full queue closes the session as a slow consumer:
    /// dropping the event silently would break the exactly-once promise.
    pub fn push_event(&self, lane: Lane, body: Bytes) -> bool {
        let Some(tx) = self.lanes[lane.index()].get() else {
            return false;
        };
        match tx.try_send(LaneOut::Event(body)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseCode::SLOW_CONSUMER, "lane queue overflow");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the session task to close the session.
    pub fn close(&self, code: CloseCode, reason: &str) {
        if self.cmd.try_send(Cmd::Close(code, reason.to_string())).is_err() {
            // The task is gone or jammed: close the connection directly.
            self.session.close(code.0, reason);
        }
    }

    /// Last event seq sent on each lane that has had events.
    pub fn sent_seqs(&self) -> Vec<LaneSeq> {
        seqs(&self.sent)
    }

    /// Last event seq the client acknowledged on each lane.
    pub fn acked_seqs(&self) -> Vec<LaneSeq> {
        seqs(&self.acked)
    }

    fn record_acks(&self, lanes: &[LaneSeq]) {
        for l in lanes {
            self.acked[l.lane.index()].fetch_max(l.seq, Ordering::Relaxed);
        }
    }
}

fn seqs(a: &[AtomicU64; 5]) -> Vec<LaneSeq> {
    Lane::ALL
        .iter()
        .filter_map(|&lane| {
            let seq = a[lane.index()].load(Ordering::Relaxed);
            (seq > 0).then_some(LaneSeq { lane, seq })
        })
        .collect()
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

    fn insert(&self, h: Arc<SessionHandle>) {
        let mut m = self.lock();
        m.by_user.entry(h.user).or_default().push(h.clone());
        m.by_id.insert(h.id, h);
    }

    fn remove(&self, id: &SessionId) {
        let mut m = self.lock();
        if let Some(h) = m.by_id.remove(id)
            && let Some(list) = m.by_user.get_mut(&h.user)
        {
            list.retain(|x| x.id != *id);
            if list.is_empty() {
                m.by_user.remove(&h.user);
            }
        }
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
        for h in self.of_user(user) {
            h.push_event(lane, event.clone());
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
