//! The `opsync` binary end to end: zero-configuration `serve`, the `token` commands,
//! revocation reaching a running server, where settings and the root key come from,
//! and `migrate` on both backends. Every test runs the real executable in a temporary
//! directory of its own, with the machine's `OPSYNC_*` variables removed.
// clippy.toml's allow-*-in-tests covers `#[test]` functions only, not the helpers
// an integration test crate shares between them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PgDb, op, push_of};
use opsync::client::{Client, ClientError};

/// The longest any one command or any awaited line of output may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Settings the child must not inherit from the machine running the tests.
const OPSYNC_VARS: &[&str] = &[
    "OPSYNC_CONFIG",
    "OPSYNC_DATA_DIR",
    "OPSYNC_DB",
    "OPSYNC_ROOT_KEY",
    "OPSYNC_ROOT_KEY_FILE",
    "OPSYNC_LISTEN",
    "OPSYNC_WORKERS",
    "OPSYNC_POOL_SIZE",
    "OPSYNC_WRITERS",
    "OPSYNC_MAX_OPS_PER_PUSH",
    "OPSYNC_MAX_OP_BYTES",
    "OPSYNC_MAX_BODY_BYTES",
    "OPSYNC_LOG",
];

/// `opsync` run in `dir`, with no `OPSYNC_*` variable from our environment.
fn opsync(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsync"));
    cmd.current_dir(dir).stdin(Stdio::null());
    for name in OPSYNC_VARS {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OPSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Kills and reaps a child process when dropped, whatever happened before.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread of its own.
fn collect<R: std::io::Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a command to completion within [`DEADLINE`] (killing it and failing after).
fn run(mut cmd: Command) -> Output {
    let description = format!("{cmd:?}");
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot start opsync");
    let mut guard = ChildGuard(child);
    let stdout = collect(guard.0.stdout.take().expect("stdout is piped"));
    let stderr = collect(guard.0.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("cannot wait for opsync") {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "{description} did not finish within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader panicked");
    let stderr = stderr.join().expect("stderr reader panicked");
    Output { status, stdout, stderr }
}

/// What a finished command printed.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn ran(cmd: Command) -> Ran {
    let out = run(cmd);
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `opsync ARGS` in `dir`; it must succeed. Returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let mut cmd = opsync(dir);
    cmd.args(args);
    let r = ran(cmd);
    assert!(r.ok, "opsync {args:?} failed\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r.stdout
}

/// Runs `opsync ARGS` in `dir`; it must fail. Returns its stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let mut cmd = opsync(dir);
    cmd.args(args);
    let r = ran(cmd);
    assert!(!r.ok, "opsync {args:?} should have failed\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.trim().is_empty(), "opsync {args:?} failed without a word on stderr");
    r.stderr
}

/// `token issue ARGS` in `dir`: exactly one line, the token.
fn issue(dir: &Path, args: &[&str]) -> String {
    let out = ok(dir, &[&["token", "issue"], args].concat());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "token issue must print exactly one line, got {out:?}");
    let token = lines[0].trim();
    assert!(token.len() > 50 && !token.contains(' '), "not a token: {token:?}");
    token.to_owned()
}

/// The revocation ids `token inspect` lists, with whether each is marked revoked.
fn revocation_ids(inspected: &str) -> Vec<(String, bool)> {
    let (_, section) = inspected.split_once("revocation ids:\n").expect("inspect prints a `revocation ids:` section");
    section
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next().unwrap_or_default().to_owned();
            assert!(
                id.len() == 128 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "a revocation id is 128 hex digits: {line:?}"
            );
            let revoked = match words.next() {
                None => false,
                Some("(revoked)") => true,
                Some(other) => panic!("unexpected mark {other:?} in {line:?}"),
            };
            (id, revoked)
        })
        .collect()
}

/// `--data-dir DATA ARGS…`.
fn with_data<'a>(data: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["--data-dir", data][..], args].concat()
}

