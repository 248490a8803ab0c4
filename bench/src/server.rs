//! Running the server under test as its own process (so its CPU and memory are its own),
//! and reading its CPU time, resident memory and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Which server a run measures.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Start this binary for the run (SQLite in a temporary directory).
    Spawn(PathBuf),
    /// A server that is already running (its configuration must allow the scenario's load:
    /// see `bench/running-server.toml`).
    Running {
        /// Its QUIC address.
        quic: SocketAddr,
        /// Its HTTP address (for `/cert-hash` and `/metrics`).
        http: SocketAddr,
        /// Its pid, to read CPU time and memory from /proc; without it those read as 0.
        pid: Option<u32>,
        /// Its HS256 `JWT_SECRET`, to mint tokens.
        secret: String,
    },
}

/// The server under test: a process started for a run, or a running one.
pub(crate) struct ServerProc {
    /// Its QUIC address.
    pub(crate) quic: SocketAddr,
    /// Its HTTP address.
    pub(crate) http: SocketAddr,
    /// Its server API address (processes the run started).
    pub(crate) api: Option<SocketAddr>,
    /// Its certificate hash.
    pub(crate) hash: [u8; 32],
    /// Its pid (0 when unknown).
    pub(crate) pid: u32,
    child: Option<tokio::process::Child>,
    _dir: Option<TempDir>,
    /// How it was started, to start it again on the same addresses and data.
    spawned: Option<Spawned>,
}

/// What [`ServerProc::restart`] needs to start the same server again.
struct Spawned {
    bin: PathBuf,
    secret: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

/// How [`ServerProc::restart`] stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGKILL: a crash; clients learn of it only from their connections.
    Kill,
    /// SIGTERM: a deploy; the server drains (`Goaway`) and exits.
    Term,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `quaver` binary next to this one (build both with `cargo build --release`).
pub(crate) fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("quaver")))
        .unwrap_or_else(|| PathBuf::from("quaver"))
}

impl ServerProc {
    /// The server of `target`: started with `secret` and the extra TOML configuration, or
    /// the running one (its own secret and configuration apply).
    pub(crate) async fn open(target: &Target, secret: &str, toml: &str) -> anyhow::Result<Self> {
        match target {
            Target::Spawn(bin) => Self::start(bin, secret, toml).await,
            Target::Running { quic, http, pid, .. } => Ok(Self {
                quic: *quic,
                http: *http,
                api: None,
                hash: cert_hash(*http).await?,
                pid: pid.unwrap_or(0),
                child: None,
                _dir: None,
                spawned: None,
            }),
        }
    }

    /// Starts `bin serve` on loopback with SQLite in a temporary directory and the given
    /// extra TOML configuration.
    pub(crate) async fn start(bin: &std::path::Path, secret: &str, toml: &str) -> anyhow::Result<Self> {
        Self::start_env(bin, secret, toml, &[]).await
    }

    /// Like [`ServerProc::start`], with extra environment (a cluster node: `REDIS_URL`,
    /// `DATABASE_URL`, its name).
    pub(crate) async fn start_env(
        bin: &std::path::Path,
        secret: &str,
        toml: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("quaver-bench-srv-{}-{}", std::process::id(), rand_u32()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.toml"), toml)?;
        let spawned = Spawned {
            bin: bin.to_path_buf(),
            secret: secret.to_string(),
            dir: dir.clone(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        let any = "127.0.0.1:0".parse().expect("a literal address");
        let (child, found) = spawned.spawn(any, any, Some(any)).await?;
        Ok(Self {
            quic: found.quic,
            http: found.http,
            api: found.api,
            hash: cert_hash(found.http).await?,
            pid: found.pid,
            child: Some(child),
            _dir: Some(TempDir(dir)),
            spawned: Some(spawned),
        })
    }

    /// Stops the server (as `how` says; waits for it to exit) and starts it again on the
    /// same addresses, data and certificates. Returns when the new process answers, with
    /// the moment it was stopped.
    pub(crate) async fn restart(&mut self, how: Stop) -> anyhow::Result<std::time::Instant> {
        let spawned = self
            .spawned
            .as_ref()
            .context("only a server the run started can be restarted")?;
        let mut child = self.child.take().context("the server is not running")?;
        let stopped = std::time::Instant::now();
        match how {
            Stop::Kill => child.kill().await?,
            Stop::Term => {
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &self.pid.to_string()])
                    .status()?;
                anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
                tokio::time::timeout(Duration::from_secs(60), child.wait())
                    .await
                    .context("the server did not exit within 60 s of SIGTERM")??;
            }
        }
        let (child, found) = spawned.spawn(self.quic, self.http, self.api).await?;
        self.pid = found.pid;
        self.child = Some(child);
        Ok(stopped)
    }

    /// CPU seconds (user + system) the server has used.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid)
    }

