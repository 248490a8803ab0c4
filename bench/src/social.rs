//! P1 and T1: a presence change, and typing start/stop, as seen by every member of a guild.
//! Latency is measured in one process clock from just before the request is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use quaver_client::{Client, LaneReceiver, Transport};
use quaver_proto::*;

use crate::setup::{Owner, Setup, req};
use crate::{Percentiles, percentiles};

/// What a run measured.
pub(crate) struct SocialResult {
    /// Events expected.
    pub(crate) expected: u64,
    /// Events seen.
    pub(crate) seen: u64,
    /// Latency percentiles (µs).
    pub(crate) latency: Percentiles,
    /// T1: time from start to the server's own stop, as seen by observers (µs).
    pub(crate) expiry: Option<Percentiles>,
    /// Events the server held to share a packet (`quaver_events_held_total`).
    pub(crate) held: u64,
}

/// The `i`-th presence change of a subject: its status alternates (each change is one others
/// see), and `tag` in its custom status names it for the observers.
fn change(i: usize, tag: String) -> RequestBody {
    let status = if i.is_multiple_of(2) {
        PresenceStatus::Dnd
    } else {
        PresenceStatus::Online
    };
    RequestBody::SetPresence {
        status,
        custom_status: Some(tag),
        activity: None,
    }
}

