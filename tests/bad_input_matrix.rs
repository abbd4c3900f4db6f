//! The bad-input matrix: every route and WebSocket message, with every kind of bad
//! input, against a real `opsync serve` process, on SQLite and on Postgres.
//!
//! Routes: `POST /v1/ops`, `GET /v1/ops`, `POST /v1/ack`, `GET /v1/status`,
//! `PUT`/`GET`/`HEAD /v1/snapshot`, `DELETE /v1/account`, `POST /v1/admin/revoke`,
//! the `GET /v1/ws` upgrade; WebSocket messages `hello`, `push`, `ack`, `ping`.
//! Inputs: oversize, truncated, deeply nested, wrong-typed, out of range
//! (negative, beyond the head, below the horizon, beyond i64), duplicated in a
//! batch, invalid UTF-8, UUID v4 where v7 is required, future timestamps,
//! compression bombs, and missing, malformed, foreign-key, expired, revoked,
//! attenuated (read-only writing) and other users' tokens.
//!
//! Each row names its input and the status (or WebSocket `error` code and close
//! code) and error code docs/protocol.md documents for it. After the whole table,
//! every row of every table in the database is what it was before (compared
//! straight from the database), and the server process's peak RSS
//! (`VmHWM` in /proc/PID/status) stayed within a few MiB of where it started:
//! the gigabyte bomb was refused without being inflated.
//!
//! (`tests/bad_input.rs` keeps the one case that needs a clock: a stalled body.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use awc::ws::Message;
use biscuit_auth::KeyPair;
use bytes::Bytes;
use common::{Backend, PgDb};
use opsync::auth::{self, RootKey, TokenSpec};
use opsync::client::Client;
use opsync::client::ws::{self as wsc, Received, WsConn};
use opsync::db::{self, DbUrl};
use opsync::ids::{DeviceId, OpId, UserId};
use opsync::log::{Retention, now_ms, retention};
use opsync::protocol::{NewOp, Payload};
use opsync::realtime::messages::{ClientMsg, ServerMsg};
use serde_json::{Value, json};

const MAX_OPS: usize = 10;
const MAX_OP_BYTES: usize = 1024;
/// Large enough for the compressed bomb (about 1 MiB) to be read, far too small
/// for what it inflates to (1 GiB).
const MAX_BODY: usize = 2 << 20;
const MAX_SNAPSHOT: usize = 256 << 10;
const MAX_FRAME: usize = 64 << 10;
/// Alice's log when the table runs: ops 1..=HEAD, pruned up to HORIZON, which is
/// also where her snapshot is.
const HEAD: i64 = 5;
const HORIZON: i64 = 3;

#[actix_web::test]
async fn sqlite_every_bad_input_gets_its_documented_answer_and_changes_nothing() {
    matrix(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_every_bad_input_gets_its_documented_answer_and_changes_nothing() {
    matrix(Backend::Postgres).await;
}

// ---- The server -----------------------------------------------------------------

/// An `opsync serve` process, killed on drop.
struct Server {
    child: Child,
    base: String,
    root: RootKey,
    db: DbUrl,
    _dir: tempfile::TempDir,
    _pg: Option<PgDb>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDb::create()?),
        };
        let db = match &pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", dir.path().join("opsync.db").display()),
        };
        let config = dir.path().join("opsync.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{dir}"
db = "{db}"
listen = "127.0.0.1:0"
workers = 2
pool_size = 4

[limits]
max_ops_per_push = {MAX_OPS}
max_op_bytes = {MAX_OP_BYTES}
max_body_bytes = {MAX_BODY}
max_snapshot_bytes = {MAX_SNAPSHOT}

[retention]
compact_interval = "0s"

[realtime]
max_frame_bytes = {MAX_FRAME}
"#,
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsync"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OPSYNC_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .env("OPSYNC_LOG", "warn")
            .arg("--config")
            .arg(&config)
            // The table sends hundreds of bad tokens from one address in a few
            // seconds; tests/limits.rs covers the 429 that would answer them.
            .args(["--rate-limits", "false"])
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start opsync serve");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let base = loop {
            let line = lines.recv_timeout(Duration::from_secs(30)).expect("the server did not say where it listens");
            if let Some(url) = line.strip_prefix("opsync is listening on ") {
                break url.trim().to_owned();
            }
        };
        let root = RootKey::load_or_generate(&dir.path().join("root.key"), false).unwrap();
        Some(Self { child, base, root, db: DbUrl::parse(&db).unwrap(), _dir: dir, _pg: pg })
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// (current RSS, peak RSS) in KiB, from /proc/PID/status.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn mint(&self, user: &str, device: Option<&str>, ttl: Duration, write: bool, admin: bool) -> String {
        mint_with(self.root.pair(), user, device, ttl, write, admin)
    }
}

fn mint_with(root: &KeyPair, user: &str, device: Option<&str>, ttl: Duration, write: bool, admin: bool) -> String {
    let spec = TokenSpec {
        user: UserId::new(user).unwrap(),
        device: device.map(|d| DeviceId::new(d).unwrap()),
        ttl,
        write,
        admin,
    };
    auth::mint(root, &spec).unwrap()
}

/// Every token the table uses.
#[derive(Clone)]
struct Tokens {
    /// Alice, read and write.
    good: String,
    /// Alice's, attenuated to read only.
    read_only: String,
    /// Alice's, expired.
    expired: String,
    /// Alice's, attenuated to expire in the past (its own block's check fails).
    attenuated_expired: String,
    /// Alice's, revoked before the table runs.
    revoked: String,
    /// Signed by another key.
    foreign: String,
    /// Bob's (another user).
    bob: String,
    /// Alice's, bound to device `phone`.
    phone: String,
    /// An admin's, and the same attenuated to read only.
    admin: String,
    admin_read_only: String,
}

impl Tokens {
    fn new(s: &Server) -> Self {
        let hour = Duration::from_secs(3600);
        let good = s.mint("alice", None, hour, true, false);
        let parsed = auth::parse(&good, &s.root.public()).unwrap();
        let admin = s.mint("ops", None, hour, true, true);
        let admin_parsed = auth::parse(&admin, &s.root.public()).unwrap();
        Self {
            read_only: auth::attenuate(&parsed, true, None).unwrap(),
            expired: s.mint("alice", None, Duration::ZERO, true, false),
            attenuated_expired: auth::attenuate(&parsed, false, Some(Duration::ZERO)).unwrap(),
            revoked: s.mint("alice", None, hour, true, false),
            foreign: mint_with(&auth::generate_root(), "alice", None, hour, true, true),
            bob: s.mint("bob", None, hour, true, false),
            phone: s.mint("alice", Some("phone"), hour, true, false),
            admin_read_only: auth::attenuate(&admin_parsed, true, None).unwrap(),
            admin,
            good,
        }
    }
}

/// The token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    Good,
    ReadOnly,
    Expired,
    AttenuatedExpired,
    Revoked,
    Foreign,
    Garbage,
    TooLong,
    Bob,
    Phone,
    Admin,
    AdminReadOnly,
    /// `Authorization: Basic …`.
    NotBearer,
    /// Bytes that are not visible ASCII in the header.
    NotAscii,
}

impl Tok {
    /// The `Authorization` header's value.
    fn header(self, t: &Tokens) -> Option<Vec<u8>> {
        let bearer = |s: &str| Some(format!("Bearer {s}").into_bytes());
        match self {
            Tok::None => None,
            Tok::Good => bearer(&t.good),
            Tok::ReadOnly => bearer(&t.read_only),
            Tok::Expired => bearer(&t.expired),
            Tok::AttenuatedExpired => bearer(&t.attenuated_expired),
            Tok::Revoked => bearer(&t.revoked),
            Tok::Foreign => bearer(&t.foreign),
            Tok::Garbage => bearer("garbage"),
            Tok::TooLong => bearer(&"A".repeat(8193)),
            Tok::Bob => bearer(&t.bob),
            Tok::Phone => bearer(&t.phone),
            Tok::Admin => bearer(&t.admin),
            Tok::AdminReadOnly => bearer(&t.admin_read_only),
            Tok::NotBearer => Some(format!("Basic {}", t.good).into_bytes()),
            Tok::NotAscii => Some(b"Bearer \xff\xfe".to_vec()),
        }
    }

