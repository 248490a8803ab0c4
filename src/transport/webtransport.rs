//! The server side of the WebTransport handshake over HTTP/3 (ALPN `h3`), on a quinn
//! connection we hold from the start — so a client that never completes it can be closed
//! with `hello_timeout` like any other, and nothing of the request is logged. `wtransport-
//! proto` (sans-IO: frames, SETTINGS, QPACK without a dynamic table) does the encoding; the
//! session that follows is [`quaver_proto::session::H3Session`].
//!
//! What we send and expect is in PROTOCOL.md §1: our SETTINGS on a control stream, then the
//! client's extended CONNECT on its first bidirectional stream, answered `200`, `403` or
//! `404` with a HEADERS frame.

use quaver_proto::session::H3Session;
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

/// Why a connection did not become a WebTransport request.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection or a stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The client sent something that is not a WebTransport CONNECT.
    #[error("not a WebTransport request: {0}")]
    Malformed(String),
}

fn conn_err(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Connection(e.to_string())
}

/// A CONNECT request waiting for its answer.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The parsed request (path, origin, headers).
    pub request: SessionRequest,
    control: quinn::SendStream,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl ConnectRequest {
    /// The request's `:path` (with its query).
    pub fn path(&self) -> &str {
        self.request.path()
    }

    /// The `origin` header, if any.
    pub fn origin(&self) -> Option<&str> {
        self.request.origin()
    }

    /// Answers `200` and starts the session.
    pub async fn accept(mut self, conn: quinn::Connection) -> Result<H3Session, HandshakeError> {
        write_headers(&mut self.send, SessionResponse::ok()).await?;
        Ok(H3Session::start(conn, self.control, (self.send, self.recv)))
    }

    /// Refuses with `403`.
    pub async fn forbidden(self, conn: &quinn::Connection) {
        self.refuse(conn, SessionResponse::forbidden()).await;
    }

    /// Refuses with `404`.
    pub async fn not_found(self, conn: &quinn::Connection) {
        self.refuse(conn, SessionResponse::not_found()).await;
    }

    /// Answers with an error status and lets the client read it (up to 1 s) before the
    /// connection goes.
    async fn refuse(mut self, conn: &quinn::Connection, response: SessionResponse) {
        if write_headers(&mut self.send, response).await.is_ok() {
            let _ = self.send.finish();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                let _ = self.send.stopped().await;
                conn.closed().await;
            })
            .await;
        }
    }
}

async fn write_headers(s: &mut quinn::SendStream, response: SessionResponse) -> Result<(), HandshakeError> {
    s.write_all(&response_bytes(response)).await.map_err(conn_err)
}

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
pub fn parse_request(buf: &[u8]) -> Result<Option<SessionRequest>, HandshakeError> {
    match request_in(buf)? {
        None if buf.len() > MAX_BEFORE_REQUEST => Err(HandshakeError::Malformed(format!(
            "{} bytes without a request",
            buf.len()
        ))),
        r => Ok(r),
    }
}

fn request_in(buf: &[u8]) -> Result<Option<SessionRequest>, HandshakeError> {
    let mut at = 0;
    loop {
        let Some((kind, a)) = varint::read(&buf[at..]) else {
            return Ok(None);
        };
        if kind == quaver_proto::session::h3::WEBTRANSPORT_STREAM {
            return Err(HandshakeError::Malformed(
                "a WebTransport stream before any session".into(),
            ));
        }
        let Some((len, b)) = varint::read(&buf[at + a..]) else {
            return Ok(None);
        };
        if len > MAX_HEADERS {
            return Err(HandshakeError::Malformed(format!(
                "a {len}-byte frame before the request"
            )));
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
        let headers = Headers::with_frame(&frame).map_err(|e| HandshakeError::Malformed(format!("{e:?}")))?;
        return SessionRequest::try_from(headers)
            .map(Some)
            .map_err(|e| HandshakeError::Malformed(format!("{e:?}")));
    }
}

/// Sends our SETTINGS and reads the client's CONNECT request from its first bidirectional
/// stream. The caller bounds it in time.
pub async fn accept(conn: &quinn::Connection) -> Result<ConnectRequest, HandshakeError> {
    let mut control = conn.open_uni().await.map_err(conn_err)?;
    control.write_all(&control_stream_bytes()).await.map_err(conn_err)?;
    let (send, mut recv) = conn.accept_bi().await.map_err(conn_err)?;
    let mut buf = Vec::new();
    loop {
        if let Some(request) = parse_request(&buf)? {
            return Ok(ConnectRequest {
                request,
                control,
                send,
                recv,
            });
        }
        match recv.read_chunk(MAX_HEADERS as usize, true).await.map_err(conn_err)? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return Err(HandshakeError::Malformed("stream ended before the request".into())),
        }
    }
}
