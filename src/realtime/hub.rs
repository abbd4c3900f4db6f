//! One user's hub: an actor owning the user's sessions and long-poll waiters,
//! driven only through its mailbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Realtime;
use super::messages::ServerMsg;
use super::outbox::{CloseOrder, Frame, Offered, Outbox};
use crate::ids::{Seq, UserId};
use crate::log::{Committed, store};
use crate::protocol::Op;

/// What a hub is told.
#[derive(Debug)]
pub(crate) enum HubMsg {
    /// A session joins; `ack` answers once it receives every later commit.
    Join { id: u64, outbox: Arc<Outbox>, ack: oneshot::Sender<()> },
    /// A session left.
    Leave { id: u64 },
    /// A long-poll waits for the next commit.
    Wait { id: u64, wake: oneshot::Sender<()>, ack: oneshot::Sender<()> },
    /// A long-poll is over.
    Unwait { id: u64 },
    /// This node committed these ops.
    Local(Committed),
    /// Another node committed `from..=to`.
    Remote { from: Seq, to: Seq },
    /// Re-read the head: notifications may have been missed.
    Refresh,
    /// Close every session.
    Close(CloseOrder),
}

/// The way into a running hub.
#[derive(Debug)]
pub(crate) struct HubHandle {
    tx: mpsc::UnboundedSender<HubMsg>,
    /// Tells this hub from a later one of the same user.
    pub(crate) generation: u64,
}

impl HubHandle {
    pub(crate) fn send(&self, msg: HubMsg) -> Result<(), mpsc::error::SendError<HubMsg>> {
        self.tx.send(msg)
    }
}

/// The most ops a hub reads from the database for one remote commit; a larger
/// commit reaches the sessions as a hint (each reads its own pages).
const MAX_REMOTE_READ: usize = 1000;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Starts a hub for `user`.
pub(crate) fn start(user: UserId, realtime: Realtime) -> HubHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let hub = Hub { user, realtime, generation, sessions: HashMap::new(), waiters: HashMap::new(), known: 0 };
    actix_web::rt::spawn(hub.run(rx));
    HubHandle { tx, generation }
}

struct Hub {
    user: UserId,
    realtime: Realtime,
    generation: u64,
    sessions: HashMap<u64, Arc<Outbox>>,
    waiters: HashMap<u64, oneshot::Sender<()>>,
    /// The highest seq this hub has seen committed.
    known: Seq,
}

impl Hub {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubMsg>) {
        let (user, realtime) = (self.user.clone(), self.realtime.clone());
        while let Some(msg) = rx.recv().await {
            self.handle(msg, &user, &realtime).await;
            if self.sessions.is_empty() && self.waiters.is_empty() && realtime.retire(&user, self.generation, &rx) {
                break;
            }
        }
    }

    async fn handle(&mut self, msg: HubMsg, user: &UserId, realtime: &Realtime) {
        match msg {
            HubMsg::Join { id, outbox, ack } => {
                self.sessions.insert(id, outbox);
                let _ = ack.send(());
            }
            HubMsg::Leave { id } => {
                self.sessions.remove(&id);
            }
            HubMsg::Wait { id, wake, ack } => {
                self.waiters.retain(|_, w| !w.is_closed());
                self.waiters.insert(id, wake);
                let _ = ack.send(());
            }
            HubMsg::Unwait { id } => {
                self.waiters.remove(&id);
            }
            HubMsg::Local(commit) => {
                let (Some(first), Some(last)) = (commit.ops.first(), commit.ops.last()) else { return };
                let (from, to) = (first.seq, last.seq);
                self.wake(to);
                if self.sessions.is_empty() {
                    return;
                }
                let bytes = encode(commit.ops, to.max(self.known), Some(commit.committed_us));
                let committed_us = Some(commit.committed_us);
                self.deliver(Frame { from, to, origin: commit.origin, bytes, committed_us }, realtime);
            }
            HubMsg::Remote { from, to } => {
                self.wake(to);
                if self.sessions.is_empty() {
                    return;
                }
                let bytes = match read(realtime, user, from, to).await {
                    Some(ops) => encode(ops, to.max(self.known), None),
                    None => None,
                };
                self.deliver(Frame { from, to, origin: None, bytes, committed_us: None }, realtime);
            }
            HubMsg::Refresh => {
                let pool = realtime.pool().clone();
                let who = user.clone();
                let head = actix_web::rt::task::spawn_blocking(move || {
                    let mut conn = pool.get().ok()?;
                    store::head(&mut conn, &who).ok()
                })
                .await
                .ok()
                .flatten();
                match head {
                    Some(head) if head > self.known => {
                        let from = self.known + 1;
                        self.wake(head);
                        self.deliver(Frame { from, to: head, origin: None, bytes: None, committed_us: None }, realtime);
                    }
                    Some(_) => {}
                    None => {
                        // Cannot tell: let the waiters re-read the database themselves.
                        tracing::warn!(%user, "cannot read the head to refresh a hub");
                        self.wake(self.known);
                    }
                }
            }
            HubMsg::Close(order) => {
                for outbox in self.sessions.values() {
                    outbox.close(order);
                }
                for (_, waiter) in self.waiters.drain() {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// A commit up to `to`: long-polls fire.
    fn wake(&mut self, to: Seq) {
        self.known = self.known.max(to);
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(());
        }
    }

    /// Hands one frame to every session.
    fn deliver(&self, frame: Frame, realtime: &Realtime) {
        let frame = Arc::new(frame);
        let stats = realtime.stats();
        for outbox in self.sessions.values() {
            match outbox.offer(frame.clone()) {
                Offered::Queued => stats.frames.fetch_add(1, Ordering::Relaxed),
                Offered::Overflowed => stats.lagged.fetch_add(1, Ordering::Relaxed),
                Offered::Dropped => 0,
            };
        }
    }
}

/// The `ops` frame, encoded once for every session.
fn encode(ops: Vec<Op>, head: Seq, committed_us: Option<i64>) -> Option<Bytes> {
    match (ServerMsg::Ops { ops, head, committed_us }).encode() {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(e) => {
            // Sessions read the ops themselves instead.
            tracing::error!(error = %e, "cannot encode an ops frame");
            None
        }
    }
}

/// Reads `from..=to` once for all sessions; `None` if it is too large or fails.
async fn read(realtime: &Realtime, user: &UserId, from: Seq, to: Seq) -> Option<Vec<Op>> {
    let want = usize::try_from(to - from + 1).ok().filter(|n| (1..=MAX_REMOTE_READ).contains(n))?;
    let pool = realtime.pool().clone();
    let user = user.clone();
    let page = actix_web::rt::task::spawn_blocking(move || {
        let mut conn = pool.get().ok()?;
        store::pull(&mut conn, &user, from - 1, want, usize::MAX).ok()
    })
    .await
    .ok()
    .flatten()?;
    let complete = page.ops.len() == want && page.ops.first().is_some_and(|op| op.seq == from);
    complete.then_some(page.ops)
}