    /// The token itself (for WebSockets).
    fn text(self, t: &Tokens) -> String {
        let header = self.header(t).unwrap_or_default();
        String::from_utf8_lossy(header.strip_prefix(b"Bearer ").unwrap_or(&header)).into_owned()
    }
}

/// The bad-token rows every authenticated route gets, with the answers.
const TOKEN_ROWS: [(Tok, u16, &str); 9] = [
    (Tok::None, 401, "invalid_token"),
    (Tok::NotBearer, 401, "invalid_token"),
    (Tok::NotAscii, 401, "invalid_token"),
    (Tok::Garbage, 401, "invalid_token"),
    (Tok::TooLong, 401, "invalid_token"),
    (Tok::Foreign, 401, "invalid_token"),
    (Tok::Expired, 401, "token_expired"),
    (Tok::AttenuatedExpired, 401, "token_expired"),
    (Tok::Revoked, 401, "token_revoked"),
];

// ---- HTTP rows ------------------------------------------------------------------

/// How the body travels.
#[derive(Debug, Clone)]
enum Body {
    /// With a true `Content-Length`.
    Bytes(Vec<u8>),
    /// Chunked, in 4 KiB chunks, without a `Content-Length`.
    Chunked(Vec<u8>),
    /// `Content-Length: N`, then `sent` bytes, then the client ends its side.
    Truncated { declared: usize, sent: Vec<u8> },
}

/// What the answer must be.
#[derive(Debug, Clone, Copy)]
struct Expect {
    status: u16,
    /// `None` for answers without a body (`HEAD`).
    code: Option<&'static str>,
    /// For a `200` to another user: a check of the answer's JSON.
    check: Option<fn(&Value) -> bool>,
}

struct HttpRow {
    name: String,
    method: &'static str,
    path: String,
    tok: Tok,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Body,
    expect: Expect,
}

fn row(
    name: impl Into<String>,
    method: &'static str,
    path: impl Into<String>,
    status: u16,
    code: &'static str,
) -> HttpRow {
    HttpRow {
        name: name.into(),
        method,
        path: path.into(),
        tok: Tok::Good,
        headers: Vec::new(),
        body: Body::Bytes(Vec::new()),
        expect: Expect { status, code: Some(code), check: None },
    }
}

impl HttpRow {
    fn tok(mut self, tok: Tok) -> Self {
        self.tok = tok;
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn json(self, body: Value) -> Self {
        self.header("Content-Type", "application/json").body(serde_json::to_vec(&body).unwrap())
    }
    fn json_text(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }
    fn msgpack(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/msgpack").body(body)
    }
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Bytes(body.into());
        self
    }
    fn raw_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
    fn no_body(mut self) -> Self {
        self.expect.code = None;
        self
    }
    fn check(mut self, check: fn(&Value) -> bool) -> Self {
        self.expect.check = Some(check);
        self
    }
}

fn v7() -> String {
    OpId::generate().to_string()
}

const V4: &str = "6f1c2c64-4b4e-4c7b-9a55-4b8e3d0c1f11";

fn good_op() -> Value {
    json!({"id": v7(), "payload": "aGVsbG8="})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// About 1 MiB that inflates to 1 GiB: 1024 gzip members of 1 MiB of spaces each
/// (several members are one body).
fn gigabyte_bomb() -> Vec<u8> {
    let member = gzip(&vec![b' '; 1 << 20]);
    member.repeat(1024)
}

fn mp(value: &impl serde::Serialize) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

/// `{"ops": [], "x": [[[…]]]}`, `depth` levels, in MessagePack.
fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut b = vec![0x82, 0xa3, b'o', b'p', b's', 0x90, 0xa1, b'x'];
    b.extend(std::iter::repeat_n(0x91, depth));
    b.push(0xc0);
    b
}

