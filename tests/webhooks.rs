//! Webhooks against a real server and a receiver on loopback: events recorded with the
//! changes they describe, signed (checked with the receiver's own HMAC), delivered at least
//! once and in order per key through 500s, timeouts, `Retry-After`, a receiver that is down
//! and a server restart; a `410` disabling the endpoint; endpoints, secret rotation, test
//! pings, the delivery log, redelivery and the event log through the API.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::api::{Answer, call, text_channel_of, with_keys};
use common::hooks::{Received, Receiver, Reply, check_signed_and_ordered, signed_by};
use common::*;
use quaver::config::Config;
use quaver::webhooks::EndpointConfig;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Backend {
    addr: SocketAddr,
    key: String,
}

impl Backend {
    async fn ok(&self, status: u16, method: &str, path: &str, body: Option<Value>) -> Answer {
        let a = call(self.addr, Some(&self.key), method, path, body, &[]).await;
        assert_eq!(a.status, status, "{method} {path}: {a:?}");
        a
    }
}

/// Quick retries, so a test sees several in a second.
fn quick(c: &mut Config) {
    c.webhooks.retry_min = Duration::from_millis(50);
    c.webhooks.retry_max = Duration::from_millis(300);
    c.webhooks.timeout = Duration::from_millis(500);
}

fn endpoint(id: &str, url: String, events: &[&str]) -> EndpointConfig {
    EndpointConfig {
        id: id.into(),
        url,
        secret: SECRET.into(),
        events: events.iter().map(|s| s.to_string()).collect(),
        description: String::new(),
    }
}

async fn server(c: Config) -> (quaver::Server, Backend) {
    let mut c = c;
    let (key, _) = with_keys(&mut c);
    let s = start(c).await;
    let b = Backend { addr: s.api_addr, key };
    (s, b)
}

/// A guild owned by user 1 with members 900 and 901, and its text channel.
async fn guild(b: &Backend) -> (String, String) {
    for (id, name) in [(900, "Bot"), (901, "Eve")] {
        b.ok(
            200,
            "PUT",
            &format!("/api/v1/users/{id}"),
            Some(json!({ "name": name })),
        )
        .await;
    }
    let gid = b
        .ok(
            201,
            "POST",
            "/api/v1/guilds",
            Some(json!({"owner_id": "1", "name": "Ops"})),
        )
        .await
        .s("id");
    for m in [900, 901] {
        b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/{m}"), None)
            .await;
    }
    let details = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}"), None).await;
    let channel = text_channel_of(&details.body);
    (gid, channel)
}

/// Every event in the log (after the settle margin, which is 0 on SQLite).
async fn log(b: &Backend) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page = b
            .ok(200, "GET", &format!("/api/v1/events?after={after}&limit=1000"), None)
            .await;
        let events = page.body["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        after = page.body["next_after"].as_u64().unwrap();
        all.extend(events);
    }
}

