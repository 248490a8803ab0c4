//! The QUIC side of the server that is not the engine's loop: the server configuration
//! (TLS 1.3 with the certificate store, the ALPNs, the limits), the rules of a WebTransport
//! request ([`judge`]; the HTTP/3 that carries it is `gateway::wt`'s), and the
//! certificates ([`tls`]). Admission control (the connection cap, stateless retry) is the
//! engine's (`engine::Limits`).

pub mod congestion;
pub mod keys;
pub mod tls;

use std::sync::Arc;

use quaver_proto::WEBTRANSPORT_PATH;
use quinn_proto::ServerConfig;

use crate::config::Config;

/// Bidirectional streams a QUIC client may have open at once (PROTOCOL.md §4).
pub const MAX_BIDI_STREAMS: u32 = 16;

/// The engine's QUIC server configuration: TLS 1.3 with the certificate store, the given
/// ALPNs, session tickets sealed by `tickets` ([`keys::TicketKeys`]), the limits below.
pub fn server_config(
    cfg: &Config,
    certs: Arc<tls::CertStore>,
    alpns: &[&[u8]],
    tickets: Arc<dyn rustls::server::ProducesTickets>,
) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // No 0-RTT: a replayed Hello must not open a session (`keys`' docs).
    tls.max_early_data_size = 0;
    // Stateless tickets under keys every node shares and keeps across restarts, so a
    // reconnecting client resumes TLS wherever it lands (`keys`). Two per handshake (the
    // default): the native client may try a second handshake beside a slow first.
    tls.ticketer = tickets;
    let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn_proto::TransportConfig::default();
    let s = &cfg.session;
    transport.max_idle_timeout(Some(s.ping_timeout.try_into()?));
    transport.keep_alive_interval(Some(s.ping_interval));
    // Unacknowledged stream data held per connection (quinn's default is 10 MB): replies a
    // client does not take stay within this, whatever window the client advertises.
    transport.send_window(2 * 1024 * 1024);
    // Control + 5 lanes + the CONNECT stream (WebTransport) + fetches: 16 leaves nine for
    // fetches, more than the four served at once (`FETCH_CONCURRENCY`); a client opening
    // more waits for credit. quinn-proto makes the state of every stream a peer may open
    // up front, in maps sized to the limits: 32 + 8 cost an idle session ≈ 1.4 KiB more
    // than 16 + 4 (bench/RESULTS.md, C1).
    transport.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    // HTTP/3 needs the client's control and QPACK streams (three); raw QUIC uses none.
    transport.max_concurrent_uni_streams(4u32.into());
    // Voice: a listener's outgoing datagram queue stays short — quinn drops the oldest
    // datagrams beyond this, so a congested listener loses stale audio instead of
    // hearing it late (4 KiB ≈ 30 Opus frames).
    transport.datagram_send_buffer_size(4 * 1024);
    // Ask peers that support the ACK-frequency extension (quinn-based native clients) to
    // acknowledge every 8 ack-eliciting packets or after `ack_delay` instead of every
    // second packet: at fan-out rates, processing the clients' ACKs was a quarter of the
    // server's CPU per delivery (bench/RESULTS.md). Loss detection still sees an ACK within
    // one max_ack_delay; peers without the extension (browsers) are unaffected.
    let mut ack = quinn_proto::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(8u32.into())
        .max_ack_delay(Some(s.ack_delay));
    transport.ack_frequency_config(Some(ack));
    // CUBIC with a floor under the window (`congestion.rs`): small real-time flows keep
    // their pace through loss and reordering.
    if s.congestion_floor > 0 {
        transport.congestion_controller_factory(Arc::new(congestion::FloorFactory {
            packets: s.congestion_floor,
        }));
    }
    server.transport_config(Arc::new(transport));
    // Migration stays on: a client moving networks keeps its session.
    server.migration(true);
    Ok(server)
}

/// What a WebTransport CONNECT gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `200`, with the token from `Authorization: Bearer …` or else from `?token=`.
    Accept(Option<String>),
    /// `404`: not our path.
    NotFound,
    /// `403`: an Origin not allowed.
    Forbidden,
}

/// The path, Origin and token rules of a WebTransport request (PROTOCOL.md §1).
pub fn judge(allowed_origins: &[String], request: &wtransport_proto::session::SessionRequest) -> Verdict {
    // The path may carry a query (`/quaver?token=…`); parse it against a dummy base.
    let url = match url::Url::parse(&format!("https://quaver.invalid{}", request.path())) {
        Ok(u) if u.path() == WEBTRANSPORT_PATH => u,
        _ => return Verdict::NotFound,
    };
    if !origin_allowed(allowed_origins, request.origin()) {
        return Verdict::Forbidden;
    }
    let from_query = url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let from_header = request
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_string());
    Verdict::Accept(from_header.or(from_query))
}

/// Whether a WebTransport request from `origin` may proceed. An empty list allows all;
/// no Origin header means a native client, which the Origin rule does not concern.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(o.trim_end_matches('/'))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let list = vec!["https://chat.example".to_string(), "http://127.0.0.1:8080/".to_string()];
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some("https://chat.example")));
        assert!(origin_allowed(&list, Some("http://127.0.0.1:8080")));
        assert!(!origin_allowed(&list, Some("https://evil.example")));
        assert!(!origin_allowed(&list, Some("https://chat.example.evil")));
        assert!(origin_allowed(&[], Some("https://anything")));
        assert!(origin_allowed(&["*".into()], Some("https://anything")));
    }
}
