//! Bad input, table-driven, on SQLite and Postgres: every malformed or out-of-range
//! request gets its documented error code and status, and nothing stored changes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::io::Write as _;

use common::*;
use opsync::log::Limits;

const MAX_OPS: usize = 10;
const MAX_OP_BYTES: usize = 1024;
const MAX_BODY: usize = 64 * 1024;

fn limits() -> Limits {
    Limits { max_ops_per_push: MAX_OPS, max_op_bytes: MAX_OP_BYTES, max_body_bytes: MAX_BODY, ..Limits::default() }
}

/// One request and what it must get.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn json(name: &'static str, body: serde_json::Value, status: u16, code: &'static str) -> Case {
    raw(name, serde_json::to_vec(&body).unwrap(), status, code)
}

fn raw(name: &'static str, body: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/ops",
        content_type: Some("application/json"),
        encoding: None,
        body,
        status,
        code,
    }
}

fn msgpack(name: &'static str, body: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case { content_type: Some("application/msgpack"), ..raw(name, body, status, code) }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn v7() -> String {
    opsync::ids::OpId::generate().to_string()
}

fn good_op() -> serde_json::Value {
    serde_json::json!({"id": v7(), "payload": "aGVsbG8="})
}

fn cases() -> Vec<Case> {
    use serde_json::json;
    let now_ms = opsync::log::now_ms();
    let dup = v7();
    let mut cases = vec![
        // Syntax and types.
        raw("empty body", vec![], 400, "malformed_body"),
        raw("not json", b"hello".to_vec(), 400, "malformed_body"),
        raw("truncated json", br#"{"ops":[{"id":"#.to_vec(), 400, "malformed_body"),
        raw(
            "trailing bytes",
            [serde_json::to_vec(&json!({"ops": [good_op()]})).unwrap(), b"x".to_vec()].concat(),
            400,
            "malformed_body",
        ),
        raw("invalid utf-8", b"{\"ops\":[{\"id\":\"\xff\xfe\",\"payload\":\"\"}]}".to_vec(), 400, "malformed_body"),
        json("missing ops", json!({}), 400, "malformed_body"),
        json("ops not a list", json!({"ops": "many"}), 400, "malformed_body"),
        json("op missing id", json!({"ops": [{"payload": "aGk="}]}), 400, "malformed_body"),
        json("op missing payload", json!({"ops": [{"id": v7()}]}), 400, "malformed_body"),
        json("id not a uuid", json!({"ops": [{"id": "nope", "payload": "aGk="}]}), 400, "malformed_body"),
        json(
            "uuid v4",
            json!({"ops": [{"id": "6f1c2c64-4b4e-4c7b-9a55-4b8e3d0c1f11", "payload": "aGk="}]}),
            400,
            "malformed_body",
        ),
        json("id a number", json!({"ops": [{"id": 7, "payload": "aGk="}]}), 400, "malformed_body"),
        json("payload not base64", json!({"ops": [{"id": v7(), "payload": "!!!"}]}), 400, "malformed_body"),
        json("payload a list", json!({"ops": [{"id": v7(), "payload": [1, 2]}]}), 400, "malformed_body"),
        json(
            "base a string",
            json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": "1"}]}),
            400,
            "malformed_body",
        ),
        raw(
            "expected_head beyond i64",
            br#"{"ops":[],"expected_head":9223372036854775808}"#.to_vec(),
            400,
            "malformed_body",
        ),
        json("on_stale unknown", json!({"ops": [good_op()], "on_stale": "maybe"}), 400, "malformed_body"),
        json("device with a space", json!({"ops": [good_op()], "device": "my phone"}), 400, "malformed_body"),
        raw(
            "deep nesting",
            format!(r#"{{"ops":[],"x":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            400,
            "malformed_body",
        ),
        // Values out of range.
        json("no ops", json!({"ops": []}), 400, "empty_push"),
        json("expected_head negative", json!({"ops": [good_op()], "expected_head": -1}), 400, "invalid_field"),
        json(
            "base negative",
            json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": -1}]}),
            400,
            "invalid_op",
        ),
        json(
            "base beyond head",
            json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": 5}]}),
            400,
            "invalid_op",
        ),
        json("base without entity", json!({"ops": [{"id": v7(), "payload": "", "base": 0}]}), 400, "invalid_op"),
        json(
            "ts in the future",
            json!({"ops": [{"id": v7(), "payload": "", "ts": now_ms + 48 * 3600 * 1000}]}),
            400,
            "invalid_op",
        ),
        json("ts negative", json!({"ops": [{"id": v7(), "payload": "", "ts": -5}]}), 400, "invalid_op"),
        json(
            "entity too long",
            json!({"ops": [{"id": v7(), "payload": "", "entity": "e".repeat(300)}]}),
            400,
            "invalid_op",
        ),
        json(
            "kind with control chars",
            json!({"ops": [{"id": v7(), "payload": "", "kind": "p\nut"}]}),
            400,
            "invalid_op",
        ),
        json(
            "duplicate id in batch",
            json!({"ops": [{"id": dup, "payload": ""}, {"id": dup, "payload": "eA=="}]}),
            400,
            "duplicate_op_in_batch",
        ),
        // Limits.
        json("too many ops", json!({"ops": (0..=MAX_OPS).map(|_| good_op()).collect::<Vec<_>>()}), 413, "too_many_ops"),
        json(
            "op too large",
            json!({"ops": [{"id": v7(), "payload": base64_of(MAX_OP_BYTES + 1)}]}),
            413,
            "op_too_large",
        ),
        raw("body too large", vec![b' '; MAX_BODY + 1], 413, "body_too_large"),
        Case { encoding: Some("gzip"), ..raw("gzip bomb", gzip(&vec![b' '; 50 * MAX_BODY]), 413, "body_too_large") },
        Case { encoding: Some("gzip"), ..raw("gzip garbage", b"\x1f\x8b\x08garbage".to_vec(), 400, "malformed_body") },
        Case { encoding: Some("br"), ..raw("brotli", b"x".to_vec(), 415, "unsupported_encoding") },
        Case { encoding: Some("zstd"), ..raw("zstd", b"x".to_vec(), 415, "unsupported_encoding") },
        Case { content_type: Some("text/plain"), ..raw("text body", b"{}".to_vec(), 415, "unsupported_media_type") },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..raw("form body", b"a=b".to_vec(), 415, "unsupported_media_type")
        },
        // MessagePack.
        msgpack("msgpack garbage", vec![0xc1, 0xc1], 400, "malformed_body"),
        msgpack("msgpack text where a map belongs", rmp_serde::to_vec("ops").unwrap(), 400, "malformed_body"),
        msgpack("msgpack trailing bytes", [msgpack_push(), vec![0xc0]].concat(), 400, "malformed_body"),
        msgpack("msgpack truncated", msgpack_push()[..10].to_vec(), 400, "malformed_body"),
        msgpack(
            "msgpack huge array length",
            [vec![0x81, 0xa3, b'o', b'p', b's', 0xdd], vec![0xff; 4]].concat(),
            400,
            "malformed_body",
        ),
        msgpack("msgpack huge bin length", huge_bin(), 400, "malformed_body"),
        msgpack("msgpack deep nesting", deep_msgpack(), 400, "malformed_body"),
        // Other routes.
        json("ack negative seq", json!({"device": "d", "seq": -1}), 400, "invalid_field"),
        json("ack beyond head", json!({"device": "d", "seq": 1}), 409, "seq_beyond_head"),
        json("ack seq beyond i64", json!({"device": "d", "seq": 1e30}), 400, "malformed_body"),
        json("ack without device", json!({"seq": 0}), 400, "invalid_field"),
    ];
    for case in cases.iter_mut().filter(|c| c.name.starts_with("ack")) {
        case.path = "/v1/ack";
    }
    for (name, path, status, code) in [
        ("pull since negative", "/v1/ops?since=-1", 400, "invalid_query"),
        ("pull since not a number", "/v1/ops?since=abc", 400, "invalid_query"),
        ("pull since beyond i64", "/v1/ops?since=99999999999999999999", 400, "invalid_query"),
        ("pull since beyond head", "/v1/ops?since=1", 409, "since_beyond_head"),
        ("pull limit zero", "/v1/ops?limit=0", 400, "invalid_query"),
        ("pull limit negative", "/v1/ops?limit=-3", 400, "invalid_query"),
        ("unknown route", "/v2/ops", 404, "not_found"),
    ] {
        cases.push(Case { method: "GET", path, content_type: None, ..raw(name, vec![], status, code) });
    }
    cases.push(Case { method: "DELETE", ..raw("wrong method", vec![], 405, "method_not_allowed") });
    cases.push(Case {
        method: "PUT",
        path: "/v1/status",
        ..raw("wrong method on status", vec![], 405, "method_not_allowed")
    });
    cases
}

fn base64_of(n: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; n])
}

