//! The op log: validation, sequencing, storage, reads. No HTTP in here; the HTTP
//! (and later WebSocket) layers call [`Log`].
//!
//! Writes go through the [`writer`]: dedicated threads that merge concurrent
//! commands into one transaction (group commit) and answer each after the commit.
//! Reads use the connection pool on the blocking thread pool.

pub mod retention;
pub mod sequencer;
pub mod snapshot;
pub mod store;
pub mod transfer;
mod validate;
pub mod writer;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use retention::{Compacted, Retention};
pub use sequencer::Rejection;
pub use validate::{Invalid, Limits, validate_head, validate_push};

use crate::db::{DbPool, Health, PooledConn};
use crate::ids::{DeviceId, Seq, UserId};
use crate::protocol::{
    AccountDeleted, AckResponse, NewOp, OnStale, Op, PullResponse, PushResponse, SnapshotInfo, StatusResponse,
};
use writer::{Command, Writer};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The request broke a rule; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The push conflicts with the log; nothing was stored.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A pull from beyond the head.
    #[error("since {since} is beyond the head {head}")]
    SinceBeyondHead {
        /// Requested.
        since: Seq,
        /// Actual.
        head: Seq,
    },
    /// An ack beyond the head.
    #[error("seq {seq} is beyond the head {head}")]
    SeqBeyondHead {
        /// Requested.
        seq: Seq,
        /// Actual.
        head: Seq,
    },
    /// A pull from below the retention horizon: the ops it needs were pruned.
    /// The client resyncs: downloads the snapshot at `snapshot_seq` and pulls from
    /// there (the WebSocket layer answers the same with a `resync` message).
    #[error("since is below the retention horizon {horizon}: resync from the snapshot")]
    ResyncRequired {
        /// Ops at or below it may be gone.
        horizon: Seq,
        /// The latest snapshot's seq (at or above the horizon), if there is one.
        snapshot_seq: Option<Seq>,
    },
    /// A snapshot upload below the horizon: no client could pull on from it.
    #[error("snapshot seq {seq} is below the retention horizon {horizon}")]
    SnapshotBelowHorizon {
        /// Requested.
        seq: Seq,
        /// The horizon.
        horizon: Seq,
    },
    /// A snapshot over the size limit.
    #[error("the snapshot is larger than {max} bytes")]
    SnapshotTooLarge {
        /// The limit.
        max: usize,
    },
    /// The uploaded bytes do not hash to the SHA-256 the client announced.
    #[error("the snapshot's SHA-256 is {actual}, not {expected} as announced")]
    ChecksumMismatch {
        /// Announced.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// No snapshot (at or before the seq asked for).
    #[error("no snapshot")]
    NoSnapshot,
    /// The push's new ops would take the user's stored payloads over the quota;
    /// nothing was stored.
    #[error("the push needs {needed} more bytes; the user stores {stored} of a {quota}-byte quota")]
    QuotaExceeded {
        /// Payload bytes the user stores now.
        stored: i64,
        /// The quota.
        quota: i64,
        /// Payload bytes of the push's new ops.
        needed: i64,
    },
    /// The database cannot be reached (or the writer is gone); retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Db(diesel::result::Error),
    /// Stored data could not be read back (corruption).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<diesel::result::Error> for LogError {
    /// A lost connection or a lock timeout is a temporary condition (503, retry),
    /// anything else a failure (500).
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
            | Error::BrokenTransactionManager => LogError::Unavailable(e.to_string()),
            Error::DatabaseError(_, info) if info.message().contains("database is locked") => {
                LogError::Unavailable(e.to_string())
            }
            _ => LogError::Db(e),
        }
    }
}

/// A push, validated and bound to its user.
#[derive(Debug, Clone)]
pub struct Push {
    /// Whose log.
    pub user: UserId,
    /// The pushing device, if known.
    pub device: Option<DeviceId>,
    /// The ops.
    pub ops: Vec<NewOp>,
    /// The head the client last saw.
    pub expected_head: Option<Seq>,
    /// What to do if it is behind.
    pub on_stale: OnStale,
    /// The WebSocket session that sent it (its own ops are answered with `pushed`,
    /// not echoed back as `ops`); `None` for HTTP.
    pub origin: Option<u64>,
}

/// A queued push: wait for its commit.
#[derive(Debug)]
pub struct PendingPush {
    pending: writer::Pending<PushResponse>,
    snapshot_every: Seq,
    metrics: std::sync::Arc<crate::metrics::LogMetrics>,
}

impl PendingPush {
    /// Waits for the commit; the answer says whether a snapshot is due.
    pub async fn wait(self) -> Result<PushResponse, LogError> {
        let answer = self.pending.wait().await;
        self.metrics.push(push_result(&answer));
        let mut response = answer?;
        response.snapshot_due = response.head - response.snapshot_seq > self.snapshot_every;
        Ok(response)
    }
}

