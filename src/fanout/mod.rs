//! Fan-out: how an event reaches the local sessions that need it — its own part, between
//! the publishers (chat, presence, typing, voice, notifications: they publish a
//! [`BusEvent`] through the [`Bus`] trait) and the sessions. It stands below the gateway
//! and chat and imports neither: it reaches the sessions through [`Deliver`], audiences
//! and the event log through [`Audience`], and the rest of the node through [`Node`]
//! ([`sides`]); `lib.rs` hands it the three.
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
//!
//! What a node publishes it also delivers to its own sessions directly (its copy from the
//! bus is recognised by origin and skipped), so same-node traffic never waits for — or
//! depends on — Redis. Channel events carry their seq and pass through a per-channel
//! sequencer ([`order`]): early ones are held briefly, then the channel is caught up from
//! the store. Those store reads run beside the delivery loop (at most four at
//! once), so a slow database delays only the channels being caught up. Sessions open in
//! line with delivery ([`Fanout::open`]): the positions their `Ready` reports are exactly
//! where live delivery to them starts. Presence envelopes carry a per-user version from the
//! cluster registry (on one node, from the presence task's counter); an older one than
//! already delivered is dropped.
//!
//! When an audience changes (a guild joined, a friendship begun, a voice channel's view
//! granted) a [`envelope::Message::Show`] goes on the topic of those who are to be told; each
//! node with followers of it reads the current presences or voice states *after* the
//! messages before it on that topic (the follow among them) and delivers a snapshot —
//! presences only where no newer change of that user was delivered meanwhile.

pub mod envelope;
pub mod index;
pub mod order;
pub mod sides;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver_proto::{Channel, GuildSnapshot, Lane};
use tokio::sync::{mpsc, oneshot};

use self::envelope::{Envelope, Message, Reach, Show};
use self::index::{Change, TopicIndex};
use self::order::{Arrival, CatchUp, Out, Sequencer};
pub use self::sides::{Audience, Deliver, Node, Opening};
use crate::cluster::order::{Order, SessionSummary};
use crate::cluster::pubsub::{Health, PubSub, Received, Topic};
use crate::cluster::{Bus, BusEvent, Viewers};

/// The `Gap` event: events of `channel` after `after_seq` and before `resumes_at` are gone.
pub fn gap(channel: u64, after_seq: u64, resumes_at: u64) -> Bytes {
    Bytes::from(quaver_proto::codec::encode_payload(&quaver_proto::EventBody::Gap {
        channel_id: channel,
        after_seq,
        resumes_at,
    }))
}

/// A resuming session's catch-up for one channel (chat's `catch_up`), handed to
/// [`Fanout::open`].
#[derive(Debug)]
pub struct Caught {
    /// The channel.
    pub channel: u64,
    /// Its guild (`None` for DMs).
    pub guild: Option<u64>,
    /// The client's position.
    pub from: u64,
    /// The seq the items reach.
    pub reached: u64,
    /// The retention cut-off the items were read with.
    pub since_ms: u64,
    /// (ordering key, event) in order; a `Gap` where the log does not reach.
    pub items: Vec<(u64, Bytes)>,
}

/// Envelopes remembered to deliver a multi-topic envelope once (presence goes to every
/// shared guild and every friend; a node may follow several of those topics).
const DEDUPE: usize = 4096;

/// A check of a topic against the store that could not read it is tried again this late.
const VERIFY_AFTER: Duration = Duration::from_millis(500);

/// Most logged events read per channel per catch-up.
const CATCH_UP_LIMIT: u32 = 1000;

/// Most presences in one `PresenceSnapshot` (a guild joined can hold thousands of online
/// members; one frame each would fill a lane's 1,024-frame allowance, one frame for all
/// could be megabytes).
const SNAPSHOT_CHUNK: usize = 256;

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
    /// Channel events that arrived after a later one of their channel (held to reorder).
    pub reordered: AtomicU64,
    /// Channel events that arrived again (already delivered by seq).
    pub seq_duplicates: AtomicU64,
    /// Channel events delivered from the store because the bus did not bring them in time.
    pub caught_up: AtomicU64,
    /// `Gap`s delivered because the log no longer had what the bus lost.
    pub gaps: AtomicU64,
    /// Newest-wins envelopes older than one already delivered (dropped).
    pub stale: AtomicU64,
    /// Sessions not sent a channel's message or typing event because they do not view the
    /// channel (`ViewChannels`): told in a coalesced `ChannelActivity` instead.
    pub passive: AtomicU64,
    /// Users not sent a presence change they could see because it reached them only
    /// through large guilds none of their sessions looks at (`gateway::view`).
    pub presence_gated: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    index: TopicIndex,
    order: Sequencer<Envelope>,
    /// New subscriptions to check against the store, when due.
    verify: VecDeque<(Instant, Topic)>,
    /// Newest version delivered per key (presence per user).
    latest: Latest,
}

/// Most keys remembered by [`Latest`]; beyond it the map starts over (an older version
/// could then be delivered once — presence is state, the next change corrects it).
const LATEST_KEYS: usize = 100_000;

/// The newest version delivered per key, and when (a count of deliveries on this node).
#[derive(Debug, Default)]
struct Latest {
    versions: std::collections::HashMap<u64, (u64, u64)>,
    /// Newest-wins envelopes delivered so far.
    delivered: u64,
}

impl Latest {
    /// Whether nothing newer than `version` was delivered for `key` (a snapshot read at
    /// `version` is still current).
    fn not_newer_than(&self, key: u64, version: u64) -> bool {
        self.versions.get(&key).is_none_or(|(v, _)| *v <= version)
    }

    /// True (and remembered) when `version` is newer than any delivered for `key`.
    fn newer(&mut self, key: u64, version: u64) -> bool {
        if self.versions.get(&key).is_some_and(|(v, _)| *v >= version) {
            return false;
        }
        if self.versions.len() >= LATEST_KEYS {
            self.versions.clear();
        }
        self.delivered += 1;
        self.versions.insert(key, (version, self.delivered));
        true
    }

    /// Where delivery stands now, for [`Latest::delivered_since`].
    fn mark(&self) -> u64 {
        self.delivered
    }

    /// Whether a change of `key` was delivered after `mark` ([`Latest::mark`]).
    fn delivered_since(&self, key: u64, mark: u64) -> bool {
        self.versions.get(&key).is_some_and(|(_, at)| *at > mark)
    }
}

/// A session opening here, handled in the delivery loop so nothing is delivered between
/// the positions it is given and its first live event.
struct Open {
    session: Box<dyn Opening>,
    topics: Vec<Topic>,
    /// (guild, channel, snapshot's last seq).
    channels: Vec<(Option<u64>, u64, u64)>,
    caught: Vec<Caught>,
    reply: oneshot::Sender<Vec<u64>>,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("user", &self.session.user())
            .finish_non_exhaustive()
    }
}

/// A presence change waiting for its audience: (user, registry version, event).
type PresenceChange = (u64, Option<u64>, Bytes);

