//! Database access: one connection type over SQLite and Postgres, pools, migrations.
//!
//! The backend is chosen from the URL scheme (`sqlite://…` or `postgres://…`), never
//! guessed: SQLite would accept any string as a file name.

pub mod dialect;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, ConnectionError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// A connection to either backend. Shared queries are written once against this type;
/// what differs between the backends lives in [`dialect`].
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    /// The embedded default.
    Sqlite(SqliteConnection),
    /// Larger and multi-node deployments.
    Pg(PgConnection),
}

/// A pool of [`DbConn`] for reads (and for writes outside the sequencer).
pub type DbPool = Pool<ConnectionManager<DbConn>>;
/// A connection checked out of a [`DbPool`].
pub type PooledConn = PooledConnection<ConnectionManager<DbConn>>;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long a SQLite connection waits for a lock before it reports busy.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// Seconds libpq waits for a connection unless the URL says otherwise.
const PG_CONNECT_TIMEOUT_S: u32 = 5;
/// An arbitrary, fixed key for the advisory lock that serialises migrations when
/// several nodes start at once on one Postgres.
const PG_MIGRATION_LOCK: i64 = 0x6f70_7379_6e63;

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file on local disk.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A validated database URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    backend: Backend,
    /// A file path for SQLite, the full URL for Postgres.
    target: String,
}

/// Errors from opening or migrating the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names no backend opsync knows.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    BadUrl(String),
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] ConnectionError),
    /// A pool could not be built (its first connection failed).
    #[error("cannot open the connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DbUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if rest.is_empty() {
                return Err(DbError::BadUrl(url.to_owned()));
            }
            return Ok(Self { backend: Backend::Sqlite, target: rest.to_owned() });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Without a connect timeout libpq waits for the OS (minutes) when the
            // server's host does not answer; a request should get its 503 sooner.
            let target = if url.contains("connect_timeout=") {
                url.to_owned()
            } else {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}connect_timeout={PG_CONNECT_TIMEOUT_S}")
            };
            return Ok(Self { backend: Backend::Postgres, target });
        }
        Err(DbError::BadUrl(redact(url)))
    }

    /// The SQLite URL of a file.
    pub fn sqlite_file(path: &Path) -> Self {
        Self { backend: Backend::Sqlite, target: path.display().to_string() }
    }

    /// The engine this URL names.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL as given to the driver (may hold a password: do not log it).
    pub fn as_str(&self) -> &str {
        &self.target
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.backend {
            Backend::Sqlite => write!(f, "sqlite://{}", self.target),
            Backend::Postgres => f.write_str(&redact(&self.target)),
        }
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Hides the password of a `scheme://user:password@host` URL.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((creds, host)) = rest.split_once('@') else { return url.to_owned() };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens one connection and applies the per-connection settings.
pub fn connect(url: &DbUrl) -> Result<DbConn, DbError> {
    let mut conn = match url.backend {
        Backend::Sqlite => {
            if let Some(dir) = Path::new(&url.target).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| DbError::Io { path: dir.to_owned(), source })?;
            }
            DbConn::Sqlite(SqliteConnection::establish(&url.target)?)
        }
        Backend::Postgres => DbConn::Pg(PgConnection::establish(&url.target)?),
    };
    dialect::configure_connection(&mut conn)?;
    Ok(conn)
}

/// Applies the per-connection settings to pooled connections.
#[derive(Debug)]
struct Configure;

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for Configure {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        dialect::configure_connection(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Whether the database has been failing lately: the time of the last failed
/// connection attempt or health check of a pool, so requests can answer 503 at once
/// instead of waiting out the pool's timeout while the database is down.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU64>);

impl Health {
    /// Records a failure now.
    pub fn failed(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a failure was recorded within `window`.
    pub fn failing(&self, window: Duration) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        last != 0 && now_ms().saturating_sub(last) <= window.as_millis() as u64
    }
}

impl r2d2::HandleError<diesel::r2d2::Error> for Health {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::debug!(%error, "database connection failed");
        self.failed();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Opens a pool of `size` connections; its connection failures go to `health`.
pub fn pool(url: &DbUrl, size: u32, timeout: Duration, health: &Health) -> Result<DbPool, DbError> {
    if url.backend == Backend::Sqlite {
        // Create the directory before the pool opens the file.
        drop(connect(url)?);
    }
    let manager = ConnectionManager::<DbConn>::new(url.target.clone());
    let pool = Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(1))
        .connection_timeout(timeout)
        // diesel does not notice a Postgres connection that died outside a
        // transaction (after a server restart), so Postgres connections are pinged
        // when checked out and replaced if dead. A SQLite connection cannot die.
        .test_on_check_out(url.backend == Backend::Postgres)
        .connection_customizer(Box::new(Configure))
        .error_handler(Box::new(health.clone()))
        .build(manager)?;
    Ok(pool)
}

/// Applies pending migrations (idempotent; safe when several nodes start at once).
pub fn migrate(conn: &mut DbConn) -> Result<(), DbError> {
    let migration_error = |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(e.to_string());
    match conn {
        DbConn::Sqlite(_) => {
            conn.batch_execute("PRAGMA journal_mode = WAL;")?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS).map_err(migration_error)?;
        }
        DbConn::Pg(_) => {
            conn.batch_execute(&format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"))?;
            let result = conn.run_pending_migrations(PG_MIGRATIONS).map(drop).map_err(migration_error);
            conn.batch_execute(&format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"))?;
            result?;
        }
    }
    Ok(())
}

/// Refreshes the planner's statistics (the same statement on both backends).
/// Postgres plans a pull over a freshly filled table without them as a scan of
/// the whole remaining range plus a sort (13 ms instead of 0.1 ms per page
/// chunk at 100,000 ops), so bulk loads (import, copy) end with it.
pub fn analyze(conn: &mut DbConn) -> Result<(), DbError> {
    conn.batch_execute("ANALYZE")?;
    Ok(())
}

/// The SQLite busy timeout, for [`dialect`].
pub(crate) const fn sqlite_busy_timeout_ms() -> u32 {
    SQLITE_BUSY_TIMEOUT_MS
}
