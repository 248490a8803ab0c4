//! The quinn-proto engine on loopback against quinn clients: many connections served by one
//! loop, streams echoed, idle connections timed out, application closes seen.

use std::sync::Arc;
use std::time::Duration;

use quaver::engine::{App, AppEvent, Engine, Io, Read};
use quinn_proto::{ConnectionError, ConnectionHandle, Dir, StreamId};

/// Echoes every bidirectional stream; remembers how connections ended.
#[derive(Default)]
struct Echo {
    lost: Vec<(ConnectionHandle, ConnectionError)>,
    connected: usize,
    /// Each connection's first stream whose first byte is `b'B'`: it takes broadcasts.
    first_stream: Vec<(ConnectionHandle, StreamId)>,
    /// Streams whose first byte has been read (only that byte says broadcast: a later read
    /// that happens to start with `b'B'` is data to echo).
    started: std::collections::HashSet<(ConnectionHandle, StreamId)>,
}

impl App for Echo {
    /// Sent to every connection's first stream (see the broadcast test).
    type Command = bytes::Bytes;

    fn on_command(&mut self, msg: bytes::Bytes, conns: &mut quaver::engine::Conns<'_>) {
        for (ch, stream) in &self.first_stream {
            if let Some(mut io) = conns.io(*ch) {
                io.write(*stream, &msg);
            }
        }
    }

    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>) {
        match event {
            AppEvent::Connected => self.connected += 1,
            // What came with the opening is read at once (no Readable follows for it).
            AppEvent::StreamOpened => {
                while let Some(id) = io.accept(Dir::Bi) {
                    self.readable(ch, id, io);
                }
            }
            AppEvent::Readable(id) => self.readable(ch, id, io),
            AppEvent::Writable(_) | AppEvent::Stopped(_) | AppEvent::Datagrams => {}
            AppEvent::Lost(e) => self.lost.push((ch, e)),
        }
    }
}

impl Echo {
    fn readable(&mut self, ch: ConnectionHandle, id: StreamId, io: &mut Io<'_>) {
        let broadcast = self.first_stream.contains(&(ch, id));
        let first = !self.started.contains(&(ch, id));
        match io.read(id) {
            Read::Data(_) if broadcast => {}
            Read::Data(chunks) if first && chunks.first().and_then(|c| c.first()) == Some(&b'B') => {
                self.started.insert((ch, id));
                self.first_stream.push((ch, id));
            }
            Read::Data(chunks) => {
                if chunks.iter().any(|c| !c.is_empty()) {
                    self.started.insert((ch, id));
                }
                write_all(io, id, &chunks);
            }
            Read::Finished(chunks) => {
                if !broadcast {
                    write_all(io, id, &chunks);
                }
                io.finish(id);
            }
            Read::Reset(_) => {}
        }
    }
}

fn write_all(io: &mut Io<'_>, id: StreamId, chunks: &[bytes::Bytes]) {
    for c in chunks {
        // Test payloads fit the stream window: a short write would be a bug here.
        assert_eq!(io.write(id, c), c.len(), "echo within the window");
    }
}

fn tls() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"echo".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"echo".to_vec()];
    (server, client)
}

struct Running {
    addr: std::net::SocketAddr,
    sender: quaver::engine::Sender<bytes::Bytes>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Engine<Echo>>,
    client: quinn::ClientConfig,
}

async fn start(idle: Duration) -> Running {
    start_limited(idle, quaver::engine::Limits::default()).await
}

async fn start_limited(idle: Duration, limits: quaver::engine::Limits) -> Running {
    let (server, client) = tls();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut engine = Engine::new(
        socket,
        quaver::engine::server_config(server, idle).unwrap(),
        Echo::default(),
    )
    .unwrap();
    engine.set_limits(limits);
    let addr = engine.local_addr().unwrap();
    let sender = engine.sender();
    let (stop, done) = run_until_stopped(engine);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    Running {
        addr,
        sender,
        stop,
        done,
        client: quinn::ClientConfig::new(Arc::new(crypto)),
    }
}

/// Runs `engine` in a task until the sender is used (or dropped); the task gives it back.
fn run_until_stopped(
    mut engine: Engine<Echo>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Engine<Echo>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        engine
            .run(async {
                let _ = stopped.await;
            })
            .await;
        engine
    });
    (stop, done)
}

