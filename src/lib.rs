//! Quaver: a real-time chat, presence, typing, notification and voice server over QUIC.
//!
//! Map of the crate (one folder per concern):
//! - [`config`]: the one configuration tree (defaults ← TOML ← env ← flags).
//! - [`transport`]: the QUIC server configuration (TLS 1.3, ALPNs, limits), the rules of a
//!   WebTransport request (path, Origin, token), and TLS certificates (`transport::tls`).
//! - [`auth`]: JWT verification, each failure mapped to a close code.
//! - [`gateway`]: session lifecycle, control stream, lanes, fetch streams, dispatch.
//! - [`chat`]: guilds, channels, roles, messages, reactions, read states.
//! - [`perms`]: permission bits and their computation (a pure function).
//! - [`store`]: the database (SQLite or PostgreSQL through one sqlx implementation).
//! - [`cluster`]: the bus that carries events to every node: topics on an in-process hub
//!   or on Redis.
//! - [`engine`]: the QUIC event loop over quinn-proto that serves the sessions (`gateway::wire`).
//! - [`fanout`]: events → topics and audiences, and delivery to local sessions (a sans-IO
//!   topic index of which local users need which topics). Below the gateway and chat: it
//!   reaches them through its interfaces (`fanout::sides`: `Deliver`, `Audience`, `Node`).
//! - [`limits`]: token-bucket rate limits and flood detection.
//! - [`notify`]: who is notified of what (a pure decision; chat gathers the facts).
//! - [`presence`]: multi-device presence with reconnect grace (sans-IO + its task).
//! - [`typing`]: typing indicators with debounce and server-side expiry (sans-IO + task).
//! - [`voice`]: voice channels, the SFU (sans-IO decisions + a task per channel).
//! - [`ids`]: snowflake ids.
//! - [`http`]: the side port: health, readiness, metrics, certificate hash, web client.
//! - [`metrics`]: counters rendered for Prometheus.
//! - [`shutdown`]: shutdown as a value passed to every part.
//!
//! - [`cli`]: `quaver chat`, the command-line chat client.
//!
//! [`Server::start`] wires them together; `main.rs` is only the command line.

pub mod api;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod perms;
pub mod presence;
pub mod shutdown;
pub mod store;
pub mod transport;
pub mod typing;
pub mod voice;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;

/// State shared by every part of a running server.
#[derive(Debug)]
pub struct Ctx {
    /// The resolved configuration.
    pub cfg: Config,
    /// Token verification.
    pub verifier: auth::Verifier,
    /// The TLS certificate in service.
    pub certs: Arc<transport::tls::CertStore>,
    /// The TLS ticket and stateless-reset keys, shared by the nodes through the store.
    pub keys: transport::keys::Keys,
    /// Counters.
    pub metrics: metrics::Metrics,
    /// Fires when shutdown starts.
    pub shutdown: shutdown::Signal,
    /// QUIC handshakes accepted and not yet finished (the engine's count, for `/metrics`).
    pub handshakes_in_flight: AtomicUsize,
    /// Connections past their handshake (or WebSocket upgrade) and not yet `Ready`, for
    /// shedding at the door over every framing.
    pub door: gateway::door::Door,
    /// Live sessions.
    pub sessions: Arc<gateway::Sessions>,
    /// Chat: guilds, channels, messages.
    pub chat: Arc<chat::Chat>,
    /// Presence task.
    pub presence: presence::task::PresenceHandle,
    /// Typing task.
    pub typing: typing::task::TypingHandle,
    /// Voice channels (the SFU).
    pub voice: Arc<voice::Voice>,
    /// The WebRTC port for voice participants (`--webrtc-listen`), if enabled.
    pub webrtc: Option<Arc<voice::webrtc::WebRtc>>,
    /// Rate limits of every user on this node.
    pub limiter: Arc<limits::Limiter>,
    /// Topics and delivery to local sessions.
    pub fanout: Arc<fanout::Fanout>,
    /// Webhook delivery.
    pub webhooks: Arc<webhooks::deliver::Deliverer>,
    /// The application's synchronous hooks.
    pub hooks: Arc<webhooks::hooks::Hooks>,
    /// Records session and rate-limit webhook events off the engine's paths.
    pub hook_writer: webhooks::writer::HookWriter,
    /// Session tasks running (including ones still authenticating).
    tasks: AtomicUsize,
    /// Notified when `tasks` drops to zero.
    idle: Notify,
    /// The UDP port actually bound (for `/cert-hash`).
    pub quic_port: u16,
}

