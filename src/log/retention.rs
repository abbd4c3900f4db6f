//! Retention and compaction: what may be forgotten, and when.
//!
//! The rules (docs/protocol.md, "Retention"), for one user whose latest snapshot
//! covers seq `S` (0 if none):
//!
//! - Only ops older than the retention window are ever removed.
//! - Without per-entity compaction, a *prefix* is pruned: ops up to the first op
//!   that is not yet old enough, and never past `S`. The horizon moves to the
//!   end of the prefix.
//! - With per-entity compaction, an op on an entity that a later op on the same
//!   entity supersedes is removed wherever it is (under last-writer-wins a reader
//!   that skips it ends in the same state, so the horizon does not move). Ops
//!   without an entity are removed once `S` covers them; a tombstone (an entity's
//!   last op, a `del`) once its TTL has expired and `S` covers it. Both move the
//!   horizon to their seq, since a reader who skipped them would be wrong.
//!
//! So the horizon never passes `S`: a client sent to resync can always download
//! the snapshot and pull on from it. The horizon only moves forward.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use serde::{Deserialize, Deserializer};

use super::LogError;
use super::store::DEL_KIND;
use crate::db::DbConn;
use crate::db::dialect;
use crate::db::schema::{entities, length, ops, users};
use crate::ids::Seq;
use diesel::dsl::sum;

/// Snapshot and retention settings (the README's configuration table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// A snapshot is due when more than this many ops follow the latest one.
    pub snapshot_every: i64,
    /// Snapshots kept per user (the newest ones).
    pub keep_snapshots: usize,
    /// Ops younger than this are never removed.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// How long a tombstone (an entity's `del`) is kept at least.
    #[serde(deserialize_with = "duration")]
    pub tombstone_ttl: Duration,
    /// Keep only the newest op per entity (last-writer-wins apps).
    pub compact_entities: bool,
    /// How often the server compacts every user (zero: never; `opsync compact` still works).
    #[serde(deserialize_with = "duration")]
    pub compact_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            snapshot_every: 1000,
            keep_snapshots: 3,
            retention: Duration::from_secs(30 * 24 * 3600),
            tombstone_ttl: Duration::from_secs(90 * 24 * 3600),
            compact_entities: false,
            compact_interval: Duration::from_secs(3600),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a compaction did to one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    /// The user.
    pub user: String,
    /// Ops removed.
    pub ops_removed: u64,
    /// Tombstones forgotten.
    pub tombstones_removed: u64,
    /// The horizon before.
    pub horizon_before: Seq,
    /// The horizon after.
    pub horizon: Seq,
}

/// One op as the planner sees it (no payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpMeta {
    /// Its seq.
    pub seq: Seq,
    /// Its entity.
    pub entity: Option<String>,
    /// Whether it is a `del`.
    pub del: bool,
    /// When it was received (ms).
    pub received_at: i64,
}

/// What [`plan`] decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Remove every op at or below this seq (a pruned prefix).
    pub prefix: Option<Seq>,
    /// Remove these ops besides (ascending).
    pub drop: Vec<Seq>,
    /// Tombstones to forget (their `del` op is removed).
    pub forget: Vec<String>,
    /// The horizon afterwards.
    pub horizon: Seq,
}

/// Decides a compaction. `candidates` are the ops above the horizon that are
/// older than the retention window, in seq order; `first_young` the first op above
/// the horizon that is not; `last_seq` the last seq of each candidate's entity.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    horizon: Seq,
    snapshot_seq: Seq,
    head: Seq,
    candidates: &[OpMeta],
    first_young: Option<Seq>,
    last_seq: &HashMap<String, Seq>,
    tombstone_cut: i64,
    compact_entities: bool,
) -> Plan {
    if !compact_entities {
        let end = first_young.map_or(head, |f| f - 1).min(snapshot_seq);
        return if end > horizon {
            Plan { prefix: Some(end), drop: Vec::new(), forget: Vec::new(), horizon: end }
        } else {
            Plan { horizon, ..Plan::default() }
        };
    }
    let mut plan = Plan { horizon, ..Plan::default() };
    for op in candidates {
        let covered = op.seq <= snapshot_seq;
        match &op.entity {
            None if covered => {
                plan.drop.push(op.seq);
                plan.horizon = plan.horizon.max(op.seq);
            }
            None => {}
            Some(entity) => {
                let last = last_seq.get(entity).copied().unwrap_or(op.seq);
                if op.seq < last {
                    plan.drop.push(op.seq);
                } else if op.del && covered && op.received_at < tombstone_cut {
                    plan.drop.push(op.seq);
                    plan.forget.push(entity.clone());
                    plan.horizon = plan.horizon.max(op.seq);
                }
            }
        }
    }
    plan
}

