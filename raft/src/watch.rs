//! Watches: every change to a key or prefix from a start revision, exactly once and in order.
//! History is read from the `history` column family; live changes come from apply's broadcast,
//! and any gap (a slow watcher, an installed snapshot) is filled from history again.

use std::ops::RangeInclusive;
use std::sync::Arc;

use rocksdb::DB;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::codec;
use crate::command::Event;
use crate::db::be;
use crate::db::io_err;
use crate::db::CF_HISTORY;
use crate::error::StoreError;
use crate::state_machine::Shared;
use crate::state_machine::HISTORY_REVISIONS;

/// Changes to the watched keys at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: u64,
    pub events: Vec<Event>,
}

pub type WatchStream = ReceiverStream<Result<WatchBatch, StoreError>>;

/// The oldest revision history still holds when the store is at `current`.
pub(crate) fn oldest_revision(current: u64) -> u64 {
    current.saturating_sub(HISTORY_REVISIONS) + 1
}

struct Watcher {
    db: Arc<DB>,
    key: Vec<u8>,
    prefix: bool,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
    next: u64,
}

/// Starts a watch; `start == 0` means from the next change on.
pub(crate) fn watch(
    db: Arc<DB>,
    shared: Arc<Shared>,
    key: Vec<u8>,
    prefix: bool,
    start: u64,
) -> Result<WatchStream, StoreError> {
    // Subscribe before reading the revision: anything after it arrives on `live`.
    let mut live = shared.events.subscribe();
    let current = shared.revision();
    let next = if start == 0 { current + 1 } else { start };
    // History may have given way to the storage quota before its window ran out (a watch from
    // now on reads no history to begin with).
    let floor = if start == 0 {
        0
    } else {
        shared.space().history_floor
    };
    let oldest = oldest_revision(current).max(floor);
    if next < oldest {
        return Err(StoreError::Compacted {
            requested: next,
            oldest,
        });
    }
    let (tx, rx) = mpsc::channel(256);
    let mut w = Watcher {
        db,
        key,
        prefix,
        tx,
        next,
    };
    tokio::spawn(async move {
        let _open = crate::stats::WatchGauge::open();
        if w.next <= current && !w.catch_up(w.next..=current).await {
            return;
        }
        loop {
            // A watch from a revision far ahead sees no event of its own for a long time: it
            // still ends as soon as its receiver is gone.
            let received = tokio::select! {
                r = live.recv() => r,
                () = w.tx.closed() => return,
            };
            let upto = match received {
                Ok(ch) if ch.revision < w.next => continue,
                Ok(ch) if ch.revision == w.next && !ch.events.is_empty() => {
                    if !w.send(ch.revision, &ch.events).await {
                        return;
                    }
                    w.next += 1;
                    continue;
                }
                Ok(ch) => ch.revision,
                Err(RecvError::Lagged(_)) => shared.revision(),
                Err(RecvError::Closed) => return,
            };
            if upto >= w.next && !w.catch_up(w.next..=upto).await {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

impl Watcher {
    fn matches(&self, e: &Event) -> bool {
        if self.prefix {
            e.kv.key.starts_with(&self.key)
        } else {
            e.kv.key == self.key
        }
    }

    /// Sends the matching events of one revision; false once the receiver is gone.
    async fn send(&mut self, revision: u64, events: &[Event]) -> bool {
        let mine: Vec<Event> = events.iter().filter(|e| self.matches(e)).cloned().collect();
        if mine.is_empty() {
            return !self.tx.is_closed();
        }
        self.tx
            .send(Ok(WatchBatch {
                revision,
                events: mine,
            }))
            .await
            .is_ok()
    }

    /// Replays `revs` from history; false if the watch ended (receiver gone or history missing).
    async fn catch_up(&mut self, revs: RangeInclusive<u64>) -> bool {
        let (start, end) = (*revs.start(), *revs.end());
        let mut rev = start;
        while rev <= end {
            // Read in bounded chunks so one slow watcher never holds a large buffer.
            let chunk_end = end.min(rev + 255);
            let read = read_history(&self.db, rev, chunk_end);
            let batches = match read {
                Ok(b) => b,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return false;
                }
            };
            for (r, events) in batches {
                if !self.send(r, &events).await {
                    return false;
                }
            }
            rev = chunk_end + 1;
        }
        self.next = end + 1;
        true
    }
}

/// Reads history for `start..=end`, which must be complete: a missing revision means it was
/// compacted, reported as such rather than skipped.
fn read_history(db: &DB, start: u64, end: u64) -> Result<Vec<(u64, Vec<Event>)>, StoreError> {
    let cf = db.cf_handle(CF_HISTORY).expect("cf history");
    let mode = rocksdb::IteratorMode::From(&be(start), rocksdb::Direction::Forward);
    let mut out = Vec::new();
    let mut want = start;
    for item in db.iterator_cf(cf, mode) {
        let (k, v) = item.map_err(io_err)?;
        let rev = crate::db::from_be(&k).unwrap_or(0);
        if rev > end {
            break;
        }
        if rev != want {
            return Err(StoreError::Compacted {
                requested: want,
                oldest: rev,
            });
        }
        out.push((rev, codec::decode::<Vec<Event>>(&v)?));
        want += 1;
    }
    if want <= end {
        return Err(StoreError::Compacted {
            requested: want,
            oldest: want + 1,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::broadcast;

    use super::*;

    /// A watch from a revision far ahead (a client's `?index=18446744073709551615`) sees no
    /// event for ever: once its receiver is gone, its task must end without one.
    #[tokio::test]
    async fn a_watch_from_the_far_future_ends_with_its_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let (events, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            revision: AtomicU64::new(5),
            leases: Mutex::new(BTreeMap::new()),
            events,
            space: Mutex::new(Default::default()),
        });
        let stream = watch(db, shared.clone(), b"k".to_vec(), false, u64::MAX).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(shared.events.receiver_count(), 1, "the watch listens");
        drop(stream);
        for _ in 0..100 {
            if shared.events.receiver_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the watch task outlived its receiver");
    }
}
