//! The server API (`/api/v1` on its own port), called the way a backend calls it — plain
//! HTTP/1.1 with a key — against a real server with real clients connected: keys and
//! scopes, problem documents, idempotency, messages and guilds seen live by clients,
//! presence and permissions, token revocation and disconnects on one node and across two.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::api::{Answer, call, text_channel_of, with_keys};
use common::*;
use quaver_client::{Client, LaneStream, Transport, connect};
use quaver_proto::{CloseCode, EventBody, Lane, ServerLane};
use serde_json::{Value, json};

/// A backend's view of a server: its API address and keys.
struct Backend {
    addr: SocketAddr,
    /// Every scope.
    admin: String,
    /// `messages:read` only.
    reader: String,
}

impl Backend {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        call(self.addr, Some(&self.admin), method, path, body, &[]).await
    }
    /// A call that must answer `status`.
    async fn ok(&self, status: u16, method: &str, path: &str, body: Option<Value>) -> Answer {
        let a = self.call(method, path, body).await;
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        a
    }
}

async fn server() -> (quaver::Server, Backend) {
    let mut c = config();
    let (admin, reader) = with_keys(&mut c);
    let s = start(c).await;
    let b = Backend {
        addr: s.api_addr,
        admin,
        reader,
    };
    (s, b)
}

async fn client(server: &quaver::Server, token: String) -> (Client, LaneStream) {
    let c = connect(&client_config(server, Transport::Quic, Some(token)))
        .await
        .expect("connects");
    let l = c.open_lane(Lane::Chat).await.expect("chat lane");
    (c, l)
}

/// The next event on `lane` that `want` picks, within 5 s.
async fn event<T>(lane: &mut LaneStream, mut want: impl FnMut(EventBody) -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let frame = tokio::time::timeout_at(end, lane.next())
            .await
            .expect("the event arrives in time")
            .expect("lane works");
        if let ServerLane::Event { body, .. } = frame
            && let Some(t) = want(body)
        {
            return t;
        }
    }
}

/// The close code a connection ends with, within `limit`.
async fn closed_with(c: &Client, limit: Duration) -> Option<u32> {
    tokio::time::timeout(limit, c.closed())
        .await
        .ok()
        .flatten()
        .map(|(code, _)| code.0)
}

/// A guild owned by user 1 (connected), with bot 900 (never connected) as a member, made
/// through the API: (guild id, its first text channel).
async fn guild_with_bot(b: &Backend) -> (String, String) {
    b.ok(200, "PUT", "/api/v1/users/900", Some(json!({"name": "Deploy bot"})))
        .await;
    let g = b
        .ok(
            201,
            "POST",
            "/api/v1/guilds",
            Some(json!({"owner_id": "1", "name": "Ops"})),
        )
        .await;
    let gid = g.s("id");
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/900"), None)
        .await;
    let details = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}"), None).await;
    let channel = text_channel_of(&details.body);
    (gid, channel)
}

