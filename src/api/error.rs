//! The API's errors: RFC 9457 `application/problem+json`, with a real HTTP status and a
//! stable machine code — PROTOCOL.md §6's request codes (1–23), so a backend handles a
//! refusal the way a client does, and the API's own from 100 on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quaver_proto::{ErrorBody, ErrorCode};
use serde::Serialize;
use utoipa::ToSchema;

/// No key, or a key this server does not accept (401).
pub const UNAUTHORIZED: u16 = 100;
/// The key lacks the scope the call needs (403).
pub const SCOPE_MISSING: u16 = 101;
/// The first request with this `Idempotency-Key` is still being answered (409).
pub const IDEMPOTENCY_IN_FLIGHT: u16 = 102;
/// This `Idempotency-Key` came with another request before (422).
pub const IDEMPOTENCY_MISMATCH: u16 = 103;
/// No such route (404).
pub const NO_ROUTE: u16 = 104;
/// The route does not take this method (405).
pub const METHOD_NOT_ALLOWED: u16 = 105;
/// The thing exists already, or is managed elsewhere (the config file) (409).
pub const CONFLICT: u16 = 106;

/// A problem, as the body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Problem {
    /// `urn:quaver:problem:<code_name>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind of problem, in words.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time, for people.
    pub detail: String,
    /// The machine code (PROTOCOL.md §6; 100 and up: the API's own).
    pub code: u16,
    /// The code's name, e.g. `NOT_FOUND`.
    pub code_name: &'static str,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// When to try again (`RATE_LIMITED`, `UNAVAILABLE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u32>,
}

/// The name, title and HTTP status of a machine code.
pub fn describe(code: u16) -> (&'static str, &'static str, StatusCode) {
    use StatusCode as S;
    match ErrorCode(code) {
        ErrorCode::BAD_REQUEST => ("BAD_REQUEST", "Bad request", S::BAD_REQUEST),
        ErrorCode::WRONG_LANE => ("WRONG_LANE", "Wrong lane", S::BAD_REQUEST),
        ErrorCode::FORBIDDEN => ("FORBIDDEN", "Forbidden", S::FORBIDDEN),
        ErrorCode::NOT_FOUND => ("NOT_FOUND", "Not found", S::NOT_FOUND),
        ErrorCode::RATE_LIMITED => ("RATE_LIMITED", "Too many requests", S::TOO_MANY_REQUESTS),
        ErrorCode::UNSUPPORTED => ("UNSUPPORTED", "Not supported here", S::NOT_IMPLEMENTED),
        ErrorCode::INTERNAL => ("INTERNAL", "Server failure", S::INTERNAL_SERVER_ERROR),
        ErrorCode::TOO_LARGE => ("TOO_LARGE", "Too large", S::PAYLOAD_TOO_LARGE),
        ErrorCode::TOKEN_REJECTED => ("TOKEN_REJECTED", "Token rejected", S::BAD_REQUEST),
        ErrorCode::LANE_ALREADY_OPEN => ("LANE_ALREADY_OPEN", "Lane already open", S::CONFLICT),
        ErrorCode::INVALID_CONTENT => ("INVALID_CONTENT", "Invalid content", S::BAD_REQUEST),
        ErrorCode::INVALID_NAME => ("INVALID_NAME", "Invalid name", S::BAD_REQUEST),
        ErrorCode::INVALID_EMOJI => ("INVALID_EMOJI", "Invalid emoji", S::BAD_REQUEST),
        ErrorCode::TOO_MANY_REACTIONS => ("TOO_MANY_REACTIONS", "Too many reactions", S::CONFLICT),
        ErrorCode::INVALID_INVITE => ("INVALID_INVITE", "Invalid invite", S::NOT_FOUND),
        ErrorCode::BANNED => ("BANNED", "Banned", S::FORBIDDEN),
        ErrorCode::INVALID_REPLY => ("INVALID_REPLY", "Invalid reply", S::BAD_REQUEST),
        ErrorCode::BLOCKED => ("BLOCKED", "Blocked", S::FORBIDDEN),
        ErrorCode::GROUP_FULL => ("GROUP_FULL", "Group full", S::CONFLICT),
        ErrorCode::OWNER => ("OWNER", "The owner", S::CONFLICT),
        ErrorCode::NO_RELATIONSHIP => ("NO_RELATIONSHIP", "No such relationship", S::CONFLICT),
        ErrorCode::UNAVAILABLE => ("UNAVAILABLE", "Database unavailable", S::SERVICE_UNAVAILABLE),
        ErrorCode::CHANNEL_FULL => ("CHANNEL_FULL", "Channel full", S::CONFLICT),
        ErrorCode::REFUSED_BY_APP => ("REFUSED_BY_APP", "Refused by the application", S::FORBIDDEN),
        ErrorCode::TIMED_OUT => ("TIMED_OUT", "Timed out", S::FORBIDDEN),
        _ => match code {
            UNAUTHORIZED => ("UNAUTHORIZED", "Unauthorized", S::UNAUTHORIZED),
            SCOPE_MISSING => ("SCOPE_MISSING", "Scope missing", S::FORBIDDEN),
            IDEMPOTENCY_IN_FLIGHT => ("IDEMPOTENCY_IN_FLIGHT", "Request in flight", S::CONFLICT),
            IDEMPOTENCY_MISMATCH => (
                "IDEMPOTENCY_MISMATCH",
                "Idempotency key reused",
                S::UNPROCESSABLE_ENTITY,
            ),
            NO_ROUTE => ("NO_ROUTE", "No such route", S::NOT_FOUND),
            METHOD_NOT_ALLOWED => ("METHOD_NOT_ALLOWED", "Method not allowed", S::METHOD_NOT_ALLOWED),
            CONFLICT => ("CONFLICT", "Conflict", S::CONFLICT),
            _ => ("INTERNAL", "Server failure", S::INTERNAL_SERVER_ERROR),
        },
    }
}

impl Problem {
    /// A problem with machine code `code`.
    pub fn new(code: u16, detail: impl Into<String>) -> Self {
        let (name, title, status) = describe(code);
        Self {
            kind: format!("urn:quaver:problem:{}", name.to_ascii_lowercase()),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            code,
            code_name: name,
            field: None,
            retry_after_ms: None,
        }
    }

    /// `BAD_REQUEST` about `field`.
    pub fn bad(field: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::BAD_REQUEST.0, detail).field(field)
    }

    /// Names the request field at fault.
    pub fn field(mut self, field: &str) -> Self {
        self.field = Some(field.into());
        self
    }

    /// `NOT_FOUND` for `what`.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NOT_FOUND.0, format!("no such {what}"))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ErrorBody> for Problem {
    fn from(e: ErrorBody) -> Self {
        let mut p = Problem::new(e.code.0, e.message);
        p.retry_after_ms = e.retry_after_ms;
        p
    }
}

impl From<crate::limits::Refusal> for Problem {
    fn from(r: crate::limits::Refusal) -> Self {
        match r {
            crate::limits::Refusal::Error(e) | crate::limits::Refusal::Flood(e) => e.into(),
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        crate::chat::store_error(e).into()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = self.retry_after_ms;
        let body = serde_json::to_string(&self).unwrap_or_else(|_| "{}".into());
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: how to authenticate.
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"quaver\""),
            );
        }
        if let Some(ms) = retry
            && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// What handlers return.
pub type ApiResult<T> = Result<T, Problem>;
