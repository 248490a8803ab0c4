//! R3: a reconnect storm. `clients` resilient sessions (the native client's reconnect layer,
//! its default settings), members of guilds of `guild_size`; a sender posts into every
//! guild's channel twice a second; the
//! node is restarted (SIGKILL, a crash, or SIGTERM, a deploy that drains) and every client
//! reconnects to the new process at once. Measured: how long after the new process answers
//! until every client is connected again, the server CPU that took, the failed attempts —
//! and that every client ends with every message exactly once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quaver_client::Transport;
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_proto::*;

use crate::server::Stop;
use crate::setup::{Owner, Setup};

/// What a run measured.
pub(crate) struct StormResult {
    /// Messages acknowledged to the sender, per channel.
    pub(crate) sent: u64,
    /// Seconds from the stop to the new process answering.
    pub(crate) down_seconds: f64,
    /// When each client was connected again, seconds after the new process answered
    /// (sorted; a client connected again before that — impossible — would be negative).
    pub(crate) reconnected_at: Vec<f64>,
    /// Clients that were not connected again by the end.
    pub(crate) never: usize,
    /// Reconnects that resumed exactly, and new sessions (caught up from the log).
    pub(crate) resumed: u64,
    /// New sessions.
    pub(crate) fresh: u64,
    /// Failed connection attempts after the stop, over all clients.
    pub(crate) failed_attempts: u64,
    /// Server CPU seconds from the new process's start until every client was back.
    pub(crate) storm_cpu: f64,
    /// The load generator's own CPU seconds over the same window (it shares the machine:
    /// a storm's client handshakes cost about what the server's do).
    pub(crate) bench_cpu: f64,
    /// QUIC handshakes the new process took on over the window (more than the clients: an
    /// attempt given up and made again, or the client's parallel probes) — over the
    /// WebSocket framing, its upgrades, refused ones included — and of those refused with
    /// an address-validation retry.
    pub(crate) handshakes: u64,
    pub(crate) validation_retries: u64,
    /// Connections refused at the door (`max_handshakes`).
    pub(crate) shed: u64,
    /// Missing, repeated and out-of-order messages over all clients.
    pub(crate) lost: u64,
    /// Repeated messages.
    pub(crate) duplicated: u64,
    /// Out-of-order messages.
    pub(crate) reordered: u64,
}

/// Per-client progress the run watches while the clients run.
#[derive(Default)]
struct Progress {
    /// Nanoseconds since the run's start of the last `Connected`; 0 before the first.
    connected_ns: AtomicU64,
    /// Failed attempts (`Unreachable`).
    failed: AtomicU64,
    /// The encoded size of the last `Ready` (what a set-up sends before the client is back).
    ready_bytes: AtomicU64,
}

