//! Retention, compaction, tombstones, the horizon and account deletion, on SQLite
//! and Postgres. DESIGN.md invariant 7 (a pull below the horizon gets an explicit
//! answer), and a property test: after any mix of pushes, deletes, snapshots and
//! compactions, snapshot + remaining ops rebuild the state of the full log under
//! last-writer-wins, and so does every device whose cursor is at or above the
//! horizon.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use opsync::client::Client;
use opsync::db;
use opsync::ids::{DeviceId, OpId, UserId};
use opsync::log::{Compacted, Retention, now_ms, retention};
use opsync::protocol::{AckRequest, NewOp, Op};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

both_backends!(
    pruning_stops_at_the_snapshot_and_pulls_below_get_410,
    young_ops_are_kept,
    per_entity_compaction_keeps_the_newest_and_tombstones,
    pulls_racing_compaction_never_see_a_hole,
    concurrent_compactions_agree,
    account_deletion_removes_everything,
);

const DAY_MS: i64 = 24 * 3600 * 1000;

fn policy(compact_entities: bool) -> Retention {
    Retention { compact_entities, compact_interval: Duration::ZERO, ..Retention::default() }
}

/// Compacts `user` as if `later_ms` had passed.
async fn compact(s: &TestServer, user: &str, policy: Retention, later_ms: i64) -> Compacted {
    let user = user.to_owned();
    s.state.log.with_conn(move |conn| retention::compact_user(conn, &user, &policy, now_ms() + later_ms)).await.unwrap()
}

async fn push_plain(c: &Client, n: usize) {
    c.push(&push_of((0..n).map(|i| op(format!("op {i}").as_bytes())).collect())).await.unwrap();
}

async fn pruning_stops_at_the_snapshot_and_pulls_below_get_410(s: TestServer) {
    let c = s.client("alice");
    push_plain(&c, 10).await;
    c.ack(&AckRequest { device: Some(DeviceId::new("phone").unwrap()), seq: 2 }).await.unwrap();
    c.ack(&AckRequest { device: Some(DeviceId::new("laptop").unwrap()), seq: 9 }).await.unwrap();
    // Without a snapshot nothing is pruned, however old.
    let done = compact(&s, "alice", policy(false), 365 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.horizon), (0, 0));
    c.put_snapshot(6, b"state at 6".to_vec()).await.unwrap();
    let done = compact(&s, "alice", policy(false), 31 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.horizon_before, done.horizon), (6, 0, 6));
    assert_eq!(s.stored_ops("alice").await, 4);

    for since in [0, 3, 5] {
        let err = c.pull(since, None).await.unwrap_err();
        let opsync::client::ClientError::Api { status, body } = err else { panic!("not an API error") };
        assert_eq!((status, body.error.as_str()), (410, "resync_required"));
        assert_eq!((body.horizon, body.snapshot_seq), (Some(6), Some(6)));
    }
    let tail = c.pull(6, None).await.unwrap();
    assert_eq!(tail.ops.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    let status = c.status().await.unwrap();
    assert_eq!(status.horizon, 6);
    assert_eq!(status.stale_devices, vec!["phone".to_owned()]);
    assert_eq!(status.snapshot.unwrap().seq, 6);

    // A snapshot below the horizon is refused; the horizon never moves back.
    let err = c.put_snapshot(5, b"old".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Some("snapshot_below_horizon"));
    c.put_snapshot(6, b"state at 6, again".to_vec()).await.unwrap();
    let done = compact(&s, "alice", policy(false), 31 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.horizon), (0, 6));
    // Pushes go on from the head; a later snapshot lets the horizon follow.
    push_plain(&c, 2).await;
    c.put_snapshot(12, b"state at 12".to_vec()).await.unwrap();
    let done = compact(&s, "alice", policy(false), 31 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.horizon), (6, 12));
    assert_eq!(c.pull(12, None).await.unwrap().ops.len(), 0);
    // Another user is untouched.
    assert_eq!(s.client("bob").pull(0, None).await.unwrap().head, 0);
}

async fn young_ops_are_kept(s: TestServer) {
    let c = s.client("alice");
    push_plain(&c, 10).await;
    c.put_snapshot(10, b"all".to_vec()).await.unwrap();
    // Within the 30-day window: nothing goes, in either mode.
    for entities in [false, true] {
        let done = compact(&s, "alice", policy(entities), 29 * DAY_MS).await;
        assert_eq!((done.ops_removed, done.horizon), (0, 0));
    }
    assert_eq!(c.pull_all(0).await.unwrap().ops.len(), 10);
    // The server's own compaction uses the real clock: nothing is old enough.
    let all = s.state.log.compact_all().await.unwrap().unwrap();
    assert!(all.iter().all(|c| c.ops_removed == 0));
}

