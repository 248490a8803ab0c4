//! SIGTERM against a server process: a node with nobody connected exits at once, whatever
//! its drain timeout — after clients that closed cleanly, after clients that vanished
//! (their sessions left resumable), and with nobody ever connected. Rolling deploys of a
//! cluster depend on it; sessions left resumable resume on another node or catch up by seq.
//!
//! And a node SIGKILLed and started again: its clients learn at their next packet (a
//! stateless reset under the key kept in the store), and reconnect resuming TLS with the
//! tickets the first process gave them.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use quaver_client::{Transport, Trust, connect};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Well under a second, with room for a loaded CI machine (the drain timeout is 5 s).
const PROMPT: Duration = Duration::from_millis(900);

struct Node {
    child: Child,
    quic: std::net::SocketAddr,
    http: std::net::SocketAddr,
    hash: [u8; 32],
    _dir: std::path::PathBuf,
}

async fn node(ping_timeout_ms: u64) -> Node {
    node_at(tempdir("shutdown"), ping_timeout_ms, None).await
}

/// A server process with its data and certificates in `dir`, on these QUIC and HTTP
/// addresses (any free ones when `None`).
async fn node_at(
    dir: std::path::PathBuf,
    ping_timeout_ms: u64,
    at: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
) -> Node {
    let (quic, http) = at.map_or(("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()), |(q, h)| {
        (q.to_string(), h.to_string())
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_quaver"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("JWT_SECRET", SECRET)
        .env("QUAVER_LISTEN", quic)
        .env("QUAVER_HTTP_LISTEN", http)
        .env("QUAVER_API_LISTEN", "127.0.0.1:0")
        .env("QUAVER_DATA_DIR", dir.join("data"))
        .env("QUAVER_CERT_DIR", dir.join("certs"))
        .env("QUAVER_DRAIN_TIMEOUT", "5s")
        .env("SOCKET_PING_INTERVAL", format!("{}", ping_timeout_ms / 2))
        .env("SOCKET_PING_TIMEOUT", format!("{ping_timeout_ms}"))
        .env("QUAVER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server process starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let (quic, http, _) = await_addresses(&mut lines).await;
    // Keep reading its log so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (_, body) = http_get(http, "/cert-hash").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("cert-hash is JSON");
    let hex = v["hash"].as_str().expect("hash");
    let mut hash = [0u8; 32];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    Node {
        child,
        quic,
        http,
        hash,
        _dir: dir,
    }
}

impl Node {
    fn client(&self, transport: Transport, user: u64, addr: Option<std::net::SocketAddr>) -> quaver_client::Config {
        let mut c = quaver_client::Config::new(addr.unwrap_or(self.quic), transport, Trust::Hashes(vec![self.hash]));
        c.token = Some(token(user));
        c
    }

    async fn sessions(&self) -> u64 {
        self.metric("quaver_sessions{").await
    }

    /// The sum of the metric lines that start with `prefix`.
    async fn metric(&self, prefix: &str) -> u64 {
        let (_, m) = http_get(self.http, "/metrics").await;
        m.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Sends SIGTERM and returns how long the process took to exit (and that it exited 0).
    async fn terminate(mut self) -> Duration {
        let pid = self.child.id().expect("running").to_string();
        let t0 = Instant::now();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits within 15 s")
            .expect("wait works");
        assert!(status.success(), "exit status {status:?}");
        t0.elapsed()
    }
}

async fn no_sessions(n: &Node) {
    let end = Instant::now() + Duration::from_secs(10);
    while n.sessions().await > 0 {
        assert!(Instant::now() < end, "sessions still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_with_nobody_ever_connected_exits_at_once() {
    let n = node(20_000).await;
    let took = n.terminate().await;
    eprintln!("exit after SIGTERM: {took:?}");
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn sigterm_after_clients_closed_cleanly_exits_at_once() {
    let n = node(20_000).await;
    for (user, transport) in [(1, Transport::Quic), (2, Transport::WebTransport)] {
        let c = connect(&n.client(transport, user, None)).await.expect("connects");
        // A session that did something: lanes open, a guild, a message, voice signalling.
        let mut chat = c.open_lane(quaver_proto::Lane::Chat).await.expect("chat lane");
        let _presence = c.open_lane(quaver_proto::Lane::Presence).await.expect("presence lane");
        let _voice = c.open_lane(quaver_proto::Lane::Voice).await.expect("voice lane");
        let r = chat
            .request(quaver_proto::RequestBody::CreateGuild { name: "g".into() })
            .await
            .expect("answered");
        assert!(r.is_ok(), "{r:?}");
        let info = c.fetch(quaver_proto::FetchRequest::ServerInfo).await.expect("fetch");
        assert!(info.is_ok());
        c.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.closed()).await;
    }
    no_sessions(&n).await;
    let took = n.terminate().await;
    eprintln!("exit after SIGTERM: {took:?}");
    assert!(took < PROMPT, "took {took:?}");
}

#[tokio::test]
async fn sigterm_with_only_resumable_sessions_left_exits_at_once() {
    // Clients that vanished: their connections time out (1 s here) and leave sessions the
    // server keeps for the resume window. Those must not hold the shutdown.
    let n = node(1_000).await;
    let relay = Relay::start(n.quic).await;
    let mut clients = Vec::new();
    for (user, transport) in [(1, Transport::Quic), (2, Transport::WebTransport)] {
        clients.push(
            connect(&n.client(transport, user, Some(relay.addr)))
                .await
                .expect("connects"),
        );
    }
    relay.cut();
    no_sessions(&n).await;
    let took = n.terminate().await;
    assert!(took < PROMPT, "took {took:?}");
    drop(clients);
}

#[tokio::test]
async fn sigterm_with_clients_that_leave_on_goaway_exits_when_they_do() {
    let n = node(20_000).await;
    let mut c = connect(&n.client(Transport::Quic, 1, None)).await.expect("connects");
    let pid = n.child.id().expect("running").to_string();
    let waiter = tokio::spawn(n.terminate());
    // The client leaves as soon as it is told to go away.
    match tokio::time::timeout(Duration::from_secs(5), c.next_control()).await {
        Ok(Ok(quaver_proto::ServerControl::Goaway(_))) => c.close(),
        other => panic!("expected Goaway from {pid}, got {other:?}"),
    }
    let took = waiter.await.expect("terminate");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn after_a_sigkill_and_restart_clients_are_reset_at_once_and_resume_tls() {
    const ACCEPTED: &str = "quaver_tls_tickets_accepted_total ";
    let dir = tempdir("restart");
    let mut n = node_at(dir.clone(), 20_000, None).await;
    let cfg = n.client(Transport::Quic, 1, None);
    // The first connection is a full handshake; the second resumes with its ticket.
    let c = connect(&cfg).await.expect("connects");
    assert_eq!(n.metric(ACCEPTED).await, 0);
    c.close();
    let c = connect(&cfg).await.expect("connects again");
    assert_eq!(n.metric(ACCEPTED).await, 1, "the second handshake resumed TLS");
    let mut chat = c.open_lane(quaver_proto::Lane::Chat).await.expect("chat lane");

    // SIGKILL: nobody closes anything. The same ports, data and certificates again.
    n.child.kill().await.expect("SIGKILL");
    let (quic, http) = (n.quic, n.http);
    let n = node_at(dir, 20_000, Some((quic, http))).await;
    // The client's next packet draws a stateless reset it recognises: the connection ends
    // now, not at its 20 s idle timeout.
    let t0 = Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        chat.request(quaver_proto::RequestBody::CreateGuild { name: "g".into() }),
    )
    .await
    .expect("the request ends within 5 s");
    assert!(sent.is_err(), "the old connection cannot be answered: {sent:?}");
    tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .expect("the connection is closed");
    eprintln!("old connection ended {:?} after the restart", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    // And the ticket the first process gave opens on the second.
    let c = connect(&cfg).await.expect("connects after the restart");
    assert_eq!(n.metric(ACCEPTED).await, 1, "resumed TLS across the restart");
    // A client with no ticket is a full handshake, as before.
    let other = connect(&n.client(Transport::Quic, 2, None)).await.expect("connects");
    assert_eq!(n.metric(ACCEPTED).await, 1);
    drop((c, other));
    n.terminate().await;
}
