//! Shared helpers for integration tests: a real server on loopback ports chosen by the OS,
//! in its own temporary directories, and clients configured to trust it.

#![allow(dead_code, unreachable_pub, missing_docs, unused_imports)]

pub mod api;
pub mod hooks;
pub mod redis_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quaver::Server;
use quaver::auth::{Claims, Verifier, unix_now};
use quaver::config::Config;
use quaver_client::{Config as ClientConfig, Transport, Trust};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "quaver-it-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config on loopback with OS-chosen ports and the test secret.
pub fn config() -> Config {
    let dir = tempdir("srv");
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        node_name: "test-node".into(),
        data_dir: dir.join("data"),
        ..Default::default()
    };
    c.tls.cert_dir = dir.join("certs");
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.leeway = Duration::ZERO;
    // Tests end with clients still connected; do not wait the production 10 s for them.
    c.session.drain_timeout = Duration::from_millis(500);
    // QUAVER_TEST_LOOPS=n serves the suite's servers with n event loops on the one port.
    if let Ok(n) = std::env::var("QUAVER_TEST_LOOPS") {
        c.loops = n.parse().expect("QUAVER_TEST_LOOPS is a number");
    }
    c
}

/// A `Ping` answered with its `Pong` on a fresh `lane` of `c`.
pub async fn ping(c: &quaver_client::Client, lane: quaver_proto::Lane) {
    let mut l = c.open_lane(lane).await.expect("lane opens");
    let r = l
        .request(quaver_proto::RequestBody::Ping { data: vec![1, 2, 3] })
        .await
        .expect("request answered");
    assert_eq!(r, Ok(quaver_proto::ResponseBody::Pong { data: vec![1, 2, 3] }));
}

pub async fn start(c: Config) -> Server {
    Server::start(c).await.expect("server starts")
}

pub fn verifier() -> Verifier {
    Verifier::hs256(SECRET.as_bytes()).unwrap()
}

pub fn token(user: u64) -> String {
    verifier()
        .mint(user, Some(&format!("user{user}")), Duration::from_secs(3600))
        .unwrap()
}

pub fn claims(user: u64, exp_in: i64) -> Claims {
    Claims {
        sub: user.to_string(),
        name: None,
        exp: (unix_now() as i64 + exp_in) as u64,
        nbf: None,
        iat: None,
        aud: None,
        iss: None,
    }
}

pub fn client_config(server: &Server, transport: Transport, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new(server.quic_addr, transport, Trust::Hashes(vec![server.cert_hash()]));
    c.token = token;
    c
}

/// Plain HTTP/1.1 GET against the side port: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "").await
}

/// One HTTP/1.1 request with a body: (status, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads a server process's log until it reports its addresses (`quic=… http=…`, within
/// 30 s): (QUIC, HTTP, the log read so far).
pub async fn await_addresses(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) -> (SocketAddr, SocketAddr, String) {
    let mut log = String::new();
    let (mut quic, mut http) = (None, None);
    while quic.is_none() || http.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("server starts in time")
            .unwrap()
            .expect("server log");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        quic = quic.or(field("quic="));
        http = http.or(field("http="));
        log.push_str(&line);
        log.push('\n');
    }
    (quic.unwrap(), http.unwrap(), log)
}

/// Polls `f` every 20 ms until it returns true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub use quaver_client::relay::Relay;

async fn ok(l: &mut quaver_client::LaneStream, body: quaver_proto::RequestBody) -> quaver_proto::ResponseBody {
    tokio::time::timeout(Duration::from_secs(10), l.request(body))
        .await
        .expect("reply in time")
        .expect("lane works")
        .expect("request accepted")
}

/// `joiner` joins guild `guild_id` by an invite the owner (`owner_chat`) makes.
pub async fn join_guild(
    owner_chat: &mut quaver_client::LaneStream,
    guild_id: u64,
    joiner_chat: &mut quaver_client::LaneStream,
) {
    use quaver_proto::{RequestBody, ResponseBody};
    let invite = RequestBody::CreateInvite {
        guild_id,
        max_uses: 0,
        max_age_secs: 0,
    };
    let ResponseBody::Invite(inv) = ok(owner_chat, invite).await else {
        panic!("invite")
    };
    let r = ok(joiner_chat, RequestBody::JoinGuild { code: inv.code }).await;
    assert!(matches!(r, ResponseBody::Guild(_)), "{r:?}");
}

/// A guild created by the owner of `owner_chat`, joined by invite by each of `others`
/// (their chat lanes): `(guild id, general channel id)`.
pub async fn shared_guild(
    owner: &quaver_client::Client,
    owner_chat: &mut quaver_client::LaneStream,
    others: Vec<&mut quaver_client::LaneStream>,
) -> (u64, u64) {
    use quaver_proto::{FetchRequest, FetchResponse, RequestBody, ResponseBody};
    let ResponseBody::Guild(g) = ok(owner_chat, RequestBody::CreateGuild { name: "g".into() }).await else {
        panic!("guild")
    };
    let ResponseBody::Invite(inv) = ok(
        owner_chat,
        RequestBody::CreateInvite {
            guild_id: g.id,
            max_uses: 0,
            max_age_secs: 0,
        },
    )
    .await
    else {
        panic!("invite")
    };
    for lane in others {
        let r = ok(lane, RequestBody::JoinGuild { code: inv.code.clone() }).await;
        assert!(matches!(r, ResponseBody::Guild(_)), "{r:?}");
    }
    let Ok(Ok(FetchResponse::Channels { channels })) = owner.fetch(FetchRequest::Channels { guild_id: g.id }).await
    else {
        panic!("channels")
    };
    (g.id, channels[0].id)
}

/// A raw QUIC connection (ALPN `quaver/1`) whose streams each accept at most
/// `stream_window` bytes unread: a client that can stop granting flow-control credit.
pub async fn raw_quic(server: &Server, stream_window: u32) -> quaver_client::raw::RawConn {
    quaver_client::raw::connect(
        server.quic_addr,
        &Trust::Hashes(vec![server.cert_hash()]),
        stream_window,
    )
    .await
    .unwrap()
}

/// The application close code a connection ended with, waiting at most `limit`.
pub async fn close_code_within(conn: &quinn::Connection, limit: Duration) -> Option<u32> {
    match tokio::time::timeout(limit, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(a)) => u32::try_from(a.error_code.into_inner()).ok(),
        _ => None,
    }
}

/// A text channel `name` created in `guild_id` through `chat` (its owner's or a manager's
/// chat lane): its id.
pub async fn text_channel(chat: &mut quaver_client::LaneStream, guild_id: u64, name: &str) -> u64 {
    use quaver_proto::{ChannelKind, RequestBody, ResponseBody};
    let body = RequestBody::CreateChannel {
        guild_id,
        kind: ChannelKind::Text,
        name: name.into(),
        topic: String::new(),
        user_limit: 0,
    };
    let ResponseBody::Channel(c) = ok(chat, body).await else {
        panic!("channel {name}")
    };
    c.id
}
