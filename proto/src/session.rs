//! One session type over both transports, for the native client: a raw QUIC connection
//! (ALPN `quaver/1`) or a WebTransport session (ALPN `h3`, through `wtransport`). The client
//! is written against [`Session`], [`SendStream`] and [`RecvStream`]; the server serves both
//! from its engine (sans-IO; its HTTP/3 is the server's own, `gateway::wt`).
//!
//! An enum rather than a trait object: there are exactly three transports (the third, the
//! WebSocket framing of PROTOCOL.md §11, in [`ws`]), the calls are static, and the streams
//! stay concrete types that implement tokio's I/O traits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod ws;

/// Which transport a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Raw QUIC, ALPN `quaver/1`.
    Quic,
    /// WebTransport over HTTP/3.
    WebTransport,
    /// The WebSocket framing over TCP (PROTOCOL.md §11), for networks without UDP.
    WebSocket,
}

impl Transport {
    /// Stable lowercase name (metrics, logs).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Transport failure of a session or stream.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection is gone (closed by either side, timed out, reset).
    #[error("connection closed: {0}")]
    Closed(String),
    /// A datagram could not be sent.
    #[error("datagram: {0}")]
    Datagram(String),
}

/// An established session on either transport. Cloning is cheap (a handle).
#[derive(Clone, Debug)]
pub enum Session {
    /// Raw QUIC.
    Quic(quinn::Connection),
    /// WebTransport through `wtransport`.
    WebTransport(wtransport::Connection),
    /// The WebSocket framing over TCP.
    WebSocket(ws::WsConnection),
}

impl Session {
    /// Which transport this is.
    pub fn transport(&self) -> Transport {
        match self {
            Session::Quic(_) => Transport::Quic,
            Session::WebTransport(_) => Transport::WebTransport,
            Session::WebSocket(_) => Transport::WebSocket,
        }
    }

    /// The underlying QUIC connection (none over WebSocket).
    fn quic(&self) -> Option<&quinn::Connection> {
        match self {
            Session::Quic(c) => Some(c),
            Session::WebTransport(c) => Some(c.quic_connection()),
            Session::WebSocket(_) => None,
        }
    }

    /// Accepts the next bidirectional stream opened by the peer.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), SessionError> {
        match self {
            Session::Quic(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (SendStream::Quic(s), RecvStream::Quic(r)))
                .map_err(|e| SessionError::Closed(e.to_string())),
            Session::WebTransport(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (SendStream::Wt(s), RecvStream::Wt(r)))
                .map_err(|e| SessionError::Closed(e.to_string())),
            Session::WebSocket(_) => Err(SessionError::Closed("the server opens no streams".into())),
        }
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), SessionError> {
        match self {
            Session::Quic(c) => c
                .open_bi()
                .await
                .map(|(s, r)| (SendStream::Quic(s), RecvStream::Quic(r)))
                .map_err(|e| SessionError::Closed(e.to_string())),
            Session::WebTransport(c) => {
                let opening = c.open_bi().await.map_err(|e| SessionError::Closed(e.to_string()))?;
                opening
                    .await
                    .map(|(s, r)| (SendStream::Wt(s), RecvStream::Wt(r)))
                    .map_err(|e| SessionError::Closed(e.to_string()))
            }
            Session::WebSocket(c) => {
                let (s, r) = c.open_bi();
                Ok((SendStream::Ws(s), RecvStream::Ws(r)))
            }
        }
    }

    /// Sends an unreliable datagram.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SessionError> {
        match self {
            Session::Quic(c) => c.send_datagram(data).map_err(|e| SessionError::Datagram(e.to_string())),
            Session::WebTransport(c) => c
                .send_datagram(&data)
                .map_err(|e| SessionError::Datagram(e.to_string())),
            Session::WebSocket(c) => c.send_datagram(data).map_err(|e| SessionError::Datagram(e.to_string())),
        }
    }

    /// Receives the next datagram.
    pub async fn read_datagram(&self) -> Result<Bytes, SessionError> {
        match self {
            Session::Quic(c) => c.read_datagram().await.map_err(|e| SessionError::Closed(e.to_string())),
            Session::WebTransport(c) => c
                .receive_datagram()
                .await
                .map(|d| d.payload())
                .map_err(|e| SessionError::Closed(e.to_string())),
            Session::WebSocket(c) => c
                .read_datagram()
                .await
                .ok_or_else(|| SessionError::Closed("the WebSocket closed".into())),
        }
    }

    /// Largest datagram payload the peer accepts now (0 if none). For WebTransport this
    /// already accounts for the session-id prefix.
    pub fn max_datagram_size(&self) -> usize {
        match self {
            Session::Quic(c) => c.max_datagram_size().unwrap_or(0),
            Session::WebTransport(c) => c.max_datagram_size().unwrap_or(0),
            Session::WebSocket(_) => ws::MAX_DATAGRAM,
        }
    }

    /// Closes the connection at once with an application close code.
    pub fn close(&self, code: u32, reason: &str) {
        match self {
            Session::WebSocket(c) => c.close(code, reason),
            _ => {
                if let Some(q) = self.quic() {
                    q.close(quinn::VarInt::from_u32(code), reason.as_bytes());
                }
            }
        }
    }

    /// Resolves when the connection is closed for any reason.
    pub async fn closed(&self) {
        match self {
            Session::WebSocket(c) => c.closed().await,
            _ => {
                if let Some(q) = self.quic() {
                    q.closed().await;
                }
            }
        }
    }

    /// If closed by the peer with an application code: `(code, reason)`.
    pub fn close_reason(&self) -> Option<(u32, String)> {
        if let Session::WebSocket(c) = self {
            return c.close_reason();
        }
        match self.quic()?.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(a) => Some((
                u32::try_from(a.error_code.into_inner()).unwrap_or(u32::MAX),
                String::from_utf8_lossy(&a.reason).into_owned(),
            )),
            _ => None,
        }
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Session::WebSocket(c) => c.remote_address(),
            _ => self
                .quic()
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |q| q.remote_address()),
        }
    }

    /// Current smoothed round-trip time (QUIC's estimate; zero over WebSocket, where TCP
    /// keeps it to itself).
    pub fn rtt(&self) -> std::time::Duration {
        self.quic().map_or(std::time::Duration::ZERO, |q| q.rtt())
    }

    /// The QUIC connection's packet and frame counters (all zero over WebSocket).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.quic().map(|q| q.stats()).unwrap_or_default()
    }
}

