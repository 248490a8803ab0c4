//! A client that survives its connection: reconnects with exponential backoff and full
//! jitter, resumes the session (exact replay) or is caught up per channel from the server's
//! event log, drops duplicate events by seq, retries sends that were in flight with their
//! original nonce (the server returns the original message instead of a second one), and
//! replaces a "zombie" connection whose heartbeat acks stopped, without waiting for the
//! idle timeout. With `Config::alternates` (other nodes of a cluster), a failed attempt
//! moves on to the next node.
//!
//! One driver task owns the connection; the handle talks to it over channels.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use quaver_proto::*;
use tokio::sync::{mpsc, oneshot};

use crate::{Client, Config, Error, LaneStream, connect};

/// What the application receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A chat-lane event, de-duplicated (channel events at most once, in seq order per
    /// channel as the server sent them).
    Event(EventBody),
    /// A (re)connection: `resumed` when the session continued exactly, `false` when it is
    /// a new session (caught up from the log where possible; see `EventBody::Gap`).
    Connected {
        /// Exact resume.
        resumed: bool,
        /// The connection's `Ready`/`Resumed` snapshot.
        ready: Box<Ready>,
    },
    /// The connection was lost; reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// An attempt to connect failed (from the first one: an application can tell its user
    /// at once that the server cannot be reached, instead of waiting in silence); the next
    /// attempt follows after `retry_in`.
    Unreachable {
        /// Failed attempts in a row.
        attempts: u32,
        /// What failed.
        error: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
}

/// Reconnection timing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First retry delay (upper bound of the jittered delay).
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based): uniform in [0, min·2ⁿ] capped at `max`
    /// ("full jitter", so a crowd of clients does not reconnect in lockstep).
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = self.min.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { random % (ms + 1) })
    }

    /// The delay before attempt `n` after the server said it is overloaded (refused at the
    /// door, or `overloaded` in band): uniform in [cap/2, cap] with cap = max(min, 1 s)·2ⁿ
    /// capped at `max`. Coming straight back would meet the same queue: the floor gives the
    /// node a second, and the lower half-bound spreads a crowd of refused clients over the
    /// window instead of bunching them at its start (PROTOCOL.md §1, "Refused at the door").
    pub fn overloaded_delay(&self, attempt: u32, random: u64) -> Duration {
        let cap = self
            .min
            .max(OVERLOADED_MIN)
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max.max(OVERLOADED_MIN));
        let ms = cap.as_millis() as u64;
        let half = ms / 2;
        Duration::from_millis(half + random % (ms - half + 1))
    }
}

/// The shortest window a client waits in after an `overloaded` refusal.
pub const OVERLOADED_MIN: Duration = Duration::from_secs(1);

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

type SendReply = oneshot::Sender<Result<ResponseBody, ErrorBody>>;

enum Cmd {
    Request(RequestBody, SendReply),
    Rebind(oneshot::Sender<Result<(), Error>>),
    NetworkChanged,
    Kill,
}

/// A self-healing session. Dropping it closes the connection.
pub struct Resilient {
    cmds: mpsc::UnboundedSender<Cmd>,
    updates: mpsc::UnboundedReceiver<Update>,
    driver: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resilient")
    }
}

