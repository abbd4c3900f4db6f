//! A model-based property test of a user's whole log lifecycle, through the real
//! server, on SQLite and Postgres: random sequences of pushes (new ops, `del` ops,
//! retries, reused ids, stale and ahead heads, entity bases), acks, snapshot
//! uploads, compactions at chosen clocks (prefix and per-entity), account
//! deletion and server restarts, against a simple in-memory reference.
//!
//! Every answer is compared with what the reference predicts. After each
//! compaction, each restart and at the end, the whole state is compared: the
//! pullable log (every field), the head, the horizon, `410 resync_required` for
//! every cursor below it, `409 since_beyond_head` above the head, the snapshots
//! kept and served, the devices and their cursors, the tombstones, and, straight
//! from the database, which op rows, snapshot rows and entity rows exist.
//!
//! `tests/log_props.rs` checks the push semantics alone on a log that only grows;
//! this test adds everything that shrinks, forgets or restarts it.
//!
//! Cases and steps: `PROPTEST_CASES` (default 48) and `OPSYNC_MODEL_STEPS`
//! (default 60, the longest sequence).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use actix_web::web;
use common::*;
use opsync::app::AppState;
use opsync::client::{Client, ClientError};
use opsync::ids::{DeviceId, OpId};
use opsync::log::{Compacted, Retention, now_ms, retention};
use opsync::protocol::{AckRequest, ErrorBody, NewOp, OnStale, OpResult, OpStatus, PushRequest, PushResponse};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// The server's settings, small enough for a few dozen steps to reach them.
const KEEP_SNAPSHOTS: usize = 2;
const SNAPSHOT_EVERY: i64 = 5;
const RETENTION_MS: i64 = 30 * DAY_MS;
const TOMBSTONE_TTL_MS: i64 = 90 * DAY_MS;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---- Steps ------------------------------------------------------------------

/// A new op of a push.
#[derive(Debug, Clone)]
struct NewSpec {
    entity: Option<u8>,
    del: bool,
    byte: u8,
    ts: bool,
}

/// The clock a compaction runs at.
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// Now, through `Log::compact_user` and the server's own policy: nothing is
    /// old enough, so nothing may change.
    Now,
    /// The retention cut falls on the k-th op above the horizon (by its
    /// `received_at`): older ones are old, it and younger ones are not.
    Split(usize),
    /// 31 days on: every op is old, no tombstone has expired.
    Month,
    /// 100 days on: every op is old, every tombstone has expired.
    Season,
}

#[derive(Debug, Clone)]
enum Step {
    /// New ops and retries of earlier ones (possibly pruned or deleted since),
    /// from a device, with an expected head `behind` the head (accepted).
    Push { new: Vec<NewSpec>, retries: Vec<usize>, device: Option<u8>, behind: Option<i64> },
    /// A stored op's id with another payload, maybe after a new op: refused whole.
    Reuse { earlier: usize, also_new: bool },
    /// `on_stale: reject` with an expected head `behind` the head (-1: ahead of it).
    Optimistic { behind: i64 },
    /// An op on an entity based on its last seq minus `lag` (-1: one past it).
    Based { entity: u8, lag: i64 },
    /// Only retries, with `on_stale: reject` and expected head 0: a pure retry
    /// skips the head check.
    RetryStale { earlier: Vec<usize> },
    /// Ack a device at the head minus `lag` (-1: beyond the head).
    Ack { device: u8, lag: i64 },
    /// Upload a snapshot at the head minus `lag` (may be below the horizon, or
    /// negative).
    Snapshot { lag: i64 },
    /// Compact at a clock, by prefix or per entity.
    Compact { per_entity: bool, clock: Clock },
    /// `DELETE /v1/account`.
    DeleteAccount,
    /// Stop the server and start a new one on the same database.
    Restart,
}

