//! V1/V2: one voice channel, `speakers` × `fps` frames per second, everyone else listening;
//! measures loss, send→receive latency (one process clock), SFU residence (the server's
//! histogram), server CPU per forwarded frame and forwarded frames per server CPU-second.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quaver_client::{Client, Transport};
use quaver_proto::datagram::{AudioLevel, Uplink};
use quaver_proto::*;

use crate::server::histogram_quantile;
use crate::setup::{Owner, Setup, req};
use crate::{Percentiles, percentiles};

/// Parameters of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VoiceRun {
    /// Listening participants.
    pub(crate) listeners: usize,
    /// Speaking participants (each also listens).
    pub(crate) speakers: usize,
    /// Frames per second per speaker.
    pub(crate) fps: u32,
    /// Seconds of speech.
    pub(crate) seconds: u64,
    /// Transport of the participants.
    pub(crate) transport: Transport,
    /// The load generator's client loops (`crate::swarm`); 0 = a `quaver-client` session
    /// (tasks) per participant. WebTransport runs always use the latter.
    pub(crate) client_loops: usize,
    /// Of the listeners, how many join over WebRTC (`crate::webrtc`; needs client loops).
    pub(crate) webrtc_listeners: usize,
    /// WebRTC on the QUIC port (RFC 9443) rather than a port of its own.
    pub(crate) webrtc_shared_port: bool,
    /// The WebRTC listeners offer RED (as browsers do).
    pub(crate) webrtc_red: bool,
    /// Speakers repeat the previous frame in each datagram and listeners ask for it
    /// (`FLAG_REDUNDANT`; client loops only).
    pub(crate) redundancy: bool,
    /// The listeners' playout buffer, for what they could play (client loops only).
    pub(crate) buffer: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct VoiceResult {
    /// Server resident memory at the end of the run, bytes.
    pub(crate) server_rss: u64,
    /// Frames sent by all speakers.
    pub(crate) sent: u64,
    /// Frame copies that should have arrived.
    pub(crate) expected: u64,
    /// Frame copies that arrived.
    pub(crate) received: u64,
    /// Forwarded per second (received ÷ speech duration).
    pub(crate) forwarded_per_sec: f64,
    /// Server CPU seconds during the speech.
    pub(crate) cpu_seconds: f64,
    /// Send→receive latency percentiles (µs).
    pub(crate) latency: Percentiles,
    /// UDP datagrams dropped for full receive buffers during the speech (machine-wide).
    pub(crate) udp_drops: u64,
    /// SFU residence p50 and p99 (bucket upper bounds, µs).
    pub residence_p50_us: f64,
    /// SFU residence p99 (bucket upper bound, µs).
    pub residence_p99_us: f64,
    /// Per listener and speaker (client loops only): what a playout buffer made of it.
    pub(crate) streams: Vec<crate::swarm::Playout>,
}

