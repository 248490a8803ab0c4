//! WebRTC listeners for the voice scenario (`voice --webrtc-listeners N`, issue 14's bench):
//! each a `quaver-client` session for the signalling (`JoinVoiceWebRtc` with a
//! `quaver_rtc::Client` offer: a microphone it never uses and three receiving tracks) and that client on a UDP socket
//! of its own, driven by a task, that counts the Opus frames the SFU forwards to it and
//! their latency (the send time the speakers write in the payload).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quaver_client::{Client, LaneStream, connect};
use quaver_proto::*;
use quaver_rtc::{Client as Rtc, ClientOutput};

use crate::setup::{Setup, req};

/// What one peer heard: every frame's latency (µs), and per track (a speaker keeps its
/// track while forwarded) the latency of each distinct RTP packet, in arrival order.
type Heard = (Vec<u64>, std::collections::HashMap<String, Vec<u64>>);

/// The listeners of a run.
pub(crate) struct Listeners {
    tasks: Vec<tokio::task::JoinHandle<Heard>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Frames received over all listeners.
    pub(crate) received: Arc<AtomicU64>,
    /// The signalling sessions and their lanes (the peers end with them).
    _sessions: Vec<(Client, LaneStream, LaneStream)>,
}

impl Listeners {
    /// `n` WebRTC listeners, users `first..first + n`, joined to the guild by `invite` and
    /// to voice channel `channel`; returns once every peer is connected. `epoch` is the
    /// speakers' clock.
    pub(crate) async fn join(
        setup: &Setup,
        first: u64,
        n: usize,
        invite: &str,
        channel: u64,
        epoch: Instant,
        red: bool,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let received = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let cfg = setup.config(first + i as u64);
            let client = connect(&cfg).await?;
            let mut chat = client.open_lane(Lane::Chat).await?;
            req(&mut chat, RequestBody::JoinGuild { code: invite.into() }).await?;
            let mut voice = client.open_lane(Lane::Voice).await?;
            // The server's buffers (a starved listener task drops nothing while it waits), on
            // the address the route to the server leaves from (loopback here; the client's
            // namespace address across `netem`): it is the offer's host candidate.
            let ip = quaver_client::route_source(cfg.addr).context("no route to the server")?;
            let socket = quaver::engine::bind(std::net::SocketAddr::new(ip, 0), 1)?
                .pop()
                .context("a socket")?;
            socket.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            let local = socket.local_addr()?;
            let (mut rtc, offer) = Rtc::offer_opts(local, 3, Instant::now(), quaver_rtc::Options { red, hold_back: 0 })
                .context("an offer")?;
            let body = RequestBody::JoinVoiceWebRtc {
                channel_id: channel,
                self_mute: false,
                self_deaf: false,
                offer,
            };
            let ResponseBody::VoiceJoinedWebRtc { answer, .. } = req(&mut voice, body).await? else {
                bail!("JoinVoiceWebRtc: not joined")
            };
            rtc.accept(&answer)?;
            let (received, connected, stopped) = (received.clone(), connected.clone(), stopped.clone());
            tasks.push(tokio::spawn(peer(rtc, socket, epoch, received, connected, stopped)));
            sessions.push((client, chat, voice));
        }
        let limit = Instant::now() + Duration::from_secs(30);
        while connected.load(Relaxed) < n {
            if Instant::now() > limit {
                bail!(
                    "only {} of {n} WebRTC listeners connected within 30 s",
                    connected.load(Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            tasks,
            stop,
            received,
            _sessions: sessions,
        })
    }

    /// Stops the peers; every frame's latency (µs), and per listener and track what a
    /// playout buffer of `buffer` made of the `frames` each speaker sent (a frame plays if
    /// it arrived by the track's first latency plus the buffer; no copies on this path).
    pub(crate) async fn stop(self, frames: u64, buffer: Duration) -> (Vec<u64>, Vec<crate::swarm::Playout>) {
        let _ = self.stop.send(true);
        let (mut all, mut streams) = (Vec::new(), Vec::new());
        for t in self.tasks {
            let (latency, tracks) = t.await.unwrap_or_default();
            all.extend(latency);
            for lat in tracks.values() {
                let deadline = lat.first().copied().unwrap_or(0) + buffer.as_micros() as u64;
                let played = lat.iter().filter(|l| **l <= deadline).count() as u64;
                let late = lat.len() as u64 - played;
                streams.push(crate::swarm::Playout {
                    played,
                    recovered: 0,
                    late,
                    lost: frames.saturating_sub(played + late),
                });
            }
        }
        (all, streams)
    }
}

async fn peer(
    mut rtc: Rtc,
    socket: tokio::net::UdpSocket,
    epoch: Instant,
    received: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Heard {
    let mut latency = Vec::with_capacity(2048);
    let mut tracks: std::collections::HashMap<String, (std::collections::HashSet<u16>, Vec<u64>)> = Default::default();
    let mut buf = vec![0u8; 2048];
    loop {
        let wait = loop {
            match rtc.poll() {
                ClientOutput::Wait(t) => break t,
                ClientOutput::Transmit { to, data } => {
                    let _ = socket.send_to(&data, to).await;
                }
                ClientOutput::Connected => {
                    connected.fetch_add(1, Relaxed);
                }
                ClientOutput::Heard { frame, mid } => {
                    // The speakers' send time, µs since `epoch`, leads the payload.
                    if let Some(t) = frame.payload.first_chunk::<8>() {
                        let at = epoch.elapsed().as_micros() as u64;
                        let l = at.saturating_sub(u64::from_le_bytes(*t));
                        // Each packet once (the listener takes them as they come, so a
                        // copy recovered from RED may follow its original).
                        let (seen, lat) = tracks.entry(mid).or_default();
                        if seen.insert(frame.seq) {
                            latency.push(l);
                            received.fetch_add(1, Relaxed);
                            lat.push(l);
                        }
                    }
                }
                ClientOutput::Closed => return (latency, tracks.into_iter().map(|(m, (_, l))| (m, l)).collect()),
            }
        };
        let alive = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => rtc.receive(Instant::now(), from, &buf[..n]),
                Err(_) => false,
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wait)) => rtc.timeout(Instant::now()),
            _ = stop.changed() => false,
        };
        if !alive {
            return (latency, tracks.into_iter().map(|(m, (_, l))| (m, l)).collect());
        }
    }
}
