//! `quaver-bench`: the load generator. Each scenario opens real QUIC or WebTransport
//! sessions on loopback, bounded in count and time, and prints a human table and one JSON
//! line. Scenarios so far:
//!
//! - `sessions`: open N sessions (with bounded concurrency), measuring connect→`Ready`
//!   latency, then one lane round trip (`Ping`) on each; with no `--server`, it starts a
//!   server in-process on loopback (the smoke run in CI).
//!
//! The remaining TARGETS.md scenarios (C1 at 10k, F0–F3, P1, T1, R1, V1–V2) are added with
//! the issues that build the features they measure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use quaver_client::{Config, Transport, Trust, connect};
use quaver_proto::{Lane, RequestBody};

#[derive(Parser)]
#[command(name = "quaver-bench", about = "Quaver load generator (loopback only)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Tr {
    Quic,
    Webtransport,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open sessions and measure handshake-to-Ready and lane round-trip latency.
    Sessions(SessionsArgs),
}

#[derive(clap::Args)]
struct SessionsArgs {
    /// Server QUIC address; omitted = start a server in-process.
    #[arg(long)]
    server: Option<SocketAddr>,
    /// Certificate SHA-256 (hex) of --server (from its /cert-hash).
    #[arg(long)]
    cert_hash: Option<String>,
    /// HS256 secret of --server, to mint tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Sessions to open.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Tr::Quic)]
    transport: Tr,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
}

/// Percentiles of a sample, in microseconds.
fn percentiles(mut v: Vec<Duration>) -> [(String, f64); 5] {
    v.sort();
    let at = |q: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e6
    };
    [
        ("p50".into(), at(0.50)),
        ("p90".into(), at(0.90)),
        ("p99".into(), at(0.99)),
        ("p99.9".into(), at(0.999)),
        ("max".into(), at(1.0)),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Sessions(args) => sessions(args).await,
    }
}

async fn sessions(args: SessionsArgs) -> anyhow::Result<()> {
    let SessionsArgs {
        server,
        cert_hash,
        jwt_secret: secret,
        count,
        concurrency,
        transport,
        max_seconds,
    } = args;
    let secret = secret.unwrap_or_else(|| "quaver-bench-secret-0123456789abcdef".into());
    let verifier = Arc::new(quaver::auth::Verifier::hs256(secret.as_bytes())?);
    // In-process server when none is given: loopback, temporary directories.
    let local = match server {
        Some(_) => None,
        None => {
            let dir = std::env::temp_dir().join(format!("quaver-bench-{}", std::process::id()));
            let mut cfg = quaver::config::Config {
                listen: "127.0.0.1:0".parse()?,
                http_listen: "127.0.0.1:0".parse()?,
                data_dir: dir.join("data"),
                ..Default::default()
            };
            cfg.tls.cert_dir = dir.join("certs");
            cfg.auth.jwt_secret = Some(secret.clone());
            Some(quaver::Server::start(cfg).await?)
        }
    };
    let (addr, hash) = match (&local, server) {
        (Some(s), _) => (s.quic_addr, s.cert_hash()),
        (None, Some(a)) => {
            let h = hex::decode(cert_hash.context("--cert-hash is required with --server")?)?;
            (
                a,
                h.try_into()
                    .map_err(|_| anyhow::anyhow!("--cert-hash must be 32 bytes of hex"))?,
            )
        }
        (None, None) => unreachable!("one of the two is set above"),
    };
    let tr = match transport {
        Tr::Quic => Transport::Quic,
        Tr::Webtransport => Transport::WebTransport,
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let gate = gate.clone();
        let verifier = verifier.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            if Instant::now() > deadline {
                return None;
            }
            let mut cfg = Config::new(addr, tr, Trust::Hashes(vec![hash]));
            cfg.token = verifier.mint(i as u64 + 1, None, Duration::from_secs(600)).ok();
            let t0 = Instant::now();
            let c = connect(&cfg).await.ok()?;
            let ready = t0.elapsed();
            let mut lane = c.open_lane(Lane::Chat).await.ok()?;
            let t1 = Instant::now();
            lane.request(RequestBody::Ping { data: vec![0; 16] }).await.ok()?.ok()?;
            let rtt = t1.elapsed();
            Some((ready, rtt, c))
        }));
    }
    let mut readies = Vec::new();
    let mut rtts = Vec::new();
    let mut clients = Vec::new();
    for t in tasks {
        if let Ok(Some((r, p, c))) = t.await {
            readies.push(r);
            rtts.push(p);
            clients.push(c);
        }
    }
    let elapsed = started.elapsed();
    let ok = readies.len();
    println!(
        "scenario sessions: {ok}/{count} sessions ready over {} in {:.2} s",
        tr.name(),
        elapsed.as_secs_f64()
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency (µs)", "p50", "p90", "p99", "p99.9", "max"
    );
    let pr = percentiles(readies);
    let pp = percentiles(rtts);
    for (name, p) in [("connect → Ready", &pr), ("lane ping round trip", &pp)] {
        println!(
            "{name:<24} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            p[0].1, p[1].1, p[2].1, p[3].1, p[4].1
        );
    }
    let json = serde_json::json!({
        "scenario": "sessions", "transport": tr.name(), "requested": count, "ready": ok,
        "seconds": elapsed.as_secs_f64(),
        "ready_us": pr.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "ping_us": pp.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    println!("{json}");
    for c in &clients {
        c.close();
    }
    if let Some(s) = local {
        s.shutdown().await;
    }
    anyhow::ensure!(ok == count, "only {ok} of {count} sessions reached Ready");
    Ok(())
}
