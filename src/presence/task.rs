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
use crate::store::Store;
use crate::webhooks::catalogue::{OfflineWhy, user_presence};

enum Cmd {
    Connect(u64, SessionId, DeviceKind, Option<super::Chosen>),
    Disconnect(u64, SessionId),
    Seen(u64, SessionId),
    Set(u64, SessionId, PresenceStatus, Option<String>, Option<String>),
    /// The non-offline presences among the users (with `true`, the offline ones too), each
    /// with the version its last change was published with here (`None` while a cluster's
    /// registry is away).
    Snapshot(Vec<u64>, bool, oneshot::Sender<Vec<(Presence, Option<u64>)>>),
    /// Which of the users have a session here (or are in their reconnect grace).
    Live(Vec<u64>, oneshot::Sender<Vec<u64>>),
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
    /// runs too. With `store`, a user crossing between offline and online is recorded as a
    /// webhook event (`user.online` / `user.offline`) before it is published.
    pub fn spawn(
        bus: Arc<dyn Bus>,
        grace: Duration,
        timeout: Duration,
        registry: Option<Arc<RedisRegistry>>,
        store: Option<Store>,
    ) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = PresenceState::new(grace, timeout);
        tokio::spawn(run(state, bus.clone(), rx, registry.clone(), store.clone()));
        let live = registry
            .as_ref()
            .map(|r| tokio::spawn(liveness(r.clone(), bus, tx.clone(), store)));
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