fn new_spec() -> impl Strategy<Value = NewSpec> {
    (prop::option::of(0u8..3), prop::bool::weighted(0.3), any::<u8>(), any::<bool>())
        .prop_map(|(entity, del, byte, ts)| NewSpec { entity, del: del && entity.is_some(), byte, ts })
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        1 => Just(Clock::Now),
        2 => any::<usize>().prop_map(Clock::Split),
        2 => Just(Clock::Month),
        2 => Just(Clock::Season),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (
            prop::collection::vec(new_spec(), 0..4),
            prop::collection::vec(any::<usize>(), 0..3),
            prop::option::of(0u8..2),
            prop::option::of(0i64..3),
        )
            .prop_map(|(new, retries, device, behind)| Step::Push { new, retries, device, behind }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(earlier, also_new)| Step::Reuse { earlier, also_new }),
        1 => (-1i64..3).prop_map(|behind| Step::Optimistic { behind }),
        2 => (0u8..3, -1i64..2).prop_map(|(entity, lag)| Step::Based { entity, lag }),
        1 => prop::collection::vec(any::<usize>(), 1..3).prop_map(|earlier| Step::RetryStale { earlier }),
        2 => (0u8..3, -1i64..3).prop_map(|(device, lag)| Step::Ack { device, lag }),
        4 => (-1i64..4).prop_map(|lag| Step::Snapshot { lag }),
        4 => (any::<bool>(), clock()).prop_map(|(per_entity, clock)| Step::Compact { per_entity, clock }),
        1 => Just(Step::DeleteAccount),
        1 => Just(Step::Restart),
    ]
}

// ---- The reference ----------------------------------------------------------

/// A stored op as the reference holds it.
#[derive(Debug, Clone)]
struct Stored {
    op: NewOp,
    device: Option<String>,
}

/// One user's log as the documentation describes it.
#[derive(Debug, Default)]
struct Model {
    head: i64,
    /// Every op row the database holds, by seq (some may be below the horizon:
    /// per-entity compaction keeps an entity's newest op wherever it is).
    ops: BTreeMap<i64, Stored>,
    /// `received_at` of ops, learned from pulls (the server's clock).
    received: HashMap<i64, i64>,
    horizon: i64,
    /// The highest seq a snapshot was ever stored at (0: none).
    snapshot_seq: i64,
    /// The snapshots kept: the newest `KEEP_SNAPSHOTS`.
    snapshots: BTreeMap<i64, Vec<u8>>,
    /// Entity → (last seq, whether that op is a `del`): the rows of `entities`.
    entities: BTreeMap<String, (i64, bool)>,
    /// Device → cursor.
    devices: BTreeMap<String, i64>,
    /// Every op ever pushed, also those pruned or deleted since: retries pick here.
    history: Vec<NewOp>,
    /// The ids of every op ever stored. A retry of one that was pruned or deleted
    /// since is stored anew: the server deduplicates against the ops it holds.
    ever_stored: std::collections::HashSet<OpId>,
}

/// What the server must answer: a status and an error code (with the `head`
/// field where the code carries one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: u16,
    code: &'static str,
    head: Option<i64>,
}

fn refusal(status: u16, code: &'static str, head: Option<i64>) -> Refusal {
    Refusal { status, code, head }
}

impl Model {
    fn seq_of(&self, id: OpId) -> Option<i64> {
        self.ops.iter().find(|(_, s)| s.op.id == id).map(|(seq, _)| *seq)
    }

    fn tombstones(&self) -> i64 {
        self.entities.values().filter(|(_, del)| *del).count() as i64
    }

    fn resync_snapshot_seq(&self) -> Option<i64> {
        (self.snapshot_seq > 0).then_some(self.snapshot_seq)
    }

    /// The documented push decision (docs/protocol.md, "Semantics").
    fn plan_push(&self, req: &PushRequest) -> Result<(Vec<OpResult>, i64), Refusal> {
        let reused: Vec<OpId> = req
            .ops
            .iter()
            .filter(|op| {
                self.seq_of(op.id).is_some_and(|seq| {
                    let s = &self.ops[&seq].op;
                    (&s.payload, &s.entity, &s.kind) != (&op.payload, &op.entity, &op.kind)
                })
            })
            .map(|op| op.id)
            .collect();
        if !reused.is_empty() {
            return Err(refusal(409, "op_id_conflict", None));
        }
        let fresh: Vec<&NewOp> = req.ops.iter().filter(|op| self.seq_of(op.id).is_none()).collect();
        if !fresh.is_empty() {
            if let Some(expected) = req.expected_head {
                if expected > self.head {
                    return Err(refusal(409, "head_ahead", Some(self.head)));
                }
                if expected < self.head && req.on_stale == Some(OnStale::Reject) {
                    return Err(refusal(409, "stale_head", Some(self.head)));
                }
            }
            let mut conflict = false;
            for op in &fresh {
                let (Some(base), Some(entity)) = (op.base, &op.entity) else { continue };
                if base > self.head {
                    return Err(refusal(400, "invalid_op", Some(self.head)));
                }
                conflict |= self.entities.get(entity).map_or(0, |(last, _)| *last) > base;
            }
            if conflict {
                return Err(refusal(409, "entity_conflict", None));
            }
        }
        let mut next = self.head;
        let results = req
            .ops
            .iter()
            .map(|op| match self.seq_of(op.id) {
                Some(seq) => OpResult { id: op.id, seq, status: OpStatus::Duplicate },
                None => {
                    next += 1;
                    OpResult { id: op.id, seq: next, status: OpStatus::Stored }
                }
            })
            .collect();
        Ok((results, next))
    }

