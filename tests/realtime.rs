//! Live delivery over real WebSockets and long-polls, on both backends: fan-out,
//! catch-up then live without gaps or duplicates, slow consumers, bad frames, token
//! lifecycle, and two nodes on one Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{Backend, Storage, TestServer, op, push_from, push_of};
use opsync::auth::TokenSpec;
use opsync::client::ws::{self, Received, TokenIn, WsConn};
use opsync::ids::{DeviceId, Seq, UserId};
use opsync::protocol::{NewOp, OpStatus};
use opsync::realtime::messages::{ClientMsg, ResyncReason, ServerMsg};

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
    a_push_reaches_the_other_devices_and_answers_the_pusher,
    an_http_push_reaches_websocket_sessions,
    three_devices_get_every_op_exactly_once_in_order_across_a_reconnect,
    commits_during_catch_up_are_neither_lost_nor_repeated,
    another_users_device_receives_nothing,
    a_client_that_never_reads_is_cut_off_while_the_others_keep_receiving,
    long_polls_wake_on_commit_and_time_out_empty,
    bad_frames_get_errors_or_close_codes_and_the_server_carries_on,
    a_revoked_or_expired_token_closes_its_socket,
    authentication_is_checked_before_and_after_the_upgrade,
    a_session_below_the_horizon_is_told_to_bootstrap_from_the_snapshot,
    deleting_the_account_closes_its_sessions,
);

const WAIT: Duration = Duration::from_secs(20);

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

/// Opens a socket for `user` as `device` and says hello; returns it with the head.
async fn connect(server: &TestServer, user: &str, dev: &str, since: Seq) -> (WsConn, Seq) {
    let mut conn = ws::open(&server.base, &server.token(user), TokenIn::Subprotocol).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: Some(device(dev)), since: Some(since) }).await.unwrap();
    match conn.recv_msg().await.unwrap() {
        ServerMsg::Welcome { head, user: u, v, .. } => {
            assert_eq!((u.as_str(), v), (user, 1));
            (conn, head)
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// A device's view of the stream: everything it has been given, checked to be
/// gapless and in order as it arrives.
struct Tracker {
    delivered: Seq,
    from_others: usize,
    resyncs: usize,
}

impl Tracker {
    fn new(since: Seq) -> Self {
        Self { delivered: since, from_others: 0, resyncs: 0 }
    }

    /// Applies one message; panics on a gap or a repeat.
    fn apply(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Ops { ops, .. } => {
                for op in ops {
                    assert_eq!(op.seq, self.delivered + 1, "ops must follow the last delivered seq");
                    self.delivered = op.seq;
                    self.from_others += 1;
                }
            }
            ServerMsg::Pushed { results, .. } => {
                for r in results.iter().filter(|r| r.status == OpStatus::Stored) {
                    assert_eq!(r.seq, self.delivered + 1, "own ops must follow the last delivered seq");
                    self.delivered = r.seq;
                }
            }
            ServerMsg::Resync { from, reason, .. } => {
                assert_eq!(*reason, ResyncReason::Lagging);
                assert_eq!(*from, self.delivered, "resync restarts from what was delivered");
                self.resyncs += 1;
            }
            ServerMsg::Error { code, message, .. } => panic!("unexpected error {code}: {message}"),
            ServerMsg::Pong { .. } | ServerMsg::Welcome { .. } => {}
        }
    }

    /// Reads until `target` is delivered.
    async fn until(&mut self, conn: &mut WsConn, target: Seq) {
        let deadline = Instant::now() + WAIT;
        while self.delivered < target {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, conn.recv_msg())
                .await
                .unwrap_or_else(|_| panic!("only {} of {target} delivered in time", self.delivered))
                .unwrap();
            self.apply(&msg);
        }
    }
}

/// Pushes over the socket and reads (tracking) until the answer arrives.
async fn ws_push(conn: &mut WsConn, tracker: &mut Tracker, id: u64, ops: Vec<NewOp>) -> Vec<Seq> {
    conn.send(&ClientMsg::Push { id, ops, expected_head: None, on_stale: None }).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, conn.recv_msg()).await.expect("no answer to a push").unwrap();
        tracker.apply(&msg);
        if let ServerMsg::Pushed { id: answered, results, .. } = msg {
            assert_eq!(answered, id);
            return results.iter().map(|r| r.seq).collect();
        }
    }
}

