//! Errors at the HTTP edge: a stable snake_case code clients can branch on, the
//! status that goes with it, and a human message. Internals are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::ids::Seq;
use crate::protocol::{EntityConflict, ErrorBody};

/// Every error code opsync answers with. The names are a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body could not be decoded (syntax, types, missing keys, trailing bytes, nesting).
    MalformedBody,
    /// A query parameter is missing, malformed or out of range.
    InvalidQuery,
    /// A body field is out of range or missing where the request needs it.
    InvalidField,
    /// An op failed validation (entity, kind, base, timestamp).
    InvalidOp,
    /// The same op id appears twice in one push.
    DuplicateOpInBatch,
    /// A push with no ops.
    EmptyPush,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// A push with more ops than the configured limit.
    TooManyOps,
    /// An op payload larger than the configured limit.
    OpTooLarge,
    /// A Content-Type other than JSON or MessagePack.
    UnsupportedMediaType,
    /// A Content-Encoding other than identity or gzip.
    UnsupportedEncoding,
    /// An op id already stored with different content.
    OpIdConflict,
    /// `on_stale: "reject"` and the client's `expected_head` is behind.
    StaleHead,
    /// The client's `expected_head` is beyond the server's head.
    HeadAhead,
    /// An op's `base` is older than its entity's last seq.
    EntityConflict,
    /// A pull from a seq beyond the head.
    SinceBeyondHead,
    /// An ack of a seq beyond the head.
    SeqBeyondHead,
    /// A pull (or catch-up) from below the retention horizon: ops it needs were
    /// pruned. Download the snapshot (`snapshot_seq`) and pull from its seq.
    ResyncRequired,
    /// A snapshot at a seq below the retention horizon (it could not be used).
    SnapshotBelowHorizon,
    /// A snapshot larger than the configured limit.
    SnapshotTooLarge,
    /// The uploaded bytes do not match the SHA-256 the client sent with them.
    ChecksumMismatch,
    /// The user has no snapshot (at or before the seq asked for).
    NoSnapshot,
    /// No token, or a token that is not valid for this server.
    InvalidToken,
    /// The token (or one of its blocks) has expired.
    TokenExpired,
    /// The token was revoked.
    TokenRevoked,
    /// The token does not grant this operation.
    Forbidden,
    /// The token is bound to another device than the request names.
    DeviceMismatch,
    /// A WebSocket page from an origin that is not allowed.
    OriginNotAllowed,
    /// `GET /v1/ws` without a WebSocket upgrade.
    UpgradeRequired,
    /// A WebSocket frame that is not one MessagePack map of a known shape (or a text frame).
    MalformedFrame,
    /// A WebSocket message whose `type` this server does not know.
    UnknownMessage,
    /// A WebSocket message that is not allowed now (a second `hello`, anything before `hello`).
    UnexpectedMessage,
    /// The request body did not arrive in time (a stalled or too slow client).
    RequestTimeout,
    /// A rate limit refused the request (see `retry_after_ms` and `Retry-After`).
    RateLimited,
    /// The push would take the user's stored op payloads over their quota.
    QuotaExceeded,
    /// No such route.
    NotFound,
    /// The route exists with other methods.
    MethodNotAllowed,
    /// The database is unreachable or overloaded; retry later.
    Unavailable,
    /// A bug or an unexpected failure (logged on the server).
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedBody | InvalidQuery | InvalidField | InvalidOp | DuplicateOpInBatch | EmptyPush
            | MalformedFrame | UnknownMessage | UnexpectedMessage | ChecksumMismatch => StatusCode::BAD_REQUEST,
            UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            BodyTooLarge | TooManyOps | OpTooLarge | SnapshotTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType | UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            OpIdConflict | StaleHead | HeadAhead | EntityConflict | SinceBeyondHead | SeqBeyondHead
            | SnapshotBelowHorizon => StatusCode::CONFLICT,
            ResyncRequired => StatusCode::GONE,
            NoSnapshot => StatusCode::NOT_FOUND,
            InvalidToken | TokenExpired | TokenRevoked => StatusCode::UNAUTHORIZED,
            Forbidden | DeviceMismatch | OriginNotAllowed => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedBody => "malformed_body",
            InvalidQuery => "invalid_query",
            InvalidField => "invalid_field",
            InvalidOp => "invalid_op",
            DuplicateOpInBatch => "duplicate_op_in_batch",
            EmptyPush => "empty_push",
            BodyTooLarge => "body_too_large",
            TooManyOps => "too_many_ops",
            OpTooLarge => "op_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            UnsupportedEncoding => "unsupported_encoding",
            OpIdConflict => "op_id_conflict",
            StaleHead => "stale_head",
            HeadAhead => "head_ahead",
            EntityConflict => "entity_conflict",
            SinceBeyondHead => "since_beyond_head",
            SeqBeyondHead => "seq_beyond_head",
            ResyncRequired => "resync_required",
            SnapshotBelowHorizon => "snapshot_below_horizon",
            SnapshotTooLarge => "snapshot_too_large",
            ChecksumMismatch => "checksum_mismatch",
            NoSnapshot => "no_snapshot",
            InvalidToken => "invalid_token",
            TokenExpired => "token_expired",
            TokenRevoked => "token_revoked",
            Forbidden => "forbidden",
            DeviceMismatch => "device_mismatch",
            OriginNotAllowed => "origin_not_allowed",
            UpgradeRequired => "upgrade_required",
            MalformedFrame => "malformed_frame",
            UnknownMessage => "unknown_message",
            UnexpectedMessage => "unexpected_message",
            NotFound => "not_found",
            RequestTimeout => "request_timeout",
            RateLimited => "rate_limited",
            QuotaExceeded => "quota_exceeded",
            MethodNotAllowed => "method_not_allowed",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", .body.error, .body.message)]
