//! Relationships and notifications over real QUIC: every kind online and offline, mute and
//! block suppression, read sync, and presence reaching friends.

mod common;

use std::time::Duration;

use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::*;

struct N {
    client: Client,
    chat: LaneStream,
    notes: LaneStream,
    presence: LaneStream,
}

async fn session(server: &quaver::Server, user: u64) -> N {
    let client = connect(&client_config(server, Transport::Quic, Some(token(user))))
        .await
        .unwrap();
    let mut chat = client.open_lane(Lane::Chat).await.unwrap();
    let mut notes = client.open_lane(Lane::Notifications).await.unwrap();
    let mut presence = client.open_lane(Lane::Presence).await.unwrap();
    for l in [&mut chat, &mut notes, &mut presence] {
        l.request(RequestBody::Ping { data: vec![] }).await.unwrap().unwrap();
    }
    N {
        client,
        chat,
        notes,
        presence,
    }
}

async fn req(l: &mut LaneStream, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .unwrap()
        .unwrap()
}

async fn event(l: &mut LaneStream, wait: Duration) -> Option<EventBody> {
    match tokio::time::timeout(wait, l.next()).await {
        Err(_) => None,
        Ok(Ok(ServerLane::Event { body, .. })) => Some(body),
        Ok(other) => panic!("{other:?}"),
    }
}

async fn notification(n: &mut N) -> Notification {
    loop {
        match event(&mut n.notes, Duration::from_secs(10))
            .await
            .expect("notification in time")
        {
            EventBody::NotificationCreated { notification } => return notification,
            _ => continue,
        }
    }
}

async fn no_notification(n: &mut N) {
    while let Some(e) = event(&mut n.notes, Duration::from_millis(400)).await {
        assert!(!matches!(e, EventBody::NotificationCreated { .. }), "unexpected {e:?}");
    }
}

async fn send(n: &mut N, channel_id: u64, nonce: u64, content: &str, reply_to: Option<u64>) -> u64 {
    match req(
        &mut n.chat,
        RequestBody::SendMessage {
            channel_id,
            nonce,
            content: content.into(),
            reply_to,
        },
    )
    .await
    {
        Ok(ResponseBody::MessageSent { message_id, .. }) => message_id,
        other => panic!("{other:?}"),
    }
}

/// Owner's guild with `others` joined: (guild, general channel).
async fn guild(owner: &mut N, others: &mut [&mut N]) -> (u64, u64) {
    shared_guild(
        &owner.client,
        &mut owner.chat,
        others.iter_mut().map(|o| &mut o.chat).collect(),
    )
    .await
}

