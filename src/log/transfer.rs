//! Export, import and copy of whole user logs, keeping seqs and ids.
//!
//! An export is a stream of [`Record`]s, one JSON object per line (gzip-compressed
//! when the file name ends in `.gz`): a header, then per user its row, ops,
//! entities (last seqs and tombstones), devices, snapshots and a trailer with a
//! [`Digest`], then an end record. The digest covers every field of every op and
//! snapshot, so an import (and `opsync copy`) checks that what it stored is what
//! was exported, and rolls the user back if not.

use std::io::{BufRead, Write};

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::snapshot::sha256_hex;
use super::{LogError, store};
use crate::db::dialect::{self, OpInsert, SnapshotInsert};
use crate::db::schema::{devices, entities, ops, revoked_tokens, users};
use crate::db::{DbConn, DbError, DbUrl};
use crate::ids::Seq;
use crate::protocol::{Op, Payload};

/// The `format` of the header record.
pub const FORMAT: &str = "opsync-export";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;
/// Rows per read (and per multi-row insert).
const CHUNK: i64 = 500;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// First: what this file is.
    Header {
        /// Always [`FORMAT`].
        format: String,
        /// [`VERSION`].
        version: u32,
        /// When it was written (ms since the epoch).
        exported_at: i64,
    },
    /// A user starts; the records up to its `user_end` are its.
    User {
        /// The user.
        user: String,
        /// Its head.
        head: Seq,
        /// Its retention horizon.
        horizon: Seq,
        /// Its latest snapshot's seq.
        snapshot_seq: Seq,
        /// When it was created.
        created_at: i64,
    },
    /// One op, exactly as stored.
    Op(Op),
    /// An entity's last seq, and its tombstone if its last op is a `del`.
    Entity {
        /// The entity key.
        entity: String,
        /// Its last seq.
        last_seq: Seq,
        /// When it was deleted, if it is a tombstone.
        deleted_at: Option<i64>,
    },
    /// A device and its cursor.
    Device {
        /// Its name.
        id: String,
        /// Its cursor.
        ack_seq: Seq,
        /// Last seen.
        last_seen: i64,
        /// First seen.
        created_at: i64,
    },
    /// A snapshot with its bytes.
    Snapshot {
        /// The seq it covers.
        seq: Seq,
        /// When it was stored.
        created_at: i64,
        /// Its Content-Type.
        content_type: String,
        /// SHA-256 of `data`, hex.
        sha256: String,
        /// Its bytes.
        data: Payload,
    },
    /// The user's trailer: what an import must end up with.
    UserEnd {
        /// The user.
        user: String,
        /// Counts and checksums.
        digest: Digest,
    },
    /// A revoked token's id (exported by `copy` and whole-deployment exports).
    Revoked {
        /// The revocation id (hex).
        id: String,
        /// When.
        revoked_at: i64,
    },
    /// Last: how many users the file holds.
    End {
        /// Users in the file.
        users: u64,
    },
}

/// Counts and checksums of one user's data, computed the same way on any backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The head.
    pub head: Seq,
    /// The horizon.
    pub horizon: Seq,
    /// Ops stored.
    pub ops: i64,
    /// SHA-256 over every field of every op, in seq order.
    pub ops_sha256: String,
    /// Snapshots stored.
    pub snapshots: i64,
    /// SHA-256 over every snapshot's seq, type, time and bytes' SHA-256.
    pub snapshots_sha256: String,
    /// Entity rows.
    pub entities: i64,
    /// Devices.
    pub devices: i64,
    /// SHA-256 over every entity row and device row.
    pub rows_sha256: String,
}

