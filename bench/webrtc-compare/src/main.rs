//! Issue 14's library comparison: the server side of a voice SFU's WebRTC downlink on str0m
//! (through `quaver-rtc`, the bridge Quaver runs) and on webrtc 0.21, measured the same way.
//!
//! `webrtc-compare <str0m|webrtc> [peers] [seconds]`: `peers` listeners (`quaver_rtc::Client`s, str0m with
//! full ICE, each on a UDP socket of its own, on a client thread) connect to `peers`
//! server-side peers of the library under test (ICE-lite answerers, on one server thread
//! with a current-thread runtime: every task the library spawns runs there). Once all are
//! connected the server sends one speaker's 20 ms Opus-sized frames (60 bytes, RFC 6464
//! level) to every peer for `seconds`; it reports the server thread's CPU time per copy
//! sent (getrusage RUSAGE_THREAD over the sending window), and the listeners what arrived
//! and how late.
//!
//! How each library is driven is how Quaver would have to drive it:
//! - str0m: `quaver_rtc::Peer`s on one socket, demultiplexed by source address (as
//!   `src/voice/webrtc.rs`), one `Rtc` per peer polled by the loop that owns them all;
//! - webrtc 0.21: a `PeerConnection` per peer (its own UDP socket — 0.21 has no UDP mux, its
//!   `with_udp_network` is still a to-do — and its own driver task), a
//!   `TrackLocalStaticRTP` per peer written with `write_rtp_with_extensions`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{PeerConnection, PeerConnectionEventHandler};

const PAYLOAD: usize = 60;
const FRAME: Duration = Duration::from_millis(20);

/// An offer and where its answer goes.
type Signal = (String, oneshot::Sender<String>);

fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let lib = args.next().unwrap_or_else(|| "str0m".into());
    if lib == "reflect" {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(reflect());
    }
    let peers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let epoch = Instant::now();
    let (tx, rx) = mpsc::channel::<Signal>(peers);
    let connected = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let lib2 = lib.clone();
    let server = std::thread::Builder::new().name("server".into()).spawn({
        let connected = connected.clone();
        move || -> anyhow::Result<(Duration, u64)> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                match lib2.as_str() {
                    "str0m" => str0m_server(rx, peers, seconds, epoch, connected).await,
                    "webrtc" => webrtc_server(rx, peers, seconds, epoch, connected).await,
                    other => bail!("unknown library {other} (str0m or webrtc)"),
                }
            })
        }
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (received, latency) = rt.block_on(listeners(tx, peers, seconds, epoch, connected, go))?;
    let (cpu, copies) = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    let mut latency = latency;
    latency.sort_unstable();
    let pct = |p: f64| {
        latency
            .get(((latency.len() as f64 * p) as usize).min(latency.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{lib}: peers {peers}, copies sent {copies}, received {received} (loss {:.2}%), server CPU {:.3} s = {:.1} µs per copy, latency p50 {:.2} ms p99 {:.2} ms",
        100.0 * (copies.saturating_sub(received)) as f64 / copies.max(1) as f64,
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / copies.max(1) as f64,
        pct(0.5) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
    );
    Ok(())
}

/// The frame sent at `at`: its send time (µs since `epoch`) first, then filler.
fn payload(epoch: Instant) -> Vec<u8> {
    let mut p = vec![0x5Au8; PAYLOAD];
    p[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
    p
}

// --- the listeners (the same for both libraries) ---

async fn listeners(
    tx: mpsc::Sender<Signal>,
    n: usize,
    seconds: u64,
    epoch: Instant,
    connected: Arc<AtomicUsize>,
    _go: Arc<tokio::sync::Notify>,
) -> anyhow::Result<(u64, Vec<u64>)> {
    let received = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let (mut client, offer) = quaver_rtc::Client::offer(socket.local_addr()?, 1, Instant::now())?;
        let (atx, arx) = oneshot::channel();
        tx.send((offer, atx)).await?;
        client.accept(&arx.await.context("no answer")?)?;
        tasks.push(tokio::spawn(listener(
            client,
            socket,
            epoch,
            received.clone(),
            connected.clone(),
            stopped.clone(),
        )));
    }
    // The server sends for `seconds` once all are connected; then a second for stragglers.
    let limit = Instant::now() + Duration::from_secs(30);
    while connected.load(Relaxed) < 2 * n {
        if Instant::now() > limit {
            bail!(
                "connected: {} of {n} listeners and server peers (both count)",
                connected.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(seconds + 1)).await;
    let _ = stop.send(true);
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    Ok((received.load(Relaxed), all))
}

async fn listener(
    mut client: quaver_rtc::Client,
    socket: tokio::net::UdpSocket,
    epoch: Instant,
    received: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<u64> {
    use quaver_rtc::ClientOutput;
    let mut latency = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let wait = loop {
            match client.poll() {
                ClientOutput::Wait(t) => break t,
                ClientOutput::Transmit { to, data } => {
                    let _ = socket.send_to(&data, to).await;
                }
                ClientOutput::Connected => {
                    connected.fetch_add(1, Relaxed);
                }
                ClientOutput::Heard { frame, .. } => {
                    if let Some(t) = frame.payload.first_chunk::<8>() {
                        latency.push((epoch.elapsed().as_micros() as u64).saturating_sub(u64::from_le_bytes(*t)));
                        received.fetch_add(1, Relaxed);
                    }
                }
                ClientOutput::Closed => return latency,
            }
        };
        let alive = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => client.receive(Instant::now(), from, &buf[..n]),
                Err(_) => false,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wait)) => client.timeout(Instant::now()),
            _ = stop.changed() => false,
        };
        if !alive {
            return latency;
        }
    }
}

