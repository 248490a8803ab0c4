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
pub(crate) async fn receiver(mut cfg: quaver_client::Config) -> anyhow::Result<Resilient> {
    cfg.idle_timeout = Duration::from_secs(2);
    cfg.keep_alive = Duration::from_millis(200);
    let mut r = Resilient::start(
        cfg,
        Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(300),
        },
    );
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
/// `seconds` while one sender sends `rate` messages per second.
pub(crate) async fn run(
    target: &crate::server::Target,
    clients: usize,
    kills: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<ResumeResult> {
    let toml = "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\n[session]\nping_interval = \"200ms\"\nping_timeout = \"5s\"\n";
    let setup = Setup::start(target, toml, Transport::Quic).await?;
    let Owner {
        chat,
        general: ch,
        invite,
        client: _owner,
        ..
    } = setup.owner().await?;
    // Members join (directly), then reconnect through the relay as resilient clients.
    drop(setup.members(clients, 2000, &invite).await?);
    let relay = Relay::start(setup.server.quic).await;
    let mut rs = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut cfg = setup.config(2000 + i as u64);
        cfg.addr = relay.addr;
        rs.push(
            receiver(cfg)
                .await
                .map_err(|e| anyhow::anyhow!("resilient client {i}: {e}"))?,
        );
    }
    let total = (rate * seconds).round() as u64;
    // `quaver-bench netem` times a blackout from this line.
    eprintln!("measuring (server pid {})", setup.server.pid);
    let t0 = Instant::now();
    let (mut tx, _rx) = chat.split();
    let nonce_base = setup.nonce_base;
    let sender = tokio::spawn(async move {
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut tick = tokio::time::interval(every);
        for n in 0..total {
            tick.tick().await;
            let body = RequestBody::SendMessage {
                channel_id: ch,
                nonce: nonce_base + n + 1,
                content: format!("m{n}"),
                reply_to: None,
            };
            if tx.send(body).await.is_err() {
                return n;
            }
        }
        total
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