#[tokio::test]
async fn every_call_needs_a_valid_key_and_the_scope_it_uses() {
    let (s, b) = server().await;
    let a = call(b.addr, None, "GET", "/api/v1/whoami", None, &[]).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        (a.body["code"].as_u64(), a.body["code_name"].as_str()),
        (Some(100), Some("UNAUTHORIZED"))
    );
    assert!(
        a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
        "{a:?}"
    );
    // A key with one character changed is not the key.
    let mut forged = b.admin.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for bad in [
        "qk_backend_nothex",
        "Bearer",
        forged.as_str(),
        "qk_nobody_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let a = call(b.addr, Some(bad), "GET", "/api/v1/whoami", None, &[]).await;
        assert_eq!(a.status, 401, "{bad}: {a:?}");
    }
    let me = b.ok(200, "GET", "/api/v1/whoami", None).await;
    assert_eq!(me.s("key_id"), "backend");
    assert!(me.body["scopes"].as_array().unwrap().iter().any(|s| s == "admin"));
    // The reader may read but not write.
    let a = call(
        b.addr,
        Some(&b.reader),
        "POST",
        "/api/v1/guilds",
        Some(json!({"owner_id": "1", "name": "x"})),
        &[],
    )
    .await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str()),
        (403, Some("SCOPE_MISSING")),
        "{a:?}"
    );
    assert!(a.body["detail"].as_str().unwrap().contains("guilds:write"), "{a:?}");
    // Every answer tells the key's quota.
    assert!(
        me.header("x-ratelimit-limit").is_some() && me.header("x-ratelimit-remaining").is_some(),
        "{me:?}"
    );
    // Unknown routes are problems too; the document and its page need no key.
    let a = b.call("GET", "/api/v1/nothing-here", None).await;
    assert_eq!((a.status, a.body["code_name"].as_str()), (404, Some("NO_ROUTE")));
    let doc = call(b.addr, None, "GET", "/api/v1/openapi.json", None, &[]).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    assert!(
        doc.body["paths"]["/api/v1/channels/{channel_id}/messages"]["post"].is_object(),
        "{}",
        doc.body["paths"]
    );
    let page = call(b.addr, None, "GET", "/api/v1/docs", None, &[]).await;
    assert_eq!(page.status, 200);
    // The client port does not serve the API.
    let (status, _) = http_get(s.http_addr, "/api/v1/whoami").await;
    assert_eq!(status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_naming_the_field() {
    let (s, b) = server().await;
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        // A path that does not parse names nothing that exists.
        ("PUT", "/api/v1/users/abc", Some(json!({"name": "x"})), 404, "path"),
        ("PUT", "/api/v1/users/0", Some(json!({"name": "x"})), 404, "path"),
        ("GET", "/api/v1/users/9223372036854775808", None, 404, "path"),
        ("PUT", "/api/v1/users/5", Some(json!({"name": ""})), 400, "name"),
        (
            "PUT",
            "/api/v1/users/5",
            Some(json!({"name": "x", "extra": 1})),
            400,
            "extra",
        ),
        ("POST", "/api/v1/guilds", Some(json!({"owner_id": "1"})), 400, "name"),
        (
            "POST",
            "/api/v1/presence/query",
            Some(json!({"user_ids": []})),
            400,
            "user_ids",
        ),
        (
            "GET",
            "/api/v1/channels/1/messages?before=1&after=2",
            None,
            400,
            "before",
        ),
        ("GET", "/api/v1/channels/1/messages?limit=lots", None, 400, "limit"),
    ];
    for (method, path, body, status, field) in cases {
        let a = b.call(method, path, body).await;
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"), "{path}");
        let said = format!("{} {}", a.body["field"], a.body["detail"]);
        assert!(said.contains(field), "{method} {path}: {a:?}");
    }
    // Not JSON at all.
    let a = call(
        b.addr,
        Some(&b.admin),
        "PUT",
        "/api/v1/users/5",
        None,
        &[("Content-Type", "application/json")],
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    // Things that are not there.
    for path in ["/api/v1/users/77", "/api/v1/guilds/77", "/api/v1/channels/77/messages"] {
        let a = b.call("GET", path, None).await;
        assert_eq!(
            (a.status, a.body["code_name"].as_str()),
            (404, Some("NOT_FOUND")),
            "{path}: {a:?}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_backend_builds_a_guild_and_its_bot_posts_what_clients_see_live() {
    let (s, b) = server().await;
    let (c1, mut l1) = client(&s, token(1)).await;
    let (gid, channel) = guild_with_bot(&b).await;
    // The owner's client heard the bot join.
    let joined = event(&mut l1, |e| match e {
        EventBody::MemberUpdated { guild_id, member } if guild_id.to_string() == gid => Some(member.user_id),
        _ => None,
    })
    .await;
    assert_eq!(joined, 900);
    // The bot posts; the owner's client gets it with its seq, as from any member.
    let m = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "900", "content": "deploy 4711 is live", "nonce": "77"})),
        )
        .await;
    let (seq, content) = event(&mut l1, |e| match e {
        EventBody::MessageCreated { seq, message } if message.author_id == 900 => Some((seq, message.content)),
        _ => None,
    })
    .await;
    assert_eq!(content, "deploy 4711 is live");
    assert_eq!(m.body["seq"].as_u64(), Some(seq), "{m:?}");
    // Its nonce again: the first message, not a second one.
    let again = b
        .ok(
            200,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "900", "content": "deploy 4711 is live", "nonce": "77"})),
        )
        .await;
    assert_eq!(again.s("id"), m.s("id"));
    // Someone who is not a member cannot be made to post.
    let a = b
        .call(
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "901", "content": "hi"})),
        )
        .await;
    assert!(matches!(a.status, 403 | 404), "{a:?}");
    // Edited as its author, reacted to, then deleted with moderation: each seen live.
    let mid = m.s("id");
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/channels/{channel}/messages/{mid}"),
        Some(json!({"content": "deploy 4711 rolled back"})),
    )
    .await;
    let edited = event(&mut l1, |e| match e {
        EventBody::MessageEdited { content, .. } => Some(content),
        _ => None,
    })
    .await;
    assert_eq!(edited, "deploy 4711 rolled back");
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/channels/{channel}/messages/{mid}/reactions/%F0%9F%91%8D/1"),
        None,
    )
    .await;
    event(&mut l1, |e| {
        matches!(e, EventBody::ReactionAdded { user_id: 1, .. }).then_some(())
    })
    .await;
    let history = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/channels/{channel}/messages?limit=10"),
            None,
        )
        .await;
    let msgs = history.body["messages"].as_array().unwrap();
    assert!(
        msgs.iter()
            .any(|x| x["id"] == mid.as_str() && x["content"] == "deploy 4711 rolled back"),
        "{history:?}"
    );
    b.ok(
        204,
        "DELETE",
        &format!("/api/v1/channels/{channel}/messages/{mid}"),
        None,
    )
    .await;
    event(&mut l1, |e| matches!(e, EventBody::MessageDeleted { .. }).then_some(())).await;
    // The reader key reads history but does not post.
    let a = call(
        b.addr,
        Some(&b.reader),
        "GET",
        &format!("/api/v1/channels/{channel}/messages"),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = call(
        b.addr,
        Some(&b.reader),
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "900", "content": "x"})),
        &[],
    )
    .await;
    assert_eq!(a.status, 403);
    // Presence: the owner is online, the bot (never connected) offline.
    let p = b
        .ok(
            200,
            "POST",
            "/api/v1/presence/query",
            Some(json!({"user_ids": ["1", "900"]})),
        )
        .await;
    assert_eq!(p.body["online"], 1, "{p:?}");
    assert_eq!(p.body["presences"][0]["status"], "online", "{p:?}");
    assert_eq!(p.body["presences"][1]["status"], "offline", "{p:?}");
    let counts = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}/presence"), None).await;
    assert_eq!(
        (counts.body["members"].as_u64(), counts.body["online"].as_u64()),
        (Some(2), Some(1)),
        "{counts:?}"
    );
    // Permissions by Quaver's rules: the owner has everything, the bot what @everyone has.
    let owner = b
        .ok(200, "GET", &format!("/api/v1/guilds/{gid}/members/1/permissions"), None)
        .await;
    assert!(
        owner.body["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "administrator"),
        "{owner:?}"
    );
    let bot = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/guilds/{gid}/members/900/permissions?channel_id={channel}"),
            None,
        )
        .await;
    let names = bot.body["names"].as_array().unwrap();
    assert!(
        names.iter().any(|n| n == "send_messages") && !names.iter().any(|n| n == "administrator"),
        "{bot:?}"
    );
    c1.close();
    s.shutdown().await;
}

