//! Rate limits, the storage quota and connection deadlines against a real server:
//! `429 rate_limited` with `Retry-After` over HTTP, `error` and close 4029 over a
//! WebSocket, the session cap, failed authentications per address, `507
//! quota_exceeded` (both backends: the quota is tracked in the database), and idle
//! connections closed at their deadline.
//!
//! Rates are small and margins wide: a bucket that must stay empty during a test
//! refills one token per 10 s or slower, and a test that waits for a token waits
//! for the `retry_after_ms` the server named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use common::{Backend, TestServer, op, push_from, push_of};
use opsync::auth::TokenSpec;
use opsync::client::ClientError;
use opsync::client::ws::{self, Received, TokenIn, WsConn};
use opsync::ids::{DeviceId, UserId};
use opsync::limits::{Rate, RateLimits};
use opsync::log::{Retention, now_ms, retention};
use opsync::protocol::{ErrorBody, PushRequest};
use opsync::realtime::messages::{ClientMsg, ServerMsg};

/// Defines each `async fn name(backend: Backend)` as a test on SQLite and on Postgres.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[actix_web::test] async fn $name() { super::$name(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[actix_web::test] async fn $name() { super::$name(super::Backend::Postgres).await; })*
        }
    };
}

on_both!(
    http_pushes_over_a_bucket_get_429_and_store_nothing,
    websocket_pushes_over_the_limit_get_errors_and_the_session_survives,
    a_push_over_the_quota_gets_507_and_freeing_space_lets_pushes_in,
);

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

/// One token per `secs` seconds, `burst` at once.
fn slow(burst: f64, secs: f64) -> Rate {
    Rate::new(1.0 / secs, burst)
}

/// A raw `POST /v1/ops`: status, `Retry-After` and body.
async fn raw_push(s: &TestServer, token: &str, request: &PushRequest) -> (u16, Option<String>, serde_json::Value) {
    let mut res = awc::Client::new()
        .post(s.url("/v1/ops"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send_json(request)
        .await
        .unwrap();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    (res.status().as_u16(), retry, body)
}

/// The error body of a refused client call.
fn refusal(e: ClientError) -> (u16, ErrorBody) {
    match e {
        ClientError::Api { status, body } => (status, *body),
        other => panic!("expected an API error, got {other}"),
    }
}

async fn metrics(s: &TestServer) -> String {
    let mut res = awc::Client::new().get(s.url("/metrics")).send().await.unwrap();
    String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

async fn http_pushes_over_a_bucket_get_429_and_store_nothing(backend: Backend) {
    let limits = RateLimits {
        device_pushes: slow(3.0, 2.0),
        user_pushes: slow(5.0, 30.0),
        device_ops: slow(10.0, 30.0),
        ..RateLimits::none()
    };
    let Some(s) = TestServer::start_configured(backend, |c| c.rate_limits = limits).await else { return };
    let token = s.token("alice");
    for _ in 0..3 {
        let (status, _, _) = raw_push(&s, &token, &push_from("phone", vec![op(b"x")])).await;
        assert_eq!(status, 200);
    }
    // The device's fourth push within 2 s: refused whole, with when to retry.
    let (status, retry, body) = raw_push(&s, &token, &push_from("phone", vec![op(b"y"), op(b"z")])).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
    let wait_ms = body["retry_after_ms"].as_u64().unwrap();
    assert!((1..=2000).contains(&wait_ms), "{wait_ms}");
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert_eq!(retry, wait_ms.div_ceil(1000), "Retry-After is the wait in whole seconds, rounded up");
    assert_eq!(s.stored_ops("alice").await, 3, "nothing of the refused push is stored");

    // Another device of the same user has a bucket of its own, until the user's is spent.
    let laptop = s.client("alice");
    laptop.push(&push_from("laptop", vec![op(b"l1")])).await.unwrap();
    laptop.push(&push_from("laptop", vec![op(b"l2")])).await.unwrap();
    let (status, body) = refusal(laptop.push(&push_from("laptop", vec![op(b"l3")])).await.unwrap_err());
    assert_eq!((status, body.error.as_str()), (429, "rate_limited"));
    assert!(body.message.contains("user"), "{}", body.message);
    // Another user is not affected at all.
    s.client("bob").push(&push_from("phone", vec![op(b"b")])).await.unwrap();

    // After the wait it names, a device may push again (on a fresh user: alice's
    // own bucket stays empty for 30 s).
    let carol = s.token("carol");
    for _ in 0..3 {
        assert_eq!(raw_push(&s, &carol, &push_from("phone", vec![op(b"c")])).await.0, 200);
    }
    let (status, _, body) = raw_push(&s, &carol, &push_from("phone", vec![op(b"c")])).await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_millis(body["retry_after_ms"].as_u64().unwrap() + 50)).await;
    assert_eq!(raw_push(&s, &carol, &push_from("phone", vec![op(b"c")])).await.0, 200);

    // Ops count too: 10 ops per 30 s on a device (dave's other buckets are fresh).
    let dave = s.client("dave");
    dave.push(&push_from("tablet", (0..8).map(|_| op(b"d")).collect())).await.unwrap();
    let (status, body) =
        refusal(dave.push(&push_from("tablet", (0..3).map(|_| op(b"d")).collect())).await.unwrap_err());
    assert_eq!((status, body.error.as_str()), (429, "rate_limited"));
    assert!(body.retry_after_ms.unwrap() > 20_000, "one op's worth of wait is 30 s: {body:?}");
    dave.push(&push_from("tablet", (0..2).map(|_| op(b"d")).collect())).await.unwrap();
    assert_eq!(s.stored_ops("dave").await, 10);

    let text = metrics(&s).await;
    assert!(sample(&text, "opsync_rate_limited_total{scope=\"device_push\"}") >= 3.0);
    assert!(sample(&text, "opsync_rate_limited_total{scope=\"user_push\"}") >= 1.0);
    assert_eq!(sample(&text, "opsync_rate_limited_total{scope=\"unauthenticated\"}"), 0.0);
}

/// Opens a socket for `user` as `dev` with the token offered in the subprotocol.
async fn connect(s: &TestServer, user: &str, dev: &str) -> WsConn {
    let mut conn = ws::open(&s.base, &s.token(user), TokenIn::Subprotocol).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: Some(device(dev)), since: None }).await.unwrap();
    match conn.recv_msg().await.unwrap() {
        ServerMsg::Welcome { .. } => conn,
        other => panic!("expected welcome, got {other:?}"),
    }
}