fn ops(n: usize, tag: u8) -> Vec<NewOp> {
    (0..n).map(|i| op(&[tag, i as u8])).collect()
}

async fn a_push_reaches_the_other_devices_and_answers_the_pusher(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let (mut a, _) = connect(&s, "u", "a", 0).await;
    let (mut b, _) = connect(&s, "u", "b", 0).await;
    let (mut ta, mut tb) = (Tracker::new(0), Tracker::new(0));
    let seqs = ws_push(&mut a, &mut ta, 1, ops(3, 1)).await;
    assert_eq!(seqs, vec![1, 2, 3]);
    tb.until(&mut b, 3).await;
    assert_eq!(tb.from_others, 3);
    // The pusher got its answer and not its own ops back.
    a.send(&ClientMsg::Ping { id: Some(9) }).await.unwrap();
    assert_eq!(a.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(9) });
    // The device name reached the stored ops.
    let log = s.client("u").pull_all(0).await.unwrap();
    assert!(log.ops.iter().all(|o| o.device.as_deref() == Some("a")));
    // A repeated push is answered `duplicate` with the original seqs.
    let same = log.ops.iter().map(|o| NewOp { id: o.id, payload: o.payload.clone(), ..op(b"") }).collect();
    let again = ws_push(&mut b, &mut tb, 2, same).await;
    assert_eq!(again, vec![1, 2, 3]);
    // The user's hub runs while a session is open and stops after the last leaves.
    let stats = s.state.realtime.stats();
    assert_eq!((stats.hubs.load(Relaxed), stats.sessions.load(Relaxed)), (1, 2));
    a.close().await;
    b.close().await;
    let deadline = Instant::now() + WAIT;
    while stats.hubs.load(Relaxed) + stats.sessions.load(Relaxed) > 0 {
        assert!(Instant::now() < deadline, "the hub did not stop");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_http_push_reaches_websocket_sessions(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let (mut a, _) = connect(&s, "u", "a", 0).await;
    s.client("u").push(&push_from("a", ops(2, 1))).await.unwrap();
    s.client("u").push(&push_from("h", ops(1, 2))).await.unwrap();
    let mut t = Tracker::new(0);
    t.until(&mut a, 3).await;
    // Over HTTP the answer went to the HTTP caller: every socket gets the ops,
    // including one of the same device.
    assert_eq!(t.from_others, 3);
    a.send(&ClientMsg::Ping { id: Some(1) }).await.unwrap();
    assert_eq!(a.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(1) }, "nothing more, nothing twice");
}

async fn three_devices_get_every_op_exactly_once_in_order_across_a_reconnect(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let s = &s;
    const PUSHES: usize = 100;
    const PER_PUSH: usize = 10;
    let total = (3 * PUSHES * PER_PUSH) as Seq;
    let device_task = |d: u8| async move {
        let name = format!("d{d}");
        let (mut conn, _) = connect(s, "u", &name, 0).await;
        let mut t = Tracker::new(0);
        for p in 0..PUSHES {
            if d == 0 && p == PUSHES / 2 {
                // Drop the connection and resume from what was delivered.
                conn.close().await;
                let (again, _) = connect(s, "u", &name, t.delivered).await;
                conn = again;
            }
            ws_push(&mut conn, &mut t, p as u64, ops(PER_PUSH, d)).await;
        }
        t.until(&mut conn, total).await;
        (t.delivered, t.from_others)
    };
    let results = futures_util::future::join_all((0..3).map(device_task)).await;
    for (delivered, from_others) in results {
        assert_eq!(delivered, total);
        // Everything not pushed by the device itself arrived as `ops` exactly once
        // (the tracker refuses repeats and gaps).
        assert_eq!(from_others, 2 * PUSHES * PER_PUSH);
    }
}

async fn commits_during_catch_up_are_neither_lost_nor_repeated(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let c = s.client("u");
    for i in 0..30u8 {
        c.push(&push_of(ops(100, i))).await.unwrap();
    }
    let pusher = {
        let c = s.client("u");
        actix_web::rt::spawn(async move {
            for i in 0..50u8 {
                c.push(&push_of(ops(10, i))).await.unwrap();
            }
        })
    };
    let (mut conn, head) = connect(&s, "u", "late", 0).await;
    assert!(head >= 3000);
    let mut t = Tracker::new(0);
    pusher.await.unwrap();
    t.until(&mut conn, 3500).await;
    assert_eq!(t.from_others, 3500);
}

