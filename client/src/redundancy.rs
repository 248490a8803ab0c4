//! Voice redundancy (PROTOCOL.md §8, `FLAG_REDUNDANT`), sans-IO: the sender puts its
//! previous frame again in front of each frame ([`Sender`]); the listener plays a copy when
//! the datagram that carried the original was lost, and drops whatever it already has — a
//! late original after its copy, a copy of a frame it got, a duplicate ([`Repair`]).
//!
//! At 3 % loss on each leg a frame reaches a listener directly with probability ≈ 0.94;
//! with the copy in the next datagram only two lost in a row lose it (≈ 0.4 %).

use std::collections::HashMap;

use bytes::Bytes;
use quaver_proto::datagram::{self, Downlink, FLAG_DTX, FLAG_REDUNDANT, Redundant, Uplink};

/// Builds uplink datagrams that carry the previous frame too.
#[derive(Debug, Default)]
pub struct Sender {
    /// The last frame sent with a payload worth repeating: (seq, timestamp, payload).
    previous: Option<(u16, u32, Vec<u8>)>,
}

impl Sender {
    /// The datagram for `header` and `payload`, with the previous frame in front when it
    /// was the one just before (`seq − 1`), carried speech (not DTX), and both fit the
    /// voice frame bound (`max_payload` for the two payloads together).
    pub fn datagram(&mut self, header: &Uplink, payload: &[u8], max_payload: usize) -> Vec<u8> {
        let previous = self.previous.as_ref().and_then(|(seq, ts, p)| {
            let offset = u16::try_from(header.timestamp.wrapping_sub(*ts)).ok()?;
            let fits = p.len() + datagram::REDUNDANCY_HEADER + payload.len() <= max_payload;
            (*seq == header.seq.wrapping_sub(1) && fits).then_some(Redundant {
                timestamp_offset: offset,
                payload: p,
            })
        });
        let mut out = Vec::with_capacity(
            datagram::UPLINK_HEADER
                + payload.len()
                + previous.map_or(0, |p| datagram::REDUNDANCY_HEADER + p.payload.len()),
        );
        header.write_with(previous, payload, &mut out);
        self.previous = match header.flags & FLAG_DTX {
            0 if !payload.is_empty() => {
                let mut kept = self.previous.take().map(|(_, _, v)| v).unwrap_or_default();
                kept.clear();
                kept.extend_from_slice(payload);
                Some((header.seq, header.timestamp, kept))
            }
            _ => None,
        };
        out
    }
}

/// Which of a speaker's recent frames a listener already has: the highest seq and a
/// 64-frame window below it.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u16,
    /// Bit `i`: frame `highest − i` is had.
    had: u64,
}

impl Window {
    /// Records `seq`; false if it was had already. A seq far from the window (64 or more
    /// behind) starts it afresh: the speaker's stream began again.
    fn take(&mut self, seq: u16) -> bool {
        let ahead = seq.wrapping_sub(self.highest);
        if ahead != 0 && ahead < 0x8000 {
            // Newer: slide the window up (a jump of 64 or more starts it afresh).
            self.had = if ahead >= 64 { 0 } else { self.had << ahead };
            self.highest = seq;
            self.had |= 1;
            return true;
        }
        let behind = self.highest.wrapping_sub(seq);
        if behind >= 64 {
            // Far from anything recent: the speaker's stream started again (a rejoin, a new
            // RTP stream) — a packet this late would be dropped by the playout buffer anyway.
            *self = Window { highest: seq, had: 1 };
            return true;
        }
        if self.had & (1 << behind) != 0 {
            return false;
        }
        self.had |= 1 << behind;
        true
    }
}

/// One frame for the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's header (for a recovered frame: its own seq and timestamp, the flags and
    /// level of the datagram that carried it, without `FLAG_REDUNDANT`).
    pub header: Downlink,
    /// Its payload (the redundancy block stripped).
    pub payload: Bytes,
    /// It came as the copy in the next datagram: the original was lost (or is late).
    pub recovered: bool,
}

/// The listener's side: what each downlink datagram gives the decoder.
#[derive(Debug, Default)]
pub struct Repair {
    speakers: HashMap<u16, Window>,
    /// Frames played from a copy.
    pub recovered: u64,
    /// Datagrams dropped as already had (late originals, duplicates).
    pub duplicates: u64,
}

