//! One configuration tree: defaults (documented here, each with its reason), overridden by
//! an optional TOML file, overridden by environment variables, overridden by flags.
//! clap reads flags and env together (flag wins); the TOML file fills what neither gave.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, `10d`, or a bare number of milliseconds
/// (the old Socket.IO settings `SOCKET_PING_INTERVAL`/`SOCKET_PING_TIMEOUT` were in ms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit.trim() {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        u => return Err(format!("unknown duration unit {u:?} in {s:?} (use ms, s, m, h or d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Deserializes a duration written as [`parse_duration`] reads it (TOML fields).
pub fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Server configuration (the resolved tree).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC endpoint, shared by WebTransport and raw QUIC.
    /// Default `0.0.0.0:4433`: 443 needs privileges; 4433 is the customary dev QUIC port.
    pub listen: SocketAddr,
    /// TCP address of the HTTP side port (health, metrics, cert hash, web client).
    /// Default `127.0.0.1:8080`: operational endpoints stay off the public interface.
    pub http_listen: SocketAddr,
    /// Name of this node in logs, `Ready` and metrics. Default: `quaver-<pid>`.
    pub node_name: String,
    /// Directory for runtime state (the dev JWT secret, the default SQLite database).
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://path?mode=rwc` or `postgres://…`. Default: SQLite at
    /// `data_dir/quaver.db`, created on first run, so a new user needs nothing installed.
    pub database: Option<String>,
    /// Redis for a cluster: `redis://host:port` (one Redis 7) or
    /// `redis+cluster://host:port,host:port` (seeds of a Redis Cluster). Default none: one
    /// node on the in-process bus.
    pub redis: Option<String>,
    /// Prepended to every Redis key and channel name, so several clusters can share one
    /// Redis. Default empty.
    pub redis_prefix: String,
    /// `host:port` at which clients reach this node's QUIC endpoint, announced to clients
    /// sent here from another node (voice). Default: the bound QUIC address — set it in a
    /// cluster whose nodes listen on `0.0.0.0`.
    pub public_addr: Option<String>,
    /// The URL of this node's WebSocket framing (`ws://host:port/quaver/ws`, or `wss://…`
    /// through a TLS terminator), announced to WebSocket sessions sent here from another
    /// node (voice). Default: `ws://` + `public_addr`'s host (else the bound HTTP address's)
    /// + the bound HTTP port + `/quaver/ws`.
    pub public_ws_url: Option<String>,
    /// UDP address of the WebRTC port (voice participants over WebRTC, ICE-lite). Answers
    /// name it as their host candidate; bound to `0.0.0.0` (or `::`), they name loopback and
    /// the machine's routed address instead (or `webrtc_announce`). Default: none (WebRTC
    /// joins are refused).
    pub webrtc_listen: Option<SocketAddr>,
    /// WebRTC on the QUIC port itself (RFC 9443: told apart by the first byte), instead of a
    /// port of its own. Default false.
    pub webrtc_shared_port: bool,
    /// The IPs answers name as host candidates (with the WebRTC port), when clients reach the
    /// node at addresses it cannot see itself (a public IP in front of a private one).
    /// Default: empty (the bound address, or on an unspecified bind loopback and the routed
    /// address).
    pub webrtc_announce: Vec<std::net::IpAddr>,
    /// Node number in snowflake ids (0–1023); must differ between nodes of a cluster.
    /// Default: derived from the node name.
    pub node_id: Option<u16>,
    /// Event loops serving the sessions, each on its own thread and SO_REUSEPORT socket on
    /// the one port (1–64). Default: one per core (bench/RESULTS.md "Two loops").
    pub loops: usize,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Session and transport limits.
    pub session: SessionConfig,
    /// Request rate limits.
    pub limits: crate::limits::LimitsConfig,
    /// Voice (SFU) settings.
    pub voice: VoiceConfig,
    /// Database deadlines and durability.
    pub store: crate::store::StoreOptions,
    /// The server API for application backends.
    pub api: ApiConfig,
    /// Webhooks (`[webhooks]`, `src/webhooks`).
    pub webhooks: crate::webhooks::WebhooksConfig,
}

