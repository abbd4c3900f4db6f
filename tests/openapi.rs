//! `GET /v1/openapi.json` against the running server: the document is served with
//! this server's limits, and every operation it lists exists (no 404 `not_found`,
//! no 405), so the document cannot name routes the server lacks. Schemathesis
//! (`scripts/schemathesis_check.sh`, run by `.ci/run`) checks the other way round:
//! that what the server answers fits the document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::TestServer;

both_backends!(every_documented_operation_exists);

async fn every_documented_operation_exists(s: TestServer) {
    let mut res = awc::Client::new().get(s.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let doc: serde_json::Value = res.json().limit(1 << 20).await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let wait = doc.pointer("/paths/~1v1~1ops/get/parameters").unwrap().as_array().unwrap();
    let wait = wait.iter().find(|p| p["name"] == "wait").unwrap();
    assert_eq!(wait["schema"]["maximum"], 30, "the configured long-poll cap");
    let max_ops = doc.pointer("/components/schemas/PushRequest/properties/ops/maxItems").unwrap();
    assert_eq!(max_ops, &serde_json::json!(opsync::log::Limits::default().max_ops_per_push));

    let token = s.token("openapi");
    let client = awc::Client::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = awc::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut res = client
                .request(method.clone(), s.url(path))
                .insert_header(("Authorization", format!("Bearer {token}")))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.body().await.unwrap();
            let code = serde_json::from_slice::<serde_json::Value>(&body).ok().map(|v| v["error"].clone());
            assert_ne!(status, 405, "{method} {path} is documented but not allowed");
            assert_ne!(code, Some(serde_json::json!("not_found")), "{method} {path} is documented but has no route");
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} operations documented");
}
