//! What every scenario sets up: a server process, tokens, an owner with a guild and an
//! invite, and member sessions joined to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use quaver_client::{Client, Config, LaneStream, Transport, Trust, connect};
use quaver_proto::*;

use crate::server::{ServerProc, Target};

const SECRET: &str = "quaver-bench-secret-0123456789abcdef";

/// A started server and how to reach it.
pub(crate) struct Setup {
    /// The server process (the first node of a cluster).
    pub(crate) server: ServerProc,
    /// The other nodes of a cluster run (`--nodes`); users are spread over all nodes by id.
    pub(crate) others: Vec<ServerProc>,
    verifier: Arc<quaver::auth::Verifier>,
    transport: Transport,
    /// The clients' [`Config::network_check_every`] (`None`: off).
    pub(crate) network_check: Option<Duration>,
    /// The clients' [`Config::ack_delay`].
    pub(crate) ack_delay: Option<Duration>,
    /// First message nonce of this run: a running server (`--target`) remembers every
    /// (author, nonce) it has stored, so each run needs nonces of its own.
    pub(crate) nonce_base: u64,
}

/// The owner's session and guild.
pub(crate) struct Owner {
    /// The owner's session.
    pub(crate) client: Client,
    /// Its chat lane.
    pub(crate) chat: LaneStream,
    /// The guild.
    pub(crate) guild_id: u64,
    /// Its `general` text channel.
    pub(crate) general: u64,
    /// An unlimited invite code.
    pub(crate) invite: String,
}

/// A chat-lane request that must succeed.
pub(crate) async fn req(l: &mut LaneStream, body: RequestBody) -> anyhow::Result<ResponseBody> {
    match l.request(body).await? {
        Ok(r) => Ok(r),
        Err(e) => bail!("refused: {} ({})", e.message, e.code.0),
    }
}

/// A new guild of `client`'s user: its id, its first channel and an invite code.
pub(crate) async fn guild(client: &Client, chat: &mut LaneStream, name: &str) -> anyhow::Result<(u64, u64, String)> {
    let ResponseBody::Guild(g) = req(chat, RequestBody::CreateGuild { name: name.into() }).await? else {
        bail!("guild")
    };
    let ResponseBody::Invite(inv) = req(
        chat,
        RequestBody::CreateInvite {
            guild_id: g.id,
            max_uses: 0,
            max_age_secs: 0,
        },
    )
    .await?
    else {
        bail!("invite")
    };
    let Ok(FetchResponse::Channels { channels }) = client.fetch(FetchRequest::Channels { guild_id: g.id }).await?
    else {
        bail!("channels")
    };
    Ok((g.id, channels[0].id, inv.code))
}

impl Setup {
    /// Starts the server of `target` with extra TOML configuration (or opens the running
    /// one, whose own configuration applies).
    pub(crate) async fn start(target: &Target, toml: &str, transport: Transport) -> anyhow::Result<Self> {
        let server = ServerProc::open(target, SECRET, toml).await?;
        let secret = match target {
            Target::Running { secret, .. } => secret.as_str(),
            Target::Spawn(_) => SECRET,
        };
        Self::from_server(server, secret, transport)
    }

    /// The servers of a run: `nodes` cluster nodes on Redis and PostgreSQL when `nodes > 1`
    /// or `cluster` (a single node on the same services, to compare with), else `target`.
    pub(crate) async fn for_run(
        target: &Target,
        toml: &str,
        transport: Transport,
        nodes: usize,
        cluster: bool,
    ) -> anyhow::Result<Self> {
        match (nodes > 1 || cluster, target) {
            (false, _) => Self::start(target, toml, transport).await,
            (true, Target::Spawn(bin)) => Self::start_cluster(bin, toml, transport, nodes.max(1)).await,
            _ => bail!("--nodes needs servers the run starts (no --target)"),
        }
    }

    /// `nodes` server processes on one Redis (`REDIS_URL`) and one PostgreSQL database
    /// (`DATABASE_URL`), each with the extra TOML configuration.
    pub(crate) async fn start_cluster(
        bin: &std::path::Path,
        toml: &str,
        transport: Transport,
        nodes: usize,
    ) -> anyhow::Result<Self> {
        let redis = std::env::var("REDIS_URL").map_err(|_| anyhow::anyhow!("--nodes needs REDIS_URL"))?;
        Self::start_cluster_on(bin, toml, transport, nodes, &redis).await
    }

