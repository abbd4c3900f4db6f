//! Live delivery: per-user hubs that hand each commit to the user's connected
//! sessions the moment it commits, long-poll waiters, and (on Postgres) the feed of
//! other nodes' commits.
//!
//! A hub is an actor: one task per connected user, driven only through its mailbox.
//! It starts with the user's first session (or long-poll) and stops after the last
//! one leaves. The writers announce each commit once ([`CommitSink`]); the hub
//! encodes the `ops` frame once and puts the same bytes in every session's
//! [`Outbox`]. Commits of other nodes arrive as Postgres notifications carrying the
//! user and the seq range; the hub reads those ops itself, once.

pub mod hub;
pub mod listener;
pub mod messages;
pub mod outbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::db::DbPool;
use crate::ids::{Seq, UserId};
use crate::log::{CommitSink, Committed};
use hub::{HubHandle, HubMsg};
pub use outbox::{CloseOrder, Event, Frame, Offered, Outbox};

/// Tunables of live delivery (`[realtime]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Origins (`scheme://host[:port]`) whose pages may open WebSockets, besides
    /// the server's own origin and clients that send no Origin; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Frames a session's outbox holds before the session is lagging.
    pub outbox_frames: usize,
    /// Bytes a session's outbox holds before the session is lagging.
    pub outbox_bytes: usize,
    /// How long a new connection has to authenticate (`hello`), milliseconds.
    pub hello_timeout_ms: u64,
    /// How often the server pings each connection, milliseconds.
    pub heartbeat_ms: u64,
    /// A connection silent this long is closed, milliseconds.
    pub idle_timeout_ms: u64,
    /// A connection whose client does not take a frame within this long is closed, milliseconds.
    pub send_timeout_ms: u64,
    /// How often open sessions re-check their token (expiry, revocation), milliseconds.
    pub token_check_ms: u64,
    /// The longest long-poll (`GET /v1/ops?wait=S`), seconds.
    pub max_wait_secs: u64,
    /// WebSocket frames a client may send, bytes.
    pub max_frame_bytes: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            outbox_frames: 1024,
            outbox_bytes: 8 << 20,
            hello_timeout_ms: 5_000,
            heartbeat_ms: 15_000,
            idle_timeout_ms: 45_000,
            send_timeout_ms: 30_000,
            token_check_ms: 10_000,
            max_wait_secs: 30,
            max_frame_bytes: 8 << 20,
        }
    }
}

/// Counters for operators.
#[derive(Debug, Default)]
pub struct RealtimeStats {
    /// WebSocket sessions open now.
    pub sessions: AtomicU64,
    /// Hubs running now.
    pub hubs: AtomicU64,
    /// Long-polls waiting now.
    pub waiting: AtomicU64,
    /// Times a session's outbox overflowed (it then catches up from the database).
    pub lagged: AtomicU64,
    /// Frames handed to outboxes.
    pub frames: AtomicU64,
    /// From a commit to its frame being handed to a session's socket.
    pub fanout_latency: crate::metrics::Histogram,
}

/// The node's live-delivery layer. Cheap to clone.
#[derive(Clone)]
pub struct Realtime {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    hubs: Mutex<HashMap<UserId, HubHandle>>,
    next_id: AtomicU64,
    pool: DbPool,
    config: RealtimeConfig,
    stats: RealtimeStats,
    stopping: AtomicBool,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

/// The hub is gone (the server is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("live delivery is shutting down")]
pub struct Stopped;

impl Realtime {
    /// Live delivery reading from `pool`.
    pub fn new(pool: DbPool, config: RealtimeConfig) -> Self {
        let node = uuid::Uuid::now_v7().simple().to_string();
        Self {
            inner: Arc::new(Inner {
                node,
                hubs: Mutex::default(),
                next_id: AtomicU64::new(1),
                pool,
                config,
                stats: RealtimeStats::default(),
                stopping: AtomicBool::new(false),
                listener: Mutex::default(),
            }),
        }
    }

    /// The tunables.
    pub fn config(&self) -> &RealtimeConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &RealtimeStats {
        &self.inner.stats
    }

    /// A fresh id for a session or waiter.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    fn hubs(&self) -> MutexGuard<'_, HashMap<UserId, HubHandle>> {
        self.inner.hubs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends to the user's hub if it runs; starting it first if `start`.
    fn send(&self, user: &UserId, msg: HubMsg, start: bool) -> Result<(), Stopped> {
        let mut hubs = self.hubs();
        if let Some(hub) = hubs.get(user) {
            return hub.send(msg).map_err(|_| Stopped);
        }
        if !start {
            return Ok(());
        }
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Err(Stopped);
        }
        let hub = hub::start(user.clone(), self.clone());
        let sent = hub.send(msg).map_err(|_| Stopped);
        hubs.insert(user.clone(), hub);
        self.inner.stats.hubs.fetch_add(1, Ordering::Relaxed);
        sent
    }