impl Drop for Resilient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Resilient {
    /// Connects (retrying with backoff) and keeps the session alive until dropped.
    pub fn start(cfg: Config, backoff: Backoff) -> Self {
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let (up_tx, updates) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(cfg, backoff, cmd_rx, up_tx));
        Self { cmds, updates, driver }
    }

    /// A handle for making requests from other tasks while this one reads updates.
    pub fn handle(&self) -> Requester {
        Requester {
            cmds: self.cmds.clone(),
        }
    }

    /// Sends a chat-lane request and waits for its reply, across reconnections (a send
    /// keeps its nonce, so a retry is never a second message).
    pub async fn request(&self, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
        self.handle().request(body).await
    }

    /// Sends a message with a fresh random nonce.
    pub async fn send_message(&self, channel_id: u64, content: &str) -> Result<ResponseBody, ErrorBody> {
        self.handle().send_message(channel_id, content).await
    }

    /// Says which guild channels the application shows (PROTOCOL.md "Viewing channels"):
    /// only their messages and typing come as they happen, the others' as
    /// `EventBody::ChannelActivity`; `None`: every channel (the default). Said again to every
    /// new session. After the answer, fetch the history of a channel newly viewed. In a
    /// large guild the view also limits presence to the guilds viewed (PROTOCOL.md
    /// "Presence in large guilds").
    pub async fn view(&self, channel_ids: Option<Vec<u64>>) -> Result<ResponseBody, ErrorBody> {
        self.request(RequestBody::ViewChannels { channel_ids }).await
    }

    /// [`Requester::request_within`]: a request with a deadline.
    pub async fn request_within(&self, body: RequestBody, limit: Duration) -> Result<ResponseBody, ErrorBody> {
        self.handle().request_within(body, limit).await
    }

    /// The next update.
    pub async fn next(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// Moves the connection to a new local address (raw QUIC migration).
    pub async fn rebind(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Rebind(tx));
        rx.await
            .unwrap_or_else(|_| Err(Error::Transport("client stopped".into())))
    }

    /// What an application calls on the OS's network-change signal (a new Wi-Fi, the
    /// network back after an outage): a QUIC or WebTransport connection tells the server
    /// its new address at once ([`Client::network_changed`]); a WebSocket, which cannot
    /// move, is replaced and the session resumed; while waiting to reconnect, the wait is cut
    /// short and the backoff starts again from its first step. Over QUIC and WebTransport
    /// the client also notices a new local address by itself
    /// ([`crate::Config::network_check_every`]).
    pub fn network_changed(&self) {
        let _ = self.cmds.send(Cmd::NetworkChanged);
    }

    /// Abandons the current connection (as on any failure) and reconnects.
    pub fn kill_connection(&self) {
        self.handle().kill_connection();
    }
}

/// Makes requests on a [`Resilient`] client from any task.
#[derive(Clone)]
pub struct Requester {
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requester")
    }
}

impl Requester {
    /// Sends a chat-lane request and waits for its reply, across reconnections.
    pub async fn request(&self, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Request(body, tx)).is_err() {
            return Err(ErrorBody::new(ErrorCode::INTERNAL, "client stopped"));
        }
        rx.await
            .unwrap_or_else(|_| Err(ErrorBody::new(ErrorCode::INTERNAL, "client stopped")))
    }

    /// The same, giving up after `limit`: `UNAVAILABLE` ("no answer within …"). A request
    /// given up on before it was sent is never sent; one already sent may have happened (a
    /// message: resend it with the same nonce to learn, it is never stored twice).
    pub async fn request_within(&self, body: RequestBody, limit: Duration) -> Result<ResponseBody, ErrorBody> {
        tokio::time::timeout(limit, self.request(body))
            .await
            .unwrap_or_else(|_| {
                Err(ErrorBody::new(
                    ErrorCode::UNAVAILABLE,
                    format!(
                        "no answer within {} ms (the server may be unreachable)",
                        limit.as_millis()
                    ),
                ))
            })
    }

    /// Abandons the current connection and reconnects ([`Resilient::kill_connection`]).
    pub fn kill_connection(&self) {
        let _ = self.cmds.send(Cmd::Kill);
    }

    /// Sends a message with a fresh random nonce.
    pub async fn send_message(&self, channel_id: u64, content: &str) -> Result<ResponseBody, ErrorBody> {
        self.request(RequestBody::SendMessage {
            channel_id,
            nonce: random_u64(),
            content: content.into(),
            reply_to: None,
        })
        .await
    }
}

/// What survives reconnections.
#[derive(Default)]
struct Memory {
    session_id: Option<SessionId>,
    /// Last lane seq processed per lane, for an exact resume.
    lanes: [u64; 5],
    /// Last channel seq processed per channel, for catch-up and de-duplication.
    channels: HashMap<u64, u64>,
    /// Requests not yet answered, in the order they were made, with their reply channels.
    pending: Vec<(RequestBody, SendReply)>,
    /// The guild channels the session views (`ViewChannels`; `None`: all), said again to
    /// every new session.
    view: Option<Vec<u64>>,
    /// Guild channels known (the others followed are DMs), for the resume's channel list.
    guild_channels: HashSet<u64>,
    /// The delay a draining node's `Goaway` asked for before reconnecting.
    goaway_after: Option<Duration>,
}