fn client_endpoint(cfg: &quinn::ClientConfig) -> quinn::Endpoint {
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    e.set_default_client_config(cfg.clone());
    e
}

#[tokio::test]
async fn one_loop_serves_many_connections_and_echoes_their_streams() {
    let r = start(Duration::from_secs(10)).await;
    let clients = 20;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let endpoint = client_endpoint(&r.client);
        let addr = r.addr;
        tasks.push(tokio::spawn(async move {
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            let mut got = Vec::new();
            for s in 0..3u8 {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let payload: Vec<u8> = (0..20_000u32).map(|b| (b as u8) ^ (i as u8) ^ s).collect();
                send.write_all(&payload).await.unwrap();
                send.finish().unwrap();
                let back = recv.read_to_end(1 << 20).await.unwrap();
                got.push(back == payload);
            }
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            got
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(20), t).await.unwrap().unwrap(),
            vec![true; 3]
        );
    }
    // The closes reach the loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = r.stop.send(());
    let engine = r.done.await.unwrap();
    assert_eq!(engine.stats().accepted, clients);
    let mut engine = engine;
    let app = engine.app();
    assert_eq!(app.connected, clients as usize);
    assert_eq!(app.lost.len(), clients as usize, "every application close was seen");
    assert!(
        app.lost
            .iter()
            .all(|(_, e)| matches!(e, ConnectionError::ApplicationClosed(_)))
    );
}

/// A reply far larger than one turn's datagram budget still arrives whole: the connection
/// stays due and goes on in the next turns.
#[tokio::test]
async fn a_large_echo_spans_many_turns() {
    let r = start(Duration::from_secs(10)).await;
    let endpoint = client_endpoint(&r.client);
    let conn = endpoint.connect(r.addr, "localhost").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let payload: Vec<u8> = (0..600_000u32).map(|b| (b % 251) as u8).collect();
    let writer = async {
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
    };
    let (_, back) = tokio::join!(writer, recv.read_to_end(1 << 21));
    assert!(back.unwrap() == payload);
    conn.close(0u32.into(), b"");
    let _ = r.stop.send(());
    let engine = r.done.await.unwrap();
    assert!(engine.stats().turns > 1);
}

/// Commands from another task reach every connection through the loop's one queue.
#[tokio::test]
async fn a_command_from_another_task_is_written_to_every_connection() {
    let r = start(Duration::from_secs(10)).await;
    let sender = {
        // The engine moved into its task; its sender was taken before (see `start`).
        r.sender.clone()
    };
    let mut conns = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..10 {
        let endpoint = client_endpoint(&r.client);
        let conn = endpoint.connect(r.addr, "localhost").unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"B").await.unwrap();
        streams.push((send, recv));
        conns.push((endpoint, conn));
    }
    // Until the loop has seen every registration (it answers nothing on these streams).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..5u8 {
        sender.send(bytes::Bytes::from(vec![n; 100])).unwrap();
    }
    for (_, recv) in &mut streams {
        let mut got = vec![0u8; 500];
        tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        let want: Vec<u8> = (0..5u8).flat_map(|n| vec![n; 100]).collect();
        assert_eq!(got, want, "every broadcast, in order, once");
    }
    let _ = r.stop.send(());
    let _ = r.done.await.unwrap();
}

