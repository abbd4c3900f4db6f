//! `PUT /v1/snapshot` and `GET /v1/snapshot`: opaque client snapshots, uploaded
//! as a stream within the size limit, downloaded with ETag / If-None-Match.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::BytesMut;
use serde::Deserialize;

use super::auth::{Auth, Read, Write};
use super::body::{self, Format};
use super::method_not_allowed;
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::ids::Seq;
use crate::log::LogError;
use crate::log::snapshot::{DEFAULT_CONTENT_TYPE, MAX_CONTENT_TYPE_BYTES};
use crate::protocol::SnapshotInfo;

/// The response header with the seq a downloaded snapshot covers.
pub const SNAPSHOT_SEQ: HeaderName = HeaderName::from_static("x-opsync-snapshot-seq");
/// The response header with the downloaded snapshot's SHA-256 (hex).
pub const SNAPSHOT_SHA256: HeaderName = HeaderName::from_static("x-opsync-snapshot-sha256");

/// The `/v1/snapshot` resource.
pub fn resource() -> actix_web::Resource {
    web::resource("/v1/snapshot")
        .route(web::put().to(put))
        .route(web::get().to(get))
        .route(web::head().to(get))
        .default_service(web::to(method_not_allowed))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PutQuery {
    /// The seq the snapshot covers (required; at most the head, not below the horizon).
    #[param(required = true, minimum = 0)]
    seq: Option<Seq>,
    /// The SHA-256 of the body, 64 hex digits: the upload is refused if it differs.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    sha256: Option<String>,
}

/// `PUT /v1/snapshot?seq=S[&sha256=HEX]`: the body is the snapshot, stored as is.
#[utoipa::path(
    put, path = "/v1/snapshot", tag = "snapshots",
    description = "Uploads an opaque snapshot of the user's state as of `seq`. The body is stored as is, \
        with its Content-Type; at most `limits.max_snapshot_bytes`.",
    params(PutQuery),
    request_body(content = super::openapi::Binary, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored.", body = SnapshotInfo),
        (status = "default", description = super::openapi::ERROR, body = crate::protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn put(
    req: HttpRequest,
    query: web::Query<PutQuery>,
    mut payload: web::Payload,
    auth: Auth<Write>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = query.seq.ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, "seq is required"))?;
    if seq < 0 {
        return Err(ApiError::new(ErrorCode::InvalidQuery, format!("seq must be >= 0, got {seq}")));
    }
    if let Some(sha) = &query.sha256
        && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::new(ErrorCode::InvalidQuery, "sha256 must be 64 hex digits"));
    }
    let content_type = content_type(req.headers())?;
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("?").trim().to_ascii_lowercase();
        if !encoding.is_empty() && encoding != "identity" {
            return Err(ApiError::new(
                ErrorCode::UnsupportedEncoding,
                format!(
                    "snapshots are stored as sent: compress inside the snapshot, not with Content-Encoding {encoding:?}"
                ),
            ));
        }
    }
    // Fail fast on a seq that cannot be stored, before reading a large body (the
    // transaction checks again: the head or horizon may move meanwhile).
    let user = auth.principal.user;
    let checked = user.clone();
    let (head, horizon) = state
        .log
        .with_conn(move |conn| {
            let s = crate::log::store::user_state(conn, checked.as_str())?;
            Ok((s.head, s.horizon))
        })
        .await?;
    if seq > head {
        return Err(LogError::SeqBeyondHead { seq, head }.into());
    }
    if seq < horizon {
        return Err(LogError::SnapshotBelowHorizon { seq, horizon }.into());
    }
    let limit = state.log.limits().max_snapshot_bytes;
    let too_large = || ApiError::new(ErrorCode::SnapshotTooLarge, format!("the snapshot is larger than {limit} bytes"));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Streamed in, never more than the limit held; an interrupted upload fails
    // here, before anything reaches the database.
    let mut data = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let deadline = tokio::time::Instant::now() + SNAPSHOT_DEADLINE;
    while let Some(chunk) = body::next_chunk(&mut payload, deadline).await? {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorCode::MalformedBody, format!("the upload was interrupted ({e}); nothing was stored"))
        })?;
        if data.len() + chunk.len() > limit {
            return Err(too_large());
        }
        data.extend_from_slice(&chunk);
    }
    let info = state.log.put_snapshot(user, seq, content_type, data.freeze(), query.into_inner().sha256).await?;
    let mut response = body::respond(Format::for_response(req.headers(), None), StatusCode::CREATED, &info)?;
    set_headers(response.headers_mut(), &info);
    Ok(response)
}

