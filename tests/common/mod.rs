//! A server tests can start: the real app on 127.0.0.1:0, on SQLite (a temporary
//! directory) or on Postgres (a fresh database per test, dropped afterwards).
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::web;
use biscuit_auth::KeyPair;
use diesel::Connection as _;
use diesel::RunQueryDsl as _;
use diesel::connection::SimpleConnection as _;
use diesel::pg::PgConnection;
use opsync::app::{self, AppState};
use opsync::auth::{self, TokenSpec};
use opsync::client::Client;
use opsync::config::{Config, Settings};
use opsync::ids::{DeviceId, OpId, UserId};
use opsync::log::Limits;
use opsync::protocol::{NewOp, Payload, PushRequest};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The Postgres server tests use (a database is created per test).
pub fn pg_base_url() -> String {
    std::env::var("OPSYNC_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A Postgres database of its own, dropped on drop.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    /// Creates a database, or `None` (loudly) when no server answers outside CI.
    pub fn create() -> Option<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = format!("{}/postgres", pg_base_url());
        let mut admin = match PgConnection::establish(&admin_url) {
            Ok(conn) => conn,
            Err(e) if !in_ci() => {
                eprintln!("\n!!! SKIPPING a Postgres test: cannot connect to {admin_url}: {e}");
                eprintln!("!!! start Postgres or set OPSYNC_TEST_PG_URL; in CI (CI=true) this is a failure\n");
                return None;
            }
            Err(e) => panic!("CI=true and Postgres is unreachable at {admin_url}: {e}"),
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("opsync_test_{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Some(Self { url: format!("{}/{name}", pg_base_url()), name })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&format!("{}/postgres", pg_base_url())) {
            let _ =
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut admin);
        }
    }
}

/// Where a test server keeps its data.
pub struct Storage {
    pub backend: Backend,
    pub db: String,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDb>,
}

impl Storage {
    /// Fresh storage, or `None` when Postgres is wanted but absent (outside CI).
    pub fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let db = format!("sqlite://{}", dir.path().join("opsync.db").display());
                Some(Self { backend, db, dir, pg: None })
            }
            Backend::Postgres => {
                let pg = PgDb::create()?;
                Some(Self { backend, db: pg.url.clone(), dir, pg: Some(pg) })
            }
        }
    }

    /// Settings pointing at this storage.
    pub fn settings(&self) -> Settings {
        Settings {
            data_dir: Some(self.dir.path().to_owned()),
            db: Some(self.db.clone()),
            workers: Some(2),
            pool_size: Some(4),
            writers: Some(if self.backend == Backend::Postgres { 2 } else { 1 }),
            ..Settings::default()
        }
    }
}

/// A running server.
pub struct TestServer {
    pub base: String,
    pub root: KeyPair,
    pub state: web::Data<AppState>,
    pub config: Config,
    handle: actix_web::dev::ServerHandle,
    /// Declared before `storage`: the writers (and their connections) stop before a
    /// Postgres database is dropped.
    _writers: StopWriters,
    pub storage: Storage,
}

/// Stops the writer threads when the server goes away.
struct StopWriters(web::Data<AppState>);

impl Drop for StopWriters {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl TestServer {
    /// Starts a server with default limits.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, Limits::default()).await
    }

    /// Starts a server with the given limits.
    pub async fn start_with(backend: Backend, limits: Limits) -> Option<Self> {
        let storage = Storage::new(backend)?;
        Some(Self::on(storage, auth::generate_root(), limits))
    }

    /// Starts a server whose configuration `tweak` adjusts (retention settings…).
    pub async fn start_tweaked(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let storage = Storage::new(backend)?;
        Some(Self::on_with(storage, auth::generate_root(), tweak))
    }

    /// Starts a server on existing storage with an existing root key.
    pub fn on(storage: Storage, root: KeyPair, limits: Limits) -> Self {
        Self::on_configured(storage, root, |config| config.limits = limits)
    }

    /// Starts a server whose configuration `configure` adjusts.
    pub async fn start_configured(backend: Backend, configure: impl FnOnce(&mut Config)) -> Option<Self> {
        let storage = Storage::new(backend)?;
        Some(Self::on_configured(storage, auth::generate_root(), configure))
    }

