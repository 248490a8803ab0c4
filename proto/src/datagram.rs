//! Voice datagrams: a fixed big-endian header followed by an opaque (Opus, possibly
//! end-to-end encrypted) payload. No bincode here: the layout is fixed so the SFU can read
//! and rewrite headers without decoding anything else.
//!
//! Uplink (client → server), 8 bytes of header:
//! `flags u8 | level u8 | seq u16 | timestamp u32 | payload…`
//! Downlink (server → client), 10 bytes of header:
//! `flags u8 | level u8 | slot u16 | seq u16 | timestamp u32 | payload…`
//!
//! With [`FLAG_REDUNDANT`] the payload starts with a copy of the speaker's previous frame
//! (`seq − 1`): `timestamp_offset u16 | length u16 | previous payload | payload`, so one lost
//! datagram is repaired by the next ([`Redundant`]).

/// Version bits (the top two bits of `flags`); this is version 0.
pub const VERSION_MASK: u8 = 0b1100_0000;
/// First frame of a talkspurt (after silence): forward at once, do not clip it.
pub const FLAG_TALKSPURT_START: u8 = 0b0000_0001;
/// Discontinuous-transmission / comfort-noise frame: carries no speech.
pub const FLAG_DTX: u8 = 0b0000_0010;
/// The payload starts with a redundancy block: the previous frame again ([`Redundant`]).
pub const FLAG_REDUNDANT: u8 = 0b0000_0100;
/// Size of a redundancy block's own header (`timestamp_offset u16 | length u16`).
pub const REDUNDANCY_HEADER: usize = 4;
/// Uplink header size.
pub const UPLINK_HEADER: usize = 8;
/// Downlink header size.
pub const DOWNLINK_HEADER: usize = 10;
/// Voice-activity bit of the level byte (RFC 6464).
pub const LEVEL_VAD: u8 = 0x80;

/// Audio level as in RFC 6464: `-dBov` in 0..=127 (0 is loudest, 127 silence) plus a
/// voice-activity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel(pub u8);

impl AudioLevel {
    /// Level from a `-dBov` value (clamped to 0..=127) and the voice-activity flag.
    pub fn new(neg_dbov: u8, voice: bool) -> Self {
        Self(neg_dbov.min(127) | if voice { LEVEL_VAD } else { 0 })
    }
    /// `-dBov`, 0 (loudest) ..= 127 (silence).
    pub fn neg_dbov(self) -> u8 {
        self.0 & 0x7f
    }
    /// The voice-activity bit.
    pub fn voice(self) -> bool {
        self.0 & LEVEL_VAD != 0
    }
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Shorter than its header.
    #[error("datagram shorter than its header")]
    Truncated,
    /// Version bits other than 0.
    #[error("unknown datagram version")]
    Version,
    /// A redundancy block longer than the payload it starts.
    #[error("redundancy block past the end of the datagram")]
    Redundancy,
}

/// The copy of a speaker's previous frame (`seq − 1`) a datagram with [`FLAG_REDUNDANT`]
/// carries before its own payload, the way RFC 2198 carries redundant audio in RTP: a
/// listener that lost the previous datagram plays this copy instead of concealing a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redundant<'a> {
    /// How far the previous frame's media timestamp lies before this one's (48 kHz units:
    /// 960 for back-to-back 20 ms frames).
    pub timestamp_offset: u16,
    /// The previous frame's payload.
    pub payload: &'a [u8],
}

impl<'a> Redundant<'a> {
    /// Splits a payload into the previous frame's copy (when `flags` has
    /// [`FLAG_REDUNDANT`]) and the frame's own payload.
    pub fn split(flags: u8, payload: &'a [u8]) -> Result<(Option<Redundant<'a>>, &'a [u8]), DatagramError> {
        if flags & FLAG_REDUNDANT == 0 {
            return Ok((None, payload));
        }
        let [o0, o1, l0, l1, rest @ ..] = payload else {
            return Err(DatagramError::Redundancy);
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if rest.len() < len {
            return Err(DatagramError::Redundancy);
        }
        let (previous, own) = rest.split_at(len);
        let block = Redundant {
            timestamp_offset: u16::from_be_bytes([*o0, *o1]),
            payload: previous,
        };
        Ok((Some(block), own))
    }

    /// Appends the block (its header and the previous payload) to `out`; the frame's own
    /// payload follows it. The header's flags must then carry [`FLAG_REDUNDANT`].
    pub fn write(&self, out: &mut Vec<u8>) {
        let len = u16::try_from(self.payload.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&self.timestamp_offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload[..usize::from(len)]);
    }
}

/// Header of an uplink (client → server) voice frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uplink {
    /// Flags (`FLAG_*`), version bits zero.
    pub flags: u8,
    /// Audio level of this frame.
    pub level: AudioLevel,
    /// Per-sender sequence number (wraps).
    pub seq: u16,
    /// RTP-style media timestamp (48 kHz clock for Opus).
    pub timestamp: u32,
}

impl Uplink {
    /// Parses a datagram into header and payload.
    pub fn parse(d: &[u8]) -> Result<(Uplink, &[u8]), DatagramError> {
        if d.len() < UPLINK_HEADER {
            return Err(DatagramError::Truncated);
        }
        if d[0] & VERSION_MASK != 0 {
            return Err(DatagramError::Version);
        }
        let h = Uplink {
            flags: d[0],
            level: AudioLevel(d[1]),
            seq: u16::from_be_bytes([d[2], d[3]]),
            timestamp: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        };
        Ok((h, &d[UPLINK_HEADER..]))
    }

