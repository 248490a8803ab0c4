//! `Idempotency-Key` on any change: the key (per API key, kept in the database so it holds
//! across nodes and restarts, for `[api] idempotency_ttl`) with the SHA-256 of the request
//! (method, path and query, body) and, once answered, the answer. A retry with the same key
//! and request gets the first answer again (`Idempotent-Replayed: true`); while the first
//! is still being answered, `409`; the same key with another request, `422`. An answer of
//! 5xx is not kept: the key is given back, so a retry can succeed; a request that never
//! finished (its node died) frees its key after a minute.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Services;
use super::auth::Caller;
use super::error::{IDEMPOTENCY_IN_FLIGHT, IDEMPOTENCY_MISMATCH, Problem};
use crate::store::IdempotencyBegin;

/// The largest request body taken (the largest message is 4,000 characters).
pub const MAX_BODY: usize = 1 << 20;
/// The largest answer kept.
const MAX_ANSWER: usize = 4 << 20;

/// Runs `req` under the idempotency key `key`.
pub async fn run(api: &Services, caller: &Caller, key: HeaderValue, req: Request, next: Next) -> Response {
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .map(str::to_string)
    else {
        return Problem::bad(
            "Idempotency-Key",
            "an Idempotency-Key is 1–255 printable ASCII characters",
        )
        .into_response();
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return Problem::new(quaver_proto::ErrorCode::TOO_LARGE.0, "the body is over 1 MiB").into_response();
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(parts.method.as_str().as_bytes());
    ctx.update(b" ");
    ctx.update(parts.uri.path_and_query().map_or("", |p| p.as_str()).as_bytes());
    ctx.update(b"\n");
    ctx.update(&bytes);
    let hash = hex::encode(ctx.finish());
    let store = api.chat.store();
    let ttl = api.idempotency_ttl.as_millis() as u64;
    match store
        .idempotency_begin(&caller.key_id, &key, &hash, crate::ids::now_ms(), ttl)
        .await
    {
        Err(e) => return Problem::from(e).into_response(),
        Ok(IdempotencyBegin::InFlight) => {
            return Problem::new(
                IDEMPOTENCY_IN_FLIGHT,
                "the first request with this Idempotency-Key is still being answered",
            )
            .into_response();
        }
        Ok(IdempotencyBegin::Mismatch) => {
            return Problem::new(
                IDEMPOTENCY_MISMATCH,
                "this Idempotency-Key was used with another request",
            )
            .field("Idempotency-Key")
            .into_response();
        }
        Ok(IdempotencyBegin::Replay(status, body)) => return replay(status, body),
        Ok(IdempotencyBegin::New) => {}
    }
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = resp.into_parts();
    let bytes = match to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "an API answer could not be kept for its idempotency key");
            if let Err(e) = store.idempotency_abandon(&caller.key_id, &key).await {
                tracing::warn!(error = %e, key = %caller.key_id, "an idempotency key could not be given back (it frees itself in a minute)");
            }
            return Problem::new(
                quaver_proto::ErrorCode::INTERNAL.0,
                "the answer could not be read; retry",
            )
            .into_response();
        }
    };
    let status = parts.status.as_u16();
    let kept = if parts.status.is_server_error() {
        store.idempotency_abandon(&caller.key_id, &key).await
    } else {
        store
            .idempotency_finish(&caller.key_id, &key, status, &String::from_utf8_lossy(&bytes))
            .await
    };
    if let Err(e) = kept {
        // The change is made; only its record is not. A retry would do it again: say so.
        tracing::warn!(error = %e, key = %caller.key_id, "an idempotency record could not be written");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let ty = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}
