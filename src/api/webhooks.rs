//! Webhooks through the API: endpoints (create, list, change, delete, rotate the secret,
//! send a test), each endpoint's delivery log and redelivery, and the retained event log
//! (`GET /events`) a backend reconciles from after an outage. How events are recorded and
//! delivered: `crate::webhooks`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Services;
use super::auth::{Caller, Scope};
use super::error::{ApiResult, CONFLICT, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::types::page_limit;
use crate::ids::now_ms;
use crate::store::{Endpoint, EndpointSecret, StoreError, delivery_state};
use crate::webhooks::catalogue::{WebhookEnvelope, endpoint_event};
use crate::webhooks::{check_endpoint, check_secret, envelope, new_secret};

/// A webhook endpoint (its secrets are shown only when made).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event type patterns: `*`, a family (`message.*`) or a type (`member.joined`).
    pub events: Vec<String>,
    /// Free text.
    pub description: String,
    /// `config` (from the config file: change it there) or `api`.
    pub source: String,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// Why it was disabled (a `410 Gone` answer, or through the API).
    pub disabled_reason: Option<String>,
    /// When it was disabled, Unix ms.
    pub disabled_at_ms: Option<u64>,
    /// Signing secrets in use (more than one while a rotation's overlap lasts).
    pub secrets_in_use: usize,
    /// Unix ms.
    pub created_at_ms: u64,
    /// Unix ms.
    pub updated_at_ms: u64,
}

impl WebhookEndpoint {
    fn of(e: &Endpoint, now: u64) -> Self {
        WebhookEndpoint {
            id: e.id.clone(),
            url: e.url.clone(),
            events: e.events.clone(),
            description: e.description.clone(),
            source: e.source.clone(),
            enabled: e.disabled.is_none(),
            disabled_reason: e.disabled.as_ref().map(|d| d.1.clone()),
            disabled_at_ms: e.disabled.as_ref().map(|d| d.0),
            secrets_in_use: e
                .secrets
                .iter()
                .filter(|s| s.expires_at.is_none_or(|t| t > now))
                .count(),
            created_at_ms: e.created_at_ms,
            updated_at_ms: e.updated_at_ms,
        }
    }
}

/// Endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpoints {
    /// Every endpoint, by id.
    pub endpoints: Vec<WebhookEndpoint>,
}

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookEndpoint {
    /// 1–64 letters, digits, `-`, `_`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub id: String,
    /// `https://…` (or `http://…` for a receiver on a private network).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event type patterns (default `["*"]`).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 64)]
    pub events: Option<Vec<String>>,
    /// Free text (at most 256 characters).
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: Option<String>,
    /// A secret of your own (`whsec_` + base64 of 24–64 bytes); default: a new random one.
    #[serde(default)]
    pub secret: Option<String>,
}

/// An endpoint made: its signing secret is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointCreated {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify `webhook-signature` with it.
    pub secret: String,
}

/// Changes to an endpoint (each field optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointChange {
    /// A new URL.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// New event type patterns.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 64)]
    pub events: Option<Vec<String>>,
    /// New description.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: Option<String>,
    /// `false` stops deliveries (they wait); `true` resumes them (also after a `410`).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A secret rotated.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretRotated {
    /// The new secret (shown this once).
    pub secret: String,
    /// Until when (Unix ms) the previous secret still signs beside it.
    pub previous_valid_until_ms: u64,
}

/// A test event queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestQueued {
    /// Its id (`evt_…`), as the delivery will carry it.
    pub event_id: String,
}

/// One delivery of an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// The event (`evt_…`).
    pub event_id: String,
    /// Its numeric id (the `after` cursor).
    pub event_seq: u64,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Ordering key.
    pub key: String,
    /// The key's sequence.
    pub key_seq: u64,
    /// `pending`, `delivered` or `given_up`.
    pub state: &'static str,
    /// Attempts so far.
    pub attempts: u32,
    /// The next attempt (pending ones), Unix ms.
    pub next_attempt_at_ms: Option<u64>,
    /// The last answer's status.
    pub last_status: Option<u16>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Unix ms.
    pub updated_at_ms: u64,
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveries {
    /// Oldest first.
    pub deliveries: Vec<WebhookDelivery>,
    /// `after` for the next page (absent on the last).
    pub next_after: Option<u64>,
}

/// What to deliver again: one event, or the events of a time range.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    /// One event (`evt_…` or its number).
    #[serde(default)]
    pub event_id: Option<String>,
    /// Events created at or after this Unix ms…
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// …and at or before this one (default now).
    #[serde(default)]
    pub until_ms: Option<u64>,
}

