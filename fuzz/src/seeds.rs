//! Writes the seed corpus of every fuzz target to `fuzz/corpus/TARGET/`: a few
//! valid messages and the edge cases the server must refuse cleanly. Each seed
//! starts with the byte that picks the target's mode (see each target's header).
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seeds` (any toolchain). Tokens
//! are signed with fresh keys, so regenerating changes those files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use biscuit_auth::Biscuit;
use opsync::auth::{self, TokenSpec};
use opsync::ids::{DeviceId, OpId, UserId};
use opsync::protocol::{AckRequest, NewOp, OnStale, Payload, PushRequest};
use opsync::realtime::messages::ClientMsg;
use serde_json::json;

/// Fixed ids, so the JSON seeds do not change between runs.
const ID_A: &str = "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f";
const ID_B: &str = "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e70";
const ID_V4: &str = "6f1c2c64-4b4e-4c7b-9a55-4b8e3d0c1f11";

// http_body modes (first byte).
const PUSH: u8 = 0;
const ACK: u8 = 1;
const REVOKE: u8 = 2;
const MSGPACK: u8 = 4;
const GZIPPED: u8 = 2 << 3;
const RAW_GZIP: u8 = 3 << 3;
const NESTED: u8 = 32;
const AS_MSGPACK: u8 = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    http_body(&root.join("http_body"))?;
    ws_frame(&root.join("ws_frame"))?;
    token(&root.join("token"))?;
    Ok(())
}

struct Out(PathBuf);

impl Out {
    fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self(dir.to_owned()))
    }

    fn seed(&self, name: &str, mode: u8, body: &[u8]) -> std::io::Result<()> {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(body);
        std::fs::write(self.0.join(name), bytes)
    }
}

fn id(s: &str) -> OpId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn full_push() -> PushRequest {
    PushRequest {
        ops: vec![
            NewOp {
                id: id(ID_A),
                payload: Payload(b"hello".to_vec()),
                entity: Some("note:1".into()),
                kind: Some("put".into()),
                base: Some(0),
                ts: Some(1_764_000_000_000),
            },
            NewOp {
                id: id(ID_B),
                payload: Payload(vec![]),
                entity: Some("note:1".into()),
                kind: Some("del".into()),
                base: None,
                ts: None,
            },
        ],
        device: Some(DeviceId::new("laptop").unwrap_or_else(|e| panic!("{e}"))),
        expected_head: Some(41),
        on_stale: Some(OnStale::Reject),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    gz.finish().unwrap_or_else(|e| panic!("{e}"))
}

fn http_body(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let out = Out::new(dir)?;
    let push = full_push();
    let push_json = serde_json::to_vec(&push)?;
    let push_mp = rmp_serde::to_vec_named(&push)?;
    out.seed("push.json", PUSH, &push_json)?;
    out.seed("push.msgpack", PUSH | MSGPACK, &push_mp)?;
    out.seed("push-minimal.json", PUSH, format!(r#"{{"ops":[{{"id":"{ID_A}","payload":""}}]}}"#).as_bytes())?;
    // MessagePack with the id and payload as strings (accepted on input).
    let strings = json!({"ops": [{"id": ID_A, "payload": "aGVsbG8="}], "device": "phone"});
    out.seed("push-strings.msgpack", PUSH | MSGPACK, &rmp_serde::to_vec_named(&strings)?)?;
    out.seed("push-as-msgpack.json", PUSH | MSGPACK | AS_MSGPACK, &push_json)?;
    out.seed("ack-as-msgpack.json", ACK | MSGPACK | AS_MSGPACK, br#"{"device":"d","seq":1}"#)?;
    out.seed("revoke-as-msgpack.json", REVOKE | MSGPACK | AS_MSGPACK, br#"{"ids":["00"]}"#)?;
    out.seed("push-gzipped.json", PUSH | GZIPPED, &push_json)?;
    out.seed("push.json.gz", PUSH | RAW_GZIP, &gzip(&push_json))?;
    out.seed("push.msgpack.gz", PUSH | MSGPACK | RAW_GZIP, &gzip(&push_mp))?;
    // Two gzip members are one body.
    out.seed("push-two-members.json.gz", PUSH | RAW_GZIP, &[gzip(&push_json[..10]), gzip(&push_json[10..])].concat())?;
    // A bomb: 1 MiB of spaces in about 1 KiB, far past the target's 64 KiB limit.
    out.seed("bomb.gz", PUSH | RAW_GZIP, &gzip(&vec![b' '; 1 << 20]))?;
    out.seed("gzip-garbage", PUSH | RAW_GZIP, b"\x1f\x8b\x08garbage")?;
    // Edge cases the server refuses.
    out.seed("expected-head-beyond-i64.json", PUSH, br#"{"ops":[],"expected_head":9223372036854775808}"#)?;
    out.seed("v4-id.json", PUSH, format!(r#"{{"ops":[{{"id":"{ID_V4}","payload":""}}]}}"#).as_bytes())?;
    out.seed("invalid-utf8.json", PUSH, b"{\"ops\":[{\"id\":\"\xff\xfe\",\"payload\":\"\"}]}")?;
    out.seed("duplicate-key.json", PUSH, br#"{"ops":[],"ops":[]}"#)?;
    out.seed("trailing.json", PUSH, &[&push_json[..], b" x"].concat())?;
    out.seed("truncated.msgpack", PUSH | MSGPACK, &push_mp[..push_mp.len() / 2])?;
    out.seed("trailing.msgpack", PUSH | MSGPACK, &[&push_mp[..], &[0xc0]].concat())?;
    // {"ops": array32 claiming 4 billion entries}
    out.seed("huge-array.msgpack", PUSH | MSGPACK, &[0x81, 0xa3, b'o', b'p', b's', 0xdd, 0xff, 0xff, 0xff, 0xff])?;
    // A payload bin32 claiming 4 GiB.
    let mut huge_bin = vec![0x81, 0xa3, b'o', b'p', b's', 0x91, 0x82, 0xa2, b'i', b'd', 0xc4, 16];
    huge_bin.extend_from_slice(id(ID_A).as_bytes());
    huge_bin.extend_from_slice(&[0xa7, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2]);
    out.seed("huge-bin.msgpack", PUSH | MSGPACK, &huge_bin)?;
    // Nesting: in an unknown key, and through the target's amplifier (2048 levels).
    let mut deep = vec![0x82, 0xa3, b'o', b'p', b's', 0x90, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91, 5000));
    deep.push(0xc0);
    out.seed("deep-unknown-key.msgpack", PUSH | MSGPACK, &deep)?;
    out.seed("deep.msgpack", PUSH | MSGPACK | NESTED, &[255, 0xc0])?;
    out.seed("deep.json", PUSH | NESTED, &[255, b'1'])?;
    out.seed("deep-string-brackets.json", PUSH, format!(r#"{{"ops":[],"x":"{}"}}"#, "[".repeat(100)).as_bytes())?;
    // Ack and revoke.
    let ack = AckRequest { device: Some(DeviceId::new("laptop")?), seq: 42 };
    out.seed("ack.json", ACK, &serde_json::to_vec(&ack)?)?;
    out.seed("ack.msgpack", ACK | MSGPACK, &rmp_serde::to_vec_named(&ack)?)?;
    out.seed("ack-negative.json", ACK, br#"{"seq":-1}"#)?;
    out.seed("ack-float.json", ACK, br#"{"device":"d","seq":1e30}"#)?;
    let revoke = json!({"tokens": ["En0KEwoEZGVtbxgDIgkKBwgKEgMYgAgSJAgAEiB"], "ids": ["679f61e96eaa3726"]});
    out.seed("revoke.json", REVOKE, &serde_json::to_vec(&revoke)?)?;
    out.seed("revoke.msgpack", REVOKE | MSGPACK, &rmp_serde::to_vec_named(&revoke)?)?;
    out.seed("revoke-empty.json", REVOKE, b"{}")?;
    Ok(())
}

fn ws_frame(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let out = Out::new(dir)?;
    let binary = |msg: &ClientMsg| rmp_serde::to_vec_named(msg).unwrap_or_else(|e| panic!("{e}"));
    let hello = ClientMsg::Hello {
        token: Some("En0KEwoEZGVtbxgDIgkKBwgKEgMYgAgSJAgAEiB".into()),
        device: Some(DeviceId::new("laptop")?),
        since: Some(41),
    };
    out.seed("hello", 0, &binary(&hello))?;
    out.seed("hello-empty", 0, &binary(&ClientMsg::Hello { token: None, device: None, since: None }))?;
    let push = full_push();
    let push = ClientMsg::Push { id: 7, ops: push.ops, expected_head: Some(3), on_stale: Some(OnStale::Accept) };
    out.seed("push", 0, &binary(&push))?;
    out.seed("push-empty", 0, &binary(&ClientMsg::Push { id: 1, ops: vec![], expected_head: None, on_stale: None }))?;
    out.seed("ack", 0, &binary(&ClientMsg::Ack { seq: 47 }))?;
    out.seed("ping", 0, &binary(&ClientMsg::Ping { id: Some(u64::MAX) }))?;
    out.seed("unknown-type", 0, &rmp_serde::to_vec_named(&json!({"type": "launch", "id": 1}))?)?;
    // The server quotes an unknown type, cut to 64 bytes: 80 bytes of two-byte characters.
    out.seed("unknown-type-long", 0, &rmp_serde::to_vec_named(&json!({"type": "é".repeat(40)}))?)?;
    out.seed("push-without-id", 0, &rmp_serde::to_vec_named(&json!({"type": "push", "ops": []}))?)?;
    out.seed("mistyped-key", 0, &rmp_serde::to_vec_named(&json!({"type": "ping", "seq": "x"}))?)?;
    out.seed("not-a-map", 0, &rmp_serde::to_vec_named(&json!(["ping"]))?)?;
    out.seed("garbage", 0, b"\xc1\xff\x00garbage")?;
    out.seed("deep", 0x10 | 0xe0, &[0xc0])?;
    // Text in one string field of a message: type, device, token, kind, entity,
    // payload, op id, on_stale.
    for (which, text) in [
        (0u8, "launch"),
        (1, "laptop"),
        (2, "En0KEwoEZGVtbxgDIgkKBwgKEgMYgAgSJAgAEiB"),
        (3, "put"),
        (4, "note:1"),
        (5, "aGk="),
        (6, "01936f3e-8b7a-7cc1-9c1e-1a2b3c4d5e6f"),
        (7, "reject"),
    ] {
        out.seed(&format!("field-{which}"), 5 | 0x10 | (which << 5), text.as_bytes())?;
    }
    // The same messages as JSON, which the target sends as MessagePack.
    for (name, value) in [
        (
            "hello",
            json!({"type": "hello", "token": "En0KEwoEZGVtbxgDIgkKBwgKEgMYgAgSJAgAEiB", "device": "d", "since": 1}),
        ),
        (
            "push",
            json!({"type": "push", "id": 7, "ops": [{"id": ID_A, "payload": "aGk=", "entity": "e", "kind": "put", "base": 0, "ts": 1}], "expected_head": 3, "on_stale": "reject"}),
        ),
        ("ack", json!({"type": "ack", "seq": 3})),
        ("ping", json!({"type": "ping", "id": 1})),
        ("unknown", json!({"type": "launch"})),
        ("unknown-long", json!({"type": "é".repeat(40)})),
    ] {
        out.seed(&format!("{name}.json"), 5, &serde_json::to_vec(&value)?)?;
    }
    out.seed("text", 10, br#"{"type":"ping"}"#)?;
    out.seed("ping-frame", 11, b"hi")?;
    out.seed("pong-frame", 12, b"")?;
    out.seed("close", 13, b"")?;
    out.seed("overflow", 14, b"")?;
    out.seed("bad-framing", 15, b"")?;
    out.seed("end", 16, b"")?;
    Ok(())
}

fn token(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let out = Out::new(dir)?;
    // Signed by a key the target does not know.
    let other = auth::generate_root();
    let spec = TokenSpec {
        user: UserId::new("alice")?,
        device: Some(DeviceId::new("phone")?),
        ttl: Duration::from_secs(3600),
        write: true,
        admin: true,
    };
    let text = auth::mint(&other, &spec)?;
    out.seed("foreign-token", 0, text.as_bytes())?;
    out.seed("foreign-token-unpadded", 0, text.trim_end_matches('=').as_bytes())?;
    out.seed("garbage", 0, b"not a token")?;
    out.seed("empty", 0, b"")?;
    out.seed("too-long", 0, "A".repeat(8193).as_bytes())?;
    let parsed: Biscuit = auth::parse(&text, &other.public())?;
    out.seed("foreign-token.bin", 1, &parsed.to_vec()?)?;
    let attenuated = auth::attenuate(&parsed, true, Some(Duration::from_secs(60)))?;
    let attenuated = auth::parse(&attenuated, &other.public())?;
    out.seed("foreign-attenuated.bin", 1, &attenuated.to_vec()?)?;
    // Attenuation blocks: the Datalog a holder may append.
    for (name, source) in [
        ("read-only", r#"check if operation("read");"#),
        ("expires-early", "check if time($t), $t < 2001-01-01T00:00:00Z;"),
        ("claims-admin", r#"right("admin"); user("bob"); device("laptop");"#),
        ("rule", r#"right($r) <- operation($r); check if right("write");"#),
        ("fact-flood", "a(1); a(2); a(3); a(4); b($x, $y) <- a($x), a($y); c($x, $y, $z) <- b($x, $y), a($z);"),
        ("expressions", r#"check if "abc".starts_with("a"), 1 + 2 * 3 == 7, [1, 2].contains(1);"#),
        ("deny-all", "check if false;"),
    ] {
        out.seed(&format!("block-{name}"), 2, source.as_bytes())?;
        out.seed(&format!("block-{name}-read-only"), 3, source.as_bytes())?;
    }
    Ok(())
}
