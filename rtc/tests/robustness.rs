//! Peer input never panics the bridge: mutations of a real Chromium offer (and of
//! `Client`'s) through `Peer::answer` — line deletions, duplicates, swaps, byte flips,
//! truncations, hostile attribute values. Seeded, so a failure reproduces;
//! `QUAVER_FUZZ_ITERS` raises the count. (The datagram side: `bridge.rs`,
//! `garbage_datagrams_neither_panic_nor_end_the_peer`.)

use std::net::SocketAddr;
use std::time::Instant;

use quaver_rtc::{Client, Peer};

mod common;
use common::Rng;

/// Attribute lines a hostile or broken offer might carry.
const HOSTILE: &[&str] = &[
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=audio 0 RTP/AVP",
    "a=mid:",
    "a=mid:0",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:111 opus/0/0",
    "a=rtpmap:4294967296 opus/48000/2",
    "a=fmtp:111 minptime=;useinbandfec",
    "a=extmap:0 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:15 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:255 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=ssrc:0 cname:x",
    "a=ssrc-group:FID 1",
    "a=group:BUNDLE",
    "a=group:BUNDLE 0 0 0",
    "a=fingerprint:sha-256 ZZ",
    "a=fingerprint:md5 00",
    "a=setup:",
    "a=setup:active",
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=candidate:1 1 udp 1 999.1.1.1 70000 typ host",
    "a=candidate:",
    "a=rtcp-fb:111 transport-cc",
    "a=msid:- -",
    "a=simulcast:send 1;2",
    "a=rid:1 send",
    "c=IN IP6 ::",
    "a=sendrecv",
    "a=inactive",
];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        let n = lines.len();
        match rng.below(7) {
            0 if n > 1 => {
                lines.remove(rng.below(n));
            }
            1 if n > 0 => {
                let l = lines[rng.below(n)].clone();
                lines.insert(rng.below(n + 1), l);
            }
            2 if n > 1 => lines.swap(rng.below(n), rng.below(n)),
            3 => lines.insert(rng.below(n + 1), HOSTILE[rng.below(HOSTILE.len())].to_string()),
            4 if n > 0 => {
                // A byte of a line replaced (kept valid UTF-8: printable ASCII or a multibyte char).
                let i = rng.below(n);
                let mut chars: Vec<char> = lines[i].chars().collect();
                if !chars.is_empty() {
                    let at = rng.below(chars.len());
                    chars[at] = ['0', ':', ' ', '/', '=', '-', 'é', '\u{0}', '9'][rng.below(9)];
                }
                lines[i] = chars.into_iter().collect();
            }
            5 if n > 0 => {
                let i = rng.below(n);
                let cut = rng.below(lines[i].len() + 1);
                let cut = (0..=cut).rev().find(|&c| lines[i].is_char_boundary(c)).unwrap_or(0);
                lines[i].truncate(cut);
            }
            _ => lines.truncate(rng.below(n + 1)),
        }
    }
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

#[test]
fn mutated_offers_never_panic_the_answerer() {
    let chromium = include_str!("chromium-offer.sdp");
    let local: SocketAddr = "10.0.0.1:3478".parse().unwrap();
    let client: SocketAddr = "10.0.0.2:50000".parse().unwrap();
    let (_, ours) = Client::offer(client, 3, Instant::now()).unwrap();
    let iters = std::env::var("QUAVER_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut rng = Rng(0x51f1_5eed_0bad_cafe);
    let (mut answered, mut refused) = (0, 0);
    assert!(
        Peer::answer(chromium, local, Instant::now()).is_ok(),
        "the unmutated offer is answered"
    );
    for i in 0..iters {
        let base = if i % 3 == 2 { ours.as_str() } else { chromium };
        let offer = mutate(&mut rng, base);
        match Peer::answer(&offer, local, Instant::now()) {
            Ok(_) => answered += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes occur: the mutations reach past the parser's first checks.
    assert!(answered > 0 && refused > 0, "answered {answered}, refused {refused}");
}
