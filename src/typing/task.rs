//! The task that owns this node's [`Typing`] state and publishes starts and stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quaver_proto::EventBody;
use quaver_proto::codec::encode_payload;
use tokio::sync::{mpsc, oneshot};

use super::{EXPIRY, Output, Typing};
use crate::cluster::{Bus, BusEvent};

#[derive(Debug)]
enum Cmd {
    Start {
        channel: u64,
        guild: Option<u64>,
        user: u64,
    },
    Stop {
        channel: u64,
        user: u64,
    },
    Typers {
        channel: u64,
        reply: oneshot::Sender<Vec<u64>>,
    },
    /// A typing broadcast from another node.
    Remote(EventBody),
}

/// Handle to the typing task.
#[derive(Debug, Clone)]
pub struct TypingHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl TypingHandle {
    /// Starts the task.
    pub fn spawn(bus: Arc<dyn Bus>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(bus, rx));
        Self { tx }
    }

    /// `user` is typing in `channel` (of `guild`, `None` for DMs). Permission is checked by
    /// the caller.
    pub fn start(&self, channel: u64, guild: Option<u64>, user: u64) {
        let _ = self.tx.send(Cmd::Start { channel, guild, user });
    }

    /// `user` stopped typing (or sent a message) in `channel`.
    pub fn stop(&self, channel: u64, user: u64) {
        let _ = self.tx.send(Cmd::Stop { channel, user });
    }

    /// A typing broadcast that came from another node (kept for `typers`).
    pub fn remote(&self, event: EventBody) {
        let _ = self.tx.send(Cmd::Remote(event));
    }

    /// Who is typing in `channel`, on any node.
    pub async fn typers(&self, channel: u64) -> Vec<u64> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Typers { channel, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

async fn run(bus: Arc<dyn Bus>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut state = Typing::default();
    // Guild of each channel with someone typing, for fan-out of stops.
    let mut guild_of: HashMap<u64, Option<u64>> = HashMap::new();
    loop {
        let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
        let cmd = tokio::select! {
            c = rx.recv() => match c { Some(c) => Some(c), None => return },
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => None,
        };
        let now = Instant::now();
        let out: Vec<Output> = match cmd {
            None => state.poll(now),
            Some(Cmd::Start { channel, guild, user }) => {
                guild_of.insert(channel, guild);
                state.start(channel, user, now).into_iter().collect()
            }
            Some(Cmd::Stop { channel, user }) => state.stop(channel, user).into_iter().collect(),
            Some(Cmd::Typers { channel, reply }) => {
                let _ = reply.send(state.typers(channel, now));
                Vec::new()
            }
            Some(Cmd::Remote(e)) => {
                match e {
                    EventBody::TypingStarted {
                        channel_id,
                        user_id,
                        expires_in_ms,
                    } => state.remote_start(
                        channel_id,
                        user_id,
                        std::time::Duration::from_millis(u64::from(expires_in_ms)),
                        now,
                    ),
                    EventBody::TypingStopped { channel_id, user_id } => state.remote_stop(channel_id, user_id),
                    _ => {}
                }
                Vec::new()
            }
        };
        for o in out {
            let (channel, user, body) = match o {
                Output::Started { channel, user } => (
                    channel,
                    user,
                    EventBody::TypingStarted {
                        channel_id: channel,
                        user_id: user,
                        expires_in_ms: EXPIRY.as_millis() as u32,
                    },
                ),
                Output::Stopped { channel, user } => (
                    channel,
                    user,
                    EventBody::TypingStopped {
                        channel_id: channel,
                        user_id: user,
                    },
                ),
            };
            bus.publish(BusEvent::Typing {
                guild_id: guild_of.get(&channel).copied().flatten(),
                channel_id: channel,
                user_id: user,
                event: Bytes::from(encode_payload(&body)),
            });
        }
        if state.next_deadline().is_none() {
            guild_of.clear();
        }
    }
}
