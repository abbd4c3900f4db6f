//! How long a new device of a user with 100,000 ops takes to bootstrap: pulling
//! every page (MessagePack) versus downloading the snapshot and pulling the tail.
//! A measurement, not a check; run it on a release build:
//!
//! ```sh
//! cargo test --release --test bootstrap -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use opsync::client::Client;
use opsync::protocol::NewOp;

const OPS: usize = 100_000;
const ENTITIES: usize = 10_000;
const TAIL: usize = 1_000;
const RUNS: usize = 5;

/// Pulls every op after `since`, `limit` per page; returns how many.
async fn pull_from(c: &Client, since: i64, limit: usize) -> usize {
    let mut since = since;
    let mut n = 0;
    loop {
        let page = c.pull(since, Some(limit)).await.unwrap();
        n += page.ops.len();
        if let Some(last) = page.ops.last() {
            since = last.seq;
        }
        if !page.has_more {
            return n;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn bench(s: TestServer) {
    let c = s.client("bench").msgpack();
    let started = Instant::now();
    for batch in 0..OPS / 1000 {
        let ops: Vec<NewOp> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                entity_op(&format!("e{}", n % ENTITIES), None, format!("{n:064}").as_bytes())
            })
            .collect();
        c.push(&push_of(ops)).await.unwrap();
    }
    eprintln!("{:?}: pushed {OPS} ops in {:?}", s.backend(), started.elapsed());
    // The client's state at OPS - TAIL: the newest payload per entity, 72 bytes each.
    let covered = OPS - TAIL;
    let mut state = vec![Vec::new(); ENTITIES];
    for n in 0..covered {
        state[n % ENTITIES] = format!("e{}={n:064}", n % ENTITIES).into_bytes();
    }
    let snapshot: Vec<u8> = state.concat();
    let size = snapshot.len();
    c.put_snapshot(covered as i64, snapshot).await.unwrap();

    measure(&s, &c, covered, size, "statistics as the pushes left them").await;
    // Postgres plans pulls badly on a freshly filled table until it has statistics
    // (autovacuum gets to it within minutes; import and copy run ANALYZE).
    s.state
        .log
        .with_conn(|conn| {
            opsync::db::analyze(conn).unwrap();
            Ok(())
        })
        .await
        .unwrap();
    measure(&s, &c, covered, size, "after ANALYZE").await;
}

async fn measure(s: &TestServer, c: &Client, covered: usize, size: usize, when: &str) {
    for limit in [1000, 10_000] {
        let mut full = Vec::new();
        let mut boot = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            assert_eq!(pull_from(c, 0, limit).await, OPS);
            full.push(t.elapsed());
            let t = Instant::now();
            let (seq, bytes) = c.snapshot(None).await.unwrap();
            assert_eq!((seq, bytes.len()), (covered as i64, size));
            assert_eq!(pull_from(c, seq, limit).await, TAIL);
            boot.push(t.elapsed());
        }
        eprintln!(
            "{:?} ({when}), pages of {limit}: full log {:?} (median of {RUNS}); snapshot ({size} bytes) + {TAIL}-op tail {:?}",
            s.backend(),
            median(full),
            median(boot)
        );
    }
}

#[test]
#[ignore = "a measurement; run on a release build with --ignored --nocapture"]
fn bootstrap_with_and_without_a_snapshot() {
    let system = actix_web::rt::System::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if let Some(server) = system.block_on(TestServer::start(backend)) {
            system.block_on(bench(server));
        }
    }
}