/// Past the cap, connection attempts are refused; with many handshakes in flight, clients
/// are made to prove their address first (a stateless retry) and still get in.
#[tokio::test]
async fn admission_caps_connections_and_retries_under_handshake_load() {
    let capped = start_limited(
        Duration::from_secs(10),
        quaver::engine::Limits {
            max_connections: 2,
            retry_above_handshakes: 1000,
            ..Default::default()
        },
    )
    .await;
    let endpoint = client_endpoint(&capped.client);
    let a = endpoint.connect(capped.addr, "localhost").unwrap().await.unwrap();
    let b = endpoint.connect(capped.addr, "localhost").unwrap().await.unwrap();
    let third = endpoint.connect(capped.addr, "localhost").unwrap().await;
    assert!(
        matches!(third, Err(quinn::ConnectionError::ConnectionClosed(_))),
        "{third:?}"
    );
    drop((a, b));
    let _ = capped.stop.send(());
    let engine = capped.done.await.unwrap();
    assert_eq!((engine.stats().accepted, engine.stats().refused), (2, 1));

    // Every attempt counts as under load. The first is retried, then accepted; the server
    // gives it address-validation tokens (NEW_TOKEN), which the client's shared token store
    // presents on its next attempts — those are validated and accepted without a retry.
    let retrying = start_limited(
        Duration::from_secs(10),
        quaver::engine::Limits {
            max_connections: 100,
            retry_above_handshakes: 0,
            ..Default::default()
        },
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let endpoint = client_endpoint(&retrying.client);
        conns.push(endpoint.connect(retrying.addr, "localhost").unwrap().await.unwrap());
    }
    let (mut send, mut recv) = conns[0].open_bi().await.unwrap();
    send.write_all(b"after a retry").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(100).await.unwrap(), b"after a retry");
    drop(conns);
    let _ = retrying.stop.send(());
    let engine = retrying.done.await.unwrap();
    assert_eq!((engine.stats().retried, engine.stats().accepted), (1, 3));
}

#[tokio::test]
async fn idle_connections_time_out_on_the_loops_timer() {
    let r = start(Duration::from_millis(500)).await;
    let endpoint = client_endpoint(&r.client);
    let conn = endpoint.connect(r.addr, "localhost").unwrap().await.unwrap();
    // The client says nothing: the engine's idle timer (one heap for all) ends it.
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(matches!(reason, quinn::ConnectionError::TimedOut), "{reason:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = r.stop.send(());
    let mut engine = r.done.await.unwrap();
    assert_eq!(engine.connections(), 0, "the drained connection is gone from the loop");
    assert!(matches!(engine.app().lost.as_slice(), [(_, ConnectionError::TimedOut)]));
}

/// Two loops on one port (SO_REUSEPORT): a client whose address keeps changing lands on
/// either loop's socket, and the one that does not own its connection hands the datagrams
/// to the one that does (the connection IDs say which) — the connection lives on.
#[tokio::test]
async fn two_loops_on_one_port_keep_a_migrating_connection() {
    let (server, client) = tls();
    let config = quaver::engine::server_config(server, Duration::from_secs(10)).unwrap();
    let sockets = quaver::engine::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = sockets[0].local_addr().unwrap();
    let mut loops = Vec::new();
    for (socket, sharding) in sockets.into_iter().zip(quaver::engine::Sharding::for_loops(2)) {
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        let engine = Engine::sharded(socket, config.clone(), Echo::default(), sharding).unwrap();
        loops.push(run_until_stopped(engine));
    }
    let endpoint = client_endpoint(&quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap(),
    )));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    for round in 0..24u8 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[round; 100]).await.unwrap();
        send.finish().unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16))
            .await
            .unwrap_or_else(|_| panic!("no echo in round {round}"))
            .unwrap();
        assert_eq!(back, vec![round; 100]);
        // A new address (port) for the next round, as after a NAT rebinding.
        endpoint
            .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let mut stats = Vec::new();
    for (stop, done) in loops {
        let _ = stop.send(());
        stats.push(done.await.unwrap().stats());
    }
    assert_eq!(stats.iter().map(|s| s.accepted).sum::<u64>(), 1);
    // 24 addresses: all hashed to the owning loop's socket has odds of 2^-24.
    assert!(
        stats.iter().map(|s| s.forwarded).sum::<u64>() > 0,
        "some datagrams crossed loops: {stats:?}"
    );
}

/// A client engine (the load generator's, `bench/src/swarm.rs`): its connections are
/// started from a command, each sends one stream and reads the echo on the same loop.
#[derive(Default)]
struct Dialer {
    config: Option<quinn_proto::ClientConfig>,
    /// By connection: what it sent, what came back.
    streams: std::collections::HashMap<ConnectionHandle, (Vec<u8>, Vec<u8>)>,
    /// Echoes that ended (read to their finish), for the test to wait on.
    echoed: Arc<std::sync::atomic::AtomicUsize>,
    lost: usize,
}

impl App for Dialer {
    /// Connect this many times to the address.
    type Command = (std::net::SocketAddr, usize);

