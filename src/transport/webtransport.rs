//! The bytes of the server side of the WebTransport handshake over HTTP/3 (ALPN `h3`):
//! our SETTINGS, the client's extended CONNECT, our answer. `wtransport-proto` (sans-IO:
//! frames, SETTINGS, QPACK without a dynamic table) does the encoding; the engine's HTTP/3
//! layer (`gateway::wt`) moves them, so a client that never completes the handshake is
//! closed with `hello_timeout` like any other, and nothing of the request is logged.
//!
//! What we send and expect is in PROTOCOL.md §1: our SETTINGS on a control stream, then the
//! client's extended CONNECT on its first bidirectional stream, answered `200`, `403` or
//! `404` with a HEADERS frame.

use quaver_proto::varint;
use wtransport_proto::frame::Frame;
use wtransport_proto::headers::Headers;
use wtransport_proto::session::{SessionRequest, SessionResponse};
use wtransport_proto::settings::Settings;
use wtransport_proto::varint::VarInt;

/// HTTP/3 frame type HEADERS.
const FRAME_HEADERS: u64 = 0x01;
/// Largest HEADERS frame accepted for the CONNECT (a JWT in the URL is ~1 KB).
const MAX_HEADERS: u64 = 16 * 1024;
/// Most bytes (unknown frames included) a client may send before its request is complete.
const MAX_BEFORE_REQUEST: usize = 4 * MAX_HEADERS as usize;

/// Why the start of a stream is not a WebTransport CONNECT request.
#[derive(Debug, thiserror::Error)]
#[error("not a WebTransport request: {0}")]
pub struct Malformed(pub String);

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
    varint::write(quaver_proto::session::h3::STREAM_CONTROL, &mut buf);
    // A handful of settings: far below any frame limit.
    let _ = settings.generate_frame().write(&mut buf);
    buf
}

/// The CONNECT request at the start of `buf` (the first bytes of the client's first
/// bidirectional stream): `Ok(None)` until its HEADERS frame is complete. Reserved
/// ("grease") and unknown frames before it are skipped (RFC 9114 §9).
pub fn parse_request(buf: &[u8]) -> Result<Option<SessionRequest>, Malformed> {
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
        if kind == quaver_proto::session::h3::WEBTRANSPORT_STREAM {
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