fn del(entity: &str) -> NewOp {
    NewOp { kind: Some("del".into()), ..entity_op(entity, None, b"") }
}

async fn per_entity_compaction_keeps_the_newest_and_tombstones(s: TestServer) {
    let c = s.client("alice");
    // 1 a, 2 b, 3 a, 4 (no entity), 5 del b, 6 a
    let ops = vec![
        entity_op("a", None, b"a1"),
        entity_op("b", None, b"b1"),
        entity_op("a", None, b"a2"),
        op(b"plain"),
        del("b"),
        entity_op("a", None, b"a3"),
    ];
    c.push(&push_of(ops)).await.unwrap();
    assert_eq!(c.status().await.unwrap().tombstones, 1);
    // No snapshot: superseded ops go, the rest stays; the horizon does not move.
    let done = compact(&s, "alice", policy(true), 31 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.horizon), (3, 0));
    let log = c.pull_all(0).await.unwrap();
    assert_eq!(log.ops.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    // A snapshot at 6; the tombstone's TTL (90 days) has not expired: only the
    // covered op without an entity goes, and the horizon moves to it.
    c.put_snapshot(6, b"{a: a3}".to_vec()).await.unwrap();
    let done = compact(&s, "alice", policy(true), 31 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.tombstones_removed, done.horizon), (1, 0, 4));
    assert_eq!(c.pull_all(4).await.unwrap().ops.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![5, 6]);
    // After the TTL the tombstone goes too.
    let done = compact(&s, "alice", policy(true), 91 * DAY_MS).await;
    assert_eq!((done.ops_removed, done.tombstones_removed, done.horizon), (1, 1, 5));
    assert_eq!(c.pull_all(5).await.unwrap().ops.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![6]);
    assert_eq!(c.pull(4, None).await.unwrap_err().code(), Some("resync_required"));
    let status = c.status().await.unwrap();
    assert_eq!((status.tombstones, status.horizon), (0, 5));
    // A forgotten entity starts over: a push based on 0 passes.
    c.push(&push_of(vec![entity_op("b", Some(0), b"b again")])).await.unwrap();
    // A `put` after a `del` clears the tombstone.
    c.push(&push_of(vec![del("a")])).await.unwrap();
    assert_eq!(c.status().await.unwrap().tombstones, 1);
    c.push(&push_of(vec![entity_op("a", None, b"back")])).await.unwrap();
    assert_eq!(c.status().await.unwrap().tombstones, 0);
}

async fn pulls_racing_compaction_never_see_a_hole(s: TestServer) {
    let c = s.client("alice");
    for _ in 0..4 {
        push_plain(&c, 500).await;
    }
    c.put_snapshot(2000, b"all".to_vec()).await.unwrap();
    let compaction = {
        let state = s.state.clone();
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            let policy = policy(false);
            state
                .log
                .with_conn(move |conn| retention::compact_user(conn, "alice", &policy, now_ms() + DAY_MS * 31))
                .await
        })
    };
    let mut refused = 0;
    for _ in 0..40 {
        match c.pull(0, Some(500)).await {
            Ok(page) => {
                let seqs: Vec<i64> = page.ops.iter().map(|o| o.seq).collect();
                assert_eq!(seqs, (1..=500).collect::<Vec<_>>(), "a page from 0 is whole or refused");
            }
            Err(e) => {
                assert_eq!(e.code(), Some("resync_required"));
                refused += 1;
            }
        }
    }
    assert_eq!(compaction.await.unwrap().unwrap().horizon, 2000);
    assert!(refused > 0 || c.pull(0, None).await.is_err());
}

async fn concurrent_compactions_agree(s: TestServer) {
    for user in ["u1", "u2", "u3"] {
        let c = s.client(user);
        push_plain(&c, 50).await;
        c.put_snapshot(40, b"x".to_vec()).await.unwrap();
    }
    // Four "nodes" compact at once, each on its own connection.
    let url = s.config.db.clone();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut conn = db::connect(&url).unwrap();
                let policy = policy(false);
                let mut out = Vec::new();
                for user in ["u1", "u2", "u3"] {
                    out.push(retention::compact_user(&mut conn, user, &policy, now_ms() + 31 * DAY_MS).unwrap());
                }
                let all = retention::compact_all(&mut conn, &policy, now_ms() + 31 * DAY_MS).unwrap();
                (out, all)
            })
        })
        .collect();
    let mut removed = 0;
    for h in handles {
        let (out, all) = h.join().unwrap();
        removed += out.iter().map(|c| c.ops_removed).sum::<u64>();
        removed += all.map_or(0, |all| all.iter().map(|c| c.ops_removed).sum::<u64>());
        assert!(out.iter().all(|c| c.horizon == 40));
    }
    assert_eq!(removed, 3 * 40, "each op removed exactly once");
    for user in ["u1", "u2", "u3"] {
        assert_eq!(s.stored_ops(user).await, 10);
    }
}

