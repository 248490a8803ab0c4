//! `transport`: what QUIC fan-out itself costs the server, without Quaver's sessions. A
//! server process writes one record (`--bytes`, default 120, like a chat event) at `--rate`
//! records/s into one stream of each of `--connections` connections, either with quinn's
//! high-level API — a task per connection writing its stream, as the gateway's lane writers
//! did before the engine — or with the engine (`quaver::engine`: one loop, no task per connection). The
//! figure is server CPU per delivered record, read from /proc; the clients measure latency.
//!
//! The server is this binary again (`transport --serve …`), so its CPU is its own. A third
//! server, `floor`, is the same fan-out on a bare loop over quinn-proto (`floor.rs`): the
//! floor under the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use quaver::engine::{App, AppEvent, Conns, Engine, Io, Read};
use quinn_proto::{ConnectionHandle, Dir, StreamId};
use tokio::io::AsyncBufReadExt;

/// Which server writes the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// quinn's high-level API, a task per connection.
    Quinn,
    /// The engine over quinn-proto, one loop.
    Engine,
    /// The floor: a bare loop over quinn-proto and quinn-udp on one thread (`floor.rs`).
    Floor,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    /// Records written to each connection.
    pub(crate) records: u64,
    /// Records received, over all connections.
    pub(crate) delivered: u64,
    /// Server CPU per delivered record, µs.
    pub(crate) cpu_us: f64,
    /// Latency percentiles, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// Server resident memory per connection (after all connected, above before), KiB.
    pub(crate) kib_per_connection: f64,
    /// ACK frames the server had received before the last record (engine only; 0 for quinn).
    pub(crate) acks: u64,
}

fn tls() -> anyhow::Result<(rustls::ServerConfig, Vec<u8>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let der = cert.cert.der().to_vec();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone().into()], key)?;
    server.alpn_protocols = vec![b"bench".to_vec()];
    Ok((server, der))
}

/// A record: its send time (ns since the epoch) and seq, padded to `bytes`.
pub(crate) fn record(seq: u32, bytes: usize) -> Bytes {
    let mut r = vec![0u8; bytes.max(12)];
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    r[..8].copy_from_slice(&nanos.to_be_bytes());
    r[8..12].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(r)
}

/// The engine side: remembers each connection's stream and writes every record to all.
struct Fanout {
    streams: Vec<(ConnectionHandle, StreamId)>,
    /// ACK frames the connections had received when last asked (an empty command asks).
    acks: Arc<std::sync::atomic::AtomicU64>,
    registered: Arc<AtomicUsize>,
    short_writes: Arc<AtomicUsize>,
}