async fn another_users_device_receives_nothing(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let (mut x, _) = connect(&s, "x", "a", 0).await;
    let (mut y, _) = connect(&s, "y", "a", 0).await;
    s.client("y").push(&push_of(ops(5, 1))).await.unwrap();
    Tracker::new(0).until(&mut y, 5).await;
    x.send(&ClientMsg::Ping { id: Some(1) }).await.unwrap();
    // Had anything of y's reached x, it would come before the pong.
    assert_eq!(x.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(1) });
}

async fn a_client_that_never_reads_is_cut_off_while_the_others_keep_receiving(backend: Backend) {
    let Some(s) = TestServer::start_configured(backend, |c| {
        c.realtime.outbox_frames = 8;
        c.realtime.send_timeout_ms = 1000;
    })
    .await
    else {
        return;
    };
    let (mut reader, _) = connect(&s, "u", "reader", 0).await;
    let (mut sleeper, _) = connect(&s, "u", "sleeper", 0).await;
    let c = s.client("u").msgpack();
    let big = vec![7u8; 60_000];
    // About 36 MB: more than the socket buffers between the server and a client
    // that never reads.
    let pushes = 600;
    let reading = actix_web::rt::spawn(async move {
        let mut t = Tracker::new(0);
        t.until(&mut reader, pushes).await;
        (t, reader)
    });
    for _ in 0..pushes {
        c.push(&push_of(vec![op(&big)])).await.unwrap();
    }
    // The reader got everything while the sleeper's buffers filled up.
    let (mut t, mut reader) = reading.await.unwrap();
    // The server gave up on the sleeper (its memory is freed) ...
    let stats = s.state.realtime.stats();
    let deadline = Instant::now() + WAIT;
    while stats.sessions.load(Relaxed) > 1 {
        assert!(Instant::now() < deadline, "the sleeping session was never cut off");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stats.lagged.load(Relaxed) > 0, "its outbox overflowed first");
    // ... and what the sleeper finds when it wakes up has no silent hole: ops in
    // order, possibly a resync, then the end of the connection.
    let mut st = Tracker::new(0);
    loop {
        match tokio::time::timeout(WAIT, sleeper.recv()).await.unwrap() {
            Ok(Received::Msg(msg)) => st.apply(&msg),
            Ok(Received::Closed(code, _)) => {
                assert!(matches!(code, None | Some(4009)), "{code:?}");
                break;
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    assert!(st.delivered < pushes, "it was cut off before the end");
    // The reader is still served.
    c.push(&push_of(vec![op(b"after")])).await.unwrap();
    t.until(&mut reader, pushes + 1).await;
}

async fn long_polls_wake_on_commit_and_time_out_empty(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let c = s.client("u");
    c.push(&push_of(ops(2, 1))).await.unwrap();
    // Ops exist: answered at once.
    let started = Instant::now();
    assert_eq!(c.pull_wait(0, 10).await.unwrap().ops.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing after the head: held until a commit.
    let poll = {
        let c = s.client("u");
        actix_web::rt::spawn(async move {
            let started = Instant::now();
            (c.pull_wait(2, 20).await.unwrap(), started.elapsed())
        })
    };
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    c.push(&push_of(ops(1, 2))).await.unwrap();
    let (page, took) = poll.await.unwrap();
    assert_eq!(page.ops.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![3]);
    assert!(took < Duration::from_secs(10), "woke on the commit, not the timeout ({took:?})");
    // No commit: an empty page with the head after the wait.
    let started = Instant::now();
    let page = c.pull_wait(3, 1).await.unwrap();
    assert!(page.ops.is_empty() && page.head == 3 && !page.has_more);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(c.pull_wait(0, 31).await.unwrap_err().code(), Some("invalid_query"));
    assert_eq!(s.state.realtime.stats().waiting.load(Relaxed), 0);
}

async fn bad_frames_get_errors_or_close_codes_and_the_server_carries_on(backend: Backend) {
    use awc::ws::Message;
    let Some(s) = TestServer::start_configured(backend, |c| c.realtime.max_frame_bytes = 4096).await else { return };
    let expect_error = |msg: ServerMsg, want: &str| match msg {
        ServerMsg::Error { code, .. } => assert_eq!(code, want),
        other => panic!("expected {want}, got {other:?}"),
    };
    // Before hello: anything else closes the socket.
    let mut early = ws::open(&s.base, &s.token("u"), TokenIn::Subprotocol).await.unwrap();
    early.send(&ClientMsg::Ping { id: None }).await.unwrap();
    expect_error(early.recv_msg().await.unwrap(), "unexpected_message");
    assert!(matches!(early.recv().await.unwrap(), Received::Closed(Some(4000), _)));

    let (mut conn, _) = connect(&s, "u", "a", 0).await;
    conn.send_frame(Message::Text("{\"type\":\"ping\"}".into())).await.unwrap();
    expect_error(conn.recv_msg().await.unwrap(), "malformed_frame");
    conn.send_frame(Message::Binary(bytes::Bytes::from_static(b"\xc1\xff\x00garbage"))).await.unwrap();
    expect_error(conn.recv_msg().await.unwrap(), "malformed_frame");
    let unknown = rmp_serde::to_vec_named(&serde_json::json!({"type": "launch", "id": 1})).unwrap();
    conn.send_frame(Message::Binary(unknown.into())).await.unwrap();
    expect_error(conn.recv_msg().await.unwrap(), "unknown_message");
    let nested = [vec![0x91u8; 100], vec![0xc0]].concat();
    conn.send_frame(Message::Binary(nested.into())).await.unwrap();
    expect_error(conn.recv_msg().await.unwrap(), "malformed_frame");
    conn.send(&ClientMsg::Push { id: 5, ops: vec![], expected_head: None, on_stale: None }).await.unwrap();
    match conn.recv_msg().await.unwrap() {
        ServerMsg::Error { code, id, .. } => assert_eq!((code.as_str(), id), ("empty_push", Some(5))),
        other => panic!("{other:?}"),
    }
    conn.send(&ClientMsg::Ack { seq: 99 }).await.unwrap();
    expect_error(conn.recv_msg().await.unwrap(), "seq_beyond_head");
    // Still usable after all that; WebSocket ping frames are answered too.
    conn.send(&ClientMsg::Ping { id: Some(2) }).await.unwrap();
    assert_eq!(conn.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(2) });
    conn.send_frame(Message::Ping(bytes::Bytes::from_static(b"hi"))).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), Received::Pong(bytes::Bytes::from_static(b"hi")));
    // Pipelined pushes are answered in order, refusals included.
    for (id, ops) in [(1, ops(2, 1)), (2, vec![]), (3, ops(1, 2))] {
        conn.send(&ClientMsg::Push { id, ops, expected_head: None, on_stale: None }).await.unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < 3 {
        match conn.recv_msg().await.unwrap() {
            ServerMsg::Pushed { id, results, .. } => answers.push((id, results.len())),
            ServerMsg::Error { id: Some(id), code, .. } if code == "empty_push" => answers.push((id, 0)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answers, vec![(1, 2), (2, 0), (3, 1)]);
    // A frame over the limit closes the connection with 1009.
    conn.send_frame(Message::Binary(vec![0u8; 10_000].into())).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Received::Closed(Some(1009), _)));
    // The server carries on.
    let (mut fresh, _) = connect(&s, "u", "b", 3).await;
    fresh.send(&ClientMsg::Ping { id: Some(3) }).await.unwrap();
    assert_eq!(fresh.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(3) });
    // A close from the client is answered with a close.
    fresh.send_frame(Message::Close(None)).await.unwrap();
    assert!(matches!(fresh.recv().await.unwrap(), Received::Closed(Some(1000), _)));
    assert_eq!(s.stored_ops("u").await, 3, "only the valid pipelined pushes were stored");
}

async fn a_revoked_or_expired_token_closes_its_socket(backend: Backend) {
    let Some(s) = TestServer::start_configured(backend, |c| c.realtime.token_check_ms = 200).await else { return };
    let token = s.token("u");
    let mut conn = ws::open(&s.base, &token, TokenIn::Hello).await.unwrap();
    conn.send(&ClientMsg::Hello { token: Some(token.clone()), device: None, since: None }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
    // Revoked in the database, as the CLI does: the node picks it up by itself.
    let parsed = opsync::auth::parse(&token, &s.root.public()).unwrap();
    let ids = vec![opsync::auth::own_revocation_id(&parsed)];
    s.state.log.with_conn(move |conn| Ok(opsync::auth::revoke(conn, &ids)?)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.recv()).await.unwrap().unwrap();
    assert!(matches!(closed, Received::Closed(Some(4003), _)), "{closed:?}");

    let short = s.token_with(TokenSpec {
        user: UserId::new("u").unwrap(),
        device: None,
        ttl: Duration::from_secs(1),
        write: false,
        admin: false,
    });
    let mut conn = ws::open(&s.base, &short, TokenIn::Subprotocol).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: None, since: None }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
    // Read-only: a push is refused, the socket stays.
    conn.send(&ClientMsg::Push { id: 1, ops: ops(1, 1), expected_head: None, on_stale: None }).await.unwrap();
    match conn.recv_msg().await.unwrap() {
        ServerMsg::Error { code, id, .. } => assert_eq!((code.as_str(), id), ("forbidden", Some(1))),
        other => panic!("{other:?}"),
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.recv()).await.unwrap().unwrap();
    assert!(matches!(closed, Received::Closed(Some(4002), _)), "{closed:?}");
}

async fn authentication_is_checked_before_and_after_the_upgrade(backend: Backend) {
    let Some(s) = TestServer::start_configured(backend, |c| {
        c.realtime.hello_timeout_ms = 300;
        c.realtime.allowed_origins = vec!["https://app.example".into()];
    })
    .await
    else {
        return;
    };
    // A bad token offered in the subprotocol header: a plain 401, no socket.
    let refused = ws::open(&s.base, "not-a-token", TokenIn::Subprotocol).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    // Origins: listed ones and none are allowed, others are refused with 403.
    let token = s.token("u");
    assert!(ws::open_with(&s.base, Some(&token), Some("https://app.example")).await.is_ok());
    let evil = ws::open_with(&s.base, Some(&token), Some("https://evil.example")).await.unwrap_err();
    assert!(evil.to_string().contains("403"), "{evil}");
    // No hello in time.
    let mut silent = ws::open(&s.base, &token, TokenIn::Hello).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.recv()).await.unwrap().unwrap();
    assert!(matches!(closed, Received::Closed(Some(4008), _)), "{closed:?}");
    // A bad token in hello: an error, then close 4001.
    let mut bad = ws::open(&s.base, &token, TokenIn::Hello).await.unwrap();
    bad.send(&ClientMsg::Hello { token: Some("garbage".into()), device: None, since: None }).await.unwrap();
    assert!(matches!(bad.recv_msg().await.unwrap(), ServerMsg::Error { code, .. } if code == "invalid_token"));
    assert!(matches!(bad.recv().await.unwrap(), Received::Closed(Some(4001), _)));
    // A device-bound token used as another device.
    let bound = s.token_with(TokenSpec {
        user: UserId::new("u").unwrap(),
        device: Some(device("phone")),
        ttl: Duration::from_secs(60),
        write: true,
        admin: false,
    });
    let mut other = ws::open(&s.base, &bound, TokenIn::Subprotocol).await.unwrap();
    other.send(&ClientMsg::Hello { token: None, device: Some(device("laptop")), since: None }).await.unwrap();
    assert!(matches!(other.recv_msg().await.unwrap(), ServerMsg::Error { code, .. } if code == "device_mismatch"));
    // Since beyond the head.
    let mut ahead = ws::open(&s.base, &token, TokenIn::Subprotocol).await.unwrap();
    ahead.send(&ClientMsg::Hello { token: None, device: None, since: Some(5) }).await.unwrap();
    assert!(
        matches!(ahead.recv_msg().await.unwrap(), ServerMsg::Error { code, head: Some(0), .. } if code == "since_beyond_head")
    );
    assert!(matches!(ahead.recv().await.unwrap(), Received::Closed(Some(4013), _)));
    // Not an upgrade at all.
    let plain = awc::Client::new().get(s.url("/v1/ws")).send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 426);
}

