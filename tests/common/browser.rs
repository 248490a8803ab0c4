//! A browser-like WebRTC peer for the integration tests (included with `#[path]` by the
//! tests that use it): a `quaver_rtc::Client` (full ICE) on a UDP socket and thread of its
//! own.

// Each test binary that includes it uses a part.
#![allow(dead_code)]

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quaver_rtc::{Client, ClientOutput, Frame};

/// What the peer received: (track mid, frame) per frame.
pub(crate) type Heard = Arc<Mutex<Vec<(String, Frame)>>>;

/// A client on its own thread and UDP socket: connects, then speaks while `speak` is set
/// (50 frames/s, level −25 dBov, payload `[0x5A, n, …]`) and records what it hears.
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
        let (mut client, offer) = Client::offer(local, 3, Instant::now()).unwrap();
        let start = move |answer: String| {
            client.accept(&answer).unwrap();
            let heard: Heard = Default::default();
            let (speak, connected, stop) = (
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (h, s, c, st) = (heard.clone(), speak.clone(), connected.clone(), stop.clone());
            let thread = std::thread::spawn(move || run(client, socket, h, s, c, st));
            Browser {
                heard,
                speak,
                connected,
                stop,
                thread: Some(thread),
            }
        };
        (offer, start)
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

fn run(
    mut client: Client,
    socket: UdpSocket,
    heard: Heard,
    speak: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut next_frame = Instant::now();
    let mut n: u32 = 0;
    let mut buf = vec![0u8; 2048];
    let limit = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < limit {
        let wait = loop {
            match client.poll() {
                ClientOutput::Wait(t) => break t,
                ClientOutput::Transmit { to, data } => {
                    socket.send_to(&data, to).unwrap();
                }
                ClientOutput::Connected => connected.store(true, Ordering::SeqCst),
                ClientOutput::Heard { mid, frame } => heard.lock().unwrap().push((mid, frame)),
                ClientOutput::Closed => return,
            }
        };
        let now = Instant::now();
        if speak.load(Ordering::SeqCst) && now >= next_frame {
            let mut payload = vec![0x5A, n as u8];
            payload.extend_from_slice(&[0x11; 38]);
            let frame = Frame {
                level: 25,
                voice: true,
                seq: n as u16,
                timestamp: n * 960,
                talkspurt: n == 0,
                payload,
            };
            assert!(client.speak(&frame, now), "the microphone takes the frame");
            n += 1;
            next_frame = now + Duration::from_millis(20);
            continue;
        }
        let until = wait
            .min(now + Duration::from_millis(5))
            .max(now + Duration::from_micros(200));
        socket.set_read_timeout(Some(until - now)).unwrap();
        let alive = match socket.recv_from(&mut buf) {
            Ok((len, from)) => client.receive(Instant::now(), from, &buf[..len]),
            Err(_) => client.timeout(Instant::now()),
        };
        assert!(alive, "the client's stack refused its input");
    }
}