/// A running `opsync serve`, killed and reaped on drop.
struct Server {
    guard: ChildGuard,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `opsync serve ARGS` in `dir`.
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut cmd = opsync(dir);
        cmd.arg("serve").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut guard = ChildGuard(cmd.spawn().expect("cannot start opsync serve"));
        let stdout = guard.0.stdout.take().expect("stdout is piped");
        let stderr = guard.0.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let collected = Arc::new(Mutex::new(String::new()));
        let sink = collected.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { guard, lines, stdout: Vec::new(), stderr: collected }
    }

    /// Everything the server said so far, for failure messages.
    fn transcript(&self) -> String {
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!("stdout:\n{}\nstderr:\n{stderr}", self.stdout.join("\n"))
    }

    /// Reads stdout until a line satisfies `wanted` (within [`DEADLINE`]); returns it.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.stdout.iter().find(|l| wanted(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the server did not print {what} within {DEADLINE:?}\n{}", self.transcript())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.guard.0.try_wait().ok().flatten();
                    panic!("the server closed stdout ({status:?}) without printing {what}\n{}", self.transcript())
                }
            }
        }
    }

    /// Waits for `opsync is listening on URL`; returns the URL.
    fn wait_for_url(&mut self) -> String {
        self.wait_for_scheme("http")
    }

    /// Waits for `opsync is listening on SCHEME://127.0.0.1:PORT`; returns the URL.
    fn wait_for_scheme(&mut self, scheme: &str) -> String {
        const PREFIX: &str = "opsync is listening on ";
        let line = self.wait_for("the listening line", |l| l.starts_with(PREFIX));
        let url = line[PREFIX.len()..].trim().to_owned();
        let expected = format!("{scheme}://127.0.0.1:");
        assert!(url.starts_with(&expected), "unexpected address in {line:?}");
        let port: u16 = url[expected.len()..].parse().expect("the listening line names a port");
        assert_ne!(port, 0, "the server must print the port it actually bound");
        url
    }

    /// Kills the server and returns all it printed on stdout (bounded by [`DEADLINE`]).
    fn kill(&mut self) -> Vec<String> {
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout stayed open after the server was killed"),
            }
        }
        self.stdout.clone()
    }
}

/// The token in the `export OPSYNC_TOKEN='…'` line.
fn exported_token(line: &str) -> String {
    let (_, rest) = line.split_once("export OPSYNC_TOKEN='").expect("an export line");
    let (token, _) = rest.split_once('\'').expect("the token is quoted");
    assert!(token.len() > 50, "not a token: {token:?}");
    token.to_owned()
}

#[actix_web::test]
async fn serve_starts_with_zero_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let url = server.wait_for_url();
    let token = exported_token(&server.wait_for("the first token", |l| l.contains("export OPSYNC_TOKEN='")));
    let example = server.wait_for("the curl example", |l| l.contains("/v1/ops"));
    assert!(example.contains(&format!("{url}/v1/ops")), "the instructions name the server's address: {example}");

    let data = dir.path().join("opsync-data");
    assert!(data.join("opsync.db").is_file(), "the SQLite file is created in ./opsync-data");
    assert!(data.join("root.key").is_file(), "the root key is created in ./opsync-data");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("root.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root.key must be private, is {:o}", mode & 0o777);
    }
    let key_before = std::fs::read_to_string(data.join("root.key")).unwrap();

    let client = Client::new(url.clone(), token.clone());
    let first = op(b"first");
    let pushed = client.push(&push_of(vec![first.clone()])).await.unwrap();
    assert_eq!((pushed.results[0].id, pushed.results[0].seq, pushed.head), (first.id, 1, 1));
    let page = client.pull(0, None).await.unwrap();
    assert_eq!(page.ops.len(), 1);
    assert_eq!((page.ops[0].seq, page.ops[0].id, page.ops[0].payload.0.as_slice()), (1, first.id, &b"first"[..]));
    server.kill();
    drop(server);

    // Second start on the same directory: the database is no longer empty.
    let mut server = Server::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let url = server.wait_for_url();
    let client = Client::new(url, token);
    let second = op(b"second");
    let pushed = client.push(&push_of(vec![second.clone()])).await.unwrap();
    assert_eq!((pushed.results[0].id, pushed.results[0].seq, pushed.head), (second.id, 2, 2));
    let page = client.pull(0, None).await.unwrap();
    assert_eq!(page.ops.iter().map(|o| (o.seq, o.id)).collect::<Vec<_>>(), vec![(1, first.id), (2, second.id)]);
    // The first-token text comes right after the listening line, before serving; the
    // push above has been served, so it would be out by now. Give it a moment anyway.
    std::thread::sleep(Duration::from_millis(300));
    let printed = server.kill();
    assert!(
        !printed.iter().any(|l| l.contains("OPSYNC_TOKEN") || l.contains("database is empty")),
        "a second start must not print a first token:\n{}",
        printed.join("\n")
    );
    assert_eq!(std::fs::read_to_string(data.join("root.key")).unwrap(), key_before, "the root key is kept");
}