impl Repair {
    /// Frames to decode from one downlink datagram, in order: the previous frame's copy
    /// when the listener lacks it, then the frame itself unless it was had already.
    /// A malformed datagram gives none.
    pub fn receive(&mut self, d: &Bytes) -> Vec<Frame> {
        let mut out = Vec::new();
        let Ok((h, rest)) = Downlink::parse(d) else {
            return out;
        };
        let Ok((previous, own)) = Redundant::split(h.flags, rest) else {
            return out;
        };
        let w = self.speakers.entry(h.slot).or_insert(Window {
            highest: h.seq.wrapping_sub(1),
            had: 0,
        });
        let base = d.len() - rest.len();
        let own_at = d.len() - own.len();
        let flags = h.flags & !FLAG_REDUNDANT;
        if let Some(p) = previous
            && w.take(h.seq.wrapping_sub(1))
        {
            let start = base + datagram::REDUNDANCY_HEADER;
            out.push(Frame {
                header: Downlink {
                    flags,
                    seq: h.seq.wrapping_sub(1),
                    timestamp: h.timestamp.wrapping_sub(u32::from(p.timestamp_offset)),
                    ..h
                },
                payload: d.slice(start..start + p.payload.len()),
                recovered: true,
            });
            self.recovered += 1;
        }
        if w.take(h.seq) {
            out.push(Frame {
                header: Downlink { flags, ..h },
                payload: d.slice(own_at..),
                recovered: false,
            });
        } else {
            self.duplicates += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quaver_proto::datagram::AudioLevel;

    fn up(seq: u16) -> Uplink {
        Uplink {
            flags: 0,
            level: AudioLevel::new(20, true),
            seq,
            timestamp: u32::from(seq) * 960,
        }
    }

    /// What the SFU makes of an uplink datagram for slot 3.
    fn down(d: &[u8]) -> Bytes {
        let (h, p) = Uplink::parse(d).unwrap();
        let mut out = Downlink::from_uplink(&h, 3).to_bytes().to_vec();
        out.extend_from_slice(p);
        Bytes::from(out)
    }

    fn sent(s: &mut Sender, seqs: std::ops::Range<u16>) -> Vec<Bytes> {
        seqs.map(|n| down(&s.datagram(&up(n), &[n as u8; 3], 1000))).collect()
    }

    fn seqs(frames: &[Frame]) -> Vec<(u16, bool)> {
        frames.iter().map(|f| (f.header.seq, f.recovered)).collect()
    }

    #[test]
    fn a_lost_datagram_is_played_from_the_next_one() {
        let mut s = Sender::default();
        let d = sent(&mut s, 0..5);
        let mut r = Repair::default();
        let mut got = Vec::new();
        for (i, x) in d.iter().enumerate() {
            if i != 2 {
                got.extend(r.receive(x));
            }
        }
        assert_eq!(seqs(&got), [(0, false), (1, false), (2, true), (3, false), (4, false)]);
        let two = &got[2];
        assert_eq!(two.payload, Bytes::from_static(&[2, 2, 2]));
        assert_eq!(two.header.timestamp, 2 * 960);
        assert_eq!(two.header.flags & FLAG_REDUNDANT, 0);
        assert_eq!(got[3].payload, Bytes::from_static(&[3, 3, 3]));
        assert_eq!(r.recovered, 1);
        // Two lost in a row: the first of them is gone, the second comes from the third.
        let d = sent(&mut s, 5..9);
        let got: Vec<Frame> = [&d[0], &d[3]].into_iter().flat_map(|x| r.receive(x)).collect();
        assert_eq!(seqs(&got), [(5, false), (7, true), (8, false)]);
    }

    #[test]
    fn late_originals_and_duplicates_are_dropped() {
        let mut s = Sender::default();
        let d = sent(&mut s, 10..14);
        let mut r = Repair::default();
        // 11 arrives after 12 (reordered): 12's copy already gave it.
        let got: Vec<Frame> = [&d[0], &d[2], &d[1], &d[2], &d[3]]
            .into_iter()
            .flat_map(|x| r.receive(x))
            .collect();
        assert_eq!(seqs(&got), [(10, false), (11, true), (12, false), (13, false)]);
        assert_eq!(r.duplicates, 2);
        // Far from the window: the stream started again (a rejoin), taken as new.
        let old = down(&Sender::default().datagram(&up(13u16.wrapping_sub(100)), &[1], 1000));
        assert_eq!(r.receive(&old).len(), 1);
    }

    #[test]
    fn only_the_frame_just_before_is_repeated_and_never_past_the_bound() {
        let mut s = Sender::default();
        let first = s.datagram(&up(1), &[1; 10], 1000);
        assert_eq!(Uplink::parse(&first).unwrap().0.flags & FLAG_REDUNDANT, 0);
        // A gap in the sender's own seq (frames it did not send): nothing to repeat.
        let after_gap = s.datagram(&up(3), &[3; 10], 1000);
        assert_eq!(Uplink::parse(&after_gap).unwrap().0.flags & FLAG_REDUNDANT, 0);
        // Too big together: sent alone.
        let big = s.datagram(&up(4), &[4; 990], 1000);
        assert_eq!(Uplink::parse(&big).unwrap().0.flags & FLAG_REDUNDANT, 0);
        // DTX frames are not repeated.
        let mut dtx = up(5);
        dtx.flags = FLAG_DTX;
        s.datagram(&dtx, &[0; 3], 1000);
        let next = s.datagram(&up(6), &[6; 10], 1000);
        assert_eq!(Uplink::parse(&next).unwrap().0.flags & FLAG_REDUNDANT, 0);
        let with = s.datagram(&up(7), &[7; 10], 1000);
        let (h, p) = Uplink::parse(&with).unwrap();
        let (prev, own) = Redundant::split(h.flags, p).unwrap();
        assert_eq!(prev.unwrap().payload, &[6; 10]);
        assert_eq!(prev.unwrap().timestamp_offset, 960);
        assert_eq!(own, &[7; 10]);
    }

    #[test]
    fn seq_wraps() {
        let mut w = Window {
            highest: 65_534,
            had: 1,
        };
        assert!(w.take(65_535));
        assert!(w.take(1));
        assert!(w.take(0));
        assert!(!w.take(65_535));
        assert!(!w.take(1));
    }
}
