//! R1: resilient clients whose connections are killed (packets dropped by a relay, nobody
//! closes anything) while a sender streams messages; every client must end with every
//! message exactly once, in seq order.

use std::time::{Duration, Instant};

use quaver_client::Transport;
use quaver_client::relay::Relay;
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_proto::*;

use crate::setup::{Owner, Setup};

/// A resilient receiver that notices a dead path within 2 s, connected (within 10 s).
pub(crate) async fn receiver(cfg: quaver_client::Config) -> anyhow::Result<Resilient> {
    resilient(cfg, false).await
}

/// A resilient client, connected (within 10 s): with the client's defaults, or tuned to
/// notice a dead path within 2 s and retry within 300 ms.
async fn resilient(mut cfg: quaver_client::Config, defaults: bool) -> anyhow::Result<Resilient> {
    let backoff = match defaults {
        true => Backoff::default(),
        false => {
            cfg.idle_timeout = Duration::from_secs(2);
            cfg.keep_alive = Duration::from_millis(200);
            Backoff {
                min: Duration::from_millis(20),
                max: Duration::from_millis(300),
            }
        }
    };
    let mut r = Resilient::start(cfg, backoff);
    match tokio::time::timeout(Duration::from_secs(10), r.next()).await {
        Ok(Some(Update::Connected { .. })) => Ok(r),
        _ => anyhow::bail!("did not connect"),
    }
}

/// What a run measured.
pub(crate) struct ResumeResult {
    /// Messages sent.
    pub(crate) sent: u64,
    /// Kills performed.
    pub(crate) kills: usize,
    /// Reconnects that resumed exactly, and those that started a new session.
    pub(crate) resumed: u64,
    /// New sessions (caught up from the log).
    pub(crate) fresh: u64,
    /// Messages missing at the end, over all clients.
    pub(crate) lost: u64,
    /// Messages seen twice, over all clients.
    pub(crate) duplicated: u64,
    /// Messages out of seq order, over all clients.
    pub(crate) reordered: u64,
    /// Seconds until the last client had everything, after the last send.
    pub(crate) settle_seconds: f64,
    /// When each reconnect was ready (seconds since the stream started), every client's.
    pub(crate) connected_at: Vec<f64>,
}

/// `clients` resilient receivers through a relay; `kills` connections killed evenly over
/// `seconds` while one resilient sender sends `rate` messages per second (a send the
/// network ate is sent again with its nonce, so every message is stored once). With
/// `client_defaults`, every client runs on the client's default settings instead of R1's
/// tuned ones (what a 30 s outage across `quaver-bench netem` is measured with).
pub(crate) async fn run(
    target: &crate::server::Target,
    clients: usize,
    kills: usize,
    rate: f64,
    seconds: f64,
    client_defaults: bool,
    probe_every: Option<Duration>,
) -> anyhow::Result<ResumeResult> {
    let toml = "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\n[session]\nping_interval = \"200ms\"\nping_timeout = \"5s\"\n";
    let setup = Setup::start(target, toml, Transport::Quic).await?;
    let Owner {
        general: ch,
        invite,
        client: owner,
        ..
    } = setup.owner().await?;
    drop(owner);
    // Members join (directly), then reconnect through the relay as resilient clients.
    drop(setup.members(clients, 2000, &invite).await?);
    let relay = Relay::start(setup.server.quic).await;
    let mut rs = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut cfg = setup.config(2000 + i as u64);
        cfg.addr = relay.addr;
        if let Some(p) = probe_every {
            cfg.probe_every = p;
        }
        rs.push(
            resilient(cfg, client_defaults)
                .await
                .map_err(|e| anyhow::anyhow!("resilient client {i}: {e}"))?,
        );
    }
    // The guild's owner sends, on a resilient session of its own beside the receivers (not
    // through the relay: its connection is not killed).
    let sending = resilient(setup.config(1), client_defaults)
        .await
        .map_err(|e| anyhow::anyhow!("resilient sender: {e}"))?;
    let total = (rate * seconds).round() as u64;
    // `quaver-bench netem` times a blackout from this line.
    eprintln!("measuring (server pid {})", setup.server.pid);
    let t0 = Instant::now();
    let nonce_base = setup.nonce_base;
    let sender = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(every);
        let mut acks = Vec::with_capacity(total as usize);
        for n in 0..total {
            tick.tick().await;
            let body = RequestBody::SendMessage {
                channel_id: ch,
                nonce: nonce_base + n + 1,
                content: format!("m{n}"),
                reply_to: None,
            };
            // Not waited for one by one: the stream goes on while the network is dark.
            let requester = sending.handle();
            acks.push(tokio::spawn(async move { requester.request(body).await.is_ok() }));
        }
        let mut acked = 0;
        for a in acks {
            acked += u64::from(a.await.unwrap_or(false));
        }
        drop(sending);
        acked
    });
    let killer = tokio::spawn(async move {
        let every = Duration::from_secs_f64(seconds / kills.max(1) as f64);
        for _ in 0..kills {
            tokio::time::sleep(every).await;
            relay.kill();
        }
        relay
    });
    let mut collectors = Vec::new();
    for mut r in rs {
        collectors.push(tokio::spawn(async move {
            let (mut seqs, mut resumed, mut fresh) = (Vec::new(), 0u64, 0u64);
            let mut connected_at = Vec::new();
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds + 30.0);
            while (seqs.len() as u64) < total {
                match tokio::time::timeout_at(end, r.next()).await {
                    Ok(Some(Update::Event(EventBody::MessageCreated { seq, message }))) if message.channel_id == ch => {
                        seqs.push(seq)
                    }
                    Ok(Some(Update::Connected { resumed: exact, .. })) => {
                        connected_at.push(t0.elapsed().as_secs_f64());
                        if exact { resumed += 1 } else { fresh += 1 }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (seqs, resumed, fresh, Instant::now(), connected_at)
        }));
    }
    let sent = sender.await?;
    let sent_done = Instant::now();
    let _relay = killer.await?;
    let (mut lost, mut dup, mut reordered, mut resumed, mut fresh) = (0, 0, 0, 0, 0);
    let mut last_done = sent_done;
    let mut connected_at = Vec::new();
    for c in collectors {
        let (seqs, r, f, done, at) = c.await?;
        connected_at.extend(at);
        resumed += r;
        fresh += f;
        last_done = last_done.max(done);
        let mut seen = vec![0u32; sent as usize + 2];
        for w in seqs.windows(2) {
            if w[1] <= w[0] {
                reordered += 1;
            }
        }
        for s in &seqs {
            if let Some(x) = seen.get_mut(*s as usize) {
                *x += 1;
            }
        }
        lost += (1..=sent as usize).filter(|i| seen[*i] == 0).count() as u64;
        dup += seen.iter().map(|c| c.saturating_sub(1) as u64).sum::<u64>();
    }
    setup.server.stop().await;
    Ok(ResumeResult {
        sent,
        kills,
        resumed,
        fresh,
        lost,
        duplicated: dup,
        reordered,
        settle_seconds: (last_done - sent_done).as_secs_f64(),
        connected_at: {
            connected_at.sort_by(f64::total_cmp);
            connected_at
        },
    })
}
