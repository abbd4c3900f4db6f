//! The request-side of authorization: the bearer token, checked by
//! [`crate::auth::Verifier::authorize`] for the right the handler declares.

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
