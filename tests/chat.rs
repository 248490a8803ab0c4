//! Chat over real QUIC on loopback: guilds, permissions, ordering, deduplication, fan-out,
//! history, read states, DMs, validation and rate limits.

mod common;

use std::time::Duration;

use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::*;

struct U {
    id: u64,
    client: Client,
    chat: LaneStream,
}

impl U {
    async fn new(server: &quaver::Server, id: u64, transport: Transport) -> U {
        let client = connect(&client_config(server, transport, Some(token(id))))
            .await
            .unwrap();
        let chat = client.open_lane(Lane::Chat).await.unwrap();
        let mut u = U { id, client, chat };
        // A round trip guarantees the lane is registered before events are expected.
        u.req(RequestBody::Ping { data: vec![] }).await.unwrap();
        u
    }

    async fn req(&mut self, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
        tokio::time::timeout(Duration::from_secs(10), self.chat.request(body))
            .await
            .expect("reply in time")
            .unwrap()
    }

    /// Sends, waiting out rate limits with the same nonce.
    async fn send(&mut self, channel_id: u64, nonce: u64, content: &str) -> (u64, u64) {
        loop {
            let body = RequestBody::SendMessage {
                channel_id,
                nonce,
                content: content.into(),
                reply_to: None,
            };
            match self.req(body).await {
                Ok(ResponseBody::MessageSent { message_id, seq, .. }) => return (message_id, seq),
                Err(e) if e.code == ErrorCode::RATE_LIMITED => {
                    tokio::time::sleep(Duration::from_millis(u64::from(e.retry_after_ms.unwrap()))).await
                }
                other => panic!("send failed: {other:?}"),
            }
        }
    }

    async fn event(&mut self) -> EventBody {
        match tokio::time::timeout(Duration::from_secs(10), self.chat.next())
            .await
            .expect("event in time")
            .unwrap()
        {
            ServerLane::Event { body, .. } => body,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event matching `f`, skipping others.
    async fn event_where(&mut self, f: impl Fn(&EventBody) -> bool) -> EventBody {
        loop {
            let e = self.event().await;
            if f(&e) {
                return e;
            }
        }
    }

    /// Asserts that no event matching `f` arrives within `wait`.
    async fn none_within(&mut self, wait: Duration, f: impl Fn(&EventBody) -> bool) {
        let end = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(end, self.chat.next()).await {
                Err(_) => return,
                Ok(Ok(ServerLane::Event { body, .. })) => assert!(!f(&body), "unexpected event {body:?}"),
                Ok(other) => panic!("{other:?}"),
            }
        }
    }

    async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, ErrorBody> {
        self.client.fetch(req).await.unwrap()
    }
}

/// A server whose guild-management limit leaves room for a test's many role changes.
fn roomy() -> quaver::config::Config {
    let mut cfg = config();
    cfg.limits.manage = quaver::limits::Rate {
        burst: 100.0,
        per_sec: 100.0,
    };
    cfg
}

/// Owner creates a guild; the others join by invite. Returns (guild id, general channel id).
async fn guild_with(owner: &mut U, others: &mut [&mut U]) -> (u64, u64) {
    shared_guild(
        &owner.client,
        &mut owner.chat,
        others.iter_mut().map(|o| &mut o.chat).collect(),
    )
    .await
}

fn is_msg(e: &EventBody) -> bool {
    matches!(e, EventBody::MessageCreated { .. })
}

#[tokio::test]
async fn two_users_in_a_guild_exchange_messages() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut b = U::new(&server, 2, Transport::WebTransport).await;
    let (gid, ch) = guild_with(&mut a, &mut [&mut b]).await;
    let (id1, seq1) = a.send(ch, 1, "hello b").await;
    let (_, seq2) = b.send(ch, 1, "hello a <@1>").await;
    assert_eq!((seq1, seq2), (1, 2));
    for u in [&mut a, &mut b] {
        let EventBody::MessageCreated { seq, message } = u.event_where(is_msg).await else {
            unreachable!()
        };
        assert_eq!(
            (seq, message.id, message.content.as_str(), message.author_id),
            (1, id1, "hello b", 1)
        );
        let EventBody::MessageCreated { seq, message } = u.event_where(is_msg).await else {
            unreachable!()
        };
        assert_eq!((seq, message.mentions.users.clone()), (2, vec![1]));
    }
    // A new session's Ready carries the guild, the channel's seq and the mention count.
    let c = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let g = c.ready.guilds.iter().find(|g| g.guild.id == gid).unwrap();
    assert_eq!(g.channels[0].last_seq, 2);
    assert_eq!(g.member_count, 2);
    assert_eq!(g.members.iter().map(|m| m.user_id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(c.ready.read_states.contains(&ReadState {
        channel_id: ch,
        last_read_seq: 0,
        mention_count: 1
    }));
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_senders_every_receiver_sees_one_gap_free_order() {
    let server = start(config()).await;
    let mut owner = U::new(&server, 1, Transport::Quic).await;
    let mut senders = Vec::new();
    for id in 10..15 {
        senders.push(
            U::new(
                &server,
                id,
                if id % 2 == 0 {
                    Transport::Quic
                } else {
                    Transport::WebTransport
                },
            )
            .await,
        );
    }
    let mut watcher = U::new(&server, 20, Transport::WebTransport).await;
    let (_, ch) = {
        let mut refs: Vec<&mut U> = senders.iter_mut().collect();
        refs.push(&mut watcher);
        guild_with(&mut owner, &mut refs).await
    };
    const EACH: u64 = 12;
    let mut tasks = Vec::new();
    for mut s in senders {
        tasks.push(tokio::spawn(async move {
            for k in 0..EACH {
                s.send(ch, k + 1, &format!("{}:{k}", s.id)).await;
            }
            s
        }));
    }
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await.unwrap());
    }
    let total = 5 * EACH;
    let mut orders = Vec::new();
    for u in senders.iter_mut().chain([&mut owner, &mut watcher]) {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            if let EventBody::MessageCreated { seq, message } = u.event_where(is_msg).await {
                seen.push((seq, message.id));
            }
        }
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "user {} saw a gap or reordering",
            u.id
        );
        orders.push(seen);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "everyone saw the same order");
    server.shutdown().await;
}

