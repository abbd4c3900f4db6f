//! Group commit: dedicated writer threads that own their connections, take every
//! command waiting in the queue, apply them all in one transaction and answer each
//! only after the commit.
//!
//! On SQLite there is one writer (SQLite has one write lock anyway): while a commit
//! waits for its fsync, new pushes queue up and go into the next transaction, so
//! the cost of an fsync is shared by every push in it. On Postgres several writers
//! run at once, each with its own queue; a user's commands always go to the same
//! writer (a hash of the user picks it), so on one node a hot user's pushes are
//! merged by one writer instead of queueing on the user's row lock in several.
//! Across nodes, pushes of one user are serialised by the lock on the user's row
//! (see [`crate::db::dialect::lock_user`]). Every command (push or ack) takes its
//! user's lock before it touches any other row, and each batch takes its users'
//! locks in one fixed order (sorted by user), so two writers — or two nodes — do not
//! deadlock; should the database still report one, the batch is retried command by
//! command like any other failed batch.
//!
//! Each run of consecutive pushes in a batch is applied with batch-level statements
//! (a fixed number per run, see [`store::apply_pushes`]); acks and account
//! deletions one by one between them.
//!
//! A batch is all-or-nothing at the database level. A rejected push (a conflict)
//! writes nothing and does not disturb its neighbours; if a statement fails, the
//! batch is rolled back and its commands are retried one by one through the
//! command-by-command path ([`store::apply_push`]), so only the faulty one fails.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tokio::sync::oneshot;

use super::{CommitSink, Committed, LogError, Push, now_ms, now_us, store};
use crate::db::{self, DbConn, DbError, DbUrl, dialect};
use crate::ids::{DeviceId, Seq, UserId};
use crate::protocol::{AccountDeleted, AckResponse, Op, OpStatus, PushResponse};

/// The most commands merged into one transaction.
const MAX_BATCH_COMMANDS: usize = 512;
/// The most ops merged into one transaction.
const MAX_BATCH_OPS: usize = 20_000;
/// How long a request waits for room in the queue.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time between two WAL checkpoints of the checkpointer thread (SQLite).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// How long a request waits for its commit. If it gives up, the push may still
/// commit: retrying with the same op ids is safe (they come back `duplicate`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// A write for the writer threads.
pub(crate) enum Command {
    /// Append ops, within the user's storage quota (bytes; `None`: unlimited).
    Push(Push, Option<i64>, Reply<PushResponse>),
    /// Move a device's cursor.
    Ack {
        /// Whose.
        user: UserId,
        /// Which device.
        device: DeviceId,
        /// To where.
        seq: Seq,
        /// Where the answer goes.
        reply: Reply<AckResponse>,
    },
    /// Remove everything of a user (account deletion), in order with its pushes.
    DeleteUser {
        /// Whose.
        user: UserId,
        /// Where the answer goes.
        reply: Reply<AccountDeleted>,
    },
    /// Stop one writer thread.
    Shutdown,
}

impl Command {
    fn user(&self) -> Option<&UserId> {
        match self {
            Command::Push(push, _, _) => Some(&push.user),
            Command::Ack { user, .. } | Command::DeleteUser { user, .. } => Some(user),
            Command::Shutdown => None,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Command::Push(push, _, _) => push.ops.len(),
            _ => 1,
        }
    }

    /// Applies the command inside the open transaction.
    fn apply(&self, conn: &mut DbConn, now: i64) -> Result<Outcome, DieselError> {
        Ok(match self {
            Command::Push(push, quota, _) => Outcome::Push(store::apply_push(conn, push, *quota, now)?),
            Command::Ack { user, device, seq, .. } => Outcome::Ack(store::apply_ack(conn, user, device, *seq, now)?),
            Command::DeleteUser { user, .. } => Outcome::DeleteUser(store::apply_delete_user(conn, user, now)?),
            Command::Shutdown => Outcome::None,
        })
    }