pub struct ApiError {
    code: ErrorCode,
    /// Boxed: handlers return `Result<_, ApiError>` everywhere; keep it small.
    body: Box<ErrorBody>,
}

impl ApiError {
    /// An error with a code and a message for humans.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let body = ErrorBody {
            error: code.as_str().to_owned(),
            message: message.into(),
            head: None,
            ids: None,
            conflicts: None,
            horizon: None,
            snapshot_seq: None,
            retry_after_ms: None,
        };
        Self { code, body: Box::new(body) }
    }

    /// Adds the user's head to the body.
    pub fn with_head(mut self, head: Seq) -> Self {
        self.body.head = Some(head);
        self
    }

    /// Adds the retention horizon and the latest snapshot's seq.
    pub fn with_horizon(mut self, horizon: Seq, snapshot_seq: Option<Seq>) -> Self {
        self.body.horizon = Some(horizon);
        self.body.snapshot_seq = snapshot_seq;
        self
    }

    /// A request a rate limit refused, with when to retry.
    pub fn rate_limited(limited: crate::limits::Limited) -> Self {
        let mut e = Self::new(ErrorCode::RateLimited, limited.to_string());
        let ms = limited.retry_after.as_nanos().div_ceil(1_000_000);
        e.body.retry_after_ms = Some(u64::try_from(ms).unwrap_or(u64::MAX));
        e
    }

    /// Adds the op ids concerned.
    pub fn with_ids(mut self, ids: Vec<crate::ids::OpId>) -> Self {
        self.body.ids = Some(ids);
        self
    }

    /// Adds per-entity conflicts.
    pub fn with_conflicts(mut self, conflicts: Vec<EntityConflict>) -> Self {
        self.body.conflicts = Some(conflicts);
        self
    }

    /// An unexpected failure: logged here with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// The database could not be reached in time.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(%cause, "database unavailable");
        Self::new(ErrorCode::Unavailable, "the database is unavailable; retry later")
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The body sent to the client.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unavailable {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let Some(ms) = self.body.retry_after_ms {
            // Whole seconds, rounded up: a client that waits that long passes.
            res.insert_header((header::RETRY_AFTER, ms.div_ceil(1000).max(1)));
        }
        if matches!(self.code, ErrorCode::InvalidToken | ErrorCode::TokenExpired | ErrorCode::TokenRevoked) {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.json(&self.body)
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(e: crate::log::LogError) -> Self {
        use crate::log::{Invalid, LogError, Rejection};
        match e {
            LogError::Invalid(invalid) => {
                let code = match &invalid {
                    Invalid::EmptyPush => ErrorCode::EmptyPush,
                    Invalid::TooManyOps { .. } => ErrorCode::TooManyOps,
                    Invalid::OpTooLarge { .. } => ErrorCode::OpTooLarge,
                    Invalid::DuplicateInBatch(_) => ErrorCode::DuplicateOpInBatch,
                    Invalid::Op { .. } => ErrorCode::InvalidOp,
                    Invalid::Field(_) => ErrorCode::InvalidField,
                };
                ApiError::new(code, invalid.to_string())
            }
            LogError::Rejected(rejection) => {
                let message = rejection.to_string();
                match rejection {
                    Rejection::IdReuse(ids) => ApiError::new(ErrorCode::OpIdConflict, message).with_ids(ids),
                    Rejection::StaleHead { head, .. } => ApiError::new(ErrorCode::StaleHead, message).with_head(head),
                    Rejection::HeadAhead { head, .. } => ApiError::new(ErrorCode::HeadAhead, message).with_head(head),
                    Rejection::BaseBeyondHead { head, .. } => {
                        ApiError::new(ErrorCode::InvalidOp, message).with_head(head)
                    }
                    Rejection::EntityConflict(conflicts) => {
                        ApiError::new(ErrorCode::EntityConflict, message).with_conflicts(conflicts)
                    }
                }
            }
            LogError::SinceBeyondHead { head, .. } => {
                ApiError::new(ErrorCode::SinceBeyondHead, e.to_string()).with_head(head)
            }
            LogError::SeqBeyondHead { head, .. } => {
                ApiError::new(ErrorCode::SeqBeyondHead, e.to_string()).with_head(head)
            }
            LogError::ResyncRequired { horizon, snapshot_seq } => {
                ApiError::new(ErrorCode::ResyncRequired, e.to_string()).with_horizon(horizon, snapshot_seq)
            }
            LogError::SnapshotBelowHorizon { horizon, .. } => {
                ApiError::new(ErrorCode::SnapshotBelowHorizon, e.to_string()).with_horizon(horizon, None)
            }
            LogError::SnapshotTooLarge { .. } => ApiError::new(ErrorCode::SnapshotTooLarge, e.to_string()),
            LogError::ChecksumMismatch { .. } => ApiError::new(ErrorCode::ChecksumMismatch, e.to_string()),
            LogError::NoSnapshot => ApiError::new(ErrorCode::NoSnapshot, e.to_string()),
            LogError::QuotaExceeded { .. } => ApiError::new(ErrorCode::QuotaExceeded, e.to_string()),
            LogError::Unavailable(cause) => ApiError::unavailable(cause),
            LogError::Db(_) | LogError::Corrupt(_) => ApiError::internal(e),
        }
    }
}

impl From<crate::limits::Limited> for ApiError {
    fn from(limited: crate::limits::Limited) -> Self {
        ApiError::rate_limited(limited)
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        let code = match &e {
            AuthError::Invalid(_) => ErrorCode::InvalidToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::Revoked => ErrorCode::TokenRevoked,
            AuthError::Forbidden(_) => ErrorCode::Forbidden,
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() -> Result<(), serde_json::Error> {
        for code in [ErrorCode::MalformedBody, ErrorCode::OpIdConflict, ErrorCode::TokenRevoked, ErrorCode::Internal] {
            assert_eq!(serde_json::to_value(code)?, serde_json::Value::String(code.as_str().to_owned()));
        }
        Ok(())
    }

    #[test]
    fn body_carries_details() -> Result<(), serde_json::Error> {
        let gone = ApiError::from(crate::log::LogError::ResyncRequired { horizon: 5, snapshot_seq: Some(9) });
        assert_eq!(gone.code().status(), StatusCode::GONE);
        let v = serde_json::to_value(gone.body())?;
        assert_eq!(
            (v["error"].as_str(), v["horizon"].as_i64(), v["snapshot_seq"].as_i64()),
            (Some("resync_required"), Some(5), Some(9))
        );
        let e = ApiError::new(ErrorCode::StaleHead, "behind").with_head(7);
        let v = serde_json::to_value(e.body())?;
        assert_eq!(v, serde_json::json!({"error": "stale_head", "message": "behind", "head": 7}));
        assert_eq!(e.code().status(), StatusCode::CONFLICT);
        Ok(())
    }

    #[test]
    fn rate_limited_answers_say_when_to_retry() -> Result<(), serde_json::Error> {
        use crate::limits::{Limited, Scope};
        use std::time::Duration;
        let limited = Limited { scope: Scope::DevicePush, retry_after: Duration::from_micros(1_200_001) };
        let e = ApiError::from(limited);
        assert_eq!(e.code().status(), StatusCode::TOO_MANY_REQUESTS);
        let v = serde_json::to_value(e.body())?;
        assert_eq!((v["error"].as_str(), v["retry_after_ms"].as_u64()), (Some("rate_limited"), Some(1201)));
        let res = e.error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        let short = ApiError::from(Limited { scope: Scope::Sessions, retry_after: Duration::from_millis(3) });
        assert_eq!(short.error_response().headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(ErrorCode::QuotaExceeded.status(), StatusCode::INSUFFICIENT_STORAGE);
        Ok(())
    }
}