/// How a push ended, for the metrics.
fn push_result(answer: &Result<PushResponse, LogError>) -> crate::metrics::PushResult {
    use crate::metrics::PushResult;
    match answer {
        Ok(r) if r.results.iter().any(|r| r.status == crate::protocol::OpStatus::Stored) => PushResult::Stored,
        Ok(_) => PushResult::Duplicate,
        Err(LogError::Rejected(_)) => PushResult::Rejected,
        Err(LogError::Invalid(_)) => PushResult::Invalid,
        Err(LogError::QuotaExceeded { .. }) => PushResult::QuotaExceeded,
        Err(LogError::Unavailable(_)) => PushResult::Unavailable,
        Err(_) => PushResult::Failed,
    }
}

/// Ops that have just committed, handed to live delivery once per commit.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Whose log.
    pub user: UserId,
    /// The new ops, consecutive seqs in order.
    pub ops: Vec<Op>,
    /// The session that pushed them, if it was a WebSocket session.
    pub origin: Option<u64>,
    /// When the commit returned, microseconds since the Unix epoch.
    pub committed_us: i64,
}

/// Where the writers announce commits: the node's live-delivery layer.
pub trait CommitSink: Send + Sync + 'static {
    /// Whether anyone on this node listens to `user` (if not, the ops are not built).
    fn wants(&self, user: &UserId) -> bool;
    /// Called once per transaction, after COMMIT and after the writers answered the
    /// pushes, with that transaction's commits in commit order. Must not block.
    fn committed(&self, commits: Vec<Committed>);
    /// This node's id, carried by the notifications other nodes receive.
    fn node_id(&self) -> &str;
    /// Called after a user's account deletion committed: their sessions end.
    fn user_deleted(&self, user: &UserId);
}

/// A sink for processes that serve no live clients (the CLI).
#[derive(Debug, Default)]
pub struct NoSink;

impl CommitSink for NoSink {
    fn wants(&self, _: &UserId) -> bool {
        false
    }
    fn committed(&self, _: Vec<Committed>) {}
    fn node_id(&self) -> &str {
        "cli"
    }
    fn user_deleted(&self, _: &UserId) {}
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The log service: the writer for writes, the pool for reads.
#[derive(Clone)]
pub struct Log {
    writer: Writer,
    pool: DbPool,
    health: Health,
    limits: Limits,
    retention: Retention,
}

/// How long a request waits for a pooled connection or for the writer's answer.
const WAIT: Duration = Duration::from_secs(10);
/// A wait for a pooled connection is cut into slices this long; between them, a
/// request gives up at once if the database has been failing (503 in well under
/// a second, not after `WAIT`). A busy but healthy pool is waited on in full.
const WAIT_SLICE: Duration = Duration::from_millis(200);
/// How recent a connection failure must be to count as "the database is down".
const FAILING_WINDOW: Duration = Duration::from_secs(2);

impl Log {
    /// A log over `pool`, writing through `writer`.
    pub fn new(writer: Writer, pool: DbPool, limits: Limits) -> Self {
        Self { writer, pool, health: Health::default(), limits, retention: Retention::default() }
    }

    /// The same log, answering 503 at once while `health` (the pool's connection
    /// failures) says the database is down.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The same log with these snapshot and retention settings.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The configured limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The snapshot and retention settings.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    fn snapshot_due(&self, head: Seq, snapshot_seq: Seq) -> bool {
        head - snapshot_seq > self.retention.snapshot_every
    }

    /// Appends a push to the user's log; answers after the commit.
    pub async fn push(&self, push: Push) -> Result<PushResponse, LogError> {
        self.start_push(push).await?.wait().await
    }

    /// Validates and queues a push, returning the wait for its commit. Pushes a
    /// caller starts one after the other are sequenced in that order (a WebSocket
    /// session pipelines its pushes this way).
    pub async fn start_push(&self, push: Push) -> Result<PendingPush, LogError> {
        let metrics = self.writer.stats_handle();
        let valid = validate_head(push.expected_head, push.on_stale)
            .and_then(|()| validate_push(&push.ops, &self.limits, now_ms()));
        if let Err(invalid) = valid {
            metrics.push(crate::metrics::PushResult::Invalid);
            return Err(invalid.into());
        }
        let quota = self.limits.quota();
        match self.writer.enqueue(|reply| Command::Push(push, quota, reply)).await {
            Ok(pending) => Ok(PendingPush { pending, snapshot_every: self.retention.snapshot_every, metrics }),
            Err(e) => {
                metrics.push(crate::metrics::PushResult::Unavailable);
                Err(e)
            }
        }
    }

    /// Removes all of a user's ops, snapshots, devices and tombstones, in order
    /// with the user's pushes (through the writer). The one entry point of account
    /// deletion (HTTP and CLI).
    pub async fn delete_user(&self, user: UserId) -> Result<AccountDeleted, LogError> {
        self.writer.submit(|reply| Command::DeleteUser { user, reply }).await
    }

