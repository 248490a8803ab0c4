//! QUIC variable-length integers (RFC 9000 §16): the two high bits of the first byte give
//! the length (1, 2, 4 or 8 bytes), the rest is the value, big-endian. Values < 2^62.

/// Largest encodable value.
pub const MAX: u64 = (1 << 62) - 1;

/// Bytes needed to encode `v` (`v` must be ≤ [`MAX`]).
pub fn len(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` to `out`. Values above [`MAX`] are a caller bug; they are clamped to `MAX`
/// rather than producing bytes that would decode to something else.
pub fn write(v: u64, out: &mut Vec<u8>) {
    let (bytes, n) = encode(v);
    out.extend_from_slice(&bytes[..n]);
}

/// `v`'s encoding: the first `n` bytes of the array (clamped to [`MAX`] as in [`write`]).
pub fn encode(v: u64) -> ([u8; 8], usize) {
    let v = v.min(MAX);
    let mut b = [0u8; 8];
    let n = len(v);
    match n {
        1 => b[0] = v as u8,
        2 => b[..2].copy_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => b[..4].copy_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => b.copy_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
    (b, n)
}

/// Length of the varint that starts with byte `first` (1, 2, 4 or 8).
pub fn len_of_first(first: u8) -> usize {
    1usize << (first >> 6)
}

/// Reads a varint from the front of `buf`: `Some((value, bytes_used))`, or `None` when
/// `buf` does not yet hold the whole integer.
pub fn read(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let n = len_of_first(first);
    if buf.len() < n {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..n] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 appendix A.1 sample values.
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(read(bytes), Some((value, bytes.len())));
            let mut out = Vec::new();
            write(value, &mut out);
            assert_eq!(out, bytes);
        }
        // A non-minimal encoding still decodes (RFC allows it).
        assert_eq!(read(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn boundaries_round_trip() {
        for v in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut out = Vec::new();
            write(v, &mut out);
            assert_eq!(out.len(), len(v));
            assert_eq!(read(&out), Some((v, out.len())));
            assert_eq!(read(&out[..out.len() - 1]), None);
        }
    }
}