    /// Answers a committed command and, for a push that stored ops someone on this
    /// node listens to, returns them for live delivery (moved, not copied).
    fn finish(self, outcome: Outcome, now: i64, sink: &dyn CommitSink) -> Option<Committed> {
        if let Command::DeleteUser { user, .. } = &self {
            let user = user.clone();
            self.answer(Ok(outcome));
            sink.user_deleted(&user);
            return None;
        }
        let Command::Push(push, quota, reply) = self else {
            self.answer(Ok(outcome));
            return None;
        };
        let Outcome::Push(Ok(response)) = outcome else {
            Command::Push(push, quota, reply).answer(Ok(outcome));
            return None;
        };
        // Results are in the pushed order, one per op.
        let stored: Vec<Option<Seq>> =
            response.results.iter().map(|r| (r.status == OpStatus::Stored).then_some(r.seq)).collect();
        let wanted = stored.iter().any(Option::is_some) && sink.wants(&push.user);
        // The answer goes first: a session sees its own `pushed` before the frame
        // of the same commit reaches its outbox.
        drop(reply.send(Ok(response)));
        if !wanted {
            return None;
        }
        let Push { user, device, ops: new_ops, origin, .. } = push;
        let device = device.map(|d| d.as_str().to_owned());
        let mut ops: Vec<Op> = Vec::with_capacity(stored.len());
        for (op, seq) in new_ops.into_iter().zip(stored) {
            let Some(seq) = seq else { continue };
            ops.push(Op {
                seq,
                id: op.id,
                device: device.clone(),
                entity: op.entity,
                kind: op.kind,
                base: op.base,
                ts: op.ts,
                received_at: now,
                payload: op.payload,
            });
        }
        ops.sort_by_key(|op| op.seq);
        Some(Committed { user, ops, origin, committed_us: 0 })
    }

    /// Sends the outcome (or an error) to whoever waits for it.
    fn answer(self, outcome: Result<Outcome, LogError>) {
        // A dropped receiver means the client went away; the write stands either way.
        match (self, outcome) {
            (Command::Push(_, _, reply), Ok(Outcome::Push(r))) => drop(reply.send(r)),
            (Command::Ack { reply, .. }, Ok(Outcome::Ack(r))) => drop(reply.send(r)),
            (Command::DeleteUser { reply, .. }, Ok(Outcome::DeleteUser(r))) => drop(reply.send(Ok(r))),
            (Command::Shutdown, _) => {}
            // `apply` pairs each command with its own outcome; this arm is a guard.
            (command, Ok(_)) => command.answer(Err(LogError::Corrupt("mismatched outcome".into()))),
            (Command::Push(_, _, reply), Err(e)) => drop(reply.send(Err(e))),
            (Command::Ack { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
            (Command::DeleteUser { reply, .. }, Err(e)) => drop(reply.send(Err(e))),
        }
    }
}

enum Outcome {
    Push(Result<PushResponse, LogError>),
    Ack(Result<AckResponse, LogError>),
    DeleteUser(AccountDeleted),
    None,
}

/// Counters of the writers' work (how well group commit merges, commit latency,
/// ops stored); the log's metrics.
pub type WriterStats = crate::metrics::LogMetrics;

/// A queued command's answer, to wait for.
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T, LogError>>);

impl<T> Pending<T> {
    /// Waits for the commit (or the failure).
    pub async fn wait(self) -> Result<T, LogError> {
        match tokio::time::timeout(COMMIT_TIMEOUT, self.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LogError::Unavailable("the writer stopped before answering".into())),
            Err(_) => Err(LogError::Unavailable("no commit within the timeout".into())),
        }
    }
}