/// The fan-out of one node.
#[derive(Debug)]
pub struct Fanout {
    pubsub: Arc<dyn PubSub>,
    state: Mutex<State>,
    /// Tags this node's envelopes (random per start).
    origin: u64,
    next_id: AtomicU64,
    /// Presence changes wait here for their audience's topics (a store read), in order.
    presence: mpsc::UnboundedSender<PresenceChange>,
    presence_rx: Mutex<Option<mpsc::UnboundedReceiver<PresenceChange>>>,
    opens: mpsc::UnboundedSender<Open>,
    opens_rx: Mutex<Option<mpsc::UnboundedReceiver<Open>>>,
    /// What this node publishes is delivered here directly (its copy from the bus is
    /// skipped): local sessions do not wait for a bus round trip, nor for a bus that is
    /// down.
    local: mpsc::UnboundedSender<Message>,
    local_rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// Revoked tokens (the verifier's): orders add to them.
    revocations: Arc<crate::auth::Revocations>,
    /// This node's name (in its answers to the server API's questions).
    node: String,
    /// Questions this node asked the others, by number: where their answers go.
    asks: Mutex<std::collections::HashMap<u64, mpsc::UnboundedSender<NodeSessions>>>,
    /// Counters.
    pub counters: FanoutCounters,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SystemRandom fails only without an OS RNG, where TLS could not work either.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_be_bytes(b)
}