    /// Stores a snapshot of the user's state after applying ops up to `seq`.
    /// `data` has been read within [`Limits::max_snapshot_bytes`]; the write is one
    /// transaction, so a failed or concurrent upload never leaves a partial row.
    pub async fn put_snapshot(
        &self,
        user: UserId,
        seq: Seq,
        content_type: String,
        data: bytes::Bytes,
        expected_sha256: Option<String>,
    ) -> Result<SnapshotInfo, LogError> {
        if seq < 0 {
            return Err(Invalid::Field(format!("seq must be >= 0, got {seq}")).into());
        }
        if data.len() > self.limits.max_snapshot_bytes {
            return Err(LogError::SnapshotTooLarge { max: self.limits.max_snapshot_bytes });
        }
        let keep = self.retention.keep_snapshots;
        self.with_conn(move |conn| {
            let snapshot = snapshot::NewSnapshot {
                seq,
                content_type: &content_type,
                data: &data,
                expected_sha256: expected_sha256.as_deref(),
            };
            store::in_write_transaction(conn, |conn| snapshot::store(conn, user.as_str(), &snapshot, keep, now_ms()))
        })
        .await
    }

    /// The latest snapshot's description (or the latest at or before a seq).
    pub async fn snapshot_info(&self, user: UserId, at_or_before: Option<Seq>) -> Result<SnapshotInfo, LogError> {
        self.with_conn(move |conn| {
            snapshot::latest_info(conn, user.as_str(), at_or_before)?.ok_or(LogError::NoSnapshot)
        })
        .await
    }

    /// The latest snapshot with its bytes (or the latest at or before a seq).
    pub async fn snapshot(&self, user: UserId, at_or_before: Option<Seq>) -> Result<(SnapshotInfo, Vec<u8>), LogError> {
        self.with_conn(move |conn| snapshot::latest(conn, user.as_str(), at_or_before)?.ok_or(LogError::NoSnapshot))
            .await
    }

    /// Compacts one user now, by the configured rules.
    pub async fn compact_user(&self, user: UserId) -> Result<Compacted, LogError> {
        let policy = self.retention.clone();
        self.with_conn(move |conn| retention::compact_user(conn, user.as_str(), &policy, now_ms())).await
    }

    /// Compacts every user (`None`: another node is compacting right now).
    pub async fn compact_all(&self) -> Result<Option<Vec<Compacted>>, LogError> {
        let policy = self.retention.clone();
        self.with_conn(move |conn| retention::compact_all(conn, &policy, now_ms())).await
    }

    /// Records how far a device has applied the log (never backwards, never beyond head).
    pub async fn ack(&self, user: UserId, device: DeviceId, seq: Seq) -> Result<AckResponse, LogError> {
        if seq < 0 {
            return Err(Invalid::Field(format!("seq must be >= 0, got {seq}")).into());
        }
        self.writer.submit(|reply| Command::Ack { user, device, seq, reply }).await
    }

    /// One page of ops after `since`.
    pub async fn pull(&self, user: UserId, since: Seq, limit: usize) -> Result<PullResponse, LogError> {
        let limit = limit.clamp(1, self.limits.max_page_ops);
        let max_bytes = self.limits.max_page_bytes;
        let mut page = self.with_conn(move |conn| store::pull(conn, &user, since, limit, max_bytes)).await?;
        page.snapshot_due = self.snapshot_due(page.head, page.snapshot_seq);
        Ok(page)
    }

    /// The user's head (0 before the first op).
    pub async fn head(&self, user: UserId) -> Result<Seq, LogError> {
        self.with_conn(move |conn| store::head(conn, &user).map_err(LogError::from)).await
    }

    /// The user's head and devices, and their storage against the quota.
    pub async fn status(&self, user: UserId) -> Result<StatusResponse, LogError> {
        let mut status = self.with_conn(move |conn| store::status(conn, &user)).await?;
        status.quota_bytes = self.limits.quota();
        Ok(status)
    }

    /// How the writers have merged commands into transactions so far.
    pub fn writer_stats(&self) -> &writer::WriterStats {
        self.writer.stats()
    }

    /// The read pool's connections, and of those idle.
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections)
    }

    /// Commands waiting for a writer.
    pub fn write_queue(&self) -> usize {
        self.writer.queued()
    }

    /// Finishes queued writes and stops the writer threads.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> Result<(), LogError> {
        self.with_conn(|conn| store::ping(conn).map_err(LogError::from)).await
    }

    /// Runs `f` on a pooled connection, off the async workers: reads, and the rare
    /// writes that need no sequencing (revocations).
    pub async fn with_conn<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PooledConn) -> Result<T, LogError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let health = self.health.clone();
        let job = actix_web::rt::task::spawn_blocking(move || {
            let deadline = Instant::now() + WAIT;
            let mut conn = loop {
                match pool.get_timeout(WAIT_SLICE) {
                    Ok(conn) => break conn,
                    Err(e) if Instant::now() >= deadline || health.failing(FAILING_WINDOW) => {
                        return Err(LogError::Unavailable(e.to_string()));
                    }
                    Err(_) => {}
                }
            };
            f(&mut conn)
        });
        match job.await {
            Ok(result) => result,
            Err(e) => Err(LogError::Unavailable(format!("read task failed: {e}"))),
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("limits", &self.limits).finish_non_exhaustive()
    }
}