/// The ids of the logged events of type `kind`.
async fn logged_ids(b: &Backend, kind: &str) -> HashSet<String> {
    log(b)
        .await
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the receiver answered 2xx to every id in `want`.
async fn delivered(r: &Receiver, want: &HashSet<String>, limit: Duration) -> Vec<Received> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let got = r.got();
        let ok: HashSet<String> = got
            .iter()
            .filter(|g| (200..300).contains(&g.answered))
            .map(|g| g.id.clone())
            .collect();
        if want.is_subset(&ok) {
            return got;
        }
        if tokio::time::Instant::now() > end {
            let missing: Vec<_> = want.difference(&ok).collect();
            panic!("not delivered within {limit:?}: {missing:?} ({} requests)", got.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn events_arrive_signed_once_each_and_in_key_order_through_failures() {
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    // 500s, a timeout, a Retry-After: the first deliveries fail in every way.
    r.plan([
        Reply::Status(500),
        Reply::Status(503),
        Reply::Slow(Duration::from_millis(900)),
        Reply::RetryAfter(429, 1),
        Reply::Status(500),
        Reply::Status(502),
    ]);
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["*"])];
    let (_s, b) = server(c).await;
    let (gid, channel) = guild(&b).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let author = if i % 2 == 0 { "1" } else { "900" };
        let m = b
            .ok(
                201,
                "POST",
                &format!("/api/v1/channels/{channel}/messages"),
                Some(json!({"author_id": author, "content": format!("m{i}")})),
            )
            .await;
        ids.push(m.s("id"));
    }
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/channels/{channel}/messages/{}", ids[0]),
        Some(json!({"content": "m0 edited"})),
    )
    .await;
    b.ok(
        204,
        "PUT",
        &format!(
            "/api/v1/channels/{channel}/messages/{}/reactions/%F0%9F%91%8D/900",
            ids[1]
        ),
        None,
    )
    .await;
    b.ok(
        204,
        "DELETE",
        &format!("/api/v1/channels/{channel}/messages/{}", ids[2]),
        None,
    )
    .await;
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}/members/901"), None)
        .await;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/bans/900"),
        Some(json!({"reason": "spam"})),
    )
    .await;

    let logged = log(&b).await;
    let types: Vec<&str> = logged.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "member.joined",
        "message.created",
        "message.updated",
        "reaction.added",
        "message.deleted",
        "member.left",
        "member.banned",
    ] {
        assert!(types.contains(&t), "{t} logged: {types:?}");
    }
    let want: HashSet<String> = logged.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let got = delivered(&r, &want, Duration::from_secs(20)).await;
    assert!(got.len() >= want.len() + 6, "the failures were retried");
    check_signed_and_ordered(&got, SECRET);
    // Nothing but the logged events, each delivered exactly once (2xx).
    let mut ok_count: BTreeMap<String, usize> = BTreeMap::new();
    for g in got.iter().filter(|g| (200..300).contains(&g.answered)) {
        *ok_count.entry(g.id.clone()).or_default() += 1;
    }
    assert!(ok_count.keys().all(|k| want.contains(k)), "only logged events are sent");
    assert!(ok_count.values().all(|n| *n == 1), "each delivered once: {ok_count:?}");
    // What the bodies say.
    let by_type = |t: &str| {
        got.iter()
            .map(Received::json)
            .filter(|v| v["type"] == t)
            .collect::<Vec<_>>()
    };
    let created = by_type("message.created");
    assert!(created.iter().any(|v| v["data"]["message"]["content"] == "m19"));
    assert!(created.iter().all(|v| v["data"]["guild_id"] == gid.as_str()
        && v["key"] == format!("channel:{channel}")
        && v["key_seq"] == v["data"]["message"]["seq"]));
    let left = by_type("member.left");
    assert!(
        left.iter()
            .any(|v| v["data"]["user_id"] == "901" && v["data"]["how"] == "kicked")
    );
    assert!(
        left.iter()
            .any(|v| v["data"]["user_id"] == "900" && v["data"]["how"] == "banned")
    );
    let banned = by_type("member.banned");
    assert_eq!(banned[0]["data"]["reason"], "spam");
    assert_eq!(by_type("message.updated")[0]["data"]["content"], "m0 edited");
    // Guild events are ordered by the guild's own sequence: joined 900, 901, left 901, banned 900, left 900.
    let guild_seqs: Vec<u64> = logged
        .iter()
        .filter(|e| e["key"] == format!("guild:{gid}"))
        .map(|e| e["key_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(guild_seqs, (1..=guild_seqs.len() as u64).collect::<Vec<_>>());
    // The delivery log says how the first event went.
    let d = b.ok(200, "GET", "/api/v1/webhooks/app/deliveries?limit=1", None).await;
    let first = &d.body["deliveries"][0];
    assert_eq!(first["state"], "delivered");
    assert!(first["attempts"].as_u64().unwrap() > 1, "{first}");
    assert!(d.body["next_after"].is_u64());
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_everything_when_it_returns_even_after_a_restart() {
    // A port nobody listens on (yet).
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let url = r.url();
    let addr = r.stop();
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![endpoint("app", url, &["message.*"])];
    let (s, b) = server(c.clone()).await;
    let (_gid, channel) = guild(&b).await;
    for i in 0..10 {
        b.ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "1", "content": format!("while down {i}")})),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let d = b
        .ok(200, "GET", "/api/v1/webhooks/app/deliveries?state=pending", None)
        .await;
    let pending = d.body["deliveries"].as_array().unwrap();
    assert_eq!(pending.len(), 10, "{}", d.body);
    assert!(pending[0]["attempts"].as_u64().unwrap() >= 2);
    assert!(
        pending[0]["last_error"].as_str().unwrap().contains("connecting"),
        "{}",
        pending[0]
    );
    // The server stops with everything pending, and starts again on the same database.
    s.shutdown().await;
    let (_s, b) = server(c).await;
    for i in 10..12 {
        b.ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "1", "content": format!("after restart {i}")})),
        )
        .await;
    }
    let r = Receiver::start(addr).await;
    let want = logged_ids(&b, "message.created").await;
    assert_eq!(want.len(), 12);
    let got = delivered(&r, &want, Duration::from_secs(10)).await;
    check_signed_and_ordered(&got, SECRET);
    let contents: Vec<String> = got
        .iter()
        .map(|g| g.json()["data"]["message"]["content"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("while down {i}"))
        .chain((10..12).map(|i| format!("after restart {i}")))
        .collect();
    assert_eq!(contents, expected, "one channel: one key, delivered in order");
}