/// A node's answer to a question about a user's sessions: its name and those it holds.
pub type NodeSessions = (String, Vec<SessionSummary>);

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Fanout {
    /// The fan-out over `pubsub`; revocations the backend orders are added to
    /// `revocations`. It follows [`Topic::cluster`] from the start.
    pub fn new(pubsub: Arc<dyn PubSub>, revocations: Arc<crate::auth::Revocations>, node: &str) -> Arc<Self> {
        pubsub.subscribe(&Topic::cluster());
        let (tx, rx) = mpsc::unbounded_channel();
        let (otx, orx) = mpsc::unbounded_channel();
        let (ltx, lrx) = mpsc::unbounded_channel();
        Arc::new(Self {
            pubsub,
            state: Mutex::new(State::default()),
            origin: random_u64(),
            next_id: AtomicU64::new(1),
            presence: tx,
            presence_rx: Mutex::new(Some(rx)),
            opens: otx,
            opens_rx: Mutex::new(Some(orx)),
            local: ltx,
            local_rx: Mutex::new(Some(lrx)),
            revocations,
            node: node.to_string(),
            asks: Mutex::new(std::collections::HashMap::new()),
            counters: FanoutCounters::default(),
        })
    }

    /// The bus underneath.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning only follows a panic elsewhere; the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, st: &mut State, change: Change) {
        // A new subscription is checked against the store when the bus confirms it took
        // effect (`on_received`): what was published before it is in the store by then.
        for t in &change.subscribe {
            self.pubsub.subscribe(t);
        }
        for t in &change.unsubscribe {
            self.pubsub.unsubscribe(t);
            if let Some(g) = t.guild_id() {
                st.order.forget_guild(g);
            } else if let Some(c) = t.channel_id() {
                st.order.forget(c);
            }
        }
    }

    /// A session now lives on this node (its events are needed, attached or not): on
    /// their user's first, they follow their guilds and private channels. Sets each
    /// snapshot channel's `last_seq` to where this node's delivery stands (every later
    /// event reaches the session live: it is attached, [`Opening::attach`], in line with
    /// delivery), and hands the session its catch-up (`caught`, from chat's `catch_up`) in
    /// order before any live event of those channels.
    pub async fn open(
        &self,
        session: Box<dyn Opening>,
        guilds: &mut [GuildSnapshot],
        private_channels: &mut [Channel],
        caught: Vec<Caught>,
    ) {
        let topics = guilds
            .iter()
            .map(|g| Topic::guild(g.guild.id))
            .chain(private_channels.iter().map(|c| Topic::channel(c.id)))
            .collect();
        let channels = guilds
            .iter()
            .flat_map(|g| g.channels.iter().map(|c| (Some(g.guild.id), c.id, c.last_seq)))
            .chain(private_channels.iter().map(|c| (None, c.id, c.last_seq)))
            .collect();
        let (reply, positions) = oneshot::channel();
        let open = Open {
            session,
            topics,
            channels,
            caught,
            reply,
        };
        if self.opens.send(open).is_err() {
            return;
        }
        // No answer: the delivery loop has stopped (the server is going away).
        let Ok(positions) = positions.await else { return };
        let mut at = positions.into_iter();
        for c in guilds
            .iter_mut()
            .flat_map(|g| g.channels.iter_mut())
            .chain(private_channels.iter_mut())
        {
            if let Some(p) = at.next() {
                c.last_seq = p;
            }
        }
    }

    /// A session of `user` is gone from this node.
    pub fn close(&self, user: u64) {
        let mut st = self.state();
        let change = st.index.close(user);
        self.apply(&mut st, change);
    }

    /// The bus's and the fan-out's figures, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::with_capacity(2048);
        let b = self.pubsub.counters();
        let up = f64::from(u8::from(self.pubsub.health() == Health::Up));
        let (topics, held, tracked) = {
            let st = self.state();
            (st.index.topic_count(), st.order.held(), st.order.len())
        };
        let rows: [(&str, &str, &str, f64); 22] = [
            (
                "quaver_bus_up",
                "gauge",
                "1 while the cluster bus reaches the other nodes (0: degraded).",
                up,
            ),
            (
                "quaver_bus_topics",
                "gauge",
                "Topics this node is subscribed to.",
                topics as f64,
            ),
            (
                "quaver_bus_published_total",
                "counter",
                "Messages handed to the bus.",
                b.published.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_dropped_total",
                "counter",
                "Messages dropped: the bus was unreachable and its buffer full.",
                b.dropped.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_received_total",
                "counter",
                "Messages received on subscribed topics.",
                b.received.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_foreign_total",
                "counter",
                "Pushes on the bus that were not ours.",
                b.foreign.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_reconnect_attempts_total",
                "counter",
                "Connection attempts after a failure.",
                b.reconnect_attempts.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_resubscribes_total",
                "counter",
                "Times every subscription was sent again.",
                b.resubscribes.load(Relaxed) as f64,
            ),
            (
                "quaver_bus_probe_failures_total",
                "counter",
                "Liveness probes that did not come back in time.",
                b.probe_failures.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_envelopes_total",
                "counter",
                "Envelopes delivered to local sessions.",
                self.counters.envelopes.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_deliveries_total",
                "counter",
                "Deliveries (envelope x local user).",
                self.counters.deliveries.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_duplicates_total",
                "counter",
                "Envelopes already delivered via another topic.",
                self.counters.duplicates.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_unreadable_total",
                "counter",
                "Bus messages this node could not read.",
                self.counters.unreadable.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_reordered_total",
                "counter",
                "Channel events held because an earlier one had not arrived.",
                self.counters.reordered.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_seq_duplicates_total",
                "counter",
                "Channel events that arrived again.",
                self.counters.seq_duplicates.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_caught_up_total",
                "counter",
                "Channel events delivered from the store (the bus did not bring them in time).",
                self.counters.caught_up.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_gaps_total",
                "counter",
                "Gaps delivered: lost on the bus and gone from the log.",
                self.counters.gaps.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_stale_total",
                "counter",
                "Presence updates older than one already delivered (dropped).",
                self.counters.stale.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_passive_total",
                "counter",
                "Channel messages and typing not sent to a session that does not view the channel (reported in ChannelActivity).",
                self.counters.passive.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_presence_gated_total",
                "counter",
                "Presence changes not sent to a user: they reached them only through large guilds none of their sessions looks at.",
                self.counters.presence_gated.load(Relaxed) as f64,
            ),
            (
                "quaver_fanout_held",
                "gauge",
                "Channel events held for reordering.",
                held as f64,
            ),
            (
                "quaver_fanout_channels",
                "gauge",
                "Channels whose order this node tracks.",
                tracked as f64,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        o
    }

    /// `user` starts or stops following `topic`: here at once if they are local, and on
    /// their own topic for the node that holds their sessions.
    fn follow(&self, user: u64, topic: Topic, follow: bool, positions: Vec<(u64, u64)>) {
        self.follow_here(user, topic.clone(), follow, &positions);
        let m = Message::Follow {
            user_id: user,
            topic,
            follow,
            positions,
        };
        self.pubsub.publish(&Topic::user(user), m.encode(self.origin));
    }

    fn follow_here(&self, user: u64, topic: Topic, follow: bool, positions: &[(u64, u64)]) {
        let mut st = self.state();
        let change = if follow {
            if st.index.is_local(user) {
                // Channels this node did not track start where the user's snapshot of them
                // (the join) stands; tracked ones stay where delivery is.
                let guild = topic.guild_id();
                for (c, seq) in positions {
                    st.order.position(*c, guild, *seq);
                }
            }
            st.index.follow(user, topic)
        } else {
            st.index.unfollow(user, &topic)
        };
        self.apply(&mut st, change);
    }

    fn envelope(
        &self,
        topics: Vec<Topic>,
        lane: Lane,
        audience: Reach,
        order: Option<(u64, u64)>,
        event: Bytes,
    ) -> Envelope {
        Envelope {
            id: (self.origin, self.next_id.fetch_add(1, Relaxed)),
            topics,
            lane,
            audience,
            order,
            latest: None,
            event,
        }
    }

    /// A channel event's envelope: a guild channel's go to the guild topic for its viewers,
    /// a DM's to the channel topic.
    fn channel_envelope(&self, guild: Option<u64>, channel: u64, order: Option<u64>, event: Bytes) -> Envelope {
        let (topic, audience) = match guild {
            Some(g) => (Topic::guild(g), Reach::Viewers(channel)),
            None => (Topic::channel(channel), Reach::All),
        };
        self.envelope(vec![topic], Lane::Chat, audience, order.map(|s| (channel, s)), event)
    }

    fn send(&self, e: Envelope) {
        if e.topics.is_empty() {
            return;
        }
        let m = Message::Event(e);
        let bytes = m.encode(self.origin);
        if let Message::Event(e) = &m {
            for t in &e.topics {
                self.pubsub.publish(t, bytes.clone());
            }
        }
        let _ = self.local.send(m);
    }

    /// Asks the node of `user`'s sessions to read and tell them `what`.
    fn show_to_user(&self, user: u64, what: Show) {
        let topic = Topic::user(user);
        self.control(
            topic.clone(),
            Message::Show {
                topic,
                except: None,
                what,
            },
        );
    }

    fn control(&self, topic: Topic, m: Message) {
        self.pubsub.publish(&topic, m.encode(self.origin));
        let _ = self.local.send(m);
    }

    /// Delivers what arrives on the node's topics, until the bus ends: channel events in
    /// seq order (held briefly, else caught up from the store), sessions opening here in
    /// line with that delivery. Also publishes presence changes (their audience's topics
    /// need a store read).
    pub async fn run<A: Audience, N: Node>(
        self: Arc<Self>,
        chat: Arc<A>,
        sessions: Arc<dyn Deliver>,
        node: Arc<N>,
        mut rx: mpsc::UnboundedReceiver<Received>,
    ) {
        if let Some(prx) = take(&self.presence_rx) {
            tokio::spawn(self.clone().publish_presence(chat.clone(), prx));
        }
        let (Some(mut opens), Some(mut local)) = (take(&self.opens_rx), take(&self.local_rx)) else {
            return;
        };
        let mut seen = Recent::default();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let cx = Parts {
            chat,
            sessions,
            node,
            done: done_tx,
            gate: Arc::new(tokio::sync::Semaphore::new(STORE_READS)),
        };
        let mut health = self.pubsub.health();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.state().order.next_deadline();
            let hold = async {
                match due {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(open) = opens.recv() => self.on_open(&cx, open).await,
                Some(m) = local.recv() => self.on_message(&cx, &mut seen, m).await,
                r = rx.recv() => match r {
                    Some(r) => self.on_received(&cx, &mut seen, r).await,
                    None => break,
                },
                Some(d) = done_rx.recv() => self.on_read(&cx, d).await,
                _ = hold => {
                    let due = self.state().order.due(Instant::now());
                    for c in due {
                        cx.catch_up(c);
                    }
                }
                _ = tick.tick() => {
                    let now = self.pubsub.health();
                    if health == Health::Degraded && now == Health::Up {
                        // Back from an outage: whatever the bus lost is in the store.
                        self.verify_all();
                    }
                    health = now;
                    self.verify_due(&cx);
                }
            }
        }
    }

    async fn on_received<A: Audience, N: Node>(&self, cx: &Parts<A, N>, seen: &mut Recent, r: Received) {
        if r.is_confirmation() {
            // Subscribed: everything published on it from now on arrives; what came before
            // is read from the store (an event published while the subscription was on its
            // way would otherwise wait for the channel's next one).
            let wanted = (r.topic.guild_id().is_some() || r.topic.channel_id().is_some())
                && self.state().index.subscribed(&r.topic);
            if wanted {
                cx.seqs(r.topic);
            }
            return;
        }
        match Message::decode(&r.payload) {
            // Delivered locally when it was published.
            Ok((origin, _)) if origin == self.origin => {}
            Ok((origin, m)) => {
                if let Message::Event(e) = &m
                    && e.lane == Lane::Voice
                {
                    // Another node's voice participants: remembered to notice its death.
                    cx.node.voice_elsewhere(origin, &e.event);
                }
                if let Message::Event(e) = &m
                    && e.lane == Lane::Typing
                {
                    // Another node's typer: known here for `WatchTyping`.
                    cx.node.typing_elsewhere(&e.event);
                }
                if let Message::VoiceJoined { user_id, channel_id } = &m {
                    // One voice channel per user, cluster-wide: they joined one elsewhere.
                    cx.node.joined_voice_elsewhere(*user_id, *channel_id).await;
                }
                self.on_message(cx, seen, m).await
            }
            Err(e) => {
                self.counters.unreadable.fetch_add(1, Relaxed);
                tracing::warn!(topic = ?r.topic, error = %e, "dropped an unreadable bus message");
            }
        }
    }

    async fn on_message<A: Audience, N: Node>(&self, cx: &Parts<A, N>, seen: &mut Recent, m: Message) {
        match m {
            Message::Event(e) => {
                if e.topics.len() > 1 && !seen.first(e.id) {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                    return;
                }
                if let Some((key, version)) = e.latest
                    && !self.state().latest.newer(key, version)
                {
                    self.counters.stale.fetch_add(1, Relaxed);
                    return;
                }
                let Some((channel, seq)) = e.order else {
                    return self.deliver(cx, e).await;
                };
                let guild = e.topics.iter().find_map(|t| t.guild_id());
                let arrival = self.state().order.arrive(channel, guild, seq, e, Instant::now());
                match arrival {
                    Arrival::Duplicate => {
                        self.counters.seq_duplicates.fetch_add(1, Relaxed);
                    }
                    Arrival::Deliver(outs) => {
                        if outs.is_empty() {
                            self.counters.reordered.fetch_add(1, Relaxed);
                        }
                        self.deliver_all(cx, outs).await;
                    }
                }
            }
            Message::GuildChanged { guild_id } => cx.chat.guild_changed(guild_id),
            Message::MemberAdded { guild_id, user_id } => {
                cx.chat.member_added(guild_id, user_id);
            }
            // Handled on arrival from the bus (it is never delivered locally).
            Message::VoiceJoined { .. } => {}
            Message::Follow {
                user_id,
                topic,
                follow,
                positions,
            } => self.follow_here(user_id, topic, follow, &positions),
            Message::Show { topic, except, what } => self.show(cx, topic, except, what).await,
            Message::Order(Order::Voice {
                guild_id,
                user_id,
                action,
            }) => {
                // Beside the loop: it waits on the voice channel's task.
                let node = cx.node.clone();
                tokio::spawn(async move { node.voice_order(guild_id, user_id, action).await });
            }
            Message::Order(Order::ListSessions { request, user_id }) => {
                // Every node answers, with none too: the asker knows when all have.
                let m = Message::SessionsOf {
                    request,
                    node: self.node.clone(),
                    sessions: cx.sessions.summaries(user_id),
                };
                self.control(Topic::cluster(), m);
            }
            Message::SessionsOf {
                request,
                node,
                sessions,
            } => {
                let asked = self
                    .asks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&request)
                    .cloned();
                if let Some(tx) = asked {
                    let _ = tx.send((node, sessions));
                }
            }
            Message::HooksWritten => cx.node.hooks_written(),
            Message::EndpointsChanged => cx.node.endpoints_changed(),
            Message::Order(order) => self.carry_out(cx.sessions.as_ref(), &order),
        }
    }

    /// Asks every node which sessions `user` has: the answers (node, its sessions) arrive
    /// on the receiver until [`Fanout::done_asking`]. Nodes without any do not answer.
    pub fn ask_sessions(&self, user: u64) -> (u64, mpsc::UnboundedReceiver<NodeSessions>) {
        let request = self.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.asks.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        let order = Order::ListSessions { request, user_id: user };
        self.control(Topic::cluster(), Message::Order(order));
        (request, rx)
    }

    /// Tells every node that webhook deliveries were committed here
    /// ([`Message::HooksWritten`]).
    pub fn hooks_written(&self) {
        self.control(Topic::cluster(), Message::HooksWritten);
    }

    /// Tells every node that webhook endpoints changed through this one
    /// ([`Message::EndpointsChanged`]).
    pub fn endpoints_changed(&self) {
        self.control(Topic::cluster(), Message::EndpointsChanged);
    }

    /// How many nodes the bus joins, when it knows ([`PubSub::nodes`]).
    pub fn nodes(&self) -> Option<usize> {
        self.pubsub.nodes()
    }

    /// Stops taking answers to question `request`.
    pub fn done_asking(&self, request: u64) {
        self.asks.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
    }

    /// The backend's order, on this node: a revocation is refused at `Hello` from now on;
    /// the sessions it covers end.
    fn carry_out(&self, sessions: &dyn Deliver, order: &Order) {
        if let Order::Revoke(r) = order {
            self.revocations.add(r);
        }
        let (forgotten, covered) = sessions.carry_out(order, &self.revocations);
        for user in forgotten {
            self.close(user);
        }
        if covered > 0 {
            tracing::info!(?order, sessions = covered, "the backend's order ended sessions here");
        }
    }

    /// An audience changed: read what `topic`'s local followers (but `except`) may now see
    /// and tell them. Only where someone follows the topic here; the reads run beside the
    /// loop and come back through it ([`ReadDone::Shown`]).
    async fn show<A: Audience, N: Node>(&self, cx: &Parts<A, N>, topic: Topic, except: Option<u64>, what: Show) {
        let here = {
            let st = self.state();
            st.index.followers(&topic).any(|u| Some(u) != except)
        };
        if !here {
            return;
        }
        match what {
            Show::Presences(users) => cx.presences(topic, except, users),
            Show::GuildMembers { guild, again } => {
                // Read only for sessions here that look at the guild (a member who declared a
                // view without it is told when the view takes it in).
                if let Some(user) = topic.user_id()
                    && cx.sessions.looks_at(user, guild)
                {
                    // Changes delivered from now on reach the sessions that look at the guild
                    // (their view took it in before this was sent): an entry read before
                    // such a change is older than what they have.
                    let mark = self.state().latest.mark();
                    cx.guild_members(user, guild, again, mark);
                }
            }
            Show::VoiceStates(channels) => {
                // This node's own channels are read now, in line with the voice events it
                // publishes (each state is written before its event goes out): no later
                // event can be overtaken by this snapshot. Other nodes' from Redis.
                let (states, elsewhere) = cx.node.voice_states_here(&channels);
                if elsewhere.is_empty() {
                    self.deliver_voice_states(cx, topic, except, channels, states).await;
                } else {
                    cx.voice_states(topic, except, channels, states, elsewhere);
                }
            }
        }
    }

    /// Delivers presences read for a [`Message::Show`]: each one unless a newer change of
    /// that user was delivered here meanwhile (then its followers have that already), in
    /// events of at most [`SNAPSHOT_CHUNK`].
    async fn deliver_presences<A: Audience, N: Node>(
        &self,
        cx: &Parts<A, N>,
        topic: Topic,
        except: Option<u64>,
        presences: Vec<(quaver_proto::Presence, Option<u64>)>,
    ) {
        let current: Vec<quaver_proto::Presence> = {
            let st = self.state();
            presences
                .into_iter()
                .filter(|(p, v)| v.is_none_or(|v| st.latest.not_newer_than(p.user_id, v)))
                .map(|(p, _)| p)
                .collect()
        };
        for chunk in current.chunks(SNAPSHOT_CHUNK) {
            let body = quaver_proto::EventBody::PresenceSnapshot {
                presences: chunk.to_vec(),
            };
            let e = self.shown(topic.clone(), Lane::Presence, except, &body);
            self.deliver(cx, e).await;
        }
    }

    /// Delivers a large guild's members' presence to `user`'s sessions here that look at it,
    /// but not the entries of users whose change was delivered after `mark` (those sessions
    /// got that change, which may be newer than the read), in events of at most
    /// [`SNAPSHOT_CHUNK`].
    fn deliver_guild_members(
        &self,
        sessions: &dyn Deliver,
        user: u64,
        guild: u64,
        mark: u64,
        presences: Vec<(quaver_proto::Presence, Option<u64>)>,
    ) {
        let current: Vec<quaver_proto::Presence> = {
            let st = self.state();
            presences
                .into_iter()
                .filter(|(p, _)| !st.latest.delivered_since(p.user_id, mark))
                .map(|(p, _)| p)
                .collect()
        };
        for chunk in current.chunks(SNAPSHOT_CHUNK) {
            let body = quaver_proto::EventBody::PresenceSnapshot {
                presences: chunk.to_vec(),
            };
            let event = Bytes::from(quaver_proto::codec::encode_payload(&body));
            let n = sessions.to_lookers(&[(user, guild)], &event);
            self.counters.envelopes.fetch_add(1, Relaxed);
            self.counters.deliveries.fetch_add(n, Relaxed);
        }
    }

    /// Delivers the voice states read for a [`Message::Show`].
    async fn deliver_voice_states<A: Audience, N: Node>(
        &self,
        cx: &Parts<A, N>,
        topic: Topic,
        except: Option<u64>,
        channel_ids: Vec<u64>,
        mut states: Vec<quaver_proto::VoiceState>,
    ) {
        states.sort_by_key(|s| (s.channel_id, s.slot));
        let body = quaver_proto::EventBody::VoiceStatesSnapshot { channel_ids, states };
        let e = self.shown(topic, Lane::Voice, except, &body);
        self.deliver(cx, e).await;
    }

    /// The envelope of a snapshot for `topic`'s local followers but `except`.
    fn shown(&self, topic: Topic, lane: Lane, except: Option<u64>, body: &quaver_proto::EventBody) -> Envelope {
        let audience = except.map_or(Reach::All, Reach::AllExcept);
        let event = Bytes::from(quaver_proto::codec::encode_payload(body));
        self.envelope(vec![topic], lane, audience, None, event)
    }

    async fn deliver_all<A: Audience, N: Node>(&self, cx: &Parts<A, N>, outs: Vec<Out<Envelope>>) {
        for o in outs {
            let e = match o {
                Out::Item(e) => e,
                Out::Gap {
                    channel,
                    guild,
                    after,
                    resumes_at,
                } => {
                    self.counters.gaps.fetch_add(1, Relaxed);
                    tracing::warn!(
                        channel,
                        after,
                        resumes_at,
                        "channel events lost on the bus are no longer in the log: Gap"
                    );
                    self.channel_envelope(guild, channel, None, gap(channel, after, resumes_at))
                }
            };
            self.deliver(cx, e).await;
        }
    }

    /// A store read came back: deliver what it unblocks, or check what it found.
    async fn on_read<A: Audience, N: Node>(&self, cx: &Parts<A, N>, d: ReadDone) {
        match d {
            ReadDone::Log(c, read) => {
                let read = read.map(|(events, complete)| {
                    let items = events
                        .into_iter()
                        .map(|(seq, body)| (seq, self.channel_envelope(c.guild, c.channel, Some(seq), body)))
                        .collect();
                    (items, complete)
                });
                let outs = self.state().order.fill(c.channel, read, Instant::now());
                let n = outs.iter().filter(|o| matches!(o, Out::Item(_))).count();
                self.counters.caught_up.fetch_add(n as u64, Relaxed);
                self.deliver_all(cx, outs).await;
            }
            ReadDone::Seqs(_, Some(seqs)) => {
                for (ch, seq) in seqs {
                    let c = self.state().order.check(ch, seq);
                    if let Some(c) = c {
                        cx.catch_up(c);
                    }
                }
            }
            ReadDone::Seqs(t, None) => {
                self.state().verify.push_back((Instant::now() + VERIFY_AFTER, t));
            }
            ReadDone::Presences(topic, except, read) => {
                self.deliver_presences(cx, topic, except, read).await;
            }
            ReadDone::GuildMembers(user, guild, mark, read) => {
                self.deliver_guild_members(cx.sessions.as_ref(), user, guild, mark, read);
            }
            ReadDone::VoiceStates(topic, except, channels, states) => {
                self.deliver_voice_states(cx, topic, except, channels, states).await;
            }
        }
    }

    /// Checks every subscribed guild and DM topic against the store (after an outage).
    fn verify_all(&self) {
        let mut st = self.state();
        let now = Instant::now();
        let topics: Vec<Topic> = st
            .index
            .topics()
            .filter(|t| t.guild_id().is_some() || t.channel_id().is_some())
            .cloned()
            .collect();
        st.verify.extend(topics.into_iter().map(|t| (now, t)));
    }

    /// New subscriptions whose time came: their channels' positions are read (and those
    /// behind the store caught up when the read is back).
    fn verify_due<A: Audience, N: Node>(&self, cx: &Parts<A, N>) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = self.state();
            while st.verify.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, t)) = st.verify.pop_front()
                    && st.index.subscribed(&t)
                {
                    due.push(t);
                }
            }
        }
        due.sort_unstable();
        due.dedup();
        for t in due {
            cx.seqs(t);
        }
    }

    async fn on_open<A: Audience, N: Node>(&self, cx: &Parts<A, N>, open: Open) {
        let Open {
            session,
            topics,
            channels,
            caught,
            reply,
        } = open;
        let mut rereads = Vec::new();
        let positions = {
            let mut st = self.state();
            let positions: Vec<u64> = channels
                .iter()
                .map(|(g, c, last)| st.order.position(*c, *g, *last))
                .collect();
            let change = st.index.open(session.user(), topics);
            self.apply(&mut st, change);
            session.attach();
            for c in caught {
                let p = st.order.position(c.channel, c.guild, c.reached);
                for (key, body) in c.items {
                    if key <= p {
                        session.push(Lane::Chat, body);
                    }
                }
                if c.reached.max(c.from) < p {
                    rereads.push((c.channel, c.reached.max(c.from), p, c.since_ms));
                }
            }
            positions
        };
        // Delivered here after the catch-up was read: read the rest (nothing is delivered
        // meanwhile — this is the delivery loop).
        for (channel, from, until, since_ms) in rereads {
            match cx.chat.log_since(channel, from, Some(until), since_ms).await {
                Ok((items, _)) => {
                    for (_, body) in items {
                        session.push(Lane::Chat, body);
                    }
                }
                Err(e) => {
                    tracing::warn!(channel, from, until, error = %e, "a session's catch-up could not be read to its end: Gap");
                    session.push(Lane::Chat, gap(channel, from, until + 1));
                }
            }
        }
        let _ = reply.send(positions);
    }

    /// A presence change goes to every guild the user is in and to each friend's own
    /// topic (one envelope, delivered once per node), in the order they happened.
    async fn publish_presence<A: Audience>(
        self: Arc<Self>,
        chat: Arc<A>,
        mut rx: mpsc::UnboundedReceiver<PresenceChange>,
    ) {
        while let Some((user, version, event)) = rx.recv().await {
            let topics = match chat.observer_topics(user).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "presence change not published: its audience could not be read");
                    continue;
                }
            };
            let mut e = self.envelope(topics, Lane::Presence, Reach::AllExcept(user), None, event);
            e.latest = version.map(|v| (user, v));
            self.send(e);
        }
    }

    /// Delivers a presence event that reached some of its audience through large guilds
    /// (`large`): a user who follows one of its other topics (a small guild, their own — a
    /// friend's or DM partner's) gets it in every session; one reached only through large
    /// guilds, in the sessions that look at one of them.
    fn deliver_presence_gated(&self, sessions: &dyn Deliver, e: &Envelope, except: Option<u64>, large: &[u64]) {
        let (mut open, gated, reach) = {
            let st = self.state();
            let ix = &st.index;
            let mut open: Vec<u64> = Vec::new();
            for t in e
                .topics
                .iter()
                .filter(|t| t.guild_id().is_none_or(|g| !large.contains(&g)))
            {
                open.extend(ix.followers(t));
            }
            open.sort_unstable();
            open.dedup();
            // Through a large guild: only its followers here that look at it (an index of
            // the views: not a look at each follower's sessions).
            let mut gated: Vec<(u64, u64)> = Vec::new();
            let mut reach = 0;
            for g in large {
                let topic = Topic::guild(*g);
                let follows = ix.following(&topic);
                // Its followers but those reached otherwise (counted for the metric).
                reach += ix.follower_count(&topic)
                    - open.iter().filter(|u| follows(**u)).count()
                    - except.map_or(0, |u| usize::from(open.binary_search(&u).is_err() && follows(u)));
                let looking = sessions.looking_at(*g, &mut |u| {
                    Some(u) != except && open.binary_search(&u).is_err() && follows(u)
                });
                gated.extend(looking.into_iter().map(|u| (u, *g)));
            }
            gated.sort_unstable();
            (open, gated, reach)
        };
        open.retain(|u| Some(*u) != except);
        sessions.to_users(&open, e.lane, &e.event);
        let (n, gated_n) = (open.len() as u64, sessions.to_lookers(&gated, &e.event));
        self.counters.envelopes.fetch_add(1, Relaxed);
        self.counters.deliveries.fetch_add(n + gated_n, Relaxed);
        // A user following two of the large guilds counts twice in `reach` (rare).
        let skipped = reach.saturating_sub(gated_n as usize);
        self.counters.presence_gated.fetch_add(skipped as u64, Relaxed);
    }

    async fn deliver<A: Audience, N: Node>(&self, cx: &Parts<A, N>, e: Envelope) {
        let (channel, except) = match e.audience {
            Reach::All => (None, None),
            Reach::AllExcept(u) => (None, Some(u)),
            Reach::Viewers(c) => (Some(c), None),
            Reach::ViewersExcept(c, u) => (Some(c), Some(u)),
        };
        // Presence through a large guild reaches only the sessions that look at it
        // (`gateway::view`).
        let mut large = Vec::new();
        if e.lane == Lane::Presence && channel.is_none() {
            for t in &e.topics {
                if let Some(g) = t.guild_id()
                    && cx.chat.is_large(g).await
                {
                    large.push(g);
                }
            }
        }
        if !large.is_empty() {
            return self.deliver_presence_gated(cx.sessions.as_ref(), &e, except, &large);
        }
        let mut users: Vec<u64> = match channel {
            None => {
                let st = self.state();
                let ix = &st.index;
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
                let Some(viewers) = cx.chat.channel_viewers(topic.guild_id(), c).await else {
                    return;
                };
                let st = self.state();
                let ix = &st.index;
                let follows = ix.following(topic);
                viewers.iter().copied().filter(|u| follows(*u)).collect()
            }
        };
        // A guild channel's messages and typing reach only the sessions that view it (or
        // declared no view); the others are told of its messages in a coalesced
        // `ChannelActivity` (`gateway::view`). Its other events (voice states, application
        // events, a `Gap`) go to every viewer.
        let passive = match (channel, e.lane) {
            (Some(c), Lane::Chat) => e.order.map(|(_, seq)| (c, Some(seq))),
            (Some(c), Lane::Typing) => Some((c, None)),
            _ => None,
        };
        if let Some(u) = except {
            users.retain(|v| *v != u);
        }
        // One call for every receiver: one wake-up of the engine's loop for them all.
        let held = match passive {
            None => {
                cx.sessions.to_users(&users, e.lane, &e.event);
                0
            }
            Some((c, seq)) => cx.sessions.to_channel(&users, e.lane, c, seq, &e.event, Instant::now()),
        };
        let n = users.len() as u64;
        self.counters.envelopes.fetch_add(1, Relaxed);
        self.counters.deliveries.fetch_add(n, Relaxed);
        if held > 0 {
            self.counters.passive.fetch_add(held, Relaxed);
        }
    }
}

