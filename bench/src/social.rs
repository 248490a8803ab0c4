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
        let status = if i % 2 == 0 {
            PresenceStatus::Dnd
        } else {
            PresenceStatus::Online
        };
        req(
            &mut subject_lane,
            RequestBody::SetPresence {
                status,
                custom_status: Some(format!("p{i}")),
                activity: None,
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    setup.stop().await;
    Ok(SocialResult {
        expected: (members * changes) as u64,
        seen: lat.len() as u64,
        latency: percentiles(lat),
        expiry: None,
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
    setup.server.stop().await;
    let expected = (typers * (members - 1)) as u64;
    Ok(SocialResult {
        expected,
        seen: lat.len() as u64,
        latency: percentiles(lat),
        expiry: Some(percentiles(exp)),
    })
}
