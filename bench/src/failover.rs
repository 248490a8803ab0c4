//! R2: a two-node cluster under a message stream while Redis is SIGKILLed and restarted, or
//! while one node is SIGKILLed. Receivers are resilient clients spread over both nodes (each
//! given the other node as its alternate); the sender is on the node that survives. Every
//! receiver must end with every acknowledged message exactly once, in seq order; the run
//! also reports how long after the fault ended every receiver had a message sent after it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quaver_client::Transport;
use quaver_client::resilient::Update;
use quaver_proto::*;

use crate::setup::{Owner, Setup};

/// The fault injected mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL the Redis server, restart it on the same port 2 s later.
    Redis,
    /// SIGKILL the node the sender is not on.
    Node,
}

/// What a run measured.
pub(crate) struct FailoverResult {
    /// Messages acknowledged.
    pub(crate) sent: u64,
    /// Over all receivers: missing, seen twice, out of order.
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) reordered: u64,
    /// Seconds from the end of the fault until every receiver had a message sent after it.
    pub(crate) recovery_seconds: f64,
    /// Seconds from the end of the fault until every receiver had every message sent
    /// before it (what the fault held back, caught up from the store).
    pub(crate) caught_up_seconds: f64,
    /// Receivers that reconnected.
    pub(crate) reconnected: u64,
}

/// A redis-server of the run's own on a free port.
struct OwnRedis {
    child: std::process::Child,
}

impl OwnRedis {
    fn start(dir: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting redis-server (R2 needs it on the PATH)")?;
        let r = Self { child };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }
    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `clients` receivers over two nodes, `rate` messages per second for `seconds`, the fault
/// a third of the way in.
pub(crate) async fn run(
    bin: &std::path::Path,
    fault: Fault,
    clients: usize,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<FailoverResult> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("quaver-bench-redis-{}-{port}", std::process::id()));
    let mut redis = OwnRedis::start(&dir, port)?;
    let toml = "[limits]\nsend = { burst = 100000.0, per_sec = 100000.0 }\n[session]\nping_interval = \"200ms\"\nping_timeout = \"5s\"\n";
    let mut setup =
        Setup::start_cluster_on(bin, toml, Transport::Quic, 2, &format!("redis://127.0.0.1:{port}")).await?;
    // User 1 (the owner, the sender) lives on node 1; node 0 is the one a node fault kills.
    let Owner {
        chat,
        general: ch,
        invite,
        client: _owner,
        ..
    } = setup.owner().await?;
    drop(setup.members(clients, 3000, &invite).await?);
    let nodes: Vec<(std::net::SocketAddr, [u8; 32])> = setup.nodes().map(|n| (n.quic, n.hash)).collect();
    let mut rs = Vec::with_capacity(clients);
    for i in 0..clients {
        let user = 3000 + i as u64;
        let mut cfg = setup.config(user);
        let other = nodes[(user as usize + 1) % 2];
        cfg.alternates = vec![other.0];
        if let quaver_client::Trust::Hashes(h) = &mut cfg.trust {
            h.push(other.1);
        }
        rs.push(
            crate::resume::receiver(cfg)
                .await
                .map_err(|e| anyhow::anyhow!("receiver {i}: {e}"))?,
        );
    }
    let t0 = Instant::now();
    let total = (rate * seconds).round() as u64;
    let (mut tx, mut rx) = chat.split();
    let nonce_base = setup.nonce_base;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        for n in 0..total {
            tick.tick().await;
            let body = RequestBody::SendMessage {
                channel_id: ch,
                nonce: nonce_base + n + 1,
                content: format!("{} r2", t0.elapsed().as_micros()),
                reply_to: None,
            };
            if tx.send(body).await.is_err() {
                return n;
            }
        }
        total
    });
    // Acks: the messages the cluster promised.
    let acks = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds + 30.0);
        while (seqs.len() as u64) < total {
            match tokio::time::timeout_at(end, rx.next()).await {
                Ok(Ok(ServerLane::Ack {
                    body: ResponseBody::MessageSent { seq, .. },
                    ..
                })) => seqs.push(seq),
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        seqs
    });
    let mut collectors = Vec::new();
    for mut r in rs {
        collectors.push(tokio::spawn(async move {
            let (mut got, mut reconnects) = (Vec::new(), 0u64);
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds + 30.0);
            while (got.len() as u64) < total {
                match tokio::time::timeout_at(end, r.next()).await {
                    Ok(Some(Update::Event(EventBody::MessageCreated { seq, message }))) if message.channel_id == ch => {
                        let sent: u64 = message
                            .content
                            .split_once(' ')
                            .and_then(|(t, _)| t.parse().ok())
                            .unwrap_or(0);
                        got.push((seq, sent, t0.elapsed().as_micros() as u64));
                    }
                    Ok(Some(Update::Connected { .. })) => reconnects += 1,
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (got, reconnects)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds / 3.0)).await;
    match fault {
        Fault::Redis => {
            redis.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            redis = OwnRedis::start(&dir, port)?;
        }
        Fault::Node => setup.kill_first().await,
    }
    let fault_end = t0.elapsed().as_micros() as u64;
    let sent = sender.await?;
    let acked = acks.await?;
    let (mut lost, mut dup, mut reordered, mut reconnected) = (0, 0, 0, 0);
    let (mut recovery, mut caught_up) = (0u64, 0u64);
    for c in collectors {
        let (got, reconnects) = c.await?;
        reconnected += u64::from(reconnects > 0);
        for w in got.windows(2) {
            if w[1].0 <= w[0].0 {
                reordered += 1;
            }
        }
        let mut seen = std::collections::HashMap::new();
        for (s, _, _) in &got {
            *seen.entry(*s).or_insert(0u32) += 1;
        }
        lost += acked.iter().filter(|s| !seen.contains_key(s)).count() as u64;
        dup += seen.values().map(|c| u64::from(c.saturating_sub(1))).sum::<u64>();
        // The first message sent after the fault ended, as this receiver got it.
        if let Some((_, _, at)) = got
            .iter()
            .filter(|(_, sent, _)| *sent > fault_end)
            .min_by_key(|(_, sent, _)| *sent)
        {
            recovery = recovery.max(at.saturating_sub(fault_end));
        } else {
            recovery = u64::MAX;
        }
        if let Some(at) = got
            .iter()
            .filter(|(_, sent, _)| *sent <= fault_end)
            .map(|(_, _, at)| *at)
            .max()
        {
            caught_up = caught_up.max(at.saturating_sub(fault_end));
        }
    }
    drop(redis);
    setup.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FailoverResult {
        sent: sent.min(acked.len() as u64),
        lost,
        duplicated: dup,
        reordered,
        recovery_seconds: recovery as f64 / 1e6,
        caught_up_seconds: caught_up as f64 / 1e6,
        reconnected,
    })
}