fn deep_json(key: &str, depth: usize) -> Vec<u8> {
    format!(r#"{{"{key}":[],"x":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

/// A MessagePack map with one key whose value is a str of invalid UTF-8.
fn msgpack_bad_utf8(prefix: &[(&str, Value)], key: &str) -> Vec<u8> {
    let mut b = vec![0x80 | (prefix.len() as u8 + 1)];
    for (k, v) in prefix {
        b.extend(mp(k));
        b.extend(mp(v));
    }
    b.extend(mp(&key));
    b.extend([0xa2, 0xff, 0xfe]);
    b
}

/// `{"ops": [{"id": <16-byte bin>, "payload": <bin32 claiming 4 GiB>}]}`
fn msgpack_huge_bin() -> Vec<u8> {
    let mut b = vec![0x81, 0xa3, b'o', b'p', b's', 0x91, 0x82, 0xa2, b'i', b'd', 0xc4, 16];
    b.extend_from_slice(OpId::generate().as_bytes());
    b.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    b
}

fn base64_of(n: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(vec![0u8; n])
}

fn http_rows(t: &Tokens) -> Vec<HttpRow> {
    let now = now_ms();
    let dup = v7();
    let ops = "/v1/ops";
    let mut rows = vec![
        // --- POST /v1/ops --------------------------------------------------------
        // Oversize.
        row("push: body over max_body_bytes", "POST", ops, 413, "body_too_large").json_text(vec![b' '; MAX_BODY + 1]),
        row("push: chunked body over max_body_bytes", "POST", ops, 413, "body_too_large")
            .header("Content-Type", "application/json")
            .raw_body(Body::Chunked(vec![b' '; MAX_BODY + 4096])),
        row("push: Content-Length over the limit, no body sent", "POST", ops, 413, "body_too_large")
            .header("Content-Type", "application/json")
            .raw_body(Body::Truncated { declared: 1 << 40, sent: Vec::new() }),
        row("push: too many ops", "POST", ops, 413, "too_many_ops")
            .json(json!({"ops": (0..=MAX_OPS).map(|_| good_op()).collect::<Vec<_>>()})),
        row("push: op payload over max_op_bytes", "POST", ops, 413, "op_too_large")
            .json(json!({"ops": [{"id": v7(), "payload": base64_of(MAX_OP_BYTES + 1)}]})),
        row("push: msgpack bin claiming 4 GiB", "POST", ops, 400, "malformed_body").msgpack(msgpack_huge_bin()),
        row("push: msgpack array claiming 4 billion ops", "POST", ops, 400, "malformed_body")
            .msgpack([0x81, 0xa3, b'o', b'p', b's', 0xdd, 0xff, 0xff, 0xff, 0xff]),
        // Compression.
        row("push: gzip bomb (1 MiB inflating to 1 GiB)", "POST", ops, 413, "body_too_large")
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(gigabyte_bomb()),
        row("push: corrupt gzip", "POST", ops, 400, "malformed_body")
            .header("Content-Encoding", "gzip")
            .json_text(b"\x1f\x8b\x08garbage".to_vec()),
        row("push: gzip cut short", "POST", ops, 400, "malformed_body")
            .header("Content-Encoding", "gzip")
            .json_text(gzip(&serde_json::to_vec(&json!({"ops": [good_op()]})).unwrap())[..20].to_vec()),
        row("push: brotli", "POST", ops, 415, "unsupported_encoding").header("Content-Encoding", "br").json_text("x"),
        row("push: zstd", "POST", ops, 415, "unsupported_encoding").header("Content-Encoding", "zstd").json_text("x"),
        row("push: text/plain", "POST", ops, 415, "unsupported_media_type")
            .header("Content-Type", "text/plain")
            .body("{}"),
        row("push: form encoding (curl -d)", "POST", ops, 415, "unsupported_media_type")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("a=b"),
        // Truncated.
        row("push: empty body", "POST", ops, 400, "malformed_body").json_text(Vec::new()),
        row("push: truncated JSON", "POST", ops, 400, "malformed_body").json_text(br#"{"ops":[{"id":"#.to_vec()),
        row("push: truncated msgpack", "POST", ops, 400, "malformed_body")
            .msgpack(mp(&common::push_of(vec![common::op(b"hello")]))[..10].to_vec()),
        row("push: connection ends mid-body", "POST", ops, 400, "malformed_body")
            .header("Content-Type", "application/json")
            .raw_body(Body::Truncated { declared: 1000, sent: br#"{"ops":["#.to_vec() }),
        row("push: trailing bytes (JSON)", "POST", ops, 400, "malformed_body")
            .json_text([serde_json::to_vec(&json!({"ops": [good_op()]})).unwrap(), b"x".to_vec()].concat()),
        row("push: trailing bytes (msgpack)", "POST", ops, 400, "malformed_body")
            .msgpack([mp(&common::push_of(vec![common::op(b"x")])), vec![0xc0]].concat()),
        // Deeply nested.
        row("push: JSON nested 5000 deep", "POST", ops, 400, "malformed_body").json_text(deep_json("ops", 5000)),
        // At the limit: 32 levels decode (and this push has no ops), 33 do not.
        row("push: JSON nested 32 deep", "POST", ops, 400, "empty_push").json_text(deep_json("ops", 31)),
        row("push: JSON nested 33 deep", "POST", ops, 400, "malformed_body").json_text(deep_json("ops", 32)),
        row("push: msgpack nested 50000 deep", "POST", ops, 400, "malformed_body").msgpack(deep_msgpack(50_000)),
        row("push: msgpack nested 32 deep", "POST", ops, 400, "empty_push").msgpack(deep_msgpack(31)),
        row("push: msgpack nested 33 deep", "POST", ops, 400, "malformed_body").msgpack(deep_msgpack(32)),
        // Wrong types.
        row("push: not JSON", "POST", ops, 400, "malformed_body").json_text("hello"),
        row("push: missing ops", "POST", ops, 400, "malformed_body").json(json!({})),
        row("push: ops a string", "POST", ops, 400, "malformed_body").json(json!({"ops": "many"})),
        row("push: op without id", "POST", ops, 400, "malformed_body").json(json!({"ops": [{"payload": "aGk="}]})),
        row("push: op without payload", "POST", ops, 400, "malformed_body").json(json!({"ops": [{"id": v7()}]})),
        row("push: id a number", "POST", ops, 400, "malformed_body").json(json!({"ops": [{"id": 7, "payload": ""}]})),
        row("push: id not a UUID", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": "nope", "payload": ""}]})),
        row("push: payload not base64", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": v7(), "payload": "!!!"}]})),
        row("push: payload URL-safe base64", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": v7(), "payload": "-_8"}]})),
        row("push: payload a list", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": v7(), "payload": [1, 2]}]})),
        row("push: base a string", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": "1"}]})),
        row("push: ts a float", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": v7(), "payload": "", "ts": 1.5}]})),
        row("push: on_stale unknown", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [good_op()], "on_stale": "maybe"})),
        row("push: device with a space", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [good_op()], "device": "my phone"})),
        row("push: device too long", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [good_op()], "device": "d".repeat(129)})),
        row("push: msgpack garbage", "POST", ops, 400, "malformed_body").msgpack([0xc1, 0xc1]),
        row("push: msgpack string where a map belongs", "POST", ops, 400, "malformed_body").msgpack(mp(&"ops")),
        // Invalid UTF-8 and wrong UUID versions.
        row("push: invalid UTF-8 in JSON", "POST", ops, 400, "malformed_body")
            .json_text(b"{\"ops\":[{\"id\":\"\xff\xfe\",\"payload\":\"\"}]}".to_vec()),
        row("push: invalid UTF-8 device (msgpack)", "POST", ops, 400, "malformed_body")
            .msgpack(msgpack_bad_utf8(&[("ops", json!([]))], "device")),
        row("push: UUID v4 id (JSON)", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": V4, "payload": "aGk="}]})),
        row("push: UUID v4 id (msgpack bin)", "POST", ops, 400, "malformed_body").msgpack({
            let mut b = vec![0x81, 0xa3, b'o', b'p', b's', 0x91, 0x82, 0xa2, b'i', b'd', 0xc4, 16];
            b.extend_from_slice(V4.parse::<uuid::Uuid>().unwrap().as_bytes());
            b.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0xc4, 0]);
            b
        }),
        row("push: nil UUID", "POST", ops, 400, "malformed_body")
            .json(json!({"ops": [{"id": "00000000-0000-0000-0000-000000000000", "payload": ""}]})),
        // Out of range.
        row("push: no ops", "POST", ops, 400, "empty_push").json(json!({"ops": []})),
        row("push: expected_head negative", "POST", ops, 400, "invalid_field")
            .json(json!({"ops": [good_op()], "expected_head": -1})),
        row("push: on_stale reject without expected_head", "POST", ops, 400, "invalid_field")
            .json(json!({"ops": [good_op()], "on_stale": "reject"})),
        row("push: expected_head beyond the head", "POST", ops, 409, "head_ahead")
            .json(json!({"ops": [good_op()], "expected_head": HEAD + 1})),
        row("push: expected_head behind, reject", "POST", ops, 409, "stale_head")
            .json(json!({"ops": [good_op()], "expected_head": HEAD - 1, "on_stale": "reject"})),
        row("push: expected_head beyond i64", "POST", ops, 400, "malformed_body")
            .json_text(format!(r#"{{"ops":[{}],"expected_head":9223372036854775808}}"#, good_op())),
        row("push: base negative", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": -1}]})),
        row("push: base beyond the head", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "e", "base": HEAD + 1}]})),
        row("push: base beyond i64", "POST", ops, 400, "malformed_body").json_text(format!(
            r#"{{"ops":[{{"id":"{}","payload":"","entity":"e","base":18446744073709551616}}]}}"#,
            v7()
        )),
        row("push: base without entity", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "base": 0}]})),
        row("push: base behind the entity", "POST", ops, 409, "entity_conflict")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "note", "base": 0}]})),
        row("push: ts negative", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "ts": -5}]})),
        row("push: ts two days ahead", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "ts": now + 48 * 3600 * 1000}]})),
        row("push: ts at i64::MAX", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "ts": i64::MAX}]})),
        row("push: entity empty", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": ""}]})),
        row("push: entity too long", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "e".repeat(257)}]})),
        row("push: kind with a control character", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "kind": "p\nut"}]})),
        row("push: kind too long", "POST", ops, 400, "invalid_op")
            .json(json!({"ops": [{"id": v7(), "payload": "", "kind": "k".repeat(65)}]})),
        // Duplicated in the batch, and reused.
        row("push: the same id twice", "POST", ops, 400, "duplicate_op_in_batch")
            .json(json!({"ops": [{"id": dup, "payload": ""}, {"id": dup, "payload": "eA=="}]})),
        row("push: the same id twice (msgpack)", "POST", ops, 400, "duplicate_op_in_batch").msgpack({
            let op = common::op(b"twice");
            mp(&common::push_of(vec![op.clone(), op]))
        }),
        row("push: a stored id with other content", "POST", ops, 409, "op_id_conflict")
            .json(json!({"ops": [{"id": REUSED_ID, "payload": "b3RoZXI="}]})),
        // Device binding and rights.
        row("push: token bound to another device", "POST", ops, 403, "device_mismatch")
            .tok(Tok::Phone)
            .json(json!({"ops": [good_op()], "device": "laptop"})),
        row("push: read-only attenuated token", "POST", ops, 403, "forbidden")
            .tok(Tok::ReadOnly)
            .json(json!({"ops": [good_op()]})),
        row("push: another user's token expecting Alice's head", "POST", ops, 409, "head_ahead")
            .tok(Tok::Bob)
            .json(json!({"ops": [good_op()], "expected_head": HEAD})),
        row("push: another user's token basing on Alice's entity", "POST", ops, 400, "invalid_op")
            .tok(Tok::Bob)
            .json(json!({"ops": [{"id": v7(), "payload": "", "entity": "note", "base": HEAD}]})),
        // --- GET /v1/ops ---------------------------------------------------------
        row("pull: since negative", "GET", "/v1/ops?since=-1", 400, "invalid_query"),
        row("pull: since not a number", "GET", "/v1/ops?since=abc", 400, "invalid_query"),
        row("pull: since a float", "GET", "/v1/ops?since=1.5", 400, "invalid_query"),
        row("pull: since beyond i64", "GET", "/v1/ops?since=99999999999999999999", 400, "invalid_query"),
        row("pull: since invalid UTF-8", "GET", "/v1/ops?since=%FF", 400, "invalid_query"),
        row("pull: since beyond the head", "GET", format!("/v1/ops?since={}", HEAD + 1), 409, "since_beyond_head"),
        row("pull: since below the horizon", "GET", "/v1/ops?since=0", 410, "resync_required"),
        row(
            "pull: since just below the horizon",
            "GET",
            format!("/v1/ops?since={}", HORIZON - 1),
            410,
            "resync_required",
        ),
        row("pull: limit zero", "GET", format!("/v1/ops?since={HORIZON}&limit=0"), 400, "invalid_query"),
        row("pull: limit negative", "GET", format!("/v1/ops?since={HORIZON}&limit=-3"), 400, "invalid_query"),
        row(
            "pull: limit beyond u64",
            "GET",
            format!("/v1/ops?since={HORIZON}&limit=99999999999999999999999"),
            400,
            "invalid_query",
        ),
        row("pull: wait negative", "GET", format!("/v1/ops?since={HORIZON}&wait=-1"), 400, "invalid_query"),
        row("pull: wait over 30 s", "GET", format!("/v1/ops?since={HORIZON}&wait=31"), 400, "invalid_query"),
        row("pull: wait not a number", "GET", format!("/v1/ops?since={HORIZON}&wait=soon"), 400, "invalid_query"),
        row("pull: another user's token sees only their own log", "GET", "/v1/ops", 200, "")
            .tok(Tok::Bob)
            .check(|v| v["head"] == 0 && v["ops"].as_array().is_some_and(Vec::is_empty)),
        // --- POST /v1/ack --------------------------------------------------------
        row("ack: body over max_body_bytes", "POST", "/v1/ack", 413, "body_too_large")
            .json_text(vec![b' '; MAX_BODY + 1]),
        row("ack: gzip bomb", "POST", "/v1/ack", 413, "body_too_large")
            .header("Content-Encoding", "gzip")
            .json_text(gigabyte_bomb()),
        row("ack: truncated", "POST", "/v1/ack", 400, "malformed_body").json_text(br#"{"device":"d","seq":"#.to_vec()),
        row("ack: nested", "POST", "/v1/ack", 400, "malformed_body").json_text(deep_json("seq", 100)),
        row("ack: nested (msgpack)", "POST", "/v1/ack", 400, "malformed_body").msgpack(deep_msgpack(100)),
        row("ack: seq a string", "POST", "/v1/ack", 400, "malformed_body").json(json!({"device": "d", "seq": "1"})),
        row("ack: seq missing", "POST", "/v1/ack", 400, "malformed_body").json(json!({"device": "d"})),
        row("ack: seq negative", "POST", "/v1/ack", 400, "invalid_field").json(json!({"device": "d", "seq": -1})),
        row("ack: seq beyond the head", "POST", "/v1/ack", 409, "seq_beyond_head")
            .json(json!({"device": "d", "seq": HEAD + 1})),
        row("ack: seq beyond i64", "POST", "/v1/ack", 400, "malformed_body")
            .json_text(br#"{"device":"d","seq":9223372036854775808}"#.to_vec()),
        row("ack: seq 1e30", "POST", "/v1/ack", 400, "malformed_body").json(json!({"device": "d", "seq": 1e30})),
        row("ack: no device in body or token", "POST", "/v1/ack", 400, "invalid_field").json(json!({"seq": 0})),
        row("ack: invalid UTF-8 device", "POST", "/v1/ack", 400, "malformed_body")
            .json_text(b"{\"device\":\"\xff\",\"seq\":0}".to_vec()),
        row("ack: invalid UTF-8 device (msgpack)", "POST", "/v1/ack", 400, "malformed_body")
            .msgpack(msgpack_bad_utf8(&[("seq", json!(0))], "device")),
        row("ack: token bound to another device", "POST", "/v1/ack", 403, "device_mismatch")
            .tok(Tok::Phone)
            .json(json!({"device": "laptop", "seq": 1})),
        row("ack: read-only attenuated token", "POST", "/v1/ack", 403, "forbidden")
            .tok(Tok::ReadOnly)
            .json(json!({"device": "d", "seq": 1})),
        row("ack: another user's token at Alice's head", "POST", "/v1/ack", 409, "seq_beyond_head")
            .tok(Tok::Bob)
            .json(json!({"device": "d", "seq": HEAD})),
        // --- GET /v1/status ------------------------------------------------------
        row("status: another user's token sees only their own", "GET", "/v1/status", 200, "")
            .tok(Tok::Bob)
            .check(|v| v["user"] == "bob" && v["head"] == 0),
        // --- PUT /v1/snapshot ----------------------------------------------------
        row("snapshot put: no seq", "PUT", "/v1/snapshot", 400, "invalid_query").body("x"),
        row("snapshot put: seq negative", "PUT", "/v1/snapshot?seq=-1", 400, "invalid_query").body("x"),
        row("snapshot put: seq not a number", "PUT", "/v1/snapshot?seq=x", 400, "invalid_query").body("x"),
        row("snapshot put: seq beyond i64", "PUT", "/v1/snapshot?seq=9223372036854775808", 400, "invalid_query")
            .body("x"),
        row(
            "snapshot put: seq beyond the head",
            "PUT",
            format!("/v1/snapshot?seq={}", HEAD + 1),
            409,
            "seq_beyond_head",
        )
        .body("x"),
        row(
            "snapshot put: seq below the horizon",
            "PUT",
            format!("/v1/snapshot?seq={}", HORIZON - 1),
            409,
            "snapshot_below_horizon",
        )
        .body("x"),
        row("snapshot put: sha256 not hex", "PUT", format!("/v1/snapshot?seq={HEAD}&sha256=xyz"), 400, "invalid_query")
            .body("x"),
        row(
            "snapshot put: sha256 mismatch",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}&sha256={}", "0".repeat(64)),
            400,
            "checksum_mismatch",
        )
        .body("x"),
        row(
            "snapshot put: over max_snapshot_bytes",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            413,
            "snapshot_too_large",
        )
        .body(vec![0u8; MAX_SNAPSHOT + 1]),
        row(
            "snapshot put: chunked over max_snapshot_bytes",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            413,
            "snapshot_too_large",
        )
        .raw_body(Body::Chunked(vec![0u8; MAX_SNAPSHOT + 8192])),
        row(
            "snapshot put: Content-Length of a terabyte",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            413,
            "snapshot_too_large",
        )
        .raw_body(Body::Truncated { declared: 1 << 40, sent: Vec::new() }),
        row(
            "snapshot put: gzip (a bomb is never inflated)",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            415,
            "unsupported_encoding",
        )
        .header("Content-Encoding", "gzip")
        .body(gigabyte_bomb()),
        row(
            "snapshot put: Content-Type not a media type",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            415,
            "unsupported_media_type",
        )
        .header("Content-Type", "nonsense")
        .body("x"),
        row(
            "snapshot put: Content-Type too long",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            415,
            "unsupported_media_type",
        )
        .header("Content-Type", format!("application/{}", "x".repeat(200)))
        .body("x"),
        row(
            "snapshot put: Content-Type not ASCII",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            415,
            "unsupported_media_type",
        )
        .header("Content-Type", b"application/\xff".to_vec())
        .body("x"),
        row(
            "snapshot put: connection ends mid-upload",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            400,
            "malformed_body",
        )
        .raw_body(Body::Truncated { declared: 60_000, sent: vec![1u8; 30_000] }),
        row(
            "snapshot put: another user's token at Alice's head",
            "PUT",
            format!("/v1/snapshot?seq={HEAD}"),
            409,
            "seq_beyond_head",
        )
        .tok(Tok::Bob)
        .body("x"),
        row("snapshot put: read-only attenuated token", "PUT", format!("/v1/snapshot?seq={HEAD}"), 403, "forbidden")
            .tok(Tok::ReadOnly)
            .body("x"),
        // --- GET and HEAD /v1/snapshot -------------------------------------------
        row("snapshot get: at_or_before negative", "GET", "/v1/snapshot?at_or_before=-1", 400, "invalid_query"),
        row("snapshot get: at_or_before not a number", "GET", "/v1/snapshot?at_or_before=x", 400, "invalid_query"),
        row(
            "snapshot get: at_or_before beyond i64",
            "GET",
            "/v1/snapshot?at_or_before=9223372036854775808",
            400,
            "invalid_query",
        ),
        row(
            "snapshot get: at_or_before below every snapshot",
            "GET",
            "/v1/snapshot?at_or_before=0",
            404,
            "no_snapshot",
        ),
        row("snapshot get: another user's token", "GET", "/v1/snapshot", 404, "no_snapshot").tok(Tok::Bob),
        row("snapshot head: at_or_before negative", "HEAD", "/v1/snapshot?at_or_before=-1", 400, "").no_body(),
        row("snapshot head: another user's token", "HEAD", "/v1/snapshot", 404, "").tok(Tok::Bob).no_body(),
        row("snapshot head: expired token", "HEAD", "/v1/snapshot", 401, "").tok(Tok::Expired).no_body(),
        // --- DELETE /v1/account --------------------------------------------------
        row("account: read-only attenuated token", "DELETE", "/v1/account", 403, "forbidden").tok(Tok::ReadOnly),
        row("account: another user's token deletes only their own", "DELETE", "/v1/account", 200, "")
            .tok(Tok::Bob)
            .check(|v| v["user"] == "bob" && v["ops"] == 0),
        // --- POST /v1/admin/revoke -----------------------------------------------
        row("revoke: without the admin right", "POST", "/v1/admin/revoke", 403, "forbidden")
            .json(json!({"ids": ["00"]})),
        row("revoke: admin token attenuated to read only", "POST", "/v1/admin/revoke", 403, "forbidden")
            .tok(Tok::AdminReadOnly)
            .json(json!({"ids": ["00"]})),
        row("revoke: body over 64 KiB", "POST", "/v1/admin/revoke", 413, "body_too_large")
            .tok(Tok::Admin)
            .json(json!({"ids": ["00".repeat(40_000)]})),
        row("revoke: gzip bomb", "POST", "/v1/admin/revoke", 413, "body_too_large")
            .tok(Tok::Admin)
            .header("Content-Encoding", "gzip")
            .json_text(gigabyte_bomb()),
        row("revoke: truncated", "POST", "/v1/admin/revoke", 400, "malformed_body")
            .tok(Tok::Admin)
            .json_text(br#"{"ids":["#.to_vec()),
        row("revoke: nested", "POST", "/v1/admin/revoke", 400, "malformed_body")
            .tok(Tok::Admin)
            .json_text(deep_json("ids", 200)),
        row("revoke: nested (msgpack)", "POST", "/v1/admin/revoke", 400, "malformed_body")
            .tok(Tok::Admin)
            .msgpack(deep_msgpack(200)),
        row("revoke: tokens a number", "POST", "/v1/admin/revoke", 400, "malformed_body")
            .tok(Tok::Admin)
            .json(json!({"tokens": 5})),
        row("revoke: invalid UTF-8", "POST", "/v1/admin/revoke", 400, "malformed_body")
            .tok(Tok::Admin)
            .json_text(b"{\"ids\":[\"\xff\"]}".to_vec()),
        row("revoke: nothing named", "POST", "/v1/admin/revoke", 400, "invalid_field").tok(Tok::Admin).json(json!({})),
        row("revoke: a token signed by another key", "POST", "/v1/admin/revoke", 400, "invalid_field")
            .tok(Tok::Admin)
            .json(json!({"tokens": [t.foreign]})),
        row("revoke: a token that is garbage", "POST", "/v1/admin/revoke", 400, "invalid_field")
            .tok(Tok::Admin)
            .json(json!({"tokens": ["garbage"]})),
        row("revoke: an id that is not hex", "POST", "/v1/admin/revoke", 400, "invalid_field")
            .tok(Tok::Admin)
            .json(json!({"ids": ["xyz"]})),
        row("revoke: an id over 256 characters", "POST", "/v1/admin/revoke", 400, "invalid_field")
            .tok(Tok::Admin)
            .json(json!({"ids": ["0".repeat(258)]})),
        // --- The WebSocket upgrade -----------------------------------------------
        row("ws upgrade: not an upgrade", "GET", "/v1/ws", 426, "upgrade_required"),
        row("ws upgrade: Origin of another site", "GET", "/v1/ws", 403, "origin_not_allowed")
            .header("Origin", "https://evil.example")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .tok(Tok::None),
        // --- Routes and methods --------------------------------------------------
        row("unknown route", "GET", "/v2/ops", 404, "not_found"),
        row("DELETE /v1/ops", "DELETE", ops, 405, "method_not_allowed"),
        row("PUT /v1/status", "PUT", "/v1/status", 405, "method_not_allowed"),
        row("GET /v1/ack", "GET", "/v1/ack", 405, "method_not_allowed"),
        row("DELETE /v1/snapshot", "DELETE", "/v1/snapshot", 405, "method_not_allowed"),
        row("GET /v1/account", "GET", "/v1/account", 405, "method_not_allowed"),
        row("GET /v1/admin/revoke", "GET", "/v1/admin/revoke", 405, "method_not_allowed"),
    ];
    // Every authenticated route with every bad token.
    let routes: [(&str, &str, Option<Value>); 10] = [
        ("POST", "/v1/ops", Some(json!({"ops": [good_op()]}))),
        ("GET", "/v1/ops", None),
        ("POST", "/v1/ack", Some(json!({"device": "d", "seq": 0}))),
        ("GET", "/v1/status", None),
        ("PUT", "/v1/snapshot?seq=4", None),
        ("GET", "/v1/snapshot", None),
        ("HEAD", "/v1/snapshot", None),
        ("DELETE", "/v1/account", None),
        ("POST", "/v1/admin/revoke", Some(json!({"ids": ["00"]}))),
        ("GET", "/v1/ws", None),
    ];
    for (method, path, body) in routes {
        for (tok, status, code) in TOKEN_ROWS {
            let mut r = row(format!("{method} {path}: {tok:?} token"), method, path, status, code).tok(tok);
            if let Some(body) = &body {
                r = r.json(body.clone());
            } else if method == "PUT" {
                r = r.body("x");
            } else if path == "/v1/ws" {
                // The token offered in the subprotocol header, checked before the upgrade.
                r = r
                    .tok(Tok::None)
                    .header("Connection", "Upgrade")
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13")
                    .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
                r = match tok {
                    Tok::None => r.header("Sec-WebSocket-Protocol", "opsync.v1, bearer."),
                    Tok::NotAscii => r.header("Sec-WebSocket-Protocol", b"opsync.v1, bearer.\xff".to_vec()),
                    Tok::NotBearer => r.header("Sec-WebSocket-Protocol", format!("opsync.v1, bearer.Basic {}", t.good)),
                    _ => r.header(
                        "Sec-WebSocket-Protocol",
                        format!("opsync.v1, bearer.{}", tok.text(t).trim_end_matches('=')),
                    ),
                };
            }
            if method == "HEAD" {
                r = r.no_body();
            }
            rows.push(r);
        }
    }
    rows
}