fn msgpack_push() -> Vec<u8> {
    rmp_serde::to_vec_named(&push_of(vec![op(b"hello")])).unwrap()
}

/// `{"ops": [{"id": <bin 16>, "payload": <bin32 claiming 4 GiB>}]}`
fn huge_bin() -> Vec<u8> {
    let mut b = vec![0x81, 0xa3, b'o', b'p', b's', 0x91, 0x82, 0xa2, b'i', b'd', 0xc4, 16];
    b.extend_from_slice(opsync::ids::OpId::generate().as_bytes());
    b.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    b
}

/// `{"ops": [], "x": [[[[…]]]]}` 50 000 levels deep.
fn deep_msgpack() -> Vec<u8> {
    let mut b = vec![0x82, 0xa3, b'o', b'p', b's', 0x90, 0xa1, b'x'];
    b.extend(std::iter::repeat_n(0x91, 50_000));
    b.push(0xc0);
    b
}

/// Sends one case as `token`'s request; returns the status and the error code.
async fn send(s: &TestServer, token: &str, case: Case) -> (u16, String) {
    let method = awc::http::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut req = awc::Client::default()
        .request(method, s.url(case.path))
        .insert_header(("Authorization", format!("Bearer {token}")));
    if let Some(ct) = case.content_type {
        req = req.insert_header(("Content-Type", ct));
    }
    if let Some(enc) = case.encoding {
        req = req.insert_header(("Content-Encoding", enc));
    }
    let mut res = req.send_body(case.body).await.unwrap();
    let body = res.body().limit(1 << 20).await.unwrap();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<not a JSON error: {}>", String::from_utf8_lossy(&body)));
    (res.status().as_u16(), code)
}

