//! The QUIC endpoint: one UDP port, two protocols. At accept the negotiated ALPN decides:
//! `h3` becomes a WebTransport session (our own HTTP/3 handshake, [`webtransport`], on the
//! same quinn endpoint), `quaver/1` a raw QUIC session. Both are handed to the gateway as one `Session`.
//!
//! Admission control lives here: a stateless retry (address validation) once many
//! handshakes are in flight, and a cap on concurrent sessions answered with `overloaded`.

pub mod tls;
pub mod webtransport;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quaver_proto::session::{Session, Transport};
use quaver_proto::{ALPN_H3, ALPN_QUAVER, CloseCode, WEBTRANSPORT_PATH};

use crate::Ctx;
use crate::config::Config;

/// Builds the QUIC endpoint bound to `cfg.listen`.
pub fn endpoint(cfg: &Config, certs: Arc<tls::CertStore>) -> anyhow::Result<quinn::Endpoint> {
    let server = server_config(cfg, certs, &[ALPN_H3, ALPN_QUAVER])?;
    Ok(quinn::Endpoint::server(server, cfg.listen)?)
}

/// The QUIC server configuration of both paths (quinn's API and the engine share
/// quinn-proto's): TLS 1.3 with the certificate store, the given ALPNs, the limits below.
pub fn server_config(cfg: &Config, certs: Arc<tls::CertStore>, alpns: &[&[u8]]) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // No 0-RTT: a replayed Hello must not open a session.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let s = &cfg.session;
    transport.max_idle_timeout(Some(s.ping_timeout.try_into()?));
    transport.keep_alive_interval(Some(s.ping_interval));
    // Unacknowledged stream data held per connection (quinn's default is 10 MB): replies a
    // client does not take stay within this, whatever window the client advertises.
    transport.send_window(2 * 1024 * 1024);
    // Control + 5 lanes + a few concurrent fetches; more is a misbehaving client.
    transport.max_concurrent_bidi_streams(32u32.into());
    // HTTP/3 needs the client's control and QPACK streams; raw QUIC uses none.
    transport.max_concurrent_uni_streams(8u32.into());
    // Voice: a listener's outgoing datagram queue stays short — quinn drops the oldest
    // datagrams beyond this, so a congested listener loses stale audio instead of
    // hearing it late (4 KiB ≈ 30 Opus frames).
    transport.datagram_send_buffer_size(4 * 1024);
    // Ask peers that support the ACK-frequency extension (quinn-based native clients) to
    // acknowledge every 8 ack-eliciting packets or after 25 ms instead of every second
    // packet: at fan-out rates, processing the clients' ACKs was a quarter of the server's
    // CPU per delivery (bench/RESULTS.md). Loss detection still sees an ACK within one
    // max_ack_delay; peers without the extension (browsers) are unaffected.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(8u32.into())
        .max_ack_delay(Some(std::time::Duration::from_millis(25)));
    transport.ack_frequency_config(Some(ack));
    server.transport_config(Arc::new(transport));
    // Migration stays on: a client moving networks keeps its session.
    server.migration(true);
    Ok(server)
}

/// Accepts connections until shutdown, then stops accepting.
pub async fn accept_loop(ctx: Arc<Ctx>, endpoint: quinn::Endpoint) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.wait() => break,
        };
        let Some(incoming) = incoming else { break };
        let in_flight = ctx.handshakes_in_flight.load(Ordering::Relaxed);
        if in_flight >= ctx.cfg.session.retry_above_handshakes && !incoming.remote_address_validated() {
            // Under load, make the client prove its address before we spend a handshake.
            if incoming.may_retry() {
                ctx.metrics.retries.fetch_add(1, Ordering::Relaxed);
                let _ = incoming.retry();
                continue;
            }
        }
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(_) => continue,
        };
        ctx.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(handle(ctx.clone(), connecting));
    }
}

