//! `DELETE /v1/account`: a user deletes everything the server holds for them.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::{Auth, Write};
use super::body::{self, Format};
use super::method_not_allowed;
use crate::app::AppState;
use crate::error::ApiError;

/// The `/v1/account` resource.
pub fn resource() -> actix_web::Resource {
    web::resource("/v1/account").route(web::delete().to(delete)).default_service(web::to(method_not_allowed))
}

/// `DELETE /v1/account`: removes the token's user's ops, snapshots, devices and
/// tombstones (through [`crate::log::Log::delete_user`]).
#[utoipa::path(
    delete, path = "/v1/account", tag = "account",
    description = "Deletes everything the server holds for the token's user: ops, snapshots, devices, \
        tombstones. The user's open WebSockets are closed with 4010 on every node.",
    responses(
        (status = 200, description = "What was deleted.", body = crate::protocol::AccountDeleted),
        (status = "default", description = super::openapi::ERROR, body = crate::protocol::ErrorBody),
    ),
    security(("bearer" = [])),
)]
async fn delete(req: HttpRequest, auth: Auth<Write>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let user = auth.principal.user;
    let deleted = state.log.delete_user(user.clone()).await?;
    tracing::info!(%user, ops = deleted.ops, snapshots = deleted.snapshots, "account deleted");
    body::respond(Format::for_response(req.headers(), None), StatusCode::OK, &deleted)
}
