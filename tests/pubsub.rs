//! The cluster bus conformance suite: the same checks against the in-process hub, a single
//! Redis (`REDIS_URL`; in CI it must answer) and a Redis Cluster of three masters that this
//! test starts itself on private ports (from the `redis-server` on the PATH; in CI it must
//! exist). Then what only a real Redis can show: resubscription after the server drops the
//! subscriber (no CROSSSLOT loss on the cluster), and an outage — publishes never block,
//! overflow is counted, the node reports degraded and recovers by itself.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quaver::cluster::pubsub::{Health, MemoryHub, PubSub, Received, Topic};
use quaver::cluster::redis::{RedisOptions, RedisPubSub, RedisTarget};
use tokio::sync::mpsc::UnboundedReceiver;

type Node = (Box<dyn PubSub>, UnboundedReceiver<Received>);

use common::redis_server::*;

/// A base for topic ids no other run (on a shared Redis) uses.
fn base() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t % 1_000_000_000) * 1000 + u64::from(std::process::id() % 1000)
}

async fn redis_node(target: &RedisTarget, name: &str, opt: RedisOptions) -> (RedisPubSub, UnboundedReceiver<Received>) {
    let (bus, rx) = RedisPubSub::connect(target, name, opt)
        .await
        .unwrap_or_else(|e| panic!("connecting to {target:?}: {e}"));
    assert!(bus.ready(Duration::from_secs(10)).await, "{name}: the bus came up");
    (bus, rx)
}

/// The next message within `limit`, if any (subscription confirmations skipped).
async fn next(rx: &mut UnboundedReceiver<Received>, limit: Duration) -> Option<Received> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let r = tokio::time::timeout_at(end, rx.recv()).await.ok().flatten()?;
        if !r.is_confirmation() {
            return Some(r);
        }
    }
}

/// Waits for the bus's confirmation that the subscription to `topic` took effect.
async fn confirmed(rx: &mut UnboundedReceiver<Received>, topic: &Topic) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(r)) if r.is_confirmation() && r.topic == *topic => return,
            Ok(Some(_)) => {}
            _ => panic!("no confirmation of the subscription to {topic:?}"),
        }
    }
}

/// Waits until `node` receives on `topic` (publishing `ping` from `from` until it does):
/// subscriptions take effect asynchronously on Redis.
async fn settle(from: &dyn PubSub, to: &mut UnboundedReceiver<Received>, topic: &Topic) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        from.publish(topic, Bytes::from_static(b"settle"));
        if let Some(r) = next(to, Duration::from_millis(200)).await
            && r.topic == *topic
        {
            // Drain any other settle copies.
            while next(to, Duration::from_millis(100)).await.is_some() {}
            return;
        }
    }
    panic!("subscription to {topic:?} never took effect");
}

