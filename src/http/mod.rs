//! Thin HTTP handlers: extract → authorize → call the log → respond.

pub mod account;
pub mod assets;
pub mod auth;
pub mod body;
pub mod openapi;
pub mod snapshot;
pub mod ws;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use self::auth::{Admin, Auth, Read, Write};
use self::body::Format;
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::log::Push;
use crate::protocol::{AckRequest, AckResponse, ErrorBody, PullResponse, PushRequest, PushResponse, StatusResponse};

/// The default page size of a pull.
pub const DEFAULT_PAGE_OPS: usize = 1000;

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(assets::routes)
        .service(web::resource("/healthz").get(healthz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/readyz").get(readyz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/metrics").get(metrics).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/openapi.json").get(openapi::serve).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/ops").post(push).get(pull).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/ws").get(ws::connect).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/ack").post(ack).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/status").get(status).default_service(web::to(method_not_allowed)))
        .service(web::resource("/v1/admin/revoke").post(revoke).default_service(web::to(method_not_allowed)))
        .service(snapshot::resource())
        .service(account::resource());
}

/// Reads and decodes a request body in the format its Content-Type names.
async fn decode_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<(Format, T), ApiError> {
    let format = Format::of_request(req.headers())?;
    let bytes = body::read(req, payload, limit).await?;
    Ok((format, body::decode(format, &bytes)?))
}