#[tokio::test]
async fn each_kind_reaches_an_online_user() {
    let server = start(config()).await;
    let mut a = session(&server, 1).await;
    let mut b = session(&server, 2).await;
    let (gid, ch) = guild(&mut a, &mut [&mut b]).await;

    // Mention of a user.
    let m = send(&mut a, ch, 1, "hey <@2>", None).await;
    let n = notification(&mut b).await;
    assert_eq!(
        (n.kind, n.actor_id, n.guild_id, n.channel_id, n.message_id),
        (NotificationKind::Mention, 1, Some(gid), Some(ch), Some(m))
    );
    assert_eq!(n.preview, "hey <@2>");
    // Role mention.
    let Ok(ResponseBody::Role(role)) = req(
        &mut a.chat,
        RequestBody::CreateRole {
            guild_id: gid,
            name: "team".into(),
            permissions: 0,
        },
    )
    .await
    else {
        panic!()
    };
    req(
        &mut a.chat,
        RequestBody::SetMemberRole {
            guild_id: gid,
            user_id: 2,
            role_id: role.id,
            add: true,
        },
    )
    .await
    .unwrap();
    send(&mut a, ch, 2, &format!("ping <@&{}>", role.id), None).await;
    assert_eq!(notification(&mut b).await.kind, NotificationKind::Mention);
    // @everyone by the owner (who has every permission).
    send(&mut a, ch, 3, "@everyone standup", None).await;
    assert_eq!(notification(&mut b).await.kind, NotificationKind::Mention);
    // ...but not by b, who lacks mention-everyone.
    send(&mut b, ch, 1, "@everyone hi", None).await;
    no_notification(&mut a).await;
    // Reply and reaction to a's message.
    let mine = send(&mut b, ch, 2, "my message", None).await;
    send(&mut a, ch, 4, "answer", Some(mine)).await;
    let n = notification(&mut b).await;
    assert_eq!((n.kind, n.message_id.is_some()), (NotificationKind::Reply, true));
    req(
        &mut a.chat,
        RequestBody::AddReaction {
            channel_id: ch,
            message_id: mine,
            emoji: "🎉".into(),
        },
    )
    .await
    .unwrap();
    let n = notification(&mut b).await;
    assert_eq!((n.kind, n.preview.as_str()), (NotificationKind::Reaction, "🎉"));
    // DM.
    let Ok(ResponseBody::Channel(dm)) = req(&mut a.chat, RequestBody::OpenDm { user_id: 2 }).await else {
        panic!()
    };
    send(&mut a, dm.id, 5, "psst", None).await;
    assert_eq!(notification(&mut b).await.kind, NotificationKind::DirectMessage);
    // Friend request and acceptance.
    req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(notification(&mut b).await.kind, NotificationKind::FriendRequest);
    assert_eq!(
        req(&mut b.chat, RequestBody::AcceptFriendRequest { user_id: 1 }).await,
        Ok(ResponseBody::Relationship(Relationship {
            user_id: 1,
            kind: RelationshipKind::Friend
        }))
    );
    let n = notification(&mut a).await;
    assert_eq!((n.kind, n.actor_id), (NotificationKind::FriendAccepted, 2));
    // Never for your own actions: a reacting to a's own message gives a nothing.
    let own = send(&mut a, ch, 6, "self <@1>", None).await;
    req(
        &mut a.chat,
        RequestBody::AddReaction {
            channel_id: ch,
            message_id: own,
            emoji: "👍".into(),
        },
    )
    .await
    .unwrap();
    no_notification(&mut a).await;
    server.shutdown().await;
}