/// Rows per DELETE … IN (…).
const DELETE_CHUNK: usize = 1000;

/// Compacts one user in one write transaction on `conn` (taking the user's lock
/// first, like every write).
pub fn compact_user(conn: &mut DbConn, user: &str, policy: &Retention, now: i64) -> Result<Compacted, LogError> {
    super::store::in_write_transaction(conn, |conn| {
        let state = dialect::lock_user_state(conn, user, now)?;
        let cut = now.saturating_sub(ms(policy.retention));
        let first_young: Option<i64> = ops::table
            .filter(ops::user_id.eq(user))
            .filter(ops::seq.gt(state.horizon))
            .filter(ops::received_at.ge(cut))
            .select(diesel::dsl::min(ops::seq))
            .first(conn)?;
        let (candidates, last_seq) = if policy.compact_entities {
            let rows: Vec<(i64, Option<String>, Option<String>, i64)> = ops::table
                .filter(ops::user_id.eq(user))
                .filter(ops::seq.gt(state.horizon))
                .filter(ops::seq.lt(first_young.unwrap_or(i64::MAX)))
                .order(ops::seq.asc())
                .select((ops::seq, ops::entity, ops::kind, ops::received_at))
                .load(conn)?;
            let candidates: Vec<OpMeta> = rows
                .into_iter()
                .map(|(seq, entity, kind, received_at)| OpMeta {
                    seq,
                    entity,
                    del: kind.as_deref() == Some(DEL_KIND),
                    received_at,
                })
                .collect();
            let last: HashMap<String, Seq> = entities::table
                .filter(entities::user_id.eq(user))
                .select((entities::entity, entities::last_seq))
                .load(conn)?
                .into_iter()
                .collect();
            (candidates, last)
        } else {
            (Vec::new(), HashMap::new())
        };
        let tombstone_cut = now.saturating_sub(ms(policy.tombstone_ttl));
        let plan = plan(
            state.horizon,
            state.snapshot_seq,
            state.head,
            &candidates,
            first_young,
            &last_seq,
            tombstone_cut,
            policy.compact_entities,
        );
        let mut removed = 0u64;
        // Payload bytes removed, taken off the user's quota usage.
        let mut freed = 0i64;
        if let Some(end) = plan.prefix {
            let prefix = ops::table.filter(ops::user_id.eq(user)).filter(ops::seq.le(end));
            freed += prefix.select(sum(length(ops::payload))).first::<Option<i64>>(conn)?.unwrap_or(0);
            removed += diesel::delete(prefix).execute(conn)? as u64;
        }
        for chunk in plan.drop.chunks(DELETE_CHUNK) {
            let dropped = ops::table.filter(ops::user_id.eq(user)).filter(ops::seq.eq_any(chunk));
            freed += dropped.clone().select(sum(length(ops::payload))).first::<Option<i64>>(conn)?.unwrap_or(0);
            removed += diesel::delete(dropped).execute(conn)? as u64;
        }
        if freed > 0 {
            diesel::update(users::table.find(user))
                .set(users::stored_bytes.eq(users::stored_bytes - freed))
                .execute(conn)?;
        }
        // Tombstones: those whose `del` was removed above, and (without per-entity
        // compaction) those past their TTL whose `del` a pruned prefix took.
        let mut forgotten = 0u64;
        for chunk in plan.forget.chunks(DELETE_CHUNK) {
            forgotten += diesel::delete(
                entities::table.filter(entities::user_id.eq(user)).filter(entities::entity.eq_any(chunk)),
            )
            .execute(conn)? as u64;
        }
        if !policy.compact_entities {
            forgotten += diesel::delete(
                entities::table
                    .filter(entities::user_id.eq(user))
                    .filter(entities::deleted_at.lt(tombstone_cut))
                    .filter(entities::last_seq.le(plan.horizon)),
            )
            .execute(conn)? as u64;
        }
        if plan.horizon > state.horizon {
            diesel::update(users::table.find(user))
                .filter(users::horizon.lt(plan.horizon))
                .set(users::horizon.eq(plan.horizon))
                .execute(conn)?;
        }
        Ok(Compacted {
            user: user.to_owned(),
            ops_removed: removed,
            tombstones_removed: forgotten,
            horizon_before: state.horizon,
            horizon: plan.horizon.max(state.horizon),
        })
    })
}

