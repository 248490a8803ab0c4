//! The HTTP side port: `/health` (the process answers), `/ready` (accepting sessions: not
//! draining, and the database answering within its deadline), `/metrics` (Prometheus text), `/cert-hash` (what a browser needs for
//! `serverCertificateHashes`), the web app at `/` (its modules and styles, [`WEB`]), and — only on a
//! server running on its generated development secret — `POST /dev/token` (and `GET /dev/token`,
//! which says whether it does).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::Ctx;

/// The web app's files, built into the binary (no build step: the modules as written).
const WEB: [(&str, &str, &str); 7] = [
    ("/", "text/html; charset=utf-8", include_str!("../../web/index.html")),
    ("/app.css", "text/css; charset=utf-8", include_str!("../../web/app.css")),
    ("/quaver.js", JS, include_str!("../../web/quaver.js")),
    ("/app.js", JS, include_str!("../../web/app.js")),
    ("/app-ui.js", JS, include_str!("../../web/app-ui.js")),
    ("/app-views.js", JS, include_str!("../../web/app-views.js")),
    ("/app-voice.js", JS, include_str!("../../web/app-voice.js")),
];
const JS: &str = "text/javascript; charset=utf-8";

/// How long a client has to send a request's head on the HTTP port (the web app,
/// `/cert-hash`, the WebSocket framing's upgrade): one that trickles it byte by byte
/// (slowloris) is cut off, as a QUIC handshake that does not finish is.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` over HTTP/1.1 with [`HEADER_READ_TIMEOUT`] and upgrades (the
/// WebSocket framing). `axum::serve` sets no timer, so a request head could take forever.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, mostly: said, and tried again shortly.
                tracing::warn!(error = %e, "HTTP port: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // The WebSocket framing writes small frames: with Nagle's algorithm each waits for
        // the ACK of the one before (measured across a 50 ms RTT link with `quaver-bench
        // netem`: +21 ms at the median, bench/RESULTS.md). Failing to set it is harmless.
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// The router, a value tests can drive without a socket.
pub fn router(ctx: Arc<Ctx>) -> Router {
    let mut r = Router::new();
    for (path, ty, body) in WEB {
        r = r.route(path, get(move || async move { static_file(ty, body) }));
    }
    r.route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/cert-hash", get(cert_hash))
        .route(crate::gateway::ws::WS_PATH, get(crate::gateway::ws::upgrade))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/dev/token", post(dev_token).get(dev_tokens_available))
        .with_state(ctx)
}

fn static_file(ty: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn ready(State(ctx): State<Arc<Ctx>>) -> Response {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if ctx.shutdown.is_fired() {
        return unavailable("draining\n".into());
    }
    let store = ctx.chat.store();
    let limit = ctx.cfg.store.timeout.min(std::time::Duration::from_secs(2));
    if !store.ping(limit).await {
        return unavailable(format!("store: no answer within {limit:?}\n"));
    }
    if let Some(t) = store.last_timeout_ms() {
        let ago = crate::ids::now_ms().saturating_sub(t);
        // A database that holds locks can answer `SELECT 1` while every write waits: a
        // recent missed deadline also means not ready (for two deadlines, at least 1 s).
        let memory = (ctx.cfg.store.timeout * 2).max(std::time::Duration::from_secs(1));
        if u128::from(ago) < memory.as_millis() {
            return unavailable(format!("store: a call missed its deadline {ago} ms ago\n"));
        }
    }
    if ctx.fanout.pubsub().health() == crate::cluster::pubsub::Health::Degraded {
        // Still useful: it serves its own sessions; cross-node delivery waits for Redis
        // (and is caught up from the store when it is back).
        return "degraded: the cluster bus is unreachable; serving this node's sessions\n".into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let draining = if ctx.shutdown.is_fired() { 1.0 } else { 0.0 };
    let handshakes = ctx.handshakes_in_flight.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let mut body = ctx.metrics.render(&[
        (
            "quaver_draining",
            "1 while the node drains after a shutdown signal.",
            draining,
        ),
        (
            "quaver_handshakes_in_flight",
            "Handshakes not yet finished.",
            handshakes,
        ),
        (
            "quaver_sessions_setting_up",
            "Connections past their handshake or WebSocket upgrade and not yet Ready.",
            ctx.door.setting_up() as f64,
        ),
    ]);
    body.push_str(&ctx.voice.metrics.render());
    if let Some(w) = &ctx.webrtc {
        body.push_str(&w.metrics.render());
    }
    body.push_str(&ctx.fanout.render_metrics());
    body.push_str(&ctx.keys.tickets.render());
    body.push_str(&ctx.webhooks.metrics.render());
    body.push_str(&ctx.hooks.render());
    body.push_str(&ctx.hook_writer.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn cert_hash(State(ctx): State<Arc<Ctx>>) -> Response {
    let all = ctx.certs.all();
    let current = &all[0];
    let body = serde_json::json!({
        "algorithm": "sha-256",
        "hash": hex::encode(current.sha256),
        "hashes": all.iter().map(|c| hex::encode(c.sha256)).collect::<Vec<_>>(),
        "not_after": current.not_after.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "dev": current.dev,
        "url_path": quaver_proto::WEBTRANSPORT_PATH,
        "port": ctx.quic_port,
        // The WebSocket framing on this port (PROTOCOL.md §11), for networks without UDP.
        "ws_path": crate::gateway::ws::WS_PATH,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// How long a token minted by `POST /dev/token` lives.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The user id a development name signs in as: the same name (ignoring case and surrounding
/// space) is the same user on every visit; ids stay below 2^53.
pub fn dev_user_id(name: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, name.trim().to_lowercase().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    (u64::from_be_bytes(b) & ((1 << 53) - 1)).max(1)
}

#[derive(serde::Deserialize)]
struct DevTokenRequest {
    name: String,
}

/// `POST /dev/token {"name": "ada"}`: a token for the user of that name. Exists only while
/// the server runs on the JWT secret it generated for development (never with `JWT_SECRET`
/// or a public key set), and says so.
/// Whether `POST /dev/token` mints tokens here (the sign-in page asks, and offers names or
/// an access key accordingly): always 200, so a browser logs no failed request for asking.
async fn dev_tokens_available(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({ "available": ctx.verifier.is_generated() }).to_string(),
    )
        .into_response()
}

async fn dev_token(State(ctx): State<Arc<Ctx>>, body: axum::body::Bytes) -> Response {
    let json = |status: StatusCode, v: serde_json::Value| {
        (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            v.to_string(),
        )
            .into_response()
    };
    if !ctx.verifier.is_generated() {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "no development tokens: this server verifies tokens from your issuer (JWT_SECRET or a public key is set)" }),
        );
    }
    let Ok(req) = serde_json::from_slice::<DevTokenRequest>(&body) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "expected a JSON body {\"name\": \"…\"}" }),
        );
    };
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "a name is 1 to 32 characters, without control characters" }),
        );
    }
    let user = dev_user_id(name);
    match ctx.verifier.mint(user, Some(name), DEV_TOKEN_TTL) {
        Ok(token) => json(
            StatusCode::OK,
            serde_json::json!({
                "token": token,
                "user_id": user.to_string(),
                "name": name,
                "expires_in_secs": DEV_TOKEN_TTL.as_secs(),
                "development": "this server runs on a generated development secret and mints a token for any name; set JWT_SECRET (or a public key) in production, and this endpoint goes away",
            }),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": format!("minting failed: {e}") }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::dev_user_id;

    #[test]
    fn dev_names_map_to_stable_ids_below_2_pow_53() {
        assert_eq!(dev_user_id("Ada"), dev_user_id(" ada "));
        assert_ne!(dev_user_id("ada"), dev_user_id("bob"));
        for n in ["a", "ada", "bob", "a very long name of 32 chars...."] {
            let id = dev_user_id(n);
            assert!(id > 0 && id < 1 << 53, "{n}: {id}");
        }
    }
}
