//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of the HTTP API, generated
//! from the handlers' `#[utoipa::path]` attributes and the protocol types' schemas,
//! so it follows the code. The WebSocket messages are described in docs/protocol.md.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The description of every error response: the body is always [`crate::protocol::ErrorBody`].
pub const ERROR: &str = "An error: a stable `error` code (see the ErrorCode schema and docs/protocol.md), \
    a message for humans, and for some codes the head, op ids, conflicts or horizon.";

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "opsync",
        description = "A real-time operation-log sync server for offline-first apps. Request and response \
            bodies are JSON or MessagePack (`application/msgpack`) with the same keys; byte fields are base64 \
            in JSON and bin in MessagePack, op ids UUID strings in JSON and 16-byte bin in MessagePack. \
            Full reference: docs/protocol.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::push,
        super::pull,
        super::ack,
        super::status,
        super::snapshot::put,
        super::snapshot::get,
        super::account::delete,
        super::revoke,
        super::ws::connect,
        super::healthz,
        super::readyz,
        super::metrics,
        serve,
    ),
    components(schemas(crate::error::ErrorCode)),
    modifiers(&BearerToken),
    tags(
        (name = "log", description = "Push, pull and acknowledge ops."),
        (name = "snapshots", description = "Opaque client snapshots for bootstrapping new devices."),
        (name = "realtime", description = "The WebSocket endpoint."),
        (name = "account", description = "The token's user."),
        (name = "admin", description = "Needs an admin token."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme: a biscuit token in `Authorization: Bearer`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("biscuit")
            .description(Some("A biscuit token issued with `opsync token issue` (base64url)."))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Opaque bytes as a request or response body.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Opaque bytes, stored and returned as they are."))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// The document for a server with these limits, as JSON.
///
/// Two things are patched in after generation: the seq type (an alias of `i64`,
/// which utoipa names `i64`) becomes a documented `Seq` schema with its range,
/// and the configurable bounds (ops per push, long-poll wait) are this server's.
pub fn document(limits: &crate::log::Limits, max_wait_secs: u64) -> serde_json::Value {
    let text =
        ApiDoc::openapi().to_json().unwrap_or_default().replace("#/components/schemas/i64", "#/components/schemas/Seq");
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|v| v.as_object_mut()) {
        schemas.remove("i64");
        schemas.insert(
            "Seq".into(),
            serde_json::json!({
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "A position in a user's log: 1, 2, 3, … (0: before the first op).",
            }),
        );
    }
    if let Some(ops) = doc.pointer_mut("/components/schemas/PushRequest/properties/ops").and_then(|v| v.as_object_mut())
    {
        ops.insert("minItems".into(), 1.into());
        ops.insert("maxItems".into(), limits.max_ops_per_push.into());
    }
    if let Some(params) = doc.pointer_mut("/paths/~1v1~1ops/get/parameters").and_then(|v| v.as_array_mut()) {
        for param in params.iter_mut().filter(|p| p["name"] == "wait") {
            param["schema"]["maximum"] = max_wait_secs.into();
        }
    }
    doc
}

/// `GET /v1/openapi.json`.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "operations",
    description = "This document (OpenAPI 3.1), with this server's configured limits.",
    responses((status = 200, description = "The OpenAPI document.", content_type = "application/json")),
)]
pub async fn serve(state: actix_web::web::Data<crate::app::AppState>) -> HttpResponse {
    let doc = document(state.log.limits(), state.realtime.config().max_wait_secs);
    HttpResponse::Ok().json(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        document(&crate::log::Limits::default(), 30)
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_schema() -> Result<(), serde_json::Error> {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, method) in [
            ("/v1/ops", "post"),
            ("/v1/ops", "get"),
            ("/v1/ack", "post"),
            ("/v1/status", "get"),
            ("/v1/snapshot", "put"),
            ("/v1/snapshot", "get"),
            ("/v1/snapshot", "head"),
            ("/v1/account", "delete"),
            ("/v1/admin/revoke", "post"),
            ("/v1/ws", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/v1/openapi.json", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} is missing");
        }
        let schemas = &doc["components"]["schemas"];
        for name in
            ["PushRequest", "NewOp", "PushResponse", "PullResponse", "Op", "ErrorBody", "ErrorCode", "OpId", "Seq"]
        {
            assert!(schemas[name].is_object(), "schema {name} is missing");
        }
        // Every $ref points at a schema that exists.
        let text = serde_json::to_string(&doc)?;
        assert!(text.contains("#/components/schemas/Seq") && !text.contains("schemas/i64"));
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap_or_default();
            assert!(schemas[name].is_object(), "dangling $ref to {name}");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        Ok(())
    }

    #[test]
    fn every_error_code_is_in_the_schema() -> Result<(), serde_json::Error> {
        let doc = doc();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        for code in [crate::error::ErrorCode::Unavailable, crate::error::ErrorCode::ResyncRequired] {
            assert!(listed.contains(&code.as_str()), "{} missing from {listed:?}", code.as_str());
        }
        Ok(())
    }
}
