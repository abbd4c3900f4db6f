//! The feed of other nodes' commits on Postgres: a dedicated connection that
//! `LISTEN`s on the commit channel. Writers `pg_notify` inside their transaction, so
//! a notification exists only for a committed push and arrives in commit order.
//! After the connection drops and comes back, every hub re-reads its head: commits
//! announced while nobody listened are caught up from the database.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection as _;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::Realtime;
use crate::db::DbUrl;
use crate::db::dialect::NOTIFY_CHANNEL;
use crate::ids::UserId;

/// How often the connection is polled for notifications when idle. Polling (a
/// non-blocking read) keeps the listener on diesel's connection; it costs a
/// syscall per tick and adds at most this much latency across nodes.
const POLL: Duration = Duration::from_millis(2);
/// How often an idle connection is checked with a round trip.
const HEALTH_CHECK: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts the listener thread; it runs until `realtime` shuts down.
pub(crate) fn spawn(url: DbUrl, realtime: Realtime) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("opsync-listener".into()).spawn(move || run(&url, &realtime))
}

fn run(url: &DbUrl, realtime: &Realtime) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    while !realtime.is_stopping() {
        match connect(url, crate::log::CommitSink::node_id(realtime)) {
            Ok(mut conn) => {
                backoff = Duration::from_millis(50);
                if !first {
                    tracing::info!("commit listener reconnected; refreshing hubs");
                }
                // Also on the first connection: a hub may have started before it.
                realtime.refresh_all();
                first = false;
                if let Err(e) = listen(&mut conn, realtime) {
                    tracing::warn!(error = %e, "commit listener lost its connection");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "commit listener cannot connect");
                sleep_unless_stopping(realtime, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A listening connection, named `opsync-listener-NODE` in `pg_stat_activity`.
fn connect(url: &DbUrl, node: &str) -> Result<PgConnection, diesel::ConnectionError> {
    let mut conn = PgConnection::establish(url.as_str())?;
    conn.batch_execute(&format!("SET application_name = 'opsync-listener-{node}'; LISTEN {NOTIFY_CHANNEL}"))
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Relays notifications until the connection fails or the node stops.
fn listen(conn: &mut PgConnection, realtime: &Realtime) -> QueryResult<()> {
    let mut checked = Instant::now();
    while !realtime.is_stopping() {
        let mut got = false;
        for notification in conn.notifications_iter() {
            let notification = notification?;
            got = true;
            relay(&notification.payload, realtime);
        }
        if got {
            continue;
        }
        if checked.elapsed() >= HEALTH_CHECK {
            conn.batch_execute("SELECT 1")?;
            checked = Instant::now();
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// `NODE FROM TO USER` or `NODE del USER`, from another node (or the CLI): hand it
/// to the user's hub, if any.
fn relay(payload: &str, realtime: &Realtime) {
    if let Some((node, user)) = payload.split_once(" del ") {
        match UserId::new(user) {
            Ok(user) if node != crate::log::CommitSink::node_id(realtime) => {
                realtime.close_user(&user, super::ACCOUNT_DELETED);
            }
            Ok(_) => {}
            Err(_) => tracing::warn!(payload, "malformed deletion notification"),
        }
        return;
    }
    let mut parts = payload.splitn(4, ' ');
    let (Some(node), Some(from), Some(to), Some(user)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        tracing::warn!(payload, "malformed commit notification");
        return;
    };
    if node == crate::log::CommitSink::node_id(realtime) {
        return;
    }
    match (from.parse(), to.parse(), UserId::new(user)) {
        (Ok(from), Ok(to), Ok(user)) if from <= to => realtime.remote_commit(&user, from, to),
        _ => tracing::warn!(payload, "malformed commit notification"),
    }
}

fn sleep_unless_stopping(realtime: &Realtime, total: Duration) {
    let until = Instant::now() + total;
    while !realtime.is_stopping() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}
