//! The native Quaver client: connects over raw QUIC (`quaver/1`) or WebTransport, verifies
//! the server by pinned certificate hash or by CA roots, says `Hello`, and gives the caller
//! the `Ready`, lanes (requests with ids; events in order) and fetch streams.
//!
//! This layer is one connection; [`resilient`] builds reconnection, resume, de-duplication
//! and retried sends on it.

pub mod raw;
pub mod redundancy;
pub mod relay;
pub mod resilient;
pub mod voice;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quaver_proto::codec::io::{FramedRead, ReadError, write_msg};
pub use quaver_proto::session::Transport;
use quaver_proto::session::{RecvStream, SendStream, Session};
use quaver_proto::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Where a WebTransport client puts its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// In `Hello.token` (the only choice on raw QUIC).
    Hello,
    /// In the URL, `?token=` (what browsers must do).
    Query,
    /// In an `Authorization: Bearer` header on the CONNECT request.
    Header,
}

/// How the server's certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Accept exactly these SHA-256 certificate hashes (dev certificates; `/cert-hash`).
    Hashes(Vec<[u8; 32]>),
    /// Accept certificates chaining to the CAs in this PEM file (e.g.
    /// `/etc/ssl/certs/ca-certificates.crt` for public CAs).
    CaFile(PathBuf),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server UDP address.
    pub addr: SocketAddr,
    /// Name to verify in the certificate (and `:authority` for WebTransport).
    pub server_name: String,
    /// Transport to use.
    pub transport: Transport,
    /// How to trust the server.
    pub trust: Trust,
    /// The JWT, if any.
    pub token: Option<String>,
    /// Where to put the token (WebTransport only; raw QUIC always uses `Hello`).
    pub token_placement: TokenPlacement,
    /// Device kind announced in `Hello`.
    pub device: DeviceKind,
    /// `Origin` header for WebTransport (browsers always send one; native clients need not).
    pub origin: Option<String>,
    /// WebTransport path (normally [`WEBTRANSPORT_PATH`]).
    pub path: String,
    /// Largest frame accepted from the server (server frames may exceed the 256 KiB the
    /// server accepts from clients: a `Ready` or a history page can be large).
    pub max_frame: usize,
    /// Ask for zstd compression of large fetch replies.
    pub compression: Compression,
    /// Resume this session (set by [`resilient::Resilient`] on reconnect).
    pub resume: Option<ResumeRequest>,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Other nodes of the same cluster: [`resilient::Resilient`] tries the next one when
    /// a connection attempt fails (a dead node's clients move to a live one).
    pub alternates: Vec<SocketAddr>,
    /// How long [`resilient::Resilient`] gives one attempt to connect and reach `Ready`
    /// before it calls the server unreachable and tries again (a network that drops UDP
    /// never answers; waiting out the idle timeout would keep the user in silence).
    pub connect_timeout: Duration,
    /// The WebSocket framing's address (`ws://host:httpport/quaver/ws`, PROTOCOL.md §11, or
    /// `wss://…` through a TLS terminator, trusted as [`Config::trust`] says),
    /// for networks that drop UDP. With [`Transport::WebSocket`] it is the only way; with
    /// the others it is the fallback, started when the first does not answer within
    /// [`Config::fallback_after`] (or fails sooner): the first to be ready wins.
    pub ws_url: Option<String>,
    /// How long QUIC or WebTransport gets before the WebSocket fallback starts beside it.
    pub fallback_after: Duration,
    /// Raw QUIC: while the server has not answered a handshake at all, a fresh attempt (a
    /// new socket and a new Initial) starts beside the first after this long, and a third
    /// after twice as long again (at 0.5 s and 1.5 s by default), the first to finish
    /// winning. A handshake's own retransmissions back off (1 s, 2 s, 4 s …), so an attempt
    /// begun during an outage would otherwise answer seconds after the network returns.
    /// Never more than three per connect, and none once the server has answered: a server
    /// that is slow because it is loaded — a restarted node under its reconnect storm —
    /// would take each on as a handshake of its own. (An attempt every 0.5 s, the oldest
    /// of three dropped, made a 6,000-client storm take on 40,000 handshakes:
    /// bench/RESULTS.md "Shedding at the door".)
    pub probe_every: Duration,
    /// QUIC and WebTransport: how often the client checks which local address its route to
    /// the server leaves from; when that changes (another Wi-Fi, a cable, a VPN), a
    /// heartbeat goes out at once from the new address and the server moves the connection
    /// there, so even a client that is only listening is found without waiting for its
    /// next heartbeat. `None` turns the check off (an application that has the OS's
    /// network-change signal calls [`Client::network_changed`] itself).
    pub network_check_every: Option<Duration>,
    /// Raw QUIC: the longest the server may hold back its acknowledgements of this client's
    /// packets, asked with the ACK-frequency extension (`None`: the server's own 25 ms). A
    /// message lost on its way up is resent a probe timeout after it was sent, and that
    /// timeout includes this delay. Default 5 ms: at 3 % loss across a 50 ms RTT link the
    /// p99 fell from 187 to 164 ms (with the server's own request at 5 ms too; bench/RESULTS.md
    /// "Tail loss"); the server sends few ACKs to a client, so it costs next to nothing.
    pub ack_delay: Option<Duration>,
    /// Voice: each frame [`Client::send_voice`] sends carries the previous one again
    /// (`FLAG_REDUNDANT`, PROTOCOL.md §8), and [`voice::join_voice`] asks the server for
    /// such datagrams (`SetVoiceOptions`), so one lost datagram costs no audio: at 3 % loss
    /// each way and 20 ms jitter the frames a listener could not play fell from 5–6 % to
    /// 0.3–0.5 % (bench/RESULTS.md "Voice redundancy"). The price is a second copy of each
    /// frame on the wire (Opus frames are 60–120 bytes). Default on.
    pub voice_redundancy: bool,
    /// TLS session tickets from earlier connections, shared by every clone of this
    /// `Config` (so [`resilient::Resilient`]'s reconnects resume TLS: no certificate sent
    /// or checked, less server CPU — the server's tickets survive its restarts and are
    /// valid on every node of a cluster). A new `Config` starts with an empty store of
    /// its own.
    pub tls_sessions: Arc<TlsSessions>,
    /// Raw QUIC: make every connection through this endpoint instead of a fresh socket per
    /// attempt. For a process that runs many clients (a load generator): a quinn endpoint
    /// keeps receive buffers of a few MB, so 10,000 of them do not fit in 24 GB, nor their
    /// sockets in 20,000 descriptors. `Client::network_changed` rebinds the endpoint, for
    /// every client on it. `None` (the default): a socket per connection.
    pub quic_endpoint: Option<quinn::Endpoint>,
}