/// The issue's outage, at full length: the receiver answers 500s, then times out, then is
/// down for a whole minute while messages keep coming in two channels, then returns. Every
/// event arrives, each answered 2xx exactly once, in order per channel; the retries, capped
/// at 5 s here, reach it within seconds of its return.
#[tokio::test]
async fn a_minute_down_after_errors_and_timeouts_loses_and_reorders_nothing() {
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    c.webhooks.retry_min = Duration::from_millis(200);
    c.webhooks.retry_max = Duration::from_secs(5);
    c.webhooks.timeout = Duration::from_millis(500);
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["message.created"])];
    let (_s, b) = server(c).await;
    let (gid, first) = guild(&b).await;
    let second = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": "second", "kind": "text"})),
        )
        .await
        .s("id");
    let post = |channel: &str, text: String| {
        let path = format!("/api/v1/channels/{channel}/messages");
        let b = &b;
        async move {
            b.ok(201, "POST", &path, Some(json!({"author_id": "1", "content": text})))
                .await;
        }
    };
    r.plan([
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(503),
        Reply::Slow(Duration::from_secs(2)),
        Reply::Slow(Duration::from_secs(2)),
    ]);
    for i in 0..5 {
        post(&first, format!("first {i}")).await;
        post(&second, format!("second {i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = r.got();
    let addr = r.stop();
    // Down for a minute; a message in each channel every 2 s meanwhile.
    let down = tokio::time::Instant::now();
    let mut i = 5;
    while down.elapsed() < Duration::from_secs(60) {
        post(&first, format!("first {i}")).await;
        post(&second, format!("second {i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let r = Receiver::start(addr).await;
    let back = tokio::time::Instant::now();
    let want = logged_ids(&b, "message.created").await;
    assert_eq!(want.len(), 2 * i, "every message is an event");
    let delivered_before: HashSet<String> = before
        .iter()
        .filter(|g| (200..300).contains(&g.answered))
        .map(|g| g.id.clone())
        .collect();
    let rest: HashSet<String> = want.difference(&delivered_before).cloned().collect();
    assert!(
        rest.len() >= 60,
        "the minute's events were not delivered before: {}",
        rest.len()
    );
    let after = delivered(&r, &rest, Duration::from_secs(20)).await;
    let caught_up = back.elapsed();
    assert!(
        caught_up < Duration::from_secs(15),
        "caught up {caught_up:?} after its return"
    );
    let all: Vec<Received> = before.into_iter().chain(after).collect();
    check_signed_and_ordered(&all, SECRET);
    let mut ok = std::collections::HashMap::<&str, usize>::new();
    for g in all.iter().filter(|g| (200..300).contains(&g.answered)) {
        *ok.entry(g.id.as_str()).or_default() += 1;
    }
    assert!(ok.values().all(|n| *n == 1), "a delivered event was sent again");
    assert_eq!(ok.len(), want.len());
    // In order per channel, by content.
    for (channel, name) in [(&first, "first"), (&second, "second")] {
        let seen: Vec<String> = all
            .iter()
            .filter(|g| (200..300).contains(&g.answered))
            .map(Received::json)
            .filter(|v| v["data"]["message"]["channel_id"] == channel.as_str())
            .map(|v| v["data"]["message"]["content"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..i).map(|n| format!("{name} {n}")).collect();
        assert_eq!(seen, expected, "{name}: one key, in order");
    }
}

/// An endpoint that answers as an overloaded receiver does (503) gets fewer requests at
/// once: its window of `concurrency` is halved, then grows back as it answers.
#[tokio::test]
async fn an_overloaded_receiver_gets_fewer_requests_at_once() {
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    // The first 8 requests are refused after 800 ms (so they are in flight together even
    // on a busy machine), the rest answered after 150 ms.
    r.plan(std::iter::repeat_n(Reply::After(503, Duration::from_millis(800)), 8));
    r.plan(std::iter::repeat_n(Reply::After(200, Duration::from_millis(150)), 40));
    let mut c = config();
    quick(&mut c);
    c.webhooks.timeout = Duration::from_secs(2);
    c.webhooks.concurrency = 8;
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["message.created"])];
    let (s, b) = server(c).await;
    let (gid, first) = guild(&b).await;
    // 16 keys: a message in each of 16 channels.
    let mut channels = vec![first];
    for k in 1..16 {
        let ch = b
            .ok(
                201,
                "POST",
                &format!("/api/v1/guilds/{gid}/channels"),
                Some(json!({"name": format!("c{k}"), "kind": "text"})),
            )
            .await;
        channels.push(ch.s("id"));
    }
    for ch in &channels {
        b.ok(
            201,
            "POST",
            &format!("/api/v1/channels/{ch}/messages"),
            Some(json!({"author_id": "1", "content": "hi"})),
        )
        .await;
    }
    let want = logged_ids(&b, "message.created").await;
    assert_eq!(want.len(), 16);
    let got = delivered(&r, &want, Duration::from_secs(20)).await;
    let in_flight: Vec<(u16, usize)> = got.iter().map(|g| (g.answered, g.in_flight)).collect();
    // The first eight went out together and were refused.
    assert!(in_flight[..8].iter().all(|(a, _)| *a == 503), "{in_flight:?}");
    assert!(
        in_flight[..8].iter().map(|(_, n)| *n).max() >= Some(6),
        "the configured concurrency was used: {in_flight:?}"
    );
    // After them, half as many at once (4), growing by one per window of answers.
    assert!(
        in_flight[8..16].iter().all(|(_, n)| *n <= 5),
        "fewer at once after the 503s: {in_flight:?}"
    );
    // Each delivered once.
    let ok: Vec<&String> = got.iter().filter(|g| g.answered == 200).map(|g| &g.id).collect();
    assert_eq!(ok.len(), 16, "{in_flight:?}");
    let (_, metrics) = http_get(s.http_addr, "/metrics").await;
    assert!(metrics.contains("quaver_webhook_window_halved_total 1\n"), "{metrics}");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_an_event_says_so() {
    let gone = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    gone.plan([Reply::Status(410)]);
    let watch = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![
        endpoint("gone", gone.url(), &["message.*"]),
        endpoint("watch", watch.url(), &["endpoint.disabled"]),
    ];
    let (s, b) = server(c).await;
    let (_gid, channel) = guild(&b).await;
    b.ok(
        201,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "1", "content": "hello"})),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || watch
            .got()
            .iter()
            .any(|g| g.json()["type"] == "endpoint.disabled"))
        .await,
        "endpoint.disabled delivered"
    );
    let ev = watch.got()[0].json();
    assert_eq!(ev["data"]["endpoint_id"], "gone");
    let e = b.ok(200, "GET", "/api/v1/webhooks/gone", None).await;
    assert_eq!(e.body["enabled"], false);
    assert!(e.body["disabled_reason"].as_str().unwrap().contains("410"));
    let (_, metrics) = http_get(s.http_addr, "/metrics").await;
    assert!(
        metrics.contains("quaver_webhook_endpoints_disabled_total 1"),
        "{metrics}"
    );
    // Nothing more goes to it while disabled; enabling it sends what waited.
    b.ok(
        201,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "1", "content": "while disabled"})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.got().len(), 1);
    let e = b
        .ok(200, "PATCH", "/api/v1/webhooks/gone", Some(json!({"enabled": true})))
        .await;
    assert_eq!(e.body["enabled"], true);
    // The refused event waited; the one recorded while disabled was not meant for it.
    assert!(
        eventually(Duration::from_secs(5), || gone.got().iter().any(|g| g.answered == 200)).await,
        "the waiting delivery goes out"
    );
    let contents: Vec<String> = gone
        .got()
        .iter()
        .map(|g| g.json()["data"]["message"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contents, ["hello", "hello"]);
}

