//! The pieces of WebTransport over HTTP/3 that the server's own HTTP/3 layer (the engine's
//! `gateway::wt`) shares with this crate's users: the stream types and signals, and the
//! sans-IO reader of the CONNECT stream ([`ConnectStream`]) that finds the client's
//! `CLOSE_WEBTRANSPORT_SESSION` capsule. The native client speaks WebTransport through
//! `wtransport`.
//!
//! Why the server does not use `wtransport`'s server: it takes the quinn `Connecting` and
//! gives no handle on the connection until the CONNECT has arrived, so a client that never
//! sent one could only be dropped (QUIC close code 0), not closed with `hello_timeout`; and
//! its debug logs print the request (`?token=` included).

use crate::varint;

/// The WebTransport stream signal opening a client bidirectional stream (draft-02 §4.2).
pub const WEBTRANSPORT_STREAM: u64 = 0x41;
/// Uni stream type of an HTTP/3 control stream.
pub const STREAM_CONTROL: u64 = 0x00;
/// Uni stream type of a WebTransport unidirectional stream.
pub const STREAM_WEBTRANSPORT_UNI: u64 = 0x54;
/// HTTP/3 frame type of DATA (capsules ride in them on the CONNECT stream).
const FRAME_DATA: u64 = 0x00;
/// Capsule closing a WebTransport session: u32 code, then a UTF-8 reason.
const CAPSULE_CLOSE_SESSION: u64 = 0x2843;
/// Most bytes of one frame or capsule on the CONNECT stream.
const MAX_CONTROL_FRAME: u64 = 64 * 1024;

/// What a client sends on the CONNECT stream once its session is open: HTTP/3 frames whose
/// DATA carry capsules. Fed in pieces (sans-IO), it finds the `CLOSE_WEBTRANSPORT_SESSION`
/// capsule; other frames and capsules are skipped. Bounded: a frame or a capsule larger
/// than 64 KiB is an error.
#[derive(Debug, Default)]
pub struct ConnectStream {
    /// Bytes not yet parsed into frames.
    frames: Vec<u8>,
    /// DATA payload not yet parsed into capsules.
    capsules: Vec<u8>,
}

impl ConnectStream {
    /// Takes the next bytes of the stream: `Ok(Some((code, reason)))` once the close capsule
    /// has arrived, `Err(())` when the client exceeded the bounds.
    #[allow(clippy::result_unit_err)]
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(u32, String)>, ()> {
        self.frames.extend_from_slice(bytes);
        while let Some((kind, a)) = varint::read(&self.frames) {
            let Some((len, b)) = varint::read(&self.frames[a..]) else {
                break;
            };
            if len > MAX_CONTROL_FRAME {
                return Err(());
            }
            let start = a + b;
            let end = start + len as usize;
            if self.frames.len() < end {
                break;
            }
            if kind == FRAME_DATA {
                self.capsules.extend_from_slice(&self.frames[start..end]);
            }
            self.frames.drain(..end);
        }
        // Complete capsules at the front of the buffer.
        while let Some((ctype, a)) = varint::read(&self.capsules) {
            let Some((clen, b)) = varint::read(&self.capsules[a..]) else {
                break;
            };
            let start = a + b;
            let Some(end) = start.checked_add(clen as usize).filter(|e| *e <= self.capsules.len()) else {
                break;
            };
            if ctype == CAPSULE_CLOSE_SESSION && clen >= 4 {
                let v = &self.capsules[start..end];
                let code = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                return Ok(Some((code, String::from_utf8_lossy(&v[4..]).into_owned())));
            }
            self.capsules.drain(..end);
        }
        if self.capsules.len() as u64 > MAX_CONTROL_FRAME {
            return Err(());
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close_capsule_in_data(code: u32, reason: &str) -> Vec<u8> {
        let mut capsule = Vec::new();
        varint::write(CAPSULE_CLOSE_SESSION, &mut capsule);
        varint::write(4 + reason.len() as u64, &mut capsule);
        capsule.extend_from_slice(&code.to_be_bytes());
        capsule.extend_from_slice(reason.as_bytes());
        let mut out = Vec::new();
        // A grease frame first, then the capsule split over two DATA frames.
        varint::write(0x21, &mut out);
        varint::write(2, &mut out);
        out.extend_from_slice(b"zz");
        let (x, y) = capsule.split_at(3);
        for part in [x, y] {
            varint::write(FRAME_DATA, &mut out);
            varint::write(part.len() as u64, &mut out);
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn close_capsule_is_found_whatever_the_pieces() {
        let bytes = close_capsule_in_data(4001, "bye");
        for cut in 0..bytes.len() {
            let mut r = ConnectStream::default();
            let first = r.push(&bytes[..cut]).unwrap();
            assert_eq!(first, None, "cut {cut}");
            assert_eq!(r.push(&bytes[cut..]).unwrap(), Some((4001, "bye".into())), "cut {cut}");
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut out = Vec::new();
        varint::write(FRAME_DATA, &mut out);
        varint::write(MAX_CONTROL_FRAME + 1, &mut out);
        assert_eq!(ConnectStream::default().push(&out), Err(()));
    }
}
