//! The application: its state, its routes, and a server tests can start on any
//! listener.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware, web};
use biscuit_auth::PublicKey;

use crate::auth::{REFRESH_INTERVAL, RevocationList, Verifier};
use crate::config::Config;
use std::sync::Arc;

use crate::db::{self, Backend, DbError};
use crate::error::{ApiError, ErrorCode};
use crate::limits::RateLimiter;
use crate::log::writer::Writer;
use crate::log::{Log, store};
use crate::realtime::Realtime;

/// How long r2d2's own `get` waits for a pooled connection (requests go through
/// `Log::with_conn`, which waits up to 10 s and then answers 503).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands the write queue holds before pushes wait for room.
const WRITE_QUEUE: usize = 4096;

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The op log.
    pub log: Log,
    /// Token verification.
    pub verifier: Verifier,
    /// Live delivery: hubs, sessions, long-polls.
    pub realtime: Realtime,
    /// Rate limits per device, user and client address.
    pub limits: RateLimiter,
    /// How long an idle HTTP keep-alive connection stays open (zero: none).
    pub keep_alive: Duration,
}

/// Failures at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Binding or serving.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Opens the database (applying migrations), the pool and the writers.
    pub fn open(config: &Config, root: PublicKey) -> Result<Self, StartError> {
        let mut conn = db::connect(&config.db)?;
        db::migrate(&mut conn)?;
        let revoked = RevocationList::default();
        revoked.reload(&mut conn).map_err(DbError::from)?;
        drop(conn);
        let health = db::Health::default();
        let pool = db::pool(&config.db, config.pool_size, POOL_TIMEOUT, &health)?;
        let realtime = Realtime::new(pool.clone(), config.realtime.clone());
        let writer = Writer::start(&config.db, config.writers, WRITE_QUEUE, Arc::new(realtime.clone()))?;
        if config.db.backend() == Backend::Postgres {
            realtime.start_listener(&config.db)?;
        }
        let log =
            Log::new(writer, pool, config.limits.clone()).with_health(health).with_retention(config.retention.clone());
        Ok(Self {
            log,
            verifier: Verifier::new(root, revoked),
            realtime,
            limits: RateLimiter::new(config.rate_limits.clone()),
            keep_alive: config.keep_alive,
        })
    }

    /// Whether the database holds no user yet (a fresh deployment).
    pub async fn is_empty(&self) -> Result<bool, ApiError> {
        Ok(!self.log.with_conn(|conn| store::has_users(conn).map_err(Into::into)).await?)
    }

    /// Closes the live sessions, finishes queued writes and stops the writer threads.
    pub fn shutdown(&self) {
        self.realtime.shutdown();
        self.log.shutdown();
    }
}

/// Starts serving plain HTTP on `listener`. Call inside an actix (or tokio)
/// runtime; await the returned server, or stop it with its handle.
pub fn run(listener: TcpListener, state: web::Data<AppState>, workers: usize) -> Result<Server, StartError> {
    serve(listener, state, workers, None)
}

/// Like [`run`], serving HTTPS (and WSS) with `tls`.
pub fn run_tls(
    listener: TcpListener,
    state: web::Data<AppState>,
    workers: usize,
    tls: &crate::tls::Tls,
) -> Result<Server, StartError> {
    serve(listener, state, workers, Some(tls.server_config()))
}

fn serve(
    listener: TcpListener,
    state: web::Data<AppState>,
    workers: usize,
    tls: Option<rustls::ServerConfig>,
) -> Result<Server, StartError> {
    let compaction = actix_web::rt::spawn(crate::log::retention::compact_periodically(state.log.clone()));
    let weak = Arc::downgrade(&state.clone().into_inner());
    actix_web::rt::spawn(async move {
        refresh_revocations(weak).await;
        // The state is shut down or gone: so goes the compaction, which holds the
        // pool (a server restarted in the same process must not leak connections).
        compaction.abort();
    });
    // Explicit, not actix's 5 s default: idle connections between requests are
    // closed at this deadline (a connection that never sends a request head is
    // closed by the 10 s request timeout below).
    let keep_alive = if state.keep_alive.is_zero() {
        actix_web::http::KeepAlive::Disabled
    } else {
        actix_web::http::KeepAlive::Timeout(state.keep_alive)
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::new(ErrorCode::InvalidQuery, format!("invalid query: {e}")).into()),
            )
            .wrap(middleware::Compress::default())
            .wrap(middleware::from_fn(crate::http::trace))
            .configure(crate::http::routes)
            .default_service(web::to(crate::http::not_found))
    })
    .workers(workers)
    // Small frames (a `pushed` right after an `ops`) must not wait for the
    // client's delayed ACK: Nagle's algorithm added ~20 ms to them.
    .tcp_nodelay(true)
    // The caller stops the server (`opsync serve` on SIGINT/SIGTERM, after closing
    // the WebSockets; tests through the handle).
    .disable_signals()
    .keep_alive(keep_alive)
    .client_request_timeout(Duration::from_secs(10))
    .shutdown_timeout(10);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Re-reads the revocation table so revocations made elsewhere (the CLI, another
/// node) take effect here. Holds the state only while it works, and ends once the
/// state is gone or shut down: a stopped server must not keep the read pool's
/// database connections open.
async fn refresh_revocations(state: std::sync::Weak<AppState>) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade().filter(|s| !s.realtime.is_stopping()) else { return };
        let list = state.verifier.revocations().clone();
        if let Err(e) = state.log.with_conn(move |conn| list.reload(conn).map_err(Into::into)).await {
            tracing::warn!(error = %e, "cannot refresh the revocation list");
        }
    }
}
