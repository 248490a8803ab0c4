//! The server API for the application's backend: `/api/v1` on a listener of its own
//! (`[api] listen`, loopback by default — never the public client port). It calls the same
//! services sessions call — chat, presence, sessions, voice, the store — each handed to it
//! narrowly ([`Services`]), so what it does is authorised, rate-limited, stored, sequenced
//! and fanned out exactly like a client's request: a message posted here is one more
//! channel event with its seq, and clients see the events they already understand.
//!
//! Around every call ([`guard`]): the key (`Authorization: Bearer qk_…`, [`auth`]), its rate
//! limit (`429`, `Retry-After`, `X-RateLimit-*` on every answer), an `Idempotency-Key` on
//! any change ([`idempotency`], kept in the database for 24 h: a retry gets the first
//! answer, `409` while it is in flight, `422` with another body), and one log line (key id,
//! method, path, status, time — never the key). Errors are RFC 9457 problem documents
//! ([`error`]). The OpenAPI 3.1 document is generated from the handlers and types
//! (`utoipa`) and served at `/api/v1/openapi.json`, with a page at `/api/v1/docs`.

pub mod auth;
pub mod batch;
pub mod error;
pub mod events;
mod extract;
pub mod guilds;
pub mod idempotency;
pub mod messages;
pub mod people;
pub mod sessions;
pub mod tls;
pub mod types;
pub mod voice;
pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{Caller, Scope};
use error::{METHOD_NOT_ALLOWED, NO_ROUTE, Problem};

use crate::chat::Chat;
use crate::gateway::Sessions;
use crate::presence::task::PresenceHandle;

/// What the API's handlers reach: the services sessions use, each narrow.
#[derive(Clone)]
pub struct Services {
    /// Guilds, channels, messages, permissions.
    pub chat: Arc<Chat>,
    /// Presence (merged across nodes).
    pub presence: PresenceHandle,
    /// This node's sessions.
    pub sessions: Arc<Sessions>,
    /// This node's topics (sessions forgotten here stop following theirs).
    pub fanout: Arc<crate::fanout::Fanout>,
    /// The bus, for orders to every node.
    pub bus: Arc<dyn crate::cluster::Bus>,
    /// Revoked tokens (the verifier's).
    pub revocations: Arc<crate::auth::Revocations>,
    /// Voice channels (this node's, and what it knows of others').
    pub voice: Arc<crate::voice::Voice>,
    /// The operations without the guard, for a batch's (each run with the batch's caller):
    /// set once the routes are built. (Stateless: it holds no `Services`.)
    pub operations: std::sync::OnceLock<Router<Arc<Services>>>,
    /// The keys and their limits.
    pub keys: Arc<auth::Keys>,
    /// How long idempotency keys are kept.
    pub idempotency_ttl: Duration,
    /// Webhook delivery (endpoints, the event log).
    pub webhooks: Arc<crate::webhooks::deliver::Deliverer>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The OpenAPI document's frame (the paths and schemas come from the routes).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Quaver server API",
        description = "For the application's backend: post, moderate, sync, ask. Keys with scopes (Authorization: Bearer qk_<id>_<secret>), RFC 9457 problem documents, Idempotency-Key on every change. Ids are decimal strings.",
        version = "1"
    ),
    modifiers(&SecurityAddon),
    components(schemas(
        crate::webhooks::catalogue::WebhookEnvelope,
        crate::webhooks::catalogue::WebhookMessageCreated,
        crate::webhooks::catalogue::WebhookMessageUpdated,
        crate::webhooks::catalogue::WebhookMessageDeleted,
        crate::webhooks::catalogue::WebhookReaction,
        crate::webhooks::catalogue::WebhookMember,
        crate::webhooks::catalogue::WebhookMemberLeft,
        crate::webhooks::catalogue::WebhookMemberBanned,
        crate::webhooks::catalogue::WebhookEndpointDisabled,
        crate::webhooks::catalogue::WebhookGuild,
        crate::webhooks::catalogue::WebhookChannel,
        crate::webhooks::catalogue::WebhookVoice,
        crate::webhooks::catalogue::WebhookSessionOpened,
        crate::webhooks::catalogue::WebhookSessionClosed,
        crate::webhooks::catalogue::WebhookRateLimited,
        crate::webhooks::catalogue::WebhookTyping,
        crate::webhooks::catalogue::WebhookRole,
        crate::webhooks::catalogue::WebhookMemberRole,
        crate::webhooks::catalogue::WebhookRoleDeleted,
        crate::webhooks::catalogue::WebhookMemberTimeout,
        crate::webhooks::catalogue::WebhookUserPresence,
        crate::webhooks::catalogue::WebhookNotification,
        crate::webhooks::catalogue::WebhookTest,
    )),
    tags(
        (name = "messages", description = "Messages and reactions, as their authors or with moderation."),
        (name = "guilds", description = "Guilds, members, bans, channels, roles, invites, with the guild's authority."),
        (name = "people", description = "Users, presence, permissions."),
        (name = "sessions", description = "Token revocation and disconnects, on every node."),
        (name = "voice", description = "Voice participants and moderation, cluster-wide."),
        (name = "events", description = "Application events to users, channels and guilds (not stored)."),
        (name = "webhooks", description = "Webhook endpoints, their deliveries, and the retained event log. Each delivery's body is a WebhookEnvelope whose data is one of the Webhook* schemas."),
        (name = "meta", description = "The key in use."),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("qk_<id>_<secret>")
                    .build(),
            ),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "key",
            Vec::<String>::new(),
        )]);
    }
}