#[tokio::test]
async fn moderation_through_the_api_reaches_the_member() {
    let (s, b) = server().await;
    let (_c1, mut l1) = client(&s, token(1)).await;
    let (c2, mut l2) = client(&s, token(2)).await;
    let (gid, channel) = guild_with_bot(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    // Member 2 sees the guild arrive.
    event(&mut l2, |e| matches!(e, EventBody::GuildUpdated { .. }).then_some(())).await;
    let members = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}/members"), None).await;
    let ids: Vec<&str> = members.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"1") && ids.contains(&"2") && ids.contains(&"900"),
        "{members:?}"
    );
    // A role for member 2, then a ban: they lose the guild, the owner sees them go.
    let role = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/roles"),
            Some(json!({"name": "oncall"})),
        )
        .await;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/members/2/roles/{}", role.s("id")),
        None,
    )
    .await;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/bans/2"),
        Some(json!({"reason": "spam"})),
    )
    .await;
    event(&mut l2, |e| matches!(e, EventBody::GuildRemoved { .. }).then_some(())).await;
    event(&mut l1, |e| {
        matches!(e, EventBody::MemberRemoved { user_id: 2, .. }).then_some(())
    })
    .await;
    // Banned: adding them back is refused until unbanned.
    let a = b.call("PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    assert_eq!((a.status, a.body["code_name"].as_str()), (403, Some("BANNED")), "{a:?}");
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}/bans/2"), None).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    // A channel and an invite made for the owner.
    let ch = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": "alerts", "kind": "text"})),
        )
        .await;
    assert_eq!(ch.body["kind"], "text");
    let inv = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/invites"),
            Some(json!({"max_uses": 5})),
        )
        .await;
    assert!(!inv.s("code").is_empty());
    b.ok(204, "DELETE", &format!("/api/v1/channels/{}", ch.s("id")), None)
        .await;
    let _ = channel;
    c2.close();
    s.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe() {
    let (s, b) = server().await;
    let (_c1, _l1) = client(&s, token(1)).await;
    let (_gid, channel) = guild_with_bot(&b).await;
    let path = format!("/api/v1/channels/{channel}/messages");
    let post = |content: &'static str, key: &'static str| {
        let (addr, k, path) = (b.addr, b.admin.clone(), path.clone());
        async move {
            call(
                addr,
                Some(&k),
                "POST",
                &path,
                Some(json!({"author_id": "900", "content": content})),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let first = post("once", "order-1").await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);
    // The retry (no nonce in the body: only the key makes it safe) gets the first answer.
    let retry = post("once", "order-1").await;
    assert_eq!(
        (retry.status, retry.header("idempotent-replayed")),
        (201, Some("true")),
        "{retry:?}"
    );
    assert_eq!(retry.s("id"), first.s("id"));
    // The same key with another request is refused, naming the header.
    let other = post("twice", "order-1").await;
    assert_eq!(
        (other.status, other.body["code_name"].as_str()),
        (422, Some("IDEMPOTENCY_MISMATCH")),
        "{other:?}"
    );
    // Concurrent first tries: one goes ahead, the others are told it is in flight or get its
    // answer — never a second message.
    let tries = futures_util::future::join_all((0..6).map(|_| post("racing", "order-2"))).await;
    let made: std::collections::HashSet<String> = tries.iter().filter(|a| a.status == 201).map(|a| a.s("id")).collect();
    assert_eq!(made.len(), 1, "{tries:?}");
    assert!(tries.iter().all(|a| a.status == 201 || a.status == 409), "{tries:?}");
    let history = b.ok(200, "GET", &format!("{path}?limit=100"), None).await;
    let contents: Vec<&str> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(contents.iter().filter(|c| **c == "once").count(), 1, "{contents:?}");
    assert_eq!(contents.iter().filter(|c| **c == "racing").count(), 1, "{contents:?}");
    assert!(!contents.contains(&"twice"));
    // A bad key is refused before anything is done.
    let bad = call(
        b.addr,
        Some(&b.admin),
        "POST",
        &path,
        Some(json!({"author_id": "900", "content": "x"})),
        &[("Idempotency-Key", "")],
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    s.shutdown().await;
}

/// A token with a `jti`, signed with the test secret.
fn token_with_jti(user: u64, jti: &str) -> String {
    let now = quaver::auth::unix_now();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user.to_string(), "exp": now + 3600, "iat": now - 5, "jti": jti}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_revoked_token_ends_its_sessions_and_is_refused_after() {
    let (s, b) = server().await;
    let (c1, _l1) = client(&s, token_with_jti(5, "laptop")).await;
    let (c2, _l2) = client(&s, token_with_jti(5, "phone")).await;
    // One token by jti: its session ends with 4019, the other stays.
    let r = b
        .ok(
            201,
            "POST",
            "/api/v1/users/5/revocations",
            Some(json!({"jti": "laptop"})),
        )
        .await;
    assert_eq!(r.body["sessions_ended_here"], 1, "{r:?}");
    assert_eq!(
        closed_with(&c1, Duration::from_secs(5)).await,
        Some(CloseCode::TOKEN_REVOKED.0)
    );
    assert_eq!(
        closed_with(&c2, Duration::from_millis(300)).await,
        None,
        "the phone's token is not revoked"
    );
    let e = connect(&client_config(&s, Transport::Quic, Some(token_with_jti(5, "laptop"))))
        .await
        .expect_err("a revoked token is refused");
    assert_eq!(e.close_code(), Some(CloseCode::TOKEN_REVOKED));
    // Every token issued until now: the phone goes too, a new token still works.
    b.ok(201, "POST", "/api/v1/users/5/revocations", Some(json!({}))).await;
    assert_eq!(
        closed_with(&c2, Duration::from_secs(5)).await,
        Some(CloseCode::TOKEN_REVOKED.0)
    );
    let later = {
        let now = quaver::auth::unix_now();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "5", "exp": now + 3600, "iat": now + 2}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let (c3, _l3) = client(&s, later).await;
    // Revocations are kept: a restarted node still refuses.
    let a = b
        .call(
            "POST",
            "/api/v1/users/5/revocations",
            Some(json!({"issued_before": u64::MAX / 2})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["field"].as_str()),
        (400, Some("issued_before")),
        "{a:?}"
    );
    assert!(s.ctx.verifier.revocations().covers_parts(5, Some(0), None));
    let rows = s.ctx.chat.store().revocations().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    c3.close();
    s.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_says_whether_to_come_back() {
    let (s, b) = server().await;
    let (c1, _l1) = client(&s, token(6)).await;
    let a = b
        .ok(
            202,
            "POST",
            "/api/v1/users/6/disconnect",
            Some(json!({"reason": "permissions changed"})),
        )
        .await;
    assert_eq!(
        (a.body["close_code"].as_u64(), a.body["sessions_ended_here"].as_u64()),
        (Some(1008), Some(1))
    );
    let (code, reason) = tokio::time::timeout(Duration::from_secs(5), c1.closed())
        .await
        .expect("closed in time")
        .expect("with a code");
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::DISCONNECTED, "permissions changed")
    );
    // It may come back at once (a new session: the old one ended, not resumable).
    let (c2, _l2) = client(&s, token(6)).await;
    assert_eq!(s.ctx.sessions.of_user(6).len(), 1);
    let l = b.ok(200, "GET", "/api/v1/users/6/sessions", None).await;
    assert_eq!(l.body["sessions"].as_array().unwrap().len(), 1, "{l:?}");
    assert_eq!(l.body["complete"], true, "{l:?}");
    assert_eq!(l.body["sessions"][0]["id"].as_str().map(str::len), Some(32));
    // One session of two: only that one ends.
    let (c3, _l3) = client(&s, token(6)).await;
    let one = c3.ready.session_id.to_string();
    let a = b
        .ok(
            202,
            "POST",
            &format!("/api/v1/users/6/sessions/{one}/disconnect"),
            Some(json!({"reason": "signed out on the phone"})),
        )
        .await;
    assert_eq!(a.body["sessions_ended_here"], 1, "{a:?}");
    assert_eq!(
        closed_with(&c3, Duration::from_secs(5)).await,
        Some(CloseCode::DISCONNECTED.0)
    );
    assert_eq!(
        closed_with(&c2, Duration::from_millis(200)).await,
        None,
        "the other session stays"
    );
    let a = b
        .call("POST", "/api/v1/users/6/sessions/nothex/disconnect", Some(json!({})))
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    b.ok(
        202,
        "POST",
        "/api/v1/users/6/disconnect",
        Some(json!({"reconnect": false})),
    )
    .await;
    assert_eq!(
        closed_with(&c2, Duration::from_secs(5)).await,
        Some(CloseCode::REMOVED.0)
    );
    assert!(
        eventually(Duration::from_secs(2), || s.ctx.sessions.of_user(6).is_empty()).await,
        "a removed session is not kept for a resume"
    );
    let l = b.ok(200, "GET", "/api/v1/users/6/sessions", None).await;
    assert_eq!(l.body["sessions"], json!([]), "{l:?}");
    let a = b
        .call(
            "POST",
            "/api/v1/users/6/disconnect",
            Some(json!({"reason": "x".repeat(121)})),
        )
        .await;
    assert_eq!((a.status, a.body["field"].as_str()), (400, Some("reason")));
    s.shutdown().await;
}

/// Two nodes in this process on one in-process bus, over one SQLite file, each with the
/// backend's keys.
async fn two_nodes(hub: &quaver::cluster::pubsub::MemoryHub) -> (quaver::Server, quaver::Server, Backend) {
    let db = format!("sqlite://{}?mode=rwc", tempdir("api-db").join("shared.db").display());
    let mut c = config();
    let (admin, reader) = with_keys(&mut c);
    let mut nodes = Vec::new();
    for n in 0..2u16 {
        let mut c = c.clone();
        c.data_dir = tempdir("api-node").join("data");
        c.node_name = format!("api-{}-{n}", std::process::id());
        c.node_id = Some(700 + n);
        c.database = Some(db.clone());
        nodes.push(quaver::Server::start_with(c, Some(hub)).await.expect("node starts"));
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let backend = Backend {
        addr: a.api_addr,
        admin,
        reader,
    };
    (a, b, backend)
}

#[tokio::test]
async fn orders_and_messages_of_the_api_reach_every_node() {
    let hub = quaver::cluster::pubsub::MemoryHub::new();
    let (a, b, api) = two_nodes(&hub).await;
    // The owner is on node b; the backend calls node a.
    let (c1, mut l1) = client(&b, token(1)).await;
    let (_gid, channel) = guild_with_bot(&api).await;
    for i in 0..5 {
        api.ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "900", "content": format!("m{i}")})),
        )
        .await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        seqs.push(
            event(&mut l1, |e| match e {
                EventBody::MessageCreated { seq, message } if message.author_id == 900 => Some(seq),
                _ => None,
            })
            .await,
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in seq order, once: {seqs:?}"
    );
    // A revocation made on node a ends the session on node b, and node b refuses the token.
    let t = token_with_jti(1, "stolen");
    let (c2, _l2) = client(&b, t.clone()).await;
    // Node a lists user 1's sessions: both are on node b. Both nodes answered (node a with
    // none), so the list is complete at once, not after a waiting window.
    let asked = std::time::Instant::now();
    let l = api.ok(200, "GET", "/api/v1/users/1/sessions", None).await;
    assert!(asked.elapsed() < Duration::from_millis(250), "{:?}", asked.elapsed());
    assert_eq!(l.body["complete"], true, "{l:?}");
    let list = l.body["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{l:?}");
    assert!(
        list.iter()
            .all(|x| x["node"] == b.ctx.cfg.node_name.as_str() && x["connected"] == true && x["transport"] == "quic"),
        "{l:?}"
    );
    let started = std::time::Instant::now();
    let r = api
        .ok(
            201,
            "POST",
            "/api/v1/users/1/revocations",
            Some(json!({"jti": "stolen"})),
        )
        .await;
    assert_eq!(r.body["sessions_ended_here"], 0, "nothing of user 1 on node a");
    assert_eq!(
        closed_with(&c2, Duration::from_secs(5)).await,
        Some(CloseCode::TOKEN_REVOKED.0)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = connect(&client_config(&b, Transport::Quic, Some(t)))
        .await
        .expect_err("refused on node b");
    assert_eq!(e.close_code(), Some(CloseCode::TOKEN_REVOKED));
    assert_eq!(
        closed_with(&c1, Duration::from_millis(200)).await,
        None,
        "other tokens untouched"
    );
    // A disconnect ordered on node a reaches node b.
    api.ok(202, "POST", "/api/v1/users/1/disconnect", Some(json!({}))).await;
    assert_eq!(
        closed_with(&c1, Duration::from_secs(5)).await,
        Some(CloseCode::DISCONNECTED.0)
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The next `AppEvent` on `lane`, within `limit` (none: `None`).
async fn app_event(lane: &mut LaneStream, limit: Duration) -> Option<(String, Value, Option<u64>, Option<u64>)> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let frame = tokio::time::timeout_at(end, lane.next())
            .await
            .ok()?
            .expect("lane works");
        if let ServerLane::Event {
            body:
                EventBody::AppEvent {
                    name,
                    data,
                    channel_id,
                    guild_id,
                },
            ..
        } = frame
        {
            return Some((
                name,
                serde_json::from_str(&data).expect("JSON data"),
                channel_id,
                guild_id,
            ));
        }
    }
}

#[tokio::test]
async fn application_events_reach_users_channels_and_guilds() {
    let (s, b) = server().await;
    let (c1, _l1) = client(&s, token(1)).await;
    let mut n1 = c1.open_lane(Lane::Notifications).await.unwrap();
    let (c2, _l2) = client(&s, token(2)).await;
    let mut n2 = c2.open_lane(Lane::Notifications).await.unwrap();
    let (gid, channel) = guild_with_bot(&b).await;
    // To users: only they get it.
    let a = b
        .ok(
            202,
            "POST",
            "/api/v1/events",
            Some(json!({"name": "order.shipped", "data": {"order": 17}, "user_ids": ["2"]})),
        )
        .await;
    assert_eq!(a.body["to"], "users");
    let (name, data, ch, g) = app_event(&mut n2, Duration::from_secs(5))
        .await
        .expect("user 2 gets it");
    assert_eq!(
        (name.as_str(), data, ch, g),
        ("order.shipped", json!({"order": 17}), None, None)
    );
    assert!(
        app_event(&mut n1, Duration::from_millis(300)).await.is_none(),
        "user 1 does not"
    );
    // To a channel's viewers: the guild's members (user 1), not user 2.
    b.ok(
        202,
        "POST",
        "/api/v1/events",
        Some(json!({"name": "poll.updated", "data": {"votes": [3, 1]}, "channel_id": channel})),
    )
    .await;
    let (name, data, ch, g) = app_event(&mut n1, Duration::from_secs(5))
        .await
        .expect("a viewer gets it");
    assert_eq!(name, "poll.updated");
    assert_eq!(data, json!({"votes": [3, 1]}));
    assert_eq!(
        (ch.map(|c| c.to_string()), g.map(|g| g.to_string())),
        (Some(channel.clone()), Some(gid.clone()))
    );
    assert!(
        app_event(&mut n2, Duration::from_millis(300)).await.is_none(),
        "not a member, not told"
    );
    // To a guild.
    b.ok(
        202,
        "POST",
        "/api/v1/events",
        Some(json!({"name": "deploy.done", "guild_id": gid})),
    )
    .await;
    let (name, data, _, g) = app_event(&mut n1, Duration::from_secs(5))
        .await
        .expect("a member gets it");
    assert_eq!(
        (name.as_str(), data, g.map(|g| g.to_string())),
        ("deploy.done", Value::Null, Some(gid.clone()))
    );
    // Refusals: no audience or two, a bad name, too much data, an unknown channel, the scope.
    for (body, status, field) in [
        (json!({"name": "x"}), 400, "user_ids"),
        (
            json!({"name": "x", "user_ids": ["1"], "guild_id": gid}),
            400,
            "user_ids",
        ),
        (json!({"name": "has space", "user_ids": ["1"]}), 400, "name"),
        (
            json!({"name": "big", "user_ids": ["1"], "data": "x".repeat(17 * 1024)}),
            413,
            "data",
        ),
    ] {
        let a = b.call("POST", "/api/v1/events", Some(body.clone())).await;
        assert_eq!(
            (a.status, a.body["field"].as_str()),
            (status, Some(field)),
            "{body}: {a:?}"
        );
    }
    let a = b
        .call("POST", "/api/v1/events", Some(json!({"name": "x", "channel_id": "77"})))
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    let a = call(
        b.addr,
        Some(&b.reader),
        "POST",
        "/api/v1/events",
        Some(json!({"name": "x", "user_ids": ["1"]})),
        &[],
    )
    .await;
    assert_eq!(a.status, 403);
    s.shutdown().await;
}

#[tokio::test]
async fn a_backend_moderates_voice() {
    let (s, b) = server().await;
    let (_c1, _l1) = client(&s, token(1)).await;
    let (c2, _l2) = client(&s, token(2)).await;
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let (gid, _) = guild_with_bot(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    let mut rooms = Vec::new();
    for name in ["Standup", "Quiet room"] {
        let c = b
            .ok(
                201,
                "POST",
                &format!("/api/v1/guilds/{gid}/channels"),
                Some(json!({"kind": "voice", "name": name})),
            )
            .await;
        rooms.push(c.s("id"));
    }
    // Not in voice yet: nothing to act on.
    let a = b.call("DELETE", &format!("/api/v1/guilds/{gid}/voice/2"), None).await;
    assert_eq!(a.status, 404, "{a:?}");
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        v2.request(quaver_proto::RequestBody::JoinVoice {
            channel_id: rooms[0].parse().unwrap(),
            self_mute: false,
            self_deaf: false,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        matches!(joined, Ok(quaver_proto::ResponseBody::VoiceJoined { .. })),
        "{joined:?}"
    );
    let p = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/voice/channels/{}/participants", rooms[0]),
            None,
        )
        .await;
    assert_eq!(p.body["participants"][0]["user_id"], "2", "{p:?}");
    // Server mute: they hear of it on their voice lane.
    let a = b
        .ok(
            200,
            "PATCH",
            &format!("/api/v1/guilds/{gid}/voice/2"),
            Some(json!({"server_mute": true})),
        )
        .await;
    assert_eq!(a.body["carried_out"], "here");
    event(&mut v2, |e| match e {
        EventBody::VoiceStateUpdated { state } if state.user_id == 2 && state.server_mute => Some(()),
        _ => None,
    })
    .await;
    // Moved to the quiet room.
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/guilds/{gid}/voice/2"),
        Some(json!({"channel_id": rooms[1]})),
    )
    .await;
    let moved_to = event(&mut v2, |e| match e {
        EventBody::VoiceStateUpdated { state } if state.user_id == 2 && state.channel_id.to_string() == rooms[1] => {
            Some(state.channel_id)
        }
        _ => None,
    })
    .await;
    assert_eq!(moved_to.to_string(), rooms[1]);
    let p = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/voice/channels/{}/participants", rooms[1]),
            None,
        )
        .await;
    assert_eq!(p.body["participants"].as_array().unwrap().len(), 1, "{p:?}");
    // A text channel is not a voice channel to move to; nothing to change is refused.
    let text = text_channel_of(&b.ok(200, "GET", &format!("/api/v1/guilds/{gid}"), None).await.body);
    let a = b
        .call(
            "PATCH",
            &format!("/api/v1/guilds/{gid}/voice/2"),
            Some(json!({"channel_id": text})),
        )
        .await;
    assert_eq!((a.status, a.body["field"].as_str()), (400, Some("channel_id")), "{a:?}");
    let a = b
        .call("PATCH", &format!("/api/v1/guilds/{gid}/voice/2"), Some(json!({})))
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    let a = b
        .call("GET", &format!("/api/v1/voice/channels/{text}/participants"), None)
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    // Out of voice.
    b.ok(200, "DELETE", &format!("/api/v1/guilds/{gid}/voice/2"), None)
        .await;
    event(&mut v2, |e| {
        matches!(e, EventBody::VoiceStateRemoved { user_id: 2, .. }).then_some(())
    })
    .await;
    let p = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/voice/channels/{}/participants", rooms[1]),
            None,
        )
        .await;
    assert_eq!(p.body["participants"].as_array().unwrap().len(), 0, "{p:?}");
    // Back in; a timeout takes them out at once, and joining again is refused until lifted.
    let join = || quaver_proto::RequestBody::JoinVoice {
        channel_id: rooms[0].parse().unwrap(),
        self_mute: false,
        self_deaf: false,
    };
    let joined = v2.request(join()).await.unwrap();
    assert!(
        matches!(joined, Ok(quaver_proto::ResponseBody::VoiceJoined { .. })),
        "{joined:?}"
    );
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/members/2/timeout"),
        Some(json!({"seconds": 300})),
    )
    .await;
    event(&mut v2, |e| {
        matches!(e, EventBody::VoiceStateRemoved { user_id: 2, .. }).then_some(())
    })
    .await;
    let again = v2.request(join()).await.unwrap();
    assert_eq!(again.err().map(|e| e.code), Some(quaver_proto::ErrorCode::TIMED_OUT));
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}/members/2/timeout"), None)
        .await;
    let joined = v2.request(join()).await.unwrap();
    assert!(
        matches!(joined, Ok(quaver_proto::ResponseBody::VoiceJoined { .. })),
        "{joined:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_runs_each_operation_as_if_alone() {
    let (s, b) = server().await;
    let (_c1, mut l1) = client(&s, token(1)).await;
    let (_gid, channel) = guild_with_bot(&b).await;
    let post = |content: &str| json!({"method": "POST", "path": format!("/channels/{channel}/messages"), "body": {"author_id": "900", "content": content}});
    let a = b
        .ok(
            200,
            "POST",
            "/api/v1/batch",
            Some(json!({"operations": [
                post("one"),
                {"method": "GET", "path": "/users/900"},
                {"method": "POST", "path": "/channels/77/messages", "body": {"author_id": "900", "content": "nowhere"}},
                post("two"),
            ]})),
        )
        .await;
    let results = a.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![201, 200, 404, 201], "{a:?}");
    assert_eq!(results[1]["body"]["name"], "Deploy bot");
    assert_eq!(results[2]["body"]["code_name"], "NOT_FOUND");
    // Both messages went out as events, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            event(&mut l1, |e| match e {
                EventBody::MessageCreated { message, .. } if message.author_id == 900 => Some(message.content),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(seen, vec!["one", "two"]);
    // stop_on_error: nothing after the first failure runs.
    let a = b
        .ok(
            200,
            "POST",
            "/api/v1/batch",
            Some(json!({"stop_on_error": true, "operations": [{"method": "GET", "path": "/users/77"}, post("three")]})),
        )
        .await;
    assert_eq!(
        (a.body["results"].as_array().unwrap().len(), a.body["skipped"].as_u64()),
        (1, Some(1)),
        "{a:?}"
    );
    // Each operation needs its own scope: the reader's batch reads but may not post.
    let a = call(
        b.addr,
        Some(&b.reader),
        "POST",
        "/api/v1/batch",
        Some(json!({"operations": [{"method": "GET", "path": format!("/channels/{channel}/messages")}, post("four")]})),
        &[],
    )
    .await;
    let statuses: Vec<u64> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 403], "{a:?}");
    // Refused whole: a batch in a batch, a bad method, none or too many.
    for (ops, field) in [
        (
            json!([{"method": "POST", "path": "/batch", "body": {"operations": []}}]),
            "operations[0].path",
        ),
        (json!([{"method": "TRACE", "path": "/whoami"}]), "operations[0].method"),
        (json!([]), "operations"),
        (
            Value::Array((0..101).map(|_| json!({"method": "GET", "path": "/whoami"})).collect()),
            "operations",
        ),
    ] {
        let a = b.call("POST", "/api/v1/batch", Some(json!({"operations": ops}))).await;
        assert_eq!((a.status, a.body["field"].as_str()), (400, Some(field)), "{a:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn roles_overwrites_dms_and_bulk_deletes() {
    let (s, b) = server().await;
    let (_c1, mut l1) = client(&s, token(1)).await;
    let (_c2, mut l2) = client(&s, token(2)).await;
    let (gid, channel) = guild_with_bot(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    // A role renamed and given permissions: members are told.
    let role = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/roles"),
            Some(json!({"name": "oncall"})),
        )
        .await;
    let r = b
        .ok(
            200,
            "PATCH",
            &format!("/api/v1/guilds/{gid}/roles/{}", role.s("id")),
            Some(json!({"name": "on call", "permissions": "8192"})),
        )
        .await;
    assert_eq!(
        (r.s("name"), r.s("permissions")),
        ("on call".to_string(), "8192".to_string())
    );
    event(&mut l2, |e| match e {
        EventBody::RoleUpdated { role } if role.name == "on call" => Some(()),
        _ => None,
    })
    .await;
    let a = b
        .call(
            "PATCH",
            &format!("/api/v1/guilds/{gid}/roles/77"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    // The channel hidden from member 2 by an overwrite, then shown again.
    let view = 1u64 << 10;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/channels/{channel}/overwrites/member/2"),
        Some(json!({"deny": view.to_string()})),
    )
    .await;
    event(&mut l2, |e| match e {
        EventBody::ChannelRemoved { channel_id } if channel_id.to_string() == channel => Some(()),
        _ => None,
    })
    .await;
    let p = b
        .ok(
            200,
            "GET",
            &format!("/api/v1/guilds/{gid}/members/2/permissions?channel_id={channel}"),
            None,
        )
        .await;
    assert_eq!(p.s("bits"), "0", "{p:?}");
    b.ok(
        204,
        "DELETE",
        &format!("/api/v1/channels/{channel}/overwrites/member/2"),
        None,
    )
    .await;
    event(&mut l2, |e| match e {
        EventBody::ChannelUpdated { channel: c } if c.id.to_string() == channel => Some(()),
        _ => None,
    })
    .await;
    let a = b
        .call(
            "PUT",
            &format!("/api/v1/channels/{channel}/overwrites/team/2"),
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    // Bulk delete: what is there goes, what is not is said.
    let mut ids = Vec::new();
    for i in 0..3 {
        let m = b
            .ok(
                201,
                "POST",
                &format!("/api/v1/channels/{channel}/messages"),
                Some(json!({"author_id": "2", "content": format!("spam {i}")})),
            )
            .await;
        ids.push(m.s("id"));
    }
    ids.push("77".into());
    let d = b
        .ok(
            200,
            "POST",
            &format!("/api/v1/channels/{channel}/messages/bulk-delete"),
            Some(json!({"message_ids": ids})),
        )
        .await;
    assert_eq!(d.body["deleted"].as_array().unwrap().len(), 3, "{d:?}");
    assert_eq!(d.body["not_found"], json!(["77"]));
    let mut gone = 0;
    while gone < 3 {
        event(&mut l1, |e| matches!(e, EventBody::MessageDeleted { .. }).then_some(())).await;
        gone += 1;
    }
    // A DM between 1 and 2, opened for them; the same one again.
    let dm = b
        .ok(200, "POST", "/api/v1/dms", Some(json!({"user_ids": ["1", "2"]})))
        .await;
    assert_eq!(dm.body["kind"], "dm");
    let again = b
        .ok(200, "POST", "/api/v1/dms", Some(json!({"user_ids": ["1", "2"]})))
        .await;
    assert_eq!(again.s("id"), dm.s("id"));
    let group = b
        .ok(
            200,
            "POST",
            "/api/v1/dms",
            Some(json!({"user_ids": ["1", "2", "900"], "name": "incident"})),
        )
        .await;
    assert_eq!(
        (group.body["kind"].as_str(), group.body["name"].as_str()),
        (Some("group_dm"), Some("incident"))
    );
    let a = b
        .call("POST", "/api/v1/dms", Some(json!({"user_ids": ["1", "1"]})))
        .await;
    assert_eq!((a.status, a.body["field"].as_str()), (400, Some("user_ids")));
    s.shutdown().await;
}

#[tokio::test]
async fn deleting_a_user_ends_their_sessions_and_keeps_their_messages() {
    let (s, b) = server().await;
    let (c1, mut l1) = client(&s, token(1)).await;
    let t2 = token(2);
    let (c2, _l2) = client(&s, t2.clone()).await;
    let (gid, channel) = guild_with_bot(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    let m = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "2", "content": "my last words"})),
        )
        .await;
    // The owner of a guild cannot be deleted; nothing changes.
    let a = b.call("DELETE", "/api/v1/users/1", None).await;
    assert_eq!((a.status, a.body["code_name"].as_str()), (409, Some("OWNER")), "{a:?}");
    assert!(a.body["detail"].as_str().unwrap().contains(&gid));
    assert_eq!(closed_with(&c1, Duration::from_millis(200)).await, None);
    let d = b.ok(200, "DELETE", "/api/v1/users/2", None).await;
    assert_eq!(
        (d.body["guilds_left"].as_u64(), d.body["sessions_ended_here"].as_u64()),
        (Some(1), Some(1)),
        "{d:?}"
    );
    let (code, reason) = tokio::time::timeout(Duration::from_secs(5), c2.closed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::REMOVED, "this account was deleted")
    );
    event(&mut l1, |e| {
        matches!(e, EventBody::MemberRemoved { user_id: 2, .. }).then_some(())
    })
    .await;
    let e = connect(&client_config(&s, Transport::Quic, Some(t2)))
        .await
        .expect_err("the old token is refused");
    assert_eq!(e.close_code(), Some(CloseCode::TOKEN_REVOKED));
    // Their profile is gone (a second delete finds nothing); their message stays.
    b.ok(404, "GET", "/api/v1/users/2", None).await;
    b.ok(404, "DELETE", "/api/v1/users/2", None).await;
    assert_eq!(
        s.ctx.chat.store().user_name(2).await.unwrap().as_deref(),
        Some("Deleted user"),
        "what their messages show"
    );
    let h = b
        .ok(200, "GET", &format!("/api/v1/channels/{channel}/messages"), None)
        .await;
    assert!(
        h.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == m.s("id").as_str() && x["content"] == "my last words")
    );
    let a = b.call("DELETE", "/api/v1/users/77", None).await;
    assert_eq!(a.status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn the_api_speaks_https_when_asked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config();
    let (admin, _) = with_keys(&mut c);
    c.api.tls = quaver::config::ApiTls::On;
    let s = start(c).await;
    assert!(s.api_https);
    // A client that trusts the server's (development) certificate, ALPN http/1.1.
    let trust = quaver_client::Trust::Hashes(vec![s.cert_hash()]);
    let cfg = quaver_client::tls_config(&trust, b"http/1.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(s.api_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(format!("GET /api/v1/whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"key_id\":\"backend\""), "{text}");
    // Plain HTTP on that port gets no answer, and the server goes on.
    let mut plain = tokio::net::TcpStream::connect(s.api_addr).await.unwrap();
    plain
        .write_all(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("key_id"));
    // On loopback without a certificate of its own, `auto` is plain HTTP.
    let mut c = config();
    with_keys(&mut c);
    let plain_server = start(c).await;
    assert!(!plain_server.api_https);
    plain_server.shutdown().await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_backend_makes_and_ends_friendships() {
    let (s, b) = server().await;
    let (c1, mut l1) = client(&s, token(1)).await;
    let mut p1 = c1.open_lane(Lane::Presence).await.unwrap();
    let (_c2, mut l2) = client(&s, token(2)).await;
    b.ok(204, "PUT", "/api/v1/users/1/friends/2", None).await;
    for lane in [&mut l1, &mut l2] {
        event(lane, |e| match e {
            EventBody::RelationshipUpdated { relationship }
                if relationship.kind == quaver_proto::RelationshipKind::Friend =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    }
    // Friends see each other's presence from then on.
    event(&mut p1, |e| match e {
        EventBody::PresenceSnapshot { presences } if presences.iter().any(|p| p.user_id == 2) => Some(()),
        EventBody::PresenceUpdated { presence } if presence.user_id == 2 => Some(()),
        _ => None,
    })
    .await;
    b.ok(204, "PUT", "/api/v1/users/2/friends/1", None).await;
    b.ok(204, "DELETE", "/api/v1/users/2/friends/1", None).await;
    event(&mut l1, |e| {
        matches!(e, EventBody::RelationshipRemoved { user_id: 2 }).then_some(())
    })
    .await;
    let a = b.call("DELETE", "/api/v1/users/2/friends/1", None).await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str()),
        (409, Some("NO_RELATIONSHIP")),
        "{a:?}"
    );
    let a = b.call("PUT", "/api/v1/users/3/friends/3", None).await;
    assert_eq!(a.status, 400, "{a:?}");
    // Blocks: user 1 blocks user 2 (told on their session); 2 cannot befriend 1 then.
    b.ok(204, "PUT", "/api/v1/users/1/blocks/2", None).await;
    event(&mut l1, |e| match e {
        EventBody::RelationshipUpdated { relationship }
            if relationship.user_id == 2 && relationship.kind == quaver_proto::RelationshipKind::Blocked =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    let a = b.call("PUT", "/api/v1/users/2/friends/1", None).await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str()),
        (403, Some("BLOCKED")),
        "{a:?}"
    );
    b.ok(204, "DELETE", "/api/v1/users/1/blocks/2", None).await;
    let a = b.call("DELETE", "/api/v1/users/1/blocks/2", None).await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str()),
        (409, Some("NO_RELATIONSHIP")),
        "{a:?}"
    );
    b.ok(204, "PUT", "/api/v1/users/2/friends/1", None).await;
    s.shutdown().await;
}