/// The node's count of presence and typing events held to share a packet (0 if unread).
async fn held(setup: &Setup) -> u64 {
    let text = setup.server.metrics().await.unwrap_or_else(|e| {
        eprintln!("could not read the server's /metrics: {e}");
        String::new()
    });
    text.lines()
        .find_map(|l| l.strip_prefix("quaver_events_held_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn observers(setup: &Setup, owner: &Owner, n: usize, lane: Lane) -> anyhow::Result<Vec<(Client, LaneReceiver)>> {
    let mut out = Vec::with_capacity(n);
    for (c, _chat) in setup.members(n, 1000, &owner.invite).await? {
        let l = c.open_lane(lane).await?;
        let (_, rx) = l.split();
        out.push((c, rx));
    }
    Ok(out)
}

/// P1: `changes` presence changes of one user, seen by `members` guild members.
pub(crate) async fn presence(
    target: &crate::server::Target,
    members: usize,
    changes: usize,
    transport: Transport,
    nodes: usize,
) -> anyhow::Result<SocialResult> {
    // P1 measures propagation: the subject changes faster than a person's rate limit allows.
    let toml = "[limits]\npresence = { burst = 100000.0, per_sec = 100000.0 }\n";
    let setup = Setup::for_run(target, toml, transport, nodes, false).await?;
    let owner = setup.owner().await?;
    let obs = observers(&setup, &owner, members, Lane::Presence).await?;
    let mut subject_lane = owner.client.open_lane(Lane::Presence).await?;
    let t0 = Instant::now();
    let sent_at: Arc<std::sync::Mutex<Vec<u64>>> = Arc::new(std::sync::Mutex::new(vec![0; changes]));
    let mut tasks = Vec::new();
    for (c, mut rx) in obs {
        let sent_at = sent_at.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            let mut lat = Vec::new();
            let end = tokio::time::Instant::now() + Duration::from_secs(20 + changes as u64);
            while lat.len() < changes {
                match tokio::time::timeout_at(end, rx.next()).await {
                    Ok(Ok(ServerLane::Event {
                        body: EventBody::PresenceUpdated { presence },
                        ..
                    })) if presence.user_id == 1 => {
                        let now = t0.elapsed().as_micros() as u64;
                        if let Some(i) = presence
                            .custom_status
                            .as_deref()
                            .and_then(|s| s.strip_prefix('p'))
                            .and_then(|s| s.parse::<usize>().ok())
                        {
                            let sent = sent_at.lock().unwrap_or_else(|p| p.into_inner())[i];
                            lat.push(now.saturating_sub(sent));
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..changes {
        sent_at.lock().unwrap_or_else(|p| p.into_inner())[i] = t0.elapsed().as_micros() as u64;
        req(&mut subject_lane, change(i, format!("p{i}"))).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let held = held(&setup).await;
    setup.stop().await;
    Ok(SocialResult {
        expected: (members * changes) as u64,
        seen: lat.len() as u64,
        latency: percentiles(lat),
        expiry: None,
        held,
    })
}

/// T1: `typers` members start typing once each (no stop); every member sees the start,
/// then the server's own stop; the typer's latency to the start, and start→stop time.
pub(crate) async fn typing(
    target: &crate::server::Target,
    members: usize,
    typers: usize,
    transport: Transport,
) -> anyhow::Result<SocialResult> {
    let setup = Setup::start(target, "", transport).await?;
    let owner = setup.owner().await?;
    let ch = owner.general;
    let mut all = Vec::with_capacity(members);
    for (c, chat) in setup.members(members, 1000, &owner.invite).await? {
        let typing = c.open_lane(Lane::Typing).await?;
        all.push((c, chat, typing));
    }
    if typers > members {
        bail!("more typers than members");
    }
    let t0 = Instant::now();
    let sent_at: Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>> = Arc::default();
    let mut typer_lanes = Vec::new();
    let mut tasks = Vec::new();
    for (i, (c, _chat, lane)) in all.into_iter().enumerate() {
        let (tx, mut rx) = lane.split();
        if i < typers {
            typer_lanes.push(tx);
        }
        let sent_at = sent_at.clone();
        let me = 1000 + i as u64;
        let others = if i < typers { typers - 1 } else { typers };
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            let (mut lat, mut expiry) = (Vec::new(), Vec::new());
            let mut started: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            while expiry.len() < others {
                match tokio::time::timeout_at(end, rx.next()).await {
                    Ok(Ok(ServerLane::Event {
                        body: EventBody::TypingStarted { user_id, .. },
                        ..
                    })) if user_id != me => {
                        let now = t0.elapsed().as_micros() as u64;
                        let sent = sent_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&user_id)
                            .copied()
                            .unwrap_or(now);
                        lat.push(now.saturating_sub(sent));
                        started.insert(user_id, now);
                    }
                    Ok(Ok(ServerLane::Event {
                        body: EventBody::TypingStopped { user_id, .. },
                        ..
                    })) => {
                        if let Some(s) = started.get(&user_id) {
                            expiry.push((t0.elapsed().as_micros() as u64).saturating_sub(*s));
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            (lat, expiry)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (k, tx) in typer_lanes.iter_mut().enumerate() {
        sent_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(1000 + k as u64, t0.elapsed().as_micros() as u64);
        tx.send(RequestBody::TypingStart { channel_id: ch }).await?;
        // 10 starts a second (10k deliveries/s to 1,000 members, F0's load): each start's
        // latency is measured, not a queue of starts arriving faster than they fan out.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut lat, mut exp) = (Vec::new(), Vec::new());
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        exp.extend(e);
    }
    let held = held(&setup).await;
    setup.server.stop().await;
    let expected = (typers * (members - 1)) as u64;
    Ok(SocialResult {
        expected,
        seen: lat.len() as u64,
        latency: percentiles(lat),
        expiry: Some(percentiles(exp)),
        held,
    })
}

/// What a presence-churn run measured.
pub(crate) struct ChurnResult {
    /// Updates expected (changes × observers).
    pub(crate) expected: u64,
    /// Updates seen, each once at most (a repeat counts in `duplicates`).
    pub(crate) seen: u64,
    /// Updates seen twice.
    pub(crate) duplicates: u64,
    /// Send → seen (µs).
    pub(crate) latency: Percentiles,
    /// Server CPU from the first change until every observer saw the last (or gave up).
    pub(crate) server_cpu: f64,
    /// UDP datagrams the observers received over the same time (raw QUIC; 0 otherwise).
    pub(crate) datagrams: u64,
    /// Events the server held to share a packet over the whole run.
    pub(crate) held: u64,
}

/// Presence churn: `subjects` members each change their presence `rate` times a second
/// for `seconds`, seen by `members` other members — the busy guild of issue 28 item 5,
/// where many updates reach each member within a short time.
pub(crate) async fn presence_churn(
    target: &crate::server::Target,
    members: usize,
    subjects: usize,
    rate: f64,
    seconds: f64,
    transport: Transport,
) -> anyhow::Result<ChurnResult> {
    anyhow::ensure!(
        subjects > 0 && rate > 0.0 && seconds > 0.0,
        "subjects, rate and seconds must be positive"
    );
    let toml = "[limits]\npresence = { burst = 100000.0, per_sec = 100000.0 }\n";
    let setup = Setup::for_run(target, toml, transport, 1, false).await?;
    let owner = setup.owner().await?;
    let obs = observers(&setup, &owner, members, Lane::Presence).await?;
    let mut subject_lanes = Vec::with_capacity(subjects);
    for (c, _chat) in setup.members(subjects, 100_000, &owner.invite).await? {
        let lane = c.open_lane(Lane::Presence).await?;
        subject_lanes.push((c, lane));
    }
    for s in setup.nodes() {
        s.quiesce(Duration::from_secs(60)).await;
    }
    let per_subject = (rate * seconds).round().max(1.0) as usize;
    let total = subjects * per_subject;
    let sent_at: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..total).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let datagrams = |c: &Client| {
        if c.transport() == Transport::Quic {
            c.session().stats().udp_rx.datagrams
        } else {
            0
        }
    };
    let t0 = Instant::now();
    let cpu0 = setup.server.cpu_seconds();
    let rx0: u64 = obs.iter().map(|(c, _)| datagrams(c)).sum();
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    let mut tasks = Vec::new();
    for (c, mut rx) in obs {
        let sent_at = sent_at.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![false; total];
            let (mut lat, mut count, mut dup) = (Vec::with_capacity(total), 0usize, 0u64);
            while count < total {
                match tokio::time::timeout_at(end, rx.next()).await {
                    Ok(Ok(ServerLane::Event {
                        body: EventBody::PresenceUpdated { presence },
                        ..
                    })) => {
                        let Some(k) = presence
                            .custom_status
                            .as_deref()
                            .and_then(|s| s.strip_prefix('c'))
                            .and_then(|s| s.parse::<usize>().ok())
                            .filter(|k| *k < total)
                        else {
                            continue;
                        };
                        if std::mem::replace(&mut seen[k], true) {
                            dup += 1;
                            continue;
                        }
                        count += 1;
                        let sent = sent_at[k].load(std::sync::atomic::Ordering::Acquire);
                        lat.push((t0.elapsed().as_micros() as u64).saturating_sub(sent));
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            (c, lat, dup)
        }));
    }
    let mut senders = Vec::new();
    for (j, (c, mut lane)) in subject_lanes.into_iter().enumerate() {
        let sent_at = sent_at.clone();
        senders.push(tokio::spawn(async move {
            let _keep = c;
            let start = tokio::time::Instant::now();
            for i in 0..per_subject {
                // Spread over the second: subject j's i-th change at (i + j/S)/rate.
                let at = start + Duration::from_secs_f64((i as f64 + j as f64 / subjects as f64) / rate);
                tokio::time::sleep_until(at).await;
                let k = j * per_subject + i;
                sent_at[k].store(t0.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Release);
                req(&mut lane, change(i, format!("c{k}"))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let (mut lat, mut dups, mut rx1, mut clients) = (Vec::new(), 0, 0u64, Vec::new());
    for t in tasks {
        let (c, l, d) = t.await?;
        rx1 += datagrams(&c);
        lat.extend(l);
        dups += d;
        clients.push(c);
    }
    let server_cpu = setup.server.cpu_seconds() - cpu0;
    let held = held(&setup).await;
    drop(clients);
    setup.stop().await;
    Ok(ChurnResult {
        expected: (members * total) as u64,
        seen: lat.len() as u64,
        duplicates: dups,
        latency: percentiles(lat),
        server_cpu,
        datagrams: rx1 - rx0,
        held,
    })
}