impl App for Fanout {
    type Command = Bytes;

    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>) {
        if let AppEvent::StreamOpened = event {
            while let Some(id) = io.accept(Dir::Bi) {
                // The client's one byte says hello; it is read and dropped.
                let _: Read = io.read(id);
                self.streams.push((ch, id));
                self.registered.fetch_add(1, Ordering::Relaxed);
            }
        } else if let AppEvent::Readable(id) = event {
            let _ = io.read(id);
        }
    }

    fn on_command(&mut self, record: Bytes, conns: &mut Conns<'_>) {
        if record.is_empty() {
            let acks: u64 = self
                .streams
                .iter()
                .filter_map(|(ch, _)| conns.io(*ch).map(|mut io| io.stats().frame_rx.acks))
                .sum();
            self.acks.fetch_add(acks, Ordering::Relaxed);
            return;
        }
        for (ch, id) in &self.streams {
            if let Some(mut io) = conns.io(*ch)
                && io.write(*id, &record) < record.len()
            {
                self.short_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Engine loops (SO_REUSEPORT on one port).
    pub(crate) shards: usize,
    /// Connections.
    pub(crate) connections: usize,
    /// Records per second.
    pub(crate) rate: f64,
    /// Seconds of records.
    pub(crate) seconds: f64,
    /// Bytes per record.
    pub(crate) bytes: usize,
}

/// The server process: prints `cert=`, `addr=`, then `start` and `end` around the records.
pub(crate) async fn serve(kind: Kind, p: Params) -> anyhow::Result<()> {
    let Params {
        shards,
        connections,
        rate,
        seconds,
        bytes,
    } = p;
    let (server_tls, der) = tls()?;
    println!("cert={}", hex::encode(&der));
    let registered = Arc::new(AtomicUsize::new(0));
    let total = (rate * seconds).round() as u32;
    let every = Duration::from_secs_f64(1.0 / rate);
    match kind {
        Kind::Engine => {
            let config = quaver::engine::server_config(server_tls, Duration::from_secs(30))?;
            let short = Arc::new(AtomicUsize::new(0));
            // One loop per shard, each on its own socket bound to the same port
            // (SO_REUSEPORT: the kernel keeps each client's packets on one socket).
            let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut port = 0;
            let mut senders = Vec::new();
            let mut stops = Vec::new();
            let mut loops = Vec::new();
            for s in quaver::engine::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), shards.max(1))? {
                s.set_nonblocking(true)?;
                port = s.local_addr()?.port();
                let app = Fanout {
                    acks: acks.clone(),
                    streams: Vec::new(),
                    registered: registered.clone(),
                    short_writes: short.clone(),
                };
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                stops.push(stop);
                let (sender_tx, sender_rx) = std::sync::mpsc::channel();
                let config = config.clone();
                // As the server runs its loops (gateway/wire.rs): each on a thread of its own
                // with a current-thread runtime. (Run as a task of this multi-thread runtime,
                // the loop was woken across threads for every batch of ACKs: 50,000 context
                // switches in 7 s against the floor's 5,800, a third more CPU per record.)
                loops.push(std::thread::spawn(move || -> anyhow::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async move {
                        let socket = tokio::net::UdpSocket::from_std(s)?;
                        let mut engine = Engine::new(socket, config, app)?;
                        let _ = sender_tx.send(engine.sender());
                        let _ = engine
                            .run(async {
                                let _ = stopped.await;
                            })
                            .await;
                        anyhow::Ok(())
                    })
                }));
                senders.push(sender_rx.recv().context("the engine's loop did not start")?);
            }
            println!("addr=127.0.0.1:{port}");
            wait_registered(&registered, connections).await?;
            println!("start");
            let mut tick = tokio::time::interval(every);
            for seq in 0..total {
                tick.tick().await;
                if seq + 1 == total {
                    // The ACK frames the server has received, while every connection is up
                    // (the clients leave after the last record).
                    for tx in &senders {
                        let _ = tx.send(Bytes::new());
                    }
                }
                let r = record(seq, bytes);
                for tx in &senders {
                    tx.send(r.clone()).map_err(|_| anyhow::anyhow!("engine gone"))?;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!(
                "end short_writes={} acks={}",
                short.load(Ordering::Relaxed),
                acks.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            for stop in stops {
                let _ = stop.send(());
            }
            for l in loops {
                let _ = l.join();
            }
        }
        Kind::Floor => {
            tokio::task::spawn_blocking(move || crate::floor::run(server_tls, p)).await??;
        }
        Kind::Quinn => {
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?;
            let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
            cfg.transport_config(Arc::new(transport));
            let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse()?)?;
            println!("addr={}", endpoint.local_addr()?);
            let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(1024);
            let accept = {
                let (tx, registered) = (tx.clone(), registered.clone());
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    while let Some(incoming) = endpoint.accept().await {
                        let mut rx = tx.subscribe();
                        let registered = registered.clone();
                        tokio::spawn(async move {
                            let Ok(conn) = incoming.await else { return };
                            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                                return;
                            };
                            let mut hello = [0u8; 1];
                            if recv.read_exact(&mut hello).await.is_err() {
                                return;
                            }
                            registered.fetch_add(1, Ordering::Relaxed);
                            while let Ok(r) = rx.recv().await {
                                if send.write_all(&r).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                })
            };
            wait_registered(&registered, connections).await?;
            println!("start");
            let mut tick = tokio::time::interval(every);
            for seq in 0..total {
                tick.tick().await;
                let _ = tx.send(record(seq, bytes));
            }
            println!("end short_writes=0 acks=0");
            tokio::time::sleep(Duration::from_secs(2)).await;
            accept.abort();
            endpoint.close(0u32.into(), b"");
        }
    }
    Ok(())
}

async fn wait_registered(registered: &AtomicUsize, connections: usize) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    while registered.load(Ordering::Relaxed) < connections {
        anyhow::ensure!(Instant::now() < end, "clients did not all connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One measured run: starts the server process, connects the clients, collects.
pub(crate) async fn run(kind: Kind, p: Params) -> anyhow::Result<Report> {
    let Params {
        shards,
        connections,
        rate,
        seconds,
        bytes,
    } = p;
    let exe = std::env::current_exe()?;
    let kind_arg = match kind {
        Kind::Quinn => "quinn",
        Kind::Engine => "engine",
        Kind::Floor => "floor",
    };
    let mut child = tokio::process::Command::new(exe)
        .args(["transport", "--serve", kind_arg, "--shards", &shards.to_string()])
        .args(["--connections", &connections.to_string(), "--rate", &rate.to_string()])
        .args(["--seconds", &seconds.to_string(), "--bytes", &bytes.to_string()])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("server pid")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> anyhow::Result<String> { lines.next_line().await?.context("server ended early") };
    let cert = hex::decode(next().await?.strip_prefix("cert=").context("cert line")?)?;
    let addr: std::net::SocketAddr = next().await?.strip_prefix("addr=").context("addr line")?.parse()?;
    let rss0 = crate::server::rss_bytes(pid);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.into())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"bench".to_vec()];
    let client_cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?));
    let expected = (rate * seconds).round() as u64;
    // 32 client endpoints (sockets), many connections each: with --shards, the kernel
    // spreads the client sockets over the shards.
    let endpoints: Vec<quinn::Endpoint> = (0..32)
        .map(|_| {
            let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().expect("a literal address"))?;
            e.set_default_client_config(client_cfg.clone());
            Ok(e)
        })
        .collect::<anyhow::Result<_>>()?;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..connections {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let (latencies, delivered, gate) = (latencies.clone(), delivered.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok();
            let conn = endpoint.connect(addr, "localhost")?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"B").await?;
            drop(permit);
            let mut buf = vec![0u8; bytes.max(12)];
            let mut mine = Vec::with_capacity(expected as usize);
            for _ in 0..expected {
                if tokio::time::timeout(Duration::from_secs(30), recv.read_exact(&mut buf))
                    .await
                    .is_err()
                {
                    break;
                }
                let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                mine.push(now.saturating_sub(sent));
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            latencies.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            conn.close(0u32.into(), b"");
            anyhow::Ok(())
        }));
    }
    let start_line = next().await?;
    anyhow::ensure!(start_line == "start", "unexpected {start_line}");
    let cpu0 = crate::server::cpu_seconds(pid);
    let rss1 = crate::server::rss_bytes(pid);
    let end_line = next().await?;
    // The last records' packets leave after the last send: a second more, for both kinds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu1 = crate::server::cpu_seconds(pid);
    let field = |name: &str| -> u64 {
        end_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    let short = field("short_writes");
    let acks = field("acks");
    anyhow::ensure!(short == 0, "{short} short writes");
    for t in tasks {
        t.await??;
    }
    let _ = child.wait().await;
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_unstable();
    let at = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    let delivered = delivered.load(Ordering::Relaxed) as u64;
    Ok(Report {
        records: expected,
        delivered,
        cpu_us: (cpu1 - cpu0) * 1e6 / delivered.max(1) as f64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        kib_per_connection: rss1.saturating_sub(rss0) as f64 / 1024.0 / connections.max(1) as f64,
        acks,
    })
}