    /// Starts a server on existing storage, with a configuration `configure` adjusts.
    /// Rate limits are off unless `configure` sets them (tests push and fail
    /// authentication far faster than a real client).
    pub fn on_configured(storage: Storage, root: KeyPair, configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::resolve_with(&storage.settings(), None).unwrap();
        config.rate_limits.enabled = false;
        configure(&mut config);
        let state = web::Data::new(AppState::open(&config, root.public()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = app::run(listener, state.clone(), 2).unwrap();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self { base, root, _writers: StopWriters(state.clone()), state, config, handle, storage }
    }

    /// [`TestServer::on`] with a configuration `tweak`.
    pub fn on_with(storage: Storage, root: KeyPair, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::on_configured(storage, root, tweak)
    }

    /// Stops the server (as a clean shutdown would) and starts a new one on the
    /// same database with the same key.
    pub async fn restart(self) -> Self {
        self.handle.stop(true).await;
        self.state.shutdown();
        let config = self.config.clone();
        let Self { root, storage, .. } = self;
        Self::on_configured(storage, root, |c| *c = config)
    }

    pub fn backend(&self) -> Backend {
        self.storage.backend
    }

    /// A read-write token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(TokenSpec {
            user: UserId::new(user).unwrap(),
            device: None,
            ttl: Duration::from_secs(3600),
            write: true,
            admin: false,
        })
    }

    pub fn token_with(&self, spec: TokenSpec) -> String {
        auth::mint(&self.root, &spec).unwrap()
    }

    /// A JSON client for `user`.
    pub fn client(&self, user: &str) -> Client {
        Client::new(self.base.clone(), self.token(user))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Ops stored for `user`, straight from the database.
    pub async fn stored_ops(&self, user: &str) -> i64 {
        let user = user.to_owned();
        self.state
            .log
            .with_conn(move |conn| {
                use diesel::prelude::*;
                use opsync::db::schema::ops;
                Ok(ops::table.filter(ops::user_id.eq(user)).count().get_result::<i64>(&mut **conn)?)
            })
            .await
            .unwrap()
    }

    /// Ops stored for every user.
    pub async fn total_ops(&self) -> i64 {
        self.state
            .log
            .with_conn(|conn| {
                use diesel::prelude::*;
                use opsync::db::schema::ops;
                Ok(ops::table.count().get_result::<i64>(&mut **conn)?)
            })
            .await
            .unwrap()
    }
}

/// An op with a fresh id.
pub fn op(payload: &[u8]) -> NewOp {
    NewOp { id: OpId::generate(), payload: Payload(payload.to_vec()), entity: None, kind: None, base: None, ts: None }
}

/// An op on an entity.
pub fn entity_op(entity: &str, base: Option<i64>, payload: &[u8]) -> NewOp {
    NewOp { entity: Some(entity.into()), base, kind: Some("put".into()), ..op(payload) }
}

/// A push of `ops` with no other fields.
pub fn push_of(ops: Vec<NewOp>) -> PushRequest {
    PushRequest { ops, device: None, expected_head: None, on_stale: None }
}

/// A push from a named device.
pub fn push_from(device: &str, ops: Vec<NewOp>) -> PushRequest {
    PushRequest { device: Some(DeviceId::new(device).unwrap()), ..push_of(ops) }
}

/// Defines each listed `async fn name(server: TestServer)` as a test on SQLite and
/// one on Postgres; `limits = EXPR;` first starts the servers with those limits
/// (the expression is evaluated inside the generated modules: use `super::`).
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::both_backends!(limits = ::opsync::log::Limits::default(); $($name),*);
    };
    (limits = $limits:expr; $($name:ident),* $(,)?) => {
        $crate::both_backends!(@backend sqlite, Sqlite, $limits; $($name),*);
        $crate::both_backends!(@backend postgres, Postgres, $limits; $($name),*);
    };
    (@backend $module:ident, $backend:ident, $limits:expr; $($name:ident),*) => {
        mod $module {
            $(
                #[actix_web::test]
                async fn $name() {
                    let backend = $crate::common::Backend::$backend;
                    if let Some(server) = $crate::common::TestServer::start_with(backend, $limits).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
}