#[tokio::test]
async fn endpoints_through_the_api_ping_rotate_redeliver_and_the_event_log() {
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    // An endpoint from the config file that never answers (and wants only reactions).
    c.webhooks.endpoints = vec![endpoint(
        "from-file",
        "http://127.0.0.1:9/never".into(),
        &["reaction.*"],
    )];
    let (s, b) = server(c).await;
    let made = b
        .ok(
            201,
            "POST",
            "/api/v1/webhooks",
            Some(json!({"id": "crm", "url": r.url(), "events": ["member.*"], "description": "CRM sync"})),
        )
        .await;
    let secret = made.s("secret");
    assert!(secret.starts_with("whsec_"));
    assert_eq!(made.body["endpoint"]["source"], "api");
    // Refusals: a duplicate id, a pattern that matches nothing, a bad URL, the config file's endpoint.
    let dup = call(
        b.addr,
        Some(&b.key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "crm", "url": r.url()})),
        &[],
    )
    .await;
    assert_eq!((dup.status, dup.body["code_name"].as_str()), (409, Some("CONFLICT")));
    let bad = call(
        b.addr,
        Some(&b.key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "x", "url": r.url(), "events": ["messages.*"]})),
        &[],
    )
    .await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("events")));
    let bad = call(
        b.addr,
        Some(&b.key),
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "x", "url": "ftp://h/x"})),
        &[],
    )
    .await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("url")));
    let cfg = call(
        b.addr,
        Some(&b.key),
        "PATCH",
        "/api/v1/webhooks/from-file",
        Some(json!({"url": r.url()})),
        &[],
    )
    .await;
    assert_eq!(cfg.status, 409);
    let none = call(b.addr, Some(&b.key), "GET", "/api/v1/webhooks/nope", None, &[]).await;
    assert_eq!(none.status, 404);
    let list = b.ok(200, "GET", "/api/v1/webhooks", None).await;
    let ids: Vec<&str> = list.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["crm", "from-file"]);

    // A test ping, signed with the secret just made.
    let t = b.ok(202, "POST", "/api/v1/webhooks/crm/test", None).await;
    let ping = t.s("event_id");
    assert!(eventually(Duration::from_secs(5), || r.got().iter().any(|g| g.id == ping)).await);
    let got = r.got();
    assert!(signed_by(&got[0], &secret));
    assert_eq!(got[0].json()["type"], "webhook.test");

    // Only what it asked for: a member joining, not a message.
    let (gid, channel) = guild(&b).await;
    b.ok(
        201,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "1", "content": "not for the CRM"})),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || r.got().len() == 3).await,
        "two member.joined"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = r.got();
    assert_eq!(got.len(), 3);
    assert!(got[1..].iter().all(|g| g.json()["type"] == "member.joined"));
    let joined = got[1].id.clone();

    // Rotation: the next deliveries carry both signatures.
    let rot = b.ok(200, "POST", "/api/v1/webhooks/crm/rotate", None).await;
    let new_secret = rot.s("secret");
    assert_ne!(new_secret, secret);
    let e = b.ok(200, "GET", "/api/v1/webhooks/crm", None).await;
    assert_eq!(e.body["secrets_in_use"], 2);
    // Redeliver one event: it comes again with the same id, signed by both secrets.
    let rd = b
        .ok(
            202,
            "POST",
            "/api/v1/webhooks/crm/redeliver",
            Some(json!({"event_id": joined})),
        )
        .await;
    assert_eq!(rd.body["queued"], 1);
    assert!(eventually(Duration::from_secs(5), || r.got().len() == 4).await);
    let again = &r.got()[3];
    assert_eq!(again.id, joined);
    assert!(signed_by(again, &secret) && signed_by(again, &new_secret));
    assert_eq!(again.signature.split(' ').count(), 2);
    let bad = call(
        b.addr,
        Some(&b.key),
        "POST",
        "/api/v1/webhooks/crm/redeliver",
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400);
    let missing = call(
        b.addr,
        Some(&b.key),
        "POST",
        "/api/v1/webhooks/crm/redeliver",
        Some(json!({"event_id": "evt_999999"})),
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
    // A time range: every logged event since the guild was made (the message too: a
    // redelivery sends what was asked for, whatever the filter).
    let since = quaver::ids::now_ms() - 60_000;
    let rd = b
        .ok(
            202,
            "POST",
            "/api/v1/webhooks/crm/redeliver",
            Some(json!({"since_ms": since})),
        )
        .await;
    assert!(rd.body["queued"].as_u64().unwrap() >= 4, "{}", rd.body);

    // The event log: everything, in order, with a cursor.
    let all = log(&b).await;
    let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "webhook.test",
            "guild.created",
            "member.joined",
            "member.joined",
            "message.created"
        ]
    );
    let page = b.ok(200, "GET", "/api/v1/events?limit=2", None).await;
    let next = page.body["next_after"].as_u64().unwrap();
    let rest = b.ok(200, "GET", &format!("/api/v1/events?after={next}"), None).await;
    assert_eq!(rest.body["events"].as_array().unwrap().len(), 3);
    assert_eq!(rest.body["events"][2]["data"]["guild_id"], gid.as_str());
    let limit = call(b.addr, Some(&b.key), "GET", "/api/v1/events?limit=0", None, &[]).await;
    assert_eq!((limit.status, limit.body["field"].as_str()), (400, Some("limit")));

    // Deleting it: gone, and nothing more goes there.
    b.ok(204, "DELETE", "/api/v1/webhooks/crm", None).await;
    let none = call(b.addr, Some(&b.key), "GET", "/api/v1/webhooks/crm", None, &[]).await;
    assert_eq!(none.status, 404);
    let cfg = call(b.addr, Some(&b.key), "DELETE", "/api/v1/webhooks/from-file", None, &[]).await;
    assert_eq!(cfg.status, 409);
    drop(s);
}

#[tokio::test]
async fn webhook_calls_need_their_scopes() {
    let mut c = config();
    let (admin, reader) = with_keys(&mut c);
    let s = start(c).await;
    for (method, path) in [
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/events"),
        ("POST", "/api/v1/webhooks/x/test"),
    ] {
        let a = call(s.api_addr, Some(&reader), method, path, None, &[]).await;
        assert_eq!(
            (a.status, a.body["code_name"].as_str()),
            (403, Some("SCOPE_MISSING")),
            "{method} {path}"
        );
    }
    let a = call(s.api_addr, Some(&admin), "GET", "/api/v1/events", None, &[]).await;
    assert_eq!(a.status, 200);
}