impl Memory {
    fn resume(&self) -> Option<ResumeRequest> {
        let session_id = self.session_id?;
        Some(ResumeRequest {
            session_id,
            lanes: Lane::ALL
                .iter()
                .filter(|l| self.lanes[l.index()] > 0)
                .map(|&lane| LaneSeq {
                    lane,
                    seq: self.lanes[lane.index()],
                })
                .collect(),
            channels: self
                .channels
                .iter()
                // With a view, only the channels viewed and DMs: a catch-up of the others
                // would bring what the view chose not to receive.
                .filter(|(c, _)| {
                    self.view
                        .as_ref()
                        .is_none_or(|v| v.contains(c) || !self.guild_channels.contains(c))
                })
                .map(|(c, s)| ChannelSeq {
                    channel_id: *c,
                    seq: *s,
                })
                .collect(),
        })
    }

    /// Remembers what a request the application makes changes for later sessions.
    fn note(&mut self, body: &RequestBody) {
        if let RequestBody::ViewChannels { channel_ids } = body {
            self.view = channel_ids.clone();
        }
    }

    /// Follows what an event says of channel positions and kinds.
    fn see(&mut self, body: &EventBody) {
        match body {
            EventBody::ChannelActivity { channels } => {
                // Activity of a channel not viewed was not delivered: its position moves on
                // (opening it fetches its history).
                for c in channels {
                    let last = self.channels.entry(c.channel_id).or_insert(0);
                    *last = (*last).max(c.seq);
                }
            }
            EventBody::ChannelUpdated { channel } if channel.guild_id.is_some() => {
                self.guild_channels.insert(channel.id);
            }
            _ => {}
        }
    }

    /// Learns channel positions from a snapshot (only moving forward where unknown).
    fn learn(&mut self, ready: &Ready) {
        for c in ready
            .guilds
            .iter()
            .flat_map(|g| g.channels.iter())
            .chain(ready.private_channels.iter())
        {
            self.channels.entry(c.id).or_insert(c.last_seq);
        }
        self.guild_channels = ready
            .guilds
            .iter()
            .flat_map(|g| g.channels.iter().map(|c| c.id))
            .collect();
    }
}

async fn drive(
    mut cfg: Config,
    backoff: Backoff,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    up: mpsc::UnboundedSender<Update>,
) {
    let mut mem = Memory::default();
    let mut attempt = 0u32;
    // The configured node first, then its alternates, round and round.
    let nodes: Vec<std::net::SocketAddr> = std::iter::once(cfg.addr)
        .chain(cfg.alternates.iter().copied())
        .collect();
    let mut node = 0usize;
    loop {
        cfg.resume = mem.resume();
        // A handshake into a dead path (or a network that drops UDP) is given up on after
        // the connect timeout, and the application told (`Update::Unreachable`).
        let connected = tokio::time::timeout(cfg.connect_timeout.min(cfg.idle_timeout), async {
            let client = connect(&cfg).await?;
            let chat = client.open_lane(Lane::Chat).await?;
            Ok::<_, Error>((client, chat))
        })
        .await
        .unwrap_or_else(|_| Err(Error::Transport("connect timed out".into())));
        let (client, chat) = match connected {
            Ok(c) => c,
            Err(e) => {
                if let Some(code) = e.close_code()
                    && code.terminal()
                {
                    let _ = up.send(Update::Disconnected {
                        reason: format!("refused: {e}"),
                    });
                    return;
                }
                let wait = if e.close_code() == Some(CloseCode::OVERLOADED) {
                    backoff.overloaded_delay(attempt, random_u64())
                } else {
                    backoff.delay(attempt, random_u64())
                };
                attempt = attempt.saturating_add(1);
                let _ = up.send(Update::Unreachable {
                    attempts: attempt,
                    error: e.to_string(),
                    retry_in: wait,
                });
                // Requests whose callers gave up (`request_within`) are not sent later.
                mem.pending.retain(|(_, reply)| !reply.is_closed());
                // Any node of the cluster can serve the session (caught up by seq there).
                node = (node + 1) % nodes.len();
                cfg.addr = nodes[node];
                match wait_out(wait, &cfg, &mut cmds, &mut mem).await {
                    Waited::Elapsed => {}
                    Waited::NetworkChanged => attempt = 0,
                    Waited::Dropped => return,
                }
                continue;
            }
        };
        attempt = 0;
        if !client.resumed {
            // A new session: lane positions restart; channel positions carry over (the
            // server caught those channels up).
            mem.lanes = [0; 5];
        }
        mem.session_id = Some(client.ready.session_id);
        mem.learn(&client.ready);
        let _ = up.send(Update::Connected {
            resumed: client.resumed,
            ready: Box::new(client.ready.clone()),
        });
        match run_connection(client, chat, &mut mem, &mut cmds, &up).await {
            Ok(()) => return,
            Err(reason) => {
                let _ = up.send(Update::Disconnected { reason });
            }
        }
        // A draining node said when to come back (`Goaway.reconnect_after_ms`): its
        // clients return spread over [d, 2d] instead of all at once into a node that is
        // restarting (PROTOCOL.md §5, `Goaway`). Requests are still taken while waiting.
        if let Some(d) = mem.goaway_after.take()
            && !d.is_zero()
        {
            let jitter = Duration::from_nanos(random_u64() % (d.as_nanos().min(u128::from(u64::MAX)) as u64).max(1));
            if let Waited::Dropped = wait_out(d + jitter, &cfg, &mut cmds, &mut mem).await {
                return;
            }
        }
    }
}