/// Store reads the delivery loop has in flight at most (catch-ups after an outage must not
/// take every database connection).
const STORE_READS: usize = 4;

/// A store read for the delivery loop, done.
enum ReadDone {
    /// A channel's log after a position (`None`: the read failed).
    Log(CatchUp, Option<(Vec<(u64, Bytes)>, bool)>),
    /// Where a topic's channels stand (`None`: the read failed).
    Seqs(Topic, Option<Vec<(u64, u64)>>),
    /// Presences for a [`Message::Show`]: its topic, its exception, what was read.
    Presences(Topic, Option<u64>, Vec<(quaver_proto::Presence, Option<u64>)>),
    /// A large guild's members' presence for a user's sessions that look at it: (user,
    /// guild, delivery mark when asked, what was read).
    GuildMembers(u64, u64, u64, Vec<(quaver_proto::Presence, Option<u64>)>),
    /// Voice states for a [`Message::Show`]: its topic, its exception, its channels, the
    /// states of them all.
    VoiceStates(Topic, Option<u64>, Vec<u64>, Vec<quaver_proto::VoiceState>),
}

/// What the delivery loop reaches: the sessions, the audiences, the rest of the node
/// ([`sides`]). Its store reads run beside it, so a slow or failing database delays only
/// the channels being caught up, never the loop (every other delivery goes on); what they
/// read comes back to the loop as a [`ReadDone`].
struct Parts<A, N> {
    chat: Arc<A>,
    sessions: Arc<dyn Deliver>,
    node: Arc<N>,
    done: mpsc::UnboundedSender<ReadDone>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl<A: Audience, N: Node> Parts<A, N> {
    /// Reads `c`'s channel log after its position.
    fn catch_up(&self, c: CatchUp) {
        let (chat, done, gate) = (self.chat.clone(), self.done.clone(), self.gate.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let read = match chat.channel_log(c.channel, c.after, CATCH_UP_LIMIT).await {
                Ok(events) => {
                    let complete = events.len() < CATCH_UP_LIMIT as usize;
                    Some((events, complete))
                }
                Err(e) => {
                    tracing::warn!(channel = c.channel, error = %e, "catching a channel up from the store failed; trying again");
                    None
                }
            };
            let _ = done.send(ReadDone::Log(c, read));
        });
    }

