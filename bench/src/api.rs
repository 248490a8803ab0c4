//! The server API as a load generator's senders use it: HTTP/1.1 keep-alive connections to
//! `/api/v1` with a key (no HTTP client crate: one request at a time per connection, a
//! status line, headers, a `Content-Length` body — what the API answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The bench's API key: all scopes, a rate no run reaches. Returns (key, TOML to configure).
pub(crate) fn key_config() -> anyhow::Result<(String, String)> {
    let (key, hash) = quaver::api::auth::mint("bench")?;
    let toml = format!(
        "[api]\nrate = {{ burst = 1000000.0, per_sec = 1000000.0 }}\n[[api.keys]]\nid = \"bench\"\nsecret_sha256 = \"{hash}\"\nscopes = [\"admin\"]\n"
    );
    Ok((key, toml))
}

/// One keep-alive connection to the API.
pub(crate) struct ApiConn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    key: String,
}

impl ApiConn {
    pub(crate) async fn open(addr: SocketAddr, key: &str) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr).await.context("connecting to the API")?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: BufReader::new(r),
            w,
            key: key.to_string(),
        })
    }

    /// One call: (status, body).
    pub(crate) async fn call(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let req = format!(
            "{method} /api/v1{path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.key,
            body.len()
        );
        self.w.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP answer: {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("the API closed the connection");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.r.read_exact(&mut buf).await?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }

    /// A call that must answer 2xx.
    pub(crate) async fn ok(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let (status, text) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(text)
    }
}

/// What the API senders did.
#[derive(Debug, Default)]
pub(crate) struct Posted {
    /// Messages posted (answered 201).
    pub(crate) acked: AtomicU64,
    /// Refused or failed.
    pub(crate) refused: AtomicU64,
    /// Call times (µs), every call.
    pub(crate) call_us: std::sync::Mutex<Vec<u64>>,
}

/// Bot `k` of the run, a member of `guild` (made through the API).
pub(crate) fn bot(k: usize) -> u64 {
    7_000_000_000 + k as u64
}

/// Makes `senders` bots members of `guild`.
pub(crate) async fn add_bots(addr: SocketAddr, key: &str, guild: u64, senders: usize) -> anyhow::Result<()> {
    let mut c = ApiConn::open(addr, key).await?;
    for k in 0..senders {
        c.ok(
            "PUT",
            &format!("/users/{}", bot(k)),
            &format!("{{\"name\":\"bench bot {k}\"}}"),
        )
        .await?;
        c.ok("PUT", &format!("/guilds/{guild}/members/{}", bot(k)), "").await?;
    }
    Ok(())
}

/// `senders` tasks, each on its own connection, posting `per_sender` messages as its bot
/// into `channel`, one every `every`, from `start` (phases spread over the period); each
/// content starts with the send time in µs since `epoch`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn post(
    addr: SocketAddr,
    key: &str,
    channel: u64,
    senders: usize,
    every: Duration,
    per_sender: u64,
    nonce_base: u64,
    start: Instant,
    epoch: Instant,
) -> (Arc<Posted>, Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let posted = Arc::new(Posted::default());
    let tasks = (0..senders)
        .map(|k| {
            let (key, posted) = (key.to_string(), posted.clone());
            tokio::spawn(async move {
                let mut c = ApiConn::open(addr, &key).await?;
                let phase = every.mul_f64(k as f64 / senders as f64);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(start) + phase, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut times = Vec::with_capacity(per_sender as usize);
                for n in 0..per_sender {
                    tick.tick().await;
                    let t = Instant::now();
                    let body = format!(
                        "{{\"author_id\":\"{}\",\"nonce\":\"{}\",\"content\":\"{} api sender {k} message {n}\"}}",
                        bot(k),
                        nonce_base + n + 1,
                        t.saturating_duration_since(epoch).as_micros()
                    );
                    match c.call("POST", &format!("/channels/{channel}/messages"), &body).await {
                        Ok((201, _)) => posted.acked.fetch_add(1, Relaxed),
                        Ok(_) | Err(_) => posted.refused.fetch_add(1, Relaxed),
                    };
                    times.push(t.elapsed().as_micros() as u64);
                }
                posted.call_us.lock().unwrap_or_else(|p| p.into_inner()).extend(times);
                Ok(())
            })
        })
        .collect();
    (posted, tasks)
}
