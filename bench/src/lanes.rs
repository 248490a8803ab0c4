//! Lanes across a real link (issue 29, item 1): typing latency while large History fetches
//! stream down the same connection. Over QUIC each fetch has a stream of its own and typing
//! its lane, so a typing event is sent between a fetch's packets; over one TCP stream (the
//! WebSocket framing, or Socket.IO) it waits behind whatever of the fetch the server has
//! already written. Meant to run under `netem` with a bandwidth limit (`--rate-mbit`): on an
//! unlimited link a 1.2 MB page is gone in a few round trips and there is nothing to see.
//!
//! `receivers` sessions each fetch a full page (100 messages of 4,000 random CJK characters,
//! 1.2 MB, uncompressed) back to back, while `typers` sessions start and stop typing 4 times
//! a second each. First `quiet` without fetches, then `busy` with them; every typing event
//! each receiver gets is timed from its send (one process, one clock) and counted in the
//! phase it was sent in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use quaver_client::{Transport, connect};
use quaver_proto::*;

use crate::setup::{Setup, req};

/// What a run measured.
pub(crate) struct LanesResult {
    /// Typing latencies (µs) of events sent before the fetches began.
    pub(crate) quiet: Vec<u64>,
    /// Typing latencies (µs) of events sent while they streamed.
    pub(crate) busy: Vec<u64>,
    /// Typing events the receivers should have seen.
    pub(crate) expected: usize,
    /// Fetch durations (µs), request to the whole page.
    pub(crate) fetches: Vec<u64>,
    /// Fetches completed.
    pub(crate) fetch_count: usize,
    /// Bytes of one page's messages' content.
    pub(crate) page_bytes: usize,
}

/// A page's worth of content: 4,000 characters from the CJK block, drawn by a xorshift so
/// they neither repeat nor compress much.
fn content(seed: u64) -> String {
    let mut x = seed | 1;
    (0..4000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_u32(0x4E00 + (x % 0x5000) as u32).unwrap_or('\u{4E00}')
        })
        .collect()
}