    /// Which of `users` have a session anywhere (invisible ones too), or lost their last
    /// one less than the reconnect grace ago — across the cluster while its registry
    /// answers, else on this node.
    pub async fn live(&self, users: Vec<u64>) -> Vec<u64> {
        if let Some(r) = self.registry.as_ref().filter(|r| r.is_up()) {
            match r.live(&users).await {
                Ok(v) => return v,
                Err(e) => tracing::warn!(error = %e, "presence registry unreachable: this node's view only"),
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Live(users, tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// How many nodes of the cluster are live, from its registry (`None` without one, or
    /// while it does not answer).
    pub async fn live_nodes(&self) -> Option<usize> {
        let r = self.registry.as_ref().filter(|r| r.is_up())?;
        match r.live_nodes().await {
            Ok(v) => Some(v.len()),
            Err(e) => {
                tracing::warn!(error = %e, "presence registry unreachable: the cluster's nodes are not known");
                None
            }
        }
    }

    /// The same, each with its version: the one its latest change was published with (the
    /// fan-out tells a newer change from an older snapshot by it). `None` while a cluster's
    /// registry is away (this node's view, unversioned).
    pub async fn snapshot_versioned(&self, users: Vec<u64>) -> Vec<(Presence, Option<u64>)> {
        self.read(users, false).await
    }

    /// Every one of `users`, offline ones too (for a session that may hold an older status
    /// of them: a large guild it looks at again), each with its version as in
    /// [`snapshot_versioned`](Self::snapshot_versioned).
    pub async fn snapshot_all(&self, users: Vec<u64>) -> Vec<(Presence, Option<u64>)> {
        self.read(users, true).await
    }

    async fn read(&self, users: Vec<u64>, offline: bool) -> Vec<(Presence, Option<u64>)> {
        if let Some(r) = self.registry.as_ref().filter(|r| r.is_up()) {
            match r.read_versioned(&users, offline).await {
                Ok(v) => return v.into_iter().map(|(p, n)| (p, Some(n))).collect(),
                Err(e) => tracing::warn!(error = %e, "presence registry unreachable: this node's view only"),
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Snapshot(users, offline, tx)).is_err() {
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

/// The version after `last`: one more, or the clock in µs (`now_ms` · 1000) if that is
/// greater, so versions keep increasing across restarts (as the registry's do in a cluster).
fn next_version(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(now_ms.saturating_mul(1000))
}

/// Records `user.online` / `user.offline` when `p` crosses between them (a failure is
/// logged: the presence change itself still goes out).
async fn record(store: Option<&Store>, p: &Presence, version: u64, was_online: bool, why: OfflineWhy) {
    let Some(store) = store else { return };
    let Some(ev) = user_presence(p, version, was_online, why) else {
        return;
    };
    if let Err(e) = store.hook_record_now(ev, None, crate::ids::now_ms()).await {
        tracing::warn!(error = %e, user = p.user_id, "recording a presence webhook event failed");
    }
}

/// Records `session.closed` (reason `node_lost`) for each user who had sessions on a dead
/// node, in one transaction.
async fn record_node_lost(store: Option<&Store>, node: &str, users: &[u64]) {
    use crate::webhooks::catalogue::{SessionEnd, WebhookSessionClosed, user_event};
    let Some(store) = store else { return };
    if users.is_empty() || !store.hooks().wants("session.closed") {
        return;
    }
    let now = crate::ids::now_ms();
    let events: Vec<_> = users
        .iter()
        .map(|u| {
            let data = WebhookSessionClosed {
                user_id: crate::api::types::Id(*u),
                session_id: None,
                node: node.to_string(),
                close_code: None,
                resumable: false,
                reason: SessionEnd::NodeLost,
            };
            (user_event("session.closed", *u, &data), now)
        })
        .collect();
    if let Err(e) = store.hook_record_batch(&events).await {
        tracing::warn!(error = %e, node, "recording session.closed for a dead node's users failed");
    }
}

/// Renews the node's liveness; when the registry comes back, asks for a resync; removes
/// dead nodes' presence and publishes what changed.
async fn liveness(r: Arc<RedisRegistry>, bus: Arc<dyn Bus>, tx: mpsc::UnboundedSender<Cmd>, store: Option<Store>) {
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
                Ok((changes, dead)) => {
                    for (node, users) in dead {
                        record_node_lost(store.as_ref(), &node, &users).await;
                    }
                    for c in changes {
                        record(
                            store.as_ref(),
                            &c.presence,
                            c.version,
                            c.was_online,
                            OfflineWhy::NodeLost,
                        )
                        .await;
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
    store: Option<Store>,
) {
    // What this node last wrote to the registry, per user.
    let mut written: HashMap<u64, Part> = HashMap::new();
    // One node: the users last published as not offline (to tell when one crosses).
    let mut online: std::collections::HashSet<u64> = Default::default();
    // A cluster whose registry was away: users whose presence changed meanwhile (no
    // webhook event could be decided then). Once their part is written again, one that
    // is offline gets its `user.offline` even if the registry lost what it had (a Redis
    // restart without persistence), so a disconnect during an outage is never missed.
    let mut unsure: std::collections::HashSet<u64> = Default::default();
    // One node (no registry): every change is published with the next number of one
    // node-wide counter — increasing for every user, which is all a version must be — so a
    // snapshot (numbered with the counter's value when it was read) is told from a later
    // change in the fan-out, as the registry's versions are in a cluster. Like those, it
    // is one more than before or the clock in µs, whichever is greater: `user.online` /
    // `user.offline` carry it, and a webhook receiver compares it across restarts.
    let mut version: u64 = 0;
    // The next grace end or sweep: a scan of every user, so it is done only when the task
    // wakes for it (and on a resync). A command moves deadlines later or adds one no sooner
    // than `soonest_new_deadline`: the one kept stays a lower bound, and at worst the task
    // wakes early, finds nothing due, and scans then. (A scan per heartbeat made it 2 % of
    // the server's CPU at F0; a scan per connect or snapshot made 10,000 members joining one
    // guild quadratic — a fifth of that set-up's samples.)
    let mut deadline = state.next_deadline();
    loop {
        let wake = deadline.map(tokio::time::Instant::from_std);
        let cmd = tokio::select! {
            c = rx.recv() => match c { Some(c) => Some(c), None => return },
            _ = async { match wake { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => None,
        };
        let now = Instant::now();
        let rescan = matches!(cmd, None | Some(Cmd::Resync));
        let adds = matches!(cmd, Some(Cmd::Connect(..) | Cmd::Disconnect(..)));
        let out = match cmd {
            None => state.poll(now),
            Some(Cmd::Connect(u, s, d, c)) => state.connect(u, s, d, c, now).into_iter().collect(),
            Some(Cmd::Disconnect(u, s)) => state.disconnect(u, s, now).into_iter().collect(),
            Some(Cmd::Seen(u, s)) => {
                state.seen(u, s, now);
                Vec::new()
            }
            Some(Cmd::Set(u, s, st, c, a)) => state.set(u, s, st, c, a).into_iter().collect(),
            Some(Cmd::Snapshot(users, offline, reply)) => {
                let at = registry.is_none().then_some(version);
                let v = users
                    .into_iter()
                    .map(|u| state.visible(u))
                    .filter(|p| offline || p.status != PresenceStatus::Offline)
                    .map(|p| (p, at))
                    .collect();
                let _ = reply.send(v);
                Vec::new()
            }
            Some(Cmd::Live(users, reply)) => {
                let _ = reply.send(users.into_iter().filter(|u| state.is_live(*u)).collect());
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
        if rescan {
            deadline = state.next_deadline();
        } else if adds {
            let soonest = state.soonest_new_deadline(now);
            deadline = Some(deadline.map_or(soonest, |d| d.min(soonest)));
        }
        let dirty = state.take_dirty();
        let Some(r) = registry.as_ref().filter(|r| r.is_up()) else {
            // One node, or the registry is unreachable: what this node sees is published.
            if registry.is_some() {
                unsure.extend(dirty);
            }
            for p in out {
                let v = registry.is_none().then(|| {
                    version = next_version(version, crate::ids::now_ms());
                    version
                });
                if let Some(v) = v {
                    // (With the registry away this node cannot tell whether the user is
                    // online elsewhere: no presence webhook events until it is back.)
                    let was = if p.status == PresenceStatus::Offline {
                        online.remove(&p.user_id)
                    } else {
                        !online.insert(p.user_id)
                    };
                    record(store.as_ref(), &p, v, was, OfflineWhy::Disconnected).await;
                }
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
                    let was_unsure = unsure.remove(&u);
                    if c.changed {
                        record(
                            store.as_ref(),
                            &c.presence,
                            c.version,
                            c.was_online,
                            OfflineWhy::Disconnected,
                        )
                        .await;
                        publish(bus.as_ref(), c.presence, Some(c.version));
                    } else if was_unsure && c.presence.status == PresenceStatus::Offline {
                        // Went offline while the registry was away, and it kept nothing to
                        // compare with: say so (at worst a second user.offline).
                        record(store.as_ref(), &c.presence, c.version, true, OfflineWhy::Disconnected).await;
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

#[cfg(test)]
mod tests {
    use super::next_version;

    #[test]
    fn versions_increase_and_start_from_the_clock() {
        // From the clock after a restart (the counter was 0), then one more within a ms.
        assert_eq!(next_version(0, 1_700_000_000_000), 1_700_000_000_000_000);
        assert_eq!(
            next_version(1_700_000_000_000_000, 1_700_000_000_000),
            1_700_000_000_000_001
        );
        // A clock set back does not take the version back.
        assert_eq!(
            next_version(1_700_000_000_000_005, 1_600_000_000_000),
            1_700_000_000_000_006
        );
    }
}
