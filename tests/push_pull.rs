//! The op log over HTTP: push, pull, ack, status — on SQLite and Postgres.
//! DESIGN.md invariants 1 (gapless seqs), 2 (one id, one seq) and 3 (atomic push).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use futures_util::future::join_all;
use opsync::ids::{DeviceId, OpId};
use opsync::protocol::{AckRequest, OnStale, OpStatus, PushRequest};

both_backends!(
    push_then_pull_round_trips_every_field,
    msgpack_and_json_see_the_same_log,
    duplicates_answer_their_original_seq,
    reused_id_with_other_content_is_refused,
    a_push_is_all_or_nothing,
    concurrent_pushers_on_one_user_leave_a_gapless_log,
    concurrent_users_each_get_their_own_gapless_log,
    stale_head_is_accepted_or_refused_as_asked,
    per_entity_base_conflicts,
    pull_pages_through_the_log,
    ack_moves_a_cursor_forward_only,
    acknowledged_ops_survive_a_restart,
    compression_both_ways,
    health_and_readiness,
    json_bodies_use_the_documented_keys,
    concurrent_pushes_share_transactions,
);

async fn push_then_pull_round_trips_every_field(s: TestServer) {
    let c = s.client("alice");
    let mut a = entity_op("task-1", None, b"\x00\x01binary\xff");
    a.ts = Some(1_700_000_000_000);
    let b = op(b"second");
    let res = c.push(&push_from("laptop", vec![a.clone(), b.clone()])).await.unwrap();
    assert_eq!(res.head, 2);
    assert_eq!(
        res.results.iter().map(|r| (r.id, r.seq, r.status)).collect::<Vec<_>>(),
        vec![(a.id, 1, OpStatus::Stored), (b.id, 2, OpStatus::Stored)]
    );
    let page = c.pull(0, None).await.unwrap();
    assert_eq!(page.head, 2);
    assert!(!page.has_more);
    let first = &page.ops[0];
    assert_eq!((first.seq, first.id, first.payload.clone()), (1, a.id, a.payload.clone()));
    assert_eq!(first.entity.as_deref(), Some("task-1"));
    assert_eq!(first.kind.as_deref(), Some("put"));
    assert_eq!(first.ts, Some(1_700_000_000_000));
    assert_eq!(first.device.as_deref(), Some("laptop"));
    assert!(first.received_at > 1_700_000_000_000);
    assert_eq!((page.ops[1].seq, page.ops[1].id), (2, b.id));
    assert_eq!(page.ops[1].entity, None);
}

async fn msgpack_and_json_see_the_same_log(s: TestServer) {
    let json = s.client("alice");
    let msgpack = s.client("alice").msgpack();
    let a = op(&[7; 300]);
    msgpack.push(&push_of(vec![a.clone()])).await.unwrap();
    json.push(&push_of(vec![op(b"j")])).await.unwrap();
    let from_json = json.pull(0, None).await.unwrap();
    let from_msgpack = msgpack.pull(0, None).await.unwrap();
    assert_eq!(from_json, from_msgpack);
    assert_eq!(from_json.ops[0].payload, a.payload);

    // MessagePack bodies carry payloads as bin, not as arrays of integers.
    let res = awc::Client::default()
        .get(s.url("/v1/ops?since=0&limit=1"))
        .insert_header(("Authorization", format!("Bearer {}", s.token("alice"))))
        .insert_header(("Accept", "application/msgpack"))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    let needle = [&[0xc5, 0x01, 0x2c][..], &[7; 300][..]].concat(); // bin16, 300 bytes
    assert!(res.windows(needle.len()).any(|w| w == needle), "payload must be encoded as bin");
}

async fn duplicates_answer_their_original_seq(s: TestServer) {
    let c = s.client("alice");
    let (a, b, d) = (op(b"a"), op(b"b"), op(b"d"));
    c.push(&push_of(vec![a.clone(), b.clone()])).await.unwrap();
    let res = c.push(&push_of(vec![b.clone(), d.clone()])).await.unwrap();
    assert_eq!(res.results[0].seq, 2);
    assert_eq!(res.results[0].status, OpStatus::Duplicate);
    assert_eq!((res.results[1].seq, res.results[1].status), (3, OpStatus::Stored));
    assert_eq!(res.head, 3);
    // A pure retry of a committed push changes nothing, even with a stale head.
    let retry = PushRequest { expected_head: Some(0), on_stale: Some(OnStale::Reject), ..push_of(vec![a.clone()]) };
    let res = c.push(&retry).await.unwrap();
    assert_eq!((res.results[0].seq, res.results[0].status, res.head), (1, OpStatus::Duplicate, 3));
    assert_eq!(s.stored_ops("alice").await, 3);
    // Ids are per user: another user may use the same id.
    let other = s.client("bob").push(&push_of(vec![a.clone()])).await.unwrap();
    assert_eq!((other.results[0].seq, other.results[0].status), (1, OpStatus::Stored));
}

