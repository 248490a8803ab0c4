//! Fan-out: how an event reaches the local sessions that need it — its own part, between
//! the publishers (chat, presence, typing, voice, notifications: they publish a
//! [`BusEvent`] through the [`Bus`] trait) and the sessions.
//!
//! Every event goes to topics ([`Topic`]: per guild, DM channel and user) on the cluster bus
//! ([`PubSub`]: in-process on one node, Redis for many), wrapped in an [`envelope`] that says
//! its lane and its audience. Each node subscribes to a topic only while one of its local
//! users needs it ([`index::TopicIndex`], sans-IO), and delivers what arrives to those
//! users' sessions: the topic's local followers, filtered by the audience — a channel's
//! viewers come from chat's cached permission state, never from the store per event.
//!
//! Membership travels as control messages: joining a guild or a DM makes the user follow
//! its topic (applied here at once when the user is local, and sent on the user's own
//! topic for the node that holds their sessions); a guild change drops every node's
//! cached permission state.

pub mod envelope;
pub mod index;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quaver_proto::Lane;
use tokio::sync::mpsc;

use self::envelope::{Audience, Envelope, Message};
use self::index::{Change, TopicIndex};
use crate::chat::Chat;
use crate::cluster::pubsub::{PubSub, Received, Topic};
use crate::cluster::{Bus, BusEvent};
use crate::gateway::Sessions;

/// Envelopes remembered to deliver a multi-topic envelope once (presence goes to every
/// shared guild and every friend; a node may follow several of those topics).
const DEDUPE: usize = 4096;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct FanoutCounters {
    /// Envelopes delivered to local sessions.
    pub envelopes: AtomicU64,
    /// Deliveries (envelope × local user).
    pub deliveries: AtomicU64,
    /// Copies of an envelope already delivered (it came on another topic too).
    pub duplicates: AtomicU64,
    /// Bus messages this node could not read (logged and dropped).
    pub unreadable: AtomicU64,
}

/// The fan-out of one node.
#[derive(Debug)]
pub struct Fanout {
    pubsub: Arc<dyn PubSub>,
    index: Mutex<TopicIndex>,
    /// Tags this node's envelopes (random per start).
    origin: u64,
    next_id: AtomicU64,
    /// Presence changes wait here for their audience's topics (a store read), in order.
    presence: mpsc::UnboundedSender<(u64, Bytes)>,
    presence_rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, Bytes)>>>,
    /// Counters.
    pub counters: FanoutCounters,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SystemRandom fails only without an OS RNG, where TLS could not work either.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_be_bytes(b)
}

