//! Topics between nodes: `publish(topic, bytes)` reaches every node subscribed to the topic
//! (the publisher included, if it is subscribed), and a node subscribes to a topic while one
//! of its local sessions needs it — reference-counted here, so the bus sees one subscription
//! per node and topic, never one per client.
//!
//! Two implementations behind [`PubSub`], held to one conformance suite (`tests/pubsub.rs`):
//! [`MemoryHub`] (in-process: the single-node default, and several "nodes" in one process
//! for tests) and [`crate::cluster::redis::RedisPubSub`]. Payloads are opaque bytes here;
//! what they mean is the fan-out's business.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A topic name. Topics are per channel, guild, user or node; their names are also the
/// Redis (sharded) pub/sub channel names, so they stay short and ASCII.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Events of one channel.
    pub fn channel(id: u64) -> Self {
        Self(format!("q:c:{id}"))
    }
    /// Events of one guild (membership, roles, voice and typing of its channels).
    pub fn guild(id: u64) -> Self {
        Self(format!("q:g:{id}"))
    }
    /// Events for one user's sessions.
    pub fn user(id: u64) -> Self {
        Self(format!("q:u:{id}"))
    }
    /// Messages for one node (liveness probes, direct requests).
    pub fn node(name: &str) -> Self {
        Self(format!("q:n:{name}"))
    }
    /// Messages for every node (the backend's orders about sessions): each subscribes from
    /// its start.
    pub fn cluster() -> Self {
        Self("q:a:nodes".into())
    }
    /// A topic from its wire name, if it is one of ours.
    pub fn parse(name: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(name).ok()?;
        let rest = s.strip_prefix("q:")?;
        let (kind, id) = rest.split_once(':')?;
        let ok = match kind {
            "c" | "g" | "u" => id.parse::<u64>().is_ok(),
            "n" => !id.is_empty(),
            "a" => id == "nodes",
            _ => false,
        };
        ok.then(|| Self(s.to_string()))
    }
    /// The wire name.
    pub fn name(&self) -> &str {
        &self.0
    }
    /// The guild of a guild topic.
    pub fn guild_id(&self) -> Option<u64> {
        self.0.strip_prefix("q:g:")?.parse().ok()
    }
    /// The channel of a channel topic.
    pub fn channel_id(&self) -> Option<u64> {
        self.0.strip_prefix("q:c:")?.parse().ok()
    }
    /// The user of a user topic.
    pub fn user_id(&self) -> Option<u64> {
        self.0.strip_prefix("q:u:")?.parse().ok()
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message that arrived on a subscribed topic — or, with an empty payload (no message is
/// empty), the bus's word that a subscription to `topic` has taken effect: from then on every
/// message published on it arrives, so what was published before is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The topic.
    pub topic: Topic,
    /// What was published, byte for byte (empty: a confirmation).
    pub payload: Bytes,
}

impl Received {
    /// The confirmation that a subscription to `topic` took effect.
    pub fn confirmation(topic: Topic) -> Self {
        Self {
            topic,
            payload: Bytes::new(),
        }
    }

    /// Whether this is a confirmation rather than a message.
    pub fn is_confirmation(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Whether the bus reaches the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Publishes and subscriptions work.
    Up,
    /// The bus is unreachable (or a subscriber went silent): this node serves its own
    /// sessions; cross-node publishes are buffered to a bound, then dropped and counted.
    Degraded,
}

/// Counters every implementation keeps (rendered in `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages handed to the bus.
    pub published: AtomicU64,
    /// Messages dropped because the bus was unreachable and the buffer full.
    pub dropped: AtomicU64,
    /// Messages received on subscribed topics.
    pub received: AtomicU64,
    /// Pushes that were not messages of ours (foreign channel names, unexpected shapes).
    pub foreign: AtomicU64,
    /// Connection attempts after a failure.
    pub reconnect_attempts: AtomicU64,
    /// Times every subscription was sent again (after a reconnect or a failed probe).
    pub resubscribes: AtomicU64,
    /// Liveness probes that did not come back in time.
    pub probe_failures: AtomicU64,
}

/// The node's side of the cluster bus.
pub trait PubSub: Send + Sync + fmt::Debug {
    /// Publishes to every node subscribed to `topic`. Never blocks: while the bus is
    /// unreachable, messages wait in a bounded buffer, then are dropped and counted.
    fn publish(&self, topic: &Topic, payload: Bytes);
    /// One more local need for `topic`: the first subscribes the node, and once the
    /// subscription has taken effect the bus says so ([`Received::confirmation`]).
    fn subscribe(&self, topic: &Topic);
    /// One less: the last unsubscribes the node. More unsubscribes than subscribes are
    /// ignored.
    fn unsubscribe(&self, topic: &Topic);
    /// Whether the bus reaches the other nodes now.
    fn health(&self) -> Health;
    /// The counters.
    fn counters(&self) -> &Counters;
    /// How many nodes this bus joins (this one included), when the bus itself knows; `None`
    /// when another part knows (a Redis cluster's nodes are in the presence registry).
    fn nodes(&self) -> Option<usize> {
        None
    }
}

/// Reference counts of a node's topics; tells when the node itself must (un)subscribe.
#[derive(Debug, Default)]
pub struct RefCounts {
    counts: HashMap<Topic, usize>,
}

impl RefCounts {
    /// Adds a need; true when it is the first (subscribe now).
    pub fn add(&mut self, topic: &Topic) -> bool {
        let n = self.counts.entry(topic.clone()).or_insert(0);
        *n += 1;
        *n == 1
    }
    /// Removes a need; true when it was the last (unsubscribe now).
    pub fn remove(&mut self, topic: &Topic) -> bool {
        match self.counts.get_mut(topic) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(topic);
                true
            }
            None => false,
        }
    }
    /// Whether the node is subscribed to `topic`.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.counts.contains_key(topic)
    }
    /// Every subscribed topic.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.counts.keys()
    }
}

