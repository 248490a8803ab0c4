//! One session from its first stream to its close.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use quaver_proto::codec::io::{FramedRead, ReadError, write_msg};
use quaver_proto::session::{RecvStream, SendStream, Session};
use quaver_proto::{
    ClientControl, CloseCode, Closing, Compression, ErrorBody, ErrorCode, FetchReply, FrameError, Hello, Lane, Limits,
    Ready, Request, ServerControl, ServerLane, SessionId, StreamOpen, User,
};
use tokio::sync::mpsc;
use tokio::time::timeout_at;

use super::control::{self, Control, ControlConfig, unix_ms};
use super::{AttachError, Cmd, LANE_QUEUE, LaneOut, SessionHandle, dispatch};
use crate::Ctx;
use crate::auth::Identity;
use crate::limits::Refusal;
use crate::metrics::{CONTROL, FETCH};

/// How long the server waits, after a `Closing` frame, for the client to close the
/// connection itself. Closing first would let a browser discard the frame unread: Chrome
/// aborts streams, buffered data included, when the connection closes under them.
const CLOSING_GRACE: Duration = Duration::from_millis(1000);
/// Lane writers coalesce queued frames into one write up to this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;

fn read_error_code(e: &ReadError) -> CloseCode {
    match e {
        ReadError::Frame(FrameError::TooLarge { .. }) => CloseCode::FRAME_TOO_LARGE,
        _ => CloseCode::PROTOCOL_ERROR,
    }
}

fn random_session_id() -> SessionId {
    let mut b = [0u8; 16];
    // SystemRandom fails only without an OS RNG, where TLS could not work either.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    SessionId(b)
}

/// Sends `Closing` on the control stream (if there is one), waits briefly for it to be
/// delivered, then closes the connection with `code`. Bounded by [`CLOSING_GRACE`] whatever
/// the peer does (a peer that grants no flow-control credit cannot hold the task).
async fn close_with(ctx: &Ctx, session: &Session, control: Option<&mut SendStream>, code: CloseCode, reason: &str) {
    if let Some(ctl) = control {
        let frame = closing(code, reason);
        let _ = tokio::time::timeout(CLOSING_GRACE, async {
            if let Ok(n) = write_msg(ctl, &frame).await {
                ctx.metrics.tx[CONTROL].add(n);
                ctl.finish();
                ctl.flushed().await;
                session.closed().await;
            }
        })
        .await;
    }
    ctx.metrics.closed_with(code);
    session.close(code.0, reason);
}

fn closing(code: CloseCode, reason: &str) -> ServerControl {
    ServerControl::Closing(Closing {
        code: code.0,
        reason: reason.to_string(),
    })
}

/// Closes a connection that never became a session (e.g. `overloaded`), with the in-band
/// `Closing` a browser needs if the client opens its control stream promptly.
pub async fn refuse_connection(ctx: &Ctx, session: &Session, code: CloseCode, reason: &str) {
    ctx.metrics.handshake_failed(code);
    match tokio::time::timeout(CLOSING_GRACE, session.accept_bi()).await {
        Ok(Ok((mut ctl, _))) => close_with(ctx, session, Some(&mut ctl), code, reason).await,
        _ => close_with(ctx, session, None, code, reason).await,
    }
}

/// Queues a control frame for the writer. `Err(Some(close))`: the queue is full, the client
/// does not read its control stream (slow consumer); `Err(None)`: the writer is gone — the
/// stream broke, the connection is going.
fn queue_control(out: &mpsc::Sender<ServerControl>, msg: ServerControl) -> Result<(), Option<(CloseCode, String)>> {
    match out.try_send(msg) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            Err(Some((CloseCode::SLOW_CONSUMER, "control stream not read".into())))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
    }
}

/// Frames queued for the control stream before the session counts as a slow consumer.
const CONTROL_QUEUE: usize = 32;

/// Owns the control stream's send side once `Ready` is out: the session loop queues frames
/// and never waits on the stream's flow control, so its timers (heartbeat timeout, token
/// expiry, drain deadline) fire whatever the peer does. When the queue's sender is dropped
/// it finishes the stream and waits for the peer to have it all.
async fn control_writer(ctx: Arc<Ctx>, mut ctl: SendStream, mut rx: mpsc::Receiver<ServerControl>) {
    while let Some(msg) = rx.recv().await {
        match write_msg(&mut ctl, &msg).await {
            Ok(n) => ctx.metrics.tx[CONTROL].add(n),
            Err(_) => return,
        }
    }
    ctl.finish();
    ctl.flushed().await;
}