    /// Applies an accepted push.
    fn apply_push(&mut self, req: &PushRequest, results: &[OpResult]) {
        let device = req.device.as_ref().map(|d| d.as_str().to_owned());
        for (op, result) in req.ops.iter().zip(results) {
            if result.status != OpStatus::Stored {
                continue;
            }
            self.ops.insert(result.seq, Stored { op: op.clone(), device: device.clone() });
            self.ever_stored.insert(op.id);
            if let Some(entity) = &op.entity {
                self.entities.insert(entity.clone(), (result.seq, op.kind.as_deref() == Some("del")));
            }
            self.head = self.head.max(result.seq);
        }
        if let Some(device) = device {
            self.devices.entry(device).or_insert(0);
        }
    }

    /// The documented compaction (docs/protocol.md, "Retention and compaction")
    /// at clock `now`; what it did, as `opsync compact` reports it.
    fn compact(&mut self, user: &str, now: i64, per_entity: bool) -> Result<Compacted, TestCaseError> {
        let cut = now - RETENTION_MS;
        let tombstone_cut = now - TOMBSTONE_TTL_MS;
        let before = self.horizon;
        let received = |seq: i64| {
            self.received.get(&seq).copied().ok_or_else(|| TestCaseError::fail(format!("received_at of {seq} unknown")))
        };
        let mut above = Vec::new();
        for &seq in self.ops.range(before + 1..).map(|(seq, _)| seq) {
            above.push((seq, received(seq)?));
        }
        let first_young = above.iter().find(|(_, at)| *at >= cut).map(|(seq, _)| *seq);
        let mut removed: BTreeSet<i64> = BTreeSet::new();
        let mut forget: Vec<String> = Vec::new();
        let mut horizon = before;
        if !per_entity {
            // A prefix: up to the first young op, never past the latest snapshot.
            let end = first_young.map_or(self.head, |f| f - 1).min(self.snapshot_seq);
            if end > before {
                removed.extend(self.ops.range(..=end).map(|(seq, _)| *seq));
                horizon = end;
            }
        } else {
            for &(seq, at) in above.iter().take_while(|(seq, _)| Some(*seq) != first_young) {
                let covered = seq <= self.snapshot_seq;
                let stored = &self.ops[&seq].op;
                match &stored.entity {
                    None if covered => {
                        removed.insert(seq);
                        horizon = horizon.max(seq);
                    }
                    None => {}
                    Some(entity) => {
                        let last = self.entities.get(entity).map_or(seq, |(last, _)| *last);
                        if seq < last {
                            removed.insert(seq);
                        } else if stored.kind.as_deref() == Some("del") && covered && at < tombstone_cut {
                            removed.insert(seq);
                            forget.push(entity.clone());
                            horizon = horizon.max(seq);
                        }
                    }
                }
            }
        }
        if !per_entity {
            // Tombstones past their TTL whose `del` is at or below the horizon.
            for (entity, &(last, del)) in &self.entities {
                if del && last <= horizon && received(last)? < tombstone_cut {
                    forget.push(entity.clone());
                }
            }
        }
        for seq in &removed {
            self.ops.remove(seq);
        }
        for entity in &forget {
            self.entities.remove(entity);
        }
        self.horizon = horizon;
        Ok(Compacted {
            user: user.to_owned(),
            ops_removed: removed.len() as u64,
            tombstones_removed: forget.len() as u64,
            horizon_before: before,
            horizon,
        })
    }

    /// Stores a snapshot at `seq`, keeping the newest ones.
    fn put_snapshot(&mut self, seq: i64, bytes: Vec<u8>) {
        self.snapshots.insert(seq, bytes);
        while self.snapshots.len() > KEEP_SNAPSHOTS {
            self.snapshots.pop_first();
        }
        self.snapshot_seq = self.snapshot_seq.max(seq);
    }

    /// Account deletion: everything goes but the memory of what was pushed.
    fn delete(&mut self) {
        let history = std::mem::take(&mut self.history);
        let ever_stored = std::mem::take(&mut self.ever_stored);
        *self = Model { history, ever_stored, ..Model::default() };
    }
}

