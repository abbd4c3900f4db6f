//! The browser client and the demo app, compiled into the binary so that a server
//! needs no other file: `GET /` (the demo page), `/opsync.js` (the client bundle,
//! built from clients/js and committed), `/demo.js` and `/demo.css`.
//!
//! Each answer carries a strong `ETag` (a hash of the bytes) and `Cache-Control:
//! no-cache`: browsers revalidate and get `304 Not Modified` until the binary serves
//! other bytes.

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest as _, Sha256};

/// A file served from the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../../static/index.html") },
    Asset {
        path: "/opsync.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/opsync.js"),
    },
    Asset {
        path: "/demo.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/demo.js"),
    },
    Asset { path: "/demo.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../static/demo.css") },
];

/// The page may load only its own scripts and styles and talk only to this server
/// (`'self'` covers same-origin WebSockets too); it holds a token, so no third party
/// gets to run code next to it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Each asset's entity tag: the first 128 bits of its SHA-256, computed on first use.
static ETAGS: LazyLock<[String; 4]> =
    LazyLock::new(|| ASSETS.each_ref().map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16]))));

/// Registers `GET` and `HEAD` for every asset.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (index, asset) in ASSETS.iter().enumerate() {
        cfg.service(
            web::resource(asset.path)
                .route(web::get().to(move |req: HttpRequest| serve(req, index)))
                .route(web::head().to(move |req: HttpRequest| serve(req, index)))
                .default_service(web::to(super::method_not_allowed)),
        );
    }
}

async fn serve(req: HttpRequest, index: usize) -> HttpResponse {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| {
        tags.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
    });
    let mut response = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if asset.content_type.starts_with("text/html") {
        response
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::REFERRER_POLICY, "no-referrer"));
    }
    if fresh {
        return response.finish();
    }
    response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_and_the_page_loads_only_served_files() {
        for asset in &ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
        }
        let page = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        for path in ["/demo.js", "/demo.css"] {
            assert!(page.contains(&format!("\"{path}\"")), "the page does not load {path}");
        }
        let demo = std::str::from_utf8(ASSETS[2].body).unwrap_or_default();
        assert!(demo.contains("from \"/opsync.js\""), "the demo does not import the client");
        assert_eq!(ETAGS.iter().collect::<std::collections::HashSet<_>>().len(), ASSETS.len());
    }
}