async fn every_bad_request_gets_its_code_and_stores_nothing(s: TestServer) {
    let token = s.token("alice");
    let mut failures = Vec::new();
    for case in cases() {
        let (name, expected) = (case.name, (case.status, case.code));
        let (status, code) = send(&s, &token, case).await;
        if (status, code.as_str()) != expected {
            failures.push(format!("{name}: expected {} {}, got {status} {code}", expected.0, expected.1));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(s.total_ops().await, 0, "nothing was stored");
    let status = s.client("alice").status().await.unwrap();
    assert_eq!((status.head, status.devices.len()), (0, 0), "no head moved, no device recorded");
    // The server still works.
    assert_eq!(s.client("alice").push(&push_of(vec![op(b"fine")])).await.unwrap().head, 1);
}

async fn bad_input_never_damages_what_is_stored(s: TestServer) {
    let c = s.client("alice");
    let stored = c.push(&push_of((0..5u8).map(|i| op(&[i])).collect())).await.unwrap();
    let before = c.pull(0, None).await.unwrap();
    let token = s.token("alice");
    for case in cases().into_iter().filter(|c| c.method == "POST") {
        let name = case.name;
        let (status, code) = send(&s, &token, case).await;
        assert!((400..500).contains(&status) || status == 200, "{name}: {status} {code}");
    }
    let after = c.pull(0, None).await.unwrap();
    // Some "bad" cases are good against a non-empty log (an ack at seq 1, a base
    // within the head); the five original ops are untouched either way.
    assert_eq!(&after.ops[..5], &before.ops[..]);
    assert_eq!(stored.head, 5);
}

both_backends!(
    limits = super::limits();
    every_bad_request_gets_its_code_and_stores_nothing,
    bad_input_never_damages_what_is_stored,
);

/// A client that sends the headers and part of the body, then stalls, gets
/// `408 request_timeout` once it has been silent for the idle limit (10 s), and
/// nothing is stored.
#[actix_web::test]
async fn a_stalled_body_times_out_with_408() {
    use std::io::{Read as _, Write as _};
    let Some(s) = TestServer::start(common::Backend::Sqlite).await else { return };
    let addr = s.base.trim_start_matches("http://").to_owned();
    let token = s.token("u");
    let started = std::time::Instant::now();
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/ops HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ops\":["
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(9), "not before the idle limit");
    assert_eq!(s.stored_ops("u").await, 0);
}