/// What went wrong moving data.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The database.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Opening a database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Reading or writing the file.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not an opsync export, or is damaged.
    #[error("bad export file at line {line}: {reason}")]
    BadFile {
        /// 1-based line.
        line: u64,
        /// Why.
        reason: String,
    },
    /// The user to export does not exist.
    #[error("no user {0:?} in the database")]
    NoSuchUser(String),
    /// The user to import exists already.
    #[error("user {0:?} already exists in the destination; delete it first (opsync user delete)")]
    UserExists(String),
    /// The destination of a copy is not empty.
    #[error("the destination already holds {0} users; copy into an empty database")]
    NotEmpty(i64),
    /// What was stored differs from what was read.
    #[error("verification failed for user {user:?}: expected {expected:?}, found {found:?}")]
    Mismatch {
        /// The user.
        user: String,
        /// From the source.
        expected: Box<Digest>,
        /// In the destination.
        found: Box<Digest>,
    },
}

impl From<diesel::result::Error> for TransferError {
    fn from(e: diesel::result::Error) -> Self {
        TransferError::Log(e.into())
    }
}

fn put_opt_str(h: &mut Sha256, v: Option<&str>) {
    match v {
        Some(s) => {
            h.update([1]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        None => h.update([0]),
    }
}

fn put_opt_i64(h: &mut Sha256, v: Option<i64>) {
    match v {
        Some(n) => {
            h.update([1]);
            h.update(n.to_be_bytes());
        }
        None => h.update([0]),
    }
}

fn hash_op(h: &mut Sha256, op: &Op) {
    h.update(op.seq.to_be_bytes());
    h.update(op.id.as_bytes());
    put_opt_str(h, op.device.as_deref());
    put_opt_str(h, op.entity.as_deref());
    put_opt_str(h, op.kind.as_deref());
    put_opt_i64(h, op.base);
    put_opt_i64(h, op.ts);
    h.update(op.received_at.to_be_bytes());
    h.update((op.payload.0.len() as u64).to_be_bytes());
    h.update(&op.payload.0);
}

/// Computes a [`Digest`] incrementally, from records or from the database.
#[derive(Default)]
struct Digester {
    digest: Digest,
    ops: Sha256,
    snapshots: Sha256,
    rows: Sha256,
}

impl Digester {
    fn record(&mut self, record: &Record) {
        match record {
            Record::User { head, horizon, .. } => {
                self.digest.head = *head;
                self.digest.horizon = *horizon;
            }
            Record::Op(op) => {
                self.digest.ops += 1;
                hash_op(&mut self.ops, op);
            }
            Record::Entity { entity, last_seq, deleted_at } => {
                self.digest.entities += 1;
                self.rows.update([b'e']);
                put_opt_str(&mut self.rows, Some(entity));
                self.rows.update(last_seq.to_be_bytes());
                put_opt_i64(&mut self.rows, *deleted_at);
            }
            Record::Device { id, ack_seq, last_seen, created_at } => {
                self.digest.devices += 1;
                self.rows.update([b'd']);
                put_opt_str(&mut self.rows, Some(id));
                for n in [ack_seq, last_seen, created_at] {
                    self.rows.update(n.to_be_bytes());
                }
            }
            Record::Snapshot { seq, created_at, content_type, sha256, .. } => {
                self.digest.snapshots += 1;
                self.snapshots.update(seq.to_be_bytes());
                self.snapshots.update(created_at.to_be_bytes());
                put_opt_str(&mut self.snapshots, Some(content_type));
                put_opt_str(&mut self.snapshots, Some(sha256));
            }
            Record::Header { .. } | Record::UserEnd { .. } | Record::Revoked { .. } | Record::End { .. } => {}
        }
    }

    fn finish(self) -> Digest {
        Digest {
            ops_sha256: hex::encode(self.ops.finalize()),
            snapshots_sha256: hex::encode(self.snapshots.finalize()),
            rows_sha256: hex::encode(self.rows.finalize()),
            ..self.digest
        }
    }
}

/// Reads one user's records from `conn`, in export order, handing each to `sink`
/// (snapshot bytes only with `with_snapshot_data`; the digest never needs them).
/// Runs in the caller's transaction; returns the user's digest.
fn read_user(
    conn: &mut DbConn,
    user: &str,
    with_snapshot_data: bool,
    sink: &mut dyn FnMut(Record) -> Result<(), TransferError>,
) -> Result<Digest, TransferError> {
    let mut digester = Digester::default();
    let mut emit = |record: Record| -> Result<(), TransferError> {
        digester.record(&record);
        sink(record)
    };
    let row: Option<(i64, i64, i64, i64)> = users::table
        .find(user)
        .select((users::head, users::horizon, users::snapshot_seq, users::created_at))
        .first(conn)
        .optional()?;
    let (head, horizon, snapshot_seq, created_at) = row.ok_or_else(|| TransferError::NoSuchUser(user.to_owned()))?;
    emit(Record::User { user: user.to_owned(), head, horizon, snapshot_seq, created_at })?;
    let mut cursor = -1;
    loop {
        let rows: Vec<store::OpRow> = ops::table
            .filter(ops::user_id.eq(user))
            .filter(ops::seq.gt(cursor))
            .order(ops::seq.asc())
            .limit(CHUNK)
            .select(store::OpRow::as_select())
            .load(conn)?;
        let done = (rows.len() as i64) < CHUNK;
        for row in rows {
            let op = Op::try_from(row).map_err(|e| match e {
                LogError::Corrupt(what) => LogError::Corrupt(format!("user {user}, {what}")),
                other => other,
            })?;
            cursor = op.seq;
            emit(Record::Op(op))?;
        }
        if done {
            break;
        }
    }
    let mut after = String::new();
    loop {
        let rows: Vec<(String, i64, Option<i64>)> = entities::table
            .filter(entities::user_id.eq(user))
            .filter(entities::entity.gt(&after))
            .order(entities::entity.asc())
            .limit(CHUNK)
            .select((entities::entity, entities::last_seq, entities::deleted_at))
            .load(conn)?;
        let done = (rows.len() as i64) < CHUNK;
        for (entity, last_seq, deleted_at) in rows {
            after.clone_from(&entity);
            emit(Record::Entity { entity, last_seq, deleted_at })?;
        }
        if done {
            break;
        }
    }
    let rows: Vec<(String, i64, i64, i64)> = devices::table
        .filter(devices::user_id.eq(user))
        .order(devices::id.asc())
        .select((devices::id, devices::ack_seq, devices::last_seen, devices::created_at))
        .load(conn)?;
    for (id, ack_seq, last_seen, created_at) in rows {
        emit(Record::Device { id, ack_seq, last_seen, created_at })?;
    }
    for info in super::snapshot::list(conn, user)? {
        let data = if with_snapshot_data {
            super::snapshot::data(conn, user, info.seq)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        emit(Record::Snapshot {
            seq: info.seq,
            created_at: info.created_at,
            content_type: info.content_type,
            sha256: info.sha256,
            data: Payload(data),
        })?;
    }
    let digest = digester.finish();
    sink(Record::UserEnd { user: user.to_owned(), digest: digest.clone() })?;
    Ok(digest)
}

/// Runs `f` in a read transaction that sees one state of the database.
fn consistent_read<T>(
    conn: &mut DbConn,
    f: impl FnOnce(&mut DbConn) -> Result<T, TransferError>,
) -> Result<T, TransferError> {
    dialect::begin_consistent_read(conn)?;
    let result = f(conn);
    // Read-only: rolling back ends it either way.
    dialect::rollback(conn)?;
    result
}

/// The digest of one user as stored in `conn`.
pub fn digest(conn: &mut DbConn, user: &str) -> Result<Digest, TransferError> {
    consistent_read(conn, |conn| read_user(conn, user, false, &mut |_| Ok(())))
}

/// Writes one JSON line.
fn write_line(out: &mut dyn Write, record: &Record) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, record).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn header() -> Record {
    Record::Header { format: FORMAT.to_owned(), version: VERSION, exported_at: super::now_ms() }
}

/// Exports users (all of them, and the revocation list, when `users` is empty) to
/// `out`, one consistent read per user. Returns each user's digest.
pub fn export(
    conn: &mut DbConn,
    users: &[String],
    out: &mut dyn Write,
) -> Result<Vec<(String, Digest)>, TransferError> {
    write_line(out, &header())?;
    let all = users.is_empty();
    let users = if all { super::retention::users(conn)? } else { users.to_vec() };
    let mut digests = Vec::new();
    for user in &users {
        let digest = consistent_read(conn, |conn| read_user(conn, user, true, &mut |r| write_line(out, &r)))?;
        digests.push((user.clone(), digest));
    }
    if all {
        let revoked: Vec<(String, i64)> =
            revoked_tokens::table.select((revoked_tokens::id, revoked_tokens::revoked_at)).load(conn)?;
        for (id, revoked_at) in revoked {
            write_line(out, &Record::Revoked { id, revoked_at })?;
        }
    }
    write_line(out, &Record::End { users: users.len() as u64 })?;
    out.flush()?;
    Ok(digests)
}

/// Loads records into a database: each user in one write transaction, checked
/// against its trailer's digest (read back from the database) before commit.
pub struct Importer<'c> {
    conn: &'c mut DbConn,
    user: Option<String>,
    digester: Digester,
    ops: Vec<Op>,
    entities: Vec<(String, Seq, Option<i64>)>,
    line: u64,
    seen_header: bool,
    /// Users imported so far.
    pub imported: Vec<(String, Digest)>,
    /// The end record was seen.
    pub finished: bool,
}

impl<'c> Importer<'c> {
    /// An importer into `conn` (migrated).
    pub fn new(conn: &'c mut DbConn) -> Self {
        Self {
            conn,
            user: None,
            digester: Digester::default(),
            ops: Vec::new(),
            entities: Vec::new(),
            line: 0,
            seen_header: false,
            imported: Vec::new(),
            finished: false,
        }
    }

    fn bad(&self, reason: impl Into<String>) -> TransferError {
        TransferError::BadFile { line: self.line, reason: reason.into() }
    }

    /// Takes the next record.
    pub fn record(&mut self, record: Record) -> Result<(), TransferError> {
        self.line += 1;
        let result = self.apply(record);
        if result.is_err() && self.user.take().is_some() {
            let _ = dialect::rollback(self.conn);
        }
        result
    }

    fn apply(&mut self, record: Record) -> Result<(), TransferError> {
        if self.finished {
            return Err(self.bad("records after the end record"));
        }
        match (&record, self.user.is_some()) {
            (Record::Header { format, version, .. }, false) if !self.seen_header => {
                if format != FORMAT || *version != VERSION {
                    return Err(self.bad(format!("not an {FORMAT} version {VERSION} file ({format} {version})")));
                }
                self.seen_header = true;
                return Ok(());
            }
            _ if !self.seen_header => return Err(self.bad("missing header: not an opsync export")),
            _ => {}
        }
        self.digester.record(&record);
        match record {
            Record::User { user, head, horizon, snapshot_seq, created_at } if self.user.is_none() => {
                dialect::begin_write(self.conn)?;
                self.user = Some(user.clone());
                let exists: i64 = users::table.filter(users::id.eq(&user)).count().get_result(self.conn)?;
                if exists > 0 {
                    return Err(TransferError::UserExists(user));
                }
                diesel::insert_into(users::table)
                    .values((
                        users::id.eq(&user),
                        users::head.eq(head),
                        users::created_at.eq(created_at),
                        users::horizon.eq(horizon),
                        users::snapshot_seq.eq(snapshot_seq),
                    ))
                    .execute(self.conn)?;
            }
            Record::Op(op) if self.user.is_some() => {
                self.ops.push(op);
                if self.ops.len() as i64 >= CHUNK {
                    self.flush_ops()?;
                }
            }
            Record::Entity { entity, last_seq, deleted_at } if self.user.is_some() => {
                self.entities.push((entity, last_seq, deleted_at));
                if self.entities.len() as i64 >= CHUNK {
                    self.flush_entities()?;
                }
            }
            Record::Device { id, ack_seq, last_seen, created_at } => {
                let user = self.current()?;
                diesel::insert_into(devices::table)
                    .values((
                        devices::user_id.eq(&user),
                        devices::id.eq(id),
                        devices::ack_seq.eq(ack_seq),
                        devices::last_seen.eq(last_seen),
                        devices::created_at.eq(created_at),
                    ))
                    .execute(self.conn)?;
            }
            Record::Snapshot { seq, created_at, content_type, sha256, data } => {
                let user = self.current()?;
                if sha256_hex(&data.0) != sha256 {
                    return Err(self.bad(format!("snapshot {seq} of {user}: bytes do not match its sha256")));
                }
                let row = SnapshotInsert {
                    user_id: &user,
                    seq,
                    created_at,
                    size: data.0.len() as i64,
                    sha256: &sha256,
                    content_type: &content_type,
                    data: &data.0,
                };
                dialect::upsert_snapshot(self.conn, &row)?;
            }
            Record::UserEnd { user, digest } => {
                if self.user.as_deref() != Some(user.as_str()) {
                    return Err(self.bad(format!("user_end for {user:?} outside that user")));
                }
                self.flush_ops()?;
                self.flush_entities()?;
                let read = std::mem::take(&mut self.digester).finish();
                if read != digest {
                    return Err(TransferError::Mismatch { user, expected: Box::new(digest), found: Box::new(read) });
                }
                let stored = read_user(self.conn, &user, false, &mut |_| Ok(()))?;
                if stored != digest {
                    return Err(TransferError::Mismatch { user, expected: Box::new(digest), found: Box::new(stored) });
                }
                dialect::commit(self.conn)?;
                self.user = None;
                self.imported.push((user, digest));
            }
            Record::Revoked { id, revoked_at } if self.user.is_none() => {
                dialect::insert_revoked(self.conn, &[id], revoked_at)?;
            }
            Record::End { users } if self.user.is_none() => {
                if users != self.imported.len() as u64 {
                    return Err(self.bad(format!("the file names {users} users but holds {}", self.imported.len())));
                }
                self.finished = true;
            }
            other => return Err(self.bad(format!("unexpected record here: {}", kind(&other)))),
        }
        Ok(())
    }

    fn current(&self) -> Result<String, TransferError> {
        self.user.clone().ok_or_else(|| self.bad("a user's record outside any user"))
    }

    fn flush_ops(&mut self) -> Result<(), TransferError> {
        let user = match &self.user {
            Some(user) if !self.ops.is_empty() => user.clone(),
            _ => return Ok(()),
        };
        let rows: Vec<OpInsert<'_>> = self
            .ops
            .iter()
            .map(|op| OpInsert {
                user_id: &user,
                seq: op.seq,
                op_id: &op.id.as_bytes()[..],
                device: op.device.as_deref(),
                entity: op.entity.as_deref(),
                kind: op.kind.as_deref(),
                base: op.base,
                client_ts: op.ts,
                received_at: op.received_at,
                payload: &op.payload.0,
            })
            .collect();
        dialect::insert_ops(self.conn, &rows)?;
        // The quota's usage, counted as a push counts it.
        let bytes: i64 = self.ops.iter().map(|op| op.payload.0.len() as i64).sum();
        diesel::update(users::table.find(&user))
            .set(users::stored_bytes.eq(users::stored_bytes + bytes))
            .execute(self.conn)?;
        self.ops.clear();
        Ok(())
    }

    fn flush_entities(&mut self) -> Result<(), TransferError> {
        let user = match &self.user {
            Some(user) if !self.entities.is_empty() => user.clone(),
            _ => return Ok(()),
        };
        let rows: Vec<(&str, i64, Option<i64>)> = self.entities.iter().map(|(e, s, d)| (e.as_str(), *s, *d)).collect();
        dialect::upsert_entities(self.conn, &user, &rows)?;
        self.entities.clear();
        Ok(())
    }

    /// Ends the import: a file without its end record was truncated.
    pub fn finish(mut self) -> Result<Vec<(String, Digest)>, TransferError> {
        if let Some(user) = self.user.take() {
            let _ = dialect::rollback(self.conn);
            return Err(TransferError::BadFile {
                line: self.line,
                reason: format!("the file ends inside user {user:?} (truncated?); that user was not imported"),
            });
        }
        if !self.finished {
            return Err(TransferError::BadFile { line: self.line, reason: "no end record (truncated?)".into() });
        }
        Ok(self.imported)
    }
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::Header { .. } => "header",
        Record::User { .. } => "user",
        Record::Op(_) => "op",
        Record::Entity { .. } => "entity",
        Record::Device { .. } => "device",
        Record::Snapshot { .. } => "snapshot",
        Record::UserEnd { .. } => "user_end",
        Record::Revoked { .. } => "revoked",
        Record::End { .. } => "end",
    }
}

