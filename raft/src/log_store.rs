//! Raft log storage on RocksDB. An append is acknowledged (its `IOFlushed` callback called) only
//! after the WAL is fsynced; appends that arrive while a sync runs share the next one.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::WriteBatch;
use rocksdb::DB;

use crate::codec;
use crate::db::be;
use crate::db::from_be;
use crate::db::io_err;
use crate::db::CF_LOG;
use crate::db::CF_RAFT;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Log storage handle; clones share the database and the sync thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        let (syncer, rx) = mpsc::channel();
        let sync_db = db.clone();
        std::thread::Builder::new()
            .name("shoal-wal-sync".into())
            .spawn(move || group_sync(sync_db, rx))
            .expect("spawning the WAL sync thread");
        LogStore { db, syncer }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = self.db.cf_handle(CF_RAFT).expect("cf raft");
        match self.db.get_cf(cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    fn put<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let cf = self.db.cf_handle(CF_RAFT).expect("cf raft");
        self.db
            .put_cf(cf, key, codec::encode(value)?)
            .map_err(io_err)
    }

    /// Reads the last log id without going through openraft (used at start-up).
    pub(crate) fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        match self.db.iterator_cf(cf, rocksdb::IteratorMode::End).next() {
            Some(item) => {
                let (_, bytes) = item.map_err(io_err)?;
                let entry: Entry = codec::decode(&bytes)?;
                Ok(Some(entry.log_id()))
            }
            None => self.get(KEY_PURGED),
        }
    }

    /// The stored vote, read outside openraft (used at start-up).
    pub(crate) fn vote(&self) -> io::Result<Option<Vote>> {
        self.get(KEY_VOTE)
    }

    /// Writes raw entries and a vote durably, outside openraft: only for `--force-new-cluster`,
    /// before the Raft node starts.
    pub(crate) fn force_write(&self, vote: &Vote, entries: &[Entry]) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        let raft_cf = self.db.cf_handle(CF_RAFT).expect("cf raft");
        let log_cf = self.db.cf_handle(CF_LOG).expect("cf log");
        batch.put_cf(raft_cf, KEY_VOTE, codec::encode(vote)?);
        for e in entries {
            batch.put_cf(log_cf, be(e.index()), codec::encode(e)?);
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(io_err)
    }
}

/// Group commit: waits for one pending append, takes every other one queued behind it, syncs
/// the WAL once, then acknowledges them all in order.
fn group_sync(db: Arc<DB>, rx: mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let res = db.flush_wal(true).map_err(|e| e.into_string());
        for cb in batch {
            cb.io_completed(res.clone().map_err(io::Error::other));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&be(start), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, bytes) = item.map_err(io_err)?;
            let index = from_be(&key).ok_or_else(|| io::Error::other("malformed log key"))?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = codec::decode(&bytes)?;
            if entry.index() != index {
                return Err(io::Error::other(format!(
                    "log entry stored at index {index} says index {}",
                    entry.index()
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get(KEY_PURGED)?;
        let last_log_id = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put(KEY_VOTE, vote)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_wal(true).map_err(io_err))
            .await
            .map_err(io::Error::other)?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: it only lets a restart re-apply further before hearing from the leader.
        self.put(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, be(entry.index()), codec::encode(&entry)?);
        }
        self.db.write(batch).map_err(io_err)?;
        self.syncer
            .send(callback)
            .map_err(|_| io::Error::other("WAL sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        self.db
            .delete_range_cf(cf, be(from), be(u64::MAX))
            .map_err(io_err)?;
        // Also remove a possible entry at u64::MAX, which the exclusive range end skips.
        self.db.delete_cf(cf, be(u64::MAX)).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored from then on, so a
        // crash between the two writes leaves no hole.
        self.put(KEY_PURGED, &log_id)?;
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        self.db
            .delete_range_cf(cf, be(0), be(log_id.index() + 1))
            .map_err(io_err)
    }
}
