//! The command line: `opsync serve | migrate | token … | user delete | compact | export | import | copy`. Every subcommand reads the
//! same settings (flags, `OPSYNC_*` variables, the optional TOML file).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actix_web::web;
use clap::{Parser, Subcommand};

use crate::app::{self, AppState};
use crate::auth::{self, RootKey, TokenSpec};
use crate::config::{Config, RootKeySource, Settings};
use crate::db::{self, Backend, DbUrl};
use crate::ids::{DeviceId, OpId, UserId};
use crate::log::writer::Writer;
use crate::log::{Log, retention, transfer};

/// opsync: a real-time operation-log sync server for offline-first apps.
#[derive(Debug, Parser)]
#[command(name = "opsync", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (applies migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Issue, inspect, attenuate and revoke tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Drive a running server with load and report latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// Manage users' data.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Prune and compact now, by the retention settings (the server also does it
    /// every --compact-interval).
    Compact {
        /// Only this user (default: every user).
        #[arg(long)]
        user: Option<String>,
    },
    /// Write users' logs, snapshots, devices and tombstones to a self-describing
    /// file (JSON lines; gzip if FILE ends in .gz), keeping seqs and ids.
    Export {
        /// The user to export (repeatable); without it, the whole deployment.
        #[arg(long)]
        user: Vec<String>,
        /// The file [default: stdout].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Load an export (users that do not exist yet), verifying every user's
    /// counts and checksums before committing it.
    Import {
        /// The file, or - for stdin.
        file: PathBuf,
    },
    /// Copy a whole deployment to another database (e.g. SQLite to Postgres), then
    /// verify every user's counts and checksums on both sides. Stop the servers first.
    Copy {
        /// The source database URL.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The destination database URL (must hold no users).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Delete everything of a user: ops, snapshots, devices, tombstones.
    Delete {
        /// The user.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new token for a user on stdout.
    Issue {
        /// The user (the log partition the token reaches).
        #[arg(long)]
        user: String,
        /// Bind the token to one device.
        #[arg(long)]
        device: Option<String>,
        /// Lifetime, e.g. 30d, 12h, 15m.
        #[arg(long, default_value = "30d", value_parser = parse_ttl)]
        ttl: Duration,
        /// Grant only `read` (pull, status).
        #[arg(long)]
        read_only: bool,
        /// Also grant `admin` (server administration endpoints).
        #[arg(long, conflicts_with = "read_only")]
        admin: bool,
    },
    /// Show a token's facts, expiry and revocation ids.
    Inspect {
        /// The token.
        token: String,
    },
    /// Derive a restricted token offline (what any holder can do without the server).
    Attenuate {
        /// The token.
        token: String,
        /// Restrict to reads.
        #[arg(long)]
        read_only: bool,
        /// Expire sooner, e.g. 1h.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Revoke a token (and every token attenuated from it) or one revocation id.
    /// An attenuated token's parent stays valid: revoke the parent to end them all.
    Revoke {
        /// A token, or a revocation id in hex as `token inspect` prints it.
        token_or_id: String,
    },
}

/// Parses `30d`, `12h`, `90s`, `1w`…
fn parse_ttl(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 30d or 12h: {e}"))
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors name their cause in their message; `{:#}` would repeat it.
            eprintln!("opsync: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSYNC_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        // actix-http logs a client's malformed request (a bad header, say) at ERROR;
        // that is the client's fault, not the server's, and any client could fill
        // the log with it. actix-http answers such a request 400 by itself.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_http::h1::dispatcher=off"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::resolve(&cli.settings)?;
    match cli.command {
        Command::Serve => actix_web::rt::System::new().block_on(serve(config)),
        Command::Migrate => {
            let mut conn = db::connect(&config.db)?;
            db::migrate(&mut conn)?;
            tracing::info!(db = %config.db, "migrations applied");
            Ok(())
        }
        Command::Token { command } => token(&config, command),
        Command::Bench(args) => crate::bench::run(&config, args),
        Command::User { command: UserCommand::Delete { user } } => delete_user(&config, UserId::new(user)?),
        Command::Compact { user } => compact(&config, user),
        Command::Export { user, out } => export(&config, &user, out),
        Command::Import { file } => import(&config, &file),
        Command::Copy { from, to } => copy(&DbUrl::parse(&from)?, &DbUrl::parse(&to)?),
    }
}

/// `opsync user delete`: through [`crate::log::Log::delete_user`], like the HTTP route.
fn delete_user(config: &Config, user: UserId) -> anyhow::Result<()> {
    let mut conn = db::connect(&config.db)?;
    db::migrate(&mut conn)?;
    drop(conn);
    let pool = db::pool(&config.db, 1, Duration::from_secs(10), &db::Health::default())?;
    let writer = Writer::start(&config.db, 1, 16, std::sync::Arc::new(crate::log::NoSink))?;
    let log = Log::new(writer, pool, config.limits.clone());
    let result = actix_web::rt::System::new().block_on(log.delete_user(user));
    log.shutdown();
    let deleted = result?;
    println!(
        "deleted user {}: {} ops, {} snapshots, {} devices, {} entities",
        deleted.user, deleted.ops, deleted.snapshots, deleted.devices, deleted.entities
    );
    eprintln!("servers close the user's open sessions; tokens stay valid (revoke them to lock the user out)");
    Ok(())
}

fn compact(config: &Config, user: Option<String>) -> anyhow::Result<()> {
    let mut conn = db::connect(&config.db)?;
    db::migrate(&mut conn)?;
    let now = crate::log::now_ms();
    let done = match user {
        Some(user) => vec![retention::compact_user(&mut conn, UserId::new(user)?.as_str(), &config.retention, now)?],
        None => retention::compact_all(&mut conn, &config.retention, now)?
            .ok_or_else(|| anyhow::anyhow!("another node is compacting right now; try again later"))?,
    };
    for c in &done {
        println!(
            "{}: removed {} ops and {} tombstones; horizon {} -> {}",
            c.user, c.ops_removed, c.tombstones_removed, c.horizon_before, c.horizon
        );
    }
    Ok(())
}

fn export(config: &Config, users: &[String], out: Option<PathBuf>) -> anyhow::Result<()> {
    for user in users {
        UserId::new(user.as_str())?;
    }
    let mut conn = db::connect(&config.db)?;
    db::migrate(&mut conn)?;
    let digests = match &out {
        Some(path) => {
            // Written beside the target and renamed: a failed export leaves no partial file.
            let partial = path.with_extension("partial");
            let file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
            let gzip = path.extension().is_some_and(|e| e == "gz");
            let digests = if gzip {
                let mut out = flate2::write::GzEncoder::new(file, flate2::Compression::default());
                let digests = transfer::export(&mut conn, users, &mut out)?;
                out.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                digests
            } else {
                let mut out = file;
                let digests = transfer::export(&mut conn, users, &mut out)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                digests
            };
            std::fs::rename(&partial, path)?;
            digests
        }
        None => transfer::export(&mut conn, users, &mut std::io::stdout().lock())?,
    };
    for (user, d) in digests {
        eprintln!(
            "exported {user}: {} ops (head {}, horizon {}), {} snapshots, sha256 {}",
            d.ops, d.head, d.horizon, d.snapshots, d.ops_sha256
        );
    }
    Ok(())
}

fn import(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let mut conn = db::connect(&config.db)?;
    db::migrate(&mut conn)?;
    let imported = if file.as_os_str() == "-" {
        transfer::import(&mut conn, std::io::stdin().lock())?
    } else {
        transfer::import(&mut conn, std::io::BufReader::new(std::fs::File::open(file)?))?
    };
    for (user, d) in imported {
        println!(
            "imported {user}: {} ops (head {}, horizon {}), {} snapshots, verified",
            d.ops, d.head, d.horizon, d.snapshots
        );
    }
    Ok(())
}

fn copy(from: &DbUrl, to: &DbUrl) -> anyhow::Result<()> {
    if from == to {
        anyhow::bail!("--from and --to name the same database");
    }
    let report = transfer::copy(from, to)?;
    let ops: i64 = report.users.iter().map(|(_, d)| d.ops).sum();
    for (user, d) in &report.users {
        println!(
            "{user}: {} ops, {} snapshots, {} devices, {} entities  ok  {}",
            d.ops,
            d.snapshots,
            d.devices,
            d.entities,
            &d.ops_sha256[..16]
        );
    }
    println!(
        "copied {} users ({ops} ops) and {} revocations from {from} to {to}; every user verified",
        report.users.len(),
        report.revoked
    );
    Ok(())
}

/// Loads the root key; generates the default key file if `may_create` (serve and
/// `token issue`: what a first start does) and it does not exist yet.
pub fn root_key(config: &Config, may_create: bool) -> anyhow::Result<RootKey> {
    let key = match &config.root_key {
        RootKeySource::Inline(text) => RootKey::from_text(text, "OPSYNC_ROOT_KEY")?,
        RootKeySource::File { path, create } => RootKey::load_or_generate(path, *create && may_create)?,
    };
    if key.generated() {
        tracing::info!(public_key = %key.public_hex(), file = %key.origin(), "generated a new root key");
    }
    Ok(key)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let key = root_key(&config, true)?;
    tracing::info!(public_key = %key.public_hex(), from = %key.origin(), "root key loaded");
    let state = web::Data::new(AppState::open(&config, key.public())?);
    let tls = match &config.tls {
        Some(files) => {
            let tls = crate::tls::Tls::load(files)?;
            tls.watch(crate::tls::RELOAD_INTERVAL);
            Some(tls)
        }
        None => None,
    };
    let listener = TcpListener::bind(config.listen)?;
    let address = listener.local_addr()?;
    let url = format!("{}://{address}", if tls.is_some() { "https" } else { "http" });
    tracing::info!(db = %config.db, %url, workers = config.workers, "opsync listening");
    println!("opsync is listening on {url}");
    if state.is_empty().await? {
        print_first_token(&key, &url)?;
    } else {
        println!("The demo app is at {url}/ (it asks for a token: opsync token issue --user demo).");
    }
    let server = match &tls {
        Some(tls) => app::run_tls(listener, state.clone(), config.workers, tls)?,
        None => app::run(listener, state.clone(), config.workers)?,
    };
    actix_web::rt::spawn(stop_on_signal(server.handle(), state.clone()));
    server.await?;
    state.shutdown();
    tracing::info!("opsync stopped");
    Ok(())
}

/// On SIGINT or SIGTERM: close the WebSockets (code 1001, so clients reconnect
/// elsewhere at once) and stop accepting, letting requests in flight finish.
async fn stop_on_signal(server: actix_web::dev::ServerHandle, state: web::Data<AppState>) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => drop(signal.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("stopping: closing WebSockets, finishing requests in flight");
    state.realtime.shutdown();
    server.stop(true).await;
}

/// On a first start with an empty database: a token to try the server with at once, and
/// a link that opens the demo app with it (in the fragment, which stays in the browser).
fn print_first_token(key: &RootKey, url: &str) -> anyhow::Result<()> {
    let spec = TokenSpec {
        user: UserId::new("demo")?,
        device: None,
        ttl: Duration::from_secs(30 * 24 * 3600),
        write: true,
        admin: false,
    };
    let token = auth::mint(key.pair(), &spec)?;
    let id = OpId::generate();
    println!(
        "\nThe database is empty. Here is a token for user \"demo\", valid for 30 days:\n\n\
         \x20   export OPSYNC_TOKEN='{token}'\n\n\
         Open the demo app, a task list that syncs live between browser windows and works offline.\n\
         The token is in the link's fragment (after #), which the browser never sends to the server:\n\n\
         \x20   {url}/#token={token}\n\n\
         Or push an op and read the log back:\n\n\
         \x20   curl -s -X POST {url}/v1/ops -H \"Authorization: Bearer $OPSYNC_TOKEN\" \\\n\
         \x20        -H 'Content-Type: application/json' -d '{{\"ops\":[{{\"id\":\"{id}\",\"payload\":\"aGVsbG8=\"}}]}}'\n\
         \x20   curl -s '{url}/v1/ops?since=0' -H \"Authorization: Bearer $OPSYNC_TOKEN\"\n\n\
         More tokens: opsync token issue --user NAME (see --help).\n"
    );
    Ok(())
}

fn token(config: &Config, command: TokenCommand) -> anyhow::Result<()> {
    // Only issuing may create the key; inspecting or revoking with a missing key
    // must say so rather than invent a new one.
    let key = root_key(config, matches!(command, TokenCommand::Issue { .. }))?;
    match command {
        TokenCommand::Issue { user, device, ttl, read_only, admin } => {
            let spec = TokenSpec {
                user: UserId::new(user)?,
                device: device.map(DeviceId::new).transpose()?,
                ttl,
                write: !read_only,
                admin,
            };
            println!("{}", auth::mint(key.pair(), &spec)?);
        }
        TokenCommand::Inspect { token } => {
            let parsed = auth::parse(&token, &key.public())?;
            let revoked = known_revocations(config).unwrap_or_else(|e| {
                eprintln!("(revocation status unknown: {e})");
                Default::default()
            });
            print!("{}", auth::describe(&parsed, &revoked));
        }
        TokenCommand::Attenuate { token, read_only, ttl } => {
            if !read_only && ttl.is_none() {
                anyhow::bail!("say how to restrict the token: --read-only and/or --ttl");
            }
            let parsed = auth::parse(&token, &key.public())?;
            println!("{}", auth::attenuate(&parsed, read_only, ttl)?);
        }
        TokenCommand::Revoke { token_or_id } => {
            let text = token_or_id.trim();
            let ids = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                vec![text.to_ascii_lowercase()]
            } else {
                let parsed = auth::parse(text, &key.public())?;
                vec![auth::own_revocation_id(&parsed)]
            };
            let mut conn = db::connect(&config.db)?;
            db::migrate(&mut conn)?;
            auth::revoke(&mut conn, &ids)?;
            for id in ids {
                println!("revoked {id}");
            }
            eprintln!("running servers refuse it within {:?}", auth::REFRESH_INTERVAL);
        }
    }
    Ok(())
}

/// Revoked ids, if the database exists (inspect must not create one).
fn known_revocations(config: &Config) -> anyhow::Result<std::collections::HashSet<String>> {
    if config.db.backend() == Backend::Sqlite && !std::path::Path::new(config.db.as_str()).exists() {
        return Ok(Default::default());
    }
    let mut conn = db::connect(&config.db)?;
    Ok(auth::revocation::load(&mut conn)?)
}