impl Fanout {
    /// The fan-out over `pubsub`.
    pub fn new(pubsub: Arc<dyn PubSub>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            pubsub,
            index: Mutex::new(TopicIndex::default()),
            origin: random_u64(),
            next_id: AtomicU64::new(1),
            presence: tx,
            presence_rx: Mutex::new(Some(rx)),
            counters: FanoutCounters::default(),
        })
    }

    /// The bus underneath.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    fn index(&self) -> std::sync::MutexGuard<'_, TopicIndex> {
        // Poisoning only follows a panic elsewhere; the index is still consistent.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, change: Change) {
        for t in &change.subscribe {
            self.pubsub.subscribe(t);
        }
        for t in &change.unsubscribe {
            self.pubsub.unsubscribe(t);
        }
    }

    /// A session of `user` now lives on this node (its events are needed, attached or
    /// not); on their first, they follow their guilds and private channels.
    pub fn open(&self, user: u64, guilds: &[u64], private_channels: &[u64]) {
        let topics = guilds
            .iter()
            .map(|g| Topic::guild(*g))
            .chain(private_channels.iter().map(|c| Topic::channel(*c)));
        let change = self.index().open(user, topics);
        self.apply(change);
    }

    /// A session of `user` is gone from this node.
    pub fn close(&self, user: u64) {
        let change = self.index().close(user);
        self.apply(change);
    }

    /// Topics this node is subscribed to.
    pub fn topics(&self) -> usize {
        self.index().topic_count()
    }

    /// `user` starts or stops following `topic`: here at once if they are local, and on
    /// their own topic for the node that holds their sessions.
    fn follow(&self, user: u64, topic: Topic, follow: bool) {
        let change = if follow {
            self.index().follow(user, topic.clone())
        } else {
            self.index().unfollow(user, &topic)
        };
        self.apply(change);
        let m = Message::Follow {
            user_id: user,
            topic,
            follow,
        };
        self.pubsub.publish(&Topic::user(user), m.encode());
    }

    fn send(&self, topics: Vec<Topic>, lane: Lane, audience: Audience, event: Bytes) {
        if topics.is_empty() {
            return;
        }
        let m = Message::Event(Envelope {
            id: (self.origin, self.next_id.fetch_add(1, Relaxed)),
            topics,
            lane,
            audience,
            event,
        });
        let bytes = m.encode();
        let Message::Event(e) = &m else { return };
        for t in &e.topics {
            self.pubsub.publish(t, bytes.clone());
        }
    }

    fn control(&self, topic: Topic, m: Message) {
        self.pubsub.publish(&topic, m.encode());
    }

    /// Delivers what arrives on the node's topics, until the bus ends. Also publishes
    /// presence changes (their audience's topics need a store read).
    pub async fn run(
        self: Arc<Self>,
        chat: Arc<Chat>,
        sessions: Arc<Sessions>,
        mut rx: mpsc::UnboundedReceiver<Received>,
    ) {
        let presence_rx = self.presence_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(prx) = presence_rx {
            tokio::spawn(self.clone().publish_presence(chat.clone(), prx));
        }
        let mut seen = Recent::default();
        while let Some(r) = rx.recv().await {
            let m = match Message::decode(&r.payload) {
                Ok(m) => m,
                Err(e) => {
                    self.counters.unreadable.fetch_add(1, Relaxed);
                    tracing::warn!(topic = ?r.topic, error = %e, "dropped an unreadable bus message");
                    continue;
                }
            };
            match m {
                Message::Event(e) => {
                    if e.topics.len() > 1 && !seen.first(e.id) {
                        self.counters.duplicates.fetch_add(1, Relaxed);
                        continue;
                    }
                    self.deliver(&chat, &sessions, e).await;
                }
                Message::GuildChanged { guild_id } => chat.invalidate(guild_id),
                Message::MemberAdded { guild_id, user_id } => {
                    chat.member_added(guild_id, user_id);
                }
                Message::Follow { user_id, topic, follow } => {
                    let change = if follow {
                        self.index().follow(user_id, topic)
                    } else {
                        self.index().unfollow(user_id, &topic)
                    };
                    self.apply(change);
                }
            }
        }
    }

    async fn deliver(&self, chat: &Chat, sessions: &Sessions, e: Envelope) {
        let (channel, except) = match e.audience {
            Audience::All => (None, None),
            Audience::AllExcept(u) => (None, Some(u)),
            Audience::Viewers(c) => (Some(c), None),
            Audience::ViewersExcept(c, u) => (Some(c), Some(u)),
        };
        let users: Vec<u64> = match channel {
            None => {
                let ix = self.index();
                let mut users: Vec<u64> = Vec::new();
                for t in &e.topics {
                    users.extend(ix.followers(t));
                }
                if e.topics.len() > 1 {
                    users.sort_unstable();
                    users.dedup();
                }
                users
            }
            Some(c) => {
                // A channel's audience: its viewers (cached permission state) who follow
                // its guild here.
                let Some(topic) = e.topics.iter().find(|t| t.guild_id().is_some()) else {
                    return;
                };
                let Some(viewers) = chat.channel_viewers(topic.guild_id(), c).await else {
                    return;
                };
                let ix = self.index();
                viewers.iter().copied().filter(|u| ix.follows(topic, *u)).collect()
            }
        };
        let mut n = 0;
        for u in users {
            if Some(u) == except {
                continue;
            }
            sessions.push_to_user(u, e.lane, &e.event);
            n += 1;
        }
        self.counters.envelopes.fetch_add(1, Relaxed);
        self.counters.deliveries.fetch_add(n, Relaxed);
    }

    /// A presence change goes to every guild the user is in and to each friend's own
    /// topic (one envelope, delivered once per node), in the order they happened.
    async fn publish_presence(self: Arc<Self>, chat: Arc<Chat>, mut rx: mpsc::UnboundedReceiver<(u64, Bytes)>) {
        while let Some((user, event)) = rx.recv().await {
            let topics = match chat.observer_topics(user).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e.message, "presence change not published: its audience could not be read");
                    continue;
                }
            };
            self.send(topics, Lane::Presence, Audience::AllExcept(user), event);
        }
    }
}

