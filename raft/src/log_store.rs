//! Raft log storage on RocksDB, kept off openraft's core: `append` puts the entries in memory
//! (readable at once) and hands them to one writer thread, which writes everything queued as one
//! batch, fsyncs the WAL once and only then acknowledges (the `IOFlushed` callbacks). A slow disk
//! therefore delays acknowledgements, never the core's heartbeats: a write to a WAL page under
//! writeback can block for as long as an fsync takes, seconds on a busy disk, and it used to do
//! so on the core's thread. Everything that changes the log goes through the same thread, in
//! order.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::WriteBatch;
use rocksdb::DB;
use tokio::sync::oneshot;

use crate::codec;
use crate::compaction::LogBytes;
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

/// A sync slower than this is logged: it is what delays every acknowledged write.
const SLOW_SYNC: Duration = Duration::from_millis(500);

/// What the log holds beyond the database until the writer thread catches up; readers see the
/// database through it.
#[derive(Default)]
struct Pending {
    /// Entries appended but not yet written, by index.
    entries: BTreeMap<u64, Arc<Entry>>,
    /// The latest purge point, in effect from the call on.
    purged: Option<LogId>,
    /// The latest committed log id saved.
    committed: Option<Option<LogId>>,
}

type Unwritten = Arc<Mutex<Pending>>;

/// Log storage handle; clones share the database, the unwritten entries and the writer thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    unwritten: Unwritten,
    writer: Arc<WriterThread>,
}

