//! A browser-like WebRTC peer for the integration tests (included with `#[path]` by the
//! tests that use it): str0m with full ICE on a UDP socket and thread of its own.

// Each test binary that includes it uses a part.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// What the browser-like peer received: (mid, audio level, payload) per frame.
pub(crate) type Heard = Arc<Mutex<Vec<(Mid, Option<i8>, Vec<u8>)>>>;

/// A str0m peer on its own thread and UDP socket: connects, then speaks while `speak` is
/// set (50 frames/s, level −25 dBov, payload `[0x5A, n, …]`) and records what it hears.
pub(crate) struct Browser {
    pub(crate) heard: Heard,
    pub(crate) speak: Arc<AtomicBool>,
    pub(crate) connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Browser {
    /// Makes the offer (microphone + three receiving tracks); returns the SDP and a
    /// function that starts the peer with the answer.
    pub(crate) fn offer() -> (String, impl FnOnce(String) -> Browser) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mic = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        for _ in 0..3 {
            change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = change.apply().unwrap();
        let start = move |answer: String| {
            rtc.sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
                .unwrap();
            let heard: Heard = Default::default();
            let (speak, connected, stop) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (h, s, c, st) = (heard.clone(), speak.clone(), connected.clone(), stop.clone());
            let thread = std::thread::spawn(move || run(rtc, socket, local, mic, h, s, c, st));
            Browser {
                heard,
                speak,
                connected,
                stop,
                thread: Some(thread),
            }
        };
        (offer.to_sdp_string(), start)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    mut rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    mic: Mid,
    heard: Heard,
    speak: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let pt = rtc.codec_config().find(|c| c.spec().codec == Codec::Opus).unwrap().pt();
    let mut next_frame = Instant::now();
    let mut n: u32 = 0;
    let mut buf = vec![0u8; 2048];
    let limit = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < limit {
        let wait = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    socket.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(Event::Connected) => connected.store(true, Ordering::SeqCst),
                Output::Event(Event::MediaData(m)) => {
                    heard
                        .lock()
                        .unwrap()
                        .push((m.mid, m.ext_vals.audio_level, m.data.to_vec()))
                }
                Output::Event(_) => {}
            }
        };
        let now = Instant::now();
        if speak.load(Ordering::SeqCst) && now >= next_frame {
            let mut payload = vec![0x5A, n as u8];
            payload.extend_from_slice(&[0x11; 38]);
            rtc.writer(mic)
                .unwrap()
                .audio_level(-25, true)
                .start_of_talkspurt(n == 0)
                .write(
                    pt,
                    now,
                    MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ),
                    payload,
                )
                .unwrap();
            n += 1;
            next_frame = now + Duration::from_millis(20);
            continue;
        }
        let until = wait
            .min(now + Duration::from_millis(5))
            .max(now + Duration::from_micros(200));
        socket.set_read_timeout(Some(until - now)).unwrap();
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: buf[..len].try_into().unwrap(),
                    },
                );
                rtc.handle_input(input).unwrap();
            }
            Err(_) => rtc.handle_input(Input::Timeout(Instant::now())).unwrap(),
        }
    }
}
