//! Snapshots: opaque client uploads of a user's state after applying ops up to a
//! seq. A new device downloads the latest and pulls only the ops after it; the
//! retention horizon never passes the latest snapshot, so that pull is always
//! served. Statements here run inside the caller's transaction.

use diesel::prelude::*;
use sha2::{Digest as _, Sha256};

use super::LogError;
use crate::db::DbConn;
use crate::db::dialect::{self, SnapshotInsert};
use crate::db::schema::{snapshots, users};
use crate::ids::Seq;
use crate::protocol::SnapshotInfo;

/// The Content-Type stored when an upload names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// The longest Content-Type stored, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A snapshot to store, checked by [`store`].
#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    /// The seq it covers.
    pub seq: Seq,
    /// Its Content-Type.
    pub content_type: &'a str,
    /// Its bytes.
    pub data: &'a [u8],
    /// SHA-256 the client announced (hex), if any.
    pub expected_sha256: Option<&'a str>,
}

type InfoColumns = (snapshots::seq, snapshots::size, snapshots::sha256, snapshots::content_type, snapshots::created_at);
const INFO: InfoColumns =
    (snapshots::seq, snapshots::size, snapshots::sha256, snapshots::content_type, snapshots::created_at);

/// The columns of [`INFO`] as loaded.
type InfoRow = (i64, i64, String, String, i64);

fn info((seq, size, sha256, content_type, created_at): InfoRow) -> SnapshotInfo {
    SnapshotInfo { seq, size, sha256, content_type, created_at }
}

/// The latest snapshot (or the latest at or before `at_or_before`), without its bytes.
pub fn latest_info(conn: &mut DbConn, user: &str, at_or_before: Option<Seq>) -> QueryResult<Option<SnapshotInfo>> {
    let mut query = snapshots::table.filter(snapshots::user_id.eq(user)).into_boxed();
    if let Some(seq) = at_or_before {
        query = query.filter(snapshots::seq.le(seq));
    }
    Ok(query.order(snapshots::seq.desc()).select(INFO).first(conn).optional()?.map(info))
}

/// The latest snapshot (or the latest at or before `at_or_before`) with its bytes.
pub fn latest(
    conn: &mut DbConn,
    user: &str,
    at_or_before: Option<Seq>,
) -> QueryResult<Option<(SnapshotInfo, Vec<u8>)>> {
    let mut query = snapshots::table.filter(snapshots::user_id.eq(user)).into_boxed();
    if let Some(seq) = at_or_before {
        query = query.filter(snapshots::seq.le(seq));
    }
    let row: Option<(InfoRow, Vec<u8>)> =
        query.order(snapshots::seq.desc()).select((INFO, snapshots::data)).first(conn).optional()?;
    Ok(row.map(|(i, data)| (info(i), data)))
}

/// Every snapshot of a user, oldest first, without bytes.
pub fn list(conn: &mut DbConn, user: &str) -> QueryResult<Vec<SnapshotInfo>> {
    Ok(snapshots::table
        .filter(snapshots::user_id.eq(user))
        .order(snapshots::seq.asc())
        .select(INFO)
        .load(conn)?
        .into_iter()
        .map(info)
        .collect())
}

/// One snapshot's bytes.
pub fn data(conn: &mut DbConn, user: &str, seq: Seq) -> QueryResult<Option<Vec<u8>>> {
    snapshots::table.find((user, seq)).select(snapshots::data).first(conn).optional()
}

/// Stores a snapshot inside the caller's write transaction: takes the user's lock,
/// checks the seq against the head and the horizon, replaces any snapshot at the
/// same seq, and keeps only the newest `keep` snapshots. Returns what was stored.
pub fn store(
    conn: &mut DbConn,
    user: &str,
    snapshot: &NewSnapshot<'_>,
    keep: usize,
    now: i64,
) -> Result<SnapshotInfo, LogError> {
    let sha256 = sha256_hex(snapshot.data);
    if let Some(expected) = snapshot.expected_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(LogError::ChecksumMismatch { expected: expected.to_owned(), actual: sha256 });
    }
    let state = dialect::lock_user_state(conn, user, now)?;
    if snapshot.seq > state.head {
        return Err(LogError::SeqBeyondHead { seq: snapshot.seq, head: state.head });
    }
    if snapshot.seq < state.horizon {
        return Err(LogError::SnapshotBelowHorizon { seq: snapshot.seq, horizon: state.horizon });
    }
    let row = SnapshotInsert {
        user_id: user,
        seq: snapshot.seq,
        created_at: now,
        size: snapshot.data.len() as i64,
        sha256: &sha256,
        content_type: snapshot.content_type,
        data: snapshot.data,
    };
    dialect::upsert_snapshot(conn, &row)?;
    if snapshot.seq > state.snapshot_seq {
        diesel::update(users::table.find(user)).set(users::snapshot_seq.eq(snapshot.seq)).execute(conn)?;
    }
    prune_old(conn, user, keep)?;
    Ok(SnapshotInfo {
        seq: snapshot.seq,
        size: row.size,
        sha256,
        content_type: snapshot.content_type.to_owned(),
        created_at: now,
    })
}

/// Deletes all but the newest `keep` (at least one) snapshots of a user.
pub fn prune_old(conn: &mut DbConn, user: &str, keep: usize) -> QueryResult<usize> {
    let old: Vec<i64> = snapshots::table
        .filter(snapshots::user_id.eq(user))
        .order(snapshots::seq.desc())
        .offset(keep.max(1) as i64)
        .select(snapshots::seq)
        .load(conn)?;
    if old.is_empty() {
        return Ok(0);
    }
    diesel::delete(snapshots::table.filter(snapshots::user_id.eq(user)).filter(snapshots::seq.eq_any(&old)))
        .execute(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