/// An op stored before the table runs, whose id a row reuses.
const REUSED_ID: &str = "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f";

/// Sends a row over a raw connection (so that any header byte and any body shape
/// can be sent) and returns the status and the error code of the answer.
fn send_http(addr: &str, tokens: &Tokens, r: &HttpRow) -> Result<(u16, Option<Value>), String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", r.method, r.path).into_bytes();
    let mut header = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    if let Some(auth) = r.tok.header(tokens) {
        header("Authorization", &auth);
    }
    for (name, value) in &r.headers {
        header(name, value);
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut end_early = false;
    match &r.body {
        Body::Bytes(b) => {
            if !b.is_empty() || matches!(r.method, "POST" | "PUT") {
                header("Content-Length", b.len().to_string().as_bytes());
            }
            tail.extend_from_slice(b);
        }
        Body::Chunked(b) => {
            header("Transfer-Encoding", b"chunked");
            for chunk in b.chunks(4096) {
                tail.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
                tail.extend_from_slice(chunk);
                tail.extend_from_slice(b"\r\n");
            }
            tail.extend_from_slice(b"0\r\n\r\n");
        }
        Body::Truncated { declared, sent } => {
            header("Content-Length", declared.to_string().as_bytes());
            tail.extend_from_slice(sent);
            end_early = true;
        }
    }
    head.extend_from_slice(b"\r\n");
    // A small body goes with the head, in one write, before the server can answer.
    // A large one goes from another thread while this one reads: the server may
    // answer (413) before it has read it, and close; the answer is taken as it
    // arrives, and a failed write of the rest does not matter.
    let mut sending = None;
    if tail.len() <= 64 << 10 {
        head.extend_from_slice(&tail);
        stream.write_all(&head).map_err(|e| e.to_string())?;
        if end_early {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
    } else {
        stream.write_all(&head).map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        sending = Some(std::thread::spawn(move || {
            let _ = writer.write_all(&tail);
            if end_early {
                let _ = writer.shutdown(std::net::Shutdown::Write);
            }
        }));
    }
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if let Some(sending) = sending {
        let _ = sending.join();
    }
    if answer.is_empty() {
        return Err(format!("no answer ({read:?})"));
    }
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:.200}"))?;
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, serde_json::from_str(&body).ok()))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---- WebSocket rows -------------------------------------------------------------