/// Deliveries queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    /// How many events (at most 10,000 per call).
    pub queued: u64,
}

/// A page of the event log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventLog {
    /// Oldest first, in the body webhooks carry.
    pub events: Vec<WebhookEnvelope>,
    /// `after` for the next call (the last event's number; the same `after` when none).
    pub next_after: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct EndpointPath {
    endpoint_id: String,
}

/// Event log query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    /// Events after this one (its number; 0 or absent: from the oldest kept).
    #[param(maximum = 9_223_372_036_854_775_807_u64)]
    after: Option<u64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Delivery log query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveryQuery {
    /// Deliveries of events after this one (its number).
    #[param(maximum = 9_223_372_036_854_775_807_u64)]
    after: Option<u64>,
    /// Only `pending`, `delivered` or `given_up` ones.
    #[param(pattern = "^(pending|delivered|given_up)$")]
    state: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn state_name(s: u8) -> &'static str {
    match i64::from(s) {
        delivery_state::PENDING => "pending",
        delivery_state::DELIVERED => "delivered",
        _ => "given_up",
    }
}

async fn endpoint(api: &Services, id: &str) -> ApiResult<Endpoint> {
    match api.chat.store().hook_endpoint(id).await {
        Ok(e) => Ok(e),
        Err(StoreError::NotFound) => Err(Problem::not_found("webhook endpoint").field("endpoint_id")),
        Err(e) => Err(e.into()),
    }
}

fn from_api(e: &Endpoint) -> ApiResult<()> {
    if e.source == "config" {
        return Err(Problem::new(
            CONFLICT,
            "this endpoint is configured in the config file: change it there",
        )
        .field("endpoint_id"));
    }
    Ok(())
}

fn bad_endpoint(msg: String) -> Problem {
    let field = msg.split(':').next().unwrap_or("body").to_string();
    Problem::bad(&field, msg)
}

/// Lists the webhook endpoints.
#[utoipa::path(
    get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, description = "Every endpoint", body = WebhookEndpoints))
)]
pub(super) async fn list(State(api): State<Arc<Services>>, caller: Caller) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let now = now_ms();
    let endpoints = api.chat.store().hook_endpoints().await?;
    Ok(axum::Json(WebhookEndpoints {
        endpoints: endpoints.iter().map(|e| WebhookEndpoint::of(e, now)).collect(),
    })
    .into_response())
}