async fn reused_id_with_other_content_is_refused(s: TestServer) {
    let c = s.client("alice");
    let a = op(b"original");
    c.push(&push_of(vec![a.clone()])).await.unwrap();
    let mut changed = a.clone();
    changed.payload.0 = b"changed".to_vec();
    let err = c.push(&push_of(vec![op(b"new"), changed])).await.unwrap_err();
    assert_eq!(err.code(), Some("op_id_conflict"));
    let opsync::client::ClientError::Api { status, body } = err else { unreachable!() };
    assert_eq!(status, 409);
    assert_eq!(body.ids, Some(vec![a.id]));
    assert_eq!(s.stored_ops("alice").await, 1, "nothing of a refused push is stored");
    let mut other_entity = a.clone();
    other_entity.entity = Some("elsewhere".into());
    assert_eq!(c.push(&push_of(vec![other_entity])).await.unwrap_err().code(), Some("op_id_conflict"));
}

async fn a_push_is_all_or_nothing(s: TestServer) {
    let c = s.client("alice");
    c.push(&push_of(vec![entity_op("e", None, b"1")])).await.unwrap();
    // The third op conflicts: none of the three is stored.
    let batch = vec![op(b"x"), op(b"y"), entity_op("e", Some(0), b"stale")];
    assert_eq!(c.push(&push_of(batch.clone())).await.unwrap_err().code(), Some("entity_conflict"));
    assert_eq!(s.stored_ops("alice").await, 1);
    assert_eq!(c.status().await.unwrap().head, 1);
    // A push that does go in is stored consecutively, even with others committing.
    let pushes = (0..8).map(|i| {
        let c = c.clone();
        async move { c.push(&push_of((0..5).map(|j| op(&[i, j])).collect())).await.unwrap() }
    });
    for res in join_all(pushes).await {
        let seqs: Vec<i64> = res.results.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a push's ops are consecutive: {seqs:?}");
    }
}

async fn concurrent_pushers_on_one_user_leave_a_gapless_log(s: TestServer) {
    const PUSHERS: usize = 16;
    const PUSHES: usize = 25;
    let pushers = (0..PUSHERS).map(|p| {
        let c = s.client("hot");
        async move {
            let mut acked = Vec::new();
            for i in 0..PUSHES {
                let ops: Vec<_> = (0..1 + i % 3).map(|_| op(format!("{p}-{i}").as_bytes())).collect();
                let res = c.push(&push_from(&format!("dev{p}"), ops)).await.unwrap();
                acked.extend(res.results.into_iter().map(|r| (r.id, r.seq)));
            }
            acked
        }
    });
    let acked: HashMap<OpId, i64> = join_all(pushers).await.into_iter().flatten().collect();
    let log = s.client("hot").pull_all(0).await.unwrap();
    let seqs: Vec<i64> = log.ops.iter().map(|o| o.seq).collect();
    assert_eq!(seqs, (1..=acked.len() as i64).collect::<Vec<_>>(), "seqs are 1..head without gap or repeat");
    assert_eq!(log.head, acked.len() as i64);
    for o in &log.ops {
        assert_eq!(acked.get(&o.id), Some(&o.seq), "every stored op has the seq its push was answered");
    }
    assert_eq!(log.ops.iter().map(|o| o.id).collect::<HashSet<_>>().len(), acked.len());
}

