//! Snapshots over HTTP, on SQLite and Postgres: upload, download, ETag, limits,
//! truncated and concurrent uploads, keeping the last K, `snapshot_due`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::collections::HashSet;
use std::io::Write as _;

use common::*;
use futures_util::future::join_all;
use opsync::log::Limits;
use opsync::log::snapshot::sha256_hex;
use opsync::protocol::SnapshotInfo;

both_backends!(
    limits = super::small_snapshots();
    upload_then_download_with_etag,
    bad_uploads_are_refused_and_store_nothing,
    truncated_uploads_store_nothing,
    concurrent_uploads_never_mix,
    only_the_newest_snapshots_are_kept,
    status_and_snapshot_due,
);

/// Snapshots of at most 64 KiB, so the limit is cheap to cross.
fn small_snapshots() -> Limits {
    Limits { max_snapshot_bytes: 64 * 1024, ..Limits::default() }
}

async fn push_n(s: &TestServer, user: &str, n: usize) {
    let c = s.client(user);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        c.push(&push_of(chunk.iter().map(|i| op(format!("op {i}").as_bytes())).collect())).await.unwrap();
    }
}

fn put(s: &TestServer, user: &str, query: &str) -> awc::ClientRequest {
    awc::Client::default()
        .put(s.url(&format!("/v1/snapshot{query}")))
        .insert_header(("Authorization", format!("Bearer {}", s.token(user))))
}

fn get(s: &TestServer, user: &str, query: &str) -> awc::ClientRequest {
    awc::Client::default()
        .get(s.url(&format!("/v1/snapshot{query}")))
        .insert_header(("Authorization", format!("Bearer {}", s.token(user))))
}

async fn error_code(
    mut res: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> (u16, serde_json::Value) {
    let status = res.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    (status, body)
}

async fn upload_then_download_with_etag(s: TestServer) {
    push_n(&s, "alice", 5).await;
    let data = b"state after op 3".to_vec();
    let mut res = put(&s, "alice", "?seq=3")
        .insert_header(("Content-Type", "application/x-my-state"))
        .send_body(data.clone())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let etag = res.headers().get("etag").unwrap().to_str().unwrap().to_owned();
    let info: SnapshotInfo = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!((info.seq, info.size, info.sha256.as_str()), (3, data.len() as i64, sha256_hex(&data).as_str()));
    assert_eq!(info.content_type, "application/x-my-state");
    assert_eq!(etag, info.etag());

    let mut res = get(&s, "alice", "").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers().get("x-opsync-snapshot-seq").unwrap(), "3");
    assert_eq!(res.headers().get("content-type").unwrap(), "application/x-my-state");
    assert_eq!(res.headers().get("etag").unwrap().to_str().unwrap(), etag);
    assert_eq!(res.body().await.unwrap().to_vec(), data);

    // HEAD: the headers, no body.
    let mut res = awc::Client::default()
        .head(s.url("/v1/snapshot"))
        .insert_header(("Authorization", format!("Bearer {}", s.token("alice"))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers().get("x-opsync-snapshot-seq").unwrap(), "3");
    assert!(res.body().await.unwrap().is_empty());

    // If-None-Match: 304 without a body; another tag: the snapshot.
    let mut res = get(&s, "alice", "").insert_header(("If-None-Match", etag.as_str())).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 304);
    assert!(res.body().await.unwrap().is_empty());
    let res = get(&s, "alice", "").insert_header(("If-None-Match", "\"1-abc\"")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);

    // A newer snapshot becomes the latest; the older is still there by seq.
    let c = s.client("alice");
    c.put_snapshot(5, b"state after op 5".to_vec()).await.unwrap();
    assert_eq!(c.snapshot(None).await.unwrap(), (5, b"state after op 5".to_vec()));
    assert_eq!(c.snapshot(Some(4)).await.unwrap(), (3, data.clone()));
    assert_eq!(c.snapshot(Some(2)).await.unwrap_err().code(), Some("no_snapshot"));
    // Replacing the snapshot at a seq changes its tag.
    c.put_snapshot(5, b"state after op 5, again".to_vec()).await.unwrap();
    let (_, bytes) = c.snapshot(None).await.unwrap();
    assert_eq!(bytes, b"state after op 5, again");

    // Compressed when asked (the bytes are the same after decoding).
    let big = vec![b'x'; 40_000];
    c.put_snapshot(5, big.clone()).await.unwrap();
    let mut res = get(&s, "alice", "").insert_header(("Accept-Encoding", "gzip")).send().await.unwrap();
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip");
    let gz = res.body().await.unwrap().to_vec();
    assert!(gz.len() < 1000, "compressed: {} bytes", gz.len());
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut inflated).unwrap();
    assert!(inflated == big, "the same bytes after inflating");

    // Another user sees none of it.
    assert_eq!(s.client("bob").snapshot(None).await.unwrap_err().code(), Some("no_snapshot"));
}