/// What a client keeps across its connections to resume TLS: the tickets, and the rustls
/// configurations they were made under — rustls resumes a ticket only with the very
/// certificate verifier (the same `Arc`) that accepted the server the first time, so a
/// configuration built afresh for each connection would never resume.
#[derive(Debug)]
pub struct TlsSessions {
    tickets: Arc<rustls::client::ClientSessionMemoryCache>,
    configs: std::sync::Mutex<Vec<(Vec<u8>, Trust, rustls::ClientConfig)>>,
}

impl Default for TlsSessions {
    fn default() -> Self {
        Self {
            tickets: Arc::new(rustls::client::ClientSessionMemoryCache::new(TLS_TICKETS_KEPT)),
            configs: Default::default(),
        }
    }
}

/// Size of a [`TlsSessions`] ticket store: rustls keeps up to 8 tickets per server name
/// (enough for the raw-QUIC client's parallel attempts, each of which takes one), for this
/// many names divided by 8 (4).
const TLS_TICKETS_KEPT: usize = 32;

impl Config {
    /// Defaults for a server at `addr` trusted by certificate hash.
    pub fn new(addr: SocketAddr, transport: Transport, trust: Trust) -> Self {
        Self {
            addr,
            server_name: "localhost".into(),
            transport,
            trust,
            token: None,
            token_placement: TokenPlacement::Hello,
            device: DeviceKind::Desktop,
            origin: None,
            path: WEBTRANSPORT_PATH.into(),
            max_frame: HARD_MAX_FRAME,
            compression: Compression::Zstd,
            resume: None,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            alternates: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            ws_url: None,
            fallback_after: Duration::from_secs(2),
            probe_every: Duration::from_millis(500),
            network_check_every: Some(Duration::from_millis(200)),
            ack_delay: Some(Duration::from_millis(5)),
            voice_redundancy: true,
            tls_sessions: Arc::default(),
            quic_endpoint: None,
        }
    }

    /// rustls client configuration for this server and `alpn`, resuming from and storing
    /// into [`Config::tls_sessions`]: built once per ALPN and trust, then cloned (a clone
    /// shares the verifier the tickets are bound to).
    fn tls(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, Error> {
        let mut configs = self.tls_sessions.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = configs.iter().find(|(a, t, _)| a == alpn && *t == self.trust) {
            return Ok(c.clone());
        }
        let mut tls = tls_config(&self.trust, alpn)?;
        tls.resumption = rustls::client::Resumption::store(self.tls_sessions.tickets.clone());
        configs.push((alpn.to_vec(), self.trust.clone(), tls.clone()));
        Ok(tls)
    }
}

/// Why a connection or request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server closed the session with a close code (during or after `Hello`).
    #[error("closed by server: {code} {reason}")]
    Closed {
        /// Close code.
        code: CloseCode,
        /// Reason text.
        reason: String,
    },
    /// The WebTransport request was refused with an HTTP status (403 wrong Origin, 404 path).
    #[error("WebTransport request rejected: {0}")]
    Rejected(String),
    /// Transport-level failure.
    #[error("transport: {0}")]
    Transport(String),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
}

