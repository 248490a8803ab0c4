//! Golden encodings: `vectors/messages.json` is the contract between this crate, the JS
//! codec (`web/quaver.js`, checked by `web/test/`) and PROTOCOL.md.
//!
//! Each vector pairs a Rust value with its JSON form as the JS codec sees it, its payload
//! hex and its framed hex. Run with `QUAVER_BLESS=1` to rewrite the file after a deliberate
//! protocol change; otherwise the test fails on any difference.

use quaver_proto::datagram::{AudioLevel, Downlink, FLAG_DTX, FLAG_TALKSPURT_START, Redundant, Uplink};
use quaver_proto::*;
use serde_json::{Value, json};

type Check = Box<dyn Fn(&[u8]) -> bool>;

struct Vector {
    name: &'static str,
    ty: &'static str,
    value: Value,
    payload: Vec<u8>,
    decodes: Check,
}

fn v<T>(name: &'static str, ty: &'static str, msg: T, value: Value) -> Vector
where
    T: bincode::Encode + bincode::Decode<()> + PartialEq + 'static,
{
    let payload = codec::encode_payload(&msg);
    Vector {
        name,
        ty,
        value,
        payload,
        decodes: Box::new(move |p| decode::<T>(p).map(|m| m == msg).unwrap_or(false)),
    }
}

fn sid() -> SessionId {
    SessionId(std::array::from_fn(|i| i as u8 * 17))
}

