//! Several nodes on one Redis and one database: cross-node chat (order with two nodes
//! publishing into one channel, nothing lost or doubled, nonce dedupe across nodes,
//! membership changes), catch-up on another node, and the node's view of the bus
//! (`/ready`, `/metrics`).
//!
//! The first tests run several nodes in one process on an in-process bus that can be made
//! to misbehave (deliver out of order, go away), over one shared SQLite file: they need no
//! service. The Redis tests need `REDIS_URL` (in CI a missing or silent Redis fails these tests; elsewhere they say
//! skipped). The database is a fresh PostgreSQL database per test when `DATABASE_URL` is a
//! PostgreSQL URL, else one SQLite file the nodes share.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::redis_server::{have_redis_server, spawn_redis, start_cluster, start_single, wait_ping};
use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::*;

static NODES: AtomicU32 = AtomicU32::new(0);

struct Services {
    redis: String,
    /// Redis key and channel prefix of this test's cluster (tests share one Redis).
    prefix: String,
    database: String,
    /// A PostgreSQL database made for this test (dropped at the end).
    pg: Option<(String, String)>,
}

impl Services {
    /// Drops the test's database and its Redis keys.
    async fn drop_db(self) {
        if let Ok(c) = redis::Client::open(self.redis.as_str())
            && let Ok(mut conn) = c.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(keys).query_async::<i64>(&mut conn).await;
            }
        }
        if let Some((admin, name)) = self.pg {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await;
            }
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Redis and a database for a cluster test, or `None` (skipped) off CI without Redis.
async fn services(tag: &str) -> Option<Services> {
    let redis = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(!in_ci(), "REDIS_URL is not set: the cluster tests need Redis in CI");
            eprintln!("skipped: REDIS_URL is not set");
            return None;
        }
    };
    let answers = async {
        let c = redis::Client::open(redis.as_str()).ok()?;
        let mut conn = c.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    if tokio::time::timeout(Duration::from_secs(3), answers)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            !in_ci(),
            "Redis at REDIS_URL does not answer: the cluster tests need it in CI"
        );
        eprintln!("skipped: Redis at REDIS_URL does not answer");
        return None;
    }
    Some(with_database(tag, redis, format!("{tag}-{}:", std::process::id())).await)
}

/// The test's database beside `redis`: a fresh PostgreSQL database when `DATABASE_URL` is
/// a PostgreSQL URL, else one SQLite file the nodes share.
async fn with_database(tag: &str, redis: String, prefix: String) -> Services {
    match std::env::var("DATABASE_URL") {
        Ok(admin) if admin.starts_with("postgres") => {
            use sqlx::Connection;
            let name = format!("quaver_cluster_{}_{}", tag, std::process::id());
            let mut c = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL at DATABASE_URL answers");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut c)
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').expect("a database URL has a path");
            Services {
                prefix,
                redis,
                database: format!("{base}/{name}"),
                pg: Some((admin, name)),
            }
        }
        _ => {
            let dir = tempdir("cluster-db");
            Services {
                prefix,
                redis,
                database: format!("sqlite://{}?mode=rwc", dir.join("shared.db").display()),
                pg: None,
            }
        }
    }
}

/// A node of the test's cluster.
async fn node(s: &Services) -> quaver::Server {
    start(node_config(s)).await
}

fn node_config(s: &Services) -> quaver::config::Config {
    let n = NODES.fetch_add(1, Ordering::Relaxed);
    let mut c = config();
    c.node_name = format!("it-{}-{n}", std::process::id());
    c.node_id = Some(100 + (n as u16 % 900));
    c.redis = Some(s.redis.clone());
    c.redis_prefix = s.prefix.clone();
    c.database = Some(s.database.clone());
    c.limits.send = quaver::limits::Rate {
        burst: 1000.0,
        per_sec: 1000.0,
    };
    c.session.presence_grace = Duration::from_millis(300);
    c
}

async fn user(server: &quaver::Server, id: u64) -> (Client, LaneStream) {
    let c = connect(&client_config(server, Transport::Quic, Some(token(id))))
        .await
        .expect("connects");
    let l = c.open_lane(Lane::Chat).await.expect("chat lane");
    (c, l)
}

async fn req(l: &mut LaneStream, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .expect("reply in time")
        .expect("lane works")
}

fn send(channel_id: u64, nonce: u64, content: &str) -> RequestBody {
    RequestBody::SendMessage {
        channel_id,
        nonce,
        content: content.into(),
        reply_to: None,
    }
}

/// Channel seqs of `MessageCreated` events of `channel` on `lane`, until `n` or `limit`.
async fn created_seqs(lane: &mut LaneStream, channel: u64, n: usize, limit: Duration) -> Vec<u64> {
    let mut seqs = Vec::new();
    let end = tokio::time::Instant::now() + limit;
    while seqs.len() < n {
        let Ok(Ok(frame)) = tokio::time::timeout_at(end, lane.next()).await else {
            break;
        };
        if let ServerLane::Event {
            body: EventBody::MessageCreated { seq, message },
            ..
        } = frame
            && message.channel_id == channel
        {
            seqs.push(seq);
        }
    }
    seqs
}

/// Two nodes in this process on `hub`, sharing one SQLite file.
async fn hub_nodes(hub: &quaver::cluster::pubsub::MemoryHub) -> (quaver::Server, quaver::Server) {
    let db = format!("sqlite://{}?mode=rwc", tempdir("hub-db").join("shared.db").display());
    let mut out = Vec::new();
    for _ in 0..2 {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let mut c = config();
        c.node_name = format!("hub-{}-{n}", std::process::id());
        c.node_id = Some(n as u16 % 1000);
        c.database = Some(db.clone());
        out.push(quaver::Server::start_with(c, Some(hub)).await.expect("node starts"));
    }
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b)
}

/// The bus delivers a channel's events late and newest first; the receiving node still
/// hands them to its sessions in seq order, each once.
#[tokio::test]
async fn events_the_bus_reorders_reach_sessions_in_seq_order() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    // Settle: the first message arrives normally.
    req(&mut l1, send(channel, 1, "first")).await.unwrap();
    assert_eq!(created_seqs(&mut l2, channel, 1, Duration::from_secs(5)).await, vec![1]);
    // Node b checks the store when its subscription is confirmed (a read of its own, in the
    // background): let it finish first, or on a loaded machine it can read the held
    // messages from the shared database before the bus releases them (correct, in order —
    // but not the case under test). Seen once in CI with the machine busy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.hold();
    for i in 0..5 {
        req(&mut l1, send(channel, 10 + i, "held"))
            .await
            .expect("acknowledged: the sender's node needs no bus");
    }
    assert!(
        created_seqs(&mut l2, channel, 1, Duration::from_millis(100))
            .await
            .is_empty()
    );
    hub.release_reversed();
    assert_eq!(
        created_seqs(&mut l2, channel, 5, Duration::from_secs(5)).await,
        vec![2, 3, 4, 5, 6]
    );
    assert!(
        created_seqs(&mut l2, channel, 1, Duration::from_millis(300))
            .await
            .is_empty(),
        "once"
    );
    let (_, m) = http_get(b.http_addr, "/metrics").await;
    assert!(m.contains("quaver_fanout_reordered_total 4"), "{m}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A subscription slow to take effect (a Redis subscriber behind a queue of others): a
/// member who just joined on node b must still get a message node a published after node b
/// asked to subscribe but before the subscription worked — read from the store when the bus
/// confirms it, not left waiting for the channel's next message.
#[tokio::test]
async fn a_message_published_while_a_subscription_is_on_its_way_is_not_lost() {
    use quaver_proto::{RequestBody, ResponseBody};
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (_c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let Ok(ResponseBody::Guild(g)) = req(&mut l1, RequestBody::CreateGuild { name: "g".into() }).await else {
        panic!("guild")
    };
    let invite = RequestBody::CreateInvite {
        guild_id: g.id,
        max_uses: 0,
        max_age_secs: 0,
    };
    let Ok(ResponseBody::Invite(inv)) = req(&mut l1, invite).await else {
        panic!("invite")
    };
    // From now on node b's new subscriptions take a second and a half.
    hub.slow_subscribe(Some(Duration::from_millis(1500)));
    let Ok(ResponseBody::Guild(_)) = req(&mut l2, RequestBody::JoinGuild { code: inv.code }).await else {
        panic!("join")
    };
    let channel = {
        let Ok(Ok(quaver_proto::FetchResponse::Channels { channels })) =
            _c1.fetch(quaver_proto::FetchRequest::Channels { guild_id: g.id }).await
        else {
            panic!("channels")
        };
        channels[0].id
    };
    // Past the half second a fixed timer would have checked at, before the subscription
    // works: the bus does not bring it to node b.
    tokio::time::sleep(Duration::from_millis(700)).await;
    req(&mut l1, send(channel, 1, "welcome")).await.unwrap();
    assert_eq!(
        created_seqs(&mut l2, channel, 1, Duration::from_secs(3)).await,
        vec![1],
        "caught up once the subscription was confirmed"
    );
    hub.slow_subscribe(None);
    a.shutdown().await;
    b.shutdown().await;
}

/// The bus goes away: each node keeps serving its own sessions, `/ready` says degraded (200),
/// and when the bus is back the other node's sessions are caught up from the store, in
/// order, with nothing lost.
#[tokio::test]
async fn a_bus_outage_degrades_and_is_caught_up_from_the_store() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_c3, mut l3) = user(&a, 3).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2, &mut l3]).await;
    // Past the check a new subscription gets (so only the recovery can catch node b up).
    tokio::time::sleep(Duration::from_millis(800)).await;
    hub.cut(true);
    for i in 0..3 {
        req(&mut l1, send(channel, 10 + i, "during the outage")).await.unwrap();
    }
    assert_eq!(
        created_seqs(&mut l3, channel, 3, Duration::from_secs(5)).await,
        vec![1, 2, 3],
        "same-node delivery does not need the bus"
    );
    let (status, body) = http_get(b.http_addr, "/ready").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("degraded"), "{body}");
    assert!(
        created_seqs(&mut l2, channel, 1, Duration::from_millis(800))
            .await
            .is_empty()
    );
    hub.cut(false);
    assert_eq!(
        created_seqs(&mut l2, channel, 3, Duration::from_secs(5)).await,
        vec![1, 2, 3]
    );
    let (_, body) = http_get(b.http_addr, "/ready").await;
    assert_eq!(body, "ready\n");
    // Live again, in order after the caught-up ones.
    req(&mut l1, send(channel, 20, "after")).await.unwrap();
    assert_eq!(created_seqs(&mut l2, channel, 1, Duration::from_secs(5)).await, vec![4]);
    let (_, m) = http_get(b.http_addr, "/metrics").await;
    assert!(m.contains("quaver_fanout_caught_up_total 3"), "{m}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A voice channel `name` in `guild`, created on the owner's chat lane.
async fn voice_channel(owner: &mut LaneStream, guild: u64, name: &str) -> u64 {
    let body = RequestBody::CreateChannel {
        guild_id: guild,
        kind: ChannelKind::Voice,
        name: name.into(),
        topic: String::new(),
        user_limit: 0,
    };
    let Ok(ResponseBody::Channel(c)) = req(owner, body).await else {
        panic!("voice channel")
    };
    c.id
}

/// The next event on `lane` matching `f`, within `limit`.
async fn event_where(lane: &mut LaneStream, limit: Duration, f: impl Fn(&EventBody) -> bool) -> Option<EventBody> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let Ok(Ok(frame)) = tokio::time::timeout_at(end, lane.next()).await else {
            return None;
        };
        if let ServerLane::Event { body, .. } = frame
            && f(&body)
        {
            return Some(body);
        }
    }
}

