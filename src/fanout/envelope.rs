//! What travels on a topic between nodes: an event with its lane and audience, or a
//! control message. A fixed, versioned binary layout (ids are 8-byte big-endian, topic names
//! length-prefixed), because it crosses process boundaries (Redis) and a node must refuse
//! — and count — anything it cannot read instead of guessing:
//!
//! ```text
//! version 1 | origin u64 (the publishing node's tag: a node skips its own messages, which
//!              it delivered locally already) | kind u8 | …
//! kind 0 event:        origin u64 | counter u64 | topics u8 × (len u16 | name) | lane u8 |
//!                      audience u8 (0 all, 1 all-except user, 2 viewers of channel,
//!                      3 viewers of channel except user) | its ids u64… |
//!                      order u8 (0 none, 1 channel event: channel u64 | seq u64) |
//!                      latest u8 (0 none, 1 newest-wins: key u64 | version u64) |
//!                      event bytes (rest)
//! kind 1 guild changed: guild u64
//! kind 2 member added:  guild u64 | user u64
//! kind 3 follow / 4 unfollow: user u64 | len u16 | topic name | n u16 × (channel u64 |
//!                      seq u64) (where the topic's channels stood when the user joined)
//! kind 5 voice joined: user u64 | channel u64
//! kind 6 show:         len u16 | topic name | except u8 (0 none, 1: user u64) |
//!                      what u8 (0 presences of users, 1 voice states of channels,
//!                      2 presences of a large guild's members to those looking at it,
//!                      3 the same with the offline ones: n = 1, the guild) |
//!                      n u32 × id u64
//! kind 7 revoke:       user u64 (0: any) | before ms u64 | len u16 | jti (UTF-8)
//! kind 8 disconnect:   user u64 | reconnect u8 (0, 1) | len u16 | reason (UTF-8) |
//!                      session u8 (0 every one, 1: session 16 bytes)
//! kind 9 voice order:  guild u64 | user u64 | action u8 (0 mute, 1 deafen: on u8; 2 move:
//!                      channel u64; 3 disconnect)
//! kind 10 list sessions: request u64 | user u64
//! kind 11 sessions of: request u64 | len u16 | node (UTF-8) | n u16 × (session 16 bytes |
//!                      transport u8 (0 quic, 1 webtransport) | device u8 (0 desktop,
//!                      1 mobile, 2 web) | connected at ms u64 | attached u8)
//! ```

use bytes::Bytes;
use quaver_proto::Lane;

use crate::cluster::pubsub::Topic;
use quaver_proto::DeviceKind;
use quaver_proto::session::Transport;

use crate::cluster::order::{Order, SessionSummary, VoiceAction};

const VERSION: u8 = 1;

/// Who, among the local followers of the envelope's topics, gets the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// All of them.
    All,
    /// All but this user (their own typing, their own presence).
    AllExcept(u64),
    /// Those who can view this guild channel (cached permission state).
    Viewers(u64),
    /// Those who can view this channel, but this user.
    ViewersExcept(u64, u64),
}

/// An event for sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// (origin node tag, counter): unique, so a node that receives the envelope on several
    /// topics delivers it once.
    pub id: (u64, u64),
    /// Every topic it was published on.
    pub topics: Vec<Topic>,
    /// The lane it is delivered on.
    pub lane: Lane,
    /// Who gets it.
    pub audience: Reach,
    /// A channel event's (channel, seq): delivered in seq order, without holes
    /// ([`super::order`]).
    pub order: Option<(u64, u64)>,
    /// (key, version): only the newest version per key is delivered (a user's presence,
    /// published by whichever node changed it).
    pub latest: Option<(u64, u64)>,
    /// The encoded `EventBody`, shared by every receiver.
    pub event: Bytes,
}