// ---- The run ----------------------------------------------------------------

thread_local! {
    /// What the cases did, by step and outcome, printed at the end (`--nocapture`):
    /// a model test that never reaches a branch proves nothing about it.
    static TALLY: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

fn tally(what: impl Into<String>) {
    TALLY.with(|t| *t.borrow_mut().entry(what.into()).or_default() += 1);
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// The error an answer must be, as (status, code, head).
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Result<(u16, ErrorBody), TestCaseError> {
    match result {
        Err(ClientError::Api { status, body }) => Ok((status, *body)),
        other => Err(fail(format!("expected an error answer, got {other:?}"))),
    }
}

fn check_refusal<T: std::fmt::Debug>(result: Result<T, ClientError>, want: &Refusal) -> Result<(), TestCaseError> {
    let (status, body) = refused(result)?;
    prop_assert_eq!((status, body.error.as_str()), (want.status, want.code), "{}", body.message);
    if want.head.is_some() {
        prop_assert_eq!(body.head, want.head, "the head in {}", want.code);
    }
    Ok(())
}

/// What a step needs of the running server (rebuilt after a restart: the port
/// changes).
struct Conn {
    client: Client,
    state: web::Data<AppState>,
}

fn conn(server: &RefCell<Option<TestServer>>, user: &str, msgpack: bool) -> Conn {
    let guard = server.borrow();
    let s = guard.as_ref().expect("a running server");
    let client = if msgpack { s.client(user).msgpack() } else { s.client(user) };
    Conn { client, state: s.state.clone() }
}

fn device(n: u8) -> DeviceId {
    DeviceId::new(format!("device-{n}")).unwrap()
}

fn new_op(spec: &NewSpec, n: usize) -> NewOp {
    let mut op = op(&[spec.byte, n as u8]);
    if let Some(e) = spec.entity {
        op.entity = Some(format!("entity-{e}"));
        op.kind = Some(if spec.del { "del" } else { "put" }.into());
    }
    if spec.ts {
        op.ts = Some(now_ms() - 1000);
    }
    op
}

/// Pushes `req` and checks the answer against the reference, which it then
/// updates.
async fn push(c: &Conn, m: &mut Model, req: PushRequest) -> Result<(), TestCaseError> {
    for op in &req.ops {
        if !m.history.iter().any(|h| h.id == op.id) {
            m.history.push(op.clone());
        }
    }
    let expected = m.plan_push(&req);
    let answer = c.client.push(&req).await;
    match &expected {
        Ok((results, _)) if results.iter().all(|r| r.status == OpStatus::Duplicate) => tally("push: pure retry"),
        Ok((results, _)) if results.iter().any(|r| r.status == OpStatus::Duplicate) => tally("push: new and retried"),
        Ok(_) => tally("push: new"),
        Err(want) => tally(format!("push: {}", want.code)),
    }
    if let Ok((results, _)) = &expected
        && results.iter().any(|r| r.status == OpStatus::Stored && m.ever_stored.contains(&r.id))
    {
        tally("push: a retry of a pruned or deleted op, stored anew");
    }
    match expected {
        Ok((results, head)) => {
            let res: PushResponse = answer.map_err(fail)?;
            prop_assert_eq!(&res.results, &results);
            prop_assert_eq!(res.head, head);
            m.apply_push(&req, &results);
            prop_assert_eq!(res.snapshot_seq, m.snapshot_seq);
            prop_assert_eq!(res.snapshot_due, m.head - m.snapshot_seq > SNAPSHOT_EVERY);
        }
        Err(want) => check_refusal(answer, &want)?,
    }
    Ok(())
}

/// Retries: earlier ops picked from everything ever pushed, deduplicated.
fn picks(m: &Model, indexes: &[usize]) -> Vec<NewOp> {
    if m.history.is_empty() {
        return Vec::new();
    }
    let mut picked: Vec<usize> = indexes.iter().map(|i| i % m.history.len()).collect();
    picked.sort_unstable();
    picked.dedup();
    picked.into_iter().map(|i| m.history[i].clone()).collect()
}

async fn compact(c: &Conn, m: &mut Model, user: &str, per_entity: bool, clock: Clock) -> Result<(), TestCaseError> {
    // Learn every `received_at` the clock depends on (and check the log on the way).
    check_log(c, m).await?;
    let (done, expected) = match clock {
        Clock::Now => {
            // The Log API with the server's own policy (prefix compaction).
            let done = c.state.log.compact_user(opsync::ids::UserId::new(user).unwrap()).await.map_err(fail)?;
            (done, m.compact(user, now_ms(), false)?)
        }
        clock => {
            let now = match clock {
                Clock::Split(k) => {
                    let above: Vec<i64> = m.ops.range(m.horizon + 1..).map(|(seq, _)| *seq).collect();
                    match above.get(k % above.len().max(1)) {
                        Some(seq) => m.received[seq] + RETENTION_MS,
                        None => now_ms(),
                    }
                }
                Clock::Month => now_ms() + 31 * DAY_MS,
                _ => now_ms() + 100 * DAY_MS,
            };
            let policy = Retention {
                compact_entities: per_entity,
                compact_interval: Duration::ZERO,
                keep_snapshots: KEEP_SNAPSHOTS,
                snapshot_every: SNAPSHOT_EVERY,
                ..Retention::default()
            };
            let owner = user.to_owned();
            let done = c
                .state
                .log
                .with_conn(move |conn| retention::compact_user(conn, &owner, &policy, now))
                .await
                .map_err(fail)?;
            (done, m.compact(user, now, per_entity)?)
        }
    };
    prop_assert_eq!(&done, &expected, "compaction at {:?}", clock);
    let mode = if per_entity && !matches!(clock, Clock::Now) { "per entity" } else { "prefix" };
    let what = match (done.ops_removed, done.tombstones_removed, done.horizon > done.horizon_before) {
        (0, _, _) => "nothing removed",
        (_, 0, false) => "ops removed, horizon kept",
        (_, 0, true) => "ops removed, horizon moved",
        _ => "ops and tombstones removed",
    };
    tally(format!("compact {mode}: {what}"));
    Ok(())
}

/// The pullable log: every op above the horizon, field by field; learns each
/// op's `received_at`.
async fn check_log(c: &Conn, m: &mut Model) -> Result<(), TestCaseError> {
    let log = c.client.pull_all(m.horizon).await.map_err(fail)?;
    prop_assert_eq!(log.head, m.head);
    prop_assert_eq!(log.snapshot_seq, m.snapshot_seq);
    let want: Vec<(&i64, &Stored)> = m.ops.range(m.horizon + 1..).collect();
    prop_assert_eq!(
        log.ops.iter().map(|o| o.seq).collect::<Vec<_>>(),
        want.iter().map(|(seq, _)| **seq).collect::<Vec<_>>(),
        "the seqs above the horizon {}",
        m.horizon
    );
    let mut learned = Vec::new();
    for (got, (seq, stored)) in log.ops.iter().zip(want) {
        let s = &stored.op;
        prop_assert_eq!(
            (&got.id, &got.payload, &got.entity, &got.kind, &got.base, &got.ts, &got.device),
            (&s.id, &s.payload, &s.entity, &s.kind, &s.base, &s.ts, &stored.device),
            "op {}",
            seq
        );
        if let Some(at) = m.received.get(seq) {
            prop_assert_eq!(got.received_at, *at, "received_at of {} changed", seq);
        }
        learned.push((*seq, got.received_at));
    }
    m.received.extend(learned);
    Ok(())
}

/// Everything the server holds for the user, against the reference.
async fn check_all(c: &Conn, m: &mut Model, user: &str) -> Result<(), TestCaseError> {
    check_log(c, m).await?;
    let status = c.client.status().await.map_err(fail)?;
    prop_assert_eq!((status.head, status.horizon, status.tombstones), (m.head, m.horizon, m.tombstones()));
    let devices: BTreeMap<String, i64> = status.devices.iter().map(|d| (d.id.clone(), d.ack_seq)).collect();
    prop_assert_eq!(&devices, &m.devices);
    let stale: Vec<String> = m.devices.iter().filter(|(_, a)| **a < m.horizon).map(|(d, _)| d.clone()).collect();
    prop_assert_eq!(&status.stale_devices, &stale);
    let latest = m.snapshots.last_key_value();
    prop_assert_eq!(status.snapshot.as_ref().map(|s| (s.seq, s.size)), latest.map(|(s, b)| (*s, b.len() as i64)));

    // Below the horizon: an explicit resync, never a page.
    for since in BTreeSet::from([0, m.horizon / 2, m.horizon - 1]).into_iter().filter(|s| *s >= 0 && *s < m.horizon) {
        tally("check: pull below the horizon");
        let (status, body) = refused(c.client.pull(since, None).await)?;
        prop_assert_eq!((status, body.error.as_str()), (410, "resync_required"), "pull since {}", since);
        prop_assert_eq!((body.horizon, body.snapshot_seq), (Some(m.horizon), m.resync_snapshot_seq()));
    }
    let (status, body) = refused(c.client.pull(m.head + 1, None).await)?;
    prop_assert_eq!((status, body.error.as_str(), body.head), (409, "since_beyond_head", Some(m.head)));

    // Snapshots: the latest, each kept one by `at_or_before`, none below them.
    match latest {
        Some((seq, bytes)) => prop_assert_eq!(c.client.snapshot(None).await.map_err(fail)?, (*seq, bytes.clone())),
        None => prop_assert_eq!(refused(c.client.snapshot(None).await)?.1.error, "no_snapshot"),
    }
    for (seq, bytes) in &m.snapshots {
        prop_assert_eq!(c.client.snapshot(Some(*seq)).await.map_err(fail)?, (*seq, bytes.clone()));
    }
    if let Some(first) = m.snapshots.keys().next().filter(|s| **s > 0) {
        prop_assert_eq!(refused(c.client.snapshot(Some(first - 1)).await)?.1.error, "no_snapshot");
    }

    // The rows themselves: hidden ops below the horizon, pruned snapshots,
    // forgotten entities.
    let owner = user.to_owned();
    let (seqs, snapshots, entities) = c
        .state
        .log
        .with_conn(move |conn| {
            use diesel::prelude::*;
            use opsync::db::schema::{entities, ops, snapshots};
            let seqs: Vec<i64> =
                ops::table.filter(ops::user_id.eq(&owner)).order(ops::seq.asc()).select(ops::seq).load(&mut **conn)?;
            let snaps: Vec<i64> = snapshots::table
                .filter(snapshots::user_id.eq(&owner))
                .order(snapshots::seq.asc())
                .select(snapshots::seq)
                .load(&mut **conn)?;
            let ents: Vec<(String, i64, Option<i64>)> = entities::table
                .filter(entities::user_id.eq(&owner))
                .order(entities::entity.asc())
                .select((entities::entity, entities::last_seq, entities::deleted_at))
                .load(&mut **conn)?;
            Ok((seqs, snaps, ents))
        })
        .await
        .map_err(fail)?;
    if seqs.first().is_some_and(|first| *first <= m.horizon) {
        tally("check: op rows kept below the horizon");
    }
    prop_assert_eq!(seqs, m.ops.keys().copied().collect::<Vec<_>>(), "op rows");
    prop_assert_eq!(snapshots, m.snapshots.keys().copied().collect::<Vec<_>>(), "snapshot rows");
    let want: Vec<(String, i64, bool)> = m.entities.iter().map(|(e, (last, del))| (e.clone(), *last, *del)).collect();
    let got: Vec<(String, i64, bool)> = entities.iter().map(|(e, last, at)| (e.clone(), *last, at.is_some())).collect();
    prop_assert_eq!(got, want, "entity rows");
    for (entity, last, deleted_at) in entities {
        if let (Some(at), Some(received)) = (deleted_at, m.received.get(&last)) {
            prop_assert_eq!(at, *received, "the tombstone of {} is dated by its del", entity);
        }
    }
    Ok(())
}

async fn run(server: &RefCell<Option<TestServer>>, msgpack: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    // A user of its own per case: users are independent partitions.
    let user = format!("model-{}", OpId::generate());
    let mut c = conn(server, &user, msgpack);
    let mut m = Model::default();
    for step in steps {
        match step {
            Step::Push { new, retries, device: dev, behind } => {
                let mut ops: Vec<NewOp> = new.iter().enumerate().map(|(i, spec)| new_op(spec, i)).collect();
                ops.extend(picks(&m, &retries));
                if ops.is_empty() {
                    continue;
                }
                let req = PushRequest {
                    ops,
                    device: dev.map(device),
                    expected_head: behind.map(|b| (m.head - b).max(0)),
                    on_stale: None,
                };
                push(&c, &mut m, req).await?;
            }
            Step::Reuse { earlier, also_new } => {
                if m.ops.is_empty() {
                    continue;
                }
                let (_, stored) = m.ops.iter().nth(earlier % m.ops.len()).expect("in range");
                let mut reused = stored.op.clone();
                reused.payload.0.push(0xAA);
                let mut ops = vec![reused];
                if also_new {
                    ops.insert(0, op(b"innocent bystander"));
                }
                push(&c, &mut m, push_of(ops)).await?;
            }
            Step::Optimistic { behind } => {
                let req = PushRequest {
                    expected_head: Some((m.head - behind).max(0)),
                    on_stale: Some(OnStale::Reject),
                    ..push_of(vec![op(b"optimistic")])
                };
                push(&c, &mut m, req).await?;
            }
            Step::Based { entity, lag } => {
                let name = format!("entity-{entity}");
                let last = m.entities.get(&name).map_or(0, |(last, _)| *last);
                let req = push_of(vec![entity_op(&name, Some((last - lag).max(0)), b"based")]);
                push(&c, &mut m, req).await?;
            }
            Step::RetryStale { earlier } => {
                let ops = picks(&m, &earlier);
                if ops.is_empty() {
                    continue;
                }
                let req = PushRequest { expected_head: Some(0), on_stale: Some(OnStale::Reject), ..push_of(ops) };
                push(&c, &mut m, req).await?;
            }
            Step::Ack { device: dev, lag } => {
                let seq = m.head - lag;
                let req = AckRequest { device: Some(device(dev)), seq };
                let answer = c.client.ack(&req).await;
                if seq < 0 {
                    tally("ack: invalid_field");
                    check_refusal(answer, &refusal(400, "invalid_field", None))?;
                } else if seq > m.head {
                    tally("ack: seq_beyond_head");
                    check_refusal(answer, &refusal(409, "seq_beyond_head", Some(m.head)))?;
                } else {
                    tally("ack: ok");
                    let res = answer.map_err(fail)?;
                    let cursor = m.devices.entry(device(dev).as_str().to_owned()).or_insert(0);
                    *cursor = (*cursor).max(seq);
                    prop_assert_eq!((res.seq, res.head), (*cursor, m.head));
                }
            }
            Step::Snapshot { lag } => {
                let seq = m.head - lag;
                let bytes = format!("state of {user} at {seq}, upload {}", OpId::generate()).into_bytes();
                let answer = c.client.put_snapshot(seq, bytes.clone()).await;
                if seq < 0 {
                    tally("snapshot: invalid_query");
                    check_refusal(answer, &refusal(400, "invalid_query", None))?;
                } else if seq > m.head {
                    tally("snapshot: seq_beyond_head");
                    check_refusal(answer, &refusal(409, "seq_beyond_head", Some(m.head)))?;
                } else if seq < m.horizon {
                    tally("snapshot: snapshot_below_horizon");
                    let (status, body) = refused(answer)?;
                    prop_assert_eq!((status, body.error.as_str()), (409, "snapshot_below_horizon"));
                    prop_assert_eq!(body.horizon, Some(m.horizon));
                } else {
                    tally(if m.snapshots.len() == KEEP_SNAPSHOTS {
                        "snapshot: stored, oldest pruned"
                    } else {
                        "snapshot: stored"
                    });
                    let info = answer.map_err(fail)?;
                    prop_assert_eq!((info.seq, info.size), (seq, bytes.len() as i64));
                    prop_assert_eq!(info.sha256, opsync::log::snapshot::sha256_hex(&bytes));
                    m.put_snapshot(seq, bytes);
                }
            }
            Step::Compact { per_entity, clock } => {
                compact(&c, &mut m, &user, per_entity, clock).await?;
                check_all(&c, &mut m, &user).await?;
            }
            Step::DeleteAccount => {
                let deleted = c.client.delete_account().await.map_err(fail)?;
                let counts = (deleted.ops, deleted.snapshots, deleted.devices, deleted.entities);
                let want =
                    (m.ops.len() as i64, m.snapshots.len() as i64, m.devices.len() as i64, m.entities.len() as i64);
                prop_assert_eq!(counts, want, "what account deletion removed");
                tally(if m.ops.is_empty() { "delete account: empty" } else { "delete account: with ops" });
                m.delete();
            }
            Step::Restart => {
                let running = server.borrow_mut().take().expect("a running server");
                let restarted = running.restart().await;
                *server.borrow_mut() = Some(restarted);
                c = conn(server, &user, msgpack);
                tally("restart");
                check_all(&c, &mut m, &user).await?;
            }
        }
    }
    check_all(&c, &mut m, &user).await
}

fn check_against_model(backend: Backend) {
    let system = actix_web::rt::System::new();
    let started = system.block_on(TestServer::start_configured(backend, |config| {
        config.retention.keep_snapshots = KEEP_SNAPSHOTS;
        config.retention.snapshot_every = SNAPSHOT_EVERY;
        config.retention.compact_interval = Duration::ZERO;
    }));
    let Some(server) = started else { return };
    let server = RefCell::new(Some(server));
    let cases = env_or("PROPTEST_CASES", 48) as u32;
    let steps = env_or("OPSYNC_MODEL_STEPS", 60).max(2);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(any::<bool>(), prop::collection::vec(step(), 1..steps)), |(msgpack, steps)| {
        system.block_on(run(&server, msgpack, steps))
    });
    TALLY.with(|t| {
        let t = t.borrow();
        let lines: Vec<String> = t.iter().map(|(what, n)| format!("  {n:5}  {what}")).collect();
        eprintln!("{backend:?}: {cases} cases, what the steps came to:\n{}", lines.join("\n"));
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite_log_lifecycle_matches_the_model() {
    check_against_model(Backend::Sqlite);
}

#[test]
fn postgres_log_lifecycle_matches_the_model() {
    check_against_model(Backend::Postgres);
}

/// The reference itself, on a hand-written history: the compaction rules as
/// docs/protocol.md states them.
#[test]
fn the_reference_compacts_as_documented() {
    let mut m = Model::default();
    let put = |e: &str| entity_op(e, None, b"x");
    let del = |e: &str| NewOp { kind: Some("del".into()), ..entity_op(e, None, b"") };
    // 1 a, 2 plain, 3 a, 4 del b, 5 plain
    let req = push_of(vec![put("a"), op(b"p"), put("a"), del("b"), op(b"q")]);
    let (results, _) = m.plan_push(&req).unwrap();
    m.apply_push(&req, &results);
    m.received = (1..=5).map(|s| (s, 1000 + s)).collect();
    m.put_snapshot(4, b"s".to_vec());
    let month = 1000 + RETENTION_MS + 31 * DAY_MS;
    // Per entity: 1 superseded, 2 covered; the tombstone has not expired.
    let done = m.compact("u", month, true).unwrap();
    assert_eq!((done.ops_removed, done.tombstones_removed, done.horizon), (2, 0, 2));
    assert_eq!(m.ops.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
    // Prefix: up to the snapshot, and the expired tombstone goes with it.
    let done = m.compact("u", 1000 + TOMBSTONE_TTL_MS + DAY_MS, false).unwrap();
    assert_eq!((done.ops_removed, done.tombstones_removed, done.horizon), (2, 1, 4));
    assert_eq!(m.ops.keys().copied().collect::<Vec<_>>(), vec![5]);
    assert_eq!(m.tombstones(), 0);
    // A split clock keeps the young ones.
    let mut young = Model::default();
    let req = push_of(vec![op(b"1"), op(b"2"), op(b"3")]);
    let (results, _) = young.plan_push(&req).unwrap();
    young.apply_push(&req, &results);
    young.received = [(1, 10), (2, 20), (3, 30)].into();
    young.put_snapshot(3, b"s".to_vec());
    let done = young.compact("u", 20 + RETENTION_MS, false).unwrap();
    assert_eq!((done.ops_removed, done.horizon), (1, 1));
}

/// A restarted server leaves no database connection of the stopped one behind (the
/// model test restarts dozens of times on one Postgres server): its background
/// tasks must let go of the state, and with it of the pool.
#[actix_web::test]
async fn postgres_restarts_release_their_connections() {
    let Some(mut s) = TestServer::start(Backend::Postgres).await else { return };
    let db = s.storage.pg.as_ref().expect("a Postgres database").name.clone();
    let count = || {
        use diesel::prelude::*;
        let mut admin = diesel::PgConnection::establish(&format!("{}/postgres", pg_base_url())).unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}')"
        )))
        .get_result::<i64>(&mut admin)
        .unwrap()
    };
    // Stopped servers' connections close within a moment (the revocation refresh
    // ticks every second); wait for the count to settle at or below `at_most`.
    let settled = |at_most: i64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = count();
            if now <= at_most || std::time::Instant::now() > deadline {
                return now;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let cycle = async |s: TestServer| {
        let s = s.restart().await;
        s.client("u").push(&push_of(vec![op(b"x")])).await.unwrap();
        s.client("u").pull(0, None).await.unwrap();
        s
    };
    s = cycle(s).await;
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let one_server = count();
    for _ in 0..8 {
        s = cycle(s).await;
    }
    // A server opens some connections on demand (the pool refills in the
    // background, a writer connects on its first command): allow for two of them;
    // a leak costs at least the pool (4) per restart.
    let now = settled(one_server).await;
    assert!(now <= one_server + 2, "{now} connections after 8 more restarts, {one_server} after one");
}
