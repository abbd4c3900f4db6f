//! Statements on the log's tables. Each takes `&mut DbConn` and runs inside whatever
//! transaction the caller holds; none of them knows about HTTP or threads.

use std::collections::HashMap;

use diesel::prelude::*;

use super::sequencer::{self, StoredOp};
use super::{LogError, Push};
use crate::db::DbConn;
use crate::db::dialect::{self, OpInsert};
use crate::db::schema::{devices, entities, ops, users};
use crate::ids::{DeviceId, OpId, Seq, UserId};
use crate::protocol::{
    AccountDeleted, AckResponse, DeviceStatus, Op, Payload, PullResponse, PushResponse, StatusResponse,
};

/// Rows per SELECT when paging, so a page's memory stays bounded by its byte budget.
const READ_CHUNK: i64 = 256;

/// An op row as pulls and exports read it.
#[derive(Queryable, Selectable)]
#[diesel(table_name = ops)]
pub(crate) struct OpRow {
    seq: i64,
    op_id: Vec<u8>,
    device: Option<String>,
    entity: Option<String>,
    kind: Option<String>,
    base: Option<i64>,
    client_ts: Option<i64>,
    received_at: i64,
    payload: Vec<u8>,
}

impl TryFrom<OpRow> for Op {
    type Error = LogError;

    fn try_from(row: OpRow) -> Result<Op, LogError> {
        let id = OpId::from_slice(&row.op_id).map_err(|e| LogError::Corrupt(format!("op at seq {}: {e}", row.seq)))?;
        Ok(Op {
            seq: row.seq,
            id,
            device: row.device,
            entity: row.entity,
            kind: row.kind,
            base: row.base,
            ts: row.client_ts,
            received_at: row.received_at,
            payload: Payload(row.payload),
        })
    }
}

/// Appends a push inside the caller's write transaction. The outer `QueryResult`
/// fails on database errors (the caller rolls back); the inner one on a rejection
/// or when the new ops' payloads would take the user past `quota` bytes, in which
/// case nothing was written. Duplicates cost nothing, so a pure retry always passes.
pub fn apply_push(
    conn: &mut DbConn,
    push: &Push,
    quota: Option<i64>,
    now: i64,
) -> QueryResult<Result<PushResponse, LogError>> {
    let user = push.user.as_str();
    let state = dialect::lock_user_state(conn, user, now)?;
    let head = state.head;

    let ids: Vec<&[u8]> = push.ops.iter().map(|op| &op.id.as_bytes()[..]).collect();
    let existing: HashMap<OpId, StoredOp> = ops::table
        .filter(ops::user_id.eq(user))
        .filter(ops::op_id.eq_any(&ids))
        .select((ops::op_id, ops::seq, ops::payload, ops::entity, ops::kind))
        .load::<(Vec<u8>, i64, Vec<u8>, Option<String>, Option<String>)>(conn)?
        .into_iter()
        .filter_map(|(id, seq, payload, entity, kind)| {
            Some((OpId::from_slice(&id).ok()?, StoredOp { seq, payload, entity, kind }))
        })
        .collect();

    let based: Vec<&str> =
        push.ops.iter().filter(|op| op.base.is_some()).filter_map(|op| op.entity.as_deref()).collect();
    let entity_seqs: HashMap<String, Seq> = if based.is_empty() {
        HashMap::new()
    } else {
        entities::table
            .filter(entities::user_id.eq(user))
            .filter(entities::entity.eq_any(&based))
            .select((entities::entity, entities::last_seq))
            .load(conn)?
            .into_iter()
            .collect()
    };

    let plan = match sequencer::plan(head, &push.ops, push.expected_head, push.on_stale, &existing, &entity_seqs) {
        Ok(plan) => plan,
        Err(rejection) => return Ok(Err(rejection.into())),
    };
    let needed: i64 = plan.new.iter().map(|&i| push.ops[i].payload.0.len() as i64).sum();
    if needed > 0
        && let Some(quota) = quota
        && state.stored_bytes.saturating_add(needed) > quota
    {
        return Ok(Err(LogError::QuotaExceeded { stored: state.stored_bytes, quota, needed }));
    }

    if !plan.new.is_empty() {
        let device = push.device.as_ref().map(DeviceId::as_str);
        let rows: Vec<OpInsert<'_>> = plan
            .new
            .iter()
            .zip(head + 1..)
            .map(|(&i, seq)| {
                let op = &push.ops[i];
                OpInsert {
                    user_id: user,
                    seq,
                    op_id: &op.id.as_bytes()[..],
                    device,
                    entity: op.entity.as_deref(),
                    kind: op.kind.as_deref(),
                    base: op.base,
                    client_ts: op.ts,
                    received_at: now,
                    payload: &op.payload.0,
                }
            })
            .collect();
        dialect::insert_ops(conn, &rows)?;
        // The last seq per entity (an entity may appear several times in one push),
        // and a tombstone when that last op is a `del`.
        let mut last: HashMap<&str, (Seq, Option<i64>)> = HashMap::new();
        for row in &rows {
            if let Some(entity) = row.entity {
                let deleted_at = (row.kind == Some(DEL_KIND)).then_some(now);
                last.insert(entity, (row.seq, deleted_at));
            }
        }
        let last: Vec<(&str, Seq, Option<i64>)> = last.into_iter().map(|(e, (s, d))| (e, s, d)).collect();
        dialect::upsert_entities(conn, user, &last)?;
        diesel::update(users::table.find(user))
            .set((users::head.eq(plan.head), users::stored_bytes.eq(users::stored_bytes + needed)))
            .execute(conn)?;
    }
    if let Some(device) = &push.device {
        dialect::touch_device(conn, user, device.as_str(), now)?;
    }
    Ok(Ok(PushResponse {
        results: plan.results,
        head: plan.head,
        snapshot_seq: state.snapshot_seq,
        snapshot_due: false,
    }))
}

