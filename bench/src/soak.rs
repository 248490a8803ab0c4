//! Soak: a long run of everything at once — chat on resilient sessions whose connections are
//! killed now and then (churn), presence and typing on sessions of their own, and a voice
//! channel with speakers and listeners — meant to run across `quaver-bench netem` with
//! loss. It samples the server's memory as it goes and ends with the accounts: every chat
//! message each member should have seen exactly once and in order, the typing and presence
//! requests answered, the voice frames heard (directly and from copies).
//!
//! What it is for (issue 29, item 5): memory flat after warm-up, nothing lost, and — read
//! from the server's log, `NETEM_SERVER_LOG` — no error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::bail;
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_client::{Client, Transport};
use quaver_proto::datagram::{AudioLevel, Uplink};
use quaver_proto::*;

use crate::setup::{Owner, Setup, req};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoakRun {
    /// How long.
    pub(crate) duration: Duration,
    /// Resilient chat members (the first `senders` of them send).
    pub(crate) members: usize,
    /// Of the members, how many send.
    pub(crate) senders: usize,
    /// Messages per second per sender.
    pub(crate) rate: f64,
    /// One member's connection is killed this often (it resumes).
    pub(crate) churn_every: Duration,
    /// Sessions that type and change presence.
    pub(crate) social: usize,
    /// Voice participants, of whom `speakers` speak (50 frames/s).
    pub(crate) voice: usize,
    /// Speakers among them.
    pub(crate) speakers: usize,
    /// Server memory is sampled this often.
    pub(crate) sample_every: Duration,
}

/// What it measured.
#[derive(Debug)]
pub(crate) struct SoakResult {
    /// (seconds since the start, server RSS bytes), every `sample_every`.
    pub(crate) rss: Vec<(f64, u64)>,
    /// Messages acknowledged to their senders.
    pub(crate) sent: u64,
    /// Sends that failed (an error, not a retry).
    pub(crate) send_errors: u64,
    /// Over all members: messages missing, seen twice, seen out of order.
    pub(crate) lost: u64,
    /// Seen twice.
    pub(crate) duplicated: u64,
    /// Out of order.
    pub(crate) reordered: u64,
    /// Connections killed, and reconnects that resumed exactly / started afresh.
    pub(crate) kills: u64,
    pub(crate) resumed: u64,
    pub(crate) fresh: u64,
    /// Typing and presence requests answered `Ack`, and answered with an error.
    pub(crate) social_acks: u64,
    pub(crate) social_errors: u64,
    /// Typing and presence events the social sessions received.
    pub(crate) social_events: u64,
    /// Voice: frames sent, frames heard by the listeners (own datagrams plus repaired),
    /// repaired from copies, and copies expected (sent × listeners per frame).
    pub(crate) frames_sent: u64,
    pub(crate) frames_heard: u64,
    pub(crate) frames_repaired: u64,
    pub(crate) frames_expected: u64,
}

/// A resilient member, connected.
async fn member(cfg: quaver_client::Config) -> anyhow::Result<Resilient> {
    let mut r = Resilient::start(cfg, Backoff::default());
    match tokio::time::timeout(Duration::from_secs(30), r.next()).await {
        Ok(Some(Update::Connected { .. })) => Ok(r),
        _ => bail!("a member did not connect"),
    }
}