#[test]
fn token_issue_inspect_attenuate_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = cwd.join("data");
    let data = data.to_str().unwrap();

    let token = issue(cwd, &with_data(data, &["--user", "alice", "--device", "phone", "--ttl", "1h"]));
    assert!(Path::new(data).join("root.key").is_file(), "--data-dir holds the generated key");
    let inspected = ok(cwd, &with_data(data, &["token", "inspect", &token]));
    for fact in ["user(\"alice\")", "device(\"phone\")", "right(\"read\")", "right(\"write\")", "check if time("] {
        assert!(inspected.contains(fact), "inspect must show {fact}:\n{inspected}");
    }
    assert!(!inspected.contains("right(\"admin\")"), "no admin unless asked:\n{inspected}");
    let ids = revocation_ids(&inspected);
    assert_eq!(ids.len(), 1, "one block, one id:\n{inspected}");
    let (id, revoked) = ids[0].clone();
    assert!(!revoked, "a new token is not revoked:\n{inspected}");

    let read_only = issue(cwd, &with_data(data, &["--user", "alice", "--read-only"]));
    let inspected_ro = ok(cwd, &with_data(data, &["token", "inspect", &read_only]));
    assert!(inspected_ro.contains("right(\"read\")"), "{inspected_ro}");
    assert!(!inspected_ro.contains("right(\"write\")"), "--read-only grants no write:\n{inspected_ro}");
    assert!(!inspected_ro.contains("device("), "no device unless asked:\n{inspected_ro}");

    let admin = issue(cwd, &with_data(data, &["--user", "root", "--admin"]));
    let inspected_admin = ok(cwd, &with_data(data, &["token", "inspect", &admin]));
    for fact in ["user(\"root\")", "right(\"read\")", "right(\"write\")", "right(\"admin\")"] {
        assert!(inspected_admin.contains(fact), "--admin token must show {fact}:\n{inspected_admin}");
    }
    let refused = fails(cwd, &with_data(data, &["token", "issue", "--user", "x", "--read-only", "--admin"]));
    assert!(refused.contains("cannot be used with"), "clap refuses the combination: {refused}");

    // Attenuation appends a block and keeps the authority block's id first.
    let attenuated = ok(cwd, &with_data(data, &["token", "attenuate", &token, "--read-only"]));
    let attenuated = attenuated.trim();
    assert_eq!(attenuated.lines().count(), 1, "attenuate prints one token: {attenuated:?}");
    assert_ne!(attenuated, token);
    let inspected_att = ok(cwd, &with_data(data, &["token", "inspect", attenuated]));
    let (_, second_block) =
        inspected_att.split_once("block 1").unwrap_or_else(|| panic!("a second block:\n{inspected_att}"));
    assert!(second_block.contains("check if operation(\"read\")"), "the block restricts to reads:\n{inspected_att}");
    let att_ids = revocation_ids(&inspected_att);
    assert_eq!(att_ids.len(), 2, "{inspected_att}");
    assert_eq!(att_ids[0], (id.clone(), false), "the authority block's id comes first");
    let refused = fails(cwd, &with_data(data, &["token", "attenuate", &token]));
    assert!(refused.contains("--read-only"), "attenuate says how to restrict: {refused}");

    // Revocation by token, then by id (idempotent).
    let out = ok(cwd, &with_data(data, &["token", "revoke", &token]));
    assert_eq!(out.trim(), format!("revoked {id}"));
    let inspected = ok(cwd, &with_data(data, &["token", "inspect", &token]));
    assert_eq!(revocation_ids(&inspected), vec![(id.clone(), true)], "marked revoked:\n{inspected}");
    assert!(inspected.contains(&format!("{id}  (revoked)")), "{inspected}");
    let inspected_att = ok(cwd, &with_data(data, &["token", "inspect", attenuated]));
    assert_eq!(revocation_ids(&inspected_att)[0], (id.clone(), true), "its attenuations too:\n{inspected_att}");
    let inspected_ro = ok(cwd, &with_data(data, &["token", "inspect", &read_only]));
    assert!(revocation_ids(&inspected_ro).iter().all(|(_, r)| !r), "other tokens stay valid:\n{inspected_ro}");
    let out = ok(cwd, &with_data(data, &["token", "revoke", &id]));
    assert_eq!(out.trim(), format!("revoked {id}"));
    let inspected = ok(cwd, &with_data(data, &["token", "inspect", &token]));
    assert_eq!(revocation_ids(&inspected), vec![(id.clone(), true)], "{inspected}");

    // Garbage and bad durations.
    let garbage = fails(cwd, &with_data(data, &["token", "inspect", "garbage"]));
    assert!(garbage.contains("invalid token"), "inspect explains: {garbage}");
    let truncated = fails(cwd, &with_data(data, &["token", "inspect", &token[..token.len() / 2]]));
    assert!(truncated.contains("invalid token"), "inspect explains: {truncated}");
    let bad_ttl = fails(cwd, &with_data(data, &["token", "issue", "--user", "alice", "--ttl", "nonsense"]));
    assert!(bad_ttl.contains("nonsense"), "the bad value is named: {bad_ttl}");
}