    /// Appends the header and `payload` to `out`.
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.push(self.flags & !VERSION_MASK);
        out.push(self.level.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Appends the header, a copy of the previous frame if there is one (setting or
    /// clearing [`FLAG_REDUNDANT`] to match), and `payload` to `out`.
    pub fn write_with(&self, previous: Option<Redundant<'_>>, payload: &[u8], out: &mut Vec<u8>) {
        let h = Uplink {
            flags: match previous {
                Some(_) => self.flags | FLAG_REDUNDANT,
                None => self.flags & !FLAG_REDUNDANT,
            },
            ..*self
        };
        h.write(&[], out);
        if let Some(p) = previous {
            p.write(out);
        }
        out.extend_from_slice(payload);
    }
}

/// Header of a downlink (server → client) voice frame: the uplink header plus the slot of
/// the speaker (the slot → user map is sent on the voice lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downlink {
    /// Flags as received from the speaker.
    pub flags: u8,
    /// Audio level as received.
    pub level: AudioLevel,
    /// The speaker's slot in the channel.
    pub slot: u16,
    /// Speaker's sequence number.
    pub seq: u16,
    /// Speaker's media timestamp.
    pub timestamp: u32,
}

impl Downlink {
    /// Parses a downlink datagram into header and payload.
    pub fn parse(d: &[u8]) -> Result<(Downlink, &[u8]), DatagramError> {
        if d.len() < DOWNLINK_HEADER {
            return Err(DatagramError::Truncated);
        }
        if d[0] & VERSION_MASK != 0 {
            return Err(DatagramError::Version);
        }
        let h = Downlink {
            flags: d[0],
            level: AudioLevel(d[1]),
            slot: u16::from_be_bytes([d[2], d[3]]),
            seq: u16::from_be_bytes([d[4], d[5]]),
            timestamp: u32::from_be_bytes([d[6], d[7], d[8], d[9]]),
        };
        Ok((h, &d[DOWNLINK_HEADER..]))
    }

    /// The downlink header for an uplink frame from `slot`.
    pub fn from_uplink(up: &Uplink, slot: u16) -> Self {
        Self {
            flags: up.flags,
            level: up.level,
            slot,
            seq: up.seq,
            timestamp: up.timestamp,
        }
    }

    /// The 10 header bytes.
    pub fn to_bytes(&self) -> [u8; DOWNLINK_HEADER] {
        let s = self.slot.to_be_bytes();
        let q = self.seq.to_be_bytes();
        let t = self.timestamp.to_be_bytes();
        [
            self.flags & !VERSION_MASK,
            self.level.0,
            s[0],
            s[1],
            q[0],
            q[1],
            t[0],
            t[1],
            t[2],
            t[3],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_layout_is_fixed() {
        let h = Uplink {
            flags: FLAG_TALKSPURT_START,
            level: AudioLevel::new(30, true),
            seq: 0x0102,
            timestamp: 0x0a0b0c0d,
        };
        let mut out = Vec::new();
        h.write(b"opus", &mut out);
        assert_eq!(
            out,
            [0x01, 0x9e, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d, b'o', b'p', b'u', b's']
        );
        let (back, payload) = Uplink::parse(&out).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, b"opus");
        let down = Downlink::from_uplink(&h, 7);
        let bytes = down.to_bytes();
        assert_eq!(bytes, [0x01, 0x9e, 0x00, 0x07, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(Downlink::parse(&bytes).unwrap().0, down);
    }

    #[test]
    fn a_redundant_frame_carries_the_previous_one_first() {
        let h = Uplink {
            flags: FLAG_TALKSPURT_START,
            level: AudioLevel::new(30, true),
            seq: 9,
            timestamp: 9 * 960,
        };
        let prev = Redundant {
            timestamp_offset: 960,
            payload: b"prev",
        };
        let mut out = Vec::new();
        h.write_with(Some(prev), b"own", &mut out);
        assert_eq!(
            out,
            [
                0x05, 0x9e, 0x00, 0x09, 0x00, 0x00, 0x21, 0xc0, 0x03, 0xc0, 0x00, 0x04, b'p', b'r', b'e', b'v', b'o',
                b'w', b'n'
            ]
        );
        let (back, payload) = Uplink::parse(&out).unwrap();
        assert_eq!(back.flags, FLAG_TALKSPURT_START | FLAG_REDUNDANT);
        assert_eq!(Redundant::split(back.flags, payload), Ok((Some(prev), &b"own"[..])));
        // Without the flag the payload is the frame's own, whatever it looks like.
        assert_eq!(Redundant::split(0, payload), Ok((None, payload)));
        // write_with(None) clears a stale flag.
        let mut plain = Vec::new();
        back.write_with(None, b"own", &mut plain);
        assert_eq!(Uplink::parse(&plain).unwrap().0.flags, FLAG_TALKSPURT_START);
        // A block that claims more than the datagram holds, or a header cut short.
        for bad in [&[0u8, 0, 0, 5, 1, 2][..], &[0, 0, 0][..], &[][..]] {
            assert_eq!(Redundant::split(FLAG_REDUNDANT, bad), Err(DatagramError::Redundancy));
        }
        // An empty copy is allowed (nothing to repair with, nothing wrong).
        assert_eq!(
            Redundant::split(FLAG_REDUNDANT, &[0, 0, 0, 0, 7]),
            Ok((
                Some(Redundant {
                    timestamp_offset: 0,
                    payload: &[]
                }),
                &[7u8][..]
            ))
        );
    }

    #[test]
    fn short_or_future_datagrams_are_rejected() {
        for n in 0..UPLINK_HEADER {
            assert_eq!(Uplink::parse(&vec![0; n]), Err(DatagramError::Truncated));
        }
        assert_eq!(Uplink::parse(&[0x40, 0, 0, 0, 0, 0, 0, 0]), Err(DatagramError::Version));
        assert_eq!(Downlink::parse(&[0; 9]), Err(DatagramError::Truncated));
    }
}