/// Counts one session task while it lives. A drop guard, not a call at the end of the
/// task: a session refused early, or a task that panicked, must not leave the count up —
/// shutdown waits for it to reach zero (a leaked count made every SIGTERM wait the whole
/// drain timeout).
#[derive(Debug)]
pub(crate) struct SessionTask(Arc<Ctx>);

impl Drop for SessionTask {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Ctx {
    /// Counts a session task until the returned guard drops.
    pub(crate) fn session_task(self: &Arc<Self>) -> SessionTask {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        SessionTask(self.clone())
    }

    /// Session tasks running.
    pub fn session_tasks(&self) -> usize {
        self.tasks.load(Ordering::SeqCst)
    }

    /// Replay buffer limits of new sessions.
    pub fn replay_limits(&self) -> gateway::replay::ReplayLimits {
        gateway::replay::ReplayLimits {
            max_events: self.cfg.session.replay_max_events,
            max_bytes: self.cfg.session.replay_max_bytes,
            window: self.cfg.session.resume_window,
        }
    }

    async fn wait_no_sessions(&self) {
        loop {
            let notified = self.idle.notified();
            if self.tasks.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// How often the coalesced `ChannelActivity` reports that are due are sent (a report
/// leaves at most this late after its time, `gateway::view::ACTIVITY_EVERY` after the last).
const ACTIVITY_TICK: Duration = Duration::from_millis(250);

/// The parts of this node the bus speaks to besides deliveries ([`fanout::Node`]).
struct NodeParts {
    chat: Arc<chat::Chat>,
    voice: Arc<voice::Voice>,
    typing: typing::task::TypingHandle,
    presence: presence::task::PresenceHandle,
}

impl fanout::Node for NodeParts {
    fn voice_elsewhere(&self, origin: u64, event: &bytes::Bytes) {
        self.voice.remote_event(origin, event);
    }

    fn typing_elsewhere(&self, event: &bytes::Bytes) {
        match quaver_proto::codec::decode::<quaver_proto::EventBody>(event) {
            Ok(body) => self.typing.remote(body),
            Err(e) => tracing::warn!(error = %e, "another node's typing event could not be read"),
        }
    }

    async fn joined_voice_elsewhere(&self, user: u64, channel: u64) {
        self.voice.left_elsewhere(user, channel).await;
    }

    async fn voice_order(&self, guild_id: u64, user_id: u64, action: gateway::VoiceAction) {
        match self.voice.carry_out(guild_id, user_id, action).await {
            Ok(true) => tracing::info!(guild_id, user_id, ?action, "the backend's voice order carried out here"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(guild_id, user_id, ?action, error = %e.message, "the backend's voice order failed here")
            }
        }
    }

    async fn presences(&self, users: Vec<u64>, offline: bool) -> Vec<(quaver_proto::Presence, Option<u64>)> {
        if offline {
            self.presence.snapshot_all(users).await
        } else {
            self.presence.snapshot_versioned(users).await
        }
    }

    fn voice_states_here(&self, channels: &[u64]) -> (Vec<quaver_proto::VoiceState>, Vec<u64>) {
        self.voice.states_here(channels)
    }

    async fn voice_states_elsewhere(&self, channels: &[u64]) -> Vec<quaver_proto::VoiceState> {
        self.voice.states_elsewhere(channels).await
    }

    fn hooks_written(&self) {
        self.chat.store().hooks().written.notify_one();
    }

    fn endpoints_changed(&self) {
        self.chat.store().hooks().endpoints_changed(false);
    }
}

/// Sends the `ChannelActivity` reports whose time has come (passive sessions).
async fn activity_reports(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ACTIVITY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _batch = crate::engine::Batch::begin();
        ctx.sessions.report_due(std::time::Instant::now());
    }
}

/// How often a node reads the revocations from the database (they reach it on the bus at
/// once; this is for those the bus lost).
const REVOCATIONS_EVERY: Duration = Duration::from_secs(30);

/// Tells every node each time webhook deliveries were committed here (at most once per
/// 2 ms: a burst of commits is one message on the bus), and when webhook endpoints changed
/// through this node.
async fn tell_hooks_written(
    fanout: Arc<fanout::Fanout>,
    committed: Arc<tokio::sync::Notify>,
    endpoints: Arc<tokio::sync::Notify>,
    mut stop: shutdown::Signal,
) {
    loop {
        tokio::select! {
            () = committed.notified() => fanout.hooks_written(),
            () = endpoints.notified() => fanout.endpoints_changed(),
            () = stop.wait() => return,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Periodic upkeep: forget sessions whose resume window passed, rate-limit state that says
/// nothing any more and idle channel locks (so per-user and per-channel memory does not grow
/// forever); prune the event log.
async fn housekeeping(ctx: Arc<Ctx>) {
    let every = (ctx.cfg.session.resume_window / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
    let mut last_revocations = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let now = std::time::Instant::now();
        for user in ctx.sessions.sweep(now) {
            ctx.fanout.close(user);
        }
        ctx.limiter.sweep(now);
        ctx.chat.sweep();
        if last_revocations.elapsed() >= REVOCATIONS_EVERY {
            // Revocations made while the bus was away reach this node from the database.
            last_revocations = std::time::Instant::now();
            match ctx.chat.store().revocations().await {
                Ok(all) => {
                    for r in &all {
                        ctx.verifier.revocations().add(r);
                    }
                    let order = gateway::Order::Revoke(store::Revocation {
                        user_id: 0,
                        before_ms: 0,
                        jti: String::new(),
                    });
                    let (forgotten, n) = ctx.sessions.apply(&order, ctx.verifier.revocations());
                    for user in forgotten {
                        ctx.fanout.close(user);
                    }
                    if n > 0 {
                        tracing::info!(sessions = n, "ended sessions whose tokens were revoked");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading token revocations failed"),
            }
        }
        // Every 10 minutes, or twice per retention period if that is shorter (catch-up
        // already ignores events past the retention; this frees their space).
        let prune_every = (ctx.cfg.session.event_log_retention / 2).min(Duration::from_secs(600));
        if last_prune.elapsed() >= prune_every {
            last_prune = std::time::Instant::now();
            let before = ids::now_ms().saturating_sub(ctx.cfg.session.event_log_retention.as_millis() as u64);
            if let Err(e) = ctx.chat.store().prune_events(before).await {
                tracing::warn!(error = %e, "pruning the event log failed");
            }
            let idem = ids::now_ms().saturating_sub(ctx.cfg.api.idempotency_ttl.as_millis() as u64);
            if let Err(e) = ctx.chat.store().prune_idempotency(idem).await {
                tracing::warn!(error = %e, "pruning the API's idempotency keys failed");
            }
            let hooks = ids::now_ms().saturating_sub(ctx.cfg.webhooks.retention.as_millis() as u64);
            if let Err(e) = ctx.chat.store().hook_prune(hooks).await {
                tracing::warn!(error = %e, "pruning the webhook event log failed");
            }
        }
    }
}

/// One of two things.
enum Either<A, B> {
    Left(A),
    Right(B),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Shared state (metrics, sessions, verifier).
    pub ctx: Arc<Ctx>,
    /// The bound QUIC/WebTransport address.
    pub quic_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound address of the server API.
    pub api_addr: SocketAddr,
    /// Whether the server API speaks HTTPS there.
    pub api_https: bool,
    trigger: shutdown::Trigger,
    /// The engine's loops (one thread each).
    engine: gateway::wire::Running,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds both ports and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        Self::start_with(cfg, None).await
    }

    /// Like [`Server::start`], on the in-process bus `hub` when given (several nodes in one
    /// process, for tests) instead of the one `cfg` asks for.
    pub async fn start_with(cfg: Config, hub: Option<&cluster::pubsub::MemoryHub>) -> anyhow::Result<Server> {
        cfg.validate()?;
        let verifier = auth::Verifier::from_config(&cfg.auth, &cfg.data_dir)?;
        let certs = transport::tls::CertStore::from_config(&cfg.tls)?;
        let store = store::Store::open_with(&cfg.database_url(), &cfg.store)
            .await
            .map_err(|e| anyhow::anyhow!("opening database: {e}"))?;
        let keys = transport::keys::Keys::load(&store)
            .await
            .map_err(|e| anyhow::anyhow!("loading the TLS ticket and stateless-reset keys: {e}"))?;
        let cluster::Connected {
            pubsub,
            rx: bus_rx,
            commands,
        } = cluster::connect(&cfg, hub).await?;
        // Revoked tokens: every node refuses them from its start.
        for r in store
            .revocations()
            .await
            .map_err(|e| anyhow::anyhow!("reading token revocations: {e}"))?
        {
            verifier.revocations().add(&r);
        }
        let fanout = fanout::Fanout::new(pubsub, verifier.revocations().clone(), &cfg.node_name);
        // In a cluster: a unique name and snowflake number, checked in Redis before serving.
        let mut node_number = cfg.node_number();
        if let Some(c) = &commands {
            cluster::identity::check_name(c, &cfg.node_name).await?;
            node_number = cluster::identity::claim_number(c, &cfg.node_name, cfg.node_id, node_number).await?;
            tracing::info!(node = %cfg.node_name, number = node_number, "claimed the node's snowflake number");
        }
        let registry = commands
            .clone()
            .map(|c| Arc::new(presence::registry::redis::RedisRegistry::new(c, &cfg.node_name)));
        if let Some(r) = &registry
            && !r.renew().await
        {
            tracing::warn!("could not register this node's liveness in Redis; retrying every second");
        }
        let bus: Arc<dyn cluster::Bus> = fanout.clone();
        let webhooks = webhooks::deliver::Deliverer::start(store.clone(), &cfg.node_name, &cfg.webhooks).await?;
        let hooks = Arc::new(webhooks::hooks::Hooks::new(
            &cfg.webhooks.hooks,
            cfg.webhooks.ca_file.as_deref(),
        )?);
        let hook_writer = webhooks::writer::HookWriter::spawn(store.clone());
        let limiter = Arc::new(limits::Limiter::new(cfg.limits.clone()));
        {
            // `rate_limited` webhook events, for abuse monitoring.
            let (w, node) = (hook_writer.clone(), cfg.node_name.clone());
            limiter.on_refused(Box::new(move |user, kind, flood| {
                if w.wants("rate_limited") {
                    let data = webhooks::catalogue::WebhookRateLimited {
                        user_id: api::types::Id(user),
                        limit: format!("{kind:?}").to_lowercase(),
                        flood,
                        node: node.clone(),
                    };
                    w.record(
                        webhooks::catalogue::user_event("rate_limited", user, &data),
                        ids::now_ms(),
                    );
                }
            }));
        }
        let chat = Arc::new(chat::Chat::new(store, bus.clone(), node_number, limiter.clone()));
        // Snowflakes continue after the newest stored one: a restart with the clock set
        // back (or a node name reused) must never repeat an id.
        let last_id = chat
            .store()
            .max_snowflake()
            .await
            .map_err(|e| anyhow::anyhow!("reading the newest id: {e}"))?;
        let behind = chat.resume_ids_after(last_id);
        if behind > 0 {
            tracing::warn!(
                behind_ms = behind,
                "the clock is behind the newest stored id; new ids continue after it (check NTP)"
            );
        }
        let (presence, liveness) = presence::task::PresenceHandle::spawn(
            bus.clone(),
            cfg.session.presence_grace,
            // The sweeper is for sessions whose task never reported their end; it must not
            // race the normal path (heartbeat timeout, then the grace).
            cfg.session.ping_timeout * 2 + cfg.session.presence_grace,
            registry,
            Some(chat.store().clone()),
        );
        chat.set_presence(presence.clone());
        chat.set_large_guild_members(cfg.session.large_guild_members);
        chat.set_hooks(hooks.clone());
        let typing = typing::task::TypingHandle::spawn(bus.clone());
        let voice = Arc::new(voice::Voice::new(chat.clone(), bus.clone(), cfg.voice_sfu()));
        let sessions = Arc::new(gateway::Sessions::default());
        // The engine's port: its loops over quinn-proto, both protocols.
        let sockets = engine::bind(cfg.listen, cfg.loops)
            .map_err(|e| anyhow::anyhow!("binding QUIC port {}: {e}", cfg.listen))?;
        let quic_addr = sockets[0].local_addr()?;
        let (webrtc, webrtc_inlet) = match cfg.webrtc_listen {
            Some(addr) => (
                Some(
                    voice::webrtc::WebRtc::start(addr, &cfg.webrtc_announce, voice.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("binding WebRTC port {addr}: {e}"))?,
                ),
                None,
            ),
            None if cfg.webrtc_shared_port => {
                let (w, inlet) =
                    voice::webrtc::WebRtc::on_quic_port(&sockets[0], quic_addr, &cfg.webrtc_announce, voice.clone())?;
                (Some(w), Some(inlet))
            }
            None => (None, None),
        };
        if let Ok(b) = engine::SocketBuffers::of(&sockets[0])
            && b.short()
        {
            tracing::warn!(
                recv = b.recv,
                send = b.send,
                wanted = engine::SOCKET_BUFFER,
                "the QUIC sockets got smaller buffers than asked for: bursts may drop datagrams (raise net.core.rmem_max and wmem_max)"
            );
        }
        let http = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding HTTP port {}: {e}", cfg.http_listen))?;
        let http_addr = http.local_addr()?;
        let api_listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding the API port {}: {e}", cfg.api.listen))?;
        let api_addr = api_listener.local_addr()?;
        let (trigger, signal) = shutdown::channel();
        let ctx = Arc::new(Ctx {
            cfg,
            verifier,
            certs: certs.clone(),
            keys,
            metrics: metrics::Metrics::default(),
            shutdown: signal.clone(),
            handshakes_in_flight: AtomicUsize::new(0),
            door: gateway::door::Door::default(),
            sessions: sessions.clone(),
            chat: chat.clone(),
            presence,
            typing,
            voice,
            webrtc,
            limiter,
            fanout: fanout.clone(),
            webhooks: webhooks.clone(),
            hooks,
            hook_writer,
            tasks: AtomicUsize::new(0),
            idle: Notify::new(),
            quic_port: quic_addr.port(),
        });
        let mut tasks = vec![
            tokio::spawn(certs.clone().renew_loop(signal.clone())),
            tokio::spawn(
                ctx.keys
                    .tickets
                    .clone()
                    .refresh_loop(ctx.chat.store().clone(), signal.clone()),
            ),
        ];
        let server = Arc::new(transport::server_config(
            &ctx.cfg,
            certs.clone(),
            &[quaver_proto::ALPN_H3, quaver_proto::ALPN_QUAVER],
            ctx.keys.tickets.clone(),
        )?);
        let engine = gateway::wire::spawn(ctx.clone(), sockets, server, webrtc_inlet)?;
        tasks.extend([
            tokio::spawn(fanout.clone().run(
                chat.clone(),
                sessions.clone(),
                Arc::new(NodeParts {
                    chat: chat.clone(),
                    voice: ctx.voice.clone(),
                    typing: ctx.typing.clone(),
                    presence: ctx.presence.clone(),
                }),
                bus_rx,
            )),
            tokio::spawn(housekeeping(ctx.clone())),
            tokio::spawn(activity_reports(ctx.clone())),
            tokio::spawn(webhooks.clone().run(signal.clone())),
        ]);
        tasks.extend(liveness);
        if commands.is_some() {
            // Deliveries committed here may be in partitions another node leases: the
            // cluster is told, so their holder looks at once (not at its next poll).
            tasks.push(tokio::spawn(tell_hooks_written(
                fanout.clone(),
                chat.store().hooks().committed.clone(),
                chat.store().hooks().endpoints_changed_here.clone(),
                signal.clone(),
            )));
        }
        if let Some(c) = &commands {
            // Voice channels live on one node at a time; clients are sent to it.
            let endpoint = ctx.cfg.public_addr.clone().unwrap_or_else(|| quic_addr.to_string());
            let ws_url = ctx
                .cfg
                .public_ws_url
                .clone()
                .unwrap_or_else(|| gateway::ws::default_url(ctx.cfg.public_addr.as_deref(), http_addr));
            ctx.voice.set_leases(Arc::new(voice::lease::VoiceLeases::new(
                c.clone(),
                &ctx.cfg.node_name,
                voice::lease::Endpoints { quic: endpoint, ws_url },
                cluster::Bus::origin(fanout.as_ref()),
                ctx.certs.clone(),
            )));
            tasks.push(tokio::spawn(ctx.voice.clone().keep_leases()));
        }
        if let Some(c) = commands {
            tasks.push(tokio::spawn(cluster::identity::renew_number(
                c,
                ctx.cfg.node_name.clone(),
                node_number,
            )));
        }
        let api = api::router(Arc::new(api::Services {
            chat: ctx.chat.clone(),
            presence: ctx.presence.clone(),
            sessions: ctx.sessions.clone(),
            fanout: ctx.fanout.clone(),
            bus: bus.clone(),
            revocations: ctx.verifier.revocations().clone(),
            voice: ctx.voice.clone(),
            operations: Default::default(),
            keys: Arc::new(api::auth::Keys::new(&ctx.cfg.api.keys, ctx.cfg.api.rate)),
            idempotency_ttl: ctx.cfg.api.idempotency_ttl,
            webhooks: ctx.webhooks.clone(),
        }));
        let https = ctx.cfg.api.https(&ctx.cfg.tls);
        let listener = if https {
            Either::Left(api::tls::TlsListener::new(api_listener, certs.clone())?)
        } else {
            Either::Right(api_listener)
        };
        tasks.push(tokio::spawn(async move {
            // Serves through the drain, like the HTTP port, and stops with the process.
            let served = match listener {
                Either::Left(l) => axum::serve(l, api).await,
                Either::Right(l) => axum::serve(l, api).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "API server failed");
            }
        }));
        let router = http::router(ctx.clone());
        let mut http_stop = signal.clone();
        tasks.push(tokio::spawn(async move {
            // The HTTP port stays up through the drain (so /ready can say 503) and stops
            // with the process.
            tokio::select! {
                () = http::serve(http, router) => {},
                _ = async { http_stop.wait().await; std::future::pending::<()>().await } => {}
            }
        }));
        Ok(Server {
            ctx,
            quic_addr,
            http_addr,
            api_addr,
            api_https: https,
            trigger,
            engine,
            tasks,
        })
    }

    /// The SHA-256 of the certificate in service (for `serverCertificateHashes`).
    pub fn cert_hash(&self) -> [u8; 32] {
        self.ctx.certs.info().sha256
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.trigger.fire();
    }

    /// Graceful shutdown: stop accepting, `Goaway` to every session, wait for them to leave
    /// (at most the drain timeout, after which each session closes itself with
    /// `going_away`), then stop the engine (closing what is left).
    pub async fn shutdown(self) {
        self.trigger.fire();
        let drain = self.ctx.cfg.session.drain_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(drain, self.ctx.wait_no_sessions()).await;
        if let Err(e) = self.engine.stop(Duration::from_secs(2)).await {
            tracing::warn!(error = %e, "the engine's loop had stopped with an error");
        }
        for t in self.tasks {
            t.abort();
        }
    }
}
