//! W1: webhooks. Messages posted through the server API into many channels at a fixed
//! rate; a receiver in this process (plain HTTP/1.1 on loopback, answering 204) gets each
//! `message.created`. Measured: events delivered per second, change → delivery latency
//! (the message's `created_at_ms` to its arrival here), duplicates, the server's CPU per
//! event. W2: the same posts with a `message.before_create` hook (answered here at once)
//! against without: what the hook adds to the API call.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::api::{ApiConn, key_config};
use crate::server::ServerProc;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Refuse deliveries with 503 (a backlog builds up) while set.
    refuse: bool,
    ids: HashSet<String>,
    duplicates: u64,
    /// Change → arrival, µs.
    latency_us: Vec<u64>,
    last_at: Option<Instant>,
    hook_calls: u64,
}

fn now_ms_f() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The receiver: every POST answered (204 for webhooks, `{"allow":true}` for the hook).
async fn receiver(seen: Arc<Mutex<Seen>>) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let hook = line.contains(" /hook ");
                    let mut len = 0usize;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let t = line.trim_end();
                        if t.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = t.split_once(':')
                            && n.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer: &[u8] = if hook {
                        seen.lock().unwrap().hook_calls += 1;
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\n\r\n{\"allow\":true}"
                    } else if seen.lock().unwrap().refuse {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        let at = now_ms_f();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            let mut s = seen.lock().unwrap();
                            let id = v["id"].as_str().unwrap_or("").to_string();
                            if s.ids.insert(id) {
                                if let Some(c) = v["data"]["message"]["created_at_ms"].as_f64() {
                                    s.latency_us.push(((at - c).max(0.0) * 1000.0) as u64);
                                }
                                s.last_at = Some(Instant::now());
                            } else {
                                s.duplicates += 1;
                            }
                        }
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    };
                    if w.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One run's figures.
pub(crate) struct Run {
    pub(crate) posted: u64,
    pub(crate) post_seconds: f64,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    /// Delivered events per second, first post to last delivery.
    pub(crate) delivered_per_sec: f64,
    pub(crate) latency: crate::Percentiles,
    /// API call time, µs.
    pub(crate) call: crate::Percentiles,
    pub(crate) cpu_us_per_event: f64,
    pub(crate) hook_calls: u64,
    /// Backlog runs: events per second delivered once the receiver accepts them.
    pub(crate) drain_per_sec: f64,
}

/// Parameters.
pub(crate) struct Params {
    pub(crate) rate: f64,
    pub(crate) seconds: f64,
    pub(crate) channels: usize,
    pub(crate) posters: usize,
    pub(crate) hook: bool,
    pub(crate) webhook: bool,
    /// The receiver refuses (503) while the events are posted, then accepts: how fast a
    /// backlog drains.
    pub(crate) backlog: bool,
    /// The server's `[webhooks] concurrency`, if not its default.
    pub(crate) concurrency: Option<usize>,
}