#[tokio::test]
async fn a_retried_nonce_yields_exactly_one_message_even_after_reconnecting() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (_, ch) = guild_with(&mut a, &mut []).await;
    let (id, seq) = a.send(ch, 4242, "once").await;
    let again = a
        .req(RequestBody::SendMessage {
            channel_id: ch,
            nonce: 4242,
            content: "once".into(),
            reply_to: None,
        })
        .await;
    assert_eq!(
        again,
        Ok(ResponseBody::MessageSent {
            message_id: id,
            seq,
            created_at_ms: match again {
                Ok(ResponseBody::MessageSent { created_at_ms, .. }) => created_at_ms,
                _ => 0,
            },
            duplicate: true
        })
    );
    a.client.close();
    let mut a2 = U::new(&server, 1, Transport::WebTransport).await;
    match a2
        .req(RequestBody::SendMessage {
            channel_id: ch,
            nonce: 4242,
            content: "once".into(),
            reply_to: None,
        })
        .await
    {
        Ok(ResponseBody::MessageSent {
            message_id, duplicate, ..
        }) => assert_eq!((message_id, duplicate), (id, true)),
        other => panic!("{other:?}"),
    }
    let Ok(FetchResponse::History { messages, .. }) = a2
        .fetch(FetchRequest::History {
            channel_id: ch,
            anchor: HistoryAnchor::Latest,
            limit: 100,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(messages.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn edits_deletes_reactions_and_replies_reach_every_viewer() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut b = U::new(&server, 2, Transport::WebTransport).await;
    let (_, ch) = guild_with(&mut a, &mut [&mut b]).await;
    let (m1, _) = a.send(ch, 1, "original").await;
    let reply = b
        .req(RequestBody::SendMessage {
            channel_id: ch,
            nonce: 9,
            content: "re".into(),
            reply_to: Some(m1),
        })
        .await
        .unwrap();
    let ResponseBody::MessageSent { message_id: m2, .. } = reply else {
        panic!()
    };
    a.req(RequestBody::EditMessage {
        channel_id: ch,
        message_id: m1,
        content: "edited".into(),
    })
    .await
    .unwrap();
    b.req(RequestBody::AddReaction {
        channel_id: ch,
        message_id: m1,
        emoji: "👍".into(),
    })
    .await
    .unwrap();
    b.req(RequestBody::RemoveReaction {
        channel_id: ch,
        message_id: m1,
        emoji: "👍".into(),
    })
    .await
    .unwrap();
    // b may not edit or delete a's message (no manage-messages); a may delete b's? No: a is
    // the owner, so yes.
    assert_eq!(
        b.req(RequestBody::EditMessage {
            channel_id: ch,
            message_id: m1,
            content: "hijack".into()
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    assert_eq!(
        b.req(RequestBody::DeleteMessage {
            channel_id: ch,
            message_id: m1
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    a.req(RequestBody::DeleteMessage {
        channel_id: ch,
        message_id: m2,
    })
    .await
    .unwrap();
    for u in [&mut a, &mut b] {
        let mut kinds = Vec::new();
        while kinds.len() < 6 {
            let e = u.event().await;
            if let Some((_, seq)) = e.channel_seq() {
                kinds.push((seq, e));
            }
        }
        assert_eq!(
            kinds.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert!(matches!(&kinds[1].1, EventBody::MessageCreated { message, .. } if message.reply_to == Some(m1)));
        assert!(matches!(&kinds[2].1, EventBody::MessageEdited { content, .. } if content == "edited"));
        assert!(matches!(&kinds[3].1, EventBody::ReactionAdded { user_id: 2, emoji, .. } if emoji == "👍"));
        assert!(matches!(&kinds[4].1, EventBody::ReactionRemoved { user_id: 2, .. }));
        assert!(matches!(&kinds[5].1, EventBody::MessageDeleted { message_id, .. } if *message_id == m2));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn view_permission_hides_everything_and_overwrites_apply_live() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut b = U::new(&server, 2, Transport::Quic).await;
    let (gid, ch) = guild_with(&mut a, &mut [&mut b]).await;
    const VIEW: u64 = 1 << 10;
    a.req(RequestBody::SetOverwrite {
        channel_id: ch,
        target: OverwriteTarget::Role(gid),
        allow: 0,
        deny: VIEW,
    })
    .await
    .unwrap();
    b.event_where(|e| matches!(e, EventBody::ChannelRemoved { channel_id } if *channel_id == ch))
        .await;
    a.send(ch, 1, "secret").await;
    b.none_within(Duration::from_millis(300), is_msg).await;
    assert_eq!(
        b.req(RequestBody::SendMessage {
            channel_id: ch,
            nonce: 1,
            content: "x".into(),
            reply_to: None
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::NOT_FOUND
    );
    let hist = b
        .fetch(FetchRequest::History {
            channel_id: ch,
            anchor: HistoryAnchor::Latest,
            limit: 10,
        })
        .await;
    assert_eq!(hist.unwrap_err().code, ErrorCode::NOT_FOUND);
    let Ok(FetchResponse::Channels { channels }) = b.fetch(FetchRequest::Channels { guild_id: gid }).await else {
        panic!()
    };
    assert!(channels.iter().all(|c| c.id != ch));
    // A member overwrite gives it back, live.
    a.req(RequestBody::SetOverwrite {
        channel_id: ch,
        target: OverwriteTarget::Member(2),
        allow: VIEW,
        deny: 0,
    })
    .await
    .unwrap();
    b.event_where(|e| matches!(e, EventBody::ChannelUpdated { channel } if channel.id == ch))
        .await;
    let (_, seq) = a.send(ch, 2, "welcome back").await;
    let EventBody::MessageCreated { seq: got, .. } = b.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!(got, seq);
    // Read-only: send denied for b by a role overwrite, but b still sees.
    let Ok(ResponseBody::Role(muted)) = a
        .req(RequestBody::CreateRole {
            guild_id: gid,
            name: "muted".into(),
            permissions: 0,
        })
        .await
    else {
        panic!()
    };
    a.req(RequestBody::SetOverwrite {
        channel_id: ch,
        target: OverwriteTarget::Role(muted.id),
        allow: 0,
        deny: 1 << 11,
    })
    .await
    .unwrap();
    a.req(RequestBody::SetMemberRole {
        guild_id: gid,
        user_id: 2,
        role_id: muted.id,
        add: true,
    })
    .await
    .unwrap();
    assert_eq!(
        b.req(RequestBody::SendMessage {
            channel_id: ch,
            nonce: 3,
            content: "x".into(),
            reply_to: None
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    // Management needs permissions: b cannot create channels or overwrites.
    assert_eq!(
        b.req(RequestBody::CreateChannel {
            guild_id: gid,
            kind: ChannelKind::Text,
            name: "x".into(),
            topic: String::new(),
            user_limit: 0,
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::FORBIDDEN
    );
    server.shutdown().await;
}

#[tokio::test]
async fn history_pages_over_a_fetch_stream() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::WebTransport).await;
    let (_, ch) = guild_with(&mut a, &mut []).await;
    for k in 1..=30 {
        a.send(ch, k, &format!("m{k}")).await;
    }
    let mut seqs = Vec::new();
    let mut anchor = HistoryAnchor::Latest;
    loop {
        let Ok(FetchResponse::History {
            messages, more_before, ..
        }) = a
            .fetch(FetchRequest::History {
                channel_id: ch,
                anchor,
                limit: 8,
            })
            .await
        else {
            panic!()
        };
        let mut page: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        anchor = HistoryAnchor::Before(page[0]);
        page.extend(seqs);
        seqs = page;
        if !more_before {
            break;
        }
    }
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    server.shutdown().await;
}

#[tokio::test]
async fn read_state_syncs_across_sessions() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut b1 = U::new(&server, 2, Transport::Quic).await;
    let mut b2 = U::new(&server, 2, Transport::WebTransport).await;
    let (_, ch) = guild_with(&mut a, &mut [&mut b1]).await;
    let (_, seq) = a.send(ch, 1, "read me <@2>").await;
    b1.req(RequestBody::MarkRead { channel_id: ch, seq }).await.unwrap();
    let e = b2
        .event_where(|e| matches!(e, EventBody::ReadStateUpdated { .. }))
        .await;
    assert_eq!(
        e,
        EventBody::ReadStateUpdated {
            state: ReadState {
                channel_id: ch,
                last_read_seq: seq,
                mention_count: 0
            }
        }
    );
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    assert!(fresh.ready.read_states.contains(&ReadState {
        channel_id: ch,
        last_read_seq: seq,
        mention_count: 0
    }));
    server.shutdown().await;
}

#[tokio::test]
async fn dms_and_group_dms() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut b = U::new(&server, 2, Transport::WebTransport).await;
    let mut c = U::new(&server, 3, Transport::Quic).await;
    let Ok(ResponseBody::Channel(dm)) = a.req(RequestBody::OpenDm { user_id: 2 }).await else {
        panic!()
    };
    assert_eq!((dm.kind, dm.recipients.clone()), (ChannelKind::Dm, vec![1, 2]));
    let Ok(ResponseBody::Channel(same)) = b.req(RequestBody::OpenDm { user_id: 1 }).await else {
        panic!()
    };
    assert_eq!(same.id, dm.id);
    a.send(dm.id, 1, "psst").await;
    let EventBody::MessageCreated { message, .. } = b.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!(message.content, "psst");
    assert_eq!(
        c.req(RequestBody::SendMessage {
            channel_id: dm.id,
            nonce: 1,
            content: "me too".into(),
            reply_to: None
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::NOT_FOUND
    );
    c.none_within(Duration::from_millis(200), is_msg).await;

    let Ok(ResponseBody::Channel(group)) = a
        .req(RequestBody::CreateGroupDm {
            user_ids: vec![2, 3, 3],
            name: "trio".into(),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(group.recipients, vec![1, 2, 3]);
    c.send(group.id, 2, "hi all").await;
    for u in [&mut a, &mut b] {
        let gid = group.id;
        let e = u
            .event_where(|e| matches!(e, EventBody::MessageCreated { message, .. } if message.channel_id == gid))
            .await;
        let EventBody::MessageCreated { message, .. } = e else {
            unreachable!()
        };
        assert_eq!(message.content, "hi all");
    }
    let too_many: Vec<u64> = (2..=11).collect();
    assert_eq!(
        a.req(RequestBody::CreateGroupDm {
            user_ids: too_many,
            name: String::new()
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::GROUP_FULL
    );
    // The new session sees both private channels in Ready.
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(3))))
        .await
        .unwrap();
    assert_eq!(
        fresh.ready.private_channels.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![group.id]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn validation_errors_and_rate_limits_have_their_codes() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (gid, ch) = guild_with(&mut a, &mut []).await;
    let send = |content: &str, nonce: u64| RequestBody::SendMessage {
        channel_id: ch,
        nonce,
        content: content.into(),
        reply_to: None,
    };
    assert_eq!(a.req(send("", 1)).await.unwrap_err().code, ErrorCode::INVALID_CONTENT);
    assert_eq!(
        a.req(send("   ", 2)).await.unwrap_err().code,
        ErrorCode::INVALID_CONTENT
    );
    assert_eq!(
        a.req(send(&"x".repeat(4001), 3)).await.unwrap_err().code,
        ErrorCode::INVALID_CONTENT
    );
    assert_eq!(
        a.req(send("nul\u{0}", 4)).await.unwrap_err().code,
        ErrorCode::INVALID_CONTENT
    );
    assert_eq!(
        a.req(RequestBody::CreateGuild { name: " ".into() })
            .await
            .unwrap_err()
            .code,
        ErrorCode::INVALID_NAME
    );
    let (m, _) = a.send(ch, 5, "target").await;
    assert_eq!(
        a.req(RequestBody::AddReaction {
            channel_id: ch,
            message_id: m,
            emoji: "lol".into()
        })
        .await
        .unwrap_err()
        .code,
        ErrorCode::INVALID_EMOJI
    );
    let mut bad_reply = send("re", 6);
    if let RequestBody::SendMessage { reply_to, .. } = &mut bad_reply {
        *reply_to = Some(12345);
    }
    assert_eq!(a.req(bad_reply).await.unwrap_err().code, ErrorCode::INVALID_REPLY);
    assert_eq!(
        a.req(RequestBody::JoinGuild { code: "nope".into() })
            .await
            .unwrap_err()
            .code,
        ErrorCode::INVALID_INVITE
    );
    assert_eq!(
        a.req(RequestBody::LeaveGuild { guild_id: gid }).await.unwrap_err().code,
        ErrorCode::OWNER
    );
    assert_eq!(a.req(send("x", 7)).await.map(|_| ()), Ok(()));
    // Sends past the burst are refused with a retry hint, not silently dropped.
    let mut limited = None;
    for n in 100..130 {
        if let Err(e) = a.req(send("spam", n)).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limit reached within 30 sends");
    assert_eq!(e.code, ErrorCode::RATE_LIMITED);
    assert!(e.retry_after_ms.unwrap() > 0 && e.retry_after_ms.unwrap() <= 1000);
    // Requests on the wrong lane are refused.
    let mut typing = a.client.open_lane(Lane::Typing).await.unwrap();
    assert_eq!(
        typing.request(send("x", 200)).await.unwrap().unwrap_err().code,
        ErrorCode::WRONG_LANE
    );
    server.shutdown().await;
}

#[tokio::test]
async fn flooding_past_the_limits_closes_the_session() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (_, ch) = guild_with(&mut a, &mut []).await;
    let mut closed = None;
    for n in 0..200u64 {
        let body = RequestBody::SendMessage {
            channel_id: ch,
            nonce: n,
            content: "flood".into(),
            reply_to: None,
        };
        match tokio::time::timeout(Duration::from_secs(5), a.chat.request(body))
            .await
            .unwrap()
        {
            Ok(_) => {}
            Err(e) => {
                closed = e.close_code();
                break;
            }
        }
    }
    if closed.is_none() {
        // The server told the session why on its control stream and closes it shortly.
        closed = tokio::time::timeout(Duration::from_secs(5), a.client.closed())
            .await
            .unwrap()
            .map(|(c, _)| c);
    }
    assert_eq!(closed, Some(CloseCode::RATE_LIMITED));
    // Others are unaffected.
    let mut b = U::new(&server, 2, Transport::Quic).await;
    b.req(RequestBody::CreateGuild { name: "fine".into() }).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn large_history_pages_are_compressed_when_negotiated() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (_, ch) = guild_with(&mut a, &mut []).await;
    let body: String = "the quick brown fox jumps over the lazy dog ".repeat(45);
    for k in 1..=20 {
        a.send(ch, k, &format!("{k} {body}")).await;
    }
    let fetch_bytes = || {
        server.ctx.metrics.tx[quaver::metrics::FETCH]
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let req = FetchRequest::History {
        channel_id: ch,
        anchor: HistoryAnchor::Latest,
        limit: 100,
    };
    // The default client asks for zstd.
    let before = fetch_bytes();
    let Ok(FetchResponse::History { messages, .. }) = a.fetch(req.clone()).await else {
        panic!()
    };
    let compressed = fetch_bytes() - before;
    assert_eq!(messages.len(), 20);
    assert!(messages.iter().all(|m| m.content.ends_with(&body)));
    // A client that does not ask gets it plain.
    let mut cfg = client_config(&server, Transport::WebTransport, Some(token(1)));
    cfg.compression = Compression::None;
    let plain_client = connect(&cfg).await.unwrap();
    assert_eq!(plain_client.ready.compression, Compression::None);
    let before = fetch_bytes();
    let Ok(Ok(FetchResponse::History { messages: again, .. })) = plain_client.fetch(req).await else {
        panic!()
    };
    let plain = fetch_bytes() - before;
    assert_eq!(again, messages);
    assert!(plain > 20 * 1900, "plain page is {plain} bytes");
    assert!(compressed * 5 < plain, "compressed {compressed} vs plain {plain}");
    server.shutdown().await;
}

#[tokio::test]
async fn channels_and_guilds_fetches_report_the_current_seq() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (g, ch) = shared_guild(&a.client, &mut a.chat, vec![]).await;
    for n in 0..5 {
        a.send(ch, n, "hi").await;
    }
    let Ok(Ok(FetchResponse::Channels { channels })) = a.client.fetch(FetchRequest::Channels { guild_id: g }).await
    else {
        panic!("channels")
    };
    assert_eq!(channels.iter().find(|c| c.id == ch).unwrap().last_seq, 5);
    let Ok(Ok(FetchResponse::Guilds { guilds })) = a.client.fetch(FetchRequest::Guilds).await else {
        panic!("guilds")
    };
    assert_eq!(guilds[0].channels.iter().find(|c| c.id == ch).unwrap().last_seq, 5);
    server.shutdown().await;
}

/// A database that holds its locks: a send gets `UNAVAILABLE` within the deadline (not
/// silence), a new session is refused with a reconnect code, `/ready` says 503; once the
/// lock goes, the same nonce is stored once and the node is ready again.
#[tokio::test]
async fn a_database_that_holds_its_locks_answers_unavailable_and_not_ready() {
    use sqlx::{Connection, Executor};
    let mut cfg = config();
    cfg.store.timeout = Duration::from_millis(600);
    let db = cfg.data_dir.join("quaver.db");
    let server = start(cfg).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let (_, ch) = shared_guild(&a.client, &mut a.chat, vec![]).await;
    a.send(ch, 1, "before").await;
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    locker.execute("BEGIN IMMEDIATE").await.unwrap();
    let t0 = std::time::Instant::now();
    let body = RequestBody::SendMessage {
        channel_id: ch,
        nonce: 2,
        content: "during".into(),
        reply_to: None,
    };
    let e = a.req(body.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UNAVAILABLE, "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let (status, why) = http_get(server.http_addr, "/ready").await;
    assert_eq!(status, 503, "{why}");
    let t0 = std::time::Instant::now();
    match connect(&client_config(&server, Transport::Quic, Some(token(2)))).await {
        Err(e) => assert_eq!(e.close_code(), Some(CloseCode::INTERNAL_ERROR), "{e}"),
        Ok(_) => panic!("a session opened on a database that cannot store its user"),
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    locker.execute("ROLLBACK").await.unwrap();
    drop(locker);
    let Ok(ResponseBody::MessageSent { seq, duplicate, .. }) = a.req(body).await else {
        panic!("send after the lock went")
    };
    assert_eq!((seq, duplicate), (2, false));
    let mut ready = false;
    for _ in 0..50 {
        if http_get(server.http_addr, "/ready").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the store answers");
    server.shutdown().await;
}

/// Discord's rules for roles: nobody assigns, edits or removes a role at or above their
/// own highest one, assigns one with a permission they lack, or kicks someone who ranks as
/// high as they do — a MANAGE_ROLES member cannot make themself an administrator.
#[tokio::test]
async fn role_hierarchy_stops_privilege_escalation() {
    const ADMINISTRATOR: u64 = 1 << 3;
    const KICK: u64 = 1 << 1;
    const MANAGE_ROLES: u64 = 1 << 28;
    let server = start(roomy()).await;
    let mut owner = U::new(&server, 1, Transport::Quic).await;
    let mut mallory = U::new(&server, 2, Transport::Quic).await;
    let mut bob = U::new(&server, 3, Transport::Quic).await;
    let mut carol = U::new(&server, 4, Transport::Quic).await;
    let (g, _) = guild_with(&mut owner, &mut [&mut mallory, &mut bob, &mut carol]).await;
    let role = |name: &str, permissions: u64| RequestBody::CreateRole {
        guild_id: g,
        name: name.into(),
        permissions,
    };
    // Each new role goes to the bottom: created last = lowest.
    let mut ids = std::collections::HashMap::new();
    for (name, perms) in [
        ("admin", ADMINISTRATOR),
        ("mods", MANAGE_ROLES | KICK),
        ("sneaky", ADMINISTRATOR),
        ("helper", 0),
    ] {
        let Ok(ResponseBody::Role(r)) = owner.req(role(name, perms)).await else {
            panic!("create {name}")
        };
        assert_eq!(r.position, 1, "{name} starts at the bottom");
        ids.insert(name, r.id);
    }
    // Positions now: admin 4, mods 3, sneaky 2, helper 1.
    let assign = |user_id: u64, role: u64, add: bool| RequestBody::SetMemberRole {
        guild_id: g,
        user_id,
        role_id: role,
        add,
    };
    assert!(owner.req(assign(2, ids["mods"], true)).await.is_ok());
    assert!(owner.req(assign(4, ids["admin"], true)).await.is_ok());
    let forbidden = |r: Result<ResponseBody, ErrorBody>| matches!(r, Err(e) if e.code == ErrorCode::FORBIDDEN);
    // The reported escalation: the owner's admin role, to herself.
    assert!(
        forbidden(mallory.req(assign(2, ids["admin"], true)).await),
        "role above hers"
    );
    // Below her, but it carries a permission she lacks.
    assert!(
        forbidden(mallory.req(assign(2, ids["sneaky"], true)).await),
        "administrator bit"
    );
    assert!(
        forbidden(mallory.req(assign(3, ids["sneaky"], true)).await),
        "not to others either"
    );
    // Her own role is not below her highest: neither assignable nor editable.
    assert!(forbidden(mallory.req(assign(3, ids["mods"], true)).await));
    let edit = |role_id: u64, permissions: u64| RequestBody::UpdateRole {
        guild_id: g,
        role_id,
        name: "x".into(),
        permissions,
    };
    assert!(forbidden(
        mallory
            .req(edit(ids["mods"], MANAGE_ROLES | KICK | ADMINISTRATOR))
            .await
    ));
    assert!(
        forbidden(mallory.req(edit(ids["helper"], ADMINISTRATOR)).await),
        "grant by editing"
    );
    // Taking a role away from someone above her is refused too.
    assert!(forbidden(mallory.req(assign(4, ids["admin"], false)).await));
    // What she may do: a harmless role below her, to someone below her; kick them.
    assert!(mallory.req(assign(3, ids["helper"], true)).await.is_ok());
    assert!(mallory.req(edit(ids["helper"], KICK)).await.is_ok());
    assert!(
        forbidden(
            mallory
                .req(RequestBody::KickMember {
                    guild_id: g,
                    user_id: 4
                })
                .await
        ),
        "carol outranks her"
    );
    assert!(
        mallory
            .req(RequestBody::KickMember {
                guild_id: g,
                user_id: 3
            })
            .await
            .is_ok()
    );
    // Nothing of the refused changes reached the store.
    let Ok(Ok(FetchResponse::Members { members })) = owner
        .client
        .fetch(FetchRequest::Members {
            guild_id: g,
            after: 0,
            limit: 100,
        })
        .await
    else {
        panic!("members")
    };
    let roles_of = |u: u64| {
        members
            .iter()
            .find(|m| m.user_id == u)
            .map(|m| m.roles.clone())
            .unwrap()
    };
    assert_eq!(roles_of(2), vec![ids["mods"]]);
    assert_eq!(roles_of(4), vec![ids["admin"]]);
    server.shutdown().await;
}

/// Protocol 2's role management: moving a role renumbers the hierarchy (and the move obeys
/// it), deleting one takes it from members and drops its overwrites; a timed-out member
/// reads but cannot send or react until it ends or is lifted, and cannot dodge it.
#[tokio::test]
async fn roles_move_and_delete_and_members_time_out() {
    const VIEW: u64 = 1 << 10;
    const MANAGE_ROLES: u64 = 1 << 28;
    const MODERATE: u64 = 1 << 40;
    let server = start(roomy()).await;
    let mut owner = U::new(&server, 1, Transport::Quic).await;
    let mut mallory = U::new(&server, 2, Transport::Quic).await;
    let mut bob = U::new(&server, 3, Transport::WebTransport).await;
    let (g, ch) = guild_with(&mut owner, &mut [&mut mallory, &mut bob]).await;
    let mut ids = std::collections::HashMap::new();
    for (name, perms) in [("top", 0), ("mods", MANAGE_ROLES | MODERATE), ("low", 0)] {
        let Ok(ResponseBody::Role(r)) = owner
            .req(RequestBody::CreateRole {
                guild_id: g,
                name: name.into(),
                permissions: perms,
            })
            .await
        else {
            panic!("create {name}")
        };
        ids.insert(name, r.id);
    }
    // Positions: top 3, mods 2, low 1.
    for (user_id, role) in [(2, "mods"), (3, "low")] {
        let set = RequestBody::SetMemberRole {
            guild_id: g,
            user_id,
            role_id: ids[role],
            add: true,
        };
        assert!(owner.req(set).await.is_ok());
    }
    let mv = |role_id: u64, position: u32| RequestBody::MoveRole {
        guild_id: g,
        role_id,
        position,
    };
    let code = |r: Result<ResponseBody, ErrorBody>| r.err().map(|e| e.code);
    assert_eq!(
        code(mallory.req(mv(ids["low"], 2)).await),
        Some(ErrorCode::FORBIDDEN),
        "to her own rank"
    );
    assert_eq!(
        code(mallory.req(mv(ids["top"], 1)).await),
        Some(ErrorCode::FORBIDDEN),
        "a role above her"
    );
    assert_eq!(
        code(owner.req(mv(g, 2)).await),
        Some(ErrorCode::BAD_REQUEST),
        "@everyone stays"
    );
    assert_eq!(code(owner.req(mv(ids["low"], 0)).await), Some(ErrorCode::BAD_REQUEST));
    // The owner lifts `low` past the top: mods 1, top 2, low 3 — each change told.
    let Ok(ResponseBody::Role(r)) = owner.req(mv(ids["low"], 99)).await else {
        panic!("move")
    };
    assert_eq!(r.position, 3);
    let mut seen = std::collections::HashMap::new();
    // (The creations were told too: the newest position of each role counts; the move
    // reports `low` last, being the top one now.)
    while seen.get(&ids["low"]) != Some(&3) {
        if let EventBody::RoleUpdated { role } = bob.event_where(|e| matches!(e, EventBody::RoleUpdated { .. })).await {
            seen.insert(role.id, role.position);
        }
    }
    assert_eq!((seen[&ids["mods"]], seen[&ids["top"]], seen[&ids["low"]]), (1, 2, 3));
    let timeout = |user_id: u64, duration_secs: u32| RequestBody::TimeoutMember {
        guild_id: g,
        user_id,
        duration_secs,
        reason: "cool off".into(),
    };
    // Bob now outranks mallory: she cannot time him out.
    assert_eq!(code(mallory.req(timeout(3, 60)).await), Some(ErrorCode::FORBIDDEN));
    assert!(owner.req(mv(ids["low"], 1)).await.is_ok());
    assert_eq!(code(mallory.req(timeout(1, 60)).await), Some(ErrorCode::OWNER));
    assert_eq!(
        code(mallory.req(timeout(2, 60)).await),
        Some(ErrorCode::BAD_REQUEST),
        "herself"
    );
    assert_eq!(
        code(mallory.req(timeout(3, 28 * 24 * 3600 + 1)).await),
        Some(ErrorCode::BAD_REQUEST),
        "over 28 days"
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(mallory.req(timeout(3, 60)).await.is_ok());
    let EventBody::MemberUpdated { member, .. } = bob
        .event_where(|e| matches!(e, EventBody::MemberUpdated { member, .. } if member.user_id == 3))
        .await
    else {
        unreachable!()
    };
    assert!(
        (before + 59_000..before + 62_000).contains(&member.timed_out_until_ms),
        "{member:?}"
    );
    let send = |nonce: u64| RequestBody::SendMessage {
        channel_id: ch,
        nonce,
        content: "let me speak".into(),
        reply_to: None,
    };
    let (mid, _) = owner.send(ch, 1, "read this").await;
    let Err(e) = bob.req(send(1)).await else {
        panic!("a timed-out member sent")
    };
    assert_eq!(e.code, ErrorCode::TIMED_OUT);
    assert!(e.message.contains("until"), "{}", e.message);
    let react = RequestBody::AddReaction {
        channel_id: ch,
        message_id: mid,
        emoji: "👍".into(),
    };
    assert_eq!(code(bob.req(react.clone()).await), Some(ErrorCode::TIMED_OUT));
    // Reading still works.
    let Ok(FetchResponse::History { messages, .. }) = bob
        .fetch(FetchRequest::History {
            channel_id: ch,
            anchor: HistoryAnchor::Latest,
            limit: 10,
        })
        .await
    else {
        panic!("history")
    };
    assert!(messages.iter().any(|m| m.id == mid));
    // Leaving and coming back does not lift it.
    assert!(bob.req(RequestBody::LeaveGuild { guild_id: g }).await.is_ok());
    let Ok(ResponseBody::Invite(inv)) = owner
        .req(RequestBody::CreateInvite {
            guild_id: g,
            max_uses: 0,
            max_age_secs: 0,
        })
        .await
    else {
        panic!("invite")
    };
    assert!(bob.req(RequestBody::JoinGuild { code: inv.code }).await.is_ok());
    assert_eq!(code(bob.req(send(2)).await), Some(ErrorCode::TIMED_OUT), "rejoined");
    // Lifted: he speaks again (and the members list agrees).
    assert!(mallory.req(timeout(3, 0)).await.is_ok());
    assert!(matches!(bob.req(send(3)).await, Ok(ResponseBody::MessageSent { .. })));
    // A short one ends by itself, with no event needed.
    assert!(mallory.req(timeout(3, 1)).await.is_ok());
    assert_eq!(code(bob.req(react.clone()).await), Some(ErrorCode::TIMED_OUT));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(bob.req(react).await.is_ok(), "the timeout ended");
    let Ok(FetchResponse::Members { members }) = owner
        .fetch(FetchRequest::Members {
            guild_id: g,
            after: 0,
            limit: 100,
        })
        .await
    else {
        panic!("members")
    };
    assert!(members.iter().all(|m| m.timed_out_until_ms == 0), "{members:?}");
    // Deleting: not @everyone, not above you; members lose the role, its overwrites go.
    assert!(
        owner
            .req(RequestBody::SetMemberRole {
                guild_id: g,
                user_id: 3,
                role_id: ids["low"],
                add: true,
            })
            .await
            .is_ok()
    );
    let hide = RequestBody::SetOverwrite {
        channel_id: ch,
        target: OverwriteTarget::Role(ids["low"]),
        allow: 0,
        deny: VIEW,
    };
    assert!(owner.req(hide).await.is_ok());
    bob.event_where(|e| matches!(e, EventBody::ChannelRemoved { channel_id } if *channel_id == ch))
        .await;
    let del = |role_id: u64| RequestBody::DeleteRole { guild_id: g, role_id };
    assert_eq!(code(owner.req(del(g)).await), Some(ErrorCode::BAD_REQUEST));
    assert_eq!(code(mallory.req(del(ids["top"])).await), Some(ErrorCode::FORBIDDEN));
    assert_eq!(code(owner.req(del(12345)).await), Some(ErrorCode::NOT_FOUND));
    assert!(mallory.req(del(ids["low"])).await.is_ok());
    let gone = bob.event_where(|e| matches!(e, EventBody::RoleDeleted { .. })).await;
    assert_eq!(
        gone,
        EventBody::RoleDeleted {
            guild_id: g,
            role_id: ids["low"]
        }
    );
    // The overwrite went with it: he sees the channel again.
    bob.event_where(|e| matches!(e, EventBody::ChannelUpdated { channel } if channel.id == ch))
        .await;
    let Ok(FetchResponse::Members { members }) = owner
        .fetch(FetchRequest::Members {
            guild_id: g,
            after: 0,
            limit: 100,
        })
        .await
    else {
        panic!("members")
    };
    let bob_m = members.iter().find(|m| m.user_id == 3).unwrap();
    assert!(bob_m.roles.is_empty(), "{bob_m:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_invite_shows_its_guild_before_joining() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let b = U::new(&server, 2, Transport::WebTransport).await;
    let Ok(ResponseBody::Guild(g)) = a
        .req(RequestBody::CreateGuild {
            name: "book club".into(),
        })
        .await
    else {
        panic!("guild")
    };
    let invite = |max_uses| RequestBody::CreateInvite {
        guild_id: g.id,
        max_uses,
        max_age_secs: 0,
    };
    let Ok(ResponseBody::Invite(inv)) = a.req(invite(1)).await else {
        panic!("invite")
    };
    async fn look(c: &Client, code: &str) -> Result<FetchResponse, ErrorBody> {
        c.fetch(FetchRequest::Invite { code: code.into() }).await.unwrap()
    }
    match look(&b.client, &inv.code).await {
        Ok(FetchResponse::Invite {
            invite,
            guild,
            member_count,
            member,
        }) => {
            assert_eq!((guild.name.as_str(), member_count, member), ("book club", 1, false));
            assert_eq!(invite, inv);
        }
        other => panic!("{other:?}"),
    }
    // The owner is a member; a look uses nothing up.
    assert!(matches!(
        look(&a.client, &inv.code).await,
        Ok(FetchResponse::Invite { member: true, .. })
    ));
    let mut b = b;
    assert!(matches!(
        b.req(RequestBody::JoinGuild { code: inv.code.clone() }).await,
        Ok(ResponseBody::Guild(_))
    ));
    // Used up (one use), unknown, absurd: INVALID_INVITE, nothing else.
    for code in [inv.code.as_str(), "nope", "", &"x".repeat(65)] {
        match look(&b.client, code).await {
            Err(e) => assert_eq!(e.code, ErrorCode::INVALID_INVITE, "{code}"),
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_session_that_views_one_channel_gets_its_messages_and_coalesced_activity_for_the_rest() {
    let server = start(config()).await;
    let mut a = U::new(&server, 1, Transport::Quic).await;
    let mut passive = U::new(&server, 2, Transport::Quic).await;
    let mut everything = U::new(&server, 2, Transport::WebTransport).await;
    let (gid, general) = guild_with(&mut a, &mut [&mut passive]).await;
    let busy = text_channel(&mut a.chat, gid, "busy").await;
    // Too many channels in a view is refused; the session keeps what it had.
    let err = passive
        .req(RequestBody::ViewChannels {
            channel_ids: Some((1..=101).collect()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TOO_LARGE);
    assert_eq!(
        passive
            .req(RequestBody::ViewChannels {
                channel_ids: Some(vec![general]),
            })
            .await,
        Ok(ResponseBody::Done)
    );
    let mut typing = passive.client.open_lane(Lane::Typing).await.unwrap();
    let mut a_typing = a.client.open_lane(Lane::Typing).await.unwrap();

    // Five messages in the channel it does not view: no MessageCreated, and the activity
    // coalesced — the first report at once, the rest in one more report.
    for n in 0..5 {
        a.send(busy, 100 + n, &format!("busy {n}")).await;
    }
    let mut reports = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        match tokio::time::timeout_at(end, passive.chat.next()).await {
            Err(_) => break,
            Ok(Ok(ServerLane::Event { body, .. })) => match body {
                EventBody::ChannelActivity { channels } => reports.push(channels),
                EventBody::MessageCreated { message, .. } => {
                    panic!("a message of a channel not viewed: {message:?}")
                }
                _ => {}
            },
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&reports.len()),
        "one or two reports for five messages, got {reports:?}"
    );
    assert_eq!(
        reports.last().unwrap(),
        &vec![ChannelSeq {
            channel_id: busy,
            seq: 5
        }],
        "the last report has the channel's newest seq"
    );
    // The session without a view got every message.
    for n in 1..=5 {
        let EventBody::MessageCreated { seq, message } = everything.event_where(is_msg).await else {
            unreachable!()
        };
        assert_eq!((seq, message.channel_id), (n, busy));
    }
    // Typing in a channel not viewed does not reach it either.
    a_typing
        .request(RequestBody::TypingStart { channel_id: busy })
        .await
        .unwrap()
        .unwrap();
    a_typing
        .request(RequestBody::TypingStart { channel_id: general })
        .await
        .unwrap()
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), typing.next())
        .await
        .expect("typing in time")
        .unwrap();
    let ServerLane::Event {
        body: EventBody::TypingStarted { channel_id, .. },
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(channel_id, general, "only the viewed channel's typing");

    // The viewed channel's messages come as they happen.
    a.send(general, 200, "in view").await;
    let EventBody::MessageCreated { message, .. } = passive.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!(message.channel_id, general);

    // Opening the busy channel: its events come whole from the answer on, and its history
    // has what was held back.
    passive
        .req(RequestBody::ViewChannels {
            channel_ids: Some(vec![busy]),
        })
        .await
        .unwrap();
    a.send(busy, 300, "now seen").await;
    let EventBody::MessageCreated { seq, message } = passive.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!((seq, message.channel_id), (6, busy));
    let Ok(FetchResponse::History { messages, .. }) = passive
        .fetch(FetchRequest::History {
            channel_id: busy,
            anchor: HistoryAnchor::Latest,
            limit: 50,
        })
        .await
    else {
        panic!("history")
    };
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );

    // A DM is never held back, and `None` takes every channel again.
    let Ok(ResponseBody::Channel(dm)) = a.req(RequestBody::OpenDm { user_id: 2 }).await else {
        panic!("dm")
    };
    a.send(dm.id, 400, "direct").await;
    let EventBody::MessageCreated { message, .. } = passive.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!(message.channel_id, dm.id);
    passive
        .req(RequestBody::ViewChannels { channel_ids: None })
        .await
        .unwrap();
    a.send(general, 500, "all again").await;
    let EventBody::MessageCreated { message, .. } = passive.event_where(is_msg).await else {
        unreachable!()
    };
    assert_eq!(message.channel_id, general);
    server.shutdown().await;
}
