//! The only place that matches on the backend: per-connection pragmas, transaction
//! start, upserts and row locks. Each function builds one backend-neutral diesel
//! statement and runs it on the concrete connection, because diesel's multi-backend
//! type cannot express `ON CONFLICT`.

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::DbConn;
use super::schema::{devices, entities, ops, revoked_tokens, snapshots, users};

/// Runs one statement on whichever connection `$conn` holds.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            DbConn::Sqlite($c) => $body,
            DbConn::Pg($c) => $body,
        }
    };
}

/// Settings every new connection gets.
pub(crate) fn configure_connection(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(c) => c.batch_execute(&format!(
            // FULL: a commit is on disk before we answer (survives power loss).
            "PRAGMA busy_timeout = {}; PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;",
            super::sqlite_busy_timeout_ms()
        )),
        // Custom plans: a statement diesel prepared while a table was small keeps a
        // generic plan that scans the user's whole log for a handful of op ids
        // (seen: 30 ms instead of 0.1 ms per push after 20,000 ops).
        DbConn::Pg(c) => c.batch_execute("SET application_name = 'opsync'; SET plan_cache_mode = force_custom_plan"),
    }
}

/// WAL pages after which a SQLite writer checkpoints at commit itself: a backstop
/// for when its checkpointer thread ([`checkpoint`]) falls behind (SQLite's own
/// default is 1,000 pages, checkpointed on the committing thread).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Settings of a writer's own connection. SQLite: the writer checkpoints the WAL
/// at commit only past [`WRITER_AUTOCHECKPOINT_PAGES`]; below that the writer's
/// checkpointer thread does it, so copying the WAL into the database file (and
/// that file's fsync) stays off the commit path. Postgres: nothing.
pub(crate) fn configure_writer(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(c) => c.batch_execute(&format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")),
        DbConn::Pg(_) => Ok(()),
    }
}

/// Whether the writers need a checkpointer thread: SQLite in WAL mode, see
/// [`configure_writer`].
pub(crate) fn needs_checkpointer(conn: &DbConn) -> bool {
    matches!(conn, DbConn::Sqlite(_))
}

/// A passive WAL checkpoint: copies committed pages into the database file
/// without blocking the writer or the readers (SQLite; a no-op on Postgres).
pub(crate) fn checkpoint(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(c) => c.batch_execute("PRAGMA wal_checkpoint(PASSIVE)"),
        DbConn::Pg(_) => Ok(()),
    }
}

/// Starts a write transaction. SQLite takes the write lock at once (`BEGIN IMMEDIATE`),
/// so a transaction never fails half-way with a busy error on lock upgrade. Begun
/// through diesel's transaction manager so statements that open their own
/// transaction (diesel's SQLite batch insert) nest as savepoints.
pub(crate) fn begin_write(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
        DbConn::Pg(c) => AnsiTransactionManager::begin_transaction(c),
    }
}

/// Commits the transaction [`begin_write`] started.
pub(crate) fn commit(conn: &mut DbConn) -> QueryResult<()> {
    on_backend!(conn, |c| AnsiTransactionManager::commit_transaction(c))
}

/// Rolls back the transaction [`begin_write`] started.
pub(crate) fn rollback(conn: &mut DbConn) -> QueryResult<()> {
    on_backend!(conn, |c| AnsiTransactionManager::rollback_transaction(c))
}

/// Creates the user's row if needed and returns its head. On Postgres the upsert
/// locks the row until the transaction ends: every push of this user, on any node,
/// waits here, so seqs are assigned and committed in one order.
pub(crate) fn lock_user(conn: &mut DbConn, user: &str, now: i64) -> QueryResult<i64> {
    lock_user_state(conn, user, now).map(|state| state.head)
}

/// What [`lock_user_state`] returns: the user's row as the lock found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserState {
    /// The highest seq.
    pub head: i64,
    /// Ops at or below it may have been pruned.
    pub horizon: i64,
    /// The latest snapshot's seq (0: none).
    pub snapshot_seq: i64,
    /// Op payload bytes the user stores (what the quota limits).
    pub stored_bytes: i64,
}