/// Refuses a session during its handshake.
async fn refuse(ctx: &Ctx, session: &Session, ctl: &mut SendStream, code: CloseCode, reason: impl AsRef<str>) {
    ctx.metrics.handshake_failed(code);
    close_with(ctx, session, Some(ctl), code, reason.as_ref()).await;
}

/// Runs a session. `pre_token` is a token from the WebTransport request (URL or header).
pub async fn run(ctx: Arc<Ctx>, session: Session, pre_token: Option<String>) {
    let tr = session.transport();
    let hello_deadline = tokio::time::Instant::now() + ctx.cfg.session.hello_timeout;

    // 1. The control stream and its Hello.
    let (mut ctl_tx, ctl_rx) = match timeout_at(hello_deadline, session.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            ctx.metrics.handshake_failed(CloseCode(u32::MAX));
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_failed(CloseCode::HELLO_TIMEOUT);
            close_with(&ctx, &session, None, CloseCode::HELLO_TIMEOUT, "no Hello").await;
            return;
        }
    };
    let mut ctl_rx = FramedRead::new(ctl_rx, ctx.cfg.session.max_frame_bytes);
    let hello = match timeout_at(hello_deadline, ctl_rx.next::<ClientControl>()).await {
        Ok(Ok(Some(ClientControl::Hello(h)))) => h,
        Ok(Ok(Some(_))) => {
            return refuse(
                &ctx,
                &session,
                &mut ctl_tx,
                CloseCode::PROTOCOL_ERROR,
                "first control frame must be Hello",
            )
            .await;
        }
        Ok(Ok(None)) => {
            return refuse(
                &ctx,
                &session,
                &mut ctl_tx,
                CloseCode::PROTOCOL_ERROR,
                "control stream ended before Hello",
            )
            .await;
        }
        Ok(Err(e)) => {
            return refuse(&ctx, &session, &mut ctl_tx, read_error_code(&e), e.to_string()).await;
        }
        Err(_) => {
            return refuse(&ctx, &session, &mut ctl_tx, CloseCode::HELLO_TIMEOUT, "no Hello").await;
        }
    };
    ctx.metrics.rx[CONTROL].add(ctl_rx.bytes as usize);
    let identity: Identity = match control::accept_hello(&hello, pre_token.as_deref(), |t| ctx.verifier.verify(t)) {
        Ok(i) => i,
        Err((code, reason)) => return refuse(&ctx, &session, &mut ctl_tx, code, reason).await,
    };

    // 2. Ready, with the user's snapshot (which also records the user from the claims).
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(8);
    let link = Arc::new(super::TaskLink {
        cmd: cmd_tx,
        closer: Arc::new(session.clone()),
    });
    let opened = match Box::pin(open(&ctx, &identity, &hello, link, session.max_datagram_size())).await {
        Ok(o) => o,
        Err((code, reason)) => return refuse(&ctx, &session, &mut ctl_tx, code, reason).await,
    };
    let Opened {
        handle,
        generation,
        first,
        resumed: is_resume,
    } = opened;
    let zstd = hello.compression == Compression::Zstd;
    let voice_port = crate::voice::VoicePort::new(Arc::new(session.clone()));
    let conn = Arc::new(Conn {
        handle: handle.clone(),
        generation,
        zstd,
        voice: voice_port.clone(),
        closing: Default::default(),
        fetches: tokio::sync::Semaphore::new(FETCH_CONCURRENCY),
    });
    let sc = &ctx.cfg.session;
    // Bounded: a client that does not read its Ready within a heartbeat timeout is gone.
    match tokio::time::timeout(sc.ping_timeout, write_msg(&mut ctl_tx, &first)).await {
        Ok(Ok(n)) => ctx.metrics.tx[CONTROL].add(n),
        Ok(Err(_)) => {
            handle.detach(generation, Instant::now() + ctx.cfg.session.resume_window);
            return;
        }
        Err(_) => {
            handle.detach(generation, Instant::now() + ctx.cfg.session.resume_window);
            return close_with(&ctx, &session, None, CloseCode::SLOW_CONSUMER, "Ready not read").await;
        }
    }
    let (ctl_out, ctl_queue) = mpsc::channel::<ServerControl>(CONTROL_QUEUE);
    let writer = tokio::spawn(control_writer(ctx.clone(), ctl_tx, ctl_queue));
    ctx.presence.connect(identity.user_id, handle.id, hello.device);
    tokio::spawn(ctx.voice.clone().intake(session.clone(), voice_port.clone()));
    ctx.metrics.session_opened(tr);
    tracing::debug!(session = %handle.id, user = identity.user_id, transport = tr.name(), resumed = is_resume, "session ready");

    // 3. The session loop: the control machine decides, this loop moves frames and time.
    let mut machine = Control::new(
        ControlConfig {
            heartbeat_timeout: sc.ping_timeout,
            refresh_warning: ctx.cfg.auth.refresh_warning,
            leeway: ctx.cfg.auth.leeway,
            drain_timeout: sc.drain_timeout,
            reconnect_after: sc.reconnect_after,
        },
        &identity,
        Instant::now(),
        SystemTime::now(),
    );
    let mut shutdown = ctx.shutdown.clone();
    let close: Option<(CloseCode, String)> = loop {
        let deadline = tokio::time::Instant::from_std(machine.next_deadline());
        tokio::select! {
            // Read the client's control frames only while their answers can be queued:
            // a client that does not read our control stream stops being read (and its
            // heartbeat timeout runs) instead of overflowing anything. Two slots stay free
            // for frames the server sends on its own (RefreshNeeded, Goaway).
            frame = ctl_rx.next::<ClientControl>(), if ctl_out.capacity() > 2 => {
                let before = ctl_rx.bytes;
                match frame {
                    Ok(Some(msg)) => {
                        ctx.presence.seen(identity.user_id, handle.id);
                        ctx.metrics.rx[CONTROL].add((ctl_rx.bytes - before) as usize);
                        let reply = machine.on_frame(Instant::now(), SystemTime::now(), msg, |t| ctx.verifier.verify(t), handle.as_ref());
                        match reply {
                            Ok(reply) => {
                                if let Err(close) = queue_control(&ctl_out, reply) {
                                    break close;
                                }
                            }
                            Err(close) => break Some(close),
                        }
                    }
                    // The client ended its control stream: it is leaving.
                    Ok(None) => break Some((CloseCode::NORMAL, "control stream finished".into())),
                    Err(ReadError::Io(_)) => break None,
                    Err(e) => break Some((read_error_code(&e), e.to_string())),
                }
            }
            stream = session.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(run_stream(ctx.clone(), conn.clone(), send, recv));
                }
                Err(_) => break None,
            },
            Some(Cmd::Close(code, reason)) = cmd_rx.recv() => break Some((code, reason)),
            _ = tokio::time::sleep_until(deadline) => {
                let (send, close) = machine.poll(Instant::now());
                let mut queued = Ok(());
                for msg in send {
                    queued = queue_control(&ctl_out, msg);
                    if queued.is_err() {
                        break;
                    }
                }
                match (queued, close) {
                    (Err(close), _) => break close,
                    (Ok(()), Some(close)) => break Some(close),
                    (Ok(()), None) => {}
                }
            }
            _ = shutdown.wait(), if !machine.draining() => {
                if let Some(goaway) = machine.drain(Instant::now())
                    && let Err(close) = queue_control(&ctl_out, goaway)
                {
                    break close;
                }
            }
            _ = session.closed() => break None,
        }
    };
    if close.is_some() {
        // Answer no more requests, and let replies already queued on the lanes (a flood's
        // rate-limit errors, say) reach their writers before the connection goes.
        conn.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let flushed = handle.flush_lanes(generation);
        let _ = tokio::time::timeout(CLOSING_GRACE, futures_util::future::join_all(flushed)).await;
    }
    // A lost connection leaves the session resumable for the window; a deliberate close
    // (by the client, or a terminal code) ends it.
    let deliberate = control::ends_session(close.as_ref(), session.close_reason().map(|(code, _)| code));
    if deliberate {
        if handle.detach(generation, Instant::now()) && ctx.sessions.remove(&handle.id) {
            ctx.fanout.close(identity.user_id);
        }
    } else {
        handle.detach(generation, Instant::now() + ctx.cfg.session.resume_window);
    }
    ctx.presence.disconnect(identity.user_id, handle.id);
    // Voice state is state, not history: a lost connection leaves its voice channel.
    ctx.voice.session_ended(identity.user_id, handle.id, &voice_port).await;
    ctx.metrics.session_closed(tr);
    match close {
        Some((code, reason)) => {
            // `Closing`, in band, for browsers that cannot read QUIC close codes; bounded.
            let _ = ctl_out.try_send(closing(code, &reason));
            drop(ctl_out);
            let _ = tokio::time::timeout(CLOSING_GRACE, async {
                let _ = writer.await;
                session.closed().await;
            })
            .await;
            ctx.metrics.closed_with(code);
            session.close(code.0, &reason);
        }
        None => writer.abort(),
    }
    tracing::debug!(session = %handle.id, "session ended");
}

