//! The one RocksDB instance a manager keeps: Raft's log and vote, and the state machine, in
//! separate column families sharing one write-ahead log. A synced write therefore also makes
//! every earlier unsynced write durable, which is what lets apply skip fsync.

use std::path::Path;
use std::sync::Arc;

use rocksdb::BlockBasedOptions;
use rocksdb::Cache;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

use crate::error::StoreError;

/// Raft's own metadata: vote, committed and purged log ids, the manager's identity.
pub(crate) const CF_RAFT: &str = "raft";
/// Log entries keyed by big-endian index.
pub(crate) const CF_LOG: &str = "log";
/// State machine metadata: last applied log id, membership, revision, counters.
pub(crate) const CF_SM: &str = "sm";
/// Live keys: key -> encoded [`crate::command::KeyValue`] without its key.
pub(crate) const CF_KV: &str = "kv";
/// Leases: big-endian id -> encoded lease record.
pub(crate) const CF_LEASE: &str = "lease";
/// Keys attached to a lease: big-endian id ++ key -> empty.
pub(crate) const CF_LEASE_KEY: &str = "lease_key";
/// Keys locked by a lease: big-endian id ++ key -> empty.
pub(crate) const CF_LEASE_LOCK: &str = "lease_lock";
/// Change history for watches: big-endian revision -> encoded events.
pub(crate) const CF_HISTORY: &str = "history";

/// Column families holding state-machine data: what a snapshot carries.
pub(crate) const SM_CFS: [&str; 6] = [
    CF_SM,
    CF_KV,
    CF_LEASE,
    CF_LEASE_KEY,
    CF_LEASE_LOCK,
    CF_HISTORY,
];

/// Raft's own column families; with [`SM_CFS`], every column family of the database.
pub(crate) const RAFT_CFS: [&str; 2] = [CF_RAFT, CF_LOG];

/// All memtables together (RocksDB flushes the largest beyond it). Each column family would
/// otherwise keep up to 2 x 64 MiB: with eight, a busy manager's memory was mostly memtables.
const MEMTABLES_BYTES: usize = 64 << 20;
/// One memtable of one column family.
const MEMTABLE_BYTES: usize = 16 << 20;
/// The block cache every column family shares (by default each has its own).
const BLOCK_CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the store's database under `dir/db`.
pub(crate) fn open(dir: &Path) -> Result<Arc<DB>, StoreError> {
    let path = dir.join("db");
    std::fs::create_dir_all(&path).map_err(|e| StoreError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    // Refuse to open a database whose WAL has a corrupted or torn record in the middle; a torn
    // tail (a crash mid-write of an unsynced record) is dropped, which loses only writes that were
    // never acknowledged.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    opts.increase_parallelism(2);
    opts.set_db_write_buffer_size(MEMTABLES_BYTES);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = RAFT_CFS.iter().chain(SM_CFS.iter()).map(|name| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut cf = Options::default();
        cf.set_write_buffer_size(MEMTABLE_BYTES);
        cf.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| StoreError::DataDir {
        path: path.display().to_string(),
        reason: e.into_string(),
    })?;
    Ok(Arc::new(db))
}

/// Big-endian u64, so that RocksDB's byte order is numeric order.
pub(crate) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn from_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix` (None: no upper bound).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn io_err(e: rocksdb::Error) -> std::io::Error {
    std::io::Error::other(e.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert_eq!(from_be(&be(42)), Some(42));
        assert_eq!(from_be(b"abc"), None);
    }
}