async fn concurrent_users_each_get_their_own_gapless_log(s: TestServer) {
    let users: Vec<String> = (0..6).map(|u| format!("user{u}")).collect();
    let work = users.iter().map(|u| {
        let c = s.client(u);
        async move {
            for i in 0..20u8 {
                c.push(&push_of(vec![op(&[i]), op(&[i, i])])).await.unwrap();
            }
        }
    });
    join_all(work).await;
    for u in &users {
        let log = s.client(u).pull_all(0).await.unwrap();
        assert_eq!(log.ops.iter().map(|o| o.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    }
}

async fn stale_head_is_accepted_or_refused_as_asked(s: TestServer) {
    let c = s.client("alice");
    c.push(&push_of(vec![op(b"1"), op(b"2")])).await.unwrap();
    let accept = PushRequest { expected_head: Some(1), ..push_of(vec![op(b"3")]) };
    assert_eq!(c.push(&accept).await.unwrap().head, 3, "a stale head is accepted by default");
    let reject = PushRequest { expected_head: Some(1), on_stale: Some(OnStale::Reject), ..push_of(vec![op(b"4")]) };
    let err = c.push(&reject).await.unwrap_err();
    assert_eq!(err.code(), Some("stale_head"));
    let opsync::client::ClientError::Api { status, body } = err else { unreachable!() };
    assert_eq!((status, body.head), (409, Some(3)));
    let current = PushRequest { expected_head: Some(3), on_stale: Some(OnStale::Reject), ..push_of(vec![op(b"4")]) };
    assert_eq!(c.push(&current).await.unwrap().head, 4);
    let ahead = PushRequest { expected_head: Some(99), ..push_of(vec![op(b"5")]) };
    assert_eq!(c.push(&ahead).await.unwrap_err().code(), Some("head_ahead"));
    let no_head = PushRequest { on_stale: Some(OnStale::Reject), ..push_of(vec![op(b"5")]) };
    assert_eq!(c.push(&no_head).await.unwrap_err().code(), Some("invalid_field"));
    assert_eq!(s.stored_ops("alice").await, 4);
}

async fn per_entity_base_conflicts(s: TestServer) {
    let c = s.client("alice");
    c.push(&push_of(vec![entity_op("task", None, b"v1"), entity_op("other", None, b"o1")])).await.unwrap();
    // Based on the entity's last seq (1): fine, even though the head is 2.
    let ok = c.push(&push_of(vec![entity_op("task", Some(1), b"v2")])).await.unwrap();
    assert_eq!(ok.results[0].seq, 3);
    // Based on seq 1 again: the entity moved to 3 since.
    let stale = entity_op("task", Some(1), b"v3");
    let err = c.push(&push_of(vec![entity_op("other", Some(2), b"o2"), stale.clone()])).await.unwrap_err();
    let opsync::client::ClientError::Api { status, body } = err else { unreachable!() };
    assert_eq!((status, body.error.as_str()), (409, "entity_conflict"));
    let conflicts = body.conflicts.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].id, conflicts[0].entity.as_str()), (stale.id, "task"));
    assert_eq!((conflicts[0].base, conflicts[0].entity_seq), (1, 3));
    // A base beyond the head cannot have been seen.
    let future = c.push(&push_of(vec![entity_op("task", Some(50), b"?")])).await.unwrap_err();
    assert_eq!(future.code(), Some("invalid_op"));
    // Ops without a base never conflict.
    c.push(&push_of(vec![entity_op("task", None, b"blind write")])).await.unwrap();
    assert_eq!(s.stored_ops("alice").await, 4);
}