#[tokio::test]
async fn offline_users_find_them_in_ready_and_can_page_and_ack() {
    let mut cfg = config();
    // Rate limits are configurable; this test sends a burst.
    cfg.limits.send = quaver::limits::Rate {
        burst: 100.0,
        per_sec: 100.0,
    };
    let server = start(cfg).await;
    let mut a = session(&server, 1).await;
    let mut c = session(&server, 3).await;
    let mut d = session(&server, 4).await;
    let (_, ch) = guild(&mut a, &mut [&mut c]).await;
    // Before c goes offline: c posts a message and asks a to be friends.
    let c_msg = send(&mut c, ch, 1, "c's message", None).await;
    req(&mut c.chat, RequestBody::SendFriendRequest { user_id: 1 })
        .await
        .unwrap();
    c.client.close();
    drop(c);
    // While c is offline: every kind of notification.
    for k in 0..25 {
        send(&mut a, ch, 100 + k, &format!("<@3> number {k}"), None).await;
    }
    send(&mut a, ch, 150, "a reply", Some(c_msg)).await;
    req(
        &mut a.chat,
        RequestBody::AddReaction {
            channel_id: ch,
            message_id: c_msg,
            emoji: "🔥".into(),
        },
    )
    .await
    .unwrap();
    req(&mut a.chat, RequestBody::AcceptFriendRequest { user_id: 3 })
        .await
        .unwrap();
    let Ok(ResponseBody::Channel(dm)) = req(&mut a.chat, RequestBody::OpenDm { user_id: 3 }).await else {
        panic!()
    };
    send(&mut a, dm.id, 200, "while you were out", None).await;
    req(&mut d.chat, RequestBody::SendFriendRequest { user_id: 3 })
        .await
        .unwrap();

    let mut c = session(&server, 3).await;
    let r = &c.client.ready;
    assert_eq!(r.notifications_unread, 30);
    assert_eq!(r.notifications.len(), 20, "newest 20 in Ready");
    let kinds: Vec<NotificationKind> = r.notifications.iter().take(5).map(|n| n.kind).collect();
    use NotificationKind::*;
    assert_eq!(
        kinds,
        vec![FriendRequest, DirectMessage, FriendAccepted, Reaction, Reply],
        "newest first"
    );
    assert!(r.relationships.contains(&Relationship {
        user_id: 4,
        kind: RelationshipKind::IncomingRequest
    }));
    assert!(r.relationships.contains(&Relationship {
        user_id: 1,
        kind: RelationshipKind::Friend
    }));
    // Page the rest.
    let oldest_in_ready = r.notifications.last().unwrap().id;
    let Ok(Ok(FetchResponse::Notifications { notifications, unread })) = c
        .client
        .fetch(FetchRequest::Notifications {
            before: oldest_in_ready,
            limit: 100,
        })
        .await
    else {
        panic!()
    };
    assert_eq!((notifications.len(), unread), (10, 30));
    assert!(notifications.iter().all(|n| n.kind == NotificationKind::Mention));
    // Ack delivery (recorded), then mark all read: synced to c's other session.
    let newest = c.client.ready.notifications[0].id;
    req(&mut c.notes, RequestBody::AckNotifications { up_to: newest })
        .await
        .unwrap();
    assert_eq!(server.ctx.chat.store().delivered_notifications(3).await.unwrap(), 30);
    let mut c2 = session(&server, 3).await;
    req(
        &mut c.notes,
        RequestBody::MarkNotificationsRead { ids: vec![], all: true },
    )
    .await
    .unwrap();
    assert_eq!(
        event(&mut c2.notes, Duration::from_secs(5)).await,
        Some(EventBody::NotificationsRead { ids: vec![], all: true })
    );
    // And one by one.
    send(&mut a, ch, 300, "<@3> again", None).await;
    let n = notification(&mut c2).await;
    let _ = notification(&mut c).await;
    req(
        &mut c2.notes,
        RequestBody::MarkNotificationsRead {
            ids: vec![n.id],
            all: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        event(&mut c.notes, Duration::from_secs(5)).await,
        Some(EventBody::NotificationsRead {
            ids: vec![n.id],
            all: false
        })
    );
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(3))))
        .await
        .unwrap();
    assert_eq!(fresh.ready.notifications_unread, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn mutes_and_blocks_suppress_and_views_are_respected() {
    let server = start(config()).await;
    let mut a = session(&server, 1).await;
    let mut b = session(&server, 2).await;
    let mut c = session(&server, 3).await;
    let (gid, ch) = guild(&mut a, &mut [&mut b, &mut c]).await;
    // Channel mute.
    req(
        &mut b.chat,
        RequestBody::SetMute {
            target: MuteTarget::Channel(ch),
            muted: true,
        },
    )
    .await
    .unwrap();
    send(&mut a, ch, 1, "<@2> muted channel", None).await;
    no_notification(&mut b).await;
    req(
        &mut b.chat,
        RequestBody::SetMute {
            target: MuteTarget::Channel(ch),
            muted: false,
        },
    )
    .await
    .unwrap();
    // Guild mute.
    req(
        &mut b.chat,
        RequestBody::SetMute {
            target: MuteTarget::Guild(gid),
            muted: true,
        },
    )
    .await
    .unwrap();
    send(&mut a, ch, 2, "<@2> muted guild", None).await;
    no_notification(&mut b).await;
    let fresh = connect(&client_config(&server, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    assert_eq!(fresh.ready.mutes, vec![MuteTarget::Guild(gid)]);
    req(
        &mut b.chat,
        RequestBody::SetMute {
            target: MuteTarget::Guild(gid),
            muted: false,
        },
    )
    .await
    .unwrap();
    send(&mut a, ch, 3, "<@2> unmuted", None).await;
    assert_eq!(notification(&mut b).await.kind, NotificationKind::Mention);
    // A channel c cannot view: mentioning c there notifies nobody.
    let Ok(ResponseBody::Channel(secret)) = req(
        &mut a.chat,
        RequestBody::CreateChannel {
            guild_id: gid,
            kind: ChannelKind::Text,
            name: "secret".into(),
            topic: String::new(),
            user_limit: 0,
        },
    )
    .await
    else {
        panic!()
    };
    req(
        &mut a.chat,
        RequestBody::SetOverwrite {
            channel_id: secret.id,
            target: OverwriteTarget::Member(3),
            allow: 0,
            deny: 1 << 10,
        },
    )
    .await
    .unwrap();
    send(&mut a, secret.id, 4, "<@3> you cannot see this", None).await;
    no_notification(&mut c).await;
    // Block: b blocks a.
    req(&mut b.chat, RequestBody::BlockUser { user_id: 1 }).await.unwrap();
    send(&mut a, ch, 5, "<@2> still there?", None).await;
    no_notification(&mut b).await;
    assert_eq!(
        req(&mut a.chat, RequestBody::OpenDm { user_id: 2 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::BLOCKED
    );
    assert_eq!(
        req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::BLOCKED
    );
    // A DM opened before the block cannot be used either way.
    req(&mut b.chat, RequestBody::UnblockUser { user_id: 1 }).await.unwrap();
    let Ok(ResponseBody::Channel(dm)) = req(&mut a.chat, RequestBody::OpenDm { user_id: 2 }).await else {
        panic!()
    };
    req(&mut b.chat, RequestBody::BlockUser { user_id: 1 }).await.unwrap();
    let r = req(
        &mut a.chat,
        RequestBody::SendMessage {
            channel_id: dm.id,
            nonce: 9,
            content: "x".into(),
            reply_to: None,
        },
    )
    .await;
    assert_eq!(r.unwrap_err().code, ErrorCode::BLOCKED);
    let r = req(
        &mut b.chat,
        RequestBody::SendMessage {
            channel_id: dm.id,
            nonce: 9,
            content: "x".into(),
            reply_to: None,
        },
    )
    .await;
    assert_eq!(r.unwrap_err().code, ErrorCode::BLOCKED);
    server.shutdown().await;
}

#[tokio::test]
async fn friend_lifecycle_and_presence_reaching_friends_only() {
    let mut cfg = config();
    cfg.session.presence_grace = Duration::from_millis(200);
    let server = start(cfg).await;
    let mut a = session(&server, 1).await;
    let mut b = session(&server, 2).await;
    let mut stranger = session(&server, 3).await;
    // No shared guild: friends only.
    assert_eq!(
        req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 }).await,
        Ok(ResponseBody::Relationship(Relationship {
            user_id: 2,
            kind: RelationshipKind::OutgoingRequest
        }))
    );
    assert_eq!(
        req(&mut a.chat, RequestBody::AcceptFriendRequest { user_id: 2 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::NO_RELATIONSHIP
    );
    req(&mut a.chat, RequestBody::CancelFriendRequest { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(
        req(&mut b.chat, RequestBody::AcceptFriendRequest { user_id: 1 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::NO_RELATIONSHIP
    );
    req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 })
        .await
        .unwrap();
    req(&mut b.chat, RequestBody::DeclineFriendRequest { user_id: 1 })
        .await
        .unwrap();
    // Mutual requests become a friendship.
    req(&mut a.chat, RequestBody::SendFriendRequest { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(
        req(&mut b.chat, RequestBody::SendFriendRequest { user_id: 1 }).await,
        Ok(ResponseBody::Relationship(Relationship {
            user_id: 1,
            kind: RelationshipKind::Friend
        }))
    );
    let Ok(Ok(FetchResponse::Relationships { relationships })) = a.client.fetch(FetchRequest::Relationships).await
    else {
        panic!()
    };
    assert_eq!(
        relationships,
        vec![Relationship {
            user_id: 2,
            kind: RelationshipKind::Friend
        }]
    );
    // b's presence changes reach a (a friend) but not the stranger.
    req(
        &mut b.presence,
        RequestBody::SetPresence {
            status: PresenceStatus::Dnd,
            custom_status: None,
            activity: None,
        },
    )
    .await
    .unwrap();
    loop {
        match event(&mut a.presence, Duration::from_secs(5))
            .await
            .expect("presence in time")
        {
            EventBody::PresenceUpdated { presence } if presence.user_id == 2 => {
                assert_eq!(presence.status, PresenceStatus::Dnd);
                break;
            }
            _ => {}
        }
    }
    while let Some(e) = event(&mut stranger.presence, Duration::from_millis(300)).await {
        assert!(!matches!(e, EventBody::PresenceUpdated { .. }), "stranger saw {e:?}");
    }
    // Friends see each other in Ready.
    let a2 = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(
        a2.ready
            .presences
            .iter()
            .any(|p| p.user_id == 2 && p.status == PresenceStatus::Dnd)
    );
    req(&mut a.chat, RequestBody::RemoveFriend { user_id: 2 })
        .await
        .unwrap();
    let Ok(Ok(FetchResponse::Relationships { relationships })) = b.client.fetch(FetchRequest::Relationships).await
    else {
        panic!()
    };
    assert!(relationships.is_empty());
    server.shutdown().await;
}
