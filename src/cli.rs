//! `quaver chat`: a command-line chat client on the resilient native client — for people in
//! a terminal and for scripts (tab-separated output, one line per item).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_client::{Config, Transport, Trust};
use quaver_proto::{EventBody, FetchRequest, FetchResponse, HistoryAnchor, Message, ResponseBody};

/// Transports selectable on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Tr {
    /// Raw QUIC (`quaver/1`).
    Quic,
    /// WebTransport.
    Webtransport,
}

/// Connection options of `quaver chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Server QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433", env = "QUAVER_SERVER")]
    pub server: SocketAddr,
    /// Name to verify in the certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Trust the certificate with this SHA-256 (hex); by default it is fetched from --http.
    #[arg(long)]
    pub cert_hash: Option<String>,
    /// Trust CA-issued certificates from this PEM bundle instead of a hash.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The server's HTTP side port, for `/cert-hash`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Your token (mint one with `quaver token`).
    #[arg(long, env = "QUAVER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Tr::Quic)]
    pub transport: Tr,
    /// What to do.
    #[command(subcommand)]
    pub command: ChatCommand,
}

/// `quaver chat` commands.
#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// List your guilds and the channels you can see: `guild<TAB>id<TAB>name`, then
    /// `channel<TAB>id<TAB>name<TAB>last_seq` lines; DMs as `dm<TAB>id<TAB>recipients`.
    Guilds,
    /// Print the last messages of a channel, then follow it (reconnecting as needed):
    /// `seq<TAB>message_id<TAB>author_id<TAB>content` per message.
    Tail {
        /// The channel.
        #[arg(long)]
        channel: u64,
        /// How many past messages first.
        #[arg(long, default_value_t = 20)]
        history: u32,
        /// Stop after this many new messages (default: follow until interrupted).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Send a message: prints `message_id<TAB>seq`.
    Send {
        /// The channel.
        #[arg(long)]
        channel: u64,
        /// The text.
        text: String,
    },
}

async fn fetch_cert_hash(http: SocketAddr) -> anyhow::Result<[u8; 32]> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http)
        .await
        .with_context(|| format!("connecting to {http} for /cert-hash"))?;
    s.write_all(b"GET /cert-hash HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).context("parsing /cert-hash")?;
    let hex = v["hash"].as_str().context("no hash in /cert-hash")?;
    hex::decode(hex)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad hash length"))
}

fn line(m: &Message) -> String {
    let content = if m.deleted {
        "(deleted)".to_string()
    } else {
        m.content.replace(['\n', '\t'], " ")
    };
    format!("{}\t{}\t{}\t{}", m.seq, m.id, m.author_id, content)
}

/// Runs `quaver chat`.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let trust = match (&args.ca_file, &args.cert_hash) {
        (Some(path), _) => Trust::CaFile(path.clone()),
        (None, Some(h)) => Trust::Hashes(vec![
            hex::decode(h)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("--cert-hash is 64 hex digits"))?,
        ]),
        (None, None) => Trust::Hashes(vec![fetch_cert_hash(args.http).await?]),
    };
    let transport = match args.transport {
        Tr::Quic => Transport::Quic,
        Tr::Webtransport => Transport::WebTransport,
    };
    let mut cfg = Config::new(args.server, transport, trust);
    cfg.server_name = args.server_name.clone();
    cfg.token = Some(args.token.clone());
    cfg.idle_timeout = Duration::from_secs(10);
    match args.command {
        ChatCommand::Guilds | ChatCommand::Send { .. } => {
            let client = quaver_client::connect(&cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = match args.command {
                ChatCommand::Guilds => {
                    let mut out = String::new();
                    for g in &client.ready.guilds {
                        out += &format!("guild\t{}\t{}\n", g.guild.id, g.guild.name);
                        for c in &g.channels {
                            out += &format!("channel\t{}\t{}\t{}\n", c.id, c.name, c.last_seq);
                        }
                    }
                    for c in &client.ready.private_channels {
                        let who: Vec<String> = c.recipients.iter().map(u64::to_string).collect();
                        out += &format!("dm\t{}\t{}\n", c.id, who.join(","));
                    }
                    out
                }
                ChatCommand::Send { channel, text } => {
                    let mut lane = client
                        .open_lane(quaver_proto::Lane::Chat)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let nonce = u64::from_le_bytes(rand_bytes());
                    let body = quaver_proto::RequestBody::SendMessage {
                        channel_id: channel,
                        nonce,
                        content: text,
                        reply_to: None,
                    };
                    match lane.request(body).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                        Ok(ResponseBody::MessageSent { message_id, seq, .. }) => format!("{message_id}\t{seq}\n"),
                        Ok(other) => bail!("unexpected reply {other:?}"),
                        Err(e) => bail!("refused: {} (code {})", e.message, e.code.0),
                    }
                }
                ChatCommand::Tail { .. } => unreachable!("handled below"),
            };
            print!("{out}");
            client.close();
            // Let the close reach the server before the process exits.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        }
        ChatCommand::Tail {
            channel,
            history,
            count,
        } => {
            let client = quaver_client::connect(&cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            match client
                .fetch(FetchRequest::History {
                    channel_id: channel,
                    anchor: HistoryAnchor::Latest,
                    limit: history.clamp(1, 100),
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                Ok(FetchResponse::History { messages, .. }) => {
                    for m in &messages {
                        println!("{}", line(m));
                    }
                }
                Ok(other) => bail!("unexpected reply {other:?}"),
                Err(e) => bail!("refused: {} (code {})", e.message, e.code.0),
            }
            client.close();
            let mut r = Resilient::start(cfg, Backoff::default());
            let mut printed = 0usize;
            while count.is_none_or(|c| printed < c) {
                match r.next().await {
                    Some(Update::Event(EventBody::MessageCreated { message, .. })) if message.channel_id == channel => {
                        println!("{}", line(&message));
                        printed += 1;
                    }
                    Some(Update::Event(EventBody::Gap { channel_id, .. })) if channel_id == channel => {
                        eprintln!("gap: some messages could not be recovered; refetch history");
                    }
                    Some(Update::Disconnected { reason }) => eprintln!("disconnected ({reason}); reconnecting"),
                    Some(_) => {}
                    None => bail!("connection refused for good"),
                }
            }
            Ok(())
        }
    }
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}