fn vectors() -> Vec<Vector> {
    let sid_hex = "00112233445566778899aabbccddeeff";
    vec![
        v(
            "hello_minimal",
            "ClientControl",
            ClientControl::Hello(Hello {
                version: 2,
                token: None,
                device: DeviceKind::Web,
                resume: None,
                compression: Compression::None,
            }),
            json!({"type": "Hello", "version": 2, "token": null, "device": "Web", "resume": null, "compression": "None"}),
        ),
        v(
            "hello_full",
            "ClientControl",
            ClientControl::Hello(Hello {
                version: 2,
                token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                device: DeviceKind::Desktop,
                resume: Some(ResumeRequest {
                    session_id: sid(),
                    lanes: vec![
                        LaneSeq {
                            lane: Lane::Chat,
                            seq: 42,
                        },
                        LaneSeq {
                            lane: Lane::Presence,
                            seq: 300,
                        },
                    ],
                    channels: vec![ChannelSeq { channel_id: 8, seq: 17 }],
                }),
                compression: Compression::Zstd,
            }),
            json!({"type": "Hello", "version": 2, "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig", "device": "Desktop",
                   "resume": {"session_id": sid_hex, "lanes": [{"lane": "Chat", "seq": 42}, {"lane": "Presence", "seq": 300}],
                              "channels": [{"channel_id": "8", "seq": 17}]},
                   "compression": "Zstd"}),
        ),
        v(
            "heartbeat",
            "ClientControl",
            ClientControl::Heartbeat(Heartbeat {
                nonce: 7,
                lanes: vec![LaneSeq {
                    lane: Lane::Notifications,
                    seq: 70_000,
                }],
            }),
            json!({"type": "Heartbeat", "nonce": 7, "lanes": [{"lane": "Notifications", "seq": 70000}]}),
        ),
        v(
            "refresh_token",
            "ClientControl",
            ClientControl::RefreshToken { token: "t.k.n".into() },
            json!({"type": "RefreshToken", "token": "t.k.n"}),
        ),
        v(
            "ready",
            "ServerControl",
            ServerControl::Ready(Box::new(Ready {
                session_id: sid(),
                user: User {
                    id: 1_234_567_890_123_456_789,
                    name: "Ada ✓".into(),
                },
                heartbeat_interval_ms: 10_000,
                limits: Limits {
                    max_frame_bytes: 262_144,
                    max_datagram_bytes: 1_200,
                    heartbeat_timeout_ms: 20_000,
                },
                compression: Compression::None,
                token_expires_at_ms: 1_800_000_000_000,
                node: "node-a".into(),
                guilds: vec![],
                private_channels: vec![],
                read_states: vec![ReadState {
                    channel_id: 9,
                    last_read_seq: 4,
                    mention_count: 1,
                }],
                presences: vec![Presence {
                    user_id: 5,
                    status: PresenceStatus::Dnd,
                    client_status: ClientStatus {
                        desktop: PresenceStatus::Dnd,
                        mobile: PresenceStatus::Idle,
                        web: PresenceStatus::Offline,
                    },
                    custom_status: Some("busy".into()),
                    activity: None,
                }],
                relationships: vec![Relationship {
                    user_id: 6,
                    kind: RelationshipKind::IncomingRequest,
                }],
                mutes: vec![MuteTarget::Channel(9)],
                notifications_unread: 1,
                notifications: vec![Notification {
                    id: 77,
                    kind: NotificationKind::Reply,
                    actor_id: 6,
                    guild_id: Some(3),
                    channel_id: Some(9),
                    message_id: Some(10),
                    preview: "sure".into(),
                    created_at_ms: 5,
                    read: false,
                }],
                voice_states: vec![VoiceState {
                    guild_id: 3,
                    channel_id: 4,
                    user_id: 5,
                    slot: 2,
                    self_mute: false,
                    self_deaf: false,
                    server_mute: true,
                    server_deaf: false,
                    speaking: true,
                }],
            })),
            json!({"type": "Ready", "session_id": sid_hex,
                   "user": {"id": "1234567890123456789", "name": "Ada ✓"},
                   "heartbeat_interval_ms": 10000,
                   "limits": {"max_frame_bytes": 262144, "max_datagram_bytes": 1200, "heartbeat_timeout_ms": 20000},
                   "compression": "None", "token_expires_at_ms": 1800000000000u64, "node": "node-a",
                   "guilds": [], "private_channels": [],
                   "read_states": [{"channel_id": "9", "last_read_seq": 4, "mention_count": 1}],
                   "presences": [{"user_id": "5", "status": "Dnd",
                                  "client_status": {"desktop": "Dnd", "mobile": "Idle", "web": "Offline"},
                                  "custom_status": "busy", "activity": null}],
                   "relationships": [{"user_id": "6", "kind": "IncomingRequest"}],
                   "mutes": [{"type": "Channel", "id": "9"}],
                   "notifications_unread": 1,
                   "notifications": [{"id": "77", "kind": "Reply", "actor_id": "6", "guild_id": "3", "channel_id": "9",
                                      "message_id": "10", "preview": "sure", "created_at_ms": 5, "read": false}],
                   "voice_states": [{"guild_id": "3", "channel_id": "4", "user_id": "5", "slot": 2, "self_mute": false,
                                     "self_deaf": false, "server_mute": true, "server_deaf": false, "speaking": true}]}),
        ),
        v(
            "heartbeat_ack",
            "ServerControl",
            ServerControl::HeartbeatAck(Heartbeat {
                nonce: 250,
                lanes: vec![],
            }),
            json!({"type": "HeartbeatAck", "nonce": 250, "lanes": []}),
        ),
        v(
            "goaway",
            "ServerControl",
            ServerControl::Goaway(Goaway {
                reconnect_after_ms: 1_500,
                reason: "shutdown".into(),
            }),
            json!({"type": "Goaway", "reconnect_after_ms": 1500, "reason": "shutdown"}),
        ),
        v(
            "refresh_needed",
            "ServerControl",
            ServerControl::RefreshNeeded {
                expires_at_ms: 1_700_000_000_123,
            },
            json!({"type": "RefreshNeeded", "expires_at_ms": 1700000000123u64}),
        ),
        v(
            "token_refreshed",
            "ServerControl",
            ServerControl::TokenRefreshed { expires_at_ms: 65_535 },
            json!({"type": "TokenRefreshed", "expires_at_ms": 65535}),
        ),
        v(
            "control_error",
            "ServerControl",
            ServerControl::Error(ErrorBody::new(ErrorCode::TOKEN_REJECTED, "other user")),
            json!({"type": "Error", "code": 9, "message": "other user", "retry_after_ms": null}),
        ),
        v(
            "closing",
            "ServerControl",
            ServerControl::Closing(Closing {
                code: CloseCode::TOKEN_EXPIRED.0,
                reason: "token expired".into(),
            }),
            json!({"type": "Closing", "code": 4012, "reason": "token expired"}),
        ),
        v(
            "open_lane_typing",
            "StreamOpen",
            StreamOpen::Lane(Lane::Typing),
            json!({"type": "Lane", "lane": "Typing"}),
        ),
        v(
            "open_fetch_server_info",
            "StreamOpen",
            StreamOpen::Fetch(FetchRequest::ServerInfo),
            json!({"type": "Fetch", "request": {"type": "ServerInfo"}}),
        ),
        v(
            "request_ping",
            "Request",
            Request {
                id: 300,
                body: RequestBody::Ping {
                    data: vec![0xde, 0xad, 0xbe, 0xef],
                },
            },
            json!({"id": 300, "body": {"type": "Ping", "data": {"$bytes": "deadbeef"}}}),
        ),
        v(
            "ack_pong",
            "ServerLane",
            ServerLane::Ack {
                id: 300,
                body: ResponseBody::Pong { data: vec![1, 2] },
            },
            json!({"type": "Ack", "id": 300, "body": {"type": "Pong", "data": {"$bytes": "0102"}}}),
        ),
        v(
            "lane_error_rate_limited",
            "ServerLane",
            ServerLane::Error {
                id: 9,
                error: ErrorBody {
                    code: ErrorCode::RATE_LIMITED,
                    message: "slow down".into(),
                    retry_after_ms: Some(750),
                },
            },
            json!({"type": "Error", "id": 9, "error": {"code": 5, "message": "slow down", "retry_after_ms": 750}}),
        ),
        v(
            "event_notice",
            "ServerLane",
            ServerLane::Event {
                seq: (1 << 32) + 5,
                body: EventBody::Notice {
                    text: "maintenance".into(),
                },
            },
            json!({"type": "Event", "seq": 4294967301u64, "body": {"type": "Notice", "text": "maintenance"}}),
        ),
        v(
            "event_member_updated_v2",
            "ServerLane",
            ServerLane::Event {
                seq: 0,
                body: EventBody::MemberUpdated {
                    guild_id: 7,
                    member: Member {
                        user_id: 42,
                        name: "Ada".into(),
                        roles: vec![9],
                        avatar_url: "https://a.example/42.png".into(),
                        timed_out_until_ms: 1_800_000_000_000,
                    },
                },
            },
            json!({"type": "Event", "seq": 0, "body": {"type": "MemberUpdated", "guild_id": "7", "member": {
                "user_id": "42", "name": "Ada", "roles": ["9"], "avatar_url": "https://a.example/42.png",
                "timed_out_until_ms": 1_800_000_000_000u64}}}),
        ),
        v(
            "event_role_deleted_v2",
            "ServerLane",
            ServerLane::Event {
                seq: 0,
                body: EventBody::RoleDeleted {
                    guild_id: 7,
                    role_id: 9,
                },
            },
            json!({"type": "Event", "seq": 0, "body": {"type": "RoleDeleted", "guild_id": "7", "role_id": "9"}}),
        ),
        v(
            "event_voice_moved_v2",
            "ServerLane",
            ServerLane::Event {
                seq: 3,
                body: EventBody::VoiceMoved {
                    guild_id: 7,
                    channel_id: 8,
                },
            },
            json!({"type": "Event", "seq": 3, "body": {"type": "VoiceMoved", "guild_id": "7", "channel_id": "8"}}),
        ),
        v(
            "timeout_member_v2",
            "Request",
            Request {
                id: 6,
                body: RequestBody::TimeoutMember {
                    guild_id: 7,
                    user_id: 42,
                    duration_secs: 600,
                    reason: "spam".into(),
                },
            },
            json!({"id": 6, "body": {"type": "TimeoutMember", "guild_id": "7", "user_id": "42",
                   "duration_secs": 600, "reason": "spam"}}),
        ),
        v(
            "send_message",
            "Request",
            Request {
                id: 5,
                body: RequestBody::SendMessage {
                    channel_id: 1_300_000_000_000_000_001,
                    nonce: 18_000_000_000_000_000_000,
                    content: "hi <@42> 👋".into(),
                    reply_to: Some(7),
                },
            },
            json!({"id": 5, "body": {"type": "SendMessage", "channel_id": "1300000000000000001",
                   "nonce": "18000000000000000000", "content": "hi <@42> 👋", "reply_to": "7"}}),
        ),
        v(
            "ack_message_sent",
            "ServerLane",
            ServerLane::Ack {
                id: 5,
                body: ResponseBody::MessageSent {
                    message_id: 99,
                    seq: 12,
                    created_at_ms: 1_767_225_600_000,
                    duplicate: false,
                },
            },
            json!({"type": "Ack", "id": 5, "body": {"type": "MessageSent", "message_id": "99", "seq": 12,
                   "created_at_ms": 1767225600000u64, "duplicate": false}}),
        ),
        v(
            "event_message_created",
            "ServerLane",
            ServerLane::Event {
                seq: 3,
                body: EventBody::MessageCreated {
                    seq: 12,
                    message: Message {
                        id: 99,
                        channel_id: 8,
                        author_id: 42,
                        nonce: 1,
                        content: "yo".into(),
                        reply_to: None,
                        mentions: Mentions {
                            users: vec![43],
                            roles: vec![],
                            everyone: false,
                        },
                        seq: 12,
                        created_at_ms: 1000,
                        edited_at_ms: None,
                        deleted: false,
                        reactions: vec![Reaction {
                            emoji: "👍".into(),
                            count: 2,
                        }],
                    },
                },
            },
            json!({"type": "Event", "seq": 3, "body": {"type": "MessageCreated", "seq": 12, "message": {
                "id": "99", "channel_id": "8", "author_id": "42", "nonce": "1", "content": "yo", "reply_to": null,
                "mentions": {"users": ["43"], "roles": [], "everyone": false}, "seq": 12, "created_at_ms": 1000,
                "edited_at_ms": null, "deleted": false, "reactions": [{"emoji": "👍", "count": 2}]}}}),
        ),
        v(
            "set_overwrite",
            "Request",
            Request {
                id: 6,
                body: RequestBody::SetOverwrite {
                    channel_id: 8,
                    target: OverwriteTarget::Role(100),
                    allow: 0,
                    deny: 1 << 10,
                },
            },
            json!({"id": 6, "body": {"type": "SetOverwrite", "channel_id": "8", "target": {"type": "Role", "id": "100"},
                   "allow": 0, "deny": 1024}}),
        ),
        v(
            "open_fetch_history",
            "StreamOpen",
            StreamOpen::Fetch(FetchRequest::History {
                channel_id: 8,
                anchor: HistoryAnchor::Before(40),
                limit: 50,
            }),
            json!({"type": "Fetch", "request": {"type": "History", "channel_id": "8", "anchor": {"type": "Before", "seq": 40}, "limit": 50}}),
        ),
        v(
            "typing_start",
            "Request",
            Request {
                id: 1,
                body: RequestBody::TypingStart { channel_id: 8 },
            },
            json!({"id": 1, "body": {"type": "TypingStart", "channel_id": "8"}}),
        ),
        v(
            "event_typing_started",
            "ServerLane",
            ServerLane::Event {
                seq: 1,
                body: EventBody::TypingStarted {
                    channel_id: 8,
                    user_id: 42,
                    expires_in_ms: 10_000,
                },
            },
            json!({"type": "Event", "seq": 1, "body": {"type": "TypingStarted", "channel_id": "8", "user_id": "42", "expires_in_ms": 10000}}),
        ),
        v(
            "set_presence",
            "Request",
            Request {
                id: 2,
                body: RequestBody::SetPresence {
                    status: PresenceStatus::Idle,
                    custom_status: None,
                    activity: Some("coding".into()),
                },
            },
            json!({"id": 2, "body": {"type": "SetPresence", "status": "Idle", "custom_status": null, "activity": "coding"}}),
        ),
        v(
            "join_voice",
            "Request",
            Request {
                id: 3,
                body: RequestBody::JoinVoice {
                    channel_id: 4,
                    self_mute: false,
                    self_deaf: true,
                },
            },
            json!({"id": 3, "body": {"type": "JoinVoice", "channel_id": "4", "self_mute": false, "self_deaf": true}}),
        ),
        v(
            "ack_voice_server",
            "ServerLane",
            ServerLane::Ack {
                id: 3,
                body: ResponseBody::VoiceServer {
                    channel_id: 4,
                    endpoint: "10.0.0.2:4433".into(),
                    cert_hashes: vec![vec![0xab; 32]],
                },
            },
            json!({"type": "Ack", "id": 3, "body": {"type": "VoiceServer", "channel_id": "4", "endpoint": "10.0.0.2:4433", "cert_hashes": [{"$bytes": "ab".repeat(32)}]}}),
        ),
        v(
            "request_join_voice_webrtc",
            "Request",
            Request {
                id: 4,
                body: RequestBody::JoinVoiceWebRtc {
                    channel_id: 4,
                    self_mute: false,
                    self_deaf: false,
                    offer: "v=0\r\n".into(),
                },
            },
            json!({"id": 4, "body": {"type": "JoinVoiceWebRtc", "channel_id": "4", "self_mute": false, "self_deaf": false, "offer": "v=0\r\n"}}),
        ),
        v(
            "request_set_voice_options",
            "Request",
            Request {
                id: 5,
                body: RequestBody::SetVoiceOptions { redundancy: true },
            },
            json!({"id": 5, "body": {"type": "SetVoiceOptions", "redundancy": true}}),
        ),
        v(
            "request_view_channels",
            "Request",
            Request {
                id: 6,
                body: RequestBody::ViewChannels {
                    channel_ids: Some(vec![8, 300]),
                },
            },
            json!({"id": 6, "body": {"type": "ViewChannels", "channel_ids": ["8", "300"]}}),
        ),
        v(
            "event_channel_activity",
            "ServerLane",
            ServerLane::Event {
                seq: 5,
                body: EventBody::ChannelActivity {
                    channels: vec![ChannelSeq {
                        channel_id: 9,
                        seq: 1000,
                    }],
                },
            },
            json!({"type": "Event", "seq": 5, "body": {"type": "ChannelActivity", "channels": [{"channel_id": "9", "seq": 1000}]}}),
        ),
        v(
            "ack_voice_joined_webrtc",
            "ServerLane",
            ServerLane::Ack {
                id: 4,
                body: ResponseBody::VoiceJoinedWebRtc {
                    channel_id: 4,
                    slot: 1,
                    participants: Vec::new(),
                    answer: "v=0\r\n".into(),
                },
            },
            json!({"type": "Ack", "id": 4, "body": {"type": "VoiceJoinedWebRtc", "channel_id": "4", "slot": 1, "participants": [], "answer": "v=0\r\n"}}),
        ),
        v(
            "ack_voice_stats",
            "ServerLane",
            ServerLane::Ack {
                id: 5,
                body: ResponseBody::VoiceStats {
                    participants: vec![
                        VoiceParticipantStats {
                            user_id: 5,
                            slot: 1,
                            received: 500,
                            forwarded: 1000,
                            dropped: 3,
                            lost: 1,
                            jitter_us: 1200,
                            downlink: None,
                        },
                        VoiceParticipantStats {
                            user_id: 6,
                            slot: 2,
                            received: 480,
                            forwarded: 960,
                            dropped: 0,
                            lost: 0,
                            jitter_us: 800,
                            downlink: Some(VoiceDownlinkStats {
                                packets: 520,
                                lost: 2,
                                jitter_us: 3000,
                                rtt_us: Some(41_000),
                            }),
                        },
                    ],
                },
            },
            json!({"type": "Ack", "id": 5, "body": {"type": "VoiceStats", "participants": [
                {"user_id": "5", "slot": 1, "received": 500, "forwarded": 1000, "dropped": 3, "lost": 1, "jitter_us": 1200, "downlink": null},
                {"user_id": "6", "slot": 2, "received": 480, "forwarded": 960, "dropped": 0, "lost": 0, "jitter_us": 800,
                 "downlink": {"packets": 520, "lost": 2, "jitter_us": 3000, "rtt_us": 41000}}]}}),
        ),
        v(
            "event_voice_speaking",
            "ServerLane",
            ServerLane::Event {
                seq: 9,
                body: EventBody::VoiceSpeaking {
                    channel_id: 4,
                    user_id: 5,
                    slot: 2,
                    speaking: true,
                },
            },
            json!({"type": "Event", "seq": 9, "body": {"type": "VoiceSpeaking", "channel_id": "4", "user_id": "5", "slot": 2, "speaking": true}}),
        ),
        v(
            "event_voice_track",
            "ServerLane",
            ServerLane::Event {
                seq: 10,
                body: EventBody::VoiceTrack {
                    channel_id: 4,
                    mid: "1".into(),
                    slot: 2,
                },
            },
            json!({"type": "Event", "seq": 10, "body": {"type": "VoiceTrack", "channel_id": "4", "mid": "1", "slot": 2}}),
        ),
        v(
            "event_app_event",
            "ServerLane",
            ServerLane::Event {
                seq: 4,
                body: EventBody::AppEvent {
                    name: "poll.updated".into(),
                    data: r#"{"votes":[3,1]}"#.into(),
                    channel_id: Some(8),
                    guild_id: Some(1),
                },
            },
            json!({"type": "Event", "seq": 4, "body": {"type": "AppEvent", "name": "poll.updated",
                "data": "{\"votes\":[3,1]}", "channel_id": "8", "guild_id": "1"}}),
        ),
        v(
            "event_presence_snapshot",
            "ServerLane",
            ServerLane::Event {
                seq: 3,
                body: EventBody::PresenceSnapshot {
                    presences: vec![Presence {
                        user_id: 7,
                        status: PresenceStatus::Online,
                        client_status: ClientStatus {
                            desktop: PresenceStatus::Offline,
                            mobile: PresenceStatus::Offline,
                            web: PresenceStatus::Online,
                        },
                        custom_status: Some("hi".into()),
                        activity: None,
                    }],
                },
            },
            json!({"type": "Event", "seq": 3, "body": {"type": "PresenceSnapshot", "presences": [
                {"user_id": "7", "status": "Online", "client_status": {"desktop": "Offline", "mobile": "Offline", "web": "Online"},
                 "custom_status": "hi", "activity": null}]}}),
        ),
        v(
            "event_voice_states_snapshot",
            "ServerLane",
            ServerLane::Event {
                seq: 11,
                body: EventBody::VoiceStatesSnapshot {
                    channel_ids: vec![4, 5],
                    states: vec![VoiceState {
                        guild_id: 1,
                        channel_id: 4,
                        user_id: 5,
                        slot: 2,
                        self_mute: true,
                        self_deaf: false,
                        server_mute: false,
                        server_deaf: false,
                        speaking: false,
                    }],
                },
            },
            json!({"type": "Event", "seq": 11, "body": {"type": "VoiceStatesSnapshot", "channel_ids": ["4", "5"], "states": [
                {"guild_id": "1", "channel_id": "4", "user_id": "5", "slot": 2, "self_mute": true, "self_deaf": false,
                 "server_mute": false, "server_deaf": false, "speaking": false}]}}),
        ),
        v(
            "fetch_ok_server_info",
            "FetchReply",
            FetchReply::Ok(FetchResponse::ServerInfo {
                version: "0.1.0".into(),
                node: "n1".into(),
                protocols: vec![1],
                max_frame_bytes: 262_144,
            }),
            json!({"type": "Ok", "response": {"type": "ServerInfo", "version": "0.1.0", "node": "n1", "protocols": [1], "max_frame_bytes": 262144}}),
        ),
        v(
            "open_fetch_invite",
            "StreamOpen",
            StreamOpen::Fetch(FetchRequest::Invite { code: "AbC123".into() }),
            json!({"type": "Fetch", "request": {"type": "Invite", "code": "AbC123"}}),
        ),
        v(
            "fetch_ok_invite",
            "FetchReply",
            FetchReply::Ok(FetchResponse::Invite {
                invite: Invite {
                    code: "AbC123".into(),
                    guild_id: 9,
                    max_uses: 0,
                    expires_at_ms: Some(1_767_225_600_000),
                },
                guild: Guild {
                    id: 9,
                    name: "team".into(),
                    owner_id: 1,
                },
                member_count: 12,
                member: false,
            }),
            json!({"type": "Ok", "response": {"type": "Invite",
                "invite": {"code": "AbC123", "guild_id": "9", "max_uses": 0, "expires_at_ms": 1767225600000u64},
                "guild": {"id": "9", "name": "team", "owner_id": "1"}, "member_count": 12, "member": false}}),
        ),
        v(
            "fetch_err",
            "FetchReply",
            FetchReply::Err(ErrorBody::new(ErrorCode::NOT_FOUND, "")),
            json!({"type": "Err", "error": {"code": 4, "message": "", "retry_after_ms": null}}),
        ),
    ]
}