/// The API's routes (behind [`guard`]) and the OpenAPI document describing them.
pub fn routes(services: Arc<Services>) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(people::whoami))
        .routes(routes!(people::put_user, people::get_user, people::delete_user))
        .routes(routes!(people::query_presence))
        .routes(routes!(people::guild_presence))
        .routes(routes!(people::befriend, people::unfriend))
        .routes(routes!(people::block, people::unblock))
        .routes(routes!(people::permissions))
        .routes(routes!(sessions::revoke))
        .routes(routes!(sessions::disconnect))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::disconnect_session))
        .routes(routes!(events::send, webhooks::event_log))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate))
        .routes(routes!(webhooks::test))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(voice::participants))
        .routes(routes!(voice::change, voice::disconnect))
        .routes(routes!(batch::batch))
        .routes(routes!(messages::create, messages::history))
        .routes(routes!(messages::edit, messages::delete))
        .routes(routes!(messages::add_reaction, messages::remove_reaction))
        .routes(routes!(guilds::create_guild))
        .routes(routes!(guilds::get_guild, guilds::rename_guild, guilds::delete_guild))
        .routes(routes!(guilds::members))
        .routes(routes!(guilds::add_member, guilds::kick))
        .routes(routes!(guilds::ban, guilds::unban))
        .routes(routes!(guilds::create_channel))
        .routes(routes!(guilds::delete_channel))
        .routes(routes!(guilds::create_role))
        .routes(routes!(guilds::add_role, guilds::remove_role))
        .routes(routes!(guilds::create_invite))
        .routes(routes!(guilds::update_role, guilds::delete_role))
        .routes(routes!(guilds::timeout, guilds::lift_timeout))
        .routes(routes!(guilds::set_overwrite, guilds::delete_overwrite))
        .routes(routes!(guilds::open_dm))
        .routes(routes!(messages::bulk_delete))
        .split_for_parts();
    let mut api = api;
    common_responses(&mut api);
    let operations = router
        .clone()
        .fallback(|| async { Problem::new(NO_ROUTE, "no such route; see /api/v1/docs") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                METHOD_NOT_ALLOWED,
                "this route does not take that method; see /api/v1/docs",
            )
        });
    if services.operations.set(operations).is_err() {
        tracing::warn!("the API's routes were built twice; batches use the first");
    }
    // The guard runs for routes that exist, with a method they take; the rest is told so
    // without a key.
    let guarded = router
        .route_layer(axum::middleware::from_fn_with_state(services.clone(), guard))
        .method_not_allowed_fallback(|| async {
            Problem::new(
                METHOD_NOT_ALLOWED,
                "this route does not take that method; see /api/v1/docs",
            )
        })
        .with_state(services);
    (guarded, api)
}

