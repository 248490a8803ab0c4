//! The `quaver chat` command-line client against a running server.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use quaver_client::{Transport, connect};
use quaver_proto::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn chat_cmd(server: &quaver::Server, user: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quaver"));
    c.arg("chat")
        .arg("--server")
        .arg(server.quic_addr.to_string())
        .arg("--http")
        .arg(server.http_addr.to_string())
        .arg("--token")
        .arg(token(user))
        .env("QUAVER_LOG", "warn")
        .stdin(Stdio::null());
    c
}

#[tokio::test]
async fn guilds_send_and_tail_from_the_command_line() {
    let server = start(config()).await;
    let a = connect(&client_config(&server, Transport::Quic, Some(token(1))))
        .await
        .unwrap();
    let mut chat = a.open_lane(Lane::Chat).await.unwrap();
    let Ok(ResponseBody::Guild(g)) = chat
        .request(RequestBody::CreateGuild {
            name: "cli guild".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let Ok(Ok(FetchResponse::Channels { channels })) = a.fetch(FetchRequest::Channels { guild_id: g.id }).await else {
        panic!()
    };
    let ch = channels[0].id;

    // guilds
    let out = chat_cmd(&server, 1).arg("guilds").output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("guild\t{}\tcli guild\n", g.id)), "{text}");
    assert!(text.contains(&format!("channel\t{ch}\tgeneral\t0\ttext\n")), "{text}");

    // send
    let out = chat_cmd(&server, 1)
        .args(["send", "--channel", &ch.to_string(), "hello from the cli"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (id, seq) = text.trim().split_once('\t').unwrap();
    assert_eq!(seq, "1");

    // tail: history first, then a live message, then exit after --count.
    let mut tail = chat_cmd(&server, 1)
        .args(["tail", "--channel", &ch.to_string(), "--history", "10", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, format!("1\t{id}\t1\thello from the cli"));
    // Give the follower a moment to connect, then send live.
    tokio::time::sleep(Duration::from_millis(500)).await;
    chat.request(RequestBody::SendMessage {
        channel_id: ch,
        nonce: 2,
        content: "live\tline".into(),
        reply_to: None,
    })
    .await
    .unwrap()
    .unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(live.starts_with("2\t") && live.ends_with("\t1\tlive line"), "{live}");
    let status = tokio::time::timeout(Duration::from_secs(10), tail.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // A refused send exits non-zero with the reason.
    let out = chat_cmd(&server, 2)
        .args(["send", "--channel", &ch.to_string(), "intruder"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}

async fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The id in the `kind<TAB>id<TAB>…` line of `text` whose kind and name match.
fn id_of(text: &str, kind: &str, name: &str) -> u64 {
    text.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f[0] == kind && f.get(2) == Some(&name))
        .and_then(|f| f[1].parse().ok())
        .unwrap_or_else(|| panic!("no {kind} {name} in {text}"))
}

/// Two people with nothing but the binary: one creates a guild, a channel and an invite,
/// the other joins with it; both list the members and chat; a voice channel is created and
/// `listen` joins it.
#[tokio::test]
async fn the_whole_loop_from_two_terminals() {
    let server = start(config()).await;
    let created = run_ok({
        let mut c = chat_cmd(&server, 11);
        c.args(["create-guild", "two terminals"]);
        c
    })
    .await;
    let guild = id_of(&created, "guild", "two terminals");
    let general = id_of(&created, "channel", "general");
    let made = run_ok({
        let mut c = chat_cmd(&server, 11);
        c.args(["create-channel", "--guild", &guild.to_string(), "plans"]);
        c
    })
    .await;
    let plans = id_of(&made, "channel", "plans");
    assert!(made.trim_end().ends_with("\ttext"), "{made}");
    let code = run_ok({
        let mut c = chat_cmd(&server, 11);
        c.args(["invite", "--guild", &guild.to_string()]);
        c
    })
    .await;
    let code = code.trim();
    assert!(!code.is_empty());
    // The second person joins with the link form of the invite.
    let joined = run_ok({
        let mut c = chat_cmd(&server, 12);
        c.args(["join", &format!("http://127.0.0.1/#invite={code}")]);
        c
    })
    .await;
    assert_eq!(id_of(&joined, "guild", "two terminals"), guild);
    assert_eq!(id_of(&joined, "channel", "plans"), plans);
    let members = run_ok({
        let mut c = chat_cmd(&server, 12);
        c.args(["members", "--guild", &guild.to_string()]);
        c
    })
    .await;
    let users: Vec<&str> = members.lines().map(|l| l.split('\t').nth(1).unwrap()).collect();
    assert_eq!(users, vec!["11", "12"], "{members}");
    assert!(members.lines().all(|l| l.starts_with("member\t")), "{members}");
    // They chat: each send is seen by the other's tail, in order.
    for (user, text) in [(11, "hi from 11"), (12, "hello from 12")] {
        run_ok({
            let mut c = chat_cmd(&server, user);
            c.args(["send", "--channel", &general.to_string(), text]);
            c
        })
        .await;
    }
    let tail = run_ok({
        let mut c = chat_cmd(&server, 11);
        c.args(["tail", "--channel", &general.to_string(), "--count", "0"]);
        c
    })
    .await;
    let texts: Vec<&str> = tail.lines().map(|l| l.rsplit('\t').next().unwrap()).collect();
    assert_eq!(texts, vec!["hi from 11", "hello from 12"], "{tail}");
    // A voice channel; `listen` joins it and reports who is there (itself).
    let voice = run_ok({
        let mut c = chat_cmd(&server, 11);
        c.args(["create-channel", "--guild", &guild.to_string(), "--voice", "lounge"]);
        c
    })
    .await;
    assert!(voice.trim_end().ends_with("\tvoice"), "{voice}");
    let lounge = id_of(&voice, "channel", "lounge");
    let heard = run_ok({
        let mut c = chat_cmd(&server, 12);
        c.args(["listen", "--channel", &lounge.to_string(), "--seconds", "1"]);
        c
    })
    .await;
    assert!(heard.lines().any(|l| l.starts_with("participant\t12\t")), "{heard}");
    // Someone outside the guild cannot join it without an invite.
    let mut c = chat_cmd(&server, 13);
    c.args(["join", "nope"]);
    let out = c.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    server.shutdown().await;
}

/// The server binary with `args`, its settings in the environment (loopback ports chosen
/// by the OS, state under `dir`, the tests' JWT secret, `QUAVER_LOG=log`), and the CI's
/// DATABASE_URL / REDIS_URL left out; stderr piped for its addresses.
fn server_process(dir: &std::path::Path, args: &[&str], log: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quaver"));
    c.args(args)
        .env("QUAVER_LOG", log)
        .env("JWT_SECRET", SECRET)
        .env("QUAVER_LISTEN", "127.0.0.1:0")
        .env("QUAVER_HTTP_LISTEN", "127.0.0.1:0")
        .env("QUAVER_API_LISTEN", "127.0.0.1:0")
        .env("QUAVER_DATA_DIR", dir.join("data"))
        .env("QUAVER_CERT_DIR", dir.join("certs"))
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// The certificate hash a server at `http` publishes (`GET /cert-hash`).
async fn cert_hash(http: std::net::SocketAddr) -> [u8; 32] {
    let (_, body) = http_get(http, "/cert-hash").await;
    let info: serde_json::Value = serde_json::from_str(&body).expect("cert-hash is JSON");
    hex::decode(info["hash"].as_str().expect("a hash"))
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

/// With every log level on (`QUAVER_LOG=trace`), no token — from `?token=`, an
/// `Authorization` header or `Hello` — appears in the server's log.
#[tokio::test]
async fn no_token_reaches_the_log_at_any_level() {
    let dir = tempdir("log");
    let mut child = server_process(&dir, &["serve"], "trace").spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (quic, http, mut log) = await_addresses(&mut lines).await;
    let reader = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push_str(&l);
            rest.push('\n');
        }
        rest
    });
    let hash = cert_hash(http).await;
    let mut tokens = Vec::new();
    for (transport, placement) in [
        (Transport::WebTransport, quaver_client::TokenPlacement::Query),
        (Transport::WebTransport, quaver_client::TokenPlacement::Header),
        (Transport::WebTransport, quaver_client::TokenPlacement::Hello),
        (Transport::Quic, quaver_client::TokenPlacement::Hello),
    ] {
        let t = token(7 + tokens.len() as u64);
        let mut cfg = quaver_client::Config::new(quic, transport, quaver_client::Trust::Hashes(vec![hash]));
        cfg.token = Some(t.clone());
        cfg.token_placement = placement;
        let c = connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("{transport:?} {placement:?}: {e}"));
        ping(&c, Lane::Chat).await;
        c.close();
        tokens.push(t);
    }
    // A refused token must not be echoed either.
    let bad = format!("{}x", token(99));
    let mut cfg = quaver_client::Config::new(quic, Transport::WebTransport, quaver_client::Trust::Hashes(vec![hash]));
    cfg.token = Some(bad.clone());
    cfg.token_placement = quaver_client::TokenPlacement::Query;
    assert!(connect(&cfg).await.is_err());
    tokens.push(bad);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().await.unwrap();
    log.push_str(&reader.await.unwrap());
    assert!(log.contains("TRACE"), "trace logging was on");
    for t in &tokens {
        let signature = t.rsplit('.').next().unwrap();
        let payload = t.split('.').nth(1).unwrap();
        assert!(!log.contains(signature), "a token signature reached the log");
        assert!(!log.contains(payload), "a token payload reached the log");
    }
}

/// A bare `quaver` (no command) is `quaver serve`, settings from the environment included:
/// it once ran on built-in defaults and ignored them (JWT_SECRET, QUAVER_API_KEYS, …).
#[tokio::test]
async fn a_bare_quaver_reads_its_settings_from_the_environment() {
    let dir = tempdir("bare");
    // No command: every setting below reaches it through the environment alone.
    let mut child = server_process(&dir, &[], "info")
        .spawn()
        .expect("server process starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let (quic, http, _) = await_addresses(&mut lines).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(quic.ip().is_loopback(), "QUAVER_LISTEN was read: {quic}");
    assert!(dir.join("data").exists(), "QUAVER_DATA_DIR was read");
    let hash = cert_hash(http).await;
    // A token signed with JWT_SECRET is accepted only if the server read it (its own dev
    // secret would refuse it).
    let mut cfg = quaver_client::Config::new(quic, Transport::Quic, quaver_client::Trust::Hashes(vec![hash]));
    cfg.token = Some(token(5));
    let c = connect(&cfg).await.expect("JWT_SECRET was read: the token is accepted");
    ping(&c, Lane::Chat).await;
    c.close();
    child.kill().await.unwrap();
}
