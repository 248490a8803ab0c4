//! `quaver chat`: a command-line chat client on the resilient native client — for people in
//! a terminal and for scripts (tab-separated output, one line per item).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use quaver_client::resilient::{Backoff, Resilient, Update};
use quaver_client::{Config, Transport, Trust};
use quaver_proto::{
    Channel, ChannelKind, EventBody, FetchRequest, FetchResponse, Guild, HistoryAnchor, Lane, Message, PresenceStatus,
    RequestBody, ResponseBody,
};

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
    /// `channel<TAB>id<TAB>name<TAB>last_seq<TAB>text|voice` lines; DMs as
    /// `dm<TAB>id<TAB>recipients`.
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
    /// Create a guild (you own it; it starts with a text channel `general`): prints the
    /// guild line and its channel lines, as `guilds` does.
    CreateGuild {
        /// Its name.
        name: String,
    },
    /// Create a channel in a guild (manage channels): prints its channel line.
    CreateChannel {
        /// The guild.
        #[arg(long)]
        guild: u64,
        /// A voice channel instead of a text channel.
        #[arg(long)]
        voice: bool,
        /// Its name.
        name: String,
    },
    /// Create an invite to a guild: prints the code (give it to `join`).
    Invite {
        /// The guild.
        #[arg(long)]
        guild: u64,
        /// Most uses (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        max_uses: u32,
        /// Expires after this many seconds (0 = never).
        #[arg(long, default_value_t = 7 * 86_400)]
        max_age: u32,
    },
    /// Join a guild with an invite code: prints the guild line and its channel lines.
    Join {
        /// The code (or an invite link ending in it).
        code: String,
    },
    /// List a guild's members: `member<TAB>user_id<TAB>name<TAB>status` lines.
    Members {
        /// The guild.
        #[arg(long)]
        guild: u64,
    },
    /// Join a voice channel (following the cluster to its node) and listen without speaking:
    /// prints `participant<TAB>user_id<TAB>slot` for who is there, then after `--seconds`
    /// `frames<TAB>slot<TAB>count` per slot heard, and leaves.
    Listen {
        /// The voice channel.
        #[arg(long)]
        channel: u64,
        /// How long to listen.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
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
        ChatCommand::Tail {
            channel,
            history,
            count,
        } => tail(cfg, channel, history, count).await,
        ChatCommand::Listen { channel, seconds } => listen(&cfg, channel, Duration::from_secs(seconds)).await,
        command => {
            let client = quaver_client::connect(&cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = once(&client, command).await;
            client.close();
            // Let the close reach the server before the process exits.
            tokio::time::sleep(Duration::from_millis(50)).await;
            print!("{}", out?);
            Ok(())
        }
    }
}

/// One request on the chat lane: its answer, or the refusal as an error.
async fn chat_request(client: &quaver_client::Client, body: RequestBody) -> anyhow::Result<ResponseBody> {
    let mut lane = client.open_lane(Lane::Chat).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    match lane.request(body).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Ok(r) => Ok(r),
        Err(e) => bail!("refused: {} (code {})", e.message, e.code.0),
    }
}

async fn fetch(client: &quaver_client::Client, request: FetchRequest) -> anyhow::Result<FetchResponse> {
    match client.fetch(request).await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Ok(r) => Ok(r),
        Err(e) => bail!("refused: {} (code {})", e.message, e.code.0),
    }
}

fn channel_line(c: &Channel) -> String {
    let kind = match c.kind {
        ChannelKind::Voice => "voice",
        ChannelKind::Text => "text",
        ChannelKind::Dm | ChannelKind::GroupDm => "dm",
    };
    format!("channel\t{}\t{}\t{}\t{kind}\n", c.id, c.name, c.last_seq)
}

/// A guild's line and its channels' lines (the channels fetched afresh).
async fn guild_lines(client: &quaver_client::Client, guild: &Guild) -> anyhow::Result<String> {
    let mut out = format!("guild\t{}\t{}\n", guild.id, guild.name);
    if let FetchResponse::Channels { channels } = fetch(client, FetchRequest::Channels { guild_id: guild.id }).await? {
        for c in &channels {
            out += &channel_line(c);
        }
    }
    Ok(out)
}