/// The checks every implementation must pass, with nodes `a` and `b`.
async fn conformance(name: &str, a: Node, b: Node) {
    let (a, mut arx) = a;
    let (b, mut brx) = b;
    let k = base();
    let t1 = Topic::channel(k + 1);
    let t2 = Topic::guild(k + 2);
    // Once the bus confirms a subscription, what is published on it arrives: byte for
    // byte, to the subscribed node only.
    b.subscribe(&t1);
    confirmed(&mut brx, &t1).await;
    let payload = Bytes::from((0..=255u8).collect::<Vec<_>>());
    a.publish(&t1, payload.clone());
    let got = next(&mut brx, Duration::from_secs(5)).await.expect("delivered");
    assert_eq!(
        (got.topic.clone(), got.payload.clone()),
        (t1.clone(), payload),
        "{name}"
    );
    assert!(
        next(&mut arx, Duration::from_millis(300)).await.is_none(),
        "{name}: a is not subscribed"
    );
    // A node subscribed to a topic it publishes on receives its own message, like any node.
    a.subscribe(&t2);
    settle(a.as_ref(), &mut arx, &t2).await;
    a.publish(&t2, Bytes::from_static(b"self"));
    assert_eq!(
        next(&mut arx, Duration::from_secs(5)).await.unwrap().payload,
        "self",
        "{name}"
    );
    // Order per publisher and topic.
    for n in 0..200u32 {
        a.publish(&t1, Bytes::from(n.to_be_bytes().to_vec()));
    }
    for n in 0..200u32 {
        let r = next(&mut brx, Duration::from_secs(5)).await.expect("every message");
        assert_eq!(r.payload.as_ref(), n.to_be_bytes(), "{name}: in order");
    }
    // Reference counts: two needs, one released — still subscribed; both — not.
    b.subscribe(&t1);
    b.unsubscribe(&t1);
    a.publish(&t1, Bytes::from_static(b"still"));
    assert_eq!(
        next(&mut brx, Duration::from_secs(5)).await.unwrap().payload,
        "still",
        "{name}"
    );
    b.unsubscribe(&t1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.publish(&t1, Bytes::from_static(b"gone"));
    assert!(
        next(&mut brx, Duration::from_millis(500)).await.is_none(),
        "{name}: unsubscribed"
    );
    // Many topics (many slots on a cluster).
    let many: Vec<Topic> = (0..60).map(|i| Topic::user(k + 100 + i)).collect();
    for t in &many {
        b.subscribe(t);
    }
    settle(a.as_ref(), &mut brx, many.last().unwrap()).await;
    settle(a.as_ref(), &mut brx, &many[0]).await;
    for t in &many {
        a.publish(t, Bytes::from(t.name().to_string()));
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < many.len() {
        let r = next(&mut brx, Duration::from_secs(5)).await.expect("every topic");
        assert_eq!(r.payload, r.topic.name().as_bytes(), "{name}");
        seen.insert(r.topic);
    }
    assert!(a.counters().published.load(Relaxed) > 0);
    assert_eq!(a.health(), Health::Up, "{name}");
}

#[tokio::test]
async fn memory_hub_conforms() {
    let hub = MemoryHub::new();
    let (a, arx) = hub.node();
    let (b, brx) = hub.node();
    conformance("memory", (Box::new(a), arx), (Box::new(b), brx)).await;
}

fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if in_ci() => panic!("REDIS_URL must be set in CI"),
        _ => {
            eprintln!("SKIPPED: Redis conformance (set REDIS_URL to run it)");
            None
        }
    }
}

#[tokio::test]
async fn single_redis_conforms_and_resubscribes() {
    let Some(url) = redis_url() else { return };
    let target = RedisTarget::parse(&url).unwrap();
    let (a, arx) = redis_node(&target, &format!("a{}", base()), RedisOptions::default()).await;
    let (b, brx) = redis_node(&target, &format!("b{}", base()), RedisOptions::default()).await;
    let k = base();
    conformance("redis", (Box::new(a), arx), (Box::new(b), brx)).await;
    // After the server drops every subscriber, subscriptions come back by themselves.
    let (a, _arx) = redis_node(&target, &format!("c{k}"), RedisOptions::default()).await;
    let (b, mut brx) = redis_node(&target, &format!("d{k}"), RedisOptions::default()).await;
    let topics: Vec<Topic> = (0..20).map(|i| Topic::guild(k + 500 + i)).collect();
    for t in &topics {
        b.subscribe(t);
    }
    settle(&a, &mut brx, &topics[19]).await;
    kill_pubsub_clients(std::slice::from_ref(&url));
    assert_all_delivered(&a, &mut brx, &topics, "redis after CLIENT KILL").await;
    // Prefixes keep clusters apart on one Redis: only the same prefix hears a topic.
    let with = |p: &str| RedisOptions {
        prefix: p.to_string(),
        ..Default::default()
    };
    let (x, mut xrx) = redis_node(&target, &format!("x{k}"), with("px:")).await;
    let (y, _yrx) = redis_node(&target, &format!("y{k}"), with("py:")).await;
    let (x2, _x2rx) = redis_node(&target, &format!("x2{k}"), with("px:")).await;
    let t = Topic::guild(k + 900);
    x.subscribe(&t);
    settle(&x2, &mut xrx, &t).await;
    y.publish(&t, Bytes::from_static(b"other cluster"));
    x2.publish(&t, Bytes::from_static(b"same cluster"));
    let got = next(&mut xrx, Duration::from_secs(2))
        .await
        .expect("same prefix delivers");
    assert_eq!((got.topic, &got.payload[..]), (t, &b"same cluster"[..]));
    assert!(
        next(&mut xrx, Duration::from_millis(300)).await.is_none(),
        "another prefix does not"
    );
}

