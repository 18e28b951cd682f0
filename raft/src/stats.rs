//! What the replica counts about itself for monitoring: the log writer's append and fsync
//! latencies, proposals, leader changes, snapshots, open watches. Plain atomics the store's
//! threads bump; [`Store::stats`](crate::Store::stats) hands out a copy ([`StoreStats`]) and the
//! binary's metrics registry turns it into Prometheus series, so this crate depends on no
//! metrics library. One set per process (a process runs one manager; the crate's own tests,
//! which run several replicas in one process, add up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds, in seconds, of every latency histogram here (fsyncs take 0.1 ms on a fast
/// disk, seconds on a busy one; snapshots up to minutes).
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram over [`LATENCY_BOUNDS`], in atomics.
#[derive(Debug)]
pub(crate) struct Latency {
    /// Per bucket (not cumulative), the last one past the highest bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    const fn new() -> Latency {
        Latency {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BOUNDS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    fn read(&self) -> LatencyStats {
        LatencyStats {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A copy of one latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyStats {
    /// Observations per bucket of [`LATENCY_BOUNDS`] (not cumulative), one more past the last.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

/// The process's counters.
pub(crate) struct Counters {
    pub(crate) append: Latency,
    pub(crate) fsync: Latency,
    pub(crate) snapshot: Latency,
    pub(crate) snapshot_bytes: AtomicU64,
    pub(crate) proposals: AtomicU64,
    pub(crate) proposals_failed: AtomicU64,
    pub(crate) leader_changes: AtomicU64,
    pub(crate) watches: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    append: Latency::new(),
    fsync: Latency::new(),
    snapshot: Latency::new(),
    snapshot_bytes: AtomicU64::new(0),
    proposals: AtomicU64::new(0),
    proposals_failed: AtomicU64::new(0),
    leader_changes: AtomicU64::new(0),
    watches: AtomicU64::new(0),
};

/// Counts an open watch for as long as it lives.
pub(crate) struct WatchGauge;

impl WatchGauge {
    pub(crate) fn open() -> WatchGauge {
        COUNTERS.watches.fetch_add(1, Ordering::Relaxed);
        WatchGauge
    }
}

impl Drop for WatchGauge {
    fn drop(&mut self) {
        COUNTERS.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`Store::stats`](crate::Store::stats) reports: the counters since the process started,
/// and the replica's sizes now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Group-commit writes of the log (batch write and fsync of appended entries).
    pub append: LatencyStats,
    /// WAL fsyncs alone.
    pub fsync: LatencyStats,
    /// Snapshots built, by how long each took.
    pub snapshot: LatencyStats,
    /// Size of the latest snapshot file built or installed.
    pub snapshot_bytes: u64,
    /// Writes this manager proposed to Raft as the leader, and those that failed.
    pub proposals: u64,
    pub proposals_failed: u64,
    /// Times the leader this manager knows changed (to another one or to none).
    pub leader_changes: u64,
    /// Watches open on this replica (gRPC, Consul blocking queries, the manager's own loops).
    pub watches: u64,
    /// Live keys and leases, as RocksDB estimates them.
    pub keys: u64,
    pub leases: u64,
    /// Bytes of the RocksDB database: SST files plus memtables.
    pub db_bytes: u64,
}

pub(crate) fn read() -> StoreStats {
    let c = &COUNTERS;
    StoreStats {
        append: c.append.read(),
        fsync: c.fsync.read(),
        snapshot: c.snapshot.read(),
        snapshot_bytes: c.snapshot_bytes.load(Ordering::Relaxed),
        proposals: c.proposals.load(Ordering::Relaxed),
        proposals_failed: c.proposals_failed.load(Ordering::Relaxed),
        leader_changes: c.leader_changes.load(Ordering::Relaxed),
        watches: c.watches.load(Ordering::Relaxed),
        ..StoreStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_its_bucket() {
        let l = Latency::new();
        l.observe(Duration::from_micros(50));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(100));
        let s = l.read();
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[5], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(s.counts[LATENCY_BOUNDS.len()], 1, "past the last bound");
        assert_eq!(s.counts.iter().sum::<u64>(), 3);
        assert!((s.sum_seconds - 100.00305).abs() < 1e-6);
    }
}
