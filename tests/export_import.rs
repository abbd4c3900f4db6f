//! Export, import and `opsync copy`, on SQLite and Postgres and across them: seqs,
//! ids, snapshots, devices and tombstones survive; damaged or truncated files and
//! mismatches fail loudly and store nothing; `opsync user delete` and
//! `opsync compact` from the command line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use opsync::db::{self, DbUrl};
use opsync::ids::DeviceId;
use opsync::log::transfer::{self, TransferError};
use opsync::log::{Retention, now_ms, retention};
use opsync::protocol::{AckRequest, NewOp, PullResponse, StatusResponse};

both_backends!(
    export_then_import_keeps_everything,
    damaged_and_truncated_files_store_nothing,
    copy_to_the_other_backend_and_back_verifies_every_user,
    cli_export_import_delete_and_compact,
);

fn del(entity: &str) -> NewOp {
    NewOp { kind: Some("del".into()), ..entity_op(entity, None, b"") }
}

/// Two users with ops, devices, tombstones, snapshots and a pruned prefix.
async fn populate(s: &TestServer) {
    for user in ["alice", "bob"] {
        let c = s.client(user);
        for i in 0..3 {
            let ops = vec![entity_op("a", None, format!("{user} {i}").as_bytes()), op(&[i; 700]), del("b")];
            c.push(&push_from("phone", ops)).await.unwrap();
        }
        c.ack(&AckRequest { device: Some(DeviceId::new("phone").unwrap()), seq: 5 }).await.unwrap();
        c.put_snapshot(3, format!("{user} at 3").into_bytes()).await.unwrap();
        c.put_snapshot(6, format!("{user} at 6").into_bytes()).await.unwrap();
    }
    // Prune alice's prefix, so the horizon travels too.
    let policy = Retention { compact_interval: Duration::ZERO, ..Retention::default() };
    s.state
        .log
        .with_conn(move |conn| retention::compact_user(conn, "alice", &policy, now_ms() + 40 * 24 * 3600 * 1000))
        .await
        .unwrap();
}

/// Everything a client can see of a user.
async fn view(s: &TestServer, user: &str) -> (PullResponse, StatusResponse, Vec<(i64, Vec<u8>)>) {
    let c = s.client(user);
    let mut status = c.status().await.unwrap();
    status.server_time = 0;
    let from = status.horizon;
    let log = c.pull_all(from).await.unwrap();
    let mut snapshots = Vec::new();
    for seq in [3, 6] {
        if let Ok(snapshot) = c.snapshot(Some(seq)).await {
            snapshots.push(snapshot);
        }
    }
    (log, status, snapshots)
}

fn other(backend: Backend) -> Backend {
    match backend {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    }
}

async fn export_then_import_keeps_everything(s: TestServer) {
    populate(&s).await;
    let mut conn = db::connect(&s.config.db).unwrap();
    let mut file = Vec::new();
    let digests = transfer::export(&mut conn, &["alice".into(), "bob".into()], &mut file).unwrap();
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[0].1.horizon, 6);
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(text.lines().next().unwrap().contains("\"format\":\"opsync-export\""), "self-describing");

    // Into an empty database of each backend.
    for backend in [s.backend(), other(s.backend())] {
        let Some(target) = Storage::new(backend) else { continue };
        let mut dest = db::connect(&DbUrl::parse(&target.db).unwrap()).unwrap();
        db::migrate(&mut dest).unwrap();
        let imported = transfer::import(&mut dest, &file[..]).unwrap();
        assert_eq!(imported, digests);
        // Importing again refuses: the users exist.
        let again = transfer::import(&mut dest, &file[..]).unwrap_err();
        assert!(matches!(again, TransferError::UserExists(_)), "{again}");
        drop(dest);
        let copy = TestServer::on(target, opsync::auth::generate_root(), s.config.limits.clone());
        for user in ["alice", "bob"] {
            assert_eq!(view(&copy, user).await, view(&s, user).await, "{user} on {backend:?}");
        }
        // The imported log goes on from the same head.
        let res = copy.client("bob").push(&push_of(vec![op(b"next")])).await.unwrap();
        assert_eq!(res.head, 10);
    }
}