async fn pull_pages_through_the_log(s: TestServer) {
    let c = s.client("alice");
    for chunk in 0..5u8 {
        c.push(&push_of((0..5u8).map(|i| op(&[chunk, i])).collect())).await.unwrap();
    }
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let page = c.pull(since, Some(10)).await.unwrap();
        assert!(page.ops.len() <= 10);
        assert_eq!(page.head, 25);
        seen.extend(page.ops.iter().map(|o| o.seq));
        since = page.ops.last().map_or(since, |o| o.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    let at_head = c.pull(25, None).await.unwrap();
    assert!(at_head.ops.is_empty() && !at_head.has_more);
    assert_eq!(c.pull(26, None).await.unwrap_err().code(), Some("since_beyond_head"));
    assert_eq!(s.client("nobody").pull(0, None).await.unwrap().head, 0);
    // A huge limit is clamped to the server's maximum, not an error.
    assert_eq!(c.pull(0, Some(1_000_000)).await.unwrap().ops.len(), 25);
}

async fn ack_moves_a_cursor_forward_only(s: TestServer) {
    let c = s.client("alice");
    c.push(&push_from("phone", (0..5u8).map(|i| op(&[i])).collect())).await.unwrap();
    let laptop = Some(DeviceId::new("laptop").unwrap());
    let ack = |seq| AckRequest { device: laptop.clone(), seq };
    assert_eq!(c.ack(&ack(3)).await.unwrap().seq, 3);
    let back = c.ack(&ack(1)).await.unwrap();
    assert_eq!((back.seq, back.head), (3, 5), "an older ack never moves the cursor back");
    assert_eq!(c.ack(&ack(6)).await.unwrap_err().code(), Some("seq_beyond_head"));
    assert_eq!(c.ack(&ack(-1)).await.unwrap_err().code(), Some("invalid_field"));
    assert_eq!(c.ack(&AckRequest { device: None, seq: 1 }).await.unwrap_err().code(), Some("invalid_field"));
    assert_eq!(c.ack(&ack(5)).await.unwrap().seq, 5);
    let status = c.status().await.unwrap();
    assert_eq!((status.user.as_str(), status.head), ("alice", 5));
    let devices: Vec<(&str, i64)> = status.devices.iter().map(|d| (d.id.as_str(), d.ack_seq)).collect();
    assert_eq!(devices, vec![("laptop", 5), ("phone", 0)]);
    assert!(status.devices.iter().all(|d| d.last_seen >= d.created_at && d.last_seen <= status.server_time));
}

async fn acknowledged_ops_survive_a_restart(s: TestServer) {
    let c = s.client("alice");
    let mut acked = Vec::new();
    for i in 0..10u8 {
        acked.extend(c.push(&push_of(vec![op(&[i])])).await.unwrap().results);
    }
    let s = s.restart().await;
    let log = s.client("alice").pull_all(0).await.unwrap();
    assert_eq!(
        log.ops.iter().map(|o| (o.id, o.seq)).collect::<Vec<_>>(),
        acked.iter().map(|r| (r.id, r.seq)).collect::<Vec<_>>()
    );
    // Retrying after the restart is answered as a duplicate.
    let retry = s.client("alice").push(&push_of(vec![log.ops[0].clone_as_new()])).await.unwrap();
    assert_eq!((retry.results[0].seq, retry.results[0].status), (1, OpStatus::Duplicate));
}

async fn compression_both_ways(s: TestServer) {
    use std::io::Write as _;
    let token = s.token("alice");
    let body = serde_json::to_vec(&push_of((0..50u8).map(|i| op(&[i; 100])).collect())).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let http = awc::Client::default();
    let res = http
        .post(s.url("/v1/ops"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Content-Encoding", "gzip"))
        .send_body(gz)
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "a gzip request body is accepted");
    let res = http
        .get(s.url("/v1/ops?since=0"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Accept-Encoding", "gzip"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip", "responses are compressed on request");
}

async fn health_and_readiness(s: TestServer) {
    let http = awc::Client::default();
    assert_eq!(http.get(s.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(s.url("/")).send().await.unwrap().status(), 200);
}

/// Turns a stored op back into what a client would resend.
trait CloneAsNew {
    fn clone_as_new(&self) -> opsync::protocol::NewOp;
}

impl CloneAsNew for opsync::protocol::Op {
    fn clone_as_new(&self) -> opsync::protocol::NewOp {
        opsync::protocol::NewOp {
            id: self.id,
            payload: self.payload.clone(),
            entity: self.entity.clone(),
            kind: self.kind.clone(),
            base: self.base,
            ts: self.ts,
        }
    }
}

async fn json_bodies_use_the_documented_keys(s: TestServer) {
    use serde_json::{Value, json};
    let http = awc::Client::default();
    let auth = ("Authorization", format!("Bearer {}", s.token("alice")));
    let id = OpId::generate().to_string();
    let body = json!({"ops": [{"id": id, "payload": "aGk=", "entity": "e", "kind": "put", "ts": 5}]});
    let mut res = http
        .post(s.url("/v1/ops"))
        .insert_header(auth.clone())
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    assert_eq!(res.headers().get("content-type").unwrap(), "application/json");
    let pushed: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(
        pushed,
        json!({"results": [{"id": id, "seq": 1, "status": "stored"}], "head": 1, "snapshot_seq": 0, "snapshot_due": false})
    );
    let body = json!({"ops": [{"id": OpId::generate().to_string(), "payload": ""}]});
    http.post(s.url("/v1/ops"))
        .insert_header(auth.clone())
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    let mut res = http.get(s.url("/v1/ops?since=0")).insert_header(auth).send().await.unwrap();
    let page: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&page), ["has_more", "head", "ops", "snapshot_due", "snapshot_seq"]);
    assert_eq!(keys(&page["ops"][0]), ["device", "entity", "id", "kind", "payload", "received_at", "seq", "ts"]);
    assert_eq!(keys(&page["ops"][1]), ["device", "id", "payload", "received_at", "seq"]);
    assert_eq!(page["ops"][1]["device"], Value::Null);
    assert_eq!((page["ops"][0]["payload"].as_str(), page["ops"][0]["ts"].as_i64()), (Some("aGk="), Some(5)));
}

/// Group commit: pushes that arrive while a commit is in flight go into the next
/// transaction together, on both backends.
async fn concurrent_pushes_share_transactions(s: TestServer) {
    use std::sync::atomic::Ordering;
    let stats = s.state.log.writer_stats();
    let before = (stats.transactions.load(Ordering::Relaxed), stats.commands.load(Ordering::Relaxed));
    let pushes = (0..64).map(|i| {
        let c = s.client(&format!("user{}", i % 16));
        async move {
            for _ in 0..5 {
                c.push(&push_of(vec![op(b"x")])).await.unwrap();
            }
        }
    });
    join_all(pushes).await;
    let transactions = stats.transactions.load(Ordering::Relaxed) - before.0;
    let commands = stats.commands.load(Ordering::Relaxed) - before.1;
    assert_eq!(commands, 320);
    assert!(transactions < commands, "{commands} pushes took {transactions} transactions: nothing was merged");
}

/// Two server processes on one Postgres: pushes to one user from both stay gapless,
/// each op at the seq its push was answered.
#[actix_web::test]
async fn two_nodes_on_one_postgres_keep_one_gapless_order() {
    let Some(a) = TestServer::start(Backend::Postgres).await else { return };
    let shared =
        Storage { backend: Backend::Postgres, db: a.storage.db.clone(), dir: tempfile::tempdir().unwrap(), pg: None };
    let b = TestServer::on(shared, biscuit_auth::KeyPair::from(&a.root.private()), Default::default());
    let pushers = (0..16).map(|p| {
        let c = if p % 2 == 0 { a.client("shared") } else { b.client("shared") };
        async move {
            let mut acked = Vec::new();
            for i in 0..20u8 {
                let res = c.push(&push_of(vec![op(&[p, i]), op(&[p, i, 1])])).await.unwrap();
                acked.extend(res.results.into_iter().map(|r| (r.id, r.seq)));
            }
            acked
        }
    });
    let acked: HashMap<OpId, i64> = join_all(pushers).await.into_iter().flatten().collect();
    for node in [&a, &b] {
        let log = node.client("shared").pull_all(0).await.unwrap();
        assert_eq!(log.ops.iter().map(|o| o.seq).collect::<Vec<_>>(), (1..=640).collect::<Vec<_>>());
        assert!(log.ops.iter().all(|o| acked.get(&o.id) == Some(&o.seq)));
    }
    drop(b);
}

/// Postgres drops every connection (a restart, a failover): the server answers 503
/// at worst, reconnects by itself, and loses nothing it acknowledged.
#[actix_web::test]
async fn lost_postgres_connections_are_replaced() {
    use diesel::{Connection as _, RunQueryDsl as _};
    let Some(s) = TestServer::start(Backend::Postgres).await else { return };
    let c = s.client("alice");
    let first = c.push(&push_of(vec![op(b"before")])).await.unwrap();
    c.pull(0, None).await.unwrap();
    let name = s.storage.pg.as_ref().unwrap().name.clone();
    let mut admin = diesel::pg::PgConnection::establish(&format!("{}/postgres", pg_base_url())).unwrap();
    diesel::sql_query(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .execute(&mut admin)
    .unwrap();
    // Each request may meet one dead connection (503 unavailable); retries succeed.
    let again = op(b"after");
    let mut pushed = None;
    for _ in 0..5 {
        match c.push(&push_of(vec![again.clone()])).await {
            Ok(res) => {
                pushed = Some(res);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some("unavailable"), "{e}"),
        }
    }
    assert_eq!(pushed.expect("the writer reconnects").results[0].seq, 2);
    let mut log = None;
    for _ in 0..10 {
        match c.pull(0, None).await {
            Ok(page) => {
                log = Some(page);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some("unavailable"), "{e}"),
        }
    }
    let log = log.expect("the pool replaces dead connections");
    assert_eq!(log.ops.iter().map(|o| o.id).collect::<Vec<_>>(), vec![first.results[0].id, again.id]);
}