/// Runs the scenario.
pub(crate) async fn run(
    target: &crate::server::Target,
    transport: Transport,
    receivers: usize,
    typers: usize,
    quiet: Duration,
    busy: Duration,
) -> anyhow::Result<LanesResult> {
    if receivers == 0 || typers == 0 {
        bail!("needs at least one receiver and one typer");
    }
    let setup = Setup::start(
        target,
        "[limits]\nsend = { burst = 1000.0, per_sec = 1000.0 }\nfetch = { burst = 100000.0, per_sec = 100000.0 }\n",
        transport,
    )
    .await?;
    let mut owner = setup.owner().await?;
    let channel_id = owner.general;
    let mut page_bytes = 0;
    for n in 0..100u64 {
        let content = content(setup.nonce_base.wrapping_add(n));
        page_bytes += content.len();
        let body = RequestBody::SendMessage {
            channel_id,
            nonce: setup.nonce_base + n,
            content,
            reply_to: None,
        };
        req(&mut owner.chat, body).await?;
    }
    // Sessions with their typing lanes: receivers first (users 1000…), then typers.
    let mut sessions = Vec::new();
    for i in 0..receivers + typers {
        let mut cfg = setup.config(1000 + i as u64);
        // The page as it is: 1.2 MB on the wire, not what zstd makes of it.
        cfg.compression = Compression::None;
        let client = connect(&cfg).await?;
        let mut chat = client.open_lane(Lane::Chat).await?;
        req(
            &mut chat,
            RequestBody::JoinGuild {
                code: owner.invite.clone(),
            },
        )
        .await?;
        let typing = client.open_lane(Lane::Typing).await?;
        sessions.push((Arc::new(client), chat, typing));
    }
    setup.server.quiesce(Duration::from_secs(30)).await;

    let t0 = Instant::now();
    let busy_from = quiet;
    let end = quiet + busy;
    // Per typer (user id), when each of its typing events was sent (µs since t0), in order.
    let sent: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let typer_ids: Vec<u64> = (0..typers).map(|k| 1000 + (receivers + k) as u64).collect();
    let mut typer_tasks = Vec::new();
    let mut receiver_tasks = Vec::new();
    let mut fetch_tasks = Vec::new();
    println!("measuring: {receivers} receivers, {typers} typers, quiet {quiet:?} then fetching {busy:?}");
    for (i, (client, chat, typing)) in sessions.into_iter().enumerate() {
        let (mut tx, mut rx) = typing.split();
        if i >= receivers {
            let me = 1000 + i as u64;
            let sent = sent.clone();
            // Staggered so the typers' events do not all leave at once.
            let offset = Duration::from_millis(250 * (i - receivers) as u64 / typers as u64);
            // What the typer's own lane brings (the others' typing, its replies) is read
            // and dropped, so it never stands in the connection's way.
            tokio::spawn(async move { while rx.next().await.is_ok() {} });
            typer_tasks.push(tokio::spawn(async move {
                let _keep = (client.clone(), chat);
                tokio::time::sleep(offset).await;
                let mut k = 0u64;
                // When each typing event left, in order (the receivers time against it).
                let stamp = || {
                    sent.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(me)
                        .or_default()
                        .push(t0.elapsed().as_micros() as u64)
                };
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                while t0.elapsed() < end {
                    tick.tick().await;
                    let body = if k.is_multiple_of(2) {
                        RequestBody::TypingStart { channel_id }
                    } else {
                        RequestBody::TypingStop { channel_id }
                    };
                    stamp();
                    tx.send(body).await?;
                    k += 1;
                }
                // The last stop, so nothing is left typing.
                if k % 2 == 1 {
                    stamp();
                    tx.send(RequestBody::TypingStop { channel_id }).await?;
                }
                // Keep the session until the receivers are done.
                tokio::time::sleep(Duration::from_secs(5)).await;
                anyhow::Ok(())
            }));
            continue;
        }
        let (sent, typer_ids) = (sent.clone(), typer_ids.clone());
        // Typing: per typer, the k-th event seen is its k-th sent.
        receiver_tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<u64, usize> = HashMap::new();
            let mut times = Vec::new();
            let deadline = tokio::time::Instant::now() + end + Duration::from_secs(5);
            loop {
                let ev = match tokio::time::timeout_at(deadline, rx.next()).await {
                    Err(_) => break,
                    Ok(r) => r?,
                };
                let ServerLane::Event { body, .. } = ev else { continue };
                let user = match body {
                    EventBody::TypingStarted { user_id, .. } | EventBody::TypingStopped { user_id, .. } => user_id,
                    _ => continue,
                };
                if !typer_ids.contains(&user) {
                    continue;
                }
                let now = t0.elapsed().as_micros() as u64;
                let k = seen.entry(user).or_default();
                let at = sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&user)
                    .and_then(|v| v.get(*k).copied());
                *k += 1;
                match at {
                    Some(at) => times.push((at, now.saturating_sub(at))),
                    None => bail!("typing event {k} of user {user} seen before it was sent"),
                }
            }
            anyhow::Ok(times)
        }));
        // Fetches, back to back through the busy phase.
        fetch_tasks.push(tokio::spawn(async move {
            let _keep = chat;
            let mut took = Vec::new();
            tokio::time::sleep(busy_from.saturating_sub(t0.elapsed())).await;
            while t0.elapsed() < end {
                let start = Instant::now();
                let page = client
                    .fetch(FetchRequest::History {
                        channel_id,
                        anchor: HistoryAnchor::Latest,
                        limit: 100,
                    })
                    .await?;
                match page {
                    Ok(FetchResponse::History { messages, .. }) if messages.len() == 100 => {}
                    Ok(_) => bail!("a History fetch did not return the whole page"),
                    Err(e) => bail!("a History fetch was refused: {} ({})", e.message, e.code.0),
                }
                took.push(start.elapsed().as_micros() as u64);
            }
            anyhow::Ok((client, took))
        }));
    }
    let mut fetches = Vec::new();
    let mut clients = Vec::new();
    for t in fetch_tasks {
        let (c, took) = t.await??;
        fetches.extend(took);
        clients.push(c);
    }
    let (mut quiet_lat, mut busy_lat) = (Vec::new(), Vec::new());
    for t in receiver_tasks {
        for (at, lat) in t.await?? {
            if Duration::from_micros(at) < busy_from {
                quiet_lat.push(lat);
            } else {
                busy_lat.push(lat);
            }
        }
    }
    for t in typer_tasks {
        t.await??;
    }
    let expected = receivers
        * sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum::<usize>();
    drop(clients);
    drop(owner);
    setup.server.stop().await;
    Ok(LanesResult {
        quiet: quiet_lat,
        busy: busy_lat,
        expected,
        fetch_count: fetches.len(),
        fetches,
        page_bytes,
    })
}