/// The server API (`/api/v1`, `src/api`): its listener and its keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address of the API listener. Default `127.0.0.1:8081`: the API is for the
    /// application's backend, on a private interface, never the public client port.
    pub listen: SocketAddr,
    /// The keys accepted (several at once: rotate by adding the new one, moving the backend
    /// to it, then removing the old). Default none: every call is refused with 401.
    pub keys: Vec<ApiKeyConfig>,
    /// Each key's request rate. Default 200 at once, 100 a second: a busy backend, not a
    /// runaway loop.
    pub rate: crate::limits::Rate,
    /// How long an `Idempotency-Key` and its answer are kept. Default 24 h.
    #[serde(deserialize_with = "de_duration")]
    pub idempotency_ttl: Duration,
    /// HTTPS on the API listener: `auto` (default) serves HTTPS with the server's
    /// certificate when one is configured (`--cert`/`--key`) and the listener is not on
    /// loopback, plain HTTP otherwise; `on` always (the dev certificate when no other);
    /// `off` never.
    pub tls: ApiTls,
}

/// Whether the API listener speaks HTTPS.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiTls {
    /// HTTPS with a configured certificate off loopback; plain HTTP otherwise.
    #[default]
    Auto,
    /// Always HTTPS.
    On,
    /// Never.
    Off,
}

impl ApiConfig {
    /// Whether the listener speaks HTTPS, given the TLS settings.
    pub fn https(&self, tls: &TlsConfig) -> bool {
        match self.tls {
            ApiTls::On => true,
            ApiTls::Off => false,
            ApiTls::Auto => tls.cert.is_some() && !self.listen.ip().is_loopback(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            keys: Vec::new(),
            rate: crate::limits::Rate {
                burst: 200.0,
                per_sec: 100.0,
            },
            idempotency_ttl: Duration::from_secs(24 * 3600),
            tls: ApiTls::Auto,
        }
    }
}

/// One API key: its id (public, in logs and the key itself), the SHA-256 of its secret (the
/// secret is never stored), and what it may do.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Letters, digits, `-` and `_`; up to 32.
    pub id: String,
    /// Hex SHA-256 of the whole key (`qk_<id>_<secret>`), as `quaver api-key` prints it.
    pub secret_sha256: String,
    /// Scopes (`messages:read`, `messages:write`, `guilds:read`, `guilds:write`,
    /// `moderation`, `sessions:read`, `sessions:write`, `presence:read`, `voice:admin`,
    /// `events:write`, `users:read`, `users:write`, `webhooks`, `events:read`, `admin` for
    /// all).
    pub scopes: Vec<String>,
}

/// Voice settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VoiceConfig {
    /// Most speakers forwarded at once in a channel (the loudest). Default 3: more than
    /// three people talking at once is noise, and each one multiplies downlink traffic.
    pub top_n: usize,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self { top_n: 3 }
    }
}

/// TLS: a real certificate, or a generated short-lived development one.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key`, disables the dev certificate.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Where the dev certificate is written. Default `certs` (git-ignored).
    pub cert_dir: PathBuf,
    /// Validity of a dev certificate. Default 10 days: Chrome accepts
    /// `serverCertificateHashes` only for certificates valid at most 14 days.
    #[serde(deserialize_with = "de_duration")]
    pub dev_validity: Duration,
    /// Renew the dev certificate this long before it expires. Default 2 days, so a
    /// browser holding yesterday's hash still has a day's overlap.
    #[serde(deserialize_with = "de_duration")]
    pub dev_renew_before: Duration,
}