/// [`lock_user`], returning the whole state of the user's log in the same statement.
pub(crate) fn lock_user_state(conn: &mut DbConn, user: &str, now: i64) -> QueryResult<UserState> {
    let query = diesel::insert_into(users::table)
        .values((users::id.eq(user), users::head.eq(0_i64), users::created_at.eq(now)))
        .on_conflict(users::id)
        .do_update()
        .set(users::head.eq(users::head))
        .returning((users::head, users::horizon, users::snapshot_seq, users::stored_bytes));
    let (head, horizon, snapshot_seq, stored_bytes) = on_backend!(conn, |c| query.get_result(c))?;
    Ok(UserState { head, horizon, snapshot_seq, stored_bytes })
}

/// Starts a read-only transaction that sees one consistent state of the database
/// for its whole length (exports and copies read a user's log in many statements).
pub(crate) fn begin_consistent_read(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        // In WAL mode a deferred transaction reads one snapshot once it has read.
        DbConn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN"),
        DbConn::Pg(c) => {
            AnsiTransactionManager::begin_transaction_sql(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        }
    }
}

/// Takes the cluster-wide compaction lock without waiting: `false` if another
/// node's compaction holds it. A session lock on Postgres (released by
/// [`release_compaction_lock`] or when the connection ends); SQLite has one node.
pub(crate) fn try_compaction_lock(conn: &mut DbConn) -> QueryResult<bool> {
    match conn {
        DbConn::Sqlite(_) => Ok(true),
        DbConn::Pg(c) => diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_lock({PG_COMPACTION_LOCK})"
        )))
        .get_result(c),
    }
}

/// Releases what [`try_compaction_lock`] took.
pub(crate) fn release_compaction_lock(conn: &mut DbConn) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(_) => Ok(()),
        DbConn::Pg(c) => c.batch_execute(&format!("SELECT pg_advisory_unlock({PG_COMPACTION_LOCK})")),
    }
}

/// An arbitrary, fixed advisory-lock key for compaction runs (one node at a time).
const PG_COMPACTION_LOCK: i64 = 0x6f70_7379_6e64;

/// Stores a snapshot, replacing one of the same user and seq.
pub(crate) fn upsert_snapshot(conn: &mut DbConn, row: &SnapshotInsert<'_>) -> QueryResult<()> {
    let query = diesel::insert_into(snapshots::table)
        .values(row)
        .on_conflict((snapshots::user_id, snapshots::seq))
        .do_update()
        .set((
            snapshots::created_at.eq(excluded(snapshots::created_at)),
            snapshots::size.eq(excluded(snapshots::size)),
            snapshots::sha256.eq(excluded(snapshots::sha256)),
            snapshots::content_type.eq(excluded(snapshots::content_type)),
            snapshots::data.eq(excluded(snapshots::data)),
        ));
    on_backend!(conn, |c| query.execute(c)).map(drop)
}

/// One snapshot row to insert.
#[derive(Insertable)]
#[diesel(table_name = snapshots)]
pub(crate) struct SnapshotInsert<'a> {
    pub user_id: &'a str,
    pub seq: i64,
    pub created_at: i64,
    pub size: i64,
    pub sha256: &'a str,
    pub content_type: &'a str,
    pub data: &'a [u8],
}

/// Records the last seq of each entity, `(entity, seq, deleted_at)` with distinct
/// entities; `deleted_at` is set when that last op is a `del` (a tombstone).
pub(crate) fn upsert_entities(conn: &mut DbConn, user: &str, last: &[(&str, i64, Option<i64>)]) -> QueryResult<()> {
    let rows: Vec<_> = last.iter().map(|&(entity, seq, deleted_at)| (user, entity, seq, deleted_at)).collect();
    upsert_user_entities(conn, &rows)
}

/// Notes that a device was seen now, creating its row if it is new.
pub(crate) fn touch_device(conn: &mut DbConn, user: &str, device: &str, now: i64) -> QueryResult<()> {
    let query = diesel::insert_into(devices::table)
        .values((
            devices::user_id.eq(user),
            devices::id.eq(device),
            devices::ack_seq.eq(0_i64),
            devices::last_seen.eq(now),
            devices::created_at.eq(now),
        ))
        .on_conflict((devices::user_id, devices::id))
        .do_update()
        .set(devices::last_seen.eq(excluded(devices::last_seen)));
    on_backend!(conn, |c| query.execute(c)).map(drop)
}

