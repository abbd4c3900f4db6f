//! A session's bounded outbox: the hub puts shared frames in without ever waiting;
//! the session takes them out. When it is full the session is marked lagging and
//! its queued frames are dropped: its memory stays bounded, the hub and the user's
//! other sessions are never slowed, and the session catches up from the database.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::ids::Seq;

/// One commit (or several consecutive ones) for the sessions of a user.
#[derive(Debug)]
pub struct Frame {
    /// The first seq it covers.
    pub from: Seq,
    /// The last seq it covers.
    pub to: Seq,
    /// The session that pushed these ops, if it is a WebSocket session.
    pub origin: Option<u64>,
    /// The encoded `ops` message, shared by every session; `None` when the hub did
    /// not read the ops (each session then reads what it misses from the database).
    pub bytes: Option<Bytes>,
    /// When this node committed it, microseconds since the Unix epoch.
    pub committed_us: Option<i64>,
}

impl Frame {
    fn weight(&self) -> usize {
        self.bytes.as_ref().map_or(0, Bytes::len)
    }
}

/// Why a session must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOrder {
    /// The WebSocket close code.
    pub code: u16,
    /// The reason (an error code).
    pub reason: &'static str,
}

/// What became of an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued for the session.
    Queued,
    /// The outbox just overflowed: the session is now lagging.
    Overflowed,
    /// Dropped: the session is lagging or closing already.
    Dropped,
}

/// What the session gets next.
#[derive(Debug)]
pub enum Event {
    /// A frame, in commit order.
    Frame(Arc<Frame>),
    /// Frames were dropped because the outbox was full.
    Lagging,
    /// The session must close.
    Close(CloseOrder),
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Arc<Frame>>,
    bytes: usize,
    lagging: bool,
    close: Option<CloseOrder>,
}

/// The queue between a hub and one session.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox holding at most `max_frames` frames and `max_bytes` bytes.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self { state: Mutex::default(), ready: Notify::new(), max_frames: max_frames.max(1), max_bytes }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; never waits.
    pub fn offer(&self, frame: Arc<Frame>) -> Offered {
        let mut state = self.lock();
        if state.lagging || state.close.is_some() {
            return Offered::Dropped;
        }
        let weight = frame.weight();
        // A frame larger than the byte bound still goes into an empty outbox: one
        // large push must not make every session of its user lag.
        let full = state.frames.len() >= self.max_frames
            || (state.bytes + weight > self.max_bytes && !state.frames.is_empty());
        if full {
            state.lagging = true;
            state.frames.clear();
            state.bytes = 0;
            drop(state);
            self.ready.notify_one();
            return Offered::Overflowed;
        }
        state.bytes += weight;
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
        Offered::Queued
    }

    /// Orders the session to close; queued frames are dropped.
    pub fn close(&self, order: CloseOrder) {
        let mut state = self.lock();
        state.close.get_or_insert(order);
        state.frames.clear();
        state.bytes = 0;
        drop(state);
        self.ready.notify_one();
    }

    /// The next event, waiting for one.
    pub async fn next(&self) -> Event {
        loop {
            if let Some(event) = self.try_next() {
                return event;
            }
            self.ready.notified().await;
        }
    }

    fn try_next(&self) -> Option<Event> {
        let mut state = self.lock();
        if let Some(order) = state.close {
            return Some(Event::Close(order));
        }
        if state.lagging {
            state.lagging = false;
            return Some(Event::Lagging);
        }
        let frame = state.frames.pop_front()?;
        state.bytes -= frame.weight();
        Some(Event::Frame(frame))
    }

    /// Frames and bytes queued now.
    pub fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.frames.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: Seq, len: usize) -> Arc<Frame> {
        Arc::new(Frame { from: seq, to: seq, origin: None, bytes: Some(Bytes::from(vec![0; len])), committed_us: None })
    }

    #[tokio::test]
    async fn frames_come_out_in_order_until_the_bounds_then_lagging() {
        let outbox = Outbox::new(3, 100);
        assert_eq!(outbox.offer(frame(1, 10)), Offered::Queued);
        assert_eq!(outbox.offer(frame(2, 10)), Offered::Queued);
        assert!(matches!(outbox.next().await, Event::Frame(f) if f.from == 1));
        assert_eq!(outbox.offer(frame(3, 10)), Offered::Queued);
        assert_eq!(outbox.offer(frame(4, 10)), Offered::Queued);
        // Four frames offered, one taken: the fifth exceeds the count bound.
        assert_eq!(outbox.offer(frame(5, 10)), Offered::Overflowed);
        assert_eq!(outbox.len(), (0, 0), "a lagging session holds nothing");
        // Frames are dropped until the session has seen `Lagging`.
        assert_eq!(outbox.offer(frame(6, 10)), Offered::Dropped);
        assert!(matches!(outbox.next().await, Event::Lagging));
        assert_eq!(outbox.offer(frame(7, 10)), Offered::Queued);
        assert_eq!(outbox.offer(frame(8, 95)), Offered::Overflowed, "the byte bound counts too");
        assert!(matches!(outbox.next().await, Event::Lagging));
        assert_eq!(outbox.offer(frame(9, 500)), Offered::Queued, "an empty outbox takes one oversized frame");
        assert_eq!(outbox.offer(frame(10, 1)), Offered::Overflowed);
    }

    #[tokio::test]
    async fn close_wins_over_everything_queued() {
        let outbox = Outbox::new(8, 1000);
        assert_eq!(outbox.offer(frame(1, 1)), Offered::Queued);
        outbox.close(CloseOrder { code: 4010, reason: "account_deleted" });
        assert_eq!(outbox.offer(frame(2, 1)), Offered::Dropped);
        assert!(matches!(outbox.next().await, Event::Close(CloseOrder { code: 4010, .. })));
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_on_offer() {
        let outbox = Arc::new(Outbox::new(8, 1000));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next().await }
        });
        tokio::task::yield_now().await;
        outbox.offer(frame(9, 1));
        assert!(matches!(waiter.await.unwrap(), Event::Frame(f) if f.to == 9));
    }
}