/// How tokens are verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret (≥ 32 bytes). Without it and without `public_key`, a random dev
    /// secret is generated into `data_dir/dev-jwt-secret` so `quaver token` and
    /// `quaver serve` agree with no set-up.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256, ES256 or EdDSA tokens.
    pub public_key: Option<PathBuf>,
    /// Algorithm of `public_key`: `RS256`, `ES256` or `EdDSA`. Default `RS256`.
    pub algorithm: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`. Default 30 s: enough for NTP-synced hosts
    /// without stretching a token's life noticeably.
    #[serde(deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// Send `RefreshNeeded` this long before the token expires. Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub refresh_warning: Duration,
}

/// Session and transport limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// QUIC keep-alive and application heartbeat interval. Default 10 s, as the old
    /// system's `SOCKET_PING_INTERVAL`.
    #[serde(deserialize_with = "de_duration")]
    pub ping_interval: Duration,
    /// QUIC idle timeout and heartbeat timeout. Default 20 s (`SOCKET_PING_TIMEOUT`):
    /// two missed heartbeats.
    #[serde(deserialize_with = "de_duration")]
    pub ping_timeout: Duration,
    /// Time allowed from connection to `Hello` (`hello_timeout`, terminal), and to the
    /// session built after it (past it `overloaded`: the client did its part). Default 5 s:
    /// a real client sends it at once; a silent one is holding a slot.
    #[serde(deserialize_with = "de_duration")]
    pub hello_timeout: Duration,
    /// Largest frame accepted. Default 256 KiB: far above any chat message, small enough
    /// that one session cannot make the server buffer much.
    pub max_frame_bytes: usize,
    /// Most concurrent sessions; past it, new ones are closed with `overloaded`.
    /// Default 20,000 (the idle-session target is 10,000 per node with headroom).
    pub max_connections: usize,
    /// Require a stateless retry (address validation) once this many handshakes are in
    /// progress. Default 64: validation costs a round trip, so only under load; 0 = always.
    pub retry_above_handshakes: usize,
    /// Most QUIC and WebTransport connections between their first packet and `Ready`
    /// (handshake, `Hello`, the session's set-up) the node takes on at once; a new one past
    /// it is refused at the door (QUIC `CONNECTION_REFUSED`, before any handshake work) and
    /// its client comes back after a spread-out wait (PROTOCOL.md §1, "Refused at the
    /// door"). In a reconnect storm this keeps what the node has taken on finishable before
    /// its clients give up — work taken on beyond that is finished for nobody, and the
    /// client's next attempt is more of it (bench/RESULTS.md "Shedding at the door").
    /// Address validation (`retry_above_handshakes`) comes after it, and keeps spoofed
    /// Initials from filling these places. Default 1,024; 0 = no limit. WebSocket
    /// connections between their upgrade and `Ready` count too (`gateway::door`); past the
    /// limit an upgrade is closed at once with `overloaded`.
    pub max_handshakes: usize,
    /// The longest a client is asked to hold back an acknowledgement (the QUIC
    /// ACK-frequency extension; quinn-based native clients honour it, browsers keep their
    /// own 25 ms). A delivery lost at the end of a burst is only resent after a probe
    /// timeout, which includes this delay, so it bounds how fast a lost chat message is
    /// repaired. Default 5 ms (was 25 ms: at 3 % loss across a 50 ms RTT link the p90
    /// fell from 82 to 63 ms, and no CPU cost showed at F0 or F1 rates — bench/RESULTS.md
    /// "Tail loss"); 1 ms–16 s.
    #[serde(deserialize_with = "de_duration")]
    pub ack_delay: Duration,
    /// Presence and typing updates to one connection within this window leave in one
    /// packet (one write on the WebSocket framing): the first after a quiet interval goes at once, later ones wait for the
    /// window's end (chat, replies and voice are never held, and carry along what is).
    /// Each packet costs the server its encryption, its send and the client's
    /// acknowledgement — most of a delivery's cost at light load (bench/RESULTS.md "Presence
    /// and typing in one packet per window"). Default 50 ms; 0 sends each at once; at most 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub quiet_window: Duration,
    /// Full-size packets a connection's congestion window never falls below (CUBIC decides
    /// above it; `transport::congestion`). Voice datagrams are congestion-controlled and a
    /// voice flow is too small to win its window back after loss: without a floor,
    /// listeners across a lossy, reordering link heard frames late (bench/RESULTS.md
    /// "Voice redundancy"). Default 10, RFC 9002's initial window; 0 = quinn's own (2).
    pub congestion_floor: u32,
    /// How long a session whose connection was lost can be resumed exactly (its events
    /// are buffered meanwhile). Default 2 min.
    #[serde(deserialize_with = "de_duration")]
    pub resume_window: Duration,
    /// Most events buffered per session for resume. Default 2,000.
    pub replay_max_events: usize,
    /// Most bytes buffered per session for resume. Default 2 MiB.
    pub replay_max_bytes: usize,
    /// Channel events older than this are pruned from the event log (catch-up after that
    /// answers `Gap`). Default 30 days.
    #[serde(deserialize_with = "de_duration")]
    pub event_log_retention: Duration,
    /// A user whose last session ends shows offline only after this grace, so a quick
    /// reconnect does not flap offline → online. Default 5 s.
    #[serde(deserialize_with = "de_duration")]
    pub presence_grace: Duration,
    /// A guild with more members than this is large: a session that declared a view
    /// (`ViewChannels`) is told its members' presence only while it looks at one of its
    /// channels (PROTOCOL.md, "Presence in large guilds"). Without it, 10,000 members
    /// connecting cost 10,000² presence deliveries. Default 1,000; 0 makes every guild large.
    pub large_guild_members: u32,
    /// How long a graceful shutdown waits for sessions to leave after `Goaway`. Default 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// `Goaway.reconnect_after_ms` sent on shutdown. Default 1 s.
    #[serde(deserialize_with = "de_duration")]
    pub reconnect_after: Duration,
    /// How long a fetch reply may wait for the client to read it before its stream is reset.
    /// Default 30 s: a 400 KB history page over a slow mobile link, not forever.
    #[serde(deserialize_with = "de_duration")]
    pub fetch_write_timeout: Duration,
    /// Origins allowed to open WebTransport sessions (`ALLOWED_ORIGINS`, comma-separated).
    /// Empty (the default) allows any origin, for development; set it in production.
    /// Requests without an `Origin` header (native clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4433".parse().expect("valid literal"),
            http_listen: "127.0.0.1:8080".parse().expect("valid literal"),
            node_name: format!("quaver-{}", std::process::id()),
            data_dir: PathBuf::from("data"),
            database: None,
            redis: None,
            redis_prefix: String::new(),
            public_addr: None,
            public_ws_url: None,
            webrtc_listen: None,
            webrtc_shared_port: false,
            webrtc_announce: Vec::new(),
            node_id: None,
            loops: std::thread::available_parallelism().map_or(1, |n| n.get()).min(64),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            session: SessionConfig::default(),
            limits: Default::default(),
            voice: VoiceConfig::default(),
            store: Default::default(),
            api: ApiConfig::default(),
            webhooks: Default::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            cert_dir: PathBuf::from("certs"),
            dev_validity: Duration::from_secs(10 * 86_400),
            dev_renew_before: Duration::from_secs(2 * 86_400),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            public_key: None,
            algorithm: None,
            audience: None,
            issuer: None,
            leeway: Duration::from_secs(30),
            refresh_warning: Duration::from_secs(60),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(5),
            max_frame_bytes: quaver_proto::DEFAULT_MAX_FRAME,
            max_connections: 20_000,
            retry_above_handshakes: 64,
            max_handshakes: 1024,
            ack_delay: Duration::from_millis(5),
            quiet_window: Duration::from_millis(50),
            congestion_floor: 10,
            presence_grace: Duration::from_secs(5),
            large_guild_members: 1000,
            resume_window: Duration::from_secs(120),
            replay_max_events: 2_000,
            replay_max_bytes: 2 * 1024 * 1024,
            event_log_retention: Duration::from_secs(30 * 86_400),
            drain_timeout: Duration::from_secs(10),
            reconnect_after: Duration::from_secs(1),
            fetch_write_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}

/// Flags and environment variables; each overrides the TOML file when given.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "QUAVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// UDP address for QUIC and WebTransport [default: 0.0.0.0:4433].
    #[arg(long, env = "QUAVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP side port [default: 127.0.0.1:8080].
    #[arg(long, env = "QUAVER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Node name [default: quaver-<pid>].
    #[arg(long, env = "QUAVER_NODE_NAME")]
    pub node_name: Option<String>,
    /// Runtime state directory [default: data].
    #[arg(long, env = "QUAVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL (sqlite://… or postgres://…) [default: sqlite in the data dir].
    #[arg(long, env = "DATABASE_URL")]
    pub database: Option<String>,
    /// Redis for a cluster (redis://… or redis+cluster://h:p,h:p) [default: none, one node].
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel (several clusters on one Redis) [default: none].
    #[arg(long, env = "QUAVER_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// host:port clients reach this node at (announced for voice in a cluster) [default: the QUIC address].
    #[arg(long, env = "QUAVER_PUBLIC_ADDR")]
    pub public_addr: Option<String>,
    /// URL of this node's WebSocket framing, announced for voice in a cluster (wss://… behind TLS) [default: ws:// + the public host + the HTTP port].
    #[arg(long, env = "QUAVER_PUBLIC_WS_URL")]
    pub public_ws_url: Option<String>,
    /// UDP address for WebRTC voice participants (0.0.0.0: every interface) [default: none, WebRTC off].
    #[arg(long, env = "QUAVER_WEBRTC_LISTEN")]
    pub webrtc_listen: Option<SocketAddr>,
    /// IPs the WebRTC answers name, comma-separated (a public IP in front of this one) [default: found].
    #[arg(long, env = "QUAVER_WEBRTC_ANNOUNCE", value_delimiter = ',')]
    pub webrtc_announce: Option<Vec<std::net::IpAddr>>,
    /// WebRTC voice participants on the QUIC port (RFC 9443 demultiplexing) [default: off].
    #[arg(long, env = "QUAVER_WEBRTC_SHARED_PORT")]
    pub webrtc_shared_port: bool,
    /// SQLite durability: normal (fsync at checkpoints) or full (every commit) [default: normal].
    #[arg(long, env = "QUAVER_SQLITE_SYNCHRONOUS", value_enum)]
    pub sqlite_synchronous: Option<crate::store::Synchronous>,
    /// Deadline of every database call [default: 5s].
    #[arg(long, env = "QUAVER_STORE_TIMEOUT", value_parser = parse_duration)]
    pub store_timeout: Option<Duration>,
    /// Node number for snowflake ids, 0–1023 [default: from the node name].
    #[arg(long, env = "QUAVER_NODE_ID")]
    pub node_id: Option<u16>,
    /// Event loops serving the sessions, on one port, 1–64 [default: one per core].
    #[arg(long, env = "QUAVER_LOOPS")]
    pub loops: Option<usize>,
    /// PEM certificate chain (production TLS).
    #[arg(long, env = "QUAVER_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, env = "QUAVER_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Dev certificate directory [default: certs].
    #[arg(long, env = "QUAVER_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Dev certificate validity, ≤ 14d for Chrome [default: 10d].
    #[arg(long, env = "QUAVER_DEV_CERT_VALIDITY", value_parser = parse_duration)]
    pub dev_cert_validity: Option<Duration>,
    /// Renew the dev certificate this long before expiry [default: 2d].
    #[arg(long, env = "QUAVER_DEV_CERT_RENEW_BEFORE", value_parser = parse_duration)]
    pub dev_cert_renew_before: Option<Duration>,
    /// HS256 secret, at least 32 bytes.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256/EdDSA tokens.
    #[arg(long, env = "QUAVER_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key: RS256, ES256 or EdDSA [default: RS256].
    #[arg(long, env = "QUAVER_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Required token audience.
    #[arg(long, env = "QUAVER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required token issuer.
    #[arg(long, env = "QUAVER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on exp/nbf [default: 30s].
    #[arg(long, env = "QUAVER_JWT_LEEWAY", value_parser = parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Keep-alive and heartbeat interval [default: 10s; bare numbers are ms].
    #[arg(long, env = "SOCKET_PING_INTERVAL", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Idle and heartbeat timeout [default: 20s; bare numbers are ms].
    #[arg(long, env = "SOCKET_PING_TIMEOUT", value_parser = parse_duration)]
    pub ping_timeout: Option<Duration>,
    /// Time allowed to send Hello [default: 5s].
    #[arg(long, env = "QUAVER_HELLO_TIMEOUT", value_parser = parse_duration)]
    pub hello_timeout: Option<Duration>,
    /// Largest frame in bytes [default: 262144].
    #[arg(long, env = "QUAVER_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Most concurrent sessions [default: 20000].
    #[arg(long, env = "QUAVER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Require address validation above this many handshakes in flight; 0 = always [default: 64].
    #[arg(long, env = "QUAVER_RETRY_ABOVE_HANDSHAKES")]
    pub retry_above_handshakes: Option<usize>,
    /// Most connections between first packet and `Ready` at once; more are refused at the door; 0 = no limit [default: 1024].
    #[arg(long, env = "QUAVER_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Longest acknowledgement delay asked of clients [default: 5ms; bare numbers are ms].
    #[arg(long, env = "QUAVER_ACK_DELAY", value_parser = parse_duration)]
    pub ack_delay: Option<Duration>,
    /// Window within which presence and typing to one connection leave in one packet; 0 = each at once [default: 50ms; bare numbers are ms].
    #[arg(long, env = "QUAVER_QUIET_WINDOW", value_parser = parse_duration)]
    pub quiet_window: Option<Duration>,
    /// Packets the congestion window never falls below; 0 = quinn's own [default: 10].
    #[arg(long, env = "QUAVER_CONGESTION_FLOOR")]
    pub congestion_floor: Option<u32>,
    /// Resume window after a lost connection [default: 2m].
    #[arg(long, env = "QUAVER_RESUME_WINDOW", value_parser = parse_duration)]
    pub resume_window: Option<Duration>,
    /// Channel event log retention [default: 30d].
    #[arg(long, env = "QUAVER_EVENT_LOG_RETENTION", value_parser = parse_duration)]
    pub event_log_retention: Option<Duration>,
    /// Presence reconnect grace [default: 5s].
    #[arg(long, env = "QUAVER_PRESENCE_GRACE", value_parser = parse_duration)]
    pub presence_grace: Option<Duration>,
    /// Members above which a guild's presence reaches only sessions looking at it [default: 1000].
    #[arg(long, env = "QUAVER_LARGE_GUILD_MEMBERS")]
    pub large_guild_members: Option<u32>,
    /// Drain deadline on shutdown [default: 10s].
    #[arg(long, env = "QUAVER_DRAIN_TIMEOUT", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// TCP address of the server API for backends [default: 127.0.0.1:8081].
    #[arg(long, env = "QUAVER_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// HTTPS on the API listener: auto (with --cert/--key, off loopback), on, off [default: auto].
    #[arg(long, env = "QUAVER_API_TLS", value_enum)]
    pub api_tls: Option<ApiTls>,
    /// API keys as JSON: [{"id":"…","secret_sha256":"…","scopes":["…"]}] (appended to the file's).
    #[arg(long, env = "QUAVER_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// Allowed WebTransport origins, comma-separated [default: any].
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
}

impl ConfigArgs {
    /// Resolves the configuration: defaults ← TOML file ← env ← flags.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident => $($target:ident).+),* $(,)?) => {
                $(if let Some(v) = &self.$field { c.$($target).+ = v.clone().into(); })*
            };
        }
        set! {
            listen => listen, http_listen => http_listen, node_name => node_name,
            redis_prefix => redis_prefix, loops => loops,
            data_dir => data_dir, cert_dir => tls.cert_dir,
            dev_cert_validity => tls.dev_validity, dev_cert_renew_before => tls.dev_renew_before,
            jwt_leeway => auth.leeway,
            ping_interval => session.ping_interval, ping_timeout => session.ping_timeout,
            hello_timeout => session.hello_timeout, max_frame_bytes => session.max_frame_bytes,
            max_connections => session.max_connections,
            retry_above_handshakes => session.retry_above_handshakes, ack_delay => session.ack_delay,
            max_handshakes => session.max_handshakes, quiet_window => session.quiet_window,
            congestion_floor => session.congestion_floor,
            drain_timeout => session.drain_timeout,
            presence_grace => session.presence_grace,
            large_guild_members => session.large_guild_members,
            resume_window => session.resume_window,
            event_log_retention => session.event_log_retention,
            store_timeout => store.timeout, sqlite_synchronous => store.sqlite_synchronous,
        }
        macro_rules! set_opt {
            ($($field:ident => $($target:ident).+),* $(,)?) => {
                $(if let Some(v) = &self.$field { c.$($target).+ = Some(v.clone()); })*
            };
        }
        set_opt! {
            cert => tls.cert, key => tls.key, jwt_secret => auth.jwt_secret,
            database => database, node_id => node_id, redis => redis, public_addr => public_addr,
            public_ws_url => public_ws_url,
            webrtc_listen => webrtc_listen,
            jwt_public_key => auth.public_key, jwt_algorithm => auth.algorithm,
            jwt_audience => auth.audience, jwt_issuer => auth.issuer,
        }
        if self.webrtc_shared_port {
            c.webrtc_shared_port = true;
        }
        if let Some(a) = &self.webrtc_announce {
            c.webrtc_announce = a.clone();
        }
        if let Some(a) = self.api_listen {
            c.api.listen = a;
        }
        if let Some(t) = self.api_tls {
            c.api.tls = t;
        }
        if let Some(k) = &self.api_keys {
            let keys: Vec<ApiKeyConfig> =
                serde_json::from_str(k).map_err(|e| anyhow::anyhow!("QUAVER_API_KEYS / --api-keys: {e}"))?;
            c.api.keys.extend(keys);
        }
        if let Some(o) = &self.allowed_origins {
            c.session.allowed_origins = o
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        c.validate()?;
        Ok(c)
    }
}

impl Config {
    /// SFU tuning from the voice settings.
    pub fn voice_sfu(&self) -> crate::voice::sfu::SfuConfig {
        crate::voice::sfu::SfuConfig {
            top_n: self.voice.top_n.max(1),
            ..Default::default()
        }
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("quaver.db").display()),
        }
    }

    /// The snowflake node number in force.
    pub fn node_number(&self) -> u16 {
        self.node_id.unwrap_or_else(|| {
            // FNV-1a of the name: stable across restarts of the same node.
            let h = self.node_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            (h % 1024) as u16
        }) & 0x3ff
    }

    /// Rejects settings that cannot work, saying why.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=64).contains(&self.loops), "loops must be 1–64, not {}", self.loops);
        let s = &self.session;
        anyhow::ensure!(s.ping_interval > Duration::ZERO, "ping interval must be positive");
        anyhow::ensure!(
            (Duration::from_millis(1)..=Duration::from_millis(16_383)).contains(&s.ack_delay),
            "ack delay must be 1 ms–16 s (a QUIC transport limit), not {:?}",
            s.ack_delay
        );
        anyhow::ensure!(
            s.quiet_window <= Duration::from_secs(1),
            "quiet window must be at most 1 s (presence and typing would lag behind what people see), not {:?}",
            s.quiet_window
        );
        anyhow::ensure!(
            s.congestion_floor <= 64,
            "congestion floor must be 0–64 packets, not {}",
            s.congestion_floor
        );
        anyhow::ensure!(
            s.ping_timeout > s.ping_interval,
            "ping timeout ({:?}) must exceed the ping interval ({:?}), or every idle session times out",
            s.ping_timeout,
            s.ping_interval
        );
        anyhow::ensure!(
            (64..=quaver_proto::HARD_MAX_FRAME).contains(&s.max_frame_bytes),
            "max frame bytes must be between 64 and {}",
            quaver_proto::HARD_MAX_FRAME
        );
        anyhow::ensure!(s.max_connections > 0, "max connections must be positive");
        anyhow::ensure!(
            !(self.webrtc_shared_port && self.webrtc_listen.is_some()),
            "WebRTC is on its own port (webrtc_listen) or on the QUIC port (webrtc_shared_port), not both"
        );
        for k in &self.api.keys {
            anyhow::ensure!(
                !k.id.is_empty()
                    && k.id.len() <= 32
                    && k.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "API key id {:?}: 1–32 letters, digits, - or _",
                k.id
            );
            anyhow::ensure!(
                k.secret_sha256.len() == 64 && k.secret_sha256.chars().all(|c| c.is_ascii_hexdigit()),
                "API key {}: secret_sha256 is 64 hex digits (quaver api-key prints it)",
                k.id
            );
            for sc in &k.scopes {
                anyhow::ensure!(
                    crate::api::Scope::parse(sc).is_some(),
                    "API key {}: unknown scope {sc:?}",
                    k.id
                );
            }
        }
        let mut ids: Vec<&str> = self.api.keys.iter().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        anyhow::ensure!(ids.windows(2).all(|w| w[0] != w[1]), "two API keys with one id");
        anyhow::ensure!(
            self.store.timeout >= Duration::from_millis(10),
            "store timeout must be at least 10ms"
        );
        let t = &self.tls;
        anyhow::ensure!(
            t.dev_validity <= Duration::from_secs(14 * 86_400),
            "dev certificate validity must be at most 14 days (Chrome's limit for serverCertificateHashes)"
        );
        anyhow::ensure!(
            t.dev_renew_before < t.dev_validity,
            "dev certificate renewal lead must be shorter than its validity"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_https_with_a_certificate_off_loopback_or_when_asked() {
        let mut api = ApiConfig::default();
        let mut tls = TlsConfig::default();
        assert!(!api.https(&tls), "loopback, dev certificate: plain");
        tls.cert = Some("cert.pem".into());
        assert!(!api.https(&tls), "loopback: plain even with a certificate");
        api.listen = "0.0.0.0:8081".parse().unwrap();
        assert!(api.https(&tls), "a certificate and a public interface: HTTPS");
        api.tls = ApiTls::Off;
        assert!(!api.https(&tls));
        api.tls = ApiTls::On;
        tls.cert = None;
        assert!(api.https(&tls), "on: always");
    }

    #[test]
    fn durations_parse_with_units_and_bare_milliseconds() {
        assert_eq!(parse_duration("10000").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("10d").unwrap(), Duration::from_secs(864_000));
        assert!(parse_duration("10y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn toml_then_overrides() {
        let dir = std::env::temp_dir().join(format!("quaver-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:5000\"\n[session]\nping_interval = \"5s\"\nping_timeout = \"15s\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path),
            ping_timeout: Some(Duration::from_secs(30)),
            allowed_origins: Some(vec!["https://a.example".into(), " ".into()]),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.session.ping_interval, Duration::from_secs(5));
        assert_eq!(c.session.ping_timeout, Duration::from_secs(30));
        assert_eq!(c.session.allowed_origins, vec!["https://a.example".to_string()]);
    }

    #[test]
    fn impossible_settings_are_refused() {
        let mut c = Config::default();
        c.session.ping_timeout = c.session.ping_interval;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.tls.dev_validity = Duration::from_secs(15 * 86_400);
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.session.ack_delay = Duration::ZERO;
        assert!(c.validate().is_err(), "an ack delay of 0 cannot be sent");
        c.session.ack_delay = Duration::from_secs(17);
        assert!(c.validate().is_err(), "past the transport parameter's 2^14 ms");
        c.session.ack_delay = Duration::from_millis(5);
        assert!(c.validate().is_ok());
        c.session.congestion_floor = 65;
        assert!(c.validate().is_err(), "a floor past 64 packets is a fire hose");
        c.session.congestion_floor = 0;
        assert!(c.validate().is_ok());
        c.session.quiet_window = Duration::from_millis(1001);
        assert!(c.validate().is_err(), "presence a second late is presence that lies");
        c.session.quiet_window = Duration::ZERO;
        assert!(c.validate().is_ok(), "0: every update at once");
    }
}