    fn on_command(&mut self, (addr, n): Self::Command, conns: &mut quaver::engine::Conns<'_>) {
        let config = self.config.clone().expect("set before the first command");
        for _ in 0..n {
            let ch = conns.connect(config.clone(), addr, "localhost").unwrap();
            self.streams.insert(ch, Default::default());
        }
    }

    fn on_event(&mut self, ch: ConnectionHandle, event: AppEvent, io: &mut Io<'_>) {
        let Some((sent, back)) = self.streams.get_mut(&ch) else {
            return;
        };
        match event {
            AppEvent::Connected => {
                let id = io.open(Dir::Bi).expect("a stream");
                *sent = (0..5_000u32).map(|b| (b as u8) ^ (ch.0 as u8)).collect();
                assert_eq!(io.write(id, sent), sent.len(), "within the window");
                io.finish(id);
            }
            AppEvent::Readable(id) => match io.read(id) {
                Read::Data(c) => c.iter().for_each(|c| back.extend_from_slice(c)),
                Read::Finished(c) => {
                    c.iter().for_each(|c| back.extend_from_slice(c));
                    self.echoed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    io.close(0, b"done");
                }
                Read::Reset(_) => {}
            },
            AppEvent::Lost(e) => {
                assert_eq!(e, quinn_proto::ConnectionError::LocallyClosed, "closed by this side");
                self.lost += 1;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_client_engine_connects_out_and_reads_on_its_loop() {
    let r = start(Duration::from_secs(10)).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echoed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dialer = Dialer {
        // quinn's client config is quinn-proto's.
        config: Some(r.client.clone()),
        echoed: echoed.clone(),
        ..Default::default()
    };
    let mut client = Engine::client(socket, dialer).unwrap();
    let tx = client.sender();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        client
            .run(async {
                let _ = stopped.await;
            })
            .await;
        client
    });
    let n = 12;
    tx.send((r.addr, n)).map_err(|_| "queued").unwrap();
    let limit = std::time::Instant::now() + Duration::from_secs(20);
    while echoed.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(std::time::Instant::now() < limit, "every echo within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The closes reach the server, and the client's connections finish draining (three
    // PTOs: a few tens of ms on idle loopback, hundreds on a loaded two-core machine, which
    // a 300 ms wait once missed in the full suite).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let _ = stop.send(());
    let mut client = done.await.unwrap();
    let _ = r.stop.send(());
    let mut server = r.done.await.unwrap();
    let connections = client.connections();
    let dialer = client.app();
    assert_eq!(dialer.streams.len(), n);
    for (sent, back) in dialer.streams.values() {
        assert_eq!(sent.len(), 5_000);
        assert!(back == sent, "the echo is what was sent");
    }
    // quinn-proto reports no loss for a close of our own; the loop reports each drained
    // connection's end once (`LocallyClosed`), then drops it.
    assert_eq!(
        dialer.lost, n,
        "each connection closed here ends once for the application"
    );
    assert_eq!(connections, 0, "closed connections are gone from the loop");
    assert_eq!(server.stats().accepted, n as u64);
    assert_eq!(server.app().lost.len(), n, "the server saw every close");
    assert_eq!(client.stats().accepted, 0, "a client engine accepts nothing");
}

#[test]
fn the_ports_sockets_get_the_buffers_asked_for_or_the_kernels_cap() {
    let cap = |f: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{f}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(usize::MAX)
    };
    for loops in [1, 2] {
        for s in quaver::engine::bind("127.0.0.1:0".parse().unwrap(), loops).unwrap() {
            let b = quaver::engine::SocketBuffers::of(&s).unwrap();
            // Linux grants min(asked, cap) and reports twice that.
            let want = |max: usize| quaver::engine::SOCKET_BUFFER.min(max) * 2;
            assert_eq!(b.recv, want(cap("rmem_max")), "{loops} loops: receive buffer");
            assert_eq!(b.send, want(cap("wmem_max")), "{loops} loops: send buffer");
            assert_eq!(
                b.short(),
                cap("rmem_max") < quaver::engine::SOCKET_BUFFER || cap("wmem_max") < quaver::engine::SOCKET_BUFFER
            );
        }
    }
}
