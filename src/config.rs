//! Settings: command-line flags, `OPSYNC_*` environment variables, an optional TOML
//! file, defaults — in that order of precedence. Resolved and validated once into a
//! [`Config`] that is passed explicitly; secrets never appear in its `Debug`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::db::{Backend, DbError, DbUrl};
use crate::limits::RateLimits;
use crate::log::{Limits, Retention};
use crate::realtime::RealtimeConfig;
use crate::tls::TlsFiles;

/// The data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "./opsync-data";
/// The listening address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The SQLite file inside the data directory.
pub const SQLITE_FILE: &str = "opsync.db";
/// The root key file inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// How long an idle HTTP keep-alive connection stays open when nothing says otherwise.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(75);

/// Settings every subcommand reads (flags and environment variables).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Settings (every subcommand; flags beat OPSYNC_* variables beat --config)")]
pub struct Settings {
    /// A TOML file with any of these settings (flags and env win over it).
    #[arg(long, global = true, env = "OPSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where opsync keeps its SQLite file and root key [default: ./opsync-data].
    #[arg(long, global = true, env = "OPSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://DATA_DIR/opsync.db].
    #[arg(long, global = true, env = "OPSYNC_DB", value_name = "URL")]
    pub db: Option<String>,
    /// The root key file [default: DATA_DIR/root.key, created on first start].
    /// The OPSYNC_ROOT_KEY environment variable (the key itself) wins over it.
    #[arg(long, global = true, env = "OPSYNC_ROOT_KEY_FILE", value_name = "FILE")]
    pub root_key_file: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true, env = "OPSYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, global = true, env = "OPSYNC_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Pooled database connections for reads [default: 8].
    #[arg(long, global = true, env = "OPSYNC_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<u32>,
    /// Writer threads (group commit) [default: 1 on SQLite, 4 on Postgres].
    #[arg(long, global = true, env = "OPSYNC_WRITERS", value_name = "N")]
    pub writers: Option<usize>,
    /// Most ops in one push [default: 1000].
    #[arg(long, global = true, env = "OPSYNC_MAX_OPS_PER_PUSH", value_name = "N")]
    pub max_ops_per_push: Option<usize>,
    /// Most bytes in one op's payload [default: 262144].
    #[arg(long, global = true, env = "OPSYNC_MAX_OP_BYTES", value_name = "BYTES")]
    pub max_op_bytes: Option<usize>,
    /// Most bytes in one request body, after decompression [default: 8388608].
    #[arg(long, global = true, env = "OPSYNC_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Origins whose pages may open WebSockets, comma-separated (`*`: any); the
    /// server's own origin and clients without an Origin are always allowed.
    #[arg(long, global = true, env = "OPSYNC_ALLOWED_ORIGINS", value_name = "ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Serve HTTPS and WSS with this PEM certificate chain (with --tls-key);
    /// re-read when the file changes.
    #[arg(long, global = true, env = "OPSYNC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, global = true, env = "OPSYNC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Most bytes in one snapshot [default: 67108864].
    #[arg(long, global = true, env = "OPSYNC_MAX_SNAPSHOT_BYTES", value_name = "BYTES")]
    pub max_snapshot_bytes: Option<usize>,
    /// Say a snapshot is due when more ops than this follow the latest [default: 1000].
    #[arg(long, global = true, env = "OPSYNC_SNAPSHOT_EVERY", value_name = "N")]
    pub snapshot_every: Option<i64>,
    /// Snapshots kept per user, the newest [default: 3].
    #[arg(long, global = true, env = "OPSYNC_KEEP_SNAPSHOTS", value_name = "N")]
    pub keep_snapshots: Option<usize>,
    /// Never remove ops younger than this, e.g. 30d [default: 30d].
    #[arg(long, global = true, env = "OPSYNC_RETENTION", value_name = "DURATION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Keep a tombstone (an entity's `del`) at least this long [default: 90d].
    #[arg(long, global = true, env = "OPSYNC_TOMBSTONE_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub tombstone_ttl: Option<Duration>,
    /// Per-entity compaction: keep only the newest op per entity [default: false].
    #[arg(long, global = true, env = "OPSYNC_COMPACT_ENTITIES", value_name = "BOOL")]
    pub compact_entities: Option<bool>,
    /// How often the server compacts, e.g. 1h; 0s: never [default: 1h].
    #[arg(long, global = true, env = "OPSYNC_COMPACT_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub compact_interval: Option<Duration>,
    /// Op payload bytes one user may store; 0: unlimited [default: 1073741824].
    #[arg(long, global = true, env = "OPSYNC_QUOTA_BYTES", value_name = "BYTES")]
    pub quota_bytes: Option<u64>,
    /// Apply the [rate_limits] (false: none at all, e.g. for benchmarks) [default: true].
    #[arg(long, global = true, env = "OPSYNC_RATE_LIMITS", value_name = "BOOL")]
    pub rate_limits: Option<bool>,
    /// Proxies whose X-Forwarded-For names the client (addresses or CIDR blocks,
    /// comma-separated) [default: none].
    #[arg(long, global = true, env = "OPSYNC_TRUSTED_PROXIES", value_name = "NETS", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Close an HTTP connection idle this long between requests, e.g. 75s; 0s: after
    /// every response [default: 75s].
    #[arg(long, global = true, env = "OPSYNC_KEEP_ALIVE", value_name = "DURATION", value_parser = parse_duration)]
    pub keep_alive: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 30d or 1h: {e}"))
}