    /// Reads the presence of `users` for a [`Message::Show`] on `topic`.
    fn presences(&self, topic: Topic, except: Option<u64>, users: Vec<u64>) {
        let (node, done) = (self.node.clone(), self.done.clone());
        tokio::spawn(async move {
            let read = node.presences(users, false).await;
            let _ = done.send(ReadDone::Presences(topic, except, read));
        });
    }

    /// Reads the presence of large guild `guild`'s members (offline ones too with `again`)
    /// for `user`'s sessions that look at it.
    fn guild_members(&self, user: u64, guild: u64, again: bool, mark: u64) {
        let (chat, node, done) = (self.chat.clone(), self.node.clone(), self.done.clone());
        tokio::spawn(async move {
            let members = match chat.member_ids(guild, user).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(guild, user, error = %e, "a large guild's members could not be read: its presence snapshot is not sent");
                    return;
                }
            };
            let read = node.presences(members, again).await;
            let _ = done.send(ReadDone::GuildMembers(user, guild, mark, read));
        });
    }

    /// Reads the states of `elsewhere` (channels other nodes serve) from Redis, to deliver
    /// with `here` (this node's, read already) for a [`Message::Show`] of `channels`.
    fn voice_states(
        &self,
        topic: Topic,
        except: Option<u64>,
        channels: Vec<u64>,
        here: Vec<quaver_proto::VoiceState>,
        elsewhere: Vec<u64>,
    ) {
        let (node, done) = (self.node.clone(), self.done.clone());
        tokio::spawn(async move {
            let mut states = here;
            states.extend(node.voice_states_elsewhere(&elsewhere).await);
            let _ = done.send(ReadDone::VoiceStates(topic, except, channels, states));
        });
    }

    /// Reads where `t`'s channels stand.
    fn seqs(&self, t: Topic) {
        let (chat, done, gate) = (self.chat.clone(), self.done.clone(), self.gate.clone());
        tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let (guild, channel) = (t.guild_id(), t.channel_id().unwrap_or(0));
            let seqs = match chat.current_seqs(guild, channel).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(topic = ?t, error = %e, "checking channel positions failed; trying again");
                    None
                }
            };
            let _ = done.send(ReadDone::Seqs(t, seqs));
        });
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
        if let Some(e) = self.event_envelope(ev) {
            self.send(e);
        }
    }

    fn deliver_here(&self, ev: BusEvent) {
        if let Some(e) = self.event_envelope(ev) {
            let _ = self.local.send(Message::Event(e));
        }
    }

    fn origin(&self) -> u64 {
        self.origin
    }
}