/// `user.online` / `user.offline` over devices and the reconnect grace, and
/// `notification.undelivered` for a mention of a user with no session (not for one who has).
#[tokio::test]
async fn presence_crossings_and_notifications_for_offline_users() {
    use quaver_client::{Transport, connect};
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.session.presence_grace = Duration::from_millis(400);
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["user.*", "notification.*"])];
    let (s, b) = server(c).await;
    let events = |r: &Receiver| r.got().iter().map(Received::json).collect::<Vec<_>>();
    let of_user = |v: &[Value], u: &str| {
        v.iter()
            .filter(|e| e["data"]["user_id"] == u && e["type"].as_str().unwrap().starts_with("user."))
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["data"]["version"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    // Presence versions are at least the clock in µs, so they go on increasing after a
    // restart (a counter from 1 would start again below what a receiver applied).
    let started_us = quaver::ids::now_ms() * 1000;
    // Two devices: one user.online.
    let d1 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || !of_user(&events(&r), "1").is_empty()).await);
    let d2 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    // One device leaves, and the other reconnects within the grace: nothing.
    d1.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    d2.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d3 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = of_user(&events(&r), "1");
    assert_eq!(seen.len(), 1, "no flap within the grace: {seen:?}");
    assert_eq!(seen[0].0, "user.online");
    assert!(
        seen[0].1 >= started_us,
        "a version from the clock: {seen:?} against {started_us}"
    );
    let online = events(&r).into_iter().find(|e| e["type"] == "user.online").unwrap();
    assert_eq!(online["data"]["status"], "online");
    assert_eq!(online["key"], "user:1");
    // The last one leaves: user.offline after the grace, with a higher presence version.
    d3.close();
    assert!(eventually(Duration::from_secs(5), || of_user(&events(&r), "1").len() == 2).await);
    let seen = of_user(&events(&r), "1");
    assert_eq!(seen[1].0, "user.offline");
    assert!(seen[1].1 > seen[0].1, "versions increase: {seen:?}");
    let offline = events(&r).into_iter().find(|e| e["type"] == "user.offline").unwrap();
    assert_eq!(
        (offline["data"]["status"].as_str(), offline["data"]["reason"].as_str()),
        (Some("offline"), Some("disconnected"))
    );

    // Notifications: user 1 online again, user 2 never connected.
    let _d4 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    b.ok(200, "PUT", "/api/v1/users/2", Some(json!({"name": "Bob"}))).await;
    let gid = b
        .ok(
            201,
            "POST",
            "/api/v1/guilds",
            Some(json!({"owner_id": "1", "name": "Ops"})),
        )
        .await
        .s("id");
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    let details = b.ok(200, "GET", &format!("/api/v1/guilds/{gid}"), None).await;
    let channel = text_channel_of(&details.body);
    assert!(eventually(Duration::from_secs(5), || of_user(&events(&r), "1").len() == 3).await);
    let m = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(json!({"author_id": "1", "content": "<@2> are you there?"})),
        )
        .await;
    b.ok(
        201,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "2", "content": "<@1> yes"})),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || events(&r)
            .iter()
            .any(|e| e["type"] == "notification.undelivered"))
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushes: Vec<Value> = events(&r)
        .into_iter()
        .filter(|e| e["type"] == "notification.undelivered")
        .collect();
    assert_eq!(pushes.len(), 1, "only the offline user: {pushes:?}");
    let p = &pushes[0]["data"];
    assert_eq!(
        (p["user_id"].as_str(), p["kind"].as_str(), p["actor_id"].as_str()),
        (Some("2"), Some("mention"), Some("1"))
    );
    assert_eq!(p["message_id"], m.s("id").as_str());
    assert_eq!(p["preview"], "<@2> are you there?");
    assert_eq!(pushes[0]["key"], "user:2");
}

#[tokio::test]
async fn the_cli_makes_signing_secrets_a_config_file_accepts() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quaver"))
        .arg("webhook-secret")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    quaver::webhooks::check_secret(&secret).expect("a usable secret");
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_quaver"))
        .arg("webhook-secret")
        .output()
        .await
        .unwrap();
    assert_ne!(
        String::from_utf8(again.stdout).unwrap().trim(),
        secret,
        "random each time"
    );
    // A server starts with it in its config, and refuses a bad one with the reason.
    let mut c = config();
    c.webhooks.endpoints = vec![EndpointConfig {
        id: "app".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: secret.clone(),
        events: vec!["*".into()],
        description: String::new(),
    }];
    let s = start(c.clone()).await;
    s.shutdown().await;
    c.webhooks.endpoints[0].secret = "whsec_short".into();
    let e = quaver::Server::start(c).await.expect_err("a bad secret is refused");
    assert!(e.to_string().contains("secret"), "{e}");
}