/// One run against a fresh server.
pub(crate) async fn run(bin: &std::path::Path, p: &Params) -> anyhow::Result<Run> {
    let seen = Arc::new(Mutex::new(Seen {
        refuse: p.backlog,
        ..Seen::default()
    }));
    let rx = receiver(seen.clone()).await?;
    let (key, keys) = key_config()?;
    let mut toml = keys;
    // The senders' rate is the scenario's, not a user's.
    toml.push_str("\n[limits]\nsend = { burst = 1000000.0, per_sec = 1000000.0 }\n");
    toml.push_str("\n[webhooks]\nlog = true\nretry_min = \"100ms\"\nretry_max = \"200ms\"\n");
    if let Some(n) = p.concurrency {
        toml.push_str(&format!("concurrency = {n}\n"));
    }
    let secret = quaver::webhooks::new_secret();
    if p.webhook {
        toml.push_str(&format!(
            "[[webhooks.endpoints]]\nid = \"bench\"\nurl = \"http://{rx}/events\"\nsecret = \"{secret}\"\nevents = [\"message.created\"]\n"
        ));
    }
    if p.hook {
        toml.push_str(&format!(
            "[[webhooks.hooks]]\nkind = \"message.before_create\"\nurl = \"http://{rx}/hook\"\nsecret = \"{secret}\"\n"
        ));
    }
    let srv = ServerProc::start(bin, "bench-secret-0123456789abcdef0123456789", &toml).await?;
    let api = srv.api.context("the server's API address")?;
    // A guild with `channels` text channels, posted into by bot 1.
    let mut c = ApiConn::open(api, &key).await?;
    c.ok("PUT", "/users/1", "{\"name\":\"owner\"}").await?;
    let g: serde_json::Value = serde_json::from_str(
        &c.ok("POST", "/guilds", "{\"owner_id\":\"1\",\"name\":\"bench\"}")
            .await?,
    )?;
    let gid = g["id"].as_str().context("guild id")?.to_string();
    let mut channels = Vec::new();
    for k in 0..p.channels {
        let ch: serde_json::Value = serde_json::from_str(
            &c.ok(
                "POST",
                &format!("/guilds/{gid}/channels"),
                &format!("{{\"name\":\"c{k}\",\"kind\":\"text\"}}"),
            )
            .await?,
        )?;
        channels.push(ch["id"].as_str().context("channel id")?.to_string());
    }
    srv.quiesce(Duration::from_secs(5)).await;
    let total = (p.rate * p.seconds).round() as u64;
    let per = total / p.posters as u64;
    let every = Duration::from_secs_f64(p.posters as f64 / p.rate);
    let channels = Arc::new(channels);
    let cpu0 = srv.cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let posters = p.posters;
    for k in 0..posters {
        let (key, channels) = (key.clone(), channels.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = ApiConn::open(api, &key).await?;
            // Posters are phased over one period.
            let phase = every.mul_f64(k as f64 / posters as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut calls = Vec::with_capacity(per as usize);
            for i in 0..per {
                tick.tick().await;
                let ch = &channels[(k + i as usize * 7) % channels.len()];
                let t = Instant::now();
                c.ok(
                    "POST",
                    &format!("/channels/{ch}/messages"),
                    &format!("{{\"author_id\":\"1\",\"content\":\"w{k}-{i}\"}}"),
                )
                .await?;
                calls.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(calls)
        }));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await??);
    }
    let post_seconds = start.elapsed().as_secs_f64();
    let posted = calls.len() as u64;
    let mut drain_per_sec = 0.0;
    let mut drain_from = None;
    if p.backlog {
        // Everything is stored and pending: accept from now on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.lock().unwrap().refuse = false;
        drain_from = Some(Instant::now());
    }
    if p.webhook {
        // Every event delivered, or 60 s.
        let end = Instant::now() + Duration::from_secs(60);
        while (seen.lock().unwrap().ids.len() as u64) < posted && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cpu = srv.cpu_seconds() - cpu0;
    srv.stop().await;
    let s = std::mem::take(&mut *seen.lock().unwrap());
    if let (Some(from), Some(last)) = (drain_from, s.last_at) {
        drain_per_sec = s.ids.len() as f64 / last.duration_since(from).as_secs_f64().max(1e-9);
    }
    let delivered = s.ids.len() as u64;
    let span = s
        .last_at
        .map_or(post_seconds, |t| t.duration_since(start).as_secs_f64());
    Ok(Run {
        posted,
        post_seconds,
        delivered,
        duplicates: s.duplicates,
        delivered_per_sec: delivered as f64 / span.max(1e-9),
        latency: crate::percentiles(s.latency_us),
        call: crate::percentiles(calls),
        cpu_us_per_event: cpu * 1e6 / posted.max(1) as f64,
        hook_calls: s.hook_calls,
        drain_per_sec,
    })
}