fn datagrams() -> Vec<(&'static str, Vec<u8>, Value)> {
    let up = Uplink {
        flags: FLAG_TALKSPURT_START,
        level: AudioLevel::new(30, true),
        seq: 65_535,
        timestamp: 960,
    };
    let mut up_bytes = Vec::new();
    up.write(&[0xf8, 0xff, 0xfe], &mut up_bytes);
    let down = Downlink {
        flags: FLAG_DTX,
        level: AudioLevel::new(127, false),
        slot: 3,
        seq: 1,
        timestamp: 4_294_967_295,
    };
    let mut down_bytes = down.to_bytes().to_vec();
    down_bytes.extend_from_slice(&[0xaa]);
    // Frame 7 carrying frame 6 again (PROTOCOL.md §8, FLAG_REDUNDANT).
    let red = Uplink {
        flags: 0,
        level: AudioLevel::new(20, true),
        seq: 7,
        timestamp: 7 * 960,
    };
    let previous = Redundant {
        timestamp_offset: 960,
        payload: &[0x66, 0x66],
    };
    let mut red_up = Vec::new();
    red.write_with(Some(previous), &[0x77, 0x77, 0x77], &mut red_up);
    let (red_h, red_p) = Uplink::parse(&red_up).unwrap();
    let mut red_down = Downlink::from_uplink(&red_h, 2).to_bytes().to_vec();
    red_down.extend_from_slice(red_p);
    vec![
        (
            "uplink_talkspurt",
            up_bytes,
            json!({"flags": 1, "level": 30, "voice": true, "seq": 65535, "timestamp": 960, "payload": "f8fffe"}),
        ),
        (
            "downlink_dtx",
            down_bytes,
            json!({"flags": 2, "level": 127, "voice": false, "slot": 3, "seq": 1, "timestamp": 4294967295u64, "payload": "aa"}),
        ),
        (
            "uplink_redundant",
            red_up,
            json!({"flags": 4, "level": 20, "voice": true, "seq": 7, "timestamp": 6720,
                   "previous": {"timestamp_offset": 960, "payload": "6666"}, "payload": "777777"}),
        ),
        (
            "downlink_redundant",
            red_down,
            json!({"flags": 4, "level": 20, "voice": true, "slot": 2, "seq": 7, "timestamp": 6720,
                   "previous": {"timestamp_offset": 960, "payload": "6666"}, "payload": "777777"}),
        ),
    ]
}

