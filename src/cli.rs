//! The command line: `opsync serve | migrate | token …`. Every subcommand reads the
//! same settings (flags, `OPSYNC_*` variables, the optional TOML file).

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use actix_web::web;
use clap::{Parser, Subcommand};

use crate::app::{self, AppState};
use crate::auth::{self, RootKey, TokenSpec};
use crate::config::{Config, RootKeySource, Settings};
use crate::db::{self, Backend};
use crate::ids::{DeviceId, OpId, UserId};

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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    }
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
    let listener = TcpListener::bind(config.listen)?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}");
    tracing::info!(db = %config.db, %url, workers = config.workers, "opsync listening");
    println!("opsync is listening on {url}");
    if state.is_empty().await? {
        print_first_token(&key, &url)?;
    }
    let server = app::run(listener, state.clone(), config.workers)?;
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

/// On a first start with an empty database: a token to try the server with at once.
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
         Push an op and read the log back:\n\n\
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