/// Protocol 2 through the API: a role's place and its deletion, a member's timeout (seen by
/// the member, enforced, lifted), and a profile's avatar — each seen live by a client.
#[tokio::test]
async fn timeouts_role_order_and_avatars_reach_clients() {
    let (s, b) = server().await;
    let (_c1, mut l1) = client(&s, token(1)).await;
    let (_c2, mut l2) = client(&s, token(2)).await;
    let (gid, channel) = guild_with_bot(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    event(&mut l2, |e| matches!(e, EventBody::GuildUpdated { .. }).then_some(())).await;
    // Roles: a, then b (created at the bottom: a 2, b 1); b to the top.
    let roles = format!("/api/v1/guilds/{gid}/roles");
    let a = b.ok(201, "POST", &roles, Some(json!({"name": "a"}))).await.s("id");
    let r_b = b.ok(201, "POST", &roles, Some(json!({"name": "b"}))).await.s("id");
    let moved = b
        .ok(200, "PATCH", &format!("{roles}/{r_b}"), Some(json!({"position": 50})))
        .await;
    assert_eq!(moved.body["position"], 2, "{moved:?}");
    let a_id: u64 = a.parse().unwrap();
    event(&mut l2, |e| match e {
        EventBody::RoleUpdated { role } if role.id == a_id && role.position == 1 => Some(()),
        _ => None,
    })
    .await;
    let bad = b
        .call("PATCH", &format!("{roles}/{r_b}"), Some(json!({"position": 0})))
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("position")),
        "{bad:?}"
    );
    let bad = b
        .call("PATCH", &format!("{roles}/{gid}"), Some(json!({"position": 3})))
        .await;
    assert_eq!(bad.status, 400, "@everyone does not move: {bad:?}");
    // Deleting: gone for the member's client; @everyone and unknown roles refused.
    b.ok(204, "DELETE", &format!("{roles}/{a}"), None).await;
    event(&mut l2, |e| match e {
        EventBody::RoleDeleted { role_id, .. } if role_id == a_id => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(b.call("DELETE", &format!("{roles}/{gid}"), None).await.status, 400);
    assert_eq!(b.call("DELETE", &format!("{roles}/{a}"), None).await.status, 404);
    // A timeout: the member's client sees it, sending is refused, the API lists it.
    let path = format!("/api/v1/guilds/{gid}/members/2/timeout");
    let denied = call(b.addr, Some(&b.reader), "PUT", &path, Some(json!({"seconds": 60})), &[]).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    for (body, field) in [
        (json!({"seconds": 0}), "seconds"),
        (json!({"seconds": 2_419_201}), "seconds"),
        (json!({"seconds": 60, "reason": "x".repeat(513)}), "reason"),
    ] {
        let a = b.call("PUT", &path, Some(body)).await;
        assert_eq!((a.status, a.body["field"].as_str()), (400, Some(field)), "{a:?}");
    }
    let owner = b
        .call(
            "PUT",
            &format!("/api/v1/guilds/{gid}/members/1/timeout"),
            Some(json!({"seconds": 60})),
        )
        .await;
    assert_eq!((owner.status, owner.body["code_name"].as_str()), (409, Some("OWNER")));
    let stranger = b
        .call(
            "PUT",
            &format!("/api/v1/guilds/{gid}/members/77/timeout"),
            Some(json!({"seconds": 60})),
        )
        .await;
    assert_eq!(stranger.status, 404, "{stranger:?}");
    b.ok(204, "PUT", &path, Some(json!({"seconds": 600, "reason": "spam"})))
        .await;
    let until = event(&mut l2, |e| match e {
        EventBody::MemberUpdated { member, .. } if member.user_id == 2 && member.timed_out_until_ms > 0 => {
            Some(member.timed_out_until_ms)
        }
        _ => None,
    })
    .await;
    let members = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}/members"), None).await;
    let m2 = members.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "2")
        .unwrap()
        .clone();
    assert_eq!(m2["timed_out_until_ms"].as_u64(), Some(until), "{m2}");
    let refused = l2
        .request(quaver_proto::RequestBody::SendMessage {
            channel_id: channel.parse().unwrap(),
            nonce: 1,
            content: "hello?".into(),
            reply_to: None,
        })
        .await
        .unwrap();
    assert_eq!(refused.err().map(|e| e.code), Some(quaver_proto::ErrorCode::TIMED_OUT));
    // Posting on their behalf is refused the same way.
    let as_them = b
        .call(
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"content": "hi", "author_id": "2"})),
        )
        .await;
    assert_eq!(
        (as_them.status, as_them.body["code_name"].as_str()),
        (403, Some("TIMED_OUT")),
        "{as_them:?}"
    );
    b.ok(204, "DELETE", &path, None).await;
    event(&mut l2, |e| match e {
        EventBody::MemberUpdated { member, .. } if member.user_id == 2 && member.timed_out_until_ms == 0 => Some(()),
        _ => None,
    })
    .await;
    // An avatar: checked, stored, told to the guild, removed with "".
    let bad = b
        .call(
            "PUT",
            "/api/v1/users/2",
            Some(json!({"name": "Two", "avatar_url": "http://x.example/a.png"})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("avatar_url")),
        "{bad:?}"
    );
    let url = "https://cdn.example/avatars/2.png?v=3";
    let me = b
        .ok(
            200,
            "PUT",
            "/api/v1/users/2",
            Some(json!({"name": "Two", "avatar_url": url})),
        )
        .await;
    assert_eq!(me.body["avatar_url"], url);
    let seen = event(&mut l1, |e| match e {
        EventBody::MemberUpdated { member, .. } if member.user_id == 2 && !member.avatar_url.is_empty() => {
            Some((member.name, member.avatar_url))
        }
        _ => None,
    })
    .await;
    assert_eq!(seen, ("Two".to_string(), url.to_string()));
    // Absent keeps it; "" removes it.
    let kept = b.ok(200, "PUT", "/api/v1/users/2", Some(json!({"name": "Two"}))).await;
    assert_eq!(kept.body["avatar_url"], url);
    let cleared = b
        .ok(
            200,
            "PUT",
            "/api/v1/users/2",
            Some(json!({"name": "Two", "avatar_url": ""})),
        )
        .await;
    assert_eq!(cleared.body["avatar_url"], Value::Null);
    assert_eq!(
        b.ok(200, "GET", "/api/v1/users/2", None).await.body["avatar_url"],
        Value::Null
    );
    s.shutdown().await;
}