// --- str0m, as Quaver's bridge runs it ---

async fn str0m_server(
    mut rx: mpsc::Receiver<Signal>,
    n: usize,
    seconds: u64,
    epoch: Instant,
    connected: Arc<AtomicUsize>,
) -> anyhow::Result<(Duration, u64)> {
    use quaver_rtc::{Frame, Output as Out, Peer};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let mut peers: Vec<(Peer, Instant)> = Vec::with_capacity(n);
    let mut by_addr: HashMap<SocketAddr, usize> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut up = 0;
    let (mut sending, mut cpu0, mut next_frame, mut end) = (false, Duration::ZERO, Instant::now(), Instant::now());
    let (mut copies, mut seq) = (0u64, 0u16);
    let drain = |p: &mut Peer, wait: &mut Instant, up: &mut usize, socket: &tokio::net::UdpSocket| loop {
        match p.poll() {
            Out::Transmit { to, data } => {
                let _ = socket.try_send_to(&data, to);
            }
            Out::Connected => *up += 1,
            Out::Wait(t) => {
                *wait = t;
                return;
            }
            Out::Closed => return,
            Out::Frame(_) => {}
        }
    };
    loop {
        if !sending && up == n && peers.len() == n {
            sending = true;
            cpu0 = thread_cpu();
            next_frame = Instant::now();
            end = next_frame + Duration::from_secs(seconds);
        }
        if sending && Instant::now() >= end {
            return Ok((thread_cpu() - cpu0, copies));
        }
        let timer = peers
            .iter()
            .map(|p| p.1)
            .min()
            .unwrap_or(Instant::now() + Duration::from_secs(1));
        let timer = if sending { timer.min(next_frame) } else { timer };
        tokio::select! {
            s = rx.recv(), if peers.len() < n => {
                let (offer, answer) = s.context("signalling ended")?;
                let (peer, sdp) = Peer::answer(&offer, local, Instant::now())?;
                let _ = answer.send(sdp);
                peers.push((peer, Instant::now()));
            }
            r = socket.recv_from(&mut buf) => {
                let (len, from) = r?;
                let data = &buf[..len];
                let now = Instant::now();
                let i = by_addr.get(&from).copied().or_else(|| peers.iter().position(|p| p.0.accepts(from, data)));
                if let Some(i) = i {
                    by_addr.insert(from, i);
                    let (p, wait) = &mut peers[i];
                    p.receive(now, from, data);
                    let before = up;
                    drain(p, wait, &mut up, &socket);
                    if up > before { connected.fetch_add(1, Relaxed); }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {
                let now = Instant::now();
                for (p, wait) in peers.iter_mut().filter(|p| p.1 <= now) {
                    p.timeout(now);
                    let before = up;
                    drain(p, wait, &mut up, &socket);
                    if up > before { connected.fetch_add(1, Relaxed); }
                }
                if sending && now >= next_frame && now < end {
                    let frame = Frame { level: 20, voice: true, seq, timestamp: u32::from(seq) * 960, talkspurt: seq == 0, payload: payload(epoch) };
                    for (p, wait) in peers.iter_mut() {
                        if p.send(0, 1, frame.clone(), now) { copies += 1; }
                        drain(p, wait, &mut up, &socket);
                    }
                    seq = seq.wrapping_add(1);
                    next_frame += FRAME;
                }
            }
        }
    }
}

// --- webrtc 0.21 ---

#[derive(Clone)]
struct Handler {
    connected: Arc<AtomicUsize>,
    up: Arc<AtomicUsize>,
    gathered: mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl webrtc::peer_connection::PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: webrtc::peer_connection::RTCIceGatheringState) {
        gathered(s, &self.gathered);
    }
    async fn on_connection_state_change(&self, s: webrtc::peer_connection::RTCPeerConnectionState) {
        if s == webrtc::peer_connection::RTCPeerConnectionState::Connected {
            self.connected.fetch_add(1, Relaxed);
            self.up.fetch_add(1, Relaxed);
        }
    }
}

/// Tells `answerer` that ICE gathering is complete.
fn gathered(s: webrtc::peer_connection::RTCIceGatheringState, tx: &mpsc::Sender<()>) {
    if s == webrtc::peer_connection::RTCIceGatheringState::Complete {
        let _ = tx.try_send(());
    }
}

/// Opus as Chromium offers it (payload type 111).
fn opus() -> rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
    rtc::rtp_transceiver::rtp_sender::RTCRtpCodec {
        mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// webrtc 0.21 as Quaver would run it: an ICE-lite answerer on a 127.0.0.1 socket of its
/// own, Opus only, that sends on a `TrackLocalStaticRTP` with `ssrc` (named `id`). Answers
/// `offer` once gathering is done (the handler fires `gathered`); returns the connection,
/// its track and the answer.
async fn answerer(
    offer: String,
    id: &str,
    ssrc: u32,
    handler: impl FnOnce(Arc<TrackLocalStaticRTP>, mpsc::Sender<()>) -> Arc<dyn PeerConnectionEventHandler>,
) -> anyhow::Result<(impl PeerConnection, Arc<TrackLocalStaticRTP>, String)> {
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::configuration::RTCConfigurationBuilder;
    use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
    use rtc::peer_connection::sdp::RTCSessionDescription;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use webrtc::media_stream::track_local::TrackLocal;
    use webrtc::peer_connection::PeerConnectionBuilder;

    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
            ..Default::default()
        },
        RtpCodecKind::Audio,
    )?;
    let registry = register_default_interceptors(rtc::interceptor::Registry::new(), &mut media)?;
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{id}-stream"),
        format!("{id}-track"),
        id.to_string(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus(),
            ..Default::default()
        }],
    )));
    let (gtx, mut grx) = mpsc::channel(1);
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_lite(true)
                .with_include_loopback_candidate(true)
                .build(),
        )
        .with_handler(handler(track.clone(), gtx))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await?;
    pc.set_remote_description(RTCSessionDescription::offer(offer)?).await?;
    pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), grx.recv()).await;
    let sdp = pc.local_description().await.context("no local description")?.sdp;
    Ok((pc, track, sdp))
}

