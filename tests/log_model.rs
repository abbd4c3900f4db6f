//! A server restarted inside one process (as the model-based log test does dozens
//! of times) leaves nothing of the stopped one behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// A restarted server leaves no database connection of the stopped one behind (the
/// model test restarts dozens of times on one Postgres server): its background
/// tasks must let go of the state, and with it of the pool.
#[actix_web::test]
async fn postgres_restarts_release_their_connections() {
    let Some(mut s) = TestServer::start(Backend::Postgres).await else { return };
    let db = s.storage.pg.as_ref().expect("a Postgres database").name.clone();
    let count = || {
        use diesel::prelude::*;
        let mut admin = diesel::PgConnection::establish(&format!("{}/postgres", pg_base_url())).unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}')"
        )))
        .get_result::<i64>(&mut admin)
        .unwrap()
    };
    // Stopped servers' connections close within a moment (the revocation refresh
    // ticks every second); wait for the count to settle at or below `at_most`.
    let settled = |at_most: i64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = count();
            if now <= at_most || std::time::Instant::now() > deadline {
                return now;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let cycle = async |s: TestServer| {
        let s = s.restart().await;
        s.client("u").push(&push_of(vec![op(b"x")])).await.unwrap();
        s.client("u").pull(0, None).await.unwrap();
        s
    };
    s = cycle(s).await;
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let one_server = count();
    for _ in 0..8 {
        s = cycle(s).await;
    }
    // A server opens some connections on demand (the pool refills in the
    // background, a writer connects on its first command): allow for two of them;
    // a leak costs at least the pool (4) per restart.
    let now = settled(one_server).await;
    assert!(now <= one_server + 2, "{now} connections after 8 more restarts, {one_server} after one");
}