/// [`apply_push`] for consecutive pushes of one writer batch (sorted by user, each
/// user's pushes in arrival order), with a fixed number of statements whatever the
/// number of pushes: lock every user at once, read the stored ops the pushes repeat
/// and the entity seqs their bases need, plan each push in order in memory, then
/// write all new ops, entities, heads and devices. Each answer is exactly what
/// [`apply_push`] would give when the pushes are applied one after the other: the
/// plan of a push sees the heads, stored bytes, op ids and entity seqs of the
/// pushes before it (an overlay over what the database held). A refused push
/// stores nothing and does not disturb the others. The outer `QueryResult` fails
/// on database errors (the caller rolls back and falls back to [`apply_push`]).
pub fn apply_pushes(
    conn: &mut DbConn,
    pushes: &[(&Push, Option<i64>)],
    now: i64,
) -> QueryResult<Vec<Result<PushResponse, LogError>>> {
    // Every user once, ascending: the order every batch takes its locks in.
    let mut users: Vec<&str> = pushes.iter().map(|(push, _)| push.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let intern = |name: &str| users.binary_search(&name).ok().map(|i| users[i]);

    let mut state: HashMap<&str, Overlay> = HashMap::with_capacity(users.len());
    for (user, locked) in dialect::lock_users(conn, &users, now)? {
        let Some(user) = intern(&user) else { continue };
        state.insert(user, Overlay { state: locked, added: 0, moved: false });
    }
    if state.len() != users.len() {
        return Err(diesel::result::Error::NotFound);
    }

    // The ops the pushes repeat, and which op ids appear in more than one push (a
    // later push must see an earlier one's op as stored).
    let mut keys: Vec<(&str, &[u8])> = pushes
        .iter()
        .flat_map(|(push, _)| push.ops.iter().map(move |op| (push.user.as_str(), &op.id.as_bytes()[..])))
        .collect();
    keys.sort_unstable();
    let repeated: std::collections::HashSet<(&str, &[u8])> =
        keys.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    keys.dedup();
    let mut stored: HashMap<(&str, OpId), StoredOp> = HashMap::new();
    for row in dialect::stored_ops(conn, &keys)? {
        let (Some(user), Ok(id)) = (intern(&row.user_id), OpId::from_slice(&row.op_id)) else { continue };
        let op = StoredOp { seq: row.seq, payload: row.payload, entity: row.entity, kind: row.kind };
        stored.insert((user, id), op);
    }

    // The entity seqs that the based ops check.
    let mut based: Vec<(&str, &str)> = pushes
        .iter()
        .flat_map(|(push, _)| {
            push.ops
                .iter()
                .filter(|op| op.base.is_some())
                .filter_map(move |op| Some((push.user.as_str(), op.entity.as_deref()?)))
        })
        .collect();
    based.sort_unstable();
    based.dedup();
    let mut entity_seqs: HashMap<(&str, &str), Seq> = HashMap::new();
    let rows = dialect::entity_seqs(conn, &based)?;
    for row in &rows {
        let Some(user) = intern(&row.user_id) else { continue };
        let Ok(i) = based.binary_search(&(user, row.entity.as_str())) else { continue };
        entity_seqs.insert(based[i], row.last_seq);
    }

    // Plan each push in order against the overlay.
    let mut results = Vec::with_capacity(pushes.len());
    let mut new_ops: Vec<OpInsert<'_>> = Vec::new();
    // The last seq (and tombstone) per entity the segment writes, in write order.
    let mut last: HashMap<(&str, &str), (Seq, Option<i64>)> = HashMap::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for &(push, quota) in pushes {
        let user = push.user.as_str();
        let Some(overlay) = state.get_mut(user) else { return Err(diesel::result::Error::NotFound) };
        let head = overlay.state.head;
        let existing: HashMap<OpId, StoredOp> =
            push.ops.iter().filter_map(|op| Some((op.id, stored.get(&(user, op.id))?.clone()))).collect();
        let seqs: HashMap<String, Seq> = push
            .ops
            .iter()
            .filter(|op| op.base.is_some())
            .filter_map(|op| op.entity.as_deref())
            .filter_map(|entity| {
                let seq = last
                    .get(&(user, entity))
                    .map(|(seq, _)| *seq)
                    .or_else(|| entity_seqs.get(&(user, entity)).copied())?;
                Some((entity.to_owned(), seq))
            })
            .collect();
        let plan = match sequencer::plan(head, &push.ops, push.expected_head, push.on_stale, &existing, &seqs) {
            Ok(plan) => plan,
            Err(rejection) => {
                results.push(Err(rejection.into()));
                continue;
            }
        };
        let needed: i64 = plan.new.iter().map(|&i| push.ops[i].payload.0.len() as i64).sum();
        if needed > 0
            && let Some(quota) = quota
            && overlay.state.stored_bytes.saturating_add(needed) > quota
        {
            results.push(Err(LogError::QuotaExceeded { stored: overlay.state.stored_bytes, quota, needed }));
            continue;
        }
        if !plan.new.is_empty() {
            let device = push.device.as_ref().map(DeviceId::as_str);
            for (&i, seq) in plan.new.iter().zip(head + 1..) {
                let op = &push.ops[i];
                new_ops.push(OpInsert {
                    user_id: user,
                    seq,
                    op_id: &op.id.as_bytes()[..],
                    device,
                    entity: op.entity.as_deref(),
                    kind: op.kind.as_deref(),
                    base: op.base,
                    client_ts: op.ts,
                    received_at: now,
                    payload: &op.payload.0,
                });
                if let Some(entity) = op.entity.as_deref() {
                    let deleted_at = (op.kind.as_deref() == Some(DEL_KIND)).then_some(now);
                    last.insert((user, entity), (seq, deleted_at));
                }
                if repeated.contains(&(user, &op.id.as_bytes()[..])) {
                    let op = StoredOp {
                        seq,
                        payload: op.payload.0.clone(),
                        entity: op.entity.clone(),
                        kind: op.kind.clone(),
                    };
                    stored.insert((user, push.ops[i].id), op);
                }
            }
            overlay.state.head = plan.head;
            overlay.state.stored_bytes += needed;
            overlay.added += needed;
            overlay.moved = true;
        }
        if let Some(device) = &push.device {
            seen.push((user, device.as_str()));
        }
        results.push(Ok(PushResponse {
            results: plan.results,
            head: plan.head,
            snapshot_seq: overlay.state.snapshot_seq,
            snapshot_due: false,
        }));
    }

    // Write everything the accepted pushes store.
    dialect::insert_ops(conn, &new_ops)?;
    let last: Vec<(&str, &str, Seq, Option<i64>)> = last.into_iter().map(|((u, e), (s, d))| (u, e, s, d)).collect();
    dialect::upsert_user_entities(conn, &last)?;
    let heads: Vec<(&str, Seq, i64)> = users
        .iter()
        .filter_map(|user| state.get(user).filter(|o| o.moved).map(|o| (*user, o.state.head, o.added)))
        .collect();
    dialect::advance_heads(conn, &heads)?;
    seen.sort_unstable();
    seen.dedup();
    dialect::touch_devices(conn, &seen, now)?;
    Ok(results)
}

/// A user's state as the pushes of a merged segment leave it, before it is written.
struct Overlay {
    /// Head and stored bytes after the segment's accepted pushes so far.
    state: dialect::UserState,
    /// Payload bytes those pushes add.
    added: i64,
    /// Whether any of them stored an op.
    moved: bool,
}

/// Moves a device's cursor inside the caller's write transaction.
pub fn apply_ack(
    conn: &mut DbConn,
    user: &UserId,
    device: &DeviceId,
    seq: Seq,
    now: i64,
) -> QueryResult<Result<AckResponse, LogError>> {
    // The user's lock first, as a push takes it: a batch mixing acks and pushes
    // locks rows in the same order as every other batch.
    let head = dialect::lock_user(conn, user.as_str(), now)?;
    if seq > head {
        return Ok(Err(LogError::SeqBeyondHead { seq, head }));
    }
    let cursor = dialect::advance_cursor(conn, user.as_str(), device.as_str(), seq, now)?;
    Ok(Ok(AckResponse { device: device.clone(), seq: cursor, head }))
}

/// The kind of an op that deletes its entity (and leaves a tombstone).
pub const DEL_KIND: &str = "del";

/// The user's head (0 for a user with no ops).
pub fn head(conn: &mut DbConn, user: &UserId) -> QueryResult<Seq> {
    Ok(users::table.find(user.as_str()).select(users::head).first(conn).optional()?.unwrap_or(0))
}

/// A user's head, horizon and latest snapshot seq (zeros for a user with no row).
pub(crate) fn user_state(conn: &mut DbConn, user: &str) -> QueryResult<dialect::UserState> {
    let row: Option<(i64, i64, i64, i64)> = users::table
        .find(user)
        .select((users::head, users::horizon, users::snapshot_seq, users::stored_bytes))
        .first(conn)
        .optional()?;
    let (head, horizon, snapshot_seq, stored_bytes) = row.unwrap_or_default();
    Ok(dialect::UserState { head, horizon, snapshot_seq, stored_bytes })
}

/// The error for a read from below the horizon.
fn resync(state: &dialect::UserState) -> LogError {
    LogError::ResyncRequired {
        horizon: state.horizon,
        snapshot_seq: (state.snapshot_seq > 0).then_some(state.snapshot_seq),
    }
}

/// Ops after `since`, at most `limit` of them and about `max_bytes` of payload.
///
/// The head is read first and only ops up to it are returned: every op at or below a
/// committed head is committed (a push writes its ops and the head in one
/// transaction, in seq order per user), so a page never has a hole even while
/// pushes commit concurrently.
///
/// A `since` below the retention horizon is refused with
/// [`LogError::ResyncRequired`]. The horizon is read again after the ops: a
/// compaction that pruned ops this page needed while it was read has moved it
/// in the same commit, so the page is refused rather than served with a hole.
pub fn pull(
    conn: &mut DbConn,
    user: &UserId,
    since: Seq,
    limit: usize,
    max_bytes: usize,
) -> Result<PullResponse, LogError> {
    let state = user_state(conn, user.as_str())?;
    let head = state.head;
    if since > head {
        return Err(LogError::SinceBeyondHead { since, head });
    }
    if since < state.horizon {
        return Err(resync(&state));
    }
    let mut page = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = since;
    'read: while cursor < head && page.len() < limit {
        let want = READ_CHUNK.min((limit - page.len()) as i64);
        // A bounded seq window: the plan stays a short primary-key range scan even
        // before Postgres has statistics (an open range `seq <= head` was planned as
        // a bitmap scan plus a sort of the rest of the log: 13 ms instead of 0.1 ms
        // per chunk on a freshly loaded table). Seqs are dense except where
        // compaction removed ops.
        let upper = head.min(cursor + want);
        let mut rows = read_ops(conn, user, cursor, upper, want)?;
        let windowed = !rows.is_empty();
        if !windowed {
            // A hole compaction left: jump it with one open-range read.
            rows = read_ops(conn, user, cursor, head, want)?;
            if rows.is_empty() {
                cursor = head;
                break;
            }
        }
        for row in rows {
            let op = Op::try_from(row)?;
            bytes += op.payload.0.len();
            cursor = op.seq;
            page.push(op);
            if bytes >= max_bytes {
                break 'read;
            }
        }
        if windowed {
            // Nothing else is in this window.
            cursor = cursor.max(upper);
        }
    }
    // One primary-key read; per-entity compaction leaves legitimate gaps, so a gap
    // in the page cannot tell whether something this page needed was pruned.
    let after = user_state(conn, user.as_str())?;
    if since < after.horizon {
        return Err(resync(&after));
    }
    Ok(PullResponse { ops: page, head, has_more: cursor < head, snapshot_seq: state.snapshot_seq, snapshot_due: false })
}