/// A hook backend for tests: answers by what it is asked (see `decide`), or 500 to
/// everything while `down`; records each request's body and whether its signature
/// verifies with `SECRET`.
struct HookBackend {
    addr: SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<(Value, bool)>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HookBackend {
    async fn start() -> HookBackend {
        use std::sync::atomic::Ordering;
        let got: std::sync::Arc<std::sync::Mutex<Vec<(Value, bool)>>> = Default::default();
        let down: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (g, d) = (got.clone(), down.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (g, d) = (g.clone(), d.clone());
                async move {
                    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let r = Received {
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        body: body.clone(),
                        answered: 200,
                        in_flight: 0,
                    };
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    g.lock().unwrap().push((v.clone(), signed_by(&r, SECRET)));
                    if d.load(Ordering::Relaxed) {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    }
                    let (delay, answer) = decide(&v);
                    tokio::time::sleep(delay).await;
                    (axum::http::StatusCode::OK, answer.to_string())
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        HookBackend { addr, got, down }
    }

    fn hook(&self, kind: &str, on_failure: &str) -> quaver::webhooks::hooks::HookConfig {
        toml::from_str(&format!(
            "kind = {kind:?}\nurl = \"http://{}/hook\"\nsecret = {SECRET:?}\ntimeout = \"300ms\"\non_failure = {on_failure:?}\nbreaker_failures = 3\nbreaker_cooldown = \"500ms\"\n",
            self.addr
        ))
        .unwrap()
    }

    fn asked(&self) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        assert!(got.iter().all(|(_, signed)| *signed), "every hook call is signed");
        got.iter().map(|(v, _)| v.clone()).collect()
    }
}

/// The test backend's decisions.
fn decide(v: &Value) -> (Duration, Value) {
    let d = &v["data"];
    match v["type"].as_str().unwrap_or("") {
        "message.before_create" => match d["content"].as_str().unwrap_or("") {
            "deny me" => (Duration::ZERO, json!({"allow": false, "reason": "no swearing here"})),
            "rewrite me" => (Duration::ZERO, json!({"allow": true, "content": "rewritten ✓"})),
            "rewrite empty" => (Duration::ZERO, json!({"allow": true, "content": "   "})),
            "slow" => (Duration::from_secs(2), json!({"allow": false, "reason": "too late"})),
            _ => (Duration::ZERO, json!({"allow": true})),
        },
        "connect" => match d["user_id"].as_str().unwrap_or("") {
            "66" => (
                Duration::ZERO,
                json!({"allow": false, "reason": "suspended by the app"}),
            ),
            "77" => (Duration::ZERO, json!({"allow": true, "name": "Renamed by the app"})),
            _ => (Duration::ZERO, json!({"allow": true})),
        },
        "voice.before_join" => match d["user_id"].as_str().unwrap_or("") {
            "2" => (
                Duration::ZERO,
                json!({"allow": false, "reason": "voice is for subscribers"}),
            ),
            _ => (Duration::ZERO, json!({"allow": true})),
        },
        _ => (Duration::ZERO, json!({"allow": false, "reason": "unknown hook"})),
    }
}

fn metric(text: &str, name: &str, hook: &str) -> f64 {
    let prefix = format!("{name}{{hook=\"{hook}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} in metrics"))
}

#[tokio::test]
async fn the_message_hook_allows_refuses_rewrites_times_out_and_breaks() {
    let hb = HookBackend::start().await;
    let mut c = config();
    c.webhooks.hooks = vec![hb.hook("message.before_create", "open")];
    let (s, b) = server(c).await;
    let (_gid, channel) = guild(&b).await;
    let post = |content: &str| {
        let (addr, key, path) = (b.addr, b.key.clone(), format!("/api/v1/channels/{channel}/messages"));
        let body = json!({"author_id": "1", "content": content});
        async move { call(addr, Some(&key), "POST", &path, Some(body), &[]).await }
    };
    let a = post("hello").await;
    assert_eq!((a.status, a.body["content"].as_str()), (201, Some("hello")));
    let a = post("deny me").await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str(), a.body["detail"].as_str()),
        (403, Some("REFUSED_BY_APP"), Some("no swearing here"))
    );
    let a = post("rewrite me").await;
    assert_eq!((a.status, a.body["content"].as_str()), (201, Some("rewritten ✓")));
    let a = post("rewrite empty").await;
    assert_eq!(
        (a.status, a.body["code_name"].as_str()),
        (400, Some("INVALID_CONTENT")),
        "{a:?}"
    );
    // Too slow: the open policy lets it through after the 300 ms deadline.
    let t = std::time::Instant::now();
    let a = post("slow").await;
    assert_eq!((a.status, a.body["content"].as_str()), (201, Some("slow")));
    assert!(
        t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // An answer in time resets the failure count.
    assert_eq!(post("hello again").await.status, 201);
    // Only what was allowed is stored.
    let h = b
        .ok(200, "GET", &format!("/api/v1/channels/{channel}/messages"), None)
        .await;
    let stored: Vec<&str> = h.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["hello", "rewritten ✓", "slow", "hello again"]);
    // What the backend was asked, signed.
    let asked = hb.asked();
    assert_eq!(asked[0]["type"], "message.before_create");
    assert_eq!(
        (
            asked[0]["data"]["user_id"].as_str(),
            asked[0]["data"]["channel_id"].as_str()
        ),
        (Some("1"), Some(channel.as_str()))
    );

    // The backend fails: three failures open the breaker; then it is not called at all.
    hb.down.store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..3 {
        assert_eq!(post(&format!("while down {i}")).await.status, 201, "open policy");
    }
    let calls = hb.asked().len();
    for i in 0..5 {
        assert_eq!(post(&format!("breaker open {i}")).await.status, 201);
    }
    assert_eq!(hb.asked().len(), calls, "an open breaker does not call the backend");
    let (_, m) = http_get(s.http_addr, "/metrics").await;
    assert_eq!(metric(&m, "quaver_hook_breaker_open", "message.before_create"), 1.0);
    assert_eq!(metric(&m, "quaver_hook_skipped_total", "message.before_create"), 5.0);
    assert_eq!(
        metric(&m, "quaver_hook_failures_total", "message.before_create"),
        4.0,
        "3 down + 1 timeout"
    );
    // It comes back: after the cooldown one trial closes the breaker.
    hb.down.store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let a = post("deny me").await;
    assert_eq!(a.status, 403, "asked again after the cooldown");
    let (_, m) = http_get(s.http_addr, "/metrics").await;
    assert_eq!(metric(&m, "quaver_hook_breaker_open", "message.before_create"), 0.0);
}

#[tokio::test]
async fn a_closed_policy_refuses_when_the_backend_cannot_be_asked() {
    let hb = HookBackend::start().await;
    let mut c = config();
    let mut h = hb.hook("message.before_create", "closed");
    h.url = "http://127.0.0.1:9/hook".into(); // nobody there
    c.webhooks.hooks = vec![h];
    let (_s, b) = server(c).await;
    let (_gid, channel) = guild(&b).await;
    let a = call(
        b.addr,
        Some(&b.key),
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(json!({"author_id": "1", "content": "hello"})),
        &[],
    )
    .await;
    assert_eq!((a.status, a.body["code_name"].as_str()), (403, Some("REFUSED_BY_APP")));
    assert!(a.body["detail"].as_str().unwrap().contains("could not be asked"));
}