/// Where the session is when the row's frame arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing sent yet (the subprotocol carried Alice's token, unless `tok` says).
    BeforeHello,
    /// After a good `hello` from device `matrix` at the head.
    Live,
    /// After a good `hello` without a device.
    LiveNoDevice,
}

struct WsRow {
    name: String,
    /// The token in the subprotocol offer (None: none offered).
    offer: Tok,
    /// The token for the `hello` a `Live` row sends first.
    hello_tok: Option<Tok>,
    stage: Stage,
    frame: Message,
    /// The `error` answer: its code and the push id it carries.
    error: Option<(&'static str, Option<u64>)>,
    /// The close code that follows (None: the session must carry on).
    close: Option<u16>,
    /// The answer, for a frame that is accepted.
    reply: Option<ServerMsg>,
}

fn ws(name: impl Into<String>, stage: Stage, frame: Message) -> WsRow {
    WsRow { name: name.into(), offer: Tok::Good, hello_tok: None, stage, frame, error: None, close: None, reply: None }
}

impl WsRow {
    fn error(mut self, code: &'static str, id: Option<u64>) -> Self {
        self.error = Some((code, id));
        self
    }
    fn close(mut self, code: u16) -> Self {
        self.close = Some(code);
        self
    }
    fn reply(mut self, msg: ServerMsg) -> Self {
        self.reply = Some(msg);
        self
    }
    fn offer(mut self, tok: Tok) -> Self {
        self.offer = tok;
        self
    }
    fn hello_tok(mut self, tok: Tok) -> Self {
        self.hello_tok = Some(tok);
        self
    }
}

fn bin(bytes: Vec<u8>) -> Message {
    Message::Binary(Bytes::from(bytes))
}

fn msg(value: Value) -> Message {
    bin(mp(&value))
}

/// A binary frame nesting `depth` arrays under key `x` of a `type` message.
fn deep_frame(kind: &str, depth: usize) -> Message {
    let mut b = vec![0x82];
    b.extend(mp(&"type"));
    b.extend(mp(&kind));
    b.extend(mp(&"x"));
    b.extend(std::iter::repeat_n(0x91, depth));
    b.push(0xc0);
    bin(b)
}

/// A `type` message whose `key` is a MessagePack uint64 beyond i64.
fn beyond_i64(kind: &str, key: &str) -> Message {
    let mut b = vec![0x82];
    b.extend(mp(&"type"));
    b.extend(mp(&kind));
    b.extend(mp(&key));
    b.push(0xcf);
    b.extend_from_slice(&(1u64 << 63).to_be_bytes());
    bin(b)
}

fn push_frame(id: u64, ops: Vec<NewOp>) -> Message {
    bin(mp(&ClientMsg::Push { id, ops, expected_head: None, on_stale: None }))
}

fn ws_rows(t: &Tokens) -> Vec<WsRow> {
    use Stage::*;
    let now = now_ms();
    let op = |payload: &[u8]| common::op(payload);
    let oversize = || bin(vec![0x80; MAX_FRAME + 1]);
    let dup = op(b"twice");
    let mut rows = vec![
        // --- hello ---------------------------------------------------------------
        ws("hello: frame over max_frame_bytes", BeforeHello, oversize()).close(1009),
        ws(
            "hello: truncated",
            BeforeHello,
            bin(mp(&json!({"type": "hello", "device": "d", "since": 0}))[..9].to_vec()),
        )
        .error("malformed_frame", None),
        ws("hello: nested 50000 deep", BeforeHello, deep_frame("hello", 50_000)).error("malformed_frame", None),
        ws("hello: nested 33 deep", BeforeHello, deep_frame("hello", 32)).error("malformed_frame", None),
        ws("ping: nested 32 deep (at the limit)", Live, deep_frame("ping", 31)).reply(ServerMsg::Pong { id: None }),
        ws("hello: since a string", BeforeHello, msg(json!({"type": "hello", "since": "0"})))
            .error("malformed_frame", None),
        ws("hello: device a number", BeforeHello, msg(json!({"type": "hello", "device": 7})))
            .error("malformed_frame", None),
        ws("hello: device with a space", BeforeHello, msg(json!({"type": "hello", "device": "my phone"})))
            .error("malformed_frame", None),
        ws("hello: device invalid UTF-8", BeforeHello, bin(msgpack_bad_utf8(&[("type", json!("hello"))], "device")))
            .error("malformed_frame", None),
        ws("hello: since beyond i64", BeforeHello, beyond_i64("hello", "since")).error("malformed_frame", None),
        ws("hello: since negative", BeforeHello, msg(json!({"type": "hello", "since": -1})))
            .error("invalid_field", None)
            .close(4000),
        ws("hello: since beyond the head", BeforeHello, msg(json!({"type": "hello", "since": HEAD + 1})))
            .error("since_beyond_head", None)
            .close(4013),
        ws("hello: text frame", BeforeHello, Message::Text(r#"{"type":"hello"}"#.into()))
            .error("malformed_frame", None),
        ws("hello: a string, not a map", BeforeHello, msg(json!("hello"))).error("malformed_frame", None),
        ws("hello: unknown type", BeforeHello, msg(json!({"type": "helo"}))).error("unknown_message", None),
        ws("before hello: a ping message", BeforeHello, msg(json!({"type": "ping"})))
            .error("unexpected_message", None)
            .close(4000),
        ws("before hello: a push", BeforeHello, push_frame(1, vec![op(b"early")]))
            .error("unexpected_message", None)
            .close(4000),
        ws("hello: no token anywhere", BeforeHello, msg(json!({"type": "hello"})))
            .offer(Tok::None)
            .error("invalid_token", None)
            .close(4001),
        ws("hello: token bound to another device", BeforeHello, msg(json!({"type": "hello", "device": "laptop"})))
            .offer(Tok::Phone)
            .error("device_mismatch", None)
            .close(4004),
        ws("hello: token over 8192 characters", BeforeHello, msg(json!({"type": "hello", "token": "A".repeat(8193)})))
            .offer(Tok::None)
            .error("invalid_token", None)
            .close(4001),
        ws("hello: a second hello", Live, msg(json!({"type": "hello"}))).error("unexpected_message", None),
        ws("hello: another user's token at Alice's head", BeforeHello, msg(json!({"type": "hello", "since": HEAD})))
            .offer(Tok::Bob)
            .error("since_beyond_head", None)
            .close(4013),
        // --- push ----------------------------------------------------------------
        ws("push: frame over max_frame_bytes", Live, oversize()).close(1009),
        ws("push: truncated", Live, push_frame(1, vec![op(b"x")]).truncated(12)).error("malformed_frame", None),
        ws("push: nested", Live, deep_frame("push", 1000)).error("malformed_frame", None),
        ws("push: id a string", Live, msg(json!({"type": "push", "id": "1", "ops": []})))
            .error("malformed_frame", None),
        ws("push: id negative", Live, msg(json!({"type": "push", "id": -1, "ops": []}))).error("malformed_frame", None),
        ws("push: without id", Live, msg(json!({"type": "push", "ops": []}))).error("malformed_frame", None),
        ws("push: ops a map", Live, msg(json!({"type": "push", "id": 1, "ops": {}}))).error("malformed_frame", None),
        ws("push: UUID v4 id", Live, msg(json!({"type": "push", "id": 1, "ops": [{"id": V4, "payload": ""}]})))
            .error("malformed_frame", None),
        ws("push: kind invalid UTF-8", Live, {
            let mut b = vec![0x83];
            b.extend(mp(&"type"));
            b.extend(mp(&"push"));
            b.extend(mp(&"id"));
            b.extend(mp(&1));
            b.extend(mp(&"ops"));
            b.push(0x91);
            b.extend(msgpack_bad_utf8(&[("id", json!(v7())), ("payload", json!(""))], "kind"));
            bin(b)
        })
        .error("malformed_frame", None),
        ws("push: expected_head beyond i64", Live, {
            let mut b = vec![0x84];
            for (k, v) in [("type", json!("push")), ("id", json!(1)), ("ops", json!([]))] {
                b.extend(mp(&k));
                b.extend(mp(&v));
            }
            b.extend(mp(&"expected_head"));
            b.push(0xcf);
            b.extend_from_slice(&(1u64 << 63).to_be_bytes());
            bin(b)
        })
        .error("malformed_frame", None),
        ws("push: no ops", Live, push_frame(2, vec![])).error("empty_push", Some(2)),
        ws("push: too many ops", Live, push_frame(3, (0..=MAX_OPS).map(|_| op(b"x")).collect()))
            .error("too_many_ops", Some(3)),
        ws("push: op over max_op_bytes", Live, push_frame(4, vec![op(&vec![0; MAX_OP_BYTES + 1])]))
            .error("op_too_large", Some(4)),
        ws("push: the same id twice", Live, push_frame(5, vec![dup.clone(), dup]))
            .error("duplicate_op_in_batch", Some(5)),
        ws(
            "push: ts two days ahead",
            Live,
            push_frame(6, vec![NewOp { ts: Some(now + 48 * 3600 * 1000), ..op(b"x") }]),
        )
        .error("invalid_op", Some(6)),
        ws("push: ts negative", Live, push_frame(7, vec![NewOp { ts: Some(-1), ..op(b"x") }]))
            .error("invalid_op", Some(7)),
        ws("push: base negative", Live, push_frame(8, vec![common::entity_op("e", Some(-1), b"x")]))
            .error("invalid_op", Some(8)),
        ws("push: base beyond the head", Live, push_frame(9, vec![common::entity_op("e", Some(HEAD + 1), b"x")]))
            .error("invalid_op", Some(9)),
        ws(
            "push: expected_head negative",
            Live,
            bin(mp(&ClientMsg::Push { id: 10, ops: vec![op(b"x")], expected_head: Some(-1), on_stale: None })),
        )
        .error("invalid_field", Some(10)),
        ws(
            "push: expected_head beyond the head",
            Live,
            bin(mp(&ClientMsg::Push { id: 11, ops: vec![op(b"x")], expected_head: Some(HEAD + 1), on_stale: None })),
        )
        .error("head_ahead", Some(11)),
        ws(
            "push: a stored id with other content",
            Live,
            push_frame(12, vec![NewOp { payload: Payload(b"other".to_vec()), ..op_with_id(REUSED_ID) }]),
        )
        .error("op_id_conflict", Some(12)),
        ws("push: read-only attenuated token", Live, push_frame(13, vec![op(b"x")]))
            .offer(Tok::ReadOnly)
            .error("forbidden", Some(13)),
        // --- ack -----------------------------------------------------------------
        ws("ack: frame over max_frame_bytes", Live, oversize()).close(1009),
        ws("ack: truncated", Live, bin(mp(&ClientMsg::Ack { seq: 1 })[..5].to_vec())).error("malformed_frame", None),
        ws("ack: nested", Live, deep_frame("ack", 1000)).error("malformed_frame", None),
        ws("ack: seq a string", Live, msg(json!({"type": "ack", "seq": "1"}))).error("malformed_frame", None),
        ws("ack: without seq", Live, msg(json!({"type": "ack"}))).error("malformed_frame", None),
        ws("ack: seq beyond i64", Live, beyond_i64("ack", "seq")).error("malformed_frame", None),
        ws("ack: seq negative", Live, msg(json!({"type": "ack", "seq": -1}))).error("invalid_field", None),
        ws("ack: seq beyond the head", Live, msg(json!({"type": "ack", "seq": HEAD + 1})))
            .error("seq_beyond_head", None),
        ws("ack: no device", LiveNoDevice, msg(json!({"type": "ack", "seq": 1}))).error("invalid_field", None),
        ws("ack: read-only attenuated token", Live, msg(json!({"type": "ack", "seq": 1})))
            .offer(Tok::ReadOnly)
            .error("forbidden", None),
        // --- ping ----------------------------------------------------------------
        ws("ping: frame over max_frame_bytes", Live, oversize()).close(1009),
        ws("ping: truncated", Live, bin(vec![0x82, 0xa4, b't', b'y'])).error("malformed_frame", None),
        ws("ping: nested", Live, deep_frame("ping", 1000)).error("malformed_frame", None),
        ws("ping: id a string", Live, msg(json!({"type": "ping", "id": "1"}))).error("malformed_frame", None),
        ws("ping: id negative", Live, msg(json!({"type": "ping", "id": -1}))).error("malformed_frame", None),
        ws("ping: a float id", Live, msg(json!({"type": "ping", "id": 1.5}))).error("malformed_frame", None),
        ws("ping: unknown type", Live, msg(json!({"type": "pong"}))).error("unknown_message", None),
        ws(
            "ping: unknown type of 201 bytes, a character across byte 64",
            Live,
            msg(json!({"type": format!("x{}", "é".repeat(100))})),
        )
        .error("unknown_message", None),
        ws("ping: text frame", Live, Message::Text(r#"{"type":"ping"}"#.into())).error("malformed_frame", None),
    ];
    // Tokens in `hello` (nothing offered in the subprotocol).
    for (tok, code, close) in [
        (Tok::Garbage, "invalid_token", 4001),
        (Tok::Foreign, "invalid_token", 4001),
        (Tok::Expired, "token_expired", 4002),
        (Tok::AttenuatedExpired, "token_expired", 4002),
        (Tok::Revoked, "token_revoked", 4003),
    ] {
        rows.push(
            ws(format!("hello: {tok:?} token"), BeforeHello, msg(json!({"type": "hello", "token": tok.text(t)})))
                .offer(Tok::None)
                .error(code, None)
                .close(close),
        );
    }
    // Alice's full token offered, her read-only one in `hello`: `hello`'s is the
    // session's (a bad offered token never gets this far: the HTTP rows).
    rows.push(
        ws("push: hello's read-only token wins over the offer", Live, push_frame(14, vec![op(b"x")]))
            .hello_tok(Tok::ReadOnly)
            .error("forbidden", Some(14)),
    );
    rows
}

trait Truncate {
    fn truncated(self, n: usize) -> Message;
}

impl Truncate for Message {
    fn truncated(self, n: usize) -> Message {
        match self {
            Message::Binary(b) => bin(b[..n.min(b.len())].to_vec()),
            other => other,
        }
    }
}

fn op_with_id(id: &str) -> NewOp {
    NewOp { id: id.parse().unwrap(), ..common::op(b"stored") }
}

/// The next message or close, within 10 s, skipping catch-up `ops` and `welcome`.
async fn next(conn: &mut WsConn) -> Result<Received, String> {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .map_err(|_| "nothing within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        match got {
            Received::Msg(ServerMsg::Ops { .. } | ServerMsg::Welcome { .. }) => continue,
            other => return Ok(other),
        }
    }
}

async fn run_ws(base: &str, t: &Tokens, r: WsRow) -> Result<(), String> {
    let offered = (r.offer != Tok::None).then(|| r.offer.text(t));
    let mut conn = wsc::open_with(base, offered.as_deref(), None).await.map_err(|e| format!("open: {e}"))?;
    let hello = |device: Option<&str>| {
        let token = r.hello_tok.map(|tok| tok.text(t));
        ClientMsg::Hello { token, device: device.map(|d| DeviceId::new(d).unwrap()), since: Some(HEAD) }
    };
    match r.stage {
        Stage::BeforeHello => {}
        Stage::Live | Stage::LiveNoDevice => {
            let device = (r.stage == Stage::Live).then_some("matrix");
            conn.send(&hello(device)).await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
                Ok(Ok(Received::Msg(ServerMsg::Welcome { .. }))) => {}
                other => return Err(format!("no welcome: {other:?}")),
            }
        }
    }
    conn.send_frame(r.frame).await.map_err(|e| e.to_string())?;
    if let Some(want) = r.reply {
        match next(&mut conn).await? {
            Received::Msg(got) if got == want => {}
            other => return Err(format!("expected {want:?}, got {other:?}")),
        }
    }
    if let Some((code, id)) = r.error {
        match next(&mut conn).await? {
            Received::Msg(ServerMsg::Error { code: got, id: got_id, .. }) if got == code && got_id == id => {}
            other => return Err(format!("expected error {code} (id {id:?}), got {other:?}")),
        }
    }
    match r.close {
        Some(code) => match next(&mut conn).await? {
            Received::Closed(Some(got), _) if got == code => Ok(()),
            other => Err(format!("expected close {code}, got {other:?}")),
        },
        // The session carries on: a ping is answered (or, before hello, a hello is).
        None if r.stage == Stage::BeforeHello => {
            conn.send(&hello(Some("matrix"))).await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(10), conn.recv()).await {
                Ok(Ok(Received::Msg(ServerMsg::Welcome { .. }))) => Ok(()),
                other => Err(format!("the session did not carry on: {other:?}")),
            }
        }
        None => {
            conn.send(&ClientMsg::Ping { id: Some(4242) }).await.map_err(|e| e.to_string())?;
            match next(&mut conn).await? {
                Received::Msg(ServerMsg::Pong { id: Some(4242) }) => Ok(()),
                other => Err(format!("the session did not carry on: {other:?}")),
            }
        }
    }
}

// ---- What is stored ---------------------------------------------------------------

/// Every row of every table, as text, in a fixed order.
fn dump(url: &DbUrl) -> Vec<String> {
    use diesel::prelude::*;
    use opsync::db::schema::{devices, entities, ops, revoked_tokens, snapshots, users};
    let mut conn = db::connect(url).unwrap();
    let mut out = Vec::new();
    let rows: Vec<(String, i64, i64, i64, i64)> = users::table
        .order(users::id)
        .select((users::id, users::head, users::created_at, users::horizon, users::snapshot_seq))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("user {r:?}")));
    type OpRow =
        (String, i64, Vec<u8>, Option<String>, Option<String>, Option<String>, Option<i64>, Option<i64>, i64, Vec<u8>);
    let rows: Vec<OpRow> = ops::table
        .order((ops::user_id, ops::seq))
        .select((
            ops::user_id,
            ops::seq,
            ops::op_id,
            ops::device,
            ops::entity,
            ops::kind,
            ops::base,
            ops::client_ts,
            ops::received_at,
            ops::payload,
        ))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("op {r:?}")));
    let rows: Vec<(String, String, i64, Option<i64>)> = entities::table
        .order((entities::user_id, entities::entity))
        .select((entities::user_id, entities::entity, entities::last_seq, entities::deleted_at))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("entity {r:?}")));
    let rows: Vec<(String, String, i64, i64, i64)> = devices::table
        .order((devices::user_id, devices::id))
        .select((devices::user_id, devices::id, devices::ack_seq, devices::last_seen, devices::created_at))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("device {r:?}")));
    let rows: Vec<(String, i64)> = revoked_tokens::table
        .order(revoked_tokens::id)
        .select((revoked_tokens::id, revoked_tokens::revoked_at))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("revoked {r:?}")));
    type SnapshotRow = (String, i64, i64, i64, String, String, Vec<u8>);
    let rows: Vec<SnapshotRow> = snapshots::table
        .order((snapshots::user_id, snapshots::seq))
        .select((
            snapshots::user_id,
            snapshots::seq,
            snapshots::created_at,
            snapshots::size,
            snapshots::sha256,
            snapshots::content_type,
            snapshots::data,
        ))
        .load(&mut conn)
        .unwrap();
    out.extend(rows.iter().map(|r| format!("snapshot {r:?}")));
    out
}