/// Ops with `after < seq <= upto`, in order, at most `limit`.
fn read_ops(conn: &mut DbConn, user: &UserId, after: Seq, upto: Seq, limit: i64) -> QueryResult<Vec<OpRow>> {
    ops::table
        .filter(ops::user_id.eq(user.as_str()))
        .filter(ops::seq.gt(after))
        .filter(ops::seq.le(upto))
        .order(ops::seq.asc())
        .limit(limit)
        .select(OpRow::as_select())
        .load(conn)
}

/// The user's head and devices.
pub fn status(conn: &mut DbConn, user: &UserId) -> Result<StatusResponse, LogError> {
    let state = user_state(conn, user.as_str())?;
    let head = state.head;
    let devices: Vec<DeviceStatus> = devices::table
        .filter(devices::user_id.eq(user.as_str()))
        .order(devices::id.asc())
        .select((devices::id, devices::ack_seq, devices::last_seen, devices::created_at))
        .load::<(String, i64, i64, i64)>(conn)?
        .into_iter()
        .map(|(id, ack_seq, last_seen, created_at)| DeviceStatus { id, ack_seq, last_seen, created_at })
        .collect();
    let stale_devices = devices.iter().filter(|d| d.ack_seq < state.horizon).map(|d| d.id.clone()).collect();
    let snapshot = super::snapshot::latest_info(conn, user.as_str(), None)?;
    let tombstones = entities::table
        .filter(entities::user_id.eq(user.as_str()))
        .filter(entities::deleted_at.is_not_null())
        .count()
        .get_result(conn)?;
    Ok(StatusResponse {
        user: user.to_string(),
        head,
        devices,
        server_time: super::now_ms(),
        horizon: state.horizon,
        snapshot,
        stale_devices,
        tombstones,
        stored_bytes: state.stored_bytes,
        quota_bytes: None,
    })
}