/// Moves a device's cursor forward to `seq` (never backwards) and returns the cursor.
pub(crate) fn advance_cursor(conn: &mut DbConn, user: &str, device: &str, seq: i64, now: i64) -> QueryResult<i64> {
    // Insert-or-ignore, then a conditional update: the same two statements on both
    // backends, instead of MAX() on SQLite and GREATEST() on Postgres.
    touch_device(conn, user, device, now)?;
    diesel::update(devices::table.find((user, device)))
        .filter(devices::ack_seq.lt(seq))
        .set(devices::ack_seq.eq(seq))
        .execute(conn)?;
    devices::table.find((user, device)).select(devices::ack_seq).first(conn)
}

/// Adds revocation ids (hex); ids already revoked are left as they are.
pub(crate) fn insert_revoked(conn: &mut DbConn, ids: &[String], now: i64) -> QueryResult<usize> {
    let rows: Vec<_> = ids.iter().map(|id| (revoked_tokens::id.eq(id), revoked_tokens::revoked_at.eq(now))).collect();
    let query = diesel::insert_into(revoked_tokens::table).values(&rows).on_conflict_do_nothing();
    on_backend!(conn, |c| query.execute(c))
}

/// One op row to insert.
#[derive(Insertable)]
#[diesel(table_name = ops, treat_none_as_null = true)]
pub(crate) struct OpInsert<'a> {
    pub user_id: &'a str,
    pub seq: i64,
    pub op_id: &'a [u8],
    pub device: Option<&'a str>,
    pub entity: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub base: Option<i64>,
    pub client_ts: Option<i64>,
    pub received_at: i64,
    pub payload: &'a [u8],
}

/// Rows per multi-row INSERT (10 parameters each; well under both backends' limits).
const INSERT_CHUNK: usize = 500;