async fn account_deletion_removes_everything(s: TestServer) {
    let alice = s.client("alice");
    alice.push(&push_from("phone", vec![entity_op("a", None, b"1"), del("b"), op(b"x")])).await.unwrap();
    alice.put_snapshot(2, b"snap".to_vec()).await.unwrap();
    alice.ack(&AckRequest { device: Some(DeviceId::new("phone").unwrap()), seq: 3 }).await.unwrap();
    let bob = s.client("bob");
    bob.push(&push_of(vec![op(b"bob's")])).await.unwrap();
    bob.put_snapshot(1, b"bob's snap".to_vec()).await.unwrap();

    // A read-only token may not delete the account.
    let read_only = s.token_with(opsync::auth::TokenSpec {
        user: UserId::new("alice").unwrap(),
        device: None,
        ttl: Duration::from_secs(60),
        write: false,
        admin: false,
    });
    let err = Client::new(s.base.clone(), read_only).delete_account().await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));

    let deleted = alice.delete_account().await.unwrap();
    assert_eq!((deleted.ops, deleted.snapshots, deleted.devices, deleted.entities), (3, 1, 1, 2));
    assert_eq!(s.stored_ops("alice").await, 0);
    let status = alice.status().await.unwrap();
    assert_eq!((status.head, status.horizon, status.devices.len(), status.tombstones), (0, 0, 0, 0));
    assert!(status.snapshot.is_none());
    assert_eq!(alice.snapshot(None).await.unwrap_err().code(), Some("no_snapshot"));
    // Deleting again is harmless; bob is untouched.
    assert_eq!(alice.delete_account().await.unwrap().ops, 0);
    assert_eq!(bob.pull_all(0).await.unwrap().ops.len(), 1);
    assert_eq!(bob.snapshot(None).await.unwrap().1, b"bob's snap");
    // The user may start over from seq 1.
    assert_eq!(alice.push(&push_of(vec![op(b"new life")])).await.unwrap().head, 1);
}

/// The server's own periodic compaction (started by `app::run`) prunes on its own.
async fn the_server_compacts_periodically(backend: Backend) {
    let Some(s) = TestServer::start_tweaked(backend, |config| {
        config.retention.retention = Duration::ZERO;
        config.retention.compact_interval = Duration::from_millis(100);
    })
    .await
    else {
        return;
    };
    let c = s.client("alice");
    push_plain(&c, 10).await;
    c.put_snapshot(8, b"state at 8".to_vec()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.status().await.unwrap().horizon != 8 {
        assert!(std::time::Instant::now() < deadline, "no compaction within 10 s");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.stored_ops("alice").await, 2);
    assert_eq!(c.pull(0, None).await.unwrap_err().code(), Some("resync_required"));
}

#[actix_web::test]
async fn sqlite_the_server_compacts_periodically() {
    the_server_compacts_periodically(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_the_server_compacts_periodically() {
    the_server_compacts_periodically(Backend::Postgres).await;
}

// ---- The property test ------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Put {
        entity: u8,
        byte: u8,
    },
    Del {
        entity: u8,
    },
    Plain {
        byte: u8,
    },
    /// Upload a snapshot at head minus `lag` (not below the horizon).
    Snapshot {
        lag: i64,
    },
    /// Compact; `days` later; optionally per entity.
    Compact {
        entities: bool,
        days: i64,
    },
    /// Remember a device whose cursor is at the head now.
    Device,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u8..4, any::<u8>()).prop_map(|(entity, byte)| Step::Put { entity, byte }),
        2 => (0u8..4).prop_map(|entity| Step::Del { entity }),
        2 => any::<u8>().prop_map(|byte| Step::Plain { byte }),
        2 => (0i64..3).prop_map(|lag| Step::Snapshot { lag }),
        2 => (any::<bool>(), prop_oneof![Just(1i64), Just(100)]).prop_map(|(entities, days)| Step::Compact { entities, days }),
        1 => Just(Step::Device),
    ]
}

/// The reference model: last writer wins per entity; ops without an entity are
/// appended to a list, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct State {
    entities: BTreeMap<String, Vec<u8>>,
    plain: Vec<Vec<u8>>,
}

impl State {
    fn apply(&mut self, entity: Option<&str>, kind: Option<&str>, payload: &[u8]) {
        match (entity, kind) {
            (Some(e), Some("del")) => {
                self.entities.remove(e);
            }
            (Some(e), _) => {
                self.entities.insert(e.to_owned(), payload.to_vec());
            }
            (None, _) => self.plain.push(payload.to_vec()),
        }
    }