/// Runs the soak.
pub(crate) async fn run(target: &crate::server::Target, s: SoakRun) -> anyhow::Result<SoakResult> {
    let toml = "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\npresence = { burst = 100000.0, per_sec = 100000.0 }\n";
    let setup = Setup::start(target, toml, Transport::Quic).await?;
    let Owner {
        mut chat,
        guild_id,
        general,
        invite,
        client: _owner,
    } = setup.owner().await?;
    let body = RequestBody::CreateChannel {
        guild_id,
        kind: ChannelKind::Voice,
        name: "soak".into(),
        topic: String::new(),
        user_limit: 0,
    };
    let ResponseBody::Channel(vc) = req(&mut chat, body).await? else {
        bail!("voice channel")
    };
    // Everyone joins the guild first (directly), then the members come back resilient.
    drop(setup.members(s.members, 1000, &invite).await?);
    let social = setup.members(s.social, 5000, &invite).await?;
    let voice = setup.members(s.voice, 8000, &invite).await?;
    let mut members = Vec::with_capacity(s.members);
    for i in 0..s.members {
        members.push(member(setup.config(1000 + i as u64)).await?);
    }
    eprintln!(
        "soaking for {} s (server pid {})",
        s.duration.as_secs(),
        setup.server.pid
    );
    let t0 = Instant::now();
    let end = t0 + s.duration;

    // Chat: senders on their own members' handles; every member collects what it sees.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let send_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (k, m) in members.iter().take(s.senders).enumerate() {
        let (h, acked, errors) = (m.handle(), acked.clone(), send_errors.clone());
        let every = Duration::from_secs_f64(1.0 / s.rate);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(every.mul_f64(k as f64 / 10.0)).await;
            let mut tick = tokio::time::interval(every);
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                // Resilient keeps the nonce across reconnects: a retry is never a second message.
                match h.send_message(general, &format!("soak {k} {n}")).await {
                    Ok(ResponseBody::MessageSent { seq, .. }) => {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(seq)
                    }
                    _ => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    let kills = Arc::new(AtomicU64::new(0));
    let mut collectors = Vec::new();
    {
        let (switches, kill_count) = (members.iter().map(|m| m.handle()).collect::<Vec<_>>(), kills.clone());
        let every = s.churn_every;
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            while Instant::now() < end {
                tick.tick().await;
                // A different member each time, spread over all of them.
                n = (n + 7919) % switches.len().max(1);
                if let Some(h) = switches.get(n) {
                    h.kill_connection();
                    kill_count.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for mut m in members {
        collectors.push(tokio::spawn(async move {
            let (mut seqs, mut resumed, mut fresh) = (Vec::new(), 0u64, 0u64);
            let stop = end + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(at(stop), m.next()).await {
                    Ok(Some(Update::Event(EventBody::MessageCreated { seq, message })))
                        if message.channel_id == general =>
                    {
                        seqs.push(seq)
                    }
                    Ok(Some(Update::Connected { resumed: exact, .. })) => {
                        if exact {
                            resumed += 1
                        } else {
                            fresh += 1
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (seqs, resumed, fresh)
        }));
    }

    // Presence and typing: each social session types every few seconds and changes its
    // status now and then; it reads both lanes to the end.
    let social_acks = Arc::new(AtomicU64::new(0));
    let social_errors = Arc::new(AtomicU64::new(0));
    let social_events = Arc::new(AtomicU64::new(0));
    let mut social_clients = Vec::new();
    for (k, (c, _chat)) in social.into_iter().enumerate() {
        for lane in [Lane::Typing, Lane::Presence] {
            let (mut tx, mut rx) = c.open_lane(lane).await?.split();
            let (acks, errors, events) = (social_acks.clone(), social_errors.clone(), social_events.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    match tokio::time::timeout_at(at(end + Duration::from_secs(5)), rx.next()).await {
                        Ok(Ok(ServerLane::Ack { .. })) => acks.fetch_add(1, Relaxed),
                        Ok(Ok(ServerLane::Error { .. })) => errors.fetch_add(1, Relaxed),
                        Ok(Ok(_)) => events.fetch_add(1, Relaxed),
                        _ => break,
                    };
                }
            }));
            tasks.push(tokio::spawn(async move {
                let every = match lane {
                    Lane::Typing => Duration::from_secs(4),
                    _ => Duration::from_secs(30),
                };
                tokio::time::sleep(every.mul_f64((k % 40) as f64 / 40.0)).await;
                let mut tick = tokio::time::interval(every);
                let mut n = 0u64;
                while Instant::now() < end {
                    tick.tick().await;
                    n += 1;
                    let body = match lane {
                        Lane::Typing => RequestBody::TypingStart { channel_id: general },
                        _ => RequestBody::SetPresence {
                            status: if n.is_multiple_of(2) {
                                PresenceStatus::Online
                            } else {
                                PresenceStatus::Idle
                            },
                            custom_status: Some(format!("soak {n}")),
                            activity: None,
                        },
                    };
                    if tx.send(body).await.is_err() {
                        break;
                    }
                }
            }));
        }
        social_clients.push(c);
    }

    // Voice: everyone joins; the first `speakers` speak at 50 frames/s; the others count
    // what they hear.
    let mut voice_clients: Vec<Arc<Client>> = Vec::new();
    let mut lanes = Vec::new();
    for (c, _) in voice {
        let mut lane = c.open_lane(Lane::Voice).await?;
        let cfg = setup.config(0);
        let joined = quaver_client::voice::join_voice(&mut lane, &cfg, vc.id, false, false).await?;
        if joined.is_err() {
            bail!("a voice participant could not join");
        }
        voice_clients.push(Arc::new(c));
        lanes.push(lane);
    }
    let frames_sent = Arc::new(AtomicU64::new(0));
    let frames_heard = Arc::new(AtomicU64::new(0));
    for (k, c) in voice_clients.iter().enumerate() {
        let (c, sent, heard) = (c.clone(), frames_sent.clone(), frames_heard.clone());
        if k < s.speakers {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut n = 0u32;
                while Instant::now() < end {
                    tick.tick().await;
                    let h = Uplink {
                        flags: 0,
                        level: AudioLevel::new(20 + k as u8, true),
                        seq: n as u16,
                        timestamp: n.wrapping_mul(960),
                    };
                    if c.send_voice(&h, &[0x55; 80]).is_ok() {
                        sent.fetch_add(1, Relaxed);
                    }
                    n = n.wrapping_add(1);
                }
            }));
        } else {
            tasks.push(tokio::spawn(async move {
                while let Ok(Ok(_)) = tokio::time::timeout_at(at(end + Duration::from_secs(2)), c.recv_voice()).await {
                    heard.fetch_add(1, Relaxed);
                }
            }));
        }
    }

    // Memory, sampled until the end.
    let mut rss = Vec::new();
    while Instant::now() < end {
        rss.push((t0.elapsed().as_secs_f64(), setup.server.rss_bytes()));
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(s.sample_every.min(left).max(Duration::from_millis(10))).await;
    }
    rss.push((t0.elapsed().as_secs_f64(), setup.server.rss_bytes()));
    for t in tasks {
        let _ = t.await;
    }
    let sent: Vec<u64> = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    let max_seq = sent.iter().copied().max().unwrap_or(0) as usize;
    let (mut lost, mut duplicated, mut reordered, mut resumed, mut fresh) = (0, 0, 0, 0, 0);
    for c in collectors {
        let (seqs, r, f) = c.await?;
        resumed += r;
        fresh += f;
        reordered += seqs.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        let mut seen = vec![0u32; max_seq + 1];
        for q in &seqs {
            if let Some(x) = seen.get_mut(*q as usize) {
                *x += 1;
            }
        }
        lost += sent.iter().filter(|q| seen[**q as usize] == 0).count() as u64;
        duplicated += seen.iter().map(|n| u64::from(n.saturating_sub(1))).sum::<u64>();
    }
    let frames_repaired = voice_clients.iter().skip(s.speakers).map(|c| c.voice_repair().0).sum();
    let frames_sent = frames_sent.load(Relaxed);
    drop(lanes);
    drop(social_clients);
    setup.server.stop().await;
    Ok(SoakResult {
        rss,
        sent: sent.len() as u64,
        send_errors: send_errors.load(Relaxed),
        lost,
        duplicated,
        reordered,
        kills: kills.load(Relaxed),
        resumed,
        fresh,
        social_acks: social_acks.load(Relaxed),
        social_errors: social_errors.load(Relaxed),
        social_events: social_events.load(Relaxed),
        frames_sent,
        frames_heard: frames_heard.load(Relaxed),
        frames_repaired,
        // Each frame reaches every participant but its speaker; only the listeners count.
        frames_expected: frames_sent * s.voice.saturating_sub(s.speakers) as u64,
    })
}

fn at(t: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(t)
}
