//! The task that owns this node's [`PresenceState`] and publishes its changes on the bus.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{DeviceKind, EventBody, Presence, PresenceStatus, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::PresenceState;
use crate::cluster::{Bus, BusEvent};

enum Cmd {
    Connect(u64, SessionId, DeviceKind),
    Disconnect(u64, SessionId),
    Seen(u64, SessionId),
    Set(u64, SessionId, PresenceStatus, Option<String>, Option<String>),
    Snapshot(Vec<u64>, oneshot::Sender<Vec<Presence>>),
}

/// Handle to the presence task.
#[derive(Debug, Clone)]
pub struct PresenceHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("presence command")
    }
}

impl PresenceHandle {
    /// Starts the task.
    pub fn spawn(bus: Arc<dyn Bus>, grace: Duration, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(PresenceState::new(grace, timeout), bus, rx));
        Self { tx }
    }

    /// A session became ready.
    pub fn connect(&self, user: u64, session: SessionId, device: DeviceKind) {
        let _ = self.tx.send(Cmd::Connect(user, session, device));
    }
    /// A session ended.
    pub fn disconnect(&self, user: u64, session: SessionId) {
        let _ = self.tx.send(Cmd::Disconnect(user, session));
    }
    /// A session showed signs of life.
    pub fn seen(&self, user: u64, session: SessionId) {
        let _ = self.tx.send(Cmd::Seen(user, session));
    }
    /// A session set its status.
    pub fn set(
        &self,
        user: u64,
        session: SessionId,
        status: PresenceStatus,
        custom: Option<String>,
        activity: Option<String>,
    ) {
        let _ = self.tx.send(Cmd::Set(user, session, status, custom, activity));
    }
    /// The non-offline presences among `users`.
    pub async fn snapshot(&self, users: Vec<u64>) -> Vec<Presence> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Snapshot(users, tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn publish(bus: &dyn Bus, p: Presence) {
    let user_id = p.user_id;
    let event = Bytes::from(encode_payload(&EventBody::PresenceUpdated { presence: p }));
    bus.publish(BusEvent::Presence { user_id, event });
}

async fn run(mut state: PresenceState, bus: Arc<dyn Bus>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    loop {
        let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
        let cmd = tokio::select! {
            c = rx.recv() => match c { Some(c) => Some(c), None => return },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => None,
        };
        let now = Instant::now();
        let out = match cmd {
            None => state.poll(now),
            Some(Cmd::Connect(u, s, d)) => state.connect(u, s, d, now).into_iter().collect(),
            Some(Cmd::Disconnect(u, s)) => state.disconnect(u, s, now).into_iter().collect(),
            Some(Cmd::Seen(u, s)) => {
                state.seen(u, s, now);
                Vec::new()
            }
            Some(Cmd::Set(u, s, st, c, a)) => state.set(u, s, st, c, a).into_iter().collect(),
            Some(Cmd::Snapshot(users, reply)) => {
                let v = users
                    .into_iter()
                    .map(|u| state.visible(u))
                    .filter(|p| p.status != PresenceStatus::Offline)
                    .collect();
                let _ = reply.send(v);
                Vec::new()
            }
        };
        for p in out {
            publish(bus.as_ref(), p);
        }
    }
}