    /// Like [`Setup::start_cluster`], on the Redis at `redis`.
    pub(crate) async fn start_cluster_on(
        bin: &std::path::Path,
        toml: &str,
        transport: Transport,
        nodes: usize,
        redis: &str,
    ) -> anyhow::Result<Self> {
        let redis = redis.to_string();
        let db = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| u.starts_with("postgres"))
            .ok_or_else(|| anyhow::anyhow!("--nodes needs DATABASE_URL=postgres://…"))?;
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut servers = Vec::new();
        for i in 0..nodes {
            let env = [
                ("REDIS_URL", redis.clone()),
                ("DATABASE_URL", db.clone()),
                ("QUAVER_REDIS_PREFIX", format!("bench-{run}:")),
                ("QUAVER_NODE_NAME", format!("bench-{run}-n{i}")),
            ];
            servers.push(ServerProc::start_env(bin, SECRET, toml, &env).await?);
        }
        let server = servers.remove(0);
        let mut s = Self::from_server(server, SECRET, transport)?;
        s.others = servers;
        Ok(s)
    }

    fn from_server(server: ServerProc, secret: &str, transport: Transport) -> anyhow::Result<Self> {
        let verifier = Arc::new(quaver::auth::Verifier::hs256(secret.as_bytes())?);
        let nonce_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        // The clients' own defaults, until a run says otherwise.
        let defaults = Config::new(server.quic, transport, Trust::Hashes(Vec::new()));
        Ok(Self {
            server,
            others: Vec::new(),
            verifier,
            transport,
            network_check: defaults.network_check_every,
            ack_delay: defaults.ack_delay,
            nonce_base,
        })
    }

    /// Every node.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &ServerProc> {
        std::iter::once(&self.server).chain(self.others.iter())
    }

    /// SIGKILLs the first node (R2); the others keep running.
    pub(crate) async fn kill_first(&mut self) {
        if self.others.is_empty() {
            return;
        }
        // Its clients are told nothing: the process is simply gone (SIGKILL).
        let dead = std::mem::replace(&mut self.server, self.others.remove(0));
        dead.stop().await;
    }

    /// Stops every node.
    pub(crate) async fn stop(self) {
        self.server.stop().await;
        for s in self.others {
            s.stop().await;
        }
    }

    /// A client configuration for `user` (on node `user % nodes`).
    pub(crate) fn config(&self, user: u64) -> Config {
        let n = self.nodes().count() as u64;
        let node = self.nodes().nth((user % n) as usize).unwrap_or(&self.server);
        let mut c = Config::new(node.quic, self.transport, Trust::Hashes(vec![node.hash]));
        // Only for WebSocket runs: a QUIC run must not fall back when it is slow.
        if self.transport == Transport::WebSocket {
            c.ws_url = Some(format!("ws://{}/quaver/ws", node.http));
        }
        c.token = self.verifier.mint(user, None, Duration::from_secs(3600)).ok();
        c.idle_timeout = Duration::from_secs(30);
        c.network_check_every = self.network_check;
        c.ack_delay = self.ack_delay;
        c
    }

    /// User 1 creates a guild and an invite.
    pub(crate) async fn owner(&self) -> anyhow::Result<Owner> {
        let client = connect(&self.config(1)).await?;
        let mut chat = client.open_lane(Lane::Chat).await?;
        let (guild_id, general, invite) = guild(&client, &mut chat, "bench").await?;
        Ok(Owner {
            client,
            chat,
            guild_id,
            general,
            invite,
        })
    }

    /// `n` sessions of users `first..first+n`, each joined to the guild by `invite`, 32 at a
    /// time; returns them with their chat lanes.
    pub(crate) async fn members(
        &self,
        n: usize,
        first: u64,
        invite: &str,
    ) -> anyhow::Result<Vec<(Client, LaneStream)>> {
        let gate = Arc::new(tokio::sync::Semaphore::new(32));
        let mut joins = Vec::new();
        for i in 0..n {
            let (gate, cfg, code) = (gate.clone(), self.config(first + i as u64), invite.to_string());
            joins.push(tokio::spawn(async move {
                let _p = gate.acquire_owned().await?;
                let c = connect(&cfg).await?;
                let mut chat = c.open_lane(Lane::Chat).await?;
                req(&mut chat, RequestBody::JoinGuild { code }).await?;
                anyhow::Ok((c, chat))
            }));
        }
        let mut out = Vec::with_capacity(n);
        for j in joins {
            out.push(j.await??);
        }
        for s in self.nodes() {
            s.quiesce(Duration::from_secs(60)).await;
        }
        Ok(out)
    }
}