/// Inserts ops with multi-row INSERTs (one statement per 500 rows).
///
/// On SQLite the statement is written out here: diesel inserts a batch of
/// `Insertable` structs there row by row inside a savepoint, and a savepoint
/// within the writer's transaction makes SQLite copy every page it touches to a
/// statement journal first (a file write per page: 40 % of the writer's time with
/// 1,000 one-op pushes per batch, measured with perf). `OR FAIL` spares the
/// statement journal that a multi-row statement which may abort half-way needs as
/// well: a failed statement leaves its earlier rows behind, which is harmless
/// because every caller rolls the whole transaction back on any error.
pub(crate) fn insert_ops(conn: &mut DbConn, rows: &[OpInsert<'_>]) -> QueryResult<()> {
    use diesel::sql_types::{BigInt, Binary, Nullable, Text};
    match conn {
        DbConn::Pg(c) => {
            for chunk in rows.chunks(INSERT_CHUNK) {
                diesel::insert_into(ops::table).values(chunk).execute(c)?;
            }
        }
        DbConn::Sqlite(c) => {
            for chunk in rows.chunks(INSERT_CHUNK) {
                let sql = format!(
                    "INSERT OR FAIL INTO ops \
                     (user_id, seq, op_id, device, entity, kind, base, client_ts, received_at, payload) VALUES {}",
                    placeholders("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", chunk.len())
                );
                let mut query = diesel::sql_query(sql).into_boxed();
                for row in chunk {
                    query = query
                        .bind::<Text, _>(row.user_id)
                        .bind::<BigInt, _>(row.seq)
                        .bind::<Binary, _>(row.op_id)
                        .bind::<Nullable<Text>, _>(row.device)
                        .bind::<Nullable<Text>, _>(row.entity)
                        .bind::<Nullable<Text>, _>(row.kind)
                        .bind::<Nullable<BigInt>, _>(row.base)
                        .bind::<Nullable<BigInt>, _>(row.client_ts)
                        .bind::<BigInt, _>(row.received_at)
                        .bind::<Binary, _>(row.payload);
                }
                query.execute(c)?;
            }
        }
    }
    Ok(())
}

/// The Postgres channel commits are announced on, for the other nodes.
pub const NOTIFY_CHANNEL: &str = "opsync_commits";

/// Whether commits must be announced to other nodes: on Postgres (several nodes
/// may share it), not on SQLite (one node).
pub(crate) fn announces_commits(conn: &DbConn) -> bool {
    matches!(conn, DbConn::Pg(_))
}

/// Announces committed seq ranges and deleted users to the other nodes (Postgres
/// only; SQLite has one node). Runs inside the write transaction: Postgres delivers
/// the notifications at COMMIT, in commit order, and drops them on rollback. Each
/// payload is `NODE FROM TO USER` or `NODE del USER` (the user last: it may contain
/// anything but whitespace).
pub(crate) fn notify_commits(
    conn: &mut DbConn,
    node: &str,
    ranges: &[(&str, i64, i64)],
    deleted: &[&str],
) -> QueryResult<()> {
    let DbConn::Pg(c) = conn else { return Ok(()) };
    if ranges.is_empty() && deleted.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = ranges
        .iter()
        .map(|(user, from, to)| format!("{node} {from} {to} {user}"))
        .chain(deleted.iter().map(|user| format!("{node} del {user}")))
        .collect();
    diesel::sql_query(format!("SELECT pg_notify('{NOTIFY_CHANNEL}', p) FROM unnest($1::text[]) AS p"))
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(payloads)
        .execute(c)
        .map(drop)
}

// Batch-level statements: one statement (or one per chunk) for all the pushes of a
// writer batch's segment, whatever the number of pushes and users. On Postgres the
// keys travel as arrays (`unnest`), so each statement has one fixed shape that
// diesel prepares once; on SQLite they are multi-row `VALUES` lists, chunked to
// stay under its bound-parameter limit (32,766), and their writes are `OR FAIL`
// (see [`insert_ops`]): every caller rolls back the whole transaction on an error.

/// Rows per SQLite `VALUES` list (at most 3 parameters each).
const SQLITE_KEY_CHUNK: usize = 5_000;

/// A user's row as [`lock_users`] found it.
#[derive(QueryableByName)]
struct LockedUser {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    head: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    horizon: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    snapshot_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    stored_bytes: i64,
}

/// `?, ?, …`-style placeholders: `rows` groups of `row` (e.g. `"(?, ?)"`), comma-separated.
fn placeholders(row: &str, rows: usize) -> String {
    let mut out = String::with_capacity(rows * (row.len() + 2));
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(row);
    }
    out
}

/// [`lock_user_state`] for many users in one statement: creates the rows that are
/// missing and locks them all, in the order given (`users`: distinct, ascending,
/// the order every writer batch takes its user locks in). Postgres inserts (or
/// updates in place) the rows in array order, so the row locks are taken in that
/// order, as consecutive [`lock_user`] calls would take them; SQLite's one writer
/// already holds the database's write lock. Returns each user's state.
pub(crate) fn lock_users(conn: &mut DbConn, users: &[&str], now: i64) -> QueryResult<Vec<(String, UserState)>> {
    use diesel::sql_types::{Array, BigInt, Text};
    let rows: Vec<LockedUser> = match conn {
        DbConn::Pg(c) => diesel::sql_query(
            "INSERT INTO users (id, head, created_at) \
             SELECT k.id, 0, $2 FROM unnest($1::text[]) WITH ORDINALITY AS k(id, n) ORDER BY k.n \
             ON CONFLICT (id) DO UPDATE SET head = users.head \
             RETURNING id, head, horizon, snapshot_seq, stored_bytes",
        )
        .bind::<Array<Text>, _>(users)
        .bind::<BigInt, _>(now)
        .load(c)?,
        DbConn::Sqlite(c) => {
            let mut rows = Vec::with_capacity(users.len());
            for chunk in users.chunks(SQLITE_KEY_CHUNK) {
                let sql = format!(
                    "INSERT OR FAIL INTO users (id, head, created_at) VALUES {} \
                     ON CONFLICT (id) DO UPDATE SET head = head \
                     RETURNING id, head, horizon, snapshot_seq, stored_bytes",
                    placeholders(&format!("(?, 0, {now})"), chunk.len())
                );
                let mut query = diesel::sql_query(sql).into_boxed();
                for user in chunk {
                    query = query.bind::<Text, _>(*user);
                }
                rows.extend(query.load::<LockedUser>(c)?);
            }
            rows
        }
    };
    Ok(rows
        .into_iter()
        .map(|r| {
            let state = UserState {
                head: r.head,
                horizon: r.horizon,
                snapshot_seq: r.snapshot_seq,
                stored_bytes: r.stored_bytes,
            };
            (r.id, state)
        })
        .collect())
}

