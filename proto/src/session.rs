//! One session type over both transports, for the native client: a raw QUIC connection
//! (ALPN `quaver/1`) or a WebTransport session (ALPN `h3`, through `wtransport`). The client
//! is written against [`Session`], [`SendStream`] and [`RecvStream`]; the server serves both
//! from its engine (sans-IO, with the shared pieces in [`h3`]).
//!
//! An enum rather than a trait object: there are exactly two transports, the calls are
//! static, and the streams stay concrete types that implement tokio's I/O traits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod h3;

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
}

impl Session {
    /// Which transport this is.
    pub fn transport(&self) -> Transport {
        match self {
            Session::Quic(_) => Transport::Quic,
            Session::WebTransport(_) => Transport::WebTransport,
        }
    }

    /// The underlying QUIC connection (both transports have one).
    pub fn quic(&self) -> &quinn::Connection {
        match self {
            Session::Quic(c) => c,
            Session::WebTransport(c) => c.quic_connection(),
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
        }
    }

    /// Sends an unreliable datagram.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SessionError> {
        match self {
            Session::Quic(c) => c.send_datagram(data).map_err(|e| SessionError::Datagram(e.to_string())),
            Session::WebTransport(c) => c
                .send_datagram(&data)
                .map_err(|e| SessionError::Datagram(e.to_string())),
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
        }
    }

    /// Largest datagram payload the peer accepts now (0 if none). For WebTransport this
    /// already accounts for the session-id prefix.
    pub fn max_datagram_size(&self) -> usize {
        match self {
            Session::Quic(c) => c.max_datagram_size().unwrap_or(0),
            Session::WebTransport(c) => c.max_datagram_size().unwrap_or(0),
        }
    }

    /// Closes the connection at once with an application close code.
    pub fn close(&self, code: u32, reason: &str) {
        self.quic().close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }

    /// Resolves when the connection is closed for any reason.
    pub async fn closed(&self) {
        self.quic().closed().await;
    }

    /// If closed by the peer with an application code: `(code, reason)`.
    pub fn close_reason(&self) -> Option<(u32, String)> {
        match self.quic().close_reason()? {
            quinn::ConnectionError::ApplicationClosed(a) => Some((
                u32::try_from(a.error_code.into_inner()).unwrap_or(u32::MAX),
                String::from_utf8_lossy(&a.reason).into_owned(),
            )),
            _ => None,
        }
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.quic().remote_address()
    }

    /// Current smoothed round-trip time.
    pub fn rtt(&self) -> std::time::Duration {
        self.quic().rtt()
    }

    /// The QUIC connection's packet and frame counters.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.quic().stats()
    }
}

/// The sending half of a stream on either transport.
#[derive(Debug)]
pub enum SendStream {
    /// Raw QUIC.
    Quic(quinn::SendStream),
    /// WebTransport.
    Wt(wtransport::SendStream),
}

impl SendStream {
    /// The QUIC stream underneath (WebTransport's stream header is already written).
    pub fn quic_mut(&mut self) -> &mut quinn::SendStream {
        match self {
            SendStream::Quic(s) => s,
            SendStream::Wt(s) => s.quic_stream_mut(),
        }
    }

    /// Ends the stream gracefully (data already written is still delivered).
    pub fn finish(&mut self) {
        let _ = self.quic_mut().finish();
    }

    /// Waits until the peer has received everything (after [`SendStream::finish`]) or
    /// stopped the stream.
    pub async fn flushed(&mut self) {
        let _ = self.quic_mut().stopped().await;
    }

    /// Abandons the stream with an error code.
    pub fn reset(&mut self, code: u32) {
        let _ = self.quic_mut().reset(quinn::VarInt::from_u32(code));
    }

    /// Sets the stream's send priority (higher goes first).
    pub fn set_priority(&mut self, p: i32) {
        let _ = self.quic_mut().set_priority(p);
    }
}

/// The receiving half of a stream on either transport.
#[derive(Debug)]
pub enum RecvStream {
    /// Raw QUIC.
    Quic(quinn::RecvStream),
    /// WebTransport.
    Wt(wtransport::RecvStream),
}

impl RecvStream {
    /// Asks the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        let s = match self {
            RecvStream::Quic(s) => s,
            RecvStream::Wt(s) => s.quic_stream_mut(),
        };
        let _ = s.stop(quinn::VarInt::from_u32(code));
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            RecvStream::Quic(s) => Pin::new(s).poll_read(cx, buf),
            RecvStream::Wt(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendStream::Wt(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendStream::Wt(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendStream::Wt(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}
