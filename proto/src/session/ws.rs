//! The WebSocket framing (PROTOCOL.md §11) as a client connection: one WebSocket carrying
//! the streams and datagrams a QUIC connection would, for networks that drop UDP. The
//! streams are the same tokio I/O types the session's other transports give
//! ([`WsSendStream`], [`WsRecvStream`]); a reader task routes the server's frames to them.
//!
//! A stream takes its id (0, 4, 8, …) when it first sends, so ids go out in increasing
//! order whatever order streams are opened in (the server refuses an id below one it has
//! seen). Writes are not held back by the socket: what is written is queued for the writer
//! task (the session's own request pacing bounds it, as a browser's `WebSocket.send` does).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;

use crate::ws::{Frame, quaver_close_code, ws_close_code};

/// Voice datagrams kept for a reader that has not taken them (the oldest go first).
const DATAGRAM_QUEUE: usize = 256;
/// The largest voice datagram sent on the framing (PROTOCOL.md §11).
pub const MAX_DATAGRAM: usize = 1200;

/// One stream's receiving side, shared by the reader task and the [`WsRecvStream`].
#[derive(Debug, Default)]
struct Inbound {
    chunks: VecDeque<Bytes>,
    fin: bool,
    reset: Option<u64>,
    waker: Option<Waker>,
    /// The server asked us to stop sending.
    stopped: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    streams: HashMap<u64, Arc<Mutex<Inbound>>>,
    datagrams: VecDeque<Bytes>,
    /// Why the connection ended: the Quaver close code (if the close carried one) and reason.
    closed: Option<(Option<u32>, String)>,
}

#[derive(Debug)]
struct Shared {
    out: mpsc::UnboundedSender<Message>,
    state: Mutex<State>,
    datagram: Notify,
    ended: Notify,
    remote: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data: still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn end(&self, code: Option<u32>, reason: String) {
        let streams: Vec<_> = {
            let mut st = lock(&self.state);
            if st.closed.is_none() {
                st.closed = Some((code, reason));
            }
            st.streams.drain().map(|(_, s)| s).collect()
        };
        for s in streams {
            if let Some(w) = lock(&s).waker.take() {
                w.wake();
            }
        }
        self.datagram.notify_waiters();
        self.ended.notify_waiters();
    }

    fn send(&self, f: &Frame) -> std::io::Result<()> {
        if lock(&self.state).closed.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the WebSocket is closed",
            ));
        }
        self.out
            .send(Message::Binary(f.to_bytes().into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::NotConnected, "the WebSocket is closed"))
    }
}

/// A client connection over the WebSocket framing. Cloning is cheap (a handle).
#[derive(Debug, Clone)]
pub struct WsConnection(Arc<Shared>);

impl WsConnection {
    /// Connects to `url` with the `quaver` subprotocol: `ws://host:port/quaver/ws`, or
    /// `wss://…` through `tls` (a TLS terminator in front of the HTTP port, PROTOCOL.md §11;
    /// its ALPN should be `http/1.1`). A `wss://` URL without `tls` is an error, never a
    /// silent downgrade.
    pub async fn connect(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<WsConnection, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("sec-websocket-protocol", http_value("quaver").ok_or("a header value")?);
        let uri = req.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            other => return Err(format!("not a WebSocket URL (scheme {other:?})")),
        };
        let host = uri
            .host()
            .ok_or("the URL has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let remote = tcp.peer_addr().map_err(|e| e.to_string())?;
        // Frames are small: no Nagle delay on them.
        let _ = tcp.set_nodelay(true);
        if !secure {
            return Self::start(req, tcp, remote).await;
        }
        let tls = tls.ok_or("a wss:// URL needs a TLS configuration")?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        Self::start(req, stream, remote).await
    }