/// Every operation the document lists refuses a call without a key (401), and each one that
/// takes no body refuses a key without its scope (403 naming the scope) and accepts the same
/// call once the key has that scope — so no route is left open or guarded by the wrong scope.
#[tokio::test]
async fn every_operation_needs_a_key_and_exactly_its_scope() {
    use quaver::config::ApiKeyConfig;
    let mut c = config();
    let (admin, _) = with_keys(&mut c);
    // A key per scope, and one with a scope no operation asks for alone.
    let mut keys = std::collections::HashMap::new();
    for (_, name) in quaver::api::auth::Scope::ALL {
        let (secret, hash) = quaver::api::auth::mint(&name.replace(':', "-")).unwrap();
        c.api.keys.push(ApiKeyConfig {
            id: name.replace(':', "-"),
            secret_sha256: hash,
            scopes: vec![name.into()],
        });
        keys.insert(name.to_string(), secret);
    }
    c.api.rate = quaver::limits::Rate {
        burst: 10_000.0,
        per_sec: 10_000.0,
    };
    let s = start(c).await;
    let doc = call(s.api_addr, None, "GET", "/api/v1/openapi.json", None, &[]).await;
    let paths = doc.body["paths"].as_object().unwrap();
    let (mut ops, mut scoped) = (0, 0);
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            ops += 1;
            let method = method.to_uppercase();
            let concrete = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let a = call(s.api_addr, None, &method, &concrete, None, &[]).await;
            assert_eq!(a.status, 401, "{method} {path} without a key: {a:?}");
            if op.get("requestBody").is_some() || path.ends_with("/whoami") {
                continue;
            }
            // With the scope that does the least: refused, naming what it needs.
            let a = call(s.api_addr, Some(&keys["messages:read"]), &method, &concrete, None, &[]).await;
            if a.status != 403 {
                // `messages:read` is what this operation needs.
                assert_ne!(a.status, 401, "{method} {path}: {a:?}");
                continue;
            }
            assert_eq!(a.body["code_name"], "SCOPE_MISSING", "{method} {path}: {a:?}");
            let detail = a.body["detail"].as_str().unwrap();
            let needed = quaver::api::auth::Scope::ALL
                .iter()
                .map(|(_, n)| *n)
                .find(|n| detail.contains(n))
                .unwrap_or_else(|| panic!("{method} {path} names no scope: {detail}"));
            // With it, the call gets past that scope: done, not found, or (an operation that
            // needs two, like deleting a user, who is also disconnected) the next scope.
            let b = call(s.api_addr, Some(&keys[needed]), &method, &concrete, None, &[]).await;
            assert_ne!(b.status, 401, "{method} {path} with {needed}: {b:?}");
            if b.body["code_name"] == "SCOPE_MISSING" {
                let next = b.body["detail"].as_str().unwrap();
                assert!(!next.contains(needed), "{method} {path} still wants {needed}: {b:?}");
            }
            scoped += 1;
        }
    }
    assert!(ops >= 59, "the document lists {ops} operations");
    assert!(scoped >= 25, "only {scoped} operations were checked for their scope");
    let a = call(s.api_addr, Some(&admin), "GET", "/api/v1/whoami", None, &[]).await;
    assert_eq!(a.status, 200);
    s.shutdown().await;
}