/// The last [`DEDUPE`] envelope ids seen.
#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
}

impl Recent {
    /// True the first time `id` is seen (among the last `DEDUPE`).
    fn first(&mut self, id: (u64, u64)) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > DEDUPE
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

impl Bus for Fanout {
    fn publish(&self, ev: BusEvent) {
        match ev {
            BusEvent::Channel {
                guild_id: Some(g),
                channel_id,
                event,
            } => self.send(vec![Topic::guild(g)], Lane::Chat, Audience::Viewers(channel_id), event),
            BusEvent::Channel {
                guild_id: None,
                channel_id,
                event,
            } => self.send(vec![Topic::channel(channel_id)], Lane::Chat, Audience::All, event),
            BusEvent::Guild { guild_id, event } => {
                self.send(vec![Topic::guild(guild_id)], Lane::Chat, Audience::All, event)
            }
            BusEvent::User { user_id, lane, event } => {
                self.send(vec![Topic::user(user_id)], lane, Audience::All, event)
            }
            BusEvent::Typing {
                guild_id: Some(g),
                channel_id,
                user_id,
                event,
            } => self.send(
                vec![Topic::guild(g)],
                Lane::Typing,
                Audience::ViewersExcept(channel_id, user_id),
                event,
            ),
            BusEvent::Typing {
                guild_id: None,
                channel_id,
                user_id,
                event,
            } => self.send(
                vec![Topic::channel(channel_id)],
                Lane::Typing,
                Audience::AllExcept(user_id),
                event,
            ),
            BusEvent::Voice {
                guild_id,
                channel_id,
                event,
            } => self.send(
                vec![Topic::guild(guild_id)],
                Lane::Voice,
                Audience::Viewers(channel_id),
                event,
            ),
            BusEvent::Presence { user_id, event } => {
                let _ = self.presence.send((user_id, event));
            }
            BusEvent::MemberAdded { guild_id, user_id } => {
                self.follow(user_id, Topic::guild(guild_id), true);
                self.control(Topic::guild(guild_id), Message::MemberAdded { guild_id, user_id });
            }
            BusEvent::MemberLeft { guild_id, user_id } => self.follow(user_id, Topic::guild(guild_id), false),
            BusEvent::DmOpened { channel_id, recipients } => {
                for u in recipients {
                    self.follow(u, Topic::channel(channel_id), true);
                }
            }
            BusEvent::GuildChanged { guild_id } => {
                self.control(Topic::guild(guild_id), Message::GuildChanged { guild_id });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_delivered_once_among_the_recent_ones() {
        let mut r = Recent::default();
        assert!(r.first((1, 1)));
        assert!(!r.first((1, 1)));
        for n in 2..(DEDUPE as u64 + 2) {
            assert!(r.first((1, n)));
        }
        assert!(r.first((1, 1)), "forgotten after DEDUPE others: memory stays bounded");
        assert!(r.ids.len() <= DEDUPE);
    }
}
