//! WebRTC listeners for the voice scenario (`voice --webrtc-listeners N`, issue 14's bench):
//! each a `quaver-client` session for the signalling (`JoinVoiceWebRtc` with a str0m offer:
//! a microphone it never uses and three receiving tracks) and a str0m peer on a UDP socket
//! of its own, driven by a task, that counts the Opus frames the SFU forwards to it and
//! their latency (the send time the speakers write in the payload).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quaver_client::{Client, LaneStream, connect};
use quaver_proto::*;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::setup::{Setup, req};

/// The listeners of a run.
pub(crate) struct Listeners {
    tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>,
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
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            let local = socket.local_addr()?;
            let mut rtc = Rtc::builder().build(Instant::now());
            rtc.add_local_candidate(Candidate::host(local, "udp").context("a host candidate")?);
            let mut change = rtc.sdp_api();
            change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            for _ in 0..3 {
                change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            }
            let (offer, pending) = change.apply().context("an offer")?;
            let body = RequestBody::JoinVoiceWebRtc {
                channel_id: channel,
                self_mute: false,
                self_deaf: false,
                offer: offer.to_sdp_string(),
            };
            let ResponseBody::VoiceJoinedWebRtc { answer, .. } = req(&mut voice, body).await? else {
                bail!("JoinVoiceWebRtc: not joined")
            };
            rtc.sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
            let (received, connected, stopped) = (received.clone(), connected.clone(), stopped.clone());
            tasks.push(tokio::spawn(peer(
                rtc, socket, local, epoch, received, connected, stopped,
            )));
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

    /// Stops the peers; every frame's latency, µs.
    pub(crate) async fn stop(self) -> Vec<u64> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    }
}

async fn peer(
    mut rtc: Rtc,
    socket: tokio::net::UdpSocket,
    local: std::net::SocketAddr,
    epoch: Instant,
    received: Arc<AtomicU64>,
    connected: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<u64> {
    let mut latency = Vec::with_capacity(2048);
    let mut buf = vec![0u8; 2048];
    loop {
        let wait = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::Connected)) => {
                    connected.fetch_add(1, Relaxed);
                }
                Ok(Output::Event(Event::MediaData(m))) if m.data.len() >= 8 => {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&m.data[..8]);
                    let at = epoch.elapsed().as_micros() as u64;
                    latency.push(at.saturating_sub(u64::from_le_bytes(t)));
                    received.fetch_add(1, Relaxed);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return latency,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { return latency };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: from, destination: local, contents });
                if rtc.handle_input(input).is_err() {
                    return latency;
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wait)) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return latency;
                }
            }
            _ = stop.changed() => return latency,
        }
    }
}