/// An op a push may repeat, as [`stored_ops`] reads it.
#[derive(QueryableByName)]
pub(crate) struct StoredOpRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub user_id: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub op_id: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub seq: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub entity: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub kind: Option<String>,
}

/// The stored ops among `(user, op id)` keys, in one statement (per chunk on
/// SQLite): one primary-key probe of `ops (user_id, op_id)` per key.
pub(crate) fn stored_ops(conn: &mut DbConn, keys: &[(&str, &[u8])]) -> QueryResult<Vec<StoredOpRow>> {
    use diesel::sql_types::{Array, Binary, Text};
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        DbConn::Pg(c) => {
            let users: Vec<&str> = keys.iter().map(|k| k.0).collect();
            let ids: Vec<&[u8]> = keys.iter().map(|k| k.1).collect();
            diesel::sql_query(
                "SELECT o.user_id, o.op_id, o.seq, o.payload, o.entity, o.kind \
                 FROM unnest($1::text[], $2::bytea[]) AS k(user_id, op_id) \
                 JOIN ops o ON o.user_id = k.user_id AND o.op_id = k.op_id",
            )
            .bind::<Array<Text>, _>(users)
            .bind::<Array<Binary>, _>(ids)
            .load(c)
        }
        DbConn::Sqlite(c) => {
            let mut rows = Vec::new();
            for chunk in keys.chunks(SQLITE_KEY_CHUNK) {
                // CROSS JOIN: SQLite keeps the keys as the outer loop.
                let sql = format!(
                    "SELECT o.user_id, o.op_id, o.seq, o.payload, o.entity, o.kind \
                     FROM (VALUES {}) AS k CROSS JOIN ops AS o \
                     ON o.user_id = k.column1 AND o.op_id = k.column2",
                    placeholders("(?, ?)", chunk.len())
                );
                let mut query = diesel::sql_query(sql).into_boxed();
                for (user, id) in chunk {
                    query = query.bind::<Text, _>(*user).bind::<Binary, _>(*id);
                }
                rows.extend(query.load::<StoredOpRow>(c)?);
            }
            Ok(rows)
        }
    }
}

/// An entity's last seq, as [`entity_seqs`] reads it.
#[derive(QueryableByName)]
pub(crate) struct EntitySeqRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub user_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub entity: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub last_seq: i64,
}

/// The last seqs of the `(user, entity)` keys that have one, in one statement (per
/// chunk on SQLite).
pub(crate) fn entity_seqs(conn: &mut DbConn, keys: &[(&str, &str)]) -> QueryResult<Vec<EntitySeqRow>> {
    use diesel::sql_types::{Array, Text};
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        DbConn::Pg(c) => {
            let users: Vec<&str> = keys.iter().map(|k| k.0).collect();
            let names: Vec<&str> = keys.iter().map(|k| k.1).collect();
            diesel::sql_query(
                "SELECT e.user_id, e.entity, e.last_seq \
                 FROM unnest($1::text[], $2::text[]) AS k(user_id, entity) \
                 JOIN entities e ON e.user_id = k.user_id AND e.entity = k.entity",
            )
            .bind::<Array<Text>, _>(users)
            .bind::<Array<Text>, _>(names)
            .load(c)
        }
        DbConn::Sqlite(c) => {
            let mut rows = Vec::new();
            for chunk in keys.chunks(SQLITE_KEY_CHUNK) {
                let sql = format!(
                    "SELECT e.user_id, e.entity, e.last_seq \
                     FROM (VALUES {}) AS k CROSS JOIN entities AS e \
                     ON e.user_id = k.column1 AND e.entity = k.column2",
                    placeholders("(?, ?)", chunk.len())
                );
                let mut query = diesel::sql_query(sql).into_boxed();
                for (user, entity) in chunk {
                    query = query.bind::<Text, _>(*user).bind::<Text, _>(*entity);
                }
                rows.extend(query.load::<EntitySeqRow>(c)?);
            }
            Ok(rows)
        }
    }
}