async fn bad_uploads_are_refused_and_store_nothing(s: TestServer) {
    push_n(&s, "alice", 3).await;
    // (query, body, extra header, status, code)
    type Case = (&'static str, Vec<u8>, Option<(&'static str, &'static str)>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("", b"x".to_vec(), None, 400, "invalid_query"),
        ("?seq=-1", b"x".to_vec(), None, 400, "invalid_query"),
        ("?seq=abc", b"x".to_vec(), None, 400, "invalid_query"),
        ("?seq=4", b"x".to_vec(), None, 409, "seq_beyond_head"),
        ("?seq=2", vec![0; 64 * 1024 + 1], None, 413, "snapshot_too_large"),
        ("?seq=2&sha256=zz", b"x".to_vec(), None, 400, "invalid_query"),
        ("?seq=2&sha256=".leak_with(&sha256_hex(b"y")), b"x".to_vec(), None, 400, "checksum_mismatch"),
        ("?seq=2", b"x".to_vec(), Some(("Content-Encoding", "gzip")), 415, "unsupported_encoding"),
        ("?seq=2", b"x".to_vec(), Some(("Content-Type", "nonsense")), 415, "unsupported_media_type"),
    ];
    for (query, body, header, status, code) in cases {
        let mut req = put(&s, "alice", query);
        if let Some(h) = header {
            req = req.insert_header(h);
        }
        let (got, body) = error_code(req.send_body(body).await.unwrap()).await;
        assert_eq!((got, body["error"].as_str().unwrap()), (status, code), "{query}");
    }
    // Over the limit without a Content-Length (chunked): refused while streaming.
    let chunks =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 4096]))));
    let (got, body) = error_code(put(&s, "alice", "?seq=2").send_stream(chunks).await.unwrap()).await;
    assert_eq!((got, body["error"].as_str().unwrap()), (413, "snapshot_too_large"));
    // A read-only token may download but not upload.
    let read_only = s.token_with(opsync::auth::TokenSpec {
        user: opsync::ids::UserId::new("alice").unwrap(),
        device: None,
        ttl: std::time::Duration::from_secs(60),
        write: false,
        admin: false,
    });
    let res = awc::Client::default()
        .put(s.url("/v1/snapshot?seq=1"))
        .insert_header(("Authorization", format!("Bearer {read_only}")))
        .send_body("x")
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    // The correct checksum is accepted.
    let ok = put(&s, "alice", &format!("?seq=2&sha256={}", sha256_hex(b"x"))).send_body("x").await.unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    let c = s.client("alice");
    assert_eq!(c.snapshot(None).await.unwrap(), (2, b"x".to_vec()), "only the good upload is stored");
    assert_eq!(c.status().await.unwrap().snapshot.unwrap().seq, 2);
}

trait Leak {
    fn leak_with(self, suffix: &str) -> &'static str;
}
impl Leak for &str {
    fn leak_with(self, suffix: &str) -> &'static str {
        format!("{self}{suffix}").leak()
    }
}

/// Sends raw bytes on a fresh connection and closes it.
async fn send_raw(addr: String, bytes: Vec<u8>) {
    actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(&bytes).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(stream);
    })
    .await
    .unwrap();
}

async fn truncated_uploads_store_nothing(s: TestServer) {
    push_n(&s, "alice", 3).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let token = s.token("alice");
    // Content-Length promises 60000 bytes; 30000 arrive, then the connection ends.
    let mut req = format!(
        "PUT /v1/snapshot?seq=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 60000\r\n\r\n"
    )
    .into_bytes();
    req.extend(vec![1u8; 30_000]);
    send_raw(addr.clone(), req).await;
    // Chunked: two chunks, then the connection ends without the last chunk.
    let mut req = format!(
        "PUT /v1/snapshot?seq=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..2 {
        req.extend(b"1000\r\n");
        req.extend(vec![2u8; 0x1000]);
        req.extend(b"\r\n");
    }
    send_raw(addr, req).await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let c = s.client("alice");
    assert_eq!(c.snapshot(None).await.unwrap_err().code(), Some("no_snapshot"));
    assert!(c.status().await.unwrap().snapshot.is_none());
}

