//! The request-side of authorization: the bearer token, checked by
//! [`crate::auth::Verifier::authorize`] for the right the handler declares.
//!
//! A request whose token is missing, invalid, expired or revoked is charged to
//! its client address ([`crate::limits::RateLimiter::auth_failed`]); an address
//! over that budget gets `429 rate_limited` instead of the 401. Valid tokens are
//! always served, so clients behind the same address (a NAT) are not locked out
//! by a neighbour's failures.

use std::future::{Ready, ready};
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use crate::app::AppState;
use crate::auth::{Operation, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::ids::DeviceId;

/// A right a handler requires.
pub trait Right {
    /// The operation it authorizes.
    const OP: Operation;
}

/// Requires `read`.
pub struct Read;
/// Requires `write`.
pub struct Write;
/// Requires `admin`.
pub struct Admin;

impl Right for Read {
    const OP: Operation = Operation::Read;
}
impl Right for Write {
    const OP: Operation = Operation::Write;
}
impl Right for Admin {
    const OP: Operation = Operation::Admin;
}

/// A request whose token grants `R`; holds who it speaks for.
pub struct Auth<R: Right> {
    /// The token's user and device.
    pub principal: Principal,
    right: PhantomData<R>,
}

impl<R: Right> Auth<R> {
    /// The device a request acts as: the token's if it is bound to one (a body that
    /// names another is refused), else the one the request names.
    pub fn device(&self, requested: Option<DeviceId>) -> Result<Option<DeviceId>, ApiError> {
        match (&self.principal.device, requested) {
            (Some(bound), Some(asked)) if *bound != asked => Err(ApiError::new(
                ErrorCode::DeviceMismatch,
                format!("the token is bound to device \"{bound}\", not \"{asked}\""),
            )),
            (Some(bound), _) => Ok(Some(bound.clone())),
            (None, asked) => Ok(asked),
        }
    }
}

impl<R: Right> FromRequest for Auth<R> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, R::OP).map(|principal| Auth { principal, right: PhantomData }))
    }
}

fn authorize(req: &HttpRequest, op: Operation) -> Result<Principal, ApiError> {
    let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("application state missing"))?;
    verify(req, state, op).map_err(|e| charge_failure(req, state, e))
}

/// The client's address, as the rate limits see it (see `rate_limits.trusted_proxies`).
pub fn client_ip(req: &HttpRequest, state: &AppState) -> Option<std::net::IpAddr> {
    state.limits.client_ip(req.peer_addr().map(|a| a.ip()), req.headers())
}

/// A failed authentication (401) is charged to the client's address: past its
/// budget, the answer becomes `429 rate_limited`. Other errors pass unchanged.
pub fn charge_failure(req: &HttpRequest, state: &AppState, e: ApiError) -> ApiError {
    if !matches!(e.code(), ErrorCode::InvalidToken | ErrorCode::TokenExpired | ErrorCode::TokenRevoked) {
        return e;
    }
    match state.limits.auth_failed(client_ip(req, state)) {
        Ok(()) => e,
        Err(limited) => limited.into(),
    }
}

fn verify(req: &HttpRequest, state: &AppState, op: Operation) -> Result<Principal, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "missing Authorization: Bearer TOKEN"))?;
    let text = value.to_str().map_err(|_| ApiError::new(ErrorCode::InvalidToken, "malformed Authorization header"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "the Authorization header must be `Bearer TOKEN`"))?;
    Ok(state.verifier.authorize(token, op)?)
}