/// Handshake, ALPN routing, admission; then the gateway takes over.
async fn handle(ctx: Arc<Ctx>, connecting: quinn::Connecting) {
    // Both phases are boxed: otherwise this task's future is the handshake's and the
    // session's state side by side (8 KiB, measured), held for the session's whole life.
    let deadline = tokio::time::Instant::now() + ctx.cfg.session.hello_timeout;
    let routed = Box::pin(route(&ctx, connecting, deadline)).await;
    ctx.handshakes_in_flight.fetch_sub(1, Ordering::Relaxed);
    let Some((session, pre_token)) = routed else { return };
    if ctx.metrics.open_sessions() as usize >= ctx.cfg.session.max_connections {
        // With the in-band `Closing` (browsers cannot read QUIC close codes), bounded.
        crate::gateway::session::refuse_connection(&ctx, &session, CloseCode::OVERLOADED, "server full").await;
        return;
    }
    let _task = ctx.session_task();
    Box::pin(crate::gateway::session::run(ctx.clone(), session, pre_token)).await;
}

fn alpn(hd: Box<dyn std::any::Any>) -> Option<Vec<u8>> {
    hd.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// Completes the handshake by `deadline` and returns the session with any token from the
/// request. A connection that is up but has not become a session by then (a WebTransport
/// client that never sends its CONNECT) is closed with `hello_timeout`.
async fn route(
    ctx: &Ctx,
    mut connecting: quinn::Connecting,
    deadline: tokio::time::Instant,
) -> Option<(Session, Option<String>)> {
    let established = tokio::time::timeout_at(deadline, async {
        let protocol = alpn(connecting.handshake_data().await.ok()?);
        Some((protocol, connecting.await.ok()?))
    })
    .await;
    let (protocol, conn) = match established {
        Ok(Some(c)) => c,
        Ok(None) => {
            ctx.metrics.handshake_failed(CloseCode(u32::MAX));
            return None;
        }
        Err(_) => {
            // No connection yet to carry a code: the QUIC handshake itself stalled.
            ctx.metrics.handshake_failed(CloseCode::HELLO_TIMEOUT);
            return None;
        }
    };
    match protocol.as_deref() {
        Some(p) if p == ALPN_QUAVER => {
            ctx.metrics.handshake(Transport::Quic);
            Some((Session::Quic(conn), None))
        }
        Some(p) if p == ALPN_H3 => {
            ctx.metrics.handshake(Transport::WebTransport);
            match tokio::time::timeout_at(deadline, webtransport(ctx, conn.clone())).await {
                Ok(r) => r,
                Err(_) => {
                    ctx.metrics.handshake_failed(CloseCode::HELLO_TIMEOUT);
                    ctx.metrics.closed_with(CloseCode::HELLO_TIMEOUT);
                    conn.close(CloseCode::HELLO_TIMEOUT.0.into(), b"no WebTransport request");
                    None
                }
            }
        }
        _ => None,
    }
}

/// Turns an `h3` connection into a WebTransport session: path, Origin and token checks.
async fn webtransport(ctx: &Ctx, conn: quinn::Connection) -> Option<(Session, Option<String>)> {
    let request = match webtransport::accept(&conn).await {
        Ok(r) => r,
        Err(e) => {
            ctx.metrics.handshake_failed(CloseCode::PROTOCOL_ERROR);
            tracing::debug!(error = %e, "WebTransport handshake failed");
            conn.close(CloseCode::PROTOCOL_ERROR.0.into(), b"not a WebTransport request");
            return None;
        }
    };
    let token = match judge(&ctx.cfg.session.allowed_origins, &request.request) {
        Verdict::Accept(token) => token,
        Verdict::NotFound => {
            ctx.metrics.handshake_failed(CloseCode::PROTOCOL_ERROR);
            request.not_found(&conn).await;
            return None;
        }
        Verdict::Forbidden => {
            ctx.metrics.handshake_failed(CloseCode::ORIGIN_NOT_ALLOWED);
            tracing::debug!(origin = ?request.origin(), "WebTransport origin refused");
            request.forbidden(&conn).await;
            return None;
        }
    };
    match request.accept(conn).await {
        Ok(session) => Some((Session::H3(session), token)),
        Err(_) => {
            ctx.metrics.handshake_failed(CloseCode(u32::MAX));
            None
        }
    }
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

/// The path, Origin and token rules of a WebTransport request (PROTOCOL.md §1), for both
/// transports.
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