async fn damaged_and_truncated_files_store_nothing(s: TestServer) {
    populate(&s).await;
    let mut conn = db::connect(&s.config.db).unwrap();
    let mut file = Vec::new();
    transfer::export(&mut conn, &["alice".into()], &mut file).unwrap();
    let text = String::from_utf8(file).unwrap();
    let Some(target) = Storage::new(s.backend()) else { return };
    let mut dest = db::connect(&DbUrl::parse(&target.db).unwrap()).unwrap();
    db::migrate(&mut dest).unwrap();

    // One payload byte changed: the digest differs, alice is rolled back.
    let op_line = text.lines().position(|l| l.starts_with("{\"type\":\"op\"")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let op: serde_json::Value = serde_json::from_str(&lines[op_line]).unwrap();
    let payload = op["payload"].as_str().unwrap();
    let changed = if payload.starts_with('A') { payload.replacen('A', "B", 1) } else { format!("A{}", &payload[1..]) };
    lines[op_line] = lines[op_line].replace(payload, &changed);
    let damaged = lines.join("\n");
    let err = transfer::import(&mut dest, damaged.as_bytes()).unwrap_err();
    assert!(matches!(err, TransferError::Mismatch { .. }), "{err}");

    // Cut in the middle of alice's ops.
    let cut: String = text.lines().take(op_line + 1).map(|l| format!("{l}\n")).collect();
    let err = transfer::import(&mut dest, cut.as_bytes()).unwrap_err();
    assert!(matches!(err, TransferError::BadFile { .. }), "{err}");
    // Cut right after alice's trailer: alice is whole, the end record is missing.
    let missing_end: String =
        text.lines().filter(|l| !l.contains("\"type\":\"end\"")).map(|l| format!("{l}\n")).collect();
    // (the first attempt must not have left anything behind)
    let count: i64 = {
        use diesel::prelude::*;
        opsync::db::schema::ops::table.count().get_result(&mut dest).unwrap()
    };
    assert_eq!(count, 0, "nothing half-imported");
    let err = transfer::import(&mut dest, missing_end.as_bytes()).unwrap_err();
    assert!(matches!(err, TransferError::BadFile { .. }), "{err}");
    // Not an export at all.
    let err = transfer::import(&mut dest, &b"{\"hello\":1}\n"[..]).unwrap_err();
    assert!(matches!(err, TransferError::BadFile { .. }), "{err}");
    // The intact file still imports (into a fresh database: the missing-end import committed alice).
    let Some(fresh) = Storage::new(s.backend()) else { return };
    let mut fresh_conn = db::connect(&DbUrl::parse(&fresh.db).unwrap()).unwrap();
    db::migrate(&mut fresh_conn).unwrap();
    assert_eq!(transfer::import(&mut fresh_conn, text.as_bytes()).unwrap().len(), 1);
}

/// `opsync` with no `OPSYNC_*` variable from our environment.
fn opsync(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opsync"));
    cmd.current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OPSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn copy_to_the_other_backend_and_back_verifies_every_user(s: TestServer) {
    populate(&s).await;
    let Some(there) = Storage::new(other(s.backend())) else { return };
    let Some(back) = Storage::new(s.backend()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(opsync(dir.path()).args(["copy", "--from", &s.storage.db, "--to", &there.db]));
    assert!(out.contains("copied 2 users (12 ops)") && out.contains("every user verified"), "{out}");
    // Into a database that already holds users: refused.
    let refused = opsync(dir.path()).args(["copy", "--from", &s.storage.db, "--to", &there.db]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds 2 users"));
    // And back again.
    run_ok(opsync(dir.path()).args(["copy", "--from", &there.db, "--to", &back.db]));
    let there = TestServer::on(there, opsync::auth::generate_root(), s.config.limits.clone());
    let back = TestServer::on(back, opsync::auth::generate_root(), s.config.limits.clone());
    for user in ["alice", "bob"] {
        let original = view(&s, user).await;
        assert_eq!(view(&there, user).await, original, "{user} after the copy");
        assert_eq!(view(&back, user).await, original, "{user} after the copy back");
    }
}

async fn cli_export_import_delete_and_compact(s: TestServer) {
    populate(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alice.jsonl.gz");
    let db = s.storage.db.clone();
    let out = opsync(dir.path())
        .args(["export", "--user", "alice", "--out"])
        .arg(&file)
        .args(["--db", &db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");

    let deleted = run_ok(opsync(dir.path()).args(["user", "delete", "alice", "--db", &db]));
    assert!(deleted.contains("deleted user alice: 3 ops, 2 snapshots, 1 devices, 2 entities"), "{deleted}");
    assert_eq!(s.client("alice").status().await.unwrap().head, 0);
    let before = view(&s, "bob").await;

    let imported = run_ok(opsync(dir.path()).arg("import").arg(&file).args(["--db", &db]));
    assert!(imported.contains("imported alice: 3 ops (head 9, horizon 6), 2 snapshots, verified"), "{imported}");
    let status = s.client("alice").status().await.unwrap();
    assert_eq!((status.head, status.horizon), (9, 6));
    assert_eq!(view(&s, "bob").await, before);

    // `opsync compact` by the settings: nothing is 30 days old yet.
    let compacted = run_ok(opsync(dir.path()).args(["compact", "--db", &db]));
    assert!(compacted.contains("alice: removed 0 ops and 0 tombstones; horizon 6 -> 6"), "{compacted}");
    // With a zero window bob's prefix up to his latest snapshot goes.
    std::thread::sleep(Duration::from_millis(5));
    let compacted = run_ok(opsync(dir.path()).args(["compact", "--user", "bob", "--retention", "0s", "--db", &db]));
    assert!(compacted.contains("bob: removed 6 ops and 0 tombstones; horizon 0 -> 6"), "{compacted}");
    assert_eq!(s.client("bob").pull(0, None).await.unwrap_err().code(), Some("resync_required"));
}