    /// The WebSocket handshake over `stream`, then the tasks that carry its frames.
    async fn start<S>(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        stream: S,
        remote: SocketAddr,
    ) -> Result<WsConnection, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on every read
        // attempt; the server's frames are small, so a small one (see the server's
        // gateway/ws.rs).
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (socket, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sink, mut source) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let shared = Arc::new(Shared {
            out,
            state: Mutex::new(State::default()),
            datagram: Notify::new(),
            ended: Notify::new(),
            remote,
        });
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = shared.clone();
        tokio::spawn(async move {
            let (code, reason) = loop {
                match source.next().await {
                    Some(Ok(Message::Binary(b))) => match Frame::decode(b) {
                        Ok(f) => reader.received(f),
                        Err(e) => break (None, format!("unreadable frame from the server: {e}")),
                    },
                    Some(Ok(Message::Close(f))) => {
                        break match f {
                            Some(f) => (quaver_close_code(u16::from(f.code)), f.reason.to_string()),
                            None => (None, "closed without a code".into()),
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break (None, e.to_string()),
                    None => break (None, "the connection ended".into()),
                }
            };
            reader.end(code, reason);
        });
        Ok(WsConnection(shared))
    }

    /// Opens a stream (it takes its id when it first sends).
    pub fn open_bi(&self) -> (WsSendStream, WsRecvStream) {
        let inbound = Arc::new(Mutex::new(Inbound::default()));
        (
            WsSendStream {
                shared: self.0.clone(),
                inbound: inbound.clone(),
                id: None,
                finished: false,
            },
            WsRecvStream {
                shared: self.0.clone(),
                inbound,
            },
        )
    }

    /// Sends a voice datagram.
    pub fn send_datagram(&self, data: Bytes) -> std::io::Result<()> {
        self.0.send(&Frame::Datagram(data))
    }

    /// The next voice datagram; `None` once the connection is closed.
    pub async fn read_datagram(&self) -> Option<Bytes> {
        loop {
            let wait = self.0.datagram.notified();
            {
                let mut st = lock(&self.0.state);
                if let Some(d) = st.datagrams.pop_front() {
                    return Some(d);
                }
                if st.closed.is_some() {
                    return None;
                }
            }
            wait.await;
        }
    }

    /// Closes with Quaver close code `code` (carried as PROTOCOL.md §11 says).
    pub fn close(&self, code: u32, reason: &str) {
        let mut reason = reason.to_string();
        while reason.len() > 123 {
            reason.pop();
        }
        let _ = self.0.out.send(Message::Close(Some(CloseFrame {
            code: WsCode::from(ws_close_code(code)),
            reason: reason.clone().into(),
        })));
        self.0.end(Some(code), reason);
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        loop {
            let wait = self.0.ended.notified();
            if lock(&self.0.state).closed.is_some() {
                return;
            }
            wait.await;
        }
    }

    /// The Quaver close code and reason the connection ended with, if it carried one.
    pub fn close_reason(&self) -> Option<(u32, String)> {
        let st = lock(&self.0.state);
        let (code, reason) = st.closed.as_ref()?;
        Some(((*code)?, reason.clone()))
    }

    /// The server's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }
}

fn http_value(s: &str) -> Option<tokio_tungstenite::tungstenite::http::HeaderValue> {
    tokio_tungstenite::tungstenite::http::HeaderValue::from_str(s).ok()
}

impl Shared {
    /// A frame from the server.
    fn received(&self, f: Frame) {
        let stream = match &f {
            Frame::Datagram(d) => {
                let mut st = lock(&self.state);
                if st.datagrams.len() >= DATAGRAM_QUEUE {
                    st.datagrams.pop_front();
                }
                st.datagrams.push_back(d.clone());
                drop(st);
                self.datagram.notify_waiters();
                return;
            }
            Frame::Data { stream, .. } | Frame::Reset { stream, .. } | Frame::Stop { stream, .. } => *stream,
        };
        // A stream this side is done with: its frames are dropped.
        let Some(s) = lock(&self.state).streams.get(&stream).cloned() else {
            return;
        };
        let mut i = lock(&s);
        match f {
            Frame::Data { fin, bytes, .. } => {
                if !bytes.is_empty() {
                    i.chunks.push_back(bytes);
                }
                i.fin |= fin;
            }
            Frame::Reset { code, .. } => i.reset = Some(code),
            Frame::Stop { .. } => i.stopped = true,
            Frame::Datagram(_) => {}
        }
        let over = i.fin || i.reset.is_some();
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        drop(i);
        if over {
            lock(&self.state).streams.remove(&stream);
        }
    }
}

/// The sending half of a stream on the WebSocket framing.
#[derive(Debug)]
pub struct WsSendStream {
    shared: Arc<Shared>,
    inbound: Arc<Mutex<Inbound>>,
    id: Option<u64>,
    finished: bool,
}

impl WsSendStream {
    /// The stream's id, taken now if it has none yet (and its receiving side registered).
    fn id(&mut self) -> u64 {
        if let Some(id) = self.id {
            return id;
        }
        let mut st = lock(&self.shared.state);
        let id = st.next_id;
        st.next_id += 4;
        st.streams.insert(id, self.inbound.clone());
        self.id = Some(id);
        id
    }

    fn frame(&mut self, bytes: Bytes, fin: bool) -> std::io::Result<()> {
        if lock(&self.inbound).stopped {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stream stopped by the server",
            ));
        }
        let stream = self.id();
        self.shared.send(&Frame::Data { stream, fin, bytes })
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.frame(Bytes::new(), true);
        }
    }

    /// Abandons the stream with `code`.
    pub fn reset(&mut self, code: u32) {
        if !self.finished {
            self.finished = true;
            let stream = self.id();
            let _ = self.shared.send(&Frame::Reset {
                stream,
                code: u64::from(code),
            });
        }
    }
}

impl AsyncWrite for WsSendStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        Poll::Ready(this.frame(Bytes::copy_from_slice(buf), false).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

/// The receiving half of a stream on the WebSocket framing.
#[derive(Debug)]
pub struct WsRecvStream {
    shared: Arc<Shared>,
    inbound: Arc<Mutex<Inbound>>,
}

impl WsRecvStream {
    /// Asks the server to stop sending (only once the stream has an id: before, it has
    /// sent nothing to stop).
    pub fn stop(&mut self, code: u32) {
        let st = lock(&self.shared.state);
        let id = st
            .streams
            .iter()
            .find(|(_, s)| Arc::ptr_eq(s, &self.inbound))
            .map(|(id, _)| *id);
        drop(st);
        if let Some(stream) = id {
            let _ = self.shared.send(&Frame::Stop {
                stream,
                code: u64::from(code),
            });
        }
    }
}

impl AsyncRead for WsRecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let mut i = lock(&this.inbound);
        let before = buf.filled().len();
        while buf.remaining() > 0 {
            let Some(front) = i.chunks.front_mut() else { break };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            if n == front.len() {
                i.chunks.pop_front();
            } else {
                *front = front.slice(n..);
            }
        }
        if buf.filled().len() == before {
            if let Some(code) = i.reset {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!("stream reset by the server ({code})"),
                )));
            }
            if i.fin {
                return Poll::Ready(Ok(()));
            }
            if lock(&this.shared.state).closed.is_some() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the WebSocket closed",
                )));
            }
            i.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}
