//! The HTTP side port: `/health` (the process answers), `/ready` (accepting sessions: not
//! draining, and the database answering within its deadline), `/metrics` (Prometheus text), `/cert-hash` (what a browser needs for
//! `serverCertificateHashes`), and the browser client at `/` and `/quaver.js`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Ctx;

/// The router, a value tests can drive without a socket.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/cert-hash", get(cert_hash))
        .route(
            "/",
            get(|| async { static_file("text/html; charset=utf-8", include_str!("../../web/index.html")) }),
        )
        .route(
            "/quaver.js",
            get(|| async { static_file("text/javascript; charset=utf-8", include_str!("../../web/quaver.js")) }),
        )
        .with_state(ctx)
}

fn static_file(ty: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "no-cache")], body).into_response()
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
    ]);
    body.push_str(&ctx.voice.metrics.render());
    body.push_str(&ctx.fanout.render_metrics());
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
