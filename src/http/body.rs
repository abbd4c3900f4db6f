//! Bodies in and out: JSON or MessagePack by Content-Type / Accept, bounded reads,
//! bounded gzip request decompression, strict decoding.

use std::io::{Cursor, Read as _};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// Nesting allowed in a body, in either format. Our messages nest four levels;
/// rmp-serde's default (1024) can overflow a worker thread's stack on hostile
/// input, and serde_json skips unknown keys at any depth.
pub const MAX_DEPTH: usize = 32;

/// The MessagePack media type opsync sends.
pub const MSGPACK: &str = "application/msgpack";
/// The JSON media type.
pub const JSON: &str = "application/json";

/// A body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/msgpack` (also accepted: `application/x-msgpack`, `application/vnd.msgpack`).
    Msgpack,
}

fn is_msgpack(media: &str) -> bool {
    matches!(media, "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack")
}

impl Format {
    /// The request body's format from its Content-Type (JSON when absent).
    pub fn of_request(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(Format::Json) };
        let text = value.to_str().unwrap_or("").to_ascii_lowercase();
        let media = text.split(';').next().unwrap_or("").trim();
        match media {
            "application/json" => Ok(Format::Json),
            m if is_msgpack(m) => Ok(Format::Msgpack),
            _ => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("Content-Type must be {JSON} or {MSGPACK}, got {text:?}"),
            )),
        }
    }

    /// The response format: MessagePack if Accept names it (before JSON), else the
    /// request's format, else JSON.
    pub fn for_response(headers: &HeaderMap, request: Option<Format>) -> Self {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut best: Option<(f32, Format)> = None;
        for part in accept.split(',') {
            let mut pieces = part.split(';');
            let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q =
                pieces.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            let format = if is_msgpack(&media) {
                Format::Msgpack
            } else if media == "application/json" {
                Format::Json
            } else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map(|(_, f)| f).or(request).unwrap_or(Format::Json)
    }

    /// The Content-Type to send.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::Msgpack => MSGPACK,
        }
    }
}

/// The longest a client may pause while sending a body.
pub const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest a client may take to send a whole (op) body.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The next chunk of a request body; `408 request_timeout` if the client pauses
/// longer than [`BODY_IDLE`] or has not finished by `deadline` (a slow body must
/// not hold a worker's memory and a connection forever).
pub async fn next_chunk(
    payload: &mut web::Payload,
    deadline: tokio::time::Instant,
) -> Result<Option<Result<Bytes, actix_web::error::PayloadError>>, ApiError> {
    let until = deadline.min(tokio::time::Instant::now() + BODY_IDLE);
    tokio::time::timeout_at(until, payload.next())
        .await
        .map_err(|_| ApiError::new(ErrorCode::RequestTimeout, "the request body did not arrive in time"))
}

/// Reads a request body of at most `limit` bytes (after decompression).
///
/// `Content-Encoding: gzip` bodies are inflated through a reader capped at
/// `limit + 1` bytes, so a compression bomb costs at most `limit` bytes of memory.
/// Other encodings are refused with 415.
pub async fn read(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(ErrorCode::BodyTooLarge, format!("the body is larger than {limit} bytes"));
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let gzip = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        other => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedEncoding,
                format!("Content-Encoding {other:?} is not supported; use gzip or none"),
            ));
        }
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    while let Some(chunk) = next_chunk(&mut payload, deadline).await? {
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::MalformedBody, format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !gzip {
        return Ok(body.freeze());
    }
    inflate(&body, limit)
}

/// Inflates a gzip body (several members are one body) through a reader capped at
/// `limit + 1` bytes: `413 body_too_large` past `limit`, `400 malformed_body` for a
/// corrupt stream. Memory stays within `limit`, however much the input claims.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut inflated = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| ApiError::new(ErrorCode::MalformedBody, format!("bad gzip body: {e}")))?;
    if inflated.len() > limit {
        return Err(ApiError::new(ErrorCode::BodyTooLarge, format!("the body is larger than {limit} bytes")));
    }
    Ok(Bytes::from(inflated))
}

/// Decodes a whole body; trailing bytes, excess nesting and wrong types are errors.
pub fn decode<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |e: &dyn std::fmt::Display| ApiError::new(ErrorCode::MalformedBody, format!("invalid body: {e}"));
    match format {
        // serde_json refuses trailing characters.
        Format::Json => {
            if json_depth(bytes) > MAX_DEPTH {
                return Err(malformed(&format!("nested more than {MAX_DEPTH} levels")));
            }
            serde_json::from_slice(bytes).map_err(|e| malformed(&e))
        }
        Format::Msgpack => {
            let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
            // rmp-serde refuses a value once its depth reaches the limit it is given,
            // so a limit of N allows N - 1 levels: N + 1 allows what the JSON check
            // and docs/protocol.md allow.
            de.set_max_depth(MAX_DEPTH + 1);
            let value = T::deserialize(&mut de).map_err(|e| malformed(&e))?;
            if de.position() != bytes.len() as u64 {
                return Err(malformed(&"trailing bytes after the message"));
            }
            Ok(value)
        }
    }
}