/// WebSocket framing messages (PROTOCOL.md §11): a frame and its JSON form.
fn ws_frames() -> Vec<(&'static str, ws::Frame, Value)> {
    use bytes::Bytes;
    // The control stream's first bytes: a Hello frame (length-prefixed, as on QUIC).
    let mut hello = Vec::new();
    encode_frame(
        &ClientControl::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: None,
            device: DeviceKind::Web,
            resume: None,
            compression: Compression::None,
        }),
        &mut hello,
    );
    let hello_hex = hex::encode(&hello);
    vec![
        (
            "ws_control_hello",
            ws::Frame::Data {
                stream: 0,
                fin: false,
                bytes: Bytes::from(hello),
            },
            json!({"type": "Data", "stream": 0, "fin": false, "bytes": hello_hex}),
        ),
        (
            "ws_fetch_end",
            ws::Frame::Data {
                stream: 68,
                fin: true,
                bytes: Bytes::new(),
            },
            json!({"type": "Data", "stream": 68, "fin": true, "bytes": ""}),
        ),
        (
            "ws_reset",
            ws::Frame::Reset { stream: 4, code: 4000 },
            json!({"type": "Reset", "stream": 4, "code": 4000}),
        ),
        (
            "ws_stop",
            ws::Frame::Stop {
                stream: 16_384,
                code: 0,
            },
            json!({"type": "Stop", "stream": 16384, "code": 0}),
        ),
        (
            "ws_datagram",
            ws::Frame::Datagram(Bytes::from_static(&[
                0x01, 0x9e, 0xff, 0xff, 0xc0, 0x03, 0x00, 0x00, 0xf8,
            ])),
            json!({"type": "Datagram", "bytes": "019effffc0030000f8"}),
        ),
    ]
}

