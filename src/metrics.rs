//! Counters and latency histograms, exposed at `GET /metrics` in the Prometheus
//! text format. Lock-free (atomics), so recording costs a few increments on the
//! paths that matter (a commit, a frame sent).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency buckets, in microseconds (50 µs to 10 s).
const BOUNDS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one latency, in microseconds.
    pub fn record_us(&self, us: u64) {
        if let Some(i) = BOUNDS_US.iter().position(|&bound| us <= bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Appends the histogram in the text format (buckets cumulative, in seconds).
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Committed with at least one new op.
    Stored,
    /// Committed; every op had been stored before.
    Duplicate,
    /// Refused by the log (stale head, entity conflict, op id conflict).
    Rejected,
    /// Refused by validation before it was queued.
    Invalid,
    /// Refused because it would take the user past the storage quota.
    QuotaExceeded,
    /// The database or the writer could not take it.
    Unavailable,
    /// Anything else.
    Failed,
}

impl PushResult {
    const ALL: [PushResult; 7] = [
        PushResult::Stored,
        PushResult::Duplicate,
        PushResult::Rejected,
        PushResult::Invalid,
        PushResult::QuotaExceeded,
        PushResult::Unavailable,
        PushResult::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            PushResult::Stored => "stored",
            PushResult::Duplicate => "duplicate",
            PushResult::Rejected => "rejected",
            PushResult::Invalid => "invalid",
            PushResult::QuotaExceeded => "quota_exceeded",
            PushResult::Unavailable => "unavailable",
            PushResult::Failed => "failed",
        }
    }
}

/// The log's counters.
#[derive(Debug, Default)]
pub struct LogMetrics {
    /// Ops stored by pushes.
    pub ops_ingested: AtomicU64,
    pushes: [AtomicU64; PushResult::ALL.len()],
    /// Write transactions committed.
    pub transactions: AtomicU64,
    /// Commands (pushes, acks, deletions) answered from committed transactions.
    pub commands: AtomicU64,
    /// BEGIN to COMMIT of each write transaction.
    pub commit_latency: Histogram,
}

impl LogMetrics {
    /// Counts a push by how it ended.
    pub fn push(&self, result: PushResult) {
        if let Some(i) = PushResult::ALL.iter().position(|r| *r == result) {
            self.pushes[i].fetch_add(1, Relaxed);
        }
    }

    /// Pushes that ended with `result` so far.
    pub fn pushes(&self, result: PushResult) -> u64 {
        PushResult::ALL.iter().position(|r| *r == result).map_or(0, |i| self.pushes[i].load(Relaxed))
    }
}

/// One gauge or counter line group.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Everything `GET /metrics` shows, read at the moment of the scrape.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The log's counters.
    pub log: &'a LogMetrics,
    /// Live delivery.
    pub realtime: &'a crate::realtime::RealtimeStats,
    /// Connections in the read pool, and of those idle.
    pub pool: (u32, u32),
    /// Commands waiting in the writers' queues.
    pub write_queue: usize,
    /// Requests the rate limits refused.
    pub limits: &'a crate::limits::LimitStats,
}

impl Snapshot<'_> {
    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let log = self.log;
        single(
            &mut out,
            "opsync_ops_ingested_total",
            "counter",
            "Ops stored by pushes.",
            log.ops_ingested.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP opsync_pushes_total Pushes by result.\n# TYPE opsync_pushes_total counter");
        for result in PushResult::ALL {
            let _ = writeln!(out, "opsync_pushes_total{{result=\"{}\"}} {}", result.label(), log.pushes(result));
        }
        single(
            &mut out,
            "opsync_write_transactions_total",
            "counter",
            "Write transactions committed (group commit merges many pushes into one).",
            log.transactions.load(Relaxed),
        );
        single(
            &mut out,
            "opsync_write_commands_total",
            "counter",
            "Pushes, acks and deletions answered from committed transactions.",
            log.commands.load(Relaxed),
        );
        single(
            &mut out,
            "opsync_write_queue_depth",
            "gauge",
            "Commands waiting for a writer.",
            self.write_queue as u64,
        );
        log.commit_latency.render(&mut out, "opsync_commit_seconds", "BEGIN to COMMIT of each write transaction.");
        let rt = self.realtime;
        rt.fanout_latency.render(
            &mut out,
            "opsync_fanout_seconds",
            "From a commit to its ops frame being handed to a session's socket.",
        );
        single(&mut out, "opsync_sessions", "gauge", "WebSocket sessions open.", rt.sessions.load(Relaxed));
        single(&mut out, "opsync_hubs", "gauge", "Users with a running hub.", rt.hubs.load(Relaxed));
        single(
            &mut out,
            "opsync_long_polls_waiting",
            "gauge",
            "Long-polls waiting for a commit.",
            rt.waiting.load(Relaxed),
        );
        single(
            &mut out,
            "opsync_sessions_lagged_total",
            "counter",
            "Times a session's outbox overflowed (the session then catches up from the database).",
            rt.lagged.load(Relaxed),
        );
        single(
            &mut out,
            "opsync_frames_total",
            "counter",
            "Live frames handed to session outboxes.",
            rt.frames.load(Relaxed),
        );
        let (connections, idle) = self.pool;
        single(
            &mut out,
            "opsync_db_pool_connections",
            "gauge",
            "Connections in the read pool.",
            u64::from(connections),
        );
        single(
            &mut out,
            "opsync_db_pool_in_use",
            "gauge",
            "Read pool connections in use.",
            u64::from(connections.saturating_sub(idle)),
        );
        let _ = writeln!(
            out,
            "# HELP opsync_rate_limited_total Requests refused by a rate limit, by scope.\n\
             # TYPE opsync_rate_limited_total counter"
        );
        for scope in crate::limits::Scope::ALL {
            let _ = writeln!(
                out,
                "opsync_rate_limited_total{{scope=\"{}\"}} {}",
                scope.label(),
                self.limits.refused(scope)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_in_seconds() {
        let h = Histogram::default();
        h.record_us(40);
        h.record_us(700);
        h.record_us(20_000_000);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