/// `POST /v1/ops`: append ops; answered after the commit. A client over its rate
/// limit is refused before its body is read when that is already clear, and
/// otherwise once the body says how many ops and bytes it carries.
#[utoipa::path(
    post, path = "/v1/ops", tag = "log",
    description = "Appends a batch of ops atomically; answered after the commit with each op's seq \
        (`duplicate` with its original seq for an id already stored).",
    request_body(content(
        (PushRequest = "application/json"),
        (PushRequest = "application/msgpack"),
    )),
    responses(
        (status = 200, description = "Stored (or already stored): every op's seq and the new head.", body = PushResponse),
        (status = "default", description = openapi::ERROR, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn push(
    req: HttpRequest,
    payload: web::Payload,
    auth: Auth<Write>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user = &auth.principal.user;
    state.limits.push_limited(user, auth.principal.device.as_ref())?;
    let (format, request): (_, PushRequest) = decode_body(&req, payload, state.log.limits().max_body_bytes).await?;
    let device = auth.device(request.device)?;
    let bytes = request.ops.iter().map(|op| op.payload.0.len()).sum();
    state.limits.check_push(user, device.as_ref(), request.ops.len(), bytes)?;
    let push = Push {
        user: auth.principal.user,
        device,
        ops: request.ops,
        expected_head: request.expected_head,
        on_stale: request.on_stale.unwrap_or_default(),
        origin: None,
    };
    let response = state.log.push(push).await?;
    body::respond(Format::for_response(req.headers(), Some(format)), StatusCode::OK, &response)
}

/// The query of `GET /v1/ops`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PullQuery {
    /// Ops after this seq (0: from the start).
    #[serde(default)]
    #[param(minimum = 0, required = false)]
    since: i64,
    /// Most ops in the page (the server caps it at `limits.max_page_ops`).
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// Long-poll: hold the request up to this many seconds for a commit
    /// (at most `realtime.max_wait_secs`, 30 by default).
    #[serde(default)]
    #[param(minimum = 0, required = false)]
    wait: u64,
}

/// `GET /v1/ops?since=N&limit=L[&wait=S]`: one page of the log. With `wait`, an
/// empty page is held until a commit of the user (on any node) or S seconds.
#[utoipa::path(
    get, path = "/v1/ops", tag = "log",
    description = "One page of the log after `since`, with the head and whether more follow. \
        With `wait`, an empty page is held until a commit or the timeout.",
    params(PullQuery),
    responses(
        (status = 200, description = "A page of ops, in seq order.", body = PullResponse),
        (status = 410, description = "`resync_required`: `since` is below the retention horizon; \
            bootstrap from the snapshot.", body = ErrorBody),
        (status = "default", description = openapi::ERROR, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn pull(
    req: HttpRequest,
    query: web::Query<PullQuery>,
    auth: Auth<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if query.since < 0 {
        return Err(ApiError::new(ErrorCode::InvalidQuery, format!("since must be >= 0, got {}", query.since)));
    }
    if query.limit == Some(0) {
        return Err(ApiError::new(ErrorCode::InvalidQuery, "limit must be >= 1"));
    }
    let max_wait = state.realtime.config().max_wait_secs;
    if query.wait > max_wait {
        return Err(ApiError::new(ErrorCode::InvalidQuery, format!("wait must be at most {max_wait} seconds")));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_OPS);
    let Principal { user, device, .. } = auth.principal;
    let page = if query.wait == 0 {
        state.log.pull(user, query.since, limit).await?
    } else {
        long_poll(&state, user, device, query.since, limit, std::time::Duration::from_secs(query.wait)).await?
    };
    body::respond(Format::for_response(req.headers(), None), StatusCode::OK, &page)
}

/// A page after `since`, waiting up to `wait` for one to exist. The watch is
/// registered before each read: a commit after it fires the watch, one before it is
/// in the read. A wake-up with nothing new (a refresh after a listener reconnect)
/// just waits again. A poll that has to wait counts as a connect of its user and
/// device (a rate limit); one answered at once is a plain pull.
async fn long_poll(
    state: &AppState,
    user: crate::ids::UserId,
    device: Option<crate::ids::DeviceId>,
    since: i64,
    limit: usize,
    wait: std::time::Duration,
) -> Result<crate::protocol::PullResponse, ApiError> {
    let deadline = std::time::Instant::now() + wait;
    let mut charged = false;
    loop {
        let mut watch = state.realtime.watch(&user).await.map_err(ApiError::unavailable)?;
        let page = state.log.pull(user.clone(), since, limit).await?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !page.ops.is_empty() || left.is_zero() {
            return Ok(page);
        }
        if !charged {
            state.limits.check_connect(&user, device.as_ref())?;
            charged = true;
        }
        if !watch.wait(left).await {
            return Ok(page);
        }
    }
}

/// `POST /v1/ack`: a device's cursor.
#[utoipa::path(
    post, path = "/v1/ack", tag = "log",
    description = "Records how far a device has applied the log.",
    request_body(content((AckRequest = "application/json"), (AckRequest = "application/msgpack"))),
    responses(
        (status = 200, description = "The device's cursor.", body = AckResponse),
        (status = "default", description = openapi::ERROR, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn ack(
    req: HttpRequest,
    payload: web::Payload,
    auth: Auth<Write>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (format, request): (_, AckRequest) = decode_body(&req, payload, state.log.limits().max_body_bytes).await?;
    let device = auth
        .device(request.device)?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidField, "device is required (in the body or the token)"))?;
    let response = state.log.ack(auth.principal.user, device, request.seq).await?;
    body::respond(Format::for_response(req.headers(), Some(format)), StatusCode::OK, &response)
}

/// `GET /v1/status`: head and devices.
#[utoipa::path(
    get, path = "/v1/status", tag = "log",
    description = "The user's head, devices and their cursors, horizon and latest snapshot.",
    responses(
        (status = 200, description = "The user's log at a glance.", body = StatusResponse),
        (status = "default", description = openapi::ERROR, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn status(req: HttpRequest, auth: Auth<Read>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status = state.log.status(auth.principal.user).await?;
    body::respond(Format::for_response(req.headers(), None), StatusCode::OK, &status)
}

/// The body of `POST /v1/admin/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RevokeRequest {
    /// Tokens to revoke (each with every token attenuated from it, but not the
    /// token it was itself attenuated from).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Revocation ids (hex) to revoke.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// The answer of `POST /v1/admin/revoke`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RevokeResponse {
    /// The revocation ids now revoked (hex).
    revoked: Vec<String>,
}

/// `POST /v1/admin/revoke`: revoke tokens or ids, at once on this node and within
/// a second on the others.
#[utoipa::path(
    post, path = "/v1/admin/revoke", tag = "admin",
    description = "Revokes tokens (each with every token attenuated from it) or revocation ids. \
        Needs an admin token.",
    request_body(content((RevokeRequest = "application/json"), (RevokeRequest = "application/msgpack"))),
    responses(
        (status = 200, description = "What is now revoked.", body = RevokeResponse),
        (status = "default", description = openapi::ERROR, body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    _admin: Auth<Admin>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (format, request): (_, RevokeRequest) = decode_body(&req, payload, 64 * 1024).await?;
    let mut ids = Vec::new();
    for token in &request.tokens {
        // Not `?`: a bad token in the body is a bad field, not a bad caller (401).
        let parsed = crate::auth::parse(token, &state.verifier.public())
            .map_err(|e| ApiError::new(ErrorCode::InvalidField, format!("tokens: {e}")))?;
        ids.push(crate::auth::own_revocation_id(&parsed));
    }
    for id in request.ids {
        if id.len() > 256 || hex::decode(&id).is_err() {
            return Err(ApiError::new(ErrorCode::InvalidField, "revocation ids are hex strings"));
        }
        ids.push(id.to_ascii_lowercase());
    }
    if ids.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidField, "name at least one token or id"));
    }
    let stored = ids.clone();
    state.log.with_conn(move |conn| crate::auth::revoke(conn, &stored).map_err(Into::into)).await?;
    for id in &ids {
        state.verifier.revocations().insert(id.clone());
    }
    body::respond(Format::for_response(req.headers(), Some(format)), StatusCode::OK, &RevokeResponse { revoked: ids })
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    status: &'static str,
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    description = "The process is up (no database access).",
    responses((status = 200, description = "Up.", body = Health)),
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// `GET /readyz`: the database answers.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    description = "The database answers: take the node out of rotation while this is 503.",
    responses(
        (status = 200, description = "Ready.", body = Health),
        (status = 503, description = "`unavailable`: the database does not answer.", body = ErrorBody),
    ),
)]
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.log.ready().await?;
    Ok(HttpResponse::Ok().json(Health { status: "ready" }))
}

/// `GET /metrics`: counters and latency histograms in the Prometheus text format.
/// Counts only, no user data; still, expose it to your monitoring network only.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    description = "Counters and latency histograms in the Prometheus text format (docs/protocol.md lists them).",
    responses((status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain")),
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = crate::metrics::Snapshot {
        log: state.log.writer_stats(),
        realtime: state.realtime.stats(),
        pool: state.log.pool_state(),
        write_queue: state.log.write_queue(),
        limits: state.limits.stats(),
    };
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(snapshot.render())
}

/// Any unknown path.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::NotFound, format!("no route for {} {}", req.method(), req.path())))
}

pub(crate) async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorCode::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.path())))
}

/// Logs each request with its id, status and latency; echoes or assigns
/// `X-Request-Id`.
pub async fn trace(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::http::header::{HeaderName, HeaderValue};
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let method = req.method().clone();
    let path = req.path().to_owned();
    let started = std::time::Instant::now();
    let mut res = next.call(req).await?;
    let status = res.status().as_u16();
    let elapsed_us = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, %path, status, elapsed_us, "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, %path, status, elapsed_us, "request");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}