fn render() -> Value {
    let msgs: Vec<Value> = vectors()
        .into_iter()
        .map(|vec| {
            let mut framed = Vec::new();
            quaver_proto::varint::write(vec.payload.len() as u64, &mut framed);
            framed.extend_from_slice(&vec.payload);
            json!({"name": vec.name, "type": vec.ty, "value": vec.value,
                   "payload": hex::encode(&vec.payload), "frame": hex::encode(&framed)})
        })
        .collect();
    let dgrams: Vec<Value> = datagrams()
        .into_iter()
        .map(|(name, bytes, value)| json!({"name": name, "value": value, "hex": hex::encode(bytes)}))
        .collect();
    let websocket: Vec<Value> = ws_frames()
        .into_iter()
        .map(|(name, f, value)| json!({"name": name, "value": value, "hex": hex::encode(f.to_bytes())}))
        .collect();
    json!({"protocol_version": PROTOCOL_VERSION, "messages": msgs, "datagrams": dgrams, "websocket": websocket})
}

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/messages.json");

#[test]
fn golden_vectors_match() {
    let expected = render();
    if std::env::var_os("QUAVER_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let text = std::fs::read_to_string(PATH).expect("vectors/messages.json (run with QUAVER_BLESS=1)");
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        on_disk, expected,
        "vectors/messages.json differs from the encoder; re-bless only for a deliberate protocol change"
    );
}