    /// Called by a hub with no members: removes it unless a message arrived since
    /// (members join under the same lock, so none is lost). Returns whether it may stop.
    pub(crate) fn retire(&self, user: &UserId, generation: u64, mailbox: &mpsc::UnboundedReceiver<HubMsg>) -> bool {
        let mut hubs = self.hubs();
        if !mailbox.is_empty() {
            return false;
        }
        if hubs.get(user).is_some_and(|hub| hub.generation == generation) {
            hubs.remove(user);
            self.inner.stats.hubs.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Adds a session to its user's hub; from the moment this returns, every commit
    /// of the user reaches `outbox`.
    pub async fn join(&self, user: &UserId, id: u64, outbox: Arc<Outbox>) -> Result<Membership, Stopped> {
        let (ack, joined) = oneshot::channel();
        self.send(user, HubMsg::Join { id, outbox, ack }, true)?;
        joined.await.map_err(|_| Stopped)?;
        self.inner.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Membership { realtime: self.clone(), user: user.clone(), id })
    }

    /// Registers a long-poll waiter: from the moment this returns, the next commit of
    /// the user (on any node) fires it.
    pub async fn watch(&self, user: &UserId) -> Result<Watch, Stopped> {
        let id = self.next_id();
        let (wake, fired) = oneshot::channel();
        let (ack, registered) = oneshot::channel();
        self.send(user, HubMsg::Wait { id, wake, ack }, true)?;
        registered.await.map_err(|_| Stopped)?;
        self.inner.stats.waiting.fetch_add(1, Ordering::Relaxed);
        Ok(Watch { fired, realtime: self.clone(), user: user.clone(), id })
    }

    /// Closes every session of `user` (revoked, deleted).
    pub fn close_user(&self, user: &UserId, order: CloseOrder) {
        let _ = self.send(user, HubMsg::Close(order), false);
    }

    /// Another node committed `from..=to` for `user`.
    pub fn remote_commit(&self, user: &UserId, from: Seq, to: Seq) {
        let _ = self.send(user, HubMsg::Remote { from, to }, false);
    }

    /// After the feed of other nodes' commits was interrupted: every hub re-reads
    /// its user's head and lets its sessions catch up on what they missed.
    pub fn refresh_all(&self) {
        for hub in self.hubs().values() {
            let _ = hub.send(HubMsg::Refresh);
        }
    }

    /// Closes every session (the server is stopping) and stops the listener.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for hub in self.hubs().values() {
            let _ = hub.send(HubMsg::Close(CloseOrder { code: 1001, reason: "server_shutting_down" }));
        }
        let handle = self.inner.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Whether [`Realtime::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Starts the thread that listens for other nodes' commits (Postgres).
    pub fn start_listener(&self, url: &crate::db::DbUrl) -> std::io::Result<()> {
        let handle = listener::spawn(url.clone(), self.clone())?;
        *self.inner.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }
}

impl CommitSink for Realtime {
    fn wants(&self, user: &UserId) -> bool {
        self.hubs().contains_key(user)
    }

    fn committed(&self, commits: Vec<Committed>) {
        let hubs = self.hubs();
        for commit in commits {
            if let Some(hub) = hubs.get(&commit.user) {
                let _ = hub.send(HubMsg::Local(commit));
            }
        }
    }

    fn node_id(&self) -> &str {
        &self.inner.node
    }

    fn user_deleted(&self, user: &UserId) {
        self.close_user(user, ACCOUNT_DELETED);
    }
}

/// Sessions of a deleted account are closed with this.
pub const ACCOUNT_DELETED: CloseOrder = CloseOrder { code: 4010, reason: "account_deleted" };

/// A session's place in its user's hub; leaves on drop.
#[derive(Debug)]
pub struct Membership {
    realtime: Realtime,
    user: UserId,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.realtime.inner.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        let _ = self.realtime.send(&self.user, HubMsg::Leave { id: self.id }, false);
    }
}

/// A registered long-poll; unregisters on drop.
#[derive(Debug)]
pub struct Watch {
    fired: oneshot::Receiver<()>,
    realtime: Realtime,
    user: UserId,
    id: u64,
}

impl Watch {
    /// Waits for a commit of the user, at most `timeout`. Returns whether one came.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, &mut self.fired).await, Ok(Ok(())))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.realtime.inner.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        let _ = self.realtime.send(&self.user, HubMsg::Unwait { id: self.id }, false);
    }
}