#[actix_web::test]
async fn revoking_while_the_server_runs_takes_effect_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let url = server.wait_for_url();
    let token = issue(dir.path(), &["--user", "alice"]);
    let bystander = issue(dir.path(), &["--user", "bob"]);
    let client = Client::new(url.clone(), token.clone());
    let status =
        client.status().await.unwrap_or_else(|e| panic!("status with a new token: {e}\n{}", server.transcript()));
    assert_eq!(status.user, "alice");

    let out = ok(dir.path(), &["token", "revoke", &token]);
    assert!(out.starts_with("revoked "), "{out}");
    let started = Instant::now();
    let refused = loop {
        match client.status().await {
            Ok(_) if started.elapsed() < Duration::from_secs(5) => {
                actix_web::rt::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => panic!("the server still accepts a revoked token after 5 s\n{}", server.transcript()),
            Err(e) => break e,
        }
    };
    match &refused {
        ClientError::Api { status, body } => {
            assert_eq!((*status, body.error.as_str()), (401, "token_revoked"), "{refused}");
        }
        other => panic!("expected a 401 token_revoked, got {other}"),
    }
    let status = Client::new(url, bystander).status().await.unwrap();
    assert_eq!(status.user, "bob", "other tokens keep working");
    server.kill();
}

#[test]
fn root_key_from_environment() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    issue(a.path(), &["--user", "alice"]);
    let key_file = a.path().join("opsync-data/root.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(key.starts_with("ed25519-private/"), "the key file holds a private key: {}", key.len());

    let mut cmd = opsync(b.path());
    cmd.args(["token", "issue", "--user", "bob"]).env("OPSYNC_ROOT_KEY", &key);
    let r = ran(cmd);
    assert!(r.ok, "token issue with OPSYNC_ROOT_KEY failed: {}", r.stderr);
    let token = r.stdout.trim().to_owned();
    assert!(!b.path().join("opsync-data/root.key").exists(), "no key file when the key comes from the environment");
    assert!(!b.path().join("root.key").exists());
    let inspected = ok(a.path(), &["token", "inspect", &token]);
    assert!(inspected.contains("user(\"bob\")"), "A's key verifies the token:\n{inspected}");

    // A key of its own does not verify: inspect really checks the signature.
    let stranger = issue(c.path(), &["--user", "mallory"]);
    let refused = fails(a.path(), &["token", "inspect", &stranger]);
    assert!(refused.contains("invalid token"), "{refused}");

    for bad in ["not-a-key", "ed25519-private/zz", "0123"] {
        let mut cmd = opsync(b.path());
        cmd.args(["token", "issue", "--user", "bob"]).env("OPSYNC_ROOT_KEY", bad);
        let r = ran(cmd);
        assert!(!r.ok, "OPSYNC_ROOT_KEY={bad:?} must be refused, printed {:?}", r.stdout);
        assert!(r.stderr.contains("root key"), "the error names the root key: {}", r.stderr);
    }
    assert!(!b.path().join("opsync-data/root.key").exists());
}