/// The deepest nesting of arrays and objects in a JSON text (one pass; brackets
/// inside strings do not count).
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Encodes a value (MessagePack as maps with the field names, like the JSON).
pub fn encode<T: Serialize>(format: Format, value: &T) -> Result<Vec<u8>, ApiError> {
    match format {
        Format::Json => serde_json::to_vec(value).map_err(ApiError::internal),
        Format::Msgpack => rmp_serde::to_vec_named(value).map_err(ApiError::internal),
    }
}

/// A response with `value` in `format`.
pub fn respond<T: Serialize>(format: Format, status: StatusCode, value: &T) -> Result<HttpResponse, ApiError> {
    let body = encode(format, value)?;
    Ok(HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .insert_header((header::VARY, "Accept"))
        .body(body))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;
    use crate::protocol::PushRequest;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::of_request(&headers(&[])).unwrap(), Format::Json);
        let mp = headers(&[(header::CONTENT_TYPE, "application/x-msgpack")]);
        assert_eq!(Format::of_request(&mp).unwrap(), Format::Msgpack);
        let utf8 = headers(&[(header::CONTENT_TYPE, "application/json; charset=utf-8")]);
        assert_eq!(Format::of_request(&utf8).unwrap(), Format::Json);
        assert!(Format::of_request(&headers(&[(header::CONTENT_TYPE, "text/plain")])).is_err());
        let accept = headers(&[(header::ACCEPT, "application/json;q=0.5, application/msgpack")]);
        assert_eq!(Format::for_response(&accept, None), Format::Msgpack);
        let accept = headers(&[(header::ACCEPT, "*/*")]);
        assert_eq!(Format::for_response(&accept, Some(Format::Msgpack)), Format::Msgpack);
        assert_eq!(Format::for_response(&headers(&[]), None), Format::Json);
    }

    #[test]
    fn msgpack_rejects_trailing_bytes_and_deep_nesting() {
        let good = rmp_serde::to_vec_named(&serde_json::json!({"ops": []})).unwrap();
        assert!(decode::<PushRequest>(Format::Msgpack, &good).is_ok());
        let mut trailing = good.clone();
        trailing.push(0xc0);
        assert!(decode::<PushRequest>(Format::Msgpack, &trailing).is_err());
        // {"ops": [], "x": [[[[…]]]]} nested 100 000 deep: refused, not a stack overflow.
        let mut deep = vec![0x82, 0xa3, b'o', b'p', b's', 0x90, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(0xc0);
        assert!(decode::<PushRequest>(Format::Msgpack, &deep).is_err());
    }

    #[test]
    fn both_formats_allow_exactly_max_depth_levels() {
        // {"ops": [], "x": [[…[1]…]]}: the map is a level, each array another.
        for (arrays, ok) in [(MAX_DEPTH - 1, true), (MAX_DEPTH, false)] {
            let json = format!(r#"{{"ops":[],"x":{}1{}}}"#, "[".repeat(arrays), "]".repeat(arrays));
            assert_eq!(decode::<PushRequest>(Format::Json, json.as_bytes()).is_ok(), ok, "JSON, {} levels", arrays + 1);
            let mut mp = vec![0x82, 0xa3, b'o', b'p', b's', 0x90, 0xa1, b'x'];
            mp.extend(std::iter::repeat_n(0x91, arrays));
            mp.push(0x01);
            assert_eq!(decode::<PushRequest>(Format::Msgpack, &mp).is_ok(), ok, "MessagePack, {} levels", arrays + 1);
        }
    }

    #[test]
    fn json_depth_ignores_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"\"[["}"#), 1);
        assert_eq!(json_depth(b"1"), 0);
    }

    #[test]
    fn json_rejects_trailing_bytes_and_deep_nesting() {
        assert!(decode::<PushRequest>(Format::Json, br#"{"ops":[]}"#).is_ok());
        assert!(decode::<PushRequest>(Format::Json, br#"{"ops":[]} x"#).is_err());
        let deep = format!(r#"{{"ops":[],"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode::<PushRequest>(Format::Json, deep.as_bytes()).is_err());
    }
}