impl Error {
    /// The close code, when the server closed with one.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Pins certificates by SHA-256 but still checks the handshake signature.
#[derive(Debug)]
struct PinnedHashes {
    hashes: Vec<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedHashes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if self.hashes.iter().any(|h| h[..] == *d.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// rustls client configuration for `trust` and one ALPN.
pub fn tls_config(trust: &Trust, alpn: &[u8]) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = match trust {
        Trust::Hashes(hashes) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedHashes {
                hashes: hashes.clone(),
                provider,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| Error::Tls(e.to_string()))?;
                roots.add(cert).map_err(|e| Error::Tls(e.to_string()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A failed write or open: the close that caused it if the connection carried one (a
/// WebSocket refused at the door is closed with `overloaded` as it opens, and the `Hello`
/// written after that fails), else a transport error.
fn closed_or(session: &Session, e: impl std::fmt::Display) -> Error {
    match session.close_reason() {
        Some((code, reason)) => Error::Closed {
            code: CloseCode(code),
            reason,
        },
        None => Error::Transport(e.to_string()),
    }
}

fn read_err(session: &Session, e: ReadError) -> Error {
    if let Some((code, reason)) = session.close_reason() {
        return Error::Closed {
            code: CloseCode(code),
            reason,
        };
    }
    match e {
        ReadError::Io(e) => Error::Transport(e.to_string()),
        other => Error::Protocol(other.to_string()),
    }
}

/// Opens the connection of `transport` (QUIC or WebTransport) to `cfg.addr`.
async fn open_quic(cfg: &Config, transport: Transport) -> Result<(Session, Option<quinn::Endpoint>), Error> {
    let bind = unspecified_for(cfg.addr);
    Ok(match transport {
        Transport::Quic => {
            let (conn, endpoint) = open_quic_staggered(cfg).await?;
            (Session::Quic(conn), Some(endpoint))
        }
        Transport::WebTransport => {
            let tls = cfg.tls(ALPN_H3)?;
            let wcfg = wtransport::ClientConfig::builder()
                .with_bind_address(bind)
                .with_custom_tls(tls)
                .keep_alive_interval(Some(cfg.keep_alive))
                .max_idle_timeout(Some(cfg.idle_timeout))
                .map_err(|e| Error::Tls(e.to_string()))?
                .build();
            let endpoint = wtransport::Endpoint::client(wcfg).map_err(|e| Error::Transport(e.to_string()))?;
            let mut url = format!("https://{}:{}{}", cfg.server_name, cfg.addr.port(), cfg.path);
            if cfg.token_placement == TokenPlacement::Query
                && let Some(t) = &cfg.token
            {
                url.push_str(if url.contains('?') { "&token=" } else { "?token=" });
                url.push_str(t);
            }
            let mut opts = wtransport::endpoint::ConnectOptions::builder(url);
            if cfg.token_placement == TokenPlacement::Header
                && let Some(t) = &cfg.token
            {
                opts = opts.add_header("authorization", format!("Bearer {t}"));
            }
            if let Some(o) = &cfg.origin {
                opts = opts.add_header("origin", o.clone());
            }
            // Resolve via the address we were given, not DNS.
            let conn = endpoint.connect(opts.build()).await.map_err(|e| match e {
                wtransport::error::ConnectingError::SessionRejected => Error::Rejected("session rejected".into()),
                other => Error::Transport(other.to_string()),
            })?;
            (Session::WebTransport(conn), None)
        }
        Transport::WebSocket => return open_ws(cfg).await,
    })
}

/// The raw-QUIC client configuration `cfg` asks for.
fn quic_client_config(cfg: &Config) -> Result<quinn::ClientConfig, Error> {
    let tls = cfg.tls(ALPN_QUAVER)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(cfg.keep_alive));
    transport.max_idle_timeout(Some(
        cfg.idle_timeout
            .try_into()
            .map_err(|_| Error::Tls("idle timeout".into()))?,
    ));
    if let Some(delay) = cfg.ack_delay {
        transport.ack_frequency_config(Some(ack_frequency(delay)));
    }
    qc.transport_config(Arc::new(transport));
    Ok(qc)
}

/// What a client asks of the server with [`Config::ack_delay`] (also used by quinn-proto
/// drivers that take a [`Config`], such as the bench's).
pub fn ack_frequency(delay: Duration) -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(delay));
    ack
}

/// At most this many raw-QUIC handshakes per connect ([`Config::probe_every`]).
const MAX_ATTEMPTS: usize = 3;

/// One raw-QUIC handshake on a socket of its own (or on `shared`: [`Config::quic_endpoint`]);
/// `answered` is set as soon as the server's first handshake flight arrives.
async fn quic_attempt(
    qc: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
    answered: Arc<std::sync::atomic::AtomicBool>,
    shared: Option<quinn::Endpoint>,
) -> Result<(quinn::Connection, quinn::Endpoint), Error> {
    let endpoint = match shared {
        Some(e) => e,
        None => quinn::Endpoint::client(unspecified_for(addr)).map_err(|e| Error::Transport(e.to_string()))?,
    };
    let mut connecting = endpoint
        .connect_with(qc, addr, &server_name)
        .map_err(|e| Error::Transport(e.to_string()))?;
    // Resolves when the server's handshake data is in (or the attempt failed: the error
    // comes from awaiting the connection below).
    if connecting.handshake_data().await.is_ok() {
        answered.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let conn = connecting.await.map_err(handshake_error)?;
    Ok((conn, endpoint))
}

/// A raw-QUIC handshake's failure. A QUIC `CONNECTION_REFUSED` is the node shedding load
/// at the door (PROTOCOL.md §1: too many connections being set up, or full): it reads as
/// `overloaded`, which [`resilient::Resilient`] waits out longer than a network failure.
fn handshake_error(e: quinn::ConnectionError) -> Error {
    match e {
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Error::Closed {
                code: CloseCode::OVERLOADED,
                reason: "refused at the handshake: the server is busy".into(),
            }
        }
        e => Error::Transport(e.to_string()),
    }
}

/// Raw QUIC to `cfg.addr`, with a fresh attempt after [`Config::probe_every`], then twice
/// that, while the server is silent (see there). The first attempt to finish wins and the
/// others are dropped before anything is said on them, so only one `Hello` is ever sent;
/// the first error ends the connect (a refusal, a certificate that is not trusted).
async fn open_quic_staggered(cfg: &Config) -> Result<(quinn::Connection, quinn::Endpoint), Error> {
    type Joined = Option<Result<Result<(quinn::Connection, quinn::Endpoint), Error>, tokio::task::JoinError>>;
    fn outcome(done: Joined) -> Result<(quinn::Connection, quinn::Endpoint), Error> {
        match done {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(Error::Transport(format!("connect attempt failed: {e}"))),
            None => Err(Error::Transport("no connect attempt".into())),
        }
    }
    let qc = quic_client_config(cfg)?;
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attempts = tokio::task::JoinSet::new();
    let mut gap = cfg.probe_every.max(Duration::from_millis(10));
    loop {
        attempts.spawn(quic_attempt(
            qc.clone(),
            cfg.addr,
            cfg.server_name.clone(),
            answered.clone(),
            cfg.quic_endpoint.clone(),
        ));
        if attempts.len() >= MAX_ATTEMPTS {
            break;
        }
        tokio::select! {
            done = attempts.join_next() => return outcome(done),
            () = tokio::time::sleep(gap) => {}
        }
        gap = gap.saturating_mul(2);
        if answered.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    outcome(attempts.join_next().await)
}

/// `0.0.0.0:0` or `[::]:0`, whichever reaches `peer`.
pub(crate) fn unspecified_for(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0u8; 4], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// The local address the OS would send from to reach `server` now (`None`: no route).
/// Asked of a fresh UDP socket each time: `connect` on a UDP socket only chooses a route
/// and sends nothing.
pub fn route_source(server: SocketAddr) -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind(unspecified_for(server)).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Watches the route's source address ([`route_source`]): says when it moved to another
/// address, the moment a session must follow.
#[derive(Debug, Clone, Default)]
pub struct RouteWatch {
    last: Option<std::net::IpAddr>,
}

impl RouteWatch {
    /// Starts from the address in use now.
    pub fn new(now: Option<std::net::IpAddr>) -> Self {
        Self { last: now }
    }

    /// Takes the address seen now; true when it is an address and not the last one seen
    /// (a route that vanished is not a change to follow yet: there is nowhere to go; its
    /// return, to the same or another address, is).
    pub fn observe(&mut self, now: Option<std::net::IpAddr>) -> bool {
        let changed = now.is_some() && now != self.last;
        if now.is_some() || self.last.is_some() {
            self.last = now;
        }
        changed
    }
}

/// Sends one automatic heartbeat (its ack is consumed silently): also the packet that tells
/// the server a new address, from whatever address the route uses now.
async fn auto_heartbeat(ctl: &tokio::sync::Mutex<SendStream>, n: u32) -> Result<(), Error> {
    let hb = ClientControl::Heartbeat(Heartbeat {
        nonce: AUTO_HEARTBEAT | (n & !AUTO_HEARTBEAT),
        lanes: Vec::new(),
    });
    write_msg(&mut *ctl.lock().await, &hb)
        .await
        .map(|_| ())
        .map_err(|e| Error::Transport(e.to_string()))
}

/// Says "here I am" at once whenever the route to `server` changes its source address
/// (checked every `every`); the [`Client`] aborts it when dropped.
///
/// The connection's socket is bound to the unspecified address, so the kernel already
/// sends from the new address: one packet is all the server needs to move the connection
/// there (QUIC migration), and a client that is only listening would otherwise send
/// nothing until its next heartbeat. The probe goes out on the same socket, not a new one:
/// a packet such as an ACK may already have left from the new address, and a second move
/// to another port while the server is still validating the first made quinn give up on
/// both and fall back to the dead address (measured: 19 of 200 sessions stalled ~4 s).
async fn follow_network(ctl: Arc<tokio::sync::Mutex<SendStream>>, server: SocketAddr, every: Duration) {
    let mut watch = RouteWatch::new(route_source(server));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = route_source(server);
        if watch.observe(now) {
            match auto_heartbeat(&ctl, u32::MAX).await {
                Ok(()) => tracing::info!(?now, "the route to the server changed: told the server"),
                Err(e) => {
                    tracing::warn!(error = %e, "the route to the server changed, and the session has ended");
                    return;
                }
            }
        }
    }
}

/// Opens the WebSocket framing's connection at `cfg.ws_url`.
async fn open_ws(cfg: &Config) -> Result<(Session, Option<quinn::Endpoint>), Error> {
    let url = cfg
        .ws_url
        .as_deref()
        .ok_or_else(|| Error::Transport("Config::ws_url is needed for the WebSocket framing".into()))?;
    // `wss://` (a TLS terminator in front of the HTTP port) is trusted as `cfg.trust` says,
    // with the name in the URL.
    let tls = match url.starts_with("wss:") {
        true => Some(Arc::new(cfg.tls(b"http/1.1")?)),
        false => None,
    };
    let c = quaver_proto::session::ws::WsConnection::connect(url, tls)
        .await
        .map_err(|e| Error::Transport(format!("WebSocket: {e}")))?;
    Ok((Session::WebSocket(c), None))
}

/// The connection a session runs on: `cfg.transport`, or — with `cfg.ws_url` — whichever
/// of it and the WebSocket framing is ready first, the WebSocket started after
/// `cfg.fallback_after` or as soon as the first fails.
async fn open_transport(cfg: &Config) -> Result<(Session, Option<quinn::Endpoint>), Error> {
    if cfg.transport == Transport::WebSocket || cfg.ws_url.is_none() {
        return open_quic(cfg, cfg.transport).await;
    }
    let primary = open_quic(cfg, cfg.transport);
    tokio::pin!(primary);
    let first_err = tokio::select! {
        r = &mut primary => match r {
            Ok(s) => return Ok(s),
            Err(e) => Some(e),
        },
        () = tokio::time::sleep(cfg.fallback_after) => None,
    };
    let fallback = open_ws(cfg);
    tokio::pin!(fallback);
    let Some(first_err) = first_err else {
        // Both at once: the first ready wins; both failing is the two errors.
        return tokio::select! {
            r = &mut primary => match r {
                Ok(s) => Ok(s),
                Err(a) => fallback.await.map_err(|b| Error::Transport(format!("{a}; {b}"))),
            },
            r = &mut fallback => match r {
                Ok(s) => Ok(s),
                Err(b) => primary.await.map_err(|a| Error::Transport(format!("{a}; {b}"))),
            },
        };
    };
    fallback
        .await
        .map_err(|b| Error::Transport(format!("{first_err}; {b}")))
}

/// Opens a session: connects (falling back to WebSocket when `Config::ws_url` says where),
/// sends `Hello`, and waits for `Ready`.
pub async fn connect(cfg: &Config) -> Result<Client, Error> {
    let (session, endpoint) = open_transport(cfg).await?;
    let (mut ctl_tx, ctl_rx) = session.open_bi().await.map_err(|e| closed_or(&session, e))?;
    let mut control = FramedRead::new(ctl_rx, cfg.max_frame);
    let token = match (session.transport(), cfg.token_placement) {
        (Transport::Quic | Transport::WebSocket, _) | (_, TokenPlacement::Hello) => cfg.token.clone(),
        _ => None,
    };
    let hello = ClientControl::Hello(Hello {
        version: PROTOCOL_VERSION,
        token,
        device: cfg.device,
        resume: cfg.resume.clone(),
        compression: cfg.compression,
    });
    write_msg(&mut ctl_tx, &hello)
        .await
        .map_err(|e| closed_or(&session, e))?;
    let (ready, resumed) = match control.next::<ServerControl>().await {
        Ok(Some(ServerControl::Ready(r))) => (*r, false),
        Ok(Some(ServerControl::Resumed(r))) => (*r, true),
        Ok(Some(ServerControl::Closing(c))) => {
            return Err(Error::Closed {
                code: CloseCode(c.code),
                reason: c.reason,
            });
        }
        Ok(Some(other)) => return Err(Error::Protocol(format!("expected Ready, got {other:?}"))),
        Ok(None) => {
            return Err(read_err(
                &session,
                ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            ));
        }
        Err(e) => return Err(read_err(&session, e)),
    };
    let ctl_tx = Arc::new(tokio::sync::Mutex::new(ctl_tx));
    let network = match (session.transport(), cfg.network_check_every) {
        (Transport::Quic | Transport::WebTransport, Some(every)) => {
            Some(tokio::spawn(follow_network(ctl_tx.clone(), cfg.addr, every)))
        }
        _ => None,
    };
    let heartbeats = tokio::spawn(heartbeat_loop(
        ctl_tx.clone(),
        Duration::from_millis(u64::from(ready.heartbeat_interval_ms.max(100))),
    ));
    Ok(Client {
        session,
        _endpoint: endpoint,
        ctl_tx,
        control,
        ready,
        resumed,
        max_frame: cfg.max_frame,
        heartbeats,
        network,
        voice_tx: cfg
            .voice_redundancy
            .then(|| std::sync::Mutex::new(redundancy::Sender::default())),
        voice_rx: std::sync::Mutex::new((redundancy::Repair::default(), VecDeque::new())),
    })
}

/// The server's bound on an uplink voice datagram, header included (PROTOCOL.md §5, voice).
const VOICE_DATAGRAM_MAX: usize = 1024;

/// Nonces of automatic heartbeats have this bit set; their acks are consumed silently.
const AUTO_HEARTBEAT: u32 = 1 << 31;

/// Sends a heartbeat every `every` until the stream fails (the session ended).
async fn heartbeat_loop(ctl: Arc<tokio::sync::Mutex<SendStream>>, every: Duration) {
    let mut n: u32 = 0;
    loop {
        tokio::time::sleep(every).await;
        n = n.wrapping_add(1);
        if auto_heartbeat(&ctl, n).await.is_err() {
            return;
        }
    }
}

/// An open session.
#[derive(Debug)]
pub struct Client {
    session: Session,
    /// Keeps a raw-QUIC endpoint alive as long as the client.
    _endpoint: Option<quinn::Endpoint>,
    /// Shared with the heartbeat task.
    ctl_tx: Arc<tokio::sync::Mutex<SendStream>>,
    control: FramedRead<RecvStream>,
    /// What the server said in `Ready` (or `Resumed`).
    pub ready: Ready,
    /// Whether the server resumed the session named in `Config::resume` exactly.
    pub resumed: bool,
    max_frame: usize,
    /// Sends heartbeats every `ready.heartbeat_interval_ms`; stopped on drop.
    heartbeats: tokio::task::JoinHandle<()>,
    /// Follows a change of the route's local address (raw QUIC); stopped on drop.
    network: Option<tokio::task::JoinHandle<()>>,
    /// The previous voice frame, repeated in the next datagram (`Config::voice_redundancy`).
    voice_tx: Option<std::sync::Mutex<redundancy::Sender>>,
    /// Received voice: repair from copies, and frames of one datagram not yet returned.
    voice_rx: std::sync::Mutex<(redundancy::Repair, VecDeque<redundancy::Frame>)>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.heartbeats.abort();
        if let Some(n) = &self.network {
            n.abort();
        }
    }
}

impl Client {
    /// The underlying session (datagrams, close, stats).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The transport the session runs on (after a fallback: [`Transport::WebSocket`]).
    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// Sends a control frame.
    pub async fn send_control(&mut self, msg: &ClientControl) -> Result<(), Error> {
        write_msg(&mut *self.ctl_tx.lock().await, msg)
            .await
            .map(|_| ())
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// The next control frame from the server; `Err(Closed)` once the server closed.
    pub async fn next_control(&mut self) -> Result<ServerControl, Error> {
        loop {
            match self.control.next::<ServerControl>().await {
                Ok(Some(ServerControl::HeartbeatAck(hb))) if hb.nonce & AUTO_HEARTBEAT != 0 => continue,
                other => return self.control_result(other).await,
            }
        }
    }

    async fn control_result(&self, r: Result<Option<ServerControl>, ReadError>) -> Result<ServerControl, Error> {
        match r {
            Ok(Some(m)) => Ok(m),
            Ok(None) => {
                self.session.closed().await;
                Err(read_err(
                    &self.session,
                    ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                ))
            }
            Err(e) => {
                self.session.closed().await;
                Err(read_err(&self.session, e))
            }
        }
    }

    /// Moves a raw-QUIC session to a new local UDP socket (QUIC connection migration): the
    /// session continues from the new address without a reconnect.
    pub fn rebind(&self) -> Result<SocketAddr, Error> {
        let endpoint = self
            ._endpoint
            .as_ref()
            .ok_or_else(|| Error::Transport("rebinding needs a raw QUIC session".into()))?;
        let old = endpoint.local_addr().map_err(|e| Error::Transport(e.to_string()))?;
        let socket = std::net::UdpSocket::bind(unspecified_for(old)).map_err(|e| Error::Transport(e.to_string()))?;
        let addr = socket.local_addr().map_err(|e| Error::Transport(e.to_string()))?;
        endpoint.rebind(socket).map_err(|e| Error::Transport(e.to_string()))?;
        Ok(addr)
    }

    /// What an application calls on the OS's network-change signal: over QUIC or
    /// WebTransport a heartbeat goes out at once, from whatever address the route uses now,
    /// and the server moves the connection there (the check of
    /// [`Config::network_check_every`] does the same by itself within its interval). A
    /// WebSocket cannot move: `Err`, and the caller reconnects
    /// ([`resilient::Resilient::network_changed`] does).
    pub async fn network_changed(&self) -> Result<(), Error> {
        if self.session.transport() == Transport::WebSocket {
            return Err(Error::Transport(
                "a WebSocket connection cannot move to another address".into(),
            ));
        }
        auto_heartbeat(&self.ctl_tx, u32::MAX).await
    }

    /// Stops the automatic heartbeats (tests of the server's heartbeat timeout).
    pub fn stop_heartbeats(&self) {
        self.heartbeats.abort();
    }

    /// Sends a heartbeat and waits for its ack (other control frames in between are returned
    /// in the second element).
    pub async fn heartbeat(
        &mut self,
        nonce: u32,
        lanes: Vec<LaneSeq>,
    ) -> Result<(Heartbeat, Vec<ServerControl>), Error> {
        self.send_control(&ClientControl::Heartbeat(Heartbeat { nonce, lanes }))
            .await?;
        let mut other = Vec::new();
        loop {
            match self.next_control().await? {
                ServerControl::HeartbeatAck(hb) if hb.nonce == nonce => return Ok((hb, other)),
                m => other.push(m),
            }
        }
    }

    /// Opens a bidirectional stream and sends its `StreamOpen` frame.
    async fn open_stream(&self, open: StreamOpen) -> Result<(SendStream, RecvStream), Error> {
        let (mut send, recv) = self
            .session
            .open_bi()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        write_msg(&mut send, &open)
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok((send, recv))
    }

    /// Opens a lane.
    pub async fn open_lane(&self, lane: Lane) -> Result<LaneStream, Error> {
        let (send, recv) = self.open_stream(StreamOpen::Lane(lane)).await?;
        Ok(LaneStream {
            lane,
            tx: LaneSender { send, next_id: 1 },
            rx: LaneReceiver {
                recv: FramedRead::new(recv, self.max_frame),
                pending: VecDeque::new(),
                session: self.session.clone(),
            },
        })
    }

    /// Runs a one-shot fetch on its own stream: the response, or the server's refusal.
    pub async fn fetch(&self, req: FetchRequest) -> Result<Result<FetchResponse, ErrorBody>, Error> {
        let (mut send, recv) = self.open_stream(StreamOpen::Fetch(req)).await?;
        send.finish();
        let mut recv = FramedRead::new(recv, self.max_frame);
        match recv.next::<FetchReply>().await {
            Ok(Some(r)) => match codec::decompress_fetch_reply(r).map_err(|e| Error::Protocol(e.to_string()))? {
                FetchReply::Ok(resp) => Ok(Ok(resp)),
                FetchReply::Err(e) => Ok(Err(e)),
                FetchReply::Compressed { .. } => Err(Error::Protocol("nested compressed reply".into())),
            },
            Ok(None) => Err(Error::Protocol("fetch stream ended without a reply".into())),
            Err(e) => Err(read_err(&self.session, e)),
        }
    }

    /// Sends a voice frame (an unreliable datagram), with the previous frame in front of it
    /// when [`Config::voice_redundancy`] is on.
    pub fn send_voice(&self, header: &datagram::Uplink, payload: &[u8]) -> Result<(), Error> {
        let out = match &self.voice_tx {
            Some(tx) => {
                let max = VOICE_DATAGRAM_MAX - datagram::UPLINK_HEADER;
                tx.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .datagram(header, payload, max)
            }
            None => {
                let mut out = Vec::with_capacity(datagram::UPLINK_HEADER + payload.len());
                header.write(payload, &mut out);
                out
            }
        };
        self.session
            .send_datagram(bytes::Bytes::from(out))
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// Receives the next voice frame: its header (with the speaker's slot) and payload, in
    /// the order they can be decoded. A frame whose datagram was lost comes from the copy
    /// the next one carried (its header names its own seq and timestamp); a frame already
    /// had (a late original after its copy, a duplicate) is not returned again; malformed
    /// datagrams are skipped. [`Client::voice_repair`] counts both.
    pub async fn recv_voice(&self) -> Result<(datagram::Downlink, bytes::Bytes), Error> {
        loop {
            if let Some(f) = self.voice_rx.lock().unwrap_or_else(|p| p.into_inner()).1.pop_front() {
                return Ok((f.header, f.payload));
            }
            let d = self
                .session
                .read_datagram()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            let mut rx = self.voice_rx.lock().unwrap_or_else(|p| p.into_inner());
            let frames = rx.0.receive(&d);
            rx.1.extend(frames);
        }
    }

    /// Received voice so far: (frames played from a copy, datagrams dropped as already had).
    pub fn voice_repair(&self) -> (u64, u64) {
        let rx = self.voice_rx.lock().unwrap_or_else(|p| p.into_inner());
        (rx.0.recovered, rx.0.duplicates)
    }

    /// Closes the connection with code 0. Over raw QUIC that ends the session; over
    /// WebTransport it stays resumable for the resume window, as after a page reload
    /// (PROTOCOL.md §5b) — use [`Client::end`] to be done with it.
    pub fn close(&self) {
        self.session.close(CloseCode::NORMAL.0, "bye");
    }

    /// Ends the session for good on either transport: finishes the control stream (the
    /// server ends the session, answers `Closing` and closes), waiting for the close at most
    /// two seconds before closing itself.
    pub async fn end(&self) {
        self.ctl_tx.lock().await.finish();
        if tokio::time::timeout(std::time::Duration::from_secs(2), self.session.closed())
            .await
            .is_err()
        {
            self.close();
        }
    }

    /// Waits for the connection to be closed and returns the server's code, if it sent one.
    pub async fn closed(&self) -> Option<(CloseCode, String)> {
        self.session.closed().await;
        self.session.close_reason().map(|(c, r)| (CloseCode(c), r))
    }
}

/// The sending half of a split lane.
#[derive(Debug)]
pub struct LaneSender {
    send: SendStream,
    next_id: u32,
}

impl LaneSender {
    /// Sends a request without waiting; returns its id (the reply arrives on the receiver).
    pub async fn send(&mut self, body: RequestBody) -> Result<u32, Error> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        write_msg(&mut self.send, &Request { id, body })
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(id)
    }
}

/// The receiving half of a split lane.
#[derive(Debug)]
pub struct LaneReceiver {
    recv: FramedRead<RecvStream>,
    pending: VecDeque<ServerLane>,
    session: Session,
}

impl LaneReceiver {
    /// The next frame from the server on this lane.
    pub async fn next(&mut self) -> Result<ServerLane, Error> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<ServerLane, Error> {
        match self.recv.next::<ServerLane>().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::Protocol("lane closed by server".into())),
            Err(e) => {
                if matches!(e, ReadError::Io(_)) {
                    self.session.closed().await;
                }
                Err(read_err(&self.session, e))
            }
        }
    }
}

/// Receive-side voice statistics, per speaker slot: what a listener can measure itself.
#[derive(Debug, Default, Clone)]
pub struct VoiceRx {
    /// Per slot: (frames received, frames missing from the seq sequence, last seq).
    pub slots: std::collections::BTreeMap<u16, (u64, u64, u16)>,
}

impl VoiceRx {
    /// Records a received frame.
    pub fn record(&mut self, h: &datagram::Downlink) {
        let e = self.slots.entry(h.slot).or_insert((0, 0, h.seq.wrapping_sub(1)));
        let gap = h.seq.wrapping_sub(e.2);
        if gap > 1 && gap < 1000 {
            e.1 += u64::from(gap - 1);
        }
        if gap != 0 && gap < 0x8000 {
            e.2 = h.seq;
        }
        e.0 += 1;
    }
}

/// One open lane.
#[derive(Debug)]
pub struct LaneStream {
    /// Which lane.
    pub lane: Lane,
    tx: LaneSender,
    rx: LaneReceiver,
}

impl LaneStream {
    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, body: RequestBody) -> Result<u32, Error> {
        self.tx.send(body).await
    }