/// Two nodes on one Postgres: a commit on A reaches B's sockets and long-polls, also
/// across a listener reconnect (commits made while B was not listening included).
#[actix_web::test]
async fn commits_reach_the_other_node_through_postgres_and_survive_a_listener_reconnect() {
    use diesel::{Connection as _, RunQueryDsl as _};
    let Some(a) = TestServer::start(Backend::Postgres).await else { return };
    let shared =
        Storage { backend: Backend::Postgres, db: a.storage.db.clone(), dir: tempfile::tempdir().unwrap(), pg: None };
    let b = TestServer::on(shared, biscuit_auth::KeyPair::from(&a.root.private()), Default::default());
    let (mut on_b, _) = connect(&b, "u", "b", 0).await;
    let mut t = Tracker::new(0);
    a.client("u").push(&push_of(ops(3, 1))).await.unwrap();
    t.until(&mut on_b, 3).await;

    // A long-poll on B wakes on a commit on A.
    let poll = {
        let c = b.client("u");
        actix_web::rt::spawn(async move { c.pull_wait(3, 20).await.unwrap() })
    };
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    a.client("u").push(&push_of(ops(1, 2))).await.unwrap();
    assert_eq!(poll.await.unwrap().ops.len(), 1);
    t.until(&mut on_b, 4).await;

    // Kill B's listening connection; push on A while it reconnects.
    let node = opsync::log::CommitSink::node_id(&b.state.realtime).to_owned();
    let mut admin = diesel::PgConnection::establish(&a.storage.db).unwrap();
    let killed: Vec<bool> = diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
         WHERE application_name = 'opsync-listener-{node}'"
    ))
    .load::<Killed>(&mut admin)
    .unwrap()
    .into_iter()
    .map(|k| k.killed)
    .collect();
    assert_eq!(killed, vec![true]);
    a.client("u").push(&push_of(ops(5, 3))).await.unwrap();
    t.until(&mut on_b, 9).await;
    // And live again afterwards.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    a.client("u").push(&push_of(ops(1, 4))).await.unwrap();
    t.until(&mut on_b, 10).await;
    assert_eq!(t.from_others, 10);
    // Deleting the account on A closes the user's sessions on B.
    a.client("u").delete_account().await.unwrap();
    let closed = tokio::time::timeout(WAIT, on_b.recv()).await.unwrap().unwrap();
    assert!(matches!(closed, Received::Closed(Some(4010), _)), "{closed:?}");
    drop(b);
}