/// What a [`Message::Show`] asks the receiving nodes to read and tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Show {
    /// The presence of these users.
    Presences(Vec<u64>),
    /// Everyone in these voice channels.
    VoiceStates(Vec<u64>),
    /// The presence of a large guild's members, to the sessions of the topic's user that
    /// look at the guild (`gateway::view`); with `again`, the offline members too.
    GuildMembers {
        /// The guild.
        guild: u64,
        /// The sessions were kept current on it before (what they hold may be stale).
        again: bool,
    },
}

/// A message on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An event.
    Event(Envelope),
    /// A guild's roles, members or overwrites changed: drop cached permission state.
    GuildChanged {
        /// The guild.
        guild_id: u64,
    },
    /// Someone joined a guild (no roles yet): add them to cached permission state.
    MemberAdded {
        /// The guild.
        guild_id: u64,
        /// The new member.
        user_id: u64,
    },
    /// `user_id` joined voice channel `channel_id` on the publishing node: other nodes drop
    /// them from any voice channel they serve.
    VoiceJoined {
        /// The user.
        user_id: u64,
        /// The channel.
        channel_id: u64,
    },
    /// An audience changed (a guild joined, a friendship begun, a channel's view granted):
    /// each node that has followers of `topic` reads the current state of `what` — after
    /// every earlier message on the topic, a follow included, so nothing that changes later
    /// is missed — and tells those followers but `except`.
    Show {
        /// Whose followers are told.
        topic: Topic,
        /// Who among them is not.
        except: Option<u64>,
        /// What they are told.
        what: Show,
    },
    /// `user_id` starts (`true`) or stops following `topic`; sent on the user's own topic,
    /// so the node holding their sessions hears it.
    Follow {
        /// The user.
        user_id: u64,
        /// The topic.
        topic: Topic,
        /// Start or stop.
        follow: bool,
        /// (channel, seq): where the topic's channels stood when the user started
        /// following (their node delivers every later event).
        positions: Vec<(u64, u64)>,
    },
    /// The backend's order about sessions, for every node (on [`Topic::cluster`]).
    Order(Order),
    /// Webhook deliveries were committed on the sending node (on [`Topic::cluster`]):
    /// every node's delivery task looks at its due list now instead of at its next poll
    /// (the partitions it leases may hold them).
    HooksWritten,
    /// Webhook endpoints were made, changed or removed through the sending node (on
    /// [`Topic::cluster`]): every node rereads them (and the filters its writes record by).
    EndpointsChanged,
    /// A node's answer to `Order::ListSessions` (on [`Topic::cluster`]).
    SessionsOf {
        /// The question's number.
        request: u64,
        /// The answering node's name.
        node: String,
        /// Its sessions of the user.
        sessions: Vec<SessionSummary>,
    },
}

/// A message this node cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable bus message: {0}")]
pub struct DecodeError(&'static str);

fn lane_code(l: Lane) -> u8 {
    l.index() as u8
}

/// Text of at most 65,535 bytes (longer is cut at a character boundary).
fn put_text(out: &mut Vec<u8>, t: &str) {
    let mut end = t.len().min(u16::MAX as usize);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&t.as_bytes()[..end]);
}

fn put_topic(out: &mut Vec<u8>, t: &Topic) {
    let name = t.name().as_bytes();
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
}