/// The optional TOML file: the same settings, by the same names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// See [`Settings::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Settings::db`].
    pub db: Option<String>,
    /// See [`Settings::root_key_file`].
    pub root_key_file: Option<PathBuf>,
    /// See [`Settings::listen`].
    pub listen: Option<String>,
    /// See [`Settings::workers`].
    pub workers: Option<usize>,
    /// See [`Settings::pool_size`].
    pub pool_size: Option<u32>,
    /// See [`Settings::writers`].
    pub writers: Option<usize>,
    /// See [`Settings::tls_cert`].
    pub tls_cert: Option<PathBuf>,
    /// See [`Settings::tls_key`].
    pub tls_key: Option<PathBuf>,
    /// See [`Settings::keep_alive`] (a duration such as `"75s"`).
    pub keep_alive: Option<String>,
    /// Size limits and the storage quota.
    pub limits: Option<Limits>,
    /// `[rate_limits]`: token buckets per device, user and client address.
    pub rate_limits: Option<RateLimits>,
    /// `[realtime]`: WebSocket and long-poll tunables.
    pub realtime: Option<RealtimeConfig>,
    /// Snapshots, retention and compaction.
    pub retention: Option<Retention>,
}

/// Where the root key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum RootKeySource {
    /// The key itself (from `OPSYNC_ROOT_KEY`).
    Inline(String),
    /// A file; `create` when it is the default file, generated on first start.
    File {
        /// The file.
        path: PathBuf,
        /// Generate it if missing.
        create: bool,
    },
}

impl std::fmt::Debug for RootKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootKeySource::Inline(_) => f.write_str("Inline(<redacted>)"),
            RootKeySource::File { path, create } => {
                f.debug_struct("File").field("path", path).field("create", create).finish()
            }
        }
    }
}