    /// Sends raw bytes on the lane (tests of the server's input handling).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        tokio::io::AsyncWriteExt::write_all(&mut self.tx.send, bytes)
            .await
            .map_err(|e| Error::Transport(e.to_string()))
    }

    /// Sends a request and waits for its `Ack` (`Ok`) or `Error` (`Err(ErrorBody)`);
    /// events that arrive meanwhile stay queued for [`LaneStream::next`].
    pub async fn request(&mut self, body: RequestBody) -> Result<Result<ResponseBody, ErrorBody>, Error> {
        let id = self.send(body).await?;
        let mut held = VecDeque::new();
        let result = loop {
            match self.rx.read().await? {
                ServerLane::Ack { id: got, body } if got == id => break Ok(body),
                ServerLane::Error { id: got, error } if got == id => break Err(error),
                other => held.push_back(other),
            }
        };
        // Frames held while waiting come after those already pending.
        self.rx.pending.append(&mut held);
        Ok(result)
    }

    /// Splits the lane so one task can send while another reads.
    pub fn split(self) -> (LaneSender, LaneReceiver) {
        (self.tx, self.rx)
    }

    /// The next frame from the server on this lane (events, and replies not yet claimed).
    pub async fn next(&mut self) -> Result<ServerLane, Error> {
        self.rx.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_moving_to_another_address_is_a_change_and_a_lost_route_is_not() {
        let a: std::net::IpAddr = "10.0.0.1".parse().expect("literal");
        let b: std::net::IpAddr = "10.0.0.2".parse().expect("literal");
        let mut w = RouteWatch::new(Some(a));
        assert!(!w.observe(Some(a)), "the same address");
        assert!(w.observe(Some(b)), "another address");
        assert!(!w.observe(Some(b)));
        assert!(!w.observe(None), "no route: nowhere to move to");
        assert!(w.observe(Some(a)), "a route again, to another address");
        assert!(!w.observe(None));
        assert!(
            w.observe(Some(a)),
            "the route back to the same address: the old path died meanwhile"
        );
        let mut cold = RouteWatch::new(None);
        assert!(cold.observe(Some(a)), "a first route where there was none");
    }

    #[test]
    fn the_route_to_loopback_leaves_from_loopback() {
        let server: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        assert_eq!(route_source(server), Some("127.0.0.1".parse().expect("literal")));
    }
}
