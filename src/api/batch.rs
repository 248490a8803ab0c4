//! Many operations in one call: `POST /api/v1/batch` with up to 100 operations, each a
//! method, a path under `/api/v1` and a JSON body, run in order with the batch's key — each
//! authorised, rate-limited (one request of the key each) and answered as it would be alone.
//! The answer lists each one's status and body; one failing stops nothing after it (say
//! `stop_on_error` to stop there). An `Idempotency-Key` covers the whole batch.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{Method, Request, header};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use utoipa::ToSchema;

use super::Services;
use super::auth::Caller;
use super::error::{ApiResult, Problem};
use super::extract::ApiJson;

/// The most operations in one batch.
pub const MAX_OPERATIONS: usize = 100;

/// One operation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    #[schema(pattern = "^(GET|POST|PUT|PATCH|DELETE)$")]
    pub method: String,
    /// The path under `/api/v1`, e.g. `/channels/1/messages` (a query string may follow).
    #[schema(min_length = 1, max_length = 2048, pattern = "^/")]
    pub path: String,
    /// Its JSON body, if it takes one.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub body: Option<serde_json::Value>,
}

/// A batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// 1–100 operations, run in order.
    #[schema(min_items = 1, max_items = 100)]
    pub operations: Vec<Operation>,
    /// Stop at the first operation answered with an error (the rest are not run).
    #[serde(default)]
    pub stop_on_error: bool,
}

/// One operation's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Outcome {
    /// Its HTTP status.
    pub status: u16,
    /// Its body (a problem document for an error; null when empty).
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

/// The batch's answers, one per operation run, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct Outcomes {
    /// The answers.
    pub results: Vec<Outcome>,
    /// Operations not run (after an error, with `stop_on_error`).
    pub skipped: usize,
}

/// Runs operations in order, each as if called alone with this key.
#[utoipa::path(
    post, path = "/batch", tag = "meta",
    request_body = Batch,
    responses(
        (status = 200, description = "Each operation's answer", body = Outcomes),
    )
)]
pub(super) async fn batch(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(b): ApiJson<Batch>,
) -> ApiResult<axum::Json<Outcomes>> {
    if b.operations.is_empty() || b.operations.len() > MAX_OPERATIONS {
        return Err(Problem::bad("operations", "a batch is 1 to 100 operations"));
    }
    let mut methods = Vec::with_capacity(b.operations.len());
    for (i, op) in b.operations.iter().enumerate() {
        let m = match op.method.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            _ => {
                return Err(Problem::bad(
                    &format!("operations[{i}].method"),
                    "GET, POST, PUT, PATCH or DELETE",
                ));
            }
        };
        let nested = op.path.trim_start_matches('/').split(['/', '?']).next() == Some("batch");
        if !op.path.starts_with('/') || nested || op.path.parse::<axum::http::Uri>().is_err() {
            return Err(Problem::bad(
                &format!("operations[{i}].path"),
                "a path under /api/v1 (not /batch), starting with /",
            ));
        }
        methods.push(m);
    }
    let Some(router) = api.operations.get().cloned() else {
        return Err(Problem::new(
            quaver_proto::ErrorCode::INTERNAL.0,
            "the API is not set up",
        ));
    };
    let router = router.with_state(api.clone());
    let total = b.operations.len();
    let mut results = Vec::with_capacity(total);
    for (op, method) in b.operations.into_iter().zip(methods) {
        let outcome = match api.keys.take(&caller.key_id, std::time::Instant::now()) {
            (_, Some(refused)) => Outcome {
                status: refused.status,
                body: serde_json::to_value(&*refused).unwrap_or_default(),
            },
            (_, None) => {
                let mut req = Request::builder().method(method).uri(&op.path);
                let body = match &op.body {
                    Some(v) => {
                        req = req.header(header::CONTENT_TYPE, "application/json");
                        Body::from(v.to_string())
                    }
                    None => Body::empty(),
                };
                match req.body(body) {
                    Ok(mut req) => {
                        req.extensions_mut().insert(caller.clone());
                        let resp = match router.clone().oneshot(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        let status = resp.status().as_u16();
                        let bytes = to_bytes(resp.into_body(), super::idempotency::MAX_BODY * 4)
                            .await
                            .unwrap_or_default();
                        Outcome {
                            status,
                            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                        }
                    }
                    Err(e) => {
                        let p = Problem::bad("path", format!("not a request: {e}"));
                        Outcome {
                            status: p.status,
                            body: serde_json::to_value(&p).unwrap_or_default(),
                        }
                    }
                }
            }
        };
        let failed = outcome.status >= 400;
        results.push(outcome);
        if failed && b.stop_on_error {
            break;
        }
    }
    let skipped = total - results.len();
    Ok(axum::Json(Outcomes { results, skipped }))
}