/// Makes a webhook endpoint; events recorded from now on are delivered to it (within 2 s
/// on the other nodes of a cluster).
#[utoipa::path(
    post, path = "/webhooks", tag = "webhooks",
    request_body = NewWebhookEndpoint,
    responses(
        (status = 201, description = "Made; the secret is shown this once", body = WebhookEndpointCreated),
        (status = 400, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An endpoint with this id exists", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiJson(n): ApiJson<NewWebhookEndpoint>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let events = n.events.unwrap_or_else(|| vec!["*".into()]);
    check_endpoint(&n.id, &n.url, n.secret.as_deref(), &events).map_err(bad_endpoint)?;
    let description = n.description.unwrap_or_default();
    if description.chars().count() > 256 {
        return Err(Problem::bad("description", "at most 256 characters"));
    }
    match api.chat.store().hook_endpoint(&n.id).await {
        Ok(_) => {
            return Err(Problem::new(CONFLICT, "an endpoint with this id exists").field("id"));
        }
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let now = now_ms();
    let secret = n.secret.unwrap_or_else(new_secret);
    let e = Endpoint {
        id: n.id,
        url: n.url,
        secrets: vec![EndpointSecret {
            secret: secret.clone(),
            expires_at: None,
        }],
        events,
        source: "api".into(),
        description,
        disabled: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    api.chat.store().hook_put_endpoint(&e).await?;
    api.webhooks.endpoints_changed_now().await;
    Ok((
        StatusCode::CREATED,
        axum::Json(WebhookEndpointCreated {
            endpoint: WebhookEndpoint::of(&e, now),
            secret,
        }),
    )
        .into_response())
}

/// One webhook endpoint.
#[utoipa::path(
    get, path = "/webhooks/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    responses((status = 200, description = "The endpoint", body = WebhookEndpoint))
)]
pub(super) async fn get(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let e = endpoint(&api, &p.endpoint_id).await?;
    Ok(axum::Json(WebhookEndpoint::of(&e, now_ms())).into_response())
}

/// Changes a webhook endpoint made through the API (`enabled` works on every endpoint).
#[utoipa::path(
    patch, path = "/webhooks/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    request_body = WebhookEndpointChange,
    responses(
        (status = 200, description = "Changed", body = WebhookEndpoint),
        (status = 400, description = "An invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Configured in the config file (only `enabled` can change here)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn update(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
    ApiJson(c): ApiJson<WebhookEndpointChange>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let mut e = endpoint(&api, &p.endpoint_id).await?;
    if c.url.is_some() || c.events.is_some() || c.description.is_some() {
        from_api(&e)?;
    }
    if let Some(u) = c.url {
        e.url = u;
    }
    if let Some(ev) = c.events {
        e.events = ev;
    }
    if let Some(d) = c.description {
        if d.chars().count() > 256 {
            return Err(Problem::bad("description", "at most 256 characters"));
        }
        e.description = d;
    }
    check_endpoint(&e.id, &e.url, None, &e.events).map_err(bad_endpoint)?;
    let now = now_ms();
    match c.enabled {
        Some(true) => e.disabled = None,
        Some(false) if e.disabled.is_none() => e.disabled = Some((now, "disabled through the API".into())),
        _ => {}
    }
    e.updated_at_ms = now;
    api.chat.store().hook_put_endpoint(&e).await?;
    api.webhooks.endpoints_changed_now().await;
    Ok(axum::Json(WebhookEndpoint::of(&e, now)).into_response())
}

/// Deletes a webhook endpoint made through the API, with its pending deliveries.
#[utoipa::path(
    delete, path = "/webhooks/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Configured in the config file", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let e = endpoint(&api, &p.endpoint_id).await?;
    from_api(&e)?;
    api.chat.store().hook_delete_endpoint(&e.id).await?;
    api.webhooks.endpoints_changed_now().await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rotates an endpoint's signing secret: the new one signs from now on, and the previous
/// one signs beside it (a second `v1,` signature) for the overlap (24 h by default), so a
/// receiver can switch without losing a delivery.
#[utoipa::path(
    post, path = "/webhooks/{endpoint_id}/rotate", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    responses(
        (status = 200, description = "Rotated; the new secret is shown this once", body = SecretRotated),
        (status = 409, description = "Configured in the config file", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn rotate(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let mut e = endpoint(&api, &p.endpoint_id).await?;
    from_api(&e)?;
    let now = now_ms();
    let until = now + api.webhooks.config().rotation_overlap.as_millis() as u64;
    let secret = new_secret();
    debug_assert!(check_secret(&secret).is_ok());
    let mut secrets = vec![EndpointSecret {
        secret: secret.clone(),
        expires_at: None,
    }];
    // The one in use until now keeps signing for the overlap; older ones keep their end.
    for s in e.secrets.iter().filter(|s| s.expires_at.is_none_or(|t| t > now)) {
        secrets.push(EndpointSecret {
            secret: s.secret.clone(),
            expires_at: Some(s.expires_at.unwrap_or(until).min(until)),
        });
    }
    e.secrets = secrets;
    e.updated_at_ms = now;
    api.chat.store().hook_put_endpoint(&e).await?;
    api.webhooks.endpoints_changed_now().await;
    Ok(axum::Json(SecretRotated {
        secret,
        previous_valid_until_ms: until,
    })
    .into_response())
}

/// Queues a `webhook.test` event for this endpoint alone.
#[utoipa::path(
    post, path = "/webhooks/{endpoint_id}/test", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    responses((status = 202, description = "Queued", body = TestQueued))
)]
pub(super) async fn test(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let e = endpoint(&api, &p.endpoint_id).await?;
    let data = crate::webhooks::catalogue::WebhookTest {
        endpoint_id: e.id.clone(),
    };
    let id = api
        .chat
        .store()
        .hook_record_now(endpoint_event("webhook.test", &e.id, &data), Some(&e.id), now_ms())
        .await?
        .unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(TestQueued {
            event_id: crate::webhooks::event_id(id),
        }),
    )
        .into_response())
}