    fn apply_ops(&mut self, ops: &[Op]) {
        for op in ops {
            self.apply(op.entity.as_deref(), op.kind.as_deref(), &op.payload.0);
        }
    }
}

fn state_at(log: &[NewOp], seq: i64) -> State {
    let mut state = State::default();
    for op in &log[..seq as usize] {
        state.apply(op.entity.as_deref(), op.kind.as_deref(), &op.payload.0);
    }
    state
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

async fn check(
    s: &TestServer,
    c: &Client,
    log: &[NewOp],
    devices: &[i64],
    last_horizon: &mut i64,
    gapless: bool,
) -> Result<(), TestCaseError> {
    let head = log.len() as i64;
    let want = state_at(log, head);
    let status = c.status().await.map_err(fail)?;
    prop_assert!(status.horizon >= *last_horizon, "the horizon moved back");
    *last_horizon = status.horizon;
    // A new device: the snapshot (if any) plus the ops after it.
    let (from, mut state) = match c.snapshot(None).await {
        Ok((seq, bytes)) => (seq, serde_json::from_slice::<State>(&bytes).map_err(fail)?),
        Err(e) => {
            prop_assert_eq!(e.code(), Some("no_snapshot"));
            prop_assert_eq!(status.horizon, 0, "a horizon without a snapshot");
            (0, State::default())
        }
    };
    prop_assert!(from >= status.horizon, "the latest snapshot {} is below the horizon {}", from, status.horizon);
    let tail = c.pull_all(from).await.map_err(fail)?;
    state.apply_ops(&tail.ops);
    prop_assert_eq!(&state, &want, "snapshot at {} + tail differs from the full log", from);
    if gapless {
        let seqs: Vec<i64> = tail.ops.iter().map(|o| o.seq).collect();
        prop_assert_eq!(seqs, (from + 1..=head).collect::<Vec<_>>());
    }
    // Devices that kept up: at or above the horizon they catch up incrementally;
    // below it they are told to resync.
    for &cursor in devices {
        match c.pull_all(cursor).await {
            Ok(page) => {
                prop_assert!(cursor >= status.horizon);
                let mut state = state_at(log, cursor);
                state.apply_ops(&page.ops);
                prop_assert_eq!(&state, &want, "device at {} catching up", cursor);
            }
            Err(e) => {
                prop_assert!(cursor < status.horizon, "device at {} refused: {}", cursor, e);
                prop_assert_eq!(e.code(), Some("resync_required"));
            }
        }
    }
    let _ = s;
    Ok(())
}

async fn run(s: &TestServer, user: &str, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let c = s.client(user);
    let mut log: Vec<NewOp> = Vec::new();
    let mut devices = Vec::new();
    let mut horizon = 0;
    let mut gapless = true;
    for step in steps {
        let new = match step {
            Step::Put { entity, byte } => Some(entity_op(&format!("e{entity}"), None, &[byte])),
            Step::Del { entity } => Some(del(&format!("e{entity}"))),
            Step::Plain { byte } => Some(op(&[byte])),
            Step::Snapshot { lag } => {
                let seq = (log.len() as i64 - lag).max(horizon);
                let bytes = serde_json::to_vec(&state_at(&log, seq)).map_err(fail)?;
                c.put_snapshot(seq, bytes).await.map_err(fail)?;
                None
            }
            Step::Compact { entities, days } => {
                let done = compact(s, user, policy(entities), days * DAY_MS).await;
                gapless &= !entities;
                prop_assert!(done.horizon >= done.horizon_before);
                check(s, &c, &log, &devices, &mut horizon, gapless).await?;
                None
            }
            Step::Device => {
                devices.push(log.len() as i64);
                None
            }
        };
        if let Some(new) = new {
            let res = c.push(&push_of(vec![new.clone()])).await.map_err(fail)?;
            log.push(new);
            prop_assert_eq!(res.head, log.len() as i64);
        }
    }
    check(s, &c, &log, &devices, &mut horizon, gapless).await
}

fn compaction_keeps_state(backend: Backend) {
    let system = actix_web::rt::System::new();
    let Some(server) = system.block_on(TestServer::start(backend)) else { return };
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let result = runner.run(&prop::collection::vec(step(), 1..50), |steps| {
        let user = format!("model-{}", OpId::generate());
        system.block_on(run(&server, &user, steps))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_compaction_keeps_state() {
    compaction_keeps_state(Backend::Sqlite);
}

#[test]
fn postgres_compaction_keeps_state() {
    compaction_keeps_state(Backend::Postgres);
}