/// A session opened from its `Hello`: attached to its connection, with its first frame.
#[derive(Debug)]
pub struct Opened {
    /// The session (new, or the one resumed).
    pub handle: Arc<SessionHandle>,
    /// The connection's attachment generation.
    pub generation: u64,
    /// `Ready` or `Resumed`, to write first.
    pub first: ServerControl,
    /// Whether it resumed a session exactly.
    pub resumed: bool,
}

/// Builds a session for an accepted `Hello`: the user's snapshot, the resume decision, the
/// attachment of the connection (`link`), the fan-out registration and catch-up, and the
/// `Ready`/`Resumed` frame. `Err` is the close to refuse the connection with. Shared by
/// both transports (quinn's API and the engine).
pub(crate) async fn open(
    ctx: &Ctx,
    identity: &Identity,
    hello: &Hello,
    link: Arc<dyn super::Link>,
    max_datagram_bytes: usize,
) -> Result<Opened, (CloseCode, String)> {
    let snapshot = async {
        let s = ctx.chat.ready(identity.user_id, &identity.name).await?;
        let presences = ctx.presence.snapshot(ctx.chat.observers(identity.user_id).await?).await;
        Ok::<_, ErrorBody>((s, presences))
    };
    // Boxed, like the catch-up below: the store queries' state would otherwise stay in the
    // caller's future for the whole session.
    let (mut parts, presences) = match Box::pin(snapshot).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e.message, "building Ready failed");
            let reason = if e.code == ErrorCode::UNAVAILABLE {
                "storage unavailable; retry"
            } else {
                "server failure; retry"
            };
            return Err((CloseCode::INTERNAL_ERROR, reason.into()));
        }
    };
    let zstd = hello.compression == Compression::Zstd;
    // Resume: the same user's session, still in its window, whose buffer covers every lane.
    let resumed: Option<(Arc<SessionHandle>, [u64; 5])> = match &hello.resume {
        Some(r) => {
            let mut positions = [0u64; 5];
            for l in &r.lanes {
                positions[l.lane.index()] = l.seq;
            }
            let known = ctx.sessions.get(&r.session_id);
            let facts = known.as_ref().map(|h| control::Known {
                user: h.user,
                can_replay: h.can_replay(&positions).is_ok(),
            });
            match control::decide_resume(identity.user_id, positions, facts)? {
                control::Resume::Exact(from) => known.map(|h| (h, from)),
                control::Resume::Fresh => None,
            }
        }
        None => None,
    };
    let (resumed, resume_from) = match resumed {
        Some((h, from)) => (Some(h), from),
        None => (None, [0u64; 5]),
    };
    let is_resume = resumed.is_some();
    let handle = resumed.unwrap_or_else(|| {
        Arc::new(SessionHandle::new(
            random_session_id(),
            identity.user_id,
            ctx.replay_limits(),
        ))
    });
    let generation = handle.attach_link(link, resume_from);
    let voice_states = ctx.voice.visible_states(&parts.guilds).await;
    if !is_resume {
        // Not resumable exactly: catch the client's channels up from the event log. Read
        // here; the fan-out hands it over in line with live delivery, and sets each
        // channel's `last_seq` in Ready to where this node's delivery stands.
        let caught = match &hello.resume {
            Some(r) if !r.channels.is_empty() => {
                Box::pin(
                    ctx.chat
                        .catch_up(identity.user_id, &r.channels, ctx.cfg.session.event_log_retention),
                )
                .await
            }
            _ => Vec::new(),
        };
        ctx.fanout
            .open(handle.clone(), &mut parts.guilds, &mut parts.private_channels, caught)
            .await;
    }
    let sc = &ctx.cfg.session;
    let ready = Ready {
        session_id: handle.id,
        user: User {
            id: identity.user_id,
            name: identity.name.clone(),
        },
        heartbeat_interval_ms: sc.ping_interval.as_millis() as u32,
        limits: Limits {
            max_frame_bytes: sc.max_frame_bytes as u32,
            max_datagram_bytes: max_datagram_bytes as u32,
            heartbeat_timeout_ms: sc.ping_timeout.as_millis() as u32,
        },
        compression: if zstd { Compression::Zstd } else { Compression::None },
        token_expires_at_ms: unix_ms(identity.expires_at),
        node: ctx.cfg.node_name.clone(),
        guilds: parts.guilds,
        private_channels: parts.private_channels,
        read_states: parts.read_states,
        presences,
        relationships: parts.relationships,
        mutes: parts.mutes,
        notifications_unread: parts.notifications_unread,
        notifications: parts.notifications,
        voice_states,
    };
    let first = if is_resume {
        ServerControl::Resumed(Box::new(ready))
    } else {
        ServerControl::Ready(Box::new(ready))
    };
    Ok(Opened {
        handle,
        generation,
        first,
        resumed: is_resume,
    })
}

