//! The WebSocket framing (PROTOCOL.md §11, issue 27): the same session machine as raw QUIC
//! and WebTransport ([`super::machine::Session`]), for people whose network drops UDP or
//! whose browser has no working WebTransport. One WebSocket at `GET /quaver/ws` on the
//! HTTP port carries the control stream, the lanes, the fetch streams and voice datagrams,
//! multiplexed as [`quaver_proto::ws::Frame`]s; [`WsPort`] turns them back into the streams
//! the machine knows from QUIC.
//!
//! On the HTTP port rather than a port of its own: the web app is served there, so its page
//! reaches the WebSocket on its own origin (no mixed content, no second certificate), and a
//! TLS-terminating proxy in front of the app covers both. A browser cannot be told to trust
//! a self-signed certificate for a WebSocket the way `serverCertificateHashes` does for
//! WebTransport, which is why this is not on the QUIC port's certificate.
//!
//! Backpressure: TCP has one window for the whole connection, so the writer holds at most
//! [`SEND_BUDGET`] bytes; past it every stream's writes are short and each stream's own
//! queue (the machine's, bounded as on QUIC) fills until the session is closed as a slow
//! consumer. Voice datagrams are dropped once [`DATAGRAM_BACKLOG`] is waiting (real-time:
//! lost, not late). What the client sends and the machine has not read is bounded too:
//! past [`recv_budget`] the socket is not read until the machine catches up, which is
//! TCP's flow control doing what QUIC's per-stream windows do.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quaver_proto::CloseCode;
use quaver_proto::session::Transport;
use quaver_proto::ws::{Frame, Received, Streams, quaver_close_code, ws_close_code};
use quinn_proto::{Dir, Side, StreamId};
use tokio::sync::{Notify, mpsc};

use super::door::{Door, WsPlace};
use super::machine::{self, Input, Port, Session};
use crate::Ctx;
use crate::engine::Read;

/// Where the WebSocket framing is served on the HTTP port.
pub const WS_PATH: &str = "/quaver/ws";
/// The subprotocol a client asks for (answered when asked).
pub const SUBPROTOCOL: &str = "quaver";
/// Bytes handed to the writer and not yet on the socket, past which streams take no more.
pub const SEND_BUDGET: usize = 256 * 1024;
/// A voice datagram is dropped while more than this waits to be written.
pub const DATAGRAM_BACKLOG: usize = 16 * 1024;
/// The largest voice datagram either side sends on the framing (as on QUIC, so a frame
/// from a WebSocket speaker reaches a QUIC listener unchanged).
const MAX_DATAGRAM: usize = 1200;
/// tungstenite's read buffer. Its default (128 KiB) is zero-filled on every read attempt,
/// and the connection's task polls the socket on every wake-up (each delivery): that
/// `memset` was half of the server's CPU at F0 over WebSocket (perf, bench/RESULTS.md).
/// Clients send small frames (a large one is read in more steps), and the buffer is kept for
/// the connection's life: 4 KiB, not 8, is 4 KiB less per idle session (C1 over WebSocket,
/// bench/RESULTS.md).
const READ_BUFFER: usize = 4 * 1024;
/// Streams open at once, as QUIC's `max_concurrent_bidi_streams`.
const MAX_STREAMS: usize = 32;

/// The framing's URL announced for this node when `--public-ws-url` is not set: `ws://`, the
/// host of `public_addr` (`host:port`) if one is set, else the bound HTTP address's, the HTTP
/// port, [`WS_PATH`].
pub fn default_url(public_addr: Option<&str>, http_addr: std::net::SocketAddr) -> String {
    let host = public_addr
        .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
        .unwrap_or_else(|| http_addr.ip().to_string());
    let host = match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]"),
        false => host,
    };
    format!("ws://{host}:{}{WS_PATH}", http_addr.port())
}

/// The largest message of the framing: the largest Quaver frame with its length prefix, and
/// the framing's header (PROTOCOL.md §11: 16 bytes over).
fn max_message(ctx: &Ctx) -> usize {
    ctx.cfg.session.max_frame_bytes + 16
}

