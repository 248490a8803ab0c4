//! Request extractors whose refusals are problem documents naming what is wrong (axum's own
//! answer in plain text), and the caller's key.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::auth::Caller;
use super::error::{Problem, UNAUTHORIZED};

/// A JSON body (`application/json`).
pub(crate) struct ApiJson<T>(pub T);

/// Path parameters.
pub(crate) struct ApiPath<T>(pub T);

/// Query parameters.
pub(crate) struct ApiQuery<T>(pub T);

/// The field a serde message names (`missing field `x``, `unknown field `x``).
fn field_of(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => {
                let text = e.body_text();
                let mut p = match &e {
                    JsonRejection::MissingJsonContentType(_) => {
                        Problem::bad("content-type", "send the body as application/json")
                    }
                    JsonRejection::BytesRejection(_) => Problem::new(
                        quaver_proto::ErrorCode::TOO_LARGE.0,
                        "the body could not be read (too large?)",
                    ),
                    _ => Problem::new(quaver_proto::ErrorCode::BAD_REQUEST.0, text.clone()),
                };
                if p.field.is_none() {
                    p.field = field_of(&text).or(Some("body".into()));
                }
                Err(p)
            }
        }
    }
}

/// A path or query string that did not parse: `code`, naming the field when the message
/// does, else `whole`.
fn refused(text: String, code: quaver_proto::ErrorCode, whole: &str) -> Problem {
    let mut p = Problem::new(code.0, text.clone());
    p.field = field_of(&text).or(Some(whole.into()));
    p
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(PathRejection::FailedToDeserializePathParams(d)) => {
                // A path that does not parse names nothing that exists.
                Err(refused(d.body_text(), quaver_proto::ErrorCode::NOT_FOUND, "path"))
            }
            Err(other) => Err(refused(other.body_text(), quaver_proto::ErrorCode::NOT_FOUND, "path")),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(d)) => {
                Err(refused(d.body_text(), quaver_proto::ErrorCode::BAD_REQUEST, "query"))
            }
            Err(other) => Err(refused(
                other.body_text(),
                quaver_proto::ErrorCode::BAD_REQUEST,
                "query",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        // Set by the guard for every call under it.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::new(UNAUTHORIZED, "no key"))
    }
}