    /// Waits until the server is idle (less than 2 % of a core over 250 ms), at most `max`:
    /// set-up traffic (joins, presence fan-out) must not be measured as the scenario's.
    pub(crate) async fn quiesce(&self, max: Duration) {
        if self.pid == 0 {
            // No CPU to watch: give the set-up traffic a fixed moment instead.
            tokio::time::sleep(max.min(Duration::from_secs(3))).await;
            return;
        }
        let end = tokio::time::Instant::now() + max;
        let mut last = self.cpu_seconds();
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.cpu_seconds();
            if now - last < 0.005 {
                return;
            }
            last = now;
        }
    }

    /// Resident memory in bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid)
    }

    /// The most resident memory it has had, in bytes.
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        status_kib(self.pid, "VmHWM:") * 1024
    }

    /// The Prometheus text at /metrics.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        http_get(self.http, "/metrics").await
    }

    /// Stops the server if the run started it.
    pub(crate) async fn stop(mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
    }
}

/// The addresses a started server reported.
struct Found {
    quic: SocketAddr,
    http: SocketAddr,
    api: Option<SocketAddr>,
    pid: u32,
}

impl Spawned {
    /// Starts the server on these addresses (port 0: any) and waits until it reports them.
    async fn spawn(
        &self,
        quic: SocketAddr,
        http: SocketAddr,
        api: Option<SocketAddr>,
    ) -> anyhow::Result<(tokio::process::Child, Found)> {
        let dir = &self.dir;
        let mut child = tokio::process::Command::new(&self.bin)
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("JWT_SECRET", &self.secret)
            .env("QUAVER_CONFIG", dir.join("bench.toml"))
            .env("QUAVER_LISTEN", quic.to_string())
            .env("QUAVER_HTTP_LISTEN", http.to_string())
            .env(
                "QUAVER_API_LISTEN",
                api.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into()),
            )
            .env("QUAVER_DATA_DIR", dir.join("data"))
            .env("QUAVER_CERT_DIR", dir.join("certs"))
            .env("QUAVER_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it: cargo build --release)", self.bin.display()))?;
        let pid = child.id().context("server pid")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (mut quic, mut http, mut api) = (None, None, None);
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let clean: String = strip_ansi(&line);
                for part in clean.split_whitespace() {
                    if let Some(v) = part.strip_prefix("quic=") {
                        quic = v.parse().ok();
                    }
                    if let Some(v) = part.strip_prefix("http=") {
                        http = v.parse().ok();
                    }
                    if let Some(v) = part.strip_prefix("api=") {
                        api = v.parse().ok();
                    }
                }
                if quic.is_some() && http.is_some() {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !found {
            bail!("the server did not report its addresses");
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (quic, http) = (quic.expect("found"), http.expect("found"));
        Ok((child, Found { quic, http, api, pid }))
    }
}

/// The certificate SHA-256 a server publishes at `/cert-hash`.
async fn cert_hash(http: SocketAddr) -> anyhow::Result<[u8; 32]> {
    let body = http_get(http, "/cert-hash").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    hex::decode(v["hash"].as_str().context("hash")?)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("hash length"))
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Minimal HTTP/1.1 GET returning the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// CPU seconds of a process from /proc (clock ticks assumed 100 Hz, as on Linux x86-64); 0
/// for an unknown pid (0: there is no /proc/0).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// Resident memory of a process from /proc, bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// A KiB figure of /proc/<pid>/status (0 when unknown).
fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Percentile from a Prometheus histogram's cumulative buckets (`le` → count), by the
/// upper bound of the bucket holding it.
pub(crate) fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{le=\"")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let v: f64 = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

/// Datagrams this machine's UDP sockets dropped for a full receive buffer so far
/// (`RcvbufErrors` in /proc/net/snmp; machine-wide: on loopback it counts both the server's
/// and the load generator's sockets). 0 where it cannot be read.
pub(crate) fn udp_receive_drops() -> u64 {
    let Ok(t) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let mut rows = t.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
