//! A native voice participant from the command line: joins a voice channel over raw QUIC
//! datagrams and, with `--echo`, speaks back every frame it hears (an echo bot: what you
//! say comes back from its slot). It answers commands on standard input with one JSON
//! line each, which is how the Chromium WebRTC test drives it:
//!
//! - `stats`: `{"slot": S, "frames": {"<slot>": n, …}, "small": n, "speaking": ["<user>", …], "events": n}` —
//!   frames received per speaker slot, how many of them had a payload of 2 bytes or less
//!   (not a real Opus packet), users announced speaking (ids as strings, as in the JSON
//!   form of the protocol), events seen on the voice lane;
//! - `quit`: leaves the channel and exits.
//!
//! ```text
//! QUAVER_TOKEN=$(quaver token --user 1 --name bot) cargo run -p quaver-client --example voice_echo -- \
//!     --addr 127.0.0.1:4433 --cert-hash <hex from /cert-hash> --channel <id> --echo
//! ```
//!
//! The token comes from `QUAVER_TOKEN` (an argument would show in `ps`). It prints
//! `{"joined": <slot>}` once in the channel, and `{"error": "…"}` then exits 1 on failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quaver_client::{Config, Transport, Trust, connect, voice::join_voice};
use quaver_proto::datagram::{FLAG_TALKSPURT_START, Uplink};
use quaver_proto::{EventBody, Lane, ResponseBody, ServerLane};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Default)]
struct Seen {
    frames: BTreeMap<u16, u64>,
    small: u64,
    speaking: Vec<String>,
    events: u64,
}

struct Args {
    addr: SocketAddr,
    hash: [u8; 32],
    channel: u64,
    echo: bool,
}

fn args() -> Result<Args, String> {
    let (mut addr, mut hash, mut channel, mut echo) = (None, None, None, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--cert-hash" => {
                let v = hex::decode(value()?).map_err(|e| format!("--cert-hash: {e}"))?;
                hash = Some(<[u8; 32]>::try_from(v.as_slice()).map_err(|_| "--cert-hash: 32 bytes of hex")?);
            }
            "--channel" => channel = Some(value()?.parse().map_err(|e| format!("--channel: {e}"))?),
            "--echo" => echo = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        hash: hash.ok_or("--cert-hash is required")?,
        channel: channel.ok_or("--channel is required")?,
        echo,
    })
}

fn fail(e: impl std::fmt::Display) -> ! {
    println!("{}", serde_json::json!({ "error": e.to_string() }));
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let args = args().unwrap_or_else(|e| fail(e));
    let token = std::env::var("QUAVER_TOKEN").unwrap_or_else(|_| fail("set QUAVER_TOKEN"));
    let mut cfg = Config::new(args.addr, Transport::Quic, Trust::Hashes(vec![args.hash]));
    cfg.token = Some(token);
    let client = connect(&cfg).await.unwrap_or_else(|e| fail(e));
    let mut lane = client.open_lane(Lane::Voice).await.unwrap_or_else(|e| fail(e));
    let join = join_voice(&mut lane, &cfg, args.channel, false, false)
        .await
        .unwrap_or_else(|e| fail(e))
        .unwrap_or_else(|e| fail(e.message));
    let slot = match &join.joined {
        ResponseBody::VoiceJoined { slot, .. } => *slot,
        other => fail(format!("unexpected answer {other:?}")),
    };
    let (mut lane, voice) = match join.remote {
        Some((remote, remote_lane)) => (remote_lane, remote),
        None => (lane, client),
    };
    println!("{}", serde_json::json!({ "joined": slot }));
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Frames heard (and echoed).
    let voice = Arc::new(voice);
    let (v, s) = (voice.clone(), seen.clone());
    tokio::spawn(async move {
        let mut seq = 0u16;
        while let Ok((h, payload)) = v.recv_voice().await {
            {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                *s.frames.entry(h.slot).or_default() += 1;
                if payload.len() <= 2 {
                    s.small += 1;
                }
            }
            if args.echo {
                let up = Uplink {
                    flags: if seq == 0 { FLAG_TALKSPURT_START } else { 0 },
                    level: h.level,
                    seq,
                    timestamp: u32::from(seq).wrapping_mul(960),
                };
                // A datagram the connection cannot take now is dropped, as a frame would be.
                let _ = v.send_voice(&up, &payload);
                seq = seq.wrapping_add(1);
            }
        }
    });

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            m = lane.next() => match m {
                Ok(ServerLane::Event { body, .. }) => {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    s.events += 1;
                    if let EventBody::VoiceSpeaking { user_id, speaking: true, .. } = body
                        && !s.speaking.contains(&user_id.to_string())
                    {
                        s.speaking.push(user_id.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => fail(e),
            },
            line = stdin.next_line() => match line.ok().flatten().as_deref().map(str::trim) {
                Some("stats") => {
                    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let frames: BTreeMap<String, u64> = s.frames.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                    println!(
                        "{}",
                        serde_json::json!({ "slot": slot, "frames": frames, "small": s.small, "speaking": s.speaking, "events": s.events })
                    );
                }
                Some("quit") | None => {
                    let _ = lane.request(quaver_proto::RequestBody::LeaveVoice).await;
                    voice.close();
                    return;
                }
                Some(other) => println!("{}", serde_json::json!({ "error": format!("unknown command {other}") })),
            },
        }
    }
}