/// The handle requests use to reach the writer threads.
///
/// Each writer has its own queue and every user is routed to one writer (by a hash
/// of the user), so a node never has two of its writers wait on one user's lock:
/// a hot user's pushes all go through one writer, which merges them.
#[derive(Clone)]
pub struct Writer {
    lanes: Arc<[flume::Sender<Command>]>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts `threads` writers on `url`, each with its own connection (opened now,
    /// so a bad URL fails at start) and a queue of `queue` commands. Commits are
    /// announced to `sink` (and, on Postgres, to the other nodes).
    pub fn start(url: &DbUrl, threads: usize, queue: usize, sink: Arc<dyn CommitSink>) -> Result<Self, DbError> {
        let stats = Arc::new(WriterStats::default());
        let mut handles = Vec::new();
        let mut lanes = Vec::new();
        for i in 0..threads.max(1) {
            let conn = connect(url)?;
            let (tx, rx) = flume::bounded(queue.max(1));
            lanes.push(tx);
            // SQLite: a thread that checkpoints the WAL after commits, off the
            // commit path; it ends when its writer does (the sender drops).
            let committed = if dialect::needs_checkpointer(&conn) {
                let mut checkpointer = db::connect(url)?;
                let (done, commits) = flume::bounded::<()>(1);
                let handle = std::thread::Builder::new()
                    .name(format!("opsync-checkpoint-{i}"))
                    .spawn(move || checkpoints(&mut checkpointer, &commits))
                    .map_err(|source| DbError::Io { path: "checkpoint thread".into(), source })?;
                handles.push(handle);
                Some(done)
            } else {
                None
            };
            let url = url.clone();
            let stats = stats.clone();
            let sink = sink.clone();
            let handle = std::thread::Builder::new()
                .name(format!("opsync-writer-{i}"))
                .spawn(move || run(&url, &rx, Some(conn), &stats, &*sink, committed.as_ref()))
                .map_err(|source| DbError::Io { path: "writer thread".into(), source })?;
            handles.push(handle);
        }
        Ok(Self { lanes: lanes.into(), threads: Arc::new(Mutex::new(handles)), stats })
    }

    /// The writer a user's commands go to.
    fn lane_of(&self, user: &UserId) -> usize {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(user);
        (hash % self.lanes.len() as u64) as usize
    }

    /// What the writers have done so far.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The counters, shared.
    pub(crate) fn stats_handle(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Commands waiting in the queues.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(flume::Sender::len).sum()
    }

    /// Queues a command and waits for its answer.
    pub(crate) async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LogError> {
        self.enqueue(make).await?.wait().await
    }

    /// Queues a command (waiting for room) and returns the wait for its answer:
    /// commands queued one after the other by one caller commit in that order.
    pub(crate) async fn enqueue<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<Pending<T>, LogError> {
        let (reply, answer) = oneshot::channel();
        let command = make(reply);
        let lane = &self.lanes[command.user().map_or(0, |user| self.lane_of(user))];
        match tokio::time::timeout(ENQUEUE_TIMEOUT, lane.send_async(command)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(LogError::Unavailable("the writer has stopped".into())),
            Err(_) => return Err(LogError::Unavailable("the write queue is full".into())),
        }
        Ok(Pending(answer))
    }

    /// Lets the writers finish what is queued, then stops and joins them.
    pub fn shutdown(&self) {
        let handles: Vec<JoinHandle<()>> = match self.threads.lock() {
            Ok(mut h) => h.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        if !handles.is_empty() {
            for lane in self.lanes.iter() {
                let _ = lane.send(Command::Shutdown);
            }
        }
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// A writer's connection.
fn connect(url: &DbUrl) -> Result<DbConn, DbError> {
    let mut conn = db::connect(url)?;
    dialect::configure_writer(&mut conn)?;
    Ok(conn)
}

/// The checkpointer thread's loop: a passive checkpoint after commits, at most
/// every [`CHECKPOINT_EVERY`], until the writer is gone.
fn checkpoints(conn: &mut DbConn, commits: &flume::Receiver<()>) {
    while commits.recv().is_ok() {
        if let Err(e) = dialect::checkpoint(conn) {
            tracing::debug!(error = %e, "checkpoint failed");
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

/// One writer thread's loop. `committed` (SQLite) is told of every commit.
fn run(
    url: &DbUrl,
    rx: &flume::Receiver<Command>,
    mut conn: Option<DbConn>,
    stats: &WriterStats,
    sink: &dyn CommitSink,
    committed: Option<&flume::Sender<()>>,
) {
    loop {
        let first = match rx.recv() {
            Ok(Command::Shutdown) | Err(_) => return,
            Ok(command) => command,
        };
        let mut weight = first.weight();
        let mut batch = vec![first];
        let mut stop = false;
        while batch.len() < MAX_BATCH_COMMANDS && weight < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(Command::Shutdown) => {
                    stop = true;
                    break;
                }
                Ok(command) => {
                    weight += command.weight();
                    batch.push(command);
                }
                Err(_) => break,
            }
        }
        // A panic must not take the only SQLite writer down with it: the batch's
        // waiters get `unavailable` (their senders drop) and the connection, which
        // may be mid-transaction, is replaced.
        let run = std::panic::AssertUnwindSafe(|| process(url, &mut conn, batch, stats, sink, true));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("writer panicked; reconnecting");
            conn = None;
        }
        if let Some(committed) = committed {
            // Full: a checkpoint is already due.
            let _ = committed.try_send(());
        }
        if stop {
            return;
        }
    }
}

/// Applies a batch in one transaction and answers every command. `merge`: apply
/// each run of consecutive pushes with batch-level statements
/// ([`store::apply_pushes`]); otherwise command by command ([`store::apply_push`],
/// the reference the merged path must match, and the fallback when it fails).
fn process(
    url: &DbUrl,
    slot: &mut Option<DbConn>,
    mut batch: Vec<Command>,
    stats: &WriterStats,
    sink: &dyn CommitSink,
    merge: bool,
) {
    // Stable: each user's commands keep their arrival order; users are locked in
    // ascending order.
    batch.sort_by(|a, b| a.user().cmp(&b.user()));
    let conn = match slot {
        Some(conn) => conn,
        None => match connect(url) {
            Ok(conn) => slot.insert(conn),
            Err(e) => {
                tracing::warn!(error = %e, "writer cannot reconnect");
                for command in batch {
                    command.answer(Err(LogError::Unavailable(e.to_string())));
                }
                return;
            }
        },
    };
    let started = std::time::Instant::now();
    let now = now_ms();
    match transaction(conn, &batch, now, sink.node_id(), merge) {
        Ok(outcomes) => {
            let committed_us = now_us();
            tracing::trace!(commands = batch.len(), elapsed = ?started.elapsed(), "batch committed");
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.commands.fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats.commit_latency.record_us(started.elapsed().as_micros() as u64);
            let stored: usize = outcomes
                .iter()
                .map(|o| match o {
                    Outcome::Push(Ok(r)) => r.results.iter().filter(|r| r.status == OpStatus::Stored).count(),
                    _ => 0,
                })
                .sum();
            stats.ops_ingested.fetch_add(stored as u64, Ordering::Relaxed);
            let commits: Vec<Committed> = batch
                .into_iter()
                .zip(outcomes)
                .filter_map(|(command, outcome)| command.finish(outcome, now, sink))
                .map(|commit| Committed { committed_us, ..commit })
                .collect();
            if !commits.is_empty() {
                sink.committed(commits);
            }
        }
        Err(e) if is_disconnect(&e) => {
            tracing::warn!(error = %e, "writer lost its connection");
            *slot = None;
            for command in batch {
                command.answer(Err(LogError::Unavailable(e.to_string())));
            }
        }
        Err(e) if batch.len() == 1 && !merge => {
            if let Some(command) = batch.pop() {
                command.answer(Err(LogError::from(e)));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, commands = batch.len(), "batch failed; retrying its commands one by one");
            for command in batch {
                process(url, slot, vec![command], stats, sink, false);
            }
        }
    }
}

/// BEGIN, every command, the notification for other nodes, COMMIT; any statement
/// error rolls everything back.
fn transaction(
    conn: &mut DbConn,
    batch: &[Command],
    now: i64,
    node: &str,
    merge: bool,
) -> Result<Vec<Outcome>, DieselError> {
    dialect::begin_write(conn)?;
    let applied =
        if merge { apply_merged(conn, batch, now) } else { batch.iter().map(|c| c.apply(conn, now)).collect() };
    let notified = applied.and_then(|outcomes| {
        // Only Postgres has other nodes to tell; SQLite skips building the lists.
        if dialect::announces_commits(conn) {
            let deleted: Vec<&str> = batch
                .iter()
                .filter_map(|c| match c {
                    Command::DeleteUser { user, .. } => Some(user.as_str()),
                    _ => None,
                })
                .collect();
            dialect::notify_commits(conn, node, &stored_ranges(batch, &outcomes), &deleted)?;
        }
        Ok(outcomes)
    });
    match notified.and_then(|outcomes| dialect::commit(conn).map(|()| outcomes)) {
        Ok(outcomes) => Ok(outcomes),
        Err(e) => {
            if let Err(rollback) = dialect::rollback(conn) {
                tracing::debug!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Applies the batch's commands in order, each run of consecutive pushes with
/// batch-level statements ([`store::apply_pushes`]); acks and deletions one by one
/// between them.
fn apply_merged(conn: &mut DbConn, batch: &[Command], now: i64) -> Result<Vec<Outcome>, DieselError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut rest = batch;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|c| matches!(c, Command::Push(..))).count();
        if run == 0 {
            outcomes.push(first.apply(conn, now)?);
            rest = &rest[1..];
            continue;
        }
        let pushes: Vec<(&Push, Option<i64>)> = rest[..run]
            .iter()
            .filter_map(|c| match c {
                Command::Push(push, quota, _) => Some((push, *quota)),
                _ => None,
            })
            .collect();
        outcomes.extend(store::apply_pushes(conn, &pushes, now)?.into_iter().map(Outcome::Push));
        #[cfg(test)]
        if tests::FAIL_MERGED.with(std::cell::Cell::get) {
            return Err(DieselError::RollbackTransaction);
        }
        rest = &rest[run..];
    }
    Ok(outcomes)
}

/// Per user, the seq range the batch stored: `(user, first, last)`. A user's
/// pushes in one batch are adjacent (the batch is sorted by user) and their ops
/// consecutive, so one range covers them.
fn stored_ranges<'a>(batch: &'a [Command], outcomes: &[Outcome]) -> Vec<(&'a str, Seq, Seq)> {
    let mut ranges: Vec<(&str, Seq, Seq)> = Vec::new();
    for (command, outcome) in batch.iter().zip(outcomes) {
        let (Command::Push(push, _, _), Outcome::Push(Ok(response))) = (command, outcome) else { continue };
        let stored = response.results.iter().filter(|r| r.status == OpStatus::Stored).map(|r| r.seq);
        let (Some(first), Some(last)) = (stored.clone().min(), stored.max()) else { continue };
        match ranges.last_mut() {
            Some((user, _, to)) if *user == push.user.as_str() => *to = (*to).max(last),
            _ => ranges.push((push.user.as_str(), first, last)),
        }
    }
    ranges
}

fn is_disconnect(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
            | DieselError::BrokenTransactionManager
    )
}

#[cfg(test)]
mod tests {
    //! The merged path against the reference: the same batches, applied with
    //! batch-level statements and command by command on two fresh databases, must
    //! give the same answers, the same live commits and the same tables.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use diesel::prelude::*;

    use super::*;
    use crate::ids::OpId;
    use crate::protocol::{NewOp, OnStale, Payload};

    std::thread_local! {
        /// Makes the merged path fail after its statements ran (on this thread), to
        /// test the fallback.
        pub(super) static FAIL_MERGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A commit as the tests compare it: user, `(seq, id)` of each op, origin.
    type Seen = (String, Vec<(Seq, OpId)>, Option<u64>);

    /// Records every commit, wanting every user.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Seen>>);

    impl CommitSink for Recorder {
        fn wants(&self, _: &UserId) -> bool {
            true
        }
        fn committed(&self, commits: Vec<Committed>) {
            let mut seen = self.0.lock().unwrap();
            for c in commits {
                seen.push((c.user.as_str().to_owned(), c.ops.iter().map(|o| (o.seq, o.id)).collect(), c.origin));
            }
        }
        fn node_id(&self) -> &str {
            "test"
        }
        fn user_deleted(&self, _: &UserId) {}
    }

    /// A fresh database: SQLite in a temporary directory, or Postgres (a database
    /// of its own, dropped at the end) when `OPSYNC_TEST_PG_URL` is set.
    struct Db {
        url: DbUrl,
        _dir: Option<tempfile::TempDir>,
        pg: Option<(String, String)>,
    }

    impl Db {
        fn sqlite() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = DbUrl::sqlite_file(&dir.path().join("opsync.db"));
            db::migrate(&mut db::connect(&url).unwrap()).unwrap();
            Self { url, _dir: Some(dir), pg: None }
        }

        fn postgres() -> Option<Self> {
            use diesel::connection::SimpleConnection as _;
            let base = std::env::var("OPSYNC_TEST_PG_URL").ok()?;
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let name = format!(
                "opsync_writer_test_{}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                now_us() % 1_000_000
            );
            let mut admin = diesel::PgConnection::establish(&format!("{base}/postgres")).unwrap();
            admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let url = DbUrl::parse(&format!("{base}/{name}")).unwrap();
            db::migrate(&mut db::connect(&url).unwrap()).unwrap();
            Some(Self { url, _dir: None, pg: Some((base, name)) })
        }

        /// The tables, without the times (two runs stamp different ones).
        fn dump(&self) -> String {
            use crate::db::schema::{devices, entities, ops, users};
            let mut conn = db::connect(&self.url).unwrap();
            let u: Vec<(String, i64, i64)> = users::table
                .order(users::id)
                .select((users::id, users::head, users::stored_bytes))
                .load(&mut conn)
                .unwrap();
            type OpDump = (String, i64, Vec<u8>, Option<String>, Option<String>, Option<String>, Option<i64>, Vec<u8>);
            let o: Vec<OpDump> = ops::table
                .order((ops::user_id, ops::seq))
                .select((
                    ops::user_id,
                    ops::seq,
                    ops::op_id,
                    ops::device,
                    ops::entity,
                    ops::kind,
                    ops::base,
                    ops::payload,
                ))
                .load(&mut conn)
                .unwrap();
            let e: Vec<(String, String, i64, Option<i64>)> = entities::table
                .order((entities::user_id, entities::entity))
                .select((entities::user_id, entities::entity, entities::last_seq, entities::deleted_at))
                .load(&mut conn)
                .unwrap();
            let e: Vec<_> = e.into_iter().map(|(u, n, s, d)| (u, n, s, d.is_some())).collect();
            let d: Vec<(String, String, i64)> = devices::table
                .order((devices::user_id, devices::id))
                .select((devices::user_id, devices::id, devices::ack_seq))
                .load(&mut conn)
                .unwrap();
            format!("users {u:?}\nops {o:?}\nentities {e:?}\ndevices {d:?}")
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            if let Some((base, name)) = &self.pg
                && let Ok(mut admin) = diesel::PgConnection::establish(&format!("{base}/postgres"))
            {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin);
            }
        }
    }

    fn op(payload: &str) -> NewOp {
        NewOp {
            id: OpId::generate(),
            payload: Payload(payload.as_bytes().to_vec()),
            entity: None,
            kind: None,
            base: None,
            ts: Some(1),
        }
    }

    fn on(entity: &str, base: Option<Seq>, kind: Option<&str>, payload: &str) -> NewOp {
        NewOp { entity: Some(entity.into()), base, kind: kind.map(Into::into), ..op(payload) }
    }

    /// A command to queue, without its reply channel yet.
    #[derive(Clone)]
    enum Cmd {
        Push(Push, Option<i64>),
        Ack(&'static str, &'static str, Seq),
    }

    fn push(user: &str, device: Option<&str>, ops: Vec<NewOp>) -> Cmd {
        Cmd::Push(
            Push {
                user: UserId::new(user).unwrap(),
                device: device.map(|d| DeviceId::new(d).unwrap()),
                ops,
                expected_head: None,
                on_stale: OnStale::Accept,
                origin: Some(7),
            },
            None,
        )
    }

    /// Runs one batch through `process` and returns the answers, in queue order.
    fn run_batch(db: &Db, cmds: &[Cmd], merge: bool, sink: &Recorder, stats: &WriterStats) -> Vec<String> {
        let mut slot = None;
        let mut batch = Vec::new();
        let mut answers: Vec<Box<dyn FnOnce() -> String>> = Vec::new();
        for cmd in cmds.iter().cloned() {
            match cmd {
                Cmd::Push(p, quota) => {
                    let (tx, mut rx) = oneshot::channel();
                    batch.push(Command::Push(p, quota, tx));
                    answers.push(Box::new(move || format!("{:?}", rx.try_recv().unwrap())));
                }
                Cmd::Ack(user, device, seq) => {
                    let (tx, mut rx) = oneshot::channel();
                    let (user, device) = (UserId::new(user).unwrap(), DeviceId::new(device).unwrap());
                    batch.push(Command::Ack { user, device, seq, reply: tx });
                    answers.push(Box::new(move || format!("{:?}", rx.try_recv().unwrap())));
                }
            }
        }
        process(&db.url, &mut slot, batch, stats, sink, merge);
        answers.into_iter().map(|answer| answer()).collect()
    }

    /// A batch with everything the merged path must get right, after a set-up batch.
    fn scenario() -> (Vec<Cmd>, Vec<Cmd>) {
        let seeded = op("seeded");
        let e1 = on("e1", None, None, "e1 first");
        let setup =
            vec![push("alice", Some("d1"), vec![seeded.clone(), e1]), push("carol", None, vec![op("0123456789")])];
        let a1 = on("e1", Some(2), None, "a1");
        let a2 = op("a2");
        let mut stale = push("alice", None, vec![op("stale")]);
        if let Cmd::Push(p, _) = &mut stale {
            p.expected_head = Some(1);
            p.on_stale = OnStale::Reject;
        }
        let mut reuse = a2.clone();
        reuse.payload = Payload(b"other".to_vec());
        let quota = |cmd: Cmd, q: i64| match cmd {
            Cmd::Push(p, _) => Cmd::Push(p, Some(q)),
            other => other,
        };
        let batch = vec![
            // alice: a based op on e1, then a retry of it within the same segment
            // (duplicate with its new seq) plus a new op, a refused stale push
            // between accepted ones, a base older than e1's new seq (conflict), a
            // base on the new seq (accepted), a reused id (refused), a pure retry
            // of a set-up op from another device.
            push("alice", Some("d1"), vec![a1.clone()]),
            push("alice", Some("d2"), vec![a1.clone(), a2.clone()]),
            stale,
            push("alice", None, vec![on("e1", Some(2), None, "too old")]),
            push("alice", Some("d1"), vec![on("e1", Some(3), Some("del"), "a4")]),
            Cmd::Ack("alice", "d1", 4),
            push("alice", None, vec![reuse]),
            push("alice", Some("d3"), vec![seeded, op("a5")]),
            push("alice", None, vec![on("e1", Some(5), None, "a6"), on("e2", Some(0), None, "a7")]),
            // bob: a new user, several pushes, an entity deleted then written again.
            push("bob", Some("b1"), vec![on("x", None, Some("del"), "b1"), op("b2")]),
            push("bob", Some("b1"), vec![on("x", Some(1), None, "b3")]),
            Cmd::Ack("bob", "b1", 9),
            // carol: 10 bytes stored, a quota of 20: the first push fits, the second
            // would pass it (refused, with what the first added), the third fits.
            quota(push("carol", Some("c1"), vec![op("abcde"), op("fghij")]), 30),
            quota(push("carol", Some("c1"), vec![op("klmno")]), 20),
            quota(push("carol", Some("c1"), vec![op("")]), 20),
        ];
        (setup, batch)
    }

    fn dbs() -> Vec<(Db, Db)> {
        let mut dbs = vec![(Db::sqlite(), Db::sqlite())];
        if let (Some(a), Some(b)) = (Db::postgres(), Db::postgres()) {
            dbs.push((a, b));
        }
        dbs
    }

    #[test]
    fn a_merged_batch_answers_and_stores_exactly_what_the_reference_does() {
        for (merged, reference) in dbs() {
            let (setup, batch) = scenario();
            let (sink_m, sink_r) = (Recorder::default(), Recorder::default());
            let (stats_m, stats_r) = (WriterStats::default(), WriterStats::default());
            assert_eq!(
                run_batch(&merged, &setup, true, &sink_m, &stats_m),
                run_batch(&reference, &setup, false, &sink_r, &stats_r)
            );
            let m = run_batch(&merged, &batch, true, &sink_m, &stats_m);
            let r = run_batch(&reference, &batch, false, &sink_r, &stats_r);
            assert_eq!(m, r);
            assert_eq!(merged.dump(), reference.dump());
            assert_eq!(*sink_m.0.lock().unwrap(), *sink_r.0.lock().unwrap());
            assert_eq!(stats_m.transactions.load(Ordering::Relaxed), 2, "one transaction per batch");
            assert_eq!(stats_m.ops_ingested.load(Ordering::Relaxed), stats_r.ops_ingested.load(Ordering::Relaxed));
            // What the scenario is about, spelled out.
            assert!(m[1].contains("Duplicate") && m[1].contains("seq: 3, status: Duplicate"), "{}", m[1]);
            assert!(m[2].contains("StaleHead"), "{}", m[2]);
            assert!(m[3].contains("EntityConflict"), "{}", m[3]);
            assert!(m[4].starts_with("Ok(PushResponse"), "{}", m[4]);
            assert!(m[6].contains("IdReuse"), "{}", m[6]);
            assert!(m[12].starts_with("Ok(PushResponse"), "{}", m[12]);
            assert!(m[13].contains("QuotaExceeded { stored: 20, quota: 20, needed: 5 }"), "{}", m[13]);
            assert!(m[14].starts_with("Ok(PushResponse"), "{}", m[14]);
            let (m_dump, r_dump) = (merged.dump(), reference.dump());
            assert!(m_dump.contains("(\"carol\", 4, 20)"), "{m_dump}");
            assert_eq!(m_dump, r_dump);
        }
    }

    #[test]
    fn a_failing_merged_batch_is_retried_command_by_command() {
        for (merged, reference) in dbs() {
            let (setup, batch) = scenario();
            let (sink_m, sink_r) = (Recorder::default(), Recorder::default());
            let (stats_m, stats_r) = (WriterStats::default(), WriterStats::default());
            run_batch(&merged, &setup, true, &sink_m, &stats_m);
            run_batch(&reference, &setup, false, &sink_r, &stats_r);
            FAIL_MERGED.with(|f| f.set(true));
            let m = run_batch(&merged, &batch, true, &sink_m, &stats_m);
            FAIL_MERGED.with(|f| f.set(false));
            let r = run_batch(&reference, &batch, false, &sink_r, &stats_r);
            assert_eq!(m, r);
            assert_eq!(merged.dump(), reference.dump());
            assert_eq!(*sink_m.0.lock().unwrap(), *sink_r.0.lock().unwrap());
            // The set-up's transaction, then one per command of the retried batch.
            assert_eq!(stats_m.transactions.load(Ordering::Relaxed), 1 + batch.len() as u64);
        }
    }
}