/// The writer thread's queue and handle. When the last log store handle goes, the queue closes
/// and the thread is joined: it never outlives the store still holding the database (a process
/// that exited while it was closing RocksDB aborted in RocksDB's static destructors).
struct WriterThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        // (Never the writer joining itself, should the last handle go on that thread.)
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Work for the writer thread, done in the order sent.
enum Job {
    /// Write the entries; acknowledge once they are synced.
    Append(Vec<Arc<Entry>>, IOFlushed<TypeConfig>),
    /// Record the committed log id (unsynced: it only lets a restart apply further).
    Committed(Vec<u8>),
    /// Write and sync the vote.
    Vote(Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Remove entries from this index on.
    Truncate(u64, oneshot::Sender<io::Result<()>>),
    /// Record the purge point, then remove entries up to it.
    Purge(LogId),
}

fn lock(unwritten: &Unwritten) -> std::sync::MutexGuard<'_, Pending> {
    unwritten.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogStore {
    /// A log store over `db`; `written` counts the bytes of every entry it writes.
    pub(crate) fn new(db: Arc<DB>, written: LogBytes) -> Self {
        let (writer, rx) = mpsc::channel();
        let unwritten = Unwritten::default();
        let thread = Writer {
            db: db.clone(),
            unwritten: unwritten.clone(),
            written,
        };
        let handle = std::thread::Builder::new()
            .name("shoal-raft-log".into())
            .spawn(move || {
                crate::runtime::favour_this_thread();
                thread.run(rx)
            })
            .expect("spawning the Raft log writer thread");
        LogStore {
            db,
            unwritten,
            writer: Arc::new(WriterThread {
                jobs: Some(writer),
                thread: Some(handle),
            }),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = self.db.cf_handle(CF_RAFT).expect("cf raft");
        match self.db.get_cf(cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    fn send(&self, job: Job) -> io::Result<()> {
        self.writer
            .jobs
            .as_ref()
            .expect("the queue closes only when the store goes")
            .send(job)
            .map_err(|_| io::Error::other("the Raft log writer thread has stopped"))
    }

    /// Sends a job that answers, and waits for the answer without holding a thread.
    async fn ask(
        &self,
        job: impl FnOnce(oneshot::Sender<io::Result<()>>) -> Job,
    ) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(job(tx))?;
        rx.await
            .map_err(|_| io::Error::other("the Raft log writer thread has stopped"))?
    }

    /// Reads the last log id without going through openraft (used at start-up).
    pub(crate) fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let purged = {
            let pending = lock(&self.unwritten);
            if let Some((_, entry)) = pending.entries.last_key_value() {
                return Ok(Some(entry.log_id()));
            }
            pending.purged
        };
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        match self.db.iterator_cf(cf, rocksdb::IteratorMode::End).next() {
            Some(item) => {
                let (_, bytes) = item.map_err(io_err)?;
                let entry: Entry = codec::decode(&bytes)?;
                Ok(Some(entry.log_id()).max(purged))
            }
            None => Ok(self.purged()?),
        }
    }

    /// The purge point: the latest one asked for, or the stored one.
    fn purged(&self) -> io::Result<Option<LogId>> {
        match lock(&self.unwritten).purged {
            Some(id) => Ok(Some(id)),
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

/// The writer thread's state.
struct Writer {
    db: Arc<DB>,
    unwritten: Unwritten,
    written: LogBytes,
}

/// Appends taken from the queue since the last sync, waiting for it.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    written: Vec<(u64, LogId)>,
    callbacks: Vec<IOFlushed<TypeConfig>>,
}

impl Writer {
    /// Group commit: waits for one job, takes every other one queued behind it, writes them in
    /// order, syncs the WAL once, then acknowledges every append among them.
    fn run(self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let started = Instant::now();
            let mut group = Group::default();
            let mut failed: Option<String> = None;
            for job in std::iter::once(first).chain(rx.try_iter()) {
                if let Err(e) = self.take(job, &mut group) {
                    failed.get_or_insert(e.to_string());
                }
            }
            if let Err(e) = self.write(&mut group) {
                failed.get_or_insert(e.to_string());
            }
            let synced = match failed {
                Some(e) => Err(e),
                None if group.callbacks.is_empty() => Ok(()),
                None => self.sync(),
            };
            if !group.callbacks.is_empty() {
                crate::stats::COUNTERS.append.observe(started.elapsed());
            }
            for cb in group.callbacks {
                cb.io_completed(synced.clone().map_err(io::Error::other));
            }
        }
    }

    /// Adds one job to `group`; a job that must see the appends before it writes them first.
    fn take(&self, job: Job, group: &mut Group) -> io::Result<()> {
        let raft_cf = self.db.cf_handle(CF_RAFT).expect("cf raft");
        let log_cf = self.db.cf_handle(CF_LOG).expect("cf log");
        match job {
            Job::Append(entries, callback) => {
                group.callbacks.push(callback);
                for entry in entries {
                    let bytes = codec::encode(&*entry)?;
                    self.written.add(bytes.len() as u64);
                    group.batch.put_cf(log_cf, be(entry.index()), bytes);
                    group.written.push((entry.index(), entry.log_id()));
                }
                Ok(())
            }
            Job::Committed(bytes) => {
                group.batch.put_cf(raft_cf, KEY_COMMITTED, bytes);
                Ok(())
            }
            Job::Vote(bytes, done) => {
                let res = self.write(group).and_then(|()| {
                    self.db.put_cf(raft_cf, KEY_VOTE, bytes).map_err(io_err)?;
                    self.sync().map_err(io::Error::other)
                });
                let failed = res.as_ref().err().map(|e| io::Error::other(e.to_string()));
                let _ = done.send(res);
                failed.map_or(Ok(()), Err)
            }
            Job::Truncate(from, done) => {
                let res = self.write(group).and_then(|()| {
                    self.db
                        .delete_range_cf(log_cf, be(from), be(u64::MAX))
                        .map_err(io_err)?;
                    // Also a possible entry at u64::MAX, which the exclusive range end skips.
                    self.db.delete_cf(log_cf, be(u64::MAX)).map_err(io_err)
                });
                let failed = res.as_ref().err().map(|e| io::Error::other(e.to_string()));
                let _ = done.send(res);
                failed.map_or(Ok(()), Err)
            }
            Job::Purge(log_id) => {
                self.write(group)?;
                // Record the purge point first: entries at or below it are ignored from then on,
                // so a crash between the two writes leaves no hole.
                self.db
                    .put_cf(raft_cf, KEY_PURGED, codec::encode(&log_id)?)
                    .map_err(io_err)?;
                self.db
                    .delete_range_cf(log_cf, be(0), be(log_id.index() + 1))
                    .map_err(io_err)
            }
        }
    }

    /// Writes the group's batch (unsynced) and drops its entries from the unwritten ones: readers
    /// find them in the database from now on.
    fn write(&self, group: &mut Group) -> io::Result<()> {
        if group.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut group.batch);
        self.db.write(batch).map_err(io_err)?;
        let mut pending = lock(&self.unwritten);
        for (index, log_id) in group.written.drain(..) {
            if pending
                .entries
                .get(&index)
                .is_some_and(|e| e.log_id() == log_id)
            {
                pending.entries.remove(&index);
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), String> {
        let started = Instant::now();
        let res = self.db.flush_wal(true).map_err(|e| e.into_string());
        let took = started.elapsed();
        crate::stats::COUNTERS.fsync.observe(took);
        if took > SLOW_SYNC {
            tracing::warn!(
                ms = took.as_millis() as u64,
                "syncing the Raft log took long: the disk delays every acknowledged write"
            );
        }
        res
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
        // The unwritten entries first: one the writer moves to the database meanwhile is then
        // found there.
        let (unwritten, purged): (Vec<Arc<Entry>>, Option<u64>) = {
            let pending = lock(&self.unwritten);
            let entries = pending
                .entries
                .range(start..)
                .take_while(|(index, _)| range.contains(index))
                .map(|(_, e)| e.clone())
                .collect();
            (entries, pending.purged.map(|id| id.index()))
        };
        // Entries the writer has not removed yet may remain below a purge point.
        let start = purged.map_or(start, |p| start.max(p + 1));
        let end = unwritten.first().map_or(u64::MAX, |e| e.index());
        let cf = self.db.cf_handle(CF_LOG).expect("cf log");
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            rocksdb::IteratorMode::From(&be(start), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, bytes) = item.map_err(io_err)?;
            let index = from_be(&key).ok_or_else(|| io::Error::other("malformed log key"))?;
            if !range.contains(&index) || index >= end {
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
        out.extend(unwritten.iter().map(|e| (**e).clone()));
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.purged()?;
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
        let bytes = codec::encode(vote)?;
        self.ask(|done| Job::Vote(bytes, done)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: it only lets a restart re-apply further before hearing from the leader.
        let bytes = codec::encode(&committed)?;
        lock(&self.unwritten).committed = Some(committed);
        self.send(Job::Committed(bytes))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(committed) = lock(&self.unwritten).committed {
            return Ok(committed);
        }
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
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        {
            let mut pending = lock(&self.unwritten);
            for e in &entries {
                pending.entries.insert(e.index(), e.clone());
            }
        }
        self.send(Job::Append(entries, callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        lock(&self.unwritten).entries.split_off(&from);
        self.ask(|done| Job::Truncate(from, done)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        lock(&self.unwritten).purged = Some(log_id);
        self.send(Job::Purge(log_id))
    }
}