/// What the client may have sent that the machine has not read yet before the socket
/// stops being read: two of the largest frames and some.
fn recv_budget(ctx: &Ctx) -> usize {
    2 * ctx.cfg.session.max_frame_bytes + 64 * 1024
}

/// `GET /quaver/ws`: the upgrade, after the Origin rule WebTransport's CONNECT follows.
/// No token in the URL: it comes in `Hello`.
pub async fn upgrade(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::transport::origin_allowed(&ctx.cfg.session.allowed_origins, origin) {
        tracing::debug!(?origin, "WebSocket origin refused");
        ctx.metrics.handshake_failed(CloseCode::ORIGIN_NOT_ALLOWED);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    // tungstenite stops what is far too large before it is buffered whole; what is over
    // the framing's own limit ([`max_message`]) is refused by [`frame_in`] with a code.
    let hard = 2 * max_message(&ctx);
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .max_message_size(hard)
        .max_frame_size(hard)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"));
    // A place among the connections being set up, or the door (`gateway::door`). The place
    // goes with the upgrade: one that never completes gives it back.
    match Door::enter_ws(&ctx) {
        Some(place) => ws.on_upgrade(move |socket| serve(ctx, socket, place)),
        None => {
            ctx.metrics.shed.fetch_add(1, Ordering::Relaxed);
            ws.on_upgrade(refuse_at_the_door)
        }
    }
}

/// A WebSocket refused at the door: closed at once with `overloaded`, before any session
/// (PROTOCOL.md §1, "Refused at the door").
async fn refuse_at_the_door(mut socket: WebSocket) {
    let close = CloseFrame {
        code: ws_close_code(CloseCode::OVERLOADED.0),
        reason: "the server is busy; retry later".into(),
    };
    if let Err(e) = socket.send(Message::Close(Some(close))).await {
        tracing::debug!(error = %e, "WebSocket refusal not sent");
        return;
    }
    // Wait (briefly) for the client's close in reply, reading what it sent meanwhile (its
    // `Hello`): a socket closed with unread data resets the connection, and a reset can
    // overtake the close frame the client has not read yet.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// What the client sent on a stream that the machine has not read.
#[derive(Debug, Default)]
struct Inbound {
    chunks: Vec<Bytes>,
    fin: bool,
    reset: Option<u64>,
}

/// The streams of one WebSocket connection as the machine's [`Port`].
#[derive(Debug)]
struct WsPort {
    out: mpsc::UnboundedSender<Message>,
    /// Bytes handed to the writer and not yet written (the writer counts them down).
    queued: Arc<AtomicUsize>,
    streams: Streams,
    inbound: HashMap<StreamId, Inbound>,
    unread: usize,
    /// Streams whose last write was short: told writable when the writer catches up.
    blocked: BTreeSet<StreamId>,
    /// Streams this side can no longer write (finished, reset, or stopped by the client).
    done: HashSet<StreamId>,
    /// The client's direction of these streams has ended.
    peer_done: HashSet<StreamId>,
    closed: bool,
    /// The largest message the client may send.
    max_message: usize,
}

fn stream_id(n: u64) -> StreamId {
    StreamId::new(Side::Client, Dir::Bi, n / 4)
}

impl WsPort {
    fn send(&mut self, frame: &Frame) {
        let bytes = frame.to_bytes();
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        // The writer is gone only once the connection is: nothing to tell anyone.
        let _ = self.out.send(Message::Binary(bytes.into()));
    }

    /// Both directions of `id` are over: it no longer counts against the limit.
    fn settle(&mut self, id: StreamId) {
        if self.done.contains(&id) && self.peer_done.contains(&id) {
            self.streams.forget(u64::from(id));
            self.done.remove(&id);
            self.peer_done.remove(&id);
            self.blocked.remove(&id);
        }
    }

    fn received(&mut self, id: StreamId, bytes: Bytes, fin: bool) {
        self.unread += bytes.len();
        let e = self.inbound.entry(id).or_default();
        if !bytes.is_empty() {
            e.chunks.push(bytes);
        }
        e.fin |= fin;
        if fin {
            self.peer_done.insert(id);
            self.settle(id);
        }
    }
}

impl Port for WsPort {
    fn read(&mut self, stream: StreamId) -> Read {
        let Some(i) = self.inbound.remove(&stream) else {
            return Read::Data(Vec::new());
        };
        self.unread -= i.chunks.iter().map(Bytes::len).sum::<usize>();
        match (i.reset, i.fin) {
            (Some(code), _) => Read::Reset(code),
            (None, true) => Read::Finished(i.chunks),
            (None, false) => Read::Data(i.chunks),
        }
    }

    fn try_write(&mut self, stream: StreamId, data: &mut Bytes) -> Option<usize> {
        if self.closed || self.done.contains(&stream) {
            return None;
        }
        let room = SEND_BUDGET.saturating_sub(self.queued.load(Ordering::Relaxed));
        let n = room.min(data.len());
        if n > 0 {
            self.send(&Frame::Data {
                stream: u64::from(stream),
                fin: false,
                bytes: data.split_to(n),
            });
        }
        if !data.is_empty() {
            self.blocked.insert(stream);
        }
        Some(n)
    }

    fn finish(&mut self, stream: StreamId) {
        if self.closed || !self.done.insert(stream) {
            return;
        }
        self.send(&Frame::Data {
            stream: u64::from(stream),
            fin: true,
            bytes: Bytes::new(),
        });
        self.settle(stream);
    }

    fn reset(&mut self, stream: StreamId, code: u32) {
        if self.closed || !self.done.insert(stream) {
            return;
        }
        self.send(&Frame::Reset {
            stream: u64::from(stream),
            code: u64::from(code),
        });
        self.settle(stream);
    }

    fn send_datagram(&mut self, data: Bytes) {
        if self.closed || self.queued.load(Ordering::Relaxed) > DATAGRAM_BACKLOG {
            return;
        }
        self.send(&Frame::Datagram(data));
    }

    fn max_datagram_size(&mut self) -> usize {
        MAX_DATAGRAM
    }

    fn close(&mut self, code: u32, reason: &[u8]) {
        if self.closed {
            return;
        }
        self.closed = true;
        // A close frame's reason is at most 123 bytes of UTF-8.
        let mut reason = String::from_utf8_lossy(reason).into_owned();
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = CloseFrame {
            code: ws_close_code(code),
            reason: reason.into(),
        };
        let _ = self.out.send(Message::Close(Some(frame)));
    }
}

/// Serves one WebSocket connection until it closes.
async fn serve(ctx: Arc<Ctx>, socket: WebSocket, place: WsPlace) {
    ctx.metrics.handshake(Transport::WebSocket);
    // Held while the session sets up (`Hello`, its token, the session built).
    let mut place = Some(place);
    let (mut sink, mut source) = socket.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let queued = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(Notify::new());
    let writer = {
        let (queued, written) = (queued.clone(), written.clone());
        tokio::spawn(async move {
            while let Some(first) = out_rx.recv().await {
                // Everything waiting goes out with one flush.
                let mut next = Some(first);
                let mut bytes = 0;
                let mut close = false;
                while let Some(m) = next.take() {
                    if let Message::Binary(b) = &m {
                        bytes += b.len();
                    }
                    close |= matches!(m, Message::Close(_));
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    if !close {
                        next = out_rx.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                queued.fetch_sub(bytes, Ordering::Relaxed);
                written.notify_one();
                if close {
                    let _ = sink.close().await;
                    return;
                }
            }
        })
    };
    let (tx, mut inputs) = mpsc::unbounded_channel();
    let draining = ctx.shutdown.is_fired();
    let mut session = Session::new(ctx.clone(), tx, Transport::WebSocket, draining, Instant::now());
    let mut port = WsPort {
        out,
        queued,
        streams: Streams::new(MAX_STREAMS),
        inbound: HashMap::new(),
        unread: 0,
        blocked: BTreeSet::new(),
        done: HashSet::new(),
        peer_done: HashSet::new(),
        closed: false,
        max_message: max_message(&ctx),
    };
    let mut shutdown = ctx.shutdown.clone();
    let mut drained = draining;
    let budget = recv_budget(&ctx);
    let mut peer_code = None;
    while !port.closed {
        let deadline = session.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            msg = source.next(), if port.unread <= budget => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(b))) => frame_in(&mut session, &mut port, now, b),
                    Some(Ok(Message::Text(_))) => {
                        // Never held: only presence and typing events are.
                        let _sent = session.input(
                            &mut port,
                            now,
                            Input::CloseNow(CloseCode::PROTOCOL_ERROR, "text message on the WebSocket framing".into()),
                        );
                    }
                    Some(Ok(Message::Close(f))) => {
                        // No code at all is no Quaver close either: resumable, as a dropped connection.
                        peer_code = f.and_then(|f| quaver_close_code(f.code));
                        break;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => {
                        // Oversize messages, unmasked frames, broken UTF-8 close reasons…:
                        // tungstenite ends the connection; the session sees it gone.
                        tracing::debug!(error = %e, "WebSocket read failed");
                        break;
                    }
                    None => break,
                }
            }
            Some(input) = inputs.recv() => {
                // What the machine holds it writes at its next deadline (this loop's timer).
                let _sent = session.input(&mut port, Instant::now(), input);
            }
            () = written.notified() => {
                let now = Instant::now();
                for id in std::mem::take(&mut port.blocked) {
                    session.writable(&mut port, now, id, false);
                }
            }
            () = sleep_until(deadline) => session.timeout(&mut port, Instant::now()),
            () = shutdown.wait(), if !drained => {
                drained = true;
                session.drain(&mut port, Instant::now());
            }
        }
        if place.is_some() && !session.setting_up() {
            place = None;
        }
    }
    session.lost(peer_code);
    // The writer sends what is queued (a close frame last) and ends with the socket.
    drop(port);
    drop(session);
    while let Ok(input) = inputs.try_recv() {
        machine::abandon(&ctx, input);
    }
    let _ = writer.await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A WebSocket connection's session machine.
type WsSession = Session<mpsc::UnboundedSender<Input>>;

/// One binary message from the client.
fn frame_in(session: &mut WsSession, port: &mut WsPort, now: Instant, msg: Bytes) {
    let bad = |session: &mut WsSession, port: &mut WsPort, why: String| {
        session.input(port, now, Input::CloseNow(CloseCode::PROTOCOL_ERROR, why));
    };
    if msg.len() > port.max_message {
        let why = format!("a WebSocket message of {} bytes, over {}", msg.len(), port.max_message);
        let _sent = session.input(port, now, Input::CloseNow(CloseCode::FRAME_TOO_LARGE, why));
        return;
    }
    let frame = match Frame::decode(msg) {
        Ok(f) => f,
        Err(e) => return bad(session, port, e.to_string()),
    };
    match port.streams.receive(frame) {
        Err(e) => bad(session, port, e.to_string()),
        Ok(Received::Data {
            stream,
            opened,
            bytes,
            fin,
        }) => {
            let id = stream_id(stream);
            port.received(id, bytes, fin);
            if opened {
                session.stream_opened(port, now, id, Vec::new());
            } else {
                session.readable(port, now, id);
            }
        }
        Ok(Received::Reset { stream, code }) => {
            let id = stream_id(stream);
            let e = port.inbound.entry(id).or_default();
            e.reset = Some(code);
            port.peer_done.insert(id);
            session.readable(port, now, id);
            port.settle(id);
        }
        Ok(Received::Stop { stream, .. }) => {
            let id = stream_id(stream);
            port.done.insert(id);
            session.writable(port, now, id, true);
            port.settle(id);
        }
        Ok(Received::Datagram(d)) => {
            if d.len() <= MAX_DATAGRAM {
                session.datagram(d);
            }
        }
        Ok(Received::Stale) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_takes_the_public_host_and_the_http_port() {
        let http: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(default_url(None, http), "ws://127.0.0.1:8080/quaver/ws");
        assert_eq!(
            default_url(Some("chat.example:4433"), http),
            "ws://chat.example:8080/quaver/ws"
        );
        assert_eq!(
            default_url(Some("[2001:db8::1]:4433"), http),
            "ws://[2001:db8::1]:8080/quaver/ws"
        );
        let v6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(default_url(None, v6), "ws://[::1]:8080/quaver/ws");
    }
}