// ---- The run ------------------------------------------------------------------------

async fn matrix(backend: Backend) {
    let Some(server) = Server::start(backend) else { return };
    let t = Tokens::new(&server);
    let alice = Client::new(server.base.clone(), t.good.clone());
    // Alice: ops 1..=5 (an entity at 1 and 5, the reused id at 4), a device, a snapshot at
    // 3, pruned up to it (the horizon); one of her tokens revoked.
    let ops = vec![
        common::entity_op("note", None, b"1"),
        common::op(b"2"),
        common::op(b"3"),
        op_with_id(REUSED_ID),
        common::entity_op("note", None, b"5"),
    ];
    let stored = alice.push(&common::push_from("laptop", ops)).await.unwrap();
    assert_eq!(stored.head, HEAD);
    alice.ack(&opsync::protocol::AckRequest { device: Some(DeviceId::new("laptop").unwrap()), seq: 2 }).await.unwrap();
    alice.put_snapshot(HORIZON, b"state at 3".to_vec()).await.unwrap();
    let db = server.db.clone();
    let pruned = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = db::connect(&db).unwrap();
        let policy = Retention { compact_interval: Duration::ZERO, ..Retention::default() };
        retention::compact_user(&mut conn, "alice", &policy, now_ms() + 31 * 24 * 3600 * 1000).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(pruned.horizon, HORIZON);
    let revoke = awc::Client::default()
        .post(format!("{}/v1/admin/revoke", server.base))
        .insert_header(("Authorization", format!("Bearer {}", t.admin)))
        .send_json(&json!({"tokens": [t.revoked]}))
        .await
        .unwrap();
    assert_eq!(revoke.status().as_u16(), 200);

    let before = {
        let db = server.db.clone();
        actix_web::rt::task::spawn_blocking(move || dump(&db)).await.unwrap()
    };
    let (rss_before, _) = server.memory();

    let mut failures = Vec::new();
    let http = http_rows(&t);
    let http_count = http.len();
    let addr = server.addr();
    for r in http {
        let outcome = {
            let addr = addr.clone();
            let tokens = t.clone();
            actix_web::rt::task::spawn_blocking(move || {
                let got = send_http(&addr, &tokens, &r);
                (r, got)
            })
            .await
            .unwrap()
        };
        let (r, got) = outcome;
        match got {
            Err(e) => failures.push(format!("{}: {e}", r.name)),
            Ok((status, body)) => {
                let code = body.as_ref().and_then(|v| v["error"].as_str().map(str::to_owned));
                let ok = status == r.expect.status
                    && match (r.expect.code, r.expect.check) {
                        (_, Some(check)) => body.as_ref().is_some_and(check),
                        (Some(want), None) => code.as_deref() == Some(want),
                        (None, None) => true,
                    };
                if !ok {
                    failures.push(format!(
                        "{}: expected {} {:?}, got {status} {}",
                        r.name,
                        r.expect.status,
                        r.expect.code,
                        body.map_or("(no JSON body)".to_owned(), |b| b.to_string()),
                    ));
                }
            }
        }
    }
    let ws = ws_rows(&t);
    let ws_count = ws.len();
    for r in ws {
        let name = r.name.clone();
        if let Err(e) = run_ws(&server.base, &t, r).await {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        http_count + ws_count,
        failures.join("\n")
    );

    // Nothing stored changed: every row of every table.
    let after = {
        let db = server.db.clone();
        actix_web::rt::task::spawn_blocking(move || dump(&db)).await.unwrap()
    };
    let gone: Vec<&String> = before.iter().filter(|row| !after.contains(row)).collect();
    let added: Vec<&String> = after.iter().filter(|row| !before.contains(row)).collect();
    assert!(
        gone.is_empty() && added.is_empty(),
        "what is stored changed:\nrows gone: {gone:#?}\nrows added: {added:#?}"
    );
    // Memory stayed bounded: the bombs (1 GiB each, four of them) were not inflated,
    // oversized bodies and frames were not buffered.
    let (rss_after, peak) = server.memory();
    eprintln!(
        "{backend:?}: {http_count} HTTP rows, {ws_count} WebSocket rows; RSS {} MiB before, {} MiB after, peak {} MiB",
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
    assert!(peak < rss_before + 64 * 1024, "peak RSS {peak} KiB, {rss_before} KiB before the table");
    // And the server still serves Alice.
    assert_eq!(alice.pull(HORIZON, None).await.unwrap().ops.len() as i64, HEAD - HORIZON);
}