#[test]
fn golden_vectors_decode_to_their_values() {
    for vec in vectors() {
        assert!((vec.decodes)(&vec.payload), "{} does not decode back", vec.name);
        // Every strict prefix must fail to decode (no message is a prefix of another form).
        for cut in 0..vec.payload.len() {
            assert!(
                !(vec.decodes)(&vec.payload[..cut]),
                "{} decodes from a prefix of {cut} bytes",
                vec.name
            );
        }
    }
    for (name, frame, _) in ws_frames() {
        let bytes = frame.to_bytes();
        assert_eq!(ws::Frame::decode(bytes.clone().into()), Ok(frame), "{name}");
    }
    for (name, bytes, value) in datagrams() {
        let (flags, p) = if name.starts_with("uplink") {
            let (h, p) = Uplink::parse(&bytes).unwrap();
            assert_eq!(u64::from(h.seq), value["seq"].as_u64().unwrap());
            (h.flags, p)
        } else {
            let (h, p) = Downlink::parse(&bytes).unwrap();
            assert_eq!(u64::from(h.slot), value["slot"].as_u64().unwrap());
            (h.flags, p)
        };
        // The JSON form's `payload` is the frame's own; a redundancy block is `previous`.
        let (previous, own) = Redundant::split(flags, p).unwrap();
        assert_eq!(hex::encode(own), value["payload"].as_str().unwrap(), "{name}");
        match previous {
            Some(r) => {
                assert_eq!(hex::encode(r.payload), value["previous"]["payload"].as_str().unwrap());
                assert_eq!(
                    u64::from(r.timestamp_offset),
                    value["previous"]["timestamp_offset"].as_u64().unwrap()
                );
            }
            None => assert!(value.get("previous").is_none(), "{name}"),
        }
    }
}