/// The commands that are one request and one answer.
async fn once(client: &quaver_client::Client, command: ChatCommand) -> anyhow::Result<String> {
    Ok(match command {
        ChatCommand::Guilds => {
            let mut out = String::new();
            for g in &client.ready.guilds {
                out += &format!("guild\t{}\t{}\n", g.guild.id, g.guild.name);
                for c in &g.channels {
                    out += &channel_line(c);
                }
            }
            for c in &client.ready.private_channels {
                let who: Vec<String> = c.recipients.iter().map(u64::to_string).collect();
                out += &format!("dm\t{}\t{}\n", c.id, who.join(","));
            }
            out
        }
        ChatCommand::Send { channel, text } => {
            let body = RequestBody::SendMessage {
                channel_id: channel,
                nonce: u64::from_le_bytes(rand_bytes()),
                content: text,
                reply_to: None,
            };
            match chat_request(client, body).await? {
                ResponseBody::MessageSent { message_id, seq, .. } => format!("{message_id}\t{seq}\n"),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        ChatCommand::CreateGuild { name } => match chat_request(client, RequestBody::CreateGuild { name }).await? {
            ResponseBody::Guild(g) => guild_lines(client, &g).await?,
            other => bail!("unexpected reply {other:?}"),
        },
        ChatCommand::CreateChannel { guild, voice, name } => {
            let body = RequestBody::CreateChannel {
                guild_id: guild,
                kind: if voice { ChannelKind::Voice } else { ChannelKind::Text },
                name,
                topic: String::new(),
                user_limit: 0,
            };
            match chat_request(client, body).await? {
                ResponseBody::Channel(c) => channel_line(&c),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        ChatCommand::Invite {
            guild,
            max_uses,
            max_age,
        } => {
            let body = RequestBody::CreateInvite {
                guild_id: guild,
                max_uses,
                max_age_secs: max_age,
            };
            match chat_request(client, body).await? {
                ResponseBody::Invite(i) => format!("{}\n", i.code),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        ChatCommand::Join { code } => {
            // A link (`…/#invite=CODE`, `…/invite/CODE`) works as well as the bare code.
            let code = code.rsplit(['=', '/']).next().unwrap_or(&code).trim().to_string();
            match chat_request(client, RequestBody::JoinGuild { code }).await? {
                ResponseBody::Guild(g) => guild_lines(client, &g).await?,
                other => bail!("unexpected reply {other:?}"),
            }
        }
        ChatCommand::Members { guild } => {
            let mut out = String::new();
            let mut after = 0;
            loop {
                let FetchResponse::Members { members } = fetch(
                    client,
                    FetchRequest::Members {
                        guild_id: guild,
                        after,
                        limit: 100,
                    },
                )
                .await?
                else {
                    bail!("unexpected reply");
                };
                for m in &members {
                    let status = client
                        .ready
                        .presences
                        .iter()
                        .find(|p| p.user_id == m.user_id)
                        .map_or(PresenceStatus::Offline, |p| p.status);
                    let status = format!("{status:?}").to_lowercase();
                    out += &format!("member\t{}\t{}\t{status}\n", m.user_id, m.name);
                }
                match members.last() {
                    Some(last) if members.len() == 100 => after = last.user_id,
                    _ => break,
                }
            }
            out
        }
        ChatCommand::Tail { .. } | ChatCommand::Listen { .. } => unreachable!("not a one-shot command"),
    })
}

async fn tail(cfg: Config, channel: u64, history: u32, count: Option<usize>) -> anyhow::Result<()> {
    let client = quaver_client::connect(&cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let reply = fetch(
        &client,
        FetchRequest::History {
            channel_id: channel,
            anchor: HistoryAnchor::Latest,
            limit: history.clamp(1, 100),
        },
    )
    .await;
    client.close();
    match reply? {
        FetchResponse::History { messages, .. } => {
            for m in &messages {
                println!("{}", line(m));
            }
        }
        other => bail!("unexpected reply {other:?}"),
    }
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
            Some(Update::Unreachable { error, retry_in, .. }) => {
                eprintln!(
                    "cannot reach the server ({error}); trying again in {} ms",
                    retry_in.as_millis()
                )
            }
            Some(_) => {}
            None => bail!("connection refused for good"),
        }
    }
    Ok(())
}

async fn listen(cfg: &Config, channel: u64, seconds: Duration) -> anyhow::Result<()> {
    let client = quaver_client::connect(cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lane = client
        .open_lane(Lane::Voice)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let join = quaver_client::voice::join_voice(&mut lane, cfg, channel, true, false)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map_err(|e| anyhow::anyhow!("refused: {} (code {})", e.message, e.code.0))?;
    let ResponseBody::VoiceJoined { participants, .. } = &join.joined else {
        bail!("unexpected reply {:?}", join.joined);
    };
    for p in participants {
        println!("participant\t{}\t{}", p.user_id, p.slot);
    }
    let voice = join.client(&client);
    let mut frames: std::collections::BTreeMap<u16, u64> = Default::default();
    let end = tokio::time::Instant::now() + seconds;
    while let Ok(Ok((h, _))) = tokio::time::timeout_at(end, voice.recv_voice()).await {
        *frames.entry(h.slot).or_default() += 1;
    }
    for (slot, n) in &frames {
        println!("frames\t{slot}\t{n}");
    }
    client.close();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}