/// A client-opened stream after the control stream: a lane or a fetch.
/// One connection of a session: what its streams need.
#[derive(Debug)]
struct Conn {
    handle: Arc<SessionHandle>,
    generation: u64,
    zstd: bool,
    /// Where this connection's voice datagrams go.
    voice: Arc<crate::voice::VoicePort>,
    /// Set once the session is closing: no further request is served.
    closing: std::sync::atomic::AtomicBool,
    /// Fetch replies being built or written (see `FETCH_CONCURRENCY`).
    fetches: tokio::sync::Semaphore,
}

/// Fetch replies one connection may have in progress at once: enough for a client's
/// parallel page loads, few enough that unread replies hold little (a history page is at
/// most ~1.6 MB).
pub const FETCH_CONCURRENCY: usize = 4;

async fn run_stream(ctx: Arc<Ctx>, conn: Arc<Conn>, mut send: SendStream, recv: RecvStream) {
    let h = &conn.handle;
    let mut rx = FramedRead::new(recv, ctx.cfg.session.max_frame_bytes);
    let open = match tokio::time::timeout(ctx.cfg.session.hello_timeout, rx.next::<StreamOpen>()).await {
        Ok(Ok(Some(open))) => open,
        // A stream opened and abandoned (or cancelled) costs nothing but itself.
        Ok(Ok(None)) | Ok(Err(ReadError::Io(_))) | Err(_) => return,
        Ok(Err(e)) => return h.close(read_error_code(&e), &e.to_string()),
    };
    match open {
        StreamOpen::Fetch(req) => {
            ctx.metrics.rx[FETCH].add(rx.bytes as usize);
            // At most FETCH_CONCURRENCY replies per connection are built or being written;
            // further fetches wait here holding only their request. With the write deadline
            // below, this bounds what unread fetches can make the server hold.
            let Ok(permit) = conn.fetches.acquire().await else {
                return;
            };
            if conn.closing.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let (reply, flood) = match dispatch::fetch(&ctx, h, req).await {
                Ok(reply) => (reply, false),
                Err(Refusal::Error(e)) => (FetchReply::Err(e), false),
                Err(Refusal::Flood(e)) => (FetchReply::Err(e), true),
            };
            if flood {
                conn.closing.store(true, std::sync::atomic::Ordering::Relaxed);
                h.close(CloseCode::RATE_LIMITED, "kept flooding past rate limits");
            }
            let mut out = Vec::new();
            quaver_proto::codec::encode_fetch_reply(&reply, conn.zstd, &mut out);
            drop(reply);
            // STOP_SENDING from the client just fails this write: the session is untouched.
            // A reply the client does not take within the deadline is reset (1007,
            // slow_consumer) and its memory freed; the session is untouched too.
            let write = tokio::io::AsyncWriteExt::write_all(&mut send, &out);
            match tokio::time::timeout(ctx.cfg.session.fetch_write_timeout, write).await {
                Ok(Ok(())) => ctx.metrics.tx[FETCH].add(out.len()),
                Ok(Err(_)) => {}
                Err(_) => {
                    ctx.metrics
                        .fetch_timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    send.reset(CloseCode::SLOW_CONSUMER.0);
                    return;
                }
            }
            drop(out);
            drop(permit);
            send.finish();
            // Read the client's end of stream before dropping it: dropping an unfinished
            // receive stream sends STOP_SENDING, which a browser reports as an error on its
            // own (already complete) close.
            let _ = tokio::time::timeout(ctx.cfg.session.hello_timeout, rx.next_payload()).await;
        }
        StreamOpen::Lane(lane) => run_lane(ctx, conn.clone(), lane, send, rx).await,
    }
}