fn ws_push(id: u64, payload: &[u8]) -> ClientMsg {
    ClientMsg::Push { id, ops: vec![op(payload)], expected_head: None, on_stale: None }
}

async fn websocket_pushes_over_the_limit_get_errors_and_the_session_survives(backend: Backend) {
    let limits = RateLimits { device_pushes: slow(2.0, 2.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(backend, |c| c.rate_limits = limits).await else { return };
    let mut conn = connect(&s, "u", "phone").await;
    for id in 1..=2 {
        conn.send(&ws_push(id, b"ok")).await.unwrap();
        assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Pushed { id: got, .. } if got == id));
    }
    conn.send(&ws_push(3, b"over")).await.unwrap();
    let wait_ms = match conn.recv_msg().await.unwrap() {
        ServerMsg::Error { id: Some(3), code, retry_after_ms: Some(ms), .. } if code == "rate_limited" => ms,
        other => panic!("expected rate_limited for push 3, got {other:?}"),
    };
    assert!((1..=2000).contains(&wait_ms), "{wait_ms}");
    assert_eq!(s.stored_ops("u").await, 2);
    // The session stays open and answers.
    conn.send(&ClientMsg::Ping { id: Some(9) }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(9) }));
    tokio::time::sleep(Duration::from_millis(wait_ms + 50)).await;
    conn.send(&ws_push(4, b"later")).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Pushed { id: 4, .. }));
    assert_eq!(s.stored_ops("u").await, 3);
}

#[actix_web::test]
async fn a_socket_that_keeps_pushing_while_limited_is_closed_with_4029() {
    let limits = RateLimits { device_pushes: slow(1.0, 60.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.rate_limits = limits).await else { return };
    let mut conn = connect(&s, "u", "phone").await;
    conn.send(&ws_push(0, b"ok")).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Pushed { id: 0, .. }));
    // Ignore every retry_after_ms: send far more than the budget, without waiting.
    let sender = async {
        for id in 1..=200 {
            if conn.send(&ws_push(id, b"again")).await.is_err() {
                break;
            }
        }
        conn
    };
    let mut conn = sender.await;
    let mut refused = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await.unwrap().unwrap() {
            Received::Msg(ServerMsg::Error { code, .. }) if code == "rate_limited" => refused += 1,
            Received::Closed(code, reason) => break (code, reason),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed.0, Some(4029), "{closed:?}");
    assert_eq!(closed.1.as_deref(), Some("rate_limited"));
    assert!(refused < 100, "closed at the 100th refusal in a row, after {refused} errors");
    assert_eq!(s.stored_ops("u").await, 1);
}

