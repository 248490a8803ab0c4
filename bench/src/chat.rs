//! F0–F3: chat fan-out. `sessions` sessions in one channel; `senders` of them send `rate`
//! messages per second each for `seconds`; every session receives every message. Measures
//! deliveries per second, send→receive latency in one process clock, loss and duplicates
//! (by channel seq, per receiver), and server CPU per delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use quaver_client::Transport;
use quaver_proto::*;

use crate::setup::{Owner, Setup};
use crate::{Percentiles, percentiles};

/// Parameters of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChatRun {
    /// Sessions in the channel.
    pub(crate) sessions: usize,
    /// How many of them send.
    pub(crate) senders: usize,
    /// Messages per second per sender.
    pub(crate) rate: f64,
    /// Seconds of sending.
    pub(crate) seconds: f64,
    /// Transport.
    pub(crate) transport: Transport,
    /// Server nodes (more than one: a cluster on `REDIS_URL` and `DATABASE_URL`, sessions
    /// spread over the nodes by user id, so most deliveries cross Redis).
    pub(crate) nodes: usize,
    /// Run even one node on Redis and PostgreSQL (the single-node figure to compare with).
    pub(crate) on_cluster_services: bool,
    /// The load generator's client loops (`swarm`: sessions on the engine); 0 = one
    /// `quaver-client` session (tasks) per member. WebTransport runs always use the latter.
    pub(crate) client_loops: usize,
    /// Senders post through the server API (HTTP, as bots) instead of their chat lanes.
    pub(crate) via_api: bool,
    /// The `quaver-client` sessions' check of their route's local address (`None`: off).
    pub(crate) network_check: Option<Duration>,
    /// The ACK delay the clients ask of the server (`None`: the server's own).
    pub(crate) ack_delay: Option<Duration>,
    /// Passive sessions: this share of the sessions (the senders among them) view the
    /// channel, the others say they view none and get its activity coalesced (`None`:
    /// nobody says anything — everyone gets everything).
    pub(crate) viewing: Option<f64>,
}

impl ChatRun {
    /// Sessions that get the channel's messages.
    pub(crate) fn viewers(&self) -> usize {
        match self.viewing {
            None => self.sessions,
            Some(share) => {
                ((self.sessions as f64 * share).ceil() as usize).clamp(self.senders.min(self.sessions), self.sessions)
            }
        }
    }
}