#[tokio::test]
async fn the_connect_and_voice_hooks_decide_for_clients() {
    use quaver_client::{Transport, connect};
    use quaver_proto::{ErrorCode, Lane, RequestBody};
    let hb = HookBackend::start().await;
    let mut c = config();
    c.webhooks.hooks = vec![hb.hook("connect", "open"), hb.hook("voice.before_join", "open")];
    let (s, b) = server(c).await;
    // Refused: 4032 with the application's reason.
    let e = connect(&client_config(&s, Transport::Quic, Some(token(66))))
        .await
        .expect_err("refused");
    assert_eq!(e.close_code(), Some(quaver_proto::CloseCode::REFUSED));
    assert!(e.to_string().contains("suspended by the app"), "{e}");
    // Renamed.
    let c77 = connect(&client_config(&s, Transport::Quic, Some(token(77))))
        .await
        .unwrap();
    assert_eq!(c77.ready.user.name, "Renamed by the app");
    // Voice: user 2 may not join, user 1 may.
    let (gid, _) = guild(&b).await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    let vc = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": "talk", "kind": "voice"})),
        )
        .await
        .s("id")
        .parse::<u64>()
        .unwrap();
    let join = RequestBody::JoinVoice {
        channel_id: vc,
        self_mute: false,
        self_deaf: false,
    };
    let c2 = connect(&client_config(&s, Transport::Quic, Some(token(2))))
        .await
        .unwrap();
    let mut v2 = c2.open_lane(Lane::Voice).await.unwrap();
    let e = v2.request(join.clone()).await.unwrap().expect_err("refused");
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::REFUSED_BY_APP, "voice is for subscribers")
    );
    let c1 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut v1 = c1.open_lane(Lane::Voice).await.unwrap();
    assert!(v1.request(join).await.unwrap().is_ok(), "user 1 joins");
    let asked = hb.asked();
    let kinds: Vec<&str> = asked.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"connect") && kinds.contains(&"voice.before_join"),
        "{kinds:?}"
    );
    let v = asked.iter().find(|v| v["type"] == "voice.before_join").unwrap();
    assert_eq!(
        (v["data"]["guild_id"].as_str(), v["data"]["transport"].as_str()),
        (Some(gid.as_str()), Some("datagrams"))
    );
}

#[tokio::test]
async fn guild_and_channel_changes_are_events_of_the_guild_key() {
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![endpoint(
        "app",
        r.url(),
        &[
            "guild.*",
            "channel.*",
            "role.*",
            "member.roles_updated",
            "member.timed_out",
        ],
    )];
    let (_s, b) = server(c).await;
    let gid = b
        .ok(
            201,
            "POST",
            "/api/v1/guilds",
            Some(json!({"owner_id": "1", "name": "Ops"})),
        )
        .await
        .s("id");
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/guilds/{gid}"),
        Some(json!({"name": "Ops 2"})),
    )
    .await;
    let ch = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": "talk", "kind": "voice"})),
        )
        .await
        .s("id");
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/channels/{ch}/overwrites/member/1"),
        Some(json!({"allow": "0", "deny": "0"})),
    )
    .await;
    b.ok(204, "DELETE", &format!("/api/v1/channels/{ch}"), None).await;
    let role = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/roles"),
            Some(json!({"name": "mods", "permissions": "8"})),
        )
        .await
        .s("id");
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/guilds/{gid}/roles/{role}"),
        Some(json!({"name": "moderators"})),
    )
    .await;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/members/1/roles/{role}"),
        None,
    )
    .await;
    b.ok(201, "PUT", &format!("/api/v1/guilds/{gid}/members/2"), None).await;
    b.ok(
        204,
        "PUT",
        &format!("/api/v1/guilds/{gid}/members/2/timeout"),
        Some(json!({"seconds": 60, "reason": "spam"})),
    )
    .await;
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}/members/2/timeout"), None)
        .await;
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}/roles/{role}"), None)
        .await;
    b.ok(204, "DELETE", &format!("/api/v1/guilds/{gid}"), None).await;
    let want = [
        "guild.created",
        "guild.updated",
        "channel.created",
        "channel.updated",
        "channel.deleted",
        "role.created",
        "role.updated",
        "member.roles_updated",
        "member.timed_out",
        "member.timed_out",
        "role.deleted",
        "guild.deleted",
    ];
    assert!(
        eventually(Duration::from_secs(5), || r.got().len() >= want.len()).await,
        "{:?}",
        r.got()
    );
    let got: Vec<Value> = r.got().iter().map(Received::json).collect();
    assert_eq!(
        got.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
        want
    );
    assert!(got.iter().all(|e| e["key"] == format!("guild:{gid}")));
    let seqs: Vec<u64> = got.iter().map(|e| e["key_seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        (got[0]["data"]["name"].as_str(), got[0]["data"]["owner_id"].as_str()),
        (Some("Ops"), Some("1"))
    );
    assert_eq!(got[1]["data"]["name"], "Ops 2");
    assert_eq!(
        (got[8]["data"]["user_id"].as_str(), got[8]["data"]["reason"].as_str()),
        (Some("2"), Some("spam"))
    );
    assert!(got[8]["data"]["until_ms"].as_u64().is_some(), "{}", got[8]);
    assert!(got[9]["data"]["until_ms"].is_null(), "lifted: {}", got[9]);
    assert_eq!(got[10]["data"]["role_id"].as_str(), Some(role.as_str()));
    assert_eq!(
        (got[2]["data"]["channel_id"].as_str(), got[2]["data"]["kind"].as_str()),
        (Some(ch.as_str()), Some("voice"))
    );
}