impl VoiceResult {
    /// Fraction of expected copies lost.
    pub(crate) fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.expected.max(1) as f64
    }
    /// Server CPU µs per forwarded copy.
    pub(crate) fn cpu_us_per_frame(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.received.max(1) as f64
    }
    /// Forwarded copies per server CPU-second ("per core").
    pub(crate) fn frames_per_core_second(&self) -> f64 {
        self.received as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// Runs one voice load against a freshly started server.
pub(crate) async fn run(target: &crate::server::Target, r: VoiceRun) -> anyhow::Result<VoiceResult> {
    let toml = match (r.webrtc_listeners > 0, r.webrtc_shared_port) {
        (false, _) => "",
        (true, false) => "webrtc_listen = \"127.0.0.1:0\"\n",
        (true, true) => "webrtc_shared_port = true\n",
    };
    let setup = Setup::start(target, toml, r.transport).await?;
    let Owner {
        mut chat,
        guild_id,
        invite,
        client: _owner,
        ..
    } = setup.owner().await?;
    let body = RequestBody::CreateChannel {
        guild_id,
        kind: ChannelKind::Voice,
        name: "v".into(),
        topic: String::new(),
        user_limit: 0,
    };
    let ResponseBody::Channel(vc) = req(&mut chat, body).await? else {
        bail!("channel")
    };
    if r.client_loops > 0 && r.transport == Transport::Quic {
        return on_swarm(setup, vc.id, &invite, r).await;
    }
    if r.webrtc_listeners > 0 {
        bail!("WebRTC listeners need the engine's client loops (--client-loops ≥ 1, raw QUIC)");
    }
    if r.redundancy {
        bail!("--redundancy needs the engine's client loops (--client-loops ≥ 1, raw QUIC)");
    }
    // Participants join the guild, then the voice channel.
    let total = r.listeners + r.speakers;
    let mut parts = Vec::with_capacity(total);
    for (c, chat) in setup.members(total, 100, &invite).await? {
        let mut voice = c.open_lane(Lane::Voice).await?;
        let join = RequestBody::JoinVoice {
            channel_id: vc.id,
            self_mute: false,
            self_deaf: false,
        };
        let ResponseBody::VoiceJoined { slot, .. } = req(&mut voice, join).await? else {
            bail!("join voice")
        };
        parts.push((Arc::new(c), slot, chat, voice));
    }
    // Everyone receives; latency from the send time carried in the payload.
    let t0 = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut receivers = Vec::new();
    for (c, _, _, _) in &parts {
        let (c, received, stop): (Arc<Client>, _, _) = (c.clone(), received.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1024);
            let mut per_slot: HashMap<u16, u64> = HashMap::new();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    f = c.recv_voice() => match f {
                        Ok((h, payload)) if payload.len() >= 8 => {
                            let sent = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                            let now = t0.elapsed().as_micros() as u64;
                            lat.push(now.saturating_sub(sent));
                            *per_slot.entry(h.slot).or_default() += 1;
                            received.fetch_add(1, Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = setup.server.cpu_seconds();
    let drops0 = crate::server::udp_receive_drops();
    eprintln!("speaking (server pid {})", setup.server.pid);
    let speech = Instant::now();
    let frames = r.fps as u64 * r.seconds;
    let mut speakers = Vec::new();
    for (k, (c, _, _, _)) in parts.iter().take(r.speakers).enumerate() {
        let c = c.clone();
        let every = Duration::from_secs_f64(1.0 / r.fps as f64);
        speakers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut payload = vec![0x55u8; 160];
            for seq in 0..frames {
                tick.tick().await;
                payload[..8].copy_from_slice(&(t0.elapsed().as_micros() as u64).to_le_bytes());
                let h = Uplink {
                    flags: 0,
                    level: AudioLevel::new(20 + k as u8, true),
                    seq: seq as u16,
                    timestamp: (seq as u32) * 960,
                };
                let _ = c.send_voice(&h, &payload);
            }
        }));
    }
    for s in speakers {
        s.await?;
    }
    let speech_secs = speech.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = setup.server.cpu_seconds() - cpu0;
    let udp_drops = crate::server::udp_receive_drops().saturating_sub(drops0);
    stop.notify_waiters();
    let mut lat = Vec::new();
    for rx in receivers {
        lat.extend(rx.await.context("receiver")?);
    }
    let text = setup.server.metrics().await.unwrap_or_default();
    let res50 = histogram_quantile(&text, "quaver_voice_residence_seconds", 0.5).unwrap_or(f64::NAN) * 1e6;
    let res99 = histogram_quantile(&text, "quaver_voice_residence_seconds", 0.99).unwrap_or(f64::NAN) * 1e6;
    let sent = frames * r.speakers as u64;
    let expected = sent * (total as u64 - 1);
    let got = received.load(Relaxed);
    let server_rss = setup.server.rss_bytes();
    drop(parts);
    setup.server.stop().await;
    Ok(VoiceResult {
        server_rss,
        sent,
        expected,
        received: got,
        forwarded_per_sec: got as f64 / speech_secs,
        cpu_seconds: cpu,
        latency: percentiles(lat),
        residence_p50_us: res50,
        residence_p99_us: res99,
        udp_drops,
        streams: Vec::new(),
    })
}

/// The run with the participants on the load generator's engine loops (`crate::swarm`).
async fn on_swarm(setup: Setup, channel: u64, invite: &str, r: VoiceRun) -> anyhow::Result<VoiceResult> {
    let total = r.listeners + r.speakers;
    let webrtc = r.webrtc_listeners.min(r.listeners);
    let on_datagrams = total - webrtc;
    let swarm = crate::swarm::Swarm::open(
        &setup,
        100,
        on_datagrams,
        r.client_loops,
        invite,
        Some((channel, r.redundancy)),
        None,
    )
    .await?;
    let rtc = if webrtc > 0 {
        let first = 100 + on_datagrams as u64;
        Some(crate::webrtc::Listeners::join(&setup, first, webrtc, invite, channel, swarm.epoch, r.webrtc_red).await?)
    } else {
        None
    };
    let p = swarm.progress.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = setup.server.cpu_seconds();
    let drops0 = crate::server::udp_receive_drops();
    let own0 = crate::server::cpu_seconds(std::process::id());
    eprintln!("speaking (server pid {})", setup.server.pid);
    let frames = r.fps as u64 * r.seconds;
    let sent = frames * r.speakers as u64;
    let speech = Instant::now();
    swarm.speak(crate::swarm::Speaking {
        speakers: r.speakers,
        every: Duration::from_secs_f64(1.0 / r.fps as f64),
        frames,
        start: speech + Duration::from_millis(5),
        redundancy: r.redundancy,
        buffer: r.buffer,
    });
    let limit = speech + Duration::from_secs(r.seconds + 30);
    while p.frames_sent.load(Relaxed) < sent && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let speech_secs = speech.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = setup.server.cpu_seconds() - cpu0;
    let udp_drops = crate::server::udp_receive_drops().saturating_sub(drops0);
    let mut report = swarm.report().await?;
    if let Some(rtc) = rtc {
        let got = rtc.received.load(Relaxed);
        let (all, streams) = rtc.stop(frames, r.buffer).await;
        if let Some(p) = playout_summary(&streams) {
            eprintln!(
                "WebRTC listeners played with a {} ms buffer: {:.3} % ({:.3} % late, {:.3} % lost); per listener and speaker: worst {:.2} %, p1 {:.2} %, median {:.2} %",
                r.buffer.as_millis(),
                p.played * 100.0,
                p.late * 100.0,
                p.lost * 100.0,
                p.worst * 100.0,
                p.p1 * 100.0,
                p.median * 100.0
            );
        }
        let lat = percentiles(all.clone());
        let datagrams = percentiles(report.latency.clone());
        eprintln!(
            "WebRTC listeners: {webrtc} received {got} frames ({:.0} each of {sent} sent), latency p50 {:.0} µs p99 {:.0} µs; datagram listeners p50 {:.0} µs p99 {:.0} µs",
            got as f64 / webrtc as f64,
            lat.p50,
            lat.p99,
            datagrams.p50,
            datagrams.p99
        );
        report.first += got;
        report.latency.extend(all);
    }
    let own = crate::server::cpu_seconds(std::process::id()) - own0;
    eprintln!(
        "load generator CPU {:.2} µs per received frame ({} client loops); {} sessions lost",
        own * 1e6 / report.first.max(1) as f64,
        r.client_loops,
        p.lost.load(Relaxed)
    );
    let text = setup.server.metrics().await.unwrap_or_default();
    let res50 = histogram_quantile(&text, "quaver_voice_residence_seconds", 0.5).unwrap_or(f64::NAN) * 1e6;
    let res99 = histogram_quantile(&text, "quaver_voice_residence_seconds", 0.99).unwrap_or(f64::NAN) * 1e6;
    let server_rss = setup.server.rss_bytes();
    swarm.stop();
    setup.server.stop().await;
    Ok(VoiceResult {
        server_rss,
        sent: p.frames_sent.load(Relaxed),
        expected: sent * (total as u64 - 1),
        received: report.first,
        forwarded_per_sec: report.first as f64 / speech_secs,
        cpu_seconds: cpu,
        latency: percentiles(report.latency),
        residence_p50_us: res50,
        residence_p99_us: res99,
        udp_drops,
        streams: report.streams,
    })
}

/// What the listeners' playout buffers made of a run, over every (listener, speaker) stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlayoutSummary {
    /// Frames expected over all streams.
    pub(crate) frames: u64,
    /// Shares of them: played (directly or from a copy), from a copy, late, lost.
    pub(crate) played: f64,
    pub(crate) recovered: f64,
    pub(crate) late: f64,
    pub(crate) lost: f64,
    /// The share played by the worst stream, the 1st percentile and the median stream.
    pub(crate) worst: f64,
    pub(crate) p1: f64,
    pub(crate) median: f64,
}

/// The summary of `streams` (`None` without any: a run on `quaver-client` sessions).
pub(crate) fn playout_summary(streams: &[crate::swarm::Playout]) -> Option<PlayoutSummary> {
    if streams.is_empty() {
        return None;
    }
    let sum = |f: fn(&crate::swarm::Playout) -> u64| streams.iter().map(f).sum::<u64>();
    let (played, recovered, late, lost) = (
        sum(|p| p.played),
        sum(|p| p.recovered),
        sum(|p| p.late),
        sum(|p| p.lost),
    );
    let frames = played + recovered + late + lost;
    let share = |n: u64| n as f64 / frames.max(1) as f64;
    let mut per: Vec<f64> = streams.iter().map(|p| p.played_share()).collect();
    per.sort_by(f64::total_cmp);
    let at = |q: f64| per[((per.len() - 1) as f64 * q).round() as usize];
    Some(PlayoutSummary {
        frames,
        played: share(played + recovered),
        recovered: share(recovered),
        late: share(late),
        lost: share(lost),
        worst: per[0],
        p1: at(0.01),
        median: at(0.5),
    })
}