/// Everything a subcommand needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The database.
    pub db: DbUrl,
    /// The root key.
    pub root_key: RootKeySource,
    /// HTTP workers.
    pub workers: usize,
    /// Read pool size.
    pub pool_size: u32,
    /// Writer threads.
    pub writers: usize,
    /// Size limits and the storage quota.
    pub limits: Limits,
    /// Rate limits.
    pub rate_limits: RateLimits,
    /// How long an idle HTTP keep-alive connection stays open (zero: no keep-alive).
    pub keep_alive: Duration,
    /// WebSocket and long-poll tunables.
    pub realtime: RealtimeConfig,
    /// Snapshots, retention and compaction.
    pub retention: Retention,
    /// HTTPS: the certificate and key files (plain HTTP without).
    pub tls: Option<TlsFiles>,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid setting {name}: {reason}")]
    Invalid {
        /// Which.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The database URL.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Config {
    /// Resolves settings, reading `OPSYNC_ROOT_KEY` from the environment.
    pub fn resolve(settings: &Settings) -> Result<Self, ConfigError> {
        Self::resolve_with(settings, std::env::var("OPSYNC_ROOT_KEY").ok().filter(|k| !k.trim().is_empty()))
    }

    /// Resolves settings with an explicit inline root key (for tests).
    pub fn resolve_with(settings: &Settings, root_key: Option<String>) -> Result<Self, ConfigError> {
        let file = match &settings.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = settings.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let db = match settings.db.clone().or(file.db) {
            Some(url) => DbUrl::parse(&url)?,
            None => DbUrl::sqlite_file(&data_dir.join(SQLITE_FILE)),
        };
        let root_key = match (root_key, settings.root_key_file.clone().or(file.root_key_file)) {
            (Some(key), _) => RootKeySource::Inline(key),
            (None, Some(path)) => RootKeySource::File { path, create: false },
            (None, None) => RootKeySource::File { path: data_dir.join(ROOT_KEY_FILE), create: true },
        };
        let listen_text = settings.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text
            .parse()
            .map_err(|e| ConfigError::Invalid { name: "listen", reason: format!("{listen_text:?}: {e}") })?;
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        let workers = positive("workers", settings.workers.or(file.workers).unwrap_or(cpus))?;
        let pool_size = positive("pool_size", settings.pool_size.or(file.pool_size).unwrap_or(8) as usize)? as u32;
        let default_writers = if db.backend() == Backend::Postgres { 4 } else { 1 };
        let writers = positive("writers", settings.writers.or(file.writers).unwrap_or(default_writers))?;
        if db.backend() == Backend::Sqlite && writers != 1 {
            return Err(ConfigError::Invalid { name: "writers", reason: "SQLite has exactly one writer".into() });
        }
        let mut limits = file.limits.unwrap_or_default();
        if let Some(n) = settings.max_ops_per_push {
            limits.max_ops_per_push = n;
        }
        if let Some(n) = settings.max_op_bytes {
            limits.max_op_bytes = n;
        }
        if let Some(n) = settings.max_body_bytes {
            limits.max_body_bytes = n;
        }
        if let Some(n) = settings.max_snapshot_bytes {
            limits.max_snapshot_bytes = n;
        }
        if let Some(n) = settings.quota_bytes {
            limits.quota_bytes = n;
        }
        let mut rate_limits = file.rate_limits.unwrap_or_default();
        if let Some(on) = settings.rate_limits {
            rate_limits.enabled = on;
        }
        if let Some(proxies) = &settings.trusted_proxies {
            rate_limits.trusted_proxies =
                proxies.iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
        }
        rate_limits.validate().map_err(|(name, reason)| ConfigError::Invalid { name, reason })?;
        let keep_alive = match (settings.keep_alive, file.keep_alive) {
            (Some(d), _) => d,
            (None, Some(text)) => {
                parse_duration(&text).map_err(|reason| ConfigError::Invalid { name: "keep_alive", reason })?
            }
            (None, None) => DEFAULT_KEEP_ALIVE,
        };
        let mut retention = file.retention.unwrap_or_default();
        if let Some(n) = settings.snapshot_every {
            retention.snapshot_every = n;
        }
        if let Some(n) = settings.keep_snapshots {
            retention.keep_snapshots = n;
        }
        if let Some(d) = settings.retention {
            retention.retention = d;
        }
        if let Some(d) = settings.tombstone_ttl {
            retention.tombstone_ttl = d;
        }
        if let Some(b) = settings.compact_entities {
            retention.compact_entities = b;
        }
        if let Some(d) = settings.compact_interval {
            retention.compact_interval = d;
        }
        if retention.snapshot_every < 1 {
            return Err(ConfigError::Invalid { name: "snapshot_every", reason: "must be at least 1".into() });
        }
        positive("keep_snapshots", retention.keep_snapshots)?;
        positive("max_snapshot_bytes", limits.max_snapshot_bytes)?;
        positive("max_ops_per_push", limits.max_ops_per_push)?;
        positive("max_op_bytes", limits.max_op_bytes)?;
        positive("max_body_bytes", limits.max_body_bytes)?;
        positive("max_page_ops", limits.max_page_ops)?;
        positive("max_page_bytes", limits.max_page_bytes)?;
        let mut realtime = file.realtime.unwrap_or_default();
        if let Some(origins) = &settings.allowed_origins {
            realtime.allowed_origins = origins.iter().map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect();
        }
        positive("realtime.outbox_frames", realtime.outbox_frames)?;
        positive("realtime.outbox_bytes", realtime.outbox_bytes)?;
        positive("realtime.max_frame_bytes", realtime.max_frame_bytes)?;
        for (name, ms) in [
            ("realtime.hello_timeout_ms", realtime.hello_timeout_ms),
            ("realtime.heartbeat_ms", realtime.heartbeat_ms),
            ("realtime.idle_timeout_ms", realtime.idle_timeout_ms),
            ("realtime.send_timeout_ms", realtime.send_timeout_ms),
            ("realtime.token_check_ms", realtime.token_check_ms),
        ] {
            positive(name, usize::try_from(ms).unwrap_or(usize::MAX))?;
        }
        if realtime.idle_timeout_ms <= realtime.heartbeat_ms {
            return Err(ConfigError::Invalid {
                name: "realtime.idle_timeout_ms",
                reason: "must be longer than realtime.heartbeat_ms".into(),
            });
        }
        let tls = match (settings.tls_cert.clone().or(file.tls_cert), settings.tls_key.clone().or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "tls_cert",
                    reason: "tls_cert and tls_key go together: give both, or neither for plain HTTP".into(),
                });
            }
        };
        Ok(Self {
            listen,
            data_dir,
            db,
            root_key,
            workers,
            pool_size,
            writers,
            limits,
            rate_limits,
            keep_alive,
            realtime,
            retention,
            tls,
        })
    }
}