/// [`upsert_entities`] for several users: `(user, entity, seq, deleted_at)`, with
/// distinct `(user, entity)` keys.
pub(crate) fn upsert_user_entities(conn: &mut DbConn, last: &[(&str, &str, i64, Option<i64>)]) -> QueryResult<()> {
    if last.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = last
        .iter()
        .map(|(user, entity, seq, deleted_at)| {
            (
                entities::user_id.eq(*user),
                entities::entity.eq(*entity),
                entities::last_seq.eq(*seq),
                entities::deleted_at.eq(*deleted_at),
            )
        })
        .collect();
    // Chunked: a statement has at most 32766 (SQLite) / 65535 (Postgres) parameters.
    for chunk in rows.chunks(1000) {
        let query = diesel::insert_into(entities::table)
            .values(chunk)
            .on_conflict((entities::user_id, entities::entity))
            .do_update()
            .set((
                entities::last_seq.eq(excluded(entities::last_seq)),
                entities::deleted_at.eq(excluded(entities::deleted_at)),
            ));
        on_backend!(&mut *conn, |c| query.execute(c))?;
    }
    Ok(())
}

/// Sets each user's head and adds to its stored bytes: `(user, head, added bytes)`,
/// distinct users, in one statement (per chunk on SQLite).
pub(crate) fn advance_heads(conn: &mut DbConn, heads: &[(&str, i64, i64)]) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Text};
    if heads.is_empty() {
        return Ok(());
    }
    match conn {
        DbConn::Pg(c) => {
            let users: Vec<&str> = heads.iter().map(|h| h.0).collect();
            let seqs: Vec<i64> = heads.iter().map(|h| h.1).collect();
            let added: Vec<i64> = heads.iter().map(|h| h.2).collect();
            diesel::sql_query(
                "UPDATE users SET head = v.head, stored_bytes = users.stored_bytes + v.added \
                 FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(id, head, added) WHERE users.id = v.id",
            )
            .bind::<Array<Text>, _>(users)
            .bind::<Array<BigInt>, _>(seqs)
            .bind::<Array<BigInt>, _>(added)
            .execute(c)
            .map(drop)
        }
        DbConn::Sqlite(c) => {
            for chunk in heads.chunks(SQLITE_KEY_CHUNK) {
                let sql = format!(
                    "UPDATE OR FAIL users SET head = v.column2, stored_bytes = stored_bytes + v.column3 \
                     FROM (VALUES {}) AS v WHERE users.id = v.column1",
                    placeholders("(?, ?, ?)", chunk.len())
                );
                let mut query = diesel::sql_query(sql).into_boxed();
                for (user, head, added) in chunk {
                    query = query.bind::<Text, _>(*user).bind::<BigInt, _>(*head).bind::<BigInt, _>(*added);
                }
                query.execute(c)?;
            }
            Ok(())
        }
    }
}

/// [`touch_device`] for several devices: distinct `(user, device)` pairs.
pub(crate) fn touch_devices(conn: &mut DbConn, seen: &[(&str, &str)], now: i64) -> QueryResult<()> {
    let rows: Vec<_> = seen
        .iter()
        .map(|(user, device)| {
            (
                devices::user_id.eq(*user),
                devices::id.eq(*device),
                devices::ack_seq.eq(0_i64),
                devices::last_seen.eq(now),
                devices::created_at.eq(now),
            )
        })
        .collect();
    for chunk in rows.chunks(1000) {
        let query = diesel::insert_into(devices::table)
            .values(chunk)
            .on_conflict((devices::user_id, devices::id))
            .do_update()
            .set(devices::last_seen.eq(excluded(devices::last_seen)));
        on_backend!(&mut *conn, |c| query.execute(c))?;
    }
    Ok(())
}