#[actix_web::test]
async fn sessions_are_capped_per_user_and_connects_are_rate_limited() {
    let limits = RateLimits { max_sessions_per_user: 2, device_connects: slow(2.0, 60.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.rate_limits = limits).await else { return };
    let one = connect(&s, "u", "a").await;
    let _two = connect(&s, "u", "b").await;
    // A third session: with the token offered, 429 before the upgrade.
    let refused = ws::open(&s.base, &s.token("u"), TokenIn::Subprotocol).await.unwrap_err();
    assert_eq!(refusal(refused).0, 429);
    // With the token in hello: an error, then close 4029.
    let mut late = ws::open(&s.base, &s.token("u"), TokenIn::Hello).await.unwrap();
    let token = s.token("u");
    late.send(&ClientMsg::Hello { token: Some(token), device: Some(device("c")), since: None }).await.unwrap();
    assert!(
        matches!(late.recv_msg().await.unwrap(), ServerMsg::Error { code, retry_after_ms: Some(_), .. } if code == "rate_limited")
    );
    assert!(matches!(late.recv().await.unwrap(), Received::Closed(Some(4029), _)));
    // Another user is not affected.
    let _other = connect(&s, "v", "a").await;
    // A closed session frees its slot (as soon as the server has seen the close).
    one.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let _three = loop {
        match ws::open(&s.base, &s.token("u"), TokenIn::Subprotocol).await {
            Ok(mut conn) => {
                conn.send(&ClientMsg::Hello { token: None, device: Some(device("d")), since: None }).await.unwrap();
                assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
                break conn;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(refusal(e).0, 429);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the slot was never freed: {e}"),
        }
    };
    // Connects per device: two a minute. A token bound to the device lets the
    // server refuse the third before the upgrade.
    let bound = s.token_with(TokenSpec {
        user: UserId::new("w").unwrap(),
        device: Some(device("a")),
        ttl: Duration::from_secs(60),
        write: true,
        admin: false,
    });
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = ws::open(&s.base, &bound, TokenIn::Subprotocol).await.unwrap();
        conn.send(&ClientMsg::Hello { token: None, device: None, since: None }).await.unwrap();
        assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
        held.push(conn);
    }
    assert_eq!(refusal(ws::open(&s.base, &bound, TokenIn::Subprotocol).await.unwrap_err()).0, 429);
    let text = metrics(&s).await;
    assert!(sample(&text, "opsync_rate_limited_total{scope=\"sessions\"}") >= 2.0);
    assert_eq!(sample(&text, "opsync_rate_limited_total{scope=\"device_connect\"}"), 1.0);
}

#[actix_web::test]
async fn long_polls_that_wait_count_as_connects() {
    let limits = RateLimits { user_connects: slow(2.0, 60.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.rate_limits = limits).await else { return };
    let c = s.client("u");
    c.push(&push_of(vec![op(b"1")])).await.unwrap();
    // Two polls that wait (1 s each), then the user's connects are spent.
    for _ in 0..2 {
        assert!(c.pull_wait(1, 1).await.unwrap().ops.is_empty());
    }
    let (status, body) = refusal(c.pull_wait(1, 1).await.unwrap_err());
    assert_eq!((status, body.error.as_str()), (429, "rate_limited"));
    // A poll answered at once is a plain pull: not limited.
    assert_eq!(c.pull_wait(0, 1).await.unwrap().ops.len(), 1);
    assert_eq!(c.pull(1, None).await.unwrap().ops.len(), 0);
    // A WebSocket of the same user shares the user's connect bucket: refused
    // before the upgrade.
    let refused = ws::open(&s.base, &s.token("u"), TokenIn::Subprotocol).await.unwrap_err();
    assert_eq!(refusal(refused).0, 429);
}

#[actix_web::test]
async fn failed_authentications_are_limited_per_address_while_valid_tokens_work() {
    let limits = RateLimits { unauthenticated: slow(5.0, 60.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.rate_limits = limits).await else { return };
    let http = awc::Client::new();
    let get = |token: Option<&str>| {
        let mut req = http.get(s.url("/v1/status"));
        if let Some(token) = token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        req
    };
    for _ in 0..5 {
        assert_eq!(get(Some("guess")).send().await.unwrap().status().as_u16(), 401);
    }
    let mut over = get(Some("guess")).send().await.unwrap();
    assert_eq!(over.status().as_u16(), 429);
    let retry: u64 = over.headers().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = serde_json::from_slice(&over.body().await.unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(get(None).send().await.unwrap().status().as_u16(), 429, "no token at all counts too");
    // An expired token is a failure as well.
    let expired = s.token_with(TokenSpec {
        user: UserId::new("u").unwrap(),
        device: None,
        ttl: Duration::ZERO,
        write: true,
        admin: false,
    });
    assert_eq!(get(Some(&expired)).send().await.unwrap().status().as_u16(), 429);
    // A valid token from the same address is served.
    let token = s.token("u");
    assert_eq!(get(Some(&token)).send().await.unwrap().status().as_u16(), 200);
    s.client("u").push(&push_of(vec![op(b"still works")])).await.unwrap();
    let _session = connect(&s, "u", "phone").await;
    // A WebSocket without an offered token is refused before the upgrade, and a
    // bad token in hello is answered rate_limited with close 4029.
    let refused = ws::open(&s.base, "ignored", TokenIn::Hello).await.unwrap_err();
    assert_eq!(refusal(refused).0, 429);
    let bad = ws::open(&s.base, "bad", TokenIn::Subprotocol).await.unwrap_err();
    assert_eq!(refusal(bad).0, 429);
    let text = metrics(&s).await;
    assert!(sample(&text, "opsync_rate_limited_total{scope=\"unauthenticated\"}") >= 5.0);
}

#[actix_web::test]
async fn a_bad_token_in_hello_is_charged_to_the_address() {
    let limits = RateLimits { unauthenticated: slow(2.0, 60.0), ..RateLimits::none() };
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.rate_limits = limits).await else { return };
    // Three sockets open while the address is within its budget…
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(ws::open(&s.base, "unused", TokenIn::Hello).await.unwrap());
    }
    // …then each says hello with a bad token: the third failure is over the budget.
    let mut closes = Vec::new();
    for mut conn in conns {
        conn.send(&ClientMsg::Hello { token: Some("garbage".into()), device: None, since: None }).await.unwrap();
        let ServerMsg::Error { code, .. } = conn.recv_msg().await.unwrap() else { panic!("expected an error") };
        let Received::Closed(close, _) = conn.recv().await.unwrap() else { panic!("expected a close") };
        closes.push((code, close));
    }
    assert_eq!(
        closes,
        vec![
            ("invalid_token".to_owned(), Some(4001)),
            ("invalid_token".to_owned(), Some(4001)),
            ("rate_limited".to_owned(), Some(4029)),
        ]
    );
    // Now even the upgrade is refused.
    assert_eq!(refusal(ws::open(&s.base, "unused", TokenIn::Hello).await.unwrap_err()).0, 429);
}

async fn a_push_over_the_quota_gets_507_and_freeing_space_lets_pushes_in(backend: Backend) {
    let Some(s) = TestServer::start_configured(backend, |c| c.limits.quota_bytes = 100).await else { return };
    let c = s.client("u");
    let first = push_of(vec![op(&[1; 60])]);
    c.push(&first).await.unwrap();
    let status = c.status().await.unwrap();
    assert_eq!((status.stored_bytes, status.quota_bytes), (60, Some(100)));

    // 60 + 30 + 30 > 100: the whole push is refused, nothing of it stored.
    let (code, body) = refusal(c.push(&push_of(vec![op(&[2; 30]), op(&[3; 30])])).await.unwrap_err());
    assert_eq!((code, body.error.as_str()), (507, "quota_exceeded"));
    assert_eq!(s.stored_ops("u").await, 1);
    assert_eq!(c.status().await.unwrap().head, 1);
    // A retry of what is stored costs nothing: it passes at the quota.
    assert_eq!(c.push(&first).await.unwrap().results[0].seq, 1);
    // Exactly up to the quota is allowed; one byte more is not.
    c.push(&push_of(vec![op(&[4; 40])])).await.unwrap();
    assert_eq!(c.status().await.unwrap().stored_bytes, 100);
    assert_eq!(refusal(c.push(&push_of(vec![op(&[5])])).await.unwrap_err()).0, 507);
    // Empty payloads take no room.
    c.push(&push_of(vec![op(b"")])).await.unwrap();
    // Over a WebSocket: an error for that push, and the session carries on.
    let mut conn = connect(&s, "u", "phone").await;
    while !matches!(conn.recv_msg().await.unwrap(), ServerMsg::Ops { ops, .. } if ops.last().unwrap().seq == 3) {}
    conn.send(&ws_push(7, b"too much")).await.unwrap();
    assert!(
        matches!(conn.recv_msg().await.unwrap(), ServerMsg::Error { id: Some(7), code, .. } if code == "quota_exceeded")
    );
    conn.send(&ClientMsg::Ping { id: Some(1) }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(1) }));
    assert_eq!(s.stored_ops("u").await, 3);
    let text = metrics(&s).await;
    assert_eq!(sample(&text, "opsync_pushes_total{result=\"quota_exceeded\"}"), 3.0);

    // Retention frees space: a snapshot at seq 2, and ops older than the window go.
    c.put_snapshot(2, b"state".to_vec()).await.unwrap();
    let policy = Retention { compact_interval: Duration::ZERO, ..Retention::default() };
    let later = now_ms() + 31 * 24 * 3600 * 1000;
    let done = s.state.log.with_conn(move |conn| retention::compact_user(conn, "u", &policy, later)).await.unwrap();
    assert_eq!(done.ops_removed, 2);
    assert_eq!(c.status().await.unwrap().stored_bytes, 0, "the snapshot does not count; the pruned ops are gone");
    c.push(&push_of(vec![op(&[6; 100])])).await.unwrap();
    assert_eq!(refusal(c.push(&push_of(vec![op(&[7])])).await.unwrap_err()).0, 507);

    // Per-entity compaction frees what it drops too.
    let e = s.client("e");
    for i in 0..4u8 {
        e.push(&push_of(vec![common::entity_op("note", None, &[i; 25])])).await.unwrap();
    }
    assert_eq!(refusal(e.push(&push_of(vec![op(&[9])])).await.unwrap_err()).0, 507);
    let entities = Retention { compact_entities: true, compact_interval: Duration::ZERO, ..Retention::default() };
    let done = s.state.log.with_conn(move |conn| retention::compact_user(conn, "e", &entities, later)).await.unwrap();
    assert_eq!(done.ops_removed, 3);
    assert_eq!(e.status().await.unwrap().stored_bytes, 25);

    // Deleting the account frees everything.
    c.delete_account().await.unwrap();
    c.push(&push_of(vec![op(&[8; 100])])).await.unwrap();
    assert_eq!(c.status().await.unwrap().stored_bytes, 100);

    // An export and import keeps the count.
    let users = vec!["e".to_owned()];
    let file = s
        .state
        .log
        .with_conn(move |conn| {
            let mut out = Vec::new();
            opsync::log::transfer::export(conn, &users, &mut out)
                .map_err(|e| opsync::log::LogError::Corrupt(e.to_string()))?;
            opsync::log::store::apply_delete_user(conn, &UserId::new("e").unwrap(), now_ms())?;
            Ok(out)
        })
        .await
        .unwrap();
    assert_eq!(e.status().await.unwrap().stored_bytes, 0);
    s.state
        .log
        .with_conn(move |conn| {
            opsync::log::transfer::import(conn, &file[..]).map_err(|e| opsync::log::LogError::Corrupt(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(e.status().await.unwrap().stored_bytes, 25);
}

/// Reads from `stream` until the server closes it (or `limit` passes): when it did.
fn wait_for_close(stream: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

#[actix_web::test]
async fn idle_keep_alive_connections_are_closed_at_the_deadline() {
    let Some(s) = TestServer::start_configured(Backend::Sqlite, |c| c.keep_alive = Duration::from_secs(1)).await else {
        return;
    };
    let addr = s.base.trim_start_matches("http://").to_owned();
    let closed_after = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = stream.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Idle from here: the server closes the connection after about 1 s.
        wait_for_close(&mut stream, Duration::from_secs(15))
    })
    .await
    .unwrap();
    let after = closed_after.expect("the idle connection was never closed");
    assert!(after >= Duration::from_millis(500) && after < Duration::from_secs(10), "{after:?}");
}

#[actix_web::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let Some(s) = TestServer::start(Backend::Sqlite).await else { return };
    let addr = s.base.trim_start_matches("http://").to_owned();
    let closed_after = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        // The 10 s request-head timeout, not the (75 s) keep-alive.
        wait_for_close(&mut stream, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let after = closed_after.expect("the silent connection was never closed");
    assert!(after >= Duration::from_secs(9) && after < Duration::from_secs(20), "{after:?}");
}