/// Whether there is any user yet (a fresh deployment has none).
pub fn has_users(conn: &mut DbConn) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(users::table.select(users::id))).get_result(conn)
}

/// A trivial round trip.
pub fn ping(conn: &mut DbConn) -> QueryResult<()> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).get_result::<i32>(conn).map(drop)
}

/// Runs `f` in a write transaction of its own on a connection outside the
/// writer (snapshot uploads, compaction, imports): committed if `f` succeeds,
/// rolled back otherwise.
pub(crate) fn in_write_transaction<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, LogError>,
) -> Result<T, LogError> {
    dialect::begin_write(conn)?;
    match f(conn) {
        Ok(value) => {
            dialect::commit(conn)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = dialect::rollback(conn) {
                tracing::debug!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Removes everything of a user (ops, snapshots, devices, entities and
/// tombstones, the user's row) inside the caller's write transaction, after
/// taking the user's lock like every write.
pub fn apply_delete_user(conn: &mut DbConn, user: &UserId, now: i64) -> QueryResult<AccountDeleted> {
    use crate::db::schema::snapshots;
    let user = user.as_str();
    dialect::lock_user(conn, user, now)?;
    let ops = diesel::delete(ops::table.filter(ops::user_id.eq(user))).execute(conn)? as i64;
    let snapshots = diesel::delete(snapshots::table.filter(snapshots::user_id.eq(user))).execute(conn)? as i64;
    let devices = diesel::delete(devices::table.filter(devices::user_id.eq(user))).execute(conn)? as i64;
    let entities = diesel::delete(entities::table.filter(entities::user_id.eq(user))).execute(conn)? as i64;
    diesel::delete(users::table.find(user)).execute(conn)?;
    Ok(AccountDeleted { user: user.to_owned(), ops, snapshots, devices, entities })
}