async fn run_lane(ctx: Arc<Ctx>, conn: Arc<Conn>, lane: Lane, mut send: SendStream, mut rx: FramedRead<RecvStream>) {
    let h = &conn.handle;
    let (tx, out) = mpsc::channel(LANE_QUEUE);
    let backlog = match h.attach_lane(conn.generation, lane, tx.clone()) {
        Ok(b) => b,
        Err(AttachError::AlreadyOpen) => {
            let err = ServerLane::Error {
                id: 0,
                error: ErrorBody::new(
                    ErrorCode::LANE_ALREADY_OPEN,
                    format!("{} lane already open", lane.name()),
                ),
            };
            let _ = write_msg(&mut send, &err).await;
            send.finish();
            return;
        }
        Err(AttachError::Detached) => return,
        // The events to replay fell out of the buffer since the resume was accepted: the
        // client must resume again (and will be caught up from the log).
        Err(AttachError::Lost(_)) => return h.close(CloseCode::SLOW_CONSUMER, "replay no longer available"),
    };
    tokio::spawn(lane_writer(ctx.clone(), lane, send, backlog, out));
    let mut last = rx.bytes;
    loop {
        let req = match rx.next::<Request>().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(ReadError::Io(_)) => return,
            Err(e) => return h.close(read_error_code(&e), &e.to_string()),
        };
        ctx.metrics.rx[lane.index()].add((rx.bytes - last) as usize);
        last = rx.bytes;
        if conn.closing.load(std::sync::atomic::Ordering::Relaxed) {
            // After the session decided to close, nothing more is served.
            return;
        }
        let (reply, flood) = match dispatch::request(&ctx, h, &conn.voice, lane, req.body).await {
            Ok(body) => (ServerLane::Ack { id: req.id, body }, false),
            Err(Refusal::Error(error)) => (ServerLane::Error { id: req.id, error }, false),
            Err(Refusal::Flood(error)) => (ServerLane::Error { id: req.id, error }, true),
        };
        if tx.send(LaneOut::Reply(reply)).await.is_err() {
            return;
        }
        if flood {
            // After its reply is queued, so the client learns why; nothing after it is
            // served.
            conn.closing.store(true, std::sync::atomic::Ordering::Relaxed);
            h.close(CloseCode::RATE_LIMITED, "kept flooding past rate limits");
            return;
        }
    }
}