impl Message {
    /// The wire bytes, as published by node `origin`.
    pub fn encode(&self, origin: u64) -> Bytes {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        out.extend_from_slice(&origin.to_be_bytes());
        match self {
            Message::Event(e) => {
                out.push(0);
                out.extend_from_slice(&e.id.0.to_be_bytes());
                out.extend_from_slice(&e.id.1.to_be_bytes());
                out.push(e.topics.len().min(255) as u8);
                for t in e.topics.iter().take(255) {
                    put_topic(&mut out, t);
                }
                out.push(lane_code(e.lane));
                match e.audience {
                    Reach::All => out.push(0),
                    Reach::AllExcept(u) => {
                        out.push(1);
                        out.extend_from_slice(&u.to_be_bytes());
                    }
                    Reach::Viewers(c) => {
                        out.push(2);
                        out.extend_from_slice(&c.to_be_bytes());
                    }
                    Reach::ViewersExcept(c, u) => {
                        out.push(3);
                        out.extend_from_slice(&c.to_be_bytes());
                        out.extend_from_slice(&u.to_be_bytes());
                    }
                }
                for pair in [e.order, e.latest] {
                    match pair {
                        None => out.push(0),
                        Some((a, b)) => {
                            out.push(1);
                            out.extend_from_slice(&a.to_be_bytes());
                            out.extend_from_slice(&b.to_be_bytes());
                        }
                    }
                }
                out.extend_from_slice(&e.event);
            }
            Message::GuildChanged { guild_id } => {
                out.push(1);
                out.extend_from_slice(&guild_id.to_be_bytes());
            }
            Message::MemberAdded { guild_id, user_id } => {
                out.push(2);
                out.extend_from_slice(&guild_id.to_be_bytes());
                out.extend_from_slice(&user_id.to_be_bytes());
            }
            Message::VoiceJoined { user_id, channel_id } => {
                out.push(5);
                out.extend_from_slice(&user_id.to_be_bytes());
                out.extend_from_slice(&channel_id.to_be_bytes());
            }
            Message::Show { topic, except, what } => {
                out.push(6);
                put_topic(&mut out, topic);
                match except {
                    None => out.push(0),
                    Some(u) => {
                        out.push(1);
                        out.extend_from_slice(&u.to_be_bytes());
                    }
                }
                let one;
                let (kind, ids) = match what {
                    Show::Presences(ids) => (0, &ids[..]),
                    Show::VoiceStates(ids) => (1, &ids[..]),
                    Show::GuildMembers { guild, again } => {
                        one = [*guild];
                        (if *again { 3 } else { 2 }, &one[..])
                    }
                };
                out.push(kind);
                let n = ids.len().min(u32::MAX as usize);
                out.extend_from_slice(&(n as u32).to_be_bytes());
                for id in ids.iter().take(n) {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Message::Follow {
                user_id,
                topic,
                follow,
                positions,
            } => {
                out.push(if *follow { 3 } else { 4 });
                out.extend_from_slice(&user_id.to_be_bytes());
                put_topic(&mut out, topic);
                let n = positions.len().min(u16::MAX as usize);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for (c, s) in positions.iter().take(n) {
                    out.extend_from_slice(&c.to_be_bytes());
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
            Message::Order(Order::Revoke(r)) => {
                out.push(7);
                out.extend_from_slice(&r.user_id.to_be_bytes());
                out.extend_from_slice(&r.before_ms.to_be_bytes());
                put_text(&mut out, &r.jti);
            }
            Message::Order(Order::Disconnect {
                user_id,
                session,
                reconnect,
                reason,
            }) => {
                out.push(8);
                out.extend_from_slice(&user_id.to_be_bytes());
                out.push(u8::from(*reconnect));
                put_text(&mut out, reason);
                match session {
                    None => out.push(0),
                    Some(id) => {
                        out.push(1);
                        out.extend_from_slice(&id.0);
                    }
                }
            }
            Message::Order(Order::ListSessions { request, user_id }) => {
                out.push(10);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(&user_id.to_be_bytes());
            }
            Message::HooksWritten => out.push(12),
            Message::EndpointsChanged => out.push(13),
            Message::SessionsOf {
                request,
                node,
                sessions,
            } => {
                out.push(11);
                out.extend_from_slice(&request.to_be_bytes());
                put_text(&mut out, node);
                let n = sessions.len().min(u16::MAX as usize);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for x in sessions.iter().take(n) {
                    out.extend_from_slice(&x.id.0);
                    out.push(match x.transport {
                        Transport::Quic => 0,
                        Transport::WebTransport => 1,
                        Transport::WebSocket => 2,
                    });
                    out.push(match x.device {
                        DeviceKind::Desktop => 0,
                        DeviceKind::Mobile => 1,
                        DeviceKind::Web => 2,
                    });
                    out.extend_from_slice(&x.connected_at_ms.to_be_bytes());
                    out.push(u8::from(x.attached));
                }
            }
            Message::Order(Order::Voice {
                guild_id,
                user_id,
                action,
            }) => {
                out.push(9);
                out.extend_from_slice(&guild_id.to_be_bytes());
                out.extend_from_slice(&user_id.to_be_bytes());
                match action {
                    VoiceAction::Mute(on) => out.extend_from_slice(&[0, u8::from(*on)]),
                    VoiceAction::Deafen(on) => out.extend_from_slice(&[1, u8::from(*on)]),
                    VoiceAction::Move(c) => {
                        out.push(2);
                        out.extend_from_slice(&c.to_be_bytes());
                    }
                    VoiceAction::Disconnect => out.push(3),
                }
            }
        }
        Bytes::from(out)
    }

    /// Reads wire bytes: (origin, message). Anything malformed, truncated or of another
    /// version is an error.
    pub fn decode(b: &Bytes) -> Result<(u64, Message), DecodeError> {
        let mut r = Reader { b, at: 0 };
        if r.u8()? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let origin = r.u64()?;
        let m = match r.u8()? {
            0 => {
                let id = (r.u64()?, r.u64()?);
                let n = r.u8()?;
                let mut topics = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    topics.push(r.topic()?);
                }
                let lane = *Lane::ALL.get(r.u8()? as usize).ok_or(DecodeError("lane"))?;
                let audience = match r.u8()? {
                    0 => Reach::All,
                    1 => Reach::AllExcept(r.u64()?),
                    2 => Reach::Viewers(r.u64()?),
                    3 => Reach::ViewersExcept(r.u64()?, r.u64()?),
                    _ => return Err(DecodeError("audience")),
                };
                let order = r.pair()?;
                let latest = r.pair()?;
                Message::Event(Envelope {
                    id,
                    topics,
                    lane,
                    audience,
                    order,
                    latest,
                    event: b.slice(r.at..),
                })
            }
            1 => Message::GuildChanged { guild_id: r.u64()? },
            2 => Message::MemberAdded {
                guild_id: r.u64()?,
                user_id: r.u64()?,
            },
            k @ (3 | 4) => {
                let user_id = r.u64()?;
                let topic = r.topic()?;
                let s = r.take(2)?;
                let n = u16::from_be_bytes([s[0], s[1]]) as usize;
                let mut positions = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    positions.push((r.u64()?, r.u64()?));
                }
                Message::Follow {
                    user_id,
                    topic,
                    follow: k == 3,
                    positions,
                }
            }
            5 => Message::VoiceJoined {
                user_id: r.u64()?,
                channel_id: r.u64()?,
            },
            6 => {
                let topic = r.topic()?;
                let except = match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    _ => return Err(DecodeError("except")),
                };
                let kind = r.u8()?;
                let s = r.take(4)?;
                let n = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
                // Bounded by what is there: n ids take 8n bytes.
                if n.saturating_mul(8) > b.len() - r.at {
                    return Err(DecodeError("truncated"));
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.u64()?);
                }
                let what = match (kind, &ids[..]) {
                    (0, _) => Show::Presences(ids),
                    (1, _) => Show::VoiceStates(ids),
                    (2 | 3, [guild]) => Show::GuildMembers {
                        guild: *guild,
                        again: kind == 3,
                    },
                    _ => return Err(DecodeError("show")),
                };
                Message::Show { topic, except, what }
            }
            7 => Message::Order(Order::Revoke(crate::store::Revocation {
                user_id: r.u64()?,
                before_ms: r.u64()?,
                jti: r.text()?,
            })),
            8 => Message::Order(Order::Disconnect {
                user_id: r.u64()?,
                reconnect: r.flag()?,
                reason: r.text()?,
                session: match r.u8()? {
                    0 => None,
                    1 => {
                        let mut id = [0u8; 16];
                        id.copy_from_slice(r.take(16)?);
                        Some(quaver_proto::SessionId(id))
                    }
                    _ => return Err(DecodeError("session")),
                },
            }),
            9 => {
                let guild_id = r.u64()?;
                let user_id = r.u64()?;
                let action = match r.u8()? {
                    0 => VoiceAction::Mute(r.flag()?),
                    1 => VoiceAction::Deafen(r.flag()?),
                    2 => VoiceAction::Move(r.u64()?),
                    3 => VoiceAction::Disconnect,
                    _ => return Err(DecodeError("voice action")),
                };
                Message::Order(Order::Voice {
                    guild_id,
                    user_id,
                    action,
                })
            }
            10 => Message::Order(Order::ListSessions {
                request: r.u64()?,
                user_id: r.u64()?,
            }),
            11 => {
                let request = r.u64()?;
                let node = r.text()?;
                let s = r.take(2)?;
                let n = u16::from_be_bytes([s[0], s[1]]) as usize;
                let mut sessions = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(r.take(16)?);
                    let transport = match r.u8()? {
                        0 => Transport::Quic,
                        1 => Transport::WebTransport,
                        2 => Transport::WebSocket,
                        _ => return Err(DecodeError("transport")),
                    };
                    let device = match r.u8()? {
                        0 => DeviceKind::Desktop,
                        1 => DeviceKind::Mobile,
                        2 => DeviceKind::Web,
                        _ => return Err(DecodeError("device")),
                    };
                    sessions.push(SessionSummary {
                        id: quaver_proto::SessionId(id),
                        transport,
                        device,
                        connected_at_ms: r.u64()?,
                        attached: r.flag()?,
                    });
                }
                Message::SessionsOf {
                    request,
                    node,
                    sessions,
                }
            }
            12 => Message::HooksWritten,
            13 => Message::EndpointsChanged,
            _ => return Err(DecodeError("kind")),
        };
        if !matches!(m, Message::Event(_)) && r.at != b.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok((origin, m))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(DecodeError("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn pair(&mut self) -> Result<Option<(u64, u64)>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some((self.u64()?, self.u64()?))),
            _ => Err(DecodeError("optional pair")),
        }
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("flag")),
        }
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let s = self.take(2)?;
        let n = u16::from_be_bytes([s[0], s[1]]) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError("text"))
    }
    fn topic(&mut self) -> Result<Topic, DecodeError> {
        let s = self.take(2)?;
        let n = u16::from_be_bytes([s[0], s[1]]) as usize;
        Topic::parse(self.take(n)?).ok_or(DecodeError("topic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Event(Envelope {
                id: (7, u64::MAX),
                topics: vec![Topic::guild(1), Topic::user(i64::MAX as u64)],
                lane: Lane::Presence,
                audience: Reach::AllExcept(3),
                order: None,
                latest: Some((3, 17)),
                event: Bytes::from_static(b"\x0e\x01\x02"),
            }),
            Message::Event(Envelope {
                id: (1, 2),
                topics: vec![Topic::channel(9)],
                lane: Lane::Typing,
                audience: Reach::ViewersExcept(9, 4),
                order: None,
                latest: None,
                event: Bytes::new(),
            }),
            Message::Event(Envelope {
                id: (1, 3),
                topics: vec![Topic::guild(2)],
                lane: Lane::Chat,
                audience: Reach::Viewers(9),
                order: Some((9, u64::MAX)),
                latest: None,
                event: Bytes::from_static(b"\x01"),
            }),
            Message::GuildChanged { guild_id: 5 },
            Message::VoiceJoined {
                user_id: 6,
                channel_id: 7,
            },
            Message::MemberAdded {
                guild_id: 5,
                user_id: 6,
            },
            Message::Follow {
                user_id: 6,
                topic: Topic::channel(10),
                follow: false,
                positions: vec![],
            },
            Message::Follow {
                user_id: 6,
                topic: Topic::guild(10),
                follow: true,
                positions: vec![(11, 0), (12, u64::MAX)],
            },
            Message::Show {
                topic: Topic::user(6),
                except: None,
                what: Show::Presences(vec![1, 2, u64::MAX]),
            },
            Message::Show {
                topic: Topic::guild(6),
                except: Some(3),
                what: Show::VoiceStates(vec![]),
            },
            Message::Show {
                topic: Topic::user(6),
                except: None,
                what: Show::GuildMembers { guild: 7, again: false },
            },
            Message::Show {
                topic: Topic::user(u64::MAX),
                except: None,
                what: Show::GuildMembers {
                    guild: u64::MAX,
                    again: true,
                },
            },
            Message::Order(Order::Revoke(crate::store::Revocation {
                user_id: 9,
                before_ms: 1_800_000_000_000,
                jti: String::new(),
            })),
            Message::Order(Order::Revoke(crate::store::Revocation {
                user_id: 0,
                before_ms: 0,
                jti: "tök-1".into(),
            })),
            Message::Order(Order::Disconnect {
                user_id: u64::MAX,
                session: Some(quaver_proto::SessionId([7; 16])),
                reconnect: true,
                reason: "signed out elsewhere".into(),
            }),
            Message::Order(Order::Disconnect {
                user_id: 1,
                session: None,
                reconnect: false,
                reason: String::new(),
            }),
            Message::Order(Order::Voice {
                guild_id: 3,
                user_id: 4,
                action: VoiceAction::Mute(true),
            }),
            Message::Order(Order::Voice {
                guild_id: 3,
                user_id: 4,
                action: VoiceAction::Deafen(false),
            }),
            Message::Order(Order::Voice {
                guild_id: 3,
                user_id: 4,
                action: VoiceAction::Move(u64::MAX),
            }),
            Message::Order(Order::Voice {
                guild_id: 3,
                user_id: 4,
                action: VoiceAction::Disconnect,
            }),
            Message::Order(Order::ListSessions {
                request: 7,
                user_id: u64::MAX,
            }),
            Message::SessionsOf {
                request: 7,
                node: "node-ö".into(),
                sessions: vec![
                    SessionSummary {
                        id: quaver_proto::SessionId([9; 16]),
                        transport: Transport::WebTransport,
                        device: DeviceKind::Mobile,
                        connected_at_ms: 1_800_000_000_000,
                        attached: false,
                    },
                    SessionSummary {
                        id: quaver_proto::SessionId([0; 16]),
                        transport: Transport::Quic,
                        device: DeviceKind::Desktop,
                        connected_at_ms: 0,
                        attached: true,
                    },
                ],
            },
            Message::SessionsOf {
                request: 0,
                node: String::new(),
                sessions: vec![],
            },
            Message::HooksWritten,
            Message::EndpointsChanged,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(Message::decode(&m.encode(42)), Ok((42, m)));
        }
    }

    #[test]
    fn truncations_and_garbage_are_refused_not_guessed() {
        for m in samples() {
            let b = m.encode(1);
            // Every strict prefix of a control message is refused; an event may end
            // anywhere after its header (its event bytes are the rest).
            for n in 0..b.len() {
                let r = Message::decode(&b.slice(..n));
                if !matches!(m, Message::Event(_)) {
                    assert!(r.is_err(), "{m:?} cut at {n}");
                }
            }
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (rng >> (i % 8 * 8)) as u8).collect();
            let _ = Message::decode(&Bytes::from(bytes));
        }
        assert!(
            Message::decode(&Bytes::from_static(&[2, 1])).is_err(),
            "another version"
        );
        assert!(
            Message::decode(&Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 9])).is_err(),
            "unknown kind"
        );
    }
}