/// The longest a snapshot upload may take.
const SNAPSHOT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// The Content-Type to store: the request's, or `application/octet-stream`.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(DEFAULT_CONTENT_TYPE.to_owned()) };
    let text = value.to_str().map_err(|_| ApiError::new(ErrorCode::UnsupportedMediaType, "unreadable Content-Type"))?;
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_CONTENT_TYPE_BYTES || !text.contains('/') {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type must be a media type of at most {MAX_CONTENT_TYPE_BYTES} bytes"),
        ));
    }
    Ok(text.to_owned())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GetQuery {
    /// The latest snapshot at or before this seq (default: the latest).
    #[param(minimum = 0)]
    at_or_before: Option<Seq>,
}

/// `GET /v1/snapshot[?at_or_before=S]`: the latest snapshot (or the latest at or
/// before S); 304 when If-None-Match names it.
#[utoipa::path(
    method(get, head), path = "/v1/snapshot", tag = "snapshots",
    description = "Downloads the latest snapshot (or the latest at or before `at_or_before`), with its seq \
        in `X-Opsync-Snapshot-Seq`, its SHA-256 in `X-Opsync-Snapshot-Sha256` and an ETag.",
    params(GetQuery),
    responses(
        (status = 200, description = "The snapshot's bytes, with the Content-Type it was uploaded with.",
            body = super::openapi::Binary, content_type = "application/octet-stream"),
        (status = 304, description = "`If-None-Match` names the snapshot."),
        (status = "default", description = super::openapi::ERROR, body = crate::protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn get(
    req: HttpRequest,
    query: web::Query<GetQuery>,
    auth: Auth<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if query.at_or_before.is_some_and(|s| s < 0) {
        return Err(ApiError::new(ErrorCode::InvalidQuery, "at_or_before must be >= 0"));
    }
    let user = auth.principal.user;
    if let Some(tags) = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let info = state.log.snapshot_info(user.clone(), query.at_or_before).await?;
        if etag_matches(tags, &info.etag()) {
            let mut response = HttpResponse::NotModified().finish();
            set_headers(response.headers_mut(), &info);
            return Ok(response);
        }
    }
    let (info, data) = state.log.snapshot(user, query.at_or_before).await?;
    let mut response = HttpResponse::Ok().content_type(info.content_type.as_str()).body(data);
    set_headers(response.headers_mut(), &info);
    Ok(response)
}

fn set_headers(headers: &mut HeaderMap, info: &SnapshotInfo) {
    for (name, value) in [
        (header::ETAG, info.etag()),
        (SNAPSHOT_SEQ, info.seq.to_string()),
        (SNAPSHOT_SHA256, info.sha256.clone()),
        (header::CACHE_CONTROL, "private, no-cache".to_owned()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// Whether an If-None-Match list names `etag` (weak comparison, as RFC 9110 asks).
fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match() {
        assert!(etag_matches("\"5-ab\"", "\"5-ab\""));
        assert!(etag_matches("\"1-x\", W/\"5-ab\"", "\"5-ab\""));
        assert!(etag_matches("*", "\"5-ab\""));
        assert!(!etag_matches("\"4-ab\"", "\"5-ab\""));
    }
}