/// An endpoint's deliveries: what was sent, answered, retried or given up.
#[utoipa::path(
    get, path = "/webhooks/{endpoint_id}/deliveries", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint"), DeliveryQuery),
    responses((status = 200, description = "A page, oldest first", body = WebhookDeliveries))
)]
pub(super) async fn deliveries(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let state = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(delivery_state::PENDING),
        Some("delivered") => Some(delivery_state::DELIVERED),
        Some("given_up") => Some(delivery_state::GIVEN_UP),
        Some(_) => return Err(Problem::bad("state", "pending, delivered or given_up")),
    };
    let after = q.after.unwrap_or(0);
    if after > i64::MAX as u64 {
        return Err(Problem::bad("after", "after is at most 2^63 - 1"));
    }
    let e = endpoint(&api, &p.endpoint_id).await?;
    let rows = api.chat.store().hook_deliveries(&e.id, after, state, limit).await?;
    let next_after = (rows.len() == limit as usize)
        .then(|| rows.last().map(|d| d.event_id))
        .flatten();
    Ok(axum::Json(WebhookDeliveries {
        deliveries: rows
            .into_iter()
            .map(|d| WebhookDelivery {
                event_id: crate::webhooks::event_id(d.event_id),
                event_seq: d.event_id,
                kind: d.kind,
                key: d.okey,
                key_seq: d.kseq,
                state: state_name(d.state),
                attempts: d.attempts,
                next_attempt_at_ms: (i64::from(d.state) == delivery_state::PENDING).then_some(d.next_at_ms),
                last_status: d.last_status,
                last_error: d.last_error,
                updated_at_ms: d.updated_at_ms,
            })
            .collect(),
        next_after,
    })
    .into_response())
}

/// Delivers events to this endpoint again — one event, or every logged event of a time
/// range (at most 10,000 per call) — whether it had them before or not; each key's order
/// holds (an older event goes out before the newer ones still pending).
#[utoipa::path(
    post, path = "/webhooks/{endpoint_id}/redeliver", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint")),
    request_body = Redeliver,
    responses(
        (status = 202, description = "Queued", body = Redelivered),
        (status = 400, description = "Neither an event nor a range, or both", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn redeliver(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiPath(p): ApiPath<EndpointPath>,
    ApiJson(r): ApiJson<Redeliver>,
) -> ApiResult<Response> {
    caller.need(Scope::Webhooks)?;
    let e = endpoint(&api, &p.endpoint_id).await?;
    let now = now_ms();
    let store = api.chat.store();
    let queued = match (&r.event_id, r.since_ms, r.until_ms) {
        (Some(id), None, None) => {
            let n = id
                .strip_prefix("evt_")
                .unwrap_or(id)
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0 && *n <= i64::MAX as u64)
                .ok_or_else(|| Problem::bad("event_id", "evt_<number> or the number"))?;
            match store.hook_event(n).await {
                Ok(_) => {}
                Err(StoreError::NotFound) => return Err(Problem::not_found("event").field("event_id")),
                Err(e) => return Err(e.into()),
            }
            store.hook_redeliver(&e.id, (n, n), (0, u64::MAX), 1, now).await?
        }
        (None, Some(since), until) => {
            let until = until.unwrap_or(now);
            if until < since {
                return Err(Problem::bad("until_ms", "until_ms is before since_ms"));
            }
            store
                .hook_redeliver(&e.id, (0, u64::MAX), (since, until), 10_000, now)
                .await?
        }
        _ => {
            return Err(Problem::bad(
                "event_id",
                "give event_id, or since_ms (and until_ms), not both",
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, axum::Json(Redelivered { queued })).into_response())
}

/// The retained event log (7 days by default), oldest first: every event webhooks carry,
/// whether an endpoint wanted it or not, in the same body — kept while at least one
/// endpoint exists (or as `[webhooks] log` says). Reconcile after an outage by
/// reading from the last `next_after` you kept. On PostgreSQL an event appears here a few
/// seconds after it happened (the store's deadline plus 2 s: a transaction that took its
/// number earlier may still commit), so the cursor never skips one; on SQLite at once.
#[utoipa::path(
    get, path = "/events", tag = "webhooks",
    params(LogQuery),
    responses((status = 200, description = "A page, oldest first", body = EventLog))
)]
pub(super) async fn event_log(
    State(api): State<Arc<Services>>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<Response> {
    caller.need(Scope::EventsRead)?;
    let limit = page_limit(q.limit, 100, 1000)?;
    let after = q.after.unwrap_or(0);
    if after > i64::MAX as u64 {
        return Err(Problem::bad("after", "after is at most 2^63 - 1"));
    }
    let store = api.chat.store();
    let settle = match store.backend() {
        crate::store::Backend::Sqlite => 0,
        crate::store::Backend::Postgres => store.timeout().as_millis() as u64 + 2000,
    };
    let events = store
        .hook_events_after(after, now_ms().saturating_sub(settle), limit)
        .await?;
    let next_after = events.last().map_or(after, |e| e.id);
    Ok(axum::Json(EventLog {
        events: events.iter().map(envelope).collect(),
        next_after,
    })
    .into_response())
}