/// An in-process bus shared by any number of node handles ([`MemoryHub::node`]). For
/// tests it can also misbehave the way a real bus does: go away ([`MemoryHub::cut`]) or
/// deliver late and out of order ([`MemoryHub::hold`]).
#[derive(Debug, Clone, Default)]
pub struct MemoryHub {
    nodes: Arc<Mutex<Vec<Arc<MemoryNode>>>>,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    cut: bool,
    held: Option<Vec<(Arc<MemoryNode>, Received)>>,
    /// New subscriptions take effect (and are confirmed) this late.
    slow_subscribe: Option<std::time::Duration>,
}

#[derive(Debug)]
struct MemoryNode {
    subs: Mutex<RefCounts>,
    tx: mpsc::UnboundedSender<Received>,
    counters: Counters,
}

/// One node's handle on a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryPubSub {
    hub: MemoryHub,
    me: Arc<MemoryNode>,
}

impl MemoryHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A node on this hub and what it receives.
    pub fn node(&self) -> (MemoryPubSub, mpsc::UnboundedReceiver<Received>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(MemoryNode {
            subs: Mutex::new(RefCounts::default()),
            tx,
            counters: Counters::default(),
        });
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).push(me.clone());
        (MemoryPubSub { hub: self.clone(), me }, rx)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// While cut, the bus is unreachable: every node reports [`Health::Degraded`] and what
    /// is published is dropped (counted), as with a Redis outage past the buffer.
    pub fn cut(&self, cut: bool) {
        self.faults().cut = cut;
    }

    /// From now on a new subscription takes effect only `after` this long (as a Redis
    /// subscriber behind a queue of others), then is confirmed; `None`: at once.
    pub fn slow_subscribe(&self, after: Option<std::time::Duration>) {
        self.faults().slow_subscribe = after;
    }

    /// From now until [`MemoryHub::release_reversed`], deliveries wait.
    pub fn hold(&self) {
        self.faults().held.get_or_insert_with(Vec::new);
    }

    /// Delivers what waited, newest first (the worst order a bus could choose), and stops
    /// holding.
    pub fn release_reversed(&self) {
        let held = self.faults().held.take().unwrap_or_default();
        for (n, r) in held.into_iter().rev() {
            n.deliver(r);
        }
    }
}

impl MemoryNode {
    fn deliver(&self, r: Received) {
        if self.tx.send(r).is_ok() {
            self.counters.received.fetch_add(1, Relaxed);
        }
    }
}

impl PubSub for MemoryPubSub {
    fn nodes(&self) -> Option<usize> {
        // A node that stopped has dropped its receiver.
        Some(
            self.hub
                .nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|n| !n.tx.is_closed())
                .count(),
        )
    }

    fn publish(&self, topic: &Topic, payload: Bytes) {
        self.me.counters.published.fetch_add(1, Relaxed);
        let nodes = self.hub.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut faults = self.hub.faults();
        if faults.cut {
            self.me.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        for n in nodes {
            let subscribed = n.subs.lock().unwrap_or_else(|p| p.into_inner()).contains(topic);
            if !subscribed {
                continue;
            }
            let r = Received {
                topic: topic.clone(),
                payload: payload.clone(),
            };
            match &mut faults.held {
                Some(held) => held.push((n, r)),
                None => n.deliver(r),
            }
        }
    }

    fn subscribe(&self, topic: &Topic) {
        let delay = self.hub.faults().slow_subscribe;
        let me = self.me.clone();
        let take_effect = move |topic: Topic| {
            if me.subs.lock().unwrap_or_else(|p| p.into_inner()).add(&topic) {
                let _ = me.tx.send(Received::confirmation(topic));
            }
        };
        match delay {
            None => take_effect(topic.clone()),
            Some(d) => {
                let topic = topic.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    take_effect(topic);
                });
            }
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        self.me.subs.lock().unwrap_or_else(|p| p.into_inner()).remove(topic);
    }

    fn health(&self) -> Health {
        if self.hub.faults().cut {
            Health::Degraded
        } else {
            Health::Up
        }
    }

    fn counters(&self) -> &Counters {
        &self.me.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_round_trip_and_foreign_names_are_refused() {
        for t in [
            Topic::channel(5),
            Topic::guild(u64::MAX),
            Topic::user(1),
            Topic::node("n-1"),
            Topic::cluster(),
        ] {
            assert_eq!(Topic::parse(t.name().as_bytes()), Some(t.clone()));
        }
        for bad in ["", "q:", "q:c:", "q:c:x", "q:x:1", "other:c:1", "q:n:", "q:a:", "q:a:x"] {
            assert_eq!(Topic::parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Topic::parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn refcounts_say_when_the_node_subscribes_and_unsubscribes() {
        let mut r = RefCounts::default();
        let t = Topic::guild(1);
        assert!(r.add(&t));
        assert!(!r.add(&t));
        assert!(!r.remove(&t));
        assert!(r.remove(&t));
        assert!(!r.remove(&t), "extra unsubscribes are ignored");
        assert!(!r.contains(&t));
    }
}
