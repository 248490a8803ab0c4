//! Property tests of the decoders: on random bytes and on mutations of valid encodings, no
//! decoder panics, and the frame reader never buffers beyond its limit. Seeded, so a failure
//! reproduces; `QUAVER_FUZZ_ITERS` raises the count for a longer run.

use quaver_proto::datagram::{Downlink, Uplink};
use quaver_proto::*;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn iters() -> usize {
    std::env::var("QUAVER_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Runs every decoder on `p`; returns how many accepted it.
fn decode_all(p: &[u8]) -> usize {
    let mut ok = 0;
    ok += decode::<ClientControl>(p).is_ok() as usize;
    ok += decode::<ServerControl>(p).is_ok() as usize;
    ok += decode::<StreamOpen>(p).is_ok() as usize;
    ok += decode::<Request>(p).is_ok() as usize;
    ok += decode::<ServerLane>(p).is_ok() as usize;
    ok += decode::<FetchReply>(p).is_ok() as usize;
    ok += Uplink::parse(p).is_ok() as usize;
    ok += Downlink::parse(p).is_ok() as usize;
    // The WebSocket framing, and the stream bookkeeping behind it.
    if let Ok(f) = quaver_proto::ws::Frame::decode(bytes::Bytes::copy_from_slice(p)) {
        ok += 1;
        let mut streams = quaver_proto::ws::Streams::new(4);
        let _ = streams.receive(f);
    }
    ok
}

fn seeds() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/messages.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| hex::decode(m["payload"].as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..iters() {
        let n = rng.below(64);
        let p = rng.bytes(n);
        decode_all(&p);
    }
}

#[test]
fn mutated_vectors_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(42);
    let mut accepted = 0;
    for i in 0..iters() {
        let mut p = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !p.is_empty() => {
                    let j = rng.below(p.len());
                    p[j] ^= 1 << rng.below(8);
                }
                1 if !p.is_empty() => {
                    let j = rng.below(p.len());
                    p[j] = [0, 0xff, 251, 252, 253, 254][rng.below(6)];
                }
                2 => p.truncate(rng.below(p.len() + 1)),
                _ => {
                    let j = rng.below(p.len() + 1);
                    let k = 1 + rng.below(8);
                    let extra = rng.bytes(k);
                    p.splice(j..j, extra);
                }
            }
        }
        accepted += decode_all(&p);
    }
    // Some mutations stay valid (a flipped bit in a string): the decoders are exercised on
    // both paths, not just rejecting everything at the first byte.
    assert!(accepted > 0);
}

#[test]
fn frame_reader_bounds_memory_on_random_streams() {
    let mut rng = Rng(7);
    for _ in 0..iters() / 20 {
        let max = 1 + rng.below(512);
        let mut r = FrameReader::new(max);
        for _ in 0..20 {
            let k = rng.below(300);
            let chunk = rng.bytes(k);
            r.push(&chunk);
            loop {
                match r.next_frame() {
                    Ok(Some(f)) => {
                        assert!(f.len() <= max);
                        decode_all(&f);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            // Whatever is buffered is at most one partial frame (+ prefix) plus the last chunk.
            assert!(
                r.buffered() <= max + 8 + 300,
                "buffered {} with max {max}",
                r.buffered()
            );
            if r.next_frame().is_err() {
                break;
            }
        }
    }
}

/// PROTOCOL.md §3: decoders accept non-minimal integer encodings (a bincode marker wider
/// than the value needs, a QUIC varint longer than needed); encoders always write the
/// shortest. Pinned here so the rule cannot change silently.
#[test]
fn non_minimal_integers_decode_to_the_same_value() {
    // Heartbeat { nonce: 5, lanes: [] } is variant 1, then nonce, then the lanes' count.
    let minimal = codec::encode_payload(&ClientControl::Heartbeat(Heartbeat {
        nonce: 5,
        lanes: vec![],
    }));
    assert_eq!(minimal, [1, 5, 0]);
    let wide = [1, 251, 5, 0, 0]; // nonce as marker 251 + u16 LE
    let a: ClientControl = codec::decode(&minimal).unwrap();
    let b: ClientControl = codec::decode(&wide).unwrap();
    assert_eq!(a, b);
    // A frame length of 3 in the 2-byte varint form.
    let mut r = codec::FrameReader::new(1024);
    r.push(&[0x40, 3, 1, 5, 0]);
    assert_eq!(r.next_frame().unwrap().unwrap().as_ref(), &minimal[..]);
}
