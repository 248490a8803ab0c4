//! The task that owns this node's [`PresenceState`] and publishes its changes on the bus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::codec::encode_payload;
use quaver_proto::{DeviceKind, EventBody, Presence, PresenceStatus, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::PresenceState;
use super::registry::Part;
use super::registry::redis::{RENEW_EVERY, RedisRegistry};
use crate::cluster::{Bus, BusEvent};

enum Cmd {
    Connect(u64, SessionId, DeviceKind, Option<super::Chosen>),
    Disconnect(u64, SessionId),
    Seen(u64, SessionId),
    Set(u64, SessionId, PresenceStatus, Option<String>, Option<String>),
    /// The non-offline presences among the users, each with the version its last change was
    /// published with here (`None` while a cluster's registry is away).
    Snapshot(Vec<u64>, oneshot::Sender<Vec<(Presence, Option<u64>)>>),
    /// The registry is reachable again: write every part again.
    Resync,
}

/// Handle to the presence task.
#[derive(Debug, Clone)]
pub struct PresenceHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    registry: Option<Arc<RedisRegistry>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("presence command")
    }
}

impl PresenceHandle {
    /// Starts the task; with `registry`, presence is merged across the cluster's nodes, and
    /// the returned task (the node's liveness in the registry, stopped with the server)
    /// runs too.
    pub fn spawn(
        bus: Arc<dyn Bus>,
        grace: Duration,
        timeout: Duration,
        registry: Option<Arc<RedisRegistry>>,
    ) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = PresenceState::new(grace, timeout);
        tokio::spawn(run(state, bus.clone(), rx, registry.clone()));
        let live = registry
            .as_ref()
            .map(|r| tokio::spawn(liveness(r.clone(), bus, tx.clone())));
        (Self { tx, registry }, live)
    }

    /// A session became ready (`chosen`: what a resumed session had set).
    pub fn connect(&self, user: u64, session: SessionId, device: DeviceKind, chosen: Option<super::Chosen>) {
        let _ = self.tx.send(Cmd::Connect(user, session, device, chosen));
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
    /// The non-offline presences among `users` (across the cluster while its registry
    /// answers; else as this node sees them).
    pub async fn snapshot(&self, users: Vec<u64>) -> Vec<Presence> {
        self.snapshot_versioned(users)
            .await
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// The same, each with its version: the one its latest change was published with (the
    /// fan-out tells a newer change from an older snapshot by it). `None` while a cluster's
    /// registry is away (this node's view, unversioned).
    pub async fn snapshot_versioned(&self, users: Vec<u64>) -> Vec<(Presence, Option<u64>)> {
        if let Some(r) = self.registry.as_ref().filter(|r| r.is_up()) {
            match r.read_versioned(&users).await {
                Ok(v) => return v.into_iter().map(|(p, n)| (p, Some(n))).collect(),
                Err(e) => tracing::warn!(error = %e, "presence registry unreachable: this node's view only"),
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Snapshot(users, tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn publish(bus: &dyn Bus, p: Presence, version: Option<u64>) {
    let user_id = p.user_id;
    let event = Bytes::from(encode_payload(&EventBody::PresenceUpdated { presence: p }));
    bus.publish(BusEvent::Presence {
        user_id,
        event,
        version,
    });
}

/// Renews the node's liveness; when the registry comes back, asks for a resync; removes
/// dead nodes' presence and publishes what changed.
async fn liveness(r: Arc<RedisRegistry>, bus: Arc<dyn Bus>, tx: mpsc::UnboundedSender<Cmd>) {
    let mut was_up = true;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if tx.is_closed() {
            return;
        }
        let up = r.renew().await;
        if up && !was_up {
            tracing::info!("presence registry reachable again: writing this node's presence back");
            let _ = tx.send(Cmd::Resync);
        }
        was_up = up;
        if up {
            match r.reap().await {
                Ok(changes) => {
                    for c in changes {
                        publish(bus.as_ref(), c.presence, Some(c.version));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for dead nodes failed"),
            }
        }
    }
}

async fn run(
    mut state: PresenceState,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    registry: Option<Arc<RedisRegistry>>,
) {
    // What this node last wrote to the registry, per user.
    let mut written: HashMap<u64, Part> = HashMap::new();
    // One node (no registry): every change is published with the next number of one
    // node-wide counter — increasing for every user, which is all a version must be — so a
    // snapshot (numbered with the counter's value when it was read) is told from a later
    // change in the fan-out, as the registry's versions are in a cluster.
    let mut version: u64 = 0;
    loop {
        let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
        let cmd = tokio::select! {
            c = rx.recv() => match c { Some(c) => Some(c), None => return },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => None,
        };
        let now = Instant::now();
        let out = match cmd {
            None => state.poll(now),
            Some(Cmd::Connect(u, s, d, c)) => state.connect(u, s, d, c, now).into_iter().collect(),
            Some(Cmd::Disconnect(u, s)) => state.disconnect(u, s, now).into_iter().collect(),
            Some(Cmd::Seen(u, s)) => {
                state.seen(u, s, now);
                Vec::new()
            }
            Some(Cmd::Set(u, s, st, c, a)) => state.set(u, s, st, c, a).into_iter().collect(),
            Some(Cmd::Snapshot(users, reply)) => {
                let at = registry.is_none().then_some(version);
                let v = users
                    .into_iter()
                    .map(|u| state.visible(u))
                    .filter(|p| p.status != PresenceStatus::Offline)
                    .map(|p| (p, at))
                    .collect();
                let _ = reply.send(v);
                Vec::new()
            }
            Some(Cmd::Resync) => {
                // Every part again (nodes may have removed ours while we were away).
                let users: Vec<u64> = written.keys().copied().chain(state.users()).collect();
                written.clear();
                state.mark_dirty(users);
                Vec::new()
            }
        };
        let dirty = state.take_dirty();
        let Some(r) = registry.as_ref().filter(|r| r.is_up()) else {
            // One node, or the registry is unreachable: what this node sees is published.
            for p in out {
                let v = registry.is_none().then(|| {
                    version += 1;
                    version
                });
                publish(bus.as_ref(), p, v);
            }
            continue;
        };
        for u in dirty {
            let part = state.part(u);
            if written.get(&u) == Some(&part) {
                continue;
            }
            match r.write(u, &part).await {
                Ok(c) => {
                    if part.is_empty() {
                        written.remove(&u);
                    } else {
                        written.insert(u, part);
                    }
                    if c.changed {
                        publish(bus.as_ref(), c.presence, Some(c.version));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence registry unreachable: publishing this node's view");
                    for p in out.iter().filter(|p| p.user_id == u) {
                        publish(bus.as_ref(), p.clone(), None);
                    }
                }
            }
        }
    }
}