/// Typing (events and `WatchTyping`), notifications and read-state sync between a user's
/// sessions reach sessions on the other node.
#[tokio::test]
async fn typing_notifications_and_read_states_cross_nodes() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let mut t1 = c1.open_lane(Lane::Typing).await.unwrap();
    let mut t2 = c2.open_lane(Lane::Typing).await.unwrap();
    let mut n2 = c2.open_lane(Lane::Notifications).await.unwrap();
    // User 2's second session, on node a.
    let (_c2a, mut l2a) = user(&a, 2).await;

    req(&mut t1, RequestBody::TypingStart { channel_id: channel })
        .await
        .unwrap();
    let started = event_where(&mut t2, Duration::from_secs(5), |e| {
        matches!(e, EventBody::TypingStarted { .. })
    })
    .await;
    assert!(
        matches!(started, Some(EventBody::TypingStarted { channel_id, user_id: 1, .. }) if channel_id == channel),
        "{started:?}"
    );
    assert_eq!(
        req(&mut t2, RequestBody::WatchTyping { channel_id: channel }).await,
        Ok(ResponseBody::Typers {
            channel_id: channel,
            user_ids: vec![1]
        }),
        "node b knows node a's typer"
    );

    let Ok(ResponseBody::MessageSent { seq, .. }) = req(&mut l1, send(channel, 5, "hey <@2>")).await else {
        panic!("sent")
    };
    let stopped = event_where(&mut t2, Duration::from_secs(5), |e| {
        matches!(e, EventBody::TypingStopped { .. })
    })
    .await;
    assert!(stopped.is_some(), "sending stops the indicator on every node");
    let note = event_where(&mut n2, Duration::from_secs(5), |e| {
        matches!(e, EventBody::NotificationCreated { .. })
    })
    .await;
    assert!(note.is_some(), "the mention reaches user 2 on node b");

    req(
        &mut l2a,
        RequestBody::MarkRead {
            channel_id: channel,
            seq,
        },
    )
    .await
    .unwrap();
    let synced = event_where(&mut l2, Duration::from_secs(5), |e| {
        matches!(e, EventBody::ReadStateUpdated { .. })
    })
    .await;
    assert!(
        matches!(&synced, Some(EventBody::ReadStateUpdated { state }) if state.channel_id == channel && state.last_read_seq == seq),
        "{synced:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A session's channel view across nodes: a message posted on node a in a channel that a
/// session on node b does not view reaches it as `ChannelActivity`, not as the message; the
/// viewed channel's messages come whole.
#[tokio::test]
async fn a_channel_view_holds_back_what_another_node_publishes() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (guild, general) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let busy = text_channel(&mut l1, guild, "busy").await;
    let view = RequestBody::ViewChannels {
        channel_ids: Some(vec![general]),
    };
    assert_eq!(req(&mut l2, view).await, Ok(ResponseBody::Done));
    req(&mut l1, send(busy, 1, "elsewhere")).await.unwrap();
    req(&mut l1, send(general, 2, "here")).await.unwrap();
    let (mut activity, mut here) = (None, false);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while activity.is_none() || !here {
        let Ok(Ok(frame)) = tokio::time::timeout_at(end, l2.next()).await else {
            panic!("activity {activity:?} and the viewed message ({here}) in time")
        };
        match frame {
            ServerLane::Event {
                body: EventBody::ChannelActivity { channels },
                ..
            } => activity = Some(channels),
            ServerLane::Event {
                body: EventBody::MessageCreated { message, .. },
                ..
            } => {
                assert_eq!(message.channel_id, general, "only the viewed channel's messages");
                here = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        activity,
        Some(vec![ChannelSeq {
            channel_id: busy,
            seq: 1
        }])
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Permissions across nodes: an overwrite set on node a that hides a channel from a
/// member stops its events reaching that member's session on node b (node b's cached
/// permission state is dropped by the guild change), and lifting it brings them back.
#[tokio::test]
async fn a_permission_change_on_one_node_applies_to_delivery_on_the_other() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b) = hub_nodes(&hub).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (g, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    req(&mut l1, send(channel, 1, "visible")).await.unwrap();
    assert_eq!(created_seqs(&mut l2, channel, 1, Duration::from_secs(5)).await, vec![1]);
    const VIEW: u64 = 1 << 10;
    let hide = RequestBody::SetOverwrite {
        channel_id: channel,
        target: OverwriteTarget::Role(g),
        allow: 0,
        deny: VIEW,
    };
    req(&mut l1, hide).await.unwrap();
    let removed = event_where(
        &mut l2,
        Duration::from_secs(5),
        |e| matches!(e, EventBody::ChannelRemoved { channel_id } if *channel_id == channel),
    )
    .await;
    assert!(removed.is_some(), "node b's member is told the channel is gone");
    req(&mut l1, send(channel, 2, "hidden")).await.unwrap();
    assert!(
        created_seqs(&mut l2, channel, 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "a hidden channel's message must not reach node b's member"
    );
    req(
        &mut l1,
        RequestBody::DeleteOverwrite {
            channel_id: channel,
            target: OverwriteTarget::Role(g),
        },
    )
    .await
    .unwrap();
    let _ = event_where(&mut l2, Duration::from_secs(5), |e| {
        matches!(e, EventBody::ChannelUpdated { .. })
    })
    .await;
    req(&mut l1, send(channel, 3, "visible again")).await.unwrap();
    assert_eq!(created_seqs(&mut l2, channel, 1, Duration::from_secs(5)).await, vec![3]);
    a.shutdown().await;
    b.shutdown().await;
}

/// Two nodes publish into one channel at once; a reader on each node sees every message
/// exactly once, in seq order, with no hole — though the two nodes' events reach each
/// reader's node interleaved by Redis, not in seq order.
#[tokio::test]
async fn two_nodes_sending_into_one_channel_are_seen_in_order_once_on_both() {
    let Some(s) = services("order").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_c3, mut r3) = user(&a, 3).await;
    let (_c4, mut r4) = user(&b, 4).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2, &mut r3, &mut r4]).await;
    const EACH: u64 = 60;
    let s1 = tokio::spawn(async move {
        for i in 0..EACH {
            req(&mut l1, send(channel, 1_000 + i, &format!("a{i}")))
                .await
                .expect("sent on a");
        }
        l1
    });
    let s2 = tokio::spawn(async move {
        for i in 0..EACH {
            req(&mut l2, send(channel, 2_000 + i, &format!("b{i}")))
                .await
                .expect("sent on b");
        }
        l2
    });
    let (got3, got4) = tokio::join!(
        created_seqs(&mut r3, channel, 2 * EACH as usize, Duration::from_secs(20)),
        created_seqs(&mut r4, channel, 2 * EACH as usize, Duration::from_secs(20)),
    );
    s1.await.unwrap();
    s2.await.unwrap();
    let want: Vec<u64> = (1..=2 * EACH).collect();
    assert_eq!(got3, want, "reader on node a");
    assert_eq!(got4, want, "reader on node b");
    // Nothing more arrives (no duplicate after the last).
    assert!(
        created_seqs(&mut r4, channel, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
    let (_, metrics) = http_get(b.http_addr, "/metrics").await;
    assert!(metrics.contains("quaver_bus_up 1"), "{metrics}");
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// A nonce resent on another node returns the original message; a member removed on one
/// node stops receiving on the other; a client resuming on another node with channel
/// positions is caught up from the store.
#[tokio::test]
async fn dedupe_membership_and_catch_up_work_across_nodes() {
    let Some(s) = services("members").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (g, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;

    // Dedupe across nodes: the same (author, nonce) on node b is the original.
    let Ok(ResponseBody::MessageSent { message_id, seq, .. }) = req(&mut l1, send(channel, 77, "once")).await else {
        panic!("sent")
    };
    let (_c1b, mut l1b) = user(&b, 1).await;
    let Ok(ResponseBody::MessageSent {
        message_id: again,
        duplicate,
        ..
    }) = req(&mut l1b, send(channel, 77, "once")).await
    else {
        panic!("resent")
    };
    assert_eq!((again, duplicate), (message_id, true));
    assert_eq!(
        created_seqs(&mut l2, channel, 1, Duration::from_secs(5)).await,
        vec![seq]
    );

    // Catch-up on another node: user 2 reconnects to node a from seq 0.
    for i in 0..5 {
        req(&mut l1, send(channel, 100 + i, "more")).await.unwrap();
    }
    assert_eq!(
        created_seqs(&mut l2, channel, 5, Duration::from_secs(5)).await,
        (2..=6).collect::<Vec<_>>()
    );
    let mut cfg = client_config(&a, Transport::Quic, Some(token(2)));
    cfg.resume = Some(ResumeRequest {
        session_id: c2.ready.session_id,
        lanes: vec![],
        channels: vec![ChannelSeq {
            channel_id: channel,
            seq: 0,
        }],
    });
    let c2a = connect(&cfg).await.unwrap();
    assert!(!c2a.resumed, "another node cannot resume exactly");
    let mut l2a = c2a.open_lane(Lane::Chat).await.unwrap();
    let caught = created_seqs(&mut l2a, channel, 6, Duration::from_secs(5)).await;
    assert_eq!(caught, (1..=6).collect::<Vec<_>>());
    let last = c2a.ready.guilds[0]
        .channels
        .iter()
        .find(|c| c.id == channel)
        .map(|c| c.last_seq);
    assert_eq!(last, Some(6));

    // Membership: user 2 is kicked on node a; their session on node b stops receiving.
    assert!(
        req(
            &mut l1,
            RequestBody::KickMember {
                guild_id: g,
                user_id: 2
            }
        )
        .await
        .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    req(&mut l1, send(channel, 500, "after the kick")).await.unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(f)) = tokio::time::timeout_at(end, l2.next()).await {
        if let ServerLane::Event { body, .. } = f {
            *seen
                .entry(match body {
                    EventBody::MessageCreated { .. } => "message",
                    EventBody::GuildRemoved { .. } => "removed",
                    _ => "other",
                })
                .or_default() += 1;
        }
    }
    assert_eq!(seen.get("removed"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("message"), None, "nothing after the kick: {seen:?}");
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// The next presence update about `user` on a presence lane, within `limit`.
async fn presence_of(lane: &mut LaneStream, user: u64, limit: Duration) -> Option<Presence> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let Ok(Ok(f)) = tokio::time::timeout_at(end, lane.next()).await else {
            return None;
        };
        if let ServerLane::Event {
            body: EventBody::PresenceUpdated { presence },
            ..
        } = f
            && presence.user_id == user
        {
            return Some(presence);
        }
    }
}

/// A node process (the real binary) in the test's cluster: the child and a client config
/// (without token) for it.
async fn node_process(s: &Services) -> (tokio::process::Child, quaver_client::Config) {
    let (child, cfg, _, _) = node_process_with(s, None).await;
    (child, cfg)
}

/// A node process with a config file of `toml` (beside the environment): the child, a
/// client config, and its API and HTTP addresses.
async fn node_process_with(
    s: &Services,
    toml: Option<&str>,
) -> (
    tokio::process::Child,
    quaver_client::Config,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let n = NODES.fetch_add(1, Ordering::Relaxed);
    let dir = tempdir("proc");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_quaver"));
    cmd.arg("serve");
    if let Some(t) = toml {
        let path = dir.join("quaver.toml");
        std::fs::write(&path, t).unwrap();
        cmd.arg("--config").arg(path);
    }
    let mut child = cmd
        .env("JWT_SECRET", SECRET)
        .env("REDIS_URL", &s.redis)
        .env("QUAVER_REDIS_PREFIX", &s.prefix)
        .env("DATABASE_URL", &s.database)
        .env("QUAVER_NODE_NAME", format!("proc-{}-{n}", std::process::id()))
        .env("QUAVER_NODE_ID", (100 + n % 900).to_string())
        .env("QUAVER_LISTEN", "127.0.0.1:0")
        .env("QUAVER_HTTP_LISTEN", "127.0.0.1:0")
        .env("QUAVER_API_LISTEN", "127.0.0.1:0")
        .env("QUAVER_DATA_DIR", dir.join("data"))
        .env("QUAVER_CERT_DIR", dir.join("certs"))
        .env("QUAVER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node process starts");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (quic, http, log) = await_addresses(&mut lines).await;
    let api = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .and_then(|a| a.parse().ok())
        .expect("the node logs its API address");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (_, body) = http_get(http, "/cert-hash").await;
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hash: [u8; 32] = hex::decode(info["hash"].as_str().unwrap()).unwrap().try_into().unwrap();
    let cfg = quaver_client::Config::new(quic, Transport::Quic, quaver_client::Trust::Hashes(vec![hash]));
    (child, cfg, api, http)
}

/// Presence across nodes: a user's devices on two nodes merge into one presence; a device
/// leaving one node changes only its platform; a user moving between nodes within the
/// grace does not flap; a node that is SIGKILLed has its users go offline on the others
/// once its liveness key expires.
#[tokio::test]
async fn presence_merges_across_nodes_and_a_dead_node_goes_offline() {
    let Some(s) = services("presence").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_c3, mut l3) = user(&a, 3).await;
    shared_guild(&c1, &mut l1, vec![&mut l2, &mut l3]).await;
    drop(c1);
    // User 1 on node a (desktop); user 2 on node b sees it in Ready and live.
    let d1 = connect(&client_config(&a, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let watcher = connect(&client_config(&b, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let seen = watcher
        .ready
        .presences
        .iter()
        .find(|p| p.user_id == 1)
        .map(|p| p.status);
    assert_eq!(
        seen,
        Some(PresenceStatus::Online),
        "Ready on node b knows node a's user"
    );
    let mut w = watcher.open_lane(Lane::Presence).await.unwrap();
    // A second device of user 1, on node b: both platforms show.
    let mut mcfg = client_config(&b, Transport::Quic, Some(token(1)));
    mcfg.device = DeviceKind::Mobile;
    let m1 = connect(&mcfg).await.unwrap();
    let p = presence_of(&mut w, 1, Duration::from_secs(5)).await.expect("an update");
    assert_eq!(
        (p.status, p.client_status.desktop, p.client_status.mobile),
        (PresenceStatus::Online, PresenceStatus::Online, PresenceStatus::Online)
    );
    // The desktop leaves node a: after the grace only the mobile remains.
    d1.close();
    let p = presence_of(&mut w, 1, Duration::from_secs(5)).await.expect("an update");
    assert_eq!(
        (p.status, p.client_status.desktop, p.client_status.mobile),
        (PresenceStatus::Online, PresenceStatus::Offline, PresenceStatus::Online)
    );
    // Moving: the mobile leaves node b and comes back on node a within the grace — no flap.
    m1.close();
    let mut acfg = client_config(&a, Transport::Quic, Some(token(1)));
    acfg.device = DeviceKind::Mobile;
    let _m1a = connect(&acfg).await.unwrap();
    assert_eq!(
        presence_of(&mut w, 1, Duration::from_millis(1500)).await,
        None,
        "no offline → online"
    );

    // A node process with user 3 on it, killed: user 3 goes offline on node b.
    let (mut child, mut pcfg) = node_process(&s).await;
    pcfg.token = Some(token(3));
    pcfg.device = DeviceKind::Web;
    let p3 = connect(&pcfg).await.unwrap();
    let p = presence_of(&mut w, 3, Duration::from_secs(5)).await.expect("an update");
    assert_eq!(p.client_status.web, PresenceStatus::Online);
    // SIGKILL (tokio's start_kill on Unix): no shutdown path runs in the node.
    child.start_kill().expect("kill the node process");
    let _ = child.wait().await;
    drop(p3);
    let p = presence_of(&mut w, 3, Duration::from_secs(12))
        .await
        .expect("offline after the node died");
    assert_eq!(p.client_status.web, PresenceStatus::Offline);
    assert_eq!(
        p.status,
        PresenceStatus::Online,
        "user 3's desktop on node a is still there"
    );
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// Node identity: a snowflake node number held by a live node refuses the start of another
/// node configured with it; a node without one takes a free number; a second live node
/// with the same name is refused.
#[tokio::test]
async fn node_numbers_and_names_are_unique_in_the_cluster() {
    let Some(s) = services("identity").await else { return };
    let mut c = node_config(&s);
    c.node_id = Some(777);
    let first_name = c.node_name.clone();
    let a = start(c).await;
    let mut dup = node_config(&s);
    dup.node_id = Some(777);
    let err = quaver::Server::start(dup)
        .await
        .expect_err("a held number refuses the start");
    assert!(err.to_string().contains("node number 777 is held"), "{err}");
    // The same name as a live node.
    let mut same = node_config(&s);
    same.node_name = first_name;
    let err = quaver::Server::start(same)
        .await
        .expect_err("a live name refuses the start");
    assert!(err.to_string().contains("another live node is named"), "{err}");
    // Without a configured number, a held one is skipped.
    let target = quaver::cluster::redis::RedisTarget::parse(&s.redis).unwrap();
    let opt = quaver::cluster::redis::RedisOptions {
        prefix: s.prefix.clone(),
        ..Default::default()
    };
    let (bus, _rx) = quaver::cluster::redis::RedisPubSub::connect(&target, "probe-node", opt)
        .await
        .unwrap();
    let n = quaver::cluster::identity::claim_number(&bus.commands(), "free-taker", None, 777)
        .await
        .unwrap();
    assert_eq!(n, 778);
    a.shutdown().await;
    s.drop_db().await;
}

/// Redis is SIGKILLed and restarted while node a streams messages that a reader on node b
/// receives: every acknowledged message reaches the reader once, in order, and cross-node
/// delivery is back within 5 s of the restart.
#[tokio::test]
async fn redis_killed_and_restarted_during_a_stream_loses_nothing() {
    if !have_redis_server() {
        return;
    }
    let (mut procs, port) = start_single("redis-restart");
    let dir = procs._dir.clone();
    let s = with_database("restart", format!("redis://127.0.0.1:{port}"), "rr:".into()).await;
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    const N: u64 = 150;
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..N {
            let Ok(ResponseBody::MessageSent { seq, .. }) = req(&mut l1, send(channel, 10_000 + i, "stream")).await
            else {
                panic!("a send failed: Redis is not in the send path")
            };
            acked.push(seq);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        acked
    });
    let reader = tokio::spawn(async move { created_seqs(&mut l2, channel, N as usize, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut redis = procs.children.pop().unwrap();
    redis.kill().unwrap(); // SIGKILL
    redis.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    procs.children.push(spawn_redis(&dir, port, false));
    wait_ping(port);
    let restarted = tokio::time::Instant::now();
    let acked = sender.await.unwrap();
    assert_eq!(acked, (1..=N).collect::<Vec<_>>(), "every send acknowledged, in order");
    let got = reader.await.unwrap();
    let back_after = restarted.elapsed();
    eprintln!("all {N} delivered on node b {back_after:?} after the Redis restart");
    assert_eq!(
        got, acked,
        "the reader on node b has every acknowledged message once, in order"
    );
    assert!(
        back_after < Duration::from_secs(5),
        "cross-node delivery back {back_after:?} after the restart"
    );
    let (_, m) = http_get(b.http_addr, "/metrics").await;
    let caught = m
        .lines()
        .find_map(|l| l.strip_prefix("quaver_fanout_caught_up_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(caught > 0.0, "what Redis lost came from the store: {m}");
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// A node process is SIGKILLed during a stream: its client (the resilient native client,
/// given the cluster's other node) reconnects there, is caught up from the store by seq,
/// and ends with every message once, in order.
#[tokio::test]
async fn a_killed_nodes_client_moves_to_another_node_and_misses_nothing() {
    use quaver_client::resilient::{Backoff, Resilient, Update};
    let Some(s) = services("failover").await else { return };
    let a = node(&s).await;
    let (mut child, mut pcfg) = node_process(&s).await;
    let (c1, mut l1) = user(&a, 1).await;
    // User 2 joins through node a, then lives on the process node.
    let (_c2, mut l2) = user(&a, 2).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    pcfg.token = Some(token(2));
    pcfg.keep_alive = Duration::from_millis(100);
    pcfg.idle_timeout = Duration::from_secs(1);
    pcfg.alternates = vec![a.quic_addr];
    if let quaver_client::Trust::Hashes(h) = &mut pcfg.trust {
        h.push(a.cert_hash());
    }
    let mut r = Resilient::start(
        pcfg,
        Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    );
    let Some(Update::Connected { ready, .. }) = r.next().await else {
        panic!("connected to the process node")
    };
    assert!(ready.node.starts_with("proc-"), "{}", ready.node);
    const N: u64 = 100;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            req(&mut l1, send(channel, 20_000 + i, "stream")).await.expect("sent");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    let mut seqs = Vec::new();
    let mut nodes = vec![ready.node.clone()];
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut killed = false;
    while (seqs.len() as u64) < N {
        let Ok(Some(u)) = tokio::time::timeout_at(end, r.next()).await else {
            break;
        };
        match u {
            Update::Event(EventBody::MessageCreated { seq, message }) if message.channel_id == channel => {
                seqs.push(seq);
                if seqs.len() == 20 && !killed {
                    killed = true;
                    child.start_kill().expect("SIGKILL the node process");
                }
            }
            Update::Connected { ready, .. } => nodes.push(ready.node.clone()),
            _ => {}
        }
    }
    sender.await.unwrap();
    let _ = child.wait().await;
    assert_eq!(
        seqs,
        (1..=N).collect::<Vec<_>>(),
        "every message once, in order, across the failover"
    );
    assert_eq!(nodes.len(), 2, "one reconnect: {nodes:?}");
    assert!(nodes[1].starts_with("it-"), "moved to node a: {nodes:?}");
    a.shutdown().await;
    s.drop_db().await;
}

/// The same cluster on a Redis Cluster (3 masters started here): sharded pub/sub between
/// the nodes, the presence registry's scripts and the identity claims on slots of their own.
#[tokio::test]
async fn two_nodes_on_a_redis_cluster_chat_and_share_presence() {
    if !have_redis_server() {
        return;
    }
    let procs = start_cluster();
    let seeds: Vec<String> = procs.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let s = with_database("rcluster", format!("redis+cluster://{}", seeds.join(",")), "rc:".into()).await;
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (_c2, mut l2) = user(&b, 2).await;
    let (_, channel) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    for i in 0..20 {
        req(&mut l1, send(channel, 30_000 + i, "over a Redis Cluster"))
            .await
            .unwrap();
    }
    assert_eq!(
        created_seqs(&mut l2, channel, 20, Duration::from_secs(10)).await,
        (1..=20).collect::<Vec<_>>()
    );
    let watcher = connect(&client_config(&b, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let seen = watcher
        .ready
        .presences
        .iter()
        .find(|p| p.user_id == 1)
        .map(|p| p.status);
    assert_eq!(
        seen,
        Some(PresenceStatus::Online),
        "the registry works on a Redis Cluster"
    );
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
    drop(procs);
}

/// 40 voice frames of `[payload; 3]` from `c`, one every 20 ms.
async fn speak(c: &quaver_client::Client, payload: u8) {
    use quaver_proto::datagram::{AudioLevel, Uplink};
    for seq in 0..40u16 {
        let h = Uplink {
            flags: 0,
            level: AudioLevel::new(20, true),
            seq,
            timestamp: u32::from(seq) * 960,
        };
        let _ = c.send_voice(&h, &[payload; 3]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of `slot`'s `[payload; 3]` frames `c` heard within 5 s (stops at 10).
async fn hear(c: &quaver_client::Client, slot: u16, payload: u8) -> usize {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut heard = 0;
    while let Ok(Ok((h, p))) = tokio::time::timeout_at(end, c.recv_voice()).await {
        if h.slot == slot && p[..] == [payload; 3] {
            heard += 1;
            if heard >= 10 {
                break;
            }
        }
    }
    heard
}

/// A voice channel lives on one node: a join from another node is sent there
/// (`VoiceServer`), the native client follows it, and both participants hear each other in
/// one SFU; once the channel empties its lease is released and the next join homes it
/// where it arrives; when its node dies, the lease expires and the channel re-homes.
#[tokio::test]
async fn a_voice_channel_lives_on_one_node_and_joins_elsewhere_follow_it() {
    use quaver_client::voice::join_voice;
    let Some(s) = services("voice").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let vc = voice_channel(&mut l1, g, "talk").await;
    let cfg1 = client_config(&a, Transport::Quic, Some(token(1)));
    let cfg2 = client_config(&b, Transport::Quic, Some(token(2)));
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let j1 = join_voice(&mut v1, &cfg1, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j1.remote.is_none(), "the first join homes the channel on node a");
    let ResponseBody::VoiceJoined { slot: slot1, .. } = j1.joined else {
        panic!("{:?}", j1.joined)
    };
    let j2 = join_voice(&mut v2, &cfg2, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j2.remote.is_some(), "a join on node b is sent to node a");
    let ResponseBody::VoiceJoined { participants, .. } = &j2.joined else {
        panic!("{:?}", j2.joined)
    };
    assert_eq!(participants.len(), 2, "one room: {participants:?}");
    // A session opening on node b sees who is in the channel (it lives on node a).
    let fresh = connect(&cfg2).await.unwrap();
    let mut inside: Vec<u64> = fresh
        .ready
        .voice_states
        .iter()
        .filter(|s| s.channel_id == vc)
        .map(|s| s.user_id)
        .collect();
    inside.sort();
    assert_eq!(inside, vec![1, 2], "Ready on node b shows node a's voice channel");
    // Node a renews its development certificate: the next redirect names the new hash.
    let renewed = a.ctx.certs.renew().expect("dev certificate renewal");
    tokio::time::sleep(quaver::voice::lease::RENEW_EVERY + Duration::from_millis(500)).await;
    let mut fresh_voice = fresh.open_lane(Lane::Voice).await.unwrap();
    let answer = req(
        &mut fresh_voice,
        RequestBody::JoinVoice {
            channel_id: vc,
            self_mute: false,
            self_deaf: false,
        },
    )
    .await
    .unwrap();
    let ResponseBody::VoiceServer { cert_hashes, .. } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(
        cert_hashes.first().map(Vec::as_slice),
        Some(&renewed.sha256[..]),
        "the redirect carries node a's current certificate hash"
    );
    drop((fresh_voice, fresh));
    // User 1 speaks on node a; user 2 hears it through their session there.
    let listener = j2.client(&c2);
    let ((), heard) = tokio::join!(speak(&c1, 7), hear(listener, slot1, 7));
    assert!(heard >= 10, "user 2 heard {heard} of user 1's frames");
    // Both leave: the lease is released, and a join on node b homes the channel there.
    req(&mut v1, RequestBody::LeaveVoice).await.unwrap();
    let (remote2, mut remote_lane) = j2.remote.unwrap();
    req(&mut remote_lane, RequestBody::LeaveVoice).await.unwrap();
    drop((remote2, remote_lane));
    tokio::time::sleep(quaver::voice::lease::RENEW_EVERY + Duration::from_millis(500)).await;
    let j2b = join_voice(&mut v2, &cfg2, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j2b.remote.is_none(), "released: the channel now lives on node b");
    // Node b goes away without releasing (its tasks stop): after the lease's TTL, a join
    // on node a homes the channel there again.
    drop(j2b);
    b.shutdown().await;
    tokio::time::sleep(quaver::voice::lease::LEASE_TTL + Duration::from_millis(500)).await;
    let j1b = join_voice(&mut v1, &cfg1, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j1b.remote.is_none(), "re-homed on node a after node b's lease expired");
    a.shutdown().await;
    s.drop_db().await;
}

/// A session on the WebSocket framing (its network drops UDP) is sent to the voice
/// channel's node at that node's WebSocket URL — a QUIC session on the same node still gets
/// `host:port` — and the native client follows it over WebSocket and hears a QUIC speaker
/// there, and is heard by them.
#[tokio::test]
async fn a_websocket_session_follows_a_voice_channel_to_its_node_over_websocket() {
    use quaver_client::voice::join_voice;
    let Some(s) = services("voicews").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let mut cfg2 = client_config(&b, Transport::WebSocket, Some(token(2)));
    cfg2.ws_url = Some(format!("ws://{}/quaver/ws", b.http_addr));
    let c2 = connect(&cfg2).await.expect("connects over WebSocket");
    let mut l2 = c2.open_lane(Lane::Chat).await.unwrap();
    let (c3, mut l3) = user(&b, 3).await;
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2, &mut l3]).await;
    let vc = voice_channel(&mut l1, g, "talk").await;
    let cfg1 = client_config(&a, Transport::Quic, Some(token(1)));
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    let j1 = join_voice(&mut v1, &cfg1, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    let ResponseBody::VoiceJoined { slot: slot1, .. } = j1.joined else {
        panic!("{:?}", j1.joined)
    };
    let join = RequestBody::JoinVoice {
        channel_id: vc,
        self_mute: false,
        self_deaf: false,
    };
    // What each session on node b is told: by its transport.
    let mut v3 = c3.open_lane(Lane::Voice).await.unwrap();
    let Ok(ResponseBody::VoiceServer { endpoint, .. }) = req(&mut v3, join.clone()).await else {
        panic!("a QUIC session on node b is sent to node a")
    };
    assert_eq!(endpoint, a.quic_addr.to_string());
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let Ok(ResponseBody::VoiceServer { endpoint, .. }) = req(&mut v2, join).await else {
        panic!("a WebSocket session on node b is sent to node a")
    };
    assert_eq!(endpoint, format!("ws://{}/quaver/ws", a.http_addr));
    // The native client follows it over WebSocket.
    let j2 = join_voice(&mut v2, &cfg2, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    let ResponseBody::VoiceJoined {
        slot: slot2,
        participants,
        ..
    } = &j2.joined
    else {
        panic!("{:?}", j2.joined)
    };
    assert_eq!(participants.len(), 2, "one room on node a: {participants:?}");
    let there = j2.client(&c2);
    assert!(j2.remote.is_some());
    assert_eq!(there.transport(), Transport::WebSocket);
    // Both ways: user 1 (QUIC, node a) and user 2 (WebSocket, at node a) hear each other.
    let ((), (), heard_by_2, heard_by_1) = tokio::join!(
        speak(&c1, 7),
        speak(there, 9),
        hear(there, slot1, 7),
        hear(&c1, *slot2, 9)
    );
    assert!(
        heard_by_2 >= 10,
        "user 2 (WebSocket) heard {heard_by_2} of user 1's frames"
    );
    assert!(heard_by_1 >= 10, "user 1 heard {heard_by_1} of user 2's frames");
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// A WebRTC join sent to a node the voice channel does not live on is answered
/// `VoiceServer`, like a datagram join; sent again on the channel's node it is answered with
/// that node's WebRTC port, and the peer connected there hears the channel.
#[tokio::test]
async fn a_webrtc_join_follows_the_voice_channel_to_its_node() {
    use quaver_client::voice::join_voice;
    use quaver_proto::datagram::{AudioLevel, Uplink};
    let Some(s) = services("webrtc").await else { return };
    let with_webrtc = || {
        let mut c = node_config(&s);
        c.webrtc_listen = Some("127.0.0.1:0".parse().expect("an address"));
        c
    };
    let (a, b) = (start(with_webrtc()).await, start(with_webrtc()).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let vc = voice_channel(&mut l1, g, "talk").await;
    // User 1 homes the channel on node a (datagrams).
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    let cfg1 = client_config(&a, Transport::Quic, Some(token(1)));
    let j1 = join_voice(&mut v1, &cfg1, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    let ResponseBody::VoiceJoined { slot: slot1, .. } = j1.joined else {
        panic!("{:?}", j1.joined)
    };
    // User 2 offers on node b: sent to node a.
    let (offer, start_browser) = browser::Browser::offer();
    let join = RequestBody::JoinVoiceWebRtc {
        channel_id: vc,
        self_mute: false,
        self_deaf: false,
        offer,
    };
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let there = req(&mut v2, join.clone()).await;
    let Ok(ResponseBody::VoiceServer { endpoint, .. }) = &there else {
        panic!("{there:?}")
    };
    assert_eq!(
        endpoint.parse::<std::net::SocketAddr>().ok(),
        Some(a.quic_addr),
        "node a's endpoint"
    );
    let b_port = b.ctx.webrtc.as_ref().unwrap().local_addr();
    let b_peers = || b.ctx.webrtc.as_ref().unwrap().metrics.peers.load(Ordering::Relaxed);
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while b_peers() != 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b_peers(), 0, "node b keeps no peer for a join it redirected");
    let on_a = connect(&client_config(&a, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let mut v2a = on_a.open_lane(Lane::Voice).await.unwrap();
    let joined = req(&mut v2a, join).await;
    let Ok(ResponseBody::VoiceJoinedWebRtc {
        answer, participants, ..
    }) = joined
    else {
        panic!("{joined:?}")
    };
    assert_eq!(participants.len(), 2);
    let a_port = a.ctx.webrtc.as_ref().unwrap().local_addr();
    assert!(answer.contains(&format!("{} {} typ host", a_port.ip(), a_port.port())));
    assert!(!answer.contains(&format!(" {} typ host", b_port.port())));
    let peer = start_browser(answer);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !peer.connected.load(Ordering::SeqCst) && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peer.connected.load(Ordering::SeqCst), "ICE and DTLS with node a");
    // User 1 speaks; the WebRTC peer hears it through node a.
    for seq in 0..50u16 {
        let h = Uplink {
            flags: 0,
            level: AudioLevel::new(20, true),
            seq,
            timestamp: u32::from(seq) * 960,
        };
        let _ = c1.send_voice(&h, &[9, 9, 9]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = peer
        .heard
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, f)| f.payload == [9, 9, 9])
        .count();
    assert!(
        heard >= 40,
        "the WebRTC peer heard {heard} of user 1's 50 frames (slot {slot1})"
    );
    drop(peer);
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// One voice channel per user, cluster-wide: joining a channel that lives on another node
/// removes the user from the channel they were in on this one.
#[tokio::test]
async fn joining_voice_on_another_node_leaves_the_previous_channel() {
    use quaver_client::voice::join_voice;
    let Some(s) = services("voice1").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let (on_a, on_b) = (
        voice_channel(&mut l1, g, "on-a").await,
        voice_channel(&mut l1, g, "on-b").await,
    );
    let (cfg1, cfg2) = (
        client_config(&a, Transport::Quic, Some(token(1))),
        client_config(&b, Transport::Quic, Some(token(2))),
    );
    let (mut v1, mut v2) = (
        c1.open_lane(Lane::Voice).await.unwrap(),
        c2.open_lane(Lane::Voice).await.unwrap(),
    );
    // User 1 homes `on_a` on node a; user 2 homes `on_b` on node b.
    let _j1 = join_voice(&mut v1, &cfg1, on_a, false, false)
        .await
        .unwrap()
        .expect("joined");
    let j2 = join_voice(&mut v2, &cfg2, on_b, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j2.remote.is_none());
    // User 2 moves to `on_a` (it lives on node a).
    let moved = join_voice(&mut v2, &cfg2, on_a, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(moved.remote.is_some());
    // Node b dropped user 2 from `on_b`: user 1, joining it (sent to node b), is alone there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let j1b = join_voice(&mut v1, &cfg1, on_b, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j1b.remote.is_some(), "on_b lives on node b");
    let ResponseBody::VoiceJoined { participants, .. } = &j1b.joined else {
        panic!("{:?}", j1b.joined)
    };
    let users: Vec<u64> = participants.iter().map(|p| p.user_id).collect();
    assert_eq!(
        users,
        vec![1],
        "user 2 left on_b when they joined on_a on the other node"
    );
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// A node serving a voice channel is SIGKILLed: sessions on the other nodes that saw its
/// participants are told they left (once its keys expire), and `Ready` no longer shows them.
#[tokio::test]
async fn a_killed_voice_nodes_participants_leave_everyone_elses_view() {
    use quaver_client::voice::join_voice;
    let Some(s) = services("voicekill").await else { return };
    let a = node(&s).await;
    let (c1, mut l1) = user(&a, 1).await;
    let (child, mut pcfg) = node_process(&s).await;
    let mut child = child;
    pcfg.token = Some(token(2));
    let c2 = connect(&pcfg).await.unwrap();
    let mut l2 = c2.open_lane(Lane::Chat).await.unwrap();
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let vc = voice_channel(&mut l1, g, "doomed").await;
    // User 2 homes the channel on the node process; user 1 watches from node a.
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let j2 = join_voice(&mut v2, &pcfg, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j2.remote.is_none());
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    let fresh = connect(&client_config(&a, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(
        fresh
            .ready
            .voice_states
            .iter()
            .any(|s| s.user_id == 2 && s.channel_id == vc),
        "Ready on node a shows the node process's participant: {:?}",
        fresh.ready.voice_states
    );
    drop(fresh);
    // A state change, so node a has shown user 2 to its sessions through the bus.
    req(
        &mut v2,
        RequestBody::SetVoiceState {
            self_mute: true,
            self_deaf: false,
        },
    )
    .await
    .unwrap();
    event_where(
        &mut v1,
        Duration::from_secs(5),
        |e| matches!(e, EventBody::VoiceStateUpdated { state } if state.user_id == 2 && state.self_mute),
    )
    .await
    .expect("user 1 sees user 2's state on node a");
    child.start_kill().expect("kill the node process");
    let _ = child.wait().await;
    drop((j2, v2, l2, c2));
    let limit = quaver::voice::lease::LEASE_TTL + 3 * quaver::voice::lease::RENEW_EVERY;
    let gone = event_where(
        &mut v1,
        limit,
        |e| matches!(e, EventBody::VoiceStateRemoved { user_id: 2, channel_id, .. } if *channel_id == vc),
    )
    .await;
    assert!(gone.is_some(), "user 2 left user 1's view after their node died");
    let fresh = connect(&client_config(&a, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(
        fresh.ready.voice_states.iter().all(|s| s.user_id != 2),
        "{:?}",
        fresh.ready.voice_states
    );
    drop(fresh);
    a.shutdown().await;
    s.drop_db().await;
}

/// A presence lane's view of `user`'s status after `PresenceUpdated` and `PresenceSnapshot`
/// events, waited for until it is `want` (within `limit`): whether it got there.
async fn shows(lane: &mut LaneStream, user: u64, want: PresenceStatus, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let Ok(Ok(f)) = tokio::time::timeout_at(end, lane.next()).await else {
            return false;
        };
        let status = match f {
            ServerLane::Event {
                body: EventBody::PresenceUpdated { presence },
                ..
            } if presence.user_id == user => Some(presence.status),
            ServerLane::Event {
                body: EventBody::PresenceSnapshot { presences },
                ..
            } => presences.iter().find(|p| p.user_id == user).map(|p| p.status),
            _ => None,
        };
        if status == Some(want) {
            return true;
        }
    }
}

/// Audiences that change across nodes: a member joining on node b sees the members on node
/// a online (their merged presence, from the registry) and is seen online by them; new
/// friends on two nodes see each other; a voice channel served by node a shows its
/// participants to a new member on node b — each without anyone reconnecting.
#[tokio::test]
async fn a_new_member_on_another_node_sees_presence_and_voice_at_once() {
    let Some(s) = services("audience").await else { return };
    let (a, b) = (node(&s).await, node(&s).await);
    let (c1, mut l1) = user(&a, 1).await;
    let mut p1 = c1.open_lane(Lane::Presence).await.unwrap();
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    // User 1 also has a session on node b, idle: the merge across nodes is what is shown.
    let (c1b, _l1b) = user(&b, 1).await;
    let mut p1b = c1b.open_lane(Lane::Presence).await.unwrap();
    req(
        &mut p1b,
        RequestBody::SetPresence {
            status: PresenceStatus::Dnd,
            custom_status: None,
            activity: None,
        },
    )
    .await
    .unwrap();
    let Ok(ResponseBody::Guild(g)) = req(&mut l1, RequestBody::CreateGuild { name: "g".into() }).await else {
        panic!("guild")
    };
    let vc = voice_channel(&mut l1, g.id, "talk").await;
    let r = req(
        &mut v1,
        RequestBody::JoinVoice {
            channel_id: vc,
            self_mute: true,
            self_deaf: false,
        },
    )
    .await;
    assert!(matches!(r, Ok(ResponseBody::VoiceJoined { .. })), "{r:?}");
    let Ok(ResponseBody::Invite(inv)) = req(
        &mut l1,
        RequestBody::CreateInvite {
            guild_id: g.id,
            max_uses: 0,
            max_age_secs: 0,
        },
    )
    .await
    else {
        panic!("invite")
    };
    // User 2 on node b, a stranger until now.
    let (c2, mut l2) = user(&b, 2).await;
    let mut p2 = c2.open_lane(Lane::Presence).await.unwrap();
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    assert!(!c2.ready.presences.iter().any(|p| p.user_id == 1));
    req(&mut l2, RequestBody::JoinGuild { code: inv.code }).await.unwrap();
    let bound = Duration::from_secs(3);
    assert!(
        shows(&mut p2, 1, PresenceStatus::Dnd, bound).await,
        "the new member on node b sees the member's merged presence"
    );
    assert!(
        shows(&mut p1, 2, PresenceStatus::Online, bound).await,
        "the member on node a sees the new member"
    );
    let snapshot = event_where(&mut v2, bound, |e| matches!(e, EventBody::VoiceStatesSnapshot { .. })).await;
    let Some(EventBody::VoiceStatesSnapshot { channel_ids, states }) = snapshot else {
        panic!("no voice states for the new member")
    };
    assert_eq!(channel_ids, vec![vc]);
    assert_eq!(
        states.iter().map(|s| (s.user_id, s.self_mute)).collect::<Vec<_>>(),
        vec![(1, true)],
        "node a's participant, as node a serves it"
    );
    // Friends across nodes: 3 on node a, 4 on node b.
    let (c3, mut l3) = user(&a, 3).await;
    let mut p3 = c3.open_lane(Lane::Presence).await.unwrap();
    let (c4, mut l4) = user(&b, 4).await;
    let mut p4 = c4.open_lane(Lane::Presence).await.unwrap();
    req(&mut l3, RequestBody::SendFriendRequest { user_id: 4 })
        .await
        .unwrap();
    req(&mut l4, RequestBody::AcceptFriendRequest { user_id: 3 })
        .await
        .unwrap();
    assert!(shows(&mut p3, 4, PresenceStatus::Online, bound).await);
    assert!(shows(&mut p4, 3, PresenceStatus::Online, bound).await);
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// The server API on a real cluster (Redis + the test's database): a backend calling node
/// a moderates a voice participant whose channel lives on node b (carried out there), revokes
/// a token used on node b (closed within 5 s, refused after), and sends an application event
/// that a session on node b gets.
#[tokio::test]
async fn the_server_api_reaches_sessions_on_the_other_node() {
    use common::api::{call, with_keys};
    use quaver_client::voice::join_voice;
    use serde_json::json;
    let Some(s) = services("api").await else { return };
    let mut ca = node_config(&s);
    let (key, _) = with_keys(&mut ca);
    let mut cb = node_config(&s);
    cb.api.keys = ca.api.keys.clone();
    let (a, b) = (start(ca).await, start(cb).await);
    let api = |method: &'static str, path: String, body: serde_json::Value| {
        let (addr, key) = (a.api_addr, key.clone());
        async move { call(addr, Some(&key), method, &path, Some(body), &[]).await }
    };
    let (c1, mut l1) = user(&a, 1).await;
    let (c2, mut l2) = user(&b, 2).await;
    let (g, _) = shared_guild(&c1, &mut l1, vec![&mut l2]).await;
    let vc = voice_channel(&mut l1, g, "talk").await;
    // User 2 joins on node b: the channel lives there.
    let cfg2 = client_config(&b, Transport::Quic, Some(token(2)));
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let j = join_voice(&mut v2, &cfg2, vc, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j.remote.is_none(), "homed on node b");
    let p = call(
        a.api_addr,
        Some(&key),
        "GET",
        &format!("/api/v1/voice/channels/{vc}/participants"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        p.body["participants"][0]["user_id"], "2",
        "node a sees node b's channel: {p:?}"
    );
    let m = api(
        "PATCH",
        format!("/api/v1/guilds/{g}/voice/2"),
        json!({"server_mute": true}),
    )
    .await;
    assert_eq!((m.status, m.body["carried_out"].as_str()), (202, Some("bus")), "{m:?}");
    let muted = event_where(
        &mut v2,
        Duration::from_secs(5),
        |e| matches!(e, EventBody::VoiceStateUpdated { state } if state.user_id == 2 && state.server_mute),
    )
    .await;
    assert!(muted.is_some(), "node b carried the mute out");
    // An application event for user 2, sent through node a.
    let mut n2 = c2.open_lane(Lane::Notifications).await.unwrap();
    let e = api(
        "POST",
        "/api/v1/events".into(),
        json!({"name": "order.shipped", "user_ids": ["2"]}),
    )
    .await;
    assert_eq!(e.status, 202, "{e:?}");
    let got = event_where(
        &mut n2,
        Duration::from_secs(5),
        |e| matches!(e, EventBody::AppEvent { name, .. } if name == "order.shipped"),
    )
    .await;
    assert!(got.is_some(), "the event crossed the bus");
    // A move to a channel node a serves: node b takes user 2 out of `talk` and tells their
    // voice session; the client follows to node a, where both users are then.
    let stage = voice_channel(&mut l1, g, "stage").await;
    let cfg1 = client_config(&a, Transport::Quic, Some(token(1)));
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    let j1 = join_voice(&mut v1, &cfg1, stage, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(j1.remote.is_none(), "stage homed on node a");
    let m = api(
        "PATCH",
        format!("/api/v1/guilds/{g}/voice/2"),
        json!({"channel_id": stage.to_string()}),
    )
    .await;
    assert_eq!(m.status, 202, "{m:?}");
    let moved = event_where(
        &mut v2,
        Duration::from_secs(5),
        |e| matches!(e, EventBody::VoiceMoved { channel_id, .. } if *channel_id == stage),
    )
    .await;
    assert_eq!(
        moved,
        Some(EventBody::VoiceMoved {
            guild_id: g,
            channel_id: stage
        })
    );
    let followed = join_voice(&mut v2, &cfg2, stage, false, false)
        .await
        .unwrap()
        .expect("joined");
    assert!(followed.remote.is_some(), "the join went to node a");
    let ResponseBody::VoiceJoined { participants, .. } = &followed.joined else {
        panic!("{:?}", followed.joined)
    };
    let mut there: Vec<u64> = participants.iter().map(|p| p.user_id).collect();
    there.sort_unstable();
    assert_eq!(there, vec![1, 2]);
    let left = call(
        a.api_addr,
        Some(&key),
        "GET",
        &format!("/api/v1/voice/channels/{vc}/participants"),
        None,
        &[],
    )
    .await;
    assert_eq!(left.body["participants"], json!([]), "out of talk: {left:?}");
    drop(followed);
    // Node a lists user 2's sessions: the live nodes are counted in Redis; both answered.
    let asked = std::time::Instant::now();
    let l = call(a.api_addr, Some(&key), "GET", "/api/v1/users/2/sessions", None, &[]).await;
    assert_eq!((l.status, &l.body["complete"]), (200, &json!(true)), "{l:?}");
    assert!(asked.elapsed() < Duration::from_millis(900), "{:?}", asked.elapsed());
    assert!(
        l.body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["node"] == b.ctx.cfg.node_name.as_str()),
        "{l:?}"
    );
    // Every token of user 2 issued until now: node b closes the session and refuses the token.
    let started = std::time::Instant::now();
    let r = api("POST", "/api/v1/users/2/revocations".into(), json!({})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), c2.closed())
        .await
        .ok()
        .flatten();
    assert_eq!(
        closed.map(|(c, _)| c),
        Some(CloseCode::TOKEN_REVOKED),
        "closed on node b"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let refused = connect(&cfg2).await.expect_err("refused on node b");
    assert_eq!(refused.close_code(), Some(CloseCode::TOKEN_REVOKED));
    a.shutdown().await;
    b.shutdown().await;
    s.drop_db().await;
}

/// Webhooks survive a node's death: node a (a process) holds every partition of an
/// endpoint whose receiver is down while node b records 30 messages in three channels; node
/// a is SIGKILLed with the backlog; the receiver comes back; node b takes the leases over
/// when they run out and delivers every event, in order per channel.
#[tokio::test]
async fn a_killed_nodes_webhook_backlog_is_delivered_by_another_node() {
    use common::api::call;
    use common::hooks::{Receiver, check_signed_and_ordered};
    use serde_json::json;
    const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let Some(s) = services("hooks").await else { return };
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let url = r.url();
    let receiver_addr = r.stop();
    let (key, hash) = quaver::api::auth::mint("backend").unwrap();
    let toml = format!(
        "[webhooks]\nlease = \"2s\"\nretry_min = \"100ms\"\nretry_max = \"500ms\"\ntimeout = \"1s\"\n\n\
         [[api.keys]]\nid = \"backend\"\nsecret_sha256 = \"{hash}\"\nscopes = [\"admin\"]\n"
    );
    let (mut child, _, a_api, a_http) = node_process_with(&s, Some(&toml)).await;
    let made = call(
        a_api,
        Some(&key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "app", "url": url, "events": ["message.*"], "secret": HOOK_SECRET})),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    // Node a takes every partition of the new endpoint before node b starts.
    assert!(
        holds_every_partition(a_http).await,
        "node a holds the endpoint's partitions"
    );
    let mut cb = node_config(&s);
    cb.api.keys = vec![quaver::config::ApiKeyConfig {
        id: "backend".into(),
        secret_sha256: hash.clone(),
        scopes: vec!["admin".into()],
    }];
    cb.webhooks.lease = Duration::from_secs(2);
    cb.webhooks.retry_min = Duration::from_millis(100);
    cb.webhooks.retry_max = Duration::from_millis(500);
    cb.webhooks.timeout = Duration::from_secs(1);
    let b = start(cb).await;
    let api = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let (addr, key) = (b.api_addr, key.clone());
        async move { call(addr, Some(&key), method, &path, body, &[]).await }
    };
    let g = api(
        "POST",
        "/api/v1/guilds".into(),
        Some(json!({"owner_id": "1", "name": "Ops"})),
    )
    .await;
    assert_eq!(g.status, 201, "{g:?}");
    let gid = g.s("id");
    let mut channels = Vec::new();
    for name in ["one", "two", "three"] {
        let c = api(
            "POST",
            format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": name, "kind": "text"})),
        )
        .await;
        assert_eq!(c.status, 201, "{c:?}");
        channels.push(c.s("id"));
    }
    for i in 0..30 {
        let m = api(
            "POST",
            format!("/api/v1/channels/{}/messages", channels[i % 3]),
            Some(json!({"author_id": "1", "content": format!("m{i}")})),
        )
        .await;
        assert_eq!(m.status, 201, "{m:?}");
    }
    // Node a is trying (the receiver is down) and node b is not: b holds no lease.
    let tried = async {
        loop {
            let d = api("GET", "/api/v1/webhooks/app/deliveries?state=pending".into(), None).await;
            let list = d.body["deliveries"].as_array().cloned().unwrap_or_default();
            if list.len() == 30 && list.iter().filter(|d| d["attempts"].as_u64() >= Some(1)).count() >= 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), tried)
        .await
        .expect("node a attempts the deliveries");
    let (_, metrics) = http_get(b.http_addr, "/metrics").await;
    assert!(metrics.contains("quaver_webhook_leases 0"), "node b holds nothing yet");
    // SIGKILL: no shutdown path, its leases stay in the database until they run out.
    child.start_kill().expect("kill the node process");
    child.wait().await.unwrap();
    let r = Receiver::start(receiver_addr).await;
    let want: std::collections::HashSet<String> = {
        let d = api("GET", "/api/v1/webhooks/app/deliveries?limit=100".into(), None).await;
        d.body["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(want.len(), 30);
    let all = async {
        loop {
            let ok: std::collections::HashSet<String> = r
                .got()
                .iter()
                .filter(|g| g.answered == 200)
                .map(|g| g.id.clone())
                .collect();
            if want.is_subset(&ok) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("node b delivers node a's backlog");
    let got = r.got();
    check_signed_and_ordered(&got, HOOK_SECRET);
    for (i, ch) in channels.iter().enumerate() {
        let contents: Vec<String> = got
            .iter()
            .map(|g| g.json())
            .filter(|v| v["data"]["channel_id"] == ch.as_str())
            .map(|v| v["data"]["message"]["content"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..30).filter(|n| n % 3 == i).map(|n| format!("m{n}")).collect();
        assert_eq!(contents, expected, "channel {i} in order");
    }
    let (_, metrics) = http_get(b.http_addr, "/metrics").await;
    assert!(
        metrics.contains("quaver_webhook_leases 8"),
        "node b took every partition"
    );
    drop(b);
    s.drop_db().await;
}

/// Whether the node serving `/metrics` at `http` comes to hold all 8 partitions of the one
/// webhook endpoint (within 5 s).
async fn holds_every_partition(http: std::net::SocketAddr) -> bool {
    for _ in 0..100 {
        let (_, metrics) = http_get(http, "/metrics").await;
        if metrics.contains("quaver_webhook_leases 8") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A change committed on a node that leases none of the endpoint's partitions is delivered
/// by the node that does within milliseconds: the cluster is told (`HooksWritten` on the
/// bus), not left to the holder's next poll (200 ms).
#[tokio::test]
async fn a_change_on_another_node_is_delivered_at_once_by_the_lease_holder() {
    use common::api::{call, text_channel_of, with_keys};
    use common::hooks::Receiver;
    use serde_json::json;
    let Some(s) = services("hookwake").await else {
        return;
    };
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut ca = node_config(&s);
    let (key, _) = with_keys(&mut ca);
    let keys = ca.api.keys.clone();
    let a = start(ca).await;
    let made = call(
        a.api_addr,
        Some(&key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "app", "url": r.url(), "events": ["message.created"]})),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    // Node a takes every partition before node b starts.
    assert!(
        holds_every_partition(a.http_addr).await,
        "node a holds the endpoint's partitions"
    );
    let mut cb = node_config(&s);
    cb.api.keys = keys;
    let b = start(cb).await;
    let api = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let (addr, key) = (b.api_addr, key.clone());
        async move { call(addr, Some(&key), method, &path, body, &[]).await }
    };
    let g = api(
        "POST",
        "/api/v1/guilds".into(),
        Some(json!({"owner_id": "1", "name": "Ops"})),
    )
    .await;
    assert_eq!(g.status, 201, "{g:?}");
    let details = api("GET", format!("/api/v1/guilds/{}", g.s("id")), None).await;
    let channel = text_channel_of(&details.body);
    let (_, metrics) = http_get(b.http_addr, "/metrics").await;
    assert!(metrics.contains("quaver_webhook_leases 0"), "node b holds none");
    // Posted on b one at a time: each delivered (by a) before the next.
    let mut took = Vec::new();
    for i in 0..10 {
        let before = r.got().len();
        let t = std::time::Instant::now();
        let m = api(
            "POST",
            format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "1", "content": format!("m{i}")})),
        )
        .await;
        assert_eq!(m.status, 201, "{m:?}");
        while r.got().len() == before {
            assert!(t.elapsed() < Duration::from_secs(5), "delivered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(t.elapsed());
        // Apart by more than the coalescing, less than a poll.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    took.sort();
    // Polling every 200 ms would put the median near 100 ms.
    assert!(
        took[5] < Duration::from_millis(60),
        "post on b → delivery by a: {took:?}"
    );
    drop((a, b));
    s.drop_db().await;
}

/// An endpoint made through one node records events on the others at once: they are told
/// on the bus (`EndpointsChanged`), not left to reread the endpoints at their next poll
/// (2 s) — a change committed there meanwhile would not be recorded for the endpoint.
#[tokio::test]
async fn an_endpoint_made_on_one_node_records_changes_on_another_at_once() {
    use common::api::{call, text_channel_of, with_keys};
    use common::hooks::Receiver;
    use serde_json::json;
    let Some(s) = services("hookendpoints").await else {
        return;
    };
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut ca = node_config(&s);
    let (key, _) = with_keys(&mut ca);
    let keys = ca.api.keys.clone();
    let a = start(ca).await;
    let mut cb = node_config(&s);
    cb.api.keys = keys;
    let b = start(cb).await;
    let on = |node: std::net::SocketAddr, method: &'static str, path: String, body: Option<serde_json::Value>| {
        let key = key.clone();
        async move { call(node, Some(&key), method, &path, body, &[]).await }
    };
    let g = on(
        a.api_addr,
        "POST",
        "/api/v1/guilds".into(),
        Some(json!({"owner_id": "1", "name": "Ops"})),
    )
    .await;
    assert_eq!(g.status, 201, "{g:?}");
    let channel = text_channel_of(
        &on(a.api_addr, "GET", format!("/api/v1/guilds/{}", g.s("id")), None)
            .await
            .body,
    );
    // Both nodes have read the (empty) endpoint list since they started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = on(
        b.api_addr,
        "POST",
        "/api/v1/webhooks".into(),
        Some(json!({"id": "app", "url": r.url(), "events": ["message.created"]})),
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    // Well within node a's poll of the endpoints (every 2 s).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = on(
        a.api_addr,
        "POST",
        format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "1", "content": "the first after the endpoint"})),
    )
    .await;
    assert_eq!(m.status, 201, "{m:?}");
    let delivered = async {
        while !r.got().iter().any(|g| g.body.contains("the first after the endpoint")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), delivered)
        .await
        .expect("the message posted on node a was recorded for the endpoint made on node b");
    drop((a, b));
    s.drop_db().await;
}

/// Presence webhooks on a cluster: a user only on a node that is SIGKILLed gets
/// `user.offline` (reason `node_lost`) within the liveness bound, after their
/// `user.online`; a user also connected to the surviving node gets nothing.
#[tokio::test]
async fn a_killed_nodes_users_go_offline_in_webhooks_and_only_they() {
    use common::api::{call, with_keys};
    use common::hooks::{Received, Receiver};
    use serde_json::json;
    let Some(s) = services("hookpresence").await else {
        return;
    };
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut cb = node_config(&s);
    let (key, _) = with_keys(&mut cb);
    let b = start(cb).await;
    let made = call(
        b.api_addr,
        Some(&key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "app", "url": r.url(), "events": ["user.*", "session.closed"]})),
        &[],
    )
    .await;
    assert_eq!(made.status, 201, "{made:?}");
    // The registry's versions are at least its clock in µs (they keep increasing after a
    // user's key expired or Redis restarted empty).
    let started_us = quaver::ids::now_ms() * 1000;
    let (mut child, mut pcfg, _, _) = node_process_with(&s, None).await;
    pcfg.token = Some(token(3));
    let p3 = connect(&pcfg).await.unwrap();
    pcfg.token = Some(token(4));
    let p4 = connect(&pcfg).await.unwrap();
    let b4 = connect(&client_config(&b, Transport::Quic, Some(token(4))))
        .await
        .unwrap();
    let of = |u: &str| {
        r.got()
            .iter()
            .map(Received::json)
            .filter(|e| e["data"]["user_id"] == u && e["type"].as_str().unwrap().starts_with("user."))
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["data"]["version"].as_u64().unwrap(),
                    e["data"]["reason"].as_str().map(str::to_string),
                )
            })
            .collect::<Vec<_>>()
    };
    let both_online = async {
        while of("3").is_empty() || of("4").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both_online)
        .await
        .expect("user.online for 3 and 4");
    child.start_kill().expect("kill the node process");
    let killed = std::time::Instant::now();
    let _ = child.wait().await;
    drop((p3, p4));
    let offline = async {
        while of("3").len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), offline)
        .await
        .expect("user.offline for the dead node's user");
    let took = killed.elapsed();
    // The liveness key lapses after 5 s; a survivor looks every second.
    assert!(took < Duration::from_secs(9), "within the liveness bound: {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let three = of("3");
    assert_eq!(
        three
            .iter()
            .map(|(t, _, w)| (t.as_str(), w.as_deref()))
            .collect::<Vec<_>>(),
        [("user.online", None), ("user.offline", Some("node_lost"))]
    );
    assert!(three[1].1 > three[0].1, "the offline's version is above the online's");
    assert!(
        three[0].1 >= started_us,
        "a version from the registry's clock: {three:?}"
    );
    let four = of("4");
    assert_eq!(
        four.iter().map(|(t, _, _)| t.as_str()).collect::<Vec<_>>(),
        ["user.online"],
        "user 4 is still connected to node b"
    );
    // Both users' sessions on the dead node are closed (node_lost), in one event each.
    let lost: Vec<serde_json::Value> = r
        .got()
        .iter()
        .map(Received::json)
        .filter(|e| e["type"] == "session.closed" && e["data"]["reason"] == "node_lost")
        .collect();
    let mut users: Vec<&str> = lost.iter().map(|e| e["data"]["user_id"].as_str().unwrap()).collect();
    users.sort_unstable();
    assert_eq!(users, ["3", "4"], "{lost:?}");
    assert!(lost.iter().all(|e| e["data"]["session_id"].is_null()));
    drop(b4);
    b.shutdown().await;
    s.drop_db().await;
}

/// Presence webhooks through a Redis restart that loses everything: a user who
/// disconnected while Redis was down still gets their `user.offline` once it is back.
#[tokio::test]
async fn a_disconnect_during_a_redis_outage_still_sends_user_offline() {
    use common::hooks::{Received, Receiver};
    if !have_redis_server() {
        return;
    }
    let (mut procs, port) = start_single("redis-hooks");
    let dir = procs._dir.clone();
    let s = with_database("hookredis", format!("redis://127.0.0.1:{port}"), "rh:".into()).await;
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = node_config(&s);
    c.webhooks.retry_min = Duration::from_millis(50);
    c.webhooks.retry_max = Duration::from_millis(300);
    c.webhooks.endpoints = vec![quaver::webhooks::EndpointConfig {
        id: "app".into(),
        url: r.url(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        events: vec!["user.*".into()],
        description: String::new(),
    }];
    let a = start(c).await;
    let kinds = || {
        r.got()
            .iter()
            .map(Received::json)
            .filter(|e| e["data"]["user_id"] == "1")
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (c1, _l1) = user(&a, 1).await;
    assert!(
        eventually(Duration::from_secs(5), || kinds() == ["user.online"]).await,
        "{:?}",
        kinds()
    );
    let mut redis = procs.children.pop().unwrap();
    redis.kill().unwrap(); // SIGKILL: Redis keeps nothing (no persistence)
    redis.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c1.close();
    // The grace (300 ms) passes while Redis is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kinds(), ["user.online"], "nothing decided while the registry is away");
    procs.children.push(spawn_redis(&dir, port, false));
    wait_ping(port);
    assert!(
        eventually(Duration::from_secs(8), || kinds() == ["user.online", "user.offline"]).await,
        "{:?}",
        kinds()
    );
    a.shutdown().await;
    s.drop_db().await;
}