/// How a wait between connections ended.
enum Waited {
    /// Its time passed.
    Elapsed,
    /// The network changed (told, or a new route seen): the server may be reachable now.
    NetworkChanged,
    /// The handle was dropped.
    Dropped,
}

/// Waits `wait` before the next connection attempt, accepting requests meanwhile (they go
/// out once connected); a network change ends the wait early.
async fn wait_out(wait: Duration, cfg: &Config, cmds: &mut mpsc::UnboundedReceiver<Cmd>, mem: &mut Memory) -> Waited {
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    let mut route = crate::RouteWatch::new(crate::route_source(cfg.addr));
    let checking = cfg.network_check_every.is_some();
    let mut check = tokio::time::interval(cfg.network_check_every.unwrap_or(Duration::from_secs(3600)));
    check.tick().await;
    loop {
        tokio::select! {
            _ = &mut sleep => return Waited::Elapsed,
            _ = check.tick(), if checking => if route.observe(crate::route_source(cfg.addr)) {
                return Waited::NetworkChanged;
            },
            c = cmds.recv() => match c {
                Some(Cmd::Request(b, r)) => {
                    mem.note(&b);
                    mem.pending.push((b, r));
                }
                Some(Cmd::Rebind(r)) => { let _ = r.send(Err(Error::Transport("not connected".into()))); }
                Some(Cmd::NetworkChanged) => return Waited::NetworkChanged,
                Some(Cmd::Kill) => {}
                None => return Waited::Dropped,
            },
        }
    }
}

/// Serves one connection until it fails (`Err`) or the handle is dropped (`Ok`).
async fn run_connection(
    mut client: Client,
    mut chat: LaneStream,
    mem: &mut Memory,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    up: &mpsc::UnboundedSender<Update>,
) -> Result<(), String> {
    // Requests sent on this connection by lane request id. Whatever was pending (sent on
    // a lost connection and never answered) goes out again first, in order, same bodies —
    // so a message's nonce is reused and the server answers with the original.
    let mut in_flight: HashMap<u32, (RequestBody, SendReply)> = HashMap::new();
    mem.pending.retain(|(_, reply)| !reply.is_closed());
    // A new session takes every channel until told otherwise: the view goes first (its
    // answer is nobody's; an exact resume kept it, and a view waiting in `pending` says it).
    if !client.resumed
        && mem.view.is_some()
        && !mem
            .pending
            .iter()
            .any(|(b, _)| matches!(b, RequestBody::ViewChannels { .. }))
        && let Err(e) = chat
            .send(RequestBody::ViewChannels {
                channel_ids: mem.view.clone(),
            })
            .await
    {
        return Err(e.to_string());
    }
    let mut queue = std::mem::take(&mut mem.pending).into_iter();
    let mut result: Result<(), String> = Ok(());
    for (body, reply) in queue.by_ref() {
        match chat.send(body.clone()).await {
            Ok(id) => {
                in_flight.insert(id, (body, reply));
            }
            Err(e) => {
                mem.pending.push((body, reply));
                result = Err(e.to_string());
                break;
            }
        }
    }
    mem.pending.extend(queue);
    if result.is_ok() {
        result = serve(&mut client, &mut chat, mem, cmds, up, &mut in_flight).await;
    }
    if result.is_ok() {
        client.close();
        return Ok(());
    }
    // Unanswered requests go out again on the next connection, oldest first.
    let mut ids: Vec<u32> = in_flight.keys().copied().collect();
    ids.sort_unstable();
    let mut requeue: Vec<(RequestBody, SendReply)> = ids.into_iter().filter_map(|id| in_flight.remove(&id)).collect();
    requeue.append(&mut mem.pending);
    mem.pending = requeue;
    // Not a normal close: the server keeps the session for a resume.
    client.session().close(CloseCode::GOING_AWAY.0, "reconnecting");
    result
}