impl ChatRun {
    /// Whether the run's nodes use Redis and PostgreSQL.
    fn on_cluster(&self) -> bool {
        self.nodes > 1 || self.on_cluster_services
    }
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct ChatResult {
    /// Messages acknowledged.
    pub(crate) sent: u64,
    /// Deliveries expected (sent × sessions).
    pub(crate) expected: u64,
    /// Deliveries received (first copies).
    pub(crate) delivered: u64,
    /// Copies received more than once.
    pub(crate) duplicates: u64,
    /// Deliveries per second over the sending period.
    pub(crate) per_sec: f64,
    /// Server CPU seconds during the run (all nodes).
    pub(crate) cpu_seconds: f64,
    /// Per node.
    pub(crate) node_cpu_seconds: Vec<f64>,
    /// Redis CPU seconds during the run (cluster runs on a local Redis; else 0).
    pub(crate) redis_cpu_seconds: f64,
    /// Latency percentiles (µs).
    pub(crate) latency: Percentiles,
    /// UDP datagrams dropped for full receive buffers during the run (machine-wide).
    pub(crate) udp_drops: u64,
    /// API runs: how long each post took to be answered (µs).
    pub(crate) api_call: Option<Percentiles>,
    /// `ChannelActivity` events the sessions received (passive runs).
    pub(crate) activity: u64,
    /// The server's resident memory at the end of the run (one node; 0 in clusters).
    pub(crate) server_rss: u64,
}

impl ChatResult {
    /// Fraction of expected deliveries missing.
    pub(crate) fn loss(&self) -> f64 {
        1.0 - self.delivered as f64 / self.expected.max(1) as f64
    }
    /// Server CPU µs per delivery.
    pub(crate) fn cpu_us_per_delivery(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.delivered.max(1) as f64
    }
}

/// Runs one chat fan-out load against a freshly started server.
pub(crate) async fn run(target: &crate::server::Target, r: ChatRun) -> anyhow::Result<ChatResult> {
    // The benchmark's senders exceed the default per-user send rate on purpose.
    // A Hello may wait behind that set-up's presence fan-out (10,000 joins keep the two
    // cores busy for minutes): longer than the default 5 s.
    let mut toml =
        "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\n[session]\nhello_timeout = \"60s\"\n".to_string();
    let api_key = if r.via_api {
        anyhow::ensure!(
            r.client_loops > 0 && r.transport == Transport::Quic && matches!(target, crate::server::Target::Spawn(_)),
            "API runs need raw QUIC receivers on client loops and a server the run starts"
        );
        let (key, cfg) = crate::api::key_config()?;
        toml.push_str(&cfg);
        Some(key)
    } else {
        None
    };
    let cluster = r.on_cluster();
    let mut setup = Setup::for_run(target, &toml, r.transport, r.nodes, r.on_cluster_services).await?;
    setup.network_check = r.network_check;
    if r.ack_delay.is_some() {
        setup.ack_delay = r.ack_delay;
    }
    let Owner {
        mut chat,
        general: ch,
        invite,
        client: _owner,
        guild_id,
    } = setup.owner().await?;
    if let Some(key) = api_key {
        let addr = setup.server.api.context("the server did not say its API address")?;
        crate::api::add_bots(addr, &key, guild_id, r.senders).await?;
        return on_swarm(setup, chat, ch, &invite, r, Some((addr, key))).await;
    }
    if r.client_loops > 0 && r.transport == Transport::Quic {
        return on_swarm(setup, chat, ch, &invite, r, None).await;
    }
    anyhow::ensure!(
        r.viewing.is_none(),
        "passive runs (--viewing) need raw QUIC receivers on client loops"
    );
    let sessions = setup.members(r.sessions, 1000, &invite).await?;
    // Warm-up barrier: one message everyone must receive before the clock starts, so the
    // measurement is not skewed by the set-up's own traffic still in flight.
    if chat.request(warm_up(ch, setup.nonce_base)).await?.is_err() {
        bail!("warm-up message refused");
    }
    let warmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let per_sender = (r.rate * r.seconds).round() as u64;
    let expected_total = per_sender * r.senders as u64;
    // Receivers: count first copies and duplicates by channel seq; latency from the send
    // time written in the content.
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (k, (c, lane)) in sessions.into_iter().enumerate() {
        let (mut tx, mut rx) = lane.split();
        let warmed2 = warmed.clone();
        receivers.push(tokio::spawn(async move {
            // Skip everything up to the warm-up message (channel seq 1), for at most a minute.
            let warm_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let Ok(next) = tokio::time::timeout_at(warm_deadline, rx.next()).await else {
                    return (0, 0, Vec::new(), (0, 0));
                };
                match next {
                    Ok(ServerLane::Event {
                        body: EventBody::MessageCreated { seq: 1, .. },
                        ..
                    }) => break,
                    Ok(_) => {}
                    Err(_) => return (0, 0, Vec::new(), (0, 0)),
                }
            }
            warmed2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut seen = vec![false; expected_total as usize + 64];
            let (mut first, mut dups) = (0u64, 0u64);
            let mut lat = Vec::with_capacity(expected_total as usize);
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(r.seconds + 15.0);
            while first < expected_total {
                match tokio::time::timeout_at(deadline, rx.next()).await {
                    Ok(Ok(ServerLane::Event {
                        body: EventBody::MessageCreated { seq, message },
                        ..
                    })) => {
                        let now = t0.elapsed().as_micros() as u64;
                        let sent: u64 = message
                            .content
                            .split_once(' ')
                            .and_then(|(t, _)| t.parse().ok())
                            .unwrap_or(now);
                        let i = seq.saturating_sub(2) as usize;
                        if i < seen.len() && !seen[i] {
                            seen[i] = true;
                            first += 1;
                            lat.push(now.saturating_sub(sent));
                        } else {
                            dups += 1;
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            let st = c.session().stats();
            (first, dups, lat, (st.udp_rx.datagrams, st.frame_tx.acks))
        }));
        if k < r.senders {
            let every = Duration::from_secs_f64(1.0 / r.rate);
            let (warmed3, n_sessions, senders_total) = (warmed.clone(), r.sessions, r.senders);
            let nonce_base = setup.nonce_base;
            senders.push(tokio::spawn(async move {
                while warmed3.load(std::sync::atomic::Ordering::SeqCst) < n_sessions {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Senders are spread evenly over the period: "10 msg/s in total" is a steady
                // stream, not all senders firing in the same instant.
                let phase = every.mul_f64(k as f64 / senders_total as f64);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for n in 0..per_sender {
                    tick.tick().await;
                    let content = format!("{} sender {k} message {n}", t0.elapsed().as_micros());
                    let body = RequestBody::SendMessage {
                        channel_id: ch,
                        nonce: nonce_base + n + 1,
                        content,
                        reply_to: None,
                    };
                    if tx.send(body).await.is_err() {
                        return n;
                    }
                }
                per_sender
            }));
        }
    }
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while warmed.load(std::sync::atomic::Ordering::SeqCst) < r.sessions {
        if Instant::now() > warm_deadline {
            // The senders are still waiting for the barrier: stop them with the run.
            senders.iter().for_each(|s| s.abort());
            bail!("the warm-up message did not reach every session within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let meter = Meter::start(&setup, cluster);
    let start = Instant::now();
    let mut sent = 0;
    for s in senders {
        sent += s.await?;
    }
    let sending = start.elapsed().as_secs_f64();
    let (mut delivered, mut duplicates, mut lat) = (0u64, 0u64, Vec::new());
    let (mut datagrams, mut acks) = (0u64, 0u64);
    for rx in receivers {
        let (f, d, l, (dg, a)) = rx.await?;
        delivered += f;
        duplicates += d;
        lat.extend(l);
        datagrams += dg;
        acks += a;
    }
    let m = meter.stop(&setup);
    eprintln!(
        "clients received {datagrams} UDP datagrams and sent {acks} ACK frames for {delivered} deliveries; load generator CPU {:.2} µs per delivery",
        m.own * 1e6 / delivered.max(1) as f64
    );
    setup.stop().await;
    Ok(ChatResult {
        sent,
        expected: sent * r.sessions as u64,
        delivered,
        duplicates,
        per_sec: delivered as f64 / sending.max(1e-9),
        cpu_seconds: m.node_cpu.iter().sum(),
        node_cpu_seconds: m.node_cpu,
        redis_cpu_seconds: m.redis_cpu,
        latency: percentiles(lat),
        udp_drops: m.udp_drops,
        api_call: None,
        activity: 0,
        server_rss: 0,
    })
}

/// CPU and UDP drop counters at the start of a measurement.
struct Meter {
    nodes0: Vec<f64>,
    redis_pid: u32,
    redis0: f64,
    own0: f64,
    drops0: u64,
}

/// What the measured period cost.
struct Metered {
    /// Server CPU seconds, by node.
    node_cpu: Vec<f64>,
    /// Redis CPU seconds (a local Redis of a cluster run; else 0).
    redis_cpu: f64,
    /// The load generator's own CPU seconds.
    own: f64,
    /// Datagrams the machine dropped for full receive buffers.
    udp_drops: u64,
}

impl Meter {
    /// Starts measuring `setup`'s nodes (and the local Redis of a `cluster` run).
    fn start(setup: &Setup, cluster: bool) -> Self {
        let redis_pid = if cluster { redis_pid() } else { 0 };
        let m = Meter {
            nodes0: setup.nodes().map(|s| s.cpu_seconds()).collect(),
            redis_pid,
            redis0: crate::server::cpu_seconds(redis_pid),
            own0: crate::server::cpu_seconds(std::process::id()),
            drops0: crate::server::udp_receive_drops(),
        };
        eprintln!("measuring (server pid {})", setup.server.pid);
        m
    }

    fn stop(&self, setup: &Setup) -> Metered {
        Metered {
            node_cpu: setup
                .nodes()
                .zip(&self.nodes0)
                .map(|(s, c0)| s.cpu_seconds() - c0)
                .collect(),
            redis_cpu: crate::server::cpu_seconds(self.redis_pid) - self.redis0,
            own: crate::server::cpu_seconds(std::process::id()) - self.own0,
            udp_drops: crate::server::udp_receive_drops().saturating_sub(self.drops0),
        }
    }
}

/// The warm-up message (channel seq 1): every session must have it before the clock starts,
/// so the measurement is not skewed by the set-up's own traffic still in flight.
fn warm_up(channel_id: u64, nonce: u64) -> RequestBody {
    RequestBody::SendMessage {
        channel_id,
        nonce,
        content: "0 warm-up".into(),
        reply_to: None,
    }
}

/// The pid of the Redis at `REDIS_URL` if it runs on this machine (`INFO server`), else 0.
fn redis_pid() -> u32 {
    let Ok(url) = std::env::var("REDIS_URL") else { return 0 };
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &url, "info", "server"])
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The run with the sessions on the load generator's own engine loops (`crate::swarm`):
/// joined, warmed up and counted there; the owner's `chat` lane sends the warm-up.
async fn on_swarm(
    setup: Setup,
    mut chat: quaver_client::LaneStream,
    ch: u64,
    invite: &str,
    r: ChatRun,
    api: Option<(std::net::SocketAddr, String)>,
) -> anyhow::Result<ChatResult> {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::swarm::{Sending, Swarm};
    let viewers = r.viewers();
    let viewing = r.viewing.map(|_| crate::swarm::Viewing { channel: ch, viewers });
    let swarm = Swarm::open(&setup, 1000, r.sessions, r.client_loops, invite, None, viewing).await?;
    let p = swarm.progress.clone();
    if chat.request(warm_up(ch, setup.nonce_base)).await?.is_err() {
        swarm.stop();
        bail!("warm-up message refused");
    }
    let limit = Instant::now() + Duration::from_secs(60);
    while p.warmed.load(Relaxed) < r.sessions {
        if Instant::now() > limit {
            swarm.stop();
            bail!("the warm-up message did not reach every session within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cluster = r.on_cluster();
    let meter = Meter::start(&setup, cluster);
    let per_sender = (r.rate * r.seconds).round() as u64;
    let expected_sends = per_sender * r.senders.min(r.sessions) as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let every = Duration::from_secs_f64(1.0 / r.rate);
    let posting = match &api {
        // Through the API: the counters the swarm's senders would keep, from the answers.
        Some((addr, key)) => Some(crate::api::post(
            *addr,
            key,
            ch,
            r.senders,
            every,
            per_sender,
            setup.nonce_base,
            start,
            swarm.epoch,
        )),
        None => {
            swarm.send(Sending {
                channel: ch,
                senders: r.senders,
                every,
                per_sender,
                nonce_base: setup.nonce_base,
                start,
            });
            None
        }
    };
    let counts = |p: &crate::swarm::Progress| match &posting {
        Some((posted, _)) => {
            let (acked, refused) = (posted.acked.load(Relaxed), posted.refused.load(Relaxed));
            (acked + refused, acked, refused)
        }
        None => (p.sent.load(Relaxed), p.acked.load(Relaxed), p.refused.load(Relaxed)),
    };
    // Sending ends when the last message has left; deliveries may take until 15 s after
    // the period (like the task-based receivers' deadline).
    let limit = start + Duration::from_secs_f64(r.seconds + 15.0);
    let mut sending = None;
    loop {
        let (sent, acked, refused) = counts(&p);
        if sending.is_none() && sent >= expected_sends {
            sending = Some(start.elapsed().as_secs_f64());
        }
        let answered = acked + refused;
        let all_in = p.delivered.load(Relaxed) >= acked * viewers as u64;
        if (sending.is_some() && answered >= sent && all_in) || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = swarm.report().await?;
    let m = meter.stop(&setup);
    let server_rss = if r.nodes == 1 { setup.server.rss_bytes() } else { 0 };
    if r.viewing.is_some() {
        eprintln!(
            "{viewers} of {} sessions view the channel; the others received {} ChannelActivity events",
            r.sessions, report.activity
        );
    }
    eprintln!(
        "clients received {} UDP datagrams and sent {} ACK frames for {} deliveries; load generator CPU {:.2} µs per delivery ({} client loops); {} sessions lost, {} sends refused",
        report.datagrams,
        report.acks,
        report.first,
        m.own * 1e6 / report.first.max(1) as f64,
        r.client_loops,
        p.lost.load(Relaxed),
        counts(&p).2,
    );
    let sent = counts(&p).1;
    let api_call = match posting {
        Some((posted, tasks)) => {
            for t in tasks {
                t.await??;
            }
            Some(percentiles(std::mem::take(
                &mut *posted.call_us.lock().unwrap_or_else(|p| p.into_inner()),
            )))
        }
        None => None,
    };
    swarm.stop();
    setup.stop().await;
    Ok(ChatResult {
        sent,
        expected: sent * viewers as u64,
        delivered: report.first,
        duplicates: report.duplicates,
        per_sec: report.first as f64 / sending.unwrap_or(r.seconds).max(1e-9),
        cpu_seconds: m.node_cpu.iter().sum(),
        node_cpu_seconds: m.node_cpu,
        redis_cpu_seconds: m.redis_cpu,
        latency: percentiles(report.latency),
        udp_drops: m.udp_drops,
        api_call,
        activity: report.activity,
        server_rss,
    })
}