/// Runs the storm (the target must be a server this run starts: it is restarted).
pub(crate) async fn run(
    target: &crate::server::Target,
    clients: usize,
    guild_size: usize,
    how: Stop,
    before: u64,
    after: u64,
    transport: Transport,
) -> anyhow::Result<StormResult> {
    // The owner makes (and fetches) a guild per `guild_size` members and posts into each.
    let toml = "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\nmanage = { burst = 100000.0, per_sec = 100000.0 }\nfetch = { burst = 100000.0, per_sec = 100000.0 }\n";
    let mut setup = Setup::start(target, toml, transport).await?;
    let Owner {
        general,
        invite,
        client: owner,
        mut chat,
        ..
    } = setup.owner().await?;
    let guild_size = guild_size.max(1);
    let guilds = clients.div_ceil(guild_size);
    eprintln!("{clients} members joining {guilds} guilds of {guild_size}");
    let mut channels = vec![general];
    let mut invites = vec![invite];
    while channels.len() < guilds {
        let (_, ch, inv) = crate::setup::guild(&owner, &mut chat, &format!("storm {}", channels.len())).await?;
        channels.push(ch);
        invites.push(inv);
    }
    drop((owner, chat));
    for (g, inv) in invites.iter().enumerate() {
        let first = g * guild_size;
        let n = guild_size.min(clients - first);
        drop(setup.members(n, 2000 + first as u64, inv).await?);
    }
    let t0 = Instant::now();
    let ns = move || t0.elapsed().as_nanos() as u64;
    // The clients connect 64 at a time: the set-up is not the storm.
    eprintln!("connecting {clients} resilient clients");
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    // 100 clients per socket: a quinn endpoint each would need ~2 MB of receive buffers
    // (10,000 took the load generator past 20 GB) and 10,000 descriptors. The server sees
    // 10,000 connections either way.
    let mut endpoints = Vec::new();
    for _ in 0..clients.div_ceil(100) {
        endpoints.push(quinn::Endpoint::client("127.0.0.1:0".parse()?)?);
    }
    let mut collectors = Vec::with_capacity(clients);
    let mut progress = Vec::with_capacity(clients);
    // Why attempts failed (digits blanked, so one kind is one line), printed at the end.
    let why: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let total = before + after;
    for i in 0..clients {
        let mut cfg = setup.config(2000 + i as u64);
        let ch = channels[i / guild_size];
        // The route check (every 200 ms by default) would cost the load generator 50k
        // look-ups a second at this size; a node restart does not move anyone's route.
        cfg.network_check_every = None;
        if transport != Transport::WebSocket {
            cfg.quic_endpoint = Some(endpoints[i / 100].clone());
        }
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        let permit = gate.clone().acquire_owned().await?;
        let why = why.clone();
        collectors.push(tokio::spawn(async move {
            let mut permit = Some(permit);
            let mut r = Resilient::start(cfg, Backoff::default());
            let (mut seqs, mut resumed, mut fresh) = (Vec::new(), 0u64, 0u64);
            let end = tokio::time::Instant::now() + Duration::from_secs(300);
            while (seqs.len() as u64) < total {
                match tokio::time::timeout_at(end, r.next()).await {
                    Ok(Some(Update::Event(EventBody::MessageCreated { seq, message }))) if message.channel_id == ch => {
                        seqs.push(seq)
                    }
                    Ok(Some(Update::Connected { resumed: exact, ready })) => {
                        let bytes = quaver_proto::codec::encode_payload(&*ready).len();
                        p.ready_bytes.store(bytes as u64, Ordering::Relaxed);
                        if permit.take().is_none() {
                            if exact { resumed += 1 } else { fresh += 1 }
                        }
                        p.connected_ns.store(ns().max(1), Ordering::Release);
                    }
                    Ok(Some(Update::Unreachable { error, .. })) => {
                        p.failed.fetch_add(1, Ordering::Relaxed);
                        let kind: String = error
                            .chars()
                            .map(|c| if c.is_ascii_digit() { '#' } else { c })
                            .collect();
                        *why.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (seqs, resumed, fresh)
        }));
    }
    // Every client connected once (the last permits come back as they do).
    let _all = tokio::time::timeout(Duration::from_secs(300), gate.acquire_many(64))
        .await
        .map_err(|_| anyhow::anyhow!("not every client connected within 300 s"))??;
    for s in setup.nodes() {
        s.quiesce(Duration::from_secs(60)).await;
    }
    let sending = Resilient::start(setup.config(1), Backoff::default());
    let nonce_base = setup.nonce_base;
    // Message `n` into every guild's channel (all acknowledged, or the round is not).
    let send = |n: u64| {
        let rounds: Vec<_> = channels
            .iter()
            .enumerate()
            .map(|(g, ch)| {
                let requester = sending.handle();
                let (ch, nonce) = (*ch, nonce_base + n * guilds as u64 + g as u64 + 1);
                tokio::spawn(async move {
                    requester
                        .request(RequestBody::SendMessage {
                            channel_id: ch,
                            nonce,
                            content: format!("m{n}"),
                            reply_to: None,
                        })
                        .await
                        .is_ok()
                })
            })
            .collect();
        tokio::spawn(async move {
            let mut all = true;
            for r in rounds {
                all &= r.await.unwrap_or(false);
            }
            all
        })
    };
    let every = Duration::from_millis(500);
    let mut acks = Vec::new();
    for n in 0..before {
        acks.push(send(n));
        tokio::time::sleep(every).await;
    }
    // Wait for the messages before the restart to be acknowledged (so the restart does
    // not race them), then restart.
    let mut sent = 0;
    for a in acks.drain(..) {
        sent += u64::from(a.await.unwrap_or(false));
    }
    let failed_before: u64 = progress.iter().map(|p| p.failed.load(Ordering::Relaxed)).sum();
    eprintln!("restarting the server ({how:?})");
    let stopped = setup.server.restart(how).await?;
    let up = Instant::now();
    let up_ns = ns();
    let cpu0 = setup.server.cpu_seconds();
    let bench_cpu0 = crate::server::cpu_seconds(std::process::id());
    for n in before..total {
        acks.push(send(n));
        tokio::time::sleep(every).await;
    }
    // Until every client has connected again (at most 120 s).
    let deadline = up + Duration::from_secs(120);
    while Instant::now() < deadline && progress.iter().any(|p| p.connected_ns.load(Ordering::Acquire) <= up_ns) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let storm_cpu = setup.server.cpu_seconds() - cpu0;
    let bench_cpu = crate::server::cpu_seconds(std::process::id()) - bench_cpu0;
    // The new process's counters cover exactly the storm.
    let metrics = setup.server.metrics().await.unwrap_or_else(|e| {
        eprintln!("could not read the server's /metrics: {e}");
        String::new()
    });
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    // QUIC handshakes begun, and WebSocket upgrades served (refused ones too).
    let handshakes = counter("quaver_quic_handshakes_begun_total")
        + counter("quaver_handshakes_total{transport=\"websocket\"}")
        + match transport {
            Transport::WebSocket => counter("quaver_handshakes_shed_total"),
            _ => 0,
        };
    let shed = counter("quaver_handshakes_shed_total");
    let validation_retries = counter("quaver_address_validation_retries_total");
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("quaver_handshake_failures_total") && !l.ends_with(" 0"))
    {
        eprintln!("server: {l}");
    }
    let mut reconnected_at: Vec<f64> = progress
        .iter()
        .map(|p| p.connected_ns.load(Ordering::Acquire))
        .filter(|c| *c > up_ns)
        .map(|c| (c - up_ns) as f64 / 1e9)
        .collect();
    reconnected_at.sort_by(f64::total_cmp);
    let never = clients - reconnected_at.len();
    let failed_attempts = progress.iter().map(|p| p.failed.load(Ordering::Relaxed)).sum::<u64>() - failed_before;
    for a in acks {
        sent += u64::from(a.await.unwrap_or(false));
    }
    let (mut lost, mut duplicated, mut reordered, mut resumed, mut fresh) = (0, 0, 0, 0, 0);
    for c in collectors {
        let (seqs, r, f) = c.await?;
        resumed += r;
        fresh += f;
        let mut seen = vec![0u32; total as usize + 2];
        reordered += seqs.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        for s in &seqs {
            if let Some(x) = seen.get_mut(*s as usize) {
                *x += 1;
            }
        }
        lost += (1..=sent as usize).filter(|i| seen[*i] == 0).count() as u64;
        duplicated += seen.iter().map(|c| c.saturating_sub(1) as u64).sum::<u64>();
    }
    drop(sending);
    setup.stop().await;
    for (kind, n) in why.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        eprintln!("failed attempts: {n} × {kind}");
    }
    let mut ready: Vec<u64> = progress.iter().map(|p| p.ready_bytes.load(Ordering::Relaxed)).collect();
    ready.sort_unstable();
    if let (Some(min), Some(max)) = (ready.first(), ready.last()) {
        eprintln!(
            "Ready sizes: min {min} B, median {} B, max {max} B, {} B in all",
            ready[ready.len() / 2],
            ready.iter().sum::<u64>()
        );
    }
    Ok(StormResult {
        sent,
        down_seconds: (up - stopped).as_secs_f64(),
        reconnected_at,
        never,
        resumed,
        fresh,
        failed_attempts,
        storm_cpu,
        bench_cpu,
        handshakes,
        validation_retries,
        shed,
        lost,
        duplicated,
        reordered,
    })
}