#[test]
fn settings_from_env_and_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();

    let env_dir = cwd.join("from-env");
    let mut cmd = opsync(cwd);
    cmd.args(["token", "issue", "--user", "alice"]).env("OPSYNC_DATA_DIR", &env_dir);
    let r = ran(cmd);
    assert!(r.ok, "{}", r.stderr);
    assert!(env_dir.join("root.key").is_file(), "OPSYNC_DATA_DIR is where the key goes");
    assert!(!cwd.join("opsync-data").exists(), "the default data dir is not used");

    let file_dir = cwd.join("from-file");
    let config = cwd.join("opsync.toml");
    std::fs::write(&config, format!("data_dir = '{}'\n", file_dir.display())).unwrap();
    let config_arg = config.to_str().unwrap();
    ok(cwd, &["--config", config_arg, "token", "issue", "--user", "alice"]);
    assert!(file_dir.join("root.key").is_file(), "the config file's data_dir is honoured");
    assert!(!cwd.join("opsync-data").exists());

    // A flag beats the file.
    let flag_dir = cwd.join("from-flag");
    ok(cwd, &["--config", config_arg, "--data-dir", flag_dir.to_str().unwrap(), "migrate"]);
    assert!(flag_dir.join("opsync.db").is_file(), "--data-dir wins over the file");
    assert!(!file_dir.join("opsync.db").exists());

    let typo = cwd.join("typo.toml");
    std::fs::write(&typo, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let refused = fails(cwd, &["--config", typo.to_str().unwrap(), "token", "issue", "--user", "alice"]);
    assert!(refused.contains(&typo.display().to_string()), "the error names the file: {refused}");
    assert!(refused.contains("lisen"), "the error names the key: {refused}");

    let refused = fails(cwd, &["--db", "mysql://x", "migrate"]);
    assert!(refused.contains("unsupported database URL"), "{refused}");
    let refused = fails(cwd, &["--db", "mysql://x", "token", "issue", "--user", "alice"]);
    assert!(refused.contains("unsupported database URL"), "{refused}");
    assert!(!cwd.join("opsync-data").exists(), "nothing is created in the default data dir");
}

#[test]
fn migrate_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = cwd.join("d");
    let data_arg = data.to_str().unwrap();
    ok(cwd, &["migrate", "--data-dir", data_arg]);
    assert!(data.join("opsync.db").is_file(), "migrate creates the SQLite file");
    ok(cwd, &["migrate", "--data-dir", data_arg]);
    assert!(!cwd.join("opsync-data").exists());

    let Some(pg) = PgDb::create() else { return };
    ok(cwd, &["migrate", "--db", &pg.url]);
    ok(cwd, &["migrate", "--db", &pg.url]);
    let token = issue(cwd, &["--user", "carol"]);
    let out = ok(cwd, &["token", "revoke", &token, "--db", &pg.url]);
    let id = out.trim().strip_prefix("revoked ").unwrap_or_else(|| panic!("revoke prints the id: {out:?}")).to_owned();
    let on_pg = ok(cwd, &["token", "inspect", &token, "--db", &pg.url]);
    assert_eq!(revocation_ids(&on_pg), vec![(id.clone(), true)], "the revocation is in Postgres:\n{on_pg}");
    let on_sqlite = ok(cwd, &["token", "inspect", &token]);
    assert_eq!(revocation_ids(&on_sqlite), vec![(id, false)], "and not in the local SQLite file:\n{on_sqlite}");
    drop(pg);
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (cert_file, key_file, cert.cert.der().to_vec())
}