/// Owns a lane's send stream: writes the replay backlog, then coalesces queued frames
/// into few writes.
async fn lane_writer(
    ctx: Arc<Ctx>,
    lane: Lane,
    mut send: SendStream,
    backlog: Vec<(u64, Bytes)>,
    mut out: mpsc::Receiver<LaneOut>,
) {
    let mut buf = Vec::with_capacity(4096);
    let flow = &ctx.metrics.tx[lane.index()];
    for chunk in backlog.chunks(256) {
        buf.clear();
        for (seq, body) in chunk {
            let start = buf.len();
            quaver_proto::codec::encode_event_frame(*seq, body, &mut buf);
            flow.add(buf.len() - start);
        }
        if tokio::io::AsyncWriteExt::write_all(&mut send, &buf).await.is_err() {
            return;
        }
    }
    let mut flushed = Vec::new();
    while let Some(first) = out.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(item) = next {
            let start = buf.len();
            match item {
                LaneOut::Reply(msg) => quaver_proto::encode_frame(&msg, &mut buf),
                LaneOut::Event(seq, body) => quaver_proto::codec::encode_event_frame(seq, &body, &mut buf),
                LaneOut::Flush(done) => flushed.push(done),
            }
            flow.add(buf.len() - start);
            if buf.len() >= COALESCE_BYTES {
                break;
            }
            next = out.try_recv().ok();
        }
        if !buf.is_empty() && tokio::io::AsyncWriteExt::write_all(&mut send, &buf).await.is_err() {
            return;
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}
