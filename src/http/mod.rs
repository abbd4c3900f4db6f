//! Thin HTTP handlers: extract → authorize → call the log → respond.

pub mod account;
pub mod auth;
pub mod body;
pub mod snapshot;
pub mod ws;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use self::auth::{Admin, Auth, Read, Write};
use self::body::Format;
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::log::Push;
use crate::protocol::{AckRequest, PushRequest};

/// The default page size of a pull.
pub const DEFAULT_PAGE_OPS: usize = 1000;

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").get(index).default_service(web::to(method_not_allowed)))
        .service(web::resource("/healthz").get(healthz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/readyz").get(readyz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/metrics").get(metrics).default_service(web::to(method_not_allowed)))
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

/// `POST /v1/ops`: append ops; answered after the commit.
async fn push(
    req: HttpRequest,
    payload: web::Payload,
    auth: Auth<Write>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (format, request): (_, PushRequest) = decode_body(&req, payload, state.log.limits().max_body_bytes).await?;
    let device = auth.device(request.device)?;
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
#[derive(Debug, Deserialize)]
struct PullQuery {
    #[serde(default)]
    since: i64,
    limit: Option<usize>,
    /// Long-poll: hold the request up to this many seconds for a commit.
    #[serde(default)]
    wait: u64,
}

/// `GET /v1/ops?since=N&limit=L[&wait=S]`: one page of the log. With `wait`, an
/// empty page is held until a commit of the user (on any node) or S seconds.
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
    let user = auth.principal.user;
    let page = if query.wait == 0 {
        state.log.pull(user, query.since, limit).await?
    } else {
        long_poll(&state, user, query.since, limit, std::time::Duration::from_secs(query.wait)).await?
    };
    body::respond(Format::for_response(req.headers(), None), StatusCode::OK, &page)
}

/// A page after `since`, waiting up to `wait` for one to exist. The watch is
/// registered before each read: a commit after it fires the watch, one before it is
/// in the read. A wake-up with nothing new (a refresh after a listener reconnect)
/// just waits again.
async fn long_poll(
    state: &AppState,
    user: crate::ids::UserId,
    since: i64,
    limit: usize,
    wait: std::time::Duration,
) -> Result<crate::protocol::PullResponse, ApiError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut watch = state.realtime.watch(&user).await.map_err(ApiError::unavailable)?;
        let page = state.log.pull(user.clone(), since, limit).await?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !page.ops.is_empty() || left.is_zero() || !watch.wait(left).await {
            return Ok(page);
        }
    }
}

/// `POST /v1/ack`: a device's cursor.
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
async fn status(req: HttpRequest, auth: Auth<Read>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let status = state.log.status(auth.principal.user).await?;
    body::respond(Format::for_response(req.headers(), None), StatusCode::OK, &status)
}

/// The body of `POST /v1/admin/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RevokeRequest {
    /// Tokens to revoke (each with every token attenuated from it, but not the
    /// token it was itself attenuated from).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Revocation ids (hex) to revoke.
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Serialize)]
struct RevokeResponse {
    revoked: Vec<String>,
}

/// `POST /v1/admin/revoke`: revoke tokens or ids, at once on this node and within
/// a second on the others.
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

/// `GET /healthz`: the process is up.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.log.ready().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

/// `GET /metrics`: counters and latency histograms in the Prometheus text format.
/// Counts only, no user data; still, expose it to your monitoring network only.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = crate::metrics::Snapshot {
        log: state.log.writer_stats(),
        realtime: state.realtime.stats(),
        pool: state.log.pool_state(),
        write_queue: state.log.write_queue(),
    };
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(snapshot.render())
}

/// `GET /`: the page in static/.
async fn index() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("../../static/index.html"))
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