#[derive(diesel::QueryableByName)]
struct Killed {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    killed: bool,
}

async fn a_session_below_the_horizon_is_told_to_bootstrap_from_the_snapshot(backend: Backend) {
    use opsync::log::{Retention, now_ms, retention};
    let Some(s) = TestServer::start(backend).await else { return };
    let c = s.client("u");
    c.push(&push_of(ops(10, 1))).await.unwrap();
    c.put_snapshot(6, b"state at 6".to_vec()).await.unwrap();
    let policy = Retention { compact_interval: Duration::ZERO, ..Retention::default() };
    let month = 31 * 24 * 3600 * 1000;
    let done =
        s.state.log.with_conn(move |conn| retention::compact_user(conn, "u", &policy, now_ms() + month)).await.unwrap();
    assert_eq!(done.horizon, 6);
    // From below the horizon: resync to the snapshot, then close 4012.
    let (mut old, _) = connect(&s, "u", "old", 2).await;
    match old.recv_msg().await.unwrap() {
        ServerMsg::Resync { from, reason, snapshot_seq } => {
            assert_eq!((from, reason, snapshot_seq), (2, ResyncReason::Horizon, Some(6)));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(old.recv().await.unwrap(), Received::Closed(Some(4012), _)));
    // From the snapshot: the remaining ops, in order.
    let (mut fresh, _) = connect(&s, "u", "fresh", 6).await;
    let mut t = Tracker::new(6);
    t.until(&mut fresh, 10).await;
    assert_eq!(t.from_others, 4);
}

async fn deleting_the_account_closes_its_sessions(backend: Backend) {
    let Some(s) = TestServer::start(backend).await else { return };
    let (mut doomed, _) = connect(&s, "u", "a", 0).await;
    let (mut other, _) = connect(&s, "v", "a", 0).await;
    s.client("u").push(&push_of(ops(3, 1))).await.unwrap();
    Tracker::new(0).until(&mut doomed, 3).await;
    s.client("u").delete_account().await.unwrap();
    let closed = tokio::time::timeout(WAIT, doomed.recv()).await.unwrap().unwrap();
    assert!(matches!(closed, Received::Closed(Some(4010), _)), "{closed:?}");
    other.send(&ClientMsg::Ping { id: Some(1) }).await.unwrap();
    assert_eq!(other.recv_msg().await.unwrap(), ServerMsg::Pong { id: Some(1) }, "other users are untouched");
}