/// An HTTP client that trusts exactly `ca_der`.
fn trusting(ca_der: Vec<u8>) -> awc::Client {
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der)).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .timeout(Duration::from_secs(20))
        .finish()
}

#[actix_web::test]
async fn serve_speaks_https_and_wss_with_a_certificate() {
    use opsync::client::ws::{self, Received};
    use opsync::realtime::messages::{ClientMsg, ServerMsg};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = self_signed(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut server = Server::start(dir.path(), &["--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]);
    let url = server.wait_for_scheme("https");
    let token = exported_token(&server.wait_for("the first token", |l| l.contains("export OPSYNC_TOKEN='")));
    let http = trusting(ca);

    // A WebSocket over TLS receives what an HTTPS push commits.
    let mut conn = ws::open_on(&http, &url, Some(&token), None).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: None, since: Some(0) }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));
    let client = Client::with_http(http.clone(), url.clone(), token.clone());
    let first = op(b"over tls");
    let pushed = client.push(&push_of(vec![first.clone()])).await.unwrap();
    assert_eq!(pushed.head, 1);
    match conn.recv().await.unwrap() {
        Received::Msg(ServerMsg::Ops { ops, .. }) => assert_eq!(ops[0].id, first.id),
        other => panic!("expected the pushed op over wss, got {other:?}"),
    }
    assert_eq!(client.pull(0, None).await.unwrap().ops.len(), 1);

    // A client that does not trust the certificate gets no answer, and plain
    // HTTP on the TLS port is not served.
    let untrusting = Client::new(url.clone(), token.clone());
    assert!(matches!(untrusting.pull(0, None).await, Err(ClientError::Transport(_))));
    let plain = Client::new(url.replacen("https", "http", 1), token);
    assert!(plain.pull(0, None).await.is_err(), "plain HTTP on the TLS port must fail");
}

#[test]
fn tls_needs_both_files_and_a_matching_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = self_signed(other.path());

    let mut only_cert = opsync(dir.path());
    only_cert.args(["--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "serve"]);
    let r = ran(only_cert);
    assert!(!r.ok && r.stderr.contains("tls_cert and tls_key go together"), "{}", r.stderr);

    let mut mismatched = opsync(dir.path());
    mismatched.args(["--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap()]);
    mismatched.args(["--tls-key", other_key.to_str().unwrap(), "serve"]);
    let r = ran(mismatched);
    assert!(!r.ok && r.stderr.contains("certificate and key cannot be used"), "{}", r.stderr);
    drop(key);
}

#[actix_web::test]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    use opsync::client::ws::{self, Received};
    use opsync::realtime::messages::{ClientMsg, ServerMsg};

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--listen", "127.0.0.1:0"]);
    let url = server.wait_for_url();
    let token = exported_token(&server.wait_for("the first token", |l| l.contains("export OPSYNC_TOKEN='")));
    let mut conn = ws::open_on(&awc::Client::default(), &url, Some(&token), None).await.unwrap();
    conn.send(&ClientMsg::Hello { token: None, device: None, since: Some(0) }).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));

    let pid = server.guard.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let closed = actix_web::rt::time::timeout(DEADLINE, async {
        loop {
            match conn.recv().await {
                Ok(Received::Closed(code, _)) => return code,
                Ok(_) => continue,
                Err(e) => panic!("the socket failed instead of closing: {e}"),
            }
        }
    })
    .await
    .expect("the server closes the socket");
    assert_eq!(closed, Some(1001), "going away");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "a SIGTERM stop is a clean exit: {status:?}");
}