/// Every user, in name order.
pub fn users(conn: &mut DbConn) -> QueryResult<Vec<String>> {
    users::table.order(users::id.asc()).select(users::id).load(conn)
}

/// Compacts every user; on Postgres only if no other node is compacting (an
/// advisory lock), so every node can run the periodic task. `None`: skipped.
pub fn compact_all(conn: &mut DbConn, policy: &Retention, now: i64) -> Result<Option<Vec<Compacted>>, LogError> {
    if !dialect::try_compaction_lock(conn)? {
        return Ok(None);
    }
    let mut held = Held(conn);
    let users = users(held.0)?;
    let done = users.iter().map(|user| compact_user(held.0, user, policy, now)).collect::<Result<Vec<_>, _>>()?;
    held.release()?;
    Ok(Some(done))
}

/// Holds the compaction lock; releases it when dropped (an error or a panic
/// must not leave a pooled Postgres session holding it for good).
struct Held<'c>(&'c mut DbConn);

impl Held<'_> {
    fn release(&mut self) -> QueryResult<()> {
        dialect::release_compaction_lock(self.0)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // A second unlock after `release` only returns false on Postgres.
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "cannot release the compaction lock");
        }
    }
}

/// The server's background compaction: every `compact_interval` (never if zero),
/// compacts every user. Safe on every node at once (see [`compact_all`]).
pub async fn compact_periodically(log: super::Log) {
    let every = log.retention().compact_interval;
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: let the server start first
    loop {
        tick.tick().await;
        match log.compact_all().await {
            Ok(Some(done)) => {
                let removed: u64 = done.iter().map(|c| c.ops_removed).sum();
                tracing::info!(users = done.len(), ops_removed = removed, "compaction finished");
            }
            Ok(None) => tracing::debug!("another node is compacting; skipped"),
            Err(e) => tracing::warn!(error = %e, "compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: Seq, entity: Option<&str>, del: bool) -> OpMeta {
        OpMeta { seq, entity: entity.map(str::to_owned), del, received_at: 0 }
    }

    #[test]
    fn prefix_stops_at_the_snapshot_and_at_young_ops() {
        let p = plan(0, 50, 100, &[], Some(30), &HashMap::new(), 0, false);
        assert_eq!((p.prefix, p.horizon), (Some(29), 29));
        let p = plan(0, 50, 100, &[], None, &HashMap::new(), 0, false);
        assert_eq!((p.prefix, p.horizon), (Some(50), 50));
        let p = plan(60, 50, 100, &[], None, &HashMap::new(), 0, false);
        assert_eq!((p.prefix, p.horizon), (None, 60), "never backwards");
        let p = plan(0, 0, 100, &[], None, &HashMap::new(), 0, false);
        assert_eq!(p.prefix, None, "nothing without a snapshot");
    }

    #[test]
    fn per_entity_compaction() {
        let ops = [
            meta(1, Some("a"), false),
            meta(2, None, false),
            meta(3, Some("a"), false),
            meta(4, Some("b"), true),
            meta(5, Some("c"), true),
            meta(6, None, false),
        ];
        let last: HashMap<String, Seq> = [("a".into(), 3), ("b".into(), 4), ("c".into(), 5)].into();
        // Snapshot at 4; tombstones expired (cut after their time).
        let p = plan(0, 4, 6, &ops, None, &last, 1, true);
        assert_eq!(p.drop, vec![1, 2, 4]);
        assert_eq!(p.forget, vec!["b".to_owned()]);
        assert_eq!(p.horizon, 4);
        // Tombstones not expired: kept; the horizon only covers op 2.
        let p = plan(0, 4, 6, &ops, None, &last, 0, true);
        assert_eq!((p.drop, p.horizon), (vec![1, 2], 2));
        // No snapshot: only superseded ops go; the horizon stays.
        let p = plan(0, 0, 6, &ops, None, &last, 1, true);
        assert_eq!((p.drop, p.horizon), (vec![1], 0));
    }
}