async fn concurrent_uploads_never_mix(s: TestServer) {
    push_n(&s, "alice", 10).await;
    let c = s.client("alice");
    let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 30_000 + i as usize]).collect();
    let results = join_all(bodies.iter().map(|b| c.put_snapshot(7, b.clone()))).await;
    for r in &results {
        r.as_ref().unwrap();
    }
    let mut res = get(&s, "alice", "").send().await.unwrap();
    let sha = res.headers().get("x-opsync-snapshot-sha256").unwrap().to_str().unwrap().to_owned();
    let got = res.body().limit(1 << 20).await.unwrap().to_vec();
    assert!(bodies.contains(&got), "the stored snapshot is one of the uploads, whole");
    assert_eq!(sha, sha256_hex(&got));
    // Concurrent uploads at different seqs: the latest is the highest seq.
    let results = join_all((1..=10).map(|seq| c.put_snapshot(seq, format!("at {seq}").into_bytes()))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(c.snapshot(None).await.unwrap(), (10, b"at 10".to_vec()));
    assert_eq!(c.status().await.unwrap().snapshot.unwrap().seq, 10);
}

async fn only_the_newest_snapshots_are_kept(s: TestServer) {
    push_n(&s, "alice", 10).await;
    let c = s.client("alice");
    for seq in 1..=6 {
        c.put_snapshot(seq, vec![seq as u8]).await.unwrap();
    }
    // The default keeps 3: seqs 4, 5, 6.
    let kept: HashSet<i64> = futures_util::future::join_all((1..=6).map(|seq| c.snapshot(Some(seq))))
        .await
        .into_iter()
        .filter_map(Result::ok)
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(kept, HashSet::from([4, 5, 6]));
}

async fn status_and_snapshot_due(s: TestServer) {
    let c = s.client("alice");
    // The default threshold: more than 1000 ops after the latest snapshot.
    push_n(&s, "alice", 1000).await;
    let page = c.pull(0, Some(1)).await.unwrap();
    assert!(!page.snapshot_due);
    assert_eq!(page.snapshot_seq, 0);
    let pushed = c.push(&push_of(vec![op(b"one more")])).await.unwrap();
    assert!(pushed.snapshot_due);
    assert!(c.pull(0, Some(1)).await.unwrap().snapshot_due);
    // A push over a WebSocket says the same in its `pushed`.
    let (due, seq) = ws_push(&s, "alice", b"over ws").await;
    assert_eq!((due, seq), (true, 0));
    c.put_snapshot(1002, b"everything".to_vec()).await.unwrap();
    let pushed = c.push(&push_of(vec![op(b"after")])).await.unwrap();
    assert_eq!((pushed.snapshot_seq, pushed.snapshot_due), (1002, false));
    assert_eq!(ws_push(&s, "alice", b"over ws, after").await, (false, 1002));
    let status = c.status().await.unwrap();
    let snapshot = status.snapshot.unwrap();
    assert_eq!((snapshot.seq, snapshot.size), (1002, 10));
    assert_eq!(status.horizon, 0);
}

/// Pushes one op over a WebSocket; the `pushed` answer's `(snapshot_due, snapshot_seq)`.
async fn ws_push(s: &TestServer, user: &str, payload: &[u8]) -> (bool, i64) {
    use opsync::client::ws::{self, TokenIn};
    use opsync::realtime::messages::{ClientMsg, ServerMsg};
    let mut conn = ws::open(&s.base, &s.token(user), TokenIn::Subprotocol).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: None, since: None }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
    let push = ClientMsg::Push { id: 7, ops: vec![op(payload)], expected_head: None, on_stale: None };
    conn.send(&push).await.unwrap();
    loop {
        match conn.recv_msg().await.unwrap() {
            ServerMsg::Pushed { id: 7, snapshot_due, snapshot_seq, .. } => return (snapshot_due, snapshot_seq),
            ServerMsg::Ops { .. } | ServerMsg::Pong { .. } => {}
            other => panic!("expected pushed, got {other:?}"),
        }
    }
}
