//! A request body that stalls gets `408 request_timeout` and stores nothing. Every
//! other kind of bad input, on every route and WebSocket message, is in
//! `tests/bad_input_matrix.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod common;

use common::TestServer;

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