fn positive(name: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
    }
    Ok(n)
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let fail = |reason: String| ConfigError::File { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    toml::from_str(&text).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_zero_configuration_sqlite() {
        let c = Config::resolve_with(&Settings::default(), None).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.db.backend(), Backend::Sqlite);
        assert_eq!(c.db.as_str(), "./opsync-data/opsync.db");
        assert_eq!(c.root_key, RootKeySource::File { path: "./opsync-data/root.key".into(), create: true });
        assert_eq!(c.writers, 1);
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opsync.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndb = \"postgres://u@h/db\"\n[limits]\nmax_ops_per_push = 7\n",
        )
        .unwrap();
        let settings = Settings { config: Some(path.clone()), ..Settings::default() };
        let c = Config::resolve_with(&settings, None).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.db.backend(), Backend::Postgres);
        assert_eq!(c.db.as_str(), "postgres://u@h/db?connect_timeout=5");
        assert_eq!(c.writers, 4);
        assert_eq!(c.limits.max_ops_per_push, 7);
        assert_eq!(c.retention, Retention::default());
        let settings = Settings { config: Some(path), listen: Some("127.0.0.1:1".into()), ..Settings::default() };
        assert_eq!(Config::resolve_with(&settings, None).unwrap().listen.port(), 1);
    }

    #[test]
    fn retention_settings_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opsync.toml");
        std::fs::write(
            &path,
            "[retention]\nsnapshot_every = 50\nretention = \"7d\"\ncompact_entities = true\ncompact_interval = \"0s\"\n",
        )
        .unwrap();
        let settings =
            Settings { config: Some(path), tombstone_ttl: Some(Duration::from_secs(60)), ..Settings::default() };
        let c = Config::resolve_with(&settings, None).unwrap();
        assert_eq!(c.retention.snapshot_every, 50);
        assert_eq!(c.retention.retention, Duration::from_secs(7 * 86400));
        assert!(c.retention.compact_entities);
        assert_eq!(c.retention.compact_interval, Duration::ZERO);
        assert_eq!(c.retention.tombstone_ttl, Duration::from_secs(60));
        assert_eq!(c.retention.keep_snapshots, 3);
        let zero = Settings { keep_snapshots: Some(0), ..Settings::default() };
        assert!(Config::resolve_with(&zero, None).is_err());
    }

    #[test]
    fn rate_limits_quota_and_keep_alive_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opsync.toml");
        std::fs::write(
            &path,
            "keep_alive = \"5s\"\n[limits]\nquota_bytes = 0\n[rate_limits]\n\
             device_pushes = { per_second = 2.5, burst = 5 }\nmax_sessions_per_user = 7\n",
        )
        .unwrap();
        let c = Config::resolve_with(&Settings { config: Some(path.clone()), ..Settings::default() }, None).unwrap();
        assert_eq!(c.limits.quota(), None, "0: unlimited");
        assert_eq!(c.keep_alive, Duration::from_secs(5));
        assert_eq!(c.rate_limits.device_pushes, crate::limits::Rate::new(2.5, 5.0));
        assert_eq!(c.rate_limits.max_sessions_per_user, 7);
        assert_eq!(c.rate_limits.user_pushes, RateLimits::default().user_pushes);
        assert!(c.rate_limits.enabled);
        let flags = Settings {
            config: Some(path),
            rate_limits: Some(false),
            quota_bytes: Some(1000),
            keep_alive: Some(Duration::ZERO),
            trusted_proxies: Some(vec!["10.0.0.0/8".into(), " ".into()]),
            ..Settings::default()
        };
        let c = Config::resolve_with(&flags, None).unwrap();
        assert!(!c.rate_limits.enabled);
        assert_eq!((c.limits.quota(), c.keep_alive), (Some(1000), Duration::ZERO));
        assert_eq!(c.rate_limits.trusted_proxies, vec!["10.0.0.0/8".to_owned()]);
        let defaults = Config::resolve_with(&Settings::default(), None).unwrap();
        assert_eq!((defaults.limits.quota(), defaults.keep_alive), (Some(1 << 30), DEFAULT_KEEP_ALIVE));
        let bad = Settings { trusted_proxies: Some(vec!["not-an-ip".into()]), ..Settings::default() };
        assert!(Config::resolve_with(&bad, None).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad_db = Settings { db: Some("mysql://x".into()), ..Settings::default() };
        assert!(Config::resolve_with(&bad_db, None).is_err());
        let bad_listen = Settings { listen: Some("nowhere".into()), ..Settings::default() };
        assert!(Config::resolve_with(&bad_listen, None).is_err());
        let zero = Settings { max_ops_per_push: Some(0), ..Settings::default() };
        assert!(Config::resolve_with(&zero, None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("t.toml");
        std::fs::write(&typo, "lisen = \"x\"\n").unwrap();
        assert!(Config::resolve_with(&Settings { config: Some(typo), ..Settings::default() }, None).is_err());
    }

    #[test]
    fn inline_key_is_redacted() {
        let c = Config::resolve_with(&Settings::default(), Some("ed25519-private/secret".into())).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }
}