/// The sending half of a stream on either transport.
#[derive(Debug)]
pub enum SendStream {
    /// Raw QUIC.
    Quic(quinn::SendStream),
    /// WebTransport.
    Wt(wtransport::SendStream),
    /// The WebSocket framing.
    Ws(ws::WsSendStream),
}

impl SendStream {
    /// The QUIC stream underneath (WebTransport's stream header is already written).
    fn quic_mut(&mut self) -> Option<&mut quinn::SendStream> {
        match self {
            SendStream::Quic(s) => Some(s),
            SendStream::Wt(s) => Some(s.quic_stream_mut()),
            SendStream::Ws(_) => None,
        }
    }

    /// Ends the stream gracefully (data already written is still delivered).
    pub fn finish(&mut self) {
        match self {
            SendStream::Ws(s) => s.finish(),
            _ => {
                if let Some(q) = self.quic_mut() {
                    let _ = q.finish();
                }
            }
        }
    }

    /// Waits until the peer has received everything (after [`SendStream::finish`]) or
    /// stopped the stream (over WebSocket: at once — TCP delivers in order).
    pub async fn flushed(&mut self) {
        if let Some(q) = self.quic_mut() {
            let _ = q.stopped().await;
        }
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: u32) {
        match self {
            SendStream::Ws(s) => s.reset(code),
            _ => {
                if let Some(q) = self.quic_mut() {
                    let _ = q.reset(quinn::VarInt::from_u32(code));
                }
            }
        }
    }

    /// Sets the stream's send priority (higher goes first; over WebSocket there is one
    /// queue, in order).
    pub fn set_priority(&mut self, p: i32) {
        if let Some(q) = self.quic_mut() {
            let _ = q.set_priority(p);
        }
    }
}

/// The receiving half of a stream on either transport.
#[derive(Debug)]
pub enum RecvStream {
    /// Raw QUIC.
    Quic(quinn::RecvStream),
    /// WebTransport.
    Wt(wtransport::RecvStream),
    /// The WebSocket framing.
    Ws(ws::WsRecvStream),
}

impl RecvStream {
    /// Asks the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        let s = match self {
            RecvStream::Quic(s) => s,
            RecvStream::Wt(s) => s.quic_stream_mut(),
            RecvStream::Ws(s) => return s.stop(code),
        };
        let _ = s.stop(quinn::VarInt::from_u32(code));
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RecvStream::Quic(s) => Pin::new(s).poll_read(cx, buf),
            RecvStream::Wt(s) => Pin::new(s).poll_read(cx, buf),
            RecvStream::Ws(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendStream::Wt(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendStream::Ws(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendStream::Wt(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendStream::Ws(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendStream::Wt(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendStream::Ws(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}