async fn webrtc_server(
    mut rx: mpsc::Receiver<Signal>,
    n: usize,
    seconds: u64,
    epoch: Instant,
    connected: Arc<AtomicUsize>,
) -> anyhow::Result<(Duration, u64)> {
    use rtc::rtp;

    let up = Arc::new(AtomicUsize::new(0));
    let mut pcs = Vec::with_capacity(n);
    let mut tracks: Vec<(Arc<TrackLocalStaticRTP>, u32)> = Vec::with_capacity(n);
    for i in 0..n {
        let (offer, answer_tx) = rx.recv().await.context("signalling ended")?;
        let ssrc = 0x1000_0000 + i as u32;
        let (connected, up) = (connected.clone(), up.clone());
        let (pc, track, sdp) = answerer(offer, &format!("s{i}"), ssrc, move |_, gathered| {
            Arc::new(Handler {
                connected,
                up,
                gathered,
            })
        })
        .await?;
        let _ = answer_tx.send(sdp);
        pcs.push(pc);
        tracks.push((track, ssrc));
    }
    let limit = Instant::now() + Duration::from_secs(30);
    while up.load(Relaxed) < n {
        if Instant::now() > limit {
            bail!("only {} of {n} webrtc peers connected", up.load(Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu0 = thread_cpu();
    let (mut copies, mut seq) = (0u64, 0u16);
    let mut tick = tokio::time::interval(FRAME);
    let end = Instant::now() + Duration::from_secs(seconds);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let data = bytes::Bytes::from(payload(epoch));
        for (track, ssrc) in &tracks {
            let pkt = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: seq == 0,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 960,
                    ssrc: *ssrc,
                    ..Default::default()
                },
                payload: data.clone(),
            };
            let level = rtp::extension::HeaderExtension::AudioLevel(
                rtp::extension::audio_level_extension::AudioLevelExtension { level: 20, voice: true },
            );
            if track.write_rtp_with_extensions(pkt, &[level]).await.is_ok() {
                copies += 1;
            }
        }
        seq = seq.wrapping_add(1);
    }
    let cpu = thread_cpu() - cpu0;
    for pc in pcs {
        let _ = pc.close().await;
    }
    Ok((cpu, copies))
}

// --- webrtc 0.21 against Chromium: answer one offer, send back what the browser sends ---

struct Reflect {
    out: Arc<webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP>,
    ssrc: u32,
    gathered: mpsc::Sender<()>,
    reflected: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl webrtc::peer_connection::PeerConnectionEventHandler for Reflect {
    async fn on_ice_gathering_state_change(&self, s: webrtc::peer_connection::RTCIceGatheringState) {
        gathered(s, &self.gathered);
    }
    async fn on_connection_state_change(&self, s: webrtc::peer_connection::RTCPeerConnectionState) {
        eprintln!("reflect: connection {s}");
    }
    async fn on_track(&self, track: Arc<dyn webrtc::media_stream::track_remote::TrackRemote>) {
        use webrtc::media_stream::track_local::TrackLocal;
        use webrtc::media_stream::track_remote::TrackRemoteEvent;
        let (out, ssrc, reflected) = (self.out.clone(), self.ssrc, self.reflected.clone());
        tokio::spawn(async move {
            while let Some(e) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(mut p) = e {
                    p.header.ssrc = ssrc;
                    if out.write_rtp(p).await.is_ok() {
                        reflected.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
}

/// Reads an SDP from standard input up to a line `.`; writes the answer the same way, then
/// reflects the browser's audio until standard input closes, and reports the packets sent back.
async fn reflect() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut offer = String::new();
    while let Some(l) = lines.next_line().await? {
        if l == "." {
            break;
        }
        offer.push_str(&l);
        offer.push_str("\r\n");
    }
    let ssrc = 0x0bad_cafe;
    let reflected = Arc::new(AtomicU64::new(0));
    let counted = reflected.clone();
    let (pc, _, sdp) = answerer(offer, "reflect", ssrc, move |out, gathered| {
        Arc::new(Reflect {
            out,
            ssrc,
            gathered,
            reflected: counted,
        })
    })
    .await?;
    println!("{}\n.", sdp.trim_end());
    while lines.next_line().await?.is_some() {}
    eprintln!("reflect: {} packets sent back", reflected.load(Relaxed));
    let _ = pc.close().await;
    Ok(())
}
