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
    assert!(text.contains(&format!("channel\t{ch}\tgeneral\t0\n")), "{text}");

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