async fn serve(
    client: &mut Client,
    chat: &mut LaneStream,
    mem: &mut Memory,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    up: &mpsc::UnboundedSender<Update>,
    in_flight: &mut HashMap<u32, (RequestBody, SendReply)>,
) -> Result<(), String> {
    // This loop sends the heartbeats (and watches their acks) itself.
    client.stop_heartbeats();
    let hb_every = Duration::from_millis(u64::from(client.ready.heartbeat_interval_ms.max(100)));
    // Zombie: nothing heard (heartbeat acks included) for 3 intervals while we keep sending.
    let zombie_after = hb_every * 3;
    let mut last_heard = Instant::now();
    let mut nonce = 0u32;
    let mut tick = tokio::time::interval(hb_every);
    loop {
        tokio::select! {
            frame = chat.next() => match frame {
                Ok(ServerLane::Event { seq, body }) => {
                    last_heard = Instant::now();
                    if seq <= mem.lanes[Lane::Chat.index()] {
                        continue; // replayed twice: already processed
                    }
                    mem.lanes[Lane::Chat.index()] = seq;
                    if let Some((channel, cseq)) = body.channel_seq() {
                        let last = mem.channels.entry(channel).or_insert(0);
                        if cseq <= *last {
                            continue; // seen on an earlier connection or via catch-up
                        }
                        *last = cseq;
                    }
                    mem.see(&body);
                    if let EventBody::Gap { channel_id, resumes_at, .. } = &body {
                        // Events before `resumes_at` are gone; the position moves past the hole.
                        let last = mem.channels.entry(*channel_id).or_insert(0);
                        *last = (*last).max(resumes_at.saturating_sub(1));
                    }
                    let _ = up.send(Update::Event(body));
                }
                Ok(ServerLane::Ack { id, body }) => {
                    last_heard = Instant::now();
                    if let Some((_, r)) = in_flight.remove(&id) {
                        let _ = r.send(Ok(body));
                    }
                }
                Ok(ServerLane::Error { id, error }) => {
                    last_heard = Instant::now();
                    let Some((body, reply)) = in_flight.remove(&id) else { continue };
                    if error.code == ErrorCode::RATE_LIMITED {
                        // Retried after the hint; the caller only sees the final answer.
                        tokio::time::sleep(Duration::from_millis(u64::from(error.retry_after_ms.unwrap_or(100)))).await;
                        match chat.send(body.clone()).await {
                            Ok(new_id) => {
                                in_flight.insert(new_id, (body, reply));
                            }
                            Err(e) => {
                                in_flight.insert(id, (body, reply));
                                return Err(e.to_string());
                            }
                        }
                    } else {
                        let _ = reply.send(Err(error));
                    }
                }
                Err(e) => return Err(e.to_string()),
            },
            ctl = client.next_control() => match ctl {
                Ok(ServerControl::Goaway(g)) => {
                    mem.goaway_after = Some(Duration::from_millis(u64::from(g.reconnect_after_ms)));
                    return Err(format!("goaway: {}", g.reason));
                }
                // The server is closing this connection (and waits for us to go first).
                Ok(ServerControl::Closing(c)) => return Err(format!("closed by server: {} {}", c.code, c.reason)),
                Ok(_) => last_heard = Instant::now(),
                Err(e) => return Err(e.to_string()),
            },
            _ = tick.tick() => {
                if last_heard.elapsed() > zombie_after {
                    return Err("zombie connection: no heartbeat ack".into());
                }
                nonce = nonce.wrapping_add(1);
                let lanes = vec![LaneSeq { lane: Lane::Chat, seq: mem.lanes[Lane::Chat.index()] }];
                if client.send_control(&ClientControl::Heartbeat(Heartbeat { nonce, lanes })).await.is_err() {
                    return Err("control stream failed".into());
                }
            }
            c = cmds.recv() => match c {
                Some(Cmd::Request(body, reply)) => {
                    mem.note(&body);
                    match chat.send(body.clone()).await {
                        Ok(id) => {
                            in_flight.insert(id, (body, reply));
                        }
                        Err(e) => {
                            mem.pending.push((body, reply));
                            return Err(e.to_string());
                        }
                    }
                }
                Some(Cmd::Rebind(r)) => {
                    let _ = r.send(client.rebind().map(|_| ()));
                }
                Some(Cmd::NetworkChanged) => {
                    if let Err(e) = client.network_changed().await {
                        return Err(format!("the network changed and the connection cannot follow ({e}): reconnecting"));
                    }
                }
                Some(Cmd::Kill) => return Err("killed".into()),
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overloaded_refusal_waits_a_second_or_more_spread_over_the_upper_half() {
        let b = Backoff::default();
        for (attempt, lo, hi) in [(0, 500, 1000), (1, 1000, 2000), (3, 4000, 8000), (10, 15_000, 30_000)] {
            let (mut min, mut max) = (u64::MAX, 0);
            for r in [0, 1, 499, 500, 12345, 987_654_321, u64::MAX] {
                let ms = b.overloaded_delay(attempt, r).as_millis() as u64;
                assert!(
                    (lo..=hi).contains(&ms),
                    "attempt {attempt}: {ms} ms not in [{lo}, {hi}]"
                );
                (min, max) = (min.min(ms), max.max(ms));
            }
            assert!(min < max, "attempt {attempt}: spread, not one instant");
        }
        // A backoff whose own floor is above a second keeps it.
        let slow = Backoff {
            min: Duration::from_secs(3),
            max: Duration::from_secs(60),
        };
        assert!(slow.overloaded_delay(0, 0) >= Duration::from_millis(1500));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        assert_eq!(b.delay(0, u64::MAX), Duration::from_millis(u64::MAX % 101));
        for attempt in 0..30 {
            for r in [0, 1, 12345, u64::MAX] {
                let d = b.delay(attempt, r);
                let cap = Duration::from_millis(100)
                    .saturating_mul(1 << attempt.min(16))
                    .min(Duration::from_secs(2));
                assert!(d <= cap, "{d:?} > {cap:?}");
            }
        }
        assert_eq!(b.delay(0, 0), Duration::ZERO);
    }

    #[test]
    fn with_a_view_a_resume_lists_the_channels_viewed_and_dms_and_activity_moves_positions() {
        let mut m = Memory {
            session_id: Some(SessionId([1; 16])),
            ..Memory::default()
        };
        m.channels.extend([(10, 5), (11, 7), (99, 2)]);
        m.guild_channels.extend([10, 11]);
        let listed = |m: &Memory| {
            let mut c: Vec<(u64, u64)> = m
                .resume()
                .expect("a session to resume")
                .channels
                .iter()
                .map(|c| (c.channel_id, c.seq))
                .collect();
            c.sort_unstable();
            c
        };
        assert_eq!(listed(&m), [(10, 5), (11, 7), (99, 2)], "no view: every channel");
        m.note(&RequestBody::ViewChannels {
            channel_ids: Some(vec![10]),
        });
        assert_eq!(listed(&m), [(10, 5), (99, 2)], "the channel viewed and the DM");
        m.see(&EventBody::ChannelActivity {
            channels: vec![ChannelSeq {
                channel_id: 11,
                seq: 40,
            }],
        });
        assert_eq!(m.channels[&11], 40);
        m.note(&RequestBody::ViewChannels { channel_ids: None });
        assert_eq!(listed(&m), [(10, 5), (11, 40), (99, 2)]);
    }
}
