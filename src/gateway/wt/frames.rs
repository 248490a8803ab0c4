//! The bytes of WebTransport over HTTP/3 (ALPN `h3`) as the server speaks it — the one place
//! they are written and parsed (PROTOCOL.md §1): our SETTINGS on a control stream, the
//! client's extended CONNECT on its first bidirectional stream and our answer (`200`, `403`
//! or `404` in a HEADERS frame), the stream types and signals, and the capsules on the
//! CONNECT stream ([`ConnectStream`]). `wtransport-proto` (sans-IO: frames, SETTINGS, QPACK
//! without a dynamic table) encodes the SETTINGS and the HEADERS; the state machine over them
//! is [`super::H3`], and `gateway::wire` moves the bytes, so a client that never completes the
//! handshake is closed with `hello_timeout` like any other, and nothing of the request is
//! logged.
//!
//! Why the server does not use `wtransport`'s server (the native client does use its
//! client): it takes the quinn `Connecting` and gives no handle on the connection until the
//! CONNECT has arrived, so a client that never sent one could only be dropped (QUIC close
//! code 0), not closed with `hello_timeout`; and its debug logs print the request (`?token=`
//! included).

use quaver_proto::varint;
use wtransport_proto::frame::Frame;
use wtransport_proto::headers::Headers;
use wtransport_proto::session::{SessionRequest, SessionResponse};
use wtransport_proto::settings::Settings;
use wtransport_proto::varint::VarInt;

/// The WebTransport stream signal opening a client bidirectional stream (draft-02 §4.2).
pub(super) const WEBTRANSPORT_STREAM: u64 = 0x41;
/// Uni stream type of an HTTP/3 control stream.
pub(super) const STREAM_CONTROL: u64 = 0x00;
/// Uni stream type of a WebTransport unidirectional stream.
pub(super) const STREAM_WEBTRANSPORT_UNI: u64 = 0x54;
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
pub(super) struct ConnectStream {
    /// Bytes not yet parsed into frames.
    frames: Vec<u8>,
    /// DATA payload not yet parsed into capsules.
    capsules: Vec<u8>,
}

impl ConnectStream {
    /// Takes the next bytes of the stream: `Ok(Some((code, reason)))` once the close capsule
    /// has arrived, `Err(())` when the client exceeded the bounds.
    #[allow(clippy::result_unit_err)]
    pub(super) fn push(&mut self, bytes: &[u8]) -> Result<Option<(u32, String)>, ()> {
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

/// HTTP/3 frame type HEADERS.
const FRAME_HEADERS: u64 = 0x01;
/// Largest HEADERS frame accepted for the CONNECT (a JWT in the URL is ~1 KB).
const MAX_HEADERS: u64 = 16 * 1024;
/// Most bytes (unknown frames included) a client may send before its request is complete.
const MAX_BEFORE_REQUEST: usize = 4 * MAX_HEADERS as usize;

/// Why the start of a stream is not a WebTransport CONNECT request.
#[derive(Debug, thiserror::Error)]
#[error("not a WebTransport request: {0}")]
pub(super) struct Malformed(pub(super) String);

/// A response's HEADERS frame.
pub fn response_bytes(response: SessionResponse) -> Vec<u8> {
    let mut buf = Vec::new();
    // A status and no other header: far below any frame limit.
    let _ = response.headers().generate_frame().write(&mut buf);
    buf
}

/// Our HTTP/3 control stream's opening: its type, then SETTINGS — no QPACK dynamic table,
/// extended CONNECT, WebTransport (draft-02, one session), HTTP/3 datagrams.
pub fn control_stream_bytes() -> Vec<u8> {
    let settings = Settings::builder()
        .qpack_max_table_capacity(VarInt::from_u32(0))
        .qpack_blocked_streams(VarInt::from_u32(0))
        .enable_connect_protocol()
        .enable_webtransport()
        .enable_h3_datagrams()
        .webtransport_max_sessions(VarInt::from_u32(1))
        .build();
    let mut buf = Vec::new();
    varint::write(STREAM_CONTROL, &mut buf);
    // A handful of settings: far below any frame limit.
    let _ = settings.generate_frame().write(&mut buf);
    buf
}

/// The CONNECT request at the start of `buf` (the first bytes of the client's first
/// bidirectional stream): `Ok(None)` until its HEADERS frame is complete. Reserved
/// ("grease") and unknown frames before it are skipped (RFC 9114 §9).
pub(super) fn parse_request(buf: &[u8]) -> Result<Option<SessionRequest>, Malformed> {
    match request_in(buf)? {
        None if buf.len() > MAX_BEFORE_REQUEST => Err(Malformed(format!("{} bytes without a request", buf.len()))),
        r => Ok(r),
    }
}

fn request_in(buf: &[u8]) -> Result<Option<SessionRequest>, Malformed> {
    let mut at = 0;
    loop {
        let Some((kind, a)) = varint::read(&buf[at..]) else {
            return Ok(None);
        };
        if kind == WEBTRANSPORT_STREAM {
            return Err(Malformed("a WebTransport stream before any session".into()));
        }
        let Some((len, b)) = varint::read(&buf[at + a..]) else {
            return Ok(None);
        };
        if len > MAX_HEADERS {
            return Err(Malformed(format!("a {len}-byte frame before the request")));
        }
        let start = at + a + b;
        let end = start + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        at = end;
        if kind != FRAME_HEADERS {
            continue;
        }
        let frame = Frame::new_headers(buf[start..end].to_vec().into());
        let headers = Headers::with_frame(&frame).map_err(|e| Malformed(format!("{e:?}")))?;
        return SessionRequest::try_from(headers)
            .map(Some)
            .map_err(|e| Malformed(format!("{e:?}")));
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