impl Fanout {
    /// The envelope of an event; control events are published here (and give `None`).
    fn event_envelope(&self, ev: BusEvent) -> Option<Envelope> {
        let e = match ev {
            BusEvent::Channel {
                guild_id,
                channel_id,
                seq,
                event,
            } => self.channel_envelope(guild_id, channel_id, Some(seq), event),
            BusEvent::Guild { guild_id, event } => {
                self.envelope(vec![Topic::guild(guild_id)], Lane::Chat, Reach::All, None, event)
            }
            BusEvent::User { user_id, lane, event } => {
                self.envelope(vec![Topic::user(user_id)], lane, Reach::All, None, event)
            }
            BusEvent::App {
                guild_id,
                channel_id,
                event,
            } => {
                let (topic, audience) = match (guild_id, channel_id) {
                    (Some(g), Some(c)) => (Topic::guild(g), Reach::Viewers(c)),
                    (Some(g), None) => (Topic::guild(g), Reach::All),
                    (None, Some(c)) => (Topic::channel(c), Reach::All),
                    (None, None) => return None,
                };
                self.envelope(vec![topic], Lane::Notifications, audience, None, event)
            }
            BusEvent::Typing {
                guild_id,
                channel_id,
                user_id,
                event,
            } => {
                let (topic, audience) = match guild_id {
                    Some(g) => (Topic::guild(g), Reach::ViewersExcept(channel_id, user_id)),
                    None => (Topic::channel(channel_id), Reach::AllExcept(user_id)),
                };
                self.envelope(vec![topic], Lane::Typing, audience, None, event)
            }
            BusEvent::Voice {
                guild_id,
                channel_id,
                event,
            } => self.envelope(
                vec![Topic::guild(guild_id)],
                Lane::Voice,
                Reach::Viewers(channel_id),
                None,
                event,
            ),
            BusEvent::Presence {
                user_id,
                event,
                version,
            } => {
                let _ = self.presence.send((user_id, version, event));
                return None;
            }
            BusEvent::MemberAdded {
                guild_id,
                user_id,
                channels,
            } => {
                self.follow(user_id, Topic::guild(guild_id), true, channels);
                self.control(Topic::guild(guild_id), Message::MemberAdded { guild_id, user_id });
                return None;
            }
            BusEvent::MemberLeft { guild_id, user_id } => {
                self.follow(user_id, Topic::guild(guild_id), false, Vec::new());
                return None;
            }
            BusEvent::DmOpened {
                channel_id,
                recipients,
                last_seq,
            } => {
                for u in recipients {
                    self.follow(u, Topic::channel(channel_id), true, vec![(channel_id, last_seq)]);
                }
                return None;
            }
            BusEvent::GuildChanged { guild_id } => {
                self.control(Topic::guild(guild_id), Message::GuildChanged { guild_id });
                return None;
            }
            BusEvent::ShowPresences { to, users } => {
                let (topic, except) = match to {
                    Viewers::User(u) => (Topic::user(u), None),
                    Viewers::GuildExcept(g, u) => (Topic::guild(g), Some(u)),
                };
                let what = Show::Presences(users);
                self.control(topic.clone(), Message::Show { topic, except, what });
                return None;
            }
            BusEvent::ShowGuildMembers {
                user_id,
                guild_id,
                again,
            } => {
                self.show_to_user(user_id, Show::GuildMembers { guild: guild_id, again });
                return None;
            }
            BusEvent::ShowVoiceStates { user_id, channels } => {
                self.show_to_user(user_id, Show::VoiceStates(channels));
                return None;
            }
            BusEvent::Order(order) => {
                self.control(Topic::cluster(), Message::Order(order));
                return None;
            }
            BusEvent::VoiceJoined { user_id, channel_id } => {
                // To the other nodes only (this one already left the previous channel).
                let m = Message::VoiceJoined { user_id, channel_id };
                self.pubsub.publish(&Topic::user(user_id), m.encode(self.origin));
                return None;
            }
        };
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_versions_pass() {
        let mut l = Latest::default();
        assert!(l.newer(7, 2));
        assert!(!l.newer(7, 2));
        assert!(!l.newer(7, 1), "an older version published by a slower node");
        assert!(l.newer(7, 3));
        assert!(l.newer(8, 1), "per key");
    }

    #[test]
    fn a_snapshot_is_current_unless_a_newer_change_was_delivered() {
        let mut l = Latest::default();
        assert!(l.not_newer_than(7, 0), "nothing delivered for the user yet");
        l.newer(7, 5);
        assert!(l.not_newer_than(7, 5), "read at the delivered version: same state");
        assert!(l.not_newer_than(7, 9), "read after it");
        assert!(!l.not_newer_than(7, 4), "read before a change already delivered");
    }

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

    /// What the fake sessions were asked: (call, users, seq).
    type Calls = Arc<Mutex<Vec<(&'static str, Vec<u64>, Option<u64>)>>>;

    /// The sessions side, recorded.
    #[derive(Debug, Default)]
    struct Recorded(Calls);

    impl Deliver for Recorded {
        fn to_users(&self, users: &[u64], _: Lane, _: &Bytes) {
            let mut users = users.to_vec();
            users.sort_unstable();
            self.0.lock().unwrap().push(("users", users, None));
        }
        fn to_channel(&self, users: &[u64], _: Lane, _: u64, seq: Option<u64>, _: &Bytes, _: Instant) -> u64 {
            self.0.lock().unwrap().push(("channel", users.to_vec(), seq));
            0
        }
        fn to_lookers(&self, looking: &[(u64, u64)], _: &Bytes) -> u64 {
            looking.len() as u64
        }
        fn looking_at(&self, _: u64, _: &mut dyn FnMut(u64) -> bool) -> Vec<u64> {
            Vec::new()
        }
        fn looks_at(&self, _: u64, _: u64) -> bool {
            true
        }
        fn carry_out(&self, _: &Order, _: &crate::auth::Revocations) -> (Vec<u64>, usize) {
            (Vec::new(), 0)
        }
        fn summaries(&self, _: u64) -> Vec<SessionSummary> {
            Vec::new()
        }
    }

    /// The audience side: one guild channel (10, 20) that users 1, 2 and 3 may view.
    struct Viewers123;

    impl Audience for Viewers123 {
        async fn is_large(&self, _: u64) -> bool {
            false
        }
        async fn channel_viewers(&self, guild: Option<u64>, channel: u64) -> Option<Arc<Vec<u64>>> {
            (guild == Some(10) && channel == 20).then(|| Arc::new(vec![1, 2, 3]))
        }
        async fn observer_topics(&self, _: u64) -> anyhow::Result<Vec<Topic>> {
            Ok(Vec::new())
        }
        async fn member_ids(&self, _: u64, _: u64) -> anyhow::Result<Vec<u64>> {
            Ok(Vec::new())
        }
        async fn channel_log(&self, _: u64, _: u64, _: u32) -> anyhow::Result<Vec<(u64, Bytes)>> {
            Ok(Vec::new())
        }
        async fn log_since(&self, _: u64, _: u64, _: Option<u64>, _: u64) -> anyhow::Result<(Vec<(u64, Bytes)>, u64)> {
            Ok((Vec::new(), 0))
        }
        async fn current_seqs(&self, _: Option<u64>, _: u64) -> anyhow::Result<Vec<(u64, u64)>> {
            Ok(Vec::new())
        }
        fn guild_changed(&self, _: u64) {}
        fn member_added(&self, _: u64, _: u64) {}
    }

    /// The rest of the node: nothing to say.
    struct Quiet;

    impl Node for Quiet {
        fn voice_elsewhere(&self, _: u64, _: &Bytes) {}
        fn typing_elsewhere(&self, _: &Bytes) {}
        async fn joined_voice_elsewhere(&self, _: u64, _: u64) {}
        async fn voice_order(&self, _: u64, _: u64, _: crate::cluster::order::VoiceAction) {}
        async fn presences(&self, _: Vec<u64>, _: bool) -> Vec<(quaver_proto::Presence, Option<u64>)> {
            Vec::new()
        }
        fn voice_states_here(&self, channels: &[u64]) -> (Vec<quaver_proto::VoiceState>, Vec<u64>) {
            (Vec::new(), channels.to_vec())
        }
        async fn voice_states_elsewhere(&self, _: &[u64]) -> Vec<quaver_proto::VoiceState> {
            Vec::new()
        }
        fn hooks_written(&self) {}
        fn endpoints_changed(&self) {}
    }

    /// A session opening: (user, attached yet, what it was handed directly).
    struct Joiner(u64, Calls);

    impl Opening for Joiner {
        fn user(&self) -> u64 {
            self.0
        }
        fn attach(&self) {
            self.1.lock().unwrap().push(("attach", vec![self.0], None));
        }
        fn push(&self, _: Lane, event: Bytes) {
            let seq = event.first().map(|b| u64::from(*b));
            self.1.lock().unwrap().push(("push", vec![self.0], seq));
        }
    }

    fn guild_10(last_seq: u64) -> GuildSnapshot {
        GuildSnapshot {
            guild: quaver_proto::Guild {
                id: 10,
                name: "g".into(),
                owner_id: 1,
            },
            roles: Vec::new(),
            channels: vec![Channel {
                id: 20,
                guild_id: Some(10),
                kind: quaver_proto::ChannelKind::Text,
                name: "c".into(),
                topic: String::new(),
                last_seq,
                overwrites: Vec::new(),
                recipients: Vec::new(),
                user_limit: 0,
            }],
            member_count: 4,
            members: Vec::new(),
        }
    }

    async fn until_calls(calls: &Calls, n: usize) -> Vec<(&'static str, Vec<u64>, Option<u64>)> {
        for _ in 0..200 {
            if calls.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        calls.lock().unwrap().clone()
    }

    /// The fan-out needs no gateway, chat or voice: through its three sides, a session opens
    /// with its catch-up handed over before any live event, a channel's event goes to its
    /// viewers here in one call (not to a follower who may not view it, nor to a viewer with
    /// no session here), and a guild's event to every follower in one call.
    #[tokio::test]
    async fn events_reach_the_sessions_through_the_three_sides() {
        let hub = crate::cluster::pubsub::MemoryHub::new();
        let (p, rx) = hub.node();
        let fanout = Fanout::new(Arc::new(p), Arc::default(), "test");
        let calls = Calls::default();
        let sessions: Arc<dyn Deliver> = Arc::new(Recorded(calls.clone()));
        tokio::spawn(fanout.clone().run(Arc::new(Viewers123), sessions, Arc::new(Quiet), rx));

        // User 1 resumes from seq 0 of a channel at 2: seqs 1 and 2 come from its catch-up
        // (3, read a moment later, is past where delivery stands: it comes live).
        let caught = vec![Caught {
            channel: 20,
            guild: Some(10),
            from: 0,
            reached: 3,
            since_ms: 0,
            items: [1u8, 2, 3]
                .iter()
                .map(|s| (u64::from(*s), Bytes::from(vec![*s])))
                .collect(),
        }];
        let mut guilds = [guild_10(2)];
        fanout
            .open(Box::new(Joiner(1, calls.clone())), &mut guilds, &mut [], caught)
            .await;
        assert_eq!(guilds[0].channels[0].last_seq, 2, "Ready says where delivery stands");
        for user in [2, 4] {
            fanout
                .open(
                    Box::new(Joiner(user, calls.clone())),
                    &mut [guild_10(2)],
                    &mut [],
                    Vec::new(),
                )
                .await;
        }
        assert_eq!(
            calls.lock().unwrap().clone(),
            [
                ("attach", vec![1], None),
                ("push", vec![1], Some(1)),
                ("push", vec![1], Some(2)),
                ("attach", vec![2], None),
                ("attach", vec![4], None),
            ]
        );

        let bus: &dyn Bus = fanout.as_ref();
        let event = Bytes::from_static(&[3]);
        bus.publish(BusEvent::Channel {
            guild_id: Some(10),
            channel_id: 20,
            seq: 3,
            event: event.clone(),
        });
        bus.publish(BusEvent::Guild { guild_id: 10, event });
        let seen = until_calls(&calls, 7).await;
        assert_eq!(
            seen[5..],
            [("channel", vec![1, 2], Some(3)), ("users", vec![1, 2, 4], None)],
            "user 4 follows the guild but may not view the channel; user 3 has no session here"
        );
        assert_eq!(fanout.counters.deliveries.load(Relaxed), 5);
    }
}
