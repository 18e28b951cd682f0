//! When to build a snapshot: once the log written since the last one outweighs that snapshot. A
//! snapshot is a pass over the whole state machine (live keys, leases and the watch history), so
//! building one every N entries costs in proportion to the state, not to the writes: small writes
//! over a large store copied all of it again and again. Building the next one only after as many
//! bytes of log as the last one took pays each pass with at least as much log written, whatever
//! the sizes (the way an append-only file is rewritten once it has doubled).
//!
//! openraft's own entry-count policy stays as the backstop that bounds the log's length
//! ([`RaftTuning::snapshot_every`](crate::RaftTuning::snapshot_every)); this loop adds the size
//! rule ([`RaftTuning::snapshot_log_bytes`](crate::RaftTuning::snapshot_log_bytes)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// How often the loop compares the log with the state.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Whether `log_bytes` of log written since the last snapshot, which took `snapshot_bytes`, call
/// for a new one; none is due below `min_log_bytes`.
pub(crate) fn due(log_bytes: u64, snapshot_bytes: u64, min_log_bytes: u64) -> bool {
    log_bytes >= min_log_bytes.max(snapshot_bytes)
}

/// Counts the bytes of log entries this replica writes (leader and follower alike: each builds
/// its own snapshots).
#[derive(Clone, Default)]
pub(crate) struct LogBytes(Arc<AtomicU64>);

impl LogBytes {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Asks openraft for a snapshot whenever [`due`] says so. The log is measured from the moment
/// this replica's snapshot last changed (built by either rule, or installed from the leader).
pub(crate) fn spawn(store: &Store, written: LogBytes, min_log_bytes: u64) {
    let s = store.clone();
    let h = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot = s.snapshot_index();
        let mut since = written.total();
        loop {
            tick.tick().await;
            let now = s.snapshot_index();
            if now != snapshot {
                (snapshot, since) = (now, written.total());
                continue;
            }
            let log = written.total().saturating_sub(since);
            let last = s.snapshot_bytes();
            if due(log, last, min_log_bytes) {
                tracing::debug!(
                    log,
                    last,
                    "the log outweighs the last snapshot: building one"
                );
                if s.trigger_snapshot().await.is_err() {
                    return;
                }
                // Not again before as much log once more, should this build fail.
                since = written.total();
            }
        }
    });
    store.keep_background(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Put};
    use crate::{ManagerNode, RaftTuning, StoreConfig};

    #[test]
    fn a_snapshot_is_due_once_the_log_outweighs_the_last_one_or_the_floor() {
        // Small snapshot (or none yet): the floor decides.
        assert!(!due(999, 10, 1000));
        assert!(due(1000, 0, 1000));
        // Large snapshot: as much log as it took.
        assert!(!due(5_000, 1 << 20, 1000));
        assert!(due(1 << 20, 1 << 20, 1000));
        assert!(due(u64::MAX, u64::MAX, 0));
    }

    async fn put(store: &Store, key: &str, value_bytes: usize) {
        // Values that do not compress: the log's bytes are what the test counts.
        let value = (0..value_bytes)
            .map(|i| (i * 7 + key.len()) as u8)
            .collect();
        store
            .write(Command::Put(Put {
                key: key.as_bytes().to_vec(),
                value,
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    async fn settle(store: &Store) -> u64 {
        tokio::time::sleep(CHECK_EVERY * 4).await;
        store.status().await.snapshot_index
    }

    /// The entry-count backstop is out of reach here: every snapshot comes from the size rule.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_writes_over_a_large_store_wait_for_as_much_log_as_its_last_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            node: ManagerNode {
                grpc: "127.0.0.1:1".into(),
                ..Default::default()
            },
            join: vec![],
            token: None,
            tls: None,
            force_new_cluster: false,
            tuning: RaftTuning {
                snapshot_every: 1_000_000,
                snapshot_log_bytes: 64 << 10,
                ..Default::default()
            },
            observer: None,
            quota_bytes: crate::DEFAULT_QUOTA_BYTES,
        })
        .await
        .unwrap();
        let mut leading = store.leadership();
        leading.wait_for(|l| l.is_some()).await.unwrap();

        // 1 MiB of new keys: past the floor, so snapshots are built as the state grows.
        for i in 0..16 {
            put(&store, &format!("big/{i}"), 64 << 10).await;
        }
        // Snapshots are built in the background: on a loaded machine the one that holds most of
        // that 1 MiB may come later than a fixed wait.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while store.snapshot_bytes() <= 3 * (64 << 10) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(CHECK_EVERY).await;
        }
        let first = settle(&store).await;
        assert!(first > 0, "no snapshot after 1 MiB of log");
        let last = store.snapshot_bytes();
        assert!(
            last > 3 * (64 << 10),
            "the last snapshot holds {last} bytes"
        );

        // Small writes worth a third of the last snapshot: past the floor, not past the snapshot.
        let kib = (last >> 10) as usize;
        for i in 0..kib / 3 {
            put(&store, &format!("small/{i}"), 1 << 10).await;
        }
        assert_eq!(
            settle(&store).await,
            first,
            "a snapshot before the log outweighed the last one"
        );

        // Enough to outweigh it: the next snapshot comes.
        for i in kib / 3..kib + kib / 4 {
            put(&store, &format!("small/{i}"), 1 << 10).await;
        }
        let second = settle(&store).await;
        assert!(
            second > first,
            "no snapshot after more log than the last snapshot took"
        );
        store.shutdown().await;
    }
}
