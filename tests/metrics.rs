//! `GET /metrics`: the counters move with real traffic, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::{TestServer, op, push_of};
use opsync::client::ws::{self, TokenIn};
use opsync::ids::DeviceId;
use opsync::realtime::messages::{ClientMsg, ServerMsg};

both_backends!(metrics_follow_pushes_sessions_and_fan_out);

/// The value of an unlabelled or labelled sample line.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

async fn scrape(s: &TestServer) -> String {
    let mut res = awc::Client::new().get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
}

async fn metrics_follow_pushes_sessions_and_fan_out(s: TestServer) {
    let before = scrape(&s).await;
    assert_eq!(sample(&before, "opsync_ops_ingested_total"), 0.0);
    assert_eq!(sample(&before, "opsync_sessions"), 0.0);

    let mut conn = ws::open(&s.base, &s.token("u"), TokenIn::Subprotocol).await.unwrap();
    let hello = ClientMsg::Hello { token: None, device: Some(DeviceId::new("d").unwrap()), since: None };
    conn.send(&hello).await.unwrap();
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Welcome { .. }));

    let c = s.client("u");
    let first = push_of(vec![op(b"a"), op(b"b")]);
    c.push(&first).await.unwrap();
    c.push(&first).await.unwrap(); // all duplicates
    assert!(c.push(&push_of(vec![])).await.is_err()); // invalid
    assert!(matches!(conn.recv_msg().await.unwrap(), ServerMsg::Ops { .. }));

    let after = scrape(&s).await;
    assert_eq!(sample(&after, "opsync_ops_ingested_total"), 2.0);
    assert_eq!(sample(&after, "opsync_pushes_total{result=\"stored\"}"), 1.0);
    assert_eq!(sample(&after, "opsync_pushes_total{result=\"duplicate\"}"), 1.0);
    assert_eq!(sample(&after, "opsync_pushes_total{result=\"invalid\"}"), 1.0);
    assert_eq!(sample(&after, "opsync_sessions"), 1.0);
    assert_eq!(sample(&after, "opsync_hubs"), 1.0);
    assert!(sample(&after, "opsync_write_transactions_total") >= 2.0);
    assert!(sample(&after, "opsync_commit_seconds_count") >= 2.0);
    assert_eq!(sample(&after, "opsync_fanout_seconds_count"), 1.0);
    assert!(sample(&after, "opsync_fanout_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(sample(&after, "opsync_db_pool_connections") >= 1.0);
}