/// `CLIENT KILL TYPE pubsub` on each server: every subscriber connection drops.
fn kill_pubsub_clients(urls: &[String]) {
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut c = client.get_connection().unwrap();
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut c);
    }
}

/// Publishes on every topic until each arrived (bounded: 10 s).
async fn assert_all_delivered(a: &dyn PubSub, brx: &mut UnboundedReceiver<Received>, topics: &[Topic], what: &str) {
    let mut missing: std::collections::HashSet<Topic> = topics.iter().cloned().collect();
    let end = Instant::now() + Duration::from_secs(10);
    while !missing.is_empty() && Instant::now() < end {
        for t in &missing {
            a.publish(t, Bytes::from_static(b"x"));
        }
        while let Some(r) = next(brx, Duration::from_millis(300)).await {
            missing.remove(&r.topic);
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} topics never came back: {missing:?}",
        missing.len()
    );
}

#[tokio::test]
async fn redis_cluster_conforms_and_resubscribes_without_crossslot() {
    if !have_redis_server() {
        return;
    }
    let procs = start_cluster();
    let seeds = procs
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let target = RedisTarget::parse(&format!("redis+cluster://{seeds}")).unwrap();
    let (a, arx) = redis_node(&target, "ca", RedisOptions::default()).await;
    let (b, brx) = redis_node(&target, "cb", RedisOptions::default()).await;
    conformance("redis cluster", (Box::new(a), arx), (Box::new(b), brx)).await;
    // Topics spread over many slots on every master; then every subscriber is dropped. A
    // resubscription that names channels of several slots in one SSUBSCRIBE would fail with
    // CROSSSLOT and lose them.
    let (a, _arx) = redis_node(&target, "cc", RedisOptions::default()).await;
    let (b, mut brx) = redis_node(&target, "cd", RedisOptions::default()).await;
    let k = base();
    let topics: Vec<Topic> = (0..40).map(|i| Topic::channel(k + 900 + i)).collect();
    for t in &topics {
        b.subscribe(t);
    }
    assert_all_delivered(&a, &mut brx, &topics, "cluster before").await;
    let urls: Vec<String> = procs.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    kill_pubsub_clients(&urls);
    assert_all_delivered(&a, &mut brx, &topics, "cluster after CLIENT KILL").await;
    drop(procs);
}

/// Redis goes away: publishing never blocks, the overflow is counted, health says
/// degraded; Redis comes back on the same port: the bus recovers by itself, subscriptions
/// included.
#[tokio::test]
async fn an_outage_degrades_and_recovers() {
    if !have_redis_server() {
        return;
    }
    let (mut procs, port) = start_single("routage");
    let dir = procs._dir.clone();
    let target = RedisTarget::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
    let opt = RedisOptions {
        buffer: 50,
        probe_every: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let (a, _arx) = redis_node(&target, "oa", opt.clone()).await;
    let (b, mut brx) = redis_node(&target, "ob", opt).await;
    let t = Topic::guild(base());
    b.subscribe(&t);
    settle(&a, &mut brx, &t).await;
    // SIGKILL the server.
    let mut c = procs.children.pop().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let t0 = Instant::now();
    for n in 0..500u32 {
        a.publish(&t, Bytes::from(n.to_be_bytes().to_vec()));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "publish never blocks: {:?}",
        t0.elapsed()
    );
    let degraded = common::eventually(Duration::from_secs(5), || a.health() == Health::Degraded).await;
    assert!(degraded, "the node learns that Redis is gone");
    assert!(
        a.counters().dropped.load(Relaxed) >= 400,
        "overflow past the buffer is counted"
    );
    // Back on the same port.
    procs.children.push(spawn_redis(&dir, port, false));
    wait_ping(port);
    assert!(a.ready(Duration::from_secs(20)).await, "publisher side recovered");
    assert!(b.ready(Duration::from_secs(20)).await, "subscriber side recovered");
    assert!(
        a.counters().reconnect_attempts.load(Relaxed) > 0,
        "attempts are counted"
    );
    // Drain what was buffered, then a fresh message arrives.
    while next(&mut brx, Duration::from_millis(300)).await.is_some() {}
    assert_all_delivered(&a, &mut brx, std::slice::from_ref(&t), "after the outage").await;
}