#[tokio::test]
async fn voice_joins_leaves_and_state_changes_are_events() {
    use quaver_client::{Transport, connect};
    use quaver_proto::{Lane, RequestBody};
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["voice.*"])];
    let (s, b) = server(c).await;
    let (gid, _) = guild(&b).await;
    let vc = b
        .ok(
            201,
            "POST",
            &format!("/api/v1/guilds/{gid}/channels"),
            Some(json!({"name": "talk", "kind": "voice"})),
        )
        .await
        .s("id");
    let c1 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut v = c1.open_lane(Lane::Voice).await.unwrap();
    let join = RequestBody::JoinVoice {
        channel_id: vc.parse().unwrap(),
        self_mute: false,
        self_deaf: false,
    };
    v.request(join).await.unwrap().expect("joined");
    v.request(RequestBody::SetVoiceState {
        self_mute: true,
        self_deaf: false,
    })
    .await
    .unwrap()
    .expect("muted");
    b.ok(
        200,
        "PATCH",
        &format!("/api/v1/guilds/{gid}/voice/1"),
        Some(json!({"server_deaf": true})),
    )
    .await;
    v.request(RequestBody::LeaveVoice).await.unwrap().expect("left");
    assert!(
        eventually(Duration::from_secs(5), || r.got().len() >= 4).await,
        "{:?}",
        r.got()
    );
    let got: Vec<Value> = r.got().iter().map(Received::json).collect();
    let kinds: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "voice.joined",
            "voice.state_updated",
            "voice.state_updated",
            "voice.left"
        ]
    );
    assert!(
        got.iter()
            .all(|e| e["key"] == format!("voice:{vc}") && e["data"]["user_id"] == "1")
    );
    assert_eq!(
        (
            got[1]["data"]["self_mute"].as_bool(),
            got[1]["data"]["server_deaf"].as_bool()
        ),
        (Some(true), None)
    );
    assert_eq!(got[2]["data"]["server_deaf"], true);
}

#[tokio::test]
async fn sessions_opening_and_closing_and_rate_limits_are_events() {
    use quaver_client::{Transport, connect};
    use quaver_proto::{ErrorCode, Lane, RequestBody};
    let r = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.limits.send = quaver::limits::Rate {
        burst: 1.0,
        per_sec: 0.01,
    };
    c.webhooks.endpoints = vec![endpoint("app", r.url(), &["session.*", "rate_limited"])];
    let (s, b) = server(c).await;
    let (_gid, channel) = guild(&b).await;
    let c1 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let sid = c1.ready.session_id.to_string();
    let mut chat = c1.open_lane(Lane::Chat).await.unwrap();
    let send = |n: u64| RequestBody::SendMessage {
        channel_id: channel.parse().unwrap(),
        nonce: n,
        content: format!("m{n}"),
        reply_to: None,
    };
    chat.request(send(1)).await.unwrap().expect("the first goes");
    for n in 2..5 {
        let e = chat.request(send(n)).await.unwrap().expect_err("limited");
        assert_eq!(e.code, ErrorCode::RATE_LIMITED);
    }
    c1.close();
    assert!(
        eventually(Duration::from_secs(5), || r.got().len() >= 3).await,
        "{:?}",
        r.got()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<Value> = r.got().iter().map(Received::json).collect();
    let kinds: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["session.opened", "rate_limited", "session.closed"],
        "one rate_limited per 10 s"
    );
    let opened = &got[0]["data"];
    assert_eq!(
        (
            opened["session_id"].as_str(),
            opened["transport"].as_str(),
            opened["resumed"].as_bool()
        ),
        (Some(sid.as_str()), Some("quic"), Some(false))
    );
    assert_eq!(
        (got[1]["data"]["limit"].as_str(), got[1]["data"]["flood"].as_bool()),
        (Some("send"), Some(false))
    );
    let closed = &got[2]["data"];
    assert_eq!(
        (
            closed["session_id"].as_str(),
            closed["resumable"].as_bool(),
            closed["reason"].as_str()
        ),
        (Some(sid.as_str()), Some(false), Some("closed"))
    );
    assert!(got.iter().all(|e| e["key"] == "user:1"));
}

#[tokio::test]
async fn typing_is_opt_in() {
    use quaver_client::{Transport, connect};
    use quaver_proto::{Lane, RequestBody};
    let all = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let typing = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let mut c = config();
    quick(&mut c);
    c.webhooks.endpoints = vec![
        endpoint("all", all.url(), &["*"]),
        endpoint("typing", typing.url(), &["typing.*"]),
    ];
    let (s, b) = server(c).await;
    let (_gid, channel) = guild(&b).await;
    let c1 = connect(&client_config(&s, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut t = c1.open_lane(Lane::Typing).await.unwrap();
    t.request(RequestBody::TypingStart {
        channel_id: channel.parse().unwrap(),
    })
    .await
    .unwrap()
    .expect("typing");
    assert!(eventually(Duration::from_secs(5), || !typing.got().is_empty()).await);
    let e = typing.got()[0].json();
    assert_eq!(
        (e["type"].as_str(), e["key"].as_str()),
        (Some("typing.started"), Some(format!("typing:{channel}").as_str()))
    );
    assert_eq!(e["data"]["user_id"], "1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        all.got().iter().all(|g| g.json()["type"] != "typing.started"),
        "`*` does not include typing"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_logged_and_with_one_everything_is() {
    let (_s, b) = server(config()).await;
    let (_gid, channel) = guild(&b).await;
    let post = |content: &'static str| {
        let (addr, key, path) = (b.addr, b.key.clone(), format!("/api/v1/channels/{channel}/messages"));
        async move {
            let a = call(
                addr,
                Some(&key),
                "POST",
                &path,
                Some(json!({"author_id": "1", "content": content})),
                &[],
            )
            .await;
            assert_eq!(a.status, 201);
        }
    };
    post("before").await;
    assert!(log(&b).await.is_empty(), "no endpoint, no log");
    // An endpoint that wants only reactions: the log keeps the rest too.
    b.ok(
        201,
        "POST",
        "/api/v1/webhooks",
        Some(json!({"id": "r", "url": "http://127.0.0.1:9/x", "events": ["reaction.*"]})),
    )
    .await;
    post("after").await;
    let types: Vec<String> = log(&b)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["message.created"]);
}