/// Imports an export read from `input` (JSON lines, gzip detected by its magic).
pub fn import(conn: &mut DbConn, input: impl BufRead) -> Result<Vec<(String, Digest)>, TransferError> {
    let mut input = input;
    let gzip = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn BufRead> = if gzip {
        Box::new(std::io::BufReader::new(flate2::bufread::MultiGzDecoder::new(input)))
    } else {
        Box::new(input)
    };
    let mut importer = Importer::new(conn);
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| TransferError::BadFile { line: n as u64 + 1, reason: e.to_string() })?;
        importer.record(record)?;
    }
    let imported = importer.finish()?;
    crate::db::analyze(conn)?;
    Ok(imported)
}

/// What `opsync copy` did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Each user with its digest, verified equal on both sides.
    pub users: Vec<(String, Digest)>,
    /// Revocation ids copied.
    pub revoked: usize,
}

/// Copies a whole deployment from one database to another (SQLite to Postgres or
/// back), then verifies every user: counts and checksums read from the source
/// and from the destination must agree. The destination must hold no users.
pub fn copy(from: &DbUrl, to: &DbUrl) -> Result<CopyReport, TransferError> {
    let mut source = crate::db::connect(from)?;
    crate::db::migrate(&mut source)?;
    let mut dest = crate::db::connect(to)?;
    crate::db::migrate(&mut dest)?;
    let existing: i64 = users::table.count().get_result(&mut dest)?;
    if existing > 0 {
        return Err(TransferError::NotEmpty(existing));
    }
    let users = super::retention::users(&mut source)?;
    let mut importer = Importer::new(&mut dest);
    importer.record(header())?;
    for user in &users {
        tracing::info!(%user, "copying");
        consistent_read(&mut source, |conn| read_user(conn, user, true, &mut |r| importer.record(r)))?;
    }
    let revoked: Vec<(String, i64)> =
        revoked_tokens::table.select((revoked_tokens::id, revoked_tokens::revoked_at)).load(&mut source)?;
    for (id, revoked_at) in &revoked {
        importer.record(Record::Revoked { id: id.clone(), revoked_at: *revoked_at })?;
    }
    importer.record(Record::End { users: users.len() as u64 })?;
    importer.finish()?;
    crate::db::analyze(&mut dest)?;
    // The verification pass: both sides read afresh.
    let mut report = CopyReport { users: Vec::new(), revoked: revoked.len() };
    for user in &users {
        let expected = digest(&mut source, user)?;
        let found = digest(&mut dest, user)?;
        if expected != found {
            return Err(TransferError::Mismatch {
                user: user.clone(),
                expected: Box::new(expected),
                found: Box::new(found),
            });
        }
        report.users.push((user.clone(), found));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OpId;

    #[test]
    fn records_round_trip_as_json_lines() -> Result<(), serde_json::Error> {
        let op = Op {
            seq: 3,
            id: OpId::generate(),
            device: None,
            entity: Some("e".into()),
            kind: Some("del".into()),
            base: None,
            ts: Some(5),
            received_at: 9,
            payload: Payload(vec![0, 255]),
        };
        for record in [
            header(),
            Record::Op(op),
            Record::Entity { entity: "e".into(), last_seq: 3, deleted_at: Some(9) },
            Record::End { users: 1 },
        ] {
            let line = serde_json::to_string(&record)?;
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Record>(&line)?, record);
        }
        Ok(())
    }
}