/// Adds what every operation may answer (the guard's refusals, bad fields, unknown ids,
/// idempotency conflicts) and the `Idempotency-Key` header of changes, so the document lists
/// every status a call can get.
fn common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};
    let problem = |what: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    let add = |op: &mut Operation, change: bool, has_path: bool| {
        let r = &mut op.responses.responses;
        let mut put = |code: &str, what: &str| {
            r.entry(code.to_string()).or_insert_with(|| problem(what));
        };
        put("401", "No valid key");
        put("403", "The key lacks the scope this call needs");
        put("429", "Over the key's rate (see Retry-After)");
        put("503", "The database is unavailable; retry");
        put("400", "An invalid field (named in `field`)");
        if has_path {
            put("404", "No such thing (or a malformed id)");
        }
        if change {
            put(
                "409",
                "The first request with this Idempotency-Key is still being answered",
            );
            put("413", "The body is too large");
            put("422", "This Idempotency-Key came with another request");
            op.parameters.get_or_insert_with(Vec::new).push(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "1–255 printable ASCII characters: a retry with the same key and request gets the first answer (kept 24 h)",
                    ))
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .min_length(Some(1))
                            .max_length(Some(255))
                            .pattern(Some("^[!-~]+$")),
                    ))
                    .build()
                    .into(),
            );
        }
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_path = path.contains('{');
        for (op, change) in [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ] {
            if let Some(op) = op.as_mut() {
                add(op, change, has_path);
            }
        }
    }
}

/// The router of the API listener: `/api/v1/…` behind the guard, the document and its page
/// open, problem documents for everything else.
pub fn router(services: Arc<Services>) -> Router {
    let (api, mut doc) = routes(services);
    // The routes are nested under /api/v1: the document says the paths a caller uses.
    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(path, item)| (format!("/api/v1{path}"), item))
        .collect();
    let json = serde_json::to_string(&doc).unwrap_or_else(|_| "{}".into());
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], json).into_response() }
            }),
        )
        .route("/api/v1/docs", get(|| async { Html(DOCS_PAGE) }))
        .fallback(|| async { Problem::new(NO_ROUTE, "no such route; see /api/v1/docs") })
}

/// A page listing the document's operations, drawn in the browser from
/// `/api/v1/openapi.json` (no files from elsewhere: it works offline).
const DOCS_PAGE: &str = include_str!("docs.html");

/// Authentication, the key's rate limit, idempotency and the log line, around every call.
pub async fn guard(State(api): State<Arc<Services>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // The path as called (the router nested under /api/v1 sees it without).
    let path = format!("/api/v1{}", req.uri().path());
    let method = req.method().clone();
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let caller = match api.keys.authenticate(auth.as_deref()) {
        Ok(c) => c,
        Err(p) => {
            tracing::info!(%method, path, status = p.status, "API call refused: no valid key");
            return p.into_response();
        }
    };
    let (mut resp, quota) = match api.keys.take(&caller.key_id, Instant::now()) {
        (q, Some(p)) => (p.into_response(), q),
        (q, None) => {
            req.extensions_mut().insert(caller.clone());
            let changes = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
            let r = match req.headers().get("idempotency-key").cloned() {
                Some(key) if changes => idempotency::run(&api, &caller, key, req, next).await,
                _ => next.run(req).await,
            };
            (r, q)
        }
    };
    let h = resp.headers_mut();
    for (name, v) in [
        ("x-ratelimit-limit", quota.limit),
        ("x-ratelimit-remaining", quota.remaining),
        ("x-ratelimit-reset", quota.reset_secs),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
            h.insert(name, v);
        }
    }
    tracing::info!(
        key = %caller.key_id,
        %method,
        path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "API call"
    );
    resp
}
